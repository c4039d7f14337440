"""Keras metrics and ISBI-style NumPy scores against independent references."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy import ndimage

from zf_unet import metrics as M


def np_dice(p, t):
    return 2 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def test_dice_and_iou_metrics_match_numpy_and_accumulate(rng):
    t1, t2 = rng.random((2, 16, 16, 1)) > 0.4, rng.random((3, 16, 16, 1)) > 0.6
    p1, p2 = rng.random((2, 16, 16, 1)).astype(np.float32), rng.random((3, 16, 16, 1)).astype(np.float32)
    dice, iou = M.DiceCoefficient(), M.IoU()
    for t, p in ((t1, p1), (t2, p2)):
        dice.update_state(t.astype(np.float32), p)
        iou.update_state(t.astype(np.float32), p)
    t = np.concatenate([t1.ravel(), t2.ravel()])
    p = np.concatenate([p1.ravel(), p2.ravel()]) > 0.5
    assert float(dice.result()) == pytest.approx(np_dice(p, t), abs=1e-6)
    inter, union = np.logical_and(p, t).sum(), np.logical_or(p, t).sum()
    assert float(iou.result()) == pytest.approx(inter / union, abs=1e-6)
    # Agrees with Keras' own BinaryIoU on the foreground.
    ref = keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5)
    ref.update_state(t1.astype(np.float32), p1)
    ref.update_state(t2.astype(np.float32), p2)
    assert float(iou.result()) == pytest.approx(float(ref.result()), abs=1e-6)


def test_metric_hand_cases():
    t = np.zeros((1, 4, 4, 1), np.float32)
    t[0, :2] = 1
    d = M.DiceCoefficient()
    d.update_state(t, t)
    assert float(d.result()) == pytest.approx(1.0)
    d.reset_state()
    d.update_state(t, 1 - t)  # disjoint
    assert float(d.result()) == pytest.approx(0.0)
    d.reset_state()
    d.update_state(np.zeros_like(t), np.zeros_like(t))  # empty vs empty: class absent
    assert float(d.result()) == pytest.approx(0.0)


def test_multiclass_metrics_with_sparse_and_one_hot(rng):
    ids = rng.integers(0, 3, size=(2, 8, 8))
    probs = rng.random((2, 8, 8, 3)).astype(np.float32)
    pred = probs.argmax(-1)
    expected = np.mean([np_dice(pred == c, ids == c) for c in range(3)])
    for y in (ids, ids[..., None], np.eye(3, dtype=np.float32)[ids]):
        m = M.DiceCoefficient(num_classes=3)
        m.update_state(y, probs)
        assert float(m.result()) == pytest.approx(expected, abs=1e-6)
    iou = M.IoU(num_classes=3, target_class_ids=[1, 2])
    iou.update_state(ids, probs)
    exp_iou = np.mean([np.logical_and(pred == c, ids == c).sum() / np.logical_or(pred == c, ids == c).sum()
                       for c in (1, 2)])
    assert float(iou.result()) == pytest.approx(exp_iou, abs=1e-6)


def test_metrics_serialize():
    m = M.DiceCoefficient(num_classes=3, target_class_ids=[1, 2], name="dsc")
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
    assert isinstance(back, M.DiceCoefficient) and back.get_config() == m.get_config()


# ------------------------------------------------------------------ ISBI-style NumPy scores


def ref_isbi_rand_counts(gt, seg):
    """ISBI 2012 foreground-restricted Rand (TP, FP, FN) by enumerating every ordered pixel pair.

    Pairs of pixels inside true cells (gt > 0), self-pairs included; a pixel the segmentation
    leaves at 0 is a segment of its own (it only pairs with itself).
    """
    keep = gt.ravel() > 0
    g, s = gt.ravel()[keep], seg.ravel()[keep]
    idx = np.arange(g.size)
    same_true = g[:, None] == g[None, :]
    same_seg = ((s[:, None] == s[None, :]) & (s[:, None] > 0)) | (idx[:, None] == idx[None, :])
    tp = np.sum(same_true & same_seg)
    return tp, same_seg.sum() - tp, same_true.sum() - tp


def ref_isbi_rand_error(gt, seg):
    tp, fp, fn = ref_isbi_rand_counts(gt, seg)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 1 - 2 * precision * recall / (precision + recall)


def ref_vi(gt, seg):
    keep = gt.ravel() > 0
    g, s = gt.ravel()[keep], seg.ravel()[keep].astype(np.int64)
    s = np.where(s > 0, s, -1 - np.arange(s.size))  # unassigned pixels: one segment each
    _, gi = np.unique(g, return_inverse=True)
    _, si = np.unique(s, return_inverse=True)
    table = np.zeros((gi.max() + 1, si.max() + 1))
    np.add.at(table, (gi, si), 1)
    pxy = table / table.sum()
    px, py = pxy.sum(1), pxy.sum(0)
    nz = pxy > 0
    h_x_given_y = -np.sum(pxy[nz] * np.log(pxy[nz] / np.broadcast_to(py, pxy.shape)[nz]))
    h_y_given_x = -np.sum(pxy[nz] * np.log(pxy[nz] / np.broadcast_to(px[:, None], pxy.shape)[nz]))
    return (h_x_given_y + h_y_given_x) / np.log(2)  # bits


def cells(seed, size=32, n=5):
    """Binary membrane mask: Voronoi cells with 1-px membranes."""
    r = np.random.default_rng(seed)
    pts = r.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[:size, :size]
    lab = np.argmin((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2, -1)
    edge = np.zeros_like(lab, bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return (~edge).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rand_error_and_vi_match_definitions(seed):
    truth = cells(seed)
    pred = truth.copy()
    r = np.random.default_rng(seed + 10)
    # Merge two cells by erasing a membrane stretch, and split one by drawing a line.
    pred[r.integers(5, 27), :] = 0
    pred[:, r.integers(5, 27)] = 1
    gt_lab, seg_lab = M.label_cells(truth), M.label_cells(pred)
    ref_rand, ref_v = ref_isbi_rand_error(gt_lab, seg_lab), ref_vi(gt_lab, seg_lab)
    assert M.rand_error(pred, truth) == pytest.approx(ref_rand, abs=1e-9)
    assert M.variation_of_information(pred, truth) == pytest.approx(ref_v, abs=1e-9)
    assert M.rand_error(truth, truth) == pytest.approx(0.0, abs=1e-12)
    assert M.variation_of_information(truth, truth) == pytest.approx(0.0, abs=1e-12)
    assert M.rand_error(pred, truth) > 0.0


def test_rand_error_of_everything_merged_is_large():
    truth = cells(3)
    assert M.rand_error(np.ones_like(truth), truth) > 0.5


def test_rand_error_hand_cases():
    truth = np.ones((2, 2), np.uint8)  # one 4-pixel cell
    # Nothing assigned: 4 singletons. Pairs in the same true cell: 16; in the same predicted
    # segment: the 4 self-pairs, all correct. Precision 1, recall 1/4, F = 0.4.
    assert M.rand_error(np.zeros((2, 2), np.uint8), truth) == pytest.approx(0.6)
    # Two predicted halves: same-segment pairs 2*4 = 8, all inside the cell: recall 1/2.
    halves = np.array([[1, 1], [2, 2]])
    assert M.rand_error(halves, truth, pred_is_labels=True) == pytest.approx(1 - 2 / 3)
    assert M.rand_pair_counts(halves, truth) == (8.0, 0.0, 8.0)


def test_thick_predicted_membrane_is_not_a_merge():
    """Predicted membrane inside true cells must not join the cells it touches (ISBI rule)."""
    from skimage.metrics import adapted_rand_error

    truth = cells(4, size=64, n=40)  # small cells, as in EM slices
    thick = ndimage.binary_erosion(truth, border_value=1).astype(np.uint8)  # 3-px membranes
    thick_err = M.rand_error(thick, truth)
    # scikit-image's adapted Rand treats all predicted-membrane pixels as one big segment.
    one_segment_err = adapted_rand_error(M.label_cells(truth), M.label_cells(thick),
                                         ignore_labels=(0,))[0]
    assert thick_err < 0.5 * one_segment_err
    assert M.rand_error(np.ones_like(truth), truth) > 3 * thick_err  # a real merge still costs


def test_pixel_dice_iou_scores():
    t = np.zeros((4, 4), np.uint8)
    t[:2] = 1
    p = np.zeros((4, 4), np.float32)
    p[:1] = 0.9
    p[3, 0] = 0.7
    assert M.misclassification_rate(p, t) == pytest.approx(5 / 16)
    assert M.pixel_counts(p, t) == (4.0, 1.0, 4.0)  # TP, FP, FN of the foreground
    assert M.pixel_error(p, t) == pytest.approx(1 - 8 / 13)  # ISBI: 1 - F-score
    assert M.f_error(0, 0, 0) == 0.0
    assert M.dice_score(p, t) == pytest.approx(2 * 4 / (5 + 8))
    assert M.iou_score(p, t) == pytest.approx(4 / 9)
    assert M.dice_score(p, t, foreground=False) == pytest.approx(2 * 7 / (11 + 8))
    assert M.dice_score(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    with pytest.raises(ValueError, match="shape"):
        M.pixel_error(np.zeros((3, 3)), np.zeros((4, 4)))


def test_evaluate_probability_map_picks_best_threshold():
    truth = cells(5)
    prob = np.where(truth > 0, 0.65, 0.35).astype(np.float32)
    out = M.evaluate_probability_map(prob, truth)
    assert 0.35 <= out["best"]["threshold"] < 0.65 and 0.35 <= out["best"]["pixel_threshold"] < 0.65
    assert out["best"]["pixel_error"] == 0.0 and out["best"]["rand_error"] == pytest.approx(0.0)
    assert M.DEFAULT_THRESHOLDS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert len(out["per_threshold"]) == 9


def test_score_thresholds_sums_counts_over_images_and_picks_each_best():
    r = np.random.default_rng(7)
    truths = [cells(s) for s in (10, 11, 12)]
    probs = [np.clip(t * 0.6 + 0.2 + r.normal(0, 0.2, t.shape), 0, 1) for t in truths]
    ths = (0.3, 0.5, 0.7)
    out = M.score_thresholds(probs, truths, ths)
    for row, th in zip(out["per_threshold"], ths):
        # Independent references: NumPy pixel counts and brute-force pair counts, summed.
        pix = np.sum([((p > th) & (t > 0)).sum() for p, t in zip(probs, truths)]), \
            np.sum([((p > th) & (t == 0)).sum() for p, t in zip(probs, truths)]), \
            np.sum([((p <= th) & (t > 0)).sum() for p, t in zip(probs, truths)])
        gts = [ndimage.label(t > 0)[0] for t in truths]
        segs = [ndimage.label(p > th)[0] for p in probs]
        tp, fp, fn = np.sum([ref_isbi_rand_counts(g, s) for g, s in zip(gts, segs)], axis=0)
        assert row["pixel_error"] == pytest.approx(1 - 2 * pix[0] / (2 * pix[0] + pix[1] + pix[2]))
        assert row["rand_error"] == pytest.approx(1 - 2 * tp / (2 * tp + fp + fn))
        assert row["misclassification_rate"] == pytest.approx(
            np.mean([M.misclassification_rate(p, t, th) for p, t in zip(probs, truths)]))
    rows = out["per_threshold"]
    best_pix = min(rows, key=lambda x: x["pixel_error"])
    best_rand = min(rows, key=lambda x: x["rand_error"])
    b = out["best"]
    assert (b["pixel_error"], b["pixel_threshold"]) == (best_pix["pixel_error"],
                                                        best_pix["threshold"])
    assert (b["rand_error"], b["threshold"]) == (best_rand["rand_error"], best_rand["threshold"])
    assert b["dice_foreground"] == best_pix["dice_foreground"]
    assert len(out["per_image_at_best"]) == 3
    with pytest.raises(ValueError, match="as many truths"):
        M.score_thresholds(probs, truths[:2])
    with pytest.raises(ValueError, match="probability map 1 has dtype uint8"):
        M.score_thresholds([probs[0], (probs[1] * 255).astype(np.uint8)], truths[:2])


def test_label_ids_may_be_huge_and_sparse_but_not_bool_or_negative():
    truth = M.label_cells(cells(6))
    pred = M.label_cells(cells(7))
    expected = M.rand_pair_counts(pred, truth)
    big_t = np.where(truth > 0, truth.astype(np.int64) * 2**40 + 7, 0)
    big_p = np.where(pred > 0, pred.astype(np.int64) * 2**33 + 3, 0)
    assert M.rand_pair_counts(big_p, big_t) == expected
    with pytest.raises(ValueError, match="integer cell labels.*bool"):
        M.rand_pair_counts(pred > 0, truth)
    with pytest.raises(ValueError, match="negative labels"):
        M.rand_error(pred - 1, truth, pred_is_labels=True)


def test_empty_truth_is_scored_the_same_everywhere():
    empty = np.zeros((8, 8), np.uint8)
    some = np.zeros((8, 8), np.float32)
    some[2:5, 2:5] = 0.9
    assert M.rand_error(empty, empty) == 0.0 and M.rand_error(some, empty) == 1.0
    out = M.score_thresholds([some, np.zeros_like(some)], [empty, empty], thresholds=(0.5,))
    assert [r["rand_error"] for r in out["per_image_at_best"]] == [1.0, 0.0]
    assert out["best"]["rand_error"] == 0.5
