"""TFRecord shards (zf_unet.data.shard_format, shard_writer, shard_source) and `zf-unet pack`."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from zf_unet.cli import main
from zf_unet.data import (border_weight_map, class_pixel_counts, make_synthetic,
                          write_synthetic_folder)
from zf_unet.data.shard_format import INDEX_NAME, ShardInfo, parse_size
from zf_unet.data.shard_source import ShardSource
from zf_unet.data.shard_writer import write_shards
from zf_unet.errors import ConfigError, DataError, OutputExistsError
from zf_unet.outputs import MARKER


def _folder_samples(folder: Path) -> list[SimpleNamespace]:
    """The pairs of a write_synthetic_folder folder, read with Pillow: image (H, W, C) uint8,
    mask (H, W) class ids 0/1."""
    out = []
    for path in sorted((folder / "images").glob("*.png")):
        image = np.asarray(Image.open(path))
        image = image[..., None] if image.ndim == 2 else image
        mask = (np.asarray(Image.open(folder / "masks" / path.name)) > 127).astype(np.uint8)
        out.append(SimpleNamespace(name=path.stem, image=image, mask=mask))
    return out


def _samples(n: int = 5, size: int = 32, channels: int = 1, dtype: str = "uint8",
             seed: int = 0) -> list[SimpleNamespace]:
    images, masks = make_synthetic(n, size, seed, channels)
    out = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        if dtype == "uint8":
            image = np.round(image * 255).astype(np.uint8)
        elif dtype == "uint16":
            image = np.round(image * 65535).astype(np.uint16)
        else:
            image = image.astype(dtype)
        out.append(SimpleNamespace(name=f"s{i:02d}", image=image,
                                   mask=mask[..., 0].astype(np.uint8)))
    return out


def _as_numpy(ds: tf.data.Dataset) -> list[tuple[np.ndarray, ...]]:
    return [tuple(t.numpy() for t in item) for item in ds]


def test_round_trip_folder_in_several_shards(tmp_path):
    folder = write_synthetic_folder(tmp_path / "data", n=6, size=40)
    samples = _folder_samples(folder)
    record = 40 * 40 * (1 + 1 + 4) + 200  # image + mask + weights + overhead
    info = write_shards(samples, tmp_path / "shards", shard_size=2 * record, border_weights=True,
                        w0=10.0, sigma=5.0)
    assert len(info.shards) >= 3 and sum(info.shard_counts) == 6
    files = sorted(p.name for p in (tmp_path / "shards").iterdir() if p.name != MARKER)
    n = len(info.shards)
    assert files == [f"shard-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)] + [INDEX_NAME]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    source = ShardSource(tmp_path / "shards")
    assert len(source) == 6 and source.names() == [s.name for s in samples]
    assert source.info == info and len(source.files) == n
    items = _as_numpy(source.as_dataset(shuffle_files=False))
    assert len(items) == 6
    for sample, (image, mask, weight) in zip(samples, items):
        assert image.dtype == np.float32 and mask.dtype == np.uint8 and weight.dtype == np.float32
        np.testing.assert_allclose(image, sample.image / 255.0, atol=1e-6)
        np.testing.assert_array_equal(mask[..., 0], sample.mask)
        np.testing.assert_allclose(weight[..., 0], border_weight_map(sample.mask, w0=10.0,
                                                                     sigma=5.0), rtol=1e-6)
    read_back = list(source)
    assert [s.name for s in read_back] == source.names()
    for sample, back in zip(samples, read_back):
        assert back.image.dtype == np.uint8 and back.image.shape == sample.image.shape
        np.testing.assert_array_equal(back.image, sample.image)
        np.testing.assert_array_equal(back.mask, sample.mask)
        assert back.scaled_from_255 is False
    assert source.read(4).name == samples[4].name
    np.testing.assert_array_equal(source.read(-1).image, samples[-1].image)
    for stored, sample in zip(source.weights(), samples):
        np.testing.assert_allclose(stored, border_weight_map(sample.mask), rtol=1e-6)
    with pytest.raises(IndexError):
        source.read(6)
    source.verify()


@pytest.mark.parametrize("dtype,divisor", [("uint16", 65535.0), ("float32", 1.0)])
def test_uint16_and_float_images_keep_their_dtype(tmp_path, dtype, divisor):
    samples = _samples(4, 24, dtype=dtype)
    samples.append(SimpleNamespace(name="wide", image=samples[0].image[:16],
                                   mask=samples[0].mask[:16]))
    info = write_shards(samples, tmp_path / "s", shard_size=3000)
    assert info.image_dtypes == (dtype,) and info.has_weights is False
    source = ShardSource(tmp_path / "s")
    items = _as_numpy(source.as_dataset(shuffle_files=False))
    assert [len(item) for item in items] == [2] * 5  # no weights
    for sample, (image, mask) in zip(samples, items):
        np.testing.assert_allclose(image, sample.image.astype(np.float64) / divisor, atol=1e-6)
        np.testing.assert_array_equal(mask[..., 0], sample.mask)
    for sample, back in zip(samples, source):
        assert back.image.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back.image, sample.image)


def test_mixed_image_dtypes_are_each_scaled(tmp_path):
    a, b = _samples(2, 16, dtype="uint8"), _samples(2, 16, dtype="uint16", seed=1)
    info = write_shards(a + b, tmp_path / "s")
    assert info.image_dtypes == ("uint8", "uint16")
    items = _as_numpy(ShardSource(tmp_path / "s").as_dataset(shuffle_files=False))
    for sample, (image, _) in zip(a + b, items):
        expect = sample.image / float(np.iinfo(sample.image.dtype).max)
        np.testing.assert_allclose(image, expect, atol=1e-6)


def test_rgb_images_and_channel_statistics(tmp_path):
    samples = _samples(4, 24, channels=3)
    info = write_shards(samples, tmp_path / "s", shard_size="4k")
    assert info.channels == 3
    ds = ShardSource(tmp_path / "s").as_dataset(shuffle_files=False)
    assert ds.element_spec[0].shape.as_list() == [None, None, 3]
    items = _as_numpy(ds)
    for sample, (image, _) in zip(samples, items):
        assert image.shape == (24, 24, 3)
        np.testing.assert_allclose(image, sample.image / 255.0, atol=1e-6)
    pixels = np.concatenate([s.image.reshape(-1, 3) / 255.0 for s in samples])
    np.testing.assert_allclose(info.mean, pixels.mean(axis=0), rtol=1e-6)  # float32 images
    np.testing.assert_allclose(info.std, pixels.std(axis=0), rtol=1e-6)
    assert info.num_pixels == len(pixels)


def test_class_pixel_counts_in_the_index(tmp_path):
    rng = np.random.default_rng(0)
    samples = [SimpleNamespace(name=f"m{i}", image=rng.integers(0, 255, (20, 16), np.uint8),
                               mask=rng.choice(np.array([0, 1, 2, 255], np.uint8), (20, 16)))
               for i in range(4)]
    samples[1].mask[samples[1].mask == 2] = 0  # class 2 absent from one image
    info = write_shards(samples, tmp_path / "s", num_classes=3, ignore_index=255,
                        meta={"origin": "test"})
    pixels, image_pixels = class_pixel_counts([s.mask for s in samples], 3, ignore_index=255)
    assert info.class_pixels == tuple(pixels) and info.class_image_pixels == tuple(image_pixels)
    assert info.num_classes == 3 and info.ignore_index == 255 and info.channels == 1
    stored = json.loads((tmp_path / "s" / INDEX_NAME).read_text())
    assert stored["format_version"] == 1 and stored["meta"] == {"origin": "test"}
    assert ShardInfo.from_dict(stored) == info
    images = np.concatenate([s.image.ravel() / 255.0 for s in samples])
    np.testing.assert_allclose(info.mean, [images.mean()])
    np.testing.assert_allclose(info.std, [images.std()], rtol=1e-6)
    # without num_classes the counts grow with the ids seen
    info2 = write_shards(samples, tmp_path / "t", ignore_index=255)
    assert info2.class_pixels == info.class_pixels and info2.num_classes is None
    with pytest.raises(DataError, match="m0"):
        write_shards(samples, tmp_path / "u", num_classes=2, ignore_index=255)


def test_border_weights_need_binary_masks(tmp_path):
    samples = _samples(2, 16)
    samples[1].mask[0, 0] = 2
    with pytest.raises(DataError, match="s01.*binary"):
        write_shards(samples, tmp_path / "s", border_weights=True)
    assert not (tmp_path / "s").exists() and list(tmp_path.iterdir()) == []
    # void pixels are left out of the binary check and weigh 0
    samples[1].mask[0, 0] = 255
    write_shards(samples, tmp_path / "s", border_weights=True, ignore_index=255)
    _, _, weight = _as_numpy(ShardSource(tmp_path / "s").as_dataset(shuffle_files=False))[1]
    assert weight[0, 0, 0] == 0.0


@pytest.mark.parametrize("shard_size", [1, 10**9])  # one file per sample / one file in all
def test_input_context_shards_see_every_sample_once(tmp_path, shard_size):
    samples = _samples(7, 16)
    info = write_shards(samples, tmp_path / "s", shard_size=shard_size)
    assert len(info.shards) == (7 if shard_size == 1 else 1)
    source = ShardSource(tmp_path / "s")
    seen = []
    for shuffle in (False, True):
        seen = []
        for i in range(2):
            ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i)
            part = _as_numpy(source.as_dataset(shuffle_files=shuffle, seed=3, input_context=ctx))
            assert 0 < len(part) < 7
            seen += [int(round(float(image.mean()) * 1e6)) for image, _ in part]
        expect = [int(round(float((s.image / 255.0).astype(np.float32).mean()) * 1e6))
                  for s in samples]
        assert sorted(seen) == sorted(expect)


def test_shuffled_files_give_every_sample(tmp_path):
    samples = _samples(6, 16)
    write_shards(samples, tmp_path / "s", shard_size=1)
    ds = ShardSource(tmp_path / "s").as_dataset(shuffle_files=True, seed=0, num_parallel_reads=3)
    masks = sorted(m.tobytes() for _, m in _as_numpy(ds))
    assert masks == sorted(s.mask[..., None].tobytes() for s in samples)


def test_gfile_paths(tmp_path):
    """Any tf.io.gfile file system works (ram:// here, gs:// in the cloud)."""
    samples = _samples(3, 16)
    write_shards(samples, "ram://zf_unet_test/shards", shard_size=1)
    source = ShardSource("ram://zf_unet_test/shards")
    assert len(source) == 3 and tf.io.gfile.exists(source.files[2])
    assert [s.name for s in source] == ["s00", "s01", "s02"]
    with pytest.raises(OutputExistsError):
        write_shards(samples, "ram://zf_unet_test/shards")
    write_shards(samples[:2], "ram://zf_unet_test/shards", overwrite=True)
    assert len(ShardSource("ram://zf_unet_test/shards")) == 2
    # no temporary folder is left beside it
    assert [n.rstrip("/") for n in tf.io.gfile.listdir("ram://zf_unet_test")] == ["shards"]
    tf.io.gfile.rmtree("ram://zf_unet_test")


def test_existing_out_dir_needs_overwrite(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match=str(out)):
        write_shards(_samples(2, 16), out)
    assert (out / "keep.txt").exists()
    # a folder of the user's files is never replaced, even with overwrite=True
    with pytest.raises(OutputExistsError, match="keep.txt.*never replaced"):
        write_shards(_samples(2, 16), out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    write_shards(_samples(3, 16), out)  # empty now: written, with the output marker
    write_shards(_samples(2, 16), out, overwrite=True)  # its own shards: replaced
    assert len(ShardSource(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    (tmp_path / "empty").mkdir()
    write_shards(_samples(1, 16), tmp_path / "empty")  # an empty folder is fine
    with pytest.raises(DataError, match="no samples"):
        write_shards([], tmp_path / "none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "s"]


def test_bad_samples_name_the_sample(tmp_path):
    good = _samples(2, 16)
    with pytest.raises(DataError, match="bad.*mask shape"):
        write_shards(good + [SimpleNamespace(name="bad", image=good[0].image,
                                             mask=good[0].mask[:8])], tmp_path / "a")
    with pytest.raises(DataError, match="rgb.*channel"):
        write_shards(good + [SimpleNamespace(name="rgb", image=np.zeros((16, 16, 3), np.uint8),
                                             mask=good[0].mask)], tmp_path / "b")
    with pytest.raises(DataError, match="f.*outside"):
        write_shards([SimpleNamespace(name="f", image=np.full((4, 4), 200.0),
                                      mask=np.zeros((4, 4)))], tmp_path / "c")
    with pytest.raises(DataError, match="i32.*int32"):
        write_shards([SimpleNamespace(name="i32", image=np.zeros((4, 4), np.int32),
                                      mask=np.zeros((4, 4)))], tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_parse_size():
    assert parse_size("256MB") == 256 * 2**20
    assert parse_size("1GB") == 2**30
    assert parse_size("500k") == 500 * 1024
    assert parse_size("1.5 GiB") == 3 * 2**29
    assert parse_size("4096") == 4096 and parse_size(10) == 10
    for bad in ("", "12 parsecs", "MB", "-5MB", "0"):
        with pytest.raises(ConfigError, match="--shard-size"):
            parse_size(bad)
    with pytest.raises(ConfigError, match="shard_size"):
        write_shards(_samples(1, 16), "unused", shard_size="lots")


def test_index_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=f"{INDEX_NAME}: not found"):
        ShardSource(tmp_path)
    write_shards(_samples(2, 16), tmp_path / "s")
    index = tmp_path / "s" / INDEX_NAME
    data = json.loads(index.read_text())
    index.write_text("{not json")
    with pytest.raises(DataError, match=f"{INDEX_NAME}: not valid JSON"):
        ShardSource(tmp_path / "s")
    index.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(DataError, match="version 99 is newer"):
        ShardSource(tmp_path / "s")
    del data["shards"]
    index.write_text(json.dumps(data))
    with pytest.raises(DataError, match="shards"):
        ShardSource(tmp_path / "s")


def test_truncated_shard(tmp_path):
    write_shards(_samples(4, 24), tmp_path / "s", shard_size=1)
    source = ShardSource(tmp_path / "s")
    broken = Path(source.files[2])
    broken.write_bytes(broken.read_bytes()[:-100])
    with pytest.raises(tf.errors.DataLossError):
        _as_numpy(source.as_dataset(shuffle_files=False))
    with pytest.raises(DataError, match=broken.name):
        list(source)
    with pytest.raises(DataError, match=broken.name):
        source.read(2)
    assert source.read(3).name == "s03"
    with pytest.raises(DataError, match=broken.name):
        source.verify()
    broken.unlink()
    with pytest.raises(DataError, match=f"{broken.name}: shard file not found"):
        source.read(2)


def test_pack_command(tmp_path, capsys):
    folder = write_synthetic_folder(tmp_path / "data", n=5, size=32)
    out = tmp_path / "shards"
    assert main(["pack", str(folder), "--out", str(out), "--shard-size", "8k",
                 "--border-weights", "--sigma", "3"]) == 0
    printed = capsys.readouterr().out
    source = ShardSource(out)
    assert f"wrote 5 samples in {len(source.files)} shards to {out} (" in printed
    assert "MB)" in printed and len(source.files) >= 2
    assert source.info.has_weights and source.info.sigma == 3.0
    samples = _folder_samples(folder)
    assert [Path(name).stem for name in source.names()] == [s.name for s in samples]
    for sample, back in zip(samples, source):
        np.testing.assert_array_equal(back.image, sample.image)
        np.testing.assert_array_equal(back.mask, sample.mask)
    # exists without --overwrite, then with it
    assert main(["pack", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zf-unet pack: error:" in err[0] and str(out) in err[0]
    assert main(["pack", str(folder), "--out", str(out), "--overwrite"]) == 0
    assert not ShardSource(out).info.has_weights


def test_open_source_reads_a_shard_folder(tmp_path):
    from zf_unet.data.sources import Sample, collect, open_source

    samples = _samples(3, 16)
    write_shards(samples, tmp_path / "s", shard_size=1)
    source = open_source(str(tmp_path / "s"))
    assert isinstance(source, ShardSource) and isinstance(source.read(0), Sample)
    assert source.keys() == ["s00", "s01", "s02"] and source.paths(1) == (source.files[1],)
    assert source.nbytes_hint() == 3 * 16 * 16 * 5
    images, masks = collect(source)
    np.testing.assert_array_equal(np.stack(masks), np.stack([s.mask for s in samples]))
    # a shard folder can itself be packed again (e.g. into bigger shards)
    info = write_shards(source, tmp_path / "t")
    assert len(info.shards) == 1 and info.class_pixels == source.info.class_pixels


@pytest.mark.parametrize("argv,needle", [
    (["pack", "{tmp}/missing", "--out", "{tmp}/o"], "missing"),
    (["pack", "{data}", "--out", "{tmp}/o", "--shard-size", "big"], "--shard-size"),
    (["pack", "{data}", "--out", "{tmp}/o", "--num-classes", "0"], "--num-classes"),
])
def test_pack_command_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    data = write_synthetic_folder(tmp_path / "data", n=1, size=16)
    argv = [a.format(tmp=tmp_path, data=data) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert needle in lines[-1] and lines[-1].startswith("zf-unet pack: error:")
    if "missing" in needle:  # argparse errors come after the usage line
        assert len(lines) == 1
    assert not (tmp_path / "o").exists()
