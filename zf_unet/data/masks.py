"""Mask conventions: how a raw mask becomes ``(H, W)`` ``uint8`` class ids, and how many
classes the masks hold.

Conventions (:func:`normalize_mask`), in the order ``"auto"`` tries them:

* an RGB(A) mask with a ``palette`` ``{(r, g, b): class_id}`` -> class ids;
* values in ``{0, 1}`` -> used as they are;
* values in ``{0, 255}`` -> divided by 255 (1 = foreground). The loaders log ONE notice per
  data set on the ``"zf_unet"`` logger (level INFO, :func:`notice_scaled`);
* integer class ids ``0..K-1`` when ``num_classes=K`` is given (``num_classes="auto"``:
  any ids ``0..255``; K is then inferred, :func:`infer_num_classes`).

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

Anything else raises :class:`zf_unet.errors.DataError`. :class:`MaskRules` is the mask
arguments of one data set, checked once.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

from zf_unet.data.colour_masks import refuse_jpeg_mask
from zf_unet.data.sample_checks import MAX_LISTED
from zf_unet.errors import DataError

__all__ = ["AUTO_CLASSES", "ClassValues", "MASK_CONVENTIONS", "MaskRules", "Palette",
           "infer_num_classes", "normalize_mask", "notice_scaled", "resolve_num_classes"]

logger = logging.getLogger("zf_unet")

#: ``{(r, g, b): class_id}``; an ``int`` key ``v`` means the gray colour ``(v, v, v)``.
Palette = Mapping[Union[tuple[int, int, int], int], int]
#: Values accepted for the ``convention`` argument.
MASK_CONVENTIONS: tuple[str, ...] = ("auto", "binary", "class_ids", "palette")
#: ``num_classes`` value that asks the loaders to accept any class ids 0..255 (K inferred).
AUTO_CLASSES = "auto"
#: Per class, one mask value or a list of values: ``[[0, 32], [159], [255]]``.
ClassValues = Sequence[Union[int, Sequence[int]]]


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
            f"({k >> 16}, {(k >> 8) & 255}, {k & 255})" for k in unknown[:MAX_LISTED]
        )
        more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
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


# --------------------------------------------------------------------------- number of classes


def resolve_num_classes(masks: Sequence[np.ndarray], num_classes: int | str | None,
                        class_values: ClassValues | None,
                        ignore_index: int | None) -> int:
    """K for the model: ``num_classes`` as given, ``"auto"`` inferred from the class-id
    ``masks`` (:func:`infer_num_classes`), ``None``: the number of ``class_values`` groups
    (2 groups -> 1) or 1 (binary)."""
    if num_classes == AUTO_CLASSES:
        return infer_num_classes(masks, ignore_index, class_values)
    if num_classes is not None:
        return int(num_classes)
    if class_values is not None:
        return 1 if len(class_values) == 2 else len(class_values)
    return 1


def infer_num_classes(masks: Sequence[np.ndarray], ignore_index: int | None = None,
                      class_values: ClassValues | None = None, *,
                      values: Sequence[int] | None = None) -> int:
    """K for the model from normalised ``(H, W)`` uint8 masks (1 = binary), or from the mask
    ``values`` already known to occur (a streamed pre-pass); logs why (INFO).

    With ``class_values``: its number of entries (2 entries -> 1). Otherwise the highest class
    id seen (void excluded) + 1, where ids {0, 1} (the {0,1}/{0,255} conventions) -> 1.

    Raises:
        DataError: a class id at or above ``ignore_index``, or no labelled pixel at all.
    """
    if class_values is not None:
        k = len(class_values)
        out = 1 if k == 2 else k
        logger.info("num_classes='auto': class_values lists %d classes -> num_classes=%d%s",
                    k, out, " (binary)" if out == 1 else "")
        return out
    seen = np.zeros(256, bool)
    if values is not None:
        seen[np.asarray(values, np.int64)] = True
    for m in masks if values is None else ():
        seen[np.unique(np.asarray(m, np.uint8))] = True
    if ignore_index is not None:
        seen[int(ignore_index)] = False
    ids = np.flatnonzero(seen)
    if ids.size == 0:
        raise DataError("num_classes='auto': every mask pixel is void (ignore_index="
                        f"{ignore_index}); expected labelled pixels to infer the classes from")
    top = int(ids[-1])
    if ignore_index is not None and top > int(ignore_index):
        raise DataError(f"num_classes='auto': masks hold class id {top}, above ignore_index="
                        f"{ignore_index}; expected class ids 0..K-1 below the void value")
    if top <= 1:
        logger.info("num_classes='auto': masks hold class ids %s after the {0, 1} / {0, 255} "
                    "conventions -> num_classes=1 (binary)", ids.tolist())
        return 1
    missing = sorted(set(range(top + 1)) - set(ids.tolist()))
    logger.info("num_classes='auto': masks hold class ids 0..%d%s -> num_classes=%d", top,
                f" (ids {missing} never appear)" if missing else "", top + 1)
    return top + 1
