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

Volumes (``mode``)
------------------
Every function takes ``mode=``:

* ``"image"`` (default): one 2-D image ``(H, W)`` / ``(H, W, 1)``, as described above.
* ``"sections"``: a volume ``(D, H, W)`` / ``(D, H, W, 1)`` treated as ``D`` independent
  z-sections; the result equals the 2-D map of each section stacked (cells are the
  connected components of each section, ``"balanced"`` class weights use each section's
  frequencies). The usual choice for anisotropic stacks (e.g. serial-section EM), and the
  default of :func:`volume_weight_map`.
* ``"3d"``: a volume ``(D, H, W)`` / ``(D, H, W, 1)`` with 3-D cells (connected components
  with ``connectivity`` 1 = 6, 2 = 18, 3 = 26 neighbours) and 3-D Euclidean distances
  ``d1``, ``d2`` measured with the voxel size ``spacing = (z, y, x)``
  (``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``); ``sigma`` and
  ``cutoff`` are in the units of ``spacing`` (pixels with the default ``(1, 1, 1)``), and
  ``"balanced"`` class weights use the frequencies of the whole volume.

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

from zf_unet.checks import check_spacing
from zf_unet.errors import DataError

__all__ = [
    "DEFAULT_CUTOFF_SIGMAS",
    "WEIGHT_MAP_MODES",
    "border_weight_map",
    "border_weight_maps",
    "cached_border_weight_map",
    "class_weight_map",
    "default_cache_dir",
    "volume_weight_map",
]

#: Default cutoff on ``d1 + d2`` in the fast mode, in units of ``sigma``.
DEFAULT_CUTOFF_SIGMAS = 6.0

#: Bumped when the computation changes, so old cache files are not reused.
_CACHE_VERSION = 1

#: Values of ``mode``: a 2-D image, a volume as independent z-sections, a 3-D volume.
WEIGHT_MAP_MODES: tuple[str, ...] = ("image", "sections", "3d")
_VOLUME_MODES = ("sections", "3d")


def _check_mode(mode: Any) -> str:
    if not isinstance(mode, str) or mode not in WEIGHT_MAP_MODES:
        raise DataError(
            f"mode: expected one of {', '.join(repr(m) for m in WEIGHT_MAP_MODES)} "
            f"('image' for a 2-D (H, W) mask, 'sections' or '3d' for a (D, H, W) volume), "
            f"got {mode!r}"
        )
    return mode


def _check_spacing(spacing: Any, mode: str) -> tuple[float, float, float] | None:
    """``spacing`` as a ``(z, y, x)`` tuple of positive floats for ``mode="3d"`` (``None``:
    ``(1, 1, 1)``; one number: isotropic; the values checked by
    :func:`zf_unet.checks.check_spacing`); ``None`` for the other modes, which refuse it."""
    if mode != "3d":
        if spacing is not None:
            raise DataError(
                f"spacing: only used with mode='3d' (3-D distances), got spacing={spacing!r} "
                f"with mode={mode!r}"
            )
        return None
    if spacing is None:
        return (1.0, 1.0, 1.0)
    number = isinstance(spacing, (int, float, np.number)) and not isinstance(spacing, bool)
    return check_spacing((spacing,) * 3 if number else spacing, "spacing",
                         3)  # type: ignore[return-value]


def _shape_text(ndim: int) -> str:
    return "(H, W) or (H, W, 1)" if ndim == 2 else "(D, H, W) or (D, H, W, 1)"



def _reference(m: np.ndarray | None, lab: np.ndarray | None, name: str, what: str) -> np.ndarray:
    """The array that sets the shape: ``m`` (the binary masks) or else ``lab`` (labels), after
    checking that one is given and that both, when given, have the same shape."""
    if m is None and lab is None:
        raise DataError(f"{name}: expected {what} (or pass labels=), got None")
    if m is not None and lab is not None and m.shape != lab.shape:
        raise DataError(f"labels: expected the same shape as {name} {m.shape}, got {lab.shape}")
    return m if m is not None else lab  # type: ignore[return-value]

