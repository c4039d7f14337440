"""Any number of classes: gray-value codes, void pixels, num_classes inference, DataInfo,
median-frequency weights and a separate validation source (issue "Step 9")."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from zf_unet.data import (
    Augment,
    DataInfo,
    Datasets,
    border_weight_map,
    make_datasets,
    load_arrays,
    load_folder,
    load_source,
    load_tiff_stacks,
    median_frequency_weights,
    normalize_mask,
)
from zf_unet.data.sample_checks import check_learnable
from zf_unet.errors import DataError

VNC_VALUES = [[0, 32, 64, 96, 128], [159], [191], [223], [255]]


def write_folder(root: Path, images, masks, ext: str = ".png") -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (img, m) in enumerate(zip(images, masks)):
        Image.fromarray(np.asarray(img, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.asarray(m, np.uint8)).save(root / "masks" / f"{i}{ext}")
    return root


def coded_masks(rng, n=3, size=24, values=(0, 32, 64, 159, 191, 223, 255)):
    return rng.choice(np.asarray(values, np.uint8), size=(n, size, size))


def reference_ids(raw, class_values, ignore=None):
    out = np.full(raw.shape, 255 if ignore is None else ignore, np.int64)
    for cid, group in enumerate(class_values):
        out[np.isin(raw, np.atleast_1d(group))] = cid
    return out


# --------------------------------------------------------------------------- class_values


def test_class_values_match_numpy_reference(rng):
    raw = coded_masks(rng, n=1)[0]
    got = normalize_mask(raw, class_values=VNC_VALUES)
    assert got.dtype == np.uint8 and got.shape == raw.shape
    np.testing.assert_array_equal(got, reference_ids(raw, VNC_VALUES))


def test_class_values_plain_ints_and_two_groups_are_binary():
    raw = np.array([[10, 20], [20, 30]], np.uint16)
    np.testing.assert_array_equal(normalize_mask(raw, class_values=[[10, 30], 20]),
                                  [[0, 1], [1, 0]])


def test_unlisted_value_names_file_and_value(tmp_path, rng):
    raw = coded_masks(rng, n=2)
    raw[1, 3, 4] = 77
    root = write_folder(tmp_path / "d", raw, raw)
    with pytest.raises(DataError, match=r"1\.png.*\[77\].*class_values"):
        load_folder(root, class_values=VNC_VALUES)


def test_unlisted_value_allowed_when_it_is_the_ignore_index(rng):
    raw = coded_masks(rng, n=1)[0]
    raw[:4, :4] = 7
    got = normalize_mask(raw, class_values=VNC_VALUES, ignore_index=7)
    np.testing.assert_array_equal(got, reference_ids(raw, VNC_VALUES, ignore=7))
    assert np.all(got[:4, :4] == 7)


def test_class_values_through_every_loader(tmp_path, rng):
    tifffile = pytest.importorskip("tifffile")
    raw = coded_masks(rng, n=3)
    images = rng.integers(0, 256, raw.shape, dtype=np.uint8)
    ref = [reference_ids(m, VNC_VALUES) for m in raw]
    root = write_folder(tmp_path / "f", images, raw)
    tifffile.imwrite(tmp_path / "v.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", raw, photometric="minisblack")
    results = [
        load_folder(root, class_values=VNC_VALUES)[1],
        load_tiff_stacks(tmp_path / "v.tif", tmp_path / "l.tif", class_values=VNC_VALUES)[1],
        load_arrays(images, raw, class_values=VNC_VALUES)[1],
        load_source((images, raw), class_values=VNC_VALUES).masks,
    ]
    for masks in results:
        for got, want in zip(masks, ref):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kwargs, match", [
    (dict(class_values=[[0, 1]]), "at least 2"),
    (dict(class_values=[[0, 1], [1, 2]]), "value 1 appears in class 0 and class 1"),
    (dict(class_values=[[0], [255]], ignore_index=255), "also ignore_index"),
    (dict(class_values=[[0], [1], [2]], num_classes=5), "3 entries"),
    (dict(ignore_index=1), "is a class id"),
    (dict(ignore_index=2, num_classes=4), "is a class id"),
    (dict(ignore_index=300), "0 to 255"),
])
def test_bad_class_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        normalize_mask(np.zeros((4, 4), np.uint8), **kwargs)


# --------------------------------------------------------------------------- ignore_index


def test_binary_01_with_void_255():
    raw = np.array([[0, 1, 255], [1, 255, 0]], np.uint8)
    np.testing.assert_array_equal(normalize_mask(raw, ignore_index=255), raw)


def test_void_255_is_never_class_1():
    raw = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(normalize_mask(raw, ignore_index=255), raw)
    # without ignore_index the same mask is the {0, 255} binary convention
    np.testing.assert_array_equal(normalize_mask(raw), raw // 255)


def test_binary_0_255_with_other_void_value():
    raw = np.array([[0, 255, 128], [128, 0, 255]], np.uint8)
    np.testing.assert_array_equal(normalize_mask(raw, ignore_index=128),
                                  [[0, 1, 128], [128, 0, 1]])


def test_class_ids_with_void():
    raw = np.array([[0, 3, 255], [2, 1, 255]], np.uint8)
    np.testing.assert_array_equal(normalize_mask(raw, num_classes=4, ignore_index=255), raw)
    with pytest.raises(DataError, match=r"\[255\]"):
        normalize_mask(raw, num_classes=4)


def test_all_void_mask():
    got = normalize_mask(np.full((3, 3), 200, np.uint8), ignore_index=200)
    assert np.all(got == 200) and got.dtype == np.uint8


def test_check_learnable_does_not_count_void():
    masks = [np.array([[0, 255], [0, 0]], np.uint8)] * 2
    data = load_source((np.zeros((2, 2, 2), np.uint8), np.stack(masks)), ignore_index=255)
    assert data.ignore_index == 255
    with pytest.raises(DataError, match="only class 0"):
        check_learnable(data)
    void = load_source((np.zeros((1, 2, 2), np.uint8), np.full((1, 2, 2), 255, np.uint8)),
                       ignore_index=255)
    with pytest.raises(DataError, match="void"):
        check_learnable(void)


def void_data(rng, n=4, size=48):
    """Binary {0, 1} masks with a void (255) band on the left of every mask."""
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):  # two square cells per mask at random places right of the band
        for _ in range(2):
            y, x = rng.integers(0, size - 8), rng.integers(12, size - 8)
            masks[i, y:y + 8, x:x + 8] = 1
    masks[:, :, :10] = 255
    return images, masks


def test_void_survives_patching_and_augmentation(rng):
    images, masks = void_data(rng)
    aug = Augment(elastic=True, elastic_std=6.0, flips=True, rotate90=True,
                  rotation_degrees=15.0, gray_values=True)
    train, val = make_datasets((images, masks), patch_size=32, batch_size=4, val_indices=[3],
                               augment=aug, ignore_index=255, seed=3, samples_per_epoch=32,
                               jit_compile=False)
    seen = set()
    for _, msk in train:
        values = set(np.unique(msk.numpy()).tolist())
        assert values <= {0.0, 1.0, 255.0}, values
        seen |= values
    assert 255.0 in seen and {0.0, 1.0} <= seen
    for _, msk in val:
        assert set(np.unique(msk.numpy()).tolist()) <= {0.0, 1.0, 255.0}


def test_void_never_appears_without_void_in_source(rng):
    images, masks = void_data(rng)
    masks[:, :, :10] = 0
    train, _ = make_datasets((images, masks), patch_size=32, batch_size=4, val_fraction=0,
                             augment=True, ignore_index=255, seed=1, samples_per_epoch=16,
                             jit_compile=False)
    for _, msk in train:
        assert set(np.unique(msk.numpy()).tolist()) <= {0.0, 1.0}


def reference_border_weights(mask, void_value, w0, sigma):
    """Brute-force NumPy/SciPy reference of the documented void rules (exact distances)."""
    void = mask == void_value
    fg = (mask == 1) & ~void
    lab, n = ndi.label(fg)
    w = np.zeros(mask.shape, np.float64)
    labelled = ~void
    n_all, n_fg = labelled.sum(), fg.sum()
    n_bg = n_all - n_fg
    w[fg] = n_all / (2 * n_fg)
    w[labelled & ~fg] = n_all / (2 * n_bg)
    d = np.stack([ndi.distance_transform_edt(lab != k) for k in range(1, n + 1)])
    d.sort(axis=0)
    border = labelled & ~fg
    w[border] += w0 * np.exp(-(d[0] + d[1])[border] ** 2 / (2 * sigma ** 2))
    return w


def test_border_weights_with_void_match_reference(rng):
    mask = np.zeros((30, 30), np.uint8)
    mask[3:12, 3:12] = 1
    mask[3:12, 15:25] = 1
    mask[16:26, 5:20] = 1
    mask[13:15, 0:30] = 255  # a void band between the cells: it must not join them
    mask[20:24, 24:30] = 255
    got = border_weight_map(mask, w0=10.0, sigma=3.0, exact=True, ignore_index=255)
    want = reference_border_weights(mask, 255, 10.0, 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(got[mask == 255] == 0)


def test_make_datasets_border_weights_zero_at_void(rng, tmp_path):
    images, masks = void_data(rng, n=3, size=32)
    for cache in (None, tmp_path):
        train, _ = make_datasets((images, masks), batch_size=3, val_fraction=0,
                                 border_weights=True, ignore_index=255, cache_dir=cache)
        _, msk, wt = (t.numpy() for t in next(iter(train)))
        assert np.all(wt[msk == 255] == 0) and np.all(wt[msk != 255] > 0)


# --------------------------------------------------------------------------- num_classes


@pytest.mark.parametrize("masks, kwargs, expected, reason", [
    (np.array([[[0, 255], [255, 0]]]), {}, 1, "binary"),
    (np.array([[[0, 1], [1, 0]]]), {}, 1, "binary"),
    (np.array([[[0, 1], [3, 2]]]), {}, 4, "class ids 0..3"),
    (np.array([[[0, 1], [3, 255]]]), dict(ignore_index=255), 4, "class ids 0..3"),
    (np.array([[[0, 1], [255, 0]]]), dict(ignore_index=255), 1, "binary"),
    (np.array([[[0, 32], [159, 255]]]), dict(class_values=VNC_VALUES), 5, "lists 5 classes"),
    (np.array([[[0, 32], [159, 159]]]), dict(class_values=[[0, 32], [159]]), 1, "binary"),
])
def test_num_classes_auto(masks, kwargs, expected, reason, caplog):
    images = np.zeros(masks.shape, np.uint8)
    with caplog.at_level(logging.INFO, logger="zf_unet"):
        data = load_source((images, masks.astype(np.uint8)), num_classes="auto", **kwargs)
    assert data.num_classes == expected
    msgs = [r.getMessage() for r in caplog.records if "num_classes='auto'" in r.getMessage()]
    assert len(msgs) == 1 and reason in msgs[0] and f"num_classes={expected}" in msgs[0]


def test_num_classes_none_keeps_binary_conventions():
    with pytest.raises(DataError, match="fit no convention"):
        load_source((np.zeros((1, 2, 2), np.uint8), np.array([[[0, 1], [2, 3]]], np.uint8)))


def test_num_classes_auto_rejects_ids_above_void():
    with pytest.raises(DataError, match="above ignore_index"):
        load_source((np.zeros((1, 2, 2), np.uint8), np.array([[[0, 1], [9, 5]]], np.uint8)),
                    num_classes="auto", ignore_index=5)


# --------------------------------------------------------------------------- DataInfo


def test_data_info_matches_numpy(rng):
    images = rng.integers(0, 65536, (5, 20, 16, 2), dtype=np.uint16)
    masks = rng.integers(0, 3, (5, 20, 16)).astype(np.uint8)
    masks[0][masks[0] == 2] = 0  # class 2 absent from image 0
    masks[1, :5] = 255
    train, val = ds = make_datasets((images, masks), batch_size=1, val_indices=[4],
                                    num_classes="auto", ignore_index=255)
    info = ds.info
    assert isinstance(info, DataInfo)
    assert (info.num_classes, info.channels, info.num_train, info.num_val) == (3, 2, 4, 1)
    assert info.ignore_index == 255
    tr_m, tr_x = masks[:4], images[:4].astype(np.float64) / 65535.0
    want_pixels = np.array([np.sum(tr_m == c) for c in range(3)])
    want_image = np.array([sum(np.sum(m != 255) for m in tr_m if np.any(m == c))
                           for c in range(3)])
    assert info.class_pixels.dtype == np.int64 and info.class_image_pixels.dtype == np.int64
    np.testing.assert_array_equal(info.class_pixels, want_pixels)
    np.testing.assert_array_equal(info.class_image_pixels, want_image)
    assert info.mean.dtype == np.float32 and info.mean.shape == (2,)
    np.testing.assert_allclose(info.mean, tr_x.reshape(-1, 2).mean(0), rtol=1e-5)
    np.testing.assert_allclose(info.std, tr_x.reshape(-1, 2).std(0), rtol=1e-4)
    freq = want_pixels / want_image
    np.testing.assert_allclose(median_frequency_weights(info.class_pixels, info.class_image_pixels), np.median(freq) / freq)


def test_data_info_binary_has_two_entries(rng):
    images = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[:, 4:8] = 255
    info = make_datasets((images, masks), batch_size=1, val_fraction=0).info
    assert info.num_classes == 1 and info.class_pixels.shape == (2,)
    np.testing.assert_array_equal(info.class_pixels, [3 * 12 * 16, 3 * 4 * 16])
    assert info.ignore_index is None and info.num_val == 0


def test_median_frequency_weights_hand_example():
    info = DataInfo(num_classes=4, channels=1,
                    class_pixels=np.array([60, 30, 10, 0], np.int64),
                    class_image_pixels=np.array([100, 100, 50, 0], np.int64),
                    mean=np.zeros(1, np.float32), std=np.ones(1, np.float32),
                    ignore_index=None, num_train=2, num_val=0)
    # freq = [0.6, 0.3, 0.2], median 0.3; absent class 3 -> 1.0
    np.testing.assert_allclose(median_frequency_weights(info.class_pixels, info.class_image_pixels), [0.5, 1.0, 1.5, 1.0])


# --------------------------------------------------------------------------- val_source


def test_val_source_arrays_and_folder(tmp_path, rng):
    images = rng.integers(0, 256, (4, 16, 16), dtype=np.uint8)
    masks = rng.integers(0, 2, (4, 16, 16)).astype(np.uint8)
    v_img = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    v_msk = rng.integers(0, 2, (3, 16, 16)).astype(np.uint8)
    folder = write_folder(tmp_path / "val", v_img, v_msk * 255)
    for val_source in ((v_img, v_msk), folder):
        train, val = ds = make_datasets((images, masks), batch_size=1, val_fraction=0.5,
                                        val_source=val_source)
        info = ds.info
        assert (info.num_train, info.num_val) == (4, 3)
        got = np.concatenate([m.numpy() for _, m in val])[..., 0]
        np.testing.assert_array_equal(got, v_msk)
        assert sum(x.shape[0] for x, _ in train) == 4


def test_val_source_with_val_indices_is_an_error(rng):
    x = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 2, (2, 8, 8)).astype(np.uint8)
    with pytest.raises(DataError, match="val_indices and val_source"):
        make_datasets((x, y), val_source=(x, y), val_indices=[0])


def test_val_source_auto_classes_over_both(rng, caplog):
    x = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    y = np.zeros((2, 8, 8), np.uint8)
    y[:, :4] = 1
    yv = y.copy()
    yv[:, :2] = 2
    # class 2 only in the validation masks: auto would widen the model by it (Step 15)
    with pytest.raises(DataError, match=r"data\.val_source: class id\(s\) \[2\] appear only"):
        make_datasets((x, y), batch_size=1, val_source=(x, yv), num_classes="auto")
    info = make_datasets((x, y), batch_size=1, val_source=(x, yv), num_classes=3).info
    assert info.num_classes == 3 and info.class_pixels.tolist() == [64, 64, 0]


# --------------------------------------------------------------------------- real data

VNC_SHARES = {0: 17.2, 1: 2.9, 2: 5.4, 3: 0.6, 4: 74.1}  # README table, membrane summed


def test_drosophila_vnc_five_classes(vnc_dir, tmp_path):
    root = tmp_path / "vnc"
    for sub, ext in (("images", ".tif"), ("masks", ".png")):
        (root / sub).mkdir(parents=True)
        for name in ("00", "10"):
            (root / sub / f"{name}{ext}").symlink_to(vnc_dir / sub / f"{name}{ext}")
    data = load_source(root, class_values=VNC_VALUES, num_classes="auto")
    assert data.num_classes == 5 and len(data) == 2
    counts = np.bincount(np.concatenate([m.ravel() for m in data.masks]), minlength=5)
    assert counts.size == 5
    shares = 100.0 * counts / counts.sum()
    for cid, want in VNC_SHARES.items():
        assert abs(shares[cid] - want) < max(1.0, 0.25 * want), (cid, shares[cid], want)


def test_make_datasets_returns_datasets_with_info(rng):
    images = rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
    masks = np.zeros((4, 16, 16), np.uint8)
    masks[:, 4:8] = 1
    ds = make_datasets((images, masks), batch_size=1, val_indices=[3])
    assert isinstance(ds, Datasets) and isinstance(ds, tuple) and len(ds) == 2
    train, val = ds
    assert ds.train is train and ds.val is val and val is not None
    assert isinstance(ds.info, DataInfo)
    assert (ds.info.num_train, ds.info.num_val) == (3, 1)
    with pytest.warns(DeprecationWarning, match="with_info"):
        old = make_datasets((images, masks), batch_size=1, val_indices=[3], with_info=True)
    assert type(old) is tuple and len(old) == 3 and isinstance(old[2], DataInfo)
    import copy
    assert copy.copy(ds).info is ds.info and tuple(copy.copy(ds)) == tuple(ds)
    np.testing.assert_array_equal(old[2].class_pixels, ds.info.class_pixels)
    np.testing.assert_array_equal(old[2].mean, ds.info.mean)
