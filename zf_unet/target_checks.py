"""Checks of segmentation targets against predictions, used by ``zf_unet.losses`` and
``zf_unet.metrics`` (argument checks live in :mod:`zf_unet.checks`, which imports no Keras).

``check_targets`` works out what kind of target ``y_true`` is and checks its shape and values:

- called eagerly (a loss or metric called on arrays), a problem raises ``DataError`` (a
  ``ValueError``) whose message starts with the argument's name;
- inside a TensorFlow graph (``model.fit`` / ``evaluate``, ``tf.function``,
  ``tf.distribute``), shape mismatches known at trace time raise the same ``DataError`` while
  tracing; everything known only at run time is a ``tf.debugging.Assert`` (a cheap
  reduction and a scalar test per step, no host sync) whose ``InvalidArgumentError`` reads
  ``assertion failed: [y_true: ...]``.
  XLA-compiled steps (``jit_compile=True``) drop these run-time assertions, and so does a
  traced JAX step (JAX has no run-time assertions); PyTorch steps run eagerly and check.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops
from keras.backend import standardize_dtype

from zf_unet.errors import DataError

#: ``y_true`` kinds: one-class 0/1 targets (C = 1), class ids 0..C-1, one-hot / soft labels.
BINARY, SPARSE, ONE_HOT = "binary", "sparse", "one_hot"


def check_targets(y_true: Any, y_pred: Any, num_classes: int | None = None,
                  ignore_index: int | None = None) -> tuple[Any, str]:
    """Check ``y_true`` against ``y_pred``; return ``(y_true, kind)``.

    Any number of spatial axes works: images ``(B, H, W, ...)``, volumes
    ``(B, D, H, W, ...)``; below ``(B, ...)`` stands for the batch and spatial axes
    ``y_pred`` has before its channel axis. Runs on every Keras backend; the run-time
    assertions of a TensorFlow graph have no counterpart in a traced JAX step (values are
    checked wherever they are concrete: eagerly, and on PyTorch).

    Args:
        y_true: for ``C = 1`` binary targets ``(B, ...)`` / ``(B, ..., 1)`` in [0, 1]
            (kind ``BINARY``); for ``C > 1`` class ids ``(B, ...)`` / ``(B, ..., 1)`` in
            0..C-1 (``SPARSE``) or one-hot / soft labels ``(B, ..., C)`` in [0, 1]
            (``ONE_HOT``). Any numeric or bool dtype.
        y_pred: ``(B, ..., C)`` predictions (e.g. ``(B, H, W, C)`` or ``(B, D, H, W, C)``)
            with a static rank and ``C``; only its shape is used.
        num_classes: the ``C`` the caller was built for (a metric's ``num_classes``).
        ignore_index: a class-id / binary target value that marks pixels to leave out; such
            pixels pass the range check whatever the value (e.g. 255 or ``C``). One-hot
            targets cannot carry it and are checked as usual.

    Returns:
        ``y_true`` (as a tensor; in a TensorFlow graph an identity that runs after the value
        checks) and its kind.

    Raises:
        DataError: ``y_true``'s shape does not fit ``y_pred`` (the leading ``(B, ...)`` must
            be equal), or (where values are concrete) its values are out of range.
        ValueError: ``y_pred`` has no static channel dimension, or not ``num_classes``.
    """
    y_true = ops.convert_to_tensor(y_true)
    pred_shape, true_shape = static_shape(y_pred), static_shape(y_true)
    if pred_shape is None or pred_shape[-1] is None:
        raise ValueError(f"y_pred must have a static rank and channel dimension, e.g. "
                         f"(B, H, W, C) or (B, D, H, W, C), got shape {_fmt(pred_shape)}")
    classes = int(pred_shape[-1])
    if num_classes is not None and classes != num_classes:
        raise ValueError(f"y_pred has {classes} channels but this metric was built with "
                         f"num_classes={num_classes}")
    kind = _kind(true_shape, pred_shape)
    lead = len(pred_shape) - 1  # the (B, ...) both must share
    axes_text = _axes_words(len(pred_shape))
    for a, b in zip(true_shape[:lead], pred_shape[:lead]):
        if a is not None and b is not None and a != b:
            raise DataError(f"y_true has shape {_fmt(true_shape)} but y_pred has shape "
                            f"{_fmt(pred_shape)}: the ({', '.join(axes_text)}) of the "
                            "targets must equal those of the predictions")
    open_channel = len(true_shape) == len(pred_shape) and true_shape[-1] is None
    if open_channel:
        lead += 1  # binary (B, H, W, ?) targets: the channel must be 1 as well
    graph = _tf_graph_mode()
    checks = []
    if None in true_shape[:lead] or None in pred_shape[:lead]:
        message = (f"y_true: its shape must fit that of y_pred (the same "
                   f"{_and_list(axes_text)}); y_true shape:")
        if graph:
            checks.append(_tf_shape_assert(y_true, y_pred, lead, message))
        elif _concrete(y_true) and _concrete(y_pred):
            t, p = tuple(ops.shape(y_true)[:lead]), tuple(ops.shape(y_pred)[:lead])
            if t != p:
                raise DataError(f"{message} {t}, y_pred shape: {p}")
    if standardize_dtype(y_true.dtype) != "bool":
        checks.extend(_check_range(y_true, kind, classes, ignore_index, graph))
    if checks:
        y_true = _tf_after(checks, y_true)
    if open_channel and keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # only TensorFlow graphs have open channel axes

        y_true = tf.ensure_shape(y_true, list(true_shape[:-1]) + [1])
    return y_true, kind


def static_shape(x: Any) -> tuple | None:
    """The static shape of a tensor as a tuple (``None`` for unknown sizes), or ``None``
    when even the rank is unknown (a TensorFlow graph tensor of unknown rank)."""
    shape = x.shape
    if getattr(shape, "rank", 0) is None:
        return None
    return tuple(None if d is None else int(d) for d in shape)


def _concrete(x: Any) -> bool:
    """True when ``x``'s values can be read now (eager TensorFlow, NumPy, PyTorch, a JAX
    array outside ``jit``); False for a TensorFlow graph tensor or a JAX tracer."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return not _tf_graph_mode()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    return True


