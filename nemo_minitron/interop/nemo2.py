"""NeMo 2 checkpoint directories in and out.

Layout (as written by NeMo 2 for GPT models)::

    NEMO2/
      context/model.yaml                 _target_ model class, config: {TransformerConfig fields}, tokenizer
      context/nemo_tokenizer/            Hugging Face tokenizer files
      context/artifacts/generation_config.json   (when the tokenizer carries one)
      weights/                           megatron dist checkpoint (torch_dist): keys prefixed ``module.``,
                                         layers stacked, norms under the TE-fused names, + metadata.json, common.pt

Import reads the architecture from ``context/model.yaml`` (or, without it, from ``context/io.json``;
vocabulary size from the embedding's shape when the config leaves it null), the tokenizer from
whatever directory or SentencePiece file the context names, and loads ``weights/`` strictly with
either norm spelling (:func:`~nemo_minitron.interop.te_names.load_dist_weights`); the Lightning
trainer state NeMo keeps in ``weights/common.pt`` is ignored. Export writes ``context/io.json``
(the fiddle-serialised ``TrainerContext`` every NeMo entry point loads, written without importing
NeMo, :mod:`~nemo_minitron.interop.fiddle_json`), ``model.yaml`` in NeMo's vocabulary, the
tokenizer and the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from nemo_minitron.atomic import (
    barrier,
    broadcast_from_rank0,
    check_output_path,
    clean_stale_temps,
    collective_atomic_dir,
    is_rank0,
)
from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.logging import get_logger
from nemo_minitron.models.names import ACTIVATIONS
from nemo_minitron.paths import PathLike

log = get_logger(__name__)

PREFIX = "module."
_ACT_TARGETS = ACTIVATIONS
_MODEL_CLASSES = {  # (model class, config class) by family, for model.yaml's _target_ fields
    "llama": ("nemo.collections.llm.gpt.model.llama.LlamaModel", "nemo.collections.llm.gpt.model.llama.LlamaConfig"),
    "llama31": ("nemo.collections.llm.gpt.model.llama.LlamaModel", "nemo.collections.llm.gpt.model.llama.Llama31Config"),
    "mistral": ("nemo.collections.llm.gpt.model.mistral.MistralModel",
                "nemo.collections.llm.gpt.model.mistral.MistralConfig7B"),
    "qwen2": ("nemo.collections.llm.gpt.model.qwen2.Qwen2Model", "nemo.collections.llm.gpt.model.qwen2.Qwen2Config"),
    "qwen3": ("nemo.collections.llm.gpt.model.qwen3.Qwen3Model", "nemo.collections.llm.gpt.model.qwen3.Qwen3Config"),
}
TOKENIZER_TARGET = "nemo.collections.common.tokenizers.huggingface.auto_tokenizer.AutoTokenizer"


TRAINER_CONTEXT = "nemo.lightning.io.pl.TrainerContext"
TRAINER_TARGET = "nemo.lightning.pytorch.trainer.Trainer"
TOKENIZER_NAME = "nemo_tokenizer"


def is_nemo2_dir(path: PathLike) -> bool:
    """True when ``path`` looks like a NeMo 2 checkpoint directory (context/ and weights/)."""
    p = Path(path)
    ctx = p / "context"
    return ((ctx / "model.yaml").is_file() or (ctx / "io.json").is_file()) and (p / "weights").is_dir()


def read_context(src: PathLike) -> dict[str, Any]:
    """The model section of a NeMo 2 context: ``{"_target_": model class, "config": {...}, "tokenizer": {...}}``.

    ``context/model.yaml`` when present, else the ``model`` node of ``context/io.json``; the tokenizer
    node is taken from ``io.json`` when ``model.yaml`` has none.
    """
    from nemo_minitron.interop.fiddle_json import read_fiddle_json

    ctx = Path(src) / "context"
    model: dict[str, Any] = {}
    if (ctx / "model.yaml").is_file():
        model = yaml.safe_load((ctx / "model.yaml").read_text()) or {}
    if (ctx / "io.json").is_file() and (not model or not model.get("tokenizer")):
        try:
            root = read_fiddle_json(json.loads((ctx / "io.json").read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{ctx / 'io.json'} is not a readable fiddle context ({exc})") from None
        node = root.get("model") if isinstance(root, dict) else None
        if isinstance(node, dict):
            model = model or node
            model.setdefault("tokenizer", node.get("tokenizer"))
    if not isinstance(model.get("config"), dict):
        raise ConfigError(f"{ctx}: neither model.yaml nor io.json has a model config")
    return model


def context_tokenizer(src: PathLike, tokenizer: Any) -> Optional[Path]:
    """The tokenizer directory or SentencePiece file a NeMo context names (relative to ``context/``)."""
    ctx = Path(src) / "context"
    candidates = []
    if isinstance(tokenizer, dict):
        for key in ("pretrained_model_name", "model_path", "tokenizer_model", "vocab_file"):
            v = tokenizer.get(key)
            if isinstance(v, dict):  # e.g. a nested AutoTokenizer node
                v = v.get("pretrained_model_name")
            if isinstance(v, str) and v:
                candidates.append(v)
    candidates.append(TOKENIZER_NAME)
    for c in candidates:
        p = Path(c) if Path(c).is_absolute() else ctx / c
        if p.exists():
            return p
    return None


def _stage_tokenizer(tok: Optional[Path], src: Path, dest: Path) -> bool:
    """Copy the context's tokenizer (+ ``artifacts/generation_config.json``) into ``dest``; True if any."""
    if tok is None:
        return False
    if tok.is_dir():
        shutil.copytree(tok, dest)
    else:  # a SentencePiece model file
        dest.mkdir(parents=True)
        shutil.copy2(tok, dest / "tokenizer.model")
    gen = src / "context" / "artifacts" / "generation_config.json"
    if gen.is_file() and not (dest / "generation_config.json").exists():
        shutil.copy2(gen, dest / "generation_config.json")
    return True


