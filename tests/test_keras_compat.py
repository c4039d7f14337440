"""The Keras version check guarding the package's uses of Keras internals."""
from __future__ import annotations

import re
from pathlib import Path

import keras
import pytest

from zf_unet._keras_compat import (SUPPORTED_KERAS, check_keras_version,
                                   keras_version_supported)


def test_installed_keras_is_accepted():
    assert check_keras_version() == keras.__version__
    assert keras_version_supported(keras.__version__)


@pytest.mark.parametrize("version", ["3.2.1", "2.15.0", "4.0.0", "99.1"])
def test_out_of_range_keras_is_rejected_naming_version_and_range(version):
    assert not keras_version_supported(version)
    with pytest.raises(RuntimeError) as err:
        check_keras_version(version)
    assert version in str(err.value) and SUPPORTED_KERAS[0] in str(err.value)
    assert SUPPORTED_KERAS[1] in str(err.value)


def test_next_minor_above_the_bound_is_rejected():
    upper = SUPPORTED_KERAS[1].lstrip("<")
    assert not keras_version_supported(upper + ".0")
    assert keras_version_supported("3.3.0")


def test_range_matches_pyproject():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    bound = re.search(r'^\s*"keras([<>=][^"]*)"', text, flags=re.M).group(1)
    assert bound == ",".join(SUPPORTED_KERAS)
