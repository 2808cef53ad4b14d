"""Data YAMLs compose and validate; the Wikipedia-excerpt builder on a synthetic wheel (no download)."""

from __future__ import annotations

import bz2
import json
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nemo_minitron.config.data import DataConfig, FetchWikipediaConfig, PrepareWikitextConfig, parse_blend
from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.store import register_configs
from nemo_minitron.data.wikipedia_excerpt import EXCERPT_MEMBER, build_wikipedia_excerpt, to_wikitext
from nemo_minitron.data.wikitext import iter_documents
from nemo_minitron.paths import conf_dir

DATA_YAMLS = sorted(p.stem for p in (Path(conf_dir()) / "data").glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        yield


def test_entry_point_yamls_compose(hydra_conf):
    cfg = compose("prepare_wikitext", overrides=["input=x", "tokenizer=t", "output_prefix=o", "workers=2"])
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, PrepareWikitextConfig) and obj.validate().workers == 2
    cfg = compose("fetch_wikipedia", overrides=["output_dir=d"])
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, FetchWikipediaConfig) and obj.validate().gensim_version == "4.4.0"
    with pytest.raises(Exception, match="worker"):
        compose("prepare_wikitext", overrides=["input=x", "tokenizer=t", "output_prefix=o", "worker=2"])
    with pytest.raises(ConfigError, match="group='lines'"):
        OmegaConf.to_object(compose("prepare_wikitext", overrides=["input=x", "tokenizer=t", "output_prefix=o",
                                                                   "group=lines"])).validate()


@pytest.mark.parametrize("name", DATA_YAMLS)
def test_data_group_yamls_compose(hydra_conf, name):
    cfg = compose(f"data/{name}")
    obj = OmegaConf.to_object(cfg.data if "data" in cfg else cfg)
    assert isinstance(obj, DataConfig)
    obj.validate()


def test_data_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="data.data_prefix is empty"):
        DataConfig().validate()
    with pytest.raises(ConfigError, match="data.seq_length=0"):
        DataConfig(data_prefix=["p"], seq_length=0).validate()
    with pytest.raises(ConfigError, match="data.split='1,2,3,4'"):
        DataConfig(data_prefix=["p"], split="1,2,3,4").validate()
    assert parse_blend(["a", "b"]) == (["a", "b"], None)
    assert parse_blend([0.3, "a", "0.7", "b"]) == (["a", "b"], [0.3, 0.7])
    with pytest.raises(ConfigError, match="pairs"):
        parse_blend([0.3, "a", 0.7])


_PAGE = """<page><title>{title}</title><ns>{ns}</ns><id>1</id><revision><text xml:space="preserve">{text}</text>
</revision></page>"""


def _fake_wheel(path: Path) -> Path:
    body = ("{{Infobox|name=x|note={{nested}}}}\n'''Alpha''' is a [[Greek alphabet|letter]] used in "
            "[[mathematics]].&lt;ref&gt;A citation.&lt;/ref&gt; " + "It appears widely in science. " * 30 +
            "\n\n== History ==\nThe [http://example.org letter] dates from antiquity. " * 5 +
            "\n[[File:Alpha.png|thumb|An [[image]]]]\n{| class=wikitable\n| cell\n|}\n"
            "== References ==\n* Some book\n[[Category:Letters]]\n[[de:Alpha]]")
    pages = [_PAGE.format(title=f"Alpha {i}", ns=0, text=body) for i in range(6)]
    pages.append(_PAGE.format(title="Short", ns=0, text="Too short."))
    pages.append(_PAGE.format(title="Redirect", ns=0, text="#REDIRECT [[Alpha]]"))
    pages.append(_PAGE.format(title="Talk:Alpha", ns=1, text=body))
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">' + "".join(pages) + "</mediawiki>")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(EXCERPT_MEMBER, bz2.compress(xml.encode()))
    return path


def test_wikipedia_excerpt_from_a_wheel(tmp_path):
    wheel = _fake_wheel(tmp_path / "gensim-4.4.0-py3-none-any.whl")
    out = tmp_path / "wp"
    src = build_wikipedia_excerpt(out, wheel=wheel, valid_every=3)
    assert src["articles"] == {"train": 2, "valid": 2, "test": 2}
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE.txt", "SOURCE.json", "wiki.test.raw", "wiki.train.raw",
                                                     "wiki.valid.raw"]
    assert "CC BY-SA" in (out / "LICENSE.txt").read_text() and len(src["wheel_sha256"]) == 64
    docs = list(iter_documents(out / "wiki.train.raw"))
    assert [d.splitlines()[0].strip() for d in docs] == ["= Alpha 0 =", "= Alpha 3 ="]
    text = docs[0]
    assert "Alpha is a letter used in mathematics." in text and " = = History = = " in text
    assert "The letter dates from antiquity." in text
    for junk in ("{{", "}}", "[[", "]]", "<ref", "'''", "Category", "References", "Some book", "cell", "thumb",
                 "http"):
        assert junk not in text, junk
    # A complete output is reused; overwrite rebuilds.
    (out / "wiki.train.raw").write_text("edited")
    assert json.loads((out / "SOURCE.json").read_text()) == build_wikipedia_excerpt(out, wheel=wheel, valid_every=3)
    assert (out / "wiki.train.raw").read_text() == "edited"
    build_wikipedia_excerpt(out, wheel=wheel, valid_every=3, overwrite=True)
    assert (out / "wiki.train.raw").read_text() != "edited"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_to_wikitext_headings_are_not_article_breaks():
    text = to_wikitext("T", "Intro text here.\n= Bad level one =\nBody.\n=== Deep ===\nMore body.")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0] == " = T = " and " = = = Deep = = = " in lines
    assert len(list(iter_documents_from(text))) == 1


def iter_documents_from(text):
    from nemo_minitron.data.wikitext import split_wikitext

    return split_wikitext(text.splitlines(keepends=True))
