"""Pooling and kernel sizes per resolution level, for anisotropic images and volumes.

Electron-microscopy and many medical volumes are sampled much more coarsely along ``z`` than
in-plane (e.g. 50 nm sections imaged at 4.6 nm pixels). Pooling every axis by 2 at every level
would shrink ``z`` too early and a 3x3x3 kernel would mix sections that are ten pixels apart.
:func:`plan_pooling` gives the per-level pool and kernel sizes that nnU-Net's rule (Isensee
et al. 2021) derives from the voxel spacing; :func:`resolve_levels` checks (or fills in) the
``pool_sizes`` / ``kernel_sizes`` / ``spacing`` arguments of ``build_unet`` and
``build_unet_plus_plus``.

All spatial tuples are in the order of the tensor axes: ``(H, W)`` for images
``(B, H, W, C)``, ``(D, H, W)`` (``z, y, x``) for volumes ``(B, D, H, W, C)``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from zf_unet.checks import check_int, check_spacing
from zf_unet.errors import ConfigError

__all__ = ["plan_pooling", "resolve_levels", "default_levels", "axis_divisors"]

#: Relative slack when comparing spacings (``50 <= 2 * 25`` must hold despite rounding).
_RTOL = 1e-6

Sizes = list[tuple[int, ...]]


def plan_pooling(spacing: Sequence[float], depth: int) -> tuple[Sizes, Sizes]:
    """Pool and kernel sizes per level from the voxel ``spacing`` (nnU-Net's rule).

    Walking down the ``depth`` levels with the current spacing ``s`` (the input's at level 0)
    and ``m = min(s)``:

    - the kernel of level ``i`` is 3 on an axis with ``s[a] <= 2 * m``, else 1 (a coarse axis
      is not convolved across until the spacing is about isotropic);
    - between level ``i`` and ``i + 1`` (``i < depth - 1``) an axis is pooled by 2 if
      ``s[a] <= 2 * m``, else by 1; then ``s[a]`` is multiplied by its pool size.

    Worked example, ``spacing=(50, 4.6, 4.6)`` (z, y, x in nm), ``depth=5``::

        level  spacing (z, y, x)   2*min   kernel     pool to next
        0      (50, 4.6, 4.6)      9.2     (1, 3, 3)  (1, 2, 2)
        1      (50, 9.2, 9.2)      18.4    (1, 3, 3)  (1, 2, 2)
        2      (50, 18.4, 18.4)    36.8    (1, 3, 3)  (1, 2, 2)
        3      (50, 36.8, 36.8)    73.6    (3, 3, 3)  (2, 2, 2)
        4      (100, 73.6, 73.6)   147.2   (3, 3, 3)  -

    so ``plan_pooling((50, 4.6, 4.6), 5)`` returns
    ``([(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)],
    [(1, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)])``: z is pooled once, so a
    fixed D must be a multiple of 2 and H, W of 16. An isotropic spacing gives the classic
    U-Net (pool 2 and kernel 3 everywhere).

    Args:
        spacing: voxel size per spatial axis (any unit), 2 or 3 positive numbers.
        depth: resolution levels (>= 1).

    Returns:
        ``(pool_sizes, kernel_sizes)``: ``depth - 1`` and ``depth`` tuples of ints, one entry
        per spatial axis each.
    """
    if spacing is None:
        raise ConfigError("spacing must be a tuple of positive numbers, one per spatial axis "
                          "(e.g. (50, 4.6, 4.6) for z, y, x), got None")
    current = list(check_spacing(spacing))
    depth = check_int("depth", depth, 1)
    pools: Sizes = []
    kernels: Sizes = []
    for level in range(depth):
        limit = 2.0 * min(current) * (1.0 + _RTOL)
        fine = [s <= limit for s in current]
        kernels.append(tuple(3 if f else 1 for f in fine))
        if level < depth - 1:
            pool = tuple(2 if f else 1 for f in fine)
            pools.append(pool)
            current = [s * p for s, p in zip(current, pool)]
    return pools, kernels


def default_levels(depth: int, ndim: int) -> tuple[Sizes, Sizes]:
    """The classic U-Net: pool 2 and kernel 3 on each of ``ndim`` axes at every level."""
    return [(2,) * ndim] * (depth - 1), [(3,) * ndim] * depth


def _per_level(arg: str, value: Any, count: int, ndim: int, example: str) -> Sizes:
    """``value`` (an int, or ``count`` ints / ``ndim``-tuples of ints) as ``count`` tuples."""

    def entry(v: Any, where: str) -> tuple[int, ...]:
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            items: Sequence[Any] = (v,) * ndim
        elif isinstance(v, (list, tuple)):
            if len(v) != ndim:
                raise ValueError(
                    f"{arg}{where} has {len(v)} entries but the input has {ndim} spatial axes; "
                    f"give one size per axis, e.g. {example}, got {v!r}")
            items = v
        else:
            raise ValueError(f"{arg}{where} must be a positive integer or a tuple of {ndim} "
                             f"positive integers, got {v!r}")
        for s in items:
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 1:
                raise ValueError(f"{arg}{where} must hold positive integers, got {v!r}")
        return tuple(int(s) for s in items)

    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return [entry(value, "")] * count
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{arg} must be None, 'auto', an integer or a list of {count} per-level "
                         f"sizes (ints or {ndim}-tuples, e.g. {example}), got {value!r}")
    if len(value) != count:
        raise ValueError(f"{arg} has {len(value)} entries but needs {count} (one per level"
                         f"{' below the top' if arg == 'pool_sizes' else ''}), got {value!r}")
    return [entry(v, f"[{i}]") for i, v in enumerate(value)]


def resolve_levels(pool_sizes: Any, kernel_sizes: Any, spacing: Any, depth: int,
                   ndim: int) -> tuple[Sizes, Sizes]:
    """Check the ``pool_sizes`` / ``kernel_sizes`` / ``spacing`` builder arguments.

    Args:
        pool_sizes: ``None`` (2 on every axis), ``"auto"`` (:func:`plan_pooling` of
            ``spacing``), an int for every level, or ``depth - 1`` ints / ``ndim``-tuples.
        kernel_sizes: ``None`` (3 everywhere; ``"auto"`` when ``pool_sizes`` is ``"auto"``),
            ``"auto"``, an int, or ``depth`` ints / ``ndim``-tuples.
        spacing: ``None`` or ``ndim`` positive numbers; needed by ``"auto"``.
        depth: resolution levels (already checked, >= 1).
        ndim: spatial axes of the input (2 or 3).

    Returns:
        ``(pools, kernels)``: ``depth - 1`` and ``depth`` tuples of ``ndim`` ints.

    Raises:
        ValueError: naming the argument and what was expected.
    """
    if spacing is not None:
        spacing = check_spacing(spacing, "spacing", ndim)
    auto = None
    for arg, value in (("pool_sizes", pool_sizes), ("kernel_sizes", kernel_sizes)):
        if isinstance(value, str):
            if value != "auto":
                raise ValueError(f"{arg} must be None, 'auto' or per-level sizes, got {value!r}")
            if spacing is None:
                raise ValueError(f"{arg}='auto' needs spacing, the voxel size per spatial axis "
                                 f"(e.g. spacing=(50, 4.6, 4.6) for z, y, x)")
            auto = plan_pooling(spacing, depth)
    pools, kernels = default_levels(depth, ndim)
    ex3 = "[(1, 2, 2), (2, 2, 2)]" if ndim == 3 else "[(1, 2), (2, 2)]"
    exk = "[(1, 3, 3), (3, 3, 3)]" if ndim == 3 else "[(1, 3), (3, 3)]"
    if pool_sizes == "auto":
        pools = auto[0]  # type: ignore[index]
    elif pool_sizes is not None:
        pools = _per_level("pool_sizes", pool_sizes, depth - 1, ndim, ex3)
    if kernel_sizes == "auto" or (kernel_sizes is None and pool_sizes == "auto"):
        # pool_sizes="auto" alone plans the kernels too (1 on a coarse axis, as nnU-Net)
        kernels = auto[1]  # type: ignore[index]
    elif kernel_sizes is not None:
        kernels = _per_level("kernel_sizes", kernel_sizes, depth, ndim, exk)
    return pools, kernels


def axis_divisors(pools: Sizes, ndim: int) -> tuple[int, ...]:
    """Product of the pool sizes per spatial axis: a fixed input side along axis ``a`` must
    be a multiple of ``axis_divisors(pools)[a]`` (``padding="same"``)."""
    return tuple(math.prod(p[a] for p in pools) for a in range(ndim))
