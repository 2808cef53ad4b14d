r"""NeMo-Run recipe factories: ``nemo llm prune --factory minitron`` and ``nemo llm distill --factory minitron``.

They configure NeMo's own ``llm.prune`` (ModelOpt's Minitron pruning) and ``llm.distill`` (ModelOpt's knowledge
distillation) with the settings of our ``megatron_prune`` / ``megatron_distill`` recipes: our recipe's defaults
plus the Hydra ``overrides`` given (our key names, as for ``nemo minitron prune|distill``), mapped onto NeMo's
arguments. A setting NeMo's function has no counterpart for (our parameter-budget search, a KD temperature, ...)
is refused naming the key. What then runs is NeMo's code, on GPUs (``llm.prune`` builds a GPU trainer; the
distillation recipe's trainer is NeMo's GPU one); our own implementation of both steps, which also runs on CPU, is
``nemo minitron prune|distill``. The ``nemo`` command loads this module through :mod:`.cli`.

    nemo llm prune --factory 'minitron(overrides="prune.ffn_hidden_size=9216 prune.calib_data=PREFIX")' \
        nemo_checkpoint=CKPT save_path=OUT --dryrun
    nemo llm distill --factory 'minitron(overrides="trainer.max_steps=100 kd.skip_lm_loss=false")' \
        student_model_path=S teacher_model_path=T 'data.paths=["1.0","PREFIX"]'

(NeMo-Run splits a factory's arguments at commas: give ``overrides`` as one space-separated string there.)
"""

import dataclasses
import shlex
from pathlib import Path
from typing import Any, Optional, Union

import nemo_run as run
from nemo.collections import llm
from nemo.collections.llm.modelopt import PruningConfig

from nemo_minitron import nemo_plugin
from nemo_minitron.config.model import ConfigError

NAME = "minitron"
#: NeMo distillation YAMLs (``distillation_config_path``) shipped with the plugin, by ``kd.skip_lm_loss``
KD_CONFIGS = {True: Path(__file__).with_name("kd_logits.yaml"), False: Path(__file__).with_name("kd_logits_lm.yaml")}

#: our keys -> what they set in llm.prune (keys handled by the factory arguments are not listed)
PRUNE_KEYS = {"prune.ffn_hidden_size": "pruning_config.target_ffn_hidden_size",
              "prune.hidden_size": "pruning_config.target_hidden_size",
              "prune.num_attention_heads": "pruning_config.target_num_attention_heads",
              "prune.num_query_groups": "pruning_config.target_num_query_groups",
              "prune.num_layers": "pruning_config.target_num_layers", "prune.drop_layers": "pruning_config.drop_layers",
              "prune.num_calib_size": "num_train_samples", "prune.calib_data": "data.paths",
              "prune.calib_seq_length": "data.seq_length", "prune.calib_batch_size": "data.micro_batch_size",
              "prune.calib_seed": "data.seed", "model.tensor_model_parallel_size": "tp_size",
              "model.pipeline_model_parallel_size": "pp_size", "prune.plot": None}
DISTILL_KEYS = {"trainer.max_steps", "trainer.val_check_interval", "trainer.limit_val_batches",
                "trainer.log_every_n_steps", "trainer.gradient_clip_val", "trainer.precision", "model.micro_batch_size", "model.global_batch_size", "model.encoder_seq_length",
                "model.data.data_prefix", "model.optim.name", "model.optim.lr", "model.optim.weight_decay",
                "model.optim.betas", "model.optim.eps", "model.optim.sched.name", "model.optim.sched.warmup_steps",
                "model.optim.sched.min_lr", "model.optim.sched.decay_steps", "model.tensor_model_parallel_size",
                "model.pipeline_model_parallel_size", "kd.loss", "kd.skip_lm_loss", "kd.kd_loss_scale",
                "exp_manager.explicit_log_dir"}


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            out.update(_flat(getattr(obj, f.name), f"{prefix}{f.name}."))
        return out
    return {prefix[:-1]: obj}


def _ours(recipe: str, required: list[str], overrides: Union[str, list[str], None], mapped) -> Any:
    """Our recipe's config with ``overrides`` (a list, or one space-separated string).

    Refuses an override NeMo's function has no counterpart for.
    """
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    job = nemo_plugin.compose(recipe, [*required, *(overrides or ())])
    base, given = _flat(nemo_plugin.compose(recipe, required)), _flat(job)
    for key in sorted(k for k in given if given[k] != base.get(k)):
        if key not in mapped:
            raise ConfigError(f"{key}={given[key]!r} has no counterpart in NeMo's llm.{recipe.split('_')[-1]} "
                              f"(run our implementation instead: nemo minitron {recipe.split('_')[-1]})")
    return job


