"""Border weight maps of the U-Net paper (Ronneberger et al. 2015, eq. 2).

.. math::

    w(x) = w_c(x) + w_0 \\cdot \\exp\\left(-\\frac{(d_1(x) + d_2(x))^2}{2\\sigma^2}\\right)

* ``w_c`` is the class-balancing weight map (see :func:`class_weight_map`).
* ``d1`` / ``d2`` are the Euclidean distances from pixel ``x`` to the border of the
  nearest / second-nearest *cell*; a cell is a connected component of the foreground.

Mask convention (as in ISBI 2012): ``1`` (or ``255``, or ``True``) = cell interior,
``0`` = membrane / background. An already-labelled instance image can be given
with ``labels=`` instead (``0`` = background, ``k > 0`` = cell ``k``).

Which pixels get the border term
--------------------------------
The paper uses the term to force the network to learn the thin separation borders
between touching cells, so it is applied to **background (non-cell) pixels only**.
For such a pixel, ``d_k`` is the distance to the nearest pixel of cell ``k``, exactly what
``scipy.ndimage.distance_transform_edt(labels != k)`` returns there; ``d1 <= d2`` are
the two smallest over all cells. Cell pixels get ``w = w_c``. With fewer than two
cells there is no second cell and the term is 0 everywhere.

Fast mode (default)
-------------------
``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` is negligible once ``d1 + d2`` exceeds a
cutoff ``c`` (default ``6 * sigma``, where the term is ``w0 * exp(-18) ~ 1.5e-8 * w0``).
A pixel with ``d1 + d2 <= c`` has ``d2 <= c``, so both of its nearest cells lie within ``c``
of it. Each cell's distance transform is therefore computed only inside its
bounding box grown by ``c``, and the two smallest distances per pixel are kept.
Pixels with ``d1 + d2 <= c`` get the exact value; the others get 0 instead of a value
``< w0 * exp(-c**2 / (2 sigma**2))``, which bounds the error of the fast mode.
``exact=True`` runs one distance transform per cell over the whole image
(``O(cells * H * W)``) and does not truncate.

Void pixels (``ignore_index``)
------------------------------
Pixels holding ``ignore_index`` are unlabelled. They get weight 0 (the loss skips them
anyway), are left out of the class frequencies of ``"balanced"``, and are *neither cell nor
border*: they never join a cell (so void does not connect two cells into one), they get no
border term, and distances from border pixels to cells are measured straight across them
(void is empty space, not a barrier).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi

from zf_unet.errors import DataError

__all__ = [
    "DEFAULT_CUTOFF_SIGMAS",
    "border_weight_map",
    "border_weight_maps",
    "cached_border_weight_map",
    "class_weight_map",
    "default_cache_dir",
]

#: Default cutoff on ``d1 + d2`` in the fast mode, in units of ``sigma``.
DEFAULT_CUTOFF_SIGMAS = 6.0

#: Bumped when the computation changes, so old cache files are not reused.
_CACHE_VERSION = 1


# --------------------------------------------------------------------------- validation
def _as_binary_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """Validate a 0/1, 0/255 or bool mask of shape (H, W) or (H, W, 1); return bool (H, W)."""
    try:
        arr = np.asarray(mask)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise DataError(f"{name}: expected an array-like mask, got {type(mask).__name__}") from exc
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(
            f"{name}: expected a 2-D mask of shape (H, W) or (H, W, 1), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise DataError(f"{name}: expected a non-empty mask, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{name}: expected a numeric or bool mask, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise DataError(f"{name}: expected finite values, found NaN or inf")
    values = np.unique(arr)
    if np.all(np.isin(values, (0, 1))) or np.all(np.isin(values, (0, 255))):
        return arr != 0
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
    raise DataError(
        f"{name}: expected a binary mask with values {{0, 1}}, {{0, 255}} or bool "
        f"(1/255 = cell interior), got values [{shown}]; pass an instance image via labels="
    )


def _as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Validate a non-negative integer instance image (H, W) or (H, W, 1); return int32 (H, W)
    with consecutive ids 1..n (0 = background)."""
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(
            f"{name}: expected a 2-D instance image of shape (H, W) or (H, W, 1), "
            f"got shape {arr.shape}"
        )
    if arr.size == 0:
        raise DataError(f"{name}: expected a non-empty instance image, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.int32)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{name}: expected finite integer ids, found NaN or inf")
        if not np.all(arr == np.round(arr)):
            raise DataError(f"{name}: expected integer cell ids, got non-integer values")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name}: expected an integer instance image, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise DataError(f"{name}: expected ids >= 0 (0 = background), got min {arr.min()}")
    fg = arr > 0
    ids = np.unique(arr[fg])
    out = np.zeros(arr.shape, dtype=np.int32)
    out[fg] = np.searchsorted(ids, arr[fg]).astype(np.int32) + 1
    return out


