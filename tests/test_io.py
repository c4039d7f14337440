"""zf_unet.data.io: readers, pairing, mask conventions, loaders and their errors."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from zf_unet.data import io, loaders, masks, pairing, stats
from zf_unet.errors import DataError


# --------------------------------------------------------------------------- helpers


def save_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def save_indexed_png(path: Path, ids: np.ndarray, palette: list[int]) -> Path:
    """A palette ("P" mode) PNG whose pixel values are ``ids``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    im.putpalette(palette + [0] * (768 - len(palette)))
    im.save(path)
    return path


def save_tif(path: Path, arr: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, **kwargs)
    return path


def make_folder(root: Path, n: int = 3, size=(16, 20), mask_values=(0, 255), rng=None) -> Path:
    rng = rng or np.random.default_rng(0)
    for i in range(n):
        save_png(root / "images" / f"{i:02d}.png", rng.integers(0, 256, size, dtype=np.uint8))
        save_png(root / "masks" / f"{i:02d}.png",
                 rng.choice(np.array(mask_values, np.uint8), size=size))
    return root


def zf_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "zf_unet"]


# --------------------------------------------------------------------------- readers


def test_read_image_png_gray_rgb_16bit(tmp_path, rng):
    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (7, 9), dtype=np.uint16)
    out = io.read_image(save_png(tmp_path / "g.png", gray))
    assert out.shape == (7, 9, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], gray)
    out = io.read_image(save_png(tmp_path / "c.PNG", rgb))
    assert out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, rgb)
    out = io.read_image(save_png(tmp_path / "d.png", deep))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[:, :, 0], deep)


def test_read_image_tiff_and_jpeg(tmp_path, rng):
    f32 = rng.random((5, 6)).astype(np.float32)
    out = io.read_image(save_tif(tmp_path / "f.tif", f32))
    assert out.shape == (5, 6, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :, 0], f32)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    out = io.read_image(save_tif(tmp_path / "c.tiff", rgb, photometric="rgb"))
    np.testing.assert_array_equal(out, rgb)
    Image.fromarray(np.full((8, 10, 3), 128, np.uint8)).save(tmp_path / "j.JPG")
    out = io.read_image(tmp_path / "j.JPG")
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8


def test_read_image_palette_png(tmp_path):
    ids = np.array([[0, 1], [2, 1]], np.uint8)
    save_indexed_png(tmp_path / "p.png", ids, [0, 0, 0, 255, 0, 0, 0, 255, 0])
    indices = io.read_image(tmp_path / "p.png", keep_palette_indices=True)
    np.testing.assert_array_equal(indices[..., 0], ids)
    rgb = io.read_image(tmp_path / "p.png")
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[1, 0]) == (0, 255, 0)


def test_read_stack_multipage(tmp_path, rng):
    vol = rng.integers(0, 256, (4, 6, 7), dtype=np.uint8)
    out = io.read_stack(save_tif(tmp_path / "v.tif", vol, photometric="minisblack"))
    assert out.shape == (4, 6, 7, 1)
    np.testing.assert_array_equal(out[..., 0], vol)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as w:  # pages without shape metadata
        for page in vol:
            w.write(page)
    np.testing.assert_array_equal(io.read_stack(tmp_path / "pages.tif")[..., 0], vol)
    assert io.read_stack(save_tif(tmp_path / "one.tif", vol[0])).shape == (1, 6, 7, 1)


def test_corrupt_png_names_file(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="corrupt.png: cannot read image"):
        io.read_image(bad)


def test_truncated_png_and_jpeg(tmp_path, rng):
    for name in ("t.png", "t.jpg"):
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError, match=rf"{name}: cannot read image .*truncated"):
            io.read_image(path)


def test_truncated_tiff_names_file(tmp_path, rng):
    path = save_tif(tmp_path / "cut.tif", rng.integers(0, 256, (3, 64, 64), dtype=np.uint8),
                    photometric="minisblack")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.tif: cannot read TIFF"):
        io.read_stack(path)
    with pytest.raises(DataError, match="cut.tif"):
        io.read_image(path)
    junk = tmp_path / "junk.tiff"
    junk.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(DataError, match="junk.tiff: cannot read TIFF"):
        io.read_image(junk)


