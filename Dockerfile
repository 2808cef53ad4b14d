# nemo_minitron inside the NeMo container (GPU: NCCL, Transformer Engine spec, bf16).
#
#   docker build -t nemo_minitron .                                   # NeMo 25.11 (megatron-core 0.15)
#   docker build --build-arg NEMO_TAG=26.02 -t nemo_minitron:26.02 .  # NeMo 26.02 (megatron-core 0.16)
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v $PWD/work:/work -it nemo_minitron
#   # inside:
#   python examples/model_info.py model=llama3.1-8b
#   torchrun --nproc-per-node=8 examples/megatron_prune.py model.restore_from_path=/work/llama31_8b \
#       model.tensor_model_parallel_size=8 prune.ffn_hidden_size=9216 prune.hidden_size=3072 \
#       prune.calib_data=/work/data/wikitext_train_text_document export.save_path=/work/pruned
#   torchrun --nproc-per-node=8 examples/megatron_distill.py ...   (see README.md)
#   bash scripts/gpu_check.sh                                      # the GPU check table (README "GPU check")
#
# The container's torch, megatron-core, Transformer Engine, apex, transformers and NeMo stay exactly as shipped:
# scripts/stack_check.py freezes their versions into a pip constraints file, the package is installed under it
# (pip adds only what is missing), and the build fails if any of them moved. The build then proves that the
# package imports and that the command-line entry points answer --help.
# Supported tags: 25.11 (default) and 26.02; other tags within megatron-core 0.15-0.19 work through mcore_compat.
ARG NEMO_TAG=25.11
FROM nvcr.io/nvidia/nemo:${NEMO_TAG}

WORKDIR /opt/nemo_minitron
COPY pyproject.toml setup.py README.md ./
COPY nemo_minitron ./nemo_minitron
COPY conf ./conf
COPY examples ./examples
COPY benchmarks ./benchmarks
COPY scripts ./scripts
COPY tests ./tests

RUN python scripts/stack_check.py freeze /tmp/host-stack.txt \
 && pip install --no-cache-dir -c /tmp/host-stack.txt -e ".[hf]" \
 && python scripts/stack_check.py verify /tmp/host-stack.txt \
 && python -c "import nemo_minitron, megatron.core, nemo_minitron.mcore_compat as c; print('nemo_minitron ok on megatron-core', c.mcore_version())" \
 && for entry in model_info megatron_prune megatron_distill convert_checkpoint; do \
        python examples/$entry.py --help > /dev/null || { echo "examples/$entry.py --help failed"; exit 1; }; \
    done

ENV CUDA_DEVICE_MAX_CONNECTIONS=1 \
    HF_HUB_OFFLINE=1
WORKDIR /opt/nemo_minitron
