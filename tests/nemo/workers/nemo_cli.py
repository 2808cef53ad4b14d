"""The ``nemo`` command (NeMo-Run's app, which loads every ``nemo_run.cli`` entry point, ours included) with the CPU
shims of ``cpu_shims``: ``python nemo_cli.py ARGS...`` runs ``nemo ARGS...``. NeMo's Llama configs ask for TE's
fused RoPE when built, which a CPU machine without Transformer Engine refuses; the shims switch it off."""

import sys

from tests.nemo.workers.nemo_side import cpu_shims

if __name__ == "__main__":  # NeMo's torch_dist writer may spawn processes that re-import this module
    cpu_shims(importer=True)
    sys.argv = ["nemo", *sys.argv[1:]]
    from nemo_run.__main__ import app

    app()
