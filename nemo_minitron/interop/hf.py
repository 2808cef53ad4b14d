"""Hugging Face ⇄ megatron checkpoints for the Llama family (Llama 2/3/3.1/3.2, Mistral/Mistral-NeMo, Qwen2/2.5, Qwen3).

* :func:`import_hf` turns a Hugging Face model directory (or a ``.gguf`` file, see
  :mod:`~nemo_minitron.interop.gguf`) into a nemo_minitron megatron checkpoint that carries the
  tokenizer in ``CKPT/tokenizer/``.
* :func:`export_hf` writes a checkpoint of **any** shape (pruned hidden/ffn/heads/groups, explicit
  ``head_dim``, fewer layers) as ``config.json`` + sharded safetensors + tokenizer files that
  ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

The ``config.json`` always records ``head_dim`` explicitly (the pruned-shape export bug in other
stacks comes from deriving it as hidden / heads), Llama-3.1 RoPE scaling as ``rope_type: llama3``,
``tie_word_embeddings``, Qwen2's QKV bias and Qwen3's qk-norm.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch

from nemo_minitron.atomic import barrier, is_rank0
from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.interop.hf_families import FAMILIES, family, infer_model_type  # noqa: F401 (re-exported)
from nemo_minitron.logging import get_logger
from nemo_minitron.paths import PathLike

log = get_logger(__name__)


#: model_type → transformers architecture class name (one adapter per family: :mod:`.hf_families`).
ARCHITECTURES = {t: f.architecture for t, f in FAMILIES.items()}
#: Files copied through as "the tokenizer" (whatever of them exists).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)
#: The only Llama-3 RoPE scaling megatron-core implements (besides the factor).
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_HF_ACT = {"silu": "silu", "relu": "relu", "gelu": "gelu"}
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _get(hf: Any, key: str, default: Any = None) -> Any:
    return hf.get(key, default) if isinstance(hf, dict) else getattr(hf, key, default)


# --------------------------------------------------------------------------- configs


def model_config_from_hf(hf: Any) -> tuple[ModelConfig, dict[str, Any]]:
    """Translate a transformers config (object or ``config.json`` dict) into a :class:`ModelConfig`.

    Returns the config and a dict of Hugging Face facts worth carrying along (model_type, dtype,
    special token ids). Unsupported features raise :class:`ConfigError` naming the config key.
    """
    model_type = _get(hf, "model_type")
    fam = family(model_type)
    hidden, heads = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
    groups = _get(hf, "num_key_value_heads") or heads
    head_dim = _get(hf, "head_dim") or hidden // heads
    act = _get(hf, "hidden_act", "silu")
    if act not in _HF_ACT:
        raise ConfigError(f"config.json hidden_act={act!r} is not supported (supported: {sorted(_HF_ACT)})")
    # transformers >= 5 keeps theta and scaling in rope_parameters; older releases use rope_theta / rope_scaling
    rope_params = dict(_get(hf, "rope_parameters") or {})
    theta = rope_params.get("rope_theta", _get(hf, "rope_theta", 10000.0))
    scaling = rope_params if rope_params.get("rope_type", "default") != "default" else _get(hf, "rope_scaling")
    rope_scaling, factor = False, 8.0
    if scaling:
        rtype = scaling.get("rope_type", scaling.get("type"))
        if rtype not in (None, "default"):
            if rtype != "llama3":
                raise ConfigError(f"config.json rope_scaling.rope_type={rtype!r} is not supported (only llama3)")
            for key, want in LLAMA3_ROPE.items():
                if float(scaling.get(key, want)) != want:
                    raise ConfigError(f"config.json rope_scaling.{key}={scaling.get(key)} is not supported "
                                      f"(megatron-core implements {key}={want})")
            rope_scaling, factor = True, float(scaling["factor"])
    add_qkv_bias, add_bias_linear = fam.biases(hf)
    if _get(hf, "mlp_bias", False) and not add_bias_linear:
        raise ConfigError("config.json mlp_bias=true without attention_bias=true is not supported")
    fam.check_import(hf)
    name = os.path.basename(str(_get(hf, "_name_or_path", "") or "").rstrip("/")) or model_type
    cfg = ModelConfig(
        name=name,
        num_layers=_get(hf, "num_hidden_layers"),
        hidden_size=hidden,
        ffn_hidden_size=_get(hf, "intermediate_size"),
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        vocab_size=_get(hf, "vocab_size"),
        max_position_embeddings=_get(hf, "max_position_embeddings"),
        normalization="RMSNorm",
        # GGUF stores eps as float32 (1e-5 → 9.99999975e-06): keep 7 significant digits
        layernorm_epsilon=float(f"{float(_get(hf, 'rms_norm_eps', 1e-6)):.7g}"),
        activation=_HF_ACT[act],
        gated_linear_unit=True,
        position_embedding_type="rope",
        rotary_base=float(theta),
        rotary_percent=float(rope_params.get("partial_rotary_factor", _get(hf, "partial_rotary_factor", 1.0)) or 1.0),
        rope_scaling=rope_scaling,
        rope_scaling_factor=factor,
        share_embeddings_and_output_weights=bool(_get(hf, "tie_word_embeddings", False)),
        add_qkv_bias=add_qkv_bias,
        add_bias_linear=add_bias_linear,
        qk_layernorm=fam.qk_layernorm,
    )
    dtype = _get(hf, "dtype") or _get(hf, "torch_dtype")
    info = {
        "model_type": model_type,
        "dtype": str(dtype).replace("torch.", "") if dtype else None,
        **{k: _get(hf, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    }
    return cfg.validate(), info


def hf_config_from_model_config(cfg: ModelConfig, model_type: Optional[str] = None, dtype: str = "float32",
                                token_ids: Optional[dict[str, Any]] = None):
    """A transformers ``PretrainedConfig`` describing ``cfg`` (raises :class:`ConfigError` if it cannot)."""
    from transformers import AutoConfig

    model_type = model_type or infer_model_type(cfg)
    if model_type == "llama" and cfg.hidden_size % cfg.num_attention_heads and not cfg.add_bias_linear:
        # transformers >= 5 LlamaConfig rejects hidden_size % num_attention_heads != 0 even with an explicit
        # head_dim (a typical pruned shape, e.g. Llama-3.2-1B with 24 heads). MistralForCausalLM is the same
        # network (with sliding_window=None) and honours head_dim, so export as mistral.
        log.warning("model.hidden_size=%d is not a multiple of model.num_attention_heads=%d: exporting as "
                    "model_type=mistral (same network; transformers' LlamaConfig refuses this shape)",
                    cfg.hidden_size, cfg.num_attention_heads)
        model_type = "mistral"
    fam = family(model_type, "hf_model_type")

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"cannot export to Hugging Face model_type={model_type}: {msg}")

    need(cfg.normalization == "RMSNorm", f"model.normalization={cfg.normalization} (only RMSNorm)")
    need(cfg.gated_linear_unit, "model.gated_linear_unit=false (Llama-family MLPs are gated)")
    need(cfg.activation in _HF_ACT, f"model.activation={cfg.activation}")
    need(cfg.position_embedding_type == "rope", f"model.position_embedding_type={cfg.position_embedding_type}")
    need(cfg.rotary_percent == 1.0, f"model.rotary_percent={cfg.rotary_percent} (only 1.0)")
    need(cfg.qk_layernorm == fam.qk_layernorm, f"model.qk_layernorm={cfg.qk_layernorm} (qk-norm ⇔ "
         f"{'/'.join(t for t, f in FAMILIES.items() if f.qk_layernorm)})")
    need(not cfg.rope_scaling or fam.rope_scaling,
         f"model.rope_scaling=true needs {'/'.join(t for t, f in FAMILIES.items() if f.rope_scaling)}")
    fam.check_export(cfg, need)
    kwargs: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups, head_dim=cfg.head_dim, hidden_act=cfg.activation,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.layernorm_epsilon,
        tie_word_embeddings=cfg.share_embeddings_and_output_weights, rope_theta=cfg.rotary_base,
        attention_dropout=0.0,
    )
    if cfg.rope_scaling:
        kwargs["rope_scaling"] = {"rope_type": "llama3", "factor": cfg.rope_scaling_factor, **LLAMA3_ROPE}
    kwargs.update(fam.export_keys(cfg))
    for k, v in (token_ids or {}).items():
        if v is not None:
            kwargs[k] = v
    hf_cfg = AutoConfig.for_model(model_type, **kwargs)
    hf_cfg.architectures = [fam.architecture]
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        hf_cfg.dtype = dtype
    else:  # pragma: no cover - transformers 4.x names it torch_dtype
        hf_cfg.torch_dtype = dtype
    return hf_cfg


def read_hf_config(directory: PathLike, trust_remote_code: bool = False):
    """The transformers config of a model directory; never runs code shipped with the checkpoint.

    The architecture is decided from ``config.json`` as plain JSON first: a ``model_type`` that cannot be
    converted is refused before transformers sees the directory, whatever ``trust_remote_code`` says, and the
    supported ones are native transformers classes, so the shipped code (``auto_map``) is never needed.
    """
    from transformers import AutoConfig

    path = Path(directory) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: not a Hugging Face model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"{path}: model_type={model_type!r} is not supported (supported: {sorted(ARCHITECTURES)}); "
                          "no code shipped with the checkpoint was run")
    if trust_remote_code and raw.get("auto_map"):
        log.warning("trust_remote_code=true ignored: model_type=%s is read with transformers' own classes",
                    model_type)
    return AutoConfig.from_pretrained(str(directory), trust_remote_code=False)


def token_ids_from_tokenizer(directory: Optional[PathLike]) -> dict[str, Optional[int]]:
    """bos/eos/pad ids of a tokenizer directory: its ``generation_config.json``, else the tokenizer itself.

    Empty when the directory has neither (the caller then keeps what it knows from the source metadata).
    """
    if directory is None or not Path(directory).is_dir():
        return {}
    gen = Path(directory) / "generation_config.json"
    if gen.is_file():
        data = json.loads(gen.read_text())
        ids = {k: data.get(k) for k in TOKEN_ID_KEYS}
        if any(v is not None for v in ids.values()):
            return {k: v[0] if isinstance(v, list) and k != "eos_token_id" else v for k, v in ids.items()}
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable tokenizer just yields no ids
        log.info("tokenizer in %s not readable for special-token ids (%s)", directory, exc)
        return {}
    return {k: getattr(tok, k, None) for k in TOKEN_ID_KEYS}


def special_token_ids(hf_info: dict[str, Any], tokenizer_dir: Optional[PathLike]) -> dict[str, Optional[int]]:
    """bos/eos/pad ids for an export: the source's config.json values, completed from the tokenizer."""
    ids = {k: hf_info.get(k) for k in TOKEN_ID_KEYS}
    if any(v is None for v in ids.values()):
        for k, v in token_ids_from_tokenizer(tokenizer_dir).items():
            if ids.get(k) is None:
                ids[k] = v
    return ids


