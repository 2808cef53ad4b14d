"""Run an ``examples/*.py`` entry point with a SIGTERM sent to itself at one exact point of its save.

    python tests/robustness/sigterm_driver.py MODE WATCH_DIR SCRIPT [overrides...]

MODE is where the signal is sent, once a hidden temporary output (``.<name>.incomplete-*`` /
``.<name>.tmp-*``) exists in WATCH_DIR:

* ``fork``: inside an ``os.fork`` hook, as megatron-core's checkpoint writer forks its workers.
  Python loses the exception the handler raises there (fork hooks' exceptions are only printed),
  which is how a SIGTERM used to be swallowed and the output published with exit status 0.
* ``publish``: just before the rename into place (``nemo_minitron.atomic.replace_dir``).
* ``mid-rename``: between the renames that swap the old output for the new one.
"""

import os
import runpy
import signal
import sys
from pathlib import Path


def _temp_exists(watch: Path) -> bool:
    return any(p.name.startswith(".") and (".incomplete-" in p.name or ".tmp-" in p.name) for p in watch.iterdir())


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecodes: the Python-level handler runs here, inside the calling frame
        pass


def main() -> None:
    mode, watch, script, *args = sys.argv[1:]
    watch = Path(watch)
    sent = []
    if mode == "fork":
        def hook():
            if not sent and _temp_exists(watch):
                sent.append(1)
                _kill_self()

        os.register_at_fork(after_in_parent=hook)
    elif mode in ("publish", "mid-rename"):
        from nemo_minitron import atomic

        real_replace_dir = atomic.replace_dir

        class _Os:
            """``os`` for nemo_minitron.atomic, whose first ``replace`` is followed by the signal."""

            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(src, dst):
                os.replace(src, dst)
                if not sent:
                    sent.append(1)
                    _kill_self()

        def replace_dir(tmp, final):
            if mode == "publish":
                sent.append(1)
                _kill_self()
            else:
                atomic.os = _Os()
            try:
                real_replace_dir(tmp, final)
            finally:
                atomic.os = os

        atomic.replace_dir = replace_dir
    else:
        raise SystemExit(f"unknown mode {mode}")
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        if not sent:
            sys.stderr.write("DRIVER: the signal was never sent\n")


if __name__ == "__main__":
    main()
