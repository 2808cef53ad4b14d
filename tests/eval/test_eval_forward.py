"""The forward engine and the one perplexity definition, against a dense transformers computation."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.workers.interop_common import TOKENS, make_hf_model


def test_perplexity_definition_has_no_clamp():
    from nemo_minitron.models.forward import LossSums, perplexity
    from nemo_minitron.prune.report import _ppl as report_perplexity

    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.5)) == pytest.approx(7.5)
    assert perplexity(800.0) == math.inf  # overflow is infinite, not a clamped finite number
    assert report_perplexity(800.0) == math.inf  # pruning reports use the same definition (was exp(min(l, 700)))
    assert report_perplexity(None) is None
    assert math.isnan(perplexity(float("nan")))
    assert math.isnan(LossSums(0.0, 0.0).loss)
    assert LossSums(6.0, 3.0).to_dict() == {"loss": 2.0, "ppl": pytest.approx(math.exp(2.0)), "tokens": 3}


def dense_loss(hf_model, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Reference: transformers logits, next-token CE where target and its predecessor are valid."""
    with torch.no_grad():
        logits = hf_model(tokens).logits.float()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    m = (mask[:, 1:] & mask[:, :-1]).flatten().double()
    return float((ce.double() * m).sum() / m.sum())


def test_engine_outputs_match_transformers(world, tmp_path):
    from nemo_minitron.eval.perplexity import load_model
    from nemo_minitron.interop.hf import import_hf
    from nemo_minitron.models.forward import forward_logits, lm_loss_sums, run_forward, window_batches

    hf = make_hf_model("llama", tmp_path / "hf")
    ckpt = import_hf(tmp_path / "hf", tmp_path / "ckpt")
    model, _, _ = load_model(ckpt)
    mask = torch.ones_like(TOKENS, dtype=torch.bool)
    mask[0, 7:] = False  # a document boundary inside the first window
    ref = dense_loss(hf, TOKENS, mask)

    got = lm_loss_sums(model, window_batches(TOKENS, mask, micro_batch_size=1))
    assert got.tokens == 11 + 6
    assert got.loss == pytest.approx(ref, abs=1e-5)
    assert got.ppl == pytest.approx(math.exp(ref), rel=1e-4)
    # the logits output of the same engine gives the same loss
    logits = forward_logits(model, TOKENS)
    with torch.no_grad():
        torch.testing.assert_close(logits, hf(TOKENS).logits.float(), atol=2e-4, rtol=1e-4)
    # hooks are registered for the pass only
    seen = []
    layer = model.decoder.layers[0]
    run_forward(model, [{"tokens": TOKENS}], hooks=[(layer, lambda m, i, o: seen.append(1))],
                before_step=lambda mb: seen.append(mb["tokens"].shape[0]))
    assert seen == [2, 1]
    run_forward(model, [{"tokens": TOKENS}])
    assert seen == [2, 1]
    with pytest.raises(ValueError, match="output="):
        run_forward(model, [{"tokens": TOKENS}], "probs")


def test_train_evaluate_uses_engine(world, tmp_path):
    from nemo_minitron.interop.hf import import_hf
    from nemo_minitron.train.evaluate import evaluate_checkpoint

    hf = make_hf_model("qwen2", tmp_path / "hf")
    ckpt = import_hf(tmp_path / "hf", tmp_path / "ckpt")
    batches = [{"tokens": TOKENS[:, :-1], "labels": TOKENS[:, 1:], "loss_mask": torch.ones(2, 11),
                "position_ids": torch.arange(11).expand(2, 11)}]
    out = evaluate_checkpoint(ckpt, batches)
    assert out["tokens"] == 22
    assert out["loss"] == pytest.approx(dense_loss(hf, TOKENS, torch.ones_like(TOKENS, dtype=torch.bool)), abs=1e-5)


def _words(rng, n):
    return " ".join(f"w{int(i)}" for i in rng.integers(3, 128, n))