def rope_fields(cfg: ModelConfig) -> dict[str, Any]:
    """RoPE settings in every spelling readers use.

    ``rope_parameters`` (transformers >= 5) and top-level ``rope_theta`` / ``rope_scaling`` (transformers 4.x, vLLM, which silently fall back to theta 10000).
    """
    scaling = ({"rope_type": "llama3", "factor": cfg.rope_scaling_factor, **LLAMA3_ROPE}
               if cfg.rope_scaling else None)
    params = {"rope_type": "default", "rope_theta": cfg.rotary_base} if scaling is None else \
        {**scaling, "rope_theta": cfg.rotary_base}
    return {"rope_theta": cfg.rotary_base, "rope_scaling": scaling, "rope_parameters": params}


def write_config_json(hf_cfg, cfg: ModelConfig, directory: PathLike, token_ids: dict[str, Any]) -> Path:
    """``hf_cfg.save_pretrained`` plus what transformers' own serialisation leaves out for some readers.

    Both RoPE spellings (:func:`rope_fields`) and the special-token ids, null ones included.
    """
    hf_cfg.save_pretrained(str(directory))
    path = Path(directory) / "config.json"
    data = json.loads(path.read_text())
    data.update(rope_fields(cfg))
    data.update({k: token_ids.get(k) for k in TOKEN_ID_KEYS})
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def write_generation_config(directory: PathLike, token_ids: dict[str, Any]) -> Optional[Path]:
    """A minimal ``generation_config.json`` with the special-token ids (when the source had none)."""
    path = Path(directory) / "generation_config.json"
    if path.is_file() or all(v is None for v in token_ids.values()):
        return None
    data = {k: v for k, v in token_ids.items() if v is not None} | {"_from_model_config": True}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def collect_tokenizer_files(directory: PathLike, dest: PathLike) -> list[str]:
    """Copy the tokenizer files present in ``directory`` into ``dest``; return their names."""
    src, out = Path(directory), Path(dest)
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if names:
        out.mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy2(src / n, out / n)
    return names


