"""``make_datasets``: training and validation ``tf.data`` pipelines for ``model.fit``.

Path of a sample: source (folder / TIFF stacks / arrays / TFDS) -> float32 image in [0, 1] and
class-id mask -> optional border weight map (computed once per image, SciPy) -> mirror
padding -> random patch window -> in-graph augmentation of image, mask and weight map with ONE
field (batched, XLA-compiled) -> center crop -> ``(image, mask[, weight])`` batches.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow as tf

from zf_unet.data import io
from zf_unet.data.augment import Augment, augment_batch
from zf_unet.data.imageops import pad_reflect, unit_divisor
from zf_unet.data.weightmaps import border_weight_map, cached_border_weight_map
from zf_unet.errors import DataError

logger = logging.getLogger("zf_unet")

#: A data source string that names a TensorFlow Datasets data set: ``"tfds:NAME"``.
TFDS_PREFIX = "tfds:"

__all__ = ["DataInfo", "DataSplit", "TFDS_PREFIX", "check_learnable", "infer_num_classes",
           "class_pixel_counts", "load_source", "make_datasets", "median_frequency_weights",
           "split_indices", "to_float_image"]


def to_float_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """``(H, W, C)`` image -> float32 in [0, 1]: integers are divided by their dtype's maximum,
    floats are kept (they must already lie in [0, 1])."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.integer):
        return (image.astype(np.float32) / unit_divisor(image.dtype, name, signed=True)
                ).astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        out = image.astype(np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{name}: contains NaN or Inf; expected finite values in [0, 1]")
        io.check_float_range(out, name)
        return out
    raise DataError(f"{name}: dtype {image.dtype} is not an image type (expected uint8/16 or float)")


@dataclass
class DataSplit:
    """In-memory samples: lists of ``(H, W, C)`` float32 images, ``(H, W)`` uint8 masks and
    optional ``(H, W)`` float32 weight maps. ``ignore_index``: the mask value of void pixels
    (``None``: none); ``num_classes``: K as the model sees it (1 = binary), when known."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    weights: list[np.ndarray] | None = None
    names: list[str] = field(default_factory=list)
    ignore_index: int | None = None
    num_classes: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: Sequence[int]) -> "DataSplit":
        return DataSplit([self.images[i] for i in idx], [self.masks[i] for i in idx],
                         None if self.weights is None else [self.weights[i] for i in idx],
                         [self.names[i] for i in idx] if self.names else [],
                         self.ignore_index, self.num_classes)


@dataclass
class DataInfo:
    """Statistics of the training data, returned by ``make_datasets(..., with_info=True)``.

    Attributes:
        num_classes: K for the model (1 = binary, ids 0/1).
        channels: C of the images.
        class_pixels: int64 ``(max(K, 2),)``: training-mask pixels per class (void excluded).
        class_image_pixels: int64 ``(max(K, 2),)``: labelled (non-void) pixels of the
            training images in which each class appears (for median-frequency balancing).
        mean / std: float32 ``(C,)``: per-channel mean and standard deviation of the
            training images in [0, 1] scale (all pixels, before patching/augmentation).
        ignore_index: mask value of void pixels, or ``None``.
        num_train / num_val: samples (images or slices) in each split.
    """

    num_classes: int
    channels: int
    class_pixels: np.ndarray
    class_image_pixels: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    ignore_index: int | None
    num_train: int
    num_val: int


def class_pixel_counts(masks: Iterable[Any], num_classes: int,
                       ignore_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixel counts for median-frequency balancing.

    Args:
        masks: ``(H, W)`` / ``(H, W, 1)`` masks, or stacks ``(N, H, W[, 1])`` (each slice an
            image): class ids 0..K-1, or for ``num_classes=1`` binary masks (> 0.5 = 1).
        num_classes: the model's K (1 counts background and foreground: 2 classes).
        ignore_index: mask value of pixels to leave out.

    Returns:
        ``(class_pixels, class_image_pixels)``, int64 ``(max(K, 2),)``: the pixels of each
        class, and the (non-ignored) pixels of the images in which the class appears.
    """
    k = max(2, int(num_classes))
    pixels, image_pixels = np.zeros(k, np.int64), np.zeros(k, np.int64)
    for mask in masks:
        m = np.asarray(mask)
        if m.ndim >= 3 and m.shape[-1] == 1:
            m = m[..., 0]
        stack = m[None] if m.ndim == 2 else m
        if stack.ndim != 3:
            raise ValueError(f"masks must be (H, W), (H, W, 1) or (N, H, W[, 1]), got shape "
                             f"{np.asarray(mask).shape}")
        for image in stack:
            keep = np.ones(image.shape, bool) if ignore_index is None else image != ignore_index
            values = image[keep]
            ids = (values > 0.5).astype(np.int64) if num_classes == 1 else values.astype(np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= k or
                             (num_classes > 1 and np.any(values != ids))):
                raise ValueError(f"mask values must be class ids in 0..{k - 1} (or "
                                 f"ignore_index={ignore_index}), got {np.unique(values)[:10]}")
            counts = np.bincount(ids, minlength=k)
            pixels += counts
            image_pixels += np.where(counts > 0, ids.size, 0)
    return pixels, image_pixels


def median_frequency_weights(class_pixels: Sequence[float],
                             class_image_pixels: Sequence[float]) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus 2015): ``w_c = median(freq) / freq_c`` with
    ``freq_c = class_pixels_c / class_image_pixels_c`` (pixels of class c over the pixels of
    the images in which c appears; ``class_pixel_counts`` gives both). The median is over the
    classes seen; classes never seen get weight 1."""
    pixels = np.asarray(class_pixels, np.float64)
    image_pixels = np.asarray(class_image_pixels, np.float64)
    if pixels.shape != image_pixels.shape or pixels.ndim != 1:
        raise ValueError(f"class_pixels and class_image_pixels must be 1-D of equal length, got "
                         f"shapes {pixels.shape} and {image_pixels.shape}")
    seen = (pixels > 0) & (image_pixels > 0)
    if not seen.any():
        return [1.0] * pixels.size
    freq = np.where(seen, pixels / np.where(seen, image_pixels, 1.0), 0.0)
    median = float(np.median(freq[seen]))
    return [float(median / f) if s else 1.0 for f, s in zip(freq, seen)]


def load_source(source: Any, *, num_classes: int | str | None = None, convention: str = "auto",
                palette: Any = None, tfds_kwargs: dict | None = None,
                class_values: io.ClassValues | None = None,
                ignore_index: int | None = None) -> DataSplit:
    """Read any supported source into memory.

    ``source`` is one of: a folder with ``images/`` and ``masks/``; a pair of multi-page TIFF
    paths ``(volume.tif, labels.tif)``; a pair of arrays ``(images, masks)``; or a TFDS name
    written ``"tfds:NAME"`` (e.g. ``"tfds:oxford_iiit_pet"``). Any other string is a path: a
    missing one is a :class:`DataError` ("no such folder"), never a TFDS look-up.

    ``num_classes``: K (1 = binary), ``None`` (the binary conventions, or the number of
    ``class_values`` entries), or ``"auto"`` (inferred by :func:`infer_num_classes`, logged).
    ``class_values`` / ``ignore_index``: see :func:`zf_unet.data.io.normalize_mask`. The
    returned split carries ``num_classes`` and ``ignore_index``.
    """
    data = _load(source, num_classes, convention, palette, tfds_kwargs, class_values,
                 ignore_index)
    data.num_classes = _resolve_num_classes([data], num_classes, class_values, ignore_index)
    return data


def _resolve_num_classes(splits: Sequence[DataSplit], num_classes: int | str | None,
                         class_values: io.ClassValues | None,
                         ignore_index: int | None) -> int:
    if num_classes == io.AUTO_CLASSES:
        return infer_num_classes([m for s in splits for m in s.masks], ignore_index,
                                 class_values)
    if num_classes is not None:
        return int(num_classes)
    if class_values is not None:
        return 1 if len(class_values) == 2 else len(class_values)
    return 1


def infer_num_classes(masks: Sequence[np.ndarray], ignore_index: int | None = None,
                      class_values: io.ClassValues | None = None) -> int:
    """K for the model from normalised ``(H, W)`` uint8 masks (1 = binary); logs why (INFO).

    With ``class_values``: its number of entries (2 entries -> 1). Otherwise the highest class
    id seen (void excluded) + 1, where ids {0, 1} (the {0,1}/{0,255} conventions) -> 1.

    Raises:
        DataError: a class id at or above ``ignore_index``, or no labelled pixel at all.
    """
    if class_values is not None:
        k = len(class_values)
        out = 1 if k == 2 else k
        logger.info("num_classes='auto': class_values lists %d classes -> num_classes=%d%s",
                    k, out, " (binary)" if out == 1 else "")
        return out
    seen = np.zeros(256, bool)
    for m in masks:
        seen[np.unique(np.asarray(m, np.uint8))] = True
    if ignore_index is not None:
        seen[int(ignore_index)] = False
    ids = np.flatnonzero(seen)
    if ids.size == 0:
        raise DataError("num_classes='auto': every mask pixel is void (ignore_index="
                        f"{ignore_index}); expected labelled pixels to infer the classes from")
    top = int(ids[-1])
    if ignore_index is not None and top > int(ignore_index):
        raise DataError(f"num_classes='auto': masks hold class id {top}, above ignore_index="
                        f"{ignore_index}; expected class ids 0..K-1 below the void value")
    if top <= 1:
        logger.info("num_classes='auto': masks hold class ids %s after the {0, 1} / {0, 255} "
                    "conventions -> num_classes=1 (binary)", ids.tolist())
        return 1
    missing = sorted(set(range(top + 1)) - set(ids.tolist()))
    logger.info("num_classes='auto': masks hold class ids 0..%d%s -> num_classes=%d", top,
                f" (ids {missing} never appear)" if missing else "", top + 1)
    return top + 1


def _load(source: Any, num_classes: int | str | None, convention: str, palette: Any,
          tfds_kwargs: dict | None, class_values: io.ClassValues | None,
          ignore_index: int | None) -> DataSplit:
    """:func:`load_source` without resolving ``num_classes``."""
    kw = dict(convention=convention, num_classes=num_classes, palette=palette,
              class_values=class_values, ignore_index=ignore_index)
    names: list[str] = []
    if isinstance(source, (tuple, list)) and len(source) == 2:
        a, b = source
        if isinstance(a, (str, Path)) and isinstance(b, (str, Path)):
            images, masks = io.load_tiff_stacks(a, b, **kw)
            names = [f"{Path(a).name}[{i}]" for i in range(len(images))]
        else:
            images, masks = io.load_arrays(a, b, **kw)
            names = [f"array[{i}]" for i in range(len(images))]
    elif isinstance(source, Path) or (isinstance(source, str)
                                      and not source.startswith(TFDS_PREFIX)):
        if not Path(source).exists():
            raise DataError(f"{source}: no such folder; expected a folder with images/ and "
                            f"masks/ (or {TFDS_PREFIX}NAME for a TensorFlow Datasets data set)")
        if not Path(source).is_dir():
            raise DataError(f"{source}: not a folder; expected a folder with images/ and masks/")
        pairs = io.find_pairs(source)
        images, masks = io.load_folder(source, **kw)
        names = [p[0].name for p in pairs]
    elif isinstance(source, str):
        from zf_unet.data.tfds_sources import load_tfds

        name = source[len(TFDS_PREFIX):]
        ds = load_tfds(name, **(tfds_kwargs or {}))
        images, masks = [], []
        for img, msk in ds.as_numpy_iterator():
            images.append(img)
            masks.append(msk[..., 0])
        if not images:
            raise DataError(f"TFDS dataset {name!r}: no examples")
        if class_values is not None:
            images, masks = io.load_arrays(images, masks, **kw)
        names = [f"{name}[{i}]" for i in range(len(images))]
    else:
        raise DataError(f"source: expected a folder, (volume.tif, labels.tif), (images, masks) "
                        f"arrays or '{TFDS_PREFIX}NAME'; got {type(source).__name__}")
    floats = [to_float_image(img, names[i] if names else f"image {i}")
              for i, img in enumerate(images)]
    return DataSplit(floats, [np.asarray(m, np.uint8) for m in masks], None, names,
                     ignore_index)


def check_learnable(data: DataSplit, patch_size: int | None = None) -> None:
    """Refuse data a model cannot learn from, as ``zf-unet check-data`` reports it: masks that
    all hold one class only (e.g. all-zero masks; void pixels, ``data.ignore_index``, are no
    class), and a ``patch_size`` larger than every image (training would see mostly mirror
    padding). Raises :class:`DataError`."""
    present: set[int] = set()
    for m in data.masks:
        present.update(int(v) for v in np.unique(m))
        present.discard(-1 if data.ignore_index is None else int(data.ignore_index))
        if len(present) > 1:
            break
    if not present and data.masks:
        raise DataError(f"every mask pixel of the {len(data)} sample(s) is void (ignore_index="
                        f"{data.ignore_index}): there is nothing to learn; expected labelled "
                        "pixels of at least two classes")
    if len(present) == 1:
        (only,) = present
        raise DataError(f"every mask of the {len(data)} sample(s) holds only class {only}"
                        f"{' (all-zero masks)' if only == 0 else ''}: there is nothing to learn; "
                        "expected masks with at least two classes (check the masks with "
                        "zf-unet check-data)")
    if patch_size and data.images:
        largest = max(data.images, key=lambda img: min(img.shape[:2]))
        if min(largest.shape[:2]) < int(patch_size):
            h, w = largest.shape[:2]
            raise DataError(f"patch_size = {int(patch_size)} is larger than every image (the "
                            f"largest is {w}x{h}, width x height); expected a patch size <= "
                            f"{min(h, w)}, or 0 / None to train on whole images")


def split_indices(n: int, val_fraction: float, val_indices: Sequence[int] | None,
                  seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, validation indices)`` of ``n`` samples: ``val_indices``, or a seeded
    random ``val_fraction`` of them."""
    if val_indices is not None:
        val = sorted({int(i) % n for i in val_indices})
        if any(int(i) >= n or int(i) < -n for i in val_indices):
            raise DataError(f"val_indices: {list(val_indices)} out of range for {n} samples")
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n_val = int(round(n * val_fraction))
        if val_fraction > 0 and n > 1:
            n_val = max(1, n_val)
        perm = np.random.default_rng(seed).permutation(n)
        val = sorted(int(i) for i in perm[:n_val])
    train = [i for i in range(n) if i not in set(val)]
    if not train:
        raise DataError(f"no training samples left: {n} samples, {len(val)} for validation")
    return train, val


