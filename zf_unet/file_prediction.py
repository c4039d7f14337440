"""Predicting image files into a folder: the application layer beside the CLI's ``predict``.

:func:`predict_files` reads image files, folders of images and multi-page TIFF stacks,
checks every input and every output name before the first write, predicts each input with
:func:`zf_unet.inference.predict_tiled` and writes the probabilities, the label mask, an
overlay (and optionally cell labels) atomically. With a volume model (3 spatial axes) every
input is one volume (:func:`zf_unet.data.io.read_volume`: a multi-page TIFF, a ``.npy`` file
or a folder of 2-D slices), predicted whole, and written as a label volume (and probabilities).
"""
from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from zf_unet.pixels import check_float_range, unit_divisor
from zf_unet.inference import CHUNK_ELEMENTS, as_image_stack, check_finite, predict_tiled
from zf_unet.models.geometry import model_geometry

__all__ = ["OUTPUT_ENDINGS", "OVERLAY_MAX_SIDE", "predict_files"]

#: What :func:`predict_files` writes for an input named ``NAME`` (``_mask.tif`` for stacks,
#: ``_cells.tif`` with ``cells``). A folder listing skips files that end like this when
#: ``NAME`` is another image in the same listing.
OUTPUT_ENDINGS = ("_prob.tif", "_mask.png", "_mask.tif", "_overlay.png", "_cells.tif")
#: Long side (px) of the overlay PNG; larger images are shown at every k-th pixel.
OVERLAY_MAX_SIDE = 2048


def _stem(path: Any) -> str:
    """``path``'s name without extension; a folder (a volume of slices) keeps its full name."""
    return path.name if path.is_dir() else path.stem


def _output_name(path: Any, shared: bool) -> str:
    """Base name of ``path``'s outputs: its stem, or ``stem_ext`` (``a_png``) when several
    inputs share the stem (a folder of slices: ``name_dir``)."""
    if not shared:
        return _stem(path)
    ext = "dir" if path.is_dir() else path.suffix.lstrip(".").lower()
    return f"{_stem(path)}_{ext}"


def _list_folder(folder: Any) -> list:
    """The images of ``folder`` that :func:`predict_files` predicts (sorted by name): hidden
    files and files that look like its own outputs of another listed image are skipped."""
    from zf_unet.data.pairing import IMAGE_EXTENSIONS
    from zf_unet.errors import DataError

    found = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS
                   and not f.name.startswith(".") and f.is_file())
    if not found:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    names = {f.stem.casefold() for f in found}
    names |= {_output_name(f, True).casefold() for f in found}
    kept, skipped = [], []
    for f in found:
        low = f.name.casefold()
        ending = next((e for e in OUTPUT_ENDINGS if low.endswith(e)), None)
        if ending is not None and low[: -len(ending)] in names:
            skipped.append(f.name)
        else:
            kept.append(f)
    if skipped:
        import logging

        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        logging.getLogger("zf_unet").info("%s: skipped %d file(s) named like predict outputs "
                                          "of images in this folder (%s)", folder,
                                          len(skipped), shown)
    return kept


def _collect_inputs(inputs: list, volumes: bool = False) -> list:
    """Input files: files as given, folders listed by :func:`_list_folder`; a file given
    twice (also through its folder) is predicted once. With ``volumes`` (a volume model) a
    folder is one input: the volume of its slices."""
    from pathlib import Path

    from zf_unet.errors import DataError

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files, seen = [], set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [p] if volumes else _list_folder(p)
        elif p.is_file():
            found = [p]
        else:
            raise DataError(f"{p}: no such file or folder")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    if not files:
        raise DataError("inputs: no files given; expected image files or folders")
    return files


