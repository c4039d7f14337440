"""Exceptions users see. Every message names the file or argument and what was expected."""
from __future__ import annotations


class ZFUNetError(Exception):
    """Base class of zf_unet's own errors."""


class DataError(ZFUNetError, ValueError):
    """Bad input data: unreadable file, missing partner, size mismatch, bad mask values."""


class ConfigError(ZFUNetError, ValueError):
    """A configuration file or option that cannot be used as given."""


class OutputExistsError(ZFUNetError, FileExistsError):
    """An output that is only written when asked to replace it (``overwrite=True``) exists."""


class NonFiniteOutputError(DataError):
    """A model whose output is NaN or Inf: a failure, never a result (its file is named)."""


class TrainingFailedError(ZFUNetError, RuntimeError):
    """Training ran but failed: the loss became NaN or Inf. ``zf-unet train`` exits 1."""


class MissingDependencyError(ZFUNetError, ImportError):
    """A feature needs a package (TensorFlow, JAX, PyTorch) that is not installed; the message
    names the feature and the ``pip install`` that fixes it. The CLI exits 2 with it."""


class ConfigWarning(UserWarning):
    """A setting that is valid but ignored or very likely a mistake (the message names the
    key): e.g. ``data.spacing`` on a 2-D run."""
