"""Shared fixtures. Tests that need ../shared/data skip on a user's machine, fail in CI."""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zf_unet.paths import data_root, isbi2012_dir  # noqa: E402


def shared_data_dir(path: Path, label: str) -> Path:
    """``path`` (a data set beside the project, with images/ and masks/); skip the test when
    it is missing, except under CI, where it must exist."""
    if not (path / "images").is_dir() or not (path / "masks").is_dir():
        msg = f"{label} data not found at {path} (set ZF_UNET_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg + " -- required in CI")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """The ISBI 2012 folder; skipped when missing, except under CI where it must exist."""
    return shared_data_dir(isbi2012_dir(), "ISBI 2012")


@pytest.fixture(scope="session")
def vnc_dir() -> Path:
    """The Drosophila VNC folder; skipped when missing, except under CI where it must exist."""
    return shared_data_dir(data_root() / "drosophila-vnc", "Drosophila VNC")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved untrained binary U-Net (grayscale input, depth 3, 4 filters, seed 0): the model
    file the CLI and file-prediction tests load. Tests must not modify it."""
    import keras

    import zf_unet
    from zf_unet.io_utils import save_model_atomic

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("tiny_model") / "model.keras"
    return save_model_atomic(zf_unet.build_unet((None, None, 1), depth=3, filters=4), path)


#: The modules that take longest (CI --durations), run first: with the tests spread over
#: processes a module at a time (`make test`), a long module started last would leave the
#: other processes idle at the end.
LONGEST_FIRST = ("test_backends", "test_notebooks", "test_backbones", "test_streaming",
                 "test_reliability", "test_train", "test_cli", "test_pretrained", "test_outputs")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__.rpartition(".")[2] if item.module else ""
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept
