"""A table of bad inputs walked through every entry point, in process (nemo_minitron.cli.run).

Each case must exit with status 2, print one to a few lines that name the key or file, print no
traceback, not end with Hydra's HYDRA_FULL_ERROR hint, and leave no output behind (or leave an
existing directory untouched).
"""

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from nemo_minitron import cli

ROOT = Path(__file__).resolve().parents[2]
_MODULES = {}


def _module(script: str):
    if script not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"nm_example_{script}", ROOT / "examples" / f"{script}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _MODULES[script] = mod
    return _MODULES[script]


def _entry(script: str):
    return _module(script).main


def _run(script: str, argv: list[str]):
    """What ``python examples/<script>.py ARGV`` runs (its command-line aliases included), in process."""
    return cli.run(_entry(script), argv, aliases=getattr(_module(script), "EVALUATE_ALIASES", None))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, world):
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.config.model import ModelConfig
    from nemo_minitron.models.builder import build_gpt_model
    from tests.fixtures import corpus as C
    from tests.workers.interop_common import make_hf_model, make_tokenizer

    root = tmp_path_factory.mktemp("bad")
    hf = root / "hf"
    make_hf_model("llama", hf)
    notok = root / "hf_notok"
    make_hf_model("llama", notok)
    for f in notok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    tok = root / "tok"
    make_tokenizer(tok)
    cfg = ModelConfig(name="t", num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=8,
                      num_query_groups=4, vocab_size=128, max_position_embeddings=256)
    ckpt = save_checkpoint(build_gpt_model(cfg), cfg, root / "ckpt", tokenizer_dir=tok)
    wt = C.write_wikitext_dir(root / "wt", n_train=4, n_valid=2, n_test=2)
    import random

    (root / "noise.txt").write_bytes(random.Random(0).randbytes(2048))
    theirs = root / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("precious")
    existing_ds = root / "ds_text_document"
    for suffix in (".bin", ".idx"):
        Path(str(existing_ds) + suffix).write_bytes(b"old")
    return dict(root=root, hf=hf, notok=notok, tok=tok, ckpt=ckpt, wt=wt, noise=root / "noise.txt", theirs=theirs,
                out=root / "out", ds=root / "ds")


# (case id, entry point, arguments ({name} = a path of the fixture), text the message must contain)
CASES = [
    ("convert-empty-output", "convert_checkpoint", "input_path={hf} output_path= overwrite=true", "output_path"),
    ("convert-cwd-output", "convert_checkpoint", "input_path={hf} output_path=. overwrite=true", "current directory"),
    ("convert-output-holds-input", "convert_checkpoint", "input_path={hf} output_path={root} overwrite=true",
     "contains the input"),
    ("convert-foreign-dir-overwrite", "convert_checkpoint", "input_path={hf} output_path={theirs} overwrite=true",
     "not an output of nemo_minitron"),
    ("convert-missing-input", "convert_checkpoint", "input_path={root}/nope output_path={out}", "nope"),
    ("convert-missing-tokenizer-path", "convert_checkpoint",
     "input_path={hf} output_path={out} tokenizer_path={root}/no_tok", "tokenizer_path"),
    ("convert-hf-without-tokenizer", "convert_checkpoint", "input_path={notok} output_path={out}",
     "no tokenizer files"),
    ("convert-unknown-key", "convert_checkpoint", "input_path={hf} output_path={out} outptu_format=hf",
     "outptu_format"),
    ("convert-bad-bool", "convert_checkpoint", "input_path={hf} output_path={out} overwrite=maybe", "overwrite"),
    ("convert-missing-mandatory", "convert_checkpoint", "input_path={hf}", "output_path"),
    ("prune-hf-dir", "megatron_prune", "model.restore_from_path={hf} export.save_path={out} prune.drop_layers=[1]",
     "convert_checkpoint.py"),
    ("prune-missing-ckpt", "megatron_prune",
     "model.restore_from_path={root}/nockpt export.save_path={out} prune.drop_layers=[1]", "nockpt"),
    ("prune-foreign-dir-overwrite", "megatron_prune",
     "model.restore_from_path={ckpt} export.save_path={theirs} export.overwrite=true prune.drop_layers=[1]",
     "export.save_path"),
    ("prune-output-is-input", "megatron_prune",
     "model.restore_from_path={ckpt} export.save_path={ckpt} export.overwrite=true prune.drop_layers=[1]",
     "contains the input"),
    ("prepare-missing-input", "prepare_wikitext", "input={root}/nocorpus tokenizer={tok} output_prefix={ds}",
     "nocorpus"),
    ("prepare-missing-tokenizer", "prepare_wikitext", "input={wt} tokenizer={root}/notok output_prefix={ds}",
     "notok"),
    ("prepare-random-bytes", "prepare_wikitext", "input={noise} tokenizer={tok} output_prefix={out}/noise workers=1",
     "noise.txt"),
    ("prepare-existing-output", "prepare_wikitext", "input={noise} tokenizer={tok} output_prefix={root}/ds workers=1",
     "output_prefix"),
    ("model-info-bad-output", "model_info", "model=smollm2-135m output=xml", "output="),
    ("model-info-unknown-preset", "model_info", "model=no-such-model", "Available options in 'model': "),
    ("distill-missing-student", "megatron_distill",
     "model.restore_from_path={root}/nostudent model.kd_teacher_restore_from_path={ckpt} "
     "export.save_path={out} model.data.data_prefix=[{root}/x] exp_manager.explicit_log_dir={root}/run",
     "nostudent"),
    ("distill-export-exists", "megatron_distill",
     "model.restore_from_path={ckpt} model.kd_teacher_restore_from_path={ckpt} export.save_path={theirs} "
     "model.data.data_prefix=[{root}/x] exp_manager.explicit_log_dir={root}/run", "export.save_path"),
    ("distill-typo-with-plus", "megatron_distill",
     "model.restore_from_path={ckpt} model.kd_teacher_restore_from_path={ckpt} export.save_path={out} "
     "model.data.data_prefix=[{root}/x] exp_manager.explicit_log_dir={root}/run +trainer.max_step=3", "max_step"),
    ("finetune-missing-model", "megatron_finetune",
     "model.restore_from_path={root}/nomodel export.save_path={out} model.data.data_prefix=[{root}/x] "
     "exp_manager.explicit_log_dir={root}/run", "nomodel"),
    ("finetune-export-exists", "megatron_finetune",
     "model.restore_from_path={ckpt} export.save_path={theirs} model.data.data_prefix=[{root}/x] "
     "exp_manager.explicit_log_dir={root}/run", "export.save_path"),
    ("prune-plus-typo", "megatron_prune",
     "model.restore_from_path={ckpt} export.save_path={out} +prune.ffn_hiden_size=64", "ffn_hiden_size"),
    ("evaluate-missing-data", "evaluate", "checkpoint={ckpt} data={root}/nodata.txt", "nodata"),
    ("evaluate-nothing-to-do", "evaluate", "checkpoint={ckpt}", "data="),
    ("evaluate-missing-checkpoint", "evaluate", "checkpoint={root}/nockpt data={noise}", "nockpt"),
    ("evaluate-unknown-key", "evaluate", "checkpoint={ckpt} data={noise} num_sample=3", "num_sample"),
    ("evaluate-bad-int", "evaluate", "checkpoint={ckpt} data={noise} num_samples=many", "num_samples"),
    ("plan-unknown-key", "plan", "gpus_per_nod=4", "gpus_per_nod"),
    ("plan-unknown-preset", "plan", "model=no-such-model", "Available options in 'model': "),
    ("minitron-no-stages", "minitron", "teacher={root}/noteacher train_data={root}/x work_dir={out}", "stages"),
    ("minitron-unknown-key", "minitron", "teacher={ckpt} train_data={root}/x work_dir={out} stepz=[prune]", "stepz"),
    ("convert-bad-format", "convert_checkpoint", "input_path={hf} output_path={out} output_format=onnx",
     "output_format"),
]