def family_of(target: str) -> str:
    """Hugging Face model_type of a NeMo model/config class name (Llama by default)."""
    name = target.rsplit(".", 1)[-1].lower()
    for family in ("qwen3", "qwen2", "mistral"):
        if name.startswith(family):
            return family
    return "llama"


def _activation_name(value: Any) -> str:
    target = value.get("_target_", "") if isinstance(value, dict) else str(value or "")
    for name in sorted(ACTIVATIONS, key=len, reverse=True):  # squared_relu before relu
        if target.endswith(name) or target.endswith("fast_" + name):
            return name
    raise ConfigError(f"context/model.yaml config.activation_func={value!r} is not supported")


def model_config_from_nemo2(model_yaml: dict[str, Any], vocab_size: Optional[int] = None) -> ModelConfig:
    """A :class:`ModelConfig` from the ``config`` section of a NeMo 2 ``context/model.yaml``."""
    c = model_yaml.get("config", model_yaml)
    target = str(c.get("_target_", ""))

    def req(key: str) -> Any:
        if c.get(key) is None:
            raise ConfigError(f"context/model.yaml config.{key} is missing")
        return c[key]

    heads = req("num_attention_heads")
    window = c.get("window_size")
    if window is not None and not (isinstance(window, (list, tuple)) and all(w in (-1, 0, None) for w in window)):
        log.warning("context config.window_size=%s is ignored: the megatron model attends to the full context",
                    window)
    # Llama-3.1/3.2 configs carry the RoPE scaling as scale_factor (+ low/high_freq_factor, old_context_len)
    scaled = "Llama31" in target or "Llama32" in target or c.get("scale_factor") is not None
    for key, want in (("low_freq_factor", 1.0), ("high_freq_factor", 4.0), ("old_context_len", 8192)):
        if scaled and c.get(key) is not None and float(c[key]) != want:
            raise ConfigError(f"context/model.yaml config.{key}={c[key]} is not supported (megatron-core uses {want})")
    vocab = c.get("vocab_size") or vocab_size
    if not vocab:
        raise ConfigError("context/model.yaml config.vocab_size is null and the embedding shape is unknown")
    return ModelConfig(
        name=Path(target.split(".")[-1] or "nemo2").name,
        num_layers=req("num_layers"), hidden_size=req("hidden_size"), ffn_hidden_size=req("ffn_hidden_size"),
        num_attention_heads=heads, num_query_groups=c.get("num_query_groups") or heads,
        kv_channels=c.get("kv_channels") or req("hidden_size") // heads, vocab_size=int(vocab),
        max_position_embeddings=int(c.get("seq_length") or c.get("max_position_embeddings") or 4096),
        normalization=c.get("normalization", "RMSNorm"), layernorm_epsilon=float(c.get("layernorm_epsilon", 1e-5)),
        activation=_activation_name(c.get("activation_func", "silu")),
        gated_linear_unit=bool(c.get("gated_linear_unit", True)),
        position_embedding_type=c.get("position_embedding_type", "rope"),
        rotary_base=float(c.get("rotary_base", 10000.0)), rotary_percent=float(c.get("rotary_percent", 1.0)),
        rope_scaling=bool(scaled), rope_scaling_factor=float(c.get("scale_factor") or 8.0),
        share_embeddings_and_output_weights=bool(c.get("share_embeddings_and_output_weights", False)),
        add_qkv_bias=bool(c.get("add_qkv_bias", False)), add_bias_linear=bool(c.get("add_bias_linear", False)),
        qk_layernorm=bool(c.get("qk_layernorm", False)),
    ).validate()


