"""Tokenize WikiText (or any JSONL / parquet / text corpus) into megatron-core .bin/.idx datasets.

    # WikiText-103 as distributed (wiki.train.raw, wiki.valid.raw, wiki.test.raw in one directory):
    python examples/prepare_wikitext.py input=wikitext-103-raw tokenizer=smollm2_hf output_prefix=data/wt103/smollm2
    # -> data/wt103/smollm2_{train,valid,test}_text_document.{bin,idx,meta.json}

    # The embedded default corpus (see examples/fetch_wikipedia_excerpt.py), 2 worker processes:
    python examples/prepare_wikitext.py input=data/wikipedia tokenizer=smollm2_hf \
        output_prefix=data/wikipedia/smollm2 workers=2

    # One JSONL/parquet file or a directory of text files -> <prefix>_text_document.*
    python examples/prepare_wikitext.py input=corpus.jsonl tokenizer=tok.model output_prefix=data/corpus

The tokenizer may be a Hugging Face directory, a .gguf file, a .tiktoken ranks file or a
sentencepiece .model. Each document gets EOD (and BOS if the tokenizer wants one).
"""

import json

import hydra

from nemo_minitron import cli
from nemo_minitron.config.store import register_configs, to_object
from nemo_minitron.paths import conf_dir

register_configs()


@hydra.main(config_path=conf_dir(), config_name="prepare_wikitext", version_base=None)
def main(cfg) -> None:
    # 1. Typed, validated settings.
    args = to_object(cfg).validate()

    # 2. Tokenizer (loaded once here; each worker process loads its own copy).
    from nemo_minitron.data.preprocess import preprocess_corpus
    from nemo_minitron.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer, eod_token=args.eod_token)
    print(f"tokenizer: {tokenizer.kind} {args.tokenizer} vocab={tokenizer.vocab_size} eod={tokenizer.eod_id} "
          f"bos={tokenizer.bos_id if tokenizer.add_bos else None}")

    # 3. Read -> tokenize in parallel -> IndexedDatasetBuilder, one dataset per split, written atomically.
    summaries = preprocess_corpus(args.input, tokenizer, args.output_prefix, workers=args.workers,
                                  text_field=args.text_field, group=args.group, chunk_docs=args.chunk_docs,
                                  overwrite=args.overwrite, progress=args.progress)

    # 4. Summary.
    for split, s in summaries.items():
        print(f"{split:6s} {s.prefix}: {s.documents:,d} documents, {s.tokens:,d} tokens, vocab {s.vocab_size:,d}, "
              f"{s.dtype}, {s.seconds:.2f} s ({s.tokens_per_s:,.0f} tokens/s, {s.workers} workers)")
    print(json.dumps({k: v.to_dict() for k, v in summaries.items()}))


if __name__ == "__main__":
    cli.run(main)
