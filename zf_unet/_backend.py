"""Make sure Keras runs on the TensorFlow backend before anything imports it."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

try:
    import tensorflow as tf  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the user's environment
    raise ImportError(
        "zf_unet needs TensorFlow >= 2.16, which is not installed. Install one of "
        "`pip install zf_unet[tensorflow]` (GPU/Colab) or `pip install zf_unet[cpu]`."
    ) from exc

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":  # pragma: no cover - user environment
    raise ImportError(
        f"zf_unet needs the Keras 'tensorflow' backend, but Keras was already imported with "
        f"KERAS_BACKEND={keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before "
        "importing keras (or import zf_unet first)."
    )

if "keras" in sys.modules and not hasattr(keras, "ops"):  # pragma: no cover
    raise ImportError("zf_unet needs Keras 3 (>= 3.3); found a Keras 2 installation.")
