"""Segmentation metrics: streaming Keras metrics (Dice, IoU) and NumPy evaluation scores.

Keras metrics accumulate a confusion matrix over all batches (built on ``keras.metrics.IoU``),
so the result is the data-set-level score, not a mean of per-batch scores.

NumPy scores follow the ISBI 2012 challenge: pixel error, foreground-restricted Rand error and
variation of information on the connected components ("cells") of the foreground. The Rand
error and VI use scikit-image (``adapted_rand_error``, ``variation_of_information``).
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops
from scipy import ndimage


class _ConfusionMetric(keras.metrics.IoU):
    """Converts probabilities/logits and sparse/one-hot targets to class ids, then counts."""

    def __init__(self, num_classes: int = 1, threshold: float = 0.5,
                 target_class_ids: Sequence[int] | None = None, from_logits: bool = False,
                 name: str | None = None, dtype: Any = None):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.model_classes = int(num_classes)
        n = max(2, self.model_classes)
        if target_class_ids is None:
            target_class_ids = [1] if self.model_classes == 1 else list(range(n))
        super().__init__(num_classes=n, target_class_ids=list(target_class_ids), name=name,
                         dtype=dtype)
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)

    def _ids(self, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.convert_to_tensor(y_true)
        if self.model_classes == 1:
            if self.from_logits:
                y_pred = ops.sigmoid(y_pred)
            pred = ops.cast(y_pred > self.threshold, "int32")
            true = ops.cast(ops.cast(y_true, "float32") > 0.5, "int32")
        else:
            pred = ops.argmax(y_pred, axis=-1)
            if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == self.model_classes:
                true = ops.argmax(y_true, axis=-1)
            else:
                true = ops.cast(y_true, "int32")
        return ops.reshape(true, (-1,)), ops.reshape(pred, (-1,))

    def update_state(self, y_true, y_pred, sample_weight=None):
        true, pred = self._ids(y_true, y_pred)
        if sample_weight is not None:
            sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        return super().update_state(true, pred, sample_weight)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.model_classes,
                "threshold": self.threshold, "target_class_ids": list(self.target_class_ids),
                "from_logits": self.from_logits}

    def _per_class(self) -> tuple[Any, Any, Any]:
        cm = ops.cast(self.total_cm, "float32")
        tp = ops.diagonal(cm)
        fp = ops.sum(cm, axis=0) - tp  # predicted as the class, truly another
        fn = ops.sum(cm, axis=1) - tp
        ids = ops.convert_to_tensor(self.target_class_ids, dtype="int32")
        return ops.take(tp, ids), ops.take(fp, ids), ops.take(fn, ids)


@keras.saving.register_keras_serializable(package="zf_unet")
class DiceCoefficient(_ConfusionMetric):
    """Dice ``2TP / (2TP + FP + FN)`` of thresholded (C=1) / argmax (C>1) predictions.

    Averaged over ``target_class_ids`` (default: the foreground for C=1, all classes for C>1).
    A class absent from both truth and prediction is left out of the average.
    """

    def __init__(self, num_classes: int = 1, threshold: float = 0.5,
                 target_class_ids: Sequence[int] | None = None, from_logits: bool = False,
                 name: str = "dice", dtype: Any = None):
        super().__init__(num_classes, threshold, target_class_ids, from_logits, name, dtype)

    def result(self):
        tp, fp, fn = self._per_class()
        denom = 2.0 * tp + fp + fn
        present = ops.cast(denom > 0, "float32")
        dice = ops.divide_no_nan(2.0 * tp, denom)
        return ops.divide_no_nan(ops.sum(dice * present), ops.sum(present))


@keras.saving.register_keras_serializable(package="zf_unet")
class IoU(_ConfusionMetric):
    """Intersection over union ``TP / (TP + FP + FN)`` of thresholded / argmax predictions,
    averaged over ``target_class_ids`` (``keras.metrics.IoU`` with probability inputs)."""

    def __init__(self, num_classes: int = 1, threshold: float = 0.5,
                 target_class_ids: Sequence[int] | None = None, from_logits: bool = False,
                 name: str = "iou", dtype: Any = None):
        super().__init__(num_classes, threshold, target_class_ids, from_logits, name, dtype)


# --------------------------------------------------------------------------- NumPy scores


def _binary(x: np.ndarray, threshold: float = 0.5, name: str = "array") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) or (H, W, 1) map, got shape {x.shape}")
    if x.dtype == bool:
        return x
    return x > threshold if np.issubdtype(x.dtype, np.floating) else x > 0


def pixel_error(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of pixels whose binary label differs; ``pred`` may be a probability map."""
    p, t = _binary(pred, threshold, "pred"), _binary(truth, 0.5, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    return float(np.mean(p != t))


def dice_score(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
               foreground: bool = True) -> float:
    """Dice of the foreground (``foreground=False``: of the background) of binary maps;
    1.0 when both are empty."""
    p, t = _binary(pred, threshold, "pred"), _binary(truth, 0.5, "truth")
    if not foreground:
        p, t = ~p, ~t
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)


