""":class:`AugmentLayer`: the augmentation as a Keras layer (training only).

Registered as ``zf_unet>AugmentLayer`` (``keras.saving.register_keras_serializable(
package="zf_unet")``), the name it has had since it lived in :mod:`zf_unet.data.augment`, so
``.keras`` files holding it keep loading.
"""
from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np

from zf_unet.backend import lazy_tensorflow
from zf_unet.data.augment import augment_batch
from zf_unet.data.augment_config import Augment, check_spatial_dims, to_augment

tf = lazy_tensorflow("in-graph augmentation (tf.data)")

__all__ = ["AugmentLayer"]


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
        augment = to_augment(augment, "AugmentLayer: augment")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"AugmentLayer: seed must be an int or None, got {seed!r}")
        self.augment = augment
        self.spatial_dims = check_spatial_dims(spatial_dims, "AugmentLayer")
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
