"""Write TFRecord shards (``zf-unet pack``): :func:`write_shards`.

Samples are streamed into ``out_dir/shard-00000-of-000NN.tfrecord`` files of about
``shard_size`` bytes each, plus the index ``out_dir/zf_unet_shards.json`` (the format:
:mod:`zf_unet.data.shard_format`). Every file goes through ``tf.io.gfile``, so ``out_dir`` may
be ``gs://...``. The set is built in a hidden temporary folder beside ``out_dir`` and moved
into place at the end (:mod:`zf_unet.data.shard_folder`): a local folder is renamed at once;
on other file systems the files are renamed one by one with the index last, so an index
always describes complete shards.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from zf_unet.backend import lazy_tensorflow
from zf_unet.data.shard_folder import (join, local_path, make_tmp_dir, move_into_place,
                                       prepare_out_dir, shard_name)
from zf_unet.data.shard_format import FORMAT_VERSION, INDEX_NAME, ShardInfo, parse_size
from zf_unet.data.stats import SampleStats
from zf_unet.data.weightmaps import border_weight_map
from zf_unet.errors import ConfigError, DataError
from zf_unet.io_utils import unlock
from zf_unet.outputs import is_local
from zf_unet.pixels import check_float_range

tf = lazy_tensorflow("TFRecord shards")

__all__ = ["write_shards"]


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _sample_arrays(sample: Any, index: int) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, image (H, W, C) uint8/uint16/float32 little-endian, mask (H, W) uint8)``."""
    try:
        name, image, mask = sample.name, sample.image, sample.mask
    except AttributeError:
        raise DataError(f"sample {index}: expected an object with .name, .image and .mask, got "
                        f"{type(sample).__name__}") from None
    name = str(name)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.size == 0:
        raise DataError(f"{name}: expected an image of shape (H, W) or (H, W, C), got "
                        f"{image.shape}")
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        image = np.ascontiguousarray(image, image.dtype.newbyteorder("<"))
    elif image.dtype == np.bool_ or image.dtype.kind == "f":
        if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
            raise DataError(f"{name}: image has NaN or inf pixels")
        check_float_range(image, name)
        image = np.ascontiguousarray(image, "<f4")
    else:
        raise DataError(f"{name}: image dtype {image.dtype} is not supported; expected uint8, "
                        "uint16 or float in [0, 1]")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != image.shape[:2]:
        raise DataError(f"{name}: mask shape {mask.shape} does not match the image's "
                        f"{image.shape[:2]}")
    if mask.dtype != np.uint8:
        if mask.dtype.kind not in "biuf" or (mask.size and (
                mask.min() < 0 or mask.max() > 255 or np.any(mask != np.round(mask)))):
            raise DataError(f"{name}: expected mask class ids 0..255, got dtype {mask.dtype}")
        mask = mask.astype(np.uint8)
    return name, image, np.ascontiguousarray(mask)


def _weight_map(name: str, mask: np.ndarray, w0: float, sigma: float,
                ignore_index: int | None) -> np.ndarray:
    labelled = mask if ignore_index is None else mask[mask != ignore_index]
    values = np.unique(labelled)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(str(v) for v in values[:8])
        raise DataError(f"{name}: border weight maps need binary masks (class ids 0/1), got "
                        f"values [{shown}]; pack without border weights for multi-class masks")
    try:
        return border_weight_map(mask, w0=w0, sigma=sigma, ignore_index=ignore_index)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None