def test_reader_argument_errors(tmp_path, rng):
    with pytest.raises(DataError, match="nope.png: file not found"):
        io.read_image(tmp_path / "nope.png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(DataError, match=r"x.bmp: unsupported file type '.bmp'; expected one of"):
        io.read_image(tmp_path / "x.bmp")
    stack = save_tif(tmp_path / "s.tif", rng.integers(0, 9, (3, 5, 5), dtype=np.uint8),
                     photometric="minisblack")
    with pytest.raises(DataError, match="s.tif: TIFF holds 3 pages.*use read_stack"):
        io.read_image(stack)
    png = save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="a.png: read_stack reads multi-page TIFF"):
        io.read_stack(png)


# --------------------------------------------------------------------------- find_pairs


def test_find_pairs_by_stem_across_extensions(tmp_path):
    z = np.zeros((4, 4), np.uint8)
    for stem in ("10", "2", "b"):
        save_png(tmp_path / "masks" / f"{stem}.png", z)
    save_tif(tmp_path / "images" / "10.tif", z)
    Image.fromarray(z).save(tmp_path / "images" / "2.JPG")
    save_png(tmp_path / "images" / "b.PNG", z)
    (tmp_path / "images" / "README.txt").write_text("ignored")
    (tmp_path / "images" / ".hidden.png").write_bytes(b"")
    pairs = pairing.find_pairs(tmp_path)
    assert [(i.name, m.name) for i, m in pairs] == [
        ("2.JPG", "2.png"), ("10.tif", "10.png"), ("b.PNG", "b.png")
    ]
    assert all(isinstance(p, Path) for pair in pairs for p in pair)


def test_find_pairs_custom_subfolders(tmp_path):
    save_png(tmp_path / "img" / "a.png", np.zeros((2, 2), np.uint8))
    save_png(tmp_path / "lab" / "a.png", np.zeros((2, 2), np.uint8))
    assert len(pairing.find_pairs(tmp_path, images="img", masks="lab")) == 1


def test_find_pairs_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing: folder not found"):
        pairing.find_pairs(tmp_path / "missing")
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=r"no 'images/' subfolder"):
        pairing.find_pairs(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"images: no image files; expected files ending in .png"):
        pairing.find_pairs(tmp_path)
    save_png(tmp_path / "images" / "a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"masks: no image files"):
        pairing.find_pairs(tmp_path)
    (tmp_path / "masks").rmdir()
    with pytest.raises(DataError, match=r"no 'masks/' subfolder"):
        pairing.find_pairs(tmp_path)


def test_find_pairs_missing_partner_lists_names(tmp_path):
    z = np.zeros((2, 2), np.uint8)
    for i in range(8):
        save_png(tmp_path / "images" / f"im{i}.png", z)
    save_png(tmp_path / "masks" / "im0.png", z)
    save_png(tmp_path / "masks" / "orphan.tif", z)
    with pytest.raises(DataError) as err:
        pairing.find_pairs(tmp_path)
    msg = str(err.value)
    assert ("7 image(s) without a mask in masks/ "
            "(im1.png, im2.png, im3.png, im4.png, im5.png and 2 more)") in msg
    assert "1 mask(s) without an image in images/ (orphan.tif)" in msg


def test_find_pairs_duplicate_stems(tmp_path):
    z = np.zeros((2, 2), np.uint8)
    save_png(tmp_path / "images" / "a.png", z)
    save_tif(tmp_path / "images" / "a.tif", z)
    save_png(tmp_path / "masks" / "a.png", z)
    with pytest.raises(DataError, match=r"images: 1 file name\(s\) .*a.png and a.tif"):
        pairing.find_pairs(tmp_path)


# --------------------------------------------------------------------------- normalize_mask


def test_normalize_binary_01_and_hw1():
    m = np.array([[0, 1], [1, 0]], np.uint8)
    out = masks.normalize_mask(m)
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, m)
    np.testing.assert_array_equal(masks.normalize_mask(m[:, :, None]), m)
    np.testing.assert_array_equal(masks.normalize_mask(m.astype(bool)), m)
    np.testing.assert_array_equal(masks.normalize_mask(m.astype(np.float32)), m)


