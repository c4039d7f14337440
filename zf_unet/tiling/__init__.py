"""Overlap-tile arithmetic shared by ``predict_tiled`` (NumPy) and the serving export
(TensorFlow): the tile plan, blend windows and test-time augmentation transforms, for images
(2 spatial axes) and volumes (3 spatial axes: depth, height, width).

A model's geometry (``ModelGeometry``, ``model_geometry``) lives in :mod:`zf_unet.models`;
``zf_unet.tiling.ModelGeometry`` / ``model_geometry`` still work for this release, with a
``DeprecationWarning``."""
from zf_unet.deprecation import moved_names
from zf_unet.tiling.plan import TilePlan
from zf_unet.tiling.tta import (
    Transform,
    d4_transforms,
    flip_transforms,
    no_transforms,
    tta_key,
    tta_transforms,
)
from zf_unet.tiling.windows import (
    flat_window,
    flat_window_tf,
    gaussian_window,
    gaussian_window_tf,
    linear_window,
    linear_window_tf,
    window,
    window_tf,
)

__getattr__ = moved_names(__name__, {"ModelGeometry": "zf_unet.models.geometry",
                                     "model_geometry": "zf_unet.models.geometry"})

__all__ = [
    "TilePlan",
    "Transform",
    "d4_transforms",
    "flat_window",
    "flat_window_tf",
    "flip_transforms",
    "gaussian_window",
    "gaussian_window_tf",
    "linear_window",
    "linear_window_tf",
    "no_transforms",
    "tta_key",
    "tta_transforms",
    "window",
    "window_tf",
]
