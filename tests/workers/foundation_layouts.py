"""torchrun worker: load one reference checkpoint at several TP/PP layouts and compare logits.

Usage (from tests/test_multilayout.py):
    torchrun --nproc-per-node=N tests/workers/foundation_layouts.py REF_CKPT REF_LOGITS.pt OUT_DIR TPxPP [TPxPP ...]

For every layout: build the model with a *different* seed (so an unloaded weight shows up), load the
reference checkpoint, compute full logits and report max |diff| vs the TP=1 reference; then save
the model at that layout under OUT_DIR/TPxPP for the parent to reload at TP=1. On the first
layout with TP>1 it also swaps two heads' rows of one linear_qkv shard and reports the diff, as a
negative control proving the comparison notices a wrong TP slice.
"""

import sys

import torch

from nemo_minitron import runtime
from nemo_minitron.checkpoint import load_checkpoint, load_model_config, save_checkpoint
from nemo_minitron.models.builder import build_gpt_model
from nemo_minitron.models.forward import forward_logits
from tests.launch import report


def main() -> None:
    ref_ckpt, ref_logits_path, out_dir, *layouts = sys.argv[1:]
    ref = torch.load(ref_logits_path, weights_only=True)
    tokens, ref_logits = ref["tokens"], ref["logits"]
    base = load_model_config(ref_ckpt)
    negative_done = False
    for layout in layouts:
        tp, pp = (int(x) for x in layout.split("x"))
        ctx = runtime.init_model_parallel(tp, pp, seed=999)
        cfg = base.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        model = build_gpt_model(cfg)
        before = forward_logits(model, tokens, micro_batch_size=2)
        load_checkpoint(model, cfg, ref_ckpt)
        logits = forward_logits(model, tokens, micro_batch_size=2)
        result = {
            "layout": layout,
            "rank": ctx.rank,
            "dp_size": ctx.dp_size,
            "max_abs_diff": (logits - ref_logits).abs().max().item(),
            "diff_before_load": (before - ref_logits).abs().max().item(),
        }
        save_checkpoint(model, cfg, f"{out_dir}/{layout}")
        if tp > 1 and not negative_done:
            negative_done = True
            layer = next(iter(model.decoder.layers))
            w = layer.self_attention.linear_qkv.weight
            with torch.no_grad():
                if ctx.tp_rank == 1:
                    w.copy_(torch.roll(w, shifts=w.shape[0] // 2, dims=0))
            wrong = forward_logits(model, tokens, micro_batch_size=2)
            result["diff_wrong_slice"] = (wrong - ref_logits).abs().max().item()
        report(result)
        del model
    runtime.shutdown()


if __name__ == "__main__":
    main()
