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
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from zf_unet.checks import check_choice
from zf_unet.data import io, streaming
from zf_unet.data.augment import Augment, augment_dataset, augment_margin
from zf_unet.data.imageops import pad_reflect, to_float_image
from zf_unet.data.shard_checks import all_parts, hold_out_shards, shard_streams
from zf_unet.data.sources import TFDS_PREFIX, open_source, read_all
from zf_unet.data.split_checks import check_val_masks, seen_ids
from zf_unet.data.streaming import ReadLog, check_binary_for_weights
from zf_unet.data.tfdata import finish_pipeline
from zf_unet.data.weightmaps import (border_weight_map, cached_border_weight_map,
                                      default_cache_dir)
from zf_unet.errors import DataError
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("tf.data training pipelines (make_datasets)")

logger = logging.getLogger("zf_unet")


__all__ = ["DataInfo", "DataSplit", "TFDS_PREFIX", "check_learnable", "infer_num_classes",
           "class_pixel_counts", "load_source", "make_datasets", "median_frequency_weights",
           "refuse_unlearnable", "resolve_num_classes", "split_indices", "to_float_image"]


@dataclass
class DataSplit:
    """In-memory samples: lists of ``(H, W, C)`` float32 images, ``(H, W)`` uint8 masks and
    optional ``(H, W)`` float32 weight maps. ``ignore_index``: the mask value of void pixels
    (``None``: none); ``num_classes``: K as the model sees it (1 = binary), when known;
    ``scaled``: how many masks held {0, 255} and were read as {0, 1}."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    weights: list[np.ndarray] | None = None
    names: list[str] = field(default_factory=list)
    ignore_index: int | None = None
    num_classes: int | None = None
    scaled: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: Sequence[int]) -> "DataSplit":
        """The samples ``idx``, as a split of the same class."""
        return type(self)([self.images[i] for i in idx], [self.masks[i] for i in idx],
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
        streaming: True when the datasets read the files on the fly (``cache`` not
            ``"memory"``); ``read_log`` then records a file that failed mid-epoch
            (:class:`zf_unet.data.streaming.ReadLog`), and ``make_train(input_context)``
            builds the training stream of one ``tf.distribute`` input pipeline (its own
            share of the files, per-replica batches) for
            ``strategy.distribute_datasets_from_function``.
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
    streaming: bool = False
    read_log: ReadLog | None = None
    make_train: Callable[[tf.distribute.InputContext], tf.data.Dataset] | None = None


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
    data.num_classes = resolve_num_classes(data.masks, num_classes, class_values,
                                            ignore_index)
    return data


def resolve_num_classes(masks: Sequence[np.ndarray], num_classes: int | str | None,
                        class_values: io.ClassValues | None,
                        ignore_index: int | None) -> int:
    """K for the model: ``num_classes`` as given, ``"auto"`` inferred from the class-id
    ``masks`` (:func:`infer_num_classes`), ``None``: the number of ``class_values`` groups
    (2 groups -> 1) or 1 (binary)."""
    if num_classes == io.AUTO_CLASSES:
        return infer_num_classes(masks, ignore_index, class_values)
    if num_classes is not None:
        return int(num_classes)
    if class_values is not None:
        return 1 if len(class_values) == 2 else len(class_values)
    return 1


def infer_num_classes(masks: Sequence[np.ndarray], ignore_index: int | None = None,
                      class_values: io.ClassValues | None = None, *,
                      values: Sequence[int] | None = None) -> int:
    """K for the model from normalised ``(H, W)`` uint8 masks (1 = binary), or from the mask
    ``values`` already known to occur (a streamed pre-pass); logs why (INFO).

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
    if values is not None:
        seen[np.asarray(values, np.int64)] = True
    for m in masks if values is None else ():
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
    """:func:`load_source` without resolving ``num_classes``: every sample of the source
    :func:`zf_unet.data.sources.open_source` names, images as float32 in [0, 1]."""
    src = open_source(source, convention=convention, num_classes=num_classes, palette=palette,
                      class_values=class_values, ignore_index=ignore_index,
                      tfds_kwargs=tfds_kwargs)
    floats, masks, scaled = read_all(src, to_float_image)
    io.notice_scaled(scaled, len(masks), src.notice_where)
    return DataSplit(floats, [np.asarray(m, np.uint8) for m in masks], None, src.keys(),
                     ignore_index, scaled=scaled)


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
    refuse_unlearnable(present, len(data), [img.shape[:2] for img in data.images], patch_size,
                       data.ignore_index)


