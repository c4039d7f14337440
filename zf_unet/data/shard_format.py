"""The TFRecord shard format (``zf-unet pack``): records, the index, sizes.

:func:`zf_unet.data.shard_writer.write_shards` streams samples (anything with ``.name``, ``.image`` and ``.mask``) into
``out_dir/shard-00000-of-000NN.tfrecord`` files of about ``shard_size`` bytes each, plus an
index ``out_dir/zf_unet_shards.json`` (:data:`INDEX_NAME`).
:class:`zf_unet.data.shard_source.ShardSource` reads them back, as a
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

The index (:class:`ShardInfo` as JSON, checked by :func:`check_index`) holds the shard file names and per-shard counts, the
sample names in order, channels, image dtypes, weight-map parameters, ``num_classes``,
``ignore_index``, the class pixel counts of
:func:`zf_unet.data.stats.class_pixel_counts` (for ``class_weights="auto"``), per-channel
sums and sums of squares of the images scaled to [0, 1] (for mean / std), and user ``meta``.

Every file goes through ``tf.io.gfile``, so ``out_dir`` may be ``gs://...``. The set is built in
a hidden temporary folder beside ``out_dir`` and moved into place at the end: a local folder is
renamed at once; on other file systems the files are renamed one by one with the index last,
so an index always describes complete shards.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zf_unet.backend import lazy_tensorflow
from zf_unet.errors import ConfigError, DataError

tf = lazy_tensorflow("TFRecord shards")

__all__ = ["FORMAT_VERSION", "IMAGE_DTYPES", "INDEX_NAME", "REPACK", "ShardInfo", "check_index",
           "is_shard_folder", "parse_size", "record_features"]

#: Name of the index file in a shard folder.
INDEX_NAME = "zf_unet_shards.json"
#: Version of the shard format written; readers refuse newer versions.
FORMAT_VERSION = 1
#: Image dtypes a record may hold.
IMAGE_DTYPES = ("uint8", "uint16", "float32")
#: How messages about a damaged shard folder end.
REPACK = "repack the data with `zf-unet pack`"

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
    :func:`zf_unet.data.stats.class_pixel_counts`). ``channel_sum`` / ``channel_sum_sq``:
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
        check_index(info, source)
        return info


def check_index(info: Any, source: str = INDEX_NAME,
                dtypes: Sequence[str] = IMAGE_DTYPES) -> None:
    """:class:`DataError` naming ``source`` when the fields of a parsed index
    (:class:`ShardInfo`) contradict each other or list an image dtype
    not in ``dtypes``."""
    def bad(what: str) -> DataError:
        return DataError(f"{source}: {what}; {REPACK}")

    unknown = [d for d in info.image_dtypes if d not in dtypes]
    if unknown:
        raise DataError(f"{source}: unsupported image dtype {unknown[0]!r}; expected one of "
                        f"{', '.join(dtypes)}")
    if info.num_samples < 1 or any(c < 1 for c in info.shard_counts):
        raise bad(f"expected at least one sample per shard, got shard_counts "
                  f"{list(info.shard_counts)}")
    for name in info.shards:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise bad(f"shard file name {name!r} is not a plain file name")
    if len(set(info.shards)) != len(info.shards):
        raise bad("a shard file is listed twice")
    if info.channels < 1:
        raise bad(f"channels = {info.channels}; expected 1 or more")
    if len(info.channel_sum) != info.channels or len(info.channel_sum_sq) != info.channels:
        raise bad(f"channels = {info.channels}, but channel_sum / channel_sum_sq hold "
                  f"{len(info.channel_sum)} / {len(info.channel_sum_sq)} values")
    if not info.image_dtypes:
        raise bad("image_dtypes is empty")
    if info.has_weights and (info.w0 is None or info.sigma is None):
        raise bad("has_weights = true without w0 / sigma")
    if len(info.class_pixels) < 2 or len(info.class_pixels) != len(info.class_image_pixels):
        raise bad(f"class_pixels / class_image_pixels hold {len(info.class_pixels)} / "
                  f"{len(info.class_image_pixels)} values; expected the same number, >= 2")
    if info.num_classes is not None and info.num_classes < 1:
        raise bad(f"num_classes = {info.num_classes}; expected 1 or more")
    if info.sizes:
        if len(info.sizes) != info.num_samples:
            raise bad(f"{len(info.sizes)} sizes for {info.num_samples} samples")
        if any(h < 1 or w < 1 for h, w in info.sizes):
            raise bad("a sample size is not positive")
        pixels = sum(h * w for h, w in info.sizes)
        if pixels != info.num_pixels:
            raise bad(f"num_pixels = {info.num_pixels}, but the sizes add up to {pixels}")


# --------------------------------------------------------------------------- records and folders

def record_features() -> dict:
    """The ``tf.io.parse_single_example`` features of one record."""
    return {
        "name": tf.io.FixedLenFeature([], tf.string),
        "image": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "dtype": tf.io.FixedLenFeature([], tf.string),
        "mask": tf.io.FixedLenFeature([], tf.string),
    }


def is_shard_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` (local, or ``gs://`` etc. through ``tf.io.gfile``) holds a shard
    index (:data:`INDEX_NAME`)."""
    text = os.fspath(path)
    if "://" in text:  # gs://, s3:// ...: through TensorFlow's file system
        return bool(tf.io.gfile.exists(text.rstrip("/") + "/" + INDEX_NAME))
    return (Path(text) / INDEX_NAME).is_file()
