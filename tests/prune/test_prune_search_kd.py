"""Budget search scored by short distillation on a tiny model: exact candidates, KD ranking, resume."""

import json

import pytest
import torch

from tests.fixtures import corpus as C


def test_search_by_distillation_ranks_candidates_after_kd(world, tmp_path):
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import load_model_config, save_checkpoint
    from nemo_minitron.config.model import ConfigError, ModelConfig
    from nemo_minitron.config.prune import MegatronPruneConfig, PruneConfig
    from nemo_minitron.data.preprocess import preprocess_corpus
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.models.params import count_parameters
    from nemo_minitron.prune.pipeline import REPORT_FILE
    from nemo_minitron.prune.search_kd import search_by_distillation
    from nemo_minitron.recipe.config import MinitronConfig, TrainBudget
    from nemo_minitron.recipe.run import train_config
    from tests.workers.distill_common import tiny

    wt = C.write_wikitext_dir(tmp_path / "wt", 30, 4, 2, seed=5)
    tok = C.train_bpe_tokenizer([C.wikitext_text(C.make_articles(40, seed=5))], tmp_path / "tok", vocab_size=320)
    cfg = tiny(vocab_size=320)
    runtime.seed_everything(4)
    model = build_gpt_model(cfg)
    with torch.no_grad():
        model.output_layer.weight.mul_(10.0)
    save_checkpoint(model, cfg, tmp_path / "teacher", tokenizer_dir=tok)
    preprocess_corpus(wt, tok, tmp_path / "data" / "wiki", workers=1, progress=False)
    train = str(tmp_path / "data" / "wiki_train_text_document")
    budget = int(count_parameters(cfg).total * 0.8)
    job = MegatronPruneConfig(
        model=ModelConfig(restore_from_path=str(tmp_path / "teacher")),
        prune=PruneConfig(target_params=budget, search_top_k=3, search_tolerance=0.1, search_ffn_divisor=16,
                          search_hidden_divisor=16, calib_data=train,
                          num_calib_size=8, calib_seq_length=32, num_val_samples=4, plot=False,
                          importance_cache=str(tmp_path / "scores.pt")))
    rc = MinitronConfig(teacher=str(tmp_path / "teacher"), train_data=train, seq_length=32, micro_batch_size=2,
                        global_batch_size=4)

    def kd(student, run_dir, save_path):
        return train_config(rc, "distill", student, tmp_path / "teacher", TrainBudget(steps=3, lr=3e-4), run_dir,
                            save_path)

    report = search_by_distillation(job, 2, kd, tmp_path / "search")
    search = json.loads((tmp_path / "search" / "zero_shot" / REPORT_FILE).read_text())["search"]
    assert report["status"] == "completed" and len(report["candidates"]) == 2
    assert sorted(r["kd_rank"] for r in report["candidates"]) == [1, 2]
    assert sorted(r["zero_shot_rank"] for r in report["candidates"]) == [1, 2]
    assert report["candidates"][0]["kd_val_loss"] <= report["candidates"][1]["kd_val_loss"]
    for i, cand in enumerate(search[:2]):
        # each candidate is exactly the searched model: same shape and same zero-shot loss from the cached scores
        pruned = tmp_path / "search" / f"candidate_{i}" / "pruned"
        arch = load_model_config(pruned)
        assert (arch.ffn_hidden_size, arch.hidden_size, arch.num_layers) == (
            cand["ffn_hidden_size"], cand["hidden_size"], cand["num_layers"])
        loss_after = json.loads((pruned / REPORT_FILE).read_text())["validation"]["loss_after"]
        assert loss_after == pytest.approx(cand["val_loss"], rel=1e-5)
        row = next(r for r in report["candidates"] if r["path"].endswith(f"candidate_{i}/distilled"))
        assert row["zero_shot_val_loss"] == cand["val_loss"] and row["kd_steps"] == 3
    again = search_by_distillation(job, 2, kd, tmp_path / "search")  # finished: every candidate is reused
    assert again["candidates"] == report["candidates"]
    with pytest.raises(ConfigError, match="target_params"):
        search_by_distillation(MegatronPruneConfig(model=job.model, prune=PruneConfig(ffn_hidden_size=64)), 2, kd,
                               tmp_path / "x")
