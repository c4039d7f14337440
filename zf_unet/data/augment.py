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
* Modules: the settings are :class:`~zf_unet.data.augment_config.Augment` (no TensorFlow),
  the resampling :mod:`zf_unet.data.augment_warp` (:func:`warp`), the tf.data glue
  :mod:`zf_unet.data.augment_data` (:func:`augment_dataset`, :func:`augment_margin`) and the
  Keras layer :mod:`zf_unet.data.augment_layer` (:class:`AugmentLayer`).
* Speed: the warp is a gather-based sampler vectorised over the batch. Wrap the call in
  ``tf.function(jit_compile=True)`` (also inside ``tf.data.Dataset.map``) for the fused XLA
  version; see ``benchmarks/augment_speed.py``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from zf_unet.backend import lazy_tensorflow
from zf_unet.data.augment_config import Augment, check_spatial_dims, is_int, to_augment
from zf_unet.data.augment_warp import Sampler, axis_size, keys_kernel
from zf_unet.errors import DataError

tf = lazy_tensorflow("in-graph augmentation (tf.data)")

__all__ = ["augment_batch", "augment_sample", "elastic_displacement"]

# Per-sample uniform draws: [flip_rows, flip_cols, rot90_k, angle, brightness, contrast, gamma].
_N_UNIFORM = 7
# Volumes draw one more: [..., gamma, flip_z] (the first seven keep their 2-D meaning).
_N_UNIFORM_3D = 8


# --------------------------------------------------------------------------- random numbers


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


# --------------------------------------------------------------------------- fields


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
        out = out + keys_kernel(frac - float(k))[:, None] * tf.gather(ext, i + (k + 1))
    return out


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
    if not is_int(grid) or grid < 2:
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
    height, width = axis_size(images, spatial_dims - 1), axis_size(images, spatial_dims)
    if isinstance(height, int) and isinstance(width, int):
        square = height == width
    else:
        square = tf.equal(tf.cast(height, tf.int32), tf.cast(width, tf.int32))
    u, noise = _draw(sample_seeds, config.elastic_grid, spatial_dims)
    geometric = config.elastic or config.flips or config.rotate90 or config.rotation_degrees > 0
    out_images, out_masks, out_weights = images, masks, weights
    if geometric:
        if spatial_dims == 3:
            depth = axis_size(images, 1)
            z, rows, cols = _coordinate_map_3d(u, noise, depth, height, width, square, config)
            sampler = Sampler([z, rows, cols], [depth, height, width])
        else:
            rows, cols = _coordinate_map(u, noise, height, width, square, config)
            sampler = Sampler([rows, cols], [height, width])
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
    config = to_augment(config, "config")
    spatial_dims = check_spatial_dims(spatial_dims, "augment")
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


def _checked_augment(
    images: Any,
    masks: Any,
    weights: Any,
    seed: Any,
    config: Augment | Mapping[str, Any] | None,
    spatial_dims: int,
    batched: bool,
) -> tuple[tf.Tensor, ...]:
    """:func:`augment_batch` (``batched``: sample ``i`` seeded by the ``i``-th split of
    ``seed``) or :func:`augment_sample` (one sample seeded by ``seed`` itself, run as a batch
    of one): check the inputs, augment, drop the channel axes :func:`_validate` added."""
    images, masks, weights, config, squeeze = _validate(
        images, masks, weights, config, spatial_dims, batched
    )
    if not config.enabled:
        out = (images, masks) if weights is None else (images, masks, weights)
        return _squeezed(out, squeeze)
    seed = _as_seed(seed)
    if batched:
        seeds = _sample_seeds(seed, tf.shape(images)[0])
        out = _augment(images, masks, weights, seeds, config, int(spatial_dims))
    else:
        one = _augment(images[None], masks[None], None if weights is None else weights[None],
                       seed[None], config, int(spatial_dims))
        out = tuple(t[0] for t in one)
    return _squeezed(out, squeeze)


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
    return _checked_augment(images, masks, weights, seed, config, spatial_dims, batched=True)


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
    return _checked_augment(image, mask, weight, seed, config, spatial_dims, batched=False)
