"""What a prune and a distillation run need, before it starts: memory per GPU, fit, speed, days.

:func:`make_plan` turns a :class:`PlanConfig` into a :class:`Plan`; :func:`format_plan` renders it.
Speed is model FLOPs (:mod:`nemo_minitron.plan.flops`) at a stated utilisation of the GPUs' dense bf16
peak; recomputed FLOPs are added to the executed work, so recompute slows the step at the same utilisation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nemo_minitron.config.model import ConfigError, ModelConfig
from nemo_minitron.plan.flops import distill_flops_per_token, forward_flops_per_token
from nemo_minitron.plan.memory import RECOMPUTE, Layout, MemoryBreakdown, gib, prune_memory, train_memory


@dataclass(frozen=True)
class GPU:
    """One accelerator model."""

    memory_gib: float
    """Usable device memory."""
    bf16_tflops: float
    """Dense bf16 peak (datasheet, no sparsity)."""


GPUS = {
    "h100-80gb": GPU(79.1, 989.0),
    "h200": GPU(139.8, 989.0),
    "a100-80gb": GPU(79.1, 312.0),
}


@dataclass
class StudentShape:
    """The pruned / student architecture: each key left null keeps the teacher's value."""

    hidden_size: Optional[int] = None
    """Student hidden size."""
    ffn_hidden_size: Optional[int] = None
    """Student MLP width."""
    num_attention_heads: Optional[int] = None
    """Student attention heads."""
    num_query_groups: Optional[int] = None
    """Student KV groups."""
    num_layers: Optional[int] = None
    """Student depth."""


@dataclass
class PlanConfig:
    """Keys of ``examples/plan.py`` (``conf/plan.yaml``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Teacher architecture: ``model=<preset>`` (conf/model/), ``model.*`` overrides, or a megatron checkpoint
    with ``model=<dir>`` / ``model.restore_from_path=<dir>`` (its architecture is read from the checkpoint)."""
    student: StudentShape = field(default_factory=StudentShape)
    """Student (pruned) shape; all null means the teacher's shape."""
    gpu: str = "h100-80gb"
    """Accelerator: h100-80gb, h200 or a100-80gb."""
    nodes: int = 1
    """Nodes."""
    gpus_per_node: int = 8
    """GPUs per node."""
    tp: int = 1
    """Tensor-parallel size (model.tensor_model_parallel_size)."""
    pp: int = 1
    """Pipeline-parallel size (model.pipeline_model_parallel_size)."""
    sequence_parallel: bool = False
    """model.sequence_parallel."""
    recompute: str = "none"
    """Activation recompute: none, selective or full (model.activations_checkpoint_granularity)."""
    distributed_optimizer: bool = True
    """Distributed optimizer (model.optim.name=distributed_fused_adam)."""
    flash_attention: bool = True
    """Fused attention without a seq x seq score matrix (Transformer Engine spec)."""
    micro_batch_size: int = 1
    """model.micro_batch_size."""
    global_batch_size: int = 128
    """model.global_batch_size."""
    seq_length: int = 4096
    """model.encoder_seq_length."""
    precision: str = "bf16"
    """Weights: bf16 or fp32."""
    mfu: float = 0.35
    """Assumed utilisation of the dense bf16 peak for the executed FLOPs."""
    tokens: float = 94e9
    """Distillation token budget (Llama-3.1-Minitron 4B used 94B)."""
    calib_samples: int = 1024
    """Prune: calibration sequences (prune.num_calib_size)."""
    overhead_gib: float = 3.0
    """Per-GPU reserve for the CUDA context, NCCL buffers and allocator fragmentation."""


def register(cs) -> None:
    """Register the ``plan_schema`` structured config (conf/plan.yaml) in Hydra's ConfigStore."""
    cs.store(name="plan_schema", node=PlanConfig)


