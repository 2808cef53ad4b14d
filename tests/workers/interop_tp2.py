"""2-process worker: HF -> megatron import sharded over TP=2 (and PP=2), logits at TP=2, sharded export back to HF.

Usage: torchrun --nproc-per-node=2 interop_tp2.py WORKDIR KIND [KIND ...]
Prints one RESULT line per check (rank 0).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("NEMO_MINITRON_NO_PROGRESS", "1")


def main() -> None:
    import torch.distributed as dist

    from nemo_minitron import runtime
    from nemo_minitron.interop import hf
    from nemo_minitron.interop.hf import export_hf, import_hf
    from tests.launch import report
    from tests.workers.interop_common import hf_logits, make_hf_model, megatron_logits

    work, kinds = Path(sys.argv[1]), sys.argv[2:]
    runtime.init_model_parallel(1, 1, seed=1)
    rank = dist.get_rank()
    refs = {}
    loaded = []  # parameters of the model each export_hf call built on this rank
    load_for_export = hf.load_for_export

    def counting_load(*args, **kwargs):
        model, cfg, meta = load_for_export(*args, **kwargs)
        loaded.append(sum(p.numel() for p in model.parameters()))
        return model, cfg, meta

    hf.load_for_export = counting_load
    for kind in kinds:
        if rank == 0:
            make_hf_model(kind, work / kind)
        dist.barrier()
        refs[kind] = hf_logits(work / kind)
    for kind in kinds:
        layout = (1, 2) if kind == "llama_tied" else (2, 1)  # tied embeddings need the PP output-layer copy
        ckpt = import_hf(work / kind, work / f"{kind}_ckpt", tp=layout[0], pp=layout[1])
        tp2 = megatron_logits(ckpt, tp=2, pp=1)
        pp2 = megatron_logits(ckpt, tp=1, pp=2) if kind in ("llama_tied", "qwen3") else None
        export_hf(ckpt, work / f"{kind}_hf", tp=layout[0], pp=layout[1])  # each rank loads only its shard
        back = hf_logits(work / f"{kind}_hf")
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, loaded[-1])
        if rank == 0:
            from transformers import AutoModelForCausalLM

            full = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(work / kind).parameters())
            report({"kind": kind, "import_layout": list(layout),
                    "tp2_vs_hf": (tp2 - refs[kind]).abs().max().item(),
                    "pp2_vs_hf": None if pp2 is None else (pp2 - refs[kind]).abs().max().item(),
                    "roundtrip_vs_hf": (back - refs[kind]).abs().max().item(),
                    "export_params_per_rank": per_rank, "hf_params": full})
    runtime.shutdown()


if __name__ == "__main__":
    main()