def _weight_maps(split: DataSplit, cache_dir: str | Path | None, w0: float,
                 sigma: float) -> list[np.ndarray]:
    maps = []
    void = split.ignore_index
    for i, m in enumerate(split.masks):
        labelled = m if void is None else m[m != void]
        if labelled.size and labelled.max() > 1:
            raise DataError(f"border_weights: {split.names[i] if split.names else i} has "
                            f"classes {sorted(np.unique(labelled).tolist())}; border weight maps "
                            "need binary masks (1 = cell interior)")
        if cache_dir is not None:
            maps.append(cached_border_weight_map(m, cache_dir=cache_dir, w0=w0, sigma=sigma,
                                                 ignore_index=void))
        else:
            maps.append(border_weight_map(m, w0=w0, sigma=sigma, ignore_index=void))
    return maps


def _data_info(train: DataSplit, num_val: int) -> DataInfo:
    """Class counts and image statistics of ``train`` (see :class:`DataInfo`)."""
    k = int(train.num_classes or 1)
    pixels, image_pixels = class_pixel_counts(train.masks, k, train.ignore_index)
    channels = int(train.images[0].shape[2])
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    count = 0
    for img in train.images:
        flat = img.reshape(-1, channels).astype(np.float64)
        total += flat.sum(axis=0)
        total_sq += np.square(flat).sum(axis=0)
        count += flat.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return DataInfo(num_classes=k, channels=channels, class_pixels=pixels,
                    class_image_pixels=image_pixels, mean=mean.astype(np.float32),
                    std=std.astype(np.float32), ignore_index=train.ignore_index,
                    num_train=len(train), num_val=num_val)


