"""Multi-class losses and metrics: ignore label, class weights, new losses, registry, NumPy
scoring; against NumPy formulas and Keras' own metrics."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import zf_unet

from zf_unet import losses as L
from zf_unet import metrics as M
from zf_unet.errors import DataError

EPS = 1e-7
IGN = 255


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def data(rng, k, shape=(2, 6, 7)):
    """Class-id targets (B, H, W, 1) with some IGN pixels, and probabilities (B, H, W, K')."""
    if k == 1:
        ids = (rng.random(shape) > 0.5).astype(np.float32)
        probs = rng.uniform(0.05, 0.95, shape + (1,)).astype(np.float32)
    else:
        ids = rng.integers(0, k, size=shape).astype(np.float32)
        probs = softmax(rng.normal(size=shape + (k,))).astype(np.float32)
    ignored = rng.random(shape) < 0.3
    ids[ignored] = IGN
    return ids[..., None], probs, ignored


def scramble(rng, probs, ignored):
    """Other probabilities at the ignored pixels only."""
    other = (rng.uniform(0.05, 0.95, probs.shape) if probs.shape[-1] == 1
             else softmax(rng.normal(size=probs.shape) * 3)).astype(np.float32)
    return np.where(ignored[..., None], other, probs)


def onehot_targets(ids, k, valid):
    """(B, H, W, max(K,1)) float targets, zero at ignored pixels."""
    t = ids[..., 0]
    if k == 1:
        return np.where(valid, t, 0)[..., None]
    return np.eye(k)[np.where(valid, t, 0).astype(int)] * valid[..., None]


def np_ce(t, p):
    """Per-pixel CE (B, H, W)."""
    if p.shape[-1] == 1:
        q = np.clip(p, EPS, 1 - EPS)
        return -(t * np.log(q) + (1 - t) * np.log(1 - q))[..., 0]
    return -(t * np.log(np.clip(p, EPS, 1))).sum(-1)


def np_focal(t, p, gamma):
    if p.shape[-1] == 1:
        q = np.clip(p, EPS, 1 - EPS)
        t, q = np.concatenate([1 - t, t], -1), np.concatenate([1 - q, q], -1)
    else:
        q = np.clip(p, EPS, 1)
    return -(t * (1 - q) ** gamma * np.log(q)).sum(-1)


def np_pixel_weights(t, cw):
    if t.shape[-1] == 1:
        return cw[0] * (1 - t[..., 0]) + cw[1] * t[..., 0]
    return (t * np.asarray(cw)).sum(-1)


def np_overlap_loss(t, p, valid, kind, smooth=1.0, alpha=0.5, beta=0.5, background=True):
    p = p * valid[..., None]
    if t.shape[-1] > 1 and not background:
        t, p = t[..., 1:], p[..., 1:]
    tp = (t * p).sum((1, 2))
    ts, ps = t.sum((1, 2)), p.sum((1, 2))
    if kind == "dice":
        score = (2 * tp + smooth) / (ts + ps + smooth)
    elif kind == "jaccard":
        score = (tp + smooth) / (ts + ps - tp + smooth)
    else:
        score = (2 * tp + smooth) / (2 * tp + 2 * alpha * (ps - tp) + 2 * beta * (ts - tp) + smooth)
    return float(np.mean(1 - score.mean(-1)))


def all_losses(k):
    cw = [0.5, 2.0] if k == 1 else [0.5, 2.0, 1.5][:k]
    return [L.DiceLoss(ignore_class=IGN), L.JaccardLoss(ignore_class=IGN),
            L.TverskyLoss(ignore_class=IGN), L.BCEDiceLoss(ignore_class=IGN, class_weights=cw),
            L.CEDiceLoss(ignore_class=IGN, class_weights=cw, include_background=False),
            L.Crossentropy(ignore_class=IGN, class_weights=cw),
            L.WeightedCrossentropy(ignore_class=IGN, class_weights=cw),
            L.FocalLoss(ignore_class=IGN, class_weights=cw)]


def all_metrics(k):
    return [M.DiceCoefficient(num_classes=k, ignore_class=IGN), M.IoU(num_classes=k, ignore_class=IGN),
            M.MeanIoU(k, ignore_class=IGN), M.ClassIoU(1, k, ignore_class=IGN)]


# ------------------------------------------------------------------ ignore label


@pytest.mark.parametrize("k", [1, 3])
def test_predictions_at_ignored_pixels_change_nothing(rng, k):
    ids, probs, ignored = data(rng, k)
    other = scramble(rng, probs, ignored)
    assert not np.allclose(other, probs)
    for loss in all_losses(k):
        a, b = float(loss(ids, probs)), float(loss(ids, other))
        assert np.isfinite(a) and a == pytest.approx(b, rel=1e-5, abs=1e-6), loss.name
    for metric in all_metrics(k):
        metric.update_state(ids, probs)
        a = float(metric.result())
        metric.reset_state()
        metric.update_state(ids, other)
        assert a == pytest.approx(float(metric.result()), abs=1e-6), metric.name


@pytest.mark.parametrize("k", [1, 3])
def test_losses_with_ignore_match_numpy_on_kept_pixels(rng, k):
    ids, probs, ignored = data(rng, k)
    valid = ~ignored
    t = onehot_targets(ids, k, valid)
    ce = np_ce(t, probs)
    cw = [0.5, 2.0] if k == 1 else [0.5, 2.0, 1.5]
    w = np_pixel_weights(t, cw) * valid
    # Plain CE: mean over kept pixels; class weights: PyTorch sum(w ce) / sum(w).
    assert float(L.Crossentropy(ignore_class=IGN)(ids, probs)) == pytest.approx(
        ce[valid].mean(), rel=1e-5)
    assert float(L.Crossentropy(class_weights=cw, ignore_class=IGN)(ids, probs)) == pytest.approx(
        (w * ce).sum() / w.sum(), rel=1e-5)
    # WeightedCrossentropy: the paper's energy, sum(w ce) / N_kept.
    assert float(L.WeightedCrossentropy(class_weights=cw, ignore_class=IGN)(ids, probs)) == \
        pytest.approx((w * ce).sum() / valid.sum(), rel=1e-5)
    for gamma in (0.0, 2.0):
        fl = np_focal(t, probs, gamma)
        assert float(L.FocalLoss(gamma, cw, IGN)(ids, probs)) == pytest.approx(
            (w * fl).sum() / w.sum(), rel=1e-5)
    for kind, loss in (("dice", L.DiceLoss(ignore_class=IGN)),
                       ("jaccard", L.JaccardLoss(ignore_class=IGN))):
        assert float(loss(ids, probs)) == pytest.approx(
            np_overlap_loss(t, probs, valid, kind), abs=1e-6)
    tv = L.TverskyLoss(alpha=0.3, beta=0.7, smooth=0.5, include_background=False,
                       ignore_class=IGN)
    assert float(tv(ids, probs)) == pytest.approx(np_overlap_loss(
        t, probs, valid, "tversky", 0.5, 0.3, 0.7, background=False), abs=1e-6)
    dice = np_overlap_loss(t, probs, valid, "dice", background=False)
    assert float(L.CEDiceLoss(0.7, 0.4, include_background=False, class_weights=cw,
                              ignore_class=IGN)(ids, probs)) == pytest.approx(
        0.7 * (w * ce).sum() / w.sum() + 0.4 * dice, rel=1e-5)


def test_sample_weight_maps_get_zero_weight_at_ignored_pixels(rng):
    ids, probs, ignored = data(rng, 3)
    valid = ~ignored
    sw = rng.uniform(0.5, 10.0, ids.shape[:3]).astype(np.float32)
    ce = np_ce(onehot_targets(ids, 3, valid), probs)
    expected = (sw * ce * valid).sum() / valid.sum()
    got = L.WeightedCrossentropy(ignore_class=IGN)(ids, probs, sample_weight=sw)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # Overlap losses: each image's value on its kept pixels only (mean unchanged).
    d = L.DiceLoss(ignore_class=IGN)
    sw_other = np.where(ignored, 1e3, sw).astype(np.float32)
    assert float(d(ids, probs, sample_weight=sw)) == pytest.approx(
        float(d(ids, probs, sample_weight=sw_other)), rel=1e-6)


def test_metrics_with_ignore_match_numpy_confusion(rng):
    ids, probs, ignored = data(rng, 4, shape=(3, 9, 8))
    true, pred = ids[..., 0], probs.argmax(-1)
    cm = M.confusion_matrix(pred, true, 4, ignore_index=IGN)
    assert cm.sum() == (~ignored).sum()
    scores = M.class_scores(cm)
    miou = M.MeanIoU(4, ignore_class=IGN)
    miou.update_state(ids, probs)
    assert float(miou.result()) == pytest.approx(scores["miou"], abs=1e-6)
    ref = keras.metrics.MeanIoU(num_classes=4, ignore_class=IGN)
    ref.update_state(true, pred)
    assert float(miou.result()) == pytest.approx(float(ref.result()), abs=1e-6)
    for c in range(4):
        ci = M.ClassIoU(c, 4, ignore_class=IGN)
        assert ci.name == f"iou_{c}"
        ci.update_state(ids, probs)
        kref = keras.metrics.IoU(num_classes=4, target_class_ids=[c], ignore_class=IGN)
        kref.update_state(true, pred)
        assert float(ci.result()) == pytest.approx(float(kref.result()), abs=1e-6)
        assert float(ci.result()) == pytest.approx(scores["iou"][c], abs=1e-6)
    dice = M.DiceCoefficient(num_classes=4, ignore_class=IGN)
    dice.update_state(ids, probs)
    assert float(dice.result()) == pytest.approx(np.nanmean(scores["dice"]), abs=1e-6)


def test_mean_iou_matches_keras_and_binary_thresholds(rng):
    ids = rng.integers(0, 3, size=(2, 8, 8))
    probs = softmax(rng.normal(size=(2, 8, 8, 3))).astype(np.float32)
    m = M.MeanIoU(3)
    m.update_state(ids[..., None], probs)
    m.update_state(np.eye(3, dtype=np.float32)[ids], probs)  # one-hot targets too
    ref = keras.metrics.MeanIoU(num_classes=3)
    ref.update_state(ids, probs.argmax(-1))
    ref.update_state(ids, probs.argmax(-1))
    assert float(m.result()) == pytest.approx(float(ref.result()), abs=1e-6)
    t = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
    p = rng.random((2, 8, 8, 1)).astype(np.float32)
    b = M.MeanIoU(1, threshold=0.3)
    b.update_state(t, p)
    kb = keras.metrics.MeanIoU(num_classes=2)
    kb.update_state(t[..., 0], (p[..., 0] > 0.3).astype(np.int32))
    assert float(b.result()) == pytest.approx(float(kb.result()), abs=1e-6)
    fg = M.ClassIoU(1, 1)
    fg.update_state(t, p)
    tt, pp = t[..., 0] > 0, p[..., 0] > 0.5
    assert float(fg.result()) == pytest.approx((tt & pp).sum() / (tt | pp).sum(), abs=1e-6)


def test_targets_out_of_range_still_raise_with_ignore_index():
    probs = np.full((1, 2, 2, 3), 1 / 3, np.float32)
    bad = np.array([[[0, 7], [255, 1]]], np.float32)
    with pytest.raises(DataError, match=r"0\.\.2 for a 3-class y_pred or 255 \(ignore_index\)"):
        L.CEDiceLoss(ignore_class=255)(bad, probs)
    with pytest.raises(DataError):
        M.MeanIoU(3, ignore_class=255).update_state(bad, probs)
    ok = np.array([[[0, 2], [3, 1]]], np.float32)  # ignore_class = K
    assert np.isfinite(float(L.FocalLoss(ignore_class=3)(ok, probs)))
    with pytest.raises(ValueError, match="ignore_index"), pytest.warns(DeprecationWarning):
        L.DiceLoss(ignore_index=0.5)
    with pytest.raises(ValueError, match="must be an integer or None"):
        L.DiceLoss(ignore_class=0.5)


# ------------------------------------------------------------------ equivalences


def test_focal_gamma_zero_is_cross_entropy_and_tversky_half_is_dice(rng):
    for k in (1, 3):
        ids, probs, _ = data(rng, k)
        ids = np.where(ids == IGN, 0, ids)
        cw = [1.0, 3.0] if k == 1 else [1.0, 3.0, 0.5]
        for kw in ({}, {"class_weights": cw}):
            assert float(L.FocalLoss(gamma=0.0, **kw)(ids, probs)) == pytest.approx(
                float(L.Crossentropy(**kw)(ids, probs)), rel=1e-5)
        logits = np.log(probs) if k > 1 else np.log(probs / (1 - probs))
        assert float(L.FocalLoss(gamma=0.0, from_logits=True)(ids, logits)) == pytest.approx(
            float(L.Crossentropy()(ids, probs)), rel=1e-4)
        assert float(L.FocalLoss(gamma=2.0, from_logits=True)(ids, logits)) == pytest.approx(
            float(L.FocalLoss(gamma=2.0)(ids, probs)), rel=1e-4)
        assert float(L.FocalLoss(gamma=2.0)(ids, probs)) < float(L.Crossentropy()(ids, probs))
        for smooth in (0.0, 1.0):
            assert float(L.TverskyLoss(0.5, 0.5, smooth=smooth)(ids, probs)) == pytest.approx(
                float(L.DiceLoss(smooth=smooth)(ids, probs)), abs=1e-6)


def test_ce_dice_equals_bce_dice_for_one_class(rng):
    ids, probs, _ = data(rng, 1)
    a = L.CEDiceLoss(ce_weight=0.5, dice_weight=1.0)(np.where(ids == IGN, 1, ids), probs)
    assert float(a) == pytest.approx(float(L.BCEDiceLoss()(np.where(ids == IGN, 1, ids), probs)))
    for kw in ({"ignore_class": IGN}, {"class_weights": [1.0, 4.0], "ignore_class": IGN}):
        a = L.CEDiceLoss(ce_weight=0.5, dice_weight=1.0, **kw)(ids, probs)
        b = L.BCEDiceLoss(**kw)(ids, probs)
        assert float(a) == pytest.approx(float(b), rel=1e-6)


# ------------------------------------------------------------------ class weights


def test_median_frequency_weights_by_hand():
    masks = [np.array([[0, 0], [0, 1]]), np.array([[0, 2], [2, 255]])]
    pixels, image_pixels = zf_unet.data.class_pixel_counts(masks, 4, ignore_index=255)
    assert pixels.tolist() == [4, 1, 2, 0]
    assert image_pixels.tolist() == [7, 4, 3, 0]
    # freq = 4/7, 1/4, 2/3; median 4/7; class 3 unseen -> 1.
    w = zf_unet.data.median_frequency_weights(pixels, image_pixels)
    assert w == pytest.approx([1.0, (4 / 7) / (1 / 4), (4 / 7) / (2 / 3), 1.0])
    pixels, image_pixels = zf_unet.data.class_pixel_counts([np.array([[[0.0], [1.0]], [[1.0], [1.0]]])], 1)
    assert pixels.tolist() == [1, 3] and image_pixels.tolist() == [4, 4]
    with pytest.raises(ValueError, match="median_frequency_weights"):
        L.CEDiceLoss(class_weights="auto")
    with pytest.raises(ValueError, match="class ids"):
        zf_unet.data.class_pixel_counts([np.array([[0, 5]])], 3)


# ------------------------------------------------------------------ NumPy scoring


def test_confusion_matrix_and_class_scores_by_hand():
    true = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = M.confusion_matrix(pred, true, 4, ignore_index=255)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 0] = 1, 1, 2, 1
    assert cm.dtype == np.int64 and (cm == expected).all()
    stacked = M.confusion_matrix(np.stack([pred, pred]), np.stack([true, true]), 4, 255)
    assert (stacked == 2 * cm).all()
    s = M.class_scores(cm)
    assert s["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and np.isnan(s["iou"][3])
    assert s["dice"][:3] == pytest.approx([0.5, 0.8, 0.0])
    # Class 2 is predicted only at the ignored pixel: never predicted -> precision NaN.
    assert s["precision"][:2] == pytest.approx([0.5, 2 / 3]) and np.isnan(s["precision"][2])
    assert s["recall"][:2] == pytest.approx([0.5, 1.0]) and s["recall"][2] == 0.0
    assert np.isnan(s["precision"][3]) and np.isnan(s["recall"][3])
    assert s["support"] == [2, 2, 1, 0]
    assert s["miou"] == pytest.approx(1 / 3)  # classes 0..2 present, class 3 left out
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["mean_class_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="true_labels"):
        M.confusion_matrix(pred, true, 3)


# ------------------------------------------------------------------ registry, serialization


def test_registry_get():
    assert isinstance(L.get("ce_dice", ce_weight=2.0), L.CEDiceLoss)
    assert L.get("ce_dice", ce_weight=2.0).ce_weight == 2.0
    for name, cls in L.LOSSES.items():
        assert type(L.get(name)) is cls
    loss = L.FocalLoss(gamma=1.0)
    assert L.get(loss) is loss
    back = L.get(keras.saving.serialize_keras_object(L.TverskyLoss(0.2, 0.8, ignore_class=7)))
    assert isinstance(back, L.TverskyLoss) and back.alpha == 0.2 and back.ignore_class == 7
    with pytest.raises(ValueError, match="did you mean 'focal'"):
        L.get("focall")


@pytest.mark.parametrize("obj", [
    L.CEDiceLoss(0.3, 0.7, class_weights=[1, 2, 3], ignore_class=255),
    L.FocalLoss(1.5, [1, 2], 3, from_logits=True), L.TverskyLoss(0.2, 0.8, ignore_class=9),
    L.Crossentropy([1, 2], ignore_class=-1), L.DiceLoss(ignore_class=255),
    M.MeanIoU(3, ignore_class=255), M.ClassIoU(2, 3, ignore_class=255),
    M.DiceCoefficient(3, ignore_class=255)])
def test_new_objects_serialize(obj):
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(back) is type(obj) and back.get_config() == obj.get_config()


def test_fit_mixed_bfloat16_and_keras_round_trip(rng, tmp_path):
    k = 3
    x = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, k, size=(4, 8, 8, 1)).astype(np.float32)
    y[:, :2] = IGN
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inp = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
        out = keras.layers.Conv2D(k, 1, activation="softmax", dtype="float32")(h)
        model = keras.Model(inp, out)
        model.compile("adam", loss=L.CEDiceLoss(class_weights=[1.0, 2.0, 0.5], ignore_class=IGN),
                      metrics=[M.MeanIoU(k, ignore_class=IGN), M.ClassIoU(1, k, ignore_class=IGN),
                               M.DiceCoefficient(k, ignore_class=IGN)])
        hist = model.fit(x, y, batch_size=2, epochs=2, verbose=0)
        assert all(np.isfinite(v).all() for v in hist.history.values())
        before = model.evaluate(x, y, verbose=0, return_dict=True)
        path = tmp_path / "m.keras"
        model.save(path)
    finally:
        keras.config.set_dtype_policy(previous)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, L.CEDiceLoss) and loaded.loss.ignore_class == IGN
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert set(after) == set(before)
    for key in before:
        assert after[key] == pytest.approx(before[key], rel=1e-4, abs=1e-5), key


