"""Print a model preset's architecture and parameter counts, without building the model.

    python examples/model_info.py model=llama3.1-8b
    python examples/model_info.py model=smollm2-135m model.ffn_hidden_size=768 output=json
"""

import json

import hydra

from nemo_minitron import cli
from nemo_minitron.config.model import ConfigError
from nemo_minitron.config.store import register_configs, to_object
from nemo_minitron.models.params import count_parameters
from nemo_minitron.paths import conf_dir

register_configs()


@hydra.main(config_path=conf_dir(), config_name="model_info", version_base=None)
def main(cfg) -> None:
    info = to_object(cfg)
    model = info.model.validate()
    counts = count_parameters(model)
    if info.output == "json":
        print(json.dumps({"model": model.arch_dict() | {"name": model.name}} | counts.to_dict()))
        return
    if info.output != "text":
        raise ConfigError(f"output={info.output!r} must be text or json")
    print(f"model: {model.name}")
    for key, value in model.arch_dict().items():
        print(f"  {key:38s} {value}")
    print(f"  {'head_dim (effective)':38s} {model.head_dim}")
    print("parameters:")
    for key, value in counts.to_dict().items():
        print(f"  {key:38s} {value:>16,d}  ({value / 1e9:.3f} B)")


if __name__ == "__main__":
    cli.run(main)
