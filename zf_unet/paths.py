"""Where zf_unet finds the shared data sets (never downloaded at run time in tests)."""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "ZF_UNET_DATA"


def data_root() -> Path:
    """``$ZF_UNET_DATA`` if set, else ``../shared/data`` beside the project root."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def isbi2012_dir() -> Path:
    """Folder with the ISBI 2012 slices (``images/NN.png``, ``masks/NN.png``)."""
    return data_root() / "isbi2012"
