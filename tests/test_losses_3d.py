"""Losses, Keras metrics, target checks and NumPy scores on volumes (5-D tensors).

A 5-D value must equal the value of the same data reshaped to 2-D in a way that keeps every
per-image sum: ``(B, D, H, W, K) -> (B, D*H, W, K)`` (each volume stays one "image"), plus
hand-computed 3-D Dice / IoU values on a tiny volume.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from zf_unet import losses as L
from zf_unet import metrics as M
from zf_unet.errors import DataError
from zf_unet.registry import LOSSES

IGN = 255
SHAPE = (2, 3, 4, 5)  # (B, D, H, W)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def to_2d(x: np.ndarray | None) -> np.ndarray | None:
    """(B, D, H, W, ...) -> (B, D*H, W, ...): the volume's voxels as one image per sample."""
    if x is None:
        return None
    b, d, h, w = x.shape[:4]
    return x.reshape((b, d * h, w) + x.shape[4:])


def volume_data(rng: np.random.Generator, k: int, target: str, ignore: bool):
    """``(y_true, y_pred_probs, logits)`` for a ``k``-channel model on ``SHAPE`` volumes;
    ``target``: ``"plain"`` (B, D, H, W), ``"channel"`` (B, D, H, W, 1) or ``"onehot"``
    (B, D, H, W, k) (soft binary targets for k = 1)."""
    logits = rng.normal(size=SHAPE + (k,)).astype(np.float32) * 2
    if k == 1:
        probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
        ids = (rng.random(SHAPE) > 0.5).astype(np.float32)
    else:
        probs = softmax(logits).astype(np.float32)
        ids = rng.integers(0, k, size=SHAPE).astype(np.float32)
    if target == "onehot":  # C=1: soft binary targets (B, D, H, W, 1) in [0, 1]
        assert not ignore
        if k == 1:
            return rng.random(SHAPE + (1,)).astype(np.float32), probs, logits
        return np.eye(k, dtype=np.float32)[ids.astype(int)], probs, logits
    if ignore:
        ids[rng.random(SHAPE) < 0.25] = IGN
    return (ids if target == "plain" else ids[..., None]), probs, logits


def loss_configs(k: int) -> list[dict]:
    """Keyword variants for every registered loss (built by name through ``losses.get``)."""
    cw = [0.5, 2.0] if k == 1 else [0.5, 1.0, 2.5][:k]
    out = []
    for name, cls in LOSSES.items():
        out.append({"name": name})
        out.append({"name": name, "ignore_class": IGN})
        out.append({"name": name, "from_logits": True, "ignore_class": IGN})
        params = cls.__init__.__code__.co_varnames
        if "class_weights" in params:
            out.append({"name": name, "class_weights": cw, "ignore_class": IGN})
        if "include_background" in params and k > 1:
            out.append({"name": name, "include_background": False, "smooth": 0.5})
    return out


def _id(cfg: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in cfg.items())


CASES = [(k, cfg) for k in (1, 3) for cfg in loss_configs(k)]


@pytest.mark.parametrize(("k", "cfg"), CASES, ids=[f"k{k}-{_id(c)}" for k, c in CASES])
def test_every_loss_on_volumes_equals_the_reshaped_2d_value(k, cfg):
    rng = np.random.default_rng(7)
    kwargs = dict(cfg)
    loss = L.get(kwargs.pop("name"), **kwargs)
    ignore = kwargs.get("ignore_class") is not None
    weight = rng.uniform(0.5, 3.0, SHAPE).astype(np.float32)
    targets = ("plain", "channel") if ignore else ("plain", "channel", "onehot")
    for target in targets:
        y_true, probs, logits = volume_data(rng, k, target, ignore)
        y_pred = logits if kwargs.get("from_logits") else probs
        v3 = float(loss(y_true, y_pred))
        v2 = float(loss(to_2d(y_true), to_2d(y_pred)))
        assert np.isfinite(v3)
        assert v3 == pytest.approx(v2, abs=1e-5, rel=1e-5), target
        for sw in (weight, weight[..., None]):  # per-voxel weights (B, D, H, W[, 1])
            w3 = float(loss(y_true, y_pred, sample_weight=sw))
            w2 = float(loss(to_2d(y_true), to_2d(y_pred), sample_weight=to_2d(sw)))
            assert w3 == pytest.approx(w2, abs=1e-5, rel=1e-5), target
        # the per-voxel map has the volume's shape
        assert tuple(loss.call(tf.constant(y_true), tf.constant(y_pred)).shape) == SHAPE


