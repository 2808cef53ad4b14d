"""Training data: megatron-core GPTDatasets and a data-parallel, resumable loader.

:func:`build_datasets` turns a :class:`DataConfig` (one prefix or a weighted blend, a split string,
sequence length, seed, index cache directory) into megatron-core ``GPTDataset``/``BlendedDataset``
objects through ``BlendedMegatronDatasetBuilder``. Before megatron sees anything, every prefix is
integrity-checked (:mod:`nemo_minitron.data.integrity`) and every split is checked against the
number of documents it receives: megatron-core loops forever on a split with no tokens, here it is
a :class:`ConfigError` naming ``data.split``.

:func:`build_dataloader` walks the dataset in megatron's pre-training order: global batches of
``micro_batch_size * dp_size`` consecutive sample indices, of which data-parallel rank ``r`` takes
the ``r``-th micro-batch. Samples are therefore disjoint across ranks, and restarting from
``consumed_samples`` (global samples already trained on) replays exactly the same sequence.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Optional

import numpy as np
import torch

from nemo_minitron.config.data import DataConfig, parse_blend, parse_split
from nemo_minitron.config.model import ConfigError
from nemo_minitron.data.integrity import DataIntegrityError, DatasetInfo, check_indexed_dataset
from nemo_minitron.data.tokenizer import MegatronTokenizerAdapter, Tokenizer, as_tokenizer
from nemo_minitron.logging import get_logger

__all__ = ["DataConfig", "build_datasets", "build_dataloader", "PretrainingBatchSampler", "check_split_sizes",
           "split_document_ranges"]

log = get_logger(__name__)
_SPLITS = ("train", "valid", "test")


def split_document_ranges(split: str, num_sequences: int) -> list[Optional[tuple[int, int]]]:
    """Sequence-index range ``[begin, end)`` megatron gives each of train/valid/test (None = split unused)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [None if m is None else (int(round(m[0] * num_sequences)), int(round(m[1] * num_sequences)))
            for m in matrix]


def check_split_sizes(info: DatasetInfo, split: str, key: str = "data.split") -> None:
    """Raise :class:`ConfigError` if a used split of ``info``'s dataset would get no documents or no tokens."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ranges = split_document_ranges(split, info.num_sequences)
    lengths = None
    for name, rng in zip(_SPLITS, ranges):
        if rng is None:
            continue
        begin, end = rng
        if end <= begin:
            raise ConfigError(
                f"{key}={split!r} gives the {name} split 0 of the {info.num_documents} documents in "
                f"{info.prefix!r} (megatron-core would loop forever): use more documents or a larger {name} share, "
                f"or set its share to 0")
        if lengths is None:
            ds = IndexedDataset(info.prefix)
            # Copy: the array is a view into an mmap that closes when the dataset is collected.
            lengths = np.array(ds.sequence_lengths)
            del ds
        if int(lengths[begin:end].sum()) == 0:
            raise ConfigError(f"{key}={split!r}: the {name} split of {info.prefix!r} has documents but no tokens")


def _adapter(tokenizer: Optional[Tokenizer], infos: list[DatasetInfo]) -> MegatronTokenizerAdapter:
    if tokenizer is not None:
        return MegatronTokenizerAdapter.from_tokenizer(tokenizer)
    recorded = {(i.vocab_size, i.eod_id) for i in infos}
    if any(v is None or e is None for v, e in recorded):
        missing = [i.prefix for i in infos if i.vocab_size is None]
        raise ConfigError(f"datasets {missing} have no .meta.json with the tokenizer's vocab/EOD: pass tokenizer=")
    if len(recorded) > 1:
        raise ConfigError(f"data.data_prefix blends datasets made with different tokenizers (vocab, eod): {recorded}")
    vocab, eod = recorded.pop()
    name = (infos[0].meta or {}).get("tokenizer", {}).get("path", "")
    return MegatronTokenizerAdapter(vocab, eod, name=name)


def _gpt_config(cfg: DataConfig, blend, cache_dir: str, adapter) -> Any:
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    wanted = dict(random_seed=cfg.seed, sequence_length=cfg.seq_length, blend=blend, split=cfg.split,
                  path_to_cache=cache_dir, tokenizer=adapter, reset_position_ids=cfg.reset_position_ids,
                  reset_attention_mask=False, eod_mask_loss=cfg.eod_mask_loss, create_attention_mask=False,
                  mmap_bin_files=True)
    # Keep only the fields this megatron-core release knows (newer ones are optional with defaults).
    known = {f.name for f in dataclasses.fields(GPTDatasetConfig) if f.init}
    return GPTDatasetConfig(**{k: v for k, v in wanted.items() if k in known})


def build_datasets(cfg: DataConfig, num_samples: dict, tokenizer: Tokenizer | str | os.PathLike | None = None,
                   check_tokens: bool = True) -> tuple[Any, Any, Any]:
    """Build (train, valid, test) megatron datasets; a split with a 0 share comes back as None.

    ``num_samples`` maps train/valid/test to the number of samples wanted (missing keys mean 0;
    megatron repeats epochs to reach it). ``tokenizer`` (object or path) is optional when the
    datasets carry ``.meta.json`` from our preprocessing; given, its vocabulary is checked against
    the data. Call on every rank after ``torch.distributed`` is initialised (rank 0 builds the index
    cache first, the other ranks then read it).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    cfg.validate()
    parse_split(cfg.split)
    unknown = set(num_samples) - set(_SPLITS)
    if unknown:
        raise ConfigError(f"num_samples has unknown keys {sorted(unknown)}; use train, valid, test")
    sizes = [int(num_samples.get(name) or 0) for name in _SPLITS]
    if any(s < 0 for s in sizes):
        raise ConfigError(f"num_samples={num_samples} must be >= 0")
    prefixes, weights = parse_blend(cfg.data_prefix)
    prefixes = [os.path.abspath(os.path.expanduser(p)) for p in prefixes]
    tok = as_tokenizer(tokenizer)
    infos = []
    for p in prefixes:
        info = check_indexed_dataset(p, vocab_size=None, scan_tokens=False)
        vocab = tok.vocab_size if tok is not None else info.vocab_size
        if check_tokens or tok is not None:
            info = check_indexed_dataset(p, vocab_size=vocab, scan_tokens=vocab is not None)
        if tok is not None and info.eod_id is not None and info.eod_id != tok.eod_id:
            raise DataIntegrityError(f"dataset {p!r} was tokenized with EOD id {info.eod_id}, the tokenizer's is "
                                     f"{tok.eod_id}")
        check_split_sizes(info, cfg.split)
        infos.append(info)
    adapter = _adapter(tok, infos)
    if weights is not None or len(prefixes) > 1:
        if not torch.distributed.is_initialized():
            raise RuntimeError("blended datasets need torch.distributed: call nemo_minitron.runtime."
                               "init_distributed() (or init_model_parallel) first")
    cache_dir = os.path.abspath(os.path.expanduser(cfg.index_cache_dir)) if cfg.index_cache_dir else \
        os.path.join(os.path.dirname(prefixes[0]), "index_cache")
    gpt_cfg = _gpt_config(cfg, (prefixes, weights), cache_dir, adapter)
    builder = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, gpt_cfg)
    train, valid, test = builder.build()
    log.info("datasets: %s samples of %d tokens (train/valid/test) from %d prefix(es), %d tokens in total",
             [None if d is None else len(d) for d in (train, valid, test)], cfg.seq_length, len(prefixes),
             sum(i.num_tokens for i in infos))
    return train, valid, test


