"""Segmentation metrics: streaming Keras metrics (Dice, IoU) and NumPy evaluation scores.

Keras metrics accumulate a confusion matrix over all batches (built on ``keras.metrics.IoU``),
so the result is the data-set-level score, not a mean of per-batch scores.

NumPy scores follow the ISBI 2012 challenge (the definitions of its evaluation scripts, which the
U-Net paper's table uses): the pixel error is ``1 - F-score`` of the cell-interior pixels, the
foreground-restricted Rand error is ``1 - F-score`` of the Rand index over pixel pairs inside true
cells, with pixels the prediction leaves unassigned (label 0) counted as single-pixel segments.
The misclassification rate (the challenge's first pixel error) and the variation of information
(scikit-image) are reported beside them.

Volumes: the Keras metrics count every voxel of ``(B, D, H, W, C)`` predictions as they count
pixels. The NumPy scores take a 2-D map ``(H, W)`` / ``(H, W, 1)`` or a volume ``(D, H, W)`` /
``(D, H, W, 1)`` (a 3-D array whose last axis has size 1 is read as ``(H, W, 1)``): pixel counts,
Dice, IoU and the confusion matrix count voxels, and the cell scores (``label_cells``, Rand
error, VI) use 3-D connected components (``connectivity`` 1 = 6, 2 = 18, 3 = 26 neighbours)
and voxel pairs. To score a stack section by section as the ISBI challenge does, call them per
slice and sum the counts.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np
from keras import ops
from scipy import ndimage

from zf_unet.checks import check_ignore_index
from zf_unet.deprecation import renamed_argument, renamed_key, warn_deprecated
from zf_unet.target_checks import ONE_HOT, check_targets, valid_pixels


class _ConfusionMetric(keras.metrics.IoU):
    """Converts probabilities/logits and sparse/one-hot targets to class ids, then counts.

    Pixels whose target equals ``ignore_class`` are not counted (weight 0), as in
    ``keras.metrics.IoU``; ``ignore_index`` is its deprecated alias (configs of older
    ``.keras`` files that hold it load without a warning)."""

    def __init__(self, num_classes: int = 1, threshold: float = 0.5,
                 target_class_ids: Sequence[int] | None = None, from_logits: bool = False,
                 name: str | None = None, dtype: Any = None, ignore_class: int | None = None,
                 *, ignore_index: int | None = None):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        ignore_class = check_ignore_index(renamed_argument(
            "ignore_class", ignore_class, "ignore_index", ignore_index, type(self).__name__),
            "ignore_index" if ignore_class is None and ignore_index is not None else "ignore_class")
        self.model_classes = int(num_classes)
        n = max(2, self.model_classes)
        if target_class_ids is None:
            target_class_ids = [1] if self.model_classes == 1 else list(range(n))
        # Keras drops pixels whose true id is ignore_class too; ignored pixels reach it with
        # weight 0 (true id 0), so both rules leave out the same pixels.
        super().__init__(num_classes=n, target_class_ids=list(target_class_ids), name=name,
                         dtype=dtype, ignore_class=ignore_class)
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)

    @property
    def ignore_index(self) -> int | None:
        """Deprecated alias of ``ignore_class``."""
        warn_deprecated(f"{type(self).__name__}.ignore_index is deprecated, use ignore_class")
        return self.ignore_class

    @classmethod
    def from_config(cls, config: dict) -> "_ConfusionMetric":
        """The metric of ``config`` (``ignore_index`` of older configs read as
        ``ignore_class``)."""
        return cls(**renamed_key(config, "ignore_index", "ignore_class"))

    def _ids(self, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """Flat int32 ``(N,)`` true and predicted class ids (``_ids_valid`` without the mask)."""
        return self._ids_valid(y_true, y_pred)[:2]

    def _ids_valid(self, y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
        """Flat int32 ``(N,)`` true and predicted class ids (true ids of ignored pixels set to
        0) and the flat float32 0/1 mask of counted pixels (``None``: all count); ``y_true`` is
        checked first (``zf_unet.checks.check_targets``: shape, value range)."""
        y_pred = ops.cast(y_pred, "float32")
        y_true, kind = check_targets(y_true, y_pred, self.model_classes, self.ignore_class)
        valid = valid_pixels(y_true, y_pred, kind, self.ignore_class)
        if valid is not None:
            if len(y_true.shape) == len(y_pred.shape):
                y_true = y_true[..., 0]
            y_true = ops.where(valid > 0, y_true, ops.zeros_like(y_true))
            valid = ops.reshape(valid, (-1,))
        if self.model_classes == 1:
            if self.from_logits:
                y_pred = ops.sigmoid(y_pred)
            pred = ops.cast(y_pred > self.threshold, "int32")
            true = ops.cast(ops.cast(y_true, "float32") > 0.5, "int32")
        else:
            pred = ops.argmax(y_pred, axis=-1)
            true = ops.argmax(y_true, axis=-1) if kind == ONE_HOT else ops.cast(y_true, "int32")
        return ops.reshape(true, (-1,)), ops.reshape(pred, (-1,)), valid

    def update_state(self, y_true, y_pred, sample_weight=None):
        true, pred, valid = self._ids_valid(y_true, y_pred)
        if sample_weight is not None:
            sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            if valid is not None:
                sample_weight = sample_weight * valid
        elif valid is not None:
            sample_weight = ops.cast(valid, self.dtype)  # 0/1: exact in the metric's dtype
        return super().update_state(true, pred, sample_weight)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.model_classes,
                "threshold": self.threshold, "target_class_ids": list(self.target_class_ids),
                "from_logits": self.from_logits, "ignore_class": self.ignore_class}

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
                 name: str = "dice", dtype: Any = None, ignore_class: int | None = None,
                 **kwargs: Any):
        super().__init__(num_classes, threshold, target_class_ids, from_logits, name, dtype,
                         ignore_class, **kwargs)

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
                 name: str = "iou", dtype: Any = None, ignore_class: int | None = None,
                 **kwargs: Any):
        super().__init__(num_classes, threshold, target_class_ids, from_logits, name, dtype,
                         ignore_class, **kwargs)


@keras.saving.register_keras_serializable(package="zf_unet")
class MeanIoU(_ConfusionMetric):
    """Mean IoU over all classes of argmax (C>1) / thresholded (C=1: background and foreground)
    predictions: ``keras.metrics.MeanIoU`` with probability inputs and an ignore label
    (``ignore_class``). Classes absent from both truth and prediction
    are left out of the mean, as in Keras. ``y_true``: class ids ``(B, H, W[, 1])``, one-hot,
    or C=1 binary; ``y_pred``: ``(B, H, W, C)`` probabilities (logits with ``from_logits``)."""

    def __init__(self, num_classes: int, ignore_class: int | None = None, threshold: float = 0.5,
                 name: str = "miou", from_logits: bool = False, dtype: Any = None, **kwargs: Any):
        super().__init__(num_classes, threshold, None, from_logits, name, dtype, ignore_class,
                         **kwargs)
        self.target_class_ids = list(range(max(2, self.model_classes)))

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.model_classes,
                "ignore_class": self.ignore_class, "threshold": self.threshold,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="zf_unet")
class ClassIoU(_ConfusionMetric):
    """IoU of one class, ``keras.metrics.IoU(target_class_ids=[class_id])`` with probability
    inputs and an ignore label; default name ``iou_<class_id>``. For C=1 models class 0 is the
    background and 1 the foreground (thresholded at ``threshold``)."""

    def __init__(self, class_id: int, num_classes: int, ignore_class: int | None = None,
                 name: str | None = None, threshold: float = 0.5, from_logits: bool = False,
                 dtype: Any = None, **kwargs: Any):
        n = max(2, int(num_classes))
        if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) \
                or not 0 <= class_id < n:
            raise ValueError(f"class_id must be an integer in 0..{n - 1}, got {class_id!r}")
        self.class_id = int(class_id)
        super().__init__(num_classes, threshold, [self.class_id], from_logits,
                         name or f"iou_{self.class_id}", dtype, ignore_class, **kwargs)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "class_id": self.class_id,
                "num_classes": self.model_classes, "ignore_class": self.ignore_class,
                "threshold": self.threshold, "from_logits": self.from_logits}


# --------------------------------------------------------------------------- multi-class NumPy


def confusion_matrix(pred_labels: np.ndarray, true_labels: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """Pixel confusion matrix ``(K, K)`` int64: rows = true class, columns = predicted class.

    ``pred_labels``, ``true_labels``: integer class-id arrays of one shape (an image or a stack;
    over a data set, sum the matrices). Pixels whose truth equals ``ignore_index`` are left out;
    any other value outside 0..K-1 raises ``ValueError``."""
    p, t = np.asarray(pred_labels), np.asarray(true_labels)
    if p.shape != t.shape:
        raise ValueError(f"pred_labels shape {p.shape} != true_labels shape {t.shape}")
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p, t = p.ravel(), t.ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, x in (("pred_labels", p), ("true_labels", t)):
        if x.size and (x.min() < 0 or x.max() >= k or np.any(x != np.round(x))):
            raise ValueError(f"{name} must hold class ids in 0..{k - 1}, got values "
                             f"{np.unique(x)[:10]}")
    idx = t.astype(np.int64) * k + p.astype(np.int64)
    return np.bincount(idx, minlength=k * k).reshape(k, k).astype(np.int64)


def class_scores(confusion: np.ndarray) -> dict:
    """Per-class and summary scores of a ``confusion_matrix`` (rows truth, columns prediction).

    Returns a dict with per-class lists ``iou``, ``dice``, ``precision``, ``recall`` (NaN where
    the denominator is 0: IoU / Dice for a class in neither truth nor prediction, precision for
    a class never predicted, recall for a class absent from the truth) and ``support`` (true
    pixels, int), and scalars ``miou`` (the mean IoU over the classes present in the truth or the
    prediction, as ``keras.metrics.MeanIoU``), ``pixel_accuracy`` (trace / total) and
    ``mean_class_accuracy`` (mean recall over the classes present in the truth).
    """
    cm = np.asarray(confusion, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {cm.shape}")
    tp = np.diag(cm)
    true_n, pred_n = cm.sum(axis=1), cm.sum(axis=0)
    union = true_n + pred_n - tp

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)

    iou, recall = ratio(tp, union), ratio(tp, true_n)
    total = cm.sum()
    return {
        "iou": iou.tolist(),
        "dice": ratio(2 * tp, true_n + pred_n).tolist(),
        "precision": ratio(tp, pred_n).tolist(),
        "recall": recall.tolist(),
        "support": [int(n) for n in true_n],
        "miou": float(np.mean(iou[union > 0])) if (union > 0).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_class_accuracy": (float(np.mean(recall[true_n > 0])) if (true_n > 0).any()
                                else float("nan")),
    }


# --------------------------------------------------------------------------- NumPy scores


def _spatial(x: Any, name: str, what: str = "map") -> np.ndarray:
    """``x`` as a 2-D ``(H, W)`` or 3-D ``(D, H, W)`` array: a trailing axis of size 1 is
    dropped from ``(H, W, 1)`` and ``(D, H, W, 1)``; other shapes raise ``ValueError``."""
    x = np.asarray(x)
    if x.ndim in (3, 4) and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2-D (H, W) / (H, W, 1) {what} or a 3-D volume "
                         f"(D, H, W) / (D, H, W, 1), got shape {x.shape}")
    return x


def _binary(x: np.ndarray, threshold: float = 0.5, name: str = "array") -> np.ndarray:
    """Foreground of a 2-D map or a 3-D volume (``_spatial``) as bool: float maps
    ``> threshold``, bool as is, integers non-zero."""
    x = _spatial(x, name)
    if x.dtype == bool:
        return x
    return x > threshold if np.issubdtype(x.dtype, np.floating) else x > 0


def _confusion(pred: np.ndarray, truth: np.ndarray,
               threshold: float) -> tuple[float, float, float, float]:
    """``(TP, FP, FN, TN)`` pixel counts of the foreground of ``pred > threshold`` vs truth."""
    p, t = _binary(pred, threshold, "pred"), _binary(truth, 0.5, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    tp, fp, fn = (np.count_nonzero(p & t), np.count_nonzero(p & ~t), np.count_nonzero(~p & t))
    return float(tp), float(fp), float(fn), float(p.size - tp - fp - fn)


def f_error(tp: float, fp: float, fn: float) -> float:
    """``1 - F-score = 1 - 2TP / (2TP + FP + FN)``; 0.0 when there is nothing to count."""
    denom = 2.0 * tp + fp + fn
    return 0.0 if denom == 0 else float(1.0 - 2.0 * tp / denom)


def _ratio(num: float, denom: float) -> float:
    return 1.0 if denom == 0 else float(num / denom)


def pixel_counts(pred: np.ndarray, truth: np.ndarray,
                 threshold: float = 0.5) -> tuple[float, float, float]:
    """``(TP, FP, FN)`` pixel counts of the foreground (cell interior = positive class).

    ``pred``: ``(H, W)`` probability map (float, thresholded at ``threshold``) or binary map
    (bool / integer, non-zero = cell); ``truth``: binary map of the same size. Volumes
    ``(D, H, W)`` count voxels.
    """
    return _confusion(pred, truth, threshold)[:3]


def pixel_error(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """ISBI 2012 pixel error: ``1 - F-score`` of the cell-interior pixels (``pixel_counts``).

    This is the "pixel error" of the challenge leaderboard (the U-Net paper reports 0.0611
    on its test stack); over a stack, sum ``pixel_counts`` of all slices, then ``f_error``.
    """
    return f_error(*pixel_counts(pred, truth, threshold))


def misclassification_rate(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of pixels whose binary label differs (the 2012 challenge's first pixel error)."""
    tp, fp, fn, tn = _confusion(pred, truth, threshold)
    return float((fp + fn) / (tp + fp + fn + tn))


