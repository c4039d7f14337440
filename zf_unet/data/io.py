"""Read segmentation data from disk or memory and bring masks to class ids.

Shapes and dtypes used throughout:

* an image is ``(H, W, C)`` with ``C = 1`` for grayscale, in the dtype the file stores
  (``uint8``, ``uint16``, ``float32``, ...);
* a mask, once normalised, is ``(H, W)`` ``uint8`` holding class ids ``0..K-1``;
* a volume (:func:`read_volume`) is ``(D, H, W)`` (one channel) or ``(D, H, W, C)``, in the
  stored dtype, ``D`` slices along z in stack order.

Every user-facing error is a :class:`zf_unet.errors.DataError` whose message names the
file or argument and says what was expected.

Mask conventions (:func:`normalize_mask`), in the order ``"auto"`` tries them:

* an RGB(A) mask with a ``palette`` ``{(r, g, b): class_id}`` -> class ids;
* values in ``{0, 1}`` -> used as they are;
* values in ``{0, 255}`` -> divided by 255 (1 = foreground). The loaders log ONE notice per
  data set on the ``"zf_unet"`` logger (level INFO);
* integer class ids ``0..K-1`` when ``num_classes=K`` is given (``num_classes="auto"``:
  any ids ``0..255``; the caller infers K, see :func:`zf_unet.data.pipeline.load_source`).

``class_values`` (gray-value codes) replaces these conventions: one entry per class, each a
mask value or a list of values, e.g. ``[[0, 32, 64, 96, 128], [159], [191], [223], [255]]``;
class ``i`` is the ``i``-th entry (2 entries = binary, ids 0/1).

``ignore_index`` (void pixels): mask pixels holding this value (0..255) are set aside before
any convention is detected and kept as that value in the ``uint8`` output, so losses and
metrics given the same ``ignore_index`` skip them. It is never a class: it must not be a
class id (so binary masks {0, 1} may use 255 as void, and with void 255 a {0, 255} mask is
class 0 plus void, never class 1). With a palette, map the void colour to ``ignore_index``.
The config key ``data.palette`` and the ``--palette`` flags give the palette as a list of
colours (class ``i`` = colour ``i``) or a colour table: see :mod:`zf_unet.data.colour_masks`.
The data sources refuse JPEG mask files (:func:`~zf_unet.data.colour_masks.refuse_jpeg_mask`).

Anything else raises :class:`DataError`.

Pixel values (:func:`check_float_range`, the one home of this rule for every command):
integer images are divided by their dtype's maximum; float images are used as they are and
must lie in [0, 1] (within :data:`FLOAT_RANGE_TOLERANCE`).

Image size: the readers refuse images of more than :func:`max_image_pixels` pixels (default
``2**31``, set by :data:`MAX_IMAGE_PIXELS` or the environment variable
``ZF_UNET_MAX_IMAGE_PIXELS``, ``none`` for no limit) with a :class:`DataError` that says how
to lift the limit. Pillow's own decompression-bomb limit is off while they decode.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from zf_unet.data.colour_masks import refuse_jpeg_mask
from zf_unet.errors import ConfigError, DataError

__all__ = [
    "FLOAT_RANGE_TOLERANCE",
    "IMAGE_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "MASK_CONVENTIONS",
    "MAX_IMAGE_PIXELS",
    "AUTO_CLASSES",
    "ClassValues",
    "Palette",
    "check_float_range",
    "describe_dataset",
    "find_pairs",
    "ImageConsistency",
    "MaskRules",
    "SampleSummary",
    "check_same_size",
    "check_stacks",
    "load_arrays",
    "load_folder",
    "load_tiff_stacks",
    "match_pairs",
    "max_image_pixels",
    "normalize_mask",
    "notice_scaled",
    "read_image",
    "read_stack",
    "read_volume",
    "read_volume_pair",
    "rel_name",
    "split_samples",
]

logger = logging.getLogger("zf_unet")

PathLike = Union[str, Path]
#: ``{(r, g, b): class_id}``; an ``int`` key ``v`` means the gray colour ``(v, v, v)``.
Palette = Mapping[Union[tuple[int, int, int], int], int]

#: File name endings read by :func:`read_image` and matched by :func:`find_pairs`.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
_TIFF_EXTENSIONS = (".tif", ".tiff")
#: File name endings read by :func:`read_volume` (besides a folder of 2-D slices).
VOLUME_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".npy")
#: Values accepted for the ``convention`` argument.
MASK_CONVENTIONS: tuple[str, ...] = ("auto", "binary", "class_ids", "palette")
#: ``num_classes`` value that asks the loaders to accept any class ids 0..255 (K inferred).
AUTO_CLASSES = "auto"
#: Per class, one mask value or a list of values: ``[[0, 32], [159], [255]]``.
ClassValues = Sequence[Union[int, Sequence[int]]]
_MAX_LISTED = 5

#: Largest image (height x width, per page) the readers decode; ``None`` means no limit. The
#: environment variable ``ZF_UNET_MAX_IMAGE_PIXELS`` (a number, or ``none``) overrides it.
MAX_IMAGE_PIXELS: int | None = 2**31
MAX_PIXELS_ENV = "ZF_UNET_MAX_IMAGE_PIXELS"
#: How far outside [0, 1] a float image may lie (rounding in other tools) and still be used.
FLOAT_RANGE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- pixel values


def check_float_range(image: np.ndarray, name: str = "image") -> None:
    """Raise a :class:`DataError` naming ``name`` if a float ``image`` lies outside [0, 1].

    The value rule of every command (training, ``check-data``, ``predict``): integer images
    are divided by their dtype's maximum, float images are used as they are and must lie in
    [0, 1] (``FLOAT_RANGE_TOLERANCE`` either side). A float image scaled 0..255 is an error,
    not a silently wrong prediction. Integer and bool images pass; NaN is left to the
    callers' finite-value checks. No copy of ``image`` is made (works on ``np.memmap``).
    """
    arr = np.asarray(image)
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo < -FLOAT_RANGE_TOLERANCE or hi > 1.0 + FLOAT_RANGE_TOLERANCE:
        raise DataError(f"{name}: float values span [{lo:.3g}, {hi:.3g}], outside [0, 1]; "
                        "expected [0, 1] for float images (scale them to [0, 1], or save "
                        "integer images, which are divided by their dtype's maximum)")


# --------------------------------------------------------------------------- size limit


def max_image_pixels() -> int | None:
    """The readers' size limit in pixels (``None`` = no limit).

    ``ZF_UNET_MAX_IMAGE_PIXELS`` (a positive integer, or ``none``) when set, else
    :data:`MAX_IMAGE_PIXELS`.

    Raises:
        ConfigError: the environment variable holds something else.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels "
                          "or 'none' (no limit)")
    return value


