"""Volumes end to end: make_volume_datasets (sections split, 3-D patches, one transform for
image / mask / weights) and a tiny 3-D training run through `zf-unet train`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from zf_unet.cli import main  # noqa: E402
from zf_unet.config import Config  # noqa: E402
from zf_unet.data import Augment, load_volumes, make_volume_datasets  # noqa: E402
from zf_unet.errors import ConfigError, DataError  # noqa: E402


def blob_volume(depth: int = 6, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 (D, H, W) volume of bright spheres-ish blobs and its {0, 255} mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:depth, :size, :size]
    mask = np.zeros((depth, size, size), bool)
    for _ in range(6):
        cz, cy, cx = rng.uniform(0, depth), rng.uniform(0, size), rng.uniform(0, size)
        r = rng.uniform(4, 8)
        mask |= ((z - cz) * 4) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < r ** 2
    image = np.where(mask, 200, 60) + rng.normal(0, 10, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def write_slices(folder: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for k in range(image.shape[0]):  # natural order: 2 before 10
        Image.fromarray(image[k]).save(folder / "images" / f"{k}.png")
        Image.fromarray(mask[k]).save(folder / "masks" / f"{k}.png")
    return folder


def test_sections_split_patches_and_one_transform(tmp_path):
    image, mask = blob_volume(depth=12)
    src = write_slices(tmp_path / "vol", image, mask)
    data = load_volumes(src)
    assert data.num_classes == 1 and data.images[0].shape == (12, 32, 32, 1)
    np.testing.assert_array_equal(data.masks[0], mask // 255)
    np.testing.assert_allclose(data.images[0][..., 0], image / 255.0, rtol=1e-6)
    train, val = ds = make_volume_datasets(
                                           src, patch_size=[4, 16, 16], batch_size=2, val_indices=[10, 11], seed=1,
                                           augment=Augment(elastic=True, flips=True, rotate90=True, gray_values=False),
                                           spacing=(4, 1, 1), border_weights=True, samples_per_epoch=6)
    info = ds.info
    assert (info.num_train, info.num_val, info.channels) == (1, 1, 1)
    # the training statistics count sections 0..9 only
    assert info.class_pixels.sum() == 10 * 32 * 32
    assert info.class_pixels[1] == (mask[:10] > 0).sum()
    batches = list(train)
    assert len(batches) == 3
    for img, msk, wts in batches:
        assert img.shape == (2, 4, 16, 16, 1) and msk.shape == wts.shape == (2, 4, 16, 16, 1)
        assert set(np.unique(msk.numpy())) <= {0.0, 1.0}
        assert wts.numpy().min() > 0
    # image and mask moved together: bright voxels are labelled, dark ones not
    img = np.concatenate([b[0].numpy() for b in batches])
    lab = np.concatenate([b[1].numpy() for b in batches]) > 0.5
    assert (img > 0.55).sum() > 50 and (img < 0.4).sum() > 50
    assert lab[img > 0.55].mean() > 0.9 and lab[img < 0.4].mean() < 0.1
    # border weights peak between touching blobs: some voxel gets well above the class weight
    assert max(float(b[2].numpy().max()) for b in batches) > 2.0
    # validation: sections 10-11 as mirror-padded (4, 16, 16) blocks, 2 x 2 in-plane
    val_batches = list(val)
    assert sum(b[0].shape[0] for b in val_batches) == 4
    first = val_batches[0][0].numpy()[0, :2, :, :, 0]
    np.testing.assert_allclose(first, image[10:12, :16, :16] / 255.0, rtol=1e-6)


def test_volume_split_and_patch_errors(tmp_path):
    image, mask = blob_volume(depth=8)
    src = write_slices(tmp_path / "vol", image, mask)
    with pytest.raises(DataError, match="contiguous block"):
        make_volume_datasets(src, patch_size=[4, 16, 16], val_indices=[2, 5])
    with pytest.raises(DataError, match="inside the volume"):
        make_volume_datasets(src, patch_size=[4, 16, 16], val_indices=[3, 4])
    with pytest.raises(DataError, match=r"\[depth, height, width\]"):
        make_volume_datasets(src, patch_size=[4, 16])
    with pytest.raises(DataError, match="images/"):
        make_volume_datasets(tmp_path / "vol" / "images", patch_size=4)


def test_config_keys_for_volumes():
    cfg = Config().override(["data.volumes=true", "data.patch_size=[4, 32, 32]",
                             "data.spacing=[50, 4.6, 4.6]", "model.pool_sizes=\"auto\""])
    assert cfg.data.patch_size == [4, 32, 32] and cfg.model.pool_sizes == "auto"
    assert "volumes = true" in cfg.to_toml()
    with pytest.raises(ConfigError, match="data.volumes = false"):
        Config().override(["data.patch_size=[4, 32, 32]"])
    with pytest.raises(ConfigError, match="needs data.spacing"):
        Config().override(["data.volumes=true", "model.pool_sizes=\"auto\""])
    with pytest.raises(ConfigError, match="spacing"):
        Config().override(["data.spacing=[1, 0, 1]"])
    with pytest.raises(ConfigError, match="pool_sizes"):
        Config().override(["model.pool_sizes=[0, 2]"])
    with pytest.raises(ConfigError, match="backbone"):
        Config().override(["data.volumes=true", "model.backbone=\"vgg16\""])


def test_train_a_3d_unet_through_the_cli(tmp_path, capsys):
    image, mask = blob_volume(depth=12, seed=2)
    src = write_slices(tmp_path / "vol", image, mask)
    cfg = tmp_path / "vol3d.toml"
    cfg.write_text(f"""
