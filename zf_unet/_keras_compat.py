"""Every use of Keras internals (``keras.src`` and private attributes) in the package.

The package needs a few things Keras has no public API for: the multi-worker build work-around
of ``fit``, the state of ``keras.callbacks.BackupAndRestore`` that
:class:`zf_unet.callbacks.AtomicBackupAndRestore` extends, and the stateless-scope test of
:class:`zf_unet.optimizers.FusedAdam`. They live here, behind small functions, and each checks
that the installed Keras is within :data:`SUPPORTED_KERAS` (the bound of ``pyproject.toml``)
and that its target exists, so a Keras release that moves them fails with a clear
``RuntimeError`` instead of silently wrong training.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

import keras
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

__all__ = ["SUPPORTED_KERAS", "backup_files", "backup_position", "check_backup_hooks",
           "check_keras_version", "in_stateless_scope", "keras_version_supported",
           "patch_multiworker_build"]

#: The Keras versions these work-arounds are written for; matches ``pyproject.toml``.
SUPPORTED_KERAS = (">=3.3", "<3.16")


def keras_version_supported(version: str) -> bool:
    """True when ``version`` satisfies every bound of :data:`SUPPORTED_KERAS` (PEP 440
    comparison by ``packaging``, a dependency of Keras; pre-releases count as their release)."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise ValueError(f"not a version: {version!r}") from None
    return SpecifierSet(",".join(SUPPORTED_KERAS)).contains(parsed, prereleases=True)


def _unsupported(what: str, version: str) -> RuntimeError:
    return RuntimeError(f"zf_unet: {what} with the installed Keras {version}; zf_unet supports "
                        f"keras{','.join(SUPPORTED_KERAS)} (install a Keras in that range, e.g. "
                        f"pip install 'keras{','.join(SUPPORTED_KERAS)}')")


def check_keras_version(version: str | None = None) -> str:
    """Return ``version`` (default: the installed Keras's) if it is in
    :data:`SUPPORTED_KERAS`; else raise a ``RuntimeError`` naming it and the range."""
    version = keras.__version__ if version is None else version
    try:
        ok = keras_version_supported(version)
    except ValueError:
        ok = False
    if not ok:
        raise _unsupported("the Keras internals zf_unet patches are not known to work", version)
    return version


@functools.lru_cache(maxsize=None)
def _target(module: str, attr: str) -> Any:
    """``module.attr`` of Keras, after the version check; a ``RuntimeError`` if missing."""
    check_keras_version()
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise _unsupported(f"{module}.{attr} is missing", keras.__version__) from None


def _require_attr(obj: Any, attr: str) -> Any:
    if not hasattr(obj, attr):
        check_keras_version()
        raise _unsupported(f"{type(obj).__name__}.{attr} is missing", keras.__version__)
    return getattr(obj, attr)


# --------------------------------------------------------------------------- optimizers


def in_stateless_scope() -> bool:
    """True inside Keras's ``StatelessScope`` (``keras.src.backend.common.stateless_scope``)."""
    return bool(_target("keras.src.backend.common.stateless_scope", "in_stateless_scope")())


# --------------------------------------------------------------------------- BackupAndRestore


def check_backup_hooks() -> None:
    """Check that ``keras.callbacks.BackupAndRestore`` still has the ``_save_model`` /
    ``_load_model`` hooks that :class:`zf_unet.callbacks.AtomicBackupAndRestore` overrides."""
    check_keras_version()
    for hook in ("_save_model", "_load_model"):
        if not callable(getattr(keras.callbacks.BackupAndRestore, hook, None)):
            raise _unsupported(f"keras.callbacks.BackupAndRestore.{hook} is missing",
                               keras.__version__)


def backup_files(callback: keras.callbacks.BackupAndRestore) -> tuple[str, str]:
    """``(weights path, training-metadata path)`` of a ``BackupAndRestore`` callback."""
    return (str(_require_attr(callback, "_weights_path")),
            str(_require_attr(callback, "_training_metadata_path")))


def backup_position(callback: keras.callbacks.BackupAndRestore) -> tuple[int, Any]:
    """``(current epoch, last batch seen)`` of a ``BackupAndRestore`` callback."""
    return (_require_attr(callback, "_current_epoch"),
            _require_attr(callback, "_last_batch_seen"))


# --------------------------------------------------------------------------- multi-worker


def patch_multiworker_build(model: keras.Model, dataset: Any) -> None:
    """Keras 3's ``fit`` builds metrics/optimizer by ``strategy.reduce``-ing the first
    distributed batch, which fails eagerly under ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20585). Build from one local batch instead; training itself is
    unchanged (gradients are still all-reduced across workers)."""
    import tensorflow as tf

    _require_attr(model, "_maybe_symbolic_build")
    symbolic_build = _require_attr(model, "_symbolic_build")
    trainer_module = "keras.src.backend.tensorflow.trainer"
    original: Callable = _target(trainer_module, "reduce_per_replica")
    local_batch = next(iter(dataset.take(1)))

    def build(iterator: Any = None, data_batch: Any = None) -> None:
        with model.distribute_strategy.scope():
            symbolic_build(data_batch=local_batch)

    model._maybe_symbolic_build = build

    # Keras also averages the per-worker metric scalars with ``reduce(..., axis=0)``, which
    # rejects 0-d values; average them over workers with ``axis=None`` instead.
    tf_trainer = importlib.import_module(trainer_module)
    current = tf_trainer.reduce_per_replica
    if getattr(current, "_zf_unet_patch", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: Any) -> Any:
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and reduction in (
                "auto", "mean"):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._zf_unet_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica
