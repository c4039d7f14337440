"""Evaluation of a trained model on a data set split (``zf-unet evaluate``): ISBI-style scores
for binary models, a confusion matrix with per-class scores for models with several classes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from zf_unet import metrics as zm
from zf_unet.config import Config
from zf_unet.data.loaders import load_source
from zf_unet.data.splits import DataSplit, split_indices
from zf_unet.errors import ConfigError
from zf_unet.hub import is_pretrained, load_model

DEFAULT_THRESHOLDS = zm.DEFAULT_THRESHOLDS
SEGMENTATIONS = ("threshold", "watershed")


def split_for(data: DataSplit, split: str, cfg: Config | None) -> DataSplit:
    """Select ``train`` / ``val`` / ``all`` samples the way training split them."""
    if split == "all":
        return data
    d = cfg.data if cfg is not None else Config().data
    seed = cfg.train.seed if cfg is not None else 0
    train_idx, val_idx = split_indices(len(data), d.val_fraction, d.val_indices or None, seed)
    if split == "val":
        if not val_idx:
            raise ConfigError("split 'val' is empty: the config holds nothing out")
        return data.subset(val_idx)
    if split == "train":
        return data.subset(train_idx)
    raise ConfigError(f"split must be train | val | all, got {split!r}")


def run_config_for(model_path: str | Path) -> Config | None:
    """The ``config.toml`` saved next to a model by ``zf_unet.train``, if any."""
    if is_pretrained(str(model_path)):
        return None
    cfg_path = Path(model_path).parent / "config.toml"
    return Config.from_toml(cfg_path) if cfg_path.is_file() else None


def _check_segmentation(segmentation: str) -> None:
    if segmentation not in SEGMENTATIONS:
        raise ConfigError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}, "
                          f"got {segmentation!r}")


def evaluate_arrays(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    segmentation: str = "threshold", min_seed_size: int = 20) -> dict:
    """Score foreground probability maps ``(H, W)`` against binary masks ``(H, W)``, ISBI style.

    Every threshold is applied to all images (``zf_unet.metrics.score_thresholds``). Cells for
    the Rand error and VI are the connected components of ``p > threshold``
    (``segmentation="threshold"``, the paper's setting: no post-processing) or a seeded
    watershed with seeds ``p > threshold`` (``"watershed"``, ``zf_unet.watershed_cells``).
    ``best`` has the pixel error (with Dice, IoU, misclassification rate) at its best
    threshold ``pixel_threshold`` and the Rand error (with VI) at its best ``threshold``.
    """
    _check_segmentation(segmentation)
    segment = None
    if segmentation == "watershed":
        from zf_unet.postprocess import watershed_cells

        def segment(prob: np.ndarray, th: float) -> np.ndarray:
            return watershed_cells(prob, seed_threshold=th, min_seed_size=min_seed_size)

    result = zm.score_thresholds(probs, masks, thresholds, segment=segment)
    result["best"]["segmentation"] = segmentation
    return result


SPLITS = ("auto", "val", "train", "all")


def _same_path(source: Any, data: Any, base: Path | None = None) -> bool:
    """Whether the run's ``source`` and ``data`` name the same folder/file (resolved absolute
    paths); a relative ``source`` is also tried relative to ``base`` (the run folder)."""
    if not isinstance(source, (str, Path)) or not isinstance(data, (str, Path)):
        return False
    if not str(source) or not str(data):
        return False
    if str(source) == "synthetic" or str(source).startswith("tfds:"):
        return str(source) == str(data)
    try:
        target = Path(data).expanduser().resolve()
        if Path(source).expanduser().resolve() == target:
            return True
        return (base is not None and not Path(source).expanduser().is_absolute()
                and (base / source).resolve() == target)
    except (OSError, RuntimeError):
        return False


def resolve_split(split: str, data: Any, config: Config | None,
                  run_dir: str | Path | None = None, val_indices_given: bool = False) -> str:
    """The split ``split="auto"`` stands for (other values are returned as they are).

    ``auto`` is ``val`` (the images training held out, as ``split_for`` selects them) when
    ``data`` is the run's training source (``config.data.source``, compared as resolved
    absolute paths; a relative source is also tried relative to the run folder), or when
    ``val_indices_given`` (explicit held-out indices); otherwise ``all``: any other folder,
    the run's ``data.val_source``, or a model without a run ``config.toml`` (a pretrained or
    bare ``.keras`` model, whose training data is unknown) is scored whole.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be {' | '.join(SPLITS)}, got {split!r}")
    if split != "auto":
        return split
    if val_indices_given:
        return "val"
    if config is None:
        return "all"
    base = Path(run_dir) if run_dir is not None else None
    return "val" if _same_path(config.data.source, data, base) else "all"