def _read_input(path: Any, volumes: bool = False) -> np.ndarray:
    """An input of :func:`predict_files`: ``(H, W, C)`` image or ``(N, H, W, C)`` stack; with
    ``volumes`` a ``(D, H, W[, C])`` volume (:func:`zf_unet.data.io.read_volume`)."""
    from zf_unet.data.io import read_image, read_stack, read_volume

    if volumes:
        return read_volume(path)
    if path.suffix.lower() == ".npy":
        from zf_unet.errors import DataError

        raise DataError(f"{path}: a .npy file is read as a volume, but this model segments 2-D "
                        "images; expected image files (.png .tif .tiff .jpg .jpeg), or a "
                        "volume model")

    is_tiff = path.suffix.lower() in (".tif", ".tiff")
    arr = read_stack(path) if is_tiff else read_image(path)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _check_input(model: keras.Model, path: Any, arr: np.ndarray) -> None:
    """Raise a :class:`DataError` naming ``path`` if ``predict_tiled`` would refuse ``arr``."""
    from zf_unet.errors import DataError

    geom = model_geometry(model)
    try:
        stack, _ = as_image_stack(arr, geom.channels, geom.spatial_axes)
        unit_divisor(stack.dtype)
        check_finite(stack)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    check_float_range(stack, str(path))


def _plan_outputs(paths: list, stacks: list, out: Any, cells: bool, prob: bool = True,
                  overlay: bool = True) -> list:
    """``[[output paths of input i], ...]`` (``[prob?, mask, cells?, overlay?]``); DataError if
    two inputs would share outputs."""
    from collections import Counter

    from zf_unet.errors import DataError

    stems = Counter(_stem(p).casefold() for p in paths)
    names = [_output_name(p, stems[_stem(p).casefold()] > 1) for p in paths]
    owner: dict = {}
    for p, name in zip(paths, names):
        other = owner.setdefault(name.casefold(), p)
        if other is not p:
            raise DataError(f"{other} and {p}: both would write {name}_*.* to {out}; expected "
                            "inputs with different names (rename one, or predict them into "
                            "different --out folders)")
    plans = []
    for name, stack in zip(names, stacks):
        files = [out / f"{name}_prob.tif"] if prob else []
        files.append(out / f"{name}_mask.{'tif' if stack else 'png'}")
        if cells:
            files.append(out / f"{name}_cells.tif")
        plans.append(files + ([out / f"{name}_overlay.png"] if overlay else []))
    return plans


def _check_outputs(plans: list, paths: list, out: Any, overwrite: bool) -> None:
    """Refuse (before any write) outputs that would replace an input, lie inside an input
    folder, replace a folder, or, unless ``overwrite``, any existing file (the output rule
    of :func:`zf_unet.outputs.claim_files`)."""
    from zf_unet.outputs import claim_files, claim_folder

    claim_folder(out, inputs=paths, overwrite=overwrite, command="predict", create=False)
    claim_files([f for files in plans for f in files], inputs=paths, overwrite=overwrite)


