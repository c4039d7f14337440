"""The data doctor: ``check_data(folder)`` / ``zf-unet check-data DIR``.

It reads a training folder (``images/`` + ``masks/``, paired by file name) through the
source training uses (:class:`zf_unet.data.file_sources.FolderSource`, collecting every problem),
keeps going past bad files, and reports:

* what it saw: number of pairs, image sizes, dtypes, channels and value range, the mask
  value conventions (``{0, 1}``, ``{0, 255}``, class ids, RGB colours), class frequencies,
  empty and single-class masks; the colours of RGB masks with their pixel counts and a
  ready-to-paste ``data.palette`` line;
* problems that make training fail or learn nothing (errors): unreadable files, files
  without a partner (every one, beside the other problems), image/mask size mismatches,
  mask values that fit no convention, NaN/Inf pixels, float images outside [0, 1], mixed
  channel counts or dtypes, masks that all hold one class, JPEG masks (lossy compression
  alters label values; training refuses them);
* likely mistakes (warnings): severe class imbalance, classes that never occur, mixed
  mask conventions, mostly empty masks, images smaller than the patch size.

The config lines it suggests come from evidence: a void value (``data.ignore_index``) is
proposed only for 255 or, in palette ("P" mode) PNG masks, the index of the Pascal VOC void
colour; never because a value is rare, last or the most frequent.

The CLI exits 0 when nothing was found, 1 when there are problems (errors or warnings) and
2 when the folder cannot be read as a data set or some files cannot be decoded.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zf_unet.data import colour_masks
from zf_unet.data.file_sources import FolderSource
from zf_unet.data.stats import SampleStats
from zf_unet.pixels import check_float_range
from zf_unet.errors import DataError

__all__ = ["DataReport", "Problem", "check_data"]

#: Smallest side a default U-Net (depth 5: 4 poolings) can take without mirror padding.
MIN_SIDE = 16
_LISTED = 5


@dataclass
class Problem:
    """One finding: ``severity`` is ``"error"`` (training fails or learns nothing) or
    ``"warning"`` (a likely mistake); ``files`` lists the affected files."""

    severity: str
    code: str
    message: str
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"severity": self.severity, "code": self.code, "message": self.message,
                "files": list(self.files)}


@dataclass
class DataReport:
    """What :func:`check_data` found. ``summary`` has the keys of
    :func:`zf_unet.data.stats.describe_dataset` (over the pairs that could be read)."""

    path: str
    num_pairs: int = 0
    num_checked: int = 0
    num_classes: int | None = None
    patch_size: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    conventions: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    #: config lines the data suggests (``data.num_classes``, ``ignore_index``, ...)
    suggestions: list[str] = field(default_factory=list)
    #: pixel counts of the colours of RGB (colour-coded) masks, ``"#rrggbb"`` -> pixels
    colours: dict[str, int] = field(default_factory=dict)
    #: ``"(0, 0, 0) #000000: 1234 px, ..."``: the most frequent of :attr:`colours`
    colour_listing: str = ""

    @property
    def ok(self) -> bool:
        """True when there is nothing to report (no problem, no unreadable file)."""
        return not self.problems and not self.unreadable

    @property
    def exit_code(self) -> int:
        """0 fine, 1 problems found, 2 some files cannot be read."""
        if self.unreadable:
            return 2
        return 1 if self.problems else 0

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_dict(self) -> dict:
        """JSON-serialisable form (class ids become strings in JSON)."""
        return {
            "path": self.path, "num_pairs": self.num_pairs, "num_checked": self.num_checked,
            "num_classes": self.num_classes, "patch_size": self.patch_size,
            "summary": self.summary, "conventions": self.conventions,
            "problems": [p.to_dict() for p in self.problems], "notes": list(self.notes),
            "unreadable": list(self.unreadable), "exit_code": self.exit_code,
            "suggestions": list(self.suggestions), "colours": dict(self.colours),
        }

    def format(self) -> str:
        """A readable multi-line report."""
        s = self.summary
        lines = [f"data: {self.path}",
                 f"  pairs: {self.num_pairs} image/mask pair(s), {self.num_checked} usable"]
        if s:
            sizes = ", ".join(f"{k} ({v})" for k, v in list(s["sizes"].items())[:_LISTED])
            if len(s["sizes"]) > _LISTED:
                sizes += f" and {len(s['sizes']) - _LISTED} more"
            lo, hi = s["image_value_range"]
            lines += [
                f"  image sizes (WxH): {sizes}",
                f"  image dtypes: {', '.join(s['image_dtypes'])}; channels: "
                f"{', '.join(str(c) for c in s['channels'])}; values {_num(lo)} .. {_num(hi)}",
                "  mask conventions: " + ", ".join(f"{k} ({v})" for k, v in
                                                  self.conventions.items()),
                "  classes (share of mask pixels / masks containing it): " + ", ".join(
                    f"{c}: {100 * f:.2f} % / {s['masks_with_class'][c]}"
                    for c, f in s["class_frequencies"].items()),
                f"  empty masks (class 0 only): {s['empty_masks']}; single-class masks: "
                f"{s['single_class_masks']}",
            ]
        if self.colour_listing:
            lines.append(f"  mask colours ({len(self.colours)}, pixels): {self.colour_listing}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.suggestions:
            lines.append("suggested config (zf-unet train --set KEY=VALUE):")
            lines += [f"  {line}" for line in self.suggestions]
        if self.unreadable:
            lines.append(f"unreadable files ({len(self.unreadable)}):")
            lines += [f"  {msg}" for msg in self.unreadable]
        if self.problems:
            lines.append(f"problems ({len(self.errors())} error(s), "
                         f"{len(self.warnings())} warning(s)):")
            for p in self.problems:
                lines.append(f"  {p.severity.upper():7s} {p.message}")
        elif not self.unreadable:
            lines.append("no problems found")
        return "\n".join(lines)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _convention(raw: np.ndarray, num_classes: int | None) -> str:
    """Name of the value convention of a raw mask as read from its file."""
    if raw.ndim == 3 and raw.shape[2] >= 3:
        rgb = raw[:, :, :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])):
            return "RGB colours"
    gray = raw[:, :, 0] if raw.ndim == 3 else raw
    values = np.unique(gray)
    if values.size == 1 and values[0] == 0:
        return "all 0"
    if np.all((values == 0) | (values == 1)):
        return "{0, 1}"
    if np.all((values == 0) | (values == 255)):
        return "{0, 255}"
    is_int = gray.dtype.kind in "ui" or bool(np.all(values == np.round(values)))
    if is_int and values.min() >= 0 and num_classes is not None and values.max() < num_classes:
        return f"class ids 0..{num_classes - 1}"
    return "other values"


def check_data(path: str | Path, num_classes: int | None = None, *,
               patch_size: int | None = None, imbalance: float = 0.01,
               ignore_index: int | None = None, class_values: Any = None,
               palette: Any = None) -> DataReport:
    """Check a training folder (``images/`` + ``masks/``) and report what is wrong with it.

    Args:
        path: the folder (the layout :func:`zf_unet.data.pairing.find_pairs` reads).
        num_classes: K for integer class-id masks (values ``0..K-1``); ``None`` expects
            binary masks ({0, 1} or {0, 255}), as training with ``data.num_classes = 1``.
        patch_size: the training patch size; images smaller than it are reported.
            ``None``: images with a side below 16 px (a depth-5 U-Net's minimum) are.
        ignore_index: the masks' void value: left out of the class statistics.
        class_values: gray-value codes per class (``data.class_values``).
        palette: class colours of RGB masks: a ``data.palette`` value (``[[r, g, b], ...]``,
            class ``i`` = colour ``i``, or a table ``{"#rrggbb": class id}``) or
            ``{(r, g, b): class_id}``; ``num_classes`` then defaults to the palette's.
        imbalance: a class with less than this share of all mask pixels is "severe
            imbalance".

    Returns:
        A :class:`DataReport`; ``report.exit_code`` is 0 (fine), 1 (problems) or 2
        (unreadable files). Bad files do not stop the check: every pair is looked at, and
        files without a partner are reported (``unpaired``) beside the pairs' problems.

    Raises:
        DataError: the folder cannot be read as a data set (missing, no ``images/`` or
            ``masks/``, empty, duplicate names) or a bad argument.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or
                                    not isinstance(num_classes, (int, np.integer))
                                    or not 1 <= num_classes <= 256):
        raise DataError(f"num_classes={num_classes!r}: expected an int from 1 to 256")
    if patch_size is not None and (isinstance(patch_size, bool) or
                                   not isinstance(patch_size, (int, np.integer))
                                   or patch_size < 1):
        raise DataError(f"patch_size={patch_size!r}: expected a positive int or None")
    mapping, k_palette = colour_masks.as_palette(palette, ignore_index)
    if mapping is not None and num_classes is None and k_palette > 2:
        num_classes = k_palette
    root = Path(path)
    source = FolderSource(root, num_classes=num_classes, class_values=class_values,
                          palette=mapping, ignore_index=ignore_index, strict=False)
    report = DataReport(path=str(root), num_pairs=len(source),
                        num_classes=None if num_classes is None else int(num_classes),
                        patch_size=None if patch_size is None else int(patch_size))
    for message in source.problems:
        report.problems.append(Problem("error", "unpaired", message,
                                       [f"{p.parent.name}/{p.name}" for p in source.unpaired]))
    totals = SampleStats(ignore_index, strict_channels=False)
    conventions: Counter[str] = Counter()
    found: dict[str, list[str]] = {}  # problem code -> file names (or messages)
    first: tuple[str, int, str] | None = None  # (image name, channels, dtype)
    min_side = int(patch_size) if patch_size is not None else MIN_SIDE
    raw_values: set[int] = set()  # gray values of the raw masks, for the suggestions
    colours = colour_masks.ColourCount()  # colours of RGB masks
    indexed: list[colour_masks.Colour] | None = None  # a palette PNG mask's colours
    n_indexed = 0

    def rel(p: Path) -> str:
        return f"{p.parent.name}/{p.name}"

    for i, (img_path, mask_path) in enumerate(source.pairs):
        img_name, mask_name = rel(img_path), rel(mask_path)
        try:
            image, raw = source.read_raw(i)
        except DataError as exc:
            report.unreadable.append(str(exc))
            continue
        if raw.shape[:2] != image.shape[:2]:
            found.setdefault("size_mismatch", []).append(
                f"{mask_name} is {raw.shape[1]}x{raw.shape[0]} but {img_name} is "
                f"{image.shape[1]}x{image.shape[0]}")
            continue
        jpeg = mask_path.suffix.lower() in colour_masks.JPEG_EXTENSIONS
        if jpeg:
            found.setdefault("jpeg_masks", []).append(mask_name)
        channels, dtype = int(image.shape[2]), str(image.dtype)
        if first is None:
            first = (img_name, channels, dtype)
        elif channels != first[1]:
            found.setdefault("mixed_channels", []).append(f"{img_name} ({channels})")
        elif dtype != first[2]:
            found.setdefault("mixed_dtypes", []).append(f"{img_name} ({dtype})")
        if image.dtype.kind == "f":
            finite = np.isfinite(image)
            if not finite.all():
                found.setdefault("nan_pixels", []).append(
                    f"{img_name} ({int(np.size(finite) - np.count_nonzero(finite))} pixel(s))")
                continue
            try:
                check_float_range(image, img_name)  # the readers' rule, one home
            except DataError:
                lo, hi = float(image.min()), float(image.max())
                found.setdefault("float_range", []).append(f"{img_name} ([{lo:.3g}, {hi:.3g}])")
        if min(image.shape[:2]) < min_side:
            found.setdefault("small_images", []).append(
                f"{img_name} ({image.shape[1]}x{image.shape[0]})")
        if jpeg:  # its values cannot be trusted: neither counted nor suggested from
            continue
        conventions[_convention(raw, num_classes)] += 1
        rgb = colour_masks.coloured_pixels(raw)
        if rgb is not None:
            colours.add(rgb)
        elif mapping is None and len(raw_values) <= _MAX_SUGGESTED_VALUES:
            gray = raw[:, :, 0] if raw.ndim == 3 else raw
            raw_values.update(int(v) for v in np.unique(gray) if float(v).is_integer())
            if source.rules.keep_palette_indices and mask_path.suffix.lower() == ".png":
                colours_of_index = colour_masks.png_palette(mask_path)
                if colours_of_index is not None:
                    n_indexed += 1
                    indexed = indexed or colours_of_index
        try:
            mask, _ = source.rules.apply(raw, mask_name)
        except DataError as exc:
            found.setdefault("bad_mask_values", []).append(str(exc))
            continue
        totals.add(image, mask)
        report.num_checked += 1

    report.summary = totals.summary()
    report.conventions = dict(conventions.most_common())
    _add_problems(report, found, first, min_side, imbalance)
    report.suggestions = suggest_config(sorted(raw_values), report.conventions, num_classes,
                                        ignore_index, class_values, indexed=indexed)
    if n_indexed:
        report.notes.append(
            f"{n_indexed} mask(s) are palette (\"P\" mode) PNGs: their palette indices are read "
            "as the class ids (Pascal VOC style); with data.palette / --palette their colours "
            "are read instead")
    if len(colours):
        _report_colours(report, colours, mapping is not None)
    return report


