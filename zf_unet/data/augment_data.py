"""Augmentation in ``tf.data`` pipelines: :func:`augment_dataset` maps
:func:`~zf_unet.data.augment.augment_batch` over a dataset with a fresh seed per batch, and
:func:`augment_margin` is the context to read around a training patch for it.
"""
from __future__ import annotations

import math

from zf_unet.backend import lazy_tensorflow
from zf_unet.data.augment import augment_batch, augment_sample
from zf_unet.data.augment_config import Augment, check_spatial_dims, is_int

tf = lazy_tensorflow("in-graph augmentation (tf.data)")

__all__ = ["augment_dataset", "augment_margin"]


def augment_margin(
    patch: int | tuple[int, ...], augment: Augment | None, spatial_dims: int = 2
) -> int | tuple[int, int, int]:
    """Context in px to read around a ``patch`` x ``patch`` training patch so that the
    elastic field (3 std) and the small rotation pull real pixels, not mirrored ones.

    With ``spatial_dims=3``: ``patch`` is an int (a cube) or ``(D, H, W)``, and the result is
    the per-axis margin ``(z, y, x)``. z gets only the elastic part, and none when the
    deformation is in-plane (:attr:`Augment.elastic_in_plane`); the rotation is in-plane.
    """
    spatial_dims = check_spatial_dims(spatial_dims, "augment_margin")
    if spatial_dims == 2:
        if augment is None or not augment.enabled:
            return 0
        m = 0
        if augment.elastic:
            m += int(math.ceil(3.0 * augment.elastic_std))
        if augment.rotation_degrees > 0:
            m += int(math.ceil(patch * 0.7072 * math.radians(augment.rotation_degrees)))
        return m
    sizes = (patch,) * 3 if is_int(patch) else tuple(patch)
    if len(sizes) != 3 or not all(is_int(n) and n >= 1 for n in sizes):
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
    spatial_dims = check_spatial_dims(spatial_dims, "augment_dataset")
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