def _run_resolved(model_path: Any) -> dict:
    """``resolved.json`` next to a model file (written by training), or ``{}``."""
    import json

    if model_path is None or is_pretrained(str(model_path)):
        return {}
    path = Path(model_path).parent / "resolved.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def json_ready(result: dict) -> dict:
    """``result`` with NaN scores (classes absent from truth and prediction) as ``None``, so
    that the JSON file is strict JSON."""
    return _nan_to_none(result)


def multiclass_scores(pred_labels: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                      num_classes: int, ignore_index: int | None = None) -> dict:
    """Confusion matrix summed over images and its scores (``zf_unet.metrics.class_scores``).

    ``pred_labels`` / ``masks``: ``(H, W)`` class-id arrays, pairwise of one shape; mask
    pixels equal to ``ignore_index`` are left out. Returns ``class_scores``' keys plus
    ``confusion`` (``(K, K)`` nested list, rows truth, columns prediction), ``num_classes``,
    ``ignore_index`` and ``pixels`` (scored pixels).
    """
    k = int(num_classes)
    cm = np.zeros((k, k), np.int64)
    for pred, mask in zip(pred_labels, masks):
        cm += zm.confusion_matrix(pred, mask, k, ignore_index)
    out = zm.class_scores(cm)
    out.update(confusion=cm.tolist(), num_classes=k, ignore_index=ignore_index,
               pixels=int(cm.sum()))
    return out


def confusion_paths(prefix: str | Path) -> list[Path]:
    """``[PREFIX.csv, PREFIX.png]``, the files :func:`save_confusion` writes (a ``.csv`` or
    ``.png`` suffix of ``prefix`` is dropped first)."""
    prefix = Path(prefix)
    if prefix.suffix.lower() in (".csv", ".png"):
        prefix = prefix.with_suffix("")
    return [prefix.parent / f"{prefix.name}.csv", prefix.parent / f"{prefix.name}.png"]


