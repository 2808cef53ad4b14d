"""Checkpoint interop: Hugging Face, GGUF, NeMo 2 and megatron checkpoints in and out, for any pruned shape.

Entry points (imported lazily, so ``import nemo_minitron.interop`` stays cheap):

* :func:`convert` — any input format (hf, gguf, nemo2, megatron) to any output (hf, nemo2, megatron);
* :func:`import_hf` / :func:`export_hf` — Hugging Face (or GGUF) ⇄ nemo_minitron megatron checkpoint;
* :func:`import_nemo2` / :func:`export_nemo2` — NeMo 2 checkpoint directories;
* :func:`load_dist_weights` — load a megatron dist checkpoint with TE-fused or local norm names, strictly.

Modules: :mod:`.mapping` (pure HF ⇄ megatron name/layout rules), :mod:`.megatron_io` (fill/read a
megatron model tensor by tensor), :mod:`.hf`, :mod:`.gguf`, :mod:`.nemo2`, :mod:`.te_names`,
:mod:`.safetensors_io`, :mod:`.safety`, :mod:`.convert`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "convert": "nemo_minitron.interop.convert",
    "import_hf": "nemo_minitron.interop.hf",
    "export_hf": "nemo_minitron.interop.hf",
    "import_nemo2": "nemo_minitron.interop.nemo2",
    "export_nemo2": "nemo_minitron.interop.nemo2",
    "load_dist_weights": "nemo_minitron.interop.te_names",
    "fetch_smollm2": "nemo_minitron.interop.gguf",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
