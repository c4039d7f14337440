"""Segmentation losses as registered, serializable ``keras.losses.Loss`` subclasses.

Conventions (all losses):
    Images and volumes alike: every shape below written ``(B, H, W, ...)`` may have any number
    of spatial axes, e.g. ``(B, D, H, W, C)`` predictions with ``(B, D, H, W)`` /
    ``(B, D, H, W, 1)`` / ``(B, D, H, W, C)`` targets and ``(B, D, H, W)`` /
    ``(B, D, H, W, 1)`` voxel weights; per-image sums (Dice, Jaccard, Tversky) run over all
    spatial axes, so a volume is one "image" and "pixel" reads "voxel".
    y_pred: ``(B, H, W, C)`` probabilities (sigmoid for C=1, softmax for C>1) or logits with
        ``from_logits=True``; any float dtype (computed in float32, so mixed precision is safe).
    y_true: binary ``(B, H, W[, 1])`` in [0, 1] for C=1; for C>1 either sparse class ids
        ``(B, H, W[, 1])`` in 0..C-1 or one-hot ``(B, H, W, C)``. Checked on every call
        (``zf_unet.checks.check_targets``): a shape that does not fit ``y_pred`` or values out
        of range (e.g. 0/255 masks) raise ``DataError`` eagerly, an ``InvalidArgumentError``
        naming ``y_true`` in ``model.fit``.
    Return value of ``call``: a per-pixel map ``(B, H, W)`` float32. Overlap losses (Dice,
    Jaccard) put each image's value on all its pixels, so a per-pixel weight map passed as
    ``sample_weight`` (``(B, H, W)`` or ``(B, H, W, 1)``, e.g. the paper's border weights)
    works with every loss here, and the default mean reduction gives the usual value.
    ``ignore_class`` (every loss, as in ``keras.losses.SparseCategoricalCrossentropy``;
    ``ignore_index`` is its deprecated alias): pixels whose class-id / binary target equals it
    (e.g. 255)
    count for nothing: they are left out of the cross-entropy sums and of its normaliser, and of
    the Dice / Jaccard / Tversky sums; a ``sample_weight`` at such pixels is multiplied by 0.
    One-hot targets cannot carry an ignore label. Cross-entropy terms are then means over the
    non-ignored pixels of the batch (each pixel's map value is scaled by ``N / N_valid``).
    ``class_weights`` (cross-entropy terms): one float per class (2 for C=1: background,
    foreground). ``Crossentropy``, ``FocalLoss``, ``BCEDiceLoss`` and ``CEDiceLoss`` normalise
    the PyTorch way, ``sum(w_y * ce) / sum(w_y)`` over the non-ignored pixels of the batch
    (``torch.nn.CrossEntropyLoss(weight=..., ignore_index=...)``); ``WeightedCrossentropy``
    keeps the U-Net paper's energy, ``sum(w_y * ce) / N_valid``. ``"auto"`` is not a running
    estimate here: compute the weights once with ``zf_unet.data.class_pixel_counts`` and
    ``zf_unet.data.median_frequency_weights`` (what ``zf_unet.train`` does) and pass the list.
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from zf_unet import registry
from zf_unet.checks import check_ignore_index
from zf_unet.deprecation import moved_names, renamed_argument, renamed_key, warn_deprecated
from zf_unet.target_checks import SPARSE, check_targets, valid_pixels

_EPS = 1e-7


def _prepare(y_true: Any, y_pred: Any, from_logits: bool,
             ignore_class: int | None = None) -> tuple[Any, Any, Any, Any]:
    """Return ``(target, probs, logits_or_none, valid_or_none)``.

    ``target``, ``probs``, ``logits``: float32 ``(B, H, W, C)``; ``target`` is 0 at ignored
    pixels. ``valid``: float32 ``(B, H, W)``, 0 at pixels whose target equals ``ignore_class``
    (``None`` when nothing can be ignored). ``y_true`` is checked first
    (``zf_unet.checks.check_targets``: shape, value range)."""
    y_pred = ops.cast(y_pred, "float32")
    y_true, kind = check_targets(y_true, y_pred, ignore_index=ignore_class)
    valid = valid_pixels(y_true, y_pred, kind, ignore_class)
    num_classes = y_pred.shape[-1]
    no_channel = len(y_true.shape) == len(y_pred.shape) - 1  # (B, H, W) targets
    if kind == SPARSE:
        ids = ops.cast(y_true, "int32")
        if not no_channel:
            ids = ops.squeeze(ids, -1)
        if valid is not None:
            ids = ops.where(valid > 0, ids, ops.zeros_like(ids))
        target = ops.one_hot(ids, num_classes, dtype="float32")
    else:
        target = ops.cast(y_true, "float32")
        if no_channel:
            target = ops.expand_dims(target, -1)
    if valid is not None:
        target = target * valid[..., None]
    if from_logits:
        logits = y_pred
        probs = ops.sigmoid(logits) if num_classes == 1 else ops.softmax(logits, axis=-1)
    else:
        logits = None
        probs = y_pred
    return target, probs, logits, valid


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


def _focal_map(target: Any, probs: Any, logits: Any, gamma: float) -> Any:
    """Per-pixel focal loss ``-sum_c t_c (1 - p_c)^gamma log p_c`` ``(B, H, W)`` (Lin et al.
    2017); C=1 is the sigmoid form over the two classes (background ``1 - p``, foreground
    ``p``). ``gamma = 0`` is the cross-entropy of ``_cross_entropy_map``."""
    if target.shape[-1] == 1:
        target = ops.concatenate([1.0 - target, target], axis=-1)
        if logits is not None:
            logp = ops.concatenate([ops.log_sigmoid(-logits), ops.log_sigmoid(logits)], axis=-1)
            p = ops.concatenate([1.0 - probs, probs], axis=-1)
        else:
            q = ops.clip(probs, _EPS, 1.0 - _EPS)
            p = ops.concatenate([1.0 - q, q], axis=-1)
            logp = ops.log(p)
    elif logits is not None:
        logp = ops.log_softmax(logits, axis=-1)
        p = probs
    else:
        p = ops.clip(probs, _EPS, 1.0)
        logp = ops.log(p)
    modulator = ops.power(ops.maximum(1.0 - p, 0.0), gamma) if gamma != 0 else 1.0
    return -ops.sum(target * modulator * logp, axis=-1)


def _check_class_weights(class_weights: Any) -> list[float] | None:
    """``None`` or a list of non-negative floats; ``"auto"`` is refused with directions."""
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        if class_weights == "auto":
            raise ValueError(
                'class_weights="auto" is not supported by the losses: compute median-frequency '
                "weights once from the training masks with zf_unet.data.class_pixel_counts "
                "and zf_unet.data.median_frequency_weights (what zf_unet.train does) and pass "
                "the list, e.g. class_weights=[0.4, 1.0, 3.2]")
        raise ValueError(f'class_weights must be None, a list of floats or "auto", '
                         f"got {class_weights!r}")
    try:
        out = [float(w) for w in class_weights]
    except (TypeError, ValueError):
        raise ValueError(f"class_weights must be None or a list of floats, got "
                         f"{class_weights!r}") from None
    if not out or any(not np.isfinite(w) or w < 0 for w in out):
        raise ValueError(f"class_weights must be finite and >= 0, got {class_weights!r}")
    return out


def _pixel_class_weights(target: Any, class_weights: list[float]) -> Any:
    """Each pixel's weight ``w_y`` by its true class, ``(B, H, W)``; soft targets mix."""
    cw = ops.convert_to_tensor(class_weights, dtype="float32")
    if target.shape[-1] == 1:
        if len(class_weights) != 2:
            raise ValueError("class_weights for a binary (C=1) model needs 2 values: "
                             f"[background, foreground], got {class_weights}")
        t = target[..., 0]
        return cw[0] * (1.0 - t) + cw[1] * t
    if len(class_weights) != target.shape[-1]:
        raise ValueError(f"class_weights has {len(class_weights)} values but "
                         f"the model outputs {target.shape[-1]} classes")
    return ops.sum(target * cw, axis=-1)


