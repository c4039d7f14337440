"""Colour-coded masks: ``data.palette`` / ``--palette``, the colours ``check-data`` finds, and
the rule that masks are never JPEG files.

Street scenes and remote sensing often store masks as RGB images, one colour per class. The
config key ``data.palette`` (and ``--palette`` of ``zf-unet check-data`` and ``zf-unet pack``)
says which colour is which class, in one of two forms:

* a list: entry ``i`` is the colour of class ``i``, written ``[r, g, b]`` (integers 0..255) or
  ``"#rrggbb"``; an entry may also be a list of colours that all mean class ``i``::

      [data]
      palette = [[0, 0, 0], [128, 64, 128], "#f423e8"]

      zf-unet train --set data.palette=[[0,0,0],[128,64,128],[244,35,232]]

* a table ``colour -> class id`` (keys ``"#rrggbb"`` or ``"r,g,b"``), the form that also names
  void colours: a colour mapped to ``data.ignore_index`` is void (left out of the losses and
  scores, as any void pixel)::

      [data]
      ignore_index = 255
      [data.palette]
      "#000000" = 0
      "#804080" = 1
      "#ffffff" = 255    # void

      zf-unet train --set 'data.palette={"#000000"=0, "#804080"=1, "#ffffff"=255}'
          --set data.ignore_index=255

Class ids are ``0..K-1``: ``K`` is the number of list entries, or the table's highest non-void
id + 1 (the ids may not leave gaps). Two classes make a binary model (``data.num_classes``
then defaults to 1), more a softmax over ``K`` classes. A gray mask pixel ``v`` is read as
the colour ``(v, v, v)``; palette ("P" mode) PNG masks are read by their colours. A colour
of a mask that the palette does not list is an error naming the file and the colour.

``zf-unet check-data DIR`` lists the colours of RGB masks with their pixel counts and prints a
ready-to-paste ``data.palette`` line. In Python, ``palette={(r, g, b): class_id}`` is the
same mapping (:func:`zf_unet.data.masks.normalize_mask`).
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np

from zf_unet.errors import ConfigError, DataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["JPEG_EXTENSIONS", "MAX_PALETTE_COLOURS", "VOC_VOID_COLOUR", "Colour", "ColourCount",
           "as_palette", "check_palette", "coloured_pixels", "model_classes", "palette_arguments",
           "palette_classes", "palette_mapping", "palette_text", "parse_colour",
           "parse_palette_text", "png_palette", "refuse_jpeg_mask"]

Colour = tuple[int, int, int]
#: ``data.palette`` as written: a list (class ``i`` = entry ``i``) or a table colour -> id.
PaletteSpec = Union[list, dict]
#: File endings of JPEG files, which are never read as masks.
JPEG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg")
#: More distinct colours than this in the RGB masks: no palette is suggested (the masks are
#: then likely resized with interpolation, anti-aliased or JPEG-compressed).
MAX_PALETTE_COLOURS = 64
#: The void / object-border colour of Pascal VOC style palette masks (index 255 there).
VOC_VOID_COLOUR: Colour = (224, 224, 192)
_HEX = re.compile(r"#([0-9a-fA-F]{6})")
_EXAMPLE = "e.g. [[0, 0, 0], [255, 0, 0]] (class i = colour i) or {\"#000000\" = 0, ...}"


# --------------------------------------------------------------------------- JPEG masks


def refuse_jpeg_mask(name: str) -> None:
    """Raise a :class:`DataError` naming ``name`` when it is a JPEG file: JPEG's lossy
    compression alters the label values (a 0/255 edge becomes 0..255), so its class ids
    cannot be trusted."""
    if str(name).lower().endswith(JPEG_EXTENSIONS):
        raise DataError(f"{name}: a JPEG mask; JPEG's lossy compression alters label values "
                        "(edges get values between the classes), so the class ids cannot be "
                        "trusted; expected masks saved as PNG or TIFF")


# --------------------------------------------------------------------------- the palette value


def parse_colour(value: Any, where: str = "data.palette") -> Colour:
    """``(r, g, b)`` from ``[r, g, b]`` (integers 0..255), ``"#rrggbb"`` or ``"r,g,b"``;
    a :class:`ConfigError` naming ``where`` otherwise."""
    if isinstance(value, str):
        text = value.strip()
        m = _HEX.fullmatch(text)
        if m:
            n = int(m.group(1), 16)
            return (n >> 16, (n >> 8) & 255, n & 255)
        parts = text.split(",")
        if len(parts) == 3 and all(p.strip().isdigit() for p in parts):
            value = [int(p) for p in parts]
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c <= 255
            for c in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ConfigError(f"{where}: {value!r} is not a colour; expected [r, g, b] with integers "
                      "0..255 or \"#rrggbb\"")


def _is_colour(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) == 3 and
                                      all(not isinstance(c, (list, tuple, str)) for c in value))


def _hex(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def check_palette(value: Any, where: str = "data.palette") -> PaletteSpec:
    """``value`` (a ``data.palette``) checked and normalised: a list of ``[r, g, b]`` (or of
    lists of them, one list per class), or a table ``{"#rrggbb": class id}``; ``[]`` (no
    palette) stays ``[]``. Raises a :class:`ConfigError` naming ``where``."""
    if value is None or (isinstance(value, (list, tuple, Mapping)) and not value):
        return []
    seen: dict[Colour, str] = {}

    def note(colour: Colour, label: str) -> None:
        if colour in seen:
            raise ConfigError(f"{where}: the colour {list(colour)} is listed for {seen[colour]} "
                              f"and {label}; expected each colour once")
        seen[colour] = label

    if isinstance(value, Mapping):
        out: dict[str, int] = {}
        for key, cid in value.items():
            colour = parse_colour(key, f"{where} key {key!r}")
            if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) \
                    or not 0 <= cid <= 255:
                raise ConfigError(f"{where}: {key!r} = {cid!r}; expected a class id (an integer "
                                  "0..255; the void colour: data.ignore_index)")
            note(colour, f"class {cid}")
            out[_hex(colour)] = int(cid)
        return out
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} = {value!r}; expected a list of colours, {_EXAMPLE}")
    if len(value) < 2:
        raise ConfigError(f"{where} = {value!r} names one class; expected at least two colours, "
                          f"{_EXAMPLE}")
    entries: list = []
    for i, entry in enumerate(value):
        if _is_colour(entry):
            colour = parse_colour(entry, f"{where}[{i}]")
            note(colour, f"class {i}")
            entries.append(list(colour))
            continue
        if not isinstance(entry, (list, tuple)) or not entry:
            raise ConfigError(f"{where}[{i}] = {entry!r}; expected a colour [r, g, b] / "
                              f"\"#rrggbb\" or a non-empty list of colours of class {i}")
        group = []
        for c in entry:
            colour = parse_colour(c, f"{where}[{i}]")
            note(colour, f"class {i}")
            group.append(list(colour))
        entries.append(group)
    return entries


def palette_mapping(value: Any, where: str = "data.palette") -> dict[Colour, int]:
    """``{(r, g, b): class_id}`` (the readers' ``palette=``) of a ``data.palette`` value;
    empty for no palette."""
    spec = check_palette(value, where)
    if isinstance(spec, dict):
        return {parse_colour(k, where): v for k, v in spec.items()}
    out: dict[Colour, int] = {}
    for i, entry in enumerate(spec):
        for colour in ([entry] if _is_colour(entry) else entry):
            out[tuple(colour)] = i  # type: ignore[index]
    return out


def palette_classes(value: Any, ignore_index: int | None = None,
                    where: str = "data.palette") -> int:
    """K, the classes a palette names (0 for none): the list's length, or the table's highest
    non-void id + 1. Raises a :class:`ConfigError` for ids with gaps (a void colour without
    ``data.ignore_index``) or fewer than two classes."""
    spec = check_palette(value, where)
    if not isinstance(spec, dict):
        return len(spec)  # a list names >= 2 classes (checked)
    void = None if ignore_index is None or ignore_index < 0 else int(ignore_index)
    ids = sorted({v for v in spec.values() if v != void})
    if ids != list(range(len(ids))) or len(ids) < 2:
        hint = (f" (a void colour maps to data.ignore_index, now {void})" if void is not None
                else " (a void colour maps to data.ignore_index, which is not set: -1)")
        raise ConfigError(f"{where} maps colours to the class ids {ids}; expected the ids "
                          f"0..K-1 without gaps, at least two classes{hint}")
    return len(ids)


def check_palette_rules(data: Any, place: str) -> int:
    """``data.palette`` of a ``DataConfig`` against its other keys; returns the model's
    ``num_classes`` (``data.num_classes``, or the palette's when that is 0). Raises a
    :class:`ConfigError` naming the keys (``place``: e.g. ``"config.toml [data]"``)."""
    for key in ("class_values", "volumes"):
        if getattr(data, key):
            raise ConfigError(f"{place}: palette and {key} = {getattr(data, key)!r} cannot be "
                              "used together; expected data.palette for 2-D colour masks, "
                              "class_values for gray-value codes")
    ignore = data.ignore_index if data.ignore_index >= 0 else None
    n = palette_classes(data.palette, ignore, f"{place}: palette")
    k = data.num_classes
    if k and max(k, 2) != n:
        raise ConfigError(f"{place}: palette names {n} classes but num_classes = {k}; expected "
                          f"num_classes = {model_classes(n)} (or 0: from the palette)")
    return k or model_classes(n)


def model_classes(k: int) -> int:
    """The model's ``num_classes`` for ``k`` palette classes: 1 (binary) for two, else ``k``."""
    return 1 if k == 2 else k


def parse_palette_text(text: str, flag: str = "--palette") -> PaletteSpec:
    """A ``--palette`` value: the ``data.palette`` forms written as TOML or JSON, e.g.
    ``'[[0,0,0],[255,0,0]]'`` or ``'{"#000000"=0, "#ffffff"=255}'``; checked."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(f"{flag} {text!r}: not a list or table of colours; expected "
                              f"{_EXAMPLE}") from None
    spec = check_palette(value, flag)
    if not spec:
        raise ConfigError(f"{flag} {text!r}: no colours; expected {_EXAMPLE}")
    return spec


def as_palette(value: Any, ignore_index: int | None = None,
               where: str = "palette") -> tuple[dict | None, int]:
    """``(mapping for the readers or None, K)`` from a ``data.palette`` value or a Python
    ``{(r, g, b): class_id}`` mapping (``int`` keys = gray colours), ``K`` as
    :func:`palette_classes` (0 without a palette)."""
    if value is None or (isinstance(value, (list, tuple, Mapping)) and not value):
        return None, 0
    if isinstance(value, Mapping) and not any(isinstance(k, str) for k in value):
        void = None if ignore_index is None or ignore_index < 0 else int(ignore_index)
        ids = [int(v) for v in value.values()
               if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v != void]
        return dict(value), (max(ids) + 1 if ids else 0)
    return palette_mapping(value, where), palette_classes(value, ignore_index, where)


def palette_arguments(text: str | None, num_classes: int | None, ignore_index: int | None,
                      flag: str = "--palette") -> tuple[dict | None, int | None]:
    """The ``--palette`` flag of a command: ``(mapping or None, num_classes)``, where
    ``num_classes`` (``--num-classes``) defaults to the palette's classes (1 for two)."""
    if not text:
        return None, num_classes
    spec = parse_palette_text(text, flag)
    k = palette_classes(spec, ignore_index, flag)
    return palette_mapping(spec, flag), num_classes or model_classes(k)


def palette_text(colours: list[Colour]) -> str:
    """``[[r,g,b],...]`` without spaces (pastes into ``--set`` and ``--palette``)."""
    return "[" + ",".join(f"[{r},{g},{b}]" for r, g, b in colours) + "]"


# --------------------------------------------------------------------------- colours found


def coloured_pixels(raw: np.ndarray) -> np.ndarray | None:
    """The ``(H, W, 3)`` colours of a raw mask with coloured (not gray) pixels, else None."""
    if raw.ndim != 3 or raw.shape[2] < 3:
        return None
    rgb = raw[:, :, :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return None
    return rgb


class ColourCount:
    """Pixel counts per colour over the RGB masks :meth:`add` is given (``check-data``). After
    ``limit`` distinct colours, new colours are counted in :attr:`more` only."""

    def __init__(self, limit: int = 4 * MAX_PALETTE_COLOURS) -> None:
        self.counts: Counter[Colour] = Counter()
        self.masks = 0
        self.more = 0  # distinct colours beyond ``limit`` (not kept)
        self.limit = limit

    def add(self, rgb: np.ndarray) -> None:
        """Count the colours of one ``(H, W, 3)`` mask (8-bit values)."""
        a = np.asarray(rgb).astype(np.int64)
        keys, counts = np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2],
                                 return_counts=True)
        self.masks += 1
        for k, n in zip(keys.tolist(), counts.tolist()):
            colour = (k >> 16, (k >> 8) & 255, k & 255)
            if colour in self.counts or len(self.counts) < self.limit:
                self.counts[colour] += n
            else:
                self.more += 1

    def __len__(self) -> int:
        return len(self.counts) + self.more

    def ordered(self) -> list[Colour]:
        """The colours for a suggested palette: black first (usually the background, class 0),
        then by pixel count (most first; ties by colour)."""
        return sorted(self.counts, key=lambda c: (c != (0, 0, 0), -self.counts[c], c))

    def listing(self, shown: int = 12) -> str:
        """``"(0, 0, 0) #000000: 1234 px, ..."`` by pixel count, the first ``shown``."""
        top = sorted(self.counts, key=lambda c: (-self.counts[c], c))
        text = ", ".join(f"({r}, {g}, {b}) {_hex((r, g, b))}: {self.counts[(r, g, b)]} px"
                         for r, g, b in top[:shown])
        rest = len(self) - min(shown, len(top))
        return text + (f" and {rest} more" if rest > 0 else "")

    def suggestion(self) -> list[Colour] | None:
        """:meth:`ordered` when there are 2..:data:`MAX_PALETTE_COLOURS` colours, else None."""
        if self.more or not 2 <= len(self.counts) <= MAX_PALETTE_COLOURS:
            return None
        return self.ordered()


def png_palette(path: str | Path) -> list[Colour] | None:
    """The colours of a palette ("P" mode) PNG, by index; None for other files."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            flat = im.getpalette() or []
    except Exception:  # noqa: BLE001 - unreadable files are reported by the readers
        return None
    return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat) - 2, 3)]