def test_overlap_losses_are_per_volume_not_per_section():
    """Dice of a volume is one value over all its voxels, not a mean over its sections."""
    t = np.zeros((1, 2, 2, 2, 1), np.float32)
    t[0, 0, 0, 0] = 1.0  # one foreground voxel, in the first section
    p = np.full_like(t, 0.5)
    # intersection 0.5, |T| = 1, |P| = 4 -> Dice 0.2 (a mean over the sections: 1/6)
    assert float(L.DiceLoss(smooth=0.0)(t, p)) == pytest.approx(0.8, abs=1e-6)
    # IoU 0.5 / 4.5
    assert float(L.JaccardLoss(smooth=0.0)(t, p)) == pytest.approx(1 - 1 / 9, abs=1e-6)


def test_hand_computed_dice_and_iou_on_a_tiny_volume():
    truth = np.zeros((2, 2, 2), np.float32)
    truth[0, 0, 0] = truth[0, 1, 1] = truth[1, 0, 1] = 1  # |T| = 3
    pred = np.zeros((2, 2, 2), np.float32)
    pred[0, 0, 0] = pred[1, 0, 1] = pred[1, 1, 1] = pred[1, 1, 0] = 1  # |P| = 4, TP = 2
    dice, iou = 2 * 2 / (3 + 4), 2 / (3 + 4 - 2)
    t5, p5 = truth[None, ..., None], pred[None, ..., None]
    assert float(L.DiceLoss(smooth=0.0)(t5, p5)) == pytest.approx(1 - dice, abs=1e-6)
    assert float(L.JaccardLoss(smooth=0.0)(t5, p5)) == pytest.approx(1 - iou, abs=1e-6)
    assert float(L.TverskyLoss(0.5, 0.5, smooth=0.0)(t5, p5)) == pytest.approx(1 - dice,
                                                                                abs=1e-6)
    for metric, value in ((M.DiceCoefficient(), dice), (M.IoU(), iou)):
        metric.update_state(t5, p5)
        assert float(metric.result()) == pytest.approx(value, abs=1e-6)
    # NumPy scores count voxels
    assert M.dice_score(pred, truth) == pytest.approx(dice)
    assert M.iou_score(pred, truth) == pytest.approx(iou)
    assert M.pixel_error(pred, truth) == pytest.approx(1 - dice)
    assert M.misclassification_rate(pred, truth) == pytest.approx(3 / 8)  # FP 2 + FN 1
    assert M.pixel_counts(pred[..., None], truth) == (2.0, 2.0, 1.0)
    # two classes through the multi-class path: class 1 = the foreground above
    probs = np.stack([1 - pred, pred], -1)[None]
    mc = M.DiceCoefficient(num_classes=2, target_class_ids=[1])
    mc.update_state(truth[None].astype(np.int32), probs)
    assert float(mc.result()) == pytest.approx(dice, abs=1e-6)


def metric_instances(k: int) -> list[keras.metrics.Metric]:
    n = max(2, k)
    return [M.DiceCoefficient(num_classes=k), M.IoU(num_classes=k),
            M.MeanIoU(num_classes=k), M.ClassIoU(class_id=1, num_classes=k),
            M.DiceCoefficient(num_classes=k, ignore_class=IGN),
            M.MeanIoU(num_classes=k, ignore_class=IGN),
            M.ClassIoU(class_id=n - 1, num_classes=k, ignore_class=IGN, from_logits=True)]


