"""Losses against NumPy references on hand-made masks."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from zf_unet.losses import BCEDiceLoss, DiceLoss, JaccardLoss, WeightedCrossentropy

EPS = 1e-7


def np_dice_loss(t, p, smooth=1.0):
    """t, p: (B, H, W, C) -> mean over batch of 1 - mean_c dice."""
    inter = (t * p).sum(axis=(1, 2))
    dice = (2 * inter + smooth) / (t.sum(axis=(1, 2)) + p.sum(axis=(1, 2)) + smooth)
    return float(np.mean(1 - dice.mean(-1)))


def np_jaccard_loss(t, p, smooth=1.0):
    inter = (t * p).sum(axis=(1, 2))
    union = t.sum(axis=(1, 2)) + p.sum(axis=(1, 2)) - inter
    return float(np.mean(1 - ((inter + smooth) / (union + smooth)).mean(-1)))


def np_bce_map(t, p):
    p = np.clip(p, EPS, 1 - EPS)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))[..., 0]


def square(size=8, lo=2, hi=6):
    m = np.zeros((1, size, size, 1), np.float32)
    m[0, lo:hi, lo:hi, 0] = 1
    return m


CASES = {
    "perfect": (square(), square()),
    "empty_both": (np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 8, 8, 1), np.float32)),
    "disjoint": (square(lo=0, hi=3), square(lo=5, hi=8)),
    "soft": (square(), np.full((1, 8, 8, 1), 0.3, np.float32)),
}


@pytest.mark.parametrize("case", CASES)
def test_dice_and_jaccard_match_numpy(case):
    t, p = CASES[case]
    assert float(DiceLoss()(t, p)) == pytest.approx(np_dice_loss(t, p), abs=1e-6)
    assert float(JaccardLoss()(t, p)) == pytest.approx(np_jaccard_loss(t, p), abs=1e-6)


def test_dice_hand_values():
    t, p = CASES["perfect"]
    assert float(DiceLoss()(t, p)) == pytest.approx(0.0, abs=1e-7)
    t, p = CASES["empty_both"]
    assert float(DiceLoss()(t, p)) == pytest.approx(0.0, abs=1e-7)  # smoothing: empty = perfect
    t, p = CASES["disjoint"]
    # |T| = 9, |P| = 9, no overlap: 1 - 1/19
    assert float(DiceLoss()(t, p)) == pytest.approx(1 - 1 / 19, abs=1e-6)
    assert float(DiceLoss(smooth=0.0)(t, p)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_bce_dice_matches_numpy(case):
    t, p = CASES[case]
    expected = 0.5 * np_bce_map(t, p).mean() + np_dice_loss(t, p)
    assert float(BCEDiceLoss()(t, p)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    expected2 = 2.0 * np_bce_map(t, p).mean() + 0.25 * np_dice_loss(t, p)
    got = BCEDiceLoss(bce_weight=2.0, dice_weight=0.25)(t, p)
    assert float(got) == pytest.approx(expected2, rel=1e-5, abs=1e-6)


def test_multiclass_sparse_equals_one_hot_and_matches_numpy(rng):
    ids = rng.integers(0, 3, size=(2, 6, 5))
    logits = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    onehot = np.eye(3, dtype=np.float32)[ids]
    for loss in (DiceLoss(), JaccardLoss(), BCEDiceLoss(), WeightedCrossentropy()):
        a = float(loss(ids, probs))
        b = float(loss(ids[..., None], probs))
        c = float(loss(onehot, probs))
        assert a == pytest.approx(b, abs=1e-6) and a == pytest.approx(c, abs=1e-6)
    ce = -(onehot * np.log(np.clip(probs, EPS, 1))).sum(-1).mean()
    assert float(WeightedCrossentropy()(ids, probs)) == pytest.approx(ce, rel=1e-5)
    assert float(DiceLoss()(ids, probs)) == pytest.approx(np_dice_loss(onehot, probs), abs=1e-6)
    # Excluding background averages over classes 1..2 only.
    assert float(DiceLoss(include_background=False)(ids, probs)) == pytest.approx(
        np_dice_loss(onehot[..., 1:], probs[..., 1:]), abs=1e-6)


def test_from_logits_equals_probabilities(rng):
    t = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
    z = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    p = 1 / (1 + np.exp(-z))
    for cls in (DiceLoss, JaccardLoss, BCEDiceLoss, WeightedCrossentropy):
        assert float(cls(from_logits=True)(t, z)) == pytest.approx(float(cls()(t, p)), rel=1e-4)


def test_weighted_cross_entropy_uses_pixel_weight_maps(rng):
    t = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
    p = rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype(np.float32)
    w = rng.uniform(0.5, 10.0, (2, 8, 8)).astype(np.float32)
    expected = (np_bce_map(t, p) * w).mean()
    loss = WeightedCrossentropy()
    assert float(loss(t, p, sample_weight=w)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(t, p, sample_weight=w[..., None])) == pytest.approx(expected, rel=1e-5)
    cw = WeightedCrossentropy(class_weights=[1.0, 3.0])
    expected_cw = (np_bce_map(t, p) * np.where(t[..., 0] > 0, 3.0, 1.0)).mean()
    assert float(cw(t, p)) == pytest.approx(expected_cw, rel=1e-5)
    # Weight maps also work with the overlap losses (each image's value on all its pixels).
    per_image = np.array([np_dice_loss(t[i:i + 1], p[i:i + 1]) for i in range(2)])
    expected_dice = (per_image[:, None, None] * w).mean()
    assert float(DiceLoss()(t, p, sample_weight=w)) == pytest.approx(expected_dice, rel=1e-5)


def test_losses_compute_in_float32_for_bfloat16_predictions():
    t, p = CASES["soft"]
    p16 = keras.ops.cast(p, "bfloat16")
    for loss in (DiceLoss(), BCEDiceLoss(), WeightedCrossentropy()):
        out = loss(t, p16)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert float(out) == pytest.approx(float(loss(t, p)), rel=1e-2)


@pytest.mark.parametrize("loss", [DiceLoss(smooth=0.5, include_background=False),
                                  JaccardLoss(smooth=2.0), BCEDiceLoss(0.3, 0.7),
                                  WeightedCrossentropy(class_weights=[1, 2], from_logits=True)])
def test_losses_serialize(loss):
    blob = keras.saving.serialize_keras_object(loss)
    back = keras.saving.deserialize_keras_object(blob)
    assert type(back) is type(loss)
    assert back.get_config() == loss.get_config()


def test_wrong_class_weight_length_is_explained():
    with pytest.raises(ValueError, match="class_weights"):
        WeightedCrossentropy(class_weights=[1.0, 2.0, 3.0])(CASES["soft"][0], CASES["soft"][1])
