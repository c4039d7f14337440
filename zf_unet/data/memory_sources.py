"""Sources held in memory: arrays, samples already in their final form, and the built-in
synthetic set (:class:`zf_unet.data.sources.Source` kinds ``arrays``, ``memory`` and
``synthetic``)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zf_unet.data.masks import ClassValues, MaskRules, Palette
from zf_unet.data.sample_checks import ImageConsistency, check_same_size, split_samples
from zf_unet.data.sources import Sample, Source, sample_nbytes
from zf_unet.data.synthetic import make_synthetic
from zf_unet.errors import DataError

__all__ = ["ArraySource", "MemorySource", "SyntheticSource"]


class MemorySource(Source):
    """Samples already in their final form (``(H, W, C)`` images, ``(H, W)`` uint8 masks),
    named ``prefix[i]``; nothing is checked."""

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
        return sum(sample_nbytes(img.shape) for img in self._images)


class ArraySource(MemorySource):
    """In-memory ``(images, masks)``: ``(N, H, W[, C])`` arrays or sequences of
    ``(H, W[, C])`` arrays (:func:`zf_unet.data.loaders.load_arrays`); samples are views.

    Raises:
        DataError: wrong ndim or dtype, different N, bad mask arguments; on read: size
            mismatch, NaN/Inf, bad mask values.
    """

    kind = "arrays"

    def __init__(self, images: np.ndarray | Sequence[np.ndarray],
                 masks: np.ndarray | Sequence[np.ndarray], *, convention: str = "auto",
                 num_classes: int | str | None = None, palette: Palette | None = None,
                 class_values: ClassValues | None = None,
                 ignore_index: int | None = None, prefix: str = "array") -> None:
        self.rules = MaskRules(convention, num_classes, palette, class_values, ignore_index)
        super().__init__(split_samples(images, "images", True),
                         split_samples(masks, "masks", False), prefix)
        if len(self._images) != len(self._masks):
            raise DataError(f"masks: {len(self._masks)} sample(s) but images has "
                            f"{len(self._images)}; expected the same N")
        self._consistency = ImageConsistency()

    def read(self, i: int) -> Sample:
        i = self._index(i)
        img, m = self._images[i], self._masks[i]
        if img.ndim == 2:
            img = img[:, :, None]
        check_same_size(m.shape, img.shape, f"masks[{i}]", f"images[{i}]")
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
            self._data = make_synthetic(self.n, self.size, self.seed, self.channels)
        images, masks = self._data
        return Sample(f"synthetic[{i}]", images[i], masks[i, :, :, 0], False)

    def nbytes_hint(self) -> int:
        return self.n * sample_nbytes((self.size, self.size, self.channels))
