"""Read images, stacks and volumes from disk, and their shapes from file headers.

Shapes and dtypes:

* an image (:func:`read_image`) is ``(H, W, C)`` with ``C = 1`` for grayscale, in the dtype
  the file stores (``uint8``, ``uint16``, ``float32``, ...);
* a stack (:func:`read_stack`) is ``(N, H, W, C)``, pages in file order;
* a volume (:func:`read_volume`) is ``(D, H, W)`` (one channel) or ``(D, H, W, C)``, in the
  stored dtype, ``D`` slices along z in stack order.

:func:`image_shape` and :func:`tiff_shape` read the same shapes from the headers only; they
share the decoders' channel rule (:func:`pillow_mode`), so the two never disagree.

Every user-facing error is a :class:`zf_unet.errors.DataError` whose message names the
file and says what was expected. Masks are read as images; :mod:`zf_unet.data.masks` turns
them into class ids, :mod:`zf_unet.pixels` scales images to [0, 1].

Image size: the readers refuse images of more than :func:`max_image_pixels` pixels (default
``2**31``, set by :data:`MAX_IMAGE_PIXELS` or the environment variable
``ZF_UNET_MAX_IMAGE_PIXELS``, ``none`` for no limit) with a :class:`DataError` that says how
to lift the limit. Pillow's own decompression-bomb limit is off while they decode.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zf_unet.data.pairing import IMAGE_EXTENSIONS, PathLike, list_images, natural_key
from zf_unet.data.sample_checks import MAX_LISTED, check_stacks, wxh
from zf_unet.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MAX_PIXELS_ENV",
    "VOLUME_EXTENSIONS",
    "image_shape",
    "max_image_pixels",
    "pillow_mode",
    "read_image",
    "read_stack",
    "read_volume",
    "read_volume_pair",
    "tiff_shape",
]

_TIFF_EXTENSIONS = (".tif", ".tiff")
#: File name endings read by :func:`read_volume` (besides a folder of 2-D slices).
VOLUME_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".npy")

#: Largest image (height x width, per page) the readers decode; ``None`` means no limit. The
#: environment variable ``ZF_UNET_MAX_IMAGE_PIXELS`` (a number, or ``none``) overrides it.
MAX_IMAGE_PIXELS: int | None = 2**31
MAX_PIXELS_ENV = "ZF_UNET_MAX_IMAGE_PIXELS"

#: Pillow modes :func:`read_image` converts, and to what (the others are read as stored).
_PIL_CONVERT = {"1": "L", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB",
                "HSV": "RGB"}


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
    files = list_images(folder, folder.name, folder.parent)
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
                f"{f}: slice size {wxh(img.shape)} differs from {first_path.name} "
                f"({wxh(first.shape)}); expected every slice of the volume {folder} to be "
                f"{wxh(first.shape)} (sizes are width x height)"
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
        class ids with :func:`zf_unet.data.masks.normalize_mask` (per section) as for 2-D data.

    Raises:
        DataError: as :func:`read_volume`; different slice counts or slice sizes (naming both
            paths, via :func:`zf_unet.data.sample_checks.check_stacks`); NaN / Inf in a float image volume.
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


def pillow_mode(im: Any, keep_palette_indices: bool = False) -> str | None:
    """The Pillow mode :func:`read_image` converts the opened image ``im`` to, ``None`` to
    read it as stored: palette images become RGB (RGBA with transparency) unless
    ``keep_palette_indices``; 1-bit becomes L; CMYK, YCbCr, LAB and HSV become RGB."""
    if im.mode == "P":
        if keep_palette_indices:
            return None
        return "RGBA" if "transparency" in im.info else "RGB"
    return _PIL_CONVERT.get(im.mode)


def _read_pillow(p: Path, keep_palette_indices: bool) -> np.ndarray:
    from PIL import Image

    limit = max_image_pixels()
    try:
        with _pillow_limit_off(), Image.open(p) as im:
            _check_pixels(p, im.size[1], im.size[0], limit)
            im.load()  # decode now so truncation surfaces here
            target = pillow_mode(im, keep_palette_indices)
            arr = np.asarray(im if target is None else im.convert(target))
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
                    listed = ", ".join(f"{s.shape}" for s in series[:MAX_LISTED])
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


# --------------------------------------------------------------------------- headers


def image_shape(path: Path) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image file from its header (as :func:`read_image` returns it)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            n, h, w, c = tiff_shape(path)
            return h, w, c
        from PIL import Image

        with Image.open(path) as im:
            target = pillow_mode(im)
            channels = len(Image.getmodebands(target)) if target else len(im.getbands())
            return im.size[1], im.size[0], channels
    except Exception:  # noqa: BLE001 - let the reader decode it, or say what is wrong
        h, w, c = read_image(path).shape
        return h, w, c


def tiff_shape(path: Path) -> tuple[int, int, int, int]:
    """``(N, H, W, C)`` of a TIFF from its page headers (as :func:`read_stack` returns)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = list(tif.series)
        if not series:
            raise DataError(f"{path}: TIFF holds no images")
        shape, axes = series[0].shape, series[0].axes
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: TIFF has axes {axes!r}; expected Y and X axes")
    pages = int(np.prod([s for s, a in zip(shape, axes) if a not in "YXSC"], dtype=np.int64))
    channels = int(np.prod([s for s, a in zip(shape, axes) if a in "SC"], dtype=np.int64))
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    return pages * len(series), int(h), int(w), channels
