"""Which Keras backend zf_unet runs on, and TensorFlow only where it is the point.

Models, layers, losses, metrics, optimizers, fold_batch_norm and ``predict_tiled`` run on
every Keras 3 backend (``tensorflow``, ``jax``, ``torch``). tf.data pipelines, TFRecord
shards, TFDS, SavedModel / TFLite export and ``tf.distribute`` need TensorFlow; their modules
hold a :func:`lazy_tensorflow` proxy in place of ``import tensorflow as tf``, so importing
them costs nothing and using them without TensorFlow raises :class:`MissingDependencyError`
with one line that names the feature and the ``pip install`` that fixes it.

The backend is chosen before Keras is first imported (importing this module does it):

1. Keras already imported: its backend, whatever it is.
2. ``KERAS_BACKEND`` set: that one.
3. Else TensorFlow if it is installed (the backend TF Serving exports need), else JAX,
   else PyTorch.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from typing import Any

from zf_unet.errors import MissingDependencyError

#: The Keras 3 backends zf_unet supports, in order of preference when none is chosen.
BACKENDS = ("tensorflow", "jax", "torch")

#: What to install for each backend's package.
INSTALL_HINTS = {
    "tensorflow": "pip install 'zf_unet[cpu]' (or 'zf_unet[tensorflow]' on a GPU machine "
                  "or Colab)",
    "jax": "pip install 'jax[cpu]' (or 'jax[cuda12]' on an NVIDIA GPU)",
    "torch": "pip install torch",
}

#: The module each backend imports.
_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

#: Start-up lines TensorFlow's C++ side prints while it is imported, before absl logging is
#: initialised, so they ignore TF_CPP_MIN_LOG_LEVEL (oneDNN notice, CPU feature guard).
_TF_BANNER = re.compile(r"^([IW]\d{4} |WARNING: All log messages before absl::InitializeLog|"
                        r"To enable the following instructions|This TensorFlow binary is)")

__all__ = ["BACKENDS", "INSTALL_HINTS", "MissingDependencyError", "accelerator", "backend_name",
           "check_backend_name", "enable_determinism", "has_package", "import_tensorflow_quietly",
           "lazy_tensorflow", "require_tensorflow", "running_as_cli", "select_backend"]


def has_package(name: str) -> bool:
    """True when ``import name`` can succeed: the module is imported already, or it is
    installed and not blocked (``sys.modules[name] = None`` blocks an import)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_backend_name(name: Any, arg: str = "backend") -> str:
    """``name`` if it is one of :data:`BACKENDS`; ``ValueError`` naming ``arg`` otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"{arg} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return str(name)


def _default_backend() -> str:
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen:
        return chosen
    for name in BACKENDS:
        if has_package(_PACKAGES[name]):
            return name
    return "tensorflow"  # none installed: Keras's own default names what is missing


def select_backend(name: str | None = None, arg: str = "--backend") -> str:
    """Choose the Keras backend before Keras is imported and return it.

    ``name`` (``tensorflow``, ``jax`` or ``torch``) overrides ``KERAS_BACKEND``; ``None``
    keeps the default order of the module docstring. Raises ``ValueError`` (naming ``arg``)
    for an unknown name or when Keras already runs on another backend, and
    :class:`MissingDependencyError` when the backend's package is not installed.
    """
    if name is not None:
        check_backend_name(name, arg)
    keras_mod = sys.modules.get("keras")
    if keras_mod is not None and hasattr(keras_mod, "backend"):
        current = keras_mod.backend.backend()
        if name is not None and name != current:
            raise ValueError(f"{arg} {name}: Keras is already running on the {current!r} "
                             f"backend in this process; set KERAS_BACKEND={name} before "
                             "importing keras")
        return current
    chosen = name or check_backend_name(_default_backend(), "KERAS_BACKEND")
    if chosen in _PACKAGES and not has_package(_PACKAGES[chosen]):
        raise MissingDependencyError(
            f"the Keras backend {chosen!r} needs the {_PACKAGES[chosen]} package, which is not "
            f"installed: {INSTALL_HINTS[chosen]}, or choose another backend "
            f"({', '.join(b for b in BACKENDS if b != chosen)})")
    os.environ["KERAS_BACKEND"] = chosen
    return chosen


def backend_name() -> str:
    """The Keras backend in use: ``"tensorflow"``, ``"jax"`` or ``"torch"``."""
    import keras

    return keras.backend.backend()


def accelerator() -> str:
    """The device Keras computes on: ``"tpu"``, ``"gpu"`` or ``"cpu"`` (asked of the
    backend's own package; TensorFlow is not imported on the others)."""
    name = backend_name()
    if name == "jax":
        import jax

        platform = jax.default_backend()
        return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    if name == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    tf = require_tensorflow("the TensorFlow backend")
    if tf.config.list_logical_devices("TPU"):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def enable_determinism() -> None:
    """Deterministic kernels from now on, process-wide (``train.deterministic``):
    TensorFlow's op determinism, PyTorch's deterministic algorithms, or XLA's
    ``--xla_gpu_deterministic_ops`` for JAX (CPU kernels of every backend are deterministic
    already; the JAX flag only reaches a GPU that JAX has not started yet)."""
    name = backend_name()
    if name == "tensorflow":
        require_tensorflow("the TensorFlow backend").config.experimental.enable_op_determinism()
    elif name == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    elif "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_gpu_deterministic_ops=true").strip()


