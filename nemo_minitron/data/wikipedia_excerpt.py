"""The embedded default corpus: the English Wikipedia excerpt inside the gensim wheel, as WikiText raw files.

WikiText itself is in no package registry. The ``gensim`` wheel on PyPI carries a shortened
``enwiki-latest-pages-articles1`` MediaWiki XML dump in its test data (about 105 full articles
once redirects and stubs are dropped), which is the closest offline substitute. This module
downloads the wheel with ``pip download --no-deps`` (gensim is never installed), reads that one
member from the zip in memory (nothing is extracted to disk), parses the XML with
``xml.etree``, strips the wiki markup with regular expressions, and writes
``wiki.{train,valid,test}.raw`` in WikiText layout (`` = Title = `` article headings,
`` = = Section = = `` sections, blank lines between paragraphs) plus ``LICENSE.txt`` (CC BY-SA
attribution) and ``SOURCE.json`` (wheel name, version and SHA-256). The split is by article and
deterministic. The text is licensed CC BY-SA: generate it at run time, never commit it.
"""

from __future__ import annotations

import bz2
import html
import io
import json
import os
import re
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Iterator, Optional

from nemo_minitron.atomic import atomic_dir
from nemo_minitron.fetch import pip_download_wheel, sha256_file
from nemo_minitron.logging import get_logger

__all__ = ["EXCERPT_MEMBER", "download_gensim_wheel", "read_excerpt", "iter_pages", "clean_markup",
           "to_wikitext", "build_wikipedia_excerpt"]

log = get_logger(__name__)
EXCERPT_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_DROP_SECTIONS = {"references", "external links", "see also", "further reading", "notes", "bibliography",
                  "sources", "footnotes", "citations", "notes and references", "works cited"}


def download_gensim_wheel(dest: str | os.PathLike, version: str = "4.4.0") -> Path:
    """``pip download --no-deps --only-binary=:all: gensim==VERSION`` into ``dest``; reuse a wheel already there."""
    try:
        return pip_download_wheel(f"gensim=={version}", dest, reuse_glob=f"gensim-{version}-*.whl")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n(pass wheel=<file> to use a local copy of the gensim wheel)") from None


def read_excerpt(wheel: str | os.PathLike) -> bytes:
    """The decompressed MediaWiki XML of the excerpt, read from the wheel without extracting anything."""
    with zipfile.ZipFile(wheel) as zf:
        if EXCERPT_MEMBER not in zf.namelist():
            raise RuntimeError(f"{wheel} has no {EXCERPT_MEMBER} (not a gensim wheel with test data?)")
        return bz2.decompress(zf.read(EXCERPT_MEMBER))


def iter_pages(xml_bytes: bytes) -> Iterator[tuple[str, str]]:
    """(title, wiki markup) of every main-namespace, non-redirect page."""
    title, ns, text, redirect = None, None, None, False
    for event, elem in ET.iterparse(io.BytesIO(xml_bytes), events=("end",)):
        tag = elem.tag.rsplit("}", 1)[-1]
        if tag == "title":
            title = elem.text or ""
        elif tag == "ns":
            ns = (elem.text or "").strip()
        elif tag == "redirect":
            redirect = True
        elif tag == "text":
            text = elem.text or ""
        elif tag == "page":
            if ns == "0" and not redirect and text and not text.lstrip().upper().startswith("#REDIRECT"):
                yield title, text
            title, ns, text, redirect = None, None, None, False
            elem.clear()


def _remove_nested(text: str, pattern: str) -> str:
    rx = re.compile(pattern, re.DOTALL)
    while True:
        new = rx.sub("", text)
        if new == text:
            return text
        text = new


