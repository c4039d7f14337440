"""Data sources: one registry of finite, indexable sets of samples, read lazily.

Every kind of training data (a folder with ``images/`` and ``masks/``, a pair of multi-page
TIFF stacks, in-memory arrays, the built-in synthetic set, a TensorFlow Datasets set) is a
:class:`Source`: ``len(source)`` samples, cheap :meth:`Source.names`, and
:meth:`Source.read` that reads and decodes ONE sample. :func:`open_source` turns what a user
writes (a path, a pair, ``"synthetic"``, ``"tfds:NAME"``) into a source; the kinds are listed
in :data:`zf_unet.registry.SOURCES`. The in-memory loaders (:func:`zf_unet.data.io.load_folder`
...) and :func:`zf_unet.data.load_source` are :func:`collect` over a source.

A :class:`Sample` holds the image as stored (``(H, W, C)``, ``uint8`` / ``uint16`` / float,
not yet scaled) and the mask after the conventions of :func:`zf_unet.data.io.normalize_mask`
(``(H, W)`` ``uint8`` class ids, void pixels kept as ``ignore_index``).
"""
from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zf_unet.data import io
from zf_unet.errors import DataError

__all__ = ["ArraySource", "FolderSource", "SHARD_INDEX", "Sample", "Source", "StackSource",
           "SyntheticSource", "TFDSSource", "TFDS_PREFIX", "collect", "open_source",
           "read_all"]

#: A data source string that names a TensorFlow Datasets data set: ``"tfds:NAME"``.
TFDS_PREFIX = "tfds:"
#: The index file of a TFRecord shard folder (``zf-unet pack``, :mod:`zf_unet.data.shards`).
SHARD_INDEX = "zf_unet_shards.json"

#: Channels of a Pillow mode as :func:`zf_unet.data.io.read_image` returns it.
_PIL_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "LA": 2, "PA": 4, "RGB": 3, "RGBA": 4,
                 "CMYK": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}


@dataclass(frozen=True)
class Sample:
    """One image and its mask, as a :class:`Source` reads them.

    Attributes:
        name: what messages call it (``"images/a.png"``, ``"train-volume.tif[3]"``,
            ``"array[2]"``, ``"synthetic[5]"``).
        image: ``(H, W, C)`` as read (``uint8`` / ``uint16`` / float), not yet scaled.
        mask: ``(H, W)`` ``uint8`` class ids after the mask conventions (void kept as
            ``ignore_index``).
        scaled_from_255: the mask held {0, 255} and was mapped to {0, 1}.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    scaled_from_255: bool = False


class Source(abc.ABC):
    """A finite, indexable set of samples, read lazily (one sample per :meth:`read`)."""

    #: the name of this kind in :data:`zf_unet.registry.SOURCES`
    kind: ClassVar[str]
    #: where the one "{0, 255} masks" notice of :func:`collect` says the masks are
    notice_where: str = "masks"

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of samples."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """The samples' names (as :attr:`Sample.name`), without decoding anything."""

    @abc.abstractmethod
    def read(self, i: int) -> Sample:
        """Read and decode sample ``i`` only. Raises :class:`DataError` naming the file on
        bad input, :class:`IndexError` for ``i`` out of range."""

    def __iter__(self) -> Iterator[Sample]:
        """``read(0) .. read(n - 1)``, one at a time."""
        for i in range(len(self)):
            yield self.read(i)

    def keys(self) -> list[str]:
        """Short per-sample names for reports (``DataSplit.names``): :meth:`names` unless a
        kind has shorter ones (a folder: the image file names)."""
        return self.names()

    def paths(self, i: int) -> tuple[str, ...]:
        """The files sample ``i`` comes from (``()`` for in-memory samples)."""
        self._index(i)
        return ()

    def nbytes_hint(self) -> int:
        """Estimated bytes of all images as float32 plus the ``uint8`` masks (decides in-memory
        caching). This default reads every sample; the kinds override it with headers."""
        return sum(_nbytes(s.image.shape) for s in self)

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"{type(self).__name__}: sample {i} out of range (0..{n - 1})")
        return int(i) % n

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples)"


