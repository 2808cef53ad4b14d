"""Data pipeline: corpora → tokenizers → megatron indexed datasets → training and calibration samples.

Modules (imported on demand; this package import is cheap):

* :mod:`~nemo_minitron.data.wikitext`: read WikiText raw/token files, JSONL, parquet, text directories;
* :mod:`~nemo_minitron.data.tokenizer`: :func:`load_tokenizer` for HF directories, GGUF, tiktoken, sentencepiece;
* :mod:`~nemo_minitron.data.preprocess`: parallel tokenization into ``.bin``/``.idx`` (atomic);
* :mod:`~nemo_minitron.data.integrity`: detect truncated/mismatched/wrong-vocab datasets;
* :mod:`~nemo_minitron.data.gpt_data`: megatron GPTDatasets, DP-sharded resumable loader;
* :mod:`~nemo_minitron.data.calibration`: seeded calibration samples with a statistics mask;
* :mod:`~nemo_minitron.data.wikipedia_excerpt`: the embedded default corpus from the gensim wheel.
"""

__all__ = ["wikitext", "tokenizer", "preprocess", "integrity", "gpt_data", "calibration", "wikipedia_excerpt"]
