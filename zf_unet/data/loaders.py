"""Load a whole data set into memory: the samples of a source, collected.

:func:`load_folder`, :func:`load_tiff_stacks` and :func:`load_arrays` return plain lists
``(images, masks)`` of one kind of source each (:mod:`zf_unet.data.sources`, looked up in
:data:`zf_unet.registry.SOURCES`); :func:`load_source` reads any source a user can name into a
:class:`zf_unet.data.DataSplit` with float32 images in [0, 1].
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zf_unet.data.masks import ClassValues, Palette, notice_scaled, resolve_num_classes
from zf_unet.data.pairing import PathLike
from zf_unet.data.sources import collect, open_source, read_all
from zf_unet.data.splits import DataSplit
from zf_unet.pixels import to_float_image
from zf_unet.registry import SOURCES

__all__ = ["load_arrays", "load_folder", "load_source", "load_tiff_stacks", "read_source"]


def _collect(kind: str, *spec: Any, **rules: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every sample of the source ``SOURCES[kind](*spec, **rules)`` in memory (one notice for
    {0, 255} masks): ``(images (H, W, C) as stored, masks (H, W) uint8 class ids)``."""
    return collect(SOURCES[kind](*spec, **rules))


def load_folder(
    folder: PathLike,
    convention: str = "auto",
    num_classes: int | str | None = None,
    palette: Palette | None = None,
    *,
    images: str = "images",
    masks: str = "masks",
    class_values: ClassValues | None = None,
    ignore_index: int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Load ``folder/images/*`` and ``folder/masks/*`` (paired by :func:`zf_unet.data.pairing.find_pairs`).

    Returns:
        ``(images, masks)``: lists of ``(H, W, C)`` arrays (stored dtype, same ``C`` and
        dtype for all) and of ``(H, W)`` ``uint8`` class ids. Sizes may differ between
        pairs but an image and its mask always match. ``class_values`` / ``ignore_index``:
        see :func:`zf_unet.data.masks.normalize_mask`.

    Raises:
        DataError: see :func:`zf_unet.data.pairing.find_pairs`, :func:`zf_unet.data.io.read_image`,
            :func:`zf_unet.data.masks.normalize_mask`; an
            image/mask size mismatch (naming both files); mixed channel counts or dtypes.
    """
    return _collect("folder", folder, images, masks, convention=convention,
                    num_classes=num_classes, palette=palette, class_values=class_values,
                    ignore_index=ignore_index)


def load_tiff_stacks(
    volume_path: PathLike,
    labels_path: PathLike,
    convention: str = "auto",
    num_classes: int | str | None = None,
    palette: Palette | None = None,
    *,
    class_values: ClassValues | None = None,
    ignore_index: int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Load an image stack and its label stack (ISBI ``train-volume.tif`` / ``train-labels.tif``).

    Returns:
        ``(images, masks)`` like :func:`load_folder`: ``N`` arrays ``(H, W, C)`` and ``N``
        ``(H, W)`` ``uint8`` class-id masks (``class_values`` / ``ignore_index``: see
        :func:`zf_unet.data.masks.normalize_mask`).

    Raises:
        DataError: unreadable files, different slice counts or sizes, bad mask values.
    """
    return _collect("stacks", volume_path, labels_path, convention=convention,
                    num_classes=num_classes, palette=palette, class_values=class_values,
                    ignore_index=ignore_index)


def load_arrays(
    images: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    convention: str = "auto",
    num_classes: int | str | None = None,
    palette: Palette | None = None,
    *,
    class_values: ClassValues | None = None,
    ignore_index: int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate in-memory data and normalise its masks.

    Args:
        images: ``(N, H, W)`` or ``(N, H, W, C)`` array (or a sequence of ``(H, W[, C])``).
        masks: ``(N, H, W)`` or ``(N, H, W, 1)`` array (``(N, H, W, 3)`` with a palette), or a
            sequence of per-sample masks.
        convention, num_classes, palette, class_values, ignore_index: see
            :func:`zf_unet.data.masks.normalize_mask`.

    Returns:
        ``(images, masks)`` like :func:`load_folder`: ``(H, W, C)`` arrays (views, no copy)
        and ``(H, W)`` ``uint8`` class ids.

    Raises:
        DataError: wrong ndim, N or size mismatch, NaN/Inf in images, bad mask values.
    """
    return _collect("arrays", images, masks, convention=convention, num_classes=num_classes,
                    palette=palette, class_values=class_values, ignore_index=ignore_index)


def load_source(source: Any, *, num_classes: int | str | None = None, convention: str = "auto",
                palette: Any = None, tfds_kwargs: dict | None = None,
                class_values: ClassValues | None = None,
                ignore_index: int | None = None) -> DataSplit:
    """Read any supported source into memory.

    ``source`` is one of: a folder with ``images/`` and ``masks/``; a pair of multi-page TIFF
    paths ``(volume.tif, labels.tif)``; a pair of arrays ``(images, masks)``; or a TFDS name
    written ``"tfds:NAME"`` (e.g. ``"tfds:oxford_iiit_pet"``). Any other string is a path: a
    missing one is a :class:`DataError` ("no such folder"), never a TFDS look-up.

    ``num_classes``: K (1 = binary), ``None`` (the binary conventions, or the number of
    ``class_values`` entries), or ``"auto"`` (inferred by
    :func:`zf_unet.data.masks.infer_num_classes`, logged).
    ``class_values`` / ``ignore_index``: see :func:`zf_unet.data.masks.normalize_mask`. The
    returned split carries ``num_classes`` and ``ignore_index``.
    """
    data = read_source(source, num_classes, convention, palette, tfds_kwargs, class_values,
                       ignore_index)
    data.num_classes = resolve_num_classes(data.masks, num_classes, class_values,
                                            ignore_index)
    return data


def read_source(source: Any, num_classes: int | str | None = None, convention: str = "auto",
                palette: Any = None, tfds_kwargs: dict | None = None,
                class_values: ClassValues | None = None,
                ignore_index: int | None = None) -> DataSplit:
    """:func:`load_source` without resolving ``num_classes``: every sample of the source
    :func:`zf_unet.data.sources.open_source` names, images as float32 in [0, 1]."""
    src = open_source(source, convention=convention, num_classes=num_classes, palette=palette,
                      class_values=class_values, ignore_index=ignore_index,
                      tfds_kwargs=tfds_kwargs)
    floats, masks, scaled = read_all(src, to_float_image)
    notice_scaled(scaled, len(masks), src.notice_where)
    return DataSplit(floats, [np.asarray(m, np.uint8) for m in masks], None, src.keys(),
                     ignore_index, scaled=scaled)
