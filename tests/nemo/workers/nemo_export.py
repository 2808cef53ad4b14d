"""NeMo loads, runs and exports our NeMo 2 checkpoints, in its own process:
``python nemo_export.py TOKENS_PT NEMO2_DIR OUT_HF [NEMO2_DIR OUT_HF ...]``.

For each checkpoint: ``llm.export_ckpt(path=NEMO2_DIR, target="hf", output_path=OUT_HF)`` (NeMo's ``io.json``
reader, its model class and checkpoint loader, its HF exporter), then the model NeMo loaded runs a forward on the
tokens in TOKENS_PT; its fp32 logits go to ``OUT_HF/../<name>.nemo_logits.pt``. CPU shims in ``cpu_shims``.
"""

import sys
from pathlib import Path

from tests.nemo.workers.nemo_side import cpu_shims


def nemo_forward(nemo2: Path, out_hf: Path, tokens, logits_pt: Path):
    """``llm.export_ckpt(path=nemo2, target="hf", output_path=out_hf)``; the model NeMo loaded for it runs a forward
    on ``tokens`` (fp32 logits saved to ``logits_pt``). Returns that model. Needs ``cpu_shims(importer=True)``."""
    import torch
    from megatron.core.tensor_parallel.random import initialize_rng_tracker
    from nemo.collections import llm
    from nemo.lightning import io

    loaded = []
    nemo_load = io.ModelConnector.nemo_load

    def keep(self, *args, **kwargs):  # the model NeMo's exporter loaded, to run it afterwards
        loaded.append(nemo_load(self, *args, **kwargs))
        return loaded[-1]

    io.ModelConnector.nemo_load = keep
    try:
        llm.export_ckpt(path=nemo2, target="hf", output_path=out_hf)
    finally:
        io.ModelConnector.nemo_load = nemo_load
    model = loaded[-1][0]
    model.eval()
    # megatron's attention forks the model-parallel CUDA RNG state, which nothing seeds on CPU
    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    # an explicit causal mask (True = masked): megatron's default one is made on device "cuda"
    causal = torch.triu(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        logits = model.forward(input_ids=tokens, position_ids=positions, attention_mask=causal[None, None])
    torch.save(logits.float(), logits_pt)
    return model


def main(tokens_pt: Path, jobs: list[str]) -> None:
    cpu_shims(importer=True)
    import torch

    tokens = torch.load(tokens_pt, weights_only=True)
    for nemo2, out in zip(map(Path, jobs[::2]), map(Path, jobs[1::2])):
        nemo_forward(nemo2, out, tokens, out.parent / f"{out.name}.nemo_logits.pt")


if __name__ == "__main__":  # NeMo's torch_dist reader may spawn processes that re-import this module
    main(Path(sys.argv[1]), sys.argv[2:])
