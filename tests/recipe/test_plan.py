"""The planner: arithmetic by hand on a small case, the CLI, and per-process memory against a measured peak."""

import dataclasses
import subprocess
import sys

import pytest

from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.models.params import count_parameters
from nemo_minitron.plan import flops, memory
from nemo_minitron.plan.planner import PlanConfig, StudentShape, make_plan, resolve_model
from tests.launch import REPO, torchrun

SMALL = ModelConfig(name="s", num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8,
                    num_query_groups=4, vocab_size=256, max_position_embeddings=256)


def test_stage_params_sum_to_the_model():
    n = count_parameters(SMALL).total
    assert memory.stage_params(SMALL, 1, 1, 0) == n
    untied = SMALL.replace(share_embeddings_and_output_weights=False)
    assert sum(memory.stage_params(untied, 1, 2, s) for s in range(2)) == count_parameters(untied).total
    # TP=2 halves the matrices (norms are counted as sharded too: a few hundred parameters)
    assert memory.stage_params(SMALL, 2, 1, 0) == pytest.approx(n / 2, rel=0.02)


def test_optimizer_and_activation_arithmetic():
    lay = memory.Layout(tp=1, pp=1, dp=4, micro_batch_size=2, global_batch_size=8, seq_length=16, param_bytes=2)
    assert memory.optimizer_bytes(1000, lay) == (12000, 3000)  # fp32 master + 2 moments, /dp when sharded
    assert memory.optimizer_bytes(1000, memory.Layout(param_bytes=4)) == (8000, 8000)
    # per layer, tokens = 32: norms 4*32*64*2; q,k,v (8+8)*8=128, attn out 64, fc1 2*128, fc2 in 128 -> *32*2
    want = 4 * 32 * 64 * 2 + 32 * (128 + 64 + 256 + 128) * 2
    assert memory.activation_bytes_per_layer(SMALL, lay) == want
    assert memory.activation_bytes_per_layer(SMALL, memory.Layout(**{**lay.__dict__, "recompute": "full"})) \
        == 32 * 64 * 2
    unfused = memory.Layout(**{**lay.__dict__, "flash_attention": False})
    assert memory.activation_bytes_per_layer(SMALL, unfused) == want + 2 * 8 * 16 * 16 * 3
    # 1F1B: stage 0 of PP=4 keeps 4 micro-batches, the last stage 1
    pp4 = memory.Layout(pp=4, global_batch_size=16, micro_batch_size=1, seq_length=16)
    assert memory.stage_memory(SMALL, None, pp4, 0).in_flight == 4
    assert memory.stage_memory(SMALL, None, pp4, 3).in_flight == 1


def test_flops_count():
    # 2 x matmul weights per token + 4*s*heads*head_dim per layer + 2*h*V for the output layer
    per_layer = 64 * (8 + 8) * 8 + 64 * 64 + 64 * 128 * 3
    assert flops.matmul_params_per_layer(SMALL) == per_layer
    assert flops.forward_flops_per_token(SMALL, 16) == 4 * (2 * per_layer + 4 * 16 * 64) + 2 * 64 * 256
    assert flops.distill_flops_per_token(SMALL, SMALL, 16) == 4 * flops.forward_flops_per_token(SMALL, 16)
    assert flops.mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)


def test_70b_preset_is_llama31_70b():
    assert count_parameters(resolve_model("llama3.1-70b")).total == 70_553_706_496


def test_llama8b_to_4b_on_8_h100():
    p = make_plan(PlanConfig(model=resolve_model("llama3.1-8b"), student=StudentShape(hidden_size=3072, ffn_hidden_size=9216),
                             gpu="h100-80gb", nodes=1, gpus_per_node=8, tp=1, micro_batch_size=1,
                             global_batch_size=1152, seq_length=8192, tokens=94e9))
    m = p.distill
    # teacher 8.03B x 2 bytes; student (4.5B) weights 2 + grads 4 + Adam/master 12/8 per parameter
    assert m.teacher_weights == pytest.approx(8.03e9 * 2, rel=0.01)
    ns = count_parameters(p.student).total
    assert m.optimizer == pytest.approx(ns * 12 / 8) and m.grads == ns * 4
    # 8192 tokens x 128k vocab of KD temporaries + 24 GiB of activations do not fit at TP=1 without recompute
    assert not p.fits and p.suggestion == "tp=2 sequence_parallel=true"
    p2 = make_plan(dataclasses.replace(p.cfg, tp=2, sequence_parallel=True))
    assert p2.fits and p2.max_micro_batch >= 1 and 0.5 < p2.days < 60
    assert p2.tokens_per_s == pytest.approx(p.tokens_per_s)  # same FLOPs at the same utilisation


