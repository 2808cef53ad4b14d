"""Freeze and verify the versions of a host stack (NeMo container, NeMo pip environment) around an install.

    python scripts/stack_check.py freeze /tmp/stack.txt     # pins of the protected packages that are installed
    pip install -c /tmp/stack.txt .                          # pip may not move any of them
    python scripts/stack_check.py verify /tmp/stack.txt     # exit 1 naming any package whose version changed

The frozen file is a pip constraints file (``name==version`` lines), so the same file both constrains the
install and proves afterwards that nothing moved. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

PROTECTED = (
    "torch",
    "megatron-core",
    "transformer-engine",
    "transformer-engine-torch",
    "transformer-engine-cu12",
    "transformers",
    "tokenizers",
    "apex",
    "nemo-toolkit",
    "numpy",
    "flash-attn",
    "triton",
)
"""Distributions the host owns; an install of nemo_minitron must leave each one exactly as it was."""


def installed(names: tuple[str, ...] = PROTECTED) -> dict[str, str]:
    """Installed version of each name in ``names`` that is present."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def read(path: Path) -> dict[str, str]:
    """Parse a ``name==version`` file written by :func:`main` ``freeze``."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One line per protected package that was removed or whose version differs."""
    return [f"{name}: {version} -> {after.get(name, 'removed')}" for name, version in sorted(before.items())
            if after.get(name) != version]


def main(argv: list[str]) -> int:
    """Command line: ``freeze PATH`` or ``verify PATH``."""
    if len(argv) != 2 or argv[0] not in ("freeze", "verify"):
        sys.stderr.write("usage: stack_check.py freeze|verify PATH\n")
        return 2
    path = Path(argv[1])
    if argv[0] == "freeze":
        pins = installed()
        path.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
        sys.stdout.write(f"[stack_check] froze {len(pins)} packages: "
                         + ", ".join(f"{n} {v}" for n, v in pins.items()) + "\n")
        return 0
    moved = changes(read(path), installed(tuple(read(path))))
    if moved:
        sys.stderr.write("[stack_check] the install changed the host stack:\n  " + "\n  ".join(moved) + "\n")
        return 1
    sys.stdout.write("[stack_check] host stack unchanged\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
