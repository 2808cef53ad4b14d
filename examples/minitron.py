"""The Minitron recipe in one command: correct the teacher -> importance -> prune -> distill -> evaluate -> export.

    python examples/minitron.py teacher=ckpts/teacher train_data=data/wiki_train_text_document \
        valid_data=data/wiki_valid_text_document correction.steps=100 \
        'stages=[{name: depth, prune: {num_layers: 24}, distill: {steps: 200}},
                 {name: width, prune: {ffn_hidden_size: 4096}, distill: {steps: 200}, teacher: original}]'
    python examples/minitron.py ... steps=[prune]              # one step alone (its inputs must exist)
    torchrun --nproc-per-node=8 examples/minitron.py ... tensor_model_parallel_size=2    # or srun (sbatch template
                                                                                       # in examples/slurm/)

Every step is skipped when its complete output exists in work_dir, so an interrupted run continues; an interrupted
training resumes from its last train state. A list of stages makes the compression iterative, each stage's student
the next one's input, distilled from the original (corrected) teacher or the previous student.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402

from nemo_minitron import cli  # noqa: E402
from nemo_minitron.config.model import ConfigError  # noqa: E402
from nemo_minitron.config.store import register_configs, to_object  # noqa: E402
from nemo_minitron.paths import conf_dir  # noqa: E402

register_configs()


@hydra.main(config_path=conf_dir(), config_name="minitron", version_base=None)
def main(cfg) -> None:
    from nemo_minitron import runtime
    from nemo_minitron.atomic import is_rank0
    from nemo_minitron.recipe.run import Recipe

    try:
        rc = to_object(cfg)
        for key in ("work_dir", "teacher", "train_data", "valid_data"):
            value = getattr(rc, key)
            if value and not os.path.isabs(value) and not value.lower().startswith("smollm2"):
                setattr(rc, key, hydra.utils.to_absolute_path(value))
        runtime.init_distributed()
        summary = Recipe(rc).run()
    except (ConfigError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if is_rank0():
        if summary["status"] != "completed":
            print("stopped by a signal; run the same command again to continue")
        for r in summary.get("results", []):
            print(f"| {r['model']:34s} | {r['params'] / 1e6:8.2f}M | {r['loss']:7.4f} | {r['ppl']:10.2f} |")
        print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    runtime.shutdown()


if __name__ == "__main__":
    cli.run(main)