def test_normalize_0_255_divides_with_notice(caplog):
    m = np.array([[0, 255], [255, 255]], np.uint8)
    with caplog.at_level(logging.INFO, logger="zf_unet"):
        out = masks.normalize_mask(m, source="m.png")
    np.testing.assert_array_equal(out, m // 255)
    [rec] = zf_records(caplog)
    assert "m.png" in rec.getMessage() and "255" in rec.getMessage()
    assert "\n" not in rec.getMessage()
    # num_classes of 1 (model's binary) or 2 also accept 0/255
    np.testing.assert_array_equal(masks.normalize_mask(m, num_classes=1), m // 255)
    np.testing.assert_array_equal(masks.normalize_mask(m, num_classes=2), m // 255)


def test_normalize_class_ids():
    m = np.array([[0, 3], [2, 1]], np.uint16)
    out = masks.normalize_mask(m, num_classes=4)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, m)
    np.testing.assert_array_equal(masks.normalize_mask(m, convention="class_ids", num_classes=5), m)


def test_normalize_values_outside_num_classes():
    m = np.array([[0, 3], [7, 1]], np.uint8)
    with pytest.raises(DataError, match=r"masks/x.png: mask values \[3, 7\] are outside the class "
                                        r"ids 0..2 allowed by num_classes=3"):
        masks.normalize_mask(m, num_classes=3, source="masks/x.png")


def test_normalize_values_fitting_no_convention():
    m = np.array([[0, 37], [200, 0]], np.uint8)
    with pytest.raises(DataError, match=r"weird.png: mask values \[0, 37, 200\] fit no convention"):
        masks.normalize_mask(m, source="weird.png")
    with pytest.raises(DataError, match=r"num_classes=3 or more"):
        masks.normalize_mask(np.array([[0, 1, 2]], np.uint8), source="c.png")
    with pytest.raises(DataError, match="save masks as PNG"):
        masks.normalize_mask(np.array([[0, 3, 252, 255]], np.uint8), source="m.jpg")
    with pytest.raises(DataError, match=r"convention='binary'"):
        masks.normalize_mask(np.array([[0, 2]], np.uint8), convention="binary", source="b.png")


def test_normalize_rgb_gray_and_rgb_without_palette():
    gray = np.repeat(np.array([[0, 1], [1, 1]], np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(masks.normalize_mask(gray), gray[:, :, 0])
    rgba = np.concatenate([gray, np.full((2, 2, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(masks.normalize_mask(rgba), gray[:, :, 0])
    colour = gray.copy()
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match=r"col.png: RGB mask with coloured pixels but no palette"):
        masks.normalize_mask(colour, source="col.png")


def test_normalize_palette_and_unknown_colour():
    pal = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2}
    ids = np.array([[0, 1, 2], [2, 1, 0]])
    colours = np.array(list(pal))[ids].astype(np.uint8)
    out = masks.normalize_mask(colours, palette=pal)
    np.testing.assert_array_equal(out, ids)
    colours[1, 2] = (1, 2, 3)
    colours[0, 0] = (9, 9, 9)
    msg = r"p.png: 2 colour\(s\) not in the palette: \(1, 2, 3\), \(9, 9, 9\)"
    with pytest.raises(DataError, match=msg):
        masks.normalize_mask(colours, palette=pal, source="p.png")
    # int keys stand for gray colours and work on single-channel masks
    gray = np.array([[0, 128], [255, 128]], np.uint8)
    np.testing.assert_array_equal(masks.normalize_mask(gray, palette={0: 0, 128: 1, 255: 2}),
                                  [[0, 1], [2, 1]])


def test_normalize_argument_errors():
    m = np.zeros((2, 2), np.uint8)
    with pytest.raises(DataError, match=r"convention='magic': expected one of auto"):
        masks.normalize_mask(m, convention="magic")
    with pytest.raises(DataError, match=r"convention='class_ids' needs num_classes"):
        masks.normalize_mask(m, convention="class_ids")
    with pytest.raises(DataError, match=r"convention='palette' needs palette"):
        masks.normalize_mask(m, convention="palette")
    with pytest.raises(DataError, match=r"num_classes=0: expected an int from 1 to 256"):
        masks.normalize_mask(m, num_classes=0)
    with pytest.raises(DataError, match=r"palette key \(1, 2\)"):
        masks.normalize_mask(m, palette={(1, 2): 0})
    msg = r"palette\[\(1, 2, 3\)\] = 5: expected a class id from 0 to 2"
    with pytest.raises(DataError, match=msg):
        masks.normalize_mask(m, palette={(1, 2, 3): 5}, num_classes=3)
    with pytest.raises(DataError, match=r"f.tif: mask holds non-integer values"):
        masks.normalize_mask(np.array([[0.5, 1.0]]), source="f.tif")
    with pytest.raises(DataError, match=r"n.tif: mask holds NaN or Inf"):
        masks.normalize_mask(np.array([[np.nan, 1.0]]), source="n.tif")
    with pytest.raises(DataError, match=r"two.png: mask has 2 channels"):
        masks.normalize_mask(np.zeros((2, 2, 2), np.uint8), source="two.png")


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 12),
    data=st.data(),
)
def test_normalize_class_ids_roundtrip_property(k, data):
    ids = data.draw(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=9),
                               elements=st.integers(0, k - 1)))
    np.testing.assert_array_equal(masks.normalize_mask(ids, num_classes=k), ids)
    # the same ids painted with an arbitrary palette come back unchanged
    rng = np.random.default_rng(k)
    colours = rng.choice(256**3, size=k, replace=False)
    rgb = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1)
    palette = {tuple(int(c) for c in rgb[i]): i for i in range(k)}
    np.testing.assert_array_equal(
        masks.normalize_mask(rgb[ids].astype(np.uint8), palette=palette), ids
    )


# --------------------------------------------------------------------------- load_folder


def test_load_folder_0_255_notice_once(tmp_path, caplog):
    make_folder(tmp_path, n=3)
    with caplog.at_level(logging.INFO, logger="zf_unet"):
        images, masks = loaders.load_folder(tmp_path)
    assert len(images) == len(masks) == 3
    assert images[0].shape == (16, 20, 1) and images[0].dtype == np.uint8
    assert masks[0].shape == (16, 20) and masks[0].dtype == np.uint8
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) <= {0, 1}
    recs = zf_records(caplog)
    assert len(recs) == 1 and "3 of 3 masks" in recs[0].getMessage()


