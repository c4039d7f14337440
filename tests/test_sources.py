"""The data sources (zf_unet.data.sources): lazy, random-access samples behind every loader."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

import zf_unet
from zf_unet import registry
from zf_unet.data import file_sources, io, loaders, stats
from zf_unet.data.file_sources import FolderSource, StackSource
from zf_unet.data.memory_sources import ArraySource, SyntheticSource
from zf_unet.data.sources import Sample, Source, collect, open_source
from zf_unet.data.tfds_sources import TFDSSource
from zf_unet.errors import DataError


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    return zf_unet.data.write_synthetic_folder(tmp_path / "d", n=5, size=32, seed=3)


def _same(source: Source, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
    assert len(source) == len(images) == len(source.names())
    for i in (len(images) - 1, 0, *range(1, len(images) - 1)):  # random access, any order
        s = source.read(i)
        assert isinstance(s, Sample) and s.name == source.names()[i]
        assert s.image.dtype == images[i].dtype and s.mask.dtype == np.uint8
        np.testing.assert_array_equal(s.image, images[i])
        np.testing.assert_array_equal(s.mask, masks[i])


def _true_nbytes(source: Source) -> int:
    return sum(s.image.astype(np.float32).nbytes + s.mask.nbytes for s in source)


# --------------------------------------------------------------------------- kinds


def test_folder_source_reads_what_load_folder_loads(synth):
    src = FolderSource(synth)
    _same(src, *loaders.load_folder(synth))
    assert src.names()[:2] == ["images/000.png", "images/001.png"]
    assert src.keys()[:2] == ["000.png", "001.png"]
    assert src.paths(1) == (str(synth / "images" / "001.png"), str(synth / "masks" / "001.png"))
    assert src.read(0).scaled_from_255 and src.kind == "folder"
    assert [s.name for s in src] == src.names()
    assert abs(src.nbytes_hint() - _true_nbytes(src)) <= 0.1 * _true_nbytes(src)


def test_reading_one_sample_opens_only_its_two_files(synth, monkeypatch):
    src = FolderSource(synth)
    opened: list[str] = []
    read_image = io.read_image
    monkeypatch.setattr(file_sources, "read_image", lambda p, **kw: opened.append(Path(p).name)
                        or read_image(p, **kw))
    assert len(src) == 5 and src.names()  # no decoding
    assert opened == []
    src.read(3)
    assert opened == ["003.png", "003.png"]


def test_corrupt_file_is_named_by_read(synth):
    (synth / "masks" / "002.png").write_bytes(b"not a png")
    src = FolderSource(synth)
    src.read(1)
    with pytest.raises(DataError, match=r"masks[/\\]002\.png: cannot read image"):
        src.read(2)
    src.read(3)  # the other samples stay readable


def test_unpaired_files_strict_and_collected(synth):
    (synth / "images" / "extra.png").write_bytes((synth / "images" / "000.png").read_bytes())
    with pytest.raises(DataError, match=r"1 image\(s\) without a mask in masks/ \(extra.png\)"):
        FolderSource(synth)
    src = FolderSource(synth, strict=False)
    assert len(src) == 5 and [p.name for p in src.unpaired] == ["extra.png"]
    assert len(src.problems) == 1 and "extra.png" in src.problems[0]


def test_stack_source_reads_what_load_tiff_stacks_loads(tmp_path, isbi_dir):
    images, masks = loaders.load_folder(isbi_dir)
    vol, lab = tmp_path / "train-volume.tif", tmp_path / "train-labels.tif"
    tifffile.imwrite(vol, np.stack([im[..., 0] for im in images[:6]]), photometric="minisblack")
    tifffile.imwrite(lab, np.stack([m * 255 for m in masks[:6]]).astype(np.uint8),
                     photometric="minisblack")
    src = StackSource(vol, lab)
    assert len(src) == 6 and src._stacks is None  # noqa: SLF001 - len from the headers
    assert src.names()[3] == "train-volume.tif[3]"
    _same(src, *loaders.load_tiff_stacks(vol, lab))
    _same(src, images[:6], masks[:6])
    assert src.paths(0) == (str(vol), str(lab))
    fresh = StackSource(vol, lab)
    assert abs(fresh.nbytes_hint() - _true_nbytes(src)) <= 0.1 * _true_nbytes(src)


def test_isbi_folder(isbi_dir):
    src = FolderSource(isbi_dir)
    images, masks = loaders.load_folder(isbi_dir)
    assert len(src) == len(images) >= 20
    for i in (7, 0):
        s = src.read(i)
        np.testing.assert_array_equal(s.image, images[i])
        np.testing.assert_array_equal(s.mask, masks[i])
    assert abs(src.nbytes_hint() - _true_nbytes(src)) <= 0.1 * _true_nbytes(src)


def test_array_source_reads_what_load_arrays_loads(rng):
    x = rng.integers(0, 256, (4, 16, 12), dtype=np.uint8)
    y = (rng.random((4, 16, 12, 1)) > 0.5).astype(np.uint8) * 255
    src = ArraySource(x, y)
    _same(src, *loaders.load_arrays(x, y))
    assert src.names() == [f"array[{i}]" for i in range(4)] and src.paths(2) == ()
    assert src.read(-1).name == "array[3]" and src.read(0).scaled_from_255
    assert src.nbytes_hint() == _true_nbytes(src)
    with pytest.raises(IndexError):
        src.read(4)
    with pytest.raises(DataError, match=r"masks: 3 sample\(s\) but images has 4"):
        ArraySource(x, y[:3])


def test_synthetic_source_is_make_synthetic():
    x, y = zf_unet.data.make_synthetic(4, 32, seed=7)
    src = SyntheticSource(4, 32, 7)
    _same(src, list(x), [m[..., 0] for m in y])
    assert src.names()[2] == "synthetic[2]" and src.nbytes_hint() == _true_nbytes(src)


def test_tfds_source_wraps_load_tfds(monkeypatch, rng):
    import tensorflow as tf

    from zf_unet.data import tfds_sources

    x = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 3, (3, 8, 8, 1), dtype=np.uint8)
    seen: dict = {}

    def fake(name, **kwargs):
        seen.update(name=name, **kwargs)
        return tf.data.Dataset.from_tensor_slices((x, y))

    monkeypatch.setattr(tfds_sources, "load_tfds", fake)
    src = open_source("tfds:tiny", tfds_kwargs={"split": "train"})
    assert isinstance(src, TFDSSource) and not seen  # lazy
    assert len(src) == 3 and seen == {"name": "tiny", "split": "train"}
    _same(src, list(x), [m[..., 0] for m in y])
    assert src.names()[1] == "tiny[1]"
    grouped = open_source("tfds:tiny", class_values=[[0], [1, 2]])
    np.testing.assert_array_equal(grouped.read(2).mask, (y[2, ..., 0] > 0).astype(np.uint8))


def test_tfds_source_is_lazy():
    src = TFDSSource("no_such_data_set_here")  # nothing is loaded yet
    assert src.kind == "tfds"
    with pytest.raises(DataError, match="unknown data set"):
        len(src)


# --------------------------------------------------------------------------- resolver


def test_open_source_resolution(synth, tmp_path, rng):
    assert isinstance(open_source(synth), FolderSource)
    assert isinstance(open_source(str(synth)), FolderSource)
    x = rng.random((2, 8, 8), dtype=np.float32)
    assert isinstance(open_source((x, x > 0.5)), ArraySource)
    assert isinstance(open_source((tmp_path / "v.tif", tmp_path / "l.tif")), StackSource)
    syn = open_source("synthetic", synthetic=(3, 16, 1))
    assert isinstance(syn, SyntheticSource) and len(syn) == 3 and syn.seed == 1
    tf_src = open_source("tfds:some_set", tfds_kwargs={"split": "test"})
    assert isinstance(tf_src, TFDSSource) and tf_src.name == "some_set"
    assert tf_src.tfds_kwargs == {"split": "test"}
    assert open_source(syn) is syn
    kinds = {registry.SOURCES[k].kind for k in registry.SOURCES}
    assert kinds == set(registry.SOURCES)


@pytest.mark.parametrize("spec,match", [
    ("missing_dir", "no such folder"),
    ("file.txt", "not a folder"),
    (42, "expected a folder"),
])
def test_open_source_errors(tmp_path, monkeypatch, spec, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=match):
        open_source(spec)


def test_open_source_picks_a_shard_folder_only_with_its_index(tmp_path, monkeypatch):
    calls = []

    def fake(path):
        calls.append(path)
        return "shards"

    monkeypatch.setitem(registry.SOURCES._loaded, "shards", fake)
    (tmp_path / "zf_unet_shards.json").write_text("{}")
    assert open_source(tmp_path) == "shards" and calls == [tmp_path]


def test_bad_mask_arguments_fail_when_opening(synth):
    with pytest.raises(DataError, match="convention='class_ids' needs num_classes"):
        open_source(synth, convention="class_ids")


def test_collect_logs_one_notice(synth, caplog):
    with caplog.at_level(logging.INFO, logger="zf_unet"):
        images, masks = collect(FolderSource(synth))
    assert len(images) == len(masks) == 5
    notices = [r for r in caplog.records if "divided by 255" in r.getMessage()]
    assert len(notices) == 1 and "5 of 5 masks" in notices[0].getMessage()


def test_load_source_names_and_floats(synth):
    data = zf_unet.data.load_source(synth)
    assert data.names[:2] == ["000.png", "001.png"]
    assert data.images[0].dtype == np.float32 and float(data.images[0].max()) <= 1.0


def test_sample_summary_is_describe_dataset(synth):
    images, masks = loaders.load_folder(synth)
    totals = stats.SampleStats()
    for s in FolderSource(synth):
        totals.update(s)
    assert totals.summary() == stats.describe_dataset(images, masks)
    assert stats.SampleStats().summary() == {}