def _check_params(w0: float, sigma: float, connectivity: int, cutoff: float | None) -> None:
    if not np.isfinite(w0) or w0 < 0:
        raise DataError(f"w0: expected a finite number >= 0, got {w0!r}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise DataError(f"sigma: expected a finite number > 0 (pixels), got {sigma!r}")
    if connectivity not in (1, 2):
        raise DataError(
            f"connectivity: expected 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}"
        )
    if cutoff is not None and (not np.isfinite(cutoff) or cutoff <= 0):
        raise DataError(f"cutoff: expected a finite number > 0 (pixels) or None, got {cutoff!r}")


# --------------------------------------------------------------------------- class weights
def class_weight_map(
    mask: Any, class_weights: str | Mapping[int, float] | None = "balanced"
) -> np.ndarray:
    """Class-balancing weight map ``w_c``: float32 (H, W).

    Classes: 0 = background/membrane, 1 = cell interior (``mask`` as in
    :func:`border_weight_map`).

    * ``"balanced"``: inverse class frequency, ``w_k = N / (K * n_k)`` with ``N`` pixels,
      ``n_k`` pixels of class ``k`` and ``K`` classes present. Every class then carries the
      same weighted mass ``N / K`` and the mean weight over the image is exactly 1.
    * a dict ``{class_id: weight}`` (ids 0 and/or 1; a missing id gets 1.0).
    * ``None``: all ones.
    """
    fg = _as_binary_mask(mask, "mask")
    return _class_weight_map(fg, class_weights)


def _split_void(mask: Any, ignore_index: int | None, name: str) -> tuple[Any, np.ndarray | None]:
    """``(mask with void pixels set to 0, void (H, W) bool or None)``."""
    if ignore_index is None or mask is None:
        return mask, None
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    void = arr == ignore_index
    if arr.ndim != 2 or not void.any():
        return mask, None
    return np.where(void, np.zeros((), arr.dtype), arr), void


def _class_weight_map(fg: np.ndarray, class_weights: Any,
                      void: np.ndarray | None = None) -> np.ndarray:
    if void is not None:  # frequencies over labelled pixels only; void weighs 0
        out = _class_weight_map(fg[~void], class_weights)
        full = np.zeros(fg.shape, dtype=np.float32)
        full[~void] = out
        return full
    if class_weights is None:
        return np.ones(fg.shape, dtype=np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise DataError(
                f"class_weights: expected 'balanced', a dict {{class_id: weight}} or None, "
                f"got {class_weights!r}"
            )
        n = fg.size
        n_fg = int(np.count_nonzero(fg))
        counts = {0: n - n_fg, 1: n_fg}
        present = [k for k, c in counts.items() if c > 0]
        weights = {k: n / (len(present) * counts[k]) for k in present}
        w_bg, w_fg = weights.get(0, 1.0), weights.get(1, 1.0)
    elif isinstance(class_weights, Mapping):
        bad = [k for k in class_weights if k not in (0, 1) or isinstance(k, bool)]
        if bad:
            raise DataError(
                f"class_weights: expected keys 0 (background) and/or 1 (cell), got {bad!r}"
            )
        vals = {}
        for k, v in class_weights.items():
            try:
                fv = float(v)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"class_weights[{k}]: expected a number >= 0, got {v!r}"
                ) from exc
            if not np.isfinite(fv) or fv < 0:
                raise DataError(f"class_weights[{k}]: expected a finite number >= 0, got {v!r}")
            vals[int(k)] = fv
        w_bg, w_fg = vals.get(0, 1.0), vals.get(1, 1.0)
    else:
        raise DataError(
            f"class_weights: expected 'balanced', a dict {{class_id: weight}} or None, "
            f"got {type(class_weights).__name__}"
        )
    return np.where(fg, np.float32(w_fg), np.float32(w_bg)).astype(np.float32)


# --------------------------------------------------------------------------- distances
def _two_nearest(
    labels: np.ndarray, n_cells: int, margin: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the two smallest of ``edt(labels != k)`` over cells ``k = 1..n_cells``.

    ``margin=None``: each EDT over the whole image. Otherwise only inside the cell's
    bounding box grown by ``margin`` pixels; pixels outside keep ``inf``.
    Returns float64 arrays ``(d1, d2)`` of shape (H, W), ``d1 <= d2``.
    """
    h, w = labels.shape
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    grow = None if margin is None else int(np.ceil(margin))
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:  # pragma: no cover - ids are consecutive
            continue
        if grow is None:
            sl: tuple[slice, slice] = (slice(0, h), slice(0, w))
        else:
            ys, xs = box
            sl = (
                slice(max(ys.start - grow, 0), min(ys.stop + grow, h)),
                slice(max(xs.start - grow, 0), min(xs.stop + grow, w)),
            )
        # The whole cell lies inside ``sl``, so the crop EDT is the exact distance to it.
        d = ndi.distance_transform_edt(labels[sl] != k)
        r1 = d1[sl]
        r2 = d2[sl]
        np.minimum(r2, np.maximum(r1, d), out=r2)  # uses the old d1
        np.minimum(r1, d, out=r1)
    return d1, d2


def border_weight_map(
    mask: Any,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | Mapping[int, float] | None = "balanced",
    connectivity: int = 1,
    labels: Any = None,
    *,
    exact: bool = False,
    cutoff: float | None = None,
    ignore_index: int | None = None,
) -> np.ndarray:
    """U-Net border weight map ``w = w_c + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``.

    Args:
        mask: (H, W) or (H, W, 1) binary mask, values {0, 1}, {0, 255} or bool;
            1/255/True = cell interior, 0 = membrane/background. May be ``None`` when
            ``labels`` is given (then ``mask = labels > 0``).
        w0: border weight ``w_0`` (paper: 10).
        sigma: border width ``sigma`` in pixels (paper: 5).
        class_weights: ``"balanced"`` (inverse class frequency, mean weight 1), a dict
            ``{0: w_bg, 1: w_cell}``, or ``None`` (``w_c = 1``); see :func:`class_weight_map`.
        connectivity: 1 = 4-connected cells, 2 = 8-connected cells (ignored with ``labels``).
        labels: optional (H, W) non-negative integer instance image (0 = background);
            when given it defines the cells instead of the connected components of ``mask``,
            and the border term goes to pixels with ``labels == 0``.
        exact: ``True`` computes every cell's distance transform over the whole image
            and applies no cutoff (slow: ``O(cells * H * W)``).
        cutoff: fast mode only; pixels with ``d1 + d2 > cutoff`` get no border term, and
            each cell's distances are computed only within ``cutoff`` of its bounding box.
            Default ``6 * sigma`` (error ``<= w0 * exp(-18)``).
        ignore_index: mask value of void pixels (e.g. 255 with {0, 1} masks): weight 0,
            neither cell nor border (see the module docstring).

    Returns:
        float32 array (H, W). The border term is added on background (non-cell) pixels
        only; cell pixels get ``w_c``; void pixels 0. With 0 or 1 cells the term is 0.

    Raises:
        DataError: wrong shape, NaN, non-binary mask without ``labels``, bad parameters.
    """
    _check_params(float(w0), float(sigma), connectivity, cutoff)
    mask, void = _split_void(mask, ignore_index, "mask")
    if labels is not None:
        lab = _as_labels(labels, "labels")
        if mask is None:
            fg = lab > 0
        else:
            fg = _as_binary_mask(mask, "mask")
            if fg.shape != lab.shape:
                raise DataError(
                    f"labels: expected the same shape as mask {fg.shape}, got {lab.shape}"
                )
        n_cells = int(lab.max())
    else:
        if mask is None:
            raise DataError("mask: expected a binary mask (or pass labels=), got None")
        fg = _as_binary_mask(mask, "mask")
        structure = ndi.generate_binary_structure(2, connectivity)
        lab, n_cells = ndi.label(fg, structure=structure)
        lab = lab.astype(np.int32, copy=False)

    if void is not None and void.shape != fg.shape:  # pragma: no cover - shapes checked above
        raise DataError(f"mask: void shape {void.shape} does not match {fg.shape}")
    weights = _class_weight_map(fg, class_weights, void)
    if n_cells < 2 or w0 == 0:
        return weights

    if exact:
        d1, d2 = _two_nearest(lab, n_cells, margin=None)
        limit = np.inf
    else:
        limit = DEFAULT_CUTOFF_SIGMAS * float(sigma) if cutoff is None else float(cutoff)
        d1, d2 = _two_nearest(lab, n_cells, margin=limit)

    total = d1 + d2
    where = (lab == 0) & (total <= limit)
    if void is not None:
        where &= ~void
    term = float(w0) * np.exp(-np.square(total[where]) / (2.0 * float(sigma) ** 2))
    weights[where] += term.astype(np.float32)
    return weights


def border_weight_maps(masks: Any, labels: Any = None, **kwargs: Any) -> np.ndarray:
    """Batch version of :func:`border_weight_map`.

    Args:
        masks: (N, H, W) or (N, H, W, 1) binary masks (may be ``None`` with ``labels``).
        labels: optional (N, H, W) or (N, H, W, 1) instance images.
        **kwargs: passed to :func:`border_weight_map`.

    Returns:
        float32 array (N, H, W, 1).
    """
    def _batch(x: Any, name: str) -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise DataError(
                f"{name}: expected a batch of shape (N, H, W) or (N, H, W, 1), got {arr.shape}"
            )
        return arr

    m = None if masks is None else _batch(masks, "masks")
    lab = None if labels is None else _batch(labels, "labels")
    if m is None and lab is None:
        raise DataError("masks: expected a batch of binary masks (or pass labels=), got None")
    if m is not None and lab is not None and m.shape != lab.shape:
        raise DataError(f"labels: expected the same shape as masks {m.shape}, got {lab.shape}")
    ref = m if m is not None else lab
    assert ref is not None
    out = np.empty(ref.shape + (1,), dtype=np.float32)
    for i in range(ref.shape[0]):
        out[i, ..., 0] = border_weight_map(
            None if m is None else m[i], labels=None if lab is None else lab[i], **kwargs
        )
    return out


# --------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$ZF_UNET_CACHE/weightmaps`` if set, else ``~/.cache/zf_unet/weightmaps``."""
    env = os.environ.get("ZF_UNET_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "zf_unet"
    return base / "weightmaps"


def _cache_key(fg: np.ndarray, lab: np.ndarray | None, params: Mapping[str, Any],
               void: np.ndarray | None = None) -> str:
    h = hashlib.sha256()
    h.update(f"zf_unet.weightmaps.v{_CACHE_VERSION}".encode())
    h.update(repr(fg.shape).encode())
    h.update(np.ascontiguousarray(fg, dtype=np.uint8).tobytes())
    if lab is not None:
        h.update(b"labels")
        h.update(np.ascontiguousarray(lab, dtype=np.int32).tobytes())
    if void is not None:  # absent for masks without void pixels: their keys are unchanged
        h.update(b"void")
        h.update(np.ascontiguousarray(void, dtype=np.uint8).tobytes())
    cw = params.get("class_weights", "balanced")
    if isinstance(cw, Mapping):
        cw = {str(int(k)): float(v) for k, v in sorted(cw.items())}
    norm = {
        "w0": float(params.get("w0", 10.0)),
        "sigma": float(params.get("sigma", 5.0)),
        "class_weights": cw,
        "connectivity": int(params.get("connectivity", 1)),
        "exact": bool(params.get("exact", False)),
        "cutoff": None if params.get("cutoff") is None else float(params["cutoff"]),
    }
    h.update(json.dumps(norm, sort_keys=True).encode())
    return h.hexdigest()[:40]


def cached_border_weight_map(
    mask: Any, cache_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> np.ndarray:
    """:func:`border_weight_map`, computed once per (mask, parameters) and kept on disk.

    The key is a SHA-256 of the normalised mask (so 0/1, 0/255 and bool masks share a
    file), the labels if given, and all parameters. Files are ``<cache_dir>/bwm-<key>.npy``,
    written atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        mask: as in :func:`border_weight_map`.
        cache_dir: folder for the ``.npy`` files; default :func:`default_cache_dir`.
        **kwargs: parameters of :func:`border_weight_map` (``w0``, ``sigma``, ``labels``, ...).

    Returns:
        float32 array (H, W).
    """
    unknown = set(kwargs) - {"w0", "sigma", "class_weights", "connectivity", "labels",
                             "exact", "cutoff", "ignore_index"}
    if unknown:
        raise DataError(f"cached_border_weight_map: unexpected arguments {sorted(unknown)}")
    labels = kwargs.get("labels")
    lab = None if labels is None else _as_labels(labels, "labels")
    plain, void = _split_void(mask, kwargs.get("ignore_index"), "mask")
    if mask is None:
        if lab is None:
            raise DataError("mask: expected a binary mask (or pass labels=), got None")
        fg = lab > 0
    else:
        fg = _as_binary_mask(plain, "mask")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    params = {k: v for k, v in kwargs.items() if k != "ignore_index"}
    path = folder / f"bwm-{_cache_key(fg, lab, params, void)}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == fg.shape and cached.dtype == np.float32:
                return cached
        except (OSError, ValueError):
            pass  # unreadable / truncated: recompute and overwrite
    result = border_weight_map(mask, **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bwm-", suffix=".npy.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, result, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return result
