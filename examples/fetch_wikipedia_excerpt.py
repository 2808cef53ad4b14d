"""Create the embedded default corpus: the English Wikipedia excerpt of the gensim wheel, as WikiText.

    python examples/fetch_wikipedia_excerpt.py output_dir=data/wikipedia
    # -> data/wikipedia/wiki.{train,valid,test}.raw, LICENSE.txt (CC BY-SA attribution), SOURCE.json

It runs `pip download --no-deps gensim==4.4.0` (~28 MB, never installed) unless wheel=<file> points
to a copy, reads the bz2 MediaWiki dump inside it, strips the markup and writes one article per
` = Title = ` heading, split by article (88 train / 4 valid / 4 test articles). The text is
CC BY-SA: generate it, do not commit it. Next step: examples/prepare_wikitext.py input=data/wikipedia ...
"""

import hydra

from nemo_minitron import cli
from nemo_minitron.config.store import register_configs, to_object
from nemo_minitron.paths import conf_dir

register_configs()


@hydra.main(config_path=conf_dir(), config_name="fetch_wikipedia", version_base=None)
def main(cfg) -> None:
    args = to_object(cfg).validate()

    from nemo_minitron.data.wikipedia_excerpt import build_wikipedia_excerpt

    source = build_wikipedia_excerpt(args.output_dir, wheel=args.wheel, gensim_version=args.gensim_version,
                                     min_chars=args.min_chars, valid_every=args.valid_every, overwrite=args.overwrite)
    print(f"{args.output_dir}: articles {source['articles']}, characters {source['characters']}, "
          f"from {source['wheel']} (sha256 {source['wheel_sha256'][:16]}...)")


if __name__ == "__main__":
    cli.run(main)