# --------------------------------------------------------------------------- import


def import_hf(input_dir_or_gguf: PathLike, output_ckpt: PathLike, tp: int = 1, pp: int = 1, *,
              precision: str = "auto", tokenizer_dir: Optional[PathLike] = None, trust_remote_code: bool = False,
              overwrite: bool = False, cache_dir: Optional[PathLike] = None, transformer_impl: str = "auto") -> Path:
    """Convert a Hugging Face model directory or GGUF file into a megatron checkpoint at ``output_ckpt``.

    Collective when run under torchrun: with ``tp * pp`` ranks every rank fills its own shard;
    otherwise the conversion runs in this process at TP=1 PP=1 (the result loads at any layout;
    ``tp``/``pp`` are still validated against the architecture). The tokenizer found next to the
    weights (or ``tokenizer_dir``) is carried into ``output_ckpt/tokenizer/``.
    """
    from nemo_minitron.atomic import private_temp_dir
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.interop import gguf
    from nemo_minitron.interop.megatron_io import build_model_for_conversion, conversion_layout, fill_from_hf
    from nemo_minitron.interop.safetensors_io import HFWeights

    t0 = time.perf_counter()
    src = str(input_dir_or_gguf)
    tmp_tok = private_temp_dir("tok")
    try:
        if gguf.is_gguf_input(src):
            hf_cfg, source, _ = gguf.open_gguf(src, tmp_tok, cache_dir=cache_dir)
            tok_names = [p.name for p in tmp_tok.iterdir()]
        else:
            if not Path(src).is_dir():
                raise FileNotFoundError(f"input_path={src} is not a Hugging Face model directory or .gguf file")
            hf_cfg = read_hf_config(src, trust_remote_code)
            source = HFWeights(src)
            tok_names = collect_tokenizer_files(tokenizer_dir or src, tmp_tok)
        cfg, info = model_config_from_hf(hf_cfg)
        cfg = cfg.replace(precision=precision, transformer_impl=transformer_impl)
        cfg.replace(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp).validate()
        if not tok_names:
            log.warning("no tokenizer files found in %s: the checkpoint will carry no tokenizer", tokenizer_dir or src)
        btp, bpp = conversion_layout(tp, pp)
        model = build_model_for_conversion(cfg, btp, bpp)
        n = fill_from_hf(model, cfg, source)
        source.close()
        run_cfg = cfg.replace(tensor_model_parallel_size=btp, pipeline_model_parallel_size=bpp)
        out = save_checkpoint(model, run_cfg, output_ckpt, overwrite=overwrite,
                              tokenizer_dir=tmp_tok if tok_names else None,
                              extra_metadata={"source": {"format": "gguf" if gguf.is_gguf_input(src) else "hf",
                                                         "path": os.path.abspath(src) if os.path.exists(src) else src},
                                              "hf": info})
        log.info("imported %s → %s (%s parameters on rank 0, %.1f s)", src, out, f"{n:,}", time.perf_counter() - t0)
        return out
    finally:
        shutil.rmtree(tmp_tok, ignore_errors=True)


