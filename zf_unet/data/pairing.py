"""Which files make a data set: image file endings, natural name order, and pairing
``folder/images/*`` with ``folder/masks/*`` by file name without extension.

``images/a.tif`` pairs with ``masks/a.png``; hidden files and other endings are ignored;
names sort in natural order (``2.png`` before ``10.png``), which is also the stack order of
a folder of volume slices (:func:`zf_unet.data.io.read_volume`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

from zf_unet.data.sample_checks import MAX_LISTED, name_list
from zf_unet.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "PathLike", "find_pairs", "list_images", "match_pairs",
           "natural_key", "rel_name"]

PathLike = Union[str, Path]
#: File name endings read by :func:`zf_unet.data.io.read_image` and matched by
#: :func:`find_pairs`.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def natural_key(stem: str) -> list[Any]:
    """Sort key so that ``2`` comes before ``10`` (``0.png .. 23.png`` keep stack order)."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", stem)]


def list_images(sub: Path, label: str, folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the image files in ``sub`` (the ``label/`` subfolder of ``folder``,
    named in errors). Raises :class:`DataError` for a missing or empty folder, or for names
    that appear with more than one extension."""
    if not sub.is_dir():
        raise DataError(
            f"{folder}: no '{label}/' subfolder; expected {folder / label}/ next to the other "
            "subfolder, holding files with matching names"
        )
    by_stem: dict[str, list[Path]] = {}
    for f in sub.iterdir():
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(f.stem, []).append(f)
    if not by_stem:
        raise DataError(
            f"{sub}: no image files; expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    dups = sorted((s for s, fs in by_stem.items() if len(fs) > 1), key=natural_key)
    if dups:
        listed = "; ".join(
            " and ".join(sorted(f.name for f in by_stem[s])) for s in dups[:MAX_LISTED]
        )
        raise DataError(
            f"{sub}: {len(dups)} file name(s) appear with more than one extension ({listed}); "
            "each image and mask must have a unique name without extension"
        )
    return {s: fs[0] for s, fs in by_stem.items()}


def match_pairs(
    folder: PathLike, images: str = "images", masks: str = "masks"
) -> tuple[list[tuple[Path, Path]], list[Path], str | None]:
    """Pair ``folder/images/*`` with ``folder/masks/*`` by file stem, keeping unpaired files.

    Returns:
        ``(pairs, unpaired, message)``: the pairs as :func:`find_pairs` returns them; the
        files without a partner (images first, natural order); and the message
        :func:`find_pairs` raises for them (``None`` when every file is paired).

    Raises:
        DataError: missing folder/subfolder, empty subfolder, duplicate stems.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder with '{images}/' and '{masks}/' subfolders")
    imgs = list_images(root / images, images, root)
    msks = list_images(root / masks, masks, root)
    no_mask = [imgs[s] for s in sorted(set(imgs) - set(msks), key=natural_key)]
    no_image = [msks[s] for s in sorted(set(msks) - set(imgs), key=natural_key)]
    pairs = [(imgs[s], msks[s]) for s in sorted(set(imgs) & set(msks), key=natural_key)]
    if not (no_mask or no_image):
        return pairs, [], None
    parts = []
    if no_mask:
        names = [p.name for p in no_mask]
        parts.append(f"{len(names)} image(s) without a mask in {masks}/ ({name_list(names)})")
    if no_image:
        names = [p.name for p in no_image]
        parts.append(f"{len(names)} mask(s) without an image in {images}/ ({name_list(names)})")
    message = (f"{root}: " + "; ".join(parts) + ". Images and masks are paired by file name "
               "without extension")
    return pairs, no_mask + no_image, message


def find_pairs(
    folder: PathLike, images: str = "images", masks: str = "masks"
) -> list[tuple[Path, Path]]:
    """Pair ``folder/images/*`` with ``folder/masks/*`` by file stem.

    ``images/a.tif`` pairs with ``masks/a.png``. Extensions ``.png .tif .tiff .jpg .jpeg``
    (any case); hidden files and other extensions are ignored.

    Returns:
        ``[(image_path, mask_path), ...]`` sorted by stem in natural order (``2`` < ``10``).

    Raises:
        DataError: missing folder/subfolder, empty subfolder, duplicate stems, or images
            without masks / masks without images (the first few names are listed).
    """
    pairs, _, message = match_pairs(folder, images, masks)
    if message is not None:
        raise DataError(message)
    return pairs


def rel_name(path: Path, root: Path) -> str:
    """How messages name ``path`` of the data folder ``root``: relative to ``root``'s parent
    (``data/images/a.png``), or the full path."""
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)