def _check_pixels(p: Path, height: int, width: int, limit: int | None) -> None:
    if limit is not None and height * width > limit:
        raise DataError(
            f"{p}: image is {width}x{height} = {height * width:,} pixels, more than the "
            f"readers' limit of {limit:,}; expected at most {limit:,} pixels. To read it, set "
            f"the environment variable {MAX_PIXELS_ENV} to a larger number or to 'none' "
            "(or zf_unet.data.io.MAX_IMAGE_PIXELS in Python)"
        )


_PIL_LOCK = threading.Lock()
_pil_users = 0
_pil_saved: Any = None


@contextlib.contextmanager
def _pillow_limit_off() -> Iterator[None]:
    """Pillow's decompression-bomb limit off for the duration (restored afterwards; nested
    and concurrent uses restore it once the last one ends). Our own limit replaces it."""
    from PIL import Image

    global _pil_users, _pil_saved
    with _PIL_LOCK:
        if _pil_users == 0:
            _pil_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pil_users += 1
    try:
        yield
    finally:
        with _PIL_LOCK:
            _pil_users -= 1
            if _pil_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_saved


# --------------------------------------------------------------------------- readers


def read_image(path: PathLike, *, keep_palette_indices: bool = False) -> np.ndarray:
    """Read one PNG, TIFF or JPEG file.

    Args:
        path: the file. The reader is picked by the extension (case-insensitive).
        keep_palette_indices: for palette ("P" mode) PNGs, return the palette indices
            (``(H, W, 1)`` uint8) instead of the RGB colours. Useful for masks whose
            palette index is the class id (e.g. Pascal VOC style).

    Returns:
        ``(H, W, C)`` array, ``C = 1`` for grayscale, dtype as stored (``uint8``,
        ``uint16``, ``int32``, ``float32`` ...). 1-bit images become ``uint8`` 0/255.

    Raises:
        DataError: missing, unsupported, corrupt, truncated or multi-page file, or an image
            larger than :func:`max_image_pixels`.
    """
    p = Path(path)
    ext = _check_file(p)
    if ext in _TIFF_EXTENSIONS:
        stack = _read_tiff(p)
        if stack.shape[0] != 1:
            raise DataError(
                f"{p}: TIFF holds {stack.shape[0]} pages of {stack.shape[2]}x{stack.shape[1]}; "
                "read_image expects a single image (use read_stack for multi-page TIFFs)"
            )
        return stack[0]
    return _read_pillow(p, keep_palette_indices)


def read_stack(path: PathLike) -> np.ndarray:
    """Read a (multi-page) TIFF stack such as ISBI's ``train-volume.tif``.

    Returns:
        ``(N, H, W, C)`` array in the stored dtype; a single-page TIFF gives ``N = 1``.

    Raises:
        DataError: missing, non-TIFF, corrupt or truncated file, pages of different sizes, or
            pages larger than :func:`max_image_pixels`.
    """
    p = Path(path)
    ext = _check_file(p)
    if ext not in _TIFF_EXTENSIONS:
        raise DataError(f"{p}: read_stack reads multi-page TIFF files (.tif, .tiff), got {ext!r}")
    return _read_tiff(p)


