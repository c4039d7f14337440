"""Resampling at a coordinate map with mirrored borders: :func:`warp`, and the gather-based
sampler the augmentation shares between image, mask and weight.

Tensors are channels-last: ``(B, H, W, C)`` images, ``(B, D, H, W, C)`` volumes. Sampling
coordinates are float32 ``(B, Ho, Wo, 2)`` ``(row, col)`` (volumes ``(B, Do, Ho, Wo, 3)``
``(z, row, col)``) in input pixel units; pixel centres sit on integers, exactly as
``scipy.ndimage.map_coordinates``. Borders are **mirrored about the edge pixel centres**
(``map_coordinates(..., mode="mirror")``, ``np.pad(..., mode="reflect")``): out-of-range
coordinates are reflected (period ``2 * (H - 1)``); nothing is zero-filled. Pure TensorFlow
(the lazy proxy), ``tf.function(jit_compile=True)`` compatible.
"""
from __future__ import annotations

from typing import Any, Sequence

from zf_unet.backend import lazy_tensorflow
from zf_unet.data.augment_config import SPATIAL_DIMS
from zf_unet.errors import DataError
from zf_unet.pixels import mirror_coords_tf

tf = lazy_tensorflow("in-graph augmentation (tf.data)")

__all__ = ["INTERPOLATIONS", "Sampler", "axis_size", "identity_coords", "keys_kernel", "warp"]

#: ``warp``'s interpolations (on volumes: nearest, trilinear, tricubic).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_KEYS_A = -0.5  # Keys (1981) cubic convolution parameter; the kernel of "bicubic" resizing.


def axis_size(t: tf.Tensor, axis: int) -> Any:
    """Static size of ``axis`` when known, else the dynamic one (scalar int32 tensor)."""
    static = t.shape[axis]
    return static if static is not None else tf.shape(t)[axis]


def keys_kernel(t: tf.Tensor) -> tf.Tensor:
    """Keys cubic-convolution kernel (a = -0.5), float32."""
    a = _KEYS_A
    t = tf.abs(t)
    t2 = t * t
    t3 = t2 * t
    near = (a + 2.0) * t3 - (a + 3.0) * t2 + 1.0
    far = a * t3 - 5.0 * a * t2 + 8.0 * a * t - 4.0 * a
    return tf.where(t <= 1.0, near, tf.where(t < 2.0, far, tf.zeros_like(t)))


def identity_coords(*sizes: Any) -> tf.Tensor:
    """Each pixel's (voxel's) own coordinates, float32: ``warp`` with them is the identity.

    ``identity_coords(height, width)`` gives ``(H, W, 2)`` ``(row, col)``;
    ``identity_coords(depth, height, width)`` gives ``(D, H, W, 3)`` ``(z, row, col)``.
    """
    if len(sizes) not in SPATIAL_DIMS:
        raise ValueError(
            f"identity_coords: expected (height, width) or (depth, height, width), got {sizes!r}"
        )
    axes = [tf.range(tf.cast(n, tf.float32), dtype=tf.float32) for n in sizes]
    return tf.stack(tf.meshgrid(*axes, indexing="ij"), axis=-1)


