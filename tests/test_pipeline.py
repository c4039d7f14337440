"""make_datasets: every source kind feeds model.fit; patches, weights, splits, determinism."""
from __future__ import annotations

import numpy as np
import pytest

import zf_unet
from zf_unet.data import Augment, make_datasets, write_synthetic_folder
from zf_unet.errors import DataError


def tiny_model(channels=1, classes=1):
    model = zf_unet.build_unet((None, None, channels), num_classes=classes, depth=3, filters=4)
    model.compile(optimizer="adam", loss=zf_unet.losses.WeightedCrossentropy(),
                  metrics=[zf_unet.metrics.DiceCoefficient(num_classes=classes)])
    return model


def first_batch(ds):
    return [t.numpy() for t in next(iter(ds))]


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    return write_synthetic_folder(tmp_path_factory.mktemp("synth"), n=6, size=64, seed=2)


def test_arrays_feed_fit_whole_images():
    x, y = zf_unet.data.make_synthetic(6, 32, seed=0)
    train, val = make_datasets((x, y), batch_size=2, val_fraction=0.34, seed=0)
    img, msk = first_batch(train)
    assert img.shape == (2, 32, 32, 1) and msk.shape == (2, 32, 32, 1)
    assert img.dtype == np.float32 and set(np.unique(msk)) <= {0.0, 1.0}
    assert sum(b[0].shape[0] for b in val) == 2
    hist = tiny_model().fit(train, validation_data=val, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0]) and "val_dice" in hist.history


def test_folder_with_patches_augmentation_and_border_weights(synth_folder):
    train, val = make_datasets(synth_folder, patch_size=32, batch_size=3, val_fraction=0.2,
                               seed=1, augment=Augment(rotation_degrees=10),
                               border_weights=True)
    img, msk, wt = first_batch(train)
    assert img.shape == msk.shape == wt.shape == (3, 32, 32, 1)
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert set(np.unique(msk)) <= {0.0, 1.0}
    assert wt.min() > 0
    # The weight map moved with the mask: big border weights only on membrane pixels.
    high = wt > wt[msk == 1].max() + 1e-6
    assert high.any() and (msk[high] == 0).all()
    vimg, vmsk, vwt = first_batch(val)
    assert vimg.shape[1:] == (32, 32, 1)
    hist = tiny_model().fit(train, validation_data=val, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def test_same_seed_same_batches_and_epochs_differ(synth_folder):
    kw = dict(patch_size=32, batch_size=2, seed=5, augment=True, val_fraction=0.0)
    a, none_val = make_datasets(synth_folder, **kw)
    b, _ = make_datasets(synth_folder, **kw)
    assert none_val is None
    e1a, e1b = first_batch(a), first_batch(b)
    np.testing.assert_array_equal(e1a[1], e1b[1])
    np.testing.assert_allclose(e1a[0], e1b[0], atol=1e-6)
    e2a = first_batch(a)  # a second pass over `a` is a new epoch: new patches
    assert not np.allclose(e1a[0], e2a[0])
    c, _ = make_datasets(synth_folder, **{**kw, "seed": 6})
    assert not np.allclose(e1a[0], first_batch(c)[0])


def test_patches_larger_than_some_images_are_mirror_padded():
    x, y = zf_unet.data.make_synthetic(3, 24, seed=0)
    big_x, big_y = zf_unet.data.make_synthetic(1, 40, seed=1)
    images = [x[i] for i in range(3)] + [big_x[0]]
    masks = [y[i] for i in range(3)] + [big_y[0]]
    train, _ = make_datasets((images, masks), patch_size=40, batch_size=4, val_fraction=0.0,
                             samples_per_epoch=8)
    img, msk = first_batch(train)
    assert img.shape == (4, 40, 40, 1)
    # Without augmentation a crop is either the 40x40 image or a mirror-padded 24x24 image
    # (the original at some offset plus reflected rows/cols).
    ref = list(np.pad(x[..., 0], ((0, 0), (8, 8), (8, 8)), mode="reflect")) + [big_x[0, ..., 0]]
    for crop in img[..., 0]:
        assert any(np.allclose(crop, r) for r in ref)
    assert any(any(np.allclose(crop, r) for r in ref[:3]) for crop in img[..., 0])


def test_patch_size_larger_than_every_image_is_refused():
    x, y = zf_unet.data.make_synthetic(3, 24, seed=0)
    with pytest.raises(DataError,
                       match=r"patch_size = 40 is larger than every image .*24x24.*<= 24"):
        make_datasets((x, y), patch_size=40, batch_size=3, val_fraction=0.0)


def test_masks_with_one_class_only_are_refused():
    x, _ = zf_unet.data.make_synthetic(3, 24, seed=0)
    with pytest.raises(DataError, match=r"only class 0 \(all-zero masks\)"):
        make_datasets((x, np.zeros((3, 24, 24, 1), np.uint8)), val_fraction=0.0)


def test_tiff_stack_source(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    x, y = zf_unet.data.make_synthetic(4, 32, seed=3)
    tifffile.imwrite(tmp_path / "vol.tif", (x[..., 0] * 255).astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", (y[..., 0] * 255).astype(np.uint8), photometric="minisblack")
    train, val = make_datasets((tmp_path / "vol.tif", tmp_path / "lab.tif"), batch_size=2,
                               val_indices=[3])
    img, msk = first_batch(train)
    assert img.shape == (2, 32, 32, 1)
    np.testing.assert_array_equal(first_batch(val)[1][0, ..., 0], y[3, ..., 0])


def test_val_indices_and_fraction_split():
    x, y = zf_unet.data.make_synthetic(10, 16, seed=0)
    _, val = make_datasets((x, y), batch_size=10, val_indices=[8, 9])
    np.testing.assert_allclose(first_batch(val)[0], x[8:10], atol=1e-6)
    _, v1 = make_datasets((x, y), batch_size=10, val_fraction=0.3, seed=1)
    _, v2 = make_datasets((x, y), batch_size=10, val_fraction=0.3, seed=1)
    np.testing.assert_array_equal(first_batch(v1)[0], first_batch(v2)[0])
    assert first_batch(v1)[0].shape[0] == 3


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, "batch_size"),
    ({"val_indices": [12]}, "val_indices"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"patch_size": -3}, "patch_size"),
    ({"augment": "yes"}, "augment"),
])
def test_bad_arguments(kwargs, match):
    x, y = zf_unet.data.make_synthetic(4, 16, seed=0)
    with pytest.raises(DataError, match=match):
        make_datasets((x, y), **kwargs)


