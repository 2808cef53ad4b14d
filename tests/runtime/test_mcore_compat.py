"""Version isolation helpers: unknown arguments are dropped only when unset, never silently when set."""

import subprocess
import sys

import pytest

from nemo_minitron import mcore_compat

pytestmark = pytest.mark.compat


def _spec(a, b=None):
    return (a, b)


def test_supported_kwargs_pass_through():
    assert mcore_compat._call_with_supported_kwargs(_spec, a=1, b=2) == (1, 2)


def test_unset_unknown_kwargs_are_dropped():
    assert mcore_compat._call_with_supported_kwargs(_spec, a=1, newer_flag=False, other=None) == (1, None)


def test_set_unknown_kwargs_fail_loudly():
    with pytest.raises(TypeError, match="newer_flag"):
        mcore_compat._call_with_supported_kwargs(_spec, a=1, newer_flag=True)


def test_transformer_config_unknown_field():
    with pytest.raises(TypeError, match="no field 'not_a_field'"):
        mcore_compat.make_transformer_config(num_layers=2, hidden_size=8, num_attention_heads=2, not_a_field=1)


def test_version_and_te_detection():
    assert (0, 15, 0) <= mcore_compat.mcore_version() < (0, 20, 0)
    # independent probe: a fresh interpreter importing Transformer Engine's torch module
    probe = subprocess.run([sys.executable, "-c", "import transformer_engine.pytorch"], capture_output=True,
                           timeout=300)
    assert mcore_compat.have_transformer_engine() is (probe.returncode == 0)
    assert mcore_compat.gpt_model_class().__name__ == "GPTModel"


@pytest.mark.parametrize("text,version", [("0.16.1", (0, 16, 1)), ("0.15.0rc7", (0, 15, 0)), ("0.19.0.dev0+abc", (0, 19, 0)),
                                          ("1.0", (1, 0, 0))])
def test_parse_version(text, version):
    assert mcore_compat.parse_version(text) == version


def test_installed_version_is_in_the_declared_range():
    """pyproject's megatron-core range covers the installed release (the stacks scripts/test.sh runs)."""
    import re
    from importlib import metadata

    from tests.launch import REPO

    spec = re.search(r'"megatron-core([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    lo = re.search(r">=([\d.]+?)(?:\.dev0)?(?:,|$)", spec).group(1)
    hi = re.search(r"<([\d.]+)", spec).group(1)
    installed = mcore_compat.parse_version(metadata.version("megatron-core"))
    assert mcore_compat.parse_version(lo) <= installed < mcore_compat.parse_version(hi), (spec, installed)