def _report_colours(report: DataReport, colours: colour_masks.ColourCount,
                    palette_given: bool) -> None:
    """The colours of the RGB masks, and (no palette given) a palette to paste."""
    report.colours = {"#{:02x}{:02x}{:02x}".format(*c): n for c, n in
                      sorted(colours.counts.items(), key=lambda item: (-item[1], item[0]))}
    report.colour_listing = colours.listing()
    if palette_given:
        return
    order = colours.suggestion()
    if order is None:
        report.notes.append(
            f"{len(colours)} distinct colours in {colours.masks} RGB mask(s): too many for "
            f"class colours (at most {colour_masks.MAX_PALETTE_COLOURS}); were the masks "
            "resized with interpolation, anti-aliased or saved as JPEG?")
        return
    text = colour_masks.palette_text(order)
    report.suggestions.append(
        f"data.palette={text}  # class i = colour i ({len(order)} colours of "
        f"{colours.masks} RGB mask(s), black first, then by pixel count): reorder to your "
        "class ids; map a void colour with a table {\"#rrggbb\" = ignore_index}")
    if len(order) > 2:
        report.suggestions.append(f"data.num_classes={len(order)}")
    report.notes.append(f"check the masks with these colours: zf-unet check-data "
                        f"{report.path} --palette '{text}'")