def test_border_weights_need_binary_masks():
    x = np.random.default_rng(0).random((2, 16, 16, 1)).astype(np.float32)
    y = np.random.default_rng(0).integers(0, 3, (2, 16, 16)).astype(np.uint8)
    with pytest.raises(DataError, match="binary"):
        make_datasets((x, y), num_classes=3, border_weights=True, val_fraction=0.0)


def test_float_images_outside_unit_range_are_rejected(tmp_path):
    x, y = zf_unet.data.make_synthetic(2, 16, seed=0)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        make_datasets((x * 255.0, y), val_fraction=0.0)


@pytest.mark.isbi
def test_isbi_folder_trains_through_pipeline(isbi_dir):
    train, val = make_datasets(isbi_dir, patch_size=128, batch_size=2, val_indices=range(20, 24),
                               augment=True, border_weights=True, samples_per_epoch=4)
    img, msk, wt = first_batch(train)
    assert img.shape == (2, 128, 128, 1) and set(np.unique(msk)) <= {0.0, 1.0}
    assert 0.6 < msk.mean() < 0.95  # ISBI: 19-27 % membrane
    model = tiny_model()
    hist = model.fit(train, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    n_val = sum(b[0].shape[0] for b in val)
    assert n_val == 4 * (512 // 128) ** 2


@pytest.mark.isbi
def test_tfds_isbi_source(isbi_dir, tmp_path):
    train, val = make_datasets("tfds:isbi2012", batch_size=2, val_indices=[23],
                               tfds_kwargs={"manual_dir": str(isbi_dir),
                                            "data_dir": str(tmp_path)})
    img, msk = first_batch(train)
    assert img.shape == (2, 512, 512, 1) and set(np.unique(msk)) <= {0.0, 1.0}
    assert sum(b[0].shape[0] for b in val) == 1