def dice_score(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
               foreground: bool = True) -> float:
    """Dice of the foreground (``foreground=False``: of the background) of binary maps;
    1.0 when both are empty."""
    tp, fp, fn, tn = _confusion(pred, truth, threshold)
    return _ratio(2 * tp, 2 * tp + fp + fn) if foreground else _ratio(2 * tn, 2 * tn + fp + fn)


def iou_score(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
              foreground: bool = True) -> float:
    """IoU of the foreground (or background) of binary maps; 1.0 when both are empty."""
    tp, fp, fn, tn = _confusion(pred, truth, threshold)
    return _ratio(tp, tp + fp + fn) if foreground else _ratio(tn, tn + fp + fn)


def label_cells(mask: np.ndarray, threshold: float = 0.5, connectivity: int = 1) -> np.ndarray:
    """Connected components of the foreground (1 = cell interior) -> int32 labels, 0 = membrane.

    ``mask``: ``(H, W)`` (``connectivity`` 1 = 4, 2 = 8 neighbours) or a volume ``(D, H, W)``
    (3-D components: 1 = 6, 2 = 18, 3 = 26 neighbours); a trailing axis of size 1 is dropped."""
    fg = _binary(mask, threshold, "mask")
    structure = ndimage.generate_binary_structure(fg.ndim, connectivity)
    labels, _ = ndimage.label(fg, structure=structure)
    return labels.astype(np.int32)


