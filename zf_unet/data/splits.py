"""What 2-D and 3-D training share: in-memory splits, the split of samples into training and
validation, the statistics of the training data, and the ``(train, val)`` result.

:func:`zf_unet.data.make_datasets` and :func:`zf_unet.data.make_volume_datasets` both return
a :class:`Datasets`: a ``(train, val)`` tuple (so ``train, val = make_datasets(...)`` works)
whose ``.info`` is the :class:`DataInfo` of the training data.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from zf_unet.data.stats import SampleStats
from zf_unet.errors import DataError

__all__ = ["DataInfo", "DataSplit", "Datasets", "datasets_result", "split_indices"]


@dataclass
class DataSplit:
    """In-memory samples: lists of ``(H, W, C)`` float32 images, ``(H, W)`` uint8 masks and
    optional ``(H, W)`` float32 weight maps. ``ignore_index``: the mask value of void pixels
    (``None``: none); ``num_classes``: K as the model sees it (1 = binary), when known;
    ``scaled``: how many masks held {0, 255} and were read as {0, 1}."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    weights: list[np.ndarray] | None = None
    names: list[str] = field(default_factory=list)
    ignore_index: int | None = None
    num_classes: int | None = None
    scaled: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: Sequence[int]) -> "DataSplit":
        """The samples ``idx``, as a split of the same class."""
        return type(self)([self.images[i] for i in idx], [self.masks[i] for i in idx],
                          None if self.weights is None else [self.weights[i] for i in idx],
                          [self.names[i] for i in idx] if self.names else [],
                          self.ignore_index, self.num_classes)

    def planes(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """``(name, image (H, W, C), mask (H, W))`` of every 2-D sample, as statistics count
        them (a volume split: every z-section)."""
        for i, (image, mask) in enumerate(zip(self.images, self.masks)):
            yield (self.names[i] if self.names else f"image {i}"), image, mask

    def info(self, num_val: int) -> "DataInfo":
        """The :class:`DataInfo` of these (training) samples, ``num_val`` held out: class
        counts and channel statistics counted by :class:`zf_unet.data.stats.SampleStats`."""
        stats = SampleStats(self.ignore_index)
        for name, image, mask in self.planes():
            stats.add(image, mask, name)
        return DataInfo.from_stats(stats, int(self.num_classes or 1), len(self), num_val)


@dataclass
class DataInfo:
    """Statistics of the training data: ``.info`` of what :func:`zf_unet.data.make_datasets`
    and :func:`zf_unet.data.make_volume_datasets` return (:class:`Datasets`).

    Attributes:
        num_classes: K for the model (1 = binary, ids 0/1).
        channels: C of the images.
        class_pixels: int64 ``(max(K, 2),)``: training-mask pixels per class (void excluded).
        class_image_pixels: int64 ``(max(K, 2),)``: labelled (non-void) pixels of the
            training images in which each class appears (for median-frequency balancing).
        mean / std: float32 ``(C,)``: per-channel mean and standard deviation of the
            training images in [0, 1] scale (all pixels, before patching/augmentation).
        ignore_index: mask value of void pixels, or ``None``.
        num_train / num_val: samples (images or slices) in each split.
        streaming: True when the datasets read the files on the fly (``cache`` not
            ``"memory"``); ``read_log`` then records a file that failed mid-epoch
            (:class:`zf_unet.data.streaming.ReadLog`), and ``make_train(input_context)``
            builds the training stream of one ``tf.distribute`` input pipeline (its own
            share of the files, per-replica batches) for
            ``strategy.distribute_datasets_from_function``.
    """

    num_classes: int
    channels: int
    class_pixels: np.ndarray
    class_image_pixels: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    ignore_index: int | None
    num_train: int
    num_val: int
    streaming: bool = False
    #: a :class:`zf_unet.data.streaming.ReadLog`, when streaming
    read_log: Any = None
    #: ``make_train(input_context: tf.distribute.InputContext) -> tf.data.Dataset``
    make_train: Callable[[Any], Any] | None = None

    @classmethod
    def from_stats(cls, stats: SampleStats, num_classes: int, num_train: int, num_val: int,
                   **extra: Any) -> "DataInfo":
        """The info of training samples counted in ``stats`` (its ``ignore_index``), for a
        model of ``num_classes`` (K, 1 = binary); ``extra``: the streaming fields."""
        k = int(num_classes)
        pixels, image_pixels = stats.class_counts(k)
        mean, std = stats.mean_std()
        return cls(num_classes=k, channels=stats.channels, class_pixels=pixels,
                   class_image_pixels=image_pixels, mean=mean, std=std,
                   ignore_index=stats.ignore_index, num_train=num_train, num_val=num_val,
                   **extra)


def split_indices(n: int, val_fraction: float, val_indices: Sequence[int] | None,
                  seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, validation indices)`` of ``n`` samples: ``val_indices``, or a seeded
    random ``val_fraction`` of them."""
    if val_indices is not None:
        val = sorted({int(i) % n for i in val_indices})
        if any(int(i) >= n or int(i) < -n for i in val_indices):
            raise DataError(f"val_indices: {list(val_indices)} out of range for {n} samples")
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n_val = int(round(n * val_fraction))
        if val_fraction > 0 and n > 1:
            n_val = max(1, n_val)
        perm = np.random.default_rng(seed).permutation(n)
        val = sorted(int(i) for i in perm[:n_val])
    train = [i for i in range(n) if i not in set(val)]
    if not train:
        raise DataError(f"no training samples left: {n} samples, {len(val)} for validation")
    return train, val


class Datasets(tuple):
    """``(train, val)``: the training and validation ``tf.data.Dataset`` (``val`` is ``None``
    when nothing is held out), with :attr:`info`, the :class:`DataInfo` of the training data.
    Unpacks like a pair: ``train, val = make_datasets(...)``."""

    def __new__(cls, train: Any, val: Any, info: DataInfo) -> "Datasets":
        self = super().__new__(cls, (train, val))
        self.info = info
        return self

    def __getnewargs__(self) -> tuple[Any, Any, DataInfo]:  # copy / pickle
        return self[0], self[1], self.info

    @property
    def train(self) -> Any:
        """The training ``tf.data.Dataset``."""
        return self[0]

    @property
    def val(self) -> Any:
        """The validation ``tf.data.Dataset``, or ``None``."""
        return self[1]

    def __repr__(self) -> str:
        return f"Datasets(train={self[0]!r}, val={self[1]!r})"


def datasets_result(train: Any, val: Any, info: DataInfo, with_info: bool, caller: str) -> Any:
    """What ``caller`` (``make_datasets`` ...) returns: a :class:`Datasets`, or with the
    deprecated ``with_info=True`` the old ``(train, val, info)`` tuple (with a
    ``DeprecationWarning``)."""
    if not with_info:
        return Datasets(train, val, info)
    warnings.warn(f"{caller}(..., with_info=True) is deprecated and will be removed: "
                  f"{caller}(...) returns (train, val) with the DataInfo as .info",
                  DeprecationWarning, stacklevel=3)
    return train, val, info