def _squeeze_channel(arr: np.ndarray, ndim: int) -> np.ndarray:
    """Drop a trailing channel of size 1 from an ``ndim + 1``-D array."""
    if arr.ndim == ndim + 1 and arr.shape[-1] == 1:
        return arr[..., 0]
    return arr


def _wrong_ndim(name: str, what: str, shape: tuple[int, ...], ndim: int) -> DataError:
    text = f"{name}: expected a {ndim}-D {what} of shape {_shape_text(ndim)}, got shape {shape}"
    if ndim == 2 and len(shape) in (3, 4):
        text += "; for a volume (D, H, W) pass mode='sections' or mode='3d'"
    elif ndim == 3 and len(shape) == 2:
        text += "; for a 2-D image use mode='image'"
    return DataError(text)


# --------------------------------------------------------------------------- validation
def _as_binary_mask(mask: Any, name: str = "mask", ndim: int = 2) -> np.ndarray:
    """Validate a 0/1, 0/255 or bool mask of shape (H, W) or (H, W, 1) (``ndim=3``:
    (D, H, W) or (D, H, W, 1)); return bool (H, W) / (D, H, W)."""
    try:
        arr = np.asarray(mask)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise DataError(f"{name}: expected an array-like mask, got {type(mask).__name__}") from exc
    arr = _squeeze_channel(arr, ndim)
    if arr.ndim != ndim:
        raise _wrong_ndim(name, "mask", arr.shape, ndim)
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


def _as_labels(labels: Any, name: str = "labels", ndim: int = 2) -> np.ndarray:
    """Validate a non-negative integer instance image (H, W) or (H, W, 1) (``ndim=3``: a
    volume (D, H, W) or (D, H, W, 1)); return int32 (H, W) / (D, H, W) with consecutive ids
    1..n (0 = background)."""
    arr = _squeeze_channel(np.asarray(labels), ndim)
    if arr.ndim != ndim:
        raise _wrong_ndim(name, "instance image", arr.shape, ndim)
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


