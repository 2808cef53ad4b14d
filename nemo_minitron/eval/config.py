"""Schema of ``examples/evaluate.py``: perplexity (and optionally lm-eval tasks) of one checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from nemo_minitron.config.model import ConfigError

CHECKPOINT_FORMATS = ("auto", "megatron", "hf", "nemo2", "gguf")


@dataclass
class EvaluateConfig:
    """``examples/evaluate.py``: load a checkpoint at TP × PP and score it on held-out data."""

    checkpoint: str = MISSING
    """A nemo_minitron megatron checkpoint, a Hugging Face directory, a NeMo 2 directory or a GGUF file."""

    checkpoint_format: str = "auto"
    """auto (detected from the files), megatron, hf, nemo2 or gguf."""

    data_path: Optional[str] = None
    """Evaluation text: an indexed-dataset prefix (PREFIX.bin/.idx), a .txt / .jsonl (field ``text``) / WikiText
    .raw file or a directory of them. Raw text is tokenized with the checkpoint's tokenizer (or ``tokenizer``).
    On the command line also ``data=`` (``data`` alone would name Hydra's ``data`` config group)."""

    tokenizer: Optional[str] = None
    """Tokenizer file/directory for raw text when the checkpoint carries none."""

    num_samples: int = 64
    """Number of windows scored (drawn deterministically from ``seed`` as the calibration loader draws them)."""

    seq_length: int = 512
    """Tokens per window; the loss is over the ``seq_length - 1`` next-token predictions inside each window."""

    micro_batch_size: int = 4
    """Windows per forward micro-batch."""

    tensor_model_parallel_size: int = 1
    """TP size the model is loaded at (any layout gives the same loss)."""

    pipeline_model_parallel_size: int = 1
    """PP size the model is loaded at; the remaining world size is data parallel (windows split over it)."""

    seed: int = 1234
    """Seed of the window sampling."""

    work_dir: Optional[str] = None
    """Where non-megatron checkpoints are imported to (reused when already complete); default: next to the input."""

    output: Optional[str] = None
    """Write the result as JSON to this file (atomically) as well as logging it."""

    overwrite: bool = False
    """Allow replacing an existing ``output`` file."""

    lm_eval_tasks: list[str] = field(default_factory=list)
    """EleutherAI lm-eval task names to run with the model in memory (needs the ``eval`` extra)."""

    lm_eval_include_path: Optional[str] = None
    """Directory of extra lm-eval task YAML files (local tasks; no hub access is made by this package)."""

    lm_eval_limit: Optional[int] = None
    """Score at most this many documents per lm-eval task."""

    lm_eval_num_fewshot: Optional[int] = None
    """Few-shot examples per lm-eval prompt (task default when null)."""

    max_new_tokens: int = 64
    """Generation budget of lm-eval ``generate_until`` requests when the task sets none."""

    def validate(self) -> "EvaluateConfig":
        """Check every field; raise :class:`ConfigError` naming the key. Returns self."""
        if not self.checkpoint:
            raise ConfigError("checkpoint is required: checkpoint=<megatron checkpoint | HF dir | NeMo 2 dir | .gguf>")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ConfigError(f"checkpoint_format={self.checkpoint_format!r} must be one of {list(CHECKPOINT_FORMATS)}")
        if not self.data_path and not self.lm_eval_tasks:
            raise ConfigError("nothing to evaluate: set data=<prefix | .txt | .jsonl> and/or lm_eval_tasks=[...]")
        for key in ("num_samples", "micro_batch_size", "tensor_model_parallel_size", "pipeline_model_parallel_size",
                    "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.seq_length < 2:
            raise ConfigError(f"seq_length={self.seq_length} must be >= 2 (one next-token prediction)")
        return self


def register(cs) -> None:
    """Register the schemas of this module."""
    cs.store(name="evaluate_schema", node=EvaluateConfig)
