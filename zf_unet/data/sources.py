"""Data sources: the interface of finite, indexable sets of samples, read lazily.

Every kind of training data is a :class:`Source`: ``len(source)`` samples, cheap
:meth:`Source.names`, and :meth:`Source.read` that reads and decodes ONE sample. The kinds
live in their own modules and are listed in :data:`zf_unet.registry.SOURCES`: a folder with
``images/`` and ``masks/`` and a pair of multi-page TIFF stacks
(:mod:`zf_unet.data.file_sources`), in-memory arrays and the built-in synthetic set
(:mod:`zf_unet.data.memory_sources`), a TensorFlow Datasets set
(:mod:`zf_unet.data.tfds_sources`) and TFRecord shards (:mod:`zf_unet.data.shard_source`).
:func:`open_source` turns what a user writes (a path, a pair, ``"synthetic"``,
``"tfds:NAME"``) into a source, looking the kind up in the registry (this module imports no
kind). The in-memory loaders (:mod:`zf_unet.data.loaders`) are :func:`collect` over a source.

A :class:`Sample` holds the image as stored (``(H, W, C)``, ``uint8`` / ``uint16`` / float,
not yet scaled) and the mask after the conventions of :func:`zf_unet.data.masks.normalize_mask`
(``(H, W)`` ``uint8`` class ids, void pixels kept as ``ignore_index``).

Streaming (:func:`zf_unet.data.make_datasets` with ``cache`` not ``"memory"``) asks a source
for its :meth:`Source.parts`, a training / validation :meth:`Source.hold_out` and its
:meth:`Source.streams`; the defaults read samples by index (:mod:`zf_unet.data.streaming`),
TFRecord shards override them.
"""
from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zf_unet.data.masks import ClassValues, Palette, notice_scaled
from zf_unet.data.shard_format import is_shard_folder
from zf_unet.data.splits import split_indices
from zf_unet.errors import DataError
from zf_unet.registry import SOURCES

__all__ = ["Sample", "Source", "TFDS_PREFIX", "collect", "open_source", "read_all",
           "sample_nbytes"]

#: A data source string that names a TensorFlow Datasets data set: ``"tfds:NAME"``.
TFDS_PREFIX = "tfds:"


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
    #: ``True`` for a kind that is the streamable form already (``cache="auto"`` streams it)
    always_streams: ClassVar[bool] = False

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
        return sum(sample_nbytes(s.image.shape) for s in self)

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"{type(self).__name__}: sample {i} out of range (0..{n - 1})")
        return int(i) % n

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples)"

    # ----------------------------------------------------------------- streaming
    def parts(self) -> Sequence[Any]:
        """Every sample, as the parts :meth:`streams` reads: the indices ``0 .. n - 1``."""
        return range(len(self))

    def hold_out(self, val_fraction: float, val_indices: Sequence[int] | None, seed: int
                 ) -> tuple[Sequence[Any], Sequence[Any]]:
        """``(training parts, validation parts)``: ``val_indices``, or a seeded random
        ``val_fraction`` of the samples (:func:`zf_unet.data.splits.split_indices`)."""
        return split_indices(len(self), val_fraction, val_indices, seed)

    def streams(self, part: Sequence[Any], *, seed: int, border_weights: bool,
                ignore_index: int | None, skip_bad_files: bool, log: Any,
                weight_cache: str | Path | None, w0: float, sigma: float,
                cache_file: str | None) -> tuple[Any, Callable[..., Any]]:
        """``(stats, stream)`` of the samples ``part``: one pre-pass that reads each once
        (a :class:`zf_unet.data.stats.SampleStats`; border weight maps into
        ``weight_cache``), and ``stream(context, shuffle, repeat)``, a ``tf.data.Dataset``
        of ``(image float32 (H, W, C), mask uint8 (H, W, 1)[, weight float32 (H, W, 1)])``
        that decodes the samples on the fly (:func:`zf_unet.data.streaming.file_streams`)."""
        from zf_unet.data.streaming import file_streams

        return file_streams(self, part, seed=seed, border_weights=border_weights,
                            ignore_index=ignore_index, skip_bad_files=skip_bad_files, log=log,
                            weight_cache=weight_cache, w0=w0, sigma=sigma,
                            cache_file=cache_file)

    def stream_counted(self, skip_bad_files: bool) -> bool:
        """Whether :meth:`streams` yields exactly the samples its pre-pass counted (with
        ``skip_bad_files`` a sample may still fail mid-epoch and be left out)."""
        return not skip_bad_files


def sample_nbytes(shape: Sequence[int]) -> int:
    """Bytes of a float32 image ``(H, W[, C])`` plus its ``uint8`` ``(H, W)`` mask."""
    h, w = int(shape[0]), int(shape[1])
    c = int(shape[2]) if len(shape) > 2 else 1
    return h * w * (4 * c + 1)


def collect(source: Source, convert: Callable[[np.ndarray, str], np.ndarray] | None = None
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """All samples of ``source`` in memory: ``(images, masks)``, lists of ``(H, W, C)`` images
    (``convert(image, key)`` of each when given, e.g. to float32) and ``(H, W)`` ``uint8``
    masks. Logs one notice when masks held {0, 255} (:func:`zf_unet.data.masks.notice_scaled`)."""
    images, masks, n_scaled = read_all(source, convert)
    notice_scaled(n_scaled, len(masks), source.notice_where)
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


# --------------------------------------------------------------------------- resolver


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def open_source(spec: Any, *, convention: str = "auto", num_classes: int | str | None = None,
                palette: Palette | None = None, class_values: ClassValues | None = None,
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
            (:func:`zf_unet.data.masks.normalize_mask`).

    Raises:
        DataError: a missing path ("no such folder"), a file where a folder is expected, an
            unknown kind of spec, or what the chosen source raises.
    """
    if isinstance(spec, Source):
        return spec
    kw = dict(convention=convention, num_classes=num_classes, palette=palette,
              class_values=class_values, ignore_index=ignore_index)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        a, b = spec
        if _is_path(a) and _is_path(b):
            return SOURCES["stacks"](a, b, **kw)
        return SOURCES["arrays"](a, b, **kw)
    if isinstance(spec, str) and spec == "synthetic":
        return SOURCES["synthetic"](*(synthetic or ()))
    if isinstance(spec, str) and spec.startswith(TFDS_PREFIX):
        return SOURCES["tfds"](spec[len(TFDS_PREFIX):], **kw, **(tfds_kwargs or {}))
    if _is_path(spec):
        if is_shard_folder(spec):
            return SOURCES["shards"](spec)
        if not Path(spec).exists():
            raise DataError(f"{spec}: no such folder; expected a folder with images/ and "
                            f"masks/ (or {TFDS_PREFIX}NAME for a TensorFlow Datasets data set)")
        if not Path(spec).is_dir():
            raise DataError(f"{spec}: not a folder; expected a folder with images/ and masks/")
        return SOURCES["folder"](spec, **kw)
    raise DataError(f"source: expected a folder, (volume.tif, labels.tif), (images, masks) "
                    f"arrays or '{TFDS_PREFIX}NAME'; got {type(spec).__name__}")
