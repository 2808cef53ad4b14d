"""What a prune and a distillation run need before it starts: memory per GPU, fit, speed and days.

    python examples/plan.py model=llama3.1-8b student.hidden_size=3072 student.ffn_hidden_size=9216 \
        gpu=h100-80gb nodes=1 gpus_per_node=8 tp=1 global_batch_size=1152 seq_length=8192
    python examples/plan.py model=ckpt/pruned gpu=h200 tp=2 pp=2 recompute=selective
"""

import os
import sys

import hydra
from omegaconf import OmegaConf

from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.store import register_configs
from nemo_minitron.paths import conf_dir
from nemo_minitron.plan.planner import format_plan, make_plan

register_configs()


@hydra.main(config_path=conf_dir(), config_name="plan", version_base=None)
def main(cfg) -> None:
    try:
        plan = make_plan(OmegaConf.to_object(cfg))
    except ConfigError as exc:
        print(f"plan.py: {exc}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(format_plan(plan)))


if __name__ == "__main__":
    # model=<checkpoint dir> reads the architecture from the checkpoint (Hydra treats model=X as a preset name)
    sys.argv = [f"model.restore_from_path={a[6:]}" if a.startswith("model=") and os.path.isdir(a[6:]) else a
                for a in sys.argv]
    main()
