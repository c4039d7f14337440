"""Training data for 3-D models: volumes in memory, random 3-D patches, validation tiles.

Path of a volume: source (one folder of 2-D slices in stack order, multi-page TIFF / ``.npy``
volumes, or arrays) -> float32 ``(D, H, W, C)`` image in [0, 1] and uint8 ``(D, H, W)``
class-id mask -> optional border weight map (per section, SciPy) -> mirror padding -> random
``(d, h, w)`` window -> in-graph 3-D augmentation of image, mask and weight map with ONE
field (:mod:`zf_unet.data.augment`, ``spatial_dims=3``) -> center crop -> batches of
``(image (B, d, h, w, C), mask (B, d, h, w, 1)[, weight (B, d, h, w, 1)])`` float32.

Splitting: with one volume, ``val_indices`` (or ``val_fraction``) hold out z-sections (a
contiguous block, e.g. the last 4 of 20), so training and validation never share a section;
with several volumes they hold out whole volumes.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from zf_unet.data.augment_config import Augment
from zf_unet.data.augment_data import augment_dataset, augment_margin
from zf_unet.data.io import VOLUME_EXTENSIONS, read_volume_pair
from zf_unet.data.masks import AUTO_CLASSES, ClassValues, normalize_mask, resolve_num_classes
from zf_unet.data.pairing import PathLike, natural_key
from zf_unet.data.sample_checks import check_binary_for_weights, refuse_unlearnable
from zf_unet.data.splits import DataSplit, datasets_result, split_indices
from zf_unet.data.split_checks import check_val_masks, seen_ids
from zf_unet.data.tfdata import finish_pipeline
from zf_unet.data.weightmaps import volume_weight_map
from zf_unet.errors import DataError
from zf_unet.backend import lazy_tensorflow
from zf_unet.pixels import pad_reflect_axes, to_float_image

tf = lazy_tensorflow("volume tf.data pipelines")

__all__ = ["VolumeSplit", "load_volumes", "make_volume_datasets", "patch_shape",
           "section_split", "volume_paths"]

logger = logging.getLogger("zf_unet")


class VolumeSplit(DataSplit):
    """:class:`zf_unet.data.DataSplit` of volumes: ``images`` float32 ``(D, H, W, C)`` in
    [0, 1], ``masks`` uint8 ``(D, H, W)`` class ids, optional float32 ``(D, H, W)`` weight
    maps, a name each."""

    def sections(self, z: Sequence[int]) -> "VolumeSplit":
        """The z-sections ``z`` (a contiguous, sorted block) of the only volume."""
        sl = slice(z[0], z[-1] + 1)
        return VolumeSplit([self.images[0][sl]], [self.masks[0][sl]],
                           None if self.weights is None else [self.weights[0][sl]],
                           [f"{self.names[0]}[z={z[0]}..{z[-1]}]"], self.ignore_index,
                           self.num_classes)

    def planes(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """``(name, section (H, W, C), mask (H, W))`` of every z-section of every volume:
        statistics count volumes section by section, as 2-D images."""
        for name, image, mask in zip(self.names, self.images, self.masks):
            for z in range(image.shape[0]):
                yield f"{name}[z={z}]", image[z], mask[z]


def patch_shape(patch_size: Any) -> tuple[int, int, int] | None:
    """``(d, h, w)`` of a 3-D ``patch_size``: ``None``/0 (whole volumes), an int (a cube) or 3
    positive ints; a :class:`DataError` naming ``patch_size`` otherwise."""
    if patch_size is None or (isinstance(patch_size, int) and patch_size == 0):
        return None
    if isinstance(patch_size, (int, np.integer)) and not isinstance(patch_size, bool):
        sizes: tuple = (int(patch_size),) * 3
    elif isinstance(patch_size, (list, tuple)) and len(patch_size) == 3:
        sizes = tuple(patch_size)
    else:
        sizes = ()
    if len(sizes) != 3 or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                                  and n >= 1 for n in sizes):
        raise DataError(f"patch_size = {patch_size!r}: for volumes expected an int or "
                        "[depth, height, width] of positive integers, e.g. [8, 128, 128]")
    return tuple(int(n) for n in sizes)  # type: ignore[return-value]


# --------------------------------------------------------------------------- reading
def _is_volume_file(path: Path) -> bool:
    """A ``.npy`` file, or a TIFF with more than one page (a 2-D slice otherwise)."""
    if path.suffix.lower() == ".npy":
        return True
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages) > 1
    except Exception:  # noqa: BLE001 - read_volume names the broken file
        return False


def _volume_entries(sub: Path) -> dict[str, Path]:
    """``{name: path}`` of the volumes in ``sub``: multi-page TIFFs, ``.npy`` files and
    folders of slices (hidden entries skipped); empty when ``sub`` holds 2-D slices only."""
    found: dict[str, Path] = {}
    for entry in sorted(sub.iterdir(), key=lambda p: natural_key(p.stem)):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            key = entry.name
        elif entry.suffix.lower() in VOLUME_EXTENSIONS and _is_volume_file(entry):
            key = entry.stem
        else:
            continue
        if key in found:
            raise DataError(f"{entry} and {found[key]}: two volumes named {key!r} in {sub}; "
                            "expected one entry per name")
        found[key] = entry
    return found


def volume_paths(folder: PathLike) -> list[tuple[str, Path, Path]]:
    """``[(name, image_path, mask_path)]`` of the volumes in ``folder``'s ``images/`` and
    ``masks/``: one volume named after ``folder`` when ``images/`` holds 2-D slices (stack
    order = natural name order), else one per multi-page TIFF / ``.npy`` file / folder of
    slices, paired with the mask volume of the same name. :class:`DataError` naming the
    folder or the unpaired entry otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; for volumes expected a folder with "
                        "images/ and masks/ (2-D slices in stack order, or multi-page TIFF / "
                        ".npy volumes or folders of slices, paired by name)")
    images, masks = folder / "images", folder / "masks"
    for sub in (images, masks):
        if not sub.is_dir():
            raise DataError(f"{folder}: has no {sub.name}/ folder; expected images/ and masks/")
    image_vols = _volume_entries(images)
    if not image_vols:  # a folder of slices: one volume
        return [(folder.name, images, masks)]
    mask_vols = _volume_entries(masks)
    missing = [n for n in image_vols if n not in mask_vols]
    if missing:
        raise DataError(f"{image_vols[missing[0]]}: no mask volume named {missing[0]!r} in "
                        f"{masks}; expected one mask volume per image volume, same name")
    extra = [n for n in mask_vols if n not in image_vols]
    if extra:
        raise DataError(f"{mask_vols[extra[0]]}: no image volume named {extra[0]!r} in "
                        f"{images}; expected one image volume per mask volume")
    return [(n, image_vols[n], mask_vols[n]) for n in image_vols]


