"""TFRecord shards: training data that does not fit in memory (``zf-unet pack``).

:func:`write_shards` streams samples (anything with ``.name``, ``.image`` and ``.mask``) into
``out_dir/shard-00000-of-000NN.tfrecord`` files of about ``shard_size`` bytes each, plus an
index ``out_dir/zf_unet_shards.json``. :class:`ShardSource` reads them back, as a
``tf.data.Dataset`` for training or sample by sample.

Record format (one serialized ``tf.train.Example`` per sample; :data:`FORMAT_VERSION` 1):

* ``name``: bytes, the sample's name (UTF-8);
* ``image``: bytes, the raw pixels ``(H, W, C)`` little-endian in their own dtype;
* ``shape``: int64 ``[H, W, C]``;
* ``dtype``: bytes, ``"uint8"``, ``"uint16"`` or ``"float32"`` (bool and other floats are
  stored as float32; float images must lie in [0, 1]);
* ``mask``: bytes, ``(H, W)`` uint8 class ids (``ignore_index`` pixels kept as that value);
* ``weight``: bytes, ``(H, W)`` float32 border weight map (only when ``has_weights``), computed
  once at packing time by :func:`zf_unet.data.weightmaps.border_weight_map`.

The index (:class:`ShardInfo` as JSON) holds the shard file names and per-shard counts, the
sample names in order, channels, image dtypes, weight-map parameters, ``num_classes``,
``ignore_index``, the class pixel counts of
:func:`zf_unet.data.pipeline.class_pixel_counts` (for ``class_weights="auto"``), per-channel
sums and sums of squares of the images scaled to [0, 1] (for mean / std), and user ``meta``.

Every file goes through ``tf.io.gfile``, so ``out_dir`` may be ``gs://...``. The set is built in
a hidden temporary folder beside ``out_dir`` and moved into place at the end: a local folder is
renamed at once; on other file systems the files are renamed one by one with the index last,
so an index always describes complete shards.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from zf_unet.data.imageops import scale_to_unit_tf, to_float_image
from zf_unet.data.shard_checks import INDEX_NAME, check_index, file_records
from zf_unet.data.streaming import ScanResult
from zf_unet.data.shard_folder import (join, local_path, make_tmp_dir, move_into_place,
                                       prepare_out_dir, shard_name)
from zf_unet.errors import ConfigError, DataError
from zf_unet.io_utils import unlock
from zf_unet.outputs import is_local
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("TFRecord shards")

__all__ = ["FORMAT_VERSION", "INDEX_NAME", "ShardInfo", "ShardSource", "parse_size",
           "write_shards"]

#: Version of the shard format written; readers refuse newer versions.
FORMAT_VERSION = 1

_DTYPES = ("uint8", "uint16", "float32")
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


# --------------------------------------------------------------------------- sizes

def parse_size(text: str | int, name: str = "--shard-size") -> int:
    """A size in bytes from ``"256MB"``, ``"1GB"``, ``"500k"``, ``"1.5G"``, ``"4096"`` or an int.

    Units are binary (k = 1024, M = 2**20, G = 2**30, T = 2**40), with an optional ``B`` /
    ``iB`` and any case. Raises :class:`ConfigError` naming ``name`` for anything else, or for a
    size below 1 byte.
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text),
                             re.IGNORECASE)
        if not match:
            raise ConfigError(f"{name}: expected a size such as 256MB, 1GB, 500k or a number of "
                              f"bytes, got {text!r}")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:
        raise ConfigError(f"{name}: expected a size of at least 1 byte, got {text!r}")
    return int(value)


# --------------------------------------------------------------------------- the index