_MAX_SUGGESTED_VALUES = 64


def suggest_config(values: list[int], conventions: dict[str, int], num_classes: int | None,
                   ignore_index: int | None, class_values: Any, *,
                   indexed: list[colour_masks.Colour] | None = None) -> list[str]:
    """Config lines for the mask values seen (``values``: the raw gray values):

    * {0, 1} / {0, 255} masks: ``data.num_classes = 1``;
    * ids ``0..K-1`` plus one larger value with evidence of void: 255, or (palette PNG masks,
      ``indexed`` = their colours by index) an index whose colour is the Pascal VOC void
      colour: that value as ``data.ignore_index`` and ``data.num_classes = K``;
    * other gray-value codes (e.g. 0, 32, ..., 255): ``data.class_values`` with one group per
      value and ``data.num_classes``; merge groups as the classes require.

    A value is never proposed as void for being last, rare or the most frequent (in palette
    PNG masks the background is often the last index).
    """
    if class_values or not values or len(values) > _MAX_SUGGESTED_VALUES:
        return []
    if set(values) <= {0, 1} or set(values) <= {0, 255}:
        return [] if num_classes == 1 else ["data.num_classes=1  # binary masks"]
    out = []
    ids = [v for v in values if v != ignore_index]
    contiguous = ids == list(range(len(ids)))
    candidate = (ids[-1] if not contiguous and ids[:-1] == list(range(len(ids) - 1))
                 and ignore_index is None and len(ids) > 2 else None)
    evidence = ""
    if candidate == 255:
        evidence = "255 is the usual void label"
    elif candidate is not None and indexed is not None and candidate < len(indexed) \
            and indexed[candidate] == colour_masks.VOC_VOID_COLOUR:
        evidence = (f"palette index {candidate} has the Pascal VOC void colour "
                    f"{colour_masks.VOC_VOID_COLOUR}")
    if evidence:
        void = candidate
        out += [f"data.ignore_index={void}  # {evidence}, beside the class ids "
                f"0..{len(ids) - 2}", f"data.num_classes={len(ids) - 1}"]
    elif contiguous:
        if num_classes != len(ids):
            out.append(f"data.num_classes={len(ids)}  # class ids 0..{len(ids) - 1}")
    else:
        groups = ", ".join(f"[{v}]" for v in ids)
        alt = (f"; if {candidate} marks void (unlabelled) pixels, data.ignore_index="
               f"{candidate} instead" if candidate is not None else "")
        out += [f"data.class_values=[{groups}]  # one class per gray value; merge groups "
                f"that are one class{alt}", f"data.num_classes={len(ids)}"]
    return out


