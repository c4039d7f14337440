"""``make_datasets``: training and validation ``tf.data`` pipelines for ``model.fit``.

Path of a sample: source (folder / TIFF stacks / arrays / TFDS) -> float32 image in [0, 1] and
class-id mask -> optional border weight map (computed once per image, SciPy) -> mirror
padding -> random patch window -> in-graph augmentation of image, mask and weight map with ONE
field (batched, XLA-compiled) -> center crop -> ``(image, mask[, weight])`` batches.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zf_unet.checks import check_choice
from zf_unet.data import streaming
from zf_unet.data.augment_config import Augment
from zf_unet.data.augment_data import augment_dataset, augment_margin
from zf_unet.data.loaders import read_source
from zf_unet.data.masks import AUTO_CLASSES, ClassValues, infer_num_classes, resolve_num_classes
from zf_unet.data.sample_checks import (check_binary_for_weights, check_learnable,
                                        refuse_unlearnable)
from zf_unet.data.sources import open_source
from zf_unet.data.split_checks import check_val_masks, seen_ids
from zf_unet.data.splits import DataInfo, DataSplit, datasets_result, split_indices
from zf_unet.data.stats import SampleStats
from zf_unet.data.tfdata import finish_pipeline
from zf_unet.data.weightmaps import (border_weight_map, cached_border_weight_map,
                                      default_cache_dir)
from zf_unet.errors import DataError
from zf_unet.pixels import pad_reflect
from zf_unet.registry import CACHE_MODES
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("tf.data training pipelines (make_datasets)")

logger = logging.getLogger("zf_unet")


__all__ = ["make_datasets"]


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


def _stream_datasets(src: Any, val_src: Any, *, patch_size: int | None, batch_size: int,
                     val_fraction: float, val_indices: Sequence[int] | None, seed: int,
                     aug: Augment | None, border_weights: bool, w0: float, sigma: float,
                     num_classes: int | str | None, class_values: ClassValues | None,
                     ignore_index: int | None, samples_per_epoch: int | None,
                     val_tiles: bool | None, cache_dir: str | Path | None, jit_compile: bool,
                     disk_cache: bool, skip_bad_files: bool,
                     input_context: tf.distribute.InputContext | None) -> tuple:
    """:func:`make_datasets` for ``cache`` = ``"none"`` / ``"disk"``: one pre-pass over the
    samples, then pipelines that read them on the fly (each source's
    :meth:`zf_unet.data.Source.streams`: files decoded by :mod:`zf_unet.data.streaming`,
    TFRecord shards through :meth:`zf_unet.data.ShardSource.as_dataset`)."""
    log = streaming.ReadLog()
    stream_kw = dict(seed=seed, border_weights=border_weights, ignore_index=ignore_index,
                     skip_bad_files=skip_bad_files, log=log,
                     weight_cache=cache_dir if cache_dir is not None else default_cache_dir(),
                     w0=w0, sigma=sigma,
                     cache_file=streaming.disk_cache_file(cache_dir) if disk_cache else None)
    if val_src is not None:
        train_part, val_part, val_from = src.parts(), val_src.parts(), val_src
    else:
        train_part, val_part = src.hold_out(val_fraction, val_indices, seed)
        val_from = src
    train_scan, train_stream = src.streams(train_part, **stream_kw)
    val_scan, val_stream = val_from.streams(val_part, **stream_kw) if len(val_part) else (
        SampleStats(ignore_index), None)
    n_train, n_val = len(train_scan.sizes), len(val_scan.sizes)
    if not n_train:
        raise DataError(f"{getattr(src, 'path', 'source')}: no training sample could be read "
                        "(data.skip_bad_files = true skipped them all)")
    if val_scan.channels and val_scan.channels != train_scan.channels:
        raise DataError(f"val_source: images have {val_scan.channels} channel(s) but source has "
                        f"{train_scan.channels}; expected the same number of channels")
    if num_classes == AUTO_CLASSES:
        seen = np.union1d(train_scan.seen_classes(), val_scan.seen_classes())
        k = infer_num_classes([], ignore_index, class_values, values=seen)
    else:
        k = resolve_num_classes([], num_classes, class_values, ignore_index)
    present = set(int(v) for v in train_scan.seen_classes())
    check_val_masks(train_scan.seen_classes(), val_scan.seen_classes(),
                    train_scaled=train_scan.scaled, val_scaled=val_scan.scaled,
                    n_train=n_train, n_val=n_val, auto_classes=num_classes == AUTO_CLASSES,
                    val_source=val_src is not None)
    refuse_unlearnable(present, n_train, train_scan.sizes, patch_size, ignore_index)
    info = DataInfo.from_stats(train_scan, k, n_train, n_val, streaming=True, read_log=log,
                               make_train=lambda context: make_train(
                                   context, context.get_per_replica_batch_size(batch_size)))
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
            sizes=val_scan.sizes if val_from.stream_counted(skip_bad_files) else None))
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
    class_values: ClassValues | None = None,
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
        num_classes / convention / palette: how masks are read (see
            :mod:`zf_unet.data.masks`); ``num_classes="auto"`` infers K from the masks (see
            :func:`zf_unet.data.masks.infer_num_classes`).
        class_values: gray-value codes, one entry per class, e.g.
            ``[[0, 32, 64, 96, 128], [159], [191], [223], [255]]``.
        ignore_index: mask value of void pixels; kept as that value in the masks (through
            padding and nearest-neighbour augmentation), weight 0 in border weight maps.
        val_source: a separate validation source (same kinds as ``source``): all of
            ``source`` then trains; ``val_fraction`` is ignored, ``val_indices`` an error.
        with_info: deprecated: return the old ``(train_ds, val_ds, info)`` tuple (the
            result's ``.info`` is the :class:`DataInfo`).
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
        A :class:`zf_unet.data.Datasets`: ``(train_ds, val_ds)`` (``val_ds`` ``None`` when
        nothing is held out) with ``.info``, the :class:`DataInfo` of the training data.

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
    mode = check_choice("cache", cache, CACHE_MODES)
    load_kw = dict(num_classes=num_classes, convention=convention, palette=palette,
                   tfds_kwargs=tfds_kwargs, class_values=class_values,
                   ignore_index=ignore_index)
    if mode != "memory":
        reading = dict(convention=convention, num_classes=num_classes, palette=palette,
                       class_values=class_values, ignore_index=ignore_index,
                       tfds_kwargs=tfds_kwargs)
        src = open_source(source, **reading)
        val_src = None if val_source is None else open_source(val_source, **reading)
        fits = (src.nbytes_hint() + (0 if val_src is None else val_src.nbytes_hint())
                <= streaming.MEMORY_BUDGET)
        # a kind that is the streamable form already (shards): "auto" streams it
        always = src.always_streams or (val_src is not None and val_src.always_streams)
        if mode != "auto" or not fits or always:
            train_ds, val_ds, info = _stream_datasets(
                src, val_src, patch_size=patch_size, batch_size=int(batch_size),
                val_fraction=val_fraction, val_indices=val_indices, seed=seed, aug=aug,
                border_weights=border_weights, w0=w0, sigma=sigma, num_classes=num_classes,
                class_values=class_values, ignore_index=ignore_index,
                samples_per_epoch=samples_per_epoch, val_tiles=val_tiles, cache_dir=cache_dir,
                jit_compile=jit_compile, disk_cache=mode == "disk",
                skip_bad_files=skip_bad_files, input_context=input_context)
            return datasets_result(train_ds, val_ds, info, with_info, "make_datasets")
        source, val_source = src, val_src
    data = read_source(source, **load_kw)
    splits = [data]
    if val_source is not None:
        val_data = read_source(val_source, **load_kw)
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
                    n_val=len(val), auto_classes=num_classes == AUTO_CLASSES,
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
    return datasets_result(train_ds, val_ds, train.info(len(val)), with_info, "make_datasets")