def test_load_folder_01_no_notice_and_class_ids(tmp_path, caplog):
    make_folder(tmp_path / "a", n=2, mask_values=(0, 1))
    with caplog.at_level(logging.INFO, logger="zf_unet"):
        _, masks = loaders.load_folder(tmp_path / "a")
    assert not zf_records(caplog)
    make_folder(tmp_path / "b", n=2, mask_values=(0, 1, 4))
    _, masks = loaders.load_folder(tmp_path / "b", num_classes=5)
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) == {0, 1, 4}
    with pytest.raises(DataError, match=r"b/masks/00.png: mask values \[4\] are outside"):
        loaders.load_folder(tmp_path / "b", num_classes=3)


def test_load_folder_palette_and_indexed_masks(tmp_path):
    pal = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 0, 255): 2}
    ids = np.array([[0, 1, 2, 2], [1, 1, 0, 2]])
    save_png(tmp_path / "rgb" / "images" / "a.png", np.zeros((2, 4, 3), np.uint8))
    save_png(tmp_path / "rgb" / "masks" / "a.png", np.array(list(pal))[ids].astype(np.uint8))
    _, [mask] = loaders.load_folder(tmp_path / "rgb", palette=pal)
    np.testing.assert_array_equal(mask, ids)
    with pytest.raises(DataError, match=r"rgb/masks/a.png: RGB mask .* no palette"):
        loaders.load_folder(tmp_path / "rgb")
    # a palette ("P" mode) PNG: its indices are the class ids
    save_png(tmp_path / "idx" / "images" / "a.png", np.zeros((2, 4), np.uint8))
    save_indexed_png(tmp_path / "idx" / "masks" / "a.png", ids, [0, 0, 0, 200, 10, 10, 10, 10, 200])
    _, [mask] = loaders.load_folder(tmp_path / "idx", num_classes=3)
    np.testing.assert_array_equal(mask, ids)


def test_load_folder_size_mismatch_names_both(tmp_path):
    make_folder(tmp_path, n=2)
    save_png(tmp_path / "masks" / "01.png", np.zeros((16, 19), np.uint8))
    with pytest.raises(DataError) as err:
        loaders.load_folder(tmp_path)
    name = tmp_path.name
    assert str(err.value) == (
        f"{name}/masks/01.png: size 19x16 does not match its image {name}/images/01.png "
        "(20x16) (sizes are width x height)"
    )


