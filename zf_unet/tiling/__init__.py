"""Overlap-tile arithmetic shared by ``predict_tiled`` (NumPy) and the serving export
(TensorFlow): the tile plan, blend windows and test-time augmentation transforms, for images
(2 spatial axes) and volumes (3 spatial axes: depth, height, width)."""
from zf_unet.models.geometry import ModelGeometry, model_geometry
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

__all__ = [
    "ModelGeometry",
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
    "model_geometry",
    "no_transforms",
    "tta_key",
    "tta_transforms",
    "window",
    "window_tf",
]
