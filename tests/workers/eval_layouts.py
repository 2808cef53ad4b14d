"""2-process worker: examples/evaluate.py's perplexity at TP=2, PP=2 and DP=2 (one result per layout, rank 0).

Usage: torchrun --nproc-per-node=2 eval_layouts.py WORKDIR HF_DIR DATA
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("NEMO_MINITRON_NO_PROGRESS", "1")


def main() -> None:
    import torch.distributed as dist

    from nemo_minitron import runtime
    from nemo_minitron.eval.config import EvaluateConfig
    from nemo_minitron.eval.perplexity import evaluate_perplexity
    from tests.launch import report

    work, hf_dir, data = sys.argv[1:4]
    runtime.init_distributed()
    for tp, pp in ((2, 1), (1, 2), (1, 1)):
        cfg = EvaluateConfig(checkpoint=hf_dir, data_path=data, num_samples=6, seq_length=16, micro_batch_size=2,
                             tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, work_dir=work).validate()
        res = evaluate_perplexity(cfg)["result"]
        if dist.get_rank() == 0:
            report({"tp": tp, "pp": pp, "dp": res["dp"], "loss": res["loss"], "tokens": res["tokens"]})
    runtime.shutdown()


if __name__ == "__main__":
    main()