def _margin(patch: int, aug: Augment | None) -> int:
    """Context in px around a patch so that augmentation pulls real pixels, not mirrors."""
    if aug is None:
        return 0
    m = 0
    if aug.elastic:
        m += int(math.ceil(3.0 * aug.elastic_std))
    if aug.rotation_degrees > 0:
        m += int(math.ceil(patch * 0.7072 * math.radians(aug.rotation_degrees)))
    return m


def _stack_padded(split: DataSplit, patch: int, margin: int) -> tuple[np.ndarray, ...]:
    """Mirror-pad every sample to at least ``patch`` and by ``margin``; stack to (N, H, W, .)."""
    hs = [max(img.shape[0], patch) for img in split.images]
    ws = [max(img.shape[1], patch) for img in split.images]
    H, W = max(hs), max(ws)
    imgs, msks, wts, sizes = [], [], [], []
    for i, img in enumerate(split.images):
        h, w = img.shape[:2]
        ph, pw = max(0, patch - h), max(0, patch - w)
        t, lft = margin + ph // 2, margin + pw // 2
        b, r = margin + ph - ph // 2 + (H - max(h, patch)), margin + pw - pw // 2 + (W - max(w, patch))
        imgs.append(pad_reflect(img, t, b, lft, r))
        msks.append(pad_reflect(split.masks[i][..., None], t, b, lft, r))
        if split.weights is not None:
            wts.append(pad_reflect(split.weights[i][..., None], t, b, lft, r))
        sizes.append((max(h, patch), max(w, patch)))
    out = (np.stack(imgs).astype(np.float32), np.stack(msks).astype(np.uint8),
           np.stack(wts).astype(np.float32) if wts else None, np.asarray(sizes, np.int32))
    return out


