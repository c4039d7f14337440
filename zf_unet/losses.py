"""Segmentation losses as registered, serializable ``keras.losses.Loss`` subclasses.

Conventions (all losses):
    y_pred: ``(B, H, W, C)`` probabilities (sigmoid for C=1, softmax for C>1) or logits with
        ``from_logits=True``; any float dtype (computed in float32, so mixed precision is safe).
    y_true: binary ``(B, H, W[, 1])`` in {0, 1} for C=1; for C>1 either sparse class ids
        ``(B, H, W[, 1])`` or one-hot ``(B, H, W, C)``.
    Return value of ``call``: a per-pixel map ``(B, H, W)`` float32. Overlap losses (Dice,
    Jaccard) put each image's value on all its pixels, so a per-pixel weight map passed as
    ``sample_weight`` (``(B, H, W)`` or ``(B, H, W, 1)``, e.g. the paper's border weights)
    works with every loss here, and the default mean reduction gives the usual value.
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

_EPS = 1e-7


def _prepare(y_true: Any, y_pred: Any, from_logits: bool) -> tuple[Any, Any, Any]:
    """Return ``(target, probs, logits_or_none)`` as float32 ``(B, H, W, C)`` tensors."""
    y_pred = ops.cast(y_pred, "float32")
    num_classes = y_pred.shape[-1]
    if num_classes is None:
        raise ValueError("y_pred must have a static channel dimension (B, H, W, C)")
    rank_pred = len(y_pred.shape)
    y_true = ops.convert_to_tensor(y_true)
    rank_true = len(y_true.shape)
    if num_classes == 1:
        target = ops.cast(y_true, "float32")
        if rank_true == rank_pred - 1:
            target = ops.expand_dims(target, -1)
    else:
        sparse = rank_true == rank_pred - 1 or (rank_true == rank_pred and y_true.shape[-1] == 1)
        if sparse:
            ids = ops.cast(y_true, "int32")
            if rank_true == rank_pred:
                ids = ops.squeeze(ids, -1)
            target = ops.one_hot(ids, num_classes, dtype="float32")
        else:
            target = ops.cast(y_true, "float32")
    if from_logits:
        logits = y_pred
        probs = ops.sigmoid(logits) if num_classes == 1 else ops.softmax(logits, axis=-1)
    else:
        logits = None
        probs = y_pred
    return target, probs, logits


def _cross_entropy_map(target: Any, probs: Any, logits: Any) -> Any:
    """Per-pixel cross-entropy ``(B, H, W)``: binary for C=1, categorical otherwise."""
    if target.shape[-1] == 1:
        if logits is not None:
            ce = ops.binary_crossentropy(target, logits, from_logits=True)
        else:
            p = ops.clip(probs, _EPS, 1.0 - _EPS)
            ce = -(target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p))
        return ops.squeeze(ce, -1)
    if logits is not None:
        return ops.categorical_crossentropy(target, logits, from_logits=True, axis=-1)
    p = ops.clip(probs, _EPS, 1.0)
    return -ops.sum(target * ops.log(p), axis=-1)


def _overlap(target: Any, probs: Any, include_background: bool) -> tuple[Any, Any, Any]:
    """Per-image, per-class sums ``(B, C')``: intersection, sum of target, sum of probs."""
    if target.shape[-1] > 1 and not include_background:
        target, probs = target[..., 1:], probs[..., 1:]
    inter = ops.sum(target * probs, axis=(1, 2))
    return inter, ops.sum(target, axis=(1, 2)), ops.sum(probs, axis=(1, 2))


def _broadcast_to_pixels(per_image: Any, like: Any) -> Any:
    """``(B,)`` -> ``(B, H, W)`` shaped like ``like[..., 0]``."""
    return ops.zeros_like(like[..., 0]) + per_image[:, None, None]


def soft_dice_loss(target: Any, probs: Any, smooth: float, include_background: bool) -> Any:
    """``1 - mean_c (2|T∩P| + s) / (|T| + |P| + s)`` per image, shape ``(B,)``."""
    inter, t, p = _overlap(target, probs, include_background)
    dice = (2.0 * inter + smooth) / (t + p + smooth)
    return 1.0 - ops.mean(dice, axis=-1)


class _SegmentationLoss(keras.losses.Loss):
    def __init__(self, from_logits: bool = False, name: str | None = None, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.from_logits = bool(from_logits)

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="zf_unet")
class DiceLoss(_SegmentationLoss):
    """Soft Dice loss, ``1 - Dice`` averaged over classes (per image).

    Args:
        smooth: additive smoothing; makes empty-target / empty-prediction images score 0 loss.
        include_background: for C>1, whether class 0 takes part in the average.
        from_logits: ``y_pred`` are logits.
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = True,
                 from_logits: bool = False, name: str = "dice_loss", **kwargs: Any):
        super().__init__(from_logits=from_logits, name=name, **kwargs)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        target, probs, _ = _prepare(y_true, y_pred, self.from_logits)
        per_image = soft_dice_loss(target, probs, self.smooth, self.include_background)
        return _broadcast_to_pixels(per_image, probs)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth,
                "include_background": self.include_background}


@keras.saving.register_keras_serializable(package="zf_unet")
class JaccardLoss(_SegmentationLoss):
    """Soft Jaccard (IoU) loss ``1 - (|T∩P| + s) / (|T| + |P| - |T∩P| + s)``, class-averaged."""

    def __init__(self, smooth: float = 1.0, include_background: bool = True,
                 from_logits: bool = False, name: str = "jaccard_loss", **kwargs: Any):
        super().__init__(from_logits=from_logits, name=name, **kwargs)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        target, probs, _ = _prepare(y_true, y_pred, self.from_logits)
        inter, t, p = _overlap(target, probs, self.include_background)
        iou = (inter + self.smooth) / (t + p - inter + self.smooth)
        return _broadcast_to_pixels(1.0 - ops.mean(iou, axis=-1), probs)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth,
                "include_background": self.include_background}


@keras.saving.register_keras_serializable(package="zf_unet")
class BCEDiceLoss(_SegmentationLoss):
    """``bce_weight * cross-entropy + dice_weight * soft Dice loss``.

    The defaults (0.5, 1.0) are U-Net++'s hybrid loss (Zhou et al. 2018): half the
    cross-entropy plus the Dice term. For C>1 the cross-entropy is categorical.
    """

    def __init__(self, bce_weight: float = 0.5, dice_weight: float = 1.0, smooth: float = 1.0,
                 include_background: bool = True, from_logits: bool = False,
                 name: str = "bce_dice_loss", **kwargs: Any):
        super().__init__(from_logits=from_logits, name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        target, probs, logits = _prepare(y_true, y_pred, self.from_logits)
        ce = _cross_entropy_map(target, probs, logits)
        dice = soft_dice_loss(target, probs, self.smooth, self.include_background)
        return self.bce_weight * ce + self.dice_weight * dice[:, None, None]

    def get_config(self) -> dict:
        return {**super().get_config(), "bce_weight": self.bce_weight,
                "dice_weight": self.dice_weight, "smooth": self.smooth,
                "include_background": self.include_background}


@keras.saving.register_keras_serializable(package="zf_unet")
class WeightedCrossEntropy(_SegmentationLoss):
    """Per-pixel cross-entropy (binary for C=1, categorical for C>1; sparse or one-hot).

    Per-pixel weights — the U-Net paper's border weight map ``w(x)`` — come in as
    ``sample_weight`` ``(B, H, W)`` / ``(B, H, W, 1)`` (the third element of a
    ``(image, mask, weight)`` dataset). ``class_weights`` (one float per class; for C=1 the
    weights of background and foreground) additionally scale each pixel by its true class.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, from_logits: bool = False,
                 name: str = "weighted_cross_entropy", **kwargs: Any):
        super().__init__(from_logits=from_logits, name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        target, probs, logits = _prepare(y_true, y_pred, self.from_logits)
        ce = _cross_entropy_map(target, probs, logits)
        if self.class_weights is not None:
            cw = ops.convert_to_tensor(self.class_weights, dtype="float32")
            if target.shape[-1] == 1:
                if len(self.class_weights) != 2:
                    raise ValueError("class_weights for a binary (C=1) model needs 2 values: "
                                     f"[background, foreground], got {self.class_weights}")
                t = target[..., 0]
                ce = ce * (cw[0] * (1.0 - t) + cw[1] * t)
            else:
                if len(self.class_weights) != target.shape[-1]:
                    raise ValueError(f"class_weights has {len(self.class_weights)} values but "
                                     f"the model outputs {target.shape[-1]} classes")
                ce = ce * ops.sum(target * cw, axis=-1)
        return ce

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": self.class_weights}


__all__ = ["BCEDiceLoss", "DiceLoss", "JaccardLoss", "WeightedCrossEntropy", "soft_dice_loss"]