def test_load_folder_mixed_channels_and_dtypes(tmp_path):
    make_folder(tmp_path / "c", n=2)
    save_png(tmp_path / "c" / "images" / "01.png", np.zeros((16, 20, 3), np.uint8))
    with pytest.raises(DataError, match=r"c/images/01.png: 3 channel\(s\) but c/images/00.png"):
        loaders.load_folder(tmp_path / "c")
    make_folder(tmp_path / "d", n=2)
    save_png(tmp_path / "d" / "images" / "01.png", np.zeros((16, 20), np.uint16))
    with pytest.raises(DataError, match=r"d/images/01.png: dtype uint16 but d/images/00.png"):
        loaders.load_folder(tmp_path / "d")


def test_load_folder_corrupt_file_named(tmp_path):
    make_folder(tmp_path, n=2)
    (tmp_path / "masks" / "01.png").write_bytes(os.urandom(100))
    with pytest.raises(DataError, match=r"masks/01.png: cannot read image"):
        loaders.load_folder(tmp_path)


def test_load_folder_nan_image(tmp_path):
    img = np.zeros((4, 4), np.float32)
    img[1, 1] = np.nan
    save_tif(tmp_path / "images" / "a.tif", img)
    save_png(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"images/a.tif: image holds NaN or Inf"):
        loaders.load_folder(tmp_path)


# --------------------------------------------------------------------------- TIFF stacks