#: the NeMo model families a checkpoint can be written as (``nemo_family`` of the NeMo 2 writers)
NEMO_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def nemo_family_of(cfg: ModelConfig) -> str:
    """The NeMo family that represents ``cfg`` by default: qwen3 (qk-norm), qwen2 (QKV bias) or llama."""
    return "qwen3" if cfg.qk_layernorm else "qwen2" if cfg.add_qkv_bias else "llama"


def nemo_family_problem(cfg: ModelConfig, family: str) -> Optional[str]:
    """Why NeMo's ``family`` model class cannot compute the network ``cfg`` describes; None when it can."""
    if family not in NEMO_FAMILIES:
        return f"{family!r} is not one of {list(NEMO_FAMILIES)}"
    fits = nemo_family_of(cfg)
    if family == "mistral" and cfg.rope_scaling:
        return "the checkpoint uses Llama-3.1 RoPE scaling, which NeMo's Mistral config does not apply"
    if family == fits or (family == "mistral" and fits == "llama"):
        return None
    why = {"qwen3": "QK layer norm", "qwen2": "QKV bias", "llama": "neither QKV bias nor QK layer norm"}[fits]
    return f"the checkpoint has {why}, which NeMo's {family} model class does not compute"


def check_nemo_family(cfg: ModelConfig, family: str) -> None:
    """Raise :class:`ConfigError` unless NeMo's ``family`` model class computes the network ``cfg`` describes."""
    problem = nemo_family_problem(cfg, family)
    if problem:
        raise ConfigError(f"nemo_family={family}: {problem}; use nemo_family={nemo_family_of(cfg)}")


def model_yaml_from_config(cfg: ModelConfig, family: Optional[str] = None) -> dict[str, Any]:
    """``context/model.yaml`` content (NeMo's field names) for ``cfg`` as NeMo's ``family`` model (default: auto)."""
    family = family or nemo_family_of(cfg)
    check_nemo_family(cfg, family)
    model_cls, cfg_cls = _MODEL_CLASSES["llama31" if family == "llama" and cfg.rope_scaling else family]
    conf: dict[str, Any] = {
        "_target_": cfg_cls, "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
        "ffn_hidden_size": cfg.ffn_hidden_size, "num_attention_heads": cfg.num_attention_heads,
        "num_query_groups": cfg.query_groups, "kv_channels": cfg.head_dim, "seq_length": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size, "normalization": cfg.normalization, "layernorm_epsilon": cfg.layernorm_epsilon,
        "activation_func": {"_target_": _ACT_TARGETS[cfg.activation], "_call_": False},
        "gated_linear_unit": cfg.gated_linear_unit, "position_embedding_type": cfg.position_embedding_type,
        "rotary_base": cfg.rotary_base, "rotary_percent": cfg.rotary_percent,
        "share_embeddings_and_output_weights": cfg.share_embeddings_and_output_weights,
        "add_bias_linear": cfg.add_bias_linear, "add_qkv_bias": cfg.add_qkv_bias, "qk_layernorm": cfg.qk_layernorm,
        "hidden_dropout": 0.0, "attention_dropout": 0.0, "make_vocab_size_divisible_by": 128,
    }
    if cfg.rope_scaling:
        conf.update(scale_factor=cfg.rope_scaling_factor, low_freq_factor=1.0, high_freq_factor=4.0,
                    old_context_len=8192)
    if family == "mistral":  # MistralConfig7B defaults to a 4096-token sliding window: full attention here
        conf["window_size"] = None
    return {"_target_": model_cls, "config": conf,
            "tokenizer": {"_target_": TOKENIZER_TARGET, "pretrained_model_name": TOKENIZER_NAME}}