def test_ignore_class_is_the_keras_name_and_ignore_index_its_deprecated_alias():
    for make in (lambda **kw: L.DiceLoss(**kw), lambda **kw: L.CEDiceLoss(**kw),
                 lambda **kw: L.Crossentropy(**kw), lambda **kw: M.MeanIoU(3, **kw),
                 lambda **kw: M.IoU(num_classes=3, **kw), lambda **kw: M.ClassIoU(1, 3, **kw)):
        new = make(ignore_class=255)
        assert new.ignore_class == 255 and new.get_config()["ignore_class"] == 255
        assert "ignore_index" not in new.get_config()
        with pytest.warns(DeprecationWarning, match="ignore_index is deprecated"):
            old = make(ignore_index=255)
        assert old.ignore_class == 255
        with pytest.warns(DeprecationWarning, match="use ignore_class"):
            assert old.ignore_index == 255
        with pytest.raises(ValueError, match="got both ignore_class=255 and its deprecated "
                                             "alias ignore_index=7"):
            make(ignore_class=255, ignore_index=7)


def test_old_configs_with_ignore_index_still_load(tmp_path):
    """Configs written before the rename (``ignore_index``, ``CrossEntropy``) deserialize,
    without a warning, to the new names."""
    import warnings

    old_loss = {"module": None, "class_name": "CrossEntropy", "registered_name":
                "zf_unet>CrossEntropy", "config": {"name": "cross_entropy", "reduction":
                                                   "sum_over_batch_size", "from_logits": False,
                                                   "ignore_index": 255, "class_weights": None}}
    old_metric = {"module": None, "class_name": "MeanIoU", "registered_name": "zf_unet>MeanIoU",
                  "config": {"name": "miou", "dtype": "float32", "num_classes": 3,
                             "ignore_index": 255, "threshold": 0.5, "from_logits": False}}
    old_weighted = dict(old_loss, class_name="WeightedCrossEntropy",
                        registered_name="zf_unet>WeightedCrossEntropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loss = keras.saving.deserialize_keras_object(old_loss)
        weighted = keras.saving.deserialize_keras_object(old_weighted)
        metric = keras.saving.deserialize_keras_object(old_metric)
        direct = M.ClassIoU.from_config({"class_id": 1, "num_classes": 3, "ignore_index": 9})
    assert type(loss) is L.Crossentropy and loss.ignore_class == 255
    assert type(weighted) is L.WeightedCrossentropy and weighted.ignore_class == 255
    assert isinstance(metric, M.MeanIoU) and metric.ignore_class == 255
    assert direct.ignore_class == 9
    # A model saved with the new names loads back to them.
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.Conv2D(3, 1, activation="softmax")(inp))
    model.compile("adam", loss=L.WeightedCrossentropy(ignore_class=255),
                  metrics=[M.MeanIoU(3, ignore_class=255)])
    model.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras")
    assert type(back.loss) is L.WeightedCrossentropy and back.loss.ignore_class == 255


