"""Test-time augmentation: (forward, inverse) transform pairs on ``(B, *spatial, C)`` arrays.

The factories are those of :data:`zf_unet.registry.TTA_MODES` (``f() -> [(forward,
inverse), ...]`` for images ``(B, H, W, C)``; ``f(3)`` for volumes ``(B, D, H, W, C)``). A
tile batch is transformed, predicted, transformed back and averaged;
``inverse(model(forward(x)))`` lines up with ``x`` pixel for pixel.

Volumes: ``"flips"`` flips every subset of the depth, height and width axes (8
predictions); ``"d4"`` applies the 8 in-plane rotations / reflections of the (H, W) square,
each with and without a depth flip (16 predictions). Depth is never rotated into the plane
(voxels are usually anisotropic).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from zf_unet.registry import TTA_MODES

__all__ = ["Transform", "d4_transforms", "flip_transforms", "no_transforms", "tta_key",
           "tta_transforms"]

#: ``(forward, inverse)``: functions of ``(B, *spatial, C)`` arrays (views where possible).
Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _flip(axes: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """Reverse the array ``axes`` (a view; its own inverse)."""
    def f(x: np.ndarray) -> np.ndarray:
        index = [slice(None)] * x.ndim
        for a in axes:
            index[a] = slice(None, None, -1)
        return x[tuple(index)]
    return f


def _with_depth_flips(plane: list[Transform], spatial_axes: int) -> list[Transform]:
    """``plane`` (transforms of the last two spatial axes), then each of them after a flip of
    the depth axis (array axis 1) for volumes."""
    if spatial_axes == 2:
        return plane
    if spatial_axes != 3:
        raise ValueError(f"test-time augmentation needs 2 or 3 spatial axes, got {spatial_axes}")
    zflip = _flip((1,))
    out = list(plane)
    for fwd, inv in plane:
        out.append((lambda x, fwd=fwd: fwd(zflip(x)), lambda y, inv=inv: zflip(inv(y))))
    return out


def no_transforms(spatial_axes: int = 2) -> list[Transform]:
    """``[identity]``: one prediction."""
    return [(lambda x: x, lambda y: y)]


def flip_transforms(spatial_axes: int = 2) -> list[Transform]:
    """Identity, horizontal, vertical and both flips (4 predictions); for volumes the same
    again with a depth flip (8)."""
    ya, xa = spatial_axes - 1, spatial_axes  # array axes of height and width
    plane = no_transforms() + [
        (_flip((xa,)), _flip((xa,))),  # horizontal
        (_flip((ya,)), _flip((ya,))),  # vertical
        (_flip((ya, xa)), _flip((ya, xa))),  # both (= rot180)
    ]
    return _with_depth_flips(plane, spatial_axes)


def d4_transforms(spatial_axes: int = 2) -> list[Transform]:
    """The 8 rotations / reflections of the square (needs square tiles in the (H, W) plane);
    for volumes each also with a depth flip (16)."""
    ya, xa = spatial_axes - 1, spatial_axes
    hflip = _flip((xa,))
    plane: list[Transform] = []
    for k in range(4):
        plane.append((lambda x, k=k: np.rot90(x, k, axes=(ya, xa)),
                      lambda y, k=k: np.rot90(y, -k, axes=(ya, xa))))
        plane.append((lambda x, k=k: np.rot90(hflip(x), k, axes=(ya, xa)),
                      lambda y, k=k: hflip(np.rot90(y, -k, axes=(ya, xa)))))
    return _with_depth_flips(plane, spatial_axes)


def tta_key(tta: str | None) -> str:
    """The :data:`~zf_unet.registry.TTA_MODES` name of the public ``tta`` argument (``None``
    is ``"none"``); ``ValueError`` naming the accepted names for unknown ones."""
    return TTA_MODES.check("none" if tta is None else tta, "tta")


def tta_transforms(tta: str | None, spatial_axes: int = 2) -> list[Transform]:
    """The transforms of the public ``tta`` argument (``None``, ``"flips"``, ``"d4"``) for
    arrays with ``spatial_axes`` spatial axes (2: images, 3: volumes)."""
    factory = TTA_MODES[tta_key(tta)]
    return factory() if spatial_axes == 2 else factory(spatial_axes)
