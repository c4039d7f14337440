"""Test-time augmentation: (forward, inverse) transform pairs on ``(B, H, W, C)`` arrays.

The factories are those of :data:`zf_unet.registry.TTA_MODES` (``f() -> [(forward,
inverse), ...]``). A tile batch is transformed, predicted, transformed back and averaged;
``inverse(model(forward(x)))`` lines up with ``x`` pixel for pixel.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from zf_unet.registry import TTA_MODES

__all__ = ["Transform", "d4_transforms", "flip_transforms", "no_transforms", "tta_key",
           "tta_transforms"]

#: ``(forward, inverse)``: functions of ``(B, H, W, C)`` arrays (views where possible).
Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def no_transforms() -> list[Transform]:
    """``[identity]``: one prediction."""
    return [(lambda x: x, lambda y: y)]


def flip_transforms() -> list[Transform]:
    """Identity, horizontal, vertical and both flips (4 predictions)."""
    return no_transforms() + [
        (lambda x: x[:, :, ::-1], lambda y: y[:, :, ::-1]),  # horizontal
        (lambda x: x[:, ::-1], lambda y: y[:, ::-1]),  # vertical
        (lambda x: x[:, ::-1, ::-1], lambda y: y[:, ::-1, ::-1]),  # both (= rot180)
    ]


def d4_transforms() -> list[Transform]:
    """The 8 rotations / reflections of the square (needs square tiles)."""
    out: list[Transform] = []
    for k in range(4):
        out.append((lambda x, k=k: np.rot90(x, k, axes=(1, 2)),
                    lambda y, k=k: np.rot90(y, -k, axes=(1, 2))))
        out.append((lambda x, k=k: np.rot90(x[:, :, ::-1], k, axes=(1, 2)),
                    lambda y, k=k: np.rot90(y, -k, axes=(1, 2))[:, :, ::-1]))
    return out


def tta_key(tta: str | None) -> str:
    """The :data:`~zf_unet.registry.TTA_MODES` name of the public ``tta`` argument (``None``
    is ``"none"``); ``ValueError`` naming the accepted names for unknown ones."""
    return TTA_MODES.check("none" if tta is None else tta, "tta")


def tta_transforms(tta: str | None) -> list[Transform]:
    """The transforms of the public ``tta`` argument (``None``, ``"flips"``, ``"d4"``)."""
    return TTA_MODES[tta_key(tta)]()