class PretrainingBatchSampler(torch.utils.data.Sampler):
    """Megatron's sequential pre-training order, sharded over data-parallel ranks.

    Global batch ``g`` holds sample indices ``[g*B, (g+1)*B)`` with ``B = micro_batch_size * dp_size``
    (starting at ``consumed_samples``); rank ``r`` yields its slice ``[r*mbs, (r+1)*mbs)``. With
    ``drop_last`` an incomplete final global batch is skipped, so every rank runs the same number of steps.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, drop_last: bool = True):
        if micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size={micro_batch_size} must be >= 1")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ConfigError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        if total_samples < 1:
            raise ConfigError(f"the dataset has no samples (total_samples={total_samples})")
        if not 0 <= consumed_samples < total_samples:
            raise ConfigError(f"consumed_samples={consumed_samples} must be in [0, {total_samples}) "
                              "(the dataset is exhausted: build it with more num_samples)")
        self.total_samples, self.consumed_samples = total_samples, consumed_samples
        self.micro_batch_size, self.dp_rank, self.dp_size, self.drop_last = micro_batch_size, dp_rank, dp_size, drop_last
        self.global_batch = micro_batch_size * dp_size

    def __len__(self) -> int:
        remaining = self.total_samples - self.consumed_samples
        full = remaining // self.global_batch
        partial = remaining % self.global_batch
        return full + int(not self.drop_last and partial > self.dp_rank * self.micro_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.dp_rank * self.micro_batch_size, (self.dp_rank + 1) * self.micro_batch_size
        for start in range(self.consumed_samples, self.total_samples, self.global_batch):
            batch = list(range(start, min(start + self.global_batch, self.total_samples)))
            if len(batch) < self.global_batch:
                if self.drop_last or len(batch) <= lo:
                    return
            yield batch[lo:hi]


def build_dataloader(dataset, micro_batch_size: int, dp_rank: int, dp_size: int, consumed_samples: int = 0,
                     num_workers: int = 0, drop_last: bool = True) -> torch.utils.data.DataLoader:
    """DataLoader over ``dataset`` yielding {"tokens", "labels", "loss_mask", "position_ids"} micro-batches.

    Disjoint across the ``dp_size`` ranks and resumable: ``consumed_samples`` counts global samples
    already used (``steps * micro_batch_size * dp_size``).
    """
    if dataset is None:
        raise ConfigError("build_dataloader got no dataset (its split share is 0)")
    sampler = PretrainingBatchSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank, dp_size, drop_last)
    generator = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       persistent_workers=num_workers > 0, generator=generator,
                                       worker_init_fn=_seed_worker if num_workers else None)


def _seed_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)