@dataclass(frozen=True)
class ShardInfo:
    """The index of a shard folder (``zf_unet_shards.json``).

    ``class_pixels`` / ``class_image_pixels``: int64 counts per class (length ``max(K, 2)``, see
    :func:`zf_unet.data.pipeline.class_pixel_counts`). ``channel_sum`` / ``channel_sum_sq``:
    per-channel sums of the images scaled to [0, 1] over ``num_pixels`` pixels (see
    :attr:`mean`, :attr:`std`).
    """

    format_version: int
    num_samples: int
    shards: tuple[str, ...]
    shard_counts: tuple[int, ...]
    names: tuple[str, ...]
    channels: int
    image_dtypes: tuple[str, ...]
    has_weights: bool
    w0: float | None
    sigma: float | None
    num_classes: int | None
    ignore_index: int | None
    class_pixels: tuple[int, ...]
    class_image_pixels: tuple[int, ...]
    num_pixels: int
    channel_sum: tuple[float, ...]
    channel_sum_sq: tuple[float, ...]
    total_bytes: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    #: ``(H, W)`` of every sample, in written order (for patch counts without a read pass)
    sizes: tuple[tuple[int, int], ...] = ()

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean of the images scaled to [0, 1]: float64 ``(C,)``."""
        return np.asarray(self.channel_sum, np.float64) / max(self.num_pixels, 1)

    @property
    def std(self) -> np.ndarray:
        """Per-channel (population) standard deviation of the images scaled to [0, 1]: ``(C,)``."""
        n = max(self.num_pixels, 1)
        var = np.asarray(self.channel_sum_sq, np.float64) / n - self.mean ** 2
        return np.sqrt(np.maximum(var, 0.0))

    def to_dict(self) -> dict[str, Any]:
        """The index as plain JSON types (tuples as lists)."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = INDEX_NAME) -> "ShardInfo":
        """Parse an index read from JSON; :class:`DataError` naming ``source`` if it is not one."""
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise DataError(f"{source}: no format_version; not a zf-unet shard index")
        if version > FORMAT_VERSION:
            raise DataError(f"{source}: shard format version {version} is newer than this "
                            f"zf_unet reads ({FORMAT_VERSION}); upgrade zf_unet or repack the "
                            "data with this version")
        try:
            info = cls(
                format_version=version,
                num_samples=int(data["num_samples"]),
                shards=tuple(str(s) for s in data["shards"]),
                shard_counts=tuple(int(c) for c in data["shard_counts"]),
                names=tuple(str(n) for n in data["names"]),
                channels=int(data["channels"]),
                image_dtypes=tuple(str(d) for d in data["image_dtypes"]),
                has_weights=bool(data["has_weights"]),
                w0=None if data.get("w0") is None else float(data["w0"]),
                sigma=None if data.get("sigma") is None else float(data["sigma"]),
                num_classes=None if data.get("num_classes") is None else int(data["num_classes"]),
                ignore_index=(None if data.get("ignore_index") is None
                              else int(data["ignore_index"])),
                class_pixels=tuple(int(c) for c in data["class_pixels"]),
                class_image_pixels=tuple(int(c) for c in data["class_image_pixels"]),
                num_pixels=int(data["num_pixels"]),
                channel_sum=tuple(float(s) for s in data["channel_sum"]),
                channel_sum_sq=tuple(float(s) for s in data["channel_sum_sq"]),
                total_bytes=int(data.get("total_bytes", 0)),
                meta=dict(data.get("meta") or {}),
                sizes=tuple((int(h), int(w)) for h, w in data.get("sizes") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            missing = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DataError(f"{source}: not a valid shard index ({missing})") from None
        if len(info.shards) != len(info.shard_counts) or sum(info.shard_counts) != info.num_samples:
            raise DataError(f"{source}: shard counts {list(info.shard_counts)} do not add up to "
                            f"num_samples={info.num_samples}")
        if len(info.names) != info.num_samples:
            raise DataError(f"{source}: {len(info.names)} names for {info.num_samples} samples")
        check_index(info, source, _DTYPES)
        return info


# --------------------------------------------------------------------------- writing

def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _sample_arrays(sample: Any, index: int) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, image (H, W, C) uint8/uint16/float32 little-endian, mask (H, W) uint8)``."""
    from zf_unet.data.io import check_float_range

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
    from zf_unet.data.weightmaps import border_weight_map

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
            ``zf_unet.data.sources`` source. Read once, one at a time (streamed).
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
        stats = ScanResult()  # class counts, channel sums and sizes, streamed
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
            stats.add(name, to_float_image(image, name), mask, ignore_index)
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
        seen = stats.seen_classes(ignore_index)
        k = k_given or max(2, int(seen[-1]) + 1 if seen.size else 2)
        pixels, image_pixels = stats.class_counts(k, ignore_index)
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


# --------------------------------------------------------------------------- reading

def _features() -> dict:
    """The ``tf.io.parse_single_example`` features of one record."""
    return {
        "name": tf.io.FixedLenFeature([], tf.string),
        "image": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "dtype": tf.io.FixedLenFeature([], tf.string),
        "mask": tf.io.FixedLenFeature([], tf.string),
    }


class ShardSource:
    """A shard folder written by :func:`write_shards` (``zf-unet pack``).

    ``ShardSource(path)`` reads ``path/zf_unet_shards.json`` (local or ``gs://`` etc.). Use
    :meth:`as_dataset` for training; ``len()``, :meth:`names`, :meth:`read` and iteration give
    the samples with their stored dtypes, like the other sources.

    Raises:
        DataError: the index is missing, not valid JSON, not a shard index, or of a newer
            format version (naming the file).
    """

    #: the kind of source (as the sources of ``zf_unet.data.sources``)
    kind = "shards"
    #: where the "{0, 255} masks" notice would point (shards hold class ids already)
    notice_where = INDEX_NAME

    def __init__(self, path: str | os.PathLike):
        self.path = str(path).rstrip("/") or str(path)
        index = join(self.path, INDEX_NAME)
        try:
            with tf.io.gfile.GFile(index, "r") as f:
                text = f.read()
        except tf.errors.NotFoundError:
            raise DataError(f"{index}: not found; expected a folder written by `zf-unet pack`"
                            ) from None
        except tf.errors.OpError as exc:
            raise DataError(f"{index}: cannot be read ({exc.message})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{index}: not valid JSON ({exc}); repack the data with "
                            "`zf-unet pack`") from None
        self.info: ShardInfo = ShardInfo.from_dict(data, index)
        self.files: list[str] = [join(self.path, name) for name in self.info.shards]

    def __repr__(self) -> str:
        return (f"ShardSource({self.path!r}: {len(self)} samples in {len(self.files)} shards, "
                f"{self.info.channels} channel(s){', weights' if self.info.has_weights else ''})")

    def __len__(self) -> int:
        return self.info.num_samples

    def names(self) -> list[str]:
        """The sample names in the order they were written."""
        return list(self.info.names)

    def keys(self) -> list[str]:
        """Per-sample names for reports: :meth:`names`."""
        return self.names()

    def paths(self, i: int) -> tuple[str, ...]:
        """The shard file that holds sample ``i``, as a 1-tuple."""
        return (self.files[self._locate(i)[0]],)

    def nbytes_hint(self) -> int:
        """Bytes of all images as float32 plus the uint8 masks (from the index)."""
        return self.info.num_pixels * (4 * self.info.channels + 1)

    def _locate(self, i: int) -> tuple[int, int]:
        """``(file index, record index in that file)`` of sample ``i`` (negative from the end)."""
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"ShardSource: sample {i} out of range (0..{n - 1}) in {self.path}")
        i = int(i) % n
        for f, count in enumerate(self.info.shard_counts):
            if i < count:
                return f, i
            i -= count
        raise AssertionError("unreachable")  # pragma: no cover

    # ----------------------------------------------------------------- tf.data
    def _parse(self, record: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """One serialized record -> ``(image float32 (H, W, C) in [0, 1], mask uint8
        (H, W, 1)[, weight float32 (H, W, 1)])``."""
        features = _features()
        if self.info.has_weights:
            features["weight"] = tf.io.FixedLenFeature([], tf.string)
        ex = tf.io.parse_single_example(record, features)
        shape = tf.cast(ex["shape"], tf.int32)

        def decode(dtype: str) -> tf.Tensor:
            raw = tf.io.decode_raw(ex["image"], tf.dtypes.as_dtype(dtype), little_endian=True)
            return scale_to_unit_tf(tf.reshape(raw, shape))

        dtypes = self.info.image_dtypes
        if len(dtypes) == 1:
            image = decode(dtypes[0])
        else:
            index = tf.argmax(tf.cast(tf.equal(ex["dtype"], tf.constant(list(dtypes))), tf.int32))
            image = tf.switch_case(tf.cast(index, tf.int32),
                                   [lambda d=d: decode(d) for d in dtypes])
        image.set_shape([None, None, self.info.channels])
        hw1 = tf.concat([shape[:2], [1]], axis=0)
        mask = tf.reshape(tf.io.decode_raw(ex["mask"], tf.uint8), hw1)
        mask.set_shape([None, None, 1])
        if not self.info.has_weights:
            return image, mask
        weight = tf.reshape(tf.io.decode_raw(ex["weight"], tf.float32, little_endian=True), hw1)
        weight.set_shape([None, None, 1])
        return image, mask, weight

    def as_dataset(self, *, shuffle_files: bool, seed: int = 0,
                   num_parallel_reads: int = -1,
                   input_context: tf.distribute.InputContext | None = None,
                   files: Sequence[str | tuple[str, int, int]] | None = None
                   ) -> tf.data.Dataset:
        """The samples as ``(image, mask[, weight])``: image float32 ``(H, W, C)`` in [0, 1]
        (integers divided by their dtype's maximum), mask uint8 ``(H, W, 1)``, weight float32
        ``(H, W, 1)`` when the shards hold border weights.

        ``shuffle_files=False`` reads the files one after another: the samples come in the
        written order. ``True`` shuffles the file order each epoch (with ``seed``) and reads
        ``num_parallel_reads`` files at once, non-deterministically interleaved; shuffle the
        samples further downstream. With ``input_context`` each input pipeline gets its own
        files (``ds.shard(num_input_pipelines, input_pipeline_id)``), or, when there are fewer
        files than pipelines, its own records; either way the pipelines together see every
        sample once. A damaged file raises ``tf.errors.DataLossError`` (iterate the source
        itself, or call :meth:`verify`, to learn which file). ``files``: a subset of
        :attr:`files` to read (default all), e.g. the shards that train when others validate;
        an item ``(file, start, stop)`` reads records ``start .. stop - 1`` of a file only.
        """
        parts = [(p, 0, -1) if isinstance(p, str) else (str(p[0]), int(p[1]), int(p[2]))
                 for p in (self.files if files is None else files)]
        paths = [p[0] for p in parts]
        files = tf.data.Dataset.from_tensor_slices((paths, np.asarray(
            [(p[1], -1 if p[2] < 0 else p[2] - p[1]) for p in parts], np.int64)))

        def read(path: tf.Tensor, span: tf.Tensor) -> tf.data.Dataset:
            return tf.data.TFRecordDataset(path).skip(span[0]).take(span[1])

        if shuffle_files:
            files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        shard_records = False
        if input_context is not None and input_context.num_input_pipelines > 1:
            if len(paths) >= input_context.num_input_pipelines:
                files = files.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
            else:
                shard_records = True
        if shuffle_files:
            # sharding records needs the same record order in every pipeline: deterministic,
            # and a cycle length that does not depend on the machine (AUTOTUNE would)
            ds = files.interleave(read, cycle_length=len(paths) if shard_records
                                  else num_parallel_reads,
                                  num_parallel_calls=num_parallel_reads,
                                  deterministic=shard_records)
        else:
            ds = files.interleave(read, cycle_length=1,
                                  num_parallel_calls=1, deterministic=True)
        if shard_records:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return ds.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=not shuffle_files)

    # ----------------------------------------------------------------- samples
    @staticmethod
    def _sample(record: Any) -> Any:
        from zf_unet.data.sources import Sample  # lazily: sources imports this module lazily

        return Sample(record.name, record.image, record.mask.copy(), scaled_from_255=False)

    def _file_records(self, f: int, start: int = 0) -> Iterator[Any]:
        """Records ``start ..`` of file ``f``, checked (:func:`file_records`)."""
        counts = self.info.shard_counts
        return file_records(self.info, self.files[f], sum(counts[:f]), counts[f], start)

    def __iter__(self) -> Iterator[Any]:
        """The samples in the written order: ``Sample(name, image (H, W, C) in its stored
        dtype, mask (H, W) uint8, scaled_from_255=False)``. A missing or damaged file, or one
        that does not agree with the index, raises a DataError naming the file."""
        for f in range(len(self.files)):
            yield from map(self._sample, self._file_records(f))

    def read(self, i: int) -> Any:
        """Sample ``i`` (see :meth:`__iter__`). Slow: reads its shard file through."""
        f, k = self._locate(i)
        return self._sample(next(self._file_records(f, k)))

    def weights(self) -> Iterator[np.ndarray]:
        """The stored border weight maps, float32 ``(H, W)``, in the written order."""
        if not self.info.has_weights:
            raise DataError(f"{self.path}: the shards hold no border weight maps (pack with "
                            "--border-weights)")
        for f in range(len(self.files)):
            yield from (record.weight for record in self._file_records(f))

    def verify(self) -> None:
        """Read every file through; a missing, truncated or miscounted file, or a record that
        does not agree with the index, raises a :class:`DataError` naming it."""
        for f in range(len(self.files)):
            for _ in self._file_records(f):
                pass
