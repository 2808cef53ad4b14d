"""NeMo 1 ``.nemo`` checkpoints (megatron-core GPT, NeMo 24.07-24.12) in and out.

Layout (a tar archive, or the same files extracted into a directory)::

    model_config.yaml        the whole ``cfg.model``: architecture, ``mcore_gpt: true``, TP/PP sizes, and a
                             ``tokenizer`` section whose file paths are written ``nemo:<name>`` for files
                             stored at the archive's top level
    model_weights/           megatron dist checkpoint (torch_dist), tensor keys under ``model.``, layers stacked
    <name>                   tokenizer artifacts (a SentencePiece ``*.model``, or a Hugging Face tokenizer directory)

Import extracts archives with :func:`~nemo_minitron.interop.safety.safe_extract_tar` (members escaping the
target are refused), maps ``model_config.yaml`` onto a :class:`ModelConfig` and loads ``model_weights/``
strictly (either norm spelling; trainer state in ``common.pt`` ignored). Export writes the same layout, which
NeMo's own NeMo 1 reader (``nemo.export.trt_llm.nemo_ckpt_loader``) and ``MegatronGPTModel.restore_from`` read.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import Any, Optional

import yaml

from nemo_minitron.atomic import barrier, broadcast_from_rank0, collective_atomic_dir, is_rank0
from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.logging import get_logger
from nemo_minitron.paths import PathLike

log = get_logger(__name__)

PREFIX = "model."
CONFIG_FILE = "model_config.yaml"
WEIGHTS_DIR = "model_weights"
NEMO_PATH = "nemo:"
#: NeMo 1 ``activation`` → (our activation, gated)
ACTIVATIONS = {"fast-swiglu": ("silu", True), "swiglu": ("silu", True), "fast-geglu": ("gelu", True),
               "geglu": ("gelu", True), "gelu": ("gelu", False), "relu": ("relu", False),
               "squared-relu": ("squared_relu", False), "fast-reglu": ("relu", True), "reglu": ("relu", True)}
NORMS = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}


def is_nemo1(path: PathLike) -> bool:
    """True for a ``.nemo`` tar archive or an extracted directory (``model_config.yaml`` + ``model_weights/``)."""
    p = Path(path)
    if p.is_dir():
        return (p / CONFIG_FILE).is_file() and (p / WEIGHTS_DIR).is_dir()
    if p.is_file() and tarfile.is_tarfile(p):
        with tarfile.open(p) as tar:
            return any(Path(n).name == CONFIG_FILE and len(Path(n).parts) <= 2 for n in tar.getnames())
    return False


def model_config_from_nemo1(c: dict[str, Any], vocab_size: Optional[int] = None) -> ModelConfig:
    """A :class:`ModelConfig` from a NeMo 1 ``model_config.yaml`` (``vocab_size``: the embedding's rows)."""
    def req(key: str) -> Any:
        if c.get(key) is None:
            raise ConfigError(f"{CONFIG_FILE}: {key} is missing")
        return c[key]

    if not c.get("mcore_gpt", True):
        raise ConfigError(f"{CONFIG_FILE}: mcore_gpt=false (legacy NeMo GPT) is not supported; only megatron-core GPT")
    act = str(c.get("activation", "gelu"))
    if act not in ACTIVATIONS:
        raise ConfigError(f"{CONFIG_FILE}: activation={act!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    norm = str(c.get("normalization", "layernorm")).lower()
    if norm not in NORMS:
        raise ConfigError(f"{CONFIG_FILE}: normalization={norm!r} is not supported (supported: {sorted(NORMS)})")
    if not vocab_size:
        raise ConfigError(f"{CONFIG_FILE}: the vocabulary size is unknown (no embedding in {WEIGHTS_DIR}/)")
    heads = req("num_attention_heads")
    activation, gated = ACTIVATIONS[act]
    return ModelConfig(
        name=str(c.get("name") or "nemo1"), num_layers=req("num_layers"), hidden_size=req("hidden_size"),
        ffn_hidden_size=req("ffn_hidden_size"), num_attention_heads=heads,
        num_query_groups=c.get("num_query_groups") or heads, kv_channels=c.get("kv_channels") or req("hidden_size") // heads,
        vocab_size=int(vocab_size), max_position_embeddings=int(c.get("max_position_embeddings")
                                                               or c.get("encoder_seq_length") or 4096),
        normalization=NORMS[norm], layernorm_epsilon=float(c.get("layernorm_epsilon", 1e-5)),
        activation=activation, gated_linear_unit=gated,
        position_embedding_type=c.get("position_embedding_type", "learned_absolute"),
        rotary_base=float(c.get("rotary_base", 10000.0)), rotary_percent=float(c.get("rotary_percentage", 1.0)),
        rope_scaling=bool(c.get("scale_positional_embedding", False)),
        rope_scaling_factor=float(c.get("scale_factor") or 8.0),
        share_embeddings_and_output_weights=bool(c.get("share_embeddings_and_output_weights", True)),
        add_bias_linear=bool(c.get("bias", True)), add_qkv_bias=bool(c.get("qkv_bias", False)),
        qk_layernorm=bool(c.get("qk_layernorm", False)),
    ).validate()


def nemo1_config_from_model_config(cfg: ModelConfig, tokenizer: dict[str, Any]) -> dict[str, Any]:
    """``model_config.yaml`` content (NeMo 1 key names) for ``cfg``."""
    act = {("silu", True): "fast-swiglu", ("gelu", True): "fast-geglu", ("gelu", False): "gelu",
           ("relu", False): "relu", ("squared_relu", False): "squared-relu", ("relu", True): "fast-reglu"}
    key = (cfg.activation, cfg.gated_linear_unit)
    if key not in act:
        raise ConfigError(f"model.activation={cfg.activation} with gated_linear_unit={cfg.gated_linear_unit} "
                          "has no NeMo 1 name")
    return {
        "mcore_gpt": True, "name": cfg.name, "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
        "micro_batch_size": 1, "global_batch_size": 1, "precision": "bf16" if cfg.precision == "bf16" else 32,
        "encoder_seq_length": cfg.max_position_embeddings, "max_position_embeddings": cfg.max_position_embeddings,
        "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "ffn_hidden_size": cfg.ffn_hidden_size,
        "num_attention_heads": cfg.num_attention_heads, "num_query_groups": cfg.query_groups,
        "kv_channels": cfg.head_dim, "normalization": cfg.normalization.lower(),
        "layernorm_epsilon": cfg.layernorm_epsilon, "activation": act[key], "bias": cfg.add_bias_linear,
        "qkv_bias": cfg.add_qkv_bias, "qk_layernorm": cfg.qk_layernorm,
        "position_embedding_type": cfg.position_embedding_type, "rotary_base": cfg.rotary_base,
        "rotary_percentage": cfg.rotary_percent, "scale_positional_embedding": cfg.rope_scaling,
        **({"scale_factor": cfg.rope_scaling_factor} if cfg.rope_scaling else {}),
        "share_embeddings_and_output_weights": cfg.share_embeddings_and_output_weights,
        "make_vocab_size_divisible_by": 1, "transformer_block_type": "pre_ln", "hidden_dropout": 0.0,
        "attention_dropout": 0.0, "ffn_dropout": 0.0, "apply_query_key_layer_scaling": False,
        "tokenizer": tokenizer,
    }


def artifact(root: Path, value: Any) -> Optional[Path]:
    """The file or directory a tokenizer entry names: ``nemo:X`` inside the checkpoint, else a local path."""
    if not isinstance(value, str) or not value:
        return None
    if value.startswith(NEMO_PATH):
        p = root / value[len(NEMO_PATH):]
        if not p.resolve().is_relative_to(root.resolve()):
            raise ConfigError(f"{CONFIG_FILE}: tokenizer path {value!r} points outside the checkpoint")
        return p if p.exists() else None
    p = Path(value)
    return p if p.is_absolute() and p.exists() else None


def stage_tokenizer(root: Path, tok: dict[str, Any], dest: Path) -> bool:
    """Copy the tokenizer a ``model_config.yaml`` section names into ``dest`` (HF files / ``tokenizer.model``)."""
    library = str(tok.get("library", "")).lower()
    model, tdir = artifact(root, tok.get("model")), artifact(root, tok.get("type"))
    if tdir is not None and tdir.is_dir():
        shutil.copytree(tdir, dest)
        return True
    if model is not None and model.is_file():
        dest.mkdir(parents=True)
        shutil.copy2(model, dest / "tokenizer.model")
        for key, name in (("vocab_file", "vocab.json"), ("merge_file", "merges.txt")):
            extra = artifact(root, tok.get(key))
            if extra is not None and extra.is_file():
                shutil.copy2(extra, dest / name)
        return True
    log.warning("%s: tokenizer (library=%s, type=%s, model=%s) is not stored in the checkpoint; the converted "
                "checkpoint carries none (pass tokenizer_path=...)", CONFIG_FILE, library, tok.get("type"),
                tok.get("model"))
    return False


def import_nemo1(path: PathLike, output_ckpt: PathLike, tp: int = 1, pp: int = 1, *, precision: str = "auto",
                 overwrite: bool = False) -> Path:
    """Convert a ``.nemo`` archive or extracted directory into a megatron checkpoint (collective)."""
    from nemo_minitron.interop.safety import safe_extract_tar

    src = Path(path)
    out = Path(output_ckpt).absolute()
    staging = out.parent / f".{out.name}.nemo1-extract-{os.getpid()}"
    root = src
    try:
        if src.is_file():
            name = None
            if is_rank0():
                shutil.rmtree(staging, ignore_errors=True)
                safe_extract_tar(src, staging)
                found = [p.parent for p in staging.rglob(CONFIG_FILE)]
                name = str(found[0] if len(found) == 1 else staging)
            root = Path(broadcast_from_rank0(name))
        return _import_dir(root, out, tp, pp, precision, overwrite, staging)
    finally:
        barrier()
        if is_rank0():
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(_tokenizer_staging(staging), ignore_errors=True)


def _tokenizer_staging(staging: Path) -> Path:
    return staging.with_name(staging.name + "-tokenizer")


def _import_dir(root: Path, out: Path, tp: int, pp: int, precision: str, overwrite: bool, staging: Path) -> Path:
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.interop.hf import token_ids_from_tokenizer
    from nemo_minitron.interop.megatron_io import build_model_for_conversion, conversion_layout
    from nemo_minitron.interop.te_names import checkpoint_tensor_keys, load_dist_weights

    if not is_nemo1(root):
        raise FileNotFoundError(f"{root} is not a NeMo 1 checkpoint (needs {CONFIG_FILE} and {WEIGHTS_DIR}/)")
    c = yaml.safe_load((root / CONFIG_FILE).read_text()) or {}
    emb = checkpoint_tensor_keys(root / WEIGHTS_DIR).get(PREFIX + "embedding.word_embeddings.weight")
    cfg = model_config_from_nemo1(c, emb[0] if emb else None).replace(precision=precision)
    cfg.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp).validate()
    btp, bpp = conversion_layout(tp, pp)
    model = build_model_for_conversion(cfg, btp, bpp)
    load_dist_weights(model, root / WEIGHTS_DIR, prefix=PREFIX)
    tok_dir = _tokenizer_staging(staging)
    has_tok = is_rank0() and stage_tokenizer(root, c.get("tokenizer") or {}, tok_dir)
    info = {"model_type": None, "dtype": None, **(token_ids_from_tokenizer(tok_dir) if has_tok else {})}
    ckpt = save_checkpoint(model, cfg.replace(tensor_model_parallel_size=btp, pipeline_model_parallel_size=bpp), out,
                           overwrite=overwrite, tokenizer_dir=tok_dir if has_tok else None,
                           extra_metadata={"source": {"format": "nemo1", "path": str(root.absolute())}, "hf": info})
    log.info("imported NeMo 1 checkpoint %s → %s", root, ckpt)
    return ckpt


def export_nemo1(ckpt: PathLike, output_path: PathLike, *, overwrite: bool = False) -> Path:
    """Write megatron checkpoint ``ckpt`` as a NeMo 1 checkpoint (collective; atomic).

    A tar when ``output_path`` ends in ``.nemo``, else an extracted directory.
    """
    from megatron.core import dist_checkpointing

    from nemo_minitron.checkpoint import tokenizer_path
    from nemo_minitron.interop.hf import load_for_export

    final = Path(output_path).absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"output {final} already exists; set overwrite=true or choose another output path")
    model, cfg, _ = load_for_export(ckpt)
    as_tar = final.suffix == ".nemo"
    target = final.parent / f".{final.name}.nemo1-dir-{os.getpid()}" if as_tar else final
    with collective_atomic_dir(target) as tmp:
        if is_rank0():
            (tmp / WEIGHTS_DIR).mkdir()
        barrier()
        dist_checkpointing.save(model.sharded_state_dict(prefix=PREFIX), str(tmp / WEIGHTS_DIR))
        if is_rank0():
            tok = tokenizer_path(ckpt)
            section: dict[str, Any] = {"library": "huggingface", "type": None, "model": None, "use_fast": True}
            if tok is not None and (tok / "tokenizer.model").is_file() and not (tok / "tokenizer.json").is_file():
                shutil.copy2(tok / "tokenizer.model", tmp / "tokenizer.model")
                section = {"library": "sentencepiece", "type": None, "model": NEMO_PATH + "tokenizer.model"}
            elif tok is not None:
                shutil.copytree(tok, tmp / "tokenizer")
                section["type"] = NEMO_PATH + "tokenizer"
                if (tok / "tokenizer.model").is_file():
                    section["model"] = NEMO_PATH + "tokenizer/tokenizer.model"
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(nemo1_config_from_model_config(cfg, section),
                                                          sort_keys=False))
    if as_tar and is_rank0():
        part = final.parent / f".{final.name}.incomplete-{os.getpid()}"
        try:
            with tarfile.open(part, "w") as tar:  # NeMo reads uncompressed and gzip archives; keep it plain
                for item in sorted(target.iterdir()):
                    tar.add(item, arcname=f"./{item.name}")
            os.replace(part, final)
        finally:
            part.unlink(missing_ok=True)
            shutil.rmtree(target, ignore_errors=True)
    barrier()
    log.info("exported %s → NeMo 1 checkpoint %s", ckpt, final)
    return final