def _check_params(w0: float, sigma: float, connectivity: int, cutoff: float | None,
                  ndim: int = 2) -> None:
    if not np.isfinite(w0) or w0 < 0:
        raise DataError(f"w0: expected a finite number >= 0, got {w0!r}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise DataError(f"sigma: expected a finite number > 0 (pixels), got {sigma!r}")
    if ndim == 3:
        if connectivity not in (1, 2, 3):
            raise DataError(
                f"connectivity: expected 1 (6-neighbours), 2 (18-neighbours) or 3 "
                f"(26-neighbours) for mode='3d', got {connectivity!r}"
            )
    elif connectivity not in (1, 2):
        raise DataError(
            f"connectivity: expected 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}"
        )
    if cutoff is not None and (not np.isfinite(cutoff) or cutoff <= 0):
        raise DataError(f"cutoff: expected a finite number > 0 (pixels) or None, got {cutoff!r}")


# --------------------------------------------------------------------------- class weights
def class_weight_map(
    mask: Any, class_weights: str | Mapping[int, float] | None = "balanced", *,
    mode: str = "image",
) -> np.ndarray:
    """Class-balancing weight map ``w_c``: float32 (H, W), or (D, H, W) for a volume.

    Classes: 0 = background/membrane, 1 = cell interior (``mask`` as in
    :func:`border_weight_map`). ``mode``: ``"image"`` (a 2-D mask, default),
    ``"sections"`` (a (D, H, W) volume, each z-section weighted on its own: the 2-D maps
    stacked) or ``"3d"`` (a (D, H, W) volume, frequencies over all its voxels).

    * ``"balanced"``: inverse class frequency, ``w_k = N / (K * n_k)`` with ``N`` pixels,
      ``n_k`` pixels of class ``k`` and ``K`` classes present. Every class then carries the
      same weighted mass ``N / K`` and the mean weight over the image is exactly 1.
    * a dict ``{class_id: weight}`` (ids 0 and/or 1; a missing id gets 1.0).
    * ``None``: all ones.
    """
    mode = _check_mode(mode)
    if mode == "sections":
        fg = _as_binary_mask(mask, "mask", ndim=3)
        return np.stack([_class_weight_map(fg[i], class_weights) for i in range(fg.shape[0])])
    fg = _as_binary_mask(mask, "mask", ndim=3 if mode == "3d" else 2)
    return _class_weight_map(fg, class_weights)


def _split_void(mask: Any, ignore_index: int | None, name: str,
                ndim: int = 2) -> tuple[Any, np.ndarray | None]:
    """``(mask with void pixels set to 0, void (H, W) / (D, H, W) bool or None)``."""
    if ignore_index is None or mask is None:
        return mask, None
    arr = _squeeze_channel(np.asarray(mask), ndim)
    void = arr == ignore_index
    if arr.ndim != ndim or not void.any():
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
    labels: np.ndarray, n_cells: int, margin: float | None,
    sampling: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the two smallest of ``edt(labels != k, sampling)`` over cells
    ``k = 1..n_cells``; ``labels`` (H, W) or (D, H, W), ``sampling`` the pixel / voxel size
    per axis (``None``: 1).

    ``margin=None``: each EDT over the whole image. Otherwise only inside the cell's
    bounding box grown by ``margin`` (in the units of ``sampling``: ``ceil(margin / s)``
    pixels along an axis of size ``s``); pixels outside keep ``inf``.
    Returns float64 arrays ``(d1, d2)`` of the shape of ``labels``, ``d1 <= d2``.
    """
    shape = labels.shape
    d1 = np.full(shape, np.inf)
    d2 = np.full(shape, np.inf)
    steps = (1.0,) * labels.ndim if sampling is None else sampling
    grow = None if margin is None else [int(np.ceil(margin / s)) for s in steps]
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:  # pragma: no cover - ids are consecutive
            continue
        if grow is None:
            sl = tuple(slice(0, n) for n in shape)
        else:
            sl = tuple(slice(max(b.start - g, 0), min(b.stop + g, n))
                       for b, g, n in zip(box, grow, shape))
        # The whole cell lies inside ``sl``, so the crop EDT is the exact distance to it.
        d = ndi.distance_transform_edt(labels[sl] != k, sampling=sampling)
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
    mode: str = "image",
    spacing: float | tuple[float, float, float] | None = None,
) -> np.ndarray:
    """U-Net border weight map ``w = w_c + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``.

    Args:
        mask: (H, W) or (H, W, 1) binary mask, values {0, 1}, {0, 255} or bool;
            1/255/True = cell interior, 0 = membrane/background. With ``mode="sections"``
            or ``"3d"`` a volume (D, H, W) or (D, H, W, 1). May be ``None`` when
            ``labels`` is given (then ``mask = labels > 0``).
        w0: border weight ``w_0`` (paper: 10).
        sigma: border width ``sigma`` in pixels (paper: 5).
        class_weights: ``"balanced"`` (inverse class frequency, mean weight 1), a dict
            ``{0: w_bg, 1: w_cell}``, or ``None`` (``w_c = 1``); see :func:`class_weight_map`.
        connectivity: 1 = 4-connected cells, 2 = 8-connected cells (ignored with ``labels``);
            ``mode="3d"``: 1 = 6-, 2 = 18-, 3 = 26-connected cells.
        labels: optional (H, W) (volumes: (D, H, W)) non-negative integer instance image
            (0 = background);
            when given it defines the cells instead of the connected components of ``mask``,
            and the border term goes to pixels with ``labels == 0``.
        exact: ``True`` computes every cell's distance transform over the whole image
            and applies no cutoff (slow: ``O(cells * H * W)``).
        cutoff: fast mode only; pixels with ``d1 + d2 > cutoff`` get no border term, and
            each cell's distances are computed only within ``cutoff`` of its bounding box.
            Default ``6 * sigma`` (error ``<= w0 * exp(-18)``).
        ignore_index: mask value of void pixels (e.g. 255 with {0, 1} masks): weight 0,
            neither cell nor border (see the module docstring).
        mode: ``"image"`` (default: a 2-D mask), ``"sections"`` (a (D, H, W) volume, each
            z-section's 2-D map: exactly ``border_weight_map(mask[z], ...)`` stacked) or
            ``"3d"`` (a (D, H, W) volume with 3-D cells and distances); see the module
            docstring and :func:`volume_weight_map`.
        spacing: ``mode="3d"`` only: the voxel size ``(z, y, x)`` (or one number for
            isotropic voxels), default ``(1, 1, 1)``; distances, ``sigma`` and ``cutoff``
            are in its units, e.g. ``(4.0, 1.0, 1.0)`` for sections 4 pixels apart.

    Returns:
        float32 array (H, W), or (D, H, W) for a volume. The border term is added on
        background (non-cell) pixels only; cell pixels get ``w_c``; void pixels 0. With 0
        or 1 cells the term is 0.

    Raises:
        DataError: wrong shape, NaN, non-binary mask without ``labels``, bad parameters
            (including an unknown ``mode`` or a ``spacing`` outside ``mode="3d"``).
    """
    mode = _check_mode(mode)
    sampling = _check_spacing(spacing, mode)
    ndim = 3 if mode == "3d" else 2
    _check_params(float(w0), float(sigma), connectivity, cutoff, ndim)
    if mode == "sections":
        return _sections_map(mask, labels, w0=w0, sigma=sigma, class_weights=class_weights,
                             connectivity=connectivity, exact=exact, cutoff=cutoff,
                             ignore_index=ignore_index)
    mask, void = _split_void(mask, ignore_index, "mask", ndim)
    if labels is not None:
        lab = _as_labels(labels, "labels", ndim)
        if mask is None:
            fg = lab > 0
        else:
            fg = _as_binary_mask(mask, "mask", ndim)
            if fg.shape != lab.shape:
                raise DataError(
                    f"labels: expected the same shape as mask {fg.shape}, got {lab.shape}"
                )
        n_cells = int(lab.max())
    else:
        if mask is None:
            raise DataError("mask: expected a binary mask (or pass labels=), got None")
        fg = _as_binary_mask(mask, "mask", ndim)
        structure = ndi.generate_binary_structure(ndim, connectivity)
        lab, n_cells = ndi.label(fg, structure=structure)
        lab = lab.astype(np.int32, copy=False)

    if void is not None and void.shape != fg.shape:  # pragma: no cover - shapes checked above
        raise DataError(f"mask: void shape {void.shape} does not match {fg.shape}")
    weights = _class_weight_map(fg, class_weights, void)
    if n_cells < 2 or w0 == 0:
        return weights

    if exact:
        d1, d2 = _two_nearest(lab, n_cells, margin=None, sampling=sampling)
        limit = np.inf
    else:
        limit = DEFAULT_CUTOFF_SIGMAS * float(sigma) if cutoff is None else float(cutoff)
        d1, d2 = _two_nearest(lab, n_cells, margin=limit, sampling=sampling)

    total = d1 + d2
    where = (lab == 0) & (total <= limit)
    if void is not None:
        where &= ~void
    term = float(w0) * np.exp(-np.square(total[where]) / (2.0 * float(sigma) ** 2))
    weights[where] += term.astype(np.float32)
    return weights


def _sections_map(mask: Any, labels: Any, **kwargs: Any) -> np.ndarray:
    """``mode="sections"``: the 2-D map of each z-section of a (D, H, W) volume, stacked to
    float32 (D, H, W)."""
    def _volume(x: Any, name: str) -> np.ndarray | None:
        if x is None:
            return None
        arr = _squeeze_channel(np.asarray(x), 3)
        if arr.ndim != 3:
            raise _wrong_ndim(name, "volume", arr.shape, 3)
        if arr.size == 0:
            raise DataError(f"{name}: expected a non-empty volume, got shape {arr.shape}")
        return arr

    m, lab = _volume(mask, "mask"), _volume(labels, "labels")
    ref = _reference(m, lab, "mask", "a binary mask")
    return np.stack([
        border_weight_map(None if m is None else m[z], labels=None if lab is None else lab[z],
                          mode="image", **kwargs)
        for z in range(ref.shape[0])
    ])


def volume_weight_map(
    mask: Any,
    mode: str = "sections",
    spacing: float | tuple[float, float, float] | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Border weight map of a volume: :func:`border_weight_map` with ``mode="sections"``
    (the default here: one 2-D map per z-section) or ``mode="3d"`` (3-D cells and distances
    with the voxel size ``spacing = (z, y, x)``).

    Args:
        mask: (D, H, W) or (D, H, W, 1) binary volume (``None`` with ``labels=``).
        mode: ``"sections"`` or ``"3d"``.
        spacing: ``mode="3d"`` only, see :func:`border_weight_map`.
        **kwargs: the other parameters of :func:`border_weight_map` (``w0``, ``sigma``,
            ``class_weights``, ``connectivity``, ``labels``, ``exact``, ``cutoff``,
            ``ignore_index``).

    Returns:
        float32 array (D, H, W).
    """
    if mode not in _VOLUME_MODES:
        raise DataError(
            f"mode: expected 'sections' or '3d' for a volume, got {mode!r} (use "
            "border_weight_map for a 2-D image)"
        )
    return border_weight_map(mask, mode=mode, spacing=spacing, **kwargs)


def border_weight_maps(masks: Any, labels: Any = None, **kwargs: Any) -> np.ndarray:
    """Batch version of :func:`border_weight_map`.

    Args:
        masks: (N, H, W) or (N, H, W, 1) binary masks (may be ``None`` with ``labels``);
            with ``mode="sections"`` / ``"3d"`` a batch of volumes (N, D, H, W) or
            (N, D, H, W, 1). (A single volume (D, H, W) with the default ``mode="image"``
            gives the same maps as ``mode="sections"``: each section is one image.)
        labels: optional instance images, shaped like ``masks``.
        **kwargs: passed to :func:`border_weight_map` (``mode``, ``spacing``, ...).

    Returns:
        float32 array (N, H, W, 1), or (N, D, H, W, 1) for volumes.
    """
    ndim = 3 if _check_mode(kwargs.get("mode", "image")) in _VOLUME_MODES else 2
    lead = "(N, H, W)" if ndim == 2 else "(N, D, H, W)"

    def _batch(x: Any, name: str) -> np.ndarray:
        arr = _squeeze_channel(np.asarray(x), ndim + 1)
        if arr.ndim != ndim + 1:
            raise DataError(
                f"{name}: expected a batch of shape {lead} or {lead[:-1]}, 1), got {arr.shape}"
            )
        return arr

    m = None if masks is None else _batch(masks, "masks")
    lab = None if labels is None else _batch(labels, "labels")
    ref = _reference(m, lab, "masks", "a batch of binary masks")
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
    mode = params.get("mode", "image")
    if mode != "image":  # absent for 2-D images: their keys are unchanged
        norm["mode"] = mode
        spacing = params.get("spacing")
        norm["spacing"] = None if spacing is None else [float(v) for v in spacing]
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
        mask: as in :func:`border_weight_map` (a (D, H, W) volume with ``mode=``).
        cache_dir: folder for the ``.npy`` files; default :func:`default_cache_dir`.
        **kwargs: parameters of :func:`border_weight_map` (``w0``, ``sigma``, ``labels``,
            ``mode``, ``spacing``, ...). ``mode`` and the normalised ``spacing`` (``None``
            and ``(1, 1, 1)`` share a file) are part of the key for volumes; 2-D keys are
            those of earlier versions.

    Returns:
        float32 array (H, W), or (D, H, W) for a volume.
    """
    unknown = set(kwargs) - {"w0", "sigma", "class_weights", "connectivity", "labels",
                             "exact", "cutoff", "ignore_index", "mode", "spacing"}
    if unknown:
        raise DataError(f"cached_border_weight_map: unexpected arguments {sorted(unknown)}")
    mode = _check_mode(kwargs.get("mode", "image"))
    spacing = _check_spacing(kwargs.get("spacing"), mode)
    ndim = 2 if mode == "image" else 3
    labels = kwargs.get("labels")
    lab = None if labels is None else _as_labels(labels, "labels", ndim)
    plain, void = _split_void(mask, kwargs.get("ignore_index"), "mask", ndim)
    if mask is None:
        if lab is None:
            raise DataError("mask: expected a binary mask (or pass labels=), got None")
        fg = lab > 0
    else:
        fg = _as_binary_mask(plain, "mask", ndim)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    params = {k: v for k, v in kwargs.items() if k not in ("ignore_index", "spacing")}
    if mode != "image":
        params["spacing"] = spacing
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