def _raw_volumes(source: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, image, raw mask)]`` of ``source`` (see :func:`load_volumes`)."""
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(
            isinstance(s, np.ndarray) for s in source):
        return [("volume", np.asarray(source[0]), np.asarray(source[1]))]
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(
            isinstance(s, (list, tuple)) for s in source):
        if len(source[0]) != len(source[1]):
            raise DataError(f"volumes: {len(source[0])} image volumes but {len(source[1])} "
                            "mask volumes; expected one mask volume per image volume")
        return [(f"volume {i}", np.asarray(a), np.asarray(b))
                for i, (a, b) in enumerate(zip(*source))]
    if isinstance(source, (tuple, list)) and len(source) == 2:
        image, mask = read_volume_pair(source[0], source[1])
        return [(Path(str(source[0])).name, image, mask)]
    return [(name,) + read_volume_pair(img, msk)
            for name, img, msk in volume_paths(str(source))]


def load_volumes(source: Any, *, num_classes: int | str | None = None,
                 convention: str = "auto", class_values: ClassValues | None = None,
                 ignore_index: int | None = None) -> VolumeSplit:
    """Read volumes into memory.

    Args:
        source: a folder with ``images/`` and ``masks/`` that hold either 2-D slices (one
            volume, natural name order = z) or multi-page TIFF / ``.npy`` volumes paired by
            name; an ``(image, mask)`` pair of volume paths (:func:`zf_unet.data.io.read_volume`)
            or of ``(D, H, W[, C])`` / ``(D, H, W)`` arrays; or a pair of lists of arrays.
        num_classes / convention / class_values / ignore_index: how masks become class ids,
            as for 2-D masks (:func:`zf_unet.data.masks.normalize_mask`, applied to the whole
            volume); ``num_classes="auto"`` infers K.

    Returns:
        A :class:`VolumeSplit` with ``num_classes`` resolved.
    """
    images, masks, names = [], [], []
    for name, image, mask in _raw_volumes(source):
        if image.ndim not in (3, 4) or mask.ndim not in (3, 4):
            raise DataError(f"{name}: image {image.shape} / mask {mask.shape}; expected a "
                            "(D, H, W[, C]) image volume and a (D, H, W) mask volume")
        image = image[..., None] if image.ndim == 3 else image
        if mask.shape[:3] != image.shape[:3]:
            raise DataError(f"{name}: mask volume {mask.shape[:3]} differs from the image "
                            f"volume {image.shape[:3]}; expected the same (D, H, W)")
        d, h, w = mask.shape[:3]
        flat = mask.reshape((d * h, w) + mask.shape[3:])  # one normalisation per volume
        ids = normalize_mask(flat, convention, num_classes, None, name,
                                class_values=class_values, ignore_index=ignore_index)
        images.append(to_float_image(image, name))
        masks.append(np.asarray(ids, np.uint8).reshape(d, h, w))
        names.append(name)
    k = resolve_num_classes(masks, num_classes, class_values, ignore_index)
    return VolumeSplit(images, masks, None, names, ignore_index, k)


def section_split(depth: int, val_fraction: float, val_indices: Sequence[int] | None
                  ) -> tuple[list[int], list[int]]:
    """``(training sections, validation sections)`` of a single volume of ``depth``
    sections: ``val_indices``, or the last ``round(depth * val_fraction)`` sections. The
    validation sections must be one contiguous block at the start or end of the volume, so
    the training sections stay one volume; :class:`DataError` otherwise."""
    if val_indices is not None:
        val = sorted({int(i) % depth for i in val_indices})
        if any(int(i) >= depth or int(i) < -depth for i in val_indices):
            raise DataError(f"val_indices: {list(val_indices)} out of range for the "
                            f"{depth} sections of the volume")
    else:
        n_val = int(round(depth * val_fraction))
        val = list(range(depth - n_val, depth)) if n_val else []
    if val and val != list(range(val[0], val[-1] + 1)):
        raise DataError(f"val_indices: {list(val_indices or [])} are not one contiguous block "
                        "of sections; with a single volume expected consecutive sections "
                        "(e.g. the last 4: [16, 17, 18, 19])")
    if val and val[0] != 0 and val[-1] != depth - 1:
        raise DataError(f"val_indices: sections {val[0]}..{val[-1]} lie inside the volume; "
                        "expected a block at its start or end, so the training sections stay "
                        "one volume")
    train = [z for z in range(depth) if z not in set(val)]
    if not train:
        raise DataError(f"no training sections left: {depth} sections, {len(val)} for "
                        "validation")
    return train, val


def _split(data: VolumeSplit, val_fraction: float, val_indices: Sequence[int] | None,
           seed: int) -> tuple[VolumeSplit, VolumeSplit]:
    if len(data) > 1:
        train_idx, val_idx = split_indices(len(data), val_fraction, val_indices, seed)
        return data.subset(train_idx), data.subset(val_idx)
    train, val = section_split(data.images[0].shape[0], val_fraction, val_indices)
    logger.info("volumes: sections %d..%d train, %s validate", train[0], train[-1],
                f"{val[0]}..{val[-1]}" if val else "none")
    out_val = data.sections(val) if val else VolumeSplit([], [], None, [], data.ignore_index,
                                                         data.num_classes)
    return data.sections(train), out_val


# --------------------------------------------------------------------------- datasets
def _refuse_deep_patch(patch: tuple[int, int, int], train: VolumeSplit) -> None:
    """A patch deeper than every training volume is refused, as a 2-D patch larger than
    every image is (:func:`zf_unet.data.refuse_unlearnable`): it would be mostly mirror
    padding. Raises :class:`DataError` naming ``data.patch_size`` and the deepest volume."""
    depths = [v.shape[0] for v in train.images]
    if not depths or patch[0] <= max(depths):
        return
    deepest = int(np.argmax(depths))
    name = train.names[deepest] if train.names else f"volume {deepest}"
    raise DataError(f"data.patch_size = {list(patch)}: depth {patch[0]} is larger than every "
                    f"training volume (the deepest, {name}, has {depths[deepest]} z-sections); "
                    f"expected a patch depth <= {depths[deepest]}, or 0 / None to train on "
                    "whole volumes")


def _weight_maps(split: VolumeSplit, w0: float, sigma: float) -> list[np.ndarray]:
    """Border weight maps (U-Net paper eq. 2) of every section of every volume."""
    out = []
    for name, m in zip(split.names, split.masks):
        check_binary_for_weights(m, split.ignore_index, name)
        out.append(np.asarray(volume_weight_map(m, "sections", w0=w0, sigma=sigma,
                                                ignore_index=split.ignore_index), np.float32))
    return out


def _padded(split: VolumeSplit, patch: tuple[int, int, int], margin: tuple[int, int, int]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Every volume mirror-padded to at least ``patch`` and by ``margin`` per axis, all to
    the largest size, stacked: ``(N, D', H', W', C)``, ``(N, D', H', W', 1)`` uint8, weights
    or None, and the ``(N, 3)`` int32 sizes a patch may start in."""
    sizes = [tuple(max(s, p) for s, p in zip(v.shape[:3], patch)) for v in split.images]
    big = tuple(max(s[a] for s in sizes) for a in range(3))
    imgs, msks, wts = [], [], []
    for i, img in enumerate(split.images):
        pads = []
        for a in range(3):
            short = max(0, patch[a] - img.shape[a])
            pads.append((margin[a] + short // 2,
                         margin[a] + short - short // 2 + big[a] - sizes[i][a]))
        imgs.append(pad_reflect_axes(img, pads))
        msks.append(pad_reflect_axes(split.masks[i][..., None], pads))
        if split.weights is not None:
            wts.append(pad_reflect_axes(split.weights[i][..., None], pads))
    return (np.stack(imgs).astype(np.float32), np.stack(msks).astype(np.uint8),
            np.stack(wts).astype(np.float32) if wts else None, np.asarray(sizes, np.int32))


def _train_patches(split: VolumeSplit, patch: tuple[int, int, int], batch_size: int,
                   aug: Augment | None, seed: int, samples_per_epoch: int, jit: bool
                   ) -> tf.data.Dataset:
    margin = augment_margin(patch, aug, spatial_dims=3) if aug is not None else (0, 0, 0)
    images, masks, weights, sizes = _padded(split, patch, margin)
    win = tuple(p + 2 * m for p, m in zip(patch, margin))
    n = len(split)
    t_img, t_msk = tf.constant(images), tf.constant(masks)
    t_wts = None if weights is None else tf.constant(weights)
    t_sizes = tf.constant(sizes)
    channels = images.shape[-1]

    def crop(index: tf.Tensor, s: tf.Tensor) -> tuple:
        u = tf.random.stateless_uniform([4], seed=tf.cast(s, tf.int64), dtype=tf.float32)
        i = tf.minimum(tf.cast(u[0] * n, tf.int32), n - 1)
        size = tf.gather(t_sizes, i)
        start = [tf.cast(u[a + 1] * tf.cast(size[a] - patch[a] + 1, tf.float32), tf.int32)
                 for a in range(3)]
        z, y, x = start

        def cut(t: tf.Tensor, c: int) -> tf.Tensor:
            out = t[i, z:z + win[0], y:y + win[1], x:x + win[2], :]
            out.set_shape(list(win) + [c])
            return out

        parts = [cut(t_img, channels), cut(t_msk, 1)]
        if t_wts is not None:
            parts.append(cut(t_wts, 1))
        return tuple(parts)

    def finish(*batch: tf.Tensor) -> tuple:
        return tuple(tf.cast(t[:, margin[0]:margin[0] + patch[0], margin[1]:margin[1] + patch[1],
                               margin[2]:margin[2] + patch[2], :], tf.float32) for t in batch)

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(
        2, drop_remainder=True)
    ds = tf.data.Dataset.zip((tf.data.Dataset.range(samples_per_epoch), seeds))
    ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    if aug is not None:
        ds = augment_dataset(ds, aug, seed, jit, spatial_dims=3)
    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)


def _tiles(split: VolumeSplit, tile: tuple[int, int, int] | None, batch_size: int
           ) -> tf.data.Dataset:
    """Whole volumes (``tile=None``), or non-overlapping ``tile`` blocks (mirror-padded at
    the far borders) for validation."""
    imgs, msks, wts = [], [], []
    for i, img in enumerate(split.images):
        parts = [img, split.masks[i][..., None].astype(np.float32)]
        if split.weights is not None:
            parts.append(split.weights[i][..., None])
        if tile is None:
            imgs.append(parts[0]), msks.append(parts[1])
            if len(parts) > 2:
                wts.append(parts[2])
            continue
        pads = [(0, (-img.shape[a]) % tile[a]) for a in range(3)]
        parts = [pad_reflect_axes(p, pads) for p in parts]
        d, h, w = parts[0].shape[:3]
        for z in range(0, d, tile[0]):
            for y in range(0, h, tile[1]):
                for x in range(0, w, tile[2]):
                    box = (slice(z, z + tile[0]), slice(y, y + tile[1]), slice(x, x + tile[2]))
                    imgs.append(parts[0][box]), msks.append(parts[1][box])
                    if len(parts) > 2:
                        wts.append(parts[2][box])
    if len({a.shape for a in imgs}) > 1 and batch_size > 1:
        raise DataError("volumes have different sizes; use data.patch_size (validation on "
                        "tiles) or batch_size = 1")
    arrays = [np.stack(imgs).astype(np.float32), np.stack(msks).astype(np.float32)]
    if wts:
        arrays.append(np.stack(wts).astype(np.float32))
    return tf.data.Dataset.from_tensor_slices(tuple(arrays)).batch(batch_size)


def make_volume_datasets(
    source: Any,
    *,
    patch_size: Any = None,
    batch_size: int = 2,
    val_fraction: float = 0.2,
    val_indices: Sequence[int] | None = None,
    seed: int = 0,
    augment: Augment | bool | None = None,
    spacing: Sequence[float] | None = None,
    border_weights: bool = False,
    w0: float = 10.0,
    sigma: float = 5.0,
    num_classes: int | str | None = None,
    convention: str = "auto",
    class_values: ClassValues | None = None,
    ignore_index: int | None = None,
    val_source: Any = None,
    samples_per_epoch: int | None = None,
    jit_compile: bool = True,
    with_info: bool = False,
) -> Any:
    """``(train_ds, val_ds)`` of volumes for a 3-D model's ``fit``: a
    :class:`zf_unet.data.Datasets` whose ``.info`` is the :class:`zf_unet.data.DataInfo` of
    the training volumes (counted section by section); ``with_info=True`` (deprecated)
    returns the old ``(train_ds, val_ds, info)`` tuple.

    Args:
        source / val_source: see :func:`load_volumes`.
        patch_size: ``(d, h, w)`` (or an int: a cube) random training patches; ``None``
            trains on whole volumes. Validation is scored on non-overlapping patch-sized
            blocks (whole volumes without a patch size).
        val_fraction / val_indices: with one volume, z-sections held out (a contiguous block
            at the start or end); with several, whole volumes (see :func:`zf_unet.data.splits.split_indices`).
        augment: an :class:`Augment` (``True``: defaults) applied with ``spatial_dims=3``;
            its ``spacing`` defaults to ``spacing`` (in-plane elastic deformation on
            anisotropic data).
        spacing: voxel size ``(z, y, x)``.
        border_weights: per-section border weight maps (binary masks) as a third element.
        samples_per_epoch: patches per epoch (default: the non-overlapping patches that fit).

    Yields:
        ``(image (B, d, h, w, C), mask (B, d, h, w, 1)[, weight (B, d, h, w, 1)])`` float32.
    """
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    patch = patch_shape(patch_size)
    aug = Augment() if augment is True else (augment or None)
    if aug is not None and not isinstance(aug, Augment):
        raise DataError(f"augment must be an Augment, True, False or None; got {augment!r}")
    if aug is not None and not aug.enabled:
        aug = None
    if aug is not None and aug.spacing is None and spacing is not None:
        aug = dataclasses.replace(aug, spacing=tuple(float(s) for s in spacing))
    if val_source is not None and val_indices is not None:
        raise DataError("val_indices and val_source: expected one of them")
    read = dict(num_classes=num_classes, convention=convention, class_values=class_values,
                ignore_index=ignore_index)
    data = load_volumes(source, **read)
    if val_source is not None:
        val = load_volumes(val_source, **read)
        train = data
    else:
        train, val = _split(data, val_fraction, val_indices, seed)
    k = resolve_num_classes(train.masks + val.masks, num_classes, class_values, ignore_index) \
        if num_classes == AUTO_CLASSES else data.num_classes
    for one in (train, val):
        one.num_classes = k
    present: set[int] = set()
    for m in train.masks:
        present.update(int(v) for v in np.unique(m))
    present.discard(-1 if ignore_index is None else int(ignore_index))
    refuse_unlearnable(present, len(train), [v.shape[1:3] for v in train.images],
                       None if patch is None else max(patch[1:]), ignore_index)
    if patch is not None:
        _refuse_deep_patch(patch, train)
    check_val_masks(seen_ids(train.masks, ignore_index), seen_ids(val.masks, ignore_index),
                    train_scaled=0, val_scaled=0, n_train=len(train), n_val=len(val),
                    auto_classes=num_classes == AUTO_CLASSES,
                    val_source=val_source is not None)
    if border_weights:
        for one in (train, val):
            one.weights = _weight_maps(one, w0, sigma) if len(one) else None
    logger.info("make_volume_datasets: %d training / %d validation volume(s)", len(train),
                len(val))
    if patch is None:
        train_ds = _tiles(train, None, batch_size)
        if aug is not None:
            train_ds = augment_dataset(train_ds, aug, seed, jit_compile, spatial_dims=3)
    else:
        if samples_per_epoch is None:
            samples_per_epoch = sum(max(1, math.prod(s // p for s, p in zip(v.shape[:3], patch)))
                                    for v in train.images)
        samples_per_epoch = max(int(samples_per_epoch), int(batch_size))
        train_ds = _train_patches(train, patch, int(batch_size), aug, seed, samples_per_epoch,
                                  jit_compile)
    train_ds = finish_pipeline(train_ds)
    val_ds = finish_pipeline(_tiles(val, patch, int(batch_size))) if len(val) else None
    return datasets_result(train_ds, val_ds, train.info(len(val)), with_info,
                           "make_volume_datasets")
