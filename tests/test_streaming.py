"""Streaming pipelines (data.cache = "none" / "disk"): the same data as the in-memory path,
patches cut by mirrored indices, disjoint worker shares, bounded memory, named bad files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import zf_unet
from zf_unet.config import Config
from zf_unet.data import make_datasets, write_synthetic_folder
from zf_unet.data import streaming
from zf_unet.errors import ConfigError, DataError
from zf_unet.pixels import mirror_index

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_synthetic_folder(tmp_path_factory.mktemp("stream") / "d", n=8, size=48, seed=3)


def _arrays(batches) -> list[np.ndarray]:
    return [np.concatenate([np.asarray(b[j]) for b in batches]) for j in range(len(batches[0]))]


def test_streamed_folder_gives_the_in_memory_statistics_and_validation_data(folder, tmp_path):
    kw = dict(patch_size=16, batch_size=2, val_fraction=0.25, seed=1, border_weights=True,
              cache_dir=tmp_path / "w")
    mem_train, mem_val = memory = make_datasets(folder, cache="memory", **kw)
    st_train, st_val = streamed = make_datasets(folder, cache="none", **kw)
    mem, st = memory.info, streamed.info
    assert not mem.streaming and st.streaming
    assert (st.num_classes, st.channels, st.num_train, st.num_val) == \
        (mem.num_classes, mem.channels, mem.num_train, mem.num_val) == (1, 1, 6, 2)
    np.testing.assert_array_equal(st.class_pixels, mem.class_pixels)
    np.testing.assert_array_equal(st.class_image_pixels, mem.class_image_pixels)
    np.testing.assert_allclose(st.mean, mem.mean, rtol=1e-6)
    np.testing.assert_allclose(st.std, mem.std, rtol=1e-5)
    # Validation tiles: the same tensors in the same order (images, masks, weight maps).
    for a, b in zip(_arrays(list(mem_val)), _arrays(list(st_val))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Training: the same number of batches of the same shapes, masks still binary class ids.
    assert int(st_train.cardinality()) == int(mem_train.cardinality())
    batches = list(st_train)
    assert len(batches) == int(mem_train.cardinality())
    for img, msk, wt in batches:
        assert img.shape == (2, 16, 16, 1) and msk.shape == wt.shape == (2, 16, 16, 1)
        assert set(np.unique(msk)) <= {0.0, 1.0} and float(tf.reduce_min(wt)) > 0.0


def _position_image(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose two channels hold its own row and column (/ 255), so a patch tells
    where each of its pixels was read from; mask (r + c) % 2."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    img = np.stack([rows, cols], -1).astype(np.float32) / 255.0
    return img, ((rows + cols) % 2).astype(np.uint8)


def _window_starts(read: np.ndarray, length: int) -> list[int]:
    """Positions ``p`` of the training window whose mirrored rows (or columns) are ``read``
    (images shorter than the 16 px patch sit centred in mirrored context)."""
    pad = max(0, 16 - length) // 2
    return [p for p in range(max(length, 16) - 16 + 1)
            if (mirror_index(np.arange(p - pad, p - pad + 16), length) == read).all()]


def test_streamed_patches_are_mirrored_windows_of_their_image():
    sizes = [(24, 20)] * 3 + [(10, 12)] * 3  # larger and smaller than the patch
    pairs = [_position_image(h, w) for h, w in sizes]
    train, _ = make_datasets(([p[0] for p in pairs], [p[1] for p in pairs]), patch_size=16,
                             batch_size=3, val_fraction=0.0, seed=0, cache="none")
    seen = 0
    for img, msk, *_ in train:
        for p, m in zip(np.asarray(img), np.asarray(msk)):
            r = np.rint(p[..., 0] * 255).astype(int)
            c = np.rint(p[..., 1] * 255).astype(int)
            # every row reads one source row, every column one source column ...
            assert (r == r[:, :1]).all() and (c == c[:1, :]).all()
            # ... and together they are a window of one image, mirror-extended
            assert any(_window_starts(r[:, 0], h) and _window_starts(c[0], w)
                       for h, w in set(sizes)), (r[:, 0], c[0])
            np.testing.assert_array_equal(m[..., 0], (r + c) % 2)  # mask read with the image
            seen += 1
    assert seen == int(train.cardinality()) * 3


def test_worker_shares_are_disjoint_and_cover_every_sample():
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    src = zf_unet.data.sources.open_source((images / 10.0, np.zeros((10, 4, 4), np.uint8)))
    reader = streaming.SampleReader(src, 1)
    shares = []
    for worker in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        ds = streaming.stream_samples(reader, range(10), shuffle=True, seed=0, input_context=ctx)
        shares.append({int(round(float(img[0, 0, 0]) * 10)) for img, _ in ds})
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(10))


def test_cache_auto_streams_only_what_does_not_fit(folder, monkeypatch):
    info = make_datasets(folder, patch_size=16, batch_size=2, cache="auto").info
    assert not info.streaming
    monkeypatch.setattr(streaming, "MEMORY_BUDGET", 0)
    info = make_datasets(folder, patch_size=16, batch_size=2, cache="auto").info
    assert info.streaming
    with pytest.raises(ValueError, match="cache must be one of"):
        make_datasets(folder, cache="ram")
    with pytest.raises(ConfigError, match="cache"):
        Config().override(['data.cache="ram"'])


def test_disk_cache_gives_the_same_validation_data(folder, tmp_path):
    kw = dict(patch_size=16, batch_size=2, val_fraction=0.25, seed=1, cache_dir=tmp_path)
    _, val_none = make_datasets(folder, cache="none", **kw)
    train_disk, val_disk = make_datasets(folder, cache="disk", **kw)
    for a, b in zip(_arrays(list(val_none)), _arrays(list(val_disk))):
        np.testing.assert_array_equal(a, b)
    assert len(list(train_disk)) == len(list(train_disk)) > 0  # two epochs: cache written, read


def _stream_cfg(folder: Path, **extra: str) -> Config:
    sets = [f'data.source="{folder}"', 'data.cache="none"', "data.patch_size=16",
            "data.batch_size=2", "data.val_fraction=0.25", "data.augment.enabled=false",
            "model.depth=2", "model.filters=4", "train.epochs=2", 'train.precision="float32"',
            "train.tensorboard=false", "train.collapse_warning=false"]
    return Config().override(sets + [f"{k}={v}" for k, v in extra.items()])


def test_a_file_that_breaks_mid_epoch_is_named_or_skipped(folder, tmp_path):
    import shutil

    import keras

    data = tmp_path / "d"
    shutil.copytree(folder, data)
    victim = sorted((data / "images").iterdir())[0]

    class Corrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            victim.write_bytes(b"not a png at all")

    with pytest.raises(DataError, match=victim.name):
        zf_unet.train(_stream_cfg(data), tmp_path / "run", verbose=0,
                      extra_callbacks=[Corrupt()])
    shutil.copy(sorted((folder / "images").iterdir())[0], victim)  # repaired
    _, run = zf_unet.train(_stream_cfg(data, **{"data.skip_bad_files": "true"}),
                           tmp_path / "run2", verbose=0, extra_callbacks=[Corrupt()])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["streaming"] is True and summary["epochs_run_this_call"] == 2
    assert any(victim.name in name for name in summary["skipped_files"])


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from zf_unet.data import make_datasets

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark
        f.write("5")
    before = status("VmRSS")
    train, _ = make_datasets(sys.argv[1], patch_size=128, batch_size=8, val_fraction=0.0,
                             cache=sys.argv[2], jit_compile=False)
    for _ in train:
        pass
    print(json.dumps({"extra": status("VmHWM") - before}))
""")


