"""Checks of TFRecord shard folders (``zf-unet pack``): the index, the files, every record.

A shard folder can be damaged in ways TensorFlow would only report mid-epoch, as a
traceback that names no file (a truncated record), or not at all (an index that lies about
the channels silently reshapes the pixels). This module turns each into a
:class:`zf_unet.errors.DataError` naming the shard file or the index and what was wrong:

* :func:`zf_unet.data.shard_format.check_index`: the fields of ``zf_unet_shards.json`` agree
  with each other (when the index is read);
* :func:`check_files`: every listed file exists and is not empty (cheap, at open time);
* :func:`read_records` / :func:`decode_record`: each record reads (length and data CRCs) and
  agrees with the index (channels, dtype, border weights, size, name);
* :func:`scan_shards`: the training pre-pass over all records of some files, with the
  statistics of :class:`zf_unet.data.stats.SampleStats`; with ``skip_bad_files`` a
  damaged or missing file is left out with one warning naming it.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from zf_unet.data.shard_format import INDEX_NAME, REPACK
from zf_unet.data.stats import SampleStats
from zf_unet.data.streaming import ReadLog
from zf_unet.errors import ConfigError, DataError
from zf_unet.pixels import to_float_image
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("TFRecord shards")

__all__ = ["Part", "Record", "all_parts", "check_files", "decode_record", "file_records",
           "hold_out_shards", "read_records", "scan_shards", "shard_streams"]


class Record(NamedTuple):
    """One decoded record: name, image ``(H, W, C)`` in its stored dtype, mask ``(H, W)``
    uint8 class ids, weight map ``(H, W)`` float32 or ``None``."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    weight: np.ndarray | None


# --------------------------------------------------------------------------- files

def _size(file: str) -> int | None:
    """Bytes of ``file``, ``None`` when it does not exist."""
    try:
        return int(tf.io.gfile.stat(file).length)
    except tf.errors.NotFoundError:
        return None


def check_files(files: Sequence[str]) -> dict[str, DataError]:
    """The files of ``files`` that are missing or empty, each with its :class:`DataError`
    (cheap: one ``stat`` per file)."""
    problems: dict[str, DataError] = {}
    for file in files:
        size = _size(file)
        if size is None:
            problems[file] = DataError(f"{file}: shard file not found (listed in "
                                       f"{INDEX_NAME}); {REPACK}")
        elif size == 0:
            problems[file] = DataError(f"{file}: shard file is empty (0 bytes); {REPACK}")
    return problems


