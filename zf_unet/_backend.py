"""Make sure Keras runs on the TensorFlow backend before anything imports it."""
from __future__ import annotations

import os
import re
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

#: Start-up lines TensorFlow's C++ side prints while it is imported, before absl logging is
#: initialised, so they ignore TF_CPP_MIN_LOG_LEVEL (oneDNN notice, CPU feature guard).
_TF_BANNER = re.compile(r"^([IW]\d{4} |WARNING: All log messages before absl::InitializeLog|"
                        r"To enable the following instructions|This TensorFlow binary is)")


def _running_as_cli() -> bool:
    """True in the ``zf-unet`` command (console script or ``python -m zf_unet.cli``)."""
    if sys.argv and os.path.basename(sys.argv[0]).startswith("zf-unet"):
        return True
    orig = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b == "zf_unet.cli" for a, b in zip(orig, orig[1:]))


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up banner kept off stderr; any other output of the
    import is replayed. The ``zf-unet`` command uses it so that an error is one line on
    stderr; ``ZF_UNET_TF_LOGS=1`` keeps the banner."""
    if "tensorflow" in sys.modules or os.environ.get("ZF_UNET_TF_LOGS") == "1":
        return
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not _TF_BANNER.match(line):
                    print(line, file=sys.stderr)


if _running_as_cli():
    import_tensorflow_quietly()

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