def read_volume(path: PathLike) -> np.ndarray:
    """Read a 3-D volume: a multi-page TIFF, a folder of 2-D slices or a ``.npy`` array.

    Args:
        path: one of

            * a multi-page TIFF (``.tif`` / ``.tiff``; pages = z-sections, read as
              :func:`read_stack` does);
            * a folder of 2-D slice images (:data:`IMAGE_EXTENSIONS`, read with
              :func:`read_image`) in natural order of their names (``2.png`` before
              ``10.png``; hidden and other files are skipped). All slices must share
              size, channel count and dtype;
            * a ``.npy`` file holding ``(D, H, W)`` or ``(D, H, W, C)`` numbers.

    Returns:
        ``(D, H, W)`` for one channel (a trailing channel of size 1 is dropped), else
        ``(D, H, W, C)``; dtype as stored (``uint8``, ``uint16``, ``float32``, ...).

    Raises:
        DataError: missing path, unsupported suffix, unreadable file, a 2-D image where a
            volume is expected (a single-page TIFF, a 2-D ``.npy``; the message names the
            file and the shape found), slices of different sizes / channels / dtypes (naming
            the first such file and what was expected), an empty folder, non-numeric
            ``.npy`` data, or slices larger than :func:`max_image_pixels`.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file or folder not found; expected a multi-page TIFF, a .npy "
                        "file or a folder of 2-D slices")
    if p.is_dir():
        vol = _read_slice_folder(p)
    else:
        ext = p.suffix.lower()
        if not p.is_file():
            raise DataError(f"{p}: expected a volume file or a folder of slices, found a "
                            "special file")
        if ext in _TIFF_EXTENSIONS:
            vol = _read_tiff(p)
            if vol.shape[0] == 1:
                hint = ("; if its channels are z-sections, write the stack as pages (tifffile: "
                        "photometric='minisblack')" if vol.shape[-1] in (3, 4) else "")
                raise DataError(
                    f"{p}: TIFF holds a single 2-D image of shape {vol.shape[1:]} "
                    "(H, W, C); expected a volume (a multi-page TIFF with one page per "
                    f"z-section, or a folder of slices){hint}"
                )
        elif ext == ".npy":
            vol = _read_npy_volume(p)
        else:
            hint = (" (a single 2-D image; put the slices of a volume in one folder)"
                    if ext in IMAGE_EXTENSIONS else "")
            raise DataError(
                f"{p}: unsupported volume file type {p.suffix!r}{hint}; expected a multi-page "
                "TIFF (.tif, .tiff), a .npy file or a folder of 2-D slices"
            )
    if vol.shape[-1] == 1:
        vol = vol[..., 0]
    return vol


def _read_slice_folder(folder: Path) -> np.ndarray:
    """``(D, H, W, C)`` from the 2-D images of ``folder`` in natural name order."""
    files = _list_images(folder, folder.name, folder.parent)
    names = sorted(files, key=natural_key)
    first_path = files[names[0]]
    first = read_image(first_path)
    out = np.empty((len(names),) + first.shape, dtype=first.dtype)
    out[0] = first
    for i, stem in enumerate(names[1:], start=1):
        f = files[stem]
        img = read_image(f)
        if img.shape[:2] != first.shape[:2]:
            raise DataError(
                f"{f}: slice size {_wxh(img.shape)} differs from {first_path.name} "
                f"({_wxh(first.shape)}); expected every slice of the volume {folder} to be "
                f"{_wxh(first.shape)} (sizes are width x height)"
            )
        if img.shape[2] != first.shape[2] or img.dtype != first.dtype:
            raise DataError(
                f"{f}: {img.shape[2]} channel(s) of dtype {img.dtype}, but {first_path.name} "
                f"has {first.shape[2]} of dtype {first.dtype}; expected every slice of the "
                f"volume {folder} to share channels and dtype"
            )
        out[i] = img
    return out


def _read_npy_volume(p: Path) -> np.ndarray:
    """``(D, H, W, C)`` from a ``.npy`` file holding ``(D, H, W)`` or ``(D, H, W, C)``."""
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
        raise DataError(f"{p}: cannot read .npy file ({type(exc).__name__}: {exc}); expected "
                        "a NumPy array saved with numpy.save (no pickled objects)") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(f"{p}: holds {getattr(arr, 'dtype', type(arr).__name__)} data; "
                        "expected a numeric (bool, integer or float) array")
    if arr.ndim == 2:
        raise DataError(f"{p}: holds a 2-D array of shape {arr.shape}; expected a volume "
                        "(D, H, W) or (D, H, W, C)")
    if arr.ndim not in (3, 4):
        raise DataError(f"{p}: holds an array of shape {arr.shape}; expected a volume "
                        "(D, H, W) or (D, H, W, C)")
    if arr.size == 0:
        raise DataError(f"{p}: holds an empty array of shape {arr.shape}; expected a volume "
                        "(D, H, W) or (D, H, W, C)")
    _check_pixels(p, arr.shape[1], arr.shape[2], max_image_pixels())
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def read_volume_pair(image_path: PathLike, mask_path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an image volume and its mask volume (:func:`read_volume`) and check they fit.

    Args:
        image_path, mask_path: each a multi-page TIFF, a ``.npy`` file or a folder of 2-D
            slices (they need not be of the same kind).

    Returns:
        ``(image, mask)`` as :func:`read_volume` returns them: ``(D, H, W)`` or
        ``(D, H, W, C)`` in the stored dtypes. Mask values are not converted; bring them to
        class ids with :func:`normalize_mask` (per section) as for 2-D data.

    Raises:
        DataError: as :func:`read_volume`; different slice counts or slice sizes (naming both
            paths, via :func:`check_stacks`); NaN / Inf in a float image volume.
    """
    image = read_volume(image_path)
    mask = read_volume(mask_path)
    as_stack = [v if v.ndim == 4 else v[..., None] for v in (image, mask)]
    check_stacks(as_stack[0], as_stack[1], image_path, mask_path)
    return image, mask


def _check_file(p: Path) -> str:
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if not p.is_file():
        raise DataError(f"{p}: expected an image file, found a folder or special file")
    ext = p.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise DataError(
            f"{p}: unsupported file type {p.suffix!r}; expected one of "
            + ", ".join(IMAGE_EXTENSIONS)
        )
    return ext