def _tf_message(exc: tf.errors.OpError) -> str:
    """TensorFlow's error message without the op names around it, on one line."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*$", "", exc.message, flags=re.DOTALL)
    return " ".join(text.replace("'", "").split()) or type(exc).__name__


def read_records(file: str, skip: int = 0) -> Iterator[bytes]:
    """The raw records of ``file`` (eagerly, CRC-checked), a missing or damaged file as a
    :class:`DataError` naming it."""
    it = None
    while True:
        try:
            if it is None:
                it = iter(tf.data.TFRecordDataset(file).skip(skip))
            record = next(it)
        except StopIteration:
            return
        except tf.errors.NotFoundError:
            raise DataError(f"{file}: shard file not found (listed in {INDEX_NAME}); "
                            f"{REPACK}") from None
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            raise DataError(f"{file}: damaged shard file ({_tf_message(exc)}); "
                            f"{REPACK}") from None
        yield record.numpy()


# --------------------------------------------------------------------------- records

def _feature(features: Any, key: str, kind: str, where: str) -> Any:
    if key not in features or not getattr(features[key], kind).value:
        raise DataError(f"{where}: damaged record (no {key!r} field); {REPACK}")
    return getattr(features[key], kind).value


def decode_record(info: Any, record: bytes, file: str, position: int,
                  index: int | None = None) -> Record:
    """Record ``position`` of ``file`` decoded and checked against the index ``info``; with
    the sample ``index`` (its place in the whole set) also its name and size. Anything that
    does not agree is a :class:`DataError` naming the file and the field."""
    where = f"{file}: record {position}"
    try:
        features = tf.train.Example.FromString(record).features.feature
    except Exception as exc:  # noqa: BLE001 - any decoding problem is a damaged record
        raise DataError(f"{where}: damaged record ({type(exc).__name__}: {exc}); "
                        f"{REPACK}") from None
    try:
        name = bytes(_feature(features, "name", "bytes_list", where)[0]).decode("utf-8")
        dtype = bytes(_feature(features, "dtype", "bytes_list", where)[0]).decode("ascii")
    except UnicodeDecodeError:
        raise DataError(f"{where}: damaged record (name or dtype not text); {REPACK}") from None
    where = f"{where} ({name})"
    shape = tuple(int(s) for s in _feature(features, "shape", "int64_list", where))
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"{where}: damaged record (shape {list(shape)}); {REPACK}")
    h, w, c = shape
    lie = f"; the index does not describe these shards, {REPACK}"
    if c != info.channels:
        raise DataError(f"{where}: image has {c} channel(s), {INDEX_NAME} says channels = "
                        f"{info.channels}{lie}")
    if dtype not in info.image_dtypes:
        raise DataError(f"{where}: image dtype {dtype!r}, {INDEX_NAME} lists "
                        f"{list(info.image_dtypes)}{lie}")
    if index is not None and info.sizes and tuple(info.sizes[index]) != (h, w):
        sh, sw = info.sizes[index]
        raise DataError(f"{where}: image is {h}x{w} (HxW), {INDEX_NAME} says {sh}x{sw}{lie}")
    if index is not None and info.names[index] != name:
        raise DataError(f"{where}: sample {index} is named {name!r}, {INDEX_NAME} lists "
                        f"{info.names[index]!r}{lie}")
    if ("weight" in features) != bool(info.has_weights):
        held = "holds" if "weight" in features else "holds no"
        raise DataError(f"{where}: {held} border weight map, {INDEX_NAME} says has_weights = "
                        f"{str(bool(info.has_weights)).lower()}{lie}")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    raw = [(_feature(features, "image", "bytes_list", where)[0], np_dtype, shape, "image"),
           (_feature(features, "mask", "bytes_list", where)[0], np.dtype(np.uint8), (h, w),
            "mask")]
    if info.has_weights:
        raw.append((_feature(features, "weight", "bytes_list", where)[0], np.dtype("<f4"),
                    (h, w), "weight"))
    arrays = []
    for data, dt, shp, label in raw:
        want = int(np.prod(shp)) * dt.itemsize
        if len(data) != want:
            raise DataError(f"{where}: damaged record ({label} holds {len(data)} bytes, its "
                            f"shape {list(shp)} needs {want}); {REPACK}")
        arrays.append(np.frombuffer(data, dt).reshape(shp).astype(dt.newbyteorder("=")))
    return Record(name, arrays[0], arrays[1], arrays[2] if info.has_weights else None)


def file_records(info: Any, file: str, first: int, count: int, start: int = 0,
                 stop: int | None = None) -> Iterator[Record]:
    """Records ``start .. stop - 1`` of ``file`` (which holds samples ``first .. first +
    count - 1`` of the set), each checked (:func:`decode_record`); then the number of records
    in the whole file against the index's ``count``."""
    stop = count if stop is None else stop
    found = 0
    for position, record in enumerate(read_records(file)):
        found += 1
        if start <= position < min(stop, count):
            yield decode_record(info, record, file, position, first + position)
    if found != count:
        raise DataError(f"{file}: holds {found} records, {INDEX_NAME} lists {count}; {REPACK}")


# --------------------------------------------------------------------------- the pre-pass

#: A part of a shard set: ``(file, start, stop)``, records ``start .. stop - 1`` of a file.
Part = tuple[str, int, int]


def all_parts(src: Any) -> list[Part]:
    """Every file of the shard set ``src`` as a whole :data:`Part`."""
    return [(file, 0, count) for file, count in zip(src.files, src.info.shard_counts)]