def save_confusion(result: dict, prefix: str | Path) -> list[Path]:
    """Write ``PREFIX.csv`` (the confusion matrix with a header row of predicted class ids
    and a first column of true class ids; counts are pixels) and ``PREFIX.png`` (row-
    normalised heat map), each atomically. Returns both paths."""
    from zf_unet.io_utils import atomic_path
    from zf_unet.plots import save_confusion_matrix

    cm = np.asarray(result["confusion"], np.int64)
    csv_path, png_path = confusion_paths(prefix)
    lines = ["truth\\pred," + ",".join(str(j) for j in range(cm.shape[1]))]
    lines += [f"{i}," + ",".join(str(int(v)) for v in row) for i, row in enumerate(cm)]
    with atomic_path(csv_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    save_confusion_matrix(cm, png_path)
    return [csv_path, png_path]


def evaluate_model(model: keras.Model | str | Path, data: Any, *, split: str = "auto",
                   config: Config | None = None, tile_size: int = 256, overlap: int = 64,
                   tta: str | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                   batch_size: int = 4, name: str | None = None,
                   segmentation: str = "threshold", ignore_index: int | None = None,
                   num_classes: int | None = None, val_indices_given: bool = False,
                   model_path: str | Path | None = None) -> dict:
    """Predict every image of ``split`` with overlap-tile inference and score it.

    ``model`` may be a path (or ``"pretrained:NAME"``); its run folder's ``config.toml``
    (unless ``config`` is given) decides the split and how masks are read (``class_values``,
    ``palette``, ``ignore_index``; ``resolved.json``'s ``ignore_index`` too). ``name`` is the model's name
    in error messages (default: its path).

    ``split``: ``"auto"`` (default; see :func:`resolve_split`: ``val`` when ``data`` is the
    run's training source, else ``all``), ``"val"``, ``"train"`` or ``"all"``.

    Binary models (1 output): the ISBI scores of :func:`evaluate_arrays` (``segmentation``
    picks how cells are formed for the Rand error). Models with K > 1 outputs: every image is
    predicted (argmax), a confusion matrix is summed over all images with void pixels left
    out, and the result has ``kind="multiclass"`` and :func:`multiclass_scores`' keys
    (per-class ``iou``/``dice``/``precision``/``recall``/``support``, ``miou``,
    ``pixel_accuracy``, ``mean_class_accuracy``, ``confusion``).

    Volume models (3 spatial axes): ``data`` is a folder with ``images/`` and ``masks/``
    holding one volume per entry (multi-page TIFF, ``.npy`` or a folder of slices, paired by
    name) or a pair ``(image_volume, mask_volume)`` of such paths; see
    :func:`evaluate_volumes`. Every volume is predicted whole and a confusion matrix is summed
    over all voxels (binary models: ``p > 0.5`` against ``mask > 0``, two classes), with
    ``kind="multiclass"``, ``volumes=True`` and a ``note``: the ISBI Rand error / VI /
    pixel-error sweep are 2-D scores and are not computed.

    ``ignore_index``: void mask value (overrides the run's; ``-1`` = none). ``num_classes``:
    K used to read the masks (default: the model's output count; must equal it).
    ``val_indices_given``: ``config`` holds held-out indices given for this call, so
    ``"auto"`` means ``val``. ``model_path``: where a loaded ``model`` came from (its run
    folder's ``config.toml`` / ``resolved.json`` are then used as for a path).

    Raises:
        DataError: a model file that cannot be loaded, data that cannot be read, or images
            whose channel count differs from the model's.
        ConfigError: an empty split, a ``num_classes`` that differs from the model's, or void
            pixels in the masks of a binary model (the ISBI scores have no void).
    """
    from zf_unet.errors import DataError
    from zf_unet.inference import predict_tiled
    from zf_unet.models import model_geometry

    name = name or (str(model) if isinstance(model, (str, Path)) else "model")
    _check_segmentation(segmentation)  # before any prediction
    if split not in SPLITS:
        raise ConfigError(f"split must be {' | '.join(SPLITS)}, got {split!r}")
    if isinstance(model, (str, Path)):
        model_path = model
        if config is None:
            config = run_config_for(model_path)
        model = load_model(model_path)
    elif model_path is not None and config is None:
        config = run_config_for(model_path)
    geom = model_geometry(model)
    k = int(geom["num_classes"])
    if num_classes is not None and int(num_classes) != k:
        raise ConfigError(f"{name}: num_classes={num_classes} but the model outputs {k} "
                          f"class(es); expected --num-classes {k} (or leave it out)")
    resolved = _run_resolved(model_path)
    if ignore_index is None:
        ignore = resolved.get("ignore_index") if "ignore_index" in resolved else (
            config.data.ignore_index if config is not None else -1)
    else:
        ignore = ignore_index
    ignore = None if ignore is None or int(ignore) < 0 else int(ignore)
    class_values = (config.data.class_values or None) if config is not None else None
    palette = config.data.mask_palette() if config is not None else None  # colour masks
    run_dir = Path(model_path).parent if model_path is not None and not is_pretrained(
        str(model_path)) else None
    chosen = resolve_split(split, data, config, run_dir, val_indices_given)
    if geom.spatial_axes == 3:
        if segmentation != "threshold":
            raise ConfigError(f"segmentation={segmentation!r}: cells (for the Rand error) are "
                              "formed for 2-D images; volumes are scored by a confusion "
                              "matrix (leave --segmentation out)")
        return _evaluate_volumes(model, data, chosen, config, name=name, tile_size=tile_size,
                                 overlap=overlap, tta=tta, batch_size=batch_size,
                                 ignore=ignore, class_values=class_values)
    if k == 1:
        loaded = load_source(data, class_values=class_values, ignore_index=ignore,
                             palette=palette)
    else:
        try:
            loaded = load_source(data, num_classes=k, class_values=class_values,
                                 ignore_index=ignore, palette=palette)
        except DataError as exc:
            if "outside the class ids" not in str(exc):
                raise
            raise DataError(f"{exc}; {name} outputs {k} classes, so masks must hold class "
                            f"ids 0..{k - 1}"
                            + (f" or the void value {ignore}" if ignore is not None else
                               " (pass --ignore-index V if V marks void pixels)")) from None
    samples = split_for(loaded, chosen, config)
    for img, img_name in zip(samples.images, samples.names or [""] * len(samples)):
        if img.shape[-1] != geom["channels"]:
            raise DataError(f"{name}: the model expects {geom['channels']}-channel images but "
                            f"{img_name or 'the data'} has {img.shape[-1]} channel(s); "
                            "expected a model trained on this kind of data")
    if k == 1:
        if ignore is not None and any(np.any(m == ignore) for m in samples.masks):
            raise ConfigError(f"{name}: the masks hold void pixels (value {ignore}); the ISBI "
                              "scores of a binary model have no void; expected masks without "
                              "them (or --ignore-index -1 if the value is a class)")
        probs = [predict_tiled(model, img, tile_size=tile_size, overlap=overlap, tta=tta,
                               batch_size=batch_size)[..., 0] for img in samples.images]
        result = evaluate_arrays(probs, [m > 0 for m in samples.masks], thresholds,
                                 segmentation)
    else:
        preds = []
        for img in samples.images:  # one image's probabilities at a time
            probs = predict_tiled(model, img, tile_size=tile_size, overlap=overlap, tta=tta,
                                  batch_size=batch_size)
            preds.append(np.argmax(probs, axis=-1).astype(np.uint8))
            del probs
        result = multiclass_scores(preds, samples.masks, k, ignore)
        result["kind"] = "multiclass"
    result["images"] = samples.names
    result["split"] = chosen
    return result


VOLUME_NOTE = ("ISBI-style Rand error / VI / pixel error are 2-D scores; not computed for "
               "volumes")


def volume_pairs(data: Any) -> list[tuple[str, Path, Path]]:
    """``[(name, image_path, mask_path), ...]`` of a volume data set: a pair of paths, or a
    folder with ``images/`` and ``masks/`` as training reads it
    (:func:`zf_unet.data.volumes.volume_paths`: 2-D slices = one volume, else volumes paired
    by name)."""
    from zf_unet.errors import DataError

    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise DataError(f"volume data {data!r}: expected (image_volume, mask_volume)")
        img, mask = Path(data[0]), Path(data[1])
        return [(_stem_of(img), img, mask)]
    from zf_unet.data.volumes import volume_paths

    return volume_paths(data)


def _stem_of(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _volume_mask_ids(mask: np.ndarray, path: Path, num_classes: int,
                     class_values: Any, ignore: int | None) -> np.ndarray:
    """``(D, H, W)`` uint8 class ids of a raw mask volume, with the 2-D mask conventions
    (:func:`zf_unet.data.masks.normalize_mask`, applied to the sections laid end to end)."""
    from zf_unet.data.masks import normalize_mask

    d, h = mask.shape[0], mask.shape[1]
    flat = mask.reshape((d * h,) + mask.shape[2:])
    ids = normalize_mask(flat, num_classes=None if num_classes == 1 else num_classes,
                         source=str(path), class_values=class_values, ignore_index=ignore)
    return ids.reshape(mask.shape[:3])


def evaluate_volumes(model: keras.Model, data: Any, *, split: str = "all",
                     config: Config | None = None, name: str = "model",
                     tile_size: int | Sequence[int] = 256, overlap: int | Sequence[int] = 64,
                     tta: str | None = None, batch_size: int = 4, threshold: float = 0.5,
                     ignore_index: int | None = None, class_values: Any = None) -> dict:
    """Score a volume model on volumes: a confusion matrix over all voxels and its scores.

    ``data``: a folder with ``images/`` and ``masks/`` (one volume per entry: multi-page
    TIFF, ``.npy`` or a folder of 2-D slices, paired by name) or a pair
    ``(image_volume, mask_volume)`` (:func:`volume_pairs`). ``split`` (``all`` / ``train`` /
    ``val``) selects volumes as :func:`split_for` selects images. Every volume is predicted
    whole with :func:`zf_unet.predict_tiled`; K > 1 models are scored by the argmax, binary
    models by ``p > threshold`` against ``mask > 0`` as a 2-class problem. Mask volumes are
    read with the 2-D conventions (``class_values``, ``ignore_index`` void voxels left out).
    Returns :func:`multiclass_scores`' keys with ``kind="multiclass"``, ``volumes=True``,
    ``note`` (the ISBI Rand / VI scores are 2-D only) and ``images`` (volume names).
    """
    from zf_unet.data.io import read_volume_pair
    from zf_unet.data.volumes import section_split
    from zf_unet.errors import DataError
    from zf_unet.inference import predict_tiled
    from zf_unet.models import model_geometry

    geom = model_geometry(model)
    k = int(geom.num_classes)
    pairs = volume_pairs(data)
    sections = None
    if len(pairs) == 1 and split in ("train", "val"):
        # one volume: training held out a block of sections (zf_unet.data.volumes)
        d = (config or Config()).data
        depth = read_volume_pair(pairs[0][1], pairs[0][2])[0].shape[0]
        train_z, val_z = section_split(depth, d.val_fraction, d.val_indices or None)
        sections = val_z if split == "val" else train_z
        if not sections:
            raise ConfigError("split 'val' is empty: the config holds no sections out")
        chosen_ids = [0]
    else:
        index = DataSplit(list(range(len(pairs))), [None] * len(pairs),
                          names=[n for n, _, _ in pairs])
        chosen_ids = split_for(index, split, config).images
    preds, masks, names = [], [], []
    for i in chosen_ids:
        vol_name, img_path, mask_path = pairs[i]
        image, raw = read_volume_pair(img_path, mask_path)
        if sections is not None:
            image, raw = image[sections[0]:sections[-1] + 1], raw[sections[0]:sections[-1] + 1]
            vol_name = f"{vol_name}[z={sections[0]}..{sections[-1]}]"
        c = image.shape[-1] if image.ndim == 4 else 1
        if c != geom.channels:
            raise DataError(f"{img_path}: {c}-channel volume but {name} expects "
                            f"{geom.channels}-channel volumes; expected a model trained on "
                            "this kind of data")
        ids = _volume_mask_ids(raw, mask_path, k, class_values, ignore_index)  # 0/1 if K=1
        probs = predict_tiled(model, image, tile_size=tile_size, overlap=overlap, tta=tta,
                              batch_size=batch_size)
        if k == 1:
            pred = (probs[..., 0] > threshold).astype(np.uint8)
        else:
            pred = np.argmax(probs, axis=-1).astype(np.uint8)
        del probs, image
        preds.append(pred)
        masks.append(ids)
        names.append(vol_name)
    result = multiclass_scores(preds, masks, max(k, 2), ignore_index)
    result.update(kind="multiclass", volumes=True, note=VOLUME_NOTE, images=names,
                  split=split, voxels=result["pixels"])
    if k == 1:
        result["threshold"] = float(threshold)
    return result


def _evaluate_volumes(model: keras.Model, data: Any, split: str, config: Config | None, *,
                      name: str, tile_size: Any, overlap: Any, tta: str | None,
                      batch_size: int, ignore: int | None, class_values: Any) -> dict:
    """:func:`evaluate_model` for volume models (see :func:`evaluate_volumes`)."""
    return evaluate_volumes(model, data, split=split, config=config, name=name,
                            tile_size=tile_size, overlap=overlap, tta=tta,
                            batch_size=batch_size, ignore_index=ignore,
                            class_values=class_values)


def format_report(result: dict) -> str:
    """The text ``zf-unet evaluate`` prints for an ``evaluate_model`` result."""
    if result.get("kind") == "multiclass":
        return _format_multiclass(result)
    b = result["best"]
    cells = ("seeded watershed, seeds p > threshold" if b.get("segmentation") == "watershed"
             else "connected components of p > threshold")
    lines = [
        f"{len(result['images'])} image(s), split={result['split']}; cells: {cells}",
        "ISBI 2012 scores, each at its best threshold:",
        f"  pixel error (1 - F-score)  {b['pixel_error']:.4f}   threshold "
        f"{b['pixel_threshold']:.2f}",
        f"  Rand error (fg-restricted) {b['rand_error']:.4f}   threshold {b['threshold']:.2f}",
        f"  variation of information   {b['variation_of_information']:.4f} bits, threshold "
        f"{b['threshold']:.2f}",
        f"at threshold {b['pixel_threshold']:.2f}:",
        f"  misclassified pixels       {b['misclassification_rate']:.4f}",
        f"  Dice  cell / membrane      {b['dice_foreground']:.4f} / {b['dice_background']:.4f}",
        f"  IoU   cell / membrane      {b['iou_foreground']:.4f} / {b['iou_background']:.4f}",
    ]
    return "\n".join(lines)



def _fmt(x: Any) -> str:
    return "   -  " if x is None or (isinstance(x, float) and x != x) else f"{x:.4f}"


def _format_multiclass(result: dict) -> str:
    void = result.get("ignore_index")
    what, unit = ("volume", "voxels") if result.get("volumes") else ("image", "pixels")
    binary = (f"; binary model: classes 0/1 = p <= / > {result['threshold']:.2f}"
              if "threshold" in result else "")
    named = f" ({', '.join(result['images'])})" if result.get("volumes") else ""
    lines = [f"{len(result['images'])} {what}(s){named}, split={result['split']}; "
             f"{result['num_classes']} classes, {result['pixels']} {unit} scored"
             + (f" (void value {void} left out)" if void is not None else "") + binary,
             f"{'class':>5}  {'IoU':>6}  {'Dice':>6}  {'precision':>9}  {'recall':>6}  "
             f"{'support':>10}"]
    for c in range(result["num_classes"]):
        lines.append(f"{c:>5}  {_fmt(result['iou'][c]):>6}  {_fmt(result['dice'][c]):>6}  "
                     f"{_fmt(result['precision'][c]):>9}  {_fmt(result['recall'][c]):>6}  "
                     f"{result['support'][c]:>10}")
    lines += [f"mIoU                 {_fmt(result['miou'])}",
              f"pixel accuracy       {_fmt(result['pixel_accuracy'])}",
              f"mean class accuracy  {_fmt(result['mean_class_accuracy'])}"]
    if any(_fmt(v).strip() == "-" for key in ("iou", "dice", "precision", "recall")
           for v in result[key]):
        lines.append("-: undefined (no such pixels in truth and/or prediction; left out of "
                     "the means)")
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)
