"""``minitron://`` checkpoints in NeMo: an importer and an exporter for NeMo's GPT model classes.

Importing this module (it imports NeMo) registers, for ``llm.GPTModel``, ``llm.LlamaModel``, ``llm.MistralModel``,
``llm.Qwen2Model`` and ``llm.Qwen3Model``::

    llm.import_ckpt(model=llm.LlamaModel(llm.Llama31Config8B()), source="minitron:///path/to/our_ckpt",
                    output_path="/path/to/nemo2_ckpt")       # our checkpoint -> NeMo 2
    llm.export_ckpt(path="/path/to/nemo2_ckpt", target="minitron", output_path="/path/to/our_ckpt")

The ``nemo`` command loads it through our ``nemo_run.cli`` entry point (:mod:`.cli`), so ``nemo llm import``
and ``nemo llm export`` accept ``minitron://`` too; Python callers import it or call
:func:`nemo_minitron.nemo_plugin.register`.

The import writes the architecture, weights and tokenizer of *our* checkpoint: the model the caller passes only
selects the NeMo model class (as NeMo's own ``hf://`` importers do; its config is a placeholder and is not
used). A class that cannot compute the checkpoint's network (``llm.LlamaModel`` for a checkpoint with QKV bias,
...) is refused naming the class to use; ``llm.GPTModel`` takes the class the architecture implies. The
conversion itself is :func:`nemo_minitron.interop.nemo2.export_nemo2` /
:func:`~nemo_minitron.interop.convert.convert` (``nemo2`` → ``megatron``): it runs in one process, and a
process group it had to create is destroyed afterwards so that NeMo's trainer can create its own.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional

from nemo.collections import llm
from nemo.lightning import io

from nemo_minitron.config.model import ConfigError

EXT = "minitron"


@contextlib.contextmanager
def _own_world() -> Iterator[None]:
    """Run our conversion; tear down the process group and model parallelism if it had to create them."""
    import torch.distributed as dist

    from nemo_minitron import runtime

    existed = dist.is_available() and dist.is_initialized()
    try:
        yield
    finally:
        if not existed:
            runtime.shutdown()


class MinitronImporter(io.ModelConnector["MinitronCheckpoint", llm.GPTModel]):
    """``minitron://CKPT`` → NeMo 2 checkpoint, as NeMo's ``family`` model class (``None``: the architecture's)."""

    #: NeMo family this importer writes (:data:`nemo_minitron.interop.nemo2.NEMO_FAMILIES`); None: from the checkpoint
    family: Optional[str] = None

    def _family(self, cfg=None) -> str:
        from nemo_minitron.checkpoint import load_model_config
        from nemo_minitron.interop.nemo2 import nemo_family_of, nemo_family_problem

        cfg = cfg or load_model_config(Path(str(self)))
        family = self.family or nemo_family_of(cfg)
        problem = nemo_family_problem(cfg, family)
        if problem:
            raise ConfigError(f"source=minitron://{self}: {problem}; import it with model=llm."
                              f"{MODELS[nemo_family_of(cfg)].__name__}(...) (any config: the checkpoint's is used)")
        return family

    def _context(self, build_path: str):
        from fiddle._src.experimental import serialization

        from nemo_minitron.checkpoint import load_model_config, tokenizer_path
        from nemo_minitron.interop.nemo2 import io_json_from_config

        ckpt = Path(str(self))
        cfg = load_model_config(ckpt)
        doc = io_json_from_config(cfg, with_tokenizer=tokenizer_path(ckpt) is not None, family=self._family(cfg))
        return getattr(serialization.load_json(doc).model, build_path)

    @property
    def config(self) -> llm.GPTConfig:
        """The NeMo config of the checkpoint (the one the written ``io.json`` holds)."""
        import fiddle as fdl

        return fdl.build(self._context("config"))

    @property
    def tokenizer(self):
        """NeMo's ``AutoTokenizer`` over the checkpoint's tokenizer files; None when it carries none."""
        from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer

        from nemo_minitron.checkpoint import tokenizer_path

        tok = tokenizer_path(Path(str(self)))
        return AutoTokenizer(str(tok)) if tok is not None else None

    def init(self) -> llm.GPTModel:
        """The (unconfigured) NeMo model for the checkpoint: its family's class, its config and tokenizer."""
        return MODELS[self._family()](self.config, tokenizer=self.tokenizer)

    def apply(self, output_path: Path) -> Path:
        """Write the NeMo 2 checkpoint ``output_path`` (NeMo's connector has removed it when overwriting)."""
        from nemo_minitron.interop.nemo2 import export_nemo2

        with _own_world():
            return export_nemo2(Path(str(self)), output_path, nemo_family=self._family())

    def on_import_ckpt(self, model) -> None:
        """Give the caller's model our checkpoint's tokenizer, as NeMo's importers do (no-op without one)."""
        tok = self.tokenizer
        if tok is not None:
            model.tokenizer = tok
            if hasattr(model, "__io__") and hasattr(tok, "__io__"):
                model.__io__.tokenizer = tok.__io__


class MinitronExporter(io.ModelConnector[llm.GPTModel, "MinitronCheckpoint"]):
    """NeMo 2 checkpoint (this connector's path) → our megatron checkpoint (:func:`~nemo_minitron.interop.convert.convert`)."""

    @property
    def config(self) -> Any:
        """Our :class:`~nemo_minitron.config.model.ModelConfig` of the NeMo checkpoint."""
        from nemo_minitron.interop.nemo2 import model_config_from_nemo2, read_context

        return model_config_from_nemo2(read_context(Path(str(self))))

    def apply(self, output_path: Path, precision: str = "auto", tp: int = 1, pp: int = 1) -> Path:
        """Write our checkpoint ``output_path`` (loads at any TP/PP; ``tp``/``pp`` record a preferred layout)."""
        from nemo_minitron.interop.convert import convert

        with _own_world():
            return convert(Path(str(self)), "nemo2", output_path, "megatron", tp=tp, pp=pp, precision=precision)


#: NeMo model class per family, and the classes the connectors are registered for (None: the architecture's)
MODELS = {"llama": llm.LlamaModel, "mistral": llm.MistralModel, "qwen2": llm.Qwen2Model, "qwen3": llm.Qwen3Model}
REGISTERED: dict[type, tuple[type, type]] = {}


def _register() -> None:
    for family, model_cls in [(None, llm.GPTModel), *MODELS.items()]:
        if model_cls in REGISTERED:
            continue
        name = model_cls.__name__.removesuffix("Model")
        importer = type(f"Minitron{name}Importer", (MinitronImporter,), {"family": family, "__module__": __name__})
        exporter = type(f"Minitron{name}Exporter", (MinitronExporter,), {"__module__": __name__})
        REGISTERED[model_cls] = (io.model_importer(model_cls, EXT)(importer), io.model_exporter(model_cls, EXT)(exporter))


_register()
