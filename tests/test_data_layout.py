"""The data package's parts: the one statistics counter, the Source kinds in the registry,
the header shapes that agree with the decoders, the pixel rules in zf_unet.pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zf_unet import pixels, registry
from zf_unet.data import class_pixel_counts, describe_dataset, io
from zf_unet.data.sources import Source, open_source
from zf_unet.data.stats import SampleStats
from zf_unet.errors import DataError


def test_every_registered_source_kind_is_a_source():
    for name in registry.SOURCES:
        cls = registry.SOURCES[name]
        assert issubclass(cls, Source), name
        assert cls.kind == name
    assert registry.SOURCES["shards"].always_streams
    assert not registry.SOURCES["folder"].always_streams


def test_open_source_returns_a_shard_source_as_is(tmp_path):
    from zf_unet.data import make_synthetic
    from zf_unet.data.memory_sources import ArraySource
    from zf_unet.data.shard_writer import write_shards

    x, y = make_synthetic(3, 32, seed=2)
    write_shards(ArraySource(x, y[..., 0]), tmp_path / "s")
    src = open_source(tmp_path / "s")
    assert isinstance(src, Source) and src.kind == "shards"
    assert open_source(src) is src
    assert src.parts() == [(src.files[0], 0, 3)] and src.stream_counted(True)
    assert [s.name for s in src] == src.names() and len(src) == 3


def test_stats_merge_is_adding_every_sample(rng=np.random.default_rng(0)):
    images = [rng.integers(0, 256, (8, 6, 2), dtype=np.uint8) for _ in range(5)]
    masks = [rng.integers(0, 3, (8, 6), dtype=np.uint8) for _ in range(5)]
    masks[2][:] = 0
    masks[3][:2] = 255
    whole, a, b = SampleStats(255), SampleStats(255), SampleStats(255)
    for i, (img, m) in enumerate(zip(images, masks)):
        whole.add(img, m)
        (a if i < 2 else b).add(img, m)
    a.merge(b)
    assert a.summary() == whole.summary()
    assert a.empty == whole.empty == [2]
    for x, y in zip(a.mean_std() + a.class_counts(3), whole.mean_std() + whole.class_counts(3)):
        np.testing.assert_array_equal(x, y)
    assert whole.ignored == 12 and whole.summary()["ignored_pixels"] == 12
    pixels_, image_pixels = class_pixel_counts(masks, 3, ignore_index=255)
    np.testing.assert_array_equal(pixels_, whole.class_counts(3)[0])
    np.testing.assert_array_equal(image_pixels, whole.class_counts(3)[1])
    mean = np.mean([img.astype(np.float64) / 255 for img in images], axis=(0, 1, 2))
    np.testing.assert_allclose(whole.mean_std()[0], mean, rtol=1e-6)


def test_stats_refuse_other_channels_unless_told():
    strict, loose = SampleStats(), SampleStats(strict_channels=False)
    for s in (strict, loose):
        s.add(np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="images\\[1\\]: 3 channel"):
        strict.add(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    loose.add(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.uint8))
    assert loose.summary()["channels"] == [1, 3]
    loose.add(np.zeros((4, 4, 1)), np.full((4, 4), 2, np.uint8))
    with pytest.raises(DataError, match="class ids in 0..1"):
        loose.class_counts(1)
    assert describe_dataset([np.zeros((2, 2, 1)), np.zeros((2, 2, 3))],
                            [np.zeros((2, 2), np.uint8)] * 2)["channels"] == [1, 3]


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "CMYK"])
def test_header_shape_agrees_with_the_decoder(tmp_path, mode):
    im = Image.new(mode, (5, 3))
    if mode == "PA":
        im = Image.new("P", (5, 3))
        im.info["transparency"] = 0
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    assert io.image_shape(path) == io.read_image(path).shape


def test_scale_to_unit_is_to_float_image_without_checks():
    x = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(pixels.scale_to_unit(x), pixels.to_float_image(x))
    big = np.array([[2.0]], np.float32)
    assert pixels.scale_to_unit(big) is big  # float32 as is, no copy, no range check
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        pixels.to_float_image(big)