# --------------------------------------------------------------------------- export


def load_for_export(ckpt: PathLike, precision: str = "auto", transformer_impl: str = "auto", tp: int = 1,
                    pp: int = 1):
    """Build this rank's TP×PP stage for checkpoint ``ckpt`` and load it; returns ``(model, cfg, metadata)``.

    ``cfg`` keeps the checkpoint's TP=1/PP=1 view of the architecture; the model is built at
    :func:`~nemo_minitron.interop.megatron_io.conversion_layout` of ``tp``/``pp``.
    """
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config
    from nemo_minitron.interop.megatron_io import build_model_for_conversion, conversion_layout

    cfg = load_model_config(ckpt).replace(precision=precision, transformer_impl=transformer_impl)
    btp, bpp = conversion_layout(tp, pp)
    model = build_model_for_conversion(cfg, btp, bpp)
    meta = load_checkpoint(model, cfg.replace(tensor_model_parallel_size=btp, pipeline_model_parallel_size=bpp), ckpt)
    return model, cfg, meta


def export_hf(ckpt: PathLike, output_dir: PathLike, *, model_type: Optional[str] = None, dtype: str = "auto",
              max_shard_size: Union[str, int] = "5GB", overwrite: bool = False,
              tokenizer_dir: Optional[PathLike] = None, transformer_impl: str = "auto", tp: int = 1,
              pp: int = 1) -> Path:
    """Write megatron checkpoint ``ckpt`` as a Hugging Face model directory ``output_dir``.

    ``model_type`` defaults to the one recorded at import, else the one implied by the architecture;
    ``dtype`` ``auto`` keeps the source's dtype recorded at import (else float32). Weights stream
    into safetensors shards of at most ``max_shard_size``. Collective under torchrun (rank 0 writes):
    launched with ``tp * pp`` ranks, each loads only its shard and full tensors stream to rank 0 one at
    a time (:func:`~nemo_minitron.interop.megatron_io.iter_hf_tensors_sharded`).
    """
    from nemo_minitron.atomic import check_output_path
    from nemo_minitron.checkpoint import tokenizer_path
    from nemo_minitron.interop.megatron_io import iter_hf_tensors_sharded
    from nemo_minitron.interop.safetensors_io import SAFE_INDEX as SAFE_INDEX_NAME
    from nemo_minitron.interop.safetensors_io import ShardedSafetensorsWriter
    from nemo_minitron.interop.safety import atomic_output_dir

    t0 = time.perf_counter()
    out = check_output_path(output_dir, overwrite=overwrite, inputs=(ckpt,), markers=(SAFE_INDEX_NAME,))
    model, cfg, meta = load_for_export(ckpt, transformer_impl=transformer_impl, tp=tp, pp=pp)
    hf_info = (meta.get("extra") or {}).get("hf") or {}
    if dtype == "auto":
        dtype = hf_info.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} must be one of {sorted(DTYPES)} or auto")
    tok = tokenizer_dir or tokenizer_path(ckpt)
    token_ids = special_token_ids(hf_info, tok)
    hf_cfg = hf_config_from_model_config(cfg, model_type or hf_info.get("model_type"), dtype, token_ids)
    if is_rank0():
        with atomic_output_dir(out, overwrite=overwrite, markers=(SAFE_INDEX_NAME,)) as tmp:
            writer = ShardedSafetensorsWriter(tmp, max_shard_size)
            writer.add_all(iter_hf_tensors_sharded(model, cfg, DTYPES[dtype]))
            files = writer.close()
            write_config_json(hf_cfg, cfg, tmp, token_ids)
            tok_names = collect_tokenizer_files(tok, tmp) if tok else []
            write_generation_config(tmp, token_ids)
            if not tok_names:
                log.warning("checkpoint %s carries no tokenizer; %s has weights and config only", ckpt, out)
        log.info("exported %s → %s (%s, %d files, %.1f MB, %.1f s)", ckpt, out, hf_cfg.model_type, len(files),
                 writer.total_bytes / 1e6, time.perf_counter() - t0)
    else:  # the other ranks feed rank 0: gather their shards tensor by tensor
        for _ in iter_hf_tensors_sharded(model, cfg):
            pass
    barrier()
    return out


def save_hf_config_json(cfg: ModelConfig, directory: PathLike, model_type: Optional[str] = None,
                        dtype: str = "float32") -> Path:
    """Write only ``config.json`` for ``cfg`` (e.g. to build a reference transformers model in tests)."""
    hf_cfg = hf_config_from_model_config(cfg, model_type, dtype)
    Path(directory).mkdir(parents=True, exist_ok=True)
    return write_config_json(hf_cfg, cfg, directory, {k: getattr(hf_cfg, k, None) for k in TOKEN_ID_KEYS})


def describe(directory: PathLike) -> dict[str, Any]:
    """``config.json`` of an exported model as a dict (for logs and tests)."""
    return json.loads((Path(directory) / "config.json").read_text())
