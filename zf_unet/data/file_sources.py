"""Sources read from files: a folder of image / mask pairs and a pair of TIFF stacks
(:class:`zf_unet.data.sources.Source` kinds ``folder`` and ``stacks``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zf_unet.data.io import image_shape, read_image, read_stack, tiff_shape
from zf_unet.data.masks import ClassValues, MaskRules, Palette
from zf_unet.data.pairing import PathLike, match_pairs, rel_name
from zf_unet.data.sample_checks import ImageConsistency, check_same_size, check_stacks
from zf_unet.data.sources import Sample, Source, sample_nbytes
from zf_unet.errors import DataError

__all__ = ["FolderSource", "StackSource"]


class FolderSource(Source):
    """``folder/images/*`` paired with ``folder/masks/*`` by file stem
    (:func:`zf_unet.data.pairing.find_pairs`); sample ``i`` reads those two files only.

    Args:
        folder, images, masks: the folder and its two subfolders' names.
        convention, num_classes, palette, class_values, ignore_index: the mask rules
            (:func:`zf_unet.data.masks.normalize_mask`).
        strict: ``True`` raises for files without a partner; ``False`` keeps the pairs and
            records the problem in :attr:`problems` (and the files in :attr:`unpaired`).

    Raises:
        DataError: a missing or empty folder, duplicate names, unpaired files (``strict``),
            bad mask arguments.
    """

    kind = "folder"

    def __init__(self, folder: PathLike, images: str = "images", masks: str = "masks", *,
                 convention: str = "auto", num_classes: int | str | None = None,
                 palette: Palette | None = None, class_values: ClassValues | None = None,
                 ignore_index: int | None = None, strict: bool = True) -> None:
        self.root = Path(folder)
        self.rules = MaskRules(convention, num_classes, palette, class_values, ignore_index)
        self.pairs, self.unpaired, message = match_pairs(self.root, images, masks)
        if message is not None and strict:
            raise DataError(message)
        #: pairing problems found with ``strict=False`` (messages)
        self.problems: list[str] = [] if message is None else [message]
        self.notice_where = str(self.root / masks)
        self._consistency = ImageConsistency()

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
        image = read_image(img_path)
        raw = read_image(mask_path, keep_palette_indices=self.rules.keep_palette_indices)
        return image, raw

    def read(self, i: int) -> Sample:
        i = self._index(i)
        img_path, mask_path = self.pairs[i]
        image, raw = self.read_raw(i)
        img_name, mask_name = rel_name(img_path, self.root), rel_name(mask_path, self.root)
        check_same_size(raw.shape, image.shape, mask_name, f"its image {img_name}")
        self._consistency.check(image, img_name)
        mask, scaled = self.rules.apply(raw, mask_name)
        return Sample(f"{img_path.parent.name}/{img_path.name}", image, mask, scaled)

    def nbytes_hint(self) -> int:
        return sum(sample_nbytes(image_shape(img)) for img, _ in self.pairs)


class StackSource(Source):
    """An image stack and its label stack (multi-page TIFFs, e.g. ISBI's ``train-volume.tif``
    / ``train-labels.tif``); slice ``i`` is sample ``i``. Both stacks are read once, on the
    first :meth:`read`, and kept. ``len`` and :meth:`names` read the page headers only.

    Raises:
        DataError: bad mask arguments; on first read: unreadable files, different slice
            counts or sizes, NaN/Inf pixels.
    """

    kind = "stacks"

    def __init__(self, volume: PathLike, labels: PathLike, *, convention: str = "auto",
                 num_classes: int | str | None = None, palette: Palette | None = None,
                 class_values: ClassValues | None = None,
                 ignore_index: int | None = None) -> None:
        self.volume, self.labels = Path(volume), Path(labels)
        self.rules = MaskRules(convention, num_classes, palette, class_values, ignore_index)
        self.notice_where = str(labels)
        self._stacks: tuple[np.ndarray, np.ndarray] | None = None
        self._count: int | None = None

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stacks is None:
            volume, labels = read_stack(self.volume), read_stack(self.labels)
            check_stacks(volume, labels, self.volume, self.labels)
            self._stacks = (volume, labels)
        return self._stacks

    def __len__(self) -> int:
        if self._stacks is not None:
            return int(self._stacks[0].shape[0])
        if self._count is None:
            try:
                self._count = tiff_shape(self.volume)[0]
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
            return len(self) * sample_nbytes(self._stacks[0].shape[1:])
        try:
            n, h, w, c = tiff_shape(self.volume)
        except Exception:  # noqa: BLE001 - let the reader say what is wrong
            return len(self) * sample_nbytes(self._load()[0].shape[1:])
        return n * sample_nbytes((h, w, c))