def io_json_from_config(cfg: ModelConfig, with_tokenizer: bool = True, family: Optional[str] = None) -> str:
    """``context/io.json`` for ``cfg`` as NeMo's ``family`` model (default: auto): the fiddle JSON NeMo loads.

    ``TrainerContext(model=<Model>(config=<Config>(...), tokenizer=AutoTokenizer(...)), trainer=Trainer(),
    extra={})``, the same content as :func:`model_yaml_from_config`.
    """
    from nemo_minitron.interop.fiddle_json import Call, PyRef, dumps

    family = family or nemo_family_of(cfg)
    spec = model_yaml_from_config(cfg, family)
    conf = {k: v for k, v in spec["config"].items() if k != "_target_"}
    conf["activation_func"] = PyRef(conf["activation_func"]["_target_"])
    if family == "mistral":  # MistralConfig7B also defaults params_dtype to bf16: the GPTConfig default (fp32)
        conf["params_dtype"] = PyRef("torch.float32")
    model_args: dict[str, Any] = {"config": Call(spec["config"]["_target_"], conf)}
    if with_tokenizer:
        model_args["tokenizer"] = Call(TOKENIZER_TARGET, {"pretrained_model_name": TOKENIZER_NAME})
    return dumps(Call(TRAINER_CONTEXT, {"model": Call(spec["_target_"], model_args),
                                        "trainer": Call(TRAINER_TARGET), "extra": {}}))


def import_nemo2(nemo2_dir: PathLike, output_ckpt: PathLike, tp: int = 1, pp: int = 1, *,
                 precision: str = "auto", overwrite: bool = False, transformer_impl: str = "auto") -> Path:
    """Convert a NeMo 2 checkpoint (directory, or a tar archive of one) into a megatron checkpoint (collective).

    Archives are extracted next to ``output_ckpt`` with :func:`~nemo_minitron.interop.safety.safe_extract_tar`
    (members escaping the target are refused) and removed afterwards.
    """
    import tarfile

    src = Path(nemo2_dir)
    if not (src.is_file() and tarfile.is_tarfile(src)):
        return _import_nemo2_dir(src, output_ckpt, tp, pp, precision, overwrite, transformer_impl)
    from nemo_minitron.interop.safety import safe_extract_tar

    out = Path(output_ckpt).absolute()
    staging = None
    if is_rank0():
        clean_stale_temps(out)
        staging = str(out.parent / f".{out.name}.nemo2-extract-{os.getpid()}")
        try:
            safe_extract_tar(src, staging)
        except BaseException:  # a refused (unsafe) or unreadable archive leaves nothing behind
            shutil.rmtree(staging, ignore_errors=True)
            raise
        found = [p.parent.parent for p in Path(staging).rglob("context/model.yaml")]
        staging = str(found[0]) if len(found) == 1 else staging
    root = Path(broadcast_from_rank0(staging))
    try:
        return _import_nemo2_dir(root, output_ckpt, tp, pp, precision, overwrite, transformer_impl)
    finally:
        barrier()
        if is_rank0():
            shutil.rmtree(out.parent / f".{out.name}.nemo2-extract-{os.getpid()}", ignore_errors=True)