def _train_patches(split: DataSplit, patch: int, batch_size: int, aug: Augment | None,
                   seed: int, samples_per_epoch: int, jit: bool) -> tf.data.Dataset:
    margin = _margin(patch, aug)
    images, masks, weights, sizes = _stack_padded(split, patch, margin)
    win = patch + 2 * margin
    n = len(split)
    t_img, t_msk = tf.constant(images), tf.constant(masks)
    t_wts = None if weights is None else tf.constant(weights)
    t_sizes = tf.constant(sizes)

    def crop(index: tf.Tensor, s: tf.Tensor) -> tuple:
        s = tf.cast(s, tf.int64)
        u = tf.random.stateless_uniform([3], seed=s, dtype=tf.float32)
        i = tf.minimum(tf.cast(u[0] * n, tf.int32), n - 1)
        hw = tf.gather(t_sizes, i)
        y = tf.cast(u[1] * tf.cast(hw[0] - patch + 1, tf.float32), tf.int32)
        x = tf.cast(u[2] * tf.cast(hw[1] - patch + 1, tf.float32), tf.int32)
        img = t_img[i, y:y + win, x:x + win, :]
        msk = t_msk[i, y:y + win, x:x + win, :]
        img.set_shape([win, win, images.shape[-1]])
        msk.set_shape([win, win, 1])
        if t_wts is None:
            return img, msk
        wt = t_wts[i, y:y + win, x:x + win, :]
        wt.set_shape([win, win, 1])
        return img, msk, wt

    def finish(*batch: tf.Tensor) -> tuple:
        out = []
        for t in batch:
            t = t[:, margin:margin + patch, margin:margin + patch, :]
            out.append(tf.cast(t, tf.float32))
        return tuple(out)

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(
        2, drop_remainder=True)
    ds = tf.data.Dataset.range(samples_per_epoch)
    ds = tf.data.Dataset.zip((ds, seeds)).map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    if aug is not None:
        ds = _augmented(ds, aug, seed, jit)
    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)