def _add_problems(report: DataReport, found: dict[str, list[str]],
                  first: tuple[str, int, str] | None, min_side: int, imbalance: float) -> None:
    """Turn the per-file findings and the totals into problems and notes."""
    add = report.problems.append
    k = report.num_classes
    if "size_mismatch" in found:
        items = found["size_mismatch"]
        add(Problem("error", "size_mismatch",
                    f"{len(items)} mask(s) differ in size from their image: {_listed(items)}; "
                    "expected each mask to have its image's width and height", items))
    if "bad_mask_values" in found:
        items = found["bad_mask_values"]
        add(Problem("error", "bad_mask_values",
                    f"{len(items)} mask(s) hold values that fit no convention; first: {items[0]}",
                    items))
    if "nan_pixels" in found:
        items = found["nan_pixels"]
        add(Problem("error", "nan_pixels", f"{len(items)} image(s) hold NaN or Inf values: "
                    f"{_listed(items)}; expected finite values", items))
    if "float_range" in found:
        items = found["float_range"]
        add(Problem("error", "float_range", f"{len(items)} float image(s) outside [0, 1]: "
                    f"{_listed(items)}; scale float images to [0, 1] or save integer images",
                    items))
    if first is not None:
        for code, what in (("mixed_channels", "channel count"), ("mixed_dtypes", "dtype")):
            if code in found:
                items = found[code]
                ref = first[1] if code == "mixed_channels" else first[2]
                add(Problem("error", code, f"{len(items)} image(s) differ in {what} from "
                            f"{first[0]} ({ref}): {_listed(items)}; expected one {what} for "
                            "all images", items))
    s = report.summary
    if s:
        freqs = s["class_frequencies"]
        if len(freqs) == 1:
            (only,) = freqs
            add(Problem("error", "one_class",
                        f"every mask holds only class {only}: there is nothing to learn (a "
                        f"model would predict class {only} everywhere); expected at least two "
                        "classes"))
        else:
            expected = range(k) if k is not None and k > 1 else range(2)
            missing = [c for c in expected if c not in freqs]
            if missing:
                add(Problem("warning", "missing_classes",
                            f"class(es) {missing} never occur in the masks (num_classes="
                            f"{k if k is not None else 1})"))
            rare = {c: f for c, f in freqs.items() if f < imbalance}
            if rare:
                text = ", ".join(f"class {c} is {100 * f:.2f} %" for c, f in rare.items())
                add(Problem("warning", "imbalance",
                            f"severe class imbalance: {text} of all mask pixels (below "
                            f"{100 * imbalance:g} %); consider loss.class_weights = 'auto' "
                            "(median-frequency balancing), loss.name = 'dice' or 'ce_dice', "
                            "border weights, or more positive examples"))
            n_empty = s["empty_masks"]
            if n_empty * 2 > s["num_samples"]:
                add(Problem("warning", "empty_masks",
                            f"{n_empty} of {s['num_samples']} masks are empty (class 0 only)"))
            elif n_empty:
                report.notes.append(f"{n_empty} mask(s) are empty (class 0 only)")
        if len(s["sizes"]) > 1:
            report.notes.append(f"{len(s['sizes'])} different image sizes: train with "
                                "data.patch_size (or batch size 1)")
    binary = [c for c in report.conventions if c in ("{0, 1}", "{0, 255}")]
    if len(binary) == 2:
        add(Problem("warning", "mixed_conventions",
                    f"masks mix conventions: {report.conventions['{0, 1}']} hold {{0, 1}} and "
                    f"{report.conventions['{0, 255}']} hold {{0, 255}}; both are read as 0/1, "
                    "but a mix often means masks from different sources or exports"))
    elif binary == ["{0, 255}"]:
        report.notes.append("masks use {0, 255}: 255 is read as class 1")
    if "jpeg_masks" in found:
        items = found["jpeg_masks"]
        add(Problem("error", "jpeg_masks", f"{len(items)} mask(s) are JPEG files: "
                    f"{_listed(items)}; JPEG's lossy compression alters label values, so "
                    "training refuses them; expected masks saved as PNG or TIFF", items))
    if "small_images" in found:
        items = found["small_images"]
        what = (f"the patch size {report.patch_size}" if report.patch_size is not None
                else f"{min_side} px (a depth-5 U-Net's smallest input)")
        add(Problem("warning", "small_images",
                    f"{len(items)} image(s) have a side smaller than {what}: {_listed(items)}; "
                    "they are mostly mirror padding in training", items))