def running_as_cli() -> bool:
    """True in the ``zf-unet`` command (console script or ``python -m zf_unet.cli``)."""
    if sys.argv and os.path.basename(sys.argv[0]).startswith("zf-unet"):
        return True
    orig = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b == "zf_unet.cli" for a, b in zip(orig, orig[1:]))


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up banner kept off stderr; any other output of the
    import is replayed. The ``zf-unet`` command uses it so that an error is one line on
    stderr; ``ZF_UNET_TF_LOGS=1`` keeps the banner. Raises ``ImportError`` as the import."""
    saved = None
    if "tensorflow" not in sys.modules and os.environ.get("ZF_UNET_TF_LOGS") != "1":
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no file descriptor 2
            saved = None
    if saved is None:
        importlib.import_module("tensorflow")
        return
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            importlib.import_module("tensorflow")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not _TF_BANNER.match(line):
                    print(line, file=sys.stderr)


def require_tensorflow(feature: str) -> Any:
    """The ``tensorflow`` module, for ``feature`` (e.g. ``"tf.data pipelines"``); one-line
    :class:`MissingDependencyError` naming ``feature`` and the install when it is missing."""
    module = sys.modules.get("tensorflow")
    if module is not None and hasattr(module, "data"):
        return module
    if not has_package("tensorflow"):
        raise MissingDependencyError(
            f"{feature} needs TensorFlow, which is not installed (Keras backend: "
            f"{os.environ.get('KERAS_BACKEND', 'unset')}): {INSTALL_HINTS['tensorflow']}")
    if running_as_cli():
        import_tensorflow_quietly()
    return importlib.import_module("tensorflow")


class _LazyTensorFlow:
    """Stands in for the ``tensorflow`` module in a module that needs it only when used:
    the first attribute read imports TensorFlow (:func:`require_tensorflow`)."""

    __slots__ = ("_feature",)

    def __init__(self, feature: str) -> None:
        self._feature = feature

    def __getattr__(self, name: str) -> Any:
        return getattr(require_tensorflow(self._feature), name)

    def __repr__(self) -> str:
        return f"<tensorflow, imported on first use by {self._feature}>"


def lazy_tensorflow(feature: str) -> Any:
    """A stand-in for ``import tensorflow as tf`` that imports TensorFlow on first use; the
    error without it names ``feature``. Use: ``tf = lazy_tensorflow("TFRecord shards")``."""
    return _LazyTensorFlow(feature)


# Choose the backend now, before anything imports Keras. A backend whose package is missing
# is left to Keras's own error on ``import keras`` (Python users), or refused by the CLI,
# which chooses (``--backend``) before it imports Keras.
if "keras" not in sys.modules and not os.environ.get("KERAS_BACKEND"):
    os.environ["KERAS_BACKEND"] = _default_backend()