def _augmented(ds: tf.data.Dataset, aug: Augment, seed: int, jit: bool) -> tf.data.Dataset:
    """Augment each batch of ``(image, mask[, weight])`` with its own seed (new every epoch)."""
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(
        2, drop_remainder=True)

    @tf.function(jit_compile=jit)
    def run(s: tf.Tensor, *batch: tf.Tensor) -> tuple:
        out = augment_batch(batch[0], batch[1], batch[2] if len(batch) == 3 else None,
                            seed=s, config=aug)
        return tuple(tf.cast(t, tf.float32) for t in out)

    return tf.data.Dataset.zip((seeds, ds)).map(lambda s, b: run(s, *b),
                                                num_parallel_calls=tf.data.AUTOTUNE)


def _whole_images(split: DataSplit, batch_size: int, shuffle: bool, seed: int,
                  tile: int | None) -> tf.data.Dataset:
    """Validation (or patch-free training) data: whole images, or non-overlapping ``tile`` x
    ``tile`` tiles (mirror-padded at the far borders) so a fixed-size model can score them."""
    imgs, msks, wts = [], [], []
    for i, img in enumerate(split.images):
        m = split.masks[i][..., None]
        w = None if split.weights is None else split.weights[i][..., None]
        if tile is None:
            imgs.append(img), msks.append(m)
            if w is not None:
                wts.append(w)
            continue
        h, wd = img.shape[:2]
        ph, pw = (-h) % tile, (-wd) % tile
        img_p = pad_reflect(img, 0, ph, 0, pw)
        m_p = pad_reflect(m, 0, ph, 0, pw)
        w_p = None if w is None else pad_reflect(w, 0, ph, 0, pw)
        for y in range(0, h + ph, tile):
            for x in range(0, wd + pw, tile):
                imgs.append(img_p[y:y + tile, x:x + tile])
                msks.append(m_p[y:y + tile, x:x + tile])
                if w_p is not None:
                    wts.append(w_p[y:y + tile, x:x + tile])
    shapes = {a.shape for a in imgs}
    if len(shapes) > 1 and batch_size > 1:
        raise DataError(f"images have different sizes {sorted(shapes)[:4]}...; use patch_size= "
                        "or batch_size=1 for whole-image mode")
    arrays = [np.stack(imgs).astype(np.float32), np.stack(msks).astype(np.float32)]
    if wts:
        arrays.append(np.stack(wts).astype(np.float32))
    ds = tf.data.Dataset.from_tensor_slices(tuple(arrays))
    if shuffle:
        ds = ds.shuffle(len(imgs), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def make_datasets(
    source: Any,
    *,
    patch_size: int | None = None,
    batch_size: int = 4,
    val_fraction: float = 0.2,
    val_indices: Sequence[int] | None = None,
    seed: int = 0,
    augment: Augment | bool | None = None,
    border_weights: bool = False,
    w0: float = 10.0,
    sigma: float = 5.0,
    num_classes: int | str | None = None,
    convention: str = "auto",
    palette: Any = None,
    samples_per_epoch: int | None = None,
    val_tiles: bool | None = None,
    cache_dir: str | Path | None = None,
    jit_compile: bool = True,
    tfds_kwargs: dict | None = None,
    class_values: io.ClassValues | None = None,
    ignore_index: int | None = None,
    val_source: Any = None,
    with_info: bool = False,
) -> Any:
    """Build ``(train_ds, val_ds)`` for ``model.fit(train_ds, validation_data=val_ds)``.

    Args:
        source: folder with ``images/`` + ``masks/``; ``(volume.tif, labels.tif)``;
            ``(images, masks)`` arrays; or a TFDS name (``"tfds:oxford_iiit_pet"``).
        patch_size: train on random ``patch_size`` squares (mirror-padded context, so border
            patches are valid); ``None`` trains on whole images.
        batch_size: samples per batch.
        val_fraction / val_indices: seeded random hold-out fraction, or explicit indices
            (e.g. ``[20, 21, 22, 23]`` for the last 4 ISBI slices). ``val_ds`` is ``None``
            when nothing is held out.
        seed: makes the split, patch positions and augmentation reproducible.
        augment: an :class:`Augment`, ``True`` for the paper's defaults, ``None``/``False``
            for none.
        border_weights: add the paper's weight map (eq. 2, ``w0``, ``sigma``) as the third
            element, warped with the same field as the mask; use as per-pixel sample weight.
        num_classes / convention / palette: how masks are read (see ``zf_unet.data.io``);
            ``num_classes="auto"`` infers K from the masks (see :func:`infer_num_classes`).
        class_values: gray-value codes, one entry per class, e.g.
            ``[[0, 32, 64, 96, 128], [159], [191], [223], [255]]``.
        ignore_index: mask value of void pixels; kept as that value in the masks (through
            padding and nearest-neighbour augmentation), weight 0 in border weight maps.
        val_source: a separate validation source (same kinds as ``source``): all of
            ``source`` then trains; ``val_fraction`` is ignored, ``val_indices`` an error.
        with_info: also return a :class:`DataInfo` of the training data.
        samples_per_epoch: patches per epoch (default: the number of non-overlapping patches
            that fit in the training images).
        val_tiles: score validation on ``patch_size`` tiles (default: when ``patch_size`` is
            set) instead of whole images.
        cache_dir: keep border weight maps on disk between runs.
        jit_compile: XLA-compile the batched augmentation (about 3x faster on CPU).

    Returns:
        ``(train_ds, val_ds)``, or ``(train_ds, val_ds, info)`` with ``with_info=True``.

    Yields:
        ``(image (B, P, P, C) float32 in [0, 1], mask (B, P, P, 1) float32 class ids
        [, weight (B, P, P, 1) float32])``.
    """
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if patch_size is not None and int(patch_size) < 1:
        raise DataError(f"patch_size must be a positive int or None, got {patch_size}")
    aug = Augment() if augment is True else (augment or None)
    if aug is not None and not isinstance(aug, Augment):
        raise DataError(f"augment must be an Augment, True, False or None; got {augment!r}")
    if aug is not None and not aug.enabled:
        aug = None
    if val_source is not None and val_indices is not None:
        raise DataError("val_indices and val_source: expected one of them (val_source "
                        "validates on a separate source; val_indices holds out samples of "
                        "source)")
    load_kw = dict(num_classes=num_classes, convention=convention, palette=palette,
                   tfds_kwargs=tfds_kwargs, class_values=class_values,
                   ignore_index=ignore_index)
    data = _load(source, **load_kw)
    splits = [data]
    if val_source is not None:
        val_data = _load(val_source, **load_kw)
        splits.append(val_data)
        if val_data.images[0].shape[2] != data.images[0].shape[2]:
            raise DataError(f"val_source: images have {val_data.images[0].shape[2]} channel(s) "
                            f"but source has {data.images[0].shape[2]}; expected the same "
                            "number of channels")
    k = _resolve_num_classes(splits, num_classes, class_values, ignore_index)
    for one in splits:
        one.num_classes = k
    check_learnable(data, patch_size)
    if border_weights:
        for one in splits:
            one.weights = _weight_maps(one, cache_dir, w0, sigma)
    if val_source is not None:
        train, val = data, splits[1]
    else:
        train_idx, val_idx = split_indices(len(data), val_fraction, val_indices, seed)
        train, val = data.subset(train_idx), data.subset(val_idx)
    logger.info("make_datasets: %d training / %d validation samples", len(train), len(val))

    if patch_size is None:
        train_ds = _whole_images(train, batch_size, shuffle=True, seed=seed, tile=None)
        if aug is not None:
            train_ds = _augmented(train_ds, aug, seed, jit_compile)
    else:
        patch = int(patch_size)
        if samples_per_epoch is None:
            samples_per_epoch = sum(max(1, (img.shape[0] // patch) * (img.shape[1] // patch))
                                    for img in train.images)
        samples_per_epoch = max(int(samples_per_epoch), batch_size)
        train_ds = _train_patches(train, patch, batch_size, aug, seed, samples_per_epoch,
                                  jit_compile)
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)

    val_ds = None
    if len(val):
        use_tiles = (patch_size is not None) if val_tiles is None else bool(val_tiles)
        if use_tiles and patch_size is None:
            raise DataError("val_tiles=True needs patch_size")
        val_ds = _whole_images(val, batch_size, shuffle=False, seed=seed,
                               tile=int(patch_size) if use_tiles else None).prefetch(tf.data.AUTOTUNE)
    if with_info:
        return train_ds, val_ds, _data_info(train, len(val))
    return train_ds, val_ds