def refuse_unlearnable(present: set[int], n_samples: int, sizes: Sequence[tuple[int, int]],
                       patch_size: int | None, ignore_index: int | None) -> None:
    """:func:`check_learnable` from what is known of the samples: the class ids ``present``
    (void excluded), their number and their ``(H, W)`` sizes."""
    if not present and n_samples:
        raise DataError(f"every mask pixel of the {n_samples} sample(s) is void (ignore_index="
                        f"{ignore_index}): there is nothing to learn; expected labelled "
                        "pixels of at least two classes")
    if len(present) == 1:
        (only,) = present
        raise DataError(f"every mask of the {n_samples} sample(s) holds only class {only}"
                        f"{' (all-zero masks)' if only == 0 else ''}: there is nothing to learn; "
                        "expected masks with at least two classes (check the masks with "
                        "zf-unet check-data)")
    if patch_size and sizes:
        h, w = max(sizes, key=min)
        if min(h, w) < int(patch_size):
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
        check_binary_for_weights(m, void, split.names[i] if split.names else str(i))
        if cache_dir is not None:
            maps.append(cached_border_weight_map(m, cache_dir=cache_dir, w0=w0, sigma=sigma,
                                                 ignore_index=void))
        else:
            maps.append(border_weight_map(m, w0=w0, sigma=sigma, ignore_index=void))
    return maps


def _data_info(train: DataSplit, num_val: int) -> DataInfo:
    """Class counts and image statistics of ``train`` (see :class:`DataInfo`), counted as the
    streaming pre-pass counts them (:class:`zf_unet.data.streaming.ScanResult`)."""
    k = int(train.num_classes or 1)
    stats = streaming.ScanResult()
    for i, (image, mask) in enumerate(zip(train.images, train.masks)):
        stats.add(train.names[i] if train.names else f"image {i}", image, mask,
                  train.ignore_index)
    pixels, image_pixels = stats.class_counts(k, train.ignore_index)
    mean, std = stats.mean_std()
    return DataInfo(num_classes=k, channels=stats.channels, class_pixels=pixels,
                    class_image_pixels=image_pixels, mean=mean, std=std,
                    ignore_index=train.ignore_index, num_train=len(train), num_val=num_val)


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
    margin = augment_margin(patch, aug)
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
        ds = augment_dataset(ds, aug, seed, jit)
    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)


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


def _file_streams(src: Any, indices: Sequence[int], *, scan_kw: dict, reader_kw: dict,
                  seed: int, cache_file: str | None) -> tuple[Any, Callable[..., Any]]:
    """``(scan, stream)`` of samples ``indices`` of an indexable source (folder, stacks,
    arrays, TFDS, synthetic): one pre-pass, then ``stream(context, shuffle, repeat)`` decodes
    files on the fly."""
    result = streaming.scan(src, indices, **scan_kw)
    keep = [i for i in indices if i not in set(result.bad_indices)]
    reader = streaming.SampleReader(src, result.channels or 1, **reader_kw)

    def stream(context: Any = None, shuffle: bool = False, repeat: bool = False) -> Any:
        return streaming.stream_samples(reader, keep, shuffle=shuffle, seed=seed,
                                        input_context=context, repeat=repeat,
                                        cache_file=cache_file if repeat else None)

    return result, stream


