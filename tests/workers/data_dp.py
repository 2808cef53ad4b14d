"""torchrun worker: every rank builds the GPT datasets, loads its DP shard, and resumes mid-way.

    torchrun --nproc-per-node=2 tests/workers/data_dp.py PREFIX CACHE_DIR
"""

import hashlib
import sys


def digest(batch):
    return [hashlib.sha1(t.numpy().tobytes()).hexdigest()[:12] for t in batch["tokens"]]


def main(prefix: str, cache: str) -> None:
    from nemo_minitron import runtime
    from nemo_minitron.data.gpt_data import DataConfig, build_dataloader, build_datasets
    from tests.launch import report

    env = runtime.init_distributed()
    cfg = DataConfig(data_prefix=[prefix], split="90,5,5", seq_length=32, index_cache_dir=cache)
    train, _, _ = build_datasets(cfg, {"train": 24, "valid": 4, "test": 4})
    mbs = 2
    steps = [digest(b) for b in build_dataloader(train, mbs, env.rank, env.world_size)][:6]
    resumed = [digest(b) for b in build_dataloader(train, mbs, env.rank, env.world_size,
                                                   consumed_samples=2 * mbs * env.world_size)][:4]
    report({"rank": env.rank, "steps": steps, "resumed": resumed,
            "first": digest({"tokens": [train[i]["tokens"] for i in range(4)]})})
    runtime.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