def _nbytes(shape: Sequence[int]) -> int:
    """float32 image ``(H, W[, C])`` plus its ``uint8`` ``(H, W)`` mask."""
    h, w = int(shape[0]), int(shape[1])
    c = int(shape[2]) if len(shape) > 2 else 1
    return h * w * (4 * c + 1)


def collect(source: Source, convert: Callable[[np.ndarray, str], np.ndarray] | None = None
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """All samples of ``source`` in memory: ``(images, masks)``, lists of ``(H, W, C)`` images
    (``convert(image, key)`` of each when given, e.g. to float32) and ``(H, W)`` ``uint8``
    masks. Logs one notice when masks held {0, 255} (:func:`zf_unet.data.io.notice_scaled`)."""
    images, masks, n_scaled = read_all(source, convert)
    io.notice_scaled(n_scaled, len(masks), source.notice_where)
    return images, masks


def read_all(source: Source, convert: Callable[[np.ndarray, str], np.ndarray] | None = None
             ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """:func:`collect` without the notice: ``(images, masks, n_scaled)``, ``n_scaled`` the
    number of masks that held {0, 255} and were read as {0, 1}."""
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    n_scaled = 0
    keys = source.keys() if convert is not None else []
    for i, sample in enumerate(source):
        images.append(sample.image if convert is None else convert(sample.image, keys[i]))
        masks.append(sample.mask)
        n_scaled += sample.scaled_from_255
    return images, masks, n_scaled


# --------------------------------------------------------------------------- headers


def _image_shape(path: Path) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image file from its header (as :func:`io.read_image` returns it)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            n, h, w, c = _tiff_shape(path)
            return h, w, c
        from PIL import Image

        with Image.open(path) as im:
            mode = im.mode
            if mode == "P":
                channels = 4 if "transparency" in im.info else 3
            else:
                channels = _PIL_CHANNELS.get(mode, len(im.getbands()))
            return im.size[1], im.size[0], channels
    except Exception:  # noqa: BLE001 - let the reader decode it, or say what is wrong
        h, w, c = io.read_image(path).shape
        return h, w, c


def _tiff_shape(path: Path) -> tuple[int, int, int, int]:
    """``(N, H, W, C)`` of a TIFF from its page headers (as :func:`io.read_stack` returns)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = list(tif.series)
        if not series:
            raise DataError(f"{path}: TIFF holds no images")
        shape, axes = series[0].shape, series[0].axes
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: TIFF has axes {axes!r}; expected Y and X axes")
    pages = int(np.prod([s for s, a in zip(shape, axes) if a not in "YXSC"], dtype=np.int64))
    channels = int(np.prod([s for s, a in zip(shape, axes) if a in "SC"], dtype=np.int64))
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    return pages * len(series), int(h), int(w), channels


# --------------------------------------------------------------------------- kinds


class FolderSource(Source):
    """``folder/images/*`` paired with ``folder/masks/*`` by file stem
    (:func:`zf_unet.data.io.find_pairs`); sample ``i`` reads those two files only.

    Args:
        folder, images, masks: the folder and its two subfolders' names.
        convention, num_classes, palette, class_values, ignore_index: the mask rules
            (:func:`zf_unet.data.io.normalize_mask`).
        strict: ``True`` raises for files without a partner; ``False`` keeps the pairs and
            records the problem in :attr:`problems` (and the files in :attr:`unpaired`).

    Raises:
        DataError: a missing or empty folder, duplicate names, unpaired files (``strict``),
            bad mask arguments.
    """

    kind = "folder"

    def __init__(self, folder: io.PathLike, images: str = "images", masks: str = "masks", *,
                 convention: str = "auto", num_classes: int | str | None = None,
                 palette: io.Palette | None = None, class_values: io.ClassValues | None = None,
                 ignore_index: int | None = None, strict: bool = True) -> None:
        self.root = Path(folder)
        self.rules = io.MaskRules(convention, num_classes, palette, class_values, ignore_index)
        self.pairs, self.unpaired, message = io.match_pairs(self.root, images, masks)
        if message is not None and strict:
            raise DataError(message)
        #: pairing problems found with ``strict=False`` (messages)
        self.problems: list[str] = [] if message is None else [message]
        self.notice_where = str(self.root / masks)
        self._consistency = io.ImageConsistency()

    def __len__(self) -> int:
        return len(self.pairs)

    def names(self) -> list[str]:
        return [f"{img.parent.name}/{img.name}" for img, _ in self.pairs]

    def keys(self) -> list[str]:
        return [img.name for img, _ in self.pairs]

    def paths(self, i: int) -> tuple[str, ...]:
        return tuple(str(p) for p in self.pairs[self._index(i)])

    def read_raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, C), raw mask (H, W, C'))`` of pair ``i`` as the files hold them
        (no checks, no mask conventions). Raises :class:`DataError` naming an unreadable
        file."""
        img_path, mask_path = self.pairs[self._index(i)]
        image = io.read_image(img_path)
        raw = io.read_image(mask_path, keep_palette_indices=self.rules.keep_palette_indices)
        return image, raw

    def read(self, i: int) -> Sample:
        i = self._index(i)
        img_path, mask_path = self.pairs[i]
        image, raw = self.read_raw(i)
        img_name, mask_name = io.rel_name(img_path, self.root), io.rel_name(mask_path, self.root)
        io.check_same_size(raw.shape, image.shape, mask_name, f"its image {img_name}")
        self._consistency.check(image, img_name)
        mask, scaled = self.rules.apply(raw, mask_name)
        return Sample(f"{img_path.parent.name}/{img_path.name}", image, mask, scaled)

    def nbytes_hint(self) -> int:
        return sum(_nbytes(_image_shape(img)) for img, _ in self.pairs)


class StackSource(Source):
    """An image stack and its label stack (multi-page TIFFs, e.g. ISBI's ``train-volume.tif``
    / ``train-labels.tif``); slice ``i`` is sample ``i``. Both stacks are read once, on the
    first :meth:`read`, and kept. ``len`` and :meth:`names` read the page headers only.

    Raises:
        DataError: bad mask arguments; on first read: unreadable files, different slice
            counts or sizes, NaN/Inf pixels.
    """

    kind = "stacks"

    def __init__(self, volume: io.PathLike, labels: io.PathLike, *, convention: str = "auto",
                 num_classes: int | str | None = None, palette: io.Palette | None = None,
                 class_values: io.ClassValues | None = None,
                 ignore_index: int | None = None) -> None:
        self.volume, self.labels = Path(volume), Path(labels)
        self.rules = io.MaskRules(convention, num_classes, palette, class_values, ignore_index)
        self.notice_where = str(labels)
        self._stacks: tuple[np.ndarray, np.ndarray] | None = None
        self._count: int | None = None

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stacks is None:
            volume, labels = io.read_stack(self.volume), io.read_stack(self.labels)
            io.check_stacks(volume, labels, self.volume, self.labels)
            self._stacks = (volume, labels)
        return self._stacks

    def __len__(self) -> int:
        if self._stacks is not None:
            return int(self._stacks[0].shape[0])
        if self._count is None:
            try:
                self._count = _tiff_shape(self.volume)[0]
            except Exception:  # noqa: BLE001 - let the reader say what is wrong
                return int(self._load()[0].shape[0])
        return self._count

    def names(self) -> list[str]:
        return [f"{self.volume.name}[{i}]" for i in range(len(self))]

    def paths(self, i: int) -> tuple[str, ...]:
        self._index(i)
        return str(self.volume), str(self.labels)

    def read(self, i: int) -> Sample:
        volume, labels = self._load()
        i = self._index(i)
        mask, scaled = self.rules.apply(labels[i], f"{self.labels} (slice {i})")
        return Sample(f"{self.volume.name}[{i}]", volume[i], mask, scaled)

    def nbytes_hint(self) -> int:
        if self._stacks is not None:
            return len(self) * _nbytes(self._stacks[0].shape[1:])
        try:
            n, h, w, c = _tiff_shape(self.volume)
        except Exception:  # noqa: BLE001 - let the reader say what is wrong
            return len(self) * _nbytes(self._load()[0].shape[1:])
        return n * _nbytes((h, w, c))


class _InMemory(Source):
    """Samples already in their final form (``(H, W, C)`` images, ``(H, W)`` uint8 masks),
    named ``prefix[i]``."""

    kind = "memory"

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], prefix: str) -> None:
        self._images, self._masks, self.prefix = images, masks, prefix

    def __len__(self) -> int:
        return len(self._images)

    def names(self) -> list[str]:
        return [f"{self.prefix}[{i}]" for i in range(len(self))]

    def read(self, i: int) -> Sample:
        i = self._index(i)
        return Sample(f"{self.prefix}[{i}]", self._images[i], self._masks[i], False)

    def nbytes_hint(self) -> int:
        return sum(_nbytes(img.shape) for img in self._images)


class ArraySource(_InMemory):
    """In-memory ``(images, masks)``: ``(N, H, W[, C])`` arrays or sequences of
    ``(H, W[, C])`` arrays (:func:`zf_unet.data.io.load_arrays`); samples are views.

    Raises:
        DataError: wrong ndim or dtype, different N, bad mask arguments; on read: size
            mismatch, NaN/Inf, bad mask values.
    """

    kind = "arrays"

    def __init__(self, images: np.ndarray | Sequence[np.ndarray],
                 masks: np.ndarray | Sequence[np.ndarray], *, convention: str = "auto",
                 num_classes: int | str | None = None, palette: io.Palette | None = None,
                 class_values: io.ClassValues | None = None,
                 ignore_index: int | None = None, prefix: str = "array") -> None:
        self.rules = io.MaskRules(convention, num_classes, palette, class_values, ignore_index)
        super().__init__(io.split_samples(images, "images", True),
                         io.split_samples(masks, "masks", False), prefix)
        if len(self._images) != len(self._masks):
            raise DataError(f"masks: {len(self._masks)} sample(s) but images has "
                            f"{len(self._images)}; expected the same N")
        self._consistency = io.ImageConsistency()

    def read(self, i: int) -> Sample:
        i = self._index(i)
        img, m = self._images[i], self._masks[i]
        if img.ndim == 2:
            img = img[:, :, None]
        io.check_same_size(m.shape, img.shape, f"masks[{i}]", f"images[{i}]")
        self._consistency.check(img, f"images[{i}]")
        mask, scaled = self.rules.apply(m, f"masks[{i}]")
        return Sample(f"{self.prefix}[{i}]", img, mask, scaled)


class SyntheticSource(Source):
    """The built-in EM-like set (:func:`zf_unet.data.make_synthetic`): ``n`` images of
    ``size x size`` from ``seed``; float32 ``(size, size, channels)`` images in [0, 1] and
    masks 1 = cell interior. Sample ``i`` depends only on ``(seed, i)``; the set is generated
    once, on the first :meth:`read`."""

    kind = "synthetic"

    def __init__(self, n: int = 32, size: int = 128, seed: int = 0, channels: int = 1) -> None:
        if n < 1 or size < 16 or channels < 1:
            raise DataError(f"synthetic: need n >= 1, size >= 16, channels >= 1; got n={n}, "
                            f"size={size}, channels={channels}")
        self.n, self.size, self.seed, self.channels = int(n), int(size), int(seed), int(channels)
        self._data: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n

    def names(self) -> list[str]:
        return [f"synthetic[{i}]" for i in range(self.n)]

    def read(self, i: int) -> Sample:
        i = self._index(i)
        if self._data is None:
            from zf_unet.data.synthetic import make_synthetic

            self._data = make_synthetic(self.n, self.size, self.seed, self.channels)
        images, masks = self._data
        return Sample(f"synthetic[{i}]", images[i], masks[i, :, :, 0], False)

    def nbytes_hint(self) -> int:
        return self.n * _nbytes((self.size, self.size, self.channels))


class TFDSSource(Source):
    """A TensorFlow Datasets segmentation set (:func:`zf_unet.data.tfds_sources.load_tfds`,
    ``tfds_kwargs`` passed on). Read whole on first use (TFDS sets here are small). Masks are
    taken as class ids; with ``class_values`` they go through the mask rules like arrays.

    Raises:
        DataError: from :func:`load_tfds`, or a data set without examples.
    """

    kind = "tfds"

    def __init__(self, name: str, *, convention: str = "auto",
                 num_classes: int | str | None = None, palette: io.Palette | None = None,
                 class_values: io.ClassValues | None = None, ignore_index: int | None = None,
                 **tfds_kwargs: Any) -> None:
        self.name = name
        self.tfds_kwargs = tfds_kwargs
        self._rules = dict(convention=convention, num_classes=num_classes, palette=palette,
                           class_values=class_values, ignore_index=ignore_index)
        self._samples: Source | None = None

    def _load(self) -> Source:
        if self._samples is None:
            from zf_unet.data.tfds_sources import load_tfds

            images, masks = [], []
            for img, msk in load_tfds(self.name, **self.tfds_kwargs).as_numpy_iterator():
                images.append(img)
                masks.append(msk[..., 0])
            if not images:
                raise DataError(f"TFDS dataset {self.name!r}: no examples")
            if self._rules["class_values"] is not None:
                self._samples = ArraySource(images, masks, prefix=self.name, **self._rules)
            else:
                self._samples = _InMemory(images, masks, self.name)
        return self._samples

    def __len__(self) -> int:
        return len(self._load())

    def names(self) -> list[str]:
        return self._load().names()

    def read(self, i: int) -> Sample:
        return self._load().read(i)

    def nbytes_hint(self) -> int:
        return self._load().nbytes_hint()


# --------------------------------------------------------------------------- resolver


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _shard_index_exists(spec: str | os.PathLike) -> bool:
    text = os.fspath(spec)
    if "://" in text:  # gs://, s3:// ...: through TensorFlow's file system
        import tensorflow as tf

        return bool(tf.io.gfile.exists(text.rstrip("/") + "/" + SHARD_INDEX))
    return (Path(text) / SHARD_INDEX).is_file()


def open_source(spec: Any, *, convention: str = "auto", num_classes: int | str | None = None,
                palette: io.Palette | None = None, class_values: io.ClassValues | None = None,
                ignore_index: int | None = None, tfds_kwargs: dict | None = None,
                synthetic: tuple[int, int, int] | None = None) -> Any:
    """The :class:`Source` a user's data spec names (nothing is decoded yet).

    Args:
        spec: a :class:`Source` (returned as is); ``"synthetic"`` (``synthetic=(n, size,
            seed)``, default ``(32, 128, 0)``); ``"tfds:NAME"`` (``tfds_kwargs`` passed to
            :func:`zf_unet.data.tfds_sources.load_tfds`); a TFRecord shard folder (local or
            ``gs://``, holding ``zf_unet_shards.json``: a ``ShardSource``); a folder with
            ``images/`` and ``masks/``; a pair of TIFF stack paths ``(volume, labels)``; a pair
            of arrays ``(images, masks)``.
        convention, num_classes, palette, class_values, ignore_index: the mask rules
            (:func:`zf_unet.data.io.normalize_mask`).

    Raises:
        DataError: a missing path ("no such folder"), a file where a folder is expected, an
            unknown kind of spec, or what the chosen source raises.
    """
    if isinstance(spec, Source) or getattr(spec, "kind", None) == "shards":
        return spec  # a Source, or an open ShardSource
    kw = dict(convention=convention, num_classes=num_classes, palette=palette,
              class_values=class_values, ignore_index=ignore_index)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        a, b = spec
        if _is_path(a) and _is_path(b):
            return StackSource(a, b, **kw)
        return ArraySource(a, b, **kw)
    if isinstance(spec, str) and spec == "synthetic":
        return SyntheticSource(*(synthetic or ()))
    if isinstance(spec, str) and spec.startswith(TFDS_PREFIX):
        return TFDSSource(spec[len(TFDS_PREFIX):], **kw, **(tfds_kwargs or {}))
    if _is_path(spec):
        if _shard_index_exists(spec):
            from zf_unet.data.shards import ShardSource

            return ShardSource(spec)
        if not Path(spec).exists():
            raise DataError(f"{spec}: no such folder; expected a folder with images/ and "
                            f"masks/ (or {TFDS_PREFIX}NAME for a TensorFlow Datasets data set)")
        if not Path(spec).is_dir():
            raise DataError(f"{spec}: not a folder; expected a folder with images/ and masks/")
        return FolderSource(spec, **kw)
    raise DataError(f"source: expected a folder, (volume.tif, labels.tif), (images, masks) "
                    f"arrays or '{TFDS_PREFIX}NAME'; got {type(spec).__name__}")
