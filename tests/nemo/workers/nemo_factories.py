"""Our ``minitron`` recipe factories as NeMo-Run builds them, in its own process: ``python nemo_factories.py OUT_JSON``.

Builds ``nemo llm distill --factory minitron``'s recipe with our overrides and records what NeMo's ``llm.distill``
would get (optimizer, schedule, trainer, data, the distillation YAML as NeMo's ``DistillationConfig``); records
the one-line errors for overrides NeMo's functions have no counterpart for. Nothing here needs the CPU shims.
"""

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    import fiddle as fdl
    import yaml
    from nemo.collections.llm.modelopt.distill.utils import DistillationConfig

    from nemo_minitron import nemo_plugin

    nemo_plugin.register()
    from nemo_minitron.nemo_plugin import factories

    recipe = factories.minitron_distill_recipe(
        "STUDENT", "TEACHER", overrides="model.optim.lr=3e-4 model.optim.sched.warmup_steps=2 kd.skip_lm_loss=false "
        "trainer.max_steps=16 model.global_batch_size=4 model.micro_batch_size=2 model.encoder_seq_length=128 "
        "model.tensor_model_parallel_size=2", num_gpus_per_node=2)
    optim = fdl.build(recipe.optim)
    kd = DistillationConfig(**yaml.safe_load(Path(recipe.distillation_config_path).read_text()))
    seen = {
        "fn": recipe.__fn_or_cls__.__name__, "student": recipe.student_model_path, "teacher": recipe.teacher_model_path,
        "lr": optim.config.lr, "warmup": optim.lr_scheduler.warmup_steps, "min_lr": optim.lr_scheduler.min_lr,
        "betas": [optim.config.adam_beta1, optim.config.adam_beta2], "weight_decay": optim.config.weight_decay,
        "max_steps": recipe.trainer.max_steps, "tp": recipe.trainer.strategy.tensor_model_parallel_size,
        "devices": recipe.trainer.devices, "data": recipe.data.__fn_or_cls__.__name__,
        "batch": [recipe.data.seq_length, recipe.data.micro_batch_size, recipe.data.global_batch_size],
        "kd": [kd.skip_lm_loss, kd.kd_loss_scale, list(kd.logit_layers)],
        "default_kd_yaml": Path(factories.minitron_distill_recipe("S", "T").distillation_config_path).name,
    }
    prune = factories.minitron_prune_recipe("CKPT", "OUT", overrides=["prune.hidden_size=32", "prune.num_layers=1"])
    seen["prune"] = {"fn": prune.__fn_or_cls__.__name__,
                     "targets": {k: v for k, v in fdl.build(prune.pruning_config).__dict__.items() if v is not None}}
    for name, call in (("prune_refused", lambda: factories.minitron_prune_recipe(overrides="prune.target_params=1000")),
                       ("distill_refused", lambda: factories.minitron_distill_recipe(overrides="kd.temperature=2"))):
        try:
            call()
            seen[name] = None
        except Exception as exc:  # noqa: BLE001 - the test checks the message
            seen[name] = f"{type(exc).__name__}: {exc}"
    out.write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