class _ShardWriter:
    """Writes records into ``tmp_dir/part-NNNNN.tfrecord`` files of about ``shard_size`` bytes."""

    def __init__(self, tmp_dir: str, shard_size: int):
        self.tmp_dir, self.shard_size = tmp_dir, shard_size
        self.parts: list[str] = []
        self.counts: list[int] = []
        self.total_bytes = 0
        self._writer: tf.io.TFRecordWriter | None = None
        self._bytes = 0

    def write(self, record: bytes) -> None:
        size = len(record) + 16  # 8-byte length, two 4-byte CRCs
        if self._writer is not None and self._bytes + size > self.shard_size:
            self.close()
        if self._writer is None:
            path = join(self.tmp_dir, f"part-{len(self.parts):05d}.tfrecord")
            self._writer = tf.io.TFRecordWriter(path)
            self.parts.append(path)
            self.counts.append(0)
            self._bytes = 0
        self._writer.write(record)
        self._bytes += size
        self.total_bytes += size
        self.counts[-1] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_shards(
    samples: Iterable[Any],
    out_dir: str | os.PathLike,
    *,
    shard_size: int | str = 256 * 2**20,
    border_weights: bool = False,
    w0: float = 10.0,
    sigma: float = 5.0,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    meta: dict | None = None,
    overwrite: bool = False,
    inputs: Sequence[Any] = (),
) -> ShardInfo:
    """Write ``samples`` as TFRecord shards ``out_dir/shard-NNNNN-of-MMMMM.tfrecord`` + index.

    Args:
        samples: iterable of objects with ``.name`` (str), ``.image`` ``(H, W[, C])`` uint8,
            uint16 or float in [0, 1] (bool / float64 are stored as float32) and ``.mask``
            ``(H, W[, 1])`` class ids 0..255, e.g. the samples of a
            :class:`zf_unet.data.Source`. Read once, one at a time (streamed).
        out_dir: the folder to create (local or any ``tf.io.gfile`` path such as ``gs://``).
        shard_size: about how many bytes per shard file (an int or ``"256MB"``, see
            :func:`parse_size`); a shard holds at least one sample.
        border_weights: also store each mask's border weight map
            (:func:`zf_unet.data.weightmaps.border_weight_map` with ``w0``, ``sigma``,
            ``ignore_index``); binary masks (ids 0/1) only.
        ignore_index: void mask value, left out of the class counts and weight maps.
        num_classes: the model's K, checked against the mask ids (``None``: taken from the
            data, recorded as ``None``).
        meta: JSON-serialisable extra information kept in the index.
        overwrite: replace an existing non-empty ``out_dir`` that ``write_shards`` made
            (a folder of other files is never replaced).
        inputs: the paths the samples are read from: ``out_dir`` must not be, lie inside or
            hold one of them (the output rule of :mod:`zf_unet.outputs`).

    Returns:
        The :class:`ShardInfo` written to ``out_dir/zf_unet_shards.json``.

    Raises:
        OutputExistsError: ``out_dir`` exists and is not empty (without ``overwrite``).
        DataError: no samples, a bad sample (named), mixed channel counts, non-binary masks
            with ``border_weights``.
        ConfigError: a bad ``shard_size``.
    """
    out = str(out_dir)
    out = out.rstrip("/") if len(out) > 1 else out
    if is_local(out):  # what is checked is what is written: ~, ".", ".." resolved first
        out = str(Path(local_path(out)).expanduser().resolve())
    size = parse_size(shard_size, "shard_size")
    if border_weights:
        for label, value, low in (("w0", w0, 0.0), ("sigma", sigma, 0.0)):
            if not np.isfinite(value) or value < low or (label == "sigma" and value == 0):
                raise ConfigError(f"{label}: expected a finite number "
                                  f"{'> 0' if label == 'sigma' else '>= 0'}, got {value!r}")
    if meta is not None:
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"meta: not JSON-serialisable ({exc})") from None
    exists = prepare_out_dir(out, overwrite, inputs)
    tmp_dir, tmp_lock = make_tmp_dir(out)
    writer = _ShardWriter(tmp_dir, size)
    try:
        names: list[str] = []
        dtypes: list[str] = []
        stats = SampleStats(ignore_index)  # class counts, channel sums and sizes, streamed
        k_given = max(2, int(num_classes)) if num_classes else None
        for index, sample in enumerate(samples):
            name, image, mask = _sample_arrays(sample, index)
            if stats.channels and image.shape[-1] != stats.channels:
                raise DataError(f"{name}: {image.shape[-1]} channel(s), but the samples before "
                                f"it have {stats.channels}; all images must have the same "
                                "channels")
            dtype = image.dtype.name
            if dtype not in dtypes:
                dtypes.append(dtype)
            labelled = mask if ignore_index is None else mask[mask != ignore_index]
            if k_given is not None and labelled.size and int(labelled.max()) >= k_given:
                raise DataError(f"{name}: mask values must be class ids in 0..{k_given - 1} (or "
                                f"ignore_index={ignore_index}), got "
                                f"{np.unique(labelled)[:10].tolist()}")
            stats.add(image, mask, name)
            feature = {
                "name": _bytes_feature(name.encode("utf-8")),
                "image": _bytes_feature(image.tobytes()),
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(image.shape))),
                "dtype": _bytes_feature(dtype.encode("ascii")),
                "mask": _bytes_feature(mask.tobytes()),
            }
            if border_weights:
                weight = _weight_map(name, mask, w0, sigma, ignore_index)
                feature["weight"] = _bytes_feature(np.ascontiguousarray(weight, "<f4").tobytes())
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
            names.append(name)
        writer.close()
        if not names:
            raise DataError(f"no samples to write to {out}")
        seen = stats.seen_classes()
        k = k_given or max(2, int(seen[-1]) + 1 if seen.size else 2)
        pixels, image_pixels = stats.class_counts(k)
        count = len(writer.parts)
        shards = [shard_name(i, count) for i in range(count)]
        for part, shard in zip(writer.parts, shards):
            tf.io.gfile.rename(part, join(tmp_dir, shard))
        info = ShardInfo(
            format_version=FORMAT_VERSION, num_samples=len(names), shards=tuple(shards),
            shard_counts=tuple(writer.counts), names=tuple(names), channels=int(stats.channels),
            image_dtypes=tuple(dtypes), has_weights=bool(border_weights),
            w0=float(w0) if border_weights else None,
            sigma=float(sigma) if border_weights else None,
            num_classes=None if num_classes is None else int(num_classes),
            ignore_index=None if ignore_index is None else int(ignore_index),
            class_pixels=tuple(int(c) for c in pixels),
            class_image_pixels=tuple(int(c) for c in image_pixels), num_pixels=stats.pixels,
            channel_sum=tuple(float(v) for v in stats.channel_sum),
            channel_sum_sq=tuple(float(v) for v in stats.channel_sq),
            total_bytes=writer.total_bytes, meta=dict(meta or {}), sizes=tuple(stats.sizes))
        with tf.io.gfile.GFile(join(tmp_dir, INDEX_NAME), "w") as f:
            f.write(json.dumps(info.to_dict(), indent=1) + "\n")
        move_into_place(tmp_dir, out, exists)
        return info
    finally:
        writer.close()
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
        unlock(tmp_lock)