def _check_labels(x: np.ndarray, name: str) -> np.ndarray:
    x = _spatial(x, name, "label image")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must hold integer cell labels (0 = none), got dtype {x.dtype}; "
                         "turn binary or probability maps into cells with label_cells")
    if x.size and x.min() < 0:
        raise ValueError(f"{name} has negative labels (min {x.min()}); expected 0 = none, "
                         "1.. = cells")
    return x


def rand_pair_counts(pred_labels: np.ndarray,
                     truth_labels: np.ndarray) -> tuple[float, float, float]:
    """Foreground-restricted Rand pair counts ``(TP, FP, FN)`` of two integer label images
    ``(H, W)`` or volumes ``(D, H, W)`` (voxel pairs) (0 = no cell, any other value = a cell
    id).

    Ordered pixel pairs, self-pairs included (the N^2 normalisation of the ISBI 2012 script,
    Fiji's ``RandError.foregroundRestrictedStatsN2``), are counted over the pixels inside a
    cell in the truth. A pair is positive in a segmentation when both pixels carry the same
    label; pixels the prediction leaves unassigned (0, e.g. predicted membrane) are
    single-pixel segments. TP: same cell in both; FP: same predicted segment, different true
    cells; FN: the reverse.
    """
    t_all = _check_labels(truth_labels, "truth_labels")
    p_all = _check_labels(pred_labels, "pred_labels")
    if t_all.shape != p_all.shape:
        raise ValueError(f"pred shape {p_all.shape} != truth shape {t_all.shape}")
    inside = t_all > 0
    if not inside.any():
        return 0.0, 0.0, 0.0
    t = np.unique(t_all[inside], return_inverse=True)[1].ravel()  # 0..n_true-1
    p = p_all[inside]
    assigned = p > 0
    singletons = float(np.count_nonzero(~assigned))
    p = np.unique(p[assigned], return_inverse=True)[1].ravel()  # 0..n_pred-1
    t_assigned = t[assigned]
    true_sizes = np.bincount(t).astype(np.float64)
    pred_sizes = np.bincount(p).astype(np.float64)
    key = t_assigned * (int(p.max(initial=0)) + 1) + p  # < n_true * n_pred
    joint = np.unique(key, return_counts=True)[1].astype(np.float64)
    same_both = float(np.sum(joint**2)) + singletons
    same_pred = float(np.sum(pred_sizes**2)) + singletons
    same_true = float(np.sum(true_sizes**2))
    return same_both, same_pred - same_both, same_true - same_both


