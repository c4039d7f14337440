"""The two pixel rules every stage shares: mirror reflection at borders, and scaling to [0, 1].

Mirror reflection is ``numpy.pad(mode="reflect")`` applied as often as needed: the edge
pixel is not repeated, positions further out than the axis is long are reflected back and
forth, and a 1-pixel axis is repeated. The U-Net paper mirrors the missing context this way;
the training pipeline pads with it, the augmentation samples with it (continuous
coordinates) and the tiler and the serving graph read tiles with it. The NumPy and
TensorFlow forms stand side by side here, so they cannot drift apart.

Scaling: an unsigned integer image is divided by its dtype's maximum (uint8 / 255,
uint16 / 65535), bool is 0/1 and floats are used as they are (they must already lie in
[0, 1]: :func:`check_float_range`, the one home of this rule for every command:
training, ``check-data``, ``predict``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from zf_unet.errors import DataError

if TYPE_CHECKING:  # TensorFlow is imported inside the *_tf functions, on first use
    import tensorflow as tf

__all__ = ["FLOAT_RANGE_TOLERANCE", "check_float_range", "mirror_coords_tf", "mirror_index",
           "mirror_index_tf", "pad_reflect", "pad_reflect_axes", "scale_to_unit",
           "scale_to_unit_tf", "to_float_image", "unit_divisor"]

#: How far outside [0, 1] a float image may lie (rounding in other tools) and still be used.
FLOAT_RANGE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- mirroring

def mirror_index(idx: np.ndarray, length: int) -> np.ndarray:
    """Integer positions ``idx`` (any, also negative) mapped into ``[0, length)`` by repeated
    mirror reflection without repeating the edge pixel; same shape and dtype as ``idx``."""
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    m = np.mod(idx, period)
    return np.where(m >= length, period - m, m)


def mirror_index_tf(idx: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """:func:`mirror_index` for int32 tensors (``length`` a dynamic scalar >= 1)."""
    import tensorflow as tf

    period = tf.maximum(2 * (length - 1), 1)
    m = tf.math.floormod(idx, period)
    return tf.where(m >= length, period - m, m)


def mirror_coords_tf(c: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Continuous (float32) coordinates mirrored into ``[0, length - 1]`` about the edge pixel
    centres: the rule of :func:`mirror_index` between pixels, for resampling."""
    import tensorflow as tf

    last = tf.cast(length, tf.float32) - 1.0
    period = tf.maximum(2.0 * last, 1.0)
    c = c - period * tf.floor(c * (1.0 / period))  # in [0, period]
    return tf.clip_by_value(last - tf.abs(last - c), 0.0, last)


def pad_reflect(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """``(H, W, ...)`` array padded by mirror reflection on its first two axes (pads may exceed
    the size); ``(H + top + bottom, W + left + right, ...)``, same dtype."""
    h, w = x.shape[:2]
    rows = mirror_index(np.arange(-top, h + bottom), h)
    cols = mirror_index(np.arange(-left, w + right), w)
    return x[rows][:, cols]


def pad_reflect_axes(x: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """``x`` mirror-padded (the rule of :func:`mirror_index`) on its leading ``len(pads)`` axes,
    ``pads[i] = (before, after)`` >= 0 (may exceed the size). A volume ``(D, H, W, ...)`` with
    three pairs: ``(D + dz0 + dz1, H + ..., W + ..., ...)``, same dtype."""
    x = np.asarray(x)
    if len(pads) > x.ndim:
        raise ValueError(f"pad_reflect_axes: {len(pads)} pads for an array of rank {x.ndim}")
    index = []
    for axis, (before, after) in enumerate(pads):
        if before < 0 or after < 0:
            raise ValueError(f"pad_reflect_axes: pads must be >= 0, got {tuple(pads[axis])}")
        n = x.shape[axis]
        index.append(mirror_index(np.arange(-before, n + after), n))
    return x[np.ix_(*index)] if index else x


# --------------------------------------------------------------------------- scaling

def unit_divisor(dtype: Any, name: str = "image", signed: bool = False) -> float:
    """What pixel values of ``dtype`` are divided by to lie in [0, 1]: the maximum for unsigned
    integers (255, 65535) and, with ``signed``, for signed ones; 1 for bool and floats. Other
    dtypes raise ``ValueError`` naming ``name``."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or np.issubdtype(dtype, np.floating):
        return 1.0
    if np.issubdtype(dtype, np.unsignedinteger) or (signed and np.issubdtype(dtype, np.integer)):
        return float(np.iinfo(dtype).max)
    raise ValueError(f"{name} dtype {dtype} is not supported: use uint8 / uint16 (scaled by the "
                     "dtype maximum) or float in [0, 1]")


def scale_to_unit_tf(x: tf.Tensor) -> tf.Tensor:
    """:func:`unit_divisor` in TensorFlow: ``x`` (uint8, uint16, bool or float) as float32."""
    import tensorflow as tf

    divisor = unit_divisor(x.dtype.as_numpy_dtype)
    y = tf.cast(x, tf.float32)
    return y if divisor == 1.0 else y / divisor


def scale_to_unit(image: np.ndarray) -> np.ndarray:
    """``image`` (any shape) as float32, integers divided by their dtype's maximum
    (:func:`unit_divisor`, signed too), bool and floats as they are; no value checks (see
    :func:`to_float_image`). A float32 input is returned as is (no copy)."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(unit_divisor(image.dtype, signed=True))
    return image.astype(np.float32, copy=False)


def check_float_range(image: np.ndarray, name: str = "image") -> None:
    """Raise a :class:`DataError` naming ``name`` if a float ``image`` lies outside [0, 1].

    The value rule of every command (training, ``check-data``, ``predict``): integer images
    are divided by their dtype's maximum, float images are used as they are and must lie in
    [0, 1] (``FLOAT_RANGE_TOLERANCE`` either side). A float image scaled 0..255 is an error,
    not a silently wrong prediction. Integer and bool images pass; NaN is left to the
    callers' finite-value checks. No copy of ``image`` is made (works on ``np.memmap``).
    """
    arr = np.asarray(image)
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo < -FLOAT_RANGE_TOLERANCE or hi > 1.0 + FLOAT_RANGE_TOLERANCE:
        raise DataError(f"{name}: float values span [{lo:.3g}, {hi:.3g}], outside [0, 1]; "
                        "expected [0, 1] for float images (scale them to [0, 1], or save "
                        "integer images, which are divided by their dtype's maximum)")


def to_float_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """``(H, W, C)`` image -> float32 in [0, 1]: integers are divided by their dtype's maximum
    (:func:`unit_divisor`), floats are kept and must already be finite and in [0, 1]
    (:func:`check_float_range`). Raises :class:`DataError` naming ``name``."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(unit_divisor(image.dtype, name, signed=True))
    if np.issubdtype(image.dtype, np.floating):
        out = image.astype(np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{name}: contains NaN or Inf; expected finite values in [0, 1]")
        check_float_range(out, name)
        return out
    raise DataError(f"{name}: dtype {image.dtype} is not an image type (expected uint8/16 or "
                    "float)")