def test_load_tiff_stacks(tmp_path, rng, caplog):
    vol = rng.integers(0, 256, (5, 12, 10), dtype=np.uint8)
    lab = (rng.random((5, 12, 10)) > 0.3).astype(np.uint8) * 255
    v = save_tif(tmp_path / "train-volume.tif", vol, photometric="minisblack")
    lb = save_tif(tmp_path / "train-labels.tif", lab, photometric="minisblack")
    with caplog.at_level(logging.INFO, logger="zf_unet"):
        images, masks = loaders.load_tiff_stacks(v, lb)
    assert len(images) == 5 and images[0].shape == (12, 10, 1)
    np.testing.assert_array_equal(np.stack(masks), lab // 255)
    np.testing.assert_array_equal(np.stack(images)[..., 0], vol)
    assert len(zf_records(caplog)) == 1


def test_load_tiff_stacks_errors(tmp_path, rng):
    v = save_tif(tmp_path / "v.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    l2 = save_tif(tmp_path / "l2.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match=r"l2.tif: 2 slice\(s\) but the volume .*v.tif has 3"):
        loaders.load_tiff_stacks(v, l2)
    l9 = save_tif(tmp_path / "l9.tif", np.zeros((3, 8, 9), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match=r"l9.tif: slice size 9x8 does not match the volume"):
        loaders.load_tiff_stacks(v, l9)
    bad = np.zeros((3, 8, 8), np.uint8)
    bad[2, 0, 0] = 77
    lb = save_tif(tmp_path / "lb.tif", bad, photometric="minisblack")
    with pytest.raises(DataError, match=r"lb.tif \(slice 2\): mask values \[0, 77\]"):
        loaders.load_tiff_stacks(v, lb)


# --------------------------------------------------------------------------- load_arrays


def test_load_arrays_happy(rng):
    x = rng.random((3, 6, 5)).astype(np.float32)
    y = (rng.random((3, 6, 5, 1)) > 0.5).astype(np.uint8)
    images, masks = loaders.load_arrays(x, y)
    assert len(images) == 3 and images[0].shape == (6, 5, 1) and masks[0].shape == (6, 5)
    np.testing.assert_array_equal(np.stack(masks), y[..., 0])
    images, masks = loaders.load_arrays(rng.random((2, 6, 5, 3)), (y[:2, ..., 0] * 255), num_classes=2)
    assert images[1].shape == (6, 5, 3)
    np.testing.assert_array_equal(np.stack(masks), y[:2, ..., 0])
    # a list of differently sized samples
    images, masks = loaders.load_arrays([np.zeros((4, 4)), np.zeros((5, 6))],
                                   [np.zeros((4, 4), int), np.ones((5, 6), int)])
    assert [m.shape for m in masks] == [(4, 4), (5, 6)]


def test_load_arrays_errors(rng):
    x = rng.random((3, 6, 5)).astype(np.float32)
    y = np.zeros((3, 6, 5), np.uint8)
    with pytest.raises(DataError, match=r"images: array of shape \(6, 5\); expected \(N, H, W\)"):
        loaders.load_arrays(x[0], y)
    with pytest.raises(DataError, match=r"masks: array of shape \(3, 6, 5, 1, 1\)"):
        loaders.load_arrays(x, y[..., None, None])
    with pytest.raises(DataError, match=r"masks: 2 sample\(s\) but images has 3"):
        loaders.load_arrays(x, y[:2])
    with pytest.raises(DataError, match=r"masks\[0\]: size 4x6 does not match images\[0\] \(5x6\)"):
        loaders.load_arrays(x, y[:, :, :4])
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(DataError, match=r"images\[1\]: image holds NaN or Inf"):
        loaders.load_arrays(bad, y)
    bad[1, 2, 3] = np.inf
    with pytest.raises(DataError, match=r"images\[1\]: image holds NaN or Inf"):
        loaders.load_arrays(bad, y)
    with pytest.raises(DataError, match=r"images: no samples"):
        loaders.load_arrays(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    with pytest.raises(DataError, match=r"images\[0\]: dtype <U1"):
        loaders.load_arrays(np.full((1, 2, 2), "a"), np.zeros((1, 2, 2)))
    y2 = y.copy()
    y2[2, 0, 0] = 9
    with pytest.raises(DataError, match=r"masks\[2\]: mask values \[0, 9\] fit no convention"):
        loaders.load_arrays(x, y2)


# --------------------------------------------------------------------------- describe


def test_describe_dataset():
    images = [np.zeros((2, 3, 1), np.uint8), np.full((4, 4, 1), 9, np.uint8)]
    masks = [np.zeros((2, 3), np.uint8), np.array([[0, 1, 1, 2]] * 4, np.uint8)]
    d = stats.describe_dataset(images, masks)
    assert d["num_samples"] == 2
    assert d["sizes"] == {"3x2": 1, "4x4": 1}
    assert d["class_pixel_counts"] == {0: 10, 1: 8, 2: 4}
    assert d["class_frequencies"][1] == pytest.approx(8 / 22)
    assert d["foreground_fraction"] == pytest.approx(12 / 22)
    assert d["empty_masks"] == 1 and d["empty_mask_indices"] == [0]
    assert d["masks_with_class"] == {0: 2, 1: 1, 2: 1}
    assert d["channels"] == [1] and d["image_value_range"] == [0.0, 9.0]
    json.dumps(d)  # serialisable for a "doctor" report
    with pytest.raises(DataError, match=r"masks\[0\]: shape \(3, 3\) does not fit images\[0\]"):
        stats.describe_dataset(images[:1], [np.zeros((3, 3), np.uint8)])
    with pytest.raises(DataError, match=r"masks: 1 mask\(s\) but images has 2"):
        stats.describe_dataset(images, masks[:1])


# --------------------------------------------------------------------------- real ISBI data


@pytest.mark.isbi
def test_isbi_folder(isbi_dir, caplog):
    pairs = pairing.find_pairs(isbi_dir)
    assert [p[0].name for p in pairs] == [f"{i:02d}.png" for i in range(24)]
    with caplog.at_level(logging.INFO, logger="zf_unet"):
        images, masks = loaders.load_folder(isbi_dir)
    assert len(zf_records(caplog)) == 1  # one 0/255 notice for the whole folder
    assert len(images) == len(masks) == 24
    for (_, mask_path), img, m in zip(pairs, images, masks):
        assert img.shape == (512, 512, 1) and img.dtype == np.uint8
        assert m.shape == (512, 512) and m.dtype == np.uint8
        assert set(np.unique(m)) == {0, 1}
        np.testing.assert_array_equal(m, np.asarray(Image.open(mask_path)) // 255)
        assert 0.7 < m.mean() < 0.85
    d = stats.describe_dataset(images, masks)
    assert 0.7 < d["foreground_fraction"] < 0.85
    assert d["sizes"] == {"512x512": 24} and d["empty_masks"] == 0


def test_match_pairs_keeps_the_pairs_and_lists_unpaired_files(tmp_path):
    for sub, names in (("images", ["a", "b", "c"]), ("masks", ["b", "c", "d"])):
        (tmp_path / sub).mkdir()
        for n in names:
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / sub / f"{n}.png")
    pairs, unpaired, message = pairing.match_pairs(tmp_path)
    assert [p[0].stem for p in pairs] == ["b", "c"]
    assert [p.name for p in unpaired] == ["a.png", "d.png"]
    with pytest.raises(DataError) as err:
        pairing.find_pairs(tmp_path)
    assert str(err.value) == message and "a.png" in message and "d.png" in message
