"""Worker: prune the same checkpoint with the same calibration data at several TP×PP layouts.

    torchrun --nproc-per-node=N tests/workers/prune_layouts.py ROOT 2x1,1x2,1x2@drop

``TPxPP[@variant]``: the variants are the target sets in ``VARIANTS`` (default ``width``). Each run writes
ROOT/out_<tp>x<pp>_<variant>_w<world>/ (checkpoint + pruning_report.json); rank 0 reports.
"""

import os
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from tests.launch import report  # noqa: E402

TOKENS = torch.arange(16).view(2, 8) * 13 % 256
TARGETS = dict(ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2, hidden_size=48, num_layers=2)
VARIANTS = {
    "width": TARGETS,  # every axis; 2 of 4 layers: fits PP=2, so surgery runs sharded
    "drop": dict(drop_layers=[1, 2]),  # keeps layers 3 and 4: layer 3 moves from stage 1 to stage 0 at PP=2
    "three": {**TARGETS, "num_layers": 3},  # 3 layers do not fit PP=2: the replicated fallback
}


def job_for(root: Path, tp: int, pp: int, out: str, variant: str = "width"):
    from nemo_minitron.config.model import ModelConfig
    from nemo_minitron.config.prune import ExportConfig, MegatronPruneConfig, PruneConfig

    return MegatronPruneConfig(
        model=ModelConfig(restore_from_path=str(root / "ckpt"), tensor_model_parallel_size=tp,
                          pipeline_model_parallel_size=pp),
        prune=PruneConfig(calib_data=str(root / "calib.pt"), num_calib_size=24, calib_seq_length=32,
                          num_val_samples=8, calib_batch_size=4, **VARIANTS[variant]),
        export=ExportConfig(save_path=str(root / out)))


def main() -> None:
    from nemo_minitron import runtime
    from nemo_minitron.prune.pipeline import run_prune

    torch.set_num_threads(1)
    root, layouts = Path(sys.argv[1]), sys.argv[2].split(",")
    runtime.init_distributed()
    world = torch.distributed.get_world_size()
    for spec in layouts:
        layout, _, variant = spec.partition("@")
        variant = variant or "width"
        tp, pp = (int(x) for x in layout.split("x"))
        out = f"out_{tp}x{pp}_{variant}_w{world}"
        rep = run_prune(job_for(root, tp, pp, out, variant))
        if torch.distributed.get_rank() == 0:
            report({"layout": layout, "variant": variant, "world": world, "out": out,
                    "loss_after": rep["validation"]["loss_after"]})
    if world >= 2:  # the TP=1 reference's pruned checkpoint loads and runs at TP=2
        from nemo_minitron.checkpoint import load_checkpoint, load_model_config
        from nemo_minitron.models.builder import build_gpt_model
        from nemo_minitron.models.forward import forward_logits

        cfg = load_model_config(root / "ref").replace(tensor_model_parallel_size=2)
        runtime.init_model_parallel(2, 1, seed=1)
        model = build_gpt_model(cfg)
        load_checkpoint(model, cfg, root / "ref")
        logits = forward_logits(model, TOKENS)
        if torch.distributed.get_rank() == 0:
            report({"tp2_logits": logits.tolist()})
    runtime.shutdown()


if __name__ == "__main__":
    main()