def test_evaluate_perplexity_on_jsonl_text_and_prefix(world, tmp_path):
    import numpy as np

    from nemo_minitron.eval.config import EvaluateConfig
    from nemo_minitron.eval.perplexity import eval_windows, evaluate_perplexity
    from nemo_minitron.models.forward import perplexity

    hf = make_hf_model("llama_tied", tmp_path / "hf")
    rng = np.random.default_rng(0)
    docs = [_words(rng, int(n)) for n in rng.integers(5, 40, 12)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = EvaluateConfig(checkpoint=str(tmp_path / "hf"), data_path=str(tmp_path / "eval.jsonl"), num_samples=6,
                         seq_length=16, micro_batch_size=4, work_dir=str(tmp_path / "work")).validate()
    out = evaluate_perplexity(cfg)
    res = out["result"]
    assert (tmp_path / "work" / "hf.megatron").is_dir()  # imported once, reused next time
    tokens, mask = eval_windows(cfg.data_path, 6, 16, cfg.seed, tmp_path / "hf")
    assert not mask.all()  # windows cross document boundaries, which must not count
    ref = dense_loss(hf, tokens, mask)
    assert res["loss"] == pytest.approx(ref, abs=1e-5)
    assert res["ppl"] == pytest.approx(perplexity(ref), rel=1e-4)
    assert res["tokens"] == int((mask[:, 1:] & mask[:, :-1]).sum())
    # an mmap prefix written by the package's preprocessing scores the same windows as the raw text
    from nemo_minitron.data.preprocess import preprocess_corpus

    prefix = preprocess_corpus(tmp_path / "eval.jsonl", tmp_path / "hf", tmp_path / "tok" / "eval", workers=1,
                               progress=False)["all"].prefix
    again = evaluate_perplexity(EvaluateConfig(checkpoint=str(out["ckpt"]), data_path=prefix, num_samples=6, seq_length=16,
                                               micro_batch_size=3).validate())["result"]
    assert again["loss"] == pytest.approx(res["loss"], abs=1e-6) and again["tokens"] == res["tokens"]

    from nemo_minitron.config.model import ConfigError

    with pytest.raises(ConfigError, match="data="):
        evaluate_perplexity(EvaluateConfig(checkpoint=str(tmp_path / "hf"), data_path=str(tmp_path / "missing.txt"),
                                           work_dir=str(tmp_path / "work")))


def test_evaluate_config_errors_name_the_key():
    from nemo_minitron.config.model import ConfigError
    from nemo_minitron.eval.config import EvaluateConfig

    with pytest.raises(ConfigError, match="nothing to evaluate"):
        EvaluateConfig(checkpoint="x").validate()
    with pytest.raises(ConfigError, match="seq_length"):
        EvaluateConfig(checkpoint="x", data_path="d", seq_length=1).validate()
    with pytest.raises(ConfigError, match="checkpoint_format"):
        EvaluateConfig(checkpoint="x", data_path="d", checkpoint_format="onnx").validate()


@pytest.mark.multiproc
def test_evaluate_at_tp2_pp2_dp2_matches_dense(tmp_path):
    import numpy as np

    from nemo_minitron.eval.perplexity import eval_windows
    from tests.launch import REPO, torchrun

    hf = make_hf_model("llama", tmp_path / "hf")
    rng = np.random.default_rng(1)
    (tmp_path / "eval.txt").write_text("\n\n".join(_words(rng, int(n)) for n in rng.integers(5, 40, 10)) + "\n")
    tokens, mask = eval_windows(str(tmp_path / "eval.txt"), 6, 16, 1234, tmp_path / "hf")
    ref = dense_loss(hf, tokens, mask)
    results = torchrun(REPO / "tests" / "workers" / "eval_layouts.py", 2,
                       [str(tmp_path / "work"), str(tmp_path / "hf"), str(tmp_path / "eval.txt")], timeout=400)
    assert [(r["tp"], r["pp"], r["dp"]) for r in results] == [(2, 1, 1), (1, 2, 1), (1, 1, 2)]
    for r in results:
        assert r["loss"] == pytest.approx(ref, abs=2e-5), r
        assert r["tokens"] == int((mask[:, 1:] & mask[:, :-1]).sum())


def test_pruning_eval_loss_equals_the_engine(world, tmp_path):
    """prune.calibrate.eval_loss can become ``lm_loss_sums(model, window_batches(...), dp_group).loss``."""
    from nemo_minitron.eval.perplexity import load_model
    from nemo_minitron.interop.hf import import_hf
    from nemo_minitron.models.forward import lm_loss_sums, window_batches
    from nemo_minitron.prune.calibrate import TokenBatch, eval_loss

    make_hf_model("llama", tmp_path / "hf")
    model, _, ctx = load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    mask = torch.ones_like(TOKENS, dtype=torch.bool)
    mask[1, 9:] = False
    engine = lm_loss_sums(model, window_batches(TOKENS, mask, 1), dp_group=ctx.dp_group).loss
    assert eval_loss(model, TokenBatch(TOKENS, mask), ctx, 1) == pytest.approx(engine, abs=1e-6)
