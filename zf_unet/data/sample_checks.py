"""Checks of samples as they are read: sizes that fit, one channel count and dtype, finite
pixels, array layouts, masks border weight maps can use, and data a model can learn from.

Every check raises a :class:`zf_unet.errors.DataError` naming the file, array or sample and
what was expected. Sizes in messages are width x height (:func:`wxh`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from zf_unet.errors import DataError

__all__ = ["ImageConsistency", "MAX_LISTED", "check_binary_for_weights", "check_learnable",
           "check_same_size", "check_stacks", "name_list", "refuse_unlearnable",
           "split_samples", "wxh"]

#: How many names or values a message lists before "and N more".
MAX_LISTED = 5


def wxh(shape: Sequence[int]) -> str:
    """``"WxH"`` of an ``(H, W, ...)`` shape, as messages write sizes."""
    return f"{shape[1]}x{shape[0]}"


def name_list(names: Sequence[str]) -> str:
    """The first :data:`MAX_LISTED` of ``names``, comma-separated, plus "and N more"."""
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def check_same_size(mask_shape: Sequence[int], image_shape: Sequence[int], mask_name: str,
                    image_name: str) -> None:
    """Raise a :class:`DataError` naming both when a mask's ``(H, W)`` is not its image's.
    ``image_name`` is written as is after "does not match" (e.g. ``"its image a.png"``)."""
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        raise DataError(
            f"{mask_name}: size {wxh(mask_shape)} does not match {image_name} "
            f"({wxh(image_shape)}) (sizes are width x height)"
        )


class ImageConsistency:
    """Checks that every image of a data set has the channel count and dtype of the first one
    checked, and (float images) finite pixel values."""

    def __init__(self) -> None:
        self.first: tuple[str, int, np.dtype] | None = None

    def check(self, image: np.ndarray, name: str) -> None:
        """Raise a :class:`DataError` naming ``name`` for an ``(H, W, C)`` image that differs."""
        if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
            y, x, c = (int(v) for v in np.argwhere(~np.isfinite(image))[0])
            raise DataError(f"{name}: image holds NaN or Inf values (first at (y, x, c) = "
                            f"({y}, {x}, {c})); expected finite pixel values")
        if self.first is None:
            self.first = (name, image.shape[2], image.dtype)
            return
        first, channels, dtype = self.first
        if image.shape[2] != channels:
            raise DataError(
                f"{name}: {image.shape[2]} channel(s) but {first} has {channels}; "
                "all images must have the same number of channels"
            )
        if image.dtype != dtype:
            raise DataError(
                f"{name}: dtype {image.dtype} but {first} is {dtype}; all images must share "
                "one dtype (convert them to the same bit depth)"
            )


def check_stacks(volume: np.ndarray, labels: np.ndarray, volume_path: Union[str, Path],
                 labels_path: Union[str, Path]) -> None:
    """Check an image stack ``(N, H, W, C)`` against its label stack ``(N, H, W, C')``: same
    slice count and size, finite values. Raises :class:`DataError` naming the files."""
    vol_p, lab_p = Path(volume_path), Path(labels_path)
    if volume.shape[0] != labels.shape[0]:
        raise DataError(
            f"{lab_p}: {labels.shape[0]} slice(s) but the volume {vol_p} has {volume.shape[0]}; "
            "expected one label slice per image slice"
        )
    if volume.shape[1:3] != labels.shape[1:3]:
        raise DataError(
            f"{lab_p}: slice size {wxh(labels.shape[1:3])} does not match the volume {vol_p} "
            f"({wxh(volume.shape[1:3])}) (sizes are width x height)"
        )
    if volume.dtype.kind == "f" and not np.all(np.isfinite(volume)):
        raise DataError(f"{vol_p}: image stack holds NaN or Inf values; expected finite pixel "
                        "values")


def split_samples(data: Any, name: str, image: bool) -> list[np.ndarray]:
    """Split ``(N, H, W[, C])`` (or a sequence of ``(H, W[, C])``) into per-sample arrays
    (views; bool becomes uint8). ``name`` (``"images"`` / ``"masks"``) is used in errors."""
    what = "(N, H, W) or (N, H, W, C)" if image else "(N, H, W) or (N, H, W, 1)"
    if isinstance(data, np.ndarray) or not isinstance(data, Sequence):
        arr = np.asarray(data)
        if arr.ndim not in (3, 4):
            raise DataError(f"{name}: array of shape {arr.shape}; expected {what}")
        items = list(arr)
    else:
        items = [np.asarray(x) for x in data]
        for i, x in enumerate(items):
            if x.ndim not in (2, 3):
                raise DataError(
                    f"{name}[{i}]: shape {x.shape}; expected (H, W) or (H, W, C) per sample"
                )
    if not items:
        raise DataError(f"{name}: no samples (N = 0)")
    for i, x in enumerate(items):
        if x.dtype == bool:
            items[i] = x = x.astype(np.uint8)
        if x.dtype.kind not in "uif":
            raise DataError(f"{name}[{i}]: dtype {x.dtype} is not a real number type")
        if x.size == 0:
            raise DataError(f"{name}[{i}]: empty array of shape {x.shape}")
    return items


def check_binary_for_weights(mask: np.ndarray, ignore_index: int | None, name: str) -> None:
    """Border weight maps need binary masks: :class:`DataError` naming ``name`` for a mask
    with class ids above 1 (void pixels, ``ignore_index``, aside)."""
    labelled = mask if ignore_index is None else mask[mask != ignore_index]
    if labelled.size and labelled.max() > 1:
        raise DataError(f"border_weights: {name} has classes "
                        f"{sorted(np.unique(labelled).tolist())}; border weight maps need "
                        "binary masks (1 = cell interior)")


def check_learnable(data: Any, patch_size: int | None = None) -> None:
    """Refuse in-memory ``data`` (a :class:`zf_unet.data.DataSplit`) a model cannot learn
    from, as ``zf-unet check-data`` reports it: masks that all hold one class only (e.g.
    all-zero masks; void pixels, ``data.ignore_index``, are no class), and a ``patch_size``
    larger than every image (training would see mostly mirror padding). Raises
    :class:`DataError`."""
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