def _weighted_mean_map(values: Any, target: Any, valid: Any, class_weights: list[float] | None,
                       normalize_by_weights: bool = True) -> Any:
    """``(B, H, W)`` map whose mean over all pixels is the weighted mean of ``values``.

    Without ``class_weights``: the mean over the non-ignored pixels. With them:
    ``sum(w_y * v) / sum(w_y)`` (``normalize_by_weights``, PyTorch's normalisation) or
    ``sum(w_y * v) / N_valid``; sums over the non-ignored pixels of the batch. Ignored pixels
    get 0."""
    weight = None if class_weights is None else _pixel_class_weights(target, class_weights)
    if valid is None and (weight is None or not normalize_by_weights):
        return values if weight is None else values * weight
    if valid is not None:
        weight = valid if weight is None else weight * valid
    denom_w = weight if normalize_by_weights else (valid if valid is not None else
                                                    ops.ones_like(weight))
    total = ops.sum(ops.ones_like(weight))
    return values * weight * ops.divide_no_nan(total, ops.sum(denom_w))


def _spatial_axes(rank: int) -> tuple[int, ...]:
    """The spatial axes ``1..rank-2`` of a ``(B, ..., C)`` tensor of rank ``rank``:
    ``(1, 2)`` for images ``(B, H, W, C)``, ``(1, 2, 3)`` for volumes ``(B, D, H, W, C)``."""
    return tuple(range(1, rank - 1))