def _read_pillow(p: Path, keep_palette_indices: bool) -> np.ndarray:
    from PIL import Image

    limit = max_image_pixels()
    try:
        with _pillow_limit_off(), Image.open(p) as im:
            _check_pixels(p, im.size[1], im.size[0], limit)
            im.load()  # decode now so truncation surfaces here
            mode = im.mode
            if mode == "P" and keep_palette_indices:
                arr = np.asarray(im)
            elif mode == "P" or mode == "PA":
                has_alpha = mode == "PA" or "transparency" in im.info
                arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
            elif mode == "1":
                arr = np.asarray(im.convert("L"))
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(im.convert("RGB"))
            else:  # L, LA, RGB, RGBA, I, I;16*, F
                arr = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unreadable file
        raise DataError(f"{p}: cannot read image ({type(exc).__name__}: {exc}); expected a "
                        f"complete {p.suffix.lstrip('.').upper()} file (is it corrupt, "
                        "truncated or misnamed?)") from exc
    if arr.dtype.byteorder == ">":  # I;16B and friends
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _read_tiff(p: Path) -> np.ndarray:
    """Read a TIFF into ``(N, H, W, C)``: ``S``/``C`` axes become channels, others pages."""
    import tifffile

    limit = max_image_pixels()
    try:
        with tifffile.TiffFile(p) as tif:
            series = list(tif.series)
            if not series:
                raise DataError(f"{p}: TIFF holds no images")
            for one in series:
                if "Y" in one.axes and "X" in one.axes:
                    _check_pixels(p, one.shape[one.axes.index("Y")],
                                  one.shape[one.axes.index("X")], limit)
            if len(series) == 1:
                arr, axes = series[0].asarray(), series[0].axes
            else:  # pages written one by one without shape metadata
                shapes = {(s.shape, s.axes, str(s.dtype)) for s in series}
                if len(shapes) != 1:
                    listed = ", ".join(f"{s.shape}" for s in series[:_MAX_LISTED])
                    raise DataError(
                        f"{p}: TIFF holds {len(series)} images of different shapes or dtypes "
                        f"({listed}); expected pages of one size"
                    )
                arr = np.stack([s.asarray() for s in series])
                axes = "I" + series[0].axes
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unreadable file
        raise DataError(f"{p}: cannot read TIFF ({type(exc).__name__}: {exc}); expected a "
                        "complete TIFF file (is it corrupt, truncated or misnamed?)") from exc
    if "Y" not in axes or "X" not in axes or len(axes) != arr.ndim:
        raise DataError(f"{p}: TIFF has axes {axes!r} (shape {arr.shape}); expected Y and X axes")
    page_axes = [i for i, a in enumerate(axes) if a not in "YXSC"]
    chan_axes = [i for i, a in enumerate(axes) if a in "SC"]
    order = page_axes + [axes.index("Y"), axes.index("X")] + chan_axes
    arr = np.transpose(arr, order)
    h, w = arr.shape[len(page_axes)], arr.shape[len(page_axes) + 1]
    arr = arr.reshape((-1, h, w, int(np.prod(arr.shape[len(page_axes) + 2 :], dtype=np.int64))))
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- pairing