@pytest.mark.parametrize("k", [1, 3])
def test_every_metric_on_volumes_equals_the_reshaped_2d_value(k):
    rng = np.random.default_rng(3)
    weight = rng.uniform(0.5, 2.0, SHAPE).astype(np.float32)
    for i in range(len(metric_instances(k))):
        for target in ("plain", "channel", "onehot"):
            m3, m2 = metric_instances(k)[i], metric_instances(k)[i]
            ignore = m3.ignore_class is not None
            if ignore and target == "onehot":
                continue
            for step in range(2):  # streaming over two batches
                y_true, probs, logits = volume_data(rng, k, target, ignore)
                y_pred = logits if m3.from_logits else probs
                sw = weight if step else None
                m3.update_state(y_true, y_pred, sample_weight=sw)
                m2.update_state(to_2d(y_true), to_2d(y_pred), sample_weight=to_2d(sw))
            v3, v2 = float(m3.result()), float(m2.result())
            assert np.isfinite(v3) and v3 == pytest.approx(v2, abs=1e-5), (m3.name, target)


def test_losses_and_metrics_in_a_graph_with_unknown_volume_sizes():
    """Inside ``tf.function`` with only the channel static (what model.fit traces)."""
    rng = np.random.default_rng(5)
    y_true, probs, _ = volume_data(rng, 3, "channel", ignore=True)
    spec_t = tf.TensorSpec([None, None, None, None, 1], tf.float32)
    spec_p = tf.TensorSpec([None, None, None, None, 3], tf.float32)
    for loss in (L.CEDiceLoss(ignore_class=IGN), L.JaccardLoss(ignore_class=IGN),
                 L.FocalLoss(ignore_class=IGN, class_weights=[1.0, 2.0, 3.0])):
        graph = tf.function(lambda a, b, fn=loss: fn(a, b), input_signature=[spec_t, spec_p])
        assert float(graph(y_true, probs)) == pytest.approx(float(loss(y_true, probs)),
                                                            abs=1e-5)
    metric = M.MeanIoU(num_classes=3, ignore_class=IGN)
    tf.function(metric.update_state, input_signature=[spec_t, spec_p])(y_true, probs)
    eager = M.MeanIoU(num_classes=3, ignore_class=IGN)
    eager.update_state(y_true, probs)
    assert float(metric.result()) == pytest.approx(float(eager.result()), abs=1e-6)