[data]
source = {json.dumps(str(src))}
volumes = true
spacing = [4, 1, 1]
val_indices = [10, 11]
patch_size = [4, 16, 16]
batch_size = 2
samples_per_epoch = 4

[data.augment]
enabled = false  # no XLA augmentation to compile: not what this tests

[model]
depth = 3
filters = 4
pool_sizes = "auto"

[train]
epochs = 2
tensorboard = false
precision = "float32"
""")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    model = keras.saving.load_model(run / "best.keras", compile=False)
    assert model.input_shape == (None, None, None, None, 1)
    # spacing (4, 1, 1): y / x pooled first (1, 2, 2), then z too (2, 2, 2)
    assert model.get_layer("enc0_pool").pool_size == (1, 2, 2)
    assert model.get_layer("enc1_pool").pool_size == (2, 2, 2)
    assert model.get_layer("enc0_conv1").kernel.shape[:3] == (1, 3, 3)
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 3 and "val_dice" in log[0]
    # evaluate: the run's own volume is scored on the sections training held out
    from zf_unet.evaluation import evaluate_volumes, run_config_for

    result = evaluate_volumes(model, str(src), split="val",
                              config=run_config_for(run / "best.keras"))
    assert result["voxels"] == 2 * 32 * 32 and result["images"][0].endswith("[z=10..11]")
    assert main(["evaluate", "--model", str(run / "best.keras"), "--data", str(src)]) == 0
    assert "z=10..11" in capsys.readouterr().out
    # a patch side the pools cannot take is refused before training, naming the key
    bad = cfg.read_text().replace("patch_size = [4, 16, 16]", "patch_size = [3, 16, 16]")
    cfg.write_text(bad)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run2")]) != 0
    assert "data.patch_size" in capsys.readouterr().err


def test_make_volume_datasets_returns_datasets_with_info():
    from zf_unet.data import DataInfo, Datasets

    vol = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    lab = (vol > 0.5).astype(np.uint8)
    ds = make_volume_datasets((vol, lab), val_indices=[5], batch_size=1)
    train, val = ds
    assert isinstance(ds, Datasets) and ds.train is train and ds.val is val
    assert isinstance(ds.info, DataInfo) and (ds.info.num_train, ds.info.num_val) == (1, 1)
    assert int(ds.info.class_pixels.sum()) == 5 * 16 * 16  # the training sections
    np.testing.assert_allclose(ds.info.mean, [vol[:5].mean()], rtol=1e-5)
    with pytest.warns(DeprecationWarning, match="with_info"):
        old = make_volume_datasets((vol, lab), val_indices=[5], batch_size=1, with_info=True)
    assert len(old) == 3 and old[2].num_train == 1
