"""Perplexity of any checkpoint (nemo_minitron, Hugging Face, NeMo 2, GGUF) at any TP/PP; optional lm-eval tasks.

    python examples/evaluate.py checkpoint=ckpts/student data=data/wiki_valid_text_document
    python examples/evaluate.py checkpoint=hf/SmolLM2-135M data=heldout.jsonl num_samples=128 seq_length=1024
    torchrun --nproc-per-node=2 examples/evaluate.py checkpoint=ckpts/student data=heldout.txt tensor_model_parallel_size=2
    python examples/evaluate.py checkpoint=ckpts/student lm_eval_tasks=[my_task] lm_eval_include_path=tasks/ lm_eval_limit=100

Prints one JSON line (rank 0): loss (nats/token), perplexity (exp of it) and token count, plus lm-eval results.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402

from nemo_minitron import cli  # noqa: E402
from nemo_minitron.config.model import ConfigError  # noqa: E402
from nemo_minitron.config.store import register_configs, to_object  # noqa: E402
from nemo_minitron.paths import conf_dir  # noqa: E402

register_configs()

#: ``data=`` on the command line is the evaluation text (``data_path``), not a choice of the ``data`` config group.
EVALUATE_ALIASES = {"data": "data_path"}


def evaluate(cfg) -> dict:
    """Perplexity and/or lm-eval tasks of ``cfg.checkpoint``; returns the report. Collective."""
    from nemo_minitron.checkpoint import tokenizer_path
    from nemo_minitron.data.tokenizer import load_tokenizer
    from nemo_minitron.eval.perplexity import load_model, resolve_checkpoint

    report = {"checkpoint": cfg.checkpoint}
    model = None
    if cfg.data_path:
        from nemo_minitron.eval.perplexity import evaluate_perplexity

        out = evaluate_perplexity(cfg)
        report["perplexity"], model, ckpt = out["result"], out["model"], out["ckpt"]
    if cfg.lm_eval_tasks:
        from nemo_minitron.eval.lm_eval_adapter import run_tasks

        if model is None:
            ckpt = resolve_checkpoint(cfg.checkpoint, cfg.checkpoint_format, cfg.work_dir)
            model, _, _ = load_model(ckpt, cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size)
        tok_dir = cfg.tokenizer or tokenizer_path(ckpt)
        if tok_dir is None:
            raise ConfigError(f"lm_eval_tasks need a tokenizer: {ckpt} carries none; set tokenizer=<path>")
        from nemo_minitron.checkpoint import load_model_config

        max_len = min(cfg.seq_length, load_model_config(ckpt).max_position_embeddings)
        report["lm_eval"] = run_tasks(model, load_tokenizer(tok_dir), max_len, cfg.lm_eval_tasks,
                                      cfg.lm_eval_include_path, cfg.lm_eval_limit, cfg.lm_eval_num_fewshot,
                                      cfg.micro_batch_size, cfg.max_new_tokens)
    return report


@hydra.main(config_path=conf_dir(), config_name="evaluate", version_base=None)
def main(cfg) -> None:
    from nemo_minitron import runtime
    from nemo_minitron.atomic import is_rank0, temp_sibling

    try:
        ecfg = to_object(cfg).validate()
        if ecfg.output and os.path.exists(ecfg.output) and not ecfg.overwrite:
            raise ConfigError(f"output={ecfg.output} already exists; set overwrite=true or choose another output")
        runtime.init_distributed()
        report = evaluate(ecfg)
    except (ConfigError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if is_rank0():
        text = json.dumps(report, default=str)
        print(text)
        if ecfg.output:
            final = Path(ecfg.output).absolute()
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_sibling(final)
            tmp.write_text(text + "\n")
            os.replace(tmp, final)
    runtime.shutdown()


if __name__ == "__main__":
    cli.run(main, aliases=EVALUATE_ALIASES)
