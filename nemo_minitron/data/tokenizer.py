"""One tokenizer interface over Hugging Face, GGUF, tiktoken and sentencepiece files.

:func:`load_tokenizer` takes a path and returns a :class:`Tokenizer` with ``encode`` / ``decode`` /
``vocab_size`` / ``eod_id`` / ``bos_id``; everything works offline:

* a Hugging Face tokenizer directory: ``tokenizer.json`` is read with the ``tokenizers`` library
  (fast, no ``transformers`` import); special tokens and ``add_bos_token`` come from
  ``tokenizer_config.json``. Directories without ``tokenizer.json`` fall back to ``AutoTokenizer``;
* a ``.gguf`` file: the vocabulary embedded in the GGUF metadata, via ``transformers``;
* a ``.tiktoken`` ranks file (GPT-2/r50k, p50k, cl100k, o200k or a custom one); ``<|endoftext|>``
  gets the id after the last rank unless the file is a known OpenAI encoding;
* a sentencepiece ``.model``.

``encode`` never adds special tokens; :meth:`Tokenizer.encode_document` adds BOS (when the
tokenizer wants one) and EOD, which is what the preprocessing and calibration code store.
:class:`MegatronTokenizerAdapter` wraps a tokenizer (or bare vocab/EOD ids) for megatron-core's
``GPTDatasetConfig``.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["Tokenizer", "TokenizerError", "load_tokenizer", "MegatronTokenizerAdapter", "as_tokenizer"]

# GPT-2 / r50k / p50k pre-tokenisation regex (the pattern tiktoken ships as r50k_pat_str).
_GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
               r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
_O200K_PAT = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+""",
])
# Known OpenAI encodings by number of mergeable ranks: (regex, id of <|endoftext|>).
_TIKTOKEN_KNOWN = {50256: (_GPT2_PAT, 50256), 50280: (_GPT2_PAT, 50256), 100256: (_CL100K_PAT, 100257),
                   199998: (_O200K_PAT, 199999)}
_EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or lacks a token the pipeline needs."""


@dataclass
class Tokenizer:
    """A loaded tokenizer; picklable by path (workers reload it with :func:`load_tokenizer`)."""

    path: str
    """File or directory it was loaded from."""
    kind: str
    """hf, gguf, tiktoken or sentencepiece."""
    vocab_size: int
    """Number of token ids (largest id + 1, added/special tokens included)."""
    eod_id: int
    """End-of-document token appended after every document."""
    bos_id: Optional[int]
    """Beginning-of-sequence token id, or None if the tokenizer has none."""
    add_bos: bool
    """Whether documents start with ``bos_id`` (Llama-style tokenizers)."""
    _encode: Callable[[str], list[int]] = field(repr=False, compare=False)
    _decode: Callable[[list[int]], str] = field(repr=False, compare=False)
    _token_to_id: Optional[Callable[[str], Optional[int]]] = field(default=None, repr=False, compare=False)
    eod_token: Optional[str] = None
    """Override of the end-of-document token (by its text), if one was requested."""
    _json: Optional[str] = field(default=None, repr=False, compare=False)
    """Serialized ``tokenizers`` model when loading by path is slow (GGUF): pickles carry it instead."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special tokens."""
        return self._encode(text)

    def decode(self, ids) -> str:
        """Text of a sequence of token ids."""
        return self._decode([int(i) for i in ids])

    def encode_document(self, text: str) -> list[int]:
        """Ids of one document as stored in datasets: optional BOS, the text, then EOD."""
        ids = self._encode(text)
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        ids.append(self.eod_id)
        return ids

    def describe(self) -> dict[str, Any]:
        """JSON-able summary recorded next to preprocessed data."""
        return {"path": os.path.abspath(self.path), "kind": self.kind, "vocab_size": self.vocab_size,
                "eod_id": self.eod_id, "eod_token": self.eod_token, "bos_id": self.bos_id, "add_bos": self.add_bos}

    def token_to_id(self, token: str) -> Optional[int]:
        """Id of a token given by its text (special tokens included), or None."""
        return None if self._token_to_id is None else self._token_to_id(token)

    def __reduce__(self):
        if self._json is not None:
            return (_restore_json, (self._json, self.path, self.kind, self.vocab_size, self.eod_id, self.bos_id,
                                    self.add_bos, self.eod_token))
        return (load_tokenizer, (self.path, self.eod_token))


