"""Launcher environment detection (torchrun, SLURM, single process)."""

import pytest

from nemo_minitron.runtime import detect_dist_env, expand_slurm_hostlist, first_slurm_host


@pytest.mark.parametrize(
    "nodelist,first",
    [
        ("node01", "node01"),
        ("gpu[003-005,007]", "gpu003"),
        ("gpu[12,14-15],cpu01", "gpu12"),
        ("a-b-c,d", "a-b-c"),
        ("node[01-02]-ib", "node01-ib"),
        ("node[01-02]-ib,login1", "node01-ib"),
        ("rack[3-4]-node[07,09]", "rack3-node07"),
        ("dgx-h100-[0012-0020]", "dgx-h100-0012"),
        ("gpu[9-11]", "gpu9"),
        (" node5 ", "node5"),
        ("pre[1]post", "pre1post"),
        ("n[001-004]x[a]", None),
    ],
)
def test_first_slurm_host(nodelist, first):
    if first is None:
        with pytest.raises(ValueError, match="cannot parse SLURM node list"):
            first_slurm_host(nodelist)
    else:
        assert first_slurm_host(nodelist) == first
        assert expand_slurm_hostlist(nodelist)[0] == first


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("node[01-02]-ib", ["node01-ib", "node02-ib"]),
        ("gpu[9-11],cpu01", ["gpu9", "gpu10", "gpu11", "cpu01"]),
        ("gpu[098-101]", ["gpu098", "gpu099", "gpu100", "gpu101"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("a,b[2,4-5]c", ["a", "b2c", "b4c", "b5c"]),
    ],
)
def test_expand_slurm_hostlist(nodelist, hosts):
    assert expand_slurm_hostlist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["", "node[01-02", "node]1[", "node[a-b]", ","])
def test_bad_slurm_hostlist(bad):
    with pytest.raises(ValueError, match="cannot parse SLURM node list"):
        expand_slurm_hostlist(bad)


def test_torchrun_env():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "1234"}
    d = detect_dist_env(env)
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.master_port, d.launcher) == (3, 8, 1, "h0", 1234, "torchrun")


def test_slurm_env():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_JOB_NODELIST": "dgx[07-08]",
           "SLURM_JOB_ID": "123456"}
    d = detect_dist_env(env)
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.launcher) == (5, 16, 5, "dgx07", "slurm")
    assert d.master_port == 20000 + 123456 % 20000
    assert detect_dist_env(env | {"MASTER_PORT": "4000", "MASTER_ADDR": "x"}).master_port == 4000


def test_torchrun_env_wins_over_slurm():
    env = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    assert detect_dist_env(env).launcher == "torchrun"


def test_single_process_env():
    d = detect_dist_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (d.rank, d.world_size, d.launcher) == (0, 1, "single") and d.master_port > 0


def test_reinitialising_the_same_layout_creates_no_process_groups(world):
    """megatron's destroy_model_parallel only forgets its groups; each re-init used to add ~50 gloo threads."""
    import os

    from nemo_minitron import runtime

    before = len(os.listdir("/proc/self/task"))
    for _ in range(3):
        ctx = runtime.init_model_parallel(1, 1, seed=1234)
    assert ctx.tp_size == 1 and ctx.pp_size == 1
    assert len(os.listdir("/proc/self/task")) <= before + 2