def _import_nemo2_dir(src: Path, output_ckpt: PathLike, tp: int, pp: int, precision: str, overwrite: bool,
                      transformer_impl: str = "auto") -> Path:
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.interop.hf import token_ids_from_tokenizer
    from nemo_minitron.interop.megatron_io import build_model_for_conversion, conversion_layout
    from nemo_minitron.interop.te_names import checkpoint_tensor_keys, load_dist_weights

    if not is_nemo2_dir(src):
        raise FileNotFoundError(f"input_path={src} is not a NeMo 2 checkpoint (needs context/io.json or "
                                "context/model.yaml, and weights/)")
    model_yaml = read_context(src)
    emb = checkpoint_tensor_keys(src / "weights").get(PREFIX + "embedding.word_embeddings.weight")
    cfg = model_config_from_nemo2(model_yaml, vocab_size=emb[0] if emb else None).replace(
        precision=precision, transformer_impl=transformer_impl)
    cfg.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp).validate()
    btp, bpp = conversion_layout(tp, pp)
    model = build_model_for_conversion(cfg, btp, bpp)
    load_dist_weights(model, src / "weights", prefix=PREFIX)
    tok = context_tokenizer(src, model_yaml.get("tokenizer"))
    if tok is None:
        log.warning("%s/context names no tokenizer that exists: the checkpoint will carry none", src)
    target = str(model_yaml.get("_target_") or model_yaml["config"].get("_target_") or "")
    out = Path(output_ckpt).absolute()
    staging = out.parent / f".{out.name}.nemo2-tokenizer-{os.getpid()}"
    try:
        has_tok = is_rank0() and _stage_tokenizer(tok, src, staging)
        hf_info = {"model_type": family_of(target), "dtype": None,
                   **(token_ids_from_tokenizer(staging) if has_tok else {})}
        out = save_checkpoint(model, cfg.replace(tensor_model_parallel_size=btp, pipeline_model_parallel_size=bpp),
                              output_ckpt, overwrite=overwrite, tokenizer_dir=staging if has_tok else None,
                              extra_metadata={"source": {"format": "nemo2", "path": str(src.absolute())},
                                              "hf": hf_info})
    finally:
        if is_rank0():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("imported NeMo 2 checkpoint %s → %s", src, out)
    return out


def export_nemo2(ckpt: PathLike, output_dir: PathLike, *, overwrite: bool = False, transformer_impl: str = "auto",
                 nemo_family: Optional[str] = None) -> Path:
    """Write megatron checkpoint ``ckpt`` as a NeMo 2 checkpoint directory (collective; atomic).

    ``nemo_family`` (one of :data:`NEMO_FAMILIES`) picks NeMo's model class; by default the one the
    architecture implies (:func:`nemo_family_of`). A family that cannot compute the network is refused.
    """
    from nemo_minitron.interop.hf import load_for_export

    t0 = time.perf_counter()
    final = check_output_path(output_dir, overwrite=overwrite, inputs=(ckpt,), markers=("context/model.yaml",))
    from nemo_minitron.checkpoint import load_model_config

    saved = load_model_config(ckpt)
    check_nemo_family(saved, nemo_family or nemo_family_of(saved))
    model, cfg, _ = load_for_export(ckpt, transformer_impl=transformer_impl)
    with collective_atomic_dir(final) as tmp:
        _write_nemo2(model, cfg, ckpt, tmp, final, nemo_family)
    if is_rank0():
        log.info("exported %s → NeMo 2 directory %s (%.1f s)", ckpt, final, time.perf_counter() - t0)
    return final


def _write_nemo2(model, cfg: ModelConfig, ckpt: PathLike, tmp: Path, final: Path,
                 family: Optional[str] = None) -> None:
    """Fill the temporary NeMo 2 directory ``tmp`` (collective)."""
    from megatron.core import dist_checkpointing

    from nemo_minitron.checkpoint import prepare_checkpoint_writer, tokenizer_path

    if is_rank0():
        (tmp / "weights").mkdir()
    barrier()
    prepare_checkpoint_writer()
    dist_checkpointing.save(model.sharded_state_dict(prefix=PREFIX), str(tmp / "weights"))
    if is_rank0():
        ctx = tmp / "context"
        ctx.mkdir()
        (ctx / "model.yaml").write_text(yaml.safe_dump(model_yaml_from_config(cfg, family), sort_keys=False))
        tok = tokenizer_path(ckpt)
        (ctx / "io.json").write_text(io_json_from_config(cfg, tok is not None, family))
        if tok is not None:
            shutil.copytree(tok, ctx / "nemo_tokenizer")
            if (tok / "generation_config.json").is_file():
                (ctx / "artifacts").mkdir()
                shutil.copy2(tok / "generation_config.json", ctx / "artifacts" / "generation_config.json")
        else:
            log.warning("checkpoint %s carries no tokenizer; %s/context has none either", ckpt, final)