def iou_score(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
              foreground: bool = True) -> float:
    """IoU of the foreground (or background) of binary maps; 1.0 when both are empty."""
    p, t = _binary(pred, threshold, "pred"), _binary(truth, 0.5, "truth")
    if not foreground:
        p, t = ~p, ~t
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def label_cells(mask: np.ndarray, threshold: float = 0.5, connectivity: int = 1) -> np.ndarray:
    """Connected components of the foreground (1 = cell interior) -> int32 labels, 0 = membrane."""
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, _ = ndimage.label(_binary(mask, threshold, "mask"), structure=structure)
    return labels.astype(np.int32)


def rand_error(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
               pred_is_labels: bool = False, truth_is_labels: bool = False) -> float:
    """Foreground-restricted adapted Rand error (ISBI 2012) of two segmentations.

    Binary maps are turned into cells with ``label_cells``; pixels that are background in the
    truth are ignored. 0 = identical segmentations, 1 = worst.
    """
    from skimage.metrics import adapted_rand_error

    t = truth.astype(np.int64) if truth_is_labels else label_cells(truth)
    p = pred.astype(np.int64) if pred_is_labels else label_cells(pred, threshold)
    if t.max() == 0:
        return 0.0 if p.max() == 0 else 1.0
    err, _, _ = adapted_rand_error(t, p, ignore_labels=(0,))
    return float(err)


def variation_of_information(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
                             pred_is_labels: bool = False,
                             truth_is_labels: bool = False) -> float:
    """Variation of information ``H(T|P) + H(P|T)`` of the two cell segmentations, in bits
    (scikit-image uses log2), ignoring pixels that are background in the truth."""
    from skimage.metrics import variation_of_information as skvi

    t = truth.astype(np.int64) if truth_is_labels else label_cells(truth)
    p = pred.astype(np.int64) if pred_is_labels else label_cells(pred, threshold)
    if t.max() == 0:
        return 0.0
    return float(np.sum(skvi(t, p, ignore_labels=(0,))))


def evaluate_probability_map(prob: np.ndarray, truth: np.ndarray,
                             thresholds: Sequence[float] = tuple(np.round(np.arange(0.1, 0.95, 0.1), 2))
                             ) -> dict:
    """ISBI-style evaluation of one foreground probability map ``(H, W)`` against a binary truth.

    The map is thresholded at every level in ``thresholds``; returns the scores at each level
    and the best level (by Rand error) with its pixel error, Rand error, VI, Dice and IoU.
    """
    rows = []
    for th in thresholds:
        rows.append({
            "threshold": float(th),
            "pixel_error": pixel_error(prob, truth, th),
            "rand_error": rand_error(prob, truth, th),
            "variation_of_information": variation_of_information(prob, truth, th),
            "dice": dice_score(prob, truth, th),
            "iou": iou_score(prob, truth, th),
        })
    best = min(rows, key=lambda r: (r["rand_error"], r["pixel_error"]))
    return {"best": best, "per_threshold": rows}


__all__ = [
    "DiceCoefficient",
    "IoU",
    "dice_score",
    "evaluate_probability_map",
    "iou_score",
    "label_cells",
    "pixel_error",
    "rand_error",
    "variation_of_information",
]
