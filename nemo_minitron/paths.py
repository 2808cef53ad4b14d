"""Where the Hydra configuration lives, from a checkout and from an installed wheel.

In a checkout (including an editable install) the YAML is the top-level ``conf/`` directory; a
wheel ships the same files as the package data directory ``nemo_minitron/conf``. Launch scripts
pass :func:`conf_dir` to ``hydra.main(config_path=...)`` as an absolute path.

:data:`PathLike` is the one type alias for path arguments across the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

#: A path argument: ``str`` or any ``os.PathLike`` (``pathlib.Path``).
PathLike = Union[str, os.PathLike]

_PKG = Path(__file__).resolve().parent


def conf_dir() -> str:
    """Absolute path of the directory holding the Hydra YAML (``model/``, ``megatron_prune.yaml``, ...)."""
    for candidate in (_PKG / "conf", _PKG.parent / "conf"):
        if (candidate / "model").is_dir():
            return str(candidate)
    raise FileNotFoundError(f"nemo_minitron configuration directory not found next to {_PKG}")
