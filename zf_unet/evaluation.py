"""ISBI-style evaluation of a trained model on a data set split (``zf-unet evaluate``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from zf_unet import metrics as zm
from zf_unet.config import Config
from zf_unet.data.pipeline import DataSplit, _split_indices, load_source
from zf_unet.errors import ConfigError

DEFAULT_THRESHOLDS = zm.DEFAULT_THRESHOLDS
SEGMENTATIONS = ("threshold", "watershed")


def split_for(data: DataSplit, split: str, cfg: Config | None) -> DataSplit:
    """Select ``train`` / ``val`` / ``all`` samples the way training split them."""
    if split == "all":
        return data
    d = cfg.data if cfg is not None else Config().data
    seed = cfg.train.seed if cfg is not None else 0
    train_idx, val_idx = _split_indices(len(data), d.val_fraction, d.val_indices or None, seed)
    if split == "val":
        if not val_idx:
            raise ConfigError("split 'val' is empty: the config holds nothing out")
        return data.subset(val_idx)
    if split == "train":
        return data.subset(train_idx)
    raise ConfigError(f"split must be train | val | all, got {split!r}")


def run_config_for(model_path: str | Path) -> Config | None:
    """The ``config.toml`` saved next to a model by ``zf_unet.train``, if any."""
    if str(model_path).startswith("pretrained:"):
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


def evaluate_model(model: keras.Model | str | Path, data: Any, *, split: str = "val",
                   config: Config | None = None, tile_size: int = 256, overlap: int = 64,
                   tta: str | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                   batch_size: int = 4, name: str | None = None,
                   segmentation: str = "threshold") -> dict:
    """Predict every image of ``split`` with overlap-tile inference and score it.

    ``model`` may be a path (or ``"pretrained:NAME"``); its run folder's ``config.toml`` then
    decides the split unless ``config`` is given. Binary models only (probability of class 1
    = cell interior). ``name`` is the model's name in error messages (default: its path).
    ``segmentation`` picks how cells are formed for the Rand error (see ``evaluate_arrays``).

    Raises:
        DataError: a model file that cannot be loaded, data that cannot be read, or images
            whose channel count differs from the model's.
        ConfigError: a model with more than one class, or an empty split.
    """
    from zf_unet.errors import DataError
    from zf_unet.inference import load_model_file, model_geometry, predict_tiled

    name = name or (str(model) if isinstance(model, (str, Path)) else "model")
    _check_segmentation(segmentation)  # before any prediction
    if isinstance(model, (str, Path)):
        if config is None:
            config = run_config_for(model)
        model = load_model_file(model)
    geom = model_geometry(model)
    if geom["num_classes"] != 1:
        raise ConfigError(f"{name}: evaluate scores binary (1-class) models; this model "
                          f"outputs {geom['num_classes']} classes")
    samples = split_for(load_source(data), split, config)
    for img, img_name in zip(samples.images, samples.names or [""] * len(samples)):
        if img.shape[-1] != geom["channels"]:
            raise DataError(f"{name}: the model expects {geom['channels']}-channel images but "
                            f"{img_name or 'the data'} has {img.shape[-1]} channel(s); "
                            "expected a model trained on this kind of data")
    probs = [predict_tiled(model, img, tile_size=tile_size, overlap=overlap, tta=tta,
                           batch_size=batch_size)[..., 0] for img in samples.images]
    result = evaluate_arrays(probs, [m > 0 for m in samples.masks], thresholds, segmentation)
    result["images"] = samples.names
    result["split"] = split
    return result


def format_report(result: dict) -> str:
    """The text ``zf-unet evaluate`` prints for an ``evaluate_model`` result."""
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