@run.cli.factory(target=llm.prune, name=NAME)
def minitron_prune_recipe(nemo_checkpoint: Optional[str] = None, save_path: Optional[str] = None,
                          overrides: Optional[str] = None, devices: int = 1, num_nodes: int = 1) -> run.Partial:
    """NeMo's ``llm.prune`` with our ``megatron_prune`` settings (defaults + ``overrides``, our key names).

    ``overrides``: one string of space-separated Hydra overrides (the CLI's form) or a list of them.

    Targets ``prune.{ffn_hidden_size,hidden_size,num_attention_heads,num_query_groups,num_layers,drop_layers}``;
    calibration ``prune.{calib_data (a megatron dataset prefix),num_calib_size,calib_seq_length,calib_batch_size,
    calib_seed}`` (NeMo's mock data when ``calib_data`` is unset); layout ``model.{tensor,pipeline}_model_parallel_size``.
    """
    job = _ours("megatron_prune", ["model.restore_from_path=unused", "export.save_path=unused"], overrides, PRUNE_KEYS)
    p = job.prune
    targets = dict(target_ffn_hidden_size=p.ffn_hidden_size, target_hidden_size=p.hidden_size,
                   target_num_attention_heads=p.num_attention_heads, target_num_query_groups=p.num_query_groups,
                   target_num_layers=p.num_layers, drop_layers=list(p.drop_layers) or None)
    batch = dict(seq_length=p.calib_seq_length, micro_batch_size=p.calib_batch_size,
                 global_batch_size=p.calib_batch_size)
    data = (run.Config(llm.PreTrainingDataModule, paths=[p.calib_data], seed=p.calib_seed, **batch) if p.calib_data
            else run.Config(llm.MockDataModule, **batch))
    return run.Partial(llm.prune, nemo_checkpoint=nemo_checkpoint, save_path=save_path,
                       pruning_config=run.Config(PruningConfig, **{k: v for k, v in targets.items() if v}),
                       devices=devices, num_nodes=num_nodes, tp_size=job.model.tensor_model_parallel_size,
                       pp_size=job.model.pipeline_model_parallel_size, num_train_samples=p.num_calib_size,
                       data=data, legacy_ckpt=False)


@run.cli.factory(target=llm.distill, name=NAME)
def minitron_distill_recipe(student_model_path: Optional[str] = None, teacher_model_path: Optional[str] = None,
                            overrides: Optional[str] = None, data_paths: Optional[list[str]] = None, distillation_config_path: Optional[str] = None,
                            dir: Optional[str] = None, name: str = "minitron_kd", num_nodes: int = 1,  # noqa: A002
                            num_gpus_per_node: int = 8) -> run.Partial:
    """NeMo's distillation recipe (``llm.distill``) with our ``megatron_distill`` settings (defaults + ``overrides``).

    Maps the optimizer and schedule (``model.optim.*``), batch and sequence length, ``trainer.*`` loop settings,
    the layout and the KD loss (``kd.skip_lm_loss``, ``kd.kd_loss_scale`` 1.0: a packaged NeMo distillation YAML;
    anything else needs your own ``distillation_config_path``). ``data_paths``: NeMo's ``PreTrainingDataModule``
    paths (``model.data.data_prefix`` when unset; NeMo's mock data when neither is).
    """
    from nemo.collections.llm.modelopt.recipes import distillation_recipe
    from nemo.collections.llm.recipes.optim.adam import distributed_fused_adam_with_cosine_annealing

    job = _ours("megatron_distill", ["model.restore_from_path=unused", "model.kd_teacher_restore_from_path=unused",
                                     "export.save_path=unused"], overrides, DISTILL_KEYS)
    m, t, kd, o = job.model, job.trainer, job.kd, job.model.optim
    if kd.loss not in ("minitron", "logits_kl"):
        raise ConfigError(f"kd.loss={kd.loss!r}: NeMo's llm.distill computes the logit KL (kd.loss=minitron|logits_kl)")
    if o.sched.name != "CosineAnnealing":
        raise ConfigError(f"model.optim.sched.name={o.sched.name!r}: the factory maps CosineAnnealing only")
    if t.precision not in ("auto", "bf16"):
        raise ConfigError(f"trainer.precision={t.precision!r}: NeMo's distillation recipe trains in bf16-mixed")
    if distillation_config_path is None:
        if kd.kd_loss_scale != 1.0 or job.kd.intermediate_pairs:
            raise ConfigError("kd.kd_loss_scale != 1 / kd.intermediate_pairs: write NeMo's distillation YAML "
                              "(logit_layers, intermediate_layer_pairs, skip_lm_loss, kd_loss_scale) and pass "
                              "distillation_config_path=")
        distillation_config_path = str(KD_CONFIGS[bool(kd.skip_lm_loss)])
    recipe = distillation_recipe(student_model_path, teacher_model_path, distillation_config_path=distillation_config_path,
                                 dir=dir or job.exp_manager.explicit_log_dir, name=name, num_nodes=num_nodes,
                                 num_gpus_per_node=num_gpus_per_node)
    tp, pp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size
    recipe.trainer.strategy.tensor_model_parallel_size = tp
    recipe.trainer.strategy.pipeline_model_parallel_size = pp
    recipe.trainer.strategy.sequence_parallel = tp > 1
    for key in ("max_steps", "val_check_interval", "limit_val_batches", "log_every_n_steps"):
        setattr(recipe.trainer, key, getattr(t, key))
    batch = dict(seq_length=m.encoder_seq_length, micro_batch_size=m.micro_batch_size,
                 global_batch_size=m.global_batch_size)
    paths = data_paths or m.data.data_prefix
    recipe.data = (run.Config(llm.PreTrainingDataModule, paths=list(paths), **batch) if paths
                   else run.Config(llm.MockDataModule, **batch))
    recipe.optim = distributed_fused_adam_with_cosine_annealing(
        warmup_steps=o.sched.warmup_steps, adam_beta1=o.betas[0], adam_beta2=o.betas[1], max_lr=o.lr,
        min_lr=o.sched.min_lr, clip_grad=t.gradient_clip_val)
    recipe.optim.config.weight_decay = o.weight_decay
    recipe.optim.config.adam_eps = o.eps
    recipe.optim.config.use_distributed_optimizer = o.name == "distributed_fused_adam"
    if o.sched.decay_steps is not None:
        recipe.optim.lr_scheduler.max_steps = o.sched.decay_steps
    return recipe
