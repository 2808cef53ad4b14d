"""NeMo's side of the NeMo tier, in its own process: ``python nemo_side.py NEMO2_DIR NEMO1_FILE OUT_JSON``.

Loads our NeMo 2 context with NeMo's ``io.load_context`` (and fiddle's own JSON loader) and reads our NeMo 1
``.nemo`` with NeMo's NeMo 1 reader (``nemo.export.trt_llm.nemo_ckpt_loader``); writes what it saw as JSON
for the test to compare with the source model, and the NeMo 1 weights NeMo read to ``OUT_JSON`` with suffix ``.pt``.
"""

import json
import sys
from pathlib import Path


def cpu_shims(importer: bool = False) -> None:
    """NeMo on CPU without Transformer Engine (test code only).

    - NeMo's configs switch on TE-only fusions: off.
    - ``importer``: NeMo's HF importers run ``torch.cuda.synchronize`` / ``torch.cuda.Stream`` (dist-ckpt save,
      ``MegatronParallel.init_model_parallel``): no-ops on CPU; megatron's async save (on by default in NeMo's
      strategy) puts a flag tensor on ``torch.cuda.current_device()``: "cpu"; NeMo's checkpoint load moves tensors
      to the current CUDA device (``io.pl._fix_tensors_device`` asserts CUDA): identity; and they map HF norms to TE-fused names
      (``linear_qkv.layer_norm_weight``), which a local-spec model keeps as ``input_layernorm.weight``: NeMo only
      logs "No matches found" and leaves the norms at 1.0 (its HF exporters fail on them with an IndexError), so
      both sides of the mapping are renamed to the local-spec names.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    post_init = TransformerConfig.__post_init__

    def no_te_fusions(self):
        for name in ("apply_rope_fusion", "persist_layer_norm", "masked_softmax_fusion",
                     "gradient_accumulation_fusion", "bias_activation_fusion", "bias_dropout_fusion"):
            if hasattr(self, name):
                setattr(self, name, False)
        post_init(self)

    TransformerConfig.__post_init__ = no_te_fusions
    if not importer:
        return
    import contextlib

    import torch
    from nemo.lightning import io

    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.Stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.current_device = lambda: "cpu"  # megatron's async save puts its is-alive flag on this device
    from nemo.lightning.io import pl as nemo_pl

    nemo_pl._fix_tensors_device = lambda checkpoint: checkpoint  # it asserts CUDA is initialised
    local = {".self_attention.linear_qkv.layer_norm_weight": ".input_layernorm.weight",
             ".mlp.linear_fc1.layer_norm_weight": ".pre_mlp_layernorm.weight"}
    apply_transforms = io.apply_transforms

    def local_norm_names(source, target, mapping, *args, **kwargs):
        def rename(key):
            for te, name in local.items():
                key = key.replace(te, name)
            return key

        return apply_transforms(source, target, {rename(k): rename(v) for k, v in mapping.items()}, *args, **kwargs)

    io.apply_transforms = local_norm_names


def main(nemo2: Path, nemo1: Path, out: Path) -> None:
    from fiddle._src.experimental import serialization
    from nemo.export.trt_llm.nemo_ckpt_loader import nemo_file
    from nemo.lightning import io

    cpu_shims()
    result = {}
    cfg = io.load_context(nemo2 / "context", subpath="model.config")
    result["nemo2_config_class"] = type(cfg).__module__ + "." + type(cfg).__name__
    result["nemo2_config"] = {k: getattr(cfg, k) for k in (
        "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
        "vocab_size", "rotary_base", "share_embeddings_and_output_weights", "add_qkv_bias", "normalization")}
    result["nemo2_activation"] = getattr(cfg.activation_func, "__name__", str(cfg.activation_func))
    tok = io.load_context(nemo2 / "context", subpath="model.tokenizer")
    result["nemo2_tokenizer_ids"] = tok.text_to_ids("w5 w17 w99")
    ctx = serialization.load_json((nemo2 / "context" / "io.json").read_text())
    result["fiddle_root"] = ctx.__fn_or_cls__.__module__ + "." + ctx.__fn_or_cls__.__name__

    unpacked = nemo_file.UnpackedNemoCheckpointDir(nemo_file.nemo_to_path(str(nemo1)), load_checkpoints_to_cpu=True)
    result["nemo1_config"] = {k: unpacked.model_config.get(k) for k in (
        "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
        "activation", "normalization", "bias", "share_embeddings_and_output_weights", "mcore_gpt")}
    # the weights as NeMo's TensorRT-LLM export reads them (megatron's torch_dist reader over model_weights/)
    import torch
    from nemo.export.utils.model_loader import load_model_weights

    if nemo1.is_file():
        # NeMo 2.7.3's tar reader (TarFileSystemReader) hands a TarPath to torch 2.13's FileSystem.concat_path,
        # which calls Path() on it (TypeError): NeMo reads the weights of the extracted archive instead
        import tarfile
        import tempfile

        extracted = Path(tempfile.mkdtemp(dir=out.parent))
        with tarfile.open(nemo1) as tar:
            tar.extractall(extracted, filter="data")
        nemo1 = extracted
    weights = load_model_weights(str(nemo1))
    torch.save({k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}, out.with_suffix(".pt"))
    out.write_text(json.dumps(result))


if __name__ == "__main__":  # the torch_dist reader may spawn processes that re-import this module
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