def _overlap(target: Any, probs: Any, include_background: bool,
             valid: Any = None) -> tuple[Any, Any, Any]:
    """Per-image, per-class sums ``(B, C')`` over all spatial axes of ``(B, ..., C)`` inputs
    (``(B, H, W, C)`` or ``(B, D, H, W, C)``): intersection, sum of target, sum of probs
    (over the non-ignored pixels / voxels when ``valid`` ``(B, ...)`` is given)."""
    if valid is not None:
        probs = probs * valid[..., None]
    if target.shape[-1] > 1 and not include_background:
        target, probs = target[..., 1:], probs[..., 1:]
    axes = _spatial_axes(len(probs.shape))
    inter = ops.sum(target * probs, axis=axes)
    return inter, ops.sum(target, axis=axes), ops.sum(probs, axis=axes)


def _per_image(values: Any, rank: int) -> Any:
    """``(B,)`` -> ``(B, 1, ..., 1)`` broadcastable against a ``(B, ...)`` map of ``rank``."""
    return ops.reshape(values, (-1,) + (1,) * (rank - 1))


def _broadcast_to_pixels(per_image: Any, like: Any, valid: Any = None) -> Any:
    """``(B,)`` -> ``(B, ...)`` shaped like ``like[..., 0]`` (``(B, H, W)`` or
    ``(B, D, H, W)``). With ``valid``, the value goes on the non-ignored pixels only, scaled
    by ``N / N_valid`` of the image (``N`` its pixel / voxel count), so that the mean over the
    image is unchanged and ignored pixels carry no weight."""
    base = ops.zeros_like(like[..., 0])
    rank = len(base.shape)
    out = base + _per_image(per_image, rank)
    if valid is None:
        return out
    axes = tuple(range(1, rank))
    scale = ops.divide_no_nan(ops.sum(ops.ones_like(valid), axis=axes),
                              ops.sum(valid, axis=axes))
    return out * valid * _per_image(scale, rank)


def soft_dice_loss(target: Any, probs: Any, smooth: float, include_background: bool,
                   valid: Any = None) -> Any:
    """``1 - mean_c (2|T∩P| + s) / (|T| + |P| + s)`` per image, shape ``(B,)``; ``target``,
    ``probs`` ``(B, H, W, C)`` (or ``(B, D, H, W, C)``: sums over all voxels of a volume)
    float32, ``valid`` an optional ``(B, H, W)`` / ``(B, D, H, W)`` 0/1 mask."""
    inter, t, p = _overlap(target, probs, include_background, valid)
    dice = (2.0 * inter + smooth) / (t + p + smooth)
    return 1.0 - ops.mean(dice, axis=-1)