def resolve_model(spec: "str | ModelConfig") -> ModelConfig:
    """A ModelConfig (from a checkpoint when its restore_from_path is set), a preset name or a checkpoint dir."""
    import yaml

    from nemo_minitron.paths import conf_dir

    if isinstance(spec, ModelConfig):
        if not spec.restore_from_path:
            return spec.validate("model")
        spec = str(spec.restore_from_path)
    path = Path(spec)
    if path.is_dir():
        from nemo_minitron.checkpoint import is_checkpoint, load_model_config

        if not is_checkpoint(path):
            raise ConfigError(f"model.restore_from_path={spec} is not a megatron checkpoint directory")
        return load_model_config(path)
    preset = Path(conf_dir()) / "model" / f"{spec}.yaml"
    if not preset.exists():
        names = sorted(p.stem for p in (Path(conf_dir()) / "model").glob("*.yaml"))
        raise ConfigError(f"model={spec!r} is neither a checkpoint directory nor a preset ({', '.join(names)})")
    return ModelConfig.from_dict(yaml.safe_load(preset.read_text()))


@dataclass(frozen=True)
class Plan:
    """The numbers :func:`format_plan` prints."""

    cfg: PlanConfig
    teacher: ModelConfig
    student: ModelConfig
    layout: Layout
    gpu: GPU
    distill: MemoryBreakdown
    fits: bool
    max_micro_batch: int
    """Largest micro-batch (dividing the per-rank batch) that fits; 0 if none."""
    step_seconds: float
    tokens_per_s: float
    days: float
    prune_score_gib: float
    prune_apply_gib: float
    prune_sharded: bool
    prune_seconds: float
    suggestion: str