def natural_key(stem: str) -> list[Any]:
    """Sort key so that ``2`` comes before ``10`` (``0.png .. 23.png`` keep stack order)."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", stem)]


def _list_images(sub: Path, label: str, folder: Path) -> dict[str, Path]:
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
            " and ".join(sorted(f.name for f in by_stem[s])) for s in dups[:_MAX_LISTED]
        )
        raise DataError(
            f"{sub}: {len(dups)} file name(s) appear with more than one extension ({listed}); "
            "each image and mask must have a unique name without extension"
        )
    return {s: fs[0] for s, fs in by_stem.items()}


def _name_list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


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
    imgs = _list_images(root / images, images, root)
    msks = _list_images(root / masks, masks, root)
    no_mask = [imgs[s] for s in sorted(set(imgs) - set(msks), key=natural_key)]
    no_image = [msks[s] for s in sorted(set(msks) - set(imgs), key=natural_key)]
    pairs = [(imgs[s], msks[s]) for s in sorted(set(imgs) & set(msks), key=natural_key)]
    if not (no_mask or no_image):
        return pairs, [], None
    parts = []
    if no_mask:
        names = [p.name for p in no_mask]
        parts.append(f"{len(names)} image(s) without a mask in {masks}/ ({_name_list(names)})")
    if no_image:
        names = [p.name for p in no_image]
        parts.append(f"{len(names)} mask(s) without an image in {images}/ ({_name_list(names)})")
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


# --------------------------------------------------------------------------- masks


def _check_convention(convention: str, num_classes: int | str | None, palette: Palette | None,
                      class_values: ClassValues | None = None,
                      ignore_index: int | None = None) -> None:
    if convention not in MASK_CONVENTIONS:
        raise DataError(f"convention={convention!r}: expected one of {', '.join(MASK_CONVENTIONS)}")
    if num_classes == AUTO_CLASSES:
        pass
    elif num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or not (
            1 <= int(num_classes) <= 256
        ):
            raise DataError(
                f"num_classes={num_classes!r}: expected an int from 1 to 256 (1 = binary)"
            )
    if convention == "class_ids" and num_classes is None:
        raise DataError("convention='class_ids' needs num_classes=K (mask values 0..K-1)")
    if convention == "palette" and palette is None:
        raise DataError("convention='palette' needs palette={(r, g, b): class_id, ...}")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
        or not 0 <= int(ignore_index) <= 255
    ):
        raise DataError(f"ignore_index={ignore_index!r}: expected None or an int from 0 to 255 "
                        "(the mask value of void pixels, kept in the uint8 masks)")
    if class_values is not None:
        if palette is not None or convention in ("binary", "palette"):
            raise DataError("class_values: expected convention='auto' and no palette (class "
                            "values replace the mask conventions)")
        k = len({c for c in _class_values_table(class_values, ignore_index).values()})
        if num_classes not in (None, AUTO_CLASSES) and max(int(num_classes), 2) != max(k, 2):
            raise DataError(f"class_values has {k} entries (classes) but num_classes="
                            f"{num_classes}; expected num_classes={1 if k == 2 else k} or "
                            "'auto'")
    if ignore_index is not None:
        if class_values is not None:
            k = len(class_values)
        elif num_classes in (None, AUTO_CLASSES):
            k = 2
        else:
            k = max(int(num_classes), 2)
        if int(ignore_index) < k:
            raise DataError(f"ignore_index={ignore_index}: is a class id (classes are 0..{k - 1});"
                            f" expected a value of {k} or more (e.g. 255)")


def _class_values_table(class_values: ClassValues, ignore_index: int | None) -> dict[int, int]:
    """``{mask value: class id}`` after validating ``class_values`` (one entry per class)."""
    if isinstance(class_values, (str, bytes, Mapping)) or not isinstance(class_values, Sequence) \
            or len(class_values) < 2:
        raise DataError(f"class_values={class_values!r}: expected a list with one entry per "
                        "class (at least 2), each a mask value or a list of values, e.g. "
                        "[[0, 32, 64], [159], [255]]")
    table: dict[int, int] = {}
    for cid, entry in enumerate(class_values):
        group = [entry] if isinstance(entry, (int, np.integer)) else entry
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or not group:
            raise DataError(f"class_values[{cid}] = {entry!r}: expected a mask value or a "
                            "non-empty list of values")
        for v in group:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise DataError(f"class_values[{cid}]: {v!r} is not an integer mask value")
            if int(v) in table:
                raise DataError(f"class_values: value {int(v)} appears in class "
                                f"{table[int(v)]} and class {cid}; expected each value once")
            if ignore_index is not None and int(v) == int(ignore_index):
                raise DataError(f"class_values[{cid}]: value {int(v)} is also ignore_index; "
                                "expected void values outside class_values")
            table[int(v)] = cid
    return table


def _apply_class_values(arr: np.ndarray, table: dict[int, int],
                        values: np.ndarray) -> np.ndarray:
    """Map ``arr`` through ``table`` (``values``: its checked non-void values). Values not in
    ``table`` (void pixels) come out as 0; the caller overwrites them."""
    keys = np.asarray(values, dtype=np.int64)
    ids = np.array([table[int(v)] for v in keys.tolist()], dtype=np.uint8)
    pos = np.clip(np.searchsorted(keys, arr), 0, keys.size - 1)
    hit = keys[pos] == arr
    return np.where(hit, ids[pos], np.uint8(0)).astype(np.uint8)


def _palette_table(palette: Palette, num_classes: int | str | None,
                   ignore_index: int | None = None) -> dict[int, int]:
    """``{r<<16 | g<<8 | b: class_id}`` after validating ``palette`` (``ignore_index`` is a
    valid target: the void colour)."""
    if not isinstance(palette, Mapping) or not palette:
        raise DataError(f"palette={palette!r}: expected a non-empty dict {{(r, g, b): class_id}}")
    table: dict[int, int] = {}
    limit = 256 if num_classes in (None, AUTO_CLASSES) else max(int(num_classes), 2)
    for colour, cid in palette.items():
        rgb = (colour,) * 3 if isinstance(colour, (int, np.integer)) else tuple(colour)
        if len(rgb) != 3 or not all(
            isinstance(c, (int, np.integer)) and 0 <= int(c) <= 255 for c in rgb
        ):
            raise DataError(f"palette key {colour!r}: expected (r, g, b) with ints 0..255")
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or not (
            0 <= cid < limit or (ignore_index is not None and cid == ignore_index)
        ):
            raise DataError(
                f"palette[{colour!r}] = {cid!r}: expected a class id from 0 to {limit - 1}"
            )
        table[(int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])] = int(cid)
    return table


def _apply_palette(rgb: np.ndarray, table: dict[int, int], source: str) -> np.ndarray:
    if rgb.dtype != np.uint8 and (rgb.min() < 0 or rgb.max() > 255):
        raise DataError(f"{source}: palette masks must hold 8-bit colours, got dtype {rgb.dtype}")
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    keys = (r << 16) | (g << 8) | b
    uniq, inverse = np.unique(keys, return_inverse=True)
    unknown = [int(k) for k in uniq if int(k) not in table]
    if unknown:
        listed = ", ".join(
            f"({k >> 16}, {(k >> 8) & 255}, {k & 255})" for k in unknown[:_MAX_LISTED]
        )
        more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        raise DataError(
            f"{source}: {len(unknown)} colour(s) not in the palette: {listed}{more}; "
            "add them to data.palette / --palette (palette={(r, g, b): class_id} in Python)"
        )
    lut = np.array([table[int(k)] for k in uniq], dtype=np.uint8)
    return lut[inverse.reshape(keys.shape)]


def _to_single_channel(
    mask: np.ndarray, source: str, table: dict[int, int] | None
) -> tuple[np.ndarray, bool]:
    """Return ``(array, is_rgb)``: a 2-D array, or ``(H, W, 3)`` to map through a palette."""
    if mask.ndim == 2:
        return mask, False
    if mask.ndim != 3:
        raise DataError(f"{source}: mask has shape {mask.shape}; expected (H, W) or (H, W, C)")
    c = mask.shape[2]
    if c == 1:
        return mask[:, :, 0], False
    if c == 4:  # RGBA: only an opaque alpha channel can be dropped
        alpha = mask[:, :, 3]
        if alpha.min() != alpha.max():
            raise DataError(
                f"{source}: RGBA mask with a varying alpha channel; save masks without "
                "transparency (gray or RGB)"
            )
        mask, c = mask[:, :, :3], 3
    if c != 3:
        raise DataError(f"{source}: mask has {c} channels; expected 1 (gray) or 3 (RGB)")
    gray = bool(np.array_equal(mask[:, :, 0], mask[:, :, 1]) and
                np.array_equal(mask[:, :, 0], mask[:, :, 2]))
    if table is not None:
        return mask, True
    if gray:
        return mask[:, :, 0], False
    raise DataError(
        f"{source}: RGB mask with coloured pixels but no palette; set the class colours with "
        "--set data.palette=[[r,g,b],...] (class i = colour i; zf-unet check-data DIR lists "
        "the colours and prints this line; --palette for check-data and pack; "
        "palette={(r, g, b): class_id} in Python) or save masks as single-channel class ids"
    )


def _values_list(values: np.ndarray) -> str:
    shown = ", ".join(str(v.item()) for v in values[:8])
    return "[" + shown + (f", ... ({len(values)} values)" if len(values) > 8 else "") + "]"


def _normalize_mask(
    mask: np.ndarray,
    convention: str = "auto",
    num_classes: int | str | None = None,
    palette: Palette | None = None,
    source: str = "<mask>",
    table: dict[int, int] | None = None,
    class_values: ClassValues | None = None,
    ignore_index: int | None = None,
    cv_table: dict[int, int] | None = None,
) -> tuple[np.ndarray, bool]:
    """Like :func:`normalize_mask`; also returns whether 0/255 was divided by 255.

    ``table`` / ``cv_table``: palette / class-values tables prepared by the loaders (the
    arguments were checked then)."""
    if table is None and cv_table is None:
        _check_convention(convention, num_classes, palette, class_values, ignore_index)
        if palette is not None:
            table = _palette_table(palette, num_classes, ignore_index)
        if class_values is not None:
            cv_table = _class_values_table(class_values, ignore_index)
    arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise DataError(f"{source}: mask dtype {arr.dtype} is not numeric")
    if arr.size == 0:
        raise DataError(f"{source}: mask is empty (shape {arr.shape})")
    arr, is_rgb = _to_single_channel(arr, source, table)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{source}: mask holds NaN or Inf values; expected class ids")
        if not np.all(arr == np.round(arr)):
            raise DataError(
                f"{source}: mask holds non-integer values "
                f"(e.g. {float(arr[arr != np.round(arr)][0])}); "
                "expected integer class ids"
            )
    if is_rgb:
        assert table is not None
        return _apply_palette(arr, table, source), False
    if table is not None:  # gray mask, palette given: value v is the colour (v, v, v)
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{source}: palette masks must hold values 0..255")
        v = arr.astype(np.int32)
        return _apply_palette(np.stack([v, v, v], axis=-1), table, source), False
    if convention == "palette":
        raise DataError(f"{source}: convention='palette' needs an RGB mask or a palette")

    values = np.unique(arr)
    void: np.ndarray | None = None
    if ignore_index is not None and np.any(values == ignore_index):
        void = arr == ignore_index
        values = values[values != ignore_index]
        if values.size == 0:  # all void
            return np.full(arr.shape, ignore_index, np.uint8), False
    out, scaled = _classify(arr, values, convention, num_classes, source, cv_table)
    if void is not None:
        out[void] = ignore_index
    return out, scaled


def _classify(
    arr: np.ndarray,
    values: np.ndarray,
    convention: str,
    num_classes: int | str | None,
    source: str,
    cv_table: dict[int, int] | None,
) -> tuple[np.ndarray, bool]:
    """Class ids (H, W) uint8 for a 2-D mask whose non-void values are ``values`` (sorted).
    Void pixels of ``arr`` may come out as anything: the caller overwrites them."""
    if cv_table is not None:
        unknown = values[~np.isin(values, np.fromiter(cv_table, np.int64, len(cv_table)))]
        if unknown.size:
            raise DataError(
                f"{source}: mask values {_values_list(unknown)} are not listed in class_values "
                f"(listed: {sorted(cv_table)}); expected only listed values or the ignore_index"
            )
        return _apply_class_values(arr, cv_table, values), False
    auto_k = num_classes == AUTO_CLASSES
    binary_ok = (convention == "binary" or num_classes is None or auto_k
                 or int(num_classes) <= 2)
    if convention in ("auto", "binary") and binary_ok:
        if values.min() >= 0 and values.max() <= 1:
            return arr.astype(np.uint8), False
        if values.max() == 255 and np.all((values == 0) | (values == 255)):
            return (arr == 255).astype(np.uint8), True
    if convention in ("auto", "class_ids") and num_classes is not None:
        k = 256 if auto_k else max(int(num_classes), 2)
        bad = values[(values < 0) | (values >= k)]
        if bad.size == 0:
            return arr.astype(np.uint8), False
        raise DataError(
            f"{source}: mask values {_values_list(bad)} are outside the class ids 0..{k - 1} "
            f"allowed by num_classes={num_classes}"
        )
    hint = ""
    if source.lower().endswith((".jpg", ".jpeg")):
        hint = " JPEG compression changes mask values: save masks as PNG or TIFF."
    if convention == "binary":
        expected = "expected {0, 1} or {0, 255} for convention='binary'"
    else:
        expected = (
            "expected {0, 1}, {0, 255}, or class ids 0..K-1 with num_classes=K"
            + (f" (here num_classes={int(values.max()) + 1} or more)"
               if values.min() >= 0 and values.max() < 32 else "")
        )
    raise DataError(
        f"{source}: mask values {_values_list(values)} fit no convention; {expected}.{hint}"
    )


def normalize_mask(
    mask: np.ndarray,
    convention: str = "auto",
    num_classes: int | str | None = None,
    palette: Palette | None = None,
    source: str = "<name>",
    *,
    class_values: ClassValues | None = None,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Turn a raw mask into ``(H, W)`` ``uint8`` class ids.

    Args:
        mask: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or opaque ``(H, W, 4)``; integer,
            bool or integer-valued float.
        convention: ``"auto"`` (see the module docstring), ``"binary"`` ({0,1} or {0,255}
            only), ``"class_ids"`` (needs ``num_classes``) or ``"palette"`` (needs
            ``palette``).
        num_classes: K; values must be ``0..K-1``. ``1`` means binary (ids 0/1), like the
            model's ``num_classes=1``. With K <= 2 a {0,255} mask is also accepted.
            ``"auto"``: the binary conventions, else any class ids 0..255.
        palette: ``{(r, g, b): class_id}`` for colour masks; an ``int`` key ``v`` stands for
            the gray colour ``(v, v, v)``.
        source: name used in error messages (usually the file name).
        class_values: gray-value codes, one entry per class (a value or a list of values),
            e.g. ``[[0, 32, 64, 96, 128], [159], [191], [223], [255]]``; replaces the
            conventions. Unlisted values (other than ``ignore_index``) are an error.
        ignore_index: mask value (0..255) of void pixels; kept as is in the output and never
            a class (must not be a class id).

    A {0,255} mask logs a one-line INFO notice on the ``"zf_unet"`` logger for each call;
    the folder/stack loaders log it once per data set instead.

    Raises:
        DataError: values or colours that fit no convention, naming ``source``.
    """
    out, scaled = _normalize_mask(mask, convention, num_classes, palette, source,
                                  class_values=class_values, ignore_index=ignore_index)
    if scaled:
        logger.info("%s: mask holds {0, 255}; using 255 as class 1 (divided by 255)", source)
    return out


