"""In-graph, seeded data augmentation for segmentation, as in the U-Net paper.

Ronneberger et al. (2015), section 3.1: smooth elastic deformations from random
displacement vectors on a coarse 3x3 grid (std 10 px), upsampled bicubically to a
per-pixel field, plus shifts/rotations and gray-value variations. Everything here is
pure TensorFlow (runs inside ``tf.data``, on GPU/TPU and under
``tf.function(jit_compile=True)``) and deterministic from a stateless seed.

Conventions
-----------
* Tensors are channels-last: images ``(B, H, W, C)`` float (``[0, 1]`` for gray values),
  masks ``(B, H, W, K)`` of any dtype (labels), weight maps ``(B, H, W, 1)`` float32.
* Sampling coordinates are ``(B, Ho, Wo, 2)`` float32 holding ``(row, col)`` in input pixel
  units; pixel centres sit on integers, exactly as ``scipy.ndimage.map_coordinates``.
* Borders are **mirrored about the edge pixel centres** (no edge pixel repeated): the
  sample at row ``-1`` is row ``1`` and the sample at row ``H`` is row ``H - 2``. This is
  ``scipy.ndimage.map_coordinates(..., mode="mirror")`` and ``np.pad(..., mode="reflect")``.
  Out-of-range coordinates are reflected (period ``2 * (H - 1)``); nothing is zero-filled.
* One coordinate map per sample is shared by image, mask and weight: image bilinear (or
  bicubic), mask and weight nearest-neighbour. Flips, 90-degree rotations and a small
  arbitrary rotation are folded into that same map, so each tensor is resampled once.
* Seeds are shape-``[2]`` int32/int64 tensors (``tf.random.stateless_*``). In a batch, sample
  ``i`` uses ``stateless_split(seed, B, alg="philox")[i]``, so
  ``augment_batch(x, ..., seed=s)[i] == augment_sample(x[i], ..., seed=split_i)`` with
  ``split_i = tf.random.experimental.stateless_split(s, B, alg="philox")[i]``.
  Random numbers come from Philox integer bits converted here, so eager, graph and XLA runs
  draw identical values.
* Volumes (``spatial_dims=3``): images ``(B, D, H, W, C)`` (a sample ``(D, H, W, C)``), masks
  and weights ``(B, D, H, W, K)`` or without the channel axis ``(B, D, H, W)``; coordinates
  ``(B, Do, Ho, Wo, 3)`` hold ``(z, row, col)``. The same public functions handle them:
  :func:`warp` dispatches on ``x``'s rank; :func:`augment_batch`, :func:`augment_sample`,
  :func:`augment_dataset`, :func:`augment_margin` and :class:`AugmentLayer` take
  ``spatial_dims`` (default 2, since a rank-4 image is a 2-D batch or a 3-D sample). One
  ``(z, row, col)`` map per volume is shared by image (trilinear / tricubic), mask and weight
  (nearest). Flips act on z, rows and columns; 90-degree rotations and the small rotation
  act in-plane only (the same rotation for every section, never turning z into the plane);
  gray values are drawn per volume. The elastic field lives on a ``grid**3`` lattice,
  cubic-upsampled separably; with a coarse z spacing (``Augment.spacing``, z > 2x in-plane)
  its z component is 0, while its in-plane components still vary smoothly across sections
  (the same in-plane field as the isotropic case, so each section keeps its own content).
* Speed: the warp is a gather-based sampler vectorised over the batch. Wrap the call in
  ``tf.function(jit_compile=True)`` (also inside ``tf.data.Dataset.map``) for the fused XLA
  version; see ``benchmarks/augment_speed.py``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import keras
import numpy as np

from zf_unet.data.imageops import mirror_coords_tf
from zf_unet.errors import DataError
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("in-graph augmentation (tf.data)")

__all__ = [
    "Augment",
    "AugmentLayer",
    "augment_batch",
    "augment_dataset",
    "augment_margin",
    "augment_sample",
    "elastic_displacement",
    "identity_coords",
    "warp",
]

_SPATIAL_DIMS = (2, 3)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_KEYS_A = -0.5  # Keys (1981) cubic convolution parameter; the kernel of "bicubic" resizing.
# Per-sample uniform draws: [flip_rows, flip_cols, rot90_k, angle, brightness, contrast, gamma].
_N_UNIFORM = 7
# Volumes draw one more: [..., gamma, flip_z] (the first seven keep their 2-D meaning).
_N_UNIFORM_3D = 8
# z spacing above this multiple of the (coarsest) in-plane spacing: in-plane elastic only.
_ANISOTROPY_LIMIT = 2.0


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Augment:
    """Augmentation settings; the defaults follow the U-Net paper.

    The same dataclass is the ``[data.augment]`` table of a training config
    (:class:`zf_unet.config.Config`); its checks are the config's checks.

    Attributes:
        enabled: ``False`` turns every augmentation off (the data pass through unchanged).
        elastic: random smooth elastic deformation.
        elastic_grid: coarse grid points per side (>= 2) holding the random displacements.
        elastic_std: std in pixels of the displacement at each grid point (>= 0).
        interpolation: image resampling, ``"bilinear"`` or ``"bicubic"`` (masks and weights
            are always nearest-neighbour).
        flips: random up-down and left-right flips (each with probability 1/2).
        rotate90: random multiples of 90 degrees (only 0/180 for non-square images, so the
            shape is kept).
        rotation_degrees: max absolute angle of a uniform random small rotation; 0 disables.
        gray_values: random gamma, contrast and brightness on the image (assumed ``[0, 1]``;
            the result is clipped to ``[0, 1]``).
        brightness: additive offset drawn from ``U(-brightness, brightness)``, in ``[0, 1]``.
        contrast: factor around the image mean from ``U(1 - contrast, 1 + contrast)``, ``[0, 1)``.
        gamma: exponent from ``U(1 - gamma, 1 + gamma)``, in ``[0, 1)``.
        spacing: volumes only (ignored for 2-D): voxel size ``(z, y, x)`` in any one unit, or
            ``None`` for isotropic voxels. When ``z > 2 * max(y, x)`` the elastic deformation is
            in-plane only (z displacement exactly 0, see :attr:`elastic_in_plane`).
            ``elastic_std`` stays in voxels of each axis either way.
    """

    enabled: bool = True
    elastic: bool = True
    elastic_grid: int = 3
    elastic_std: float = 10.0
    interpolation: str = "bilinear"
    flips: bool = True
    rotate90: bool = True
    rotation_degrees: float = 0.0
    gray_values: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("enabled", "elastic", "flips", "rotate90", "gray_values"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"Augment: {name} must be a bool, got {value!r}")
            object.__setattr__(self, name, bool(value))
        grid = self.elastic_grid
        if not _is_int(grid) or grid < 2:
            raise ValueError(f"Augment: elastic_grid must be an int >= 2, got {grid!r}")
        object.__setattr__(self, "elastic_grid", int(grid))
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                "Augment: interpolation must be 'bilinear' or 'bicubic', "
                f"got {self.interpolation!r}"
            )
        limits = {
            "elastic_std": (0.0, math.inf, False),
            "rotation_degrees": (0.0, 180.0, False),
            "brightness": (0.0, 1.0, False),
            "contrast": (0.0, 1.0, True),
            "gamma": (0.0, 1.0, True),
        }
        for name, (low, high, open_high) in limits.items():
            value = getattr(self, name)
            ok_type = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                value, (bool, np.bool_)
            )
            if not ok_type or not math.isfinite(float(value)):
                raise ValueError(f"Augment: {name} must be a finite number, got {value!r}")
            value = float(value)
            too_high = value >= high if open_high else value > high
            if value < low or too_high:
                bracket = ")" if open_high else "]"
                raise ValueError(
                    f"Augment: {name} must be in [{low:g}, {high:g}{bracket}, got {value!r}"
                )
            object.__setattr__(self, name, value)
        spacing = self.spacing
        if spacing is not None:
            items = list(spacing) if isinstance(spacing, (list, tuple, np.ndarray)) else None
            ok = items is not None and len(items) == 3 and all(
                isinstance(v, (int, float, np.integer, np.floating))
                and not isinstance(v, (bool, np.bool_))
                and math.isfinite(float(v)) and float(v) > 0.0
                for v in items
            )
            if not ok:
                raise ValueError(
                    "Augment: spacing must be None or three positive finite numbers (z, y, x), "
                    f"got {spacing!r}"
                )
            object.__setattr__(self, "spacing", tuple(float(v) for v in items))

    @property
    def elastic_in_plane(self) -> bool:
        """True when volumes get in-plane elastic deformation only (z spacing is coarse:
        ``spacing[0] > 2 * max(spacing[1], spacing[2])``)."""
        if self.spacing is None:
            return False
        z, y, x = self.spacing
        return z > _ANISOTROPY_LIMIT * max(y, x)

    @property
    def moves_subpixel(self) -> bool:
        """True when the coordinate map is not integer-valued (needs interpolation)."""
        return self.elastic or self.rotation_degrees > 0.0

    def get_config(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Augment":
        """Inverse of :meth:`get_config`; unknown keys raise ``ValueError``."""
        if not isinstance(config, Mapping):
            raise ValueError(f"Augment.from_config: expected a dict, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"Augment.from_config: unknown keys {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**dict(config))


# --------------------------------------------------------------------------- helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_seed(seed: Any, name: str = "seed") -> tf.Tensor:
    """A shape-[2] int32/int64 seed tensor."""
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        if seed.dtype.is_integer:
            seed = tf.cast(seed, tf.int64)
        else:
            raise ValueError(f"{name} must be an int32/int64 tensor of shape [2], got {seed.dtype}")
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ValueError(f"{name} must have shape [2], got {seed.shape}")
    return seed


def _size(t: tf.Tensor, axis: int) -> Any:
    """Static size of ``axis`` when known, else the dynamic one (scalar int32 tensor)."""
    static = t.shape[axis]
    return static if static is not None else tf.shape(t)[axis]


def _keys_kernel(t: tf.Tensor) -> tf.Tensor:
    """Keys cubic-convolution kernel (a = -0.5), float32."""
    a = _KEYS_A
    t = tf.abs(t)
    t2 = t * t
    t3 = t2 * t
    near = (a + 2.0) * t3 - (a + 3.0) * t2 + 1.0
    far = a * t3 - 5.0 * a * t2 + 8.0 * a * t - 4.0 * a
    return tf.where(t <= 1.0, near, tf.where(t < 2.0, far, tf.zeros_like(t)))


def _cubic_matrix(n: Any, grid: int) -> tf.Tensor:
    """``(n, grid)`` float32 matrix: cubic (Keys) interpolation of ``grid`` nodes to ``n`` pixels.

    Nodes are corner-aligned (node ``k`` at pixel ``k * (n - 1) / (grid - 1)``) and the
    interpolant passes through them; beyond the end nodes the grid is extended linearly.
    """
    ext = np.zeros((grid + 2, grid), np.float32)  # rows: virtual nodes -1 .. grid
    ext[1:-1] = np.eye(grid, dtype=np.float32)
    ext[0, 0], ext[0, 1] = 2.0, -1.0
    ext[-1, -1], ext[-1, -2] = 2.0, -1.0
    ext = tf.constant(ext)
    n_f = tf.cast(n, tf.float32)
    t = tf.range(n_f, dtype=tf.float32) * float(grid - 1) / tf.maximum(n_f - 1.0, 1.0)
    i = tf.clip_by_value(tf.floor(t), 0.0, float(grid - 2))
    frac = t - i
    i = tf.cast(i, tf.int32)
    out = 0.0
    for k in (-1, 0, 1, 2):
        out = out + _keys_kernel(frac - float(k))[:, None] * tf.gather(ext, i + (k + 1))
    return out


def _sample_seeds(seed: tf.Tensor, batch: Any) -> tf.Tensor:
    """``(batch, 2)`` per-sample seeds derived from one seed."""
    return tf.random.experimental.stateless_split(seed, num=batch, alg="philox")


def _uniform(shape: list[int], seed: tf.Tensor) -> tf.Tensor:
    """U[0, 1) float32 built from Philox integer bits (identical with and without XLA).

    ``tf.random.stateless_uniform`` for floats gives different numbers under XLA than in
    TF kernels; the integer bits agree, so the float conversion is done here.
    """
    bits = tf.random.stateless_uniform(
        shape, seed=seed, dtype=tf.int32, minval=None, maxval=None, alg="philox"
    )
    return tf.cast(tf.bitwise.bitwise_and(bits, 0xFFFFFF), tf.float32) * (1.0 / 16777216.0)


def _normal(shape: list[int], seed: tf.Tensor) -> tf.Tensor:
    """N(0, 1) float32 via Box-Muller from :func:`_uniform`."""
    u = _uniform([2] + list(shape), seed)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0]))  # 1 - u in (0, 1]
    return radius * tf.cos((2.0 * math.pi) * u[1])


def _draw(
    sample_seeds: tf.Tensor, grid: int, spatial_dims: int = 2
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-sample random numbers: uniforms ``(B, 7)`` and grid normals ``(B, grid, grid, 2)``.

    With ``spatial_dims=3``: uniforms ``(B, 8)`` (the eighth is the z flip) and normals
    ``(B, grid, grid, grid, 3)`` holding ``(dz, drow, dcol)``.

    Each sample's numbers depend only on its own seed (``tf.map_fn`` over the seeds, a graph
    loop of a few tiny ops; no Python loop), so a sample's augmentation does not depend on
    the rest of the batch.
    """

    n_uniform = _N_UNIFORM if spatial_dims == 2 else _N_UNIFORM_3D
    noise_shape = [grid] * spatial_dims + [spatial_dims]

    def one(s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        su, sn = tf.unstack(tf.random.experimental.stateless_split(s, 2, alg="philox"))
        return _uniform([n_uniform], su), _normal(noise_shape, sn)

    return tf.map_fn(
        one,
        sample_seeds,
        fn_output_signature=(
            tf.TensorSpec([n_uniform], tf.float32),
            tf.TensorSpec(noise_shape, tf.float32),
        ),
    )


def _upsample_field(noise: tf.Tensor, height: Any, width: Any, split: bool = False) -> Any:
    """Cubic upsampling of ``(B, g, g, 2)`` grid displacements to ``(B, H, W, 2)``.

    With ``split=True`` returns the two ``(B, H, W)`` components instead. The column pass
    is an unrolled sum over the ``g`` grid columns (elementwise, so XLA fuses it into the
    coordinate arithmetic; ``g`` is small).
    """
    grid = noise.shape[1]
    rows = _cubic_matrix(height, grid)  # (H, g)
    cols = _cubic_matrix(width, grid)  # (W, g)
    tmp = tf.einsum("hg,bgkc->bhkc", rows, noise)  # (B, H, g, 2), small
    parts = []
    for c in range(2):
        acc = 0.0
        for k in range(grid):
            acc = acc + tmp[:, :, k, c][:, :, None] * cols[:, k][None, None, :]
        parts.append(acc)
    return tuple(parts) if split else tf.stack(parts, axis=-1)


def _upsample_field_3d(
    noise: tf.Tensor, depth: Any, height: Any, width: Any
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Separable cubic (Keys) upsampling of ``(B, g, g, g, 3)`` grid displacements.

    Returns the three ``(B, D, H, W)`` float32 components ``(dz, drow, dcol)``; each axis is
    interpolated as in :func:`_upsample_field` (corner-aligned nodes, through the grid values).
    """
    grid = noise.shape[1]
    t = tf.einsum("dg,bghwc->bdhwc", _cubic_matrix(depth, grid), noise)  # (B, D, g, g, 3)
    t = tf.einsum("hk,bdkwc->bdhwc", _cubic_matrix(height, grid), t)  # (B, D, H, g, 3)
    t = tf.einsum("wl,bdhlc->bdhwc", _cubic_matrix(width, grid), t)  # (B, D, H, W, 3)
    return t[..., 0], t[..., 1], t[..., 2]


def identity_coords(*sizes: Any) -> tf.Tensor:
    """Each pixel's (voxel's) own coordinates, float32: ``warp`` with them is the identity.

    ``identity_coords(height, width)`` gives ``(H, W, 2)`` ``(row, col)``;
    ``identity_coords(depth, height, width)`` gives ``(D, H, W, 3)`` ``(z, row, col)``.
    """
    if len(sizes) not in _SPATIAL_DIMS:
        raise ValueError(
            f"identity_coords: expected (height, width) or (depth, height, width), got {sizes!r}"
        )
    axes = [tf.range(tf.cast(n, tf.float32), dtype=tf.float32) for n in sizes]
    return tf.stack(tf.meshgrid(*axes, indexing="ij"), axis=-1)


def elastic_displacement(
    batch: Any,
    height: Any,
    width: Any,
    seed: Any,
    grid: int = 3,
    std: float = 10.0,
    *,
    depth: Any = None,
    in_plane: bool = False,
) -> tf.Tensor:
    """Random smooth displacement field ``(B, H, W, 2)`` float32, ``(d_row, d_col)`` in pixels.

    With ``depth`` (volumes): ``(B, D, H, W, 3)`` float32 ``(d_z, d_row, d_col)`` in voxels,
    from a ``grid**3`` lattice of N(0, std^2) vectors upsampled separably the same way; with
    ``in_plane=True`` the z component is exactly 0 (the in-plane components are unchanged and
    still vary smoothly across z). This is the field ``augment_batch(..., spatial_dims=3)``
    uses, ``in_plane`` being ``Augment.elastic_in_plane``.

    A ``grid x grid`` array of N(0, std^2) vectors per sample (sample ``i`` seeded with
    ``stateless_split(seed, B, alg="philox")[i]``), placed corner-to-corner on the image and
    upsampled with cubic (Keys) interpolation, which passes through the grid values. This is
    exactly the field ``augment_batch`` uses with ``Augment(elastic_grid=grid,
    elastic_std=std)``.
    """
    if not _is_int(grid) or grid < 2:
        raise ValueError(f"elastic_displacement: grid must be an int >= 2, got {grid!r}")
    seed = _as_seed(seed)
    if depth is not None:
        _, noise = _draw(_sample_seeds(seed, batch), int(grid), 3)
        dz, dy, dx = _upsample_field_3d(noise * float(std), depth, height, width)
        if in_plane:
            dz = tf.zeros_like(dz)
        field = tf.stack([dz, dy, dx], axis=-1)
        sizes = (batch, depth, height, width)
    else:
        _, noise = _draw(_sample_seeds(seed, batch), int(grid))
        field = _upsample_field(noise * float(std), height, width)
        sizes = (batch, height, width)
    static = [b if isinstance(b, (int, np.integer)) else None for b in sizes]
    field.set_shape(static + [len(sizes) - 1])
    return field


class _Sampler:
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
        weight = [[expand(_keys_kernel(f - k)) for k in offsets] for f in self.frac]
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
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"warp: interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}"
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
    sampler = _Sampler([coords[..., a] for a in range(n)], [_size(x, 1 + a) for a in range(n)])
    out = sampler.sample(x, interpolation)
    out.set_shape(coords.shape[:n + 1].concatenate(x.shape[n + 1:]))
    return out


# --------------------------------------------------------------------------- augmentation


def _coordinate_map(
    u: tf.Tensor,
    noise: tf.Tensor,
    height: Any,
    width: Any,
    square: Any,
    config: Augment,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One sampling map ``(rows, cols)``, each ``(B, H, W)`` float32, for all transforms.

    ``coords(p) = c + M (p - c) + d(p)`` with ``c`` the image centre, ``M`` the product of the
    small rotation, the 90-degree rotation and the flips, ``d`` the elastic displacement.
    Flip/rot90 entries are exact 0/+-1, so without subpixel motion the map is integer-valued.
    """
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    cy, cx = (h_f - 1.0) / 2.0, (w_f - 1.0) / 2.0
    vy = (tf.range(h_f, dtype=tf.float32) - cy)[None, :, None]  # (1, H, 1)
    vx = (tf.range(w_f, dtype=tf.float32) - cx)[None, None, :]  # (1, 1, W)
    m = [t[:, None, None] for t in _in_plane_matrix(u, square, config)]
    rows = cy + m[0] * vy + m[1] * vx  # (B, H, W)
    cols = cx + m[2] * vy + m[3] * vx
    if config.elastic:
        d_rows, d_cols = _upsample_field(noise * config.elastic_std, height, width, split=True)
        rows = rows + d_rows
        cols = cols + d_cols
    return rows, cols


def _in_plane_matrix(
    u: tf.Tensor, square: Any, config: Augment
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-sample ``(B,)`` entries ``(a00, a01, a10, a11)`` of the in-plane matrix ``M``:
    small rotation @ 90-degree rotation @ row/column flips, from the uniforms ``u[:, 0:4]``."""
    batch = tf.shape(u)[0]
    one = tf.ones([batch], tf.float32)
    zero = tf.zeros([batch], tf.float32)

    if config.flips:
        fy = tf.where(u[:, 0] < 0.5, -one, one)
        fx = tf.where(u[:, 1] < 0.5, -one, one)
    else:
        fy, fx = one, one
    if config.rotate90:
        k4 = tf.minimum(tf.floor(u[:, 2] * 4.0), 3.0)
        k2 = 2.0 * tf.minimum(tf.floor(u[:, 2] * 2.0), 1.0)
        # Odd multiples of 90 degrees would change a non-square shape: only 0/180 there.
        k = tf.where(square, k4, k2) if tf.is_tensor(square) else (k4 if square else k2)
        k = tf.cast(k, tf.int32)
        ck = tf.gather(tf.constant([1.0, 0.0, -1.0, 0.0]), k)
        sk = tf.gather(tf.constant([0.0, 1.0, 0.0, -1.0]), k)
    else:
        ck, sk = one, zero
    # A = Rot90^k @ diag(fy, fx); Rot90 = [[c, s], [-s, c]].
    a00, a01, a10, a11 = ck * fy, sk * fx, -sk * fy, ck * fx
    if config.rotation_degrees > 0.0:
        theta = (2.0 * u[:, 3] - 1.0) * (config.rotation_degrees * math.pi / 180.0)
        cos, sin = tf.cos(theta), tf.sin(theta)
        a00, a01, a10, a11 = (
            cos * a00 - sin * a10,
            cos * a01 - sin * a11,
            sin * a00 + cos * a10,
            sin * a01 + cos * a11,
        )
    return a00, a01, a10, a11


def _coordinate_map_3d(
    u: tf.Tensor,
    noise: tf.Tensor,
    depth: Any,
    height: Any,
    width: Any,
    square: Any,
    config: Augment,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One volume sampling map ``(z, rows, cols)``, each ``(B, D, H, W)`` float32.

    In-plane: the 2-D map (:func:`_in_plane_matrix`, same uniforms) applied identically to
    every section. z: a flip about the centre (``u[:, 7]``), nothing else rigid. Plus the
    elastic field of :func:`_upsample_field_3d`, its z part dropped when
    ``config.elastic_in_plane``.
    """
    d_f = tf.cast(depth, tf.float32)
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    cz, cy, cx = (d_f - 1.0) / 2.0, (h_f - 1.0) / 2.0, (w_f - 1.0) / 2.0
    vz = (tf.range(d_f, dtype=tf.float32) - cz)[None, :, None, None]  # (1, D, 1, 1)
    vy = (tf.range(h_f, dtype=tf.float32) - cy)[None, None, :, None]  # (1, 1, H, 1)
    vx = (tf.range(w_f, dtype=tf.float32) - cx)[None, None, None, :]  # (1, 1, 1, W)
    m = [t[:, None, None, None] for t in _in_plane_matrix(u, square, config)]
    rows = cy + m[0] * vy + m[1] * vx  # (B, 1, H, W)
    cols = cx + m[2] * vy + m[3] * vx
    if config.flips:
        fz = tf.where(u[:, 7] < 0.5, -1.0, 1.0)[:, None, None, None]
        z = cz + fz * vz  # (B, D, 1, 1)
    else:
        z = cz + vz  # (1, D, 1, 1), broadcast below
    if config.elastic:
        dz, d_rows, d_cols = _upsample_field_3d(
            noise * config.elastic_std, depth, height, width
        )
        rows = rows + d_rows
        cols = cols + d_cols
        if not config.elastic_in_plane:
            z = z + dz
    shape = tf.stack([
        tf.shape(u)[0],
        tf.cast(depth, tf.int32),
        tf.cast(height, tf.int32),
        tf.cast(width, tf.int32),
    ])
    return tuple(tf.broadcast_to(t, shape) for t in (z, rows, cols))


def _gamma(x: tf.Tensor, exponent: tf.Tensor) -> tf.Tensor:
    """``x ** exponent`` for ``x`` in [0, 1], ``exponent > 0`` (exp/log: ~3x faster than pow)."""
    powered = tf.exp(exponent * tf.math.log(tf.maximum(x, 1e-30)))
    return tf.where(x > 0.0, powered, tf.zeros_like(x))


def _gray_values(
    images: tf.Tensor, u: tf.Tensor, config: Augment, source: tf.Tensor | None = None
) -> tf.Tensor:
    """Random gamma, then contrast about the mean gray value, then brightness; clip to [0, 1].

    ``images``: ``(B, H, W, C)`` or ``(B, D, H, W, C)`` float in [0, 1] (one draw per image
    or volume); ``u``: the ``(B, 7)`` (volumes ``(B, 8)``) per-sample uniforms.
    The contrast pivot is ``mean(source) ** gamma`` per sample (``source`` defaults to
    ``images``). ``_augment`` passes the un-warped input, whose mean the mirrored warp nearly
    keeps, so warp, gamma, contrast and brightness fuse into one pass under XLA.
    """
    rank = images.shape.rank
    col = lambda t: tf.reshape(t, [-1] + [1] * (rank - 1))  # noqa: E731
    exponent = col(1.0 + config.gamma * (2.0 * u[:, 6] - 1.0))

    def curve(t: tf.Tensor) -> tf.Tensor:
        t = tf.clip_by_value(tf.cast(t, tf.float32), 0.0, 1.0)
        return _gamma(t, exponent) if config.gamma > 0.0 else t

    x = curve(images)
    if config.contrast > 0.0:
        source = images if source is None else source
        clipped = tf.clip_by_value(tf.cast(source, tf.float32), 0.0, 1.0)
        pivot = curve(tf.reduce_mean(clipped, axis=list(range(1, rank)), keepdims=True))
        x = (x - pivot) * col(1.0 + config.contrast * (2.0 * u[:, 5] - 1.0)) + pivot
    if config.brightness > 0.0:
        x = x + col(config.brightness * (2.0 * u[:, 4] - 1.0))
    return tf.cast(tf.clip_by_value(x, 0.0, 1.0), images.dtype)


def _augment(
    images: tf.Tensor,
    masks: tf.Tensor,
    weights: tf.Tensor | None,
    sample_seeds: tf.Tensor,
    config: Augment,
    spatial_dims: int = 2,
) -> tuple[tf.Tensor, ...]:
    """Batched augmentation: ``images (B, *S, C)``, ``masks (B, *S, K)``, ``weights`` or None,
    with ``S`` = ``(H, W)`` or ``(D, H, W)`` (``spatial_dims``)."""
    height, width = _size(images, spatial_dims - 1), _size(images, spatial_dims)
    if isinstance(height, int) and isinstance(width, int):
        square = height == width
    else:
        square = tf.equal(tf.cast(height, tf.int32), tf.cast(width, tf.int32))
    u, noise = _draw(sample_seeds, config.elastic_grid, spatial_dims)
    geometric = config.elastic or config.flips or config.rotate90 or config.rotation_degrees > 0
    out_images, out_masks, out_weights = images, masks, weights
    if geometric:
        if spatial_dims == 3:
            depth = _size(images, 1)
            z, rows, cols = _coordinate_map_3d(u, noise, depth, height, width, square, config)
            sampler = _Sampler([z, rows, cols], [depth, height, width])
        else:
            rows, cols = _coordinate_map(u, noise, height, width, square, config)
            sampler = _Sampler([rows, cols], [height, width])
        interp = config.interpolation if config.moves_subpixel else "nearest"
        out_images = sampler.sample(images, interp)
        out_masks = sampler.nearest(masks)
        if weights is not None:
            out_weights = sampler.nearest(weights)
    if config.gray_values:
        out_images = _gray_values(out_images, u, config, source=images)
    # Static shapes: (B, H, W) known from any input carries over to all outputs.
    spatial = images.shape[:-1].merge_with(masks.shape[:-1])
    if weights is not None:
        spatial = spatial.merge_with(weights.shape[:-1])
    out_images.set_shape(spatial.concatenate(images.shape[-1:]))
    out_masks.set_shape(spatial.concatenate(masks.shape[-1:]))
    if weights is None:
        return out_images, out_masks
    out_weights.set_shape(spatial.concatenate(weights.shape[-1:]))
    return out_images, out_masks, out_weights


_LAYOUTS = {
    (2, True): "(B, H, W, C)",
    (2, False): "(H, W, C)",
    (3, True): "(B, D, H, W, C)",
    (3, False): "(D, H, W, C)",
}


def _check_spatial_dims(spatial_dims: Any, where: str) -> int:
    if not _is_int(spatial_dims) or int(spatial_dims) not in _SPATIAL_DIMS:
        raise ValueError(f"{where}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def _validate(
    images: Any,
    masks: Any,
    weights: Any,
    config: Augment | Mapping[str, Any] | None,
    spatial_dims: int,
    batched: bool,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None, Augment, tuple[bool, bool]]:
    """Checked tensors and config. Volume masks/weights may lack the channel axis: they get
    one here, and the returned flags ``(mask, weight)`` say which to squeeze afterwards."""
    if config is None:
        config = Augment()
    elif isinstance(config, Mapping):
        config = Augment.from_config(config)
    elif not isinstance(config, Augment):
        raise ValueError(f"config must be an Augment (or its dict), got {type(config).__name__}")
    spatial_dims = _check_spatial_dims(spatial_dims, "augment")
    rank = spatial_dims + (2 if batched else 1)
    layout = _LAYOUTS[(spatial_dims, batched)]
    images = tf.convert_to_tensor(images)
    masks = tf.convert_to_tensor(masks)
    weights = None if weights is None else tf.convert_to_tensor(weights)
    squeeze = [False, False]
    if spatial_dims == 3:  # (.., D, H, W) labels/weights without a channel axis
        if masks.shape.rank == rank - 1:
            masks, squeeze[0] = masks[..., None], True
        if weights is not None and weights.shape.rank == rank - 1:
            weights, squeeze[1] = weights[..., None], True
    named = [("images", images), ("masks", masks)]
    if weights is not None:
        named.append(("weights", weights))
    for name, t in named:
        if t.shape.rank != rank:
            hint = ""
            if spatial_dims == 3 and name != "images":
                hint = " (or without the channel axis)"
            elif spatial_dims == 2 and t.shape.rank == rank + 1:
                hint = "; pass spatial_dims=3 for volumes"
            raise DataError(f"{name} must have rank {rank} {layout}, got shape {t.shape}{hint}")
    if not images.dtype.is_floating:
        raise DataError(f"images must be float (e.g. float32 in [0, 1]), got {images.dtype.name}")
    if weights is not None and not weights.dtype.is_floating:
        raise DataError(f"weights must be float32, got {weights.dtype.name}")
    spatial = images.shape[:-1]
    for name, t in named[1:]:
        if not spatial.is_compatible_with(t.shape[:-1]):
            raise DataError(
                f"{name} shape {t.shape} does not match images shape {images.shape} "
                "(all but the channel axis must agree)"
            )
    return images, masks, weights, config, (squeeze[0], squeeze[1])


def _squeezed(out: tuple[tf.Tensor, ...], squeeze: tuple[bool, bool]) -> tuple[tf.Tensor, ...]:
    """Drop the channel axis that :func:`_validate` added to masks/weights."""
    return tuple(
        t[..., 0] if i > 0 and squeeze[i - 1] else t for i, t in enumerate(out)
    )


def augment_batch(
    images: Any,
    masks: Any,
    weights: Any = None,
    *,
    seed: Any,
    config: Augment | Mapping[str, Any] | None = None,
    spatial_dims: int = 2,
) -> tuple[tf.Tensor, ...]:
    """Augment a batch; every sample gets its own random field from its own derived seed.

    Args:
        images: ``(B, H, W, C)`` float (float32 in ``[0, 1]`` for gray values); volumes
            (``spatial_dims=3``) ``(B, D, H, W, C)``.
        masks: ``(B, H, W, K)`` labels of any dtype; resampled nearest-neighbour, so the output
            keeps the dtype and holds only values present in the input. Volumes:
            ``(B, D, H, W, K)`` or ``(B, D, H, W)``.
        weights: optional ``(B, H, W, 1)`` float32 weight map, nearest-neighbour. Volumes:
            ``(B, D, H, W, 1)`` or ``(B, D, H, W)``.
        seed: shape-``[2]`` int32/int64 tensor; sample ``i`` uses
            ``stateless_split(seed, B, alg="philox")[i]``.
        config: an :class:`Augment` (default paper settings) or its dict.
        spatial_dims: 2 for images, 3 for volumes (one shared ``(z, row, col)`` map per
            volume; see the module notes).

    Returns:
        ``(images, masks)`` or ``(images, masks, weights)``, shapes and dtypes as the inputs.
        Vectorised over the batch and ``tf.function(jit_compile=True)`` compatible.
    """
    images, masks, weights, config, squeeze = _validate(
        images, masks, weights, config, spatial_dims, batched=True
    )
    if config.enabled:
        seed = _as_seed(seed)
        seeds = _sample_seeds(seed, tf.shape(images)[0])
        out = _augment(images, masks, weights, seeds, config, int(spatial_dims))
    else:
        out = (images, masks) if weights is None else (images, masks, weights)
    return _squeezed(out, squeeze)


def augment_sample(
    image: Any,
    mask: Any,
    weight: Any = None,
    *,
    seed: Any,
    config: Augment | Mapping[str, Any] | None = None,
    spatial_dims: int = 2,
) -> tuple[tf.Tensor, ...]:
    """Augment one sample: ``image (H, W, C)``, ``mask (H, W, K)``, ``weight (H, W, 1)`` or None.

    With ``spatial_dims=3`` a volume: ``image (D, H, W, C)``, ``mask (D, H, W, K)`` or
    ``(D, H, W)``, ``weight (D, H, W, 1)``, ``(D, H, W)`` or None, all with one shared map.
    ``seed`` (shape ``[2]``) is used as the sample's own seed (see :func:`augment_batch`).
    Returns ``(image, mask)`` or ``(image, mask, weight)`` with the input shapes and dtypes.
    """
    image, mask, weight, config, squeeze = _validate(
        image, mask, weight, config, spatial_dims, batched=False
    )
    if config.enabled:
        seed = _as_seed(seed)
        batched = _augment(
            image[None],
            mask[None],
            None if weight is None else weight[None],
            seed[None],
            config,
            int(spatial_dims),
        )
        out = tuple(t[0] for t in batched)
    else:
        out = (image, mask) if weight is None else (image, mask, weight)
    return _squeezed(out, squeeze)


# --------------------------------------------------------------------------- tf.data


def augment_margin(
    patch: int | tuple[int, ...], augment: Augment | None, spatial_dims: int = 2
) -> int | tuple[int, int, int]:
    """Context in px to read around a ``patch`` x ``patch`` training patch so that the
    elastic field (3 std) and the small rotation pull real pixels, not mirrored ones.

    With ``spatial_dims=3``: ``patch`` is an int (a cube) or ``(D, H, W)``, and the result is
    the per-axis margin ``(z, y, x)``. z gets only the elastic part, and none when the
    deformation is in-plane (:attr:`Augment.elastic_in_plane`); the rotation is in-plane.
    """
    spatial_dims = _check_spatial_dims(spatial_dims, "augment_margin")
    if spatial_dims == 2:
        if augment is None or not augment.enabled:
            return 0
        m = 0
        if augment.elastic:
            m += int(math.ceil(3.0 * augment.elastic_std))
        if augment.rotation_degrees > 0:
            m += int(math.ceil(patch * 0.7072 * math.radians(augment.rotation_degrees)))
        return m
    sizes = (patch,) * 3 if _is_int(patch) else tuple(patch)
    if len(sizes) != 3 or not all(_is_int(n) and n >= 1 for n in sizes):
        raise ValueError(f"augment_margin: patch must be an int or (D, H, W), got {patch!r}")
    if augment is None or not augment.enabled:
        return (0, 0, 0)
    elastic = int(math.ceil(3.0 * augment.elastic_std)) if augment.elastic else 0
    rotation = 0
    if augment.rotation_degrees > 0:
        rotation = int(
            math.ceil(max(sizes[1:]) * 0.7072 * math.radians(augment.rotation_degrees))
        )
    z = 0 if augment.elastic_in_plane else elastic
    return (z, elastic + rotation, elastic + rotation)


def augment_dataset(
    ds: tf.data.Dataset,
    augment: Augment,
    seed: int,
    jit_compile: bool = True,
    spatial_dims: int = 2,
) -> tf.data.Dataset:
    """Apply :func:`augment_batch` to every batch ``(image, mask[, weight])`` of ``ds`` with a
    seed of its own (a new one every epoch, reproducible from ``seed``); outputs float32.

    ``spatial_dims=3`` for volumes. Elements whose image has rank ``spatial_dims + 1`` (one
    unbatched sample, e.g. ``(D, H, W, C)``) go through :func:`augment_sample` instead.
    """
    spatial_dims = _check_spatial_dims(spatial_dims, "augment_dataset")
    spec = ds.element_spec
    image_rank = spec[0].shape.rank if isinstance(spec, tuple) else None
    fn = augment_sample if image_rank == spatial_dims + 1 else augment_batch
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(
        2, drop_remainder=True)

    @tf.function(jit_compile=jit_compile)
    def run(s: tf.Tensor, *batch: tf.Tensor) -> tuple:
        out = fn(batch[0], batch[1], batch[2] if len(batch) == 3 else None,
                 seed=s, config=augment, spatial_dims=spatial_dims)
        return tuple(tf.cast(t, tf.float32) for t in out)

    return tf.data.Dataset.zip((seeds, ds)).map(lambda s, b: run(s, *b),
                                                num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- Keras layer


@keras.saving.register_keras_serializable(package="zf_unet")
class AugmentLayer(keras.layers.Layer):
    """Keras layer applying :func:`augment_batch` to ``(images, masks[, weights])`` when training.

    ``spatial_dims=3`` takes volume batches ``(B, D, H, W, C)`` (see :func:`augment_batch`).
    With ``training=False`` (or unset) the inputs are returned unchanged. Each training call
    draws a fresh seed from a ``keras.random.SeedGenerator(seed)``, so two layers built with
    the same ``seed`` produce the same sequence of augmentations.
    """

    def __init__(
        self,
        augment: Augment | Mapping[str, Any] | None = None,
        seed: int | None = None,
        spatial_dims: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if augment is None:
            augment = Augment()
        elif isinstance(augment, Mapping):
            augment = Augment.from_config(augment)
        elif not isinstance(augment, Augment):
            raise ValueError(
                f"AugmentLayer: augment must be an Augment or a dict, got {type(augment).__name__}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"AugmentLayer: seed must be an int or None, got {seed!r}")
        self.augment = augment
        self.spatial_dims = _check_spatial_dims(spatial_dims, "AugmentLayer")
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = False

    def call(self, inputs: Any, training: bool | None = None) -> tuple[Any, ...]:
        if not isinstance(inputs, (tuple, list)) or len(inputs) not in (2, 3):
            raise ValueError(
                "AugmentLayer expects a tuple (images, masks) or (images, masks, weights), "
                f"got {type(inputs).__name__}"
            )
        inputs = tuple(inputs)
        if not training:
            return inputs
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        weights = inputs[2] if len(inputs) == 3 else None
        return augment_batch(inputs[0], inputs[1], weights, seed=seed, config=self.augment,
                             spatial_dims=self.spatial_dims)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"augment": self.augment.get_config(), "seed": self.seed,
                       "spatial_dims": self.spatial_dims})
        return config