def _write_rgb_folder(root: Path, n: int) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):  # uncompressed PNGs: random pixels do not compress; same decoded data
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
            root / "images" / f"{i:04d}.png", compress_level=0)
        Image.fromarray((rng.random((256, 256)) > 0.5).astype(np.uint8) * 255).save(
            root / "masks" / f"{i:04d}.png", compress_level=0)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_streaming_memory_stays_bounded_by_the_pipeline_not_the_data(tmp_path):
    """400 RGB 256x256 pairs: 300 MiB as decoded float32. Reading them and training one
    epoch from them in memory holds at least that; streamed, the peak resident memory above
    the level before ``make_datasets`` stays under a third of it."""
    _write_rgb_folder(tmp_path / "d", 400)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    extra = {}
    for cache in ("none", "memory"):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "d"), cache],
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        extra[cache] = json.loads(out.stdout.strip().splitlines()[-1])["extra"]
    decoded = 400 * 256 * 256 * 3 * 4
    print({k: f"{v / 2**20:.0f} MiB" for k, v in extra.items()},
          f"decoded {decoded / 2**20:.0f} MiB")
    assert extra["memory"] > decoded  # the measurement sees data held in memory ...
    assert extra["none"] < decoded / 3  # ... and streaming does not hold it


def _id_folder(root: Path, n: int) -> Path:
    """``n`` 16x16 pairs; image ``i`` is the constant 10 * (i + 1) (its id), masks random."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(np.full((16, 16), 10 * (i + 1), np.uint8)).save(
            root / "images" / f"{i:02d}.png")
        Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8) * 255).save(
            root / "masks" / f"{i:02d}.png")
    return root


@pytest.mark.slow
def test_two_workers_read_disjoint_files_that_cover_the_epoch_and_train_alike(tmp_path):
    """Two MultiWorkerMirroredStrategy processes on 127.0.0.1 stream one folder: in one epoch
    they read every training sample exactly once between them, and training through
    ``zf_unet.train`` ends with the same weights on both."""
    from _multiworker import run_workers

    folder = _id_folder(tmp_path / "d", 8)
    run_workers(ROOT / "tests" / "_multiworker_stream_worker.py",
                [[str(folder), str(tmp_path / "run"), str(tmp_path / f"w{i}")] for i in range(2)])
    seen = [json.loads((tmp_path / f"w{i}.json").read_text())["seen"] for i in range(2)]
    assert sorted(seen[0] + seen[1]) == list(range(8))  # every sample once, none twice
    assert set(seen[0]).isdisjoint(seen[1]) and seen[0] and seen[1]
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    for k in w0.files:
        np.testing.assert_array_equal(w0[k], w1[k])


def test_shards_stream_with_held_out_files_and_train(folder, tmp_path):
    """A shard folder (zf-unet pack) streams: whole files are held out for validation, the
    stored weight maps are used, and zf_unet.train runs on it."""
    from zf_unet.cli import main
    from zf_unet.data.shard_source import ShardSource

    shards = tmp_path / "shards"
    assert main(["pack", str(folder), "--out", str(shards), "--shard-size", "8k",
                 "--border-weights"]) == 0
    src = ShardSource(shards)
    assert len(src.files) >= 3
    train, val = ds = make_datasets(shards, patch_size=16, batch_size=2, val_fraction=0.25,
                                    border_weights=True, cache="none")
    info = ds.info
    assert info.streaming and info.num_train + info.num_val == 8 and info.num_val >= 2
    held = 0
    for count in reversed(src.info.shard_counts):  # whole files from the end, >= 25 %
        if held >= 0.25 * 8:
            break
        held += count
    assert held == info.num_val
    img, msk, wt = next(iter(train))
    assert img.shape == wt.shape == (2, 16, 16, 1)
    assert len(list(val)) > 0
    with pytest.raises(DataError, match="val_source"):
        make_datasets(shards, val_indices=[0], cache="none")
    _, run = zf_unet.train(Config().override([
        f'data.source="{shards}"', 'data.cache="none"', "data.patch_size=16",
        "data.batch_size=2", "data.val_fraction=0.25", "data.augment.enabled=false",
        "model.depth=2", "model.filters=4", "train.epochs=1", 'train.precision="float32"',
        "train.tensorboard=false"]), tmp_path / "run", verbose=0)
    assert json.loads((run / "summary.json").read_text())["streaming"] is True


@pytest.mark.parametrize("kind", ["stacks", "synthetic", "tfds", "arrays"])
def test_every_source_kind_streams_like_it_loads(kind, tmp_path, monkeypatch):
    """Stacks, the synthetic set, TFDS and arrays stream (cache="none") with the statistics
    and validation data of the in-memory path."""
    import tifffile

    from zf_unet.data import make_synthetic, tfds_sources

    x, y = make_synthetic(6, 32, seed=2)
    images, masks = (x[..., 0] * 255).astype(np.uint8), y[..., 0].astype(np.uint8)
    if kind == "stacks":
        tifffile.imwrite(tmp_path / "v.tif", images)
        tifffile.imwrite(tmp_path / "l.tif", masks * 255)
        source = (tmp_path / "v.tif", tmp_path / "l.tif")
    elif kind == "tfds":
        monkeypatch.setattr(tfds_sources, "load_tfds", lambda name, **kw: (
            tf.data.Dataset.from_tensor_slices((images[..., None], masks[..., None]))))
        source = "tfds:tiny"
    elif kind == "synthetic":
        source = "synthetic"
    else:
        source = (images, masks)
    kw = dict(patch_size=16, batch_size=2, val_fraction=0.34, seed=0)
    _, mem_val = memory = make_datasets(source, cache="memory", **kw)
    train, st_val = streamed = make_datasets(source, cache="none", **kw)
    mem, st = memory.info, streamed.info
    assert st.streaming and not mem.streaming
    assert (st.num_train, st.num_val, st.num_classes) == (mem.num_train, mem.num_val, 1)
    np.testing.assert_array_equal(st.class_pixels, mem.class_pixels)
    np.testing.assert_allclose(st.mean, mem.mean, rtol=1e-5)
    for a, b in zip(_arrays(list(mem_val)), _arrays(list(st_val))):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(list(train)) == int(train.cardinality()) > 0