def test_a_3d_model_trains_with_the_losses_and_metrics():
    """One ``fit`` step of a tiny Conv3D model on (B, D, H, W, 1) data with voxel weights."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    x = rng.random((2, 4, 8, 8, 1)).astype(np.float32)
    y = (x > 0.5).astype(np.float32)
    w = rng.uniform(0.5, 2.0, (2, 4, 8, 8)).astype(np.float32)
    inp = keras.Input((None, None, None, 1))
    out = keras.layers.Conv3D(1, 3, padding="same", activation="sigmoid")(inp)
    model = keras.Model(inp, out)
    model.compile("adam", loss=L.BCEDiceLoss(), metrics=[M.DiceCoefficient(), M.IoU()])
    hist = model.fit(x, y, sample_weight=w, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert 0.0 <= hist.history["dice"][0] <= 1.0


# --------------------------------------------------------------------------- target checks


def test_target_check_messages_name_the_volume_axes():
    p = np.full((1, 2, 4, 4, 3), 0.3, np.float32)
    with pytest.raises(DataError, match=r"y_true has shape \(1, 2, 4, 4, 2\) but y_pred has "
                                        r"shape \(1, 2, 4, 4, 3\): expected y_true "
                                        r"\(B, D, H, W\) or \(B, D, H, W, 1\) class ids or "
                                        r"\(B, D, H, W, 3\) one-hot"):
        L.DiceLoss()(np.zeros((1, 2, 4, 4, 2), np.float32), p)
    with pytest.raises(DataError, match=r"the \(batch, depth, height, width\) of the targets "
                                        "must equal those of the predictions"):
        L.DiceLoss()(np.zeros((1, 3, 4, 4), np.float32), p)
    with pytest.raises(DataError, match=r"class ids must be in 0\.\.2 for a 3-class y_pred"):
        L.CEDiceLoss()(np.full((1, 2, 4, 4), 3, np.float32), p)
    spec = tf.TensorSpec([None, None, None, None, 1], tf.float32)
    graph = tf.function(lambda a, b: L.DiceLoss()(a, b), input_signature=[spec, spec])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"y_true: its shape must fit that of y_pred \(the same batch, "
                             r"depth, height and width\)"):
        graph(np.zeros((1, 2, 4, 3, 1), np.float32), np.zeros((1, 2, 4, 4, 1), np.float32))


# --------------------------------------------------------------------------- NumPy scores


def test_confusion_matrix_and_class_scores_on_volumes():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (4, 5, 6))
    pred = rng.integers(0, 3, (4, 5, 6))
    truth[0, 0, :3] = IGN
    cm = M.confusion_matrix(pred, truth, 3, ignore_index=IGN)
    per_section = sum(M.confusion_matrix(pred[z], truth[z], 3, ignore_index=IGN)
                      for z in range(4))
    np.testing.assert_array_equal(cm, per_section)
    assert cm.sum() == truth.size - 3
    scores = M.class_scores(cm)
    assert 0.0 <= scores["miou"] <= 1.0


def test_binary_scores_on_volumes_sum_the_section_counts():
    rng = np.random.default_rng(2)
    prob = rng.random((3, 8, 8))
    truth = rng.random((3, 8, 8)) > 0.5
    counts = np.sum([M.pixel_counts(prob[z], truth[z], 0.4) for z in range(3)], axis=0)
    assert M.pixel_counts(prob, truth, 0.4) == tuple(counts)
    assert M.pixel_counts(prob[..., None], truth[..., None], 0.4) == tuple(counts)
    assert M.pixel_error(prob, truth, 0.4) == pytest.approx(M.f_error(*counts))
    with pytest.raises(ValueError, match=r"pred must be a 2-D .* or a 3-D volume .* got shape "
                                         r"\(2, 3, 8, 8\)"):
        M.pixel_error(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="pred shape"):
        M.pixel_error(prob, truth[:2])


def test_cells_in_3d_connect_across_sections():
    vol = np.zeros((2, 5, 5), np.uint8)
    vol[0, 1, 1:3] = 1
    vol[1, 1, 2:4] = 1  # overlaps the first along z: one 3-D cell
    vol[1, 4, 4] = 1
    labels = M.label_cells(vol)
    assert labels.shape == (2, 5, 5) and labels.max() == 2
    assert labels[0, 1, 1] == labels[1, 1, 3]
    diag = np.zeros((2, 2, 2), np.uint8)
    diag[0, 0, 0] = diag[1, 1, 1] = 1  # corner neighbours
    assert M.label_cells(diag, connectivity=1).max() == 2
    assert M.label_cells(diag, connectivity=2).max() == 2
    assert M.label_cells(diag, connectivity=3).max() == 1
    # Rand error / VI on volumes: 0 for identical segmentations, > 0 for a merge
    assert M.rand_error(vol, vol) == 0.0
    assert M.variation_of_information(vol, vol) == pytest.approx(0.0, abs=1e-12)
    merged = vol.copy()
    merged[1, 2, 3:5] = merged[1, 3, 4] = 1  # a bridge from the first cell to the second
    assert M.label_cells(merged).max() == 1
    assert M.rand_error(merged, vol) > 0
    # labels given as volumes are used as they are
    assert M.rand_error(labels, labels, pred_is_labels=True, truth_is_labels=True) == 0.0
    with pytest.raises(ValueError, match="integer cell labels"):
        M.rand_pair_counts(labels.astype(float), labels)


def test_score_thresholds_accepts_volumes():
    rng = np.random.default_rng(4)
    truth = np.zeros((2, 12, 12), np.uint8)
    truth[:, 2:5, 2:5] = 1
    truth[:, 7:10, 6:11] = 1
    prob = np.clip(truth + rng.normal(0, 0.2, truth.shape), 0, 1)
    out = M.score_thresholds([prob], [truth], thresholds=(0.5,))
    assert out["best"]["rand_error"] == pytest.approx(M.rand_error(prob, truth))
    assert out["best"]["pixel_error"] == pytest.approx(M.pixel_error(prob, truth))
