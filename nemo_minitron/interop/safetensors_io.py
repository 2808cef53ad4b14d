"""Streaming access to Hugging Face weight files and a streaming, sharded safetensors writer.

:class:`HFWeights` reads one tensor at a time from ``model.safetensors``, a sharded
``model.safetensors.index.json`` set (plain file reads, no mmap, so the source file never counts
towards the process's memory), or legacy ``pytorch_model*.bin`` files (loaded with
``torch.load(weights_only=True, mmap=True)``). :class:`ShardedSafetensorsWriter` writes each tensor
to disk as it arrives, into ``model-0000i-of-0000N.safetensors`` shards of bounded size plus the
index Hugging Face expects. Conversion therefore never holds more than the megatron model and one
tensor in memory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from nemo_minitron.logging import get_logger
from nemo_minitron.paths import PathLike

log = get_logger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


def parse_size(size: Union[str, int]) -> int:
    """Bytes in ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a plain integer."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if not m:
        raise ValueError(f"cannot parse size {size!r} (examples: 5GB, 500MB, 1000000)")
    num, unit = float(m.group(1)), m.group(2).rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    return int(num * base**power)


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def read_safetensors_header(path: PathLike) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its data section starts."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100 * 2**20:
            raise ValueError(f"{path} is not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors_tensor(path: PathLike, entry: dict, data_start: int) -> torch.Tensor:
    """Read one tensor with an ordinary file read (no mmap: the file's pages do not count as our RSS)."""
    dtype = _ST_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ValueError(f"{path}: unsupported safetensors dtype {entry['dtype']}")
    begin, end = entry["data_offsets"]
    buf = bytearray(end - begin)
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        if f.readinto(buf) != len(buf):
            raise ValueError(f"{path}: truncated tensor data")
    if not buf:
        return torch.empty(entry["shape"], dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(entry["shape"])


class HFWeights:
    """Lazy, read-once view of the weight tensors in a Hugging Face model directory."""

    def __init__(self, directory: PathLike):
        d = Path(directory)
        self.directory = d
        self._file_of: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self._bin_cache: dict[Path, dict] = {}
        self.bytes_read = 0
        """Tensor bytes read from safetensors files so far (``get`` and ``get_slice``)."""
        if (d / SAFE_INDEX).is_file():
            index = json.loads((d / SAFE_INDEX).read_text())
            self._file_of = {k: d / v for k, v in index["weight_map"].items()}
        elif (d / SAFE_SINGLE).is_file():
            self._file_of = {k: d / SAFE_SINGLE for k in read_safetensors_header(d / SAFE_SINGLE)[0]}
        elif (d / BIN_INDEX).is_file():
            index = json.loads((d / BIN_INDEX).read_text())
            self._file_of = {k: d / v for k, v in index["weight_map"].items()}
        elif (d / BIN_SINGLE).is_file():
            for k in self._load_bin(d / BIN_SINGLE):
                self._file_of[k] = d / BIN_SINGLE
        else:
            raise FileNotFoundError(f"{d} holds no Hugging Face weights ({SAFE_SINGLE}, {SAFE_INDEX}, "
                                    f"{BIN_SINGLE} or {BIN_INDEX})")
        root = d.resolve()
        for f in set(self._file_of.values()):
            if root not in f.resolve().parents:
                from nemo_minitron.checkpoint import CheckpointError

                raise CheckpointError(f"weight shard {f} listed in the index of {d} lies outside that directory; "
                                 "refusing to read it")
            if not f.is_file():
                raise FileNotFoundError(f"weight shard {f} listed in the index of {d} does not exist")

    def _load_bin(self, path: Path) -> dict:
        if path not in self._bin_cache:
            # weights_only: never unpickle arbitrary objects; mmap: do not read the whole file up front
            self._bin_cache[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return self._bin_cache[path]

    def keys(self) -> list[str]:
        """All tensor names."""
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (a fresh CPU tensor; raises KeyError naming the missing key)."""
        if name not in self._file_of:
            raise KeyError(f"tensor {name!r} not found in the Hugging Face weights of {self.directory}")
        path = self._file_of[name]
        if path.suffix == ".bin":
            return self._load_bin(path)[name]
        path, entry, data_start = self._entry(name)
        t = read_safetensors_tensor(path, entry, data_start)
        self.bytes_read += t.numel() * t.element_size()
        return t

    def _entry(self, name: str) -> tuple[Path, dict, int]:
        path = self._file_of[name]
        if path not in self._handles:
            self._handles[path] = read_safetensors_header(path)
        header, data_start = self._handles[path]  # type: ignore[misc]
        return path, header[name], data_start

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` without reading its data (from the safetensors header)."""
        if name not in self._file_of:
            raise KeyError(f"tensor {name!r} not found in the Hugging Face weights of {self.directory}")
        if self._file_of[name].suffix == ".bin":
            return tuple(self._load_bin(self._file_of[name])[name].shape)
        return tuple(self._entry(name)[1]["shape"])

    def get_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """``get(name).narrow(dim, start, stop - start)`` reading only those bytes (dims 0 and 1 of safetensors).

        Rows (dim 0) are one contiguous read; columns (dim 1) one read per row. Tensor-parallel import
        reads just this rank's part of each matrix this way.
        """
        if name not in self._file_of:
            raise KeyError(f"tensor {name!r} not found in the Hugging Face weights of {self.directory}")
        path = self._file_of[name]
        if path.suffix == ".bin" or dim not in (0, 1):
            return self.get(name).narrow(dim, start, stop - start).clone()
        path, entry, data_start = self._entry(name)
        dtype = _ST_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: unsupported safetensors dtype {entry['dtype']}")
        shape = list(entry["shape"])
        if not 0 <= start <= stop <= shape[dim]:
            raise ValueError(f"slice [{start}:{stop}] of dim {dim} is outside {name} {tuple(shape)}")
        item = torch.empty((), dtype=dtype).element_size()
        inner = 1
        for s in shape[dim + 1:]:
            inner *= s
        rows = 1 if dim == 0 else shape[0]
        row_stride = inner * shape[dim] * item  # bytes between consecutive outer rows
        chunk = (stop - start) * inner * item
        out_shape = shape[:dim] + [stop - start] + shape[dim + 1:]
        buf = bytearray(chunk * rows)
        view = memoryview(buf)
        begin = entry["data_offsets"][0]
        with open(path, "rb") as f:
            for r in range(rows):
                f.seek(data_start + begin + r * row_stride + start * inner * item)
                if f.readinto(view[r * chunk:(r + 1) * chunk]) != chunk:
                    raise ValueError(f"{path}: truncated tensor data")
        self.bytes_read += len(buf)
        if not buf:
            return torch.empty(out_shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(out_shape)

    def close(self) -> None:
        """Drop open file handles and cached .bin state dicts."""
        self._handles.clear()
        self._bin_cache.clear()


class DictWeights:
    """The :class:`HFWeights` interface over an in-memory state dict; ``get`` hands tensors over (pops)."""

    def __init__(self, state: dict[str, torch.Tensor], source: str = "<memory>"):
        self._state = state
        self.directory = source
        self._names = list(state)

    def keys(self) -> list[str]:
        """All tensor names."""
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name``; it is removed from the dict so its memory is released once consumed."""
        if name not in self._state:
            raise KeyError(f"tensor {name!r} not found in the weights of {self.directory} (or already consumed)")
        return self._state.pop(name)

    def close(self) -> None:
        """Release every remaining tensor."""
        self._state.clear()


class _ShardFile:
    """One safetensors shard being written: tensor bytes go to disk at once, the header is prepended at the end."""

    def __init__(self, path: Path, metadata: dict[str, str]):
        self.path = path
        self.metadata = metadata
        self._data_path = path.with_name(path.name + ".data")
        self._data = open(self._data_path, "wb")
        self.entries: dict[str, dict] = {}
        self.nbytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype not in _ST_NAMES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        self._data.write(memoryview(raw))
        n = t.numel() * t.element_size()
        self.entries[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [self.nbytes, self.nbytes + n]}
        self.nbytes += n

    def close(self) -> None:
        import shutil

        self._data.close()
        header = json.dumps({"__metadata__": self.metadata, **self.entries}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the data section starts 8-byte aligned
        with open(self.path, "wb") as out, open(self._data_path, "rb") as data:
            out.write(len(header).to_bytes(8, "little"))
            out.write(header)
            shutil.copyfileobj(data, out, 64 * 2**20)
        self._data_path.unlink()


class ShardedSafetensorsWriter:
    """Write tensors into size-bounded safetensors shards plus ``model.safetensors.index.json``.

    Each tensor is written to disk as soon as it is added (nothing is buffered in memory), and a new
    shard starts when the current one would exceed ``max_shard_bytes``. A model that fits one shard
    becomes a single ``model.safetensors``.
    """

    def __init__(self, directory: PathLike, max_shard_bytes: Union[int, str] = "5GB",
                 metadata: Optional[dict[str, str]] = None):
        self.directory = Path(directory)
        self.max_bytes = parse_size(max_shard_bytes)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._current: Optional[_ShardFile] = None
        self._shards: list[_ShardFile] = []
        self._names: set[str] = set()
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor."""
        if name in self._names:
            raise ValueError(f"tensor {name!r} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._current is not None and self._current.entries and self._current.nbytes + nbytes > self.max_bytes:
            self._current.close()
            self._current = None
        if self._current is None:
            self._current = _ShardFile(self.directory / f"shard-{len(self._shards):05d}.safetensors.tmp",
                                       self.metadata)
            self._shards.append(self._current)
        self._current.add(name, tensor)
        self._names.add(name)
        self.total_bytes += nbytes

    def add_all(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Write several tensors."""
        for name, tensor in items:
            self.add(name, tensor)

    def close(self) -> list[str]:
        """Finish the last shard, give shards their final names and write the index. Returns file names."""
        if self._current is not None:
            self._current.close()
            self._current = None
        n = len(self._shards)
        if n == 1:
            os.replace(self._shards[0].path, self.directory / SAFE_SINGLE)
            return [SAFE_SINGLE]
        weight_map, files = {}, []
        for i, shard in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(shard.path, self.directory / final)
            files.append(final)
            weight_map.update({k: final for k in shard.entries})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return files + [SAFE_INDEX]
