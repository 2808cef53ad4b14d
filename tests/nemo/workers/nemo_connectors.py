"""Our ``minitron://`` importer as a NeMo user runs it, in its own process:
``python nemo_connectors.py TOKENS_PT OUT_JSON HF_FAMILY HF_DIR HF_OUT FAMILY CKPT NEMO2_OUT [FAMILY CKPT NEMO2_OUT ...]``.

NeMo's own HF importer writes HF_DIR as the NeMo 2 checkpoint HF_OUT (``llm.import_ckpt(source="hf://...")``), which
``llm.export_ckpt(target="minitron")`` turns into our checkpoint ``HF_OUT.minitron``. For each other job: ``llm.import_ckpt(model=<FAMILY's model class>(<a placeholder config>), source="minitron://CKPT",
output_path=NEMO2_OUT)``, then NeMo loads NEMO2_OUT (``llm.export_ckpt(target="hf")``: its ``io.json`` reader,
model class and dist-ckpt loader, then its HF exporter into ``NEMO2_OUT.hf``) and the model it loaded runs a
forward on TOKENS_PT (fp32 logits to ``NEMO2_OUT.nemo_logits.pt``); then ``llm.export_ckpt(target="minitron")``
turns NEMO2_OUT back into our checkpoint ``NEMO2_OUT.minitron``. OUT_JSON gets the model class NeMo loaded per job
and the error NeMo's import raised for a wrong class (the first checkpoint imported as ``llm.Qwen2Model``).
"""

import json
import sys
from pathlib import Path

from tests.nemo.workers.nemo_export import nemo_forward
from tests.nemo.workers.nemo_side import cpu_shims


def placeholder(family: str):
    """The model a NeMo user passes: a released size's config, which the importer must not use."""
    from nemo.collections import llm

    def gpt():
        return llm.GPTConfig(num_layers=4, hidden_size=256, num_attention_heads=4)

    model, config = {"gpt": (llm.GPTModel, gpt), "llama": (llm.LlamaModel, llm.Llama31Config8B),
                     "mistral": (llm.MistralModel, llm.MistralConfig7B), "qwen2": (llm.Qwen2Model, llm.Qwen2Config500M),
                     "qwen3": (llm.Qwen3Model, llm.Qwen3Config600M)}[family]
    return model(config())


def main(tokens_pt: Path, out_json: Path, jobs: list[str]) -> None:
    cpu_shims(importer=True)
    import torch
    from nemo.collections import llm

    from nemo_minitron import nemo_plugin

    nemo_plugin.register()
    tokens = torch.load(tokens_pt, weights_only=True)
    seen = {"classes": {}}
    from tests.nemo.workers.nemo_import import import_hf

    import_hf(jobs[0], Path(jobs[1]), Path(jobs[2]))
    llm.export_ckpt(path=Path(jobs[2]), target="minitron", output_path=Path(jobs[2] + ".minitron"))
    jobs = jobs[3:]
    for family, ckpt, out in zip(jobs[::3], jobs[1::3], map(Path, jobs[2::3])):
        written = llm.import_ckpt(model=placeholder(family), source=f"minitron://{ckpt}", output_path=out)
        assert Path(written) == out, (written, out)
        model = nemo_forward(out, out.with_name(out.name + ".hf"), tokens, out.with_name(out.name + ".nemo_logits.pt"))
        seen["classes"][out.name] = [type(model).__name__, type(model.config).__name__]
        llm.export_ckpt(path=out, target="minitron", output_path=out.with_name(out.name + ".minitron"))
    try:
        llm.import_ckpt(model=placeholder("qwen2"), source=f"minitron://{jobs[1]}", output_path=out_json.parent / "bad")
        seen["wrong_class_error"] = None
    except Exception as exc:  # noqa: BLE001 - the test checks the message
        seen["wrong_class_error"] = f"{type(exc).__name__}: {exc}"
    seen["bad_written"] = (out_json.parent / "bad").exists()
    out_json.write_text(json.dumps(seen))


if __name__ == "__main__":  # NeMo's torch_dist writer may spawn processes that re-import this module
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
