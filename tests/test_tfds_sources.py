"""zf_unet.data.tfds_sources: the ISBI 2012 TFDS builder and load_tfds, all offline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import tifffile
from PIL import Image

from zf_unet.data import tfds_sources as ts
from zf_unet.errors import DataError


def _prepare(data_dir: Path, manual_dir: Path) -> tfds.core.DatasetBuilder:
    builder = tfds.builder("isbi2012", data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


@pytest.fixture(scope="module")
def isbi_tfds(isbi_dir, tmp_path_factory) -> tuple[tfds.core.DatasetBuilder, Path]:
    """isbi2012 prepared from the real folder (all 24 slices, < 1 s) into a temporary data_dir."""
    data_dir = tmp_path_factory.mktemp("tfds_data")
    return _prepare(data_dir, isbi_dir), data_dir


def _uint8(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# --------------------------------------------------------------------------- builder


def test_builder_metadata():
    assert ts.Isbi2012.name == "isbi2012"
    assert str(ts.Isbi2012.VERSION) == "1.0.0"
    text = ts.Isbi2012.MANUAL_DOWNLOAD_INSTRUCTIONS
    for needle in ("images/NN.png", "masks/NN.png", "train-volume.tif", "train-labels.tif"):
        assert needle in text
    assert "isbi2012" in tfds.list_builders()


@pytest.mark.isbi
def test_isbi_builder_from_real_folder(isbi_tfds, isbi_dir):
    builder, _ = isbi_tfds
    info = builder.info
    assert list(info.splits) == ["train"] and info.splits["train"].num_examples == 24
    assert info.features["image"].shape == (None, None, 1)
    assert info.features["segmentation_mask"].shape == (None, None, 1)
    seen = set()
    for ex in tfds.as_numpy(builder.as_dataset(split="train")):
        name = ex["file_name"].decode()
        seen.add(name)
        image, mask = ex["image"], ex["segmentation_mask"]
        assert image.dtype == np.uint8 and image.shape == (512, 512, 1)
        assert mask.dtype == np.uint8 and mask.shape == (512, 512, 1)
        assert set(np.unique(mask)) <= {0, 1}
        stem = Path(name).name
        np.testing.assert_array_equal(mask[..., 0], _uint8(isbi_dir / "masks" / stem) // 255)
        np.testing.assert_array_equal(image[..., 0], _uint8(isbi_dir / "images" / stem))
    assert seen == {f"images/{i:02d}.png" for i in range(24)}


def test_isbi_builder_from_tiff_stacks(tmp_path, rng):
    vol = rng.integers(0, 256, (5, 24, 32), dtype=np.uint8)
    lab = np.where(rng.random((5, 24, 32)) > 0.25, 255, 0).astype(np.uint8)
    manual = tmp_path / "manual"
    manual.mkdir()
    tifffile.imwrite(manual / "train-volume.tif", vol, photometric="minisblack")
    tifffile.imwrite(manual / "train-labels.tif", lab, photometric="minisblack")
    builder = _prepare(tmp_path / "data", manual)
    assert builder.info.splits["train"].num_examples == 5
    got = {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
    assert sorted(got) == [f"train-volume.tif:{i:02d}" for i in range(5)]
    for i in range(5):
        ex = got[f"train-volume.tif:{i:02d}"]
        np.testing.assert_array_equal(ex["image"][..., 0], vol[i])
        np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], lab[i] // 255)


def test_isbi_builder_bad_manual_dir(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "notes.txt").write_text("nothing useful")
    with pytest.raises(DataError, match=r"manual: manual_dir holds neither images/ \+ masks/ nor "
                                        r"train-volume.tif"):
        _prepare(tmp_path / "data", tmp_path / "manual")


def test_isbi_builder_rejects_bad_masks(tmp_path):
    manual = tmp_path / "manual"
    for sub in ("images", "masks"):
        (manual / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(manual / "images" / "00.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(manual / "masks" / "00.png")
    with pytest.raises(DataError, match=r"masks/00.png: mask values \[7\] are outside"):
        _prepare(tmp_path / "data", manual)


# --------------------------------------------------------------------------- load_tfds (local)


@pytest.mark.isbi
def test_load_tfds_isbi_local(isbi_tfds):
    _, data_dir = isbi_tfds
    ds = ts.load_tfds("isbi2012", data_dir=data_dir)
    assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[1].dtype == tf.uint8
    assert ds.element_spec[1].shape.as_list() == [None, None, 1]
    plain = [m.numpy() for _, m in ds.take(3)]
    inverted = [m.numpy() for _, m in ts.load_tfds("isbi2012", data_dir=data_dir,
                                                   mask_map={0: 1, 1: 0}).take(3)]
    for a, b in zip(plain, inverted):
        np.testing.assert_array_equal(b, 1 - a)
    shifted = ts.load_tfds("isbi2012", data_dir=data_dir, mask_map=lambda m: m + 3)
    image, mask = next(iter(shifted))
    assert image.shape == (512, 512, 1) and set(np.unique(mask)) <= {3, 4}
    with pytest.raises(DataError, match=r"bad split='test' .*one of \['train'\]"):
        ts.load_tfds("isbi2012", data_dir=data_dir, split="test")
    bad = ts.load_tfds("isbi2012", data_dir=data_dir, mask_map={1: 1})
    with pytest.raises(tf.errors.InvalidArgumentError, match="not keys of mask_map"):
        next(iter(bad))


def test_load_tfds_manual_dir_prepares(tmp_path, rng):
    manual = tmp_path / "manual"
    for sub in ("images", "masks"):
        (manual / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (10, 14), dtype=np.uint8)).save(
            manual / "images" / f"{i:02d}.png")
        Image.fromarray((rng.random((10, 14)) > 0.5).astype(np.uint8) * 255).save(
            manual / "masks" / f"{i:02d}.png")
    ds = ts.load_tfds("isbi2012", data_dir=tmp_path / "data", manual_dir=manual)
    pairs = list(ds)
    assert len(pairs) == 3
    assert all(img.shape == (10, 14, 1) and m.shape == (10, 14, 1) for img, m in pairs)


def test_load_tfds_errors(tmp_path):
    with pytest.raises(DataError, match=r"load_tfds\('isbi2012'\): no prepared data in data_dir="):
        ts.load_tfds("isbi2012", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"unknown data set name='no_such_dataset_zf'"):
        ts.load_tfds("no_such_dataset_zf", data_dir=tmp_path)
    for bad in ({"a": 1}, {1: 300}, {1: True}, 42, {}):
        with pytest.raises(DataError, match=r"mask_map"):
            ts.load_tfds("isbi2012", data_dir=tmp_path, mask_map=bad)


# --------------------------------------------------------------------------- Oxford-IIIT Pet


def _trimap_as_dataset(self, *args, **kwargs) -> tf.data.Dataset:
    """Fake oxford_iiit_pet examples: RGB images with trimaps holding the raw values 1..3."""
    rng = np.random.default_rng(7)

    def gen():
        for i in range(4):
            h, w = 20 + i, 30 - i
            yield {
                "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                "segmentation_mask": rng.integers(1, 4, (h, w, 1), dtype=np.uint8),
                "label": i % 37,
                "species": i % 2,
                "file_name": f"pet_{i}.jpg",
                "head_bbox": np.zeros(4, np.float32),
            }

    return tf.data.Dataset.from_generator(
        gen, output_signature=self.info.features.get_tensor_spec()
    )


def test_load_tfds_oxford_pet_trimap_mocked(tmp_path):
    assert ts.OXFORD_PET_TRIMAP == {1: 1, 2: 0, 3: 2}
    with tfds.testing.mock_data(num_examples=4, as_dataset_fn=_trimap_as_dataset):
        raw = tfds.load("oxford_iiit_pet", split="train", data_dir=str(tmp_path))
        raw = list(tfds.as_numpy(raw))
        ds = ts.load_tfds("oxford_iiit_pet", data_dir=tmp_path, mask_map=ts.OXFORD_PET_TRIMAP)
        pairs = [(i.numpy(), m.numpy()) for i, m in ds]
    assert len(pairs) == 4
    lut = np.array([255, 1, 0, 2], np.uint8)  # raw value -> class id
    for ex, (image, mask) in zip(raw, pairs):
        assert image.dtype == np.uint8 and image.shape[-1] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2] + (1,)
        assert set(np.unique(mask)) == {0, 1, 2}
        np.testing.assert_array_equal(mask, lut[ex["segmentation_mask"]])


def test_load_tfds_oxford_pet_default_mock_flags_bad_values(tmp_path):
    # TFDS's own random mock: trimaps hold arbitrary 0..255 values and sizes differ from
    # the image, so the strict mapping must fail loudly instead of inventing classes.
    with tfds.testing.mock_data(num_examples=2):
        ds = ts.load_tfds("oxford_iiit_pet", data_dir=tmp_path, mask_map=ts.OXFORD_PET_TRIMAP)
        with pytest.raises(tf.errors.InvalidArgumentError):
            next(iter(ds))
        with pytest.raises(DataError, match=r"mask_key='mask' is not a feature; features: "):
            ts.load_tfds("oxford_iiit_pet", data_dir=tmp_path, mask_key="mask")
