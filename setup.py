"""Package list for setuptools: the library plus the top-level conf/ shipped as ``nemo_minitron.conf``.

Everything else is in pyproject.toml. conf/ stays at the top of the checkout (Hydra users expect it
there) and is installed as package data so ``nemo_minitron.paths.conf_dir()`` finds it in a wheel.
``hydra_plugins.nemo_minitron_searchpath`` puts that package on every Hydra app's search path.
"""

from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

conf_groups = sorted(
    str(p.relative_to("conf")).replace("/", ".") for p in Path("conf").rglob("*") if p.is_dir()
)
setup(
    packages=find_packages(include=["nemo_minitron", "nemo_minitron.*"]) + ["nemo_minitron.conf"]
    + [f"nemo_minitron.conf.{g}" for g in conf_groups]
    # hydra_plugins is a namespace package shared with other Hydra plugins: no __init__.py of ours at its top
    + find_namespace_packages(include=["hydra_plugins.*"]),
    package_dir={"nemo_minitron.conf": "conf"},
    package_data={"nemo_minitron.conf": ["*.yaml", "**/*.yaml"], "nemo_minitron.nemo_plugin": ["*.yaml"]},
    include_package_data=True,
)