def _labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """``uint8`` labels of ``(..., H, W, K)`` probabilities, a few rows at a time (no full-size
    temporaries): 0/255 (``p > threshold``) for one class, the argmax for several."""
    k, width = probs.shape[-1], probs.shape[-2]
    labels = np.empty(probs.shape[:-1], np.uint8)
    flat_p, flat_l = probs.reshape(-1, width, k), labels.reshape(-1, width)
    rows = max(1, CHUNK_ELEMENTS // max(1, width * k))
    for r in range(0, flat_p.shape[0], rows):
        block = flat_p[r : r + rows]
        if k == 1:
            flat_l[r : r + rows] = (block[..., 0] > threshold) * np.uint8(255)
        else:
            flat_l[r : r + rows] = np.argmax(block, axis=-1)
    return labels


def _overlay_rgb(image: np.ndarray, labels: np.ndarray,
                 colors: np.ndarray | None = None) -> np.ndarray:
    """``uint8`` RGB overlay of an ``(H, W, C)`` image and its ``(H, W)`` labels, at every k-th
    pixel so that the long side is at most ``OVERLAY_MAX_SIDE``. Without ``colors`` (binary
    models) label 0 is tinted red; with ``colors`` (``(K, 3)`` uint8, several classes) every
    pixel gets its class's colour and a legend strip naming the class ids is added below."""
    from zf_unet.plots import label_overlay, legend_strip, overlay

    step = max(1, math.ceil(max(labels.shape) / OVERLAY_MAX_SIDE))
    img, lab = image[::step, ::step], labels[::step, ::step]
    view = img[..., :3] if img.shape[-1] >= 3 else img[..., :1]  # RGB(A) or the first channel
    scaled = view.astype(np.float32) / np.float32(unit_divisor(img.dtype))
    if colors is None:
        return (overlay(scaled, lab) * 255).astype(np.uint8)
    rgb = label_overlay(scaled, lab, colors)
    del scaled
    strip = legend_strip(colors, max(rgb.shape[1], 160))
    width = max(rgb.shape[1], strip.shape[1])
    out = np.full((rgb.shape[0] + strip.shape[0], width, 3), 255, np.uint8)
    out[: rgb.shape[0], : rgb.shape[1]] = rgb
    out[rgb.shape[0]:, : strip.shape[1]] = strip
    return out


def predict_files(model: keras.Model, inputs: list, out_dir: Any, *, tile_size: int = 256,
                  overlap: int = 64, tta: str | None = None, threshold: float = 0.5,
                  batch_size: int = 4, cells: float | None = None,
                  overwrite: bool = False, palette: Any = None, prob: bool = True) -> list:
    """Predict image files, folders of images and multi-page TIFF stacks into ``out_dir``.

    For every input ``NAME.ext`` it writes ``NAME_prob.tif`` (float32 probabilities,
    ``(H, W, K)`` or a stack), ``NAME_mask.png`` (labels; a binary model's mask is 0/255 with
    255 = class 1, ``p > threshold``, the ISBI convention; a stack gives ``NAME_mask.tif``)
    and ``NAME_overlay.png`` (first slice; images longer than ``OVERLAY_MAX_SIDE`` = 2048 px
    are shown at every k-th pixel). A binary model's overlay tints label 0 red; a model with
    K > 1 classes (mask = argmax class ids, uint8) blends every pixel with its class's colour
    and adds a legend strip below naming the class ids with their colours. ``palette``
    chooses those colours (K > 1 only): a matplotlib colormap name (``"tab10"``) or hex
    colours (``"#ff0000,#00ff00,..."`` or a list), default ``tab10`` (``tab20`` above 10
    classes); see :func:`zf_unet.plots.class_colors`. ``prob=False`` skips
    ``NAME_prob.tif``. With ``cells`` (a seed threshold in (0, 1)), a binary model also gets
    ``NAME_cells.tif``: uint32 cell labels from ``zf_unet.watershed_cells`` (0 = none).
    Returns the list of written paths.

    Volumes: with a volume model (3 spatial axes, input ``(B, D, H, W, C)``) every input is
    one volume, read with :func:`zf_unet.data.io.read_volume`: a multi-page TIFF (pages =
    z-sections), a ``.npy`` file, or a folder of 2-D slices (natural name order; the folder is
    the input, named by its folder name). The whole volume goes to ``predict_tiled`` in one
    call (``tile_size`` / ``overlap`` an int or ``(d, h, w)``) and gives ``NAME_mask.tif``
    (``(D, H, W)`` uint8 labels as above, one page per section) and ``NAME_prob.tif``
    (``(D, H, W, K)`` float32). Overlays are 2-D only and not written (a log line says so);
    ``cells`` and ``palette`` are refused (``ValueError``). A 2-D image (a single-page TIFF,
    a PNG) is a :class:`DataError` naming the file. ``--out`` must not be inside an input
    folder of slices.

    Names: ``NAME`` is the file name without extension. When several inputs share it
    (``a.png`` and ``a.tif``), ``NAME`` keeps the extension: ``a_png_mask.png``,
    ``a_tif_mask.png``. Two inputs that would still share outputs (``a.png`` in two folders)
    are an error.

    Folders: every image file (``.png .tif .tiff .jpg .jpeg``, not hidden) is an input,
    except files named like predict's outputs of another image in the same folder
    (``X_prob.tif``, ``X_mask.png``, ``X_mask.tif``, ``X_overlay.png``, ``X_cells.tif`` when
    ``X.*`` is there too), so the results of an earlier run are not fed back in. ``out_dir``
    must not be an input folder or lie inside one (the output rule, :mod:`zf_unet.outputs`). A ground-truth ``X_mask.png`` next to ``X.png`` is skipped too
    (give it as a file to predict it).

    Nothing is overwritten unless asked: every input is read and checked (readable, channels,
    dtype, finite values, float images in [0, 1]), then the output names, all before the
    first write. An existing output file (an earlier run's result, a ground-truth mask) is
    an error unless ``overwrite=True``; an output that is an input of the same call is
    always an error. Each output file is replaced atomically.

    Raises:
        DataError: a missing, unreadable or unusable input (the message names the file), or
            two inputs with the same outputs.
        OutputExistsError: output files exist and ``overwrite`` is False (names them).
        ValueError: bad ``tile_size`` / ``overlap`` / ``tta`` / ``batch_size`` for the model,
            ``threshold`` not in (0, 1), ``cells`` outside (0, 1) or given for a
            multi-class model, or a bad ``palette`` (or one given for a binary model).
    """
    from pathlib import Path

    import tifffile
    from PIL import Image

    from zf_unet.errors import DataError
    from zf_unet.io_utils import atomic_path
    from zf_unet.outputs import claim_folder

    # Arguments first (cheap): tile size, overlap and TTA surface on a tiny probe.
    geom = model_geometry(model)
    volumes = geom.spatial_axes == 3
    predict_tiled(model, np.zeros((1,) * geom.spatial_axes + (geom.channels,), np.float32),
                  tile_size=tile_size, overlap=overlap, tta=tta, batch_size=batch_size)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}") from None
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r}: expected a probability between 0 and 1 "
                         "(the mask is p > threshold, so other values give a constant mask)")
    if volumes and cells is not None:
        raise ValueError("cells: cell labels (a seeded watershed) are computed for 2-D images; "
                         "this model segments volumes (leave --cells out)")
    if volumes and palette is not None:
        raise ValueError("palette: colours the 2-D overlay, which volumes do not get (leave "
                         "--palette out)")
    if cells is not None:
        from zf_unet.postprocess import watershed_cells

        if geom.num_classes != 1:
            raise ValueError(f"cells: cell labels need a binary (1-class) model, this one has "
                             f"{geom.num_classes} classes")
        watershed_cells(np.zeros((2, 2), np.float32), seed_threshold=cells)  # checks the value
    colors = None
    if geom.num_classes > 1 and not volumes:
        from zf_unet.plots import class_colors

        colors = class_colors(geom.num_classes, palette)
    elif palette is not None:
        raise ValueError("palette: colours the classes of a multi-class model; a binary "
                         "model's overlay tints class 0 red (leave --palette out)")
    # Then every input, then the outputs: all before anything is written.
    paths = _collect_inputs(inputs, volumes)
    stacks = []
    for path in paths:
        arr = _read_input(path, volumes)
        _check_input(model, path, arr)
        stacks.append(volumes or arr.ndim == 4)
        del arr
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; expected an output folder")
    plans = _plan_outputs(paths, stacks, out, cells is not None, bool(prob), not volumes)
    given = [Path(str(i)) for i in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    _check_outputs(plans, paths + given, out, overwrite)
    if volumes:
        import logging

        logging.getLogger("zf_unet").info("predict: volume model: overlays are 2-D only; "
                                          "writing label volumes (NAME_mask.tif) and "
                                          "probabilities only")
    claim_folder(out, inputs=paths + given, overwrite=overwrite, command="predict")
    written = []
    for path, stack, files in zip(paths, stacks, plans):
        arr = _read_input(path, volumes)
        probs = predict_tiled(model, arr, tile_size=tile_size, overlap=overlap, tta=tta,
                              batch_size=batch_size)
        labels = _labels(probs, threshold)
        files = list(files)
        if prob:
            prob_path = files.pop(0)
            with atomic_path(prob_path) as tmp:
                tifffile.imwrite(tmp, probs, photometric="minisblack")
            written.append(prob_path)
        mask_path = files[0]
        with atomic_path(mask_path) as tmp:
            if stack:
                tifffile.imwrite(tmp, labels, photometric="minisblack")
            else:
                Image.fromarray(labels).save(tmp, format="PNG")
        written.append(mask_path)
        if cells is not None:
            maps = probs[..., 0] if stack else probs[None, ..., 0]
            del probs
            cell_labels = np.stack([watershed_cells(m, seed_threshold=cells) for m in maps])
            del maps
            with atomic_path(files[1]) as tmp:
                tifffile.imwrite(tmp, (cell_labels if stack else cell_labels[0]).astype(
                    np.uint32, copy=False), photometric="minisblack")
            written.append(files[1])
            del cell_labels
        else:
            del probs
        if volumes:
            del arr, labels
            continue
        ov_path = files[-1]
        rgb = _overlay_rgb(arr[0] if stack else arr, labels[0] if stack else labels, colors)
        with atomic_path(ov_path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        written.append(ov_path)
        del arr, labels, rgb
    return written
