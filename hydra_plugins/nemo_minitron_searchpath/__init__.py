"""Hydra search-path plugin: nemo_minitron's YAML resolves by ``--config-name`` from any script.

``--config-name megatron_prune`` (and every other nemo_minitron YAML) is found from any script or working directory once nemo_minitron is installed, after the caller's own config directories.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "nemo_minitron"


class NemoMinitronSearchPathPlugin(SearchPathPlugin):
    """Appends nemo_minitron's config directory to every Hydra application's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Add our config directory last (an application's own configs of the same name win).

        Also registers the typed schemas our YAML names in its defaults lists.
        """
        from nemo_minitron.config.store import register_configs
        from nemo_minitron.paths import conf_dir  # checkout conf/ or the wheel's nemo_minitron/conf

        register_configs()
        search_path.append(provider=PROVIDER, path="file://" + conf_dir())
