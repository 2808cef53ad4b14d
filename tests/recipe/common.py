"""The recipe and demo tests' tiny teacher: generated WikiText, a BPE tokenizer and a confident random teacher."""

from pathlib import Path

import torch

from tests.fixtures import corpus as C


def tiny_teacher(tmp_path: Path) -> tuple[Path, Path]:
    """Write ``wt/`` (WikiText splits), ``tok/`` and the ``teacher`` checkpoint under ``tmp_path``; returns (wt, tok)."""
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.runtime import seed_everything
    from tests.workers.distill_common import tiny

    wt = C.write_wikitext_dir(tmp_path / "wt", 40, 6, 4, seed=3)
    tok = C.train_bpe_tokenizer([C.wikitext_text(C.make_articles(50, seed=3))], tmp_path / "tok", vocab_size=320)
    cfg = tiny(vocab_size=320)
    seed_everything(2)
    model = build_gpt_model(cfg)
    with torch.no_grad():
        model.output_layer.weight.mul_(10.0)  # a confident teacher: KD has something to transfer
    save_checkpoint(model, cfg, tmp_path / "teacher", tokenizer_dir=tok)
    return wt, tok