@pytest.mark.parametrize("case,script,args,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, script, args, needle, inputs, capsys, monkeypatch):
    cwd = inputs["root"] / "cwd"
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv = shlex.split(args.format(**{k: str(v) for k, v in inputs.items()}))
    with pytest.raises(SystemExit) as exc:
        _run(script, argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("[W", "W1", "I1"))]
    assert exc.value.code == cli.EXIT_USER_ERROR, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].find("HYDRA_FULL_ERROR") < 0, err
    ours = [ln for ln in lines if ln.startswith("error:") or ln.startswith("  ")]
    assert ours and ours[0].startswith("error:") and len(ours) <= 8, err
    assert needle in "\n".join(ours), err
    assert not inputs["out"].exists(), f"{case} left {inputs['out']}"
    assert sorted(p.name for p in inputs["theirs"].iterdir()) == ["notes.txt"]
    assert Path(str(inputs["ds"]) + "_text_document.bin").read_bytes() == b"old"
    leftovers = [p.name for p in inputs["root"].iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_verbose_shows_the_traceback(inputs, monkeypatch, capsys):
    monkeypatch.chdir(inputs["root"] / "cwd") if (inputs["root"] / "cwd").is_dir() else None
    monkeypatch.setenv(cli.VERBOSE_ENV, "1")
    from nemo_minitron.config.model import ConfigError

    with pytest.raises(ConfigError):
        cli.run(_entry("model_info"), ["model=smollm2-135m", "output=xml"])


def test_readme_eod_token_override_parses():
    """The README's eod_token example must be a string Hydra's override parser accepts, after the shell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    readme = (ROOT / "README.md").read_text()
    shown = [s for s in readme.split("`") if "eod_token=" in s]
    assert shown, "README shows no eod_token override"
    for text in shown:
        (word,) = shlex.split(text)
        (override,) = OverridesParser.create().parse_overrides([word])
        assert override.key_or_group == "eod_token" and override.value() == "<|endoftext|>"


def test_error_lines_name_the_path_and_drop_embedded_tracebacks():
    full = OSError(28, "No space left on device", "/data/out/weights/__0_0.distcp")
    assert cli.error_lines(full) == ["[Errno 28] No space left on device: '/data/out/weights/__0_0.distcp'"]
    wrapped = RuntimeError("checkpoint X: failed (CheckpointException ranks:[0]\nTraceback (most recent call last):\n"
                           "  File \"a.py\", line 1, in f\nFileNotFoundError: no such file: 'X/w'\n)")
    (line,) = cli.error_lines(wrapped)
    assert "Traceback" not in line and line.endswith("no such file: 'X/w'")


def test_evaluate_data_key_is_the_evaluation_text(inputs, monkeypatch, capsys, tmp_path):
    """``data=`` names the evaluation text although ``data`` is also a Hydra config group (it was refused)."""
    from nemo_minitron import runtime

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runtime, "shutdown", lambda: None)  # keep the session's process group for later tests
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(f"w{i % 60 + 3}" for i in range(400)) + "\n")
    assert _run("evaluate", [f"checkpoint={inputs['ckpt']}", f"data={text}", "num_samples=2", "seq_length=16"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["perplexity"]["data"] == str(text) and report["perplexity"]["tokens"] > 0
    assert cli.renamed_overrides(["data=x", "+data=y", "data_path=z", "model.data.x=1"], {"data": "data_path"}) == [
        "data_path=x", "+data_path=y", "data_path=z", "model.data.x=1"]
