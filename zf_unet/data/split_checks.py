"""Training and validation masks that must agree: the same mask convention, the same classes.

Two mistakes give wrong validation scores without an error when each split is read on its
own: a ``data.val_source`` whose masks use another convention than the training data
({0, 255} binary masks beside class ids 0..K-1 are read as classes 0 / 1), and a class that
only the validation masks hold (with ``data.num_classes = 0``, auto, it widens the model by an
output that training never sees). :func:`check_val_masks` refuses both for a separate
``data.val_source`` and warns (one line) when a random hold-out (``data.val_fraction``) has a
class the training samples lack.
"""
from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

from zf_unet.errors import DataError

__all__ = ["check_val_masks", "seen_ids"]

logger = logging.getLogger("zf_unet")


def seen_ids(masks: Iterable[np.ndarray], ignore_index: int | None) -> np.ndarray:
    """The class ids present in uint8 ``masks`` (void, ``ignore_index``, excluded), sorted."""
    seen = np.zeros(256, bool)
    for m in masks:
        seen |= np.bincount(np.asarray(m, np.uint8).ravel(), minlength=256) > 0
    if ignore_index is not None:
        seen[int(ignore_index)] = False
    return np.flatnonzero(seen)


def _convention(ids: np.ndarray, scaled: int, n: int) -> str:
    if scaled:
        return f"{{0, 255}} binary masks ({scaled} of {n} read as {{0, 1}})"
    if ids.size and ids.max() > 1:
        return f"class ids {ids.tolist()}"
    return "{0, 1} binary masks"


def check_val_masks(train_ids: np.ndarray, val_ids: np.ndarray, *, train_scaled: int,
                    val_scaled: int, n_train: int, n_val: int, auto_classes: bool,
                    val_source: bool) -> None:
    """Refuse validation masks that do not match the training masks.

    Args:
        train_ids / val_ids: class ids present in each split (void excluded).
        train_scaled / val_scaled: samples of each split whose masks held {0, 255}.
        n_train / n_val: samples in each split.
        auto_classes: ``num_classes="auto"`` (``data.num_classes = 0``): K comes from the masks.
        val_source: the validation data is a separate source (else a random hold-out).

    Raises:
        DataError: (``val_source`` only) {0, 255} binary masks on one side and class ids
            above 1 on the other, naming ``data.val_source`` and both conventions; or, with
            ``auto_classes``, a class id above every training class that only validation holds.
    """
    train_ids, val_ids = np.asarray(train_ids), np.asarray(val_ids)
    if not n_val or not n_train:
        return
    multi_train = bool(train_ids.size and train_ids.max() > 1)
    multi_val = bool(val_ids.size and val_ids.max() > 1)
    if val_source and ((val_scaled and multi_train) or (train_scaled and multi_val)):
        raise DataError(
            f"data.val_source: masks are {_convention(val_ids, val_scaled, n_val)}, but the "
            f"training masks are {_convention(train_ids, train_scaled, n_train)}; expected "
            "the same mask convention in both (save the validation masks as the training "
            "data's class ids)")
    extra = sorted(set(val_ids.tolist()) - set(train_ids.tolist()))
    if not extra:
        return
    key = "data.val_source" if val_source else "data.val_fraction"
    top = int(train_ids.max()) if train_ids.size else -1
    if val_source and auto_classes and extra[-1] > max(top, 1):
        raise DataError(
            f"data.val_source: class id(s) {extra} appear only in the validation masks; with "
            "data.num_classes = 0 (auto) the model would get output classes that training "
            f"never sees; expected validation classes among the training classes "
            f"{train_ids.tolist()} (or set data.num_classes explicitly)")
    logger.warning("%s: class id(s) %s appear only in the validation masks, never in the "
                   "training masks (data.num_classes); the model cannot learn them", key, extra)