def test_old_crossentropy_names_are_deprecated_aliases():
    with pytest.warns(DeprecationWarning, match=r"zf_unet.losses.CrossEntropy is deprecated; "
                                                r"use zf_unet.losses.Crossentropy"):
        assert L.CrossEntropy is L.Crossentropy
    with pytest.warns(DeprecationWarning, match="WeightedCrossentropy"):
        assert L.WeightedCrossEntropy is L.WeightedCrossentropy
    assert zf_unet.registry.LOSSES["ce"] is L.Crossentropy
    assert zf_unet.registry.LOSSES["weighted_ce"] is L.WeightedCrossentropy


def test_bce_dice_and_ce_dice_share_one_default_and_one_implementation(rng):
    """Both default to U-Net++'s hybrid 0.5 * CE + Dice (what the configs and the README
    use) and compute the same loss for one class; BCEDiceLoss only names the weight."""
    assert L.CEDiceLoss().ce_weight == L.BCEDiceLoss().bce_weight == 0.5
    assert L.CEDiceLoss().dice_weight == L.BCEDiceLoss().dice_weight == 1.0
    assert L.BCEDiceLoss.call is L.CEDiceLoss.call
    probs = rng.uniform(0.05, 0.95, (2, 6, 6, 1)).astype(np.float32)
    ids = (rng.random((2, 6, 6, 1)) > 0.5).astype(np.float32)
    assert float(L.CEDiceLoss()(ids, probs)) == pytest.approx(float(L.BCEDiceLoss()(ids, probs)))
    config = L.BCEDiceLoss(0.3).get_config()
    assert config["bce_weight"] == 0.3 and "ce_weight" not in config
    assert L.BCEDiceLoss.from_config(config).bce_weight == 0.3


def test_class_weights_auto_points_to_the_data_package():
    with pytest.raises(ValueError, match=r"zf_unet\.data\.class_pixel_counts and "
                                         r"zf_unet\.data\.median_frequency_weights"):
        L.CEDiceLoss(class_weights="auto")
