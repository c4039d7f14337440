"""The augmentation settings: :class:`Augment`, also the ``[data.augment]`` table of a config.

Plain Python and NumPy (no TensorFlow, no Keras), so that reading a training config
(:mod:`zf_unet.config`) imports nothing heavy. The transforms are in
:mod:`zf_unet.data.augment`; the limits of the numbers in :data:`zf_unet.checks.LIMITS`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from zf_unet.checks import check_limit, check_spacing

__all__ = ["ANISOTROPY_LIMIT", "SPATIAL_DIMS", "Augment", "check_spatial_dims", "is_int",
           "to_augment"]

#: Spatial axes the augmentation handles: images (2) and volumes (3).
SPATIAL_DIMS = (2, 3)

#: z spacing above this multiple of the (coarsest) in-plane spacing: in-plane elastic only.
ANISOTROPY_LIMIT = 2.0

#: The numbers of :class:`Augment`, checked against ``LIMITS["data.augment.<name>"]``.
_NUMBERS = ("elastic_grid", "elastic_std", "rotation_degrees", "brightness", "contrast", "gamma")


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
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                "Augment: interpolation must be 'bilinear' or 'bicubic', "
                f"got {self.interpolation!r}"
            )
        for name in _NUMBERS:
            value = check_limit(f"Augment: {name}", getattr(self, name), f"data.augment.{name}")
            object.__setattr__(self, name, value)
        spacing = check_spacing(self.spacing, "Augment: spacing", ndim=3)
        object.__setattr__(self, "spacing", spacing)

    @property
    def elastic_in_plane(self) -> bool:
        """True when volumes get in-plane elastic deformation only (z spacing is coarse:
        ``spacing[0] > 2 * max(spacing[1], spacing[2])``)."""
        if self.spacing is None:
            return False
        z, y, x = self.spacing
        return z > ANISOTROPY_LIMIT * max(y, x)

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


def to_augment(value: Augment | Mapping[str, Any] | None, name: str) -> Augment:
    """``value`` as an :class:`Augment`: ``None`` -> the paper's defaults, a dict ->
    :meth:`Augment.from_config`; anything else raises ``ValueError`` naming ``name``."""
    if value is None:
        return Augment()
    if isinstance(value, Mapping):
        return Augment.from_config(value)
    if not isinstance(value, Augment):
        raise ValueError(f"{name} must be an Augment or its dict, got {type(value).__name__}")
    return value


def is_int(value: Any) -> bool:
    """True for a Python or NumPy integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_spatial_dims(spatial_dims: Any, where: str) -> int:
    """``spatial_dims`` as an int, 2 (images) or 3 (volumes), else ``ValueError`` naming
    ``where``."""
    if not is_int(spatial_dims) or int(spatial_dims) not in SPATIAL_DIMS:
        raise ValueError(f"{where}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)
