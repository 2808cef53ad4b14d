r"""Extend a NeMo 2 workflow with our Minitron pruning stage, then hand the pruned model to NeMo's distillation recipe.

    python examples/nemo_recipe_extension.py --nemo-checkpoint NEMO2_CKPT --work-dir WORK \
        --prune "prune.ffn_hidden_size=9216 prune.hidden_size=3072 prune.calib_data=PREFIX" \
        [--distill "trainer.max_steps=100 kd.skip_lm_loss=false"] [--data-paths 1.0 PREFIX] [--run-distill]

Three NeMo-Run tasks, each a ``run.Partial`` that ``run.run(..., direct=True)`` executes in this process (give
``run.run`` any NeMo-Run executor, e.g. a ``run.SlurmExecutor``, to run them elsewhere):

1. **prune (ours)**: the ``nemo minitron prune`` entry point reads the NeMo 2 checkpoint and writes our pruned
   checkpoint ``WORK/pruned`` (Minitron importance on the calibration data, then width/depth surgery);
2. **back to NeMo**: ``llm.import_ckpt(model=llm.GPTModel(...), source="minitron://WORK/pruned")`` writes the NeMo 2
   checkpoint ``WORK/pruned_nemo2``; NeMo's model class and config come from the pruned checkpoint;
3. **distil (NeMo)**: NeMo's distillation recipe (``llm.distill`` through our ``minitron`` factory, i.e. our KD
   settings), student ``WORK/pruned_nemo2``, teacher NEMO2_CKPT: shown as a dry run; ``--run-distill`` runs it
   (NeMo's distillation trainer needs GPUs; on CPU, ``nemo minitron distill`` takes the same two checkpoints).

``--prune`` / ``--distill`` are our recipes' Hydra overrides (``conf/megatron_prune.yaml``,
``conf/megatron_distill.yaml``), space-separated. Prints one JSON line: the paths written and the pruned shape as
NeMo reads it.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path


def main(argv=None) -> int:
    """Run the three stages; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nemo-checkpoint", required=True, help="NeMo 2 checkpoint directory (the teacher)")
    ap.add_argument("--work-dir", required=True, help="new directory for the pruned checkpoints")
    ap.add_argument("--prune", required=True, help="our megatron_prune overrides, space-separated")
    ap.add_argument("--distill", default="", help="our megatron_distill overrides, space-separated")
    ap.add_argument("--data-paths", nargs="*", default=None, help="NeMo PreTrainingDataModule paths for KD")
    ap.add_argument("--run-distill", action="store_true", help="run NeMo's distillation (GPUs) instead of a dry run")
    args = ap.parse_args(argv)

    import nemo_run as run
    from nemo.collections import llm
    from nemo.lightning import io

    from nemo_minitron import nemo_plugin
    from nemo_minitron.nemo_plugin import cli, factories

    nemo_plugin.register()  # minitron:// and the factories (the `nemo` command does this through our entry point)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=False)
    teacher, pruned, pruned_nemo2 = Path(args.nemo_checkpoint), work / "pruned", work / "pruned_nemo2"

    # 1. our pruning stage, as the NeMo-Run task `nemo minitron prune` runs
    run.run(run.Partial(cli.prune, restore_from_path=str(teacher), save_path=str(pruned),
                        overrides=shlex.split(args.prune)), direct=True)
    # 2. back into NeMo: the placeholder config is not used, the importer reads the pruned checkpoint's
    placeholder = run.Config(llm.GPTModel, config=run.Config(llm.GPTConfig, num_layers=1, hidden_size=64,
                                                             num_attention_heads=1))
    run.run(run.Partial(llm.import_ckpt, model=placeholder, source=f"minitron://{pruned.absolute()}",
                        output_path=pruned_nemo2), direct=True)
    # NeMo's reading of the new checkpoint's context (not built: NeMo's Llama configs ask for TE's fused RoPE)
    config = io.load_context(pruned_nemo2 / "context", subpath="model.config", build=False)
    # 3. NeMo's distillation recipe with our KD settings
    recipe = factories.minitron_distill_recipe(str(pruned_nemo2), str(teacher), overrides=args.distill,
                                               data_paths=args.data_paths, dir=str(work / "distill"))
    if args.run_distill:
        run.run(recipe, direct=True)
    else:
        run.dryrun_fn(recipe)
    print(json.dumps({"pruned": str(pruned), "pruned_nemo2": str(pruned_nemo2), "nemo_config_class":
                      config.__fn_or_cls__.__name__, **{k: getattr(config, k) for k in (
                          "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                          "kv_channels")}, "distill_recipe": recipe.__fn_or_cls__.__name__}))
    return 0


if __name__ == "__main__":  # megatron's torch_dist writer may spawn processes that re-import this module
    sys.exit(main())