def notice_scaled(n_scaled: int, n_total: int, where: str) -> None:
    """Log the loaders' one notice per data set: ``n_scaled`` of ``n_total`` masks held
    {0, 255} and were divided by 255 (INFO on the ``"zf_unet"`` logger; nothing when 0)."""
    if n_scaled:
        logger.info(
            "%s: %d of %d masks hold {0, 255}; using 255 as class 1 (divided by 255)",
            where, n_scaled, n_total,
        )


# --------------------------------------------------------------------------- sample checks


class MaskRules:
    """The mask arguments of one data set, checked once: :meth:`apply` turns each raw mask
    into ``(H, W)`` ``uint8`` class ids (see :func:`normalize_mask` for the arguments).

    Raises:
        DataError: a bad argument (unknown convention, palette, class_values ...).
    """

    def __init__(self, convention: str = "auto", num_classes: int | str | None = None,
                 palette: Palette | None = None, class_values: ClassValues | None = None,
                 ignore_index: int | None = None) -> None:
        _check_convention(convention, num_classes, palette, class_values, ignore_index)
        self.convention, self.num_classes, self.palette = convention, num_classes, palette
        self.class_values, self.ignore_index = class_values, ignore_index
        self._table = (_palette_table(palette, num_classes, ignore_index)
                       if palette is not None else None)
        self._cv_table = (_class_values_table(class_values, ignore_index)
                          if class_values is not None else None)

    @property
    def keep_palette_indices(self) -> bool:
        """Read palette PNG masks as their indices (no palette given: index = class id)."""
        return self.palette is None

    def apply(self, raw: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
        """``(mask (H, W) uint8, scaled_from_255)`` for a raw mask; errors name ``name``. A
        ``name`` ending in ``.jpg`` / ``.jpeg`` is refused (JPEG alters label values)."""
        refuse_jpeg_mask(name)
        return _normalize_mask(raw, self.convention, self.num_classes, self.palette, name,
                               self._table, self.class_values, self.ignore_index,
                               self._cv_table)


def _wxh(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def check_same_size(mask_shape: Sequence[int], image_shape: Sequence[int], mask_name: str,
                    image_name: str) -> None:
    """Raise a :class:`DataError` naming both when a mask's ``(H, W)`` is not its image's.
    ``image_name`` is written as is after "does not match" (e.g. ``"its image a.png"``)."""
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        raise DataError(
            f"{mask_name}: size {_wxh(mask_shape)} does not match {image_name} "
            f"({_wxh(image_shape)}) (sizes are width x height)"
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


def rel_name(path: Path, root: Path) -> str:
    """How messages name ``path`` of the data folder ``root``: relative to ``root``'s parent
    (``data/images/a.png``), or the full path."""
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def check_stacks(volume: np.ndarray, labels: np.ndarray, volume_path: PathLike,
                 labels_path: PathLike) -> None:
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
            f"{lab_p}: slice size {_wxh(labels.shape[1:3])} does not match the volume {vol_p} "
            f"({_wxh(volume.shape[1:3])}) (sizes are width x height)"
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


# --------------------------------------------------------------------------- loaders
# The loaders read through zf_unet.data.sources (imported on call: sources builds on this
# module) and collect every sample into memory.


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
    """Load ``folder/images/*`` and ``folder/masks/*`` (paired by :func:`find_pairs`).

    Returns:
        ``(images, masks)``: lists of ``(H, W, C)`` arrays (stored dtype, same ``C`` and
        dtype for all) and of ``(H, W)`` ``uint8`` class ids. Sizes may differ between
        pairs but an image and its mask always match. ``class_values`` / ``ignore_index``:
        see :func:`normalize_mask`.

    Raises:
        DataError: see :func:`find_pairs`, :func:`read_image`, :func:`normalize_mask`; an
            image/mask size mismatch (naming both files); mixed channel counts or dtypes.
    """
    from zf_unet.data.sources import FolderSource, collect

    return collect(FolderSource(folder, images, masks, convention=convention,
                                num_classes=num_classes, palette=palette,
                                class_values=class_values, ignore_index=ignore_index))


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
        :func:`normalize_mask`).

    Raises:
        DataError: unreadable files, different slice counts or sizes, bad mask values.
    """
    from zf_unet.data.sources import StackSource, collect

    return collect(StackSource(volume_path, labels_path, convention=convention,
                               num_classes=num_classes, palette=palette,
                               class_values=class_values, ignore_index=ignore_index))


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
            :func:`normalize_mask`.

    Returns:
        ``(images, masks)`` like :func:`load_folder`: ``(H, W, C)`` arrays (views, no copy)
        and ``(H, W)`` ``uint8`` class ids.

    Raises:
        DataError: wrong ndim, N or size mismatch, NaN/Inf in images, bad mask values.
    """
    from zf_unet.data.sources import ArraySource, collect

    return collect(ArraySource(images, masks, convention=convention, num_classes=num_classes,
                               palette=palette, class_values=class_values,
                               ignore_index=ignore_index))


# --------------------------------------------------------------------------- summary


class SampleSummary:
    """Streaming statistics of a data set, one sample at a time (bounded memory): the dict of
    :func:`describe_dataset`. Void pixels (``ignore_index``) are only counted as ignored."""

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index
        self.n = 0
        self.sizes: Counter[str] = Counter()
        self.height_range: list[int] = []
        self.width_range: list[int] = []
        self.channels: set[int] = set()
        self.dtypes: set[str] = set()
        self.vmin, self.vmax = np.inf, -np.inf
        self.pixels: Counter[int] = Counter()
        self.with_class: Counter[int] = Counter()
        self.empty: list[int] = []
        self.single = 0
        self.ignored = 0

    def update(self, sample: Any) -> None:
        """Add a :class:`zf_unet.data.sources.Sample` (its ``image`` and ``mask``)."""
        self.add(sample.image, sample.mask)

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        """Add one ``(H, W, C)`` (or ``(H, W)``) image and its ``(H, W)`` (or ``(H, W, 1)``)
        integer class-id mask. Raises :class:`DataError` (naming the sample's index) when
        they do not fit."""
        img, m, i = np.asarray(image), np.asarray(mask), self.n
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[:, :, 0]
        if m.ndim != 2 or img.shape[:2] != m.shape:
            raise DataError(
                f"masks[{i}]: shape {m.shape} does not fit images[{i}] of shape {img.shape}"
            )
        if m.dtype.kind not in "uib":
            raise DataError(f"masks[{i}]: dtype {m.dtype}; expected integer class ids")
        h, w = m.shape
        if i:
            self.height_range = [min(self.height_range[0], h), max(self.height_range[1], h)]
            self.width_range = [min(self.width_range[0], w), max(self.width_range[1], w)]
        else:
            self.height_range, self.width_range = [h, h], [w, w]
        self.sizes[f"{w}x{h}"] += 1
        self.channels.add(1 if img.ndim == 2 else int(img.shape[2]))
        self.dtypes.add(str(img.dtype))
        if img.size:
            self.vmin = min(self.vmin, float(np.min(img)))
            self.vmax = max(self.vmax, float(np.max(img)))
        if self.ignore_index is not None:
            void = m == self.ignore_index
            self.ignored += int(np.count_nonzero(void))
            m = m[~void]
        ids, counts = np.unique(m, return_counts=True)
        for c, k in zip(ids.tolist(), counts.tolist()):
            self.pixels[int(c)] += int(k)
            self.with_class[int(c)] += 1
        if ids.size == 1:
            self.single += 1
        if not np.any(m):
            self.empty.append(i)
        self.n += 1

    def summary(self) -> dict[str, Any]:
        """The :func:`describe_dataset` dict; ``{}`` before the first sample."""
        if not self.n:
            return {}
        total = max(1, sum(self.pixels.values()))
        return {
            "ignored_pixels": self.ignored,
            "num_samples": self.n,
            "sizes": dict(sorted(self.sizes.items())),
            "height_range": list(self.height_range),
            "width_range": list(self.width_range),
            "channels": sorted(self.channels),
            "image_dtypes": sorted(self.dtypes),
            "image_value_range": [self.vmin, self.vmax],
            "class_pixel_counts": dict(sorted(self.pixels.items())),
            "class_frequencies": {c: k / total for c, k in sorted(self.pixels.items())},
            "masks_with_class": dict(sorted(self.with_class.items())),
            "foreground_fraction": 1.0 - self.pixels.get(0, 0) / total,
            "empty_masks": len(self.empty),
            "empty_mask_indices": list(self.empty),
            "single_class_masks": self.single,
        }


def describe_dataset(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], ignore_index: int | None = None
) -> dict[str, Any]:
    """Summarise a loaded data set (for a "doctor" command). JSON-serialisable.

    Args:
        images: ``(H, W, C)`` (or ``(H, W)``) arrays, e.g. from :func:`load_folder`.
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
        class statistic and only counted there. :class:`SampleSummary` computes it.
    """
    if len(images) != len(masks):
        raise DataError(f"masks: {len(masks)} mask(s) but images has {len(images)}")
    if len(images) == 0:
        raise DataError("images: no samples to describe")
    totals = SampleSummary(ignore_index)
    for img, m in zip(images, masks):
        totals.add(img, m)
    return totals.summary()