def _fast_tokenizer(tok, path: str, kind: str, vocab_size: int, eod: int, bos: Optional[int], add_bos: bool,
                    json_str: Optional[str] = None) -> Tokenizer:
    """Wrap a ``tokenizers.Tokenizer``."""
    return Tokenizer(path, kind, vocab_size, eod, bos, add_bos,
                     lambda text: tok.encode(text, add_special_tokens=False).ids,
                     lambda ids: tok.decode(ids, skip_special_tokens=False), tok.token_to_id, _json=json_str)


def _restore_json(json_str: str, path: str, kind: str, vocab_size: int, eod: int, bos: Optional[int],
                  add_bos: bool, eod_token: Optional[str]) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    tok = _fast_tokenizer(HFTokenizer.from_str(json_str), path, kind, vocab_size, eod, bos, add_bos, json_str)
    tok.eod_token = eod_token
    return tok


def _token_content(value: Any) -> Optional[str]:
    """Special-token entry of tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _load_hf_dir(path: Path) -> Tokenizer:
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        return _from_transformers(str(path), "hf", AutoTokenizer_kwargs={})
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_file(str(tok_file))
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    vocab_size = max(vocab_size, max(tok.get_vocab(with_added_tokens=True).values()) + 1)

    def token_id(name: str) -> Optional[int]:
        content = _token_content(cfg.get(name))
        return None if content is None else tok.token_to_id(content)

    eod = token_id("eos_token")
    for cand in _EOD_CANDIDATES:
        if eod is not None:
            break
        eod = tok.token_to_id(cand)
    if eod is None:
        raise TokenizerError(f"tokenizer {path}: no end-of-document token (set eos_token in tokenizer_config.json)")
    bos = token_id("bos_token")
    add_bos = bool(cfg.get("add_bos_token", False))
    if not add_bos and bos is not None:
        # Tokenizers whose post-processor prepends BOS (e.g. Llama 3) want it even without the flag.
        probe = tok.encode("a", add_special_tokens=True).ids
        add_bos = bool(probe) and probe[0] == bos
    return _fast_tokenizer(tok, str(path), "hf", vocab_size, eod, bos, add_bos and bos is not None)


def _from_transformers(path: str, kind: str, AutoTokenizer_kwargs: dict) -> Tokenizer:  # noqa: N803
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **AutoTokenizer_kwargs)
    except Exception as exc:  # transformers raises many types for unreadable files
        raise TokenizerError(f"cannot load tokenizer from {path}: {exc}") from exc
    eod = tok.eos_token_id
    if eod is None:
        raise TokenizerError(f"tokenizer {path}: no eos token to use as end-of-document")
    bos = tok.bos_token_id
    add_bos = bool(getattr(tok, "add_bos_token", False)) and bos is not None
    vocab_size = max(len(tok), max(tok.get_vocab().values()) + 1)
    path = path if kind != "gguf" else os.path.join(path, AutoTokenizer_kwargs["gguf_file"])
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        # Fast tokenizer: use the Rust object directly and let pickles carry its JSON (reloading a
        # GGUF in every worker process takes seconds).
        return _fast_tokenizer(backend, path, kind, vocab_size, eod, bos, add_bos, backend.to_str())
    return Tokenizer(path, kind, vocab_size, eod, bos, add_bos,
                     lambda text: tok.encode(text, add_special_tokens=False),
                     lambda ids: tok.decode(ids, skip_special_tokens=False),
                     lambda t: tok.get_vocab().get(t))


def _load_tiktoken(path: Path) -> Tokenizer:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    try:
        ranks = load_tiktoken_bpe(str(path))
    except Exception as exc:
        raise TokenizerError(f"cannot read tiktoken ranks file {path}: {exc}") from exc
    n = len(ranks)
    pat, eod = _TIKTOKEN_KNOWN.get(n, (_CL100K_PAT, max(ranks.values()) + 1))
    enc = tiktoken.Encoding(name=path.stem, pat_str=pat, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": eod})
    def token_to_id(token: str) -> Optional[int]:
        if token == "<|endoftext|>":
            return eod
        return ranks.get(token.encode("utf-8"))

    return Tokenizer(str(path), "tiktoken", enc.n_vocab, eod, None, False,
                     lambda text: enc.encode_ordinary(text), lambda ids: enc.decode(ids), token_to_id)


def _load_sentencepiece(path: Path) -> Tokenizer:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except Exception as exc:
        raise TokenizerError(f"cannot read sentencepiece model {path}: {exc}") from exc
    eod = sp.eos_id()
    if eod < 0:
        raise TokenizerError(f"sentencepiece model {path} has no eos piece to use as end-of-document")
    bos = sp.bos_id() if sp.bos_id() >= 0 else None
    def token_to_id(token: str) -> Optional[int]:
        i = sp.piece_to_id(token)
        return None if i == sp.unk_id() and token != sp.id_to_piece(sp.unk_id()) else i

    return Tokenizer(str(path), "sentencepiece", sp.get_piece_size(), eod, bos, bos is not None,
                     lambda text: sp.encode(text, out_type=int), lambda ids: sp.decode(ids), token_to_id)


def load_tokenizer(path: str | os.PathLike, eod_token: Optional[str] = None) -> Tokenizer:
    """Load a tokenizer from a HF directory, a ``.gguf``, a ``.tiktoken`` or a sentencepiece ``.model``.

    The end-of-document id is the tokenizer's eos token unless ``eod_token`` names another one
    (e.g. ``<|endoftext|>`` for chat-tuned tokenizers whose eos is an end-of-turn token).
    """
    tok = _load(Path(path).expanduser(), path)
    if eod_token is not None:
        eod = tok.token_to_id(eod_token)
        if eod is None:
            raise TokenizerError(f"eod_token={eod_token!r} is not a token of {path}")
        tok.eod_id, tok.eod_token = eod, eod_token
    return tok


def _load(p: Path, path) -> Tokenizer:
    if not p.exists():
        raise TokenizerError(f"tokenizer path {str(path)!r} does not exist")
    if p.is_dir():
        if (p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file():
            return _load_hf_dir(p)
        spm_file = p / "tokenizer.model"
        if spm_file.is_file():
            return _load_sentencepiece(spm_file)
        raise TokenizerError(f"tokenizer directory {p} has no tokenizer.json, tokenizer_config.json or tokenizer.model")
    suffix = p.suffix.lower()
    if suffix == ".gguf":
        return _from_transformers(str(p.parent), "gguf", {"gguf_file": p.name})
    if suffix == ".tiktoken":
        return _load_tiktoken(p)
    if suffix == ".model":
        return _load_sentencepiece(p)
    if p.name == "tokenizer.json":
        return _load_hf_dir(p.parent)
    raise TokenizerError(f"tokenizer path {p}: expected a HF directory, .gguf, .tiktoken or sentencepiece .model")


def as_tokenizer(tokenizer: "Tokenizer | str | os.PathLike | None") -> Optional[Tokenizer]:
    """Accept a loaded tokenizer, a path to one, or None."""
    if tokenizer is None or isinstance(tokenizer, Tokenizer):
        return tokenizer
    return load_tokenizer(tokenizer)


class MegatronTokenizerAdapter:
    """The few tokenizer attributes megatron-core's GPT datasets read (``vocab_size``, ``eod``, ``pad``...).

    Built from a :class:`Tokenizer` or from the ids recorded next to a preprocessed dataset; its
    ``unique_identifiers`` enter megatron's index-cache hash.
    """

    def __init__(self, vocab_size: int, eod_id: int, bos_id: Optional[int] = None, name: str = "",
                 tokenizer: Optional[Tokenizer] = None):
        self.vocab_size = int(vocab_size)
        self.eod = int(eod_id)
        self.eos = int(eod_id)
        self.bos = bos_id
        self._tokenizer = tokenizer
        self.unique_identifiers = OrderedDict(
            [("class", type(self).__name__), ("name", name), ("vocab_size", self.vocab_size), ("eod", self.eod)])

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> "MegatronTokenizerAdapter":
        """Wrap a loaded tokenizer."""
        return cls(tokenizer.vocab_size, tokenizer.eod_id, tokenizer.bos_id, os.path.abspath(tokenizer.path),
                   tokenizer)

    @property
    def pad(self) -> int:
        """No dedicated pad id: megatron then uses its own out-of-vocabulary pad value."""
        raise AttributeError("pad")

    def tokenize(self, text: str) -> list[int]:
        """Encode text (needs the wrapped tokenizer)."""
        if self._tokenizer is None:
            raise TokenizerError("no tokenizer attached: pass tokenizer= to encode text")
        return self._tokenizer.encode(text)

    def detokenize(self, ids) -> str:
        """Decode ids (needs the wrapped tokenizer)."""
        if self._tokenizer is None:
            raise TokenizerError("no tokenizer attached: pass tokenizer= to decode ids")
        return self._tokenizer.decode(ids)
