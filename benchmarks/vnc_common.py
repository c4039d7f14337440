"""Shared pieces of the Drosophila VNC 5-class benchmarks (NumPy only, no TensorFlow, no torch).

Both sides of the comparison import this module, so they see the same data, split, class
weights and scores:

* ``benchmarks/monai_vnc.py``  (PyTorch / MONAI ``BasicUNet``);
* the zf_unet side (``zf_unet.build_unet(..., num_classes=5)``).

Protocol (``shared/data/drosophila-vnc``, see its README.md): 20 ssTEM sections of 1024x1024
uint8 pixels; the gray-value labels map to 5 classes::

    0, 32, 64, 96, 128 -> 0 membrane      159 -> 1 glia / extracellular
    191 -> 2 mitochondria                 223 -> 3 synapse      255 -> 4 intracellular

Any other gray value is an error. Sections 00-15 train, 16-19 validate.

Class weights: median-frequency balancing (Eigen & Fergus 2015), computed once from the
training masks: ``freq_c = pixels of class c / total pixels of the sections in which c
appears`` and ``weight_c = median(freq) / freq_c``.

Scores: one confusion matrix summed over the validation sections;
``IoU_c = TP_c / (TP_c + FP_c + FN_c)``, mIoU = mean over the 5 classes, pixel accuracy =
trace / total.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DATA_ENV = "ZF_UNET_DATA"
DATASET = "drosophila-vnc"
NUM_CLASSES = 5
CLASS_NAMES = ("membrane", "glia", "mitochondria", "synapse", "intracellular")
GRAY_TO_CLASS = {0: 0, 32: 0, 64: 0, 96: 0, 128: 0, 159: 1, 191: 2, 223: 3, 255: 4}
TRAIN_IDS = tuple(range(0, 16))
VAL_IDS = tuple(range(16, 20))

_UNKNOWN = 255
_LUT = np.full(256, _UNKNOWN, dtype=np.uint8)
for _gray, _cls in GRAY_TO_CLASS.items():
    _LUT[_gray] = _cls


def data_root() -> Path:
    """``$ZF_UNET_DATA`` if set, else ``../shared/data`` beside the project root.

    Same rule as ``zf_unet.paths.data_root`` (not imported: that would start TensorFlow).
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def vnc_dir(root: str | Path | None = None) -> Path:
    """Folder of the data set (``images/NN.tif``, ``masks/NN.png``)."""
    return (Path(root) if root is not None else data_root()) / DATASET


def gray_to_class(mask: np.ndarray) -> np.ndarray:
    """Map a gray-value mask to class ids 0..4 (uint8); raise on any unknown gray value."""
    mask = np.asarray(mask)
    if mask.dtype != np.uint8:
        raise ValueError(f"masks must be uint8 gray values, got {mask.dtype}")
    labels = _LUT[mask]
    bad = labels == _UNKNOWN
    if bad.any():
        values = sorted(set(np.unique(mask[bad]).tolist()))
        raise ValueError(f"unknown gray values {values} in mask (known: {sorted(GRAY_TO_CLASS)})")
    return labels


def load_sections(ids: Sequence[int], root: str | Path | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Load sections ``ids``: ``(images (N, H, W) uint8, labels (N, H, W) uint8 class ids)``."""
    import tifffile
    from PIL import Image

    folder = vnc_dir(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found (set ${DATA_ENV} to the shared data folder)")
    images, labels = [], []
    for i in ids:
        image = np.asarray(tifffile.imread(folder / "images" / f"{i:02d}.tif"))
        with Image.open(folder / "masks" / f"{i:02d}.png") as pil:
            mask = np.asarray(pil)
        if image.ndim != 2 or image.dtype != np.uint8 or image.shape != mask.shape:
            raise ValueError(f"section {i:02d}: expected matching 2-D uint8 image and mask, got "
                             f"{image.shape} {image.dtype} and {mask.shape} {mask.dtype}")
        images.append(image)
        labels.append(gray_to_class(mask))
    return np.stack(images), np.stack(labels)


def load_split(root: str | Path | None = None
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((train_images, train_labels), (val_images, val_labels))``: sections 00-15 / 16-19."""
    return load_sections(TRAIN_IDS, root), load_sections(VAL_IDS, root)


def standardisation(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the (single-channel) training images, as floats."""
    x = np.asarray(images, dtype=np.float64)
    return float(x.mean()), float(x.std())


def median_frequency_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus) from class-id masks ``(N, H, W)``.

    ``freq_c = count_c / (pixels of the images that contain c)``,
    ``weight_c = median(freq) / freq_c``. Returns float64 ``(num_classes,)``.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    counts = np.zeros(num_classes, dtype=np.int64)
    present_pixels = np.zeros(num_classes, dtype=np.int64)
    for mask in labels:
        c = np.bincount(mask.ravel(), minlength=num_classes)
        if c.size > num_classes:
            raise ValueError(f"class id {c.size - 1} >= num_classes={num_classes}")
        counts += c
        present_pixels += np.where(c > 0, mask.size, 0)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"classes {missing} never appear in the training masks")
    freq = counts / present_pixels
    return np.median(freq) / freq


def confusion_matrix(labels: np.ndarray, pred: np.ndarray,
                     num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``(C, C)`` int64 matrix, rows = true class, columns = predicted class."""
    t = np.asarray(labels).astype(np.int64, copy=False).ravel()
    p = np.asarray(pred).astype(np.int64, copy=False).ravel()
    if t.shape != p.shape:
        raise ValueError(f"labels and predictions differ in size: {t.shape} vs {p.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def scores(cm: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Per-class IoU ``TP / (TP + FP + FN)``, mean IoU and pixel accuracy from a confusion matrix.

    ``iou`` is a dict ``{class name: IoU}``. A class absent from both labels and predictions
    has IoU NaN and is left out of the mean.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return {
        "iou": {str(n): float(v) for n, v in zip(class_names, iou, strict=True)},
        "miou": float(np.nanmean(iou)),
        "pixel_accuracy": float(tp.sum() / cm.sum()),
    }


def markdown_header(class_names: Sequence[str] = CLASS_NAMES) -> str:
    """Header (two lines) of the results table that :func:`markdown_row` fills."""
    cols = (["model", "params", "min", "steps", "train img/s"]
            + [f"IoU {n}" for n in class_names] + ["mIoU", "pixel acc", "infer s (4 sections)"])
    return "| " + " | ".join(cols) + " |\n|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"


def markdown_row(result: dict[str, Any]) -> str:
    """One Markdown table row from a result dict as written by the benchmark scripts."""
    iou = result["iou"]
    cells = [str(result["model"]), f"{result['params']:,}", f"{result['minutes']:g}",
             str(result["steps"]), f"{result['median_train_images_per_s']:.2f}"]
    cells += [f"{iou[n]:.3f}" for n in CLASS_NAMES]
    cells += [f"{result['miou']:.3f}", f"{result['pixel_accuracy']:.3f}",
              f"{result['inference_seconds']:.1f}"]
    return "| " + " | ".join(cells) + " |"


__all__ = [
    "CLASS_NAMES", "DATASET", "GRAY_TO_CLASS", "NUM_CLASSES", "TRAIN_IDS", "VAL_IDS",
    "confusion_matrix", "data_root", "gray_to_class", "load_sections", "load_split",
    "markdown_header", "markdown_row", "median_frequency_weights", "scores", "standardisation",
    "vnc_dir",
]