def _layout(cfg: PlanConfig, **changes: Any) -> Layout:
    world = cfg.nodes * cfg.gpus_per_node
    tp, pp = changes.pop("tp", cfg.tp), changes.pop("pp", cfg.pp)
    base = dict(tp=tp, pp=pp, dp=max(1, world // (tp * pp)), sequence_parallel=cfg.sequence_parallel and tp > 1,
                recompute=cfg.recompute, distributed_optimizer=cfg.distributed_optimizer,
                flash_attention=cfg.flash_attention, micro_batch_size=cfg.micro_batch_size,
                global_batch_size=cfg.global_batch_size, seq_length=cfg.seq_length,
                param_bytes=2 if cfg.precision == "bf16" else 4)
    base.update(changes)
    return Layout(**base)


def _validate(cfg: PlanConfig, teacher: ModelConfig) -> None:
    if cfg.gpu not in GPUS:
        raise ConfigError(f"gpu={cfg.gpu!r} is not one of {sorted(GPUS)}")
    if cfg.recompute not in RECOMPUTE:
        raise ConfigError(f"recompute={cfg.recompute!r} must be one of {list(RECOMPUTE)}")
    world = cfg.nodes * cfg.gpus_per_node
    if world % (cfg.tp * cfg.pp):
        raise ConfigError(f"nodes x gpus_per_node = {world} GPUs is not divisible by tp x pp = {cfg.tp * cfg.pp}")
    if teacher.num_query_groups and teacher.query_groups % cfg.tp:
        raise ConfigError(f"tp={cfg.tp} does not divide the model's {teacher.query_groups} KV groups")
    if cfg.pp > teacher.num_layers:
        raise ConfigError(f"pp={cfg.pp} exceeds the model's {teacher.num_layers} layers")


def _fits(student: ModelConfig, teacher: ModelConfig, lay: Layout, gpu: GPU, overhead: float) -> bool:
    return gib(train_memory(student, teacher, lay, overhead).total) <= gpu.memory_gib


def _suggest(cfg: PlanConfig, student: ModelConfig, teacher: ModelConfig, gpu: GPU, overhead: float) -> str:
    """The cheapest change after which the step fits.

    Optimizer sharding and SP first, then larger TP (within a node), then PP, and full recompute last (it re-runs
    the student's forward).
    """
    world = cfg.nodes * cfg.gpus_per_node
    base = dict(distributed_optimizer=True, micro_batch_size=1)
    tps = [t for t in (cfg.tp, 2 * cfg.tp, 4 * cfg.tp, 8 * cfg.tp) if t <= cfg.gpus_per_node
           and teacher.query_groups % t == 0 and world % t == 0]
    pps = [q for q in (cfg.pp, 2 * cfg.pp, 4 * cfg.pp, 8 * cfg.pp) if q <= teacher.num_layers]
    recomputes = [cfg.recompute]
    if cfg.recompute == "none" and not cfg.flash_attention:  # selective only frees the seq x seq scores
        recomputes.append("selective")
    if cfg.recompute != "full":
        recomputes.append("full")
    for recompute in recomputes:
        for pp in pps:
            for tp in tps:
                if world % (tp * pp):
                    continue
                change = dict(base, tp=tp, pp=pp, recompute=recompute, sequence_parallel=tp > 1)
                if _fits(student, teacher, _layout(cfg, **change), gpu, overhead):
                    keys = dict(tp=tp, pp=pp, sequence_parallel=str(tp > 1).lower(), recompute=recompute,
                                distributed_optimizer="true", micro_batch_size=1)
                    now = dict(tp=cfg.tp, pp=cfg.pp, sequence_parallel=str(cfg.sequence_parallel).lower(),
                               recompute=cfg.recompute, distributed_optimizer=str(cfg.distributed_optimizer).lower(),
                               micro_batch_size=cfg.micro_batch_size)
                    return " ".join(f"{k}={v}" for k, v in keys.items() if now[k] != v)
    return f"does not fit on {world} x {cfg.gpu} at any layout tried: add nodes"


def make_plan(cfg: PlanConfig) -> Plan:
    """Compute the plan (validates the keys first)."""
    teacher = resolve_model(cfg.model)
    _validate(cfg, teacher)
    shape = {k: v for k, v in dataclasses.asdict(cfg.student).items() if v is not None}
    student = teacher.replace(**shape) if shape else teacher
    gpu = GPUS[cfg.gpu]
    overhead = cfg.overhead_gib * 2**30
    lay = _layout(cfg)
    mem = train_memory(student, teacher, lay, overhead)
    fits = gib(mem.total) <= gpu.memory_gib
    per_rank = max(1, cfg.global_batch_size // lay.dp)
    best = 0
    for mbs in range(1, per_rank + 1):
        if per_rank % mbs == 0 and _fits(student, teacher, _layout(cfg, micro_batch_size=mbs), gpu, overhead):
            best = mbs
    world = cfg.nodes * cfg.gpus_per_node
    flops_tok = distill_flops_per_token(student, teacher, cfg.seq_length)
    if cfg.recompute == "full":
        flops_tok += forward_flops_per_token(student, cfg.seq_length)
    elif cfg.recompute == "selective":  # the attention core only: 4*s*heads*head_dim per layer and token
        flops_tok += student.num_layers * 4 * cfg.seq_length * student.num_attention_heads * student.head_dim
    tokens_step = cfg.global_batch_size * cfg.seq_length
    # 1F1B bubble: (pp - 1) idle micro-batch slots per num_microbatches
    bubble = 1 + (lay.pp - 1) / max(1, lay.num_microbatches)
    step = flops_tok * tokens_step / (cfg.mfu * gpu.bf16_tflops * 1e12 * world) * bubble
    pm = prune_memory(teacher, student, lay, overhead)
    prune_s = forward_flops_per_token(teacher, cfg.seq_length) * cfg.calib_samples * cfg.seq_length / (
        cfg.mfu * gpu.bf16_tflops * 1e12 * world)
    return Plan(cfg=cfg, teacher=teacher, student=student, layout=lay, gpu=gpu, distill=mem, fits=fits,
                max_micro_batch=best, step_seconds=step, tokens_per_s=tokens_step / step,
                days=cfg.tokens / (tokens_step / step) / 86400, prune_score_gib=gib(pm.score),
                prune_apply_gib=gib(pm.apply), prune_sharded=pm.shards_pruned, prune_seconds=prune_s,
                suggestion="" if fits else _suggest(cfg, student, teacher, gpu, overhead))


def format_plan(p: Plan) -> list[str]:
    """The plan as printable lines."""
    from nemo_minitron.models.params import count_parameters

    c, lay, m = p.cfg, p.layout, p.distill
    world = c.nodes * c.gpus_per_node
    nt, ns = count_parameters(p.teacher).total, count_parameters(p.student).total
    g = gib
    lines = [
        f"teacher {p.teacher.name}: {nt / 1e9:.2f}B parameters; student: {ns / 1e9:.2f}B "
        f"(hidden {p.student.hidden_size}, ffn {p.student.ffn_hidden_size}, heads {p.student.num_attention_heads}/"
        f"{p.student.query_groups}, layers {p.student.num_layers})",
        f"{world} x {c.gpu} ({p.gpu.memory_gib:.0f} GiB, {p.gpu.bf16_tflops:.0f} bf16 TFLOP/s): TP={lay.tp} PP={lay.pp} "
        f"DP={lay.dp} SP={lay.sequence_parallel} recompute={lay.recompute} distopt={lay.distributed_optimizer} "
        f"mbs={lay.micro_batch_size} gbs={lay.global_batch_size} seq={lay.seq_length} "
        f"({lay.num_microbatches} micro-batches/step)",
        "",
        "prune (importance on the teacher at this layout, then surgery):",
        f"  scoring pass per GPU        {p.prune_score_gib:8.1f} GiB  ({'fits' if p.prune_score_gib <= p.gpu.memory_gib else 'DOES NOT FIT'})",
        f"  surgery, validate, save     {p.prune_apply_gib:8.1f} GiB  ("
        + ("sharded: both models' shards + one full layer tensor)" if p.prune_sharded else
           "replicated: the pruned shape does not divide the layout; full teacher + pruned copy on one rank)")
        + ("" if p.prune_apply_gib <= p.gpu.memory_gib else "  DOES NOT FIT"),
        f"  calibration forward         {p.prune_seconds:8.0f} s    ({c.calib_samples} x {c.seq_length} tokens "
        f"at {c.mfu:.0%} utilisation)",
        "",
        f"distill (per GPU, pipeline stage {m.stage} is the most loaded):",
        f"  teacher weights             {g(m.teacher_weights):8.1f} GiB",
        f"  student weights             {g(m.student_weights):8.1f} GiB",
        f"  gradients (fp32 buffer)     {g(m.grads):8.1f} GiB",
        f"  optimizer state             {g(m.optimizer):8.1f} GiB  (distributed {g(m.optimizer_distributed):.1f}, "
        f"replicated {g(m.optimizer_replicated):.1f})",
        f"  activations                 {g(m.activations):8.1f} GiB  ({m.in_flight} in-flight x "
        f"{g(m.activations_per_microbatch):.2f} GiB per micro-batch)",
        f"  logits / KL temporaries     {g(m.logits):8.1f} GiB",
        f"  CUDA/NCCL reserve           {g(m.overhead):8.1f} GiB",
        f"  total                       {g(m.total):8.1f} GiB of {p.gpu.memory_gib:.0f}: "
        + ("fits" if p.fits else "DOES NOT FIT"),
        f"  largest micro-batch that fits: {p.max_micro_batch or 'none'}",
        f"  step {p.step_seconds:.2f} s, {p.tokens_per_s:,.0f} tokens/s at {c.mfu:.0%} utilisation; "
        f"{c.tokens / 1e9:.0f}B tokens in {p.days:.1f} days",
    ]
    if p.suggestion:
        lines.append(f"  suggestion: {p.suggestion}")
    return lines
