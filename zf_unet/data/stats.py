"""Statistics of a data set, counted one sample at a time: the one counter of the package.

:class:`SampleStats` counts, for every sample added, its ``(H, W)`` size, the image's
channels, dtype and value range, per-channel sums of the pixels scaled to [0, 1] (for the
mean and standard deviation), and per mask value the labelled pixels, the labelled pixels
of the samples holding it, and the samples holding it. Void pixels (``ignore_index``) are
only counted as ignored. Every statistic of the package comes from it: the streaming
pre-pass (:func:`zf_unet.data.streaming.scan`), the TFRecord shard writer and reader,
:class:`zf_unet.data.DataInfo`, :func:`class_pixel_counts`, :func:`describe_dataset` and
``zf-unet check-data``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from zf_unet.errors import DataError
from zf_unet.pixels import scale_to_unit

__all__ = ["SampleStats", "class_pixel_counts", "describe_dataset", "median_frequency_weights"]

_VALUES = 256  # mask values counted from the start (uint8 masks); more grow the tables


class SampleStats:
    """Statistics of samples added one at a time (bounded memory).

    Attributes:
        sizes: ``(H, W)`` of every sample, in the order added.
        channels: C of the first image (0 before the first); ``channel_set`` all C seen.
        dtypes / vmin / vmax: image dtypes (names) and value range, as stored.
        class_pixels: int64 ``(V,)``: labelled (non-void) mask pixels per value.
        class_image_pixels: int64 ``(V,)``: per value, the labelled pixels of the samples
            in which it appears (for median-frequency balancing).
        masks_with_class: int64 ``(V,)``: per value, the samples whose mask holds it.
        ignored: void pixels (``ignore_index``); single: masks holding one class only;
            empty: indices of masks without a labelled pixel above 0.
        channel_sum / channel_sq: float64 ``(C,)``: sums of the pixel values scaled to
            [0, 1] (:func:`zf_unet.pixels.scale_to_unit`) and of their squares over
            ``pixels`` pixels per channel.
        bad / bad_indices / scaled: what a pre-pass met: names and indices of samples it
            could not read (left out), and masks that held {0, 255} (read as {0, 1}).

    Args:
        ignore_index: the mask value of void pixels, or ``None``.
        channels: the C every image must have (0: that of the first one).
        strict_channels: raise a :class:`DataError` for an image with another C (``False``:
            record it in ``channel_set``; the moments then count the first C only).
    """

    def __init__(self, ignore_index: int | None = None, *, channels: int = 0,
                 strict_channels: bool = True) -> None:
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.strict_channels = strict_channels
        self.sizes: list[tuple[int, int]] = []
        self.channels = int(channels)
        self.channel_set: set[int] = set()
        self.dtypes: set[str] = set()
        self.vmin, self.vmax = np.inf, -np.inf
        self.class_pixels = np.zeros(_VALUES, np.int64)
        self.class_image_pixels = np.zeros(_VALUES, np.int64)
        self.masks_with_class = np.zeros(_VALUES, np.int64)
        self.ignored = 0
        self.single = 0
        self.empty: list[int] = []
        self.channel_sum: np.ndarray | None = None
        self.channel_sq: np.ndarray | None = None
        self.pixels = 0
        self.bad: list[str] = []
        self.bad_indices: list[int] = []
        self.scaled = 0

    @property
    def n(self) -> int:
        """The number of samples added."""
        return len(self.sizes)

    # ----------------------------------------------------------------- counting
    def _grow(self, size: int) -> None:
        extra = size - self.class_pixels.size
        if extra > 0:
            pad = np.zeros(extra, np.int64)
            self.class_pixels = np.concatenate([self.class_pixels, pad])
            self.class_image_pixels = np.concatenate([self.class_image_pixels, pad])
            self.masks_with_class = np.concatenate([self.masks_with_class, pad])

    def _count(self, counts: np.ndarray, void: int) -> None:
        """One mask: ``counts`` of its labelled pixels per value, ``void`` pixels aside."""
        self._grow(counts.size)
        present = counts > 0
        n = counts.size
        self.class_pixels[:n] += counts
        self.class_image_pixels[:n] += np.where(present, int(counts.sum()), 0)
        self.masks_with_class[:n] += present
        self.ignored += int(void)
        if np.count_nonzero(present) == 1:
            self.single += 1
        if not counts[1:].any():
            self.empty.append(self.n)

    def add_labels(self, labels: np.ndarray, void: int = 0) -> None:
        """Count one mask given as the non-negative class ids of its labelled pixels (any
        shape) and its number of ``void`` pixels; no size or image statistics."""
        self._count(np.bincount(np.ravel(labels), minlength=_VALUES).astype(np.int64), void)

    def add(self, image: np.ndarray, mask: np.ndarray, name: str | None = None) -> None:
        """Count one sample: ``image`` ``(H, W, C)`` or ``(H, W)`` in any image dtype (as
        stored, or float32 in [0, 1]), ``mask`` ``(H, W)`` or ``(H, W, 1)`` integer class
        ids. Raises :class:`DataError` naming ``name`` (default ``images[i]`` /
        ``masks[i]``) when they do not fit."""
        img, m, i = np.asarray(image), np.asarray(mask), self.n
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[:, :, 0]
        mask_name = f"masks[{i}]" if name is None else f"{name} (mask)"
        if m.ndim != 2 or img.shape[:2] != m.shape:
            raise DataError(f"{mask_name}: shape {m.shape} does not fit "
                            f"{f'images[{i}]' if name is None else name} of shape {img.shape}")
        if m.dtype.kind not in "uib":
            raise DataError(f"{mask_name}: dtype {m.dtype}; expected integer class ids")
        if m.dtype.kind == "i" and m.size and m.min() < 0:
            raise DataError(f"{mask_name}: negative values; expected class ids >= 0")
        c = 1 if img.ndim == 2 else int(img.shape[2])
        if self.channels and c != self.channels and self.strict_channels:
            raise DataError(f"{f'images[{i}]' if name is None else name}: {c} channel(s), but "
                            f"earlier images have {self.channels}; expected the same number "
                            "of channels")
        self.channels = self.channels or c
        self.channel_set.add(c)
        self.dtypes.add(str(img.dtype))
        if img.size:
            self.vmin = min(self.vmin, float(np.min(img)))
            self.vmax = max(self.vmax, float(np.max(img)))
        if c == self.channels:
            flat = scale_to_unit(img).reshape(-1, c).astype(np.float64)
            if self.channel_sum is None or self.channel_sq is None:
                self.channel_sum, self.channel_sq = np.zeros(c), np.zeros(c)
            self.channel_sum += flat.sum(axis=0)
            self.channel_sq += np.square(flat).sum(axis=0)
            self.pixels += flat.shape[0]
        counts = np.bincount(m.ravel(), minlength=_VALUES).astype(np.int64)
        void = 0
        if self.ignore_index is not None and self.ignore_index < counts.size:
            void = int(counts[self.ignore_index])
            counts[self.ignore_index] = 0
        self._count(counts, void)
        self.sizes.append((int(m.shape[0]), int(m.shape[1])))

    def update(self, sample: Any) -> None:
        """Add a :class:`zf_unet.data.Sample` (its ``image``, ``mask`` and ``name``)."""
        self.add(sample.image, sample.mask, sample.name)

    def merge(self, other: "SampleStats") -> None:
        """Add the samples counted in ``other`` (same channels, same ``ignore_index``)."""
        if not other.sizes:
            return
        if self.channels and other.channels != self.channels and self.strict_channels:
            raise DataError(f"{other.channels} channel(s), but earlier images have "
                            f"{self.channels}; expected the same number of channels")
        self.channels = self.channels or other.channels
        self.channel_set |= other.channel_set
        self.dtypes |= other.dtypes
        self.vmin, self.vmax = min(self.vmin, other.vmin), max(self.vmax, other.vmax)
        self._grow(other.class_pixels.size)
        n = other.class_pixels.size
        self.class_pixels[:n] += other.class_pixels
        self.class_image_pixels[:n] += other.class_image_pixels
        self.masks_with_class[:n] += other.masks_with_class
        self.empty += [self.n + i for i in other.empty]
        self.sizes += other.sizes
        self.ignored += other.ignored
        self.single += other.single
        if other.channel_sum is not None and other.channel_sq is not None:
            if self.channel_sum is None or self.channel_sq is None:
                self.channel_sum, self.channel_sq = np.zeros(self.channels), np.zeros(self.channels)
            self.channel_sum += other.channel_sum
            self.channel_sq += other.channel_sq
        self.pixels += other.pixels
        self.bad += other.bad
        self.bad_indices += other.bad_indices
        self.scaled += other.scaled

    # ----------------------------------------------------------------- results
    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and standard deviation of the images in [0, 1], float32 ``(C,)``."""
        total = self.channel_sum if self.channel_sum is not None else np.zeros(self.channels)
        squares = self.channel_sq if self.channel_sq is not None else np.zeros(self.channels)
        mean = total / max(1, self.pixels)
        var = np.maximum(squares / max(1, self.pixels) - mean ** 2, 0.0)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

    def seen_classes(self) -> np.ndarray:
        """Mask values present (void excluded), sorted int64."""
        return np.flatnonzero(self.class_pixels)

    def class_counts(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """``(class_pixels, class_image_pixels)``, int64 ``(max(K, 2),)``, for the model's
        ``K = num_classes`` (1 = binary); a :class:`DataError` when a mask value is no class
        id below K."""
        k = max(2, int(num_classes))
        values = self.seen_classes()
        if values.size and values.max() >= k:
            raise DataError(f"mask values must be class ids in 0..{k - 1} (or ignore_index="
                            f"{self.ignore_index}), got {values[:10].tolist()}")
        self._grow(k)
        return self.class_pixels[:k].copy(), self.class_image_pixels[:k].copy()

    def summary(self) -> dict[str, Any]:
        """The :func:`describe_dataset` dict; ``{}`` before the first sample."""
        if not self.n:
            return {}
        values = self.seen_classes().tolist()
        pixels = {c: int(self.class_pixels[c]) for c in values}
        total = max(1, sum(pixels.values()))
        heights = [h for h, _ in self.sizes]
        widths = [w for _, w in self.sizes]
        return {
            "ignored_pixels": self.ignored,
            "num_samples": self.n,
            "sizes": dict(sorted(Counter(f"{w}x{h}" for h, w in self.sizes).items())),
            "height_range": [min(heights), max(heights)],
            "width_range": [min(widths), max(widths)],
            "channels": sorted(self.channel_set),
            "image_dtypes": sorted(self.dtypes),
            "image_value_range": [self.vmin, self.vmax],
            "class_pixel_counts": pixels,
            "class_frequencies": {c: k / total for c, k in pixels.items()},
            "masks_with_class": {c: int(self.masks_with_class[c])
                                 for c in np.flatnonzero(self.masks_with_class).tolist()},
            "foreground_fraction": 1.0 - pixels.get(0, 0) / total,
            "empty_masks": len(self.empty),
            "empty_mask_indices": list(self.empty),
            "single_class_masks": self.single,
        }


def class_pixel_counts(masks: Iterable[Any], num_classes: int,
                       ignore_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixel counts for median-frequency balancing.

    Args:
        masks: ``(H, W)`` / ``(H, W, 1)`` masks, or stacks ``(N, H, W[, 1])`` (each slice an
            image): class ids 0..K-1, or for ``num_classes=1`` binary masks (> 0.5 = 1).
        num_classes: the model's K (1 counts background and foreground: 2 classes).
        ignore_index: mask value of pixels to leave out.

    Returns:
        ``(class_pixels, class_image_pixels)``, int64 ``(max(K, 2),)``: the pixels of each
        class, and the (non-ignored) pixels of the images in which the class appears.
    """
    k = max(2, int(num_classes))
    stats = SampleStats(ignore_index)
    for mask in masks:
        m = np.asarray(mask)
        if m.ndim >= 3 and m.shape[-1] == 1:
            m = m[..., 0]
        stack = m[None] if m.ndim == 2 else m
        if stack.ndim != 3:
            raise ValueError(f"masks must be (H, W), (H, W, 1) or (N, H, W[, 1]), got shape "
                             f"{np.asarray(mask).shape}")
        for image in stack:
            keep = np.ones(image.shape, bool) if ignore_index is None else image != ignore_index
            values = image[keep]
            ids = (values > 0.5).astype(np.int64) if num_classes == 1 else values.astype(np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= k or
                             (num_classes > 1 and np.any(values != ids))):
                raise ValueError(f"mask values must be class ids in 0..{k - 1} (or "
                                 f"ignore_index={ignore_index}), got {np.unique(values)[:10]}")
            stats.add_labels(ids, void=image.size - ids.size)
    return stats.class_counts(k)


def median_frequency_weights(class_pixels: Sequence[float],
                             class_image_pixels: Sequence[float]) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus 2015): ``w_c = median(freq) / freq_c`` with
    ``freq_c = class_pixels_c / class_image_pixels_c`` (pixels of class c over the pixels of
    the images in which c appears; ``class_pixel_counts`` gives both). The median is over the
    classes seen; classes never seen get weight 1."""
    pixels = np.asarray(class_pixels, np.float64)
    image_pixels = np.asarray(class_image_pixels, np.float64)
    if pixels.shape != image_pixels.shape or pixels.ndim != 1:
        raise ValueError(f"class_pixels and class_image_pixels must be 1-D of equal length, got "
                         f"shapes {pixels.shape} and {image_pixels.shape}")
    seen = (pixels > 0) & (image_pixels > 0)
    if not seen.any():
        return [1.0] * pixels.size
    freq = np.where(seen, pixels / np.where(seen, image_pixels, 1.0), 0.0)
    median = float(np.median(freq[seen]))
    return [float(median / f) if s else 1.0 for f, s in zip(freq, seen)]


def describe_dataset(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], ignore_index: int | None = None
) -> dict[str, Any]:
    """Summarise a loaded data set (for a "doctor" command). JSON-serialisable.

    Args:
        images: ``(H, W, C)`` (or ``(H, W)``) arrays, e.g. from :func:`zf_unet.data.load_folder`.
        masks: ``(H, W)`` (or ``(H, W, 1)``) integer class-id masks.

    Returns:
        dict with ``num_samples``; ``sizes`` (``{"WxH": count}``); ``height_range`` and
        ``width_range`` (``[min, max]``); ``channels`` and ``image_dtypes`` (sorted lists);
        ``image_value_range`` (``[min, max]``); ``class_pixel_counts`` and
        ``class_frequencies`` (``{class_id: count / fraction of all mask pixels}``);
        ``masks_with_class`` (``{class_id: number of masks containing it}``);
        ``foreground_fraction`` (pixels != 0); ``empty_masks`` (masks with only class 0)
        and ``empty_mask_indices``; ``single_class_masks`` (masks holding one class);
        ``ignored_pixels``. Pixels equal to ``ignore_index`` (void) are left out of every
        class statistic and only counted there. :class:`SampleStats` computes it.
    """
    if len(images) != len(masks):
        raise DataError(f"masks: {len(masks)} mask(s) but images has {len(images)}")
    if len(images) == 0:
        raise DataError("images: no samples to describe")
    totals = SampleStats(ignore_index, strict_channels=False)
    for img, m in zip(images, masks):
        totals.add(img, m)
    return totals.summary()