def _cells_pair(pred: np.ndarray, truth: np.ndarray, threshold: float, pred_is_labels: bool,
                truth_is_labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, truth)`` as int64 cell labels ``(H, W)`` / ``(D, H, W)``: label images as
    given (a trailing axis of size 1 dropped), binary / probability maps through
    ``label_cells``."""
    def cells(x: np.ndarray, is_labels: bool, th: float) -> np.ndarray:
        if not is_labels:
            return label_cells(x, th).astype(np.int64)
        return _check_labels(x, "label image").astype(np.int64)

    return cells(pred, pred_is_labels, threshold), cells(truth, truth_is_labels, 0.5)


def _rand_f_error(counts: Sequence[float], truth_has_cells: bool, pred_has_cells: bool) -> float:
    """``f_error`` of Rand pair counts; without true cells: 0 if the prediction has none, else 1."""
    if not truth_has_cells:
        return 0.0 if not pred_has_cells else 1.0
    return f_error(*counts)


def rand_error(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
               pred_is_labels: bool = False, truth_is_labels: bool = False) -> float:
    """ISBI 2012 foreground-restricted Rand error: ``1 - F-score`` of ``rand_pair_counts``.

    Binary maps (or probability maps, at ``threshold``) are turned into cells with
    ``label_cells``; integer label images ``(H, W)`` are used as they are (``*_is_labels``).
    Volumes ``(D, H, W)``: 3-D cells and voxel pairs.
    0 = identical segmentations. Without true cells: 0 if the prediction has none, else 1.
    Over a stack, sum the counts of all slices and apply ``f_error``.
    """
    p, t = _cells_pair(pred, truth, threshold, pred_is_labels, truth_is_labels)
    return _rand_f_error(rand_pair_counts(p, t), t.max() > 0, p.max() > 0)


def variation_of_information(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
                             pred_is_labels: bool = False,
                             truth_is_labels: bool = False) -> float:
    """Variation of information ``H(T|P) + H(P|T)`` of the two cell segmentations, in bits
    (scikit-image, log2), over the pixels inside true cells. As in ``rand_error``, pixels the
    prediction leaves unassigned (label 0) are single-pixel segments."""
    from skimage.metrics import variation_of_information as skvi

    p, t = _cells_pair(pred, truth, threshold, pred_is_labels, truth_is_labels)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    if t.max() == 0:
        return 0.0
    unassigned = (p == 0) & (t > 0)
    if unassigned.any():
        p = p.copy()
        p[unassigned] = p.max() + 1 + np.arange(np.count_nonzero(unassigned))
    return float(np.sum(skvi(t, p, ignore_labels=(0,))))


# The ISBI 2012 scripts step the threshold by 0.1 from 0.0 to 1.0; both ends are degenerate.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(
    float(t) for t in np.round(np.arange(0.1, 0.95, 0.1), 1))


def score_thresholds(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                     thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                     segment: Callable[[np.ndarray, float], np.ndarray] | None = None) -> dict:
    """ISBI-style scores of foreground probability maps against binary truths, per threshold.

    Args:
        probs: ``(H, W)`` (or ``(H, W, 1)``) float maps in [0, 1], P(cell interior).
        truths: binary maps of the same sizes (bool / integer: non-zero = cell; float: > 0.5).
        thresholds: levels to try (default 0.1, 0.2, ..., 0.9).
        segment: ``segment(prob, threshold) -> (H, W)`` int cell labels (0 = unassigned);
            default ``label_cells(prob > threshold)``.

    Per threshold, the pixel error and the Rand error are those of the whole set: the counts of
    all images are summed, as the challenge scripts do (``pixel_counts``, ``rand_pair_counts``).
    The misclassification rate, VI, Dice and IoU are means over the images. As in the
    challenge, each score is best at its own threshold: ``best`` holds the pixel error,
    misclassification rate, Dice and IoU at ``pixel_threshold`` (the lowest pixel error; ties:
    the lower threshold) and the Rand error and VI at ``threshold`` (the lowest Rand error;
    ties: the lower VI, then the lower threshold). ``per_image_at_best`` mixes the two the same
    way, with per-image (not summed) pixel and Rand errors.
    """
    if len(probs) != len(truths) or not len(probs):
        raise ValueError(f"need as many truths as probability maps (got {len(probs)} maps, "
                         f"{len(truths)} truths), at least one")
    if not len(thresholds):
        raise ValueError("thresholds must name at least one level")
    for i, prob in enumerate(probs):
        dtype = np.asarray(prob).dtype
        if not (np.issubdtype(dtype, np.floating) or dtype == bool):
            raise ValueError(f"probability map {i} has dtype {dtype}; expected float "
                             "probabilities in [0, 1] (scale integer maps first)")
    truth_bin = [_binary(t, 0.5, "truth") for t in truths]
    truth_cells = [label_cells(t) for t in truth_bin]
    rows, per_image_rows = [], []
    for th in thresholds:
        th = float(th)
        pix, pairs, per_image = np.zeros(3), np.zeros(3), []
        for prob, t_bin, t_lab in zip(probs, truth_bin, truth_cells):
            tp, fp, fn, tn = _confusion(prob, t_bin, th)
            cells = label_cells(prob, th) if segment is None else np.asarray(segment(prob, th))
            rand = np.array(rand_pair_counts(cells, t_lab))
            pix, pairs = pix + (tp, fp, fn), pairs + rand
            per_image.append({
                "pixel_error": f_error(tp, fp, fn),
                "misclassification_rate": (fp + fn) / (tp + fp + fn + tn),
                "rand_error": _rand_f_error(rand, t_lab.max() > 0, cells.max() > 0),
                "variation_of_information": variation_of_information(
                    cells, t_lab, pred_is_labels=True, truth_is_labels=True),
                "dice_foreground": _ratio(2 * tp, 2 * tp + fp + fn),
                "dice_background": _ratio(2 * tn, 2 * tn + fp + fn),
                "iou_foreground": _ratio(tp, tp + fp + fn),
                "iou_background": _ratio(tn, tn + fp + fn),
            })
        row = {k: float(np.mean([r[k] for r in per_image])) for k in per_image[0]}
        # Without any true cell there are no pairs: keep the per-image rule's mean.
        row.update(threshold=th, pixel_error=f_error(*pix),
                   rand_error=f_error(*pairs) if pairs.any() else row["rand_error"])
        rows.append(row)
        per_image_rows.append(per_image)
    i_pix = min(range(len(rows)), key=lambda i: (rows[i]["pixel_error"], rows[i]["threshold"]))
    i_seg = min(range(len(rows)), key=lambda i: (rows[i]["rand_error"],
                                                 rows[i]["variation_of_information"],
                                                 rows[i]["threshold"]))
    seg_keys = ("rand_error", "variation_of_information")

    def pick(a: dict, b: dict) -> dict:
        return {k: (b[k] if k in seg_keys else a[k]) for k in a if k != "threshold"}

    best = {"threshold": rows[i_seg]["threshold"], "pixel_threshold": rows[i_pix]["threshold"],
            **pick(rows[i_pix], rows[i_seg])}
    return {"best": best,
            "per_image_at_best": [pick(a, b) for a, b in zip(per_image_rows[i_pix],
                                                             per_image_rows[i_seg])],
            "per_threshold": rows}


def evaluate_probability_map(prob: np.ndarray, truth: np.ndarray,
                             thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """ISBI-style scores of one foreground probability map ``(H, W)`` against a binary truth:
    ``score_thresholds([prob], [truth], thresholds)`` without the per-image list."""
    out = score_thresholds([prob], [truth], thresholds)
    return {"best": out["best"], "per_threshold": out["per_threshold"]}


__all__ = [
    "DEFAULT_THRESHOLDS",
    "ClassIoU",
    "DiceCoefficient",
    "IoU",
    "MeanIoU",
    "class_scores",
    "confusion_matrix",
    "dice_score",
    "evaluate_probability_map",
    "f_error",
    "iou_score",
    "label_cells",
    "misclassification_rate",
    "pixel_counts",
    "pixel_error",
    "rand_error",
    "rand_pair_counts",
    "score_thresholds",
    "variation_of_information",
]