def clean_markup(markup: str) -> str:
    """Strip MediaWiki markup to plain text, keeping ``== Section ==`` heading lines."""
    t = re.sub(r"<!--.*?-->", "", markup, flags=re.DOTALL)
    t = re.sub(r"<ref[^>/]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.DOTALL)
    t = re.sub(r"<(math|gallery|timeline|score|syntaxhighlight|source|imagemap)[^>]*>.*?</\1>", "", t,
               flags=re.DOTALL | re.IGNORECASE)
    t = _remove_nested(t, r"\{\{[^{}]*\}\}")           # templates, innermost first
    t = _remove_nested(t, r"\{\|(?:(?!\{\|).)*?\|\}")  # tables
    # Files, images, categories and interlanguage links (captions may hold one level of links).
    t = _remove_nested(t, r"\[\[(?:File|Image|Category|Media|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*"
                          r"(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]")
    t = re.sub(r"\[\[[^\[\]|]*\|([^\[\]]*)\]\]", r"\1", t)
    t = re.sub(r"\[\[([^\[\]]*)\]\]", r"\1", t)
    t = re.sub(r"\[(?:https?:)?//[^\s\]]+ ([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[(?:https?:)?//[^\s\]]+\]", "", t)
    t = re.sub(r"'{2,5}", "", t)
    t = re.sub(r"<[^>]+>", "", t)
    t = html.unescape(t).replace("\u00a0", " ")
    return t


def to_wikitext(title: str, markup: str) -> str:
    """One article in WikiText raw layout; reference-like sections and list/table remnants are dropped."""
    out = [f" = {title} = \n", " \n"]
    skipping = False
    for raw in clean_markup(markup).splitlines():
        line = raw.strip()
        heading = re.match(r"^(={1,6})\s*(.*?)\s*\1$", line)
        if heading:
            name = heading.group(2).strip()
            skipping = name.lower() in _DROP_SECTIONS
            if not skipping and name:
                # Level 1 (rare in article bodies) becomes a section too: only titles may be top-level.
                marks = " ".join("=" * max(2, len(heading.group(1))))
                out += [f" {marks} {name} {marks} \n", " \n"]
            continue
        if skipping or not line or line[0] in "*#:;|!{}" or line.startswith("__"):
            continue
        line = re.sub(r"\s+", " ", line)
        if len(line) < 2:
            continue
        out += [f" {line} \n", " \n"]
    # Drop headings left without any paragraph under them.
    kept: list[str] = []
    for i, line in enumerate(out):
        if i > 1 and line.startswith(" = =") and (i + 2 >= len(out) or out[i + 2].startswith(" = =")):
            continue
        kept.append(line)
    return "".join(kept)


def _body_chars(article: str) -> int:
    return sum(len(line.strip()) for line in article.splitlines()[1:] if not line.strip().startswith("="))


def build_wikipedia_excerpt(output_dir: str | os.PathLike, wheel: Optional[str | os.PathLike] = None,
                            gensim_version: str = "4.4.0", min_chars: int = 500, valid_every: int = 20,
                            overwrite: bool = False) -> dict:
    """Write ``wiki.{train,valid,test}.raw``, ``LICENSE.txt`` and ``SOURCE.json`` into ``output_dir`` (atomically).

    Article ``i`` (in dump order, after filtering) goes to valid if ``i % valid_every == valid_every - 2``,
    to test if ``== valid_every - 1``, else to train. A complete existing output is reused unless
    ``overwrite``. Returns the SOURCE.json content.
    """
    out = Path(output_dir).expanduser().absolute()
    if (out / "SOURCE.json").is_file() and not overwrite:
        log.info("%s is complete; reusing it (overwrite=true rebuilds)", out)
        return json.loads((out / "SOURCE.json").read_text())
    t0 = time.perf_counter()
    wheel_path = Path(wheel) if wheel else download_gensim_wheel(out.parent / f".{out.name}.download", gensim_version)
    xml_bytes = read_excerpt(wheel_path)
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    titles: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    i = 0
    for title, markup in iter_pages(xml_bytes):
        article = to_wikitext(title, markup)
        if _body_chars(article) <= min_chars:
            continue
        r = i % valid_every
        split = "valid" if r == valid_every - 2 else "test" if r == valid_every - 1 else "train"
        splits[split].append(article)
        titles[split].append(title)
        i += 1
    if not splits["train"]:
        raise RuntimeError(f"no article of {wheel_path} has more than min_chars={min_chars} characters")
    source = {
        "package": "gensim", "version": gensim_version, "wheel": wheel_path.name, "wheel_sha256": sha256_file(wheel_path),
        "member": EXCERPT_MEMBER, "license": "CC BY-SA 3.0 (Wikipedia text); the gensim package is LGPL-2.1",
        "min_chars": min_chars, "valid_every": valid_every,
        "articles": {k: len(v) for k, v in splits.items()},
        "characters": {k: sum(len(a) for a in v) for k, v in splits.items()},
        "titles": titles, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_dir(out, overwrite=True, markers=("SOURCE.json",), key="output_dir") as tmp:
        for split, articles in splits.items():
            (tmp / f"wiki.{split}.raw").write_text(" \n" + "".join(articles), encoding="utf-8")
        all_titles = [t for v in titles.values() for t in v]
        (tmp / "LICENSE.txt").write_text(
            "Text: English Wikipedia articles, from the dump excerpt\n"
            f"  {EXCERPT_MEMBER}\n  shipped in the PyPI wheel {wheel_path.name} (sha256 {source['wheel_sha256']}).\n"
            "License: Creative Commons Attribution-ShareAlike 3.0 (CC BY-SA 3.0),\n"
            "  https://creativecommons.org/licenses/by-sa/3.0/\n"
            "Authors: Wikipedia contributors; each article's history is at\n"
            "  https://en.wikipedia.org/w/index.php?title=<Title>&action=history\n"
            "Changes: wiki markup, templates, tables, references and reference sections removed; reformatted in\n"
            "  WikiText raw layout by nemo_minitron.data.wikipedia_excerpt. Do not commit these files.\n\n"
            "Articles:\n" + "".join(f"  https://en.wikipedia.org/wiki/{t.replace(' ', '_')}\n" for t in all_titles),
            encoding="utf-8")
        (tmp / "SOURCE.json").write_text(json.dumps(source, indent=2), encoding="utf-8")
    log.info("wrote %s: %s articles, %s characters, %.1f s", out, source["articles"], source["characters"],
             time.perf_counter() - t0)
    return source