def scan_shards(src: Any, parts: Sequence[Part], *, ignore_index: int | None = None,
                skip_bad_files: bool = False, log: ReadLog | None = None
                ) -> tuple[SampleStats, list[Part]]:
    """Read the records of the shard ``parts`` of ``src`` (a :class:`zf_unet.data.ShardSource`)
    once, checked (each whole file is read: its record count is checked too), and count what
    training needs (:class:`SampleStats`). Returns the result and the parts that read; a
    missing or damaged file raises a :class:`DataError` naming it, or, with
    ``skip_bad_files``, is left out with one warning (and counted in ``log``)."""
    result, good = SampleStats(ignore_index), []
    log = log or ReadLog()
    first = {file: sum(src.info.shard_counts[:i]) for i, file in enumerate(src.files)}
    counts = dict(zip(src.files, src.info.shard_counts))
    problems = check_files(sorted({file for file, _, _ in parts}))
    for part in parts:
        file, start, stop = part
        try:
            if file in problems:
                raise problems[file]
            one = SampleStats(ignore_index, channels=result.channels)
            for record in file_records(src.info, file, first[file], counts[file], start, stop):
                one.add(to_float_image(record.image, record.name), record.mask, record.name)
        except DataError as exc:
            if not skip_bad_files:
                raise
            log.skip(file, exc)
            continue
        result.merge(one)
        good.append(part)
    return result, good


def shard_streams(src: Any, parts: Sequence[Part], *, border_weights: bool,
                  ignore_index: int | None, seed: int, skip_bad_files: bool,
                  log: ReadLog) -> tuple[SampleStats, Callable[..., Any]]:
    """``(scan, stream)`` of the shard ``parts`` of a :class:`zf_unet.data.ShardSource` for
    :func:`zf_unet.data.make_datasets`, ``stream(context, shuffle, repeat)`` the samples:
    the pre-pass reads and checks every record once (:func:`scan_shards`; stored weight maps
    are not recomputed); a damaged file stops with a DataError naming it, or is left out."""
    if border_weights and not src.info.has_weights:
        raise DataError(f"{src.path}: border_weights = true, but these shards hold no border "
                        "weight maps; pack them with zf-unet pack --border-weights")
    result, parts = scan_shards(src, parts, ignore_index=ignore_index,
                                skip_bad_files=skip_bad_files, log=log)

    def stream(context: Any = None, shuffle: bool = False, repeat: bool = False) -> Any:
        ds = src.as_dataset(shuffle_files=shuffle, seed=seed, input_context=context,
                            files=parts)
        if src.info.has_weights and not border_weights:
            ds = ds.map(lambda image, mask, weight: (image, mask))
        return ds.repeat() if repeat else ds

    return result, stream


def hold_out_shards(src: Any, val_fraction: float, val_indices: Sequence[int] | None
                    ) -> tuple[list[Part], list[Part]]:
    """Training and validation parts of a shard set: the last ``round(n * val_fraction)``
    samples (at least 1) are held out, as whole files where they fill them, else also the
    last records of one file (records cannot be picked out of a shard at random cheaply)."""
    if val_indices is not None:
        raise DataError(f"{src.path}: val_indices cannot pick samples out of TFRecord shards; "
                        "pack the validation data separately and set val_source")
    parts = all_parts(src)
    n = sum(src.info.shard_counts)
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction = {val_fraction}: expected a number in [0, 1)")
    want = max(1, int(round(n * val_fraction))) if val_fraction > 0 and n > 1 else 0
    if want >= n:
        raise DataError(f"{src.path}: {n} sample(s); holding out val_fraction = {val_fraction} "
                        "leaves none to train on; set val_fraction = 0 or pack validation "
                        "data separately and set val_source")
    train, val = parts, []
    while want:
        file, _, count = train.pop()
        take = min(want, count)
        val.insert(0, (file, count - take, count))
        if take < count:
            train.append((file, 0, count - take))
        want -= take
    return train, val