class _SegmentationLoss(keras.losses.Loss):
    """Base of the losses: ``from_logits`` and ``ignore_class`` (``ignore_index``: its
    deprecated alias, also read from the configs of older ``.keras`` files)."""

    def __init__(self, from_logits: bool = False, ignore_class: int | None = None,
                 name: str | None = None, *, ignore_index: int | None = None, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.from_logits = bool(from_logits)
        self.ignore_class = check_ignore_index(renamed_argument(
            "ignore_class", ignore_class, "ignore_index", ignore_index, type(self).__name__),
            "ignore_index" if ignore_class is None and ignore_index is not None else "ignore_class")

    @property
    def ignore_index(self) -> int | None:
        """Deprecated alias of :attr:`ignore_class`."""
        warn_deprecated(f"{type(self).__name__}.ignore_index is deprecated, use ignore_class")
        return self.ignore_class

    def _prepare(self, y_true: Any, y_pred: Any) -> tuple[Any, Any, Any, Any]:
        return _prepare(y_true, y_pred, self.from_logits, self.ignore_class)

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits,
                "ignore_class": self.ignore_class}

    @classmethod
    def from_config(cls, config: dict) -> "_SegmentationLoss":
        """The loss of ``config``; configs written before ``ignore_class`` (``ignore_index``)
        load too, without a warning."""
        return cls(**renamed_key(config, "ignore_index", "ignore_class"))


@keras.saving.register_keras_serializable(package="zf_unet")
class DiceLoss(_SegmentationLoss):
    """Soft Dice loss, ``1 - Dice`` averaged over classes (per image).

    Args:
        smooth: additive smoothing; makes empty-target / empty-prediction images score 0 loss.
        include_background: for C>1, whether class 0 takes part in the average.
        from_logits: ``y_pred`` are logits.
        ignore_class: target value of pixels to leave out of the sums (``ignore_index``: its
            deprecated alias).
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = True,
                 from_logits: bool = False, ignore_class: int | None = None,
                 name: str = "dice_loss", **kwargs: Any):
        super().__init__(from_logits=from_logits, ignore_class=ignore_class, name=name, **kwargs)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        target, probs, _, valid = self._prepare(y_true, y_pred)
        per_image = soft_dice_loss(target, probs, self.smooth, self.include_background, valid)
        return _broadcast_to_pixels(per_image, probs, valid)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth,
                "include_background": self.include_background}


@keras.saving.register_keras_serializable(package="zf_unet")
class JaccardLoss(_SegmentationLoss):
    """Soft Jaccard (IoU) loss ``1 - (|T∩P| + s) / (|T| + |P| - |T∩P| + s)``, class-averaged."""

    def __init__(self, smooth: float = 1.0, include_background: bool = True,
                 from_logits: bool = False, ignore_class: int | None = None,
                 name: str = "jaccard_loss", **kwargs: Any):
        super().__init__(from_logits=from_logits, ignore_class=ignore_class, name=name, **kwargs)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        target, probs, _, valid = self._prepare(y_true, y_pred)
        inter, t, p = _overlap(target, probs, self.include_background, valid)
        iou = (inter + self.smooth) / (t + p - inter + self.smooth)
        return _broadcast_to_pixels(1.0 - ops.mean(iou, axis=-1), probs, valid)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth,
                "include_background": self.include_background}


@keras.saving.register_keras_serializable(package="zf_unet")
class TverskyLoss(_SegmentationLoss):
    """Soft Tversky loss (Salehi et al. 2017), class-averaged per image:
    ``1 - mean_c (2TP + s) / (2TP + 2*alpha*FP + 2*beta*FN + s)`` with soft counts
    ``TP = sum t*p``, ``FP = sum (1-t)*p``, ``FN = sum t*(1-p)``. ``alpha = beta = 0.5`` is
    ``DiceLoss`` with the same ``smooth``; ``beta > alpha`` penalises missed foreground more.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0,
                 include_background: bool = True, from_logits: bool = False,
                 ignore_class: int | None = None, name: str = "tversky_loss", **kwargs: Any):
        super().__init__(from_logits=from_logits, ignore_class=ignore_class, name=name, **kwargs)
        self.alpha, self.beta = float(alpha), float(beta)
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha!r}, {beta!r}")
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        target, probs, _, valid = self._prepare(y_true, y_pred)
        inter, t, p = _overlap(target, probs, self.include_background, valid)
        fp, fn = p - inter, t - inter
        ti = (2.0 * inter + self.smooth) / (
            2.0 * inter + 2.0 * self.alpha * fp + 2.0 * self.beta * fn + self.smooth)
        return _broadcast_to_pixels(1.0 - ops.mean(ti, axis=-1), probs, valid)

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "smooth": self.smooth, "include_background": self.include_background}