def _tf_graph_mode() -> bool:
    """True while TensorFlow traces a graph on the TensorFlow backend."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.executing_eagerly()


def _tf_shape_assert(y_true: Any, y_pred: Any, lead: int, message: str) -> Any:
    import tensorflow as tf

    return tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(y_true)[:lead], tf.shape(y_pred)[:lead])),
        [message, tf.shape(y_true), "y_pred shape:", tf.shape(y_pred)], summarize=8)


def _tf_after(checks: list, y_true: Any) -> Any:
    """``y_true`` as an identity that runs after the TensorFlow assertions ``checks``."""
    import tensorflow as tf

    with tf.control_dependencies(checks):
        return tf.identity(y_true)


def _axes_words(rank: int) -> list[str]:
    """Names of the leading axes of a rank-``rank`` ``y_pred`` (all but the channel):
    ``batch, height, width`` (2-D), ``batch, depth, height, width`` (3-D), else
    ``batch, spatial axis 1..n``."""
    spatial = rank - 2
    if spatial == 2:
        return ["batch", "height", "width"]
    if spatial == 3:
        return ["batch", "depth", "height", "width"]
    return ["batch"] + [f"spatial axis {i}" for i in range(1, max(spatial, 0) + 1)]


def _and_list(words: list[str]) -> str:
    """``a, b and c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _lead_letters(rank: int) -> str:
    """``B, H, W`` (2-D), ``B, D, H, W`` (3-D), else ``B, S1, ..., Sn`` for a rank-``rank``
    ``y_pred``."""
    spatial = rank - 2
    if spatial == 2:
        return "B, H, W"
    if spatial == 3:
        return "B, D, H, W"
    return ", ".join(["B"] + [f"S{i}" for i in range(1, max(spatial, 0) + 1)])


def _fmt(shape: tuple | None) -> str:
    return "(unknown rank)" if shape is None else str(tuple(shape))


