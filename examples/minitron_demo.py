"""The Minitron recipe in one command on the embedded default, with the baselines that test its claims.

    python examples/minitron_demo.py                          # SmolLM2-135M + Wikipedia excerpt, 2 CPU cores
    python examples/minitron_demo.py work_dir=/tmp/demo distill.steps=60 prune.ffn_hidden_size=1024
    python examples/minitron_demo.py teacher=ckpts/my_model corpus_dir=data/wikitext-103-raw

Teacher correction (LM-loss fine-tune of the 4-bit Instruct teacher on the training articles) -> Minitron width
pruning -> KD from the corrected teacher; next to it, the same pruned student trained with the LM loss only and a
random-init student of the same shape, both on the same tokens with their own learning rate. Prints one table
(held-out articles of wiki.test.raw; settings were chosen on wiki.valid.raw only, docs/kd_defaults.md) and writes
WORK/results.json and WORK/loss_curves.png. Every step is skipped when its output is complete, so an interrupted
demo continues where it stopped. Steps and keys: nemo_minitron/recipe/demo.py, --help.
"""

import os
import time
from pathlib import Path

STARTED = time.time()  # the printed total wall time counts from here (imports included)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402

from nemo_minitron import cli  # noqa: E402
from nemo_minitron.config.store import register_configs, to_object  # noqa: E402
from nemo_minitron.paths import conf_dir  # noqa: E402

register_configs()


@hydra.main(config_path=conf_dir(), config_name="minitron_demo", version_base=None)
def main(cfg) -> None:
    from nemo_minitron import runtime
    from nemo_minitron.atomic import is_rank0
    from nemo_minitron.recipe.demo import run_demo

    demo = to_object(cfg).validate()
    work = Path(hydra.utils.to_absolute_path(demo.work_dir))
    if not demo.teacher.lower().startswith("smollm2"):
        demo.teacher = hydra.utils.to_absolute_path(demo.teacher)
    runtime.init_distributed()
    corpus = Path(hydra.utils.to_absolute_path(demo.corpus_dir)) if demo.corpus_dir else None
    out = run_demo(demo, work, corpus, started=STARTED)
    if is_rank0():
        if out["status"] != "completed":
            print("stopped by a signal; run the same command again to continue from the last checkpoint")
        for line in out["lines"]:
            print(line)
        if out["plot"]:
            print(f"\nloss curves: {out['plot']}")
        if out["status"] == "completed":
            print(f"results: {work / 'results.json'}")
    runtime.shutdown()


if __name__ == "__main__":
    cli.run(main)
