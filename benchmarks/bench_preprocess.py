"""Preprocessing throughput: tokens/s with 1 and 2 (or more) worker processes, measured side by side.

    python benchmarks/bench_preprocess.py                                   # generated WikiText, BPE trained here
    python benchmarks/bench_preprocess.py --input data/wikipedia/wiki.train.raw --tokenizer smollm2_hf
    python benchmarks/bench_preprocess.py --workers 1 2 --repeats 3

Each configuration runs --repeats times in alternation (1, 2, 1, 2, ...) on the same input and the
best wall time is reported (tokenizing + writing .bin/.idx, pool start-up included). Every run
loads the tokenizer afresh: BPE tokenizers cache encoded words, and a warm cache (kept from an
earlier run, or inherited by forked workers) would make later runs look several times faster than
a real one-pass preprocessing job. CPU seconds (this process + workers) show how much of the
machine the run got: on a shared machine, wall time ≫ CPU time means it waited for cores.
The outputs of all runs must be byte-identical; the speed-up is relative to the first worker count.
"""

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", help="corpus file/dir (default: generated WikiText)")
    ap.add_argument("--tokenizer", help="tokenizer path (default: byte-level BPE trained on the input)")
    ap.add_argument("--articles", type=int, default=3000, help="generated articles when --input is not given")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk-docs", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from nemo_minitron.data.preprocess import tokenize_to_indexed_dataset
    from nemo_minitron.data.tokenizer import load_tokenizer
    from nemo_minitron.data.wikitext import iter_documents
    from tests.fixtures import corpus as C

    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    if args.input:
        docs = list(iter_documents(args.input))
    else:
        docs = C.expected_documents(C.make_articles(args.articles, seed=0))
    tok_path = args.tokenizer or C.train_bpe_tokenizer(docs[:2000], work / "tok", vocab_size=8192)
    tok = load_tokenizer(tok_path)
    chars = sum(len(d) for d in docs)
    print(f"corpus: {len(docs):,d} documents, {chars / 1e6:.2f} M characters; tokenizer {tok.kind} "
          f"vocab {tok.vocab_size:,d}; cores {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    best: dict[int, float] = {}
    cpu: dict[int, float] = {}
    digests = set()
    tokens = 0
    for r in range(args.repeats):
        for w in args.workers:
            prefix = work / f"out_w{w}_r{r}" / "bench"
            fresh = load_tokenizer(tok_path)  # cold word cache, as in a real run
            r0 = [resource.getrusage(k) for k in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            t0 = time.perf_counter()
            s = tokenize_to_indexed_dataset(docs, fresh, prefix, workers=w, chunk_docs=args.chunk_docs,
                                            progress=False)
            dt = time.perf_counter() - t0
            r1 = [resource.getrusage(k) for k in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            used = sum(b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime for a, b in zip(r0, r1))
            if dt < best.get(w, float("inf")):
                best[w], cpu[w] = dt, used
            tokens = s.tokens
            digests.add(hashlib.sha256(Path(str(prefix) + ".bin").read_bytes()
                                       + Path(str(prefix) + ".idx").read_bytes()).hexdigest())
    base = best[args.workers[0]]
    print(f"{'workers':>8s} {'seconds':>9s} {'cpu s':>7s} {'tokens/s':>12s} {'docs/s':>10s} {'speed-up':>9s}")
    for w in args.workers:
        print(f"{w:8d} {best[w]:9.3f} {cpu[w]:7.2f} {tokens / best[w]:12,.0f} {len(docs) / best[w]:10,.1f} "
              f"{base / best[w]:8.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"tokens: {tokens:,d}; outputs identical across runs: {len(digests) == 1}")


if __name__ == "__main__":
    main()