def _kind(true_shape: tuple | None, pred_shape: tuple) -> str:
    classes, rank = pred_shape[-1], len(pred_shape)
    lead = _lead_letters(rank)
    if true_shape is None:
        raise DataError(f"y_true has an unknown rank; expected ({lead}) or ({lead}, 1) targets "
                        "(give the dataset static shapes, e.g. with tf.ensure_shape)")
    last = true_shape[-1] if true_shape else None
    if len(true_shape) == rank - 1 or (len(true_shape) == rank and last == 1):
        return BINARY if classes == 1 else SPARSE
    if len(true_shape) == rank and last == classes:
        return ONE_HOT
    if len(true_shape) == rank and last is None and classes == 1:
        return BINARY  # the run-time shape check covers the channel
    forms = f"({lead}) or ({lead}, 1)" + (f" class ids or ({lead}, {classes}) one-hot"
                                          if classes > 1 else " binary")
    raise DataError(f"y_true has shape {_fmt(true_shape)} but y_pred has shape "
                    f"{_fmt(pred_shape)}: expected y_true {forms} targets for a "
                    f"{classes}-class y_pred")


def valid_pixels(y_true: Any, y_pred: Any, kind: str, ignore_index: int | None) -> Any:
    """float32 ``(B, ...)`` mask (``(B, H, W)``, or ``(B, D, H, W)`` for volumes): 1 where the
    pixel / voxel counts, 0 where ``y_true`` equals ``ignore_index``; ``None`` when nothing can
    be ignored (no ``ignore_index``, or one-hot ``y_true``). ``y_true``: a target checked by
    ``check_targets`` (with or without its channel axis); ``y_pred``: the ``(B, ..., C)``
    predictions (only the rank is used)."""
    if ignore_index is None or kind == ONE_HOT:
        return None
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape):
        y_true = y_true[..., 0]
    return ops.cast(ops.not_equal(ops.cast(y_true, "float32"), float(ignore_index)), "float32")


def _check_range(y_true: Any, kind: str, classes: int, ignore_index: int | None = None,
                 graph: bool = False) -> list:
    """Concrete values: raise ``DataError`` for values out of range; in a TensorFlow graph:
    the assertion (returned); a traced JAX step: nothing."""
    if kind == SPARSE:
        head = f"y_true: class ids must be in 0..{classes - 1} for a {classes}-class y_pred"
        hi, hint = float(classes - 1), "check num_classes against the mask values"
    elif kind == BINARY:
        head = "y_true: binary targets must be in [0, 1]"
        hi, hint = 1.0, "divide 0/255 masks by 255"
    else:
        head = f"y_true: one-hot targets for a {classes}-class y_pred must be in [0, 1]"
        hi, hint = 1.0, "encode each class as 1 in its channel"
    if not graph and not _concrete(y_true):
        return []
    values = ops.cast(y_true, "float32")
    if ignore_index is not None and kind != ONE_HOT:
        values = ops.where(ops.equal(values, float(ignore_index)), ops.zeros_like(values), values)
        head += f" or {ignore_index} (ignore_index)"
    if not graph:
        if int(ops.size(values)) == 0:
            return []
        lo_f = float(ops.convert_to_numpy(ops.min(values)))
        hi_f = float(ops.convert_to_numpy(ops.max(values)))
        if not hi_f <= hi:  # NaN fails too
            raise DataError(f"{head} (got values up to {hi_f:g}); {hint}")
        if not lo_f >= 0:
            raise DataError(f"{head} (got values down to {lo_f:g})")
        return []
    import tensorflow as tf

    lo_val, hi_val = tf.reduce_min(values), tf.reduce_max(values)  # empty: +inf, -inf
    ok = tf.logical_and(lo_val >= 0.0, hi_val <= hi)
    return [tf.debugging.Assert(ok, [f"{head}; {hint}. Smallest and largest value:",
                                     lo_val, hi_val])]


__all__ = ["BINARY", "ONE_HOT", "SPARSE", "check_targets", "static_shape", "valid_pixels"]