@keras.saving.register_keras_serializable(package="zf_unet")
class CEDiceLoss(_SegmentationLoss):
    """``ce_weight * cross-entropy + dice_weight * soft Dice loss`` for any number of classes.

    The defaults (0.5, 1.0) are U-Net++'s hybrid loss (Zhou et al. 2018): half the
    cross-entropy plus the Dice term (``LossConfig.bce_weight``'s default). Categorical
    cross-entropy for C>1 (sparse class ids or one-hot), binary for C=1 (then it is
    :class:`BCEDiceLoss`). ``class_weights`` weight the cross-entropy term, normalised
    ``sum(w_y ce) / sum(w_y)`` over the non-ignored pixels; ``include_background=False``
    leaves class 0 out of the Dice average (C>1). Returns a ``(B, H, W)`` float32 map.
    """

    def __init__(self, ce_weight: float = 0.5, dice_weight: float = 1.0, smooth: float = 1.0,
                 include_background: bool = True,
                 class_weights: Sequence[float] | None = None, ignore_class: int | None = None,
                 from_logits: bool = False, name: str = "ce_dice_loss", **kwargs: Any):
        super().__init__(from_logits=from_logits, ignore_class=ignore_class, name=name, **kwargs)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)
        self.class_weights = _check_class_weights(class_weights)

    def call(self, y_true, y_pred):
        target, probs, logits, valid = self._prepare(y_true, y_pred)
        ce = _weighted_mean_map(_cross_entropy_map(target, probs, logits), target, valid,
                                self.class_weights)
        dice = soft_dice_loss(target, probs, self.smooth, self.include_background, valid)
        return self.ce_weight * ce + self.dice_weight * _broadcast_to_pixels(dice, probs, valid)

    def get_config(self) -> dict:
        return {**super().get_config(), "ce_weight": self.ce_weight,
                "dice_weight": self.dice_weight, "smooth": self.smooth,
                "include_background": self.include_background,
                "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="zf_unet")
class BCEDiceLoss(CEDiceLoss):
    """``bce_weight * cross-entropy + dice_weight * soft Dice loss``: :class:`CEDiceLoss`
    (same defaults, same computation) with the weight of its cross-entropy term named
    ``bce_weight``, the name for one-class models (``loss.name = "bce_dice"``)."""

    def __init__(self, bce_weight: float = 0.5, dice_weight: float = 1.0, smooth: float = 1.0,
                 include_background: bool = True, from_logits: bool = False,
                 class_weights: Sequence[float] | None = None, ignore_class: int | None = None,
                 name: str = "bce_dice_loss", **kwargs: Any):
        super().__init__(ce_weight=bce_weight, dice_weight=dice_weight, smooth=smooth,
                         include_background=include_background, class_weights=class_weights,
                         ignore_class=ignore_class, from_logits=from_logits, name=name,
                         **kwargs)

    @property
    def bce_weight(self) -> float:
        """The weight of the cross-entropy term (:attr:`ce_weight`)."""
        return self.ce_weight

    @bce_weight.setter
    def bce_weight(self, value: float) -> None:
        self.ce_weight = float(value)

    def get_config(self) -> dict:
        config = super().get_config()
        config["bce_weight"] = config.pop("ce_weight")
        return config


@keras.saving.register_keras_serializable(package="zf_unet")
class Crossentropy(_SegmentationLoss):
    """Per-pixel cross-entropy (binary for C=1, categorical for C>1; sparse or one-hot), as
    ``torch.nn.CrossEntropyLoss(weight=class_weights, ignore_index=ignore_class)``: the batch
    value is ``sum(w_y * ce) / sum(w_y)`` over the non-ignored pixels (without class weights:
    their mean). ``class_weights``: one float per class (C=1: [background, foreground]).
    A ``sample_weight`` map multiplies the pixels afterwards (it is not in the normaliser).
    """

    normalize_by_weights = True

    def __init__(self, class_weights: Sequence[float] | None = None, from_logits: bool = False,
                 ignore_class: int | None = None, name: str = "cross_entropy", **kwargs: Any):
        super().__init__(from_logits=from_logits, ignore_class=ignore_class, name=name, **kwargs)
        self.class_weights = _check_class_weights(class_weights)

    def call(self, y_true, y_pred):
        target, probs, logits, valid = self._prepare(y_true, y_pred)
        ce = _cross_entropy_map(target, probs, logits)
        return _weighted_mean_map(ce, target, valid, self.class_weights,
                                  self.normalize_by_weights)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="zf_unet")
