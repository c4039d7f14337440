"""Tests of zf_unet.data.weightmaps: the U-Net paper's border weight maps (eq. 2)."""
from __future__ import annotations

import os
from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from zf_unet.data import weightmaps as wm
from zf_unet.data.weightmaps import (
    border_weight_map,
    border_weight_maps,
    cached_border_weight_map,
    class_weight_map,
)
from zf_unet.errors import DataError

W0, SIGMA = 10.0, 5.0


# --------------------------------------------------------------------------- reference
def _label4(fg: np.ndarray) -> tuple[np.ndarray, int]:
    """Independent 4-connected labelling by breadth-first flood fill."""
    lab = np.zeros(fg.shape, dtype=np.int64)
    n = 0
    h, w = fg.shape
    for y0, x0 in zip(*np.nonzero(fg)):
        if lab[y0, x0]:
            continue
        n += 1
        lab[y0, x0] = n
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and fg[yy, xx] and not lab[yy, xx]:
                    lab[yy, xx] = n
                    queue.append((yy, xx))
    return lab, n


def _class_weights_ref(fg: np.ndarray, class_weights) -> np.ndarray:
    if class_weights is None:
        return np.ones(fg.shape)
    if class_weights == "balanced":
        n_fg = fg.sum()
        n_bg = fg.size - n_fg
        k = int(n_fg > 0) + int(n_bg > 0)
        w_fg = fg.size / (k * n_fg) if n_fg else 1.0
        w_bg = fg.size / (k * n_bg) if n_bg else 1.0
    else:
        w_fg, w_bg = class_weights.get(1, 1.0), class_weights.get(0, 1.0)
    return np.where(fg, w_fg, w_bg)


def _brute_force(fg: np.ndarray, w0=W0, sigma=SIGMA, class_weights="balanced", labels=None):
    """eq. 2 on every background pixel, distances to all pixels of every cell."""
    fg = np.asarray(fg, dtype=bool)
    lab, n = _label4(fg) if labels is None else (labels, int(labels.max()))
    out = _class_weights_ref(fg, class_weights).astype(np.float64)
    if n < 2:
        return out
    bg = np.argwhere(lab == 0).astype(np.float64)  # (P, 2)
    per_cell = []
    for k in range(1, n + 1):
        pts = np.argwhere(lab == k).astype(np.float64)  # (Q, 2)
        if len(pts) == 0:
            continue
        diff = bg[:, None, :] - pts[None, :, :]
        per_cell.append(np.sqrt((diff**2).sum(-1)).min(axis=1))
    dist = np.sort(np.stack(per_cell, axis=1), axis=1)
    d1, d2 = dist[:, 0], dist[:, 1]
    term = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    ys, xs = np.nonzero(lab == 0)
    out[ys, xs] += term
    return out


def _small_masks() -> dict[str, np.ndarray]:
    masks = {}
    m = np.zeros((24, 24), np.uint8)
    m[2:10, 2:11] = 1  # A
    m[2:10, 12:21] = 1  # B: 1-px membrane (column 11) between A and B
    m[13:22, 3:8] = 1  # C: L-shaped, non-convex
    m[17:22, 8:14] = 1
    m[14:17, 17:22] = 1  # D: small, farther away
    masks["four_cells_1px_membrane"] = m
    m = np.zeros((24, 24), np.uint8)
    m[0:24, 0:7] = 1  # touches the image border
    m[3:20, 9:15] = 1  # 2-px membrane to the first
    m[5:9, 19:23] = 1
    masks["three_cells_at_border"] = m
    return masks