def test_70b_does_not_fit_on_one_gpu_and_gets_a_suggestion():
    p = make_plan(PlanConfig(model=resolve_model("llama3.1-70b"), gpu="h100-80gb", nodes=1, gpus_per_node=1, tp=1,
                             global_batch_size=8))
    assert not p.fits and "add nodes" in p.suggestion
    p = make_plan(PlanConfig(model=resolve_model("llama3.1-70b"), student=StudentShape(hidden_size=6144, ffn_hidden_size=20480),
                             gpu="h100-80gb", nodes=4, gpus_per_node=8, tp=2, pp=1, global_batch_size=256,
                             seq_length=8192))
    assert not p.fits and p.suggestion.startswith("tp=8"), p.suggestion


def test_bad_keys_name_the_key():
    llama = resolve_model("llama3.1-8b")
    with pytest.raises(ConfigError, match="gpu='v100'"):
        make_plan(PlanConfig(model=llama, gpu="v100"))
    with pytest.raises(ConfigError, match="tp=3 does not divide"):
        make_plan(PlanConfig(model=llama, tp=3, gpus_per_node=3))
    with pytest.raises(ConfigError, match="neither a checkpoint directory nor a preset"):
        make_plan(PlanConfig(model="no-such-model"))  # type: ignore[arg-type]


def test_cli_prints_the_breakdown():
    out = subprocess.run([sys.executable, str(REPO / "examples" / "plan.py"), "model=llama3.1-8b", "gpu=h200",
                          "tp=2", "pp=2", "student.ffn_hidden_size=9216", "recompute=selective"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    for key in ("teacher weights", "student weights", "optimizer state", "activations", "logits / KL",
                "largest micro-batch", "tokens/s", "days", "prune", "fits"):
        assert key in out.stdout, key
    bad = subprocess.run([sys.executable, str(REPO / "examples" / "plan.py"), "gpu=v100"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and "gpu='v100'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.multiproc
@pytest.mark.timeout(900)
@pytest.mark.parametrize("tp,pp,distopt", [(1, 1, False), (2, 1, True), (1, 2, False)])
def test_planned_memory_within_15_percent_of_measured(tp, pp, distopt):
    """Planner per-process memory vs the measured resident-set growth of two real KD steps (fp32, CPU)."""
    from tests.workers.plan_memory import MALLOC_ENV

    results = torchrun(REPO / "tests" / "workers" / "plan_memory.py", tp * pp, [str(tp), str(pp), str(int(distopt))],
                       timeout=600, env=MALLOC_ENV)
    assert len(results) == tp * pp
    for r in results:
        ratio = r["planned"] / r["measured"]
        print(f"TP={tp} PP={pp} distopt={distopt} rank {r['rank']} stage {r['stage']}: planned "
              f"{r['planned'] / 2**20:.0f} MiB, measured {r['measured'] / 2**20:.0f} MiB, ratio {ratio:.3f}")
        assert 0.85 <= ratio <= 1.15, r


def test_prune_surgery_memory_is_sharded_when_the_pruned_shape_divides_the_layout():
    """Sharded surgery holds both models' shards plus one full layer tensor; an odd pruned shape falls back."""
    lay = memory.Layout(tp=2, pp=1, micro_batch_size=1, seq_length=16, param_bytes=4)
    pruned = SMALL.replace(ffn_hidden_size=64)
    m = memory.prune_memory(SMALL, pruned, lay)
    assert m.shards_pruned
    # by hand: qkv (8 + 2*4) * 8 * 64 = 8192 elements, gated fc1 2 * 128 * 64 = 16384 -> fc1 is the largest
    assert memory.largest_layer_tensor(SMALL) == 16384
    shards = (memory.stage_params(SMALL, 2, 1, 0) + memory.stage_params(pruned, 2, 1, 0)) * 4
    assert m.apply - m.score == pytest.approx(memory.stage_params(pruned, 2, 1, 0) * 4 + 16384 * 4)
    assert m.apply < (count_parameters(SMALL).total + count_parameters(pruned).total) * 4 < m.apply + shards
    odd = memory.prune_memory(SMALL, SMALL.replace(ffn_hidden_size=63), lay)
    assert not odd.shards_pruned
    assert odd.apply > (count_parameters(SMALL).total + count_parameters(SMALL.replace(ffn_hidden_size=63)).total) * 4
