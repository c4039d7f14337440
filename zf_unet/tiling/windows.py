"""1-D blend windows over an output tile, in NumPy and in TensorFlow side by side.

A tile's weight is the outer product of one 1-D window per spatial axis (two for images,
three for volumes). Every window is float64, all
weights > 0, maximum 1. The NumPy forms are the factories of
:data:`zf_unet.registry.BLEND_MODES` (``f(tile, overlap) -> (tile,) float64``); each carries
its TensorFlow form as ``.tf`` (same arguments, ``tile`` a dynamic int32 scalar), which
:func:`window_tf` looks up, so the registry is the one list of blend names for both.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from zf_unet.registry import BLEND_MODES
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("in-graph tiling (the tiled SavedModel)")

__all__ = ["flat_window", "flat_window_tf", "gaussian_window", "gaussian_window_tf",
           "linear_window", "linear_window_tf", "window", "window_tf"]

#: Gaussian sigma as a fraction of the tile (nnU-Net's choice) and the smallest weight.
_SIGMA_FRACTION = 1.0 / 8.0
_FLOOR = 1e-6


def gaussian_window(tile: int, overlap: int) -> np.ndarray:
    """``(tile,)`` float64 Gaussian, sigma = tile / 8, centred, max 1, floored at 1e-6
    (``overlap`` is unused)."""
    i = np.arange(tile, dtype=np.float64)
    sigma = tile * _SIGMA_FRACTION
    w = np.exp(-0.5 * ((i - (tile - 1) / 2.0) / sigma) ** 2)
    w /= w.max()
    return np.maximum(w, _FLOOR)


def gaussian_window_tf(tile: tf.Tensor, overlap: int) -> tf.Tensor:
    """:func:`gaussian_window` for a dynamic int32 ``tile``: ``[tile]`` float64."""
    t = tf.cast(tile, tf.float64)
    i = tf.range(t, dtype=tf.float64)
    sigma = t * _SIGMA_FRACTION
    w = tf.exp(-0.5 * tf.square((i - (t - 1.0) / 2.0) / sigma))
    w = w / tf.reduce_max(w)
    return tf.maximum(w, _FLOOR)


def linear_window(tile: int, overlap: int) -> np.ndarray:
    """``(tile,)`` float64 linear ramps up to 1 over ``overlap + 1`` px at both ends."""
    i = np.arange(tile, dtype=np.float64)
    return np.minimum(1.0, np.minimum(i + 1, tile - i) / (overlap + 1.0))


def linear_window_tf(tile: tf.Tensor, overlap: int) -> tf.Tensor:
    """:func:`linear_window` for a dynamic int32 ``tile``: ``[tile]`` float64."""
    t = tf.cast(tile, tf.float64)
    i = tf.range(t, dtype=tf.float64)
    return tf.minimum(tf.constant(1.0, tf.float64),
                      tf.minimum(i + 1.0, t - i) / (float(overlap) + 1.0))


def flat_window(tile: int, overlap: int) -> np.ndarray:
    """``(tile,)`` float64 ones: a plain average in the overlaps."""
    return np.ones(tile, dtype=np.float64)


def flat_window_tf(tile: tf.Tensor, overlap: int) -> tf.Tensor:
    """:func:`flat_window` for a dynamic int32 ``tile``: ``[tile]`` float64."""
    return tf.ones(tf.reshape(tile, [1]), tf.float64)


gaussian_window.tf = gaussian_window_tf  # type: ignore[attr-defined]
linear_window.tf = linear_window_tf  # type: ignore[attr-defined]
flat_window.tf = flat_window_tf  # type: ignore[attr-defined]


def _factory(blend: str) -> Callable[..., Any]:
    return BLEND_MODES[BLEND_MODES.check(blend, "blend")]


def window(tile: int, blend: str, overlap: int) -> np.ndarray:
    """The ``(tile,)`` float64 window of the registered ``blend`` (``ValueError`` naming the
    accepted names for others)."""
    return _factory(blend)(tile, overlap)


def window_tf(tile: tf.Tensor, blend: str, overlap: int) -> tf.Tensor:
    """:func:`window` in TensorFlow (``tile`` a dynamic int32 scalar): ``[tile]`` float64."""
    return _factory(blend).tf(tile, overlap)
