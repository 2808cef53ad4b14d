"""Resource planning for prune and distill runs: FLOPs, memory per GPU, step time (pure arithmetic, no model built)."""