def _voronoi_mask(size: int = 128, n_seeds: int = 40, seed: int = 0) -> np.ndarray:
    """Random Voronoi tessellation; membrane (0) where the nearest-seed label changes."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), dtype=np.int32)
    ys = rng.integers(0, size, n_seeds)
    xs = rng.integers(0, size, n_seeds)
    seeds[ys, xs] = np.arange(1, n_seeds + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    vor = seeds[iy, ix]
    edge = np.zeros_like(vor, dtype=bool)
    edge[:-1, :] |= vor[:-1, :] != vor[1:, :]
    edge[:, :-1] |= vor[:, :-1] != vor[:, 1:]
    return (~edge).astype(np.uint8) * 255


# --------------------------------------------------------------------------- eq. 2
@pytest.mark.parametrize("name", sorted(_small_masks()))
@pytest.mark.parametrize("mode", ["exact", "fast_generous_cutoff"])
def test_matches_brute_force(name, mode):
    mask = _small_masks()[name]
    kw = {"exact": True} if mode == "exact" else {"cutoff": 200.0}
    got = border_weight_map(mask, **kw)
    ref = _brute_force(mask)
    assert got.shape == mask.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-4
    assert got.max() > ref[mask > 0].max() + 1.0  # the border term is really there


def test_matches_brute_force_other_parameters():
    mask = _small_masks()["four_cells_1px_membrane"]
    got = border_weight_map(mask, w0=3.0, sigma=2.5, class_weights={0: 0.5, 1: 2.0}, exact=True)
    ref = _brute_force(mask, w0=3.0, sigma=2.5, class_weights={0: 0.5, 1: 2.0})
    assert np.abs(got - ref).max() < 1e-4


def test_default_cutoff_error_is_bounded():
    # sigma small so that the default cutoff (6 sigma = 9 px) actually truncates here
    mask = _small_masks()["four_cells_1px_membrane"]
    got = border_weight_map(mask, sigma=1.5)
    ref = _brute_force(mask, sigma=1.5)
    assert np.abs(got - ref).max() <= W0 * np.exp(-18.0) + 1e-5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_random_masks_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((12, 14)) < 0.45).astype(np.uint8)
    ref = _brute_force(mask)
    np.testing.assert_allclose(border_weight_map(mask, exact=True), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(border_weight_map(mask, cutoff=100.0), ref, atol=1e-4, rtol=0)


def test_fast_equals_exact_on_voronoi_mask():
    mask = _voronoi_mask()
    n_cells = ndi.label(mask > 0)[1]
    assert n_cells >= 30
    exact = border_weight_map(mask, exact=True)
    fast = border_weight_map(mask)
    assert np.abs(fast - exact).max() <= 1e-3 * W0
    assert exact.max() > 5.0  # membranes between touching cells are heavily weighted


@pytest.mark.parametrize("n_sigmas", [2.0, 3.0])
def test_fast_mode_error_bound_holds_for_short_cutoffs(n_sigmas):
    # sparse blobs: wide gaps, so that d1 + d2 exceeds the short cutoffs somewhere
    rng = np.random.default_rng(3)
    mask = np.zeros((96, 96), np.uint8)
    for y, x in rng.integers(0, 90, size=(25, 2)):
        mask[y : y + 5, x : x + 4] = 1
    cutoff = n_sigmas * SIGMA
    exact = border_weight_map(mask, exact=True)
    fast = border_weight_map(mask, cutoff=cutoff)
    err = np.abs(fast - exact)
    bound = W0 * np.exp(-(cutoff**2) / (2 * SIGMA**2))
    assert err.max() <= bound + 1e-5
    assert err.max() > 0  # this cutoff really truncates something


# --------------------------------------------------------------------------- class weights
def test_balanced_class_weights_equal_mass_and_mean_one():
    mask = _voronoi_mask(64, 10, seed=1)
    fg = mask > 0
    wc = class_weight_map(mask, "balanced")
    assert wc.dtype == np.float32 and wc.shape == mask.shape
    assert wc[fg].sum() == pytest.approx(wc[~fg].sum(), rel=1e-5)
    assert wc.mean() == pytest.approx(1.0, rel=1e-5)
    assert wc[~fg].min() > wc[fg].max()  # the rarer class (membrane) weighs more
    # on cell pixels the full map is w_c alone
    full = border_weight_map(mask)
    np.testing.assert_array_equal(full[fg], wc[fg])


def test_dict_and_none_class_weights():
    mask = _small_masks()["three_cells_at_border"]
    fg = mask > 0
    wc = class_weight_map(mask, {0: 3.0, 1: 0.25})
    assert np.all(wc[fg] == 0.25) and np.all(wc[~fg] == 3.0)
    assert np.all(class_weight_map(mask, {0: 2.0})[fg] == 1.0)  # missing id -> 1
    assert np.all(class_weight_map(mask, None) == 1.0)
    w = border_weight_map(mask, class_weights=None, exact=True)
    np.testing.assert_allclose(w, _brute_force(mask, class_weights=None), atol=1e-4)
    assert np.all(w[fg] == 1.0)


@pytest.mark.parametrize(
    "bad", ["inverse", {2: 1.0}, {0: -1.0}, {1: float("nan")}, {0: "x"}, [1.0, 2.0]]
)
def test_bad_class_weights_raise(bad):
    with pytest.raises(DataError, match="class_weights"):
        border_weight_map(np.eye(8, dtype=np.uint8), class_weights=bad)


# --------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("gap", [1, 2, 4])
def test_between_two_close_cells_is_high_and_falls_off(gap):
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 5:25] = 1
    mask[10:30, 25 + gap : 45 + gap] = 1
    w = border_weight_map(mask, class_weights=None, exact=True)
    between = w[10:30, 25 : 25 + gap]
    # a gap pixel at column offset j from the left cell has d1 + d2 = gap + 1
    expected = 1.0 + W0 * np.exp(-((gap + 1) ** 2) / (2 * SIGMA**2))
    np.testing.assert_allclose(between, expected, rtol=1e-5)
    # moving away from the cells along the gap's axis, the weight strictly falls
    col = 25
    above = w[9::-1, col]
    assert np.all(np.diff(above) < 0)
    assert w[0, col] < between.min() - 2.0
    # far from both cells: only a small border term
    assert w[39, 59] < 1.0 + 0.05 * W0


def test_single_cell_has_no_border_term():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:12, 4:15] = 255
    w = border_weight_map(mask)
    np.testing.assert_array_equal(w, class_weight_map(mask))
    assert np.all(border_weight_map(mask, class_weights=None) == 1.0)


@pytest.mark.parametrize("fill", [0, 1])
def test_empty_and_full_masks(fill):
    mask = np.full((16, 16), fill, np.uint8)
    for exact in (False, True):
        w = border_weight_map(mask, exact=exact)
        assert w.dtype == np.float32 and w.shape == (16, 16)
        np.testing.assert_array_equal(w, 1.0)  # one class present -> weight 1


def test_connectivity_decides_what_a_cell_is():
    mask = np.zeros((12, 12), np.uint8)
    mask[2:6, 2:6] = 1
    mask[6:10, 6:10] = 1  # touches the first only diagonally
    w4 = border_weight_map(mask, class_weights=None, connectivity=1)
    w8 = border_weight_map(mask, class_weights=None, connectivity=2)
    assert w4.max() > 1.0 + 0.5 * W0  # two cells: pixels next to the corner get the term
    np.testing.assert_array_equal(w8, 1.0)  # one 8-connected cell: no term


def test_mask_encodings_agree():
    m01 = _small_masks()["four_cells_1px_membrane"]
    ref = border_weight_map(m01)
    for variant in (m01 * 255, m01.astype(bool), m01.astype(np.float32), m01[..., None]):
        np.testing.assert_array_equal(border_weight_map(variant), ref)


def test_labels_argument():
    mask = _small_masks()["four_cells_1px_membrane"]
    lab, _ = ndi.label(mask)
    # same cells, scrambled non-consecutive ids
    scrambled = np.where(lab > 0, lab * 7 + 100, 0)
    np.testing.assert_allclose(
        border_weight_map(None, labels=scrambled), border_weight_map(mask), atol=1e-6
    )
    # touching instances (no membrane): only labels == 0 pixels get the term
    inst = np.zeros((20, 20), np.int32)
    inst[3:17, 2:9] = 1
    inst[3:17, 9:16] = 2  # shares an edge with 1
    inst[2, 9] = 0
    w = border_weight_map(None, labels=inst, class_weights=None, exact=True)
    ref = _brute_force(inst > 0, class_weights=None, labels=inst)
    np.testing.assert_allclose(w, ref, atol=1e-4)
    assert np.all(w[inst > 0] == 1.0)
    # with a mask given as well, the mask sets the classes, the labels the cells
    w2 = border_weight_map(inst > 0, labels=inst, exact=True)
    np.testing.assert_allclose(w2, _brute_force(inst > 0, labels=inst), atol=1e-4)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask": np.zeros(5)}, r"mask: expected a 2-D mask"),
        ({"mask": np.zeros((2, 4, 4))}, r"mask: expected a 2-D mask"),
        ({"mask": np.array([[0.0, np.nan], [1.0, 0.0]])}, r"mask: .*NaN"),
        ({"mask": np.array([[0, 1], [2, 0]])}, r"mask: expected a binary mask"),
        ({"mask": np.array([[0, 1], [255, 0]])}, r"mask: expected a binary mask"),
        ({"mask": np.array([["a", "b"]])}, r"mask: expected a numeric"),
        ({"mask": None}, r"mask: expected"),
        ({"mask": np.eye(4), "labels": np.eye(5, dtype=int)}, r"labels: expected the same"),
        ({"mask": None, "labels": -np.eye(4, dtype=int)}, r"labels: expected ids >= 0"),
        ({"mask": None, "labels": np.eye(4) * 0.5}, r"labels: expected integer"),
        ({"mask": np.eye(4), "sigma": 0.0}, r"sigma: expected"),
        ({"mask": np.eye(4), "w0": float("nan")}, r"w0: expected"),
        ({"mask": np.eye(4), "connectivity": 3}, r"connectivity: expected 1"),
        ({"mask": np.eye(4), "cutoff": -1.0}, r"cutoff: expected"),
    ],
)
def test_bad_input_raises_data_error(kwargs, match):
    with pytest.raises(DataError, match=match):
        border_weight_map(**kwargs)
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- batch
def test_batch_helper():
    masks = np.stack([_voronoi_mask(48, 8, seed=s) for s in range(3)])
    out = border_weight_maps(masks)
    assert out.shape == (3, 48, 48, 1) and out.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(out[i, ..., 0], border_weight_map(masks[i]))
    np.testing.assert_array_equal(border_weight_maps(masks[..., None]), out)
    np.testing.assert_array_equal(
        border_weight_maps(masks, sigma=3.0, class_weights=None)[1, ..., 0],
        border_weight_map(masks[1], sigma=3.0, class_weights=None),
    )
    with pytest.raises(DataError, match="masks: expected a batch"):
        border_weight_maps(masks[0])


# --------------------------------------------------------------------------- cache
def test_cache_computes_once_and_reloads(tmp_path, monkeypatch):
    mask = _voronoi_mask(48, 8, seed=5)
    first = cached_border_weight_map(mask, cache_dir=tmp_path, sigma=4.0)
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp left
    np.testing.assert_array_equal(np.load(files[0]), first)
    np.testing.assert_array_equal(first, border_weight_map(mask, sigma=4.0))

    def boom(*args, **kwargs):
        raise AssertionError("recomputed instead of loading the cache")

    monkeypatch.setattr(wm, "border_weight_map", boom)
    again = cached_border_weight_map(mask, cache_dir=tmp_path, sigma=4.0)
    np.testing.assert_array_equal(again, first)
    # the same mask in another encoding maps to the same file
    np.testing.assert_array_equal(
        cached_border_weight_map(mask > 0, cache_dir=tmp_path, sigma=4.0), first
    )
    # other parameters -> other key -> computed (here: the patched function is called)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_border_weight_map(mask, cache_dir=tmp_path, sigma=5.0)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_border_weight_map(mask, cache_dir=tmp_path, sigma=4.0, class_weights={0: 2.0})
    with pytest.raises(AssertionError, match="recomputed"):
        cached_border_weight_map(1 - (mask > 0), cache_dir=tmp_path, sigma=4.0)


def test_cache_keys_differ_and_corrupt_files_are_recomputed(tmp_path):
    mask = _small_masks()["three_cells_at_border"]
    a = cached_border_weight_map(mask, cache_dir=tmp_path)
    b = cached_border_weight_map(mask, cache_dir=tmp_path, w0=5.0)
    c = cached_border_weight_map(mask, cache_dir=tmp_path, exact=True)
    assert len(list(tmp_path.glob("bwm-*.npy"))) == 3
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-3 * W0)
    # a truncated file is ignored and rewritten atomically
    for p in tmp_path.glob("bwm-*.npy"):
        p.write_bytes(b"\x93NUMPY garbage")
    again = cached_border_weight_map(mask, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, a)
    with pytest.raises(DataError, match="unexpected arguments"):
        cached_border_weight_map(mask, cache_dir=tmp_path, sigmaa=2.0)


def test_default_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ZF_UNET_CACHE", os.fspath(tmp_path))
    assert wm.default_cache_dir() == tmp_path / "weightmaps"
    mask = _small_masks()["three_cells_at_border"]
    cached_border_weight_map(mask)
    assert len(list((tmp_path / "weightmaps").glob("bwm-*.npy"))) == 1


# --------------------------------------------------------------------------- ISBI 2012
@pytest.mark.isbi
def test_isbi_slice(isbi_dir):
    from PIL import Image

    mask = np.array(Image.open(isbi_dir / "masks" / "00.png"))
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
    wc = class_weight_map(mask)
    w = border_weight_map(mask)
    assert w.shape == (512, 512) and w.dtype == np.float32
    assert np.all(np.isfinite(w))
    assert w.max() > wc.max() + 1.0
    assert w.max() <= wc.max() + W0 + 1e-4
    # the border term sits on membrane pixels only; cells keep w_c
    np.testing.assert_array_equal(w[mask > 0], wc[mask > 0])
    high = w > wc.max() + 0.5 * W0
    assert high.sum() > 1000
    assert np.all(mask[high] == 0)
    # fast mode equals the full computation on real data
    exact = border_weight_map(mask, exact=True)
    assert np.abs(exact - w).max() <= 1e-3 * W0
