# nemo_minitron inside the NeMo container (GPU: NCCL, Transformer Engine spec, bf16).
#
#   docker build -t nemo_minitron .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v $PWD/work:/work -it nemo_minitron
#   # inside:
#   python examples/model_info.py model=llama3.1-8b
#   torchrun --nproc-per-node=8 examples/megatron_prune.py model.restore_from_path=/work/llama31_8b \
#       model.tensor_model_parallel_size=8 prune.ffn_hidden_size=9216 prune.hidden_size=3072 \
#       prune.calib_data=/work/data/wikitext_train_text_document export.save_path=/work/pruned
#   torchrun --nproc-per-node=8 examples/megatron_distill.py ...   (see README.md)
#
# The base image already ships torch, megatron-core, Transformer Engine and apex; nemo_minitron
# installs without touching them (--no-deps for the package itself, then only what is missing).
# Pinned tag: NeMo 25.11 (the tag NVIDIA's install guide names); newer tags work through mcore_compat.
FROM nvcr.io/nvidia/nemo:25.11

WORKDIR /opt/nemo_minitron
COPY pyproject.toml README.md ./
COPY nemo_minitron ./nemo_minitron
COPY conf ./conf
COPY examples ./examples
COPY benchmarks ./benchmarks
COPY tests ./tests

RUN pip install --no-cache-dir --no-deps -e . \
 && pip install --no-cache-dir "hydra-core==1.3.2" "omegaconf==2.3.0" "psutil>=5.9" "safetensors>=0.4" \
        "tqdm>=4.66" "tensorboard>=2.14" "gguf==0.19.0" "tiktoken>=0.7" \
 && python -c "import nemo_minitron, megatron.core; print('nemo_minitron ok')"

ENV CUDA_DEVICE_MAX_CONNECTIONS=1 \
    HF_HUB_OFFLINE=1
WORKDIR /opt/nemo_minitron