class Sampler:
    """Index arithmetic shared by several tensors resampled at one coordinate map.

    ``coords`` holds one float32 ``(B, *out)`` tensor of source positions per spatial axis
    (``rows, cols`` for ``(B, H, W, C)`` images; ``z, rows, cols`` for ``(B, D, H, W, C)``
    volumes) and ``sizes`` the input's spatial sizes. Every gather reads a flattened
    ``(B * prod(sizes), C)`` view with one int32 index per output pixel. Positions are
    mirrored about the edge centres; the step to the next position along an axis is 0 on its
    last one (its weight is then 0 anyway).
    """

    def __init__(self, coords: Sequence[tf.Tensor], sizes: Sequence[Any]) -> None:
        self.sizes = [tf.cast(n, tf.float32) for n in sizes]
        self.strides: list[tf.Tensor] = []  # flat-index step of each axis
        stride = tf.constant(1, tf.int32)
        for n in reversed(sizes):
            self.strides.insert(0, stride)
            stride = stride * tf.cast(n, tf.int32)
        pos = [mirror_coords_tf(c, n) for c, n in zip(coords, self.sizes)]
        self.lo = [tf.floor(p) for p in pos]
        self.frac = [p - lo for p, lo in zip(pos, self.lo)]
        batch = tf.shape(coords[0])[0]
        self.base = tf.reshape(tf.range(batch, dtype=tf.int32) * stride,
                               [-1] + [1] * len(sizes))
        self.step = [tf.where(lo < n - 1.0, st, 0)
                     for lo, n, st in zip(self.lo, self.sizes, self.strides)]
        corner = self.base
        for lo, st in zip(self.lo, self.strides):
            corner = corner + tf.cast(lo, tf.int32) * st
        self.corner = corner
        self._nearest: tf.Tensor | None = None

    @staticmethod
    def _flat(x: tf.Tensor) -> tuple[tf.Tensor, bool]:
        """``x`` flattened for gathering: 1-D when it has one channel (faster), else 2-D."""
        channels = x.shape[-1]
        if channels == 1:
            return tf.reshape(x, [-1]), True
        if channels is None:
            return tf.reshape(x, tf.stack([-1, tf.shape(x)[-1]])), False
        return tf.reshape(x, [-1, channels]), False

    @staticmethod
    def _unflat(v: tf.Tensor, scalar: bool) -> tf.Tensor:
        return v[..., None] if scalar else v

    def nearest(self, x: tf.Tensor) -> tf.Tensor:
        """Nearest-neighbour (round half up, like SciPy ``order=0``); any dtype."""
        if self._nearest is None:
            index = self.corner
            for f, step in zip(self.frac, self.step):
                index = index + tf.where(f >= 0.5, step, 0)
            self._nearest = index
        flat, scalar = self._flat(x)
        return self._unflat(tf.gather(flat, self._nearest), scalar)

    def linear(self, x: tf.Tensor) -> tf.Tensor:
        """Bi- / trilinear interpolation in float32, returned in ``x``'s float dtype."""
        flat, scalar = self._flat(x)
        flat = tf.cast(flat, tf.float32)
        frac = self.frac if scalar else [f[..., None] for f in self.frac]
        last = len(frac) - 1

        def interpolate(axis: int, index: tf.Tensor) -> tf.Tensor:
            if axis == last:
                a, b = tf.gather(flat, index), tf.gather(flat, index + self.step[axis])
            else:
                a = interpolate(axis + 1, index)
                b = interpolate(axis + 1, index + self.step[axis])
            return a + (b - a) * frac[axis]

        return tf.cast(self._unflat(interpolate(0, self.corner), scalar), x.dtype)

    def cubic(self, x: tf.Tensor) -> tf.Tensor:
        """Keys bi- / tricubic (a = -0.5) on the mirrored 4x4 (4x4x4) neighbourhood, in
        ``x``'s float dtype."""
        flat, scalar = self._flat(x)
        flat = tf.cast(flat, tf.float32)
        offsets = (-1.0, 0.0, 1.0, 2.0)
        expand = (lambda t: t) if scalar else (lambda t: t[..., None])
        index = [[tf.cast(mirror_coords_tf(lo + k, n), tf.int32) * st for k in offsets]
                 for lo, n, st in zip(self.lo, self.sizes, self.strides)]
        weight = [[expand(keys_kernel(f - k)) for k in offsets] for f in self.frac]
        last = len(index) - 1

        def convolve(axis: int, at: tf.Tensor) -> tf.Tensor:
            total = 0.0
            for i, w in zip(index[axis], weight[axis]):
                inner = tf.gather(flat, at + i) if axis == last else convolve(axis + 1, at + i)
                total = total + w * inner
            return total

        return tf.cast(self._unflat(convolve(0, self.base), scalar), x.dtype)

    def sample(self, x: tf.Tensor, interpolation: str) -> tf.Tensor:
        """``"nearest"``, ``"bilinear"`` (trilinear on volumes) or ``"bicubic"``
        (tricubic)."""
        if interpolation == "nearest":
            return self.nearest(x)
        if interpolation == "bilinear":
            return self.linear(x)
        return self.cubic(x)


def _check_rank4(x: tf.Tensor, name: str, what: str) -> None:
    if x.shape.rank != 4:
        raise DataError(f"{name} must be a rank-4 {what} tensor (B, H, W, C), got shape {x.shape}")


def warp(x: Any, coords: Any, interpolation: str = "bilinear") -> tf.Tensor:
    """Resample ``x`` at ``coords`` with mirrored borders.

    Args:
        x: ``(B, H, W, C)``, or a volume ``(B, D, H, W, C)`` (dispatch on the rank); any dtype
            for ``"nearest"``, float for ``"bilinear"``/``"bicubic"``.
        coords: ``(B, Ho, Wo, 2)`` float32 ``(row, col)`` source positions in ``x``'s pixels;
            for a volume ``(B, Do, Ho, Wo, 3)`` ``(z, row, col)`` in voxels.
        interpolation: ``"nearest"``, ``"bilinear"`` or ``"bicubic"`` (Keys, a = -0.5); on a
            volume these are nearest, trilinear and tricubic.

    Returns:
        ``(B, Ho, Wo, C)`` (volume: ``(B, Do, Ho, Wo, C)``) of ``x``'s dtype.
        ``out[b, i, j] = x[b](coords[b, i, j])`` where coordinates outside ``[0, H - 1]`` are
        mirrored about the edge pixel centres (SciPy ``map_coordinates(mode="mirror")``).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"warp: interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
        )
    x = tf.convert_to_tensor(x)
    coords = tf.cast(tf.convert_to_tensor(coords), tf.float32)
    if x.shape.rank == 5:
        n, want = 3, "(B, Do, Ho, Wo, 3)"
        if coords.shape.rank != 5 or coords.shape[-1] not in (None, 3):
            raise DataError(f"warp: coords for a volume must have shape {want}, "
                            f"got {coords.shape}")
    else:
        _check_rank4(x, "warp: x", "image")
        n = 2
        if coords.shape.rank != 4 or coords.shape[-1] not in (None, 2):
            raise DataError(f"warp: coords must have shape (B, Ho, Wo, 2), got {coords.shape}")
    if x.shape[0] is not None and coords.shape[0] is not None and x.shape[0] != coords.shape[0]:
        raise DataError(f"warp: x has batch {x.shape[0]} but coords has batch {coords.shape[0]}")
    if interpolation != "nearest" and not x.dtype.is_floating:
        raise DataError(
            f"warp: {interpolation!r} needs a float tensor, got {x.dtype.name}; "
            "use interpolation='nearest' for labels"
        )
    sampler = Sampler([coords[..., a] for a in range(n)], [axis_size(x, 1 + a) for a in range(n)])
    out = sampler.sample(x, interpolation)
    out.set_shape(coords.shape[:n + 1].concatenate(x.shape[n + 1:]))
    return out
