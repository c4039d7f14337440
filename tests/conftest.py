"""Shared fixtures. Tests that need ../shared/data skip on a user's machine, fail in CI."""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zf_unet.paths import isbi2012_dir  # noqa: E402


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """The ISBI 2012 folder; skipped when missing, except under CI where it must exist."""
    path = isbi2012_dir()
    if not (path / "images").is_dir() or not (path / "masks").is_dir():
        msg = f"ISBI 2012 data not found at {path} (set ZF_UNET_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg + " -- required in CI")
        pytest.skip(msg)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