class WeightedCrossentropy(Crossentropy):
    """Per-pixel cross-entropy (binary for C=1, categorical for C>1; sparse or one-hot).

    Per-pixel weights — the U-Net paper's border weight map ``w(x)`` — come in as
    ``sample_weight`` ``(B, H, W)`` / ``(B, H, W, 1)`` (the third element of a
    ``(image, mask, weight)`` dataset); ignored pixels get weight 0. ``class_weights`` (one
    float per class; for C=1 the weights of background and foreground) additionally scale each
    pixel by its true class, without renormalising: ``sum(w_y * ce) / N_valid`` (the paper's
    energy; ``Crossentropy`` divides by ``sum(w_y)`` instead).
    """

    normalize_by_weights = False

    def __init__(self, class_weights: Sequence[float] | None = None, from_logits: bool = False,
                 ignore_class: int | None = None, name: str = "weighted_cross_entropy",
                 **kwargs: Any):
        super().__init__(class_weights=class_weights, from_logits=from_logits,
                         ignore_class=ignore_class, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="zf_unet")
class FocalLoss(_SegmentationLoss):
    """Focal loss (Lin et al. 2017) ``-(1 - p_y)^gamma log p_y`` per pixel: softmax form for
    C>1, sigmoid form for C=1 (``p_y = p`` on foreground, ``1 - p`` on background).
    ``gamma = 0`` is ``Crossentropy``. ``class_weights`` play the role of the paper's alpha
    (per class; C=1: [background, foreground]); the batch value is
    ``sum(w_y * fl) / sum(w_y)`` over the non-ignored pixels, as in ``Crossentropy``.
    """

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | None = None,
                 ignore_class: int | None = None, from_logits: bool = False,
                 name: str = "focal_loss", **kwargs: Any):
        super().__init__(from_logits=from_logits, ignore_class=ignore_class, name=name, **kwargs)
        self.gamma = float(gamma)
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.class_weights = _check_class_weights(class_weights)

    def call(self, y_true, y_pred):
        target, probs, logits, valid = self._prepare(y_true, y_pred)
        fl = _focal_map(target, probs, logits, self.gamma)
        return _weighted_mean_map(fl, target, valid, self.class_weights)

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma": self.gamma, "class_weights": self.class_weights}


# --------------------------------------------------------------------------- registry

#: Config names of the losses (``loss.name`` in a training config): the registry
#: :data:`zf_unet.registry.LOSSES`, a read-only map ``name -> loss class``.
LOSSES = registry.LOSSES


def get(identifier: str | dict | keras.losses.Loss, **kwargs: Any) -> keras.losses.Loss:
    """A loss from a config name (``LOSSES``: ``bce_dice``, ``ce_dice``, ``dice``, ``jaccard``,
    ``ce``, ``weighted_ce``, ``focal``, ``tversky``) built with ``kwargs``, a serialized loss
    (the dict of ``keras.saving.serialize_keras_object``) or a ``keras.losses.Loss`` instance
    (returned as is), like ``keras.losses.get``."""
    if isinstance(identifier, keras.losses.Loss):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} cannot be applied to a loss "
                             "instance")
        return identifier
    if isinstance(identifier, dict):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} cannot be applied to a "
                             "serialized loss")
        loss = keras.saving.deserialize_keras_object(identifier)
        if not isinstance(loss, keras.losses.Loss):
            raise ValueError(f"{identifier!r} does not describe a keras.losses.Loss")
        return loss
    return LOSSES.get(identifier, "loss")(**kwargs)


#: Former class names (before Keras's spelling ``Crossentropy``): still loaded from the
#: ``.keras`` files that name them, and readable here with a ``DeprecationWarning``.
RENAMED = {"CrossEntropy": "Crossentropy", "WeightedCrossEntropy": "WeightedCrossentropy"}
for _old, _new in RENAMED.items():
    keras.saving.get_custom_objects()[f"zf_unet>{_old}"] = globals()[_new]
__getattr__ = moved_names(__name__, {old: f"{__name__}:{new}" for old, new in RENAMED.items()})

__all__ = ["BCEDiceLoss", "CEDiceLoss", "Crossentropy", "DiceLoss", "FocalLoss", "JaccardLoss",
           "LOSSES", "RENAMED", "TverskyLoss", "WeightedCrossentropy", "get", "soft_dice_loss"]
