"""Schema of ``examples/convert_checkpoint.py`` (``conf/convert_checkpoint.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from nemo_minitron.config.model import PRECISIONS, TRANSFORMER_IMPLS, ConfigError


@dataclass
class ConvertModelConfig:
    """Runtime settings of the megatron side; the architecture always comes from the input checkpoint."""

    tensor_model_parallel_size: int = 1
    """TP layout to validate against and to convert with when launched with TP×PP ranks (any layout loads the result)."""

    pipeline_model_parallel_size: int = 1
    """PP layout, as for tensor_model_parallel_size."""

    precision: str = "auto"
    """Dtype of the megatron model during conversion: auto (fp32 on CPU, bf16 on GPU), fp32, bf16 or fp16."""

    transformer_impl: str = "auto"
    """Layer spec of the megatron model during conversion: auto (Transformer Engine on a GPU when importable,
    else local), local or transformer_engine. The written checkpoint loads into either spec."""


@dataclass
class ConvertConfig:
    """Convert a checkpoint between Hugging Face, GGUF, NeMo 2 and nemo_minitron megatron formats."""

    input_path: str = MISSING
    """Input: HF model dir, .gguf file (or the shortcut `smollm2`), NeMo 2 dir (or a tar of one), megatron checkpoint."""

    input_format: str = "hf"
    """hf, gguf, nemo2 (NeMo 2 directory), nemo (NeMo 1 .nemo archive or extracted directory) or megatron."""

    output_path: str = MISSING
    """Output directory (written atomically; must not exist unless overwrite=true)."""

    output_format: str = "megatron"
    """hf, nemo2, nemo (a .nemo archive when output_path ends in .nemo, else a directory) or megatron."""

    model: ConvertModelConfig = field(default_factory=ConvertModelConfig)
    """Parallel layout and dtype of the megatron model."""

    hf_model_type: Optional[str] = None
    """HF output architecture (llama, mistral, qwen2, qwen3); null = the source's, else implied by the architecture."""

    dtype: str = "auto"
    """HF output weight dtype: auto (the source's dtype recorded at import, else float32), float32, bfloat16, float16."""

    max_shard_size: str = "5GB"
    """Largest safetensors shard of an HF output (e.g. 5GB, 500MB)."""

    tokenizer_path: Optional[str] = None
    """Tokenizer directory to carry along when the input has none next to its weights."""

    trust_remote_code: bool = False
    """Allow transformers to run code shipped with an HF input (only for model types it does not know)."""

    overwrite: bool = False
    """Replace an existing output_path."""

    cache_dir: Optional[str] = None
    """Cache for fetched inputs such as `smollm2` (default $NEMO_MINITRON_CACHE or ~/.cache/nemo_minitron)."""

    def validate(self) -> "ConvertConfig":
        """Check formats and sizes; raise :class:`ConfigError` naming the key. Returns self."""
        from nemo_minitron.interop.convert import INPUT_FORMATS, OUTPUT_FORMATS
        from nemo_minitron.interop.hf import ARCHITECTURES, DTYPES
        from nemo_minitron.interop.safetensors_io import parse_size

        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"input_format={self.input_format!r} must be one of {list(INPUT_FORMATS)}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"output_format={self.output_format!r} must be one of {list(OUTPUT_FORMATS)}")
        from nemo_minitron.config.checks import positive_int

        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            positive_int(f"model.{key}", getattr(self.model, key))
        if self.model.precision not in PRECISIONS:
            raise ConfigError(f"model.precision={self.model.precision!r} must be one of {list(PRECISIONS)}")
        if self.model.transformer_impl not in TRANSFORMER_IMPLS:
            raise ConfigError(f"model.transformer_impl={self.model.transformer_impl!r} must be one of "
                              f"{list(TRANSFORMER_IMPLS)}")
        if self.hf_model_type is not None and self.hf_model_type not in ARCHITECTURES:
            raise ConfigError(f"hf_model_type={self.hf_model_type!r} must be one of {sorted(ARCHITECTURES)} or null")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} must be auto or one of {sorted(DTYPES)}")
        try:
            parse_size(self.max_shard_size)
        except ValueError:
            raise ConfigError(f"max_shard_size={self.max_shard_size!r} is not a size such as 5GB or 500MB") from None
        return self


def register(cs) -> None:
    """Register the schemas of this module."""
    cs.store(name="convert_checkpoint_schema", node=ConvertConfig)
