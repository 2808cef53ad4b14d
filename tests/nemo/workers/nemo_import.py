"""NeMo's HF importer in its own process: ``python nemo_import.py FAMILY HF_DIR OUT_DIR [FAMILY HF_DIR OUT_DIR ...]``.

Runs ``llm.import_ckpt(model=<family model>, source="hf://HF_DIR", output_path=OUT_DIR)`` as a NeMo user would,
so that OUT_DIR is a NeMo 2 checkpoint written by NeMo itself (its ``io.json``, ``model.yaml``, tokenizer,
trainer state in ``weights/common.pt``). CPU shims in ``cpu_shims`` (test code only).
"""

import sys
from pathlib import Path

from tests.nemo.workers.nemo_side import cpu_shims


def main(jobs: list[str]) -> None:
    cpu_shims(importer=True)
    for family, hf_dir, out in zip(jobs[::3], jobs[1::3], jobs[2::3]):
        import_hf(family, Path(hf_dir), Path(out))


def import_hf(family: str, hf_dir: Path, out: Path) -> None:
    from nemo.collections import llm

    model, config = {
        "llama": (llm.LlamaModel, llm.Llama3Config8B),
        "qwen2": (llm.Qwen2Model, llm.Qwen2Config500M),
        "qwen3": (llm.Qwen3Model, llm.Qwen3Config600M),
        "mistral": (llm.MistralModel, llm.MistralConfig7B),
    }[family]
    # the importer builds its own config from HF's config.json; the model given only picks the importer
    llm.import_ckpt(model=model(config()), source=f"hf://{hf_dir}", output_path=out)


if __name__ == "__main__":  # NeMo's torch_dist writer may spawn processes that re-import this module
    main(sys.argv[1:])