def _stream_datasets(src: Any, val_src: Any, *, patch_size: int | None, batch_size: int,
                     val_fraction: float, val_indices: Sequence[int] | None, seed: int,
                     aug: Augment | None, border_weights: bool, w0: float, sigma: float,
                     num_classes: int | str | None, class_values: io.ClassValues | None,
                     ignore_index: int | None, samples_per_epoch: int | None,
                     val_tiles: bool | None, cache_dir: str | Path | None, jit_compile: bool,
                     disk_cache: bool, skip_bad_files: bool,
                     input_context: tf.distribute.InputContext | None) -> tuple:
    """:func:`make_datasets` for ``cache`` = ``"none"`` / ``"disk"``: one pre-pass over the
    samples (:func:`zf_unet.data.streaming.scan`), then pipelines that read files on the fly
    (TFRecord shards through :meth:`zf_unet.data.ShardSource.as_dataset`)."""
    from zf_unet.data.shards import ShardSource

    weight_cache = cache_dir if cache_dir is not None else default_cache_dir()
    log = streaming.ReadLog()
    scan_kw = dict(ignore_index=ignore_index, skip_bad_files=skip_bad_files,
                   border_weights=border_weights, weight_cache=weight_cache, w0=w0, sigma=sigma)
    reader_kw = dict(border_weights=border_weights, weight_cache=weight_cache, w0=w0,
                     sigma=sigma, ignore_index=ignore_index, skip_bad_files=skip_bad_files,
                     log=log)
    cache_file = streaming.disk_cache_file(cache_dir) if disk_cache else None
    shard_kw = dict(border_weights=border_weights, ignore_index=ignore_index, seed=seed,
                    skip_bad_files=skip_bad_files, log=log)
    file_kw = dict(scan_kw=scan_kw, reader_kw=reader_kw, seed=seed, cache_file=cache_file)

    def streams(source: Any, part: Any) -> tuple[Any, Callable[..., Any]]:
        if isinstance(source, ShardSource):
            return shard_streams(source, part, **shard_kw)
        return _file_streams(source, part, **file_kw)

    if val_src is not None:
        train_part = all_parts(src) if isinstance(src, ShardSource) else range(len(src))
        val_part = (all_parts(val_src) if isinstance(val_src, ShardSource)
                    else range(len(val_src)))
        val_from = val_src
    elif isinstance(src, ShardSource):
        train_part, val_part = hold_out_shards(src, val_fraction, val_indices)
        val_from = src
    else:
        train_part, val_part = split_indices(len(src), val_fraction, val_indices, seed)
        val_from = src
    train_scan, train_stream = streams(src, train_part)
    val_scan, val_stream = streams(val_from, val_part) if len(val_part) else (
        streaming.ScanResult(), None)
    n_train, n_val = len(train_scan.sizes), len(val_scan.sizes)
    if not n_train:
        raise DataError(f"{getattr(src, 'path', 'source')}: no training sample could be read "
                        "(data.skip_bad_files = true skipped them all)")
    if val_scan.channels and val_scan.channels != train_scan.channels:
        raise DataError(f"val_source: images have {val_scan.channels} channel(s) but source has "
                        f"{train_scan.channels}; expected the same number of channels")
    if num_classes == io.AUTO_CLASSES:
        seen = np.union1d(train_scan.seen_classes(None), val_scan.seen_classes(None))
        k = infer_num_classes([], ignore_index, class_values, values=seen)
    else:
        k = resolve_num_classes([], num_classes, class_values, ignore_index)
    present = set(int(v) for v in train_scan.seen_classes(ignore_index))
    check_val_masks(train_scan.seen_classes(ignore_index), val_scan.seen_classes(ignore_index),
                    train_scaled=train_scan.scaled, val_scaled=val_scan.scaled,
                    n_train=n_train, n_val=n_val, auto_classes=num_classes == io.AUTO_CLASSES,
                    val_source=val_src is not None)
    refuse_unlearnable(present, n_train, train_scan.sizes, patch_size, ignore_index)
    pixels, image_pixels = train_scan.class_counts(k, ignore_index)
    mean, std = train_scan.mean_std()
    logger.info("make_datasets (streaming): %d training / %d validation samples", n_train,
                n_val)
    for label, sizes in (("training", train_scan.sizes), ("validation", val_scan.sizes)):
        tiles = patch_size is not None and (label == "training" or val_tiles is not False)
        if not tiles and batch_size > 1 and len(set(sizes)) > 1:
            raise DataError(f"{label} images have different sizes {sorted(set(sizes))[:4]}...; "
                            "use patch_size= or batch_size=1 for whole-image mode")
    if patch_size is not None and samples_per_epoch is None:
        samples_per_epoch = sum(max(1, (h // int(patch_size)) * (w // int(patch_size)))
                                for h, w in train_scan.sizes)

    def make_train(context: tf.distribute.InputContext | None = None,
                   batch: int = batch_size) -> tf.data.Dataset:
        """The training stream of one input pipeline (``context``) with ``batch`` samples
        per batch; every pipeline yields the same number of batches per epoch."""
        pipelines = context.num_input_pipelines if context is not None else 1
        samples = train_stream(context, shuffle=True, repeat=True)
        if patch_size is None:
            steps = math.ceil(math.ceil(n_train / pipelines) / batch)
            ds = streaming.whole_image_dataset(samples, batch_size=batch, tile=None).take(steps)
            ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
            if aug is not None:
                ds = augment_dataset(ds, aug, seed, jit_compile)
        else:
            steps = max(int(samples_per_epoch), batch_size) // batch_size
            per_sample = streaming.patches_per_sample(steps, batch,
                                                      math.ceil(n_train / pipelines))
            ds = streaming.patch_dataset(samples, patch=int(patch_size), batch_size=batch,
                                         steps=steps, patches_per_sample=per_sample,
                                         augment=aug, seed=seed, jit_compile=jit_compile)
        return finish_pipeline(ds)

    train_ds = make_train(input_context)
    val_ds = None
    if n_val:
        use_tiles = (patch_size is not None) if val_tiles is None else bool(val_tiles)
        if use_tiles and patch_size is None:
            raise DataError("val_tiles=True needs patch_size")
        val_ds = finish_pipeline(streaming.whole_image_dataset(
            val_stream(), batch_size=batch_size, tile=int(patch_size) if use_tiles else None,
            sizes=None if skip_bad_files and not isinstance(val_from, ShardSource)
            else val_scan.sizes))  # shards: the pre-pass left bad files out already
    info = DataInfo(num_classes=k, channels=train_scan.channels, class_pixels=pixels,
                    class_image_pixels=image_pixels, mean=mean, std=std,
                    ignore_index=ignore_index, num_train=n_train, num_val=n_val,
                    streaming=True, read_log=log,
                    make_train=lambda context: make_train(
                        context, context.get_per_replica_batch_size(batch_size)))
    return train_ds, val_ds, info


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
    cache: str = "auto",
    skip_bad_files: bool = False,
    input_context: tf.distribute.InputContext | None = None,
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
        cache: ``"auto"`` (default: in memory when the decoded data fit
            :data:`zf_unet.data.streaming.MEMORY_BUDGET`, else streamed; TFRecord shards
            always stream), ``"memory"`` (every
            sample decoded once and stacked: fastest), ``"none"`` (streamed: files read and
            decoded on the fly, bounded memory) or ``"disk"`` (streamed, decoded samples
            cached in a file after the first epoch). See :mod:`zf_unet.data.streaming`.
        skip_bad_files: streaming only: skip a sample that cannot be read (logged, counted in
            ``info.read_log``) instead of stopping with a :class:`DataError` naming it.
        input_context: streaming only: read only this input pipeline's share of the
            training samples (``tf.distribute`` multi-worker input; disjoint files).

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
    mode = check_choice("cache", cache, streaming.CACHE_MODES)
    load_kw = dict(num_classes=num_classes, convention=convention, palette=palette,
                   tfds_kwargs=tfds_kwargs, class_values=class_values,
                   ignore_index=ignore_index)
    if mode != "memory":
        from zf_unet.data.sources import open_source

        reading = dict(convention=convention, num_classes=num_classes, palette=palette,
                       class_values=class_values, ignore_index=ignore_index,
                       tfds_kwargs=tfds_kwargs)
        src = open_source(source, **reading)
        val_src = None if val_source is None else open_source(val_source, **reading)
        fits = (src.nbytes_hint() + (0 if val_src is None else val_src.nbytes_hint())
                <= streaming.MEMORY_BUDGET)
        from zf_unet.data.shards import ShardSource

        # shards are the streamable form already: "auto" streams them
        shards = isinstance(src, ShardSource) or isinstance(val_src, ShardSource)
        if mode != "auto" or not fits or shards:
            out = _stream_datasets(
                src, val_src, patch_size=patch_size, batch_size=int(batch_size),
                val_fraction=val_fraction, val_indices=val_indices, seed=seed, aug=aug,
                border_weights=border_weights, w0=w0, sigma=sigma, num_classes=num_classes,
                class_values=class_values, ignore_index=ignore_index,
                samples_per_epoch=samples_per_epoch, val_tiles=val_tiles, cache_dir=cache_dir,
                jit_compile=jit_compile, disk_cache=mode == "disk",
                skip_bad_files=skip_bad_files, input_context=input_context)
            return out if with_info else out[:2]
        source, val_source = src, val_src
    data = _load(source, **load_kw)
    splits = [data]
    if val_source is not None:
        val_data = _load(val_source, **load_kw)
        splits.append(val_data)
        if val_data.images[0].shape[2] != data.images[0].shape[2]:
            raise DataError(f"val_source: images have {val_data.images[0].shape[2]} channel(s) "
                            f"but source has {data.images[0].shape[2]}; expected the same "
                            "number of channels")
    k = resolve_num_classes([m for one in splits for m in one.masks], num_classes,
                            class_values, ignore_index)
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
    check_val_masks(seen_ids(train.masks, ignore_index), seen_ids(val.masks, ignore_index),
                    train_scaled=train.scaled, val_scaled=val.scaled, n_train=len(train),
                    n_val=len(val), auto_classes=num_classes == io.AUTO_CLASSES,
                    val_source=val_source is not None)
    logger.info("make_datasets: %d training / %d validation samples", len(train), len(val))

    if patch_size is None:
        train_ds = _whole_images(train, batch_size, shuffle=True, seed=seed, tile=None)
        if aug is not None:
            train_ds = augment_dataset(train_ds, aug, seed, jit_compile)
    else:
        patch = int(patch_size)
        if samples_per_epoch is None:
            samples_per_epoch = sum(max(1, (img.shape[0] // patch) * (img.shape[1] // patch))
                                    for img in train.images)
        samples_per_epoch = max(int(samples_per_epoch), batch_size)
        train_ds = _train_patches(train, patch, batch_size, aug, seed, samples_per_epoch,
                                  jit_compile)
    train_ds = finish_pipeline(train_ds)

    val_ds = None
    if len(val):
        use_tiles = (patch_size is not None) if val_tiles is None else bool(val_tiles)
        if use_tiles and patch_size is None:
            raise DataError("val_tiles=True needs patch_size")
        val_ds = finish_pipeline(_whole_images(val, batch_size, shuffle=False, seed=seed,
                                               tile=int(patch_size) if use_tiles else None))
    if with_info:
        return train_ds, val_ds, _data_info(train, len(val))
    return train_ds, val_ds
