"""Memory per GPU of a distillation step and of a prune, by component (pure arithmetic).

Conventions (megatron-core as this package drives it):

* weights: ``param_bytes`` per parameter (2 for bf16, 4 for fp32), sharded over TP, split over PP stages;
  the first stage holds the input embedding, the last the output layer (both when tied and PP > 1);
* gradients: megatron's DDP gradient buffer in fp32 (``grad_reduce_in_fp32``): 4 bytes per parameter;
* optimizer: Adam moments (2 x 4 bytes) plus an fp32 master copy when the weights are bf16/fp16 (4 bytes),
  divided by the data-parallel size with the distributed optimizer;
* activations: what autograd keeps per layer and micro-batch (below), times the micro-batches 1F1B keeps in
  flight on the stage (``pp - stage`` for stage ``stage``, at most the micro-batches per step);
* logits/KL temporaries on the last stage: student logits and their fp32 copies for the loss, teacher logits,
  and the KL's softmax/log-softmax/gradient buffers, ``logit_bytes`` per vocabulary entry per token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nemo_minitron.config.checks import shards_evenly
from nemo_minitron.config.model import ModelConfig
from nemo_minitron.models.params import count_parameters

RECOMPUTE = ("none", "selective", "full")
LOGIT_BYTES_KD = 24
"""Bytes per vocab entry per token of a KD loss: bf16 student + teacher logits (2 + 2), fp32 copies for the
cross entropy and the two softmaxes (3 x 4), log-softmax and the logit gradient (2 x 4)."""
LOGIT_BYTES_LM = 10
"""Bytes per vocab entry per token of the LM loss alone: bf16 logits, fp32 copy and fp32 gradient."""


@dataclass(frozen=True)
class Layout:
    """How the job is laid out and run."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size."""
    dp: int = 1
    """Data-parallel size (GPUs / (tp * pp))."""
    sequence_parallel: bool = False
    """Sequence parallelism: the norm/dropout activations are split over TP too."""
    recompute: str = "none"
    """Activation recompute: none, selective (attention core) or full (only each layer's input is kept)."""
    distributed_optimizer: bool = True
    """Shard the optimizer state (and fp32 master weights) over data-parallel ranks."""
    flash_attention: bool = True
    """Fused/flash attention (Transformer Engine): no seq x seq score matrix is kept."""
    micro_batch_size: int = 1
    """Sequences per micro-batch."""
    global_batch_size: int = 1
    """Sequences per optimizer step over all data-parallel ranks."""
    seq_length: int = 4096
    """Tokens per sequence."""
    param_bytes: int = 2
    """Bytes per weight: 2 (bf16) on GPUs, 4 (fp32)."""

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per step on each data-parallel rank."""
        return max(1, self.global_batch_size // (self.micro_batch_size * self.dp))


def stage_layers(cfg: ModelConfig, pp: int, stage: int) -> int:
    """Transformer layers on pipeline stage ``stage`` (megatron's even split; the remainder goes first)."""
    base, extra = divmod(cfg.num_layers, pp)
    return base + (1 if stage < extra else 0)


def stage_params(cfg: ModelConfig, tp: int, pp: int, stage: int) -> float:
    """Parameters held by one rank of pipeline stage ``stage`` (TP-sharded matrices divided by ``tp``)."""
    pc = count_parameters(cfg)
    emb = cfg.vocab_size * cfg.hidden_size
    params = stage_layers(cfg, pp, stage) * pc.per_layer / tp
    if stage == 0:
        params += emb / tp
    if stage == pp - 1:
        params += cfg.hidden_size  # final norm
        if not cfg.share_embeddings_and_output_weights or pp > 1:
            params += emb / tp
    return params


def activation_bytes_per_layer(cfg: ModelConfig, lay: Layout, act_bytes: int | None = None) -> float:
    """Bytes autograd keeps for one layer and one micro-batch (Korthikanti et al. 2022, for GQA/SwiGLU)."""
    b = act_bytes or lay.param_bytes
    s, mb, h, f, d = lay.seq_length, lay.micro_batch_size, cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    nh, ng, tp = cfg.num_attention_heads, cfg.query_groups, lay.tp
    tokens = s * mb
    if lay.recompute == "full":
        return tokens * h * b / (tp if lay.sequence_parallel else 1)
    # replicated over TP unless sequence parallel: the two norms' inputs and outputs
    norms = 4 * tokens * h * b / (tp if lay.sequence_parallel else 1)
    # TP-sharded: q, k, v (attention inputs), the attention output, fc1 output(s) and fc2 input
    qkv = (nh + 2 * ng) * d
    fc1 = f * (2 if cfg.gated_linear_unit else 1)
    sharded = tokens * (qkv + nh * d + fc1 + f) * b / tp
    scores = 0.0
    if not lay.flash_attention and lay.recompute != "selective":
        # softmax output (param dtype) + the causal mask's bool: per head, seq x seq
        scores = mb * nh * s * s * (b + 1) / tp
    return norms + sharded + scores


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU on the most loaded pipeline stage."""

    stage: int
    """Pipeline stage the figures are for (the one with the largest total)."""
    teacher_weights: float
    """Frozen teacher weights (0 when there is no teacher)."""
    student_weights: float
    """Trained model's weights."""
    grads: float
    """fp32 gradient buffer."""
    optimizer: float
    """Adam state (+ fp32 master weights) as configured."""
    optimizer_replicated: float
    """The same without the distributed optimizer (for comparison; not in the total when sharded)."""
    optimizer_distributed: float
    """The same with the distributed optimizer."""
    activations: float
    """Activations of all in-flight micro-batches (1F1B)."""
    activations_per_microbatch: float
    """Activations of one in-flight micro-batch on this stage."""
    in_flight: int
    """Micro-batches 1F1B keeps on this stage."""
    logits: float
    """Logits / KL temporaries (last stage only)."""
    overhead: float
    """CUDA context, NCCL and allocator reserve."""

    @property
    def total(self) -> float:
        """Sum of the components that are allocated at the peak."""
        return (self.teacher_weights + self.student_weights + self.grads + self.optimizer + self.activations
                + self.logits + self.overhead)


def optimizer_bytes(params: float, lay: Layout) -> tuple[float, float]:
    """(replicated, distributed) Adam state bytes for ``params`` weights."""
    per_param = 8 + (4 if lay.param_bytes < 4 else 0)
    return params * per_param, params * per_param / lay.dp


def stage_memory(student: ModelConfig, teacher: ModelConfig | None, lay: Layout, stage: int,
                 overhead_bytes: float = 0.0) -> MemoryBreakdown:
    """Per-GPU memory of a KD (teacher given) or LM training step on pipeline stage ``stage``."""
    sp = stage_params(student, lay.tp, lay.pp, stage)
    tw = stage_params(teacher, lay.tp, lay.pp, stage) * lay.param_bytes if teacher is not None else 0.0
    rep, dist = optimizer_bytes(sp, lay)
    in_flight = min(lay.pp - stage, lay.num_microbatches)
    per_mb = stage_layers(student, lay.pp, stage) * activation_bytes_per_layer(student, lay)
    # the teacher runs forward-only: one layer's transient working set
    teacher_act = 0.0
    if teacher is not None:
        teacher_act = activation_bytes_per_layer(teacher, dataclasses.replace(lay, recompute="none"))
    logits = 0.0
    if stage == lay.pp - 1:
        logits = (lay.seq_length * lay.micro_batch_size * student.vocab_size / lay.tp
                  * (LOGIT_BYTES_KD if teacher is not None else LOGIT_BYTES_LM))
    return MemoryBreakdown(
        stage=stage, teacher_weights=tw, student_weights=sp * lay.param_bytes, grads=sp * 4,
        optimizer=dist if lay.distributed_optimizer else rep, optimizer_replicated=rep, optimizer_distributed=dist,
        activations=per_mb * in_flight + teacher_act, activations_per_microbatch=per_mb, in_flight=in_flight,
        logits=logits, overhead=overhead_bytes)


def train_memory(student: ModelConfig, teacher: ModelConfig | None, lay: Layout,
                 overhead_bytes: float = 0.0) -> MemoryBreakdown:
    """:func:`stage_memory` of the most loaded pipeline stage."""
    return max((stage_memory(student, teacher, lay, s, overhead_bytes) for s in range(lay.pp)),
               key=lambda m: m.total)


@dataclass(frozen=True)
class PruneMemory:
    """Bytes per GPU of the two phases of a prune."""

    score: float
    """Importance pass at the layout: weights shard + one layer's forward working set + logits."""
    apply: float
    """Surgery, validation and save. At a layout the pruned shape divides (``shards_pruned``): this rank's
    shards of both models, one full layer tensor being re-sliced and a forward at the layout (sharded surgery);
    otherwise the replicated fallback: the full model, its pruned copy and a TP=1 forward on one rank."""
    shards_pruned: bool
    """The pruned shape divides the layout, so surgery runs sharded."""


def largest_layer_tensor(cfg: ModelConfig) -> int:
    """Elements of the largest decoder-layer weight (gathered whole over TP during sharded surgery)."""
    qkv = (cfg.num_attention_heads + 2 * cfg.query_groups) * cfg.head_dim * cfg.hidden_size
    fc1 = (2 if cfg.gated_linear_unit else 1) * cfg.ffn_hidden_size * cfg.hidden_size
    return max(qkv, fc1, cfg.ffn_hidden_size * cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim * cfg.hidden_size)


def prune_memory(cfg: ModelConfig, pruned: ModelConfig, lay: Layout, overhead_bytes: float = 0.0) -> PruneMemory:
    """Per-GPU memory of a prune of ``cfg`` to ``pruned`` (scores at ``lay``; surgery sharded where it can be)."""
    weights = max(stage_params(cfg, lay.tp, lay.pp, s) for s in range(lay.pp)) * lay.param_bytes
    fwd = activation_bytes_per_layer(cfg, dataclasses.replace(lay, recompute="none"))
    logits = lay.seq_length * lay.micro_batch_size * cfg.vocab_size / lay.tp * 4
    score = weights + fwd + logits + overhead_bytes
    if shards_evenly(pruned, lay.tp, lay.pp):
        small = max(stage_params(pruned, lay.tp, lay.pp, s) for s in range(lay.pp)) * lay.param_bytes
        full_tensor = largest_layer_tensor(cfg) * lay.param_bytes
        return PruneMemory(score=score, apply=weights + small + full_tensor + fwd + logits + overhead_bytes,
                           shards_pruned=True)
    full = count_parameters(cfg).total * lay.param_bytes
    small = count_parameters(pruned).total * lay.param_bytes
    fwd_full = activation_bytes_per_layer(cfg, dataclasses.replace(lay, tp=1, pp=1, recompute="none"))
    return PruneMemory(score=score, apply=full + small + fwd_full + lay.seq_length * lay.micro_batch_size
                       * cfg.vocab_size * 4 + overhead_bytes, shards_pruned=False)


def gib(x: float) -> float:
    """Bytes -> GiB."""
    return x / 2**30
