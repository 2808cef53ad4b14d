"""Typed configs of the data pipeline: training data, calibration data, preprocessing, corpus fetching.

``DataConfig`` is the ``data`` group (``conf/data/*.yaml``) used by training/distillation (calibration
samples of pruning are ``prune.calib_*`` in :mod:`nemo_minitron.config.prune`); ``PrepareWikitextConfig`` and
``FetchWikipediaConfig`` are the schemas of ``examples/prepare_wikitext.py`` and
``examples/fetch_wikipedia_excerpt.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from nemo_minitron.config.model import ConfigError

_SPLIT_NAMES = ("train", "valid", "test")


def parse_blend(data_prefix: list, key: str = "data.data_prefix") -> tuple[list[str], Optional[list[float]]]:
    """``[p1]`` / ``[p1, p2]`` → (prefixes, None); ``[w1, p1, w2, p2]`` → (prefixes, weights)."""
    items = list(data_prefix)
    if not items:
        raise ConfigError(f"{key} is empty: give a dataset prefix (PREFIX.bin/.idx) or a blend [w1, p1, w2, p2]")

    def is_number(x: Any) -> bool:
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return True
        try:
            float(str(x))
            return True
        except ValueError:
            return False

    if not is_number(items[0]):
        bad = [x for x in items if is_number(x)]
        if bad:
            raise ConfigError(f"{key}={items}: mixes weights and prefixes; use [w1, p1, w2, p2, ...]")
        return [str(x) for x in items], None
    if len(items) % 2:
        raise ConfigError(f"{key}={items}: a weighted blend needs pairs [w1, p1, w2, p2, ...]")
    weights, prefixes = items[0::2], items[1::2]
    for w, p in zip(weights, prefixes):
        if not is_number(w) or is_number(p):
            raise ConfigError(f"{key}={items}: expected weight, prefix pairs; got {w!r}, {p!r}")
        if float(w) < 0:
            raise ConfigError(f"{key}: weight {w} of {p} must be >= 0")
    if sum(float(w) for w in weights) <= 0:
        raise ConfigError(f"{key}: blend weights sum to 0")
    return [str(p) for p in prefixes], [float(w) for w in weights]


def parse_split(split: str, key: str = "data.split") -> list[float]:
    """``"98,1,1"`` → normalised [train, valid, test] fractions (missing entries are 0)."""
    try:
        parts = [float(x) for x in str(split).replace("/", ",").split(",") if x.strip() != ""]
    except ValueError:
        raise ConfigError(f"{key}={split!r} must be comma-separated numbers such as '98,1,1'") from None
    if not 1 <= len(parts) <= 3 or any(x < 0 for x in parts) or sum(parts) <= 0:
        raise ConfigError(f"{key}={split!r} must be 1-3 non-negative numbers with a positive sum, e.g. '98,1,1'")
    parts += [0.0] * (3 - len(parts))
    return [x / sum(parts) for x in parts]


@dataclass
class DataConfig:
    """Pre-training-style data: megatron GPTDatasets over preprocessed ``.bin``/``.idx`` files."""

    data_prefix: List[Any] = field(default_factory=list)
    """Dataset prefix(es) without .bin/.idx: ``[p1]`` or a weighted blend ``[w1, p1, w2, p2, ...]``."""

    split: str = "98,1,1"
    """train,valid,test proportions of each dataset's documents (megatron's split string)."""

    seq_length: int = 512
    """Tokens per sample (the model's sequence length)."""

    index_cache_dir: Optional[str] = None
    """Where megatron caches its shuffle/sample indices; default: ``index_cache/`` next to the first prefix."""

    seed: int = 1234
    """Seed of megatron's document and sample shuffling."""

    num_workers: int = 0
    """torch DataLoader worker processes (0 = load in the training process)."""

    reset_position_ids: bool = False
    """Restart position ids after every end-of-document token."""

    eod_mask_loss: bool = False
    """Exclude end-of-document targets from the loss."""

    def validate(self, prefix: str = "data") -> "DataConfig":
        """Check values; raise :class:`ConfigError` naming the key."""
        parse_blend(self.data_prefix, f"{prefix}.data_prefix")
        parse_split(self.split, f"{prefix}.split")
        if self.seq_length < 1:
            raise ConfigError(f"{prefix}.seq_length={self.seq_length} must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"{prefix}.num_workers={self.num_workers} must be >= 0")
        return self


@dataclass
class PrepareWikitextConfig:
    """``examples/prepare_wikitext.py``: tokenize a corpus into megatron ``.bin``/``.idx`` datasets."""

    input: str = MISSING
    """WikiText directory (wiki.{train,valid,test}.raw/.tokens), a .raw/.tokens/.txt/.jsonl/.parquet file,
    or a directory of such files."""

    tokenizer: str = MISSING
    """HF tokenizer directory, .gguf file, .tiktoken ranks file or sentencepiece .model."""

    output_prefix: str = MISSING
    """Output path prefix; files are ``<prefix>[_<split>]_text_document.{bin,idx,meta.json}``."""

    eod_token: Optional[str] = None
    """End-of-document token text; default the tokenizer's eos (set <|endoftext|> for chat tokenizers)."""

    workers: int = 0
    """Tokenizer processes; 0 = all cores, 1 = in-process."""

    text_field: str = "text"
    """JSONL/parquet field holding the text."""

    group: str = "auto"
    """JSONL/parquet rows: auto (regroup WikiText lines into articles when detected), wikitext or row."""

    chunk_docs: int = 16
    """Documents per task sent to a worker."""

    overwrite: bool = False
    """Replace existing output files (written atomically)."""

    progress: bool = True
    """Show a progress bar with documents/s and tokens/s."""

    def validate(self) -> "PrepareWikitextConfig":
        """Check values; raise :class:`ConfigError` naming the key."""
        if self.workers < 0:
            raise ConfigError(f"workers={self.workers} must be >= 0 (0 = all cores)")
        if self.chunk_docs < 1:
            raise ConfigError(f"chunk_docs={self.chunk_docs} must be >= 1")
        if self.group not in ("auto", "wikitext", "row"):
            raise ConfigError(f"group={self.group!r} must be auto, wikitext or row")
        return self


@dataclass
class FetchWikipediaConfig:
    """``examples/fetch_wikipedia_excerpt.py``: the embedded default corpus from the gensim wheel."""

    output_dir: str = MISSING
    """Directory receiving wiki.{train,valid,test}.raw, LICENSE.txt and SOURCE.json."""

    wheel: Optional[str] = None
    """An already downloaded gensim wheel; default: ``pip download --no-deps`` it into output_dir/_download."""

    gensim_version: str = "4.4.0"
    """gensim release whose wheel carries the excerpt."""

    min_chars: int = 500
    """Keep articles with more characters than this after markup removal (drops redirects and stubs)."""

    valid_every: int = 20
    """Article i goes to valid when i % valid_every == valid_every - 2, to test when == valid_every - 1."""

    overwrite: bool = False
    """Re-create the output even if it is already complete."""

    def validate(self) -> "FetchWikipediaConfig":
        """Check values; raise :class:`ConfigError` naming the key."""
        if self.valid_every < 3:
            raise ConfigError(f"valid_every={self.valid_every} must be >= 3")
        if self.min_chars < 0:
            raise ConfigError(f"min_chars={self.min_chars} must be >= 0")
        return self


def register(cs) -> None:
    """Register the data schemas in Hydra's ConfigStore."""
    cs.store(name="prepare_wikitext_schema", node=PrepareWikitextConfig)
    cs.store(name="fetch_wikipedia_schema", node=FetchWikipediaConfig)
    cs.store(group="data", name="schema", node=DataConfig)
