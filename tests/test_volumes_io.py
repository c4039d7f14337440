"""Volumes on the data side: ``read_volume`` / ``read_volume_pair`` (multi-page TIFF, folder of
slices, ``.npy``) and border / class weight maps of ``(D, H, W)`` masks (``mode="sections"`` and
``mode="3d"``)."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi

from zf_unet.data import weightmaps as wm
from zf_unet.data.io import read_image, read_volume, read_volume_pair
from zf_unet.data.weightmaps import (
    border_weight_map,
    border_weight_maps,
    cached_border_weight_map,
    class_weight_map,
    volume_weight_map,
)
from zf_unet.errors import ConfigError, DataError


def _save_png(path, arr):
    Image.fromarray(arr).save(path)
    return path


# --------------------------------------------------------------------------- read_volume


def test_multipage_tiff_gray_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65535, (5, 6, 7), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", gray, photometric="minisblack")
    out = read_volume(tmp_path / "v.tif")
    assert out.dtype == np.uint16 and out.shape == (5, 6, 7)
    np.testing.assert_array_equal(out, gray)
    rgb = rng.integers(0, 255, (3, 6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tiff", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_volume(str(tmp_path / "rgb.tiff")), rgb)


def test_single_page_tiff_is_not_a_volume(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((6, 7), np.uint8))
    with pytest.raises(DataError, match=r"one\.tif: TIFF holds a single 2-D image of shape "
                                        r"\(6, 7, 1\).*expected a volume"):
        read_volume(tmp_path / "one.tif")
    # three sections saved without photometric= are stored as one RGB image: say so
    tifffile.imwrite(tmp_path / "planes.tif", np.zeros((3, 6, 7), np.uint8),
                     photometric="rgb", planarconfig="separate")
    with pytest.raises(DataError, match=r"planes\.tif: TIFF holds a single 2-D image of shape "
                                        r"\(6, 7, 3\).*photometric='minisblack'"):
        read_volume(tmp_path / "planes.tif")


def test_folder_of_slices_in_natural_order(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "slices"
    folder.mkdir()
    slices = rng.integers(0, 255, (12, 5, 4), dtype=np.uint8)
    for i, s in enumerate(slices):  # z_2 must come before z_10
        _save_png(folder / f"z_{i}.png", s)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk")
    out = read_volume(folder)
    assert out.shape == (12, 5, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, slices)
    # RGB slices keep their channels
    rgb_dir = tmp_path / "rgb"
    rgb_dir.mkdir()
    rgb = rng.integers(0, 255, (2, 5, 4, 3), dtype=np.uint8)
    for i, s in enumerate(rgb):
        _save_png(rgb_dir / f"{i}.png", s)
    np.testing.assert_array_equal(read_volume(rgb_dir), rgb)


def test_folder_with_a_bad_slice_names_it(tmp_path):
    folder = tmp_path / "vol"
    folder.mkdir()
    for i in range(3):
        _save_png(folder / f"{i}.png", np.zeros((5, 4), np.uint8))
    _save_png(folder / "10.png", np.zeros((6, 4), np.uint8))
    with pytest.raises(DataError, match=r"10\.png: slice size 4x6 differs from 0\.png \(4x5\); "
                                        r"expected every slice .* to be 4x5"):
        read_volume(folder)
    (folder / "10.png").unlink()
    _save_png(folder / "10.png", np.zeros((5, 4), np.uint16) + 300)
    with pytest.raises(DataError, match=r"10\.png: 1 channel\(s\) of dtype uint16, but 0\.png "
                                        r"has 1 of dtype uint8"):
        read_volume(folder)
    (folder / "10.png").unlink()
    _save_png(folder / "10.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"10\.png: 3 channel\(s\)"):
        read_volume(folder)


def test_empty_folder_and_missing_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no image files"):
        read_volume(tmp_path / "empty")
    with pytest.raises(DataError, match=r"nope\.tif: file or folder not found"):
        read_volume(tmp_path / "nope.tif")


def test_npy_volumes(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.random((4, 5, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", vol)
    np.testing.assert_array_equal(read_volume(tmp_path / "a.npy"), vol)
    np.save(tmp_path / "b.npy", vol[..., None])
    assert read_volume(tmp_path / "b.npy").shape == (4, 5, 6)
    multi = rng.integers(0, 9, (4, 5, 6, 2)).astype(">i4")  # big-endian comes back native
    np.save(tmp_path / "c.npy", multi)
    out = read_volume(tmp_path / "c.npy")
    assert out.shape == (4, 5, 6, 2) and out.dtype.byteorder in "=|"
    np.testing.assert_array_equal(out, multi)


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("flat.npy", lambda p: np.save(p, np.zeros((5, 6))),
         r"flat\.npy: holds a 2-D array of shape \(5, 6\); expected a volume"),
        ("deep.npy", lambda p: np.save(p, np.zeros((1, 2, 3, 4, 5))),
         r"deep\.npy: holds an array of shape \(1, 2, 3, 4, 5\)"),
        ("obj.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object)),
         r"obj\.npy: cannot read \.npy file"),
        ("text.npy", lambda p: np.save(p, np.array([[["a"]]])), r"text\.npy: holds <U1 data"),
        ("broken.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"),
         r"broken\.npy: cannot read \.npy file"),
        ("image.png", lambda p: _save_png(p, np.zeros((4, 4), np.uint8)),
         r"image\.png: unsupported volume file type '\.png' \(a single 2-D image"),
        ("notes.txt", lambda p: p.write_text("x"),
         r"notes\.txt: unsupported volume file type '\.txt'; expected a multi-page TIFF"),
        ("broken.tif", lambda p: p.write_bytes(b"II*\x00garbage"),
         r"broken\.tif: (cannot read TIFF|TIFF holds no images)"),
    ],
)
def test_bad_volume_files(tmp_path, name, make, match):
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError, match=match):
        read_volume(path)


def test_read_volume_pair(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (3, 5, 6), dtype=np.uint8)
    mask = (rng.random((3, 5, 6)) > 0.5).astype(np.uint8) * 255
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    (tmp_path / "masks").mkdir()
    for i, m in enumerate(mask):
        _save_png(tmp_path / "masks" / f"{i:02d}.png", m)
    got_image, got_mask = read_volume_pair(tmp_path / "image.tif", tmp_path / "masks")
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_mask, mask)
    np.save(tmp_path / "short.npy", mask[:2])
    with pytest.raises(DataError, match=r"short\.npy: 2 slice\(s\) but the volume .*image\.tif "
                                        r"has 3"):
        read_volume_pair(tmp_path / "image.tif", tmp_path / "short.npy")
    np.save(tmp_path / "narrow.npy", mask[:, :, :4])
    with pytest.raises(DataError, match=r"narrow\.npy: slice size 4x5 does not match the "
                                        r"volume .*image\.tif \(6x5\)"):
        read_volume_pair(tmp_path / "image.tif", tmp_path / "narrow.npy")
    bad = rng.random((3, 5, 6)).astype(np.float32)
    bad[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="NaN or Inf"):
        read_volume_pair(tmp_path / "nan.npy", tmp_path / "masks")


def test_real_drosophila_slices_read_as_a_volume(vnc_dir):
    folder = vnc_dir / "images"
    vol = read_volume(folder)
    assert vol.shape == (20, 1024, 1024) and vol.dtype == np.uint8
    for z in (0, 1, 9, 10, 19):
        np.testing.assert_array_equal(vol[z], read_image(folder / f"{z:02d}.tif")[..., 0])


# --------------------------------------------------------------------------- weight maps


def _blobs(shape, seed, frac=0.55, smooth=1.5):
    """A binary volume of blob-shaped cells separated by thin background."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.normal(size=shape), smooth)
    return (field > np.quantile(field, 1 - frac)).astype(np.uint8)


@pytest.mark.parametrize("kwargs", [
    {},
    {"class_weights": None, "sigma": 3.0},
    {"class_weights": {0: 2.0, 1: 0.5}, "connectivity": 2, "exact": True},
    {"ignore_index": 255},
])
def test_sections_mode_equals_the_2d_map_of_each_section(kwargs):
    vol = _blobs((4, 24, 20), seed=0)
    if "ignore_index" in kwargs:
        vol[1, :3, :] = 255
        vol[2, 5:8, 5:8] = 255
    got = border_weight_map(vol, mode="sections", **kwargs)
    assert got.shape == vol.shape and got.dtype == np.float32
    for z in range(vol.shape[0]):
        np.testing.assert_array_equal(got[z], border_weight_map(vol[z], **kwargs))
    np.testing.assert_array_equal(volume_weight_map(vol[..., None], **kwargs), got)
    np.testing.assert_array_equal(border_weight_maps(vol, **kwargs)[..., 0], got)


def test_sections_mode_with_labels_and_batches():
    vol = _blobs((3, 16, 16), seed=1)
    inst = ndi.label(vol)[0]  # 3-D ids: each section sees its own subset
    got = border_weight_map(None, labels=inst, mode="sections", class_weights=None)
    for z in range(3):
        np.testing.assert_array_equal(
            got[z], border_weight_map(None, labels=inst[z], class_weights=None))
    batch = np.stack([vol, _blobs((3, 16, 16), seed=2)])
    out = border_weight_maps(batch, mode="sections")
    assert out.shape == (2, 3, 16, 16, 1)
    np.testing.assert_array_equal(out[1, ..., 0], border_weight_map(batch[1], mode="sections"))
    out3 = border_weight_maps(batch[..., None], mode="3d", spacing=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(
        out3[0, ..., 0], border_weight_map(batch[0], mode="3d", spacing=(2.0, 1.0, 1.0)))
    with pytest.raises(DataError, match=r"masks: expected a batch of shape \(N, D, H, W\) or "
                                        r"\(N, D, H, W, 1\)"):
        border_weight_maps(vol, mode="sections")


def _brute_force_3d(fg, lab, spacing, w0, sigma, class_weights):
    """Independent reference: distances by brute force over the voxel coordinates."""
    coords = np.stack(np.indices(fg.shape), -1).reshape(-1, 3) * np.asarray(spacing)
    flat = lab.ravel()
    n = int(lab.max())
    dist = np.full((flat.size, n), np.inf)
    for k in range(1, n + 1):
        cell = coords[flat == k]
        diff = coords[:, None, :] - cell[None, :, :]
        dist[:, k - 1] = np.sqrt((diff**2).sum(-1)).min(1)
    w = wm._class_weight_map(fg, class_weights).astype(np.float64).ravel()
    if n >= 2:
        d = np.sort(dist, axis=1)
        bg = flat == 0
        w[bg] += w0 * np.exp(-((d[bg, 0] + d[bg, 1]) ** 2) / (2 * sigma**2))
    return w.reshape(fg.shape)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 1.0, 0.5)])
def test_3d_mode_matches_a_brute_force_reference(spacing):
    fg = _blobs((5, 9, 10), seed=3, frac=0.4, smooth=1.0).astype(bool)
    lab = ndi.label(fg)[0]
    assert lab.max() >= 3
    ref = _brute_force_3d(fg, lab, spacing, 10.0, 2.0, "balanced")
    exact = border_weight_map(fg, sigma=2.0, mode="3d", spacing=spacing, exact=True)
    np.testing.assert_allclose(exact, ref, rtol=1e-5, atol=1e-5)
    fast = border_weight_map(fg, sigma=2.0, mode="3d", spacing=spacing)
    np.testing.assert_allclose(fast, ref, atol=10.0 * np.exp(-18) + 1e-5)
    with_labels = border_weight_map(None, labels=lab, sigma=2.0, mode="3d", spacing=spacing,
                                    exact=True)
    np.testing.assert_allclose(with_labels, ref, rtol=1e-5, atol=1e-5)


def test_3d_mode_on_z_constant_cells_equals_the_section_maps():
    """Cells that run straight through z: with coarse z spacing, every section's nearest cell
    points lie in the section itself, so the 3-D map is the 2-D map of each section."""
    section = _blobs((20, 18), seed=4)
    vol = np.repeat(section[None], 3, axis=0)
    got = border_weight_map(vol, mode="3d", spacing=(50.0, 1.0, 1.0), exact=True,
                            connectivity=1)
    for z in range(3):
        np.testing.assert_allclose(got[z], border_weight_map(section, exact=True), atol=1e-5)


def test_3d_connectivity_joins_cells_across_sections():
    vol = np.zeros((2, 6, 6), np.uint8)
    vol[0, 1:3, 1:3] = 1
    vol[1, 3:5, 3:5] = 1  # touches the first only at a corner (26-neighbourhood)
    vol[0, 4:6, 0:2] = 1
    split = border_weight_map(vol, mode="3d", connectivity=1, class_weights=None)
    joined = border_weight_map(vol, mode="3d", connectivity=3, class_weights=None)
    assert split.max() > 1.0  # three cells: a border term
    assert not np.array_equal(split, joined)  # two cells once the corner joins


def test_class_weight_maps_on_volumes():
    vol = np.zeros((2, 4, 4), np.uint8)
    vol[0, :2] = 1  # section 0: half foreground; section 1: none
    sec = class_weight_map(vol, mode="sections")
    np.testing.assert_array_equal(sec[0], class_weight_map(vol[0]))
    np.testing.assert_array_equal(sec[1], np.ones((4, 4), np.float32))
    whole = class_weight_map(vol, mode="3d")  # 8 of 32 voxels foreground
    np.testing.assert_allclose(whole[vol == 1], 32 / (2 * 8))
    np.testing.assert_allclose(whole[vol == 0], 32 / (2 * 24))
    assert whole.mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(class_weight_map(vol, None, mode="3d"), np.ones((2, 4, 4)))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros((2, 4, 4)),), {}, r"mask: expected a 2-D mask .*; for a volume \(D, H, W\) "
                                     r"pass mode='sections' or mode='3d'"),
        ((np.eye(4),), {"mode": "3d"}, r"mask: expected a 3-D mask of shape \(D, H, W\) or "
                                       r"\(D, H, W, 1\), got shape \(4, 4\); for a 2-D image"),
        ((np.eye(4),), {"mode": "sections"}, r"mask: expected a 3-D volume"),
        ((np.zeros((2, 4, 4)),), {"mode": "volume"}, r"mode: expected one of 'image', "
                                                      r"'sections', '3d'"),
        ((np.zeros((2, 4, 4)),), {"mode": "sections", "spacing": (1, 1, 1)},
         r"spacing: only used with mode='3d'"),
        ((np.eye(4),), {"spacing": 2.0}, r"spacing: only used with mode='3d'"),
        ((np.zeros((2, 4, 4)),), {"mode": "3d", "connectivity": 4},
         r"connectivity: expected 1 \(6-neighbours\), 2 \(18-neighbours\) or 3"),
        ((np.zeros((2, 4, 4)),), {"mode": "sections", "connectivity": 3},
         r"connectivity: expected 1 \(4-neighbours\) or 2"),
        ((np.zeros((2, 4, 4)),), {"mode": "sections", "labels": np.zeros((3, 4, 4), int)},
         r"labels: expected the same shape as mask \(2, 4, 4\)"),
        ((np.zeros((2, 4, 4)) + 3,), {"mode": "3d"}, r"mask: expected a binary mask"),
        ((np.zeros((0, 4, 4)),), {"mode": "sections"}, r"mask: expected a non-empty volume"),
    ],
)
def test_bad_volume_weight_map_arguments(args, kwargs, match):
    with pytest.raises(DataError, match=match):
        border_weight_map(*args, **kwargs)


@pytest.mark.parametrize(("spacing", "match"), [
    ((1, 1), r"spacing has 2 entries but the input has 3 spatial axes"),
    ((1, 0, 1), r"spacing must hold positive finite numbers"),
    ("big", r"spacing must be a tuple of positive numbers"),
])
def test_bad_spacing_is_refused_by_the_one_spacing_rule(spacing, match):
    """Spacing has one home (zf_unet.checks.check_spacing) and one error type (ConfigError),
    in weight maps as in the config, the builders and Augment."""
    with pytest.raises(ConfigError, match=match):
        border_weight_map(np.zeros((2, 4, 4)), mode="3d", spacing=spacing)


def test_volume_weight_map_and_class_weight_map_refuse_bad_modes():
    with pytest.raises(DataError, match="mode: expected 'sections' or '3d' for a volume"):
        volume_weight_map(np.zeros((2, 4, 4)), mode="image")
    with pytest.raises(DataError, match="mode: expected one of"):
        class_weight_map(np.zeros((2, 4, 4)), mode="xy")
    # spacing makes a difference in 3-D
    vol = _blobs((4, 12, 12), seed=5)
    assert not np.array_equal(volume_weight_map(vol, mode="3d"),
                              volume_weight_map(vol, mode="3d", spacing=(4.0, 1.0, 1.0)))


def test_cache_is_keyed_by_mode_and_spacing(tmp_path):
    vol = _blobs((3, 12, 12), seed=6)
    sec = cached_border_weight_map(vol, cache_dir=tmp_path, mode="sections")
    np.testing.assert_array_equal(sec, border_weight_map(vol, mode="sections"))
    d3 = cached_border_weight_map(vol, cache_dir=tmp_path, mode="3d")
    np.testing.assert_array_equal(d3, border_weight_map(vol, mode="3d"))
    aniso = cached_border_weight_map(vol, cache_dir=tmp_path, mode="3d", spacing=(3, 1, 1))
    np.testing.assert_array_equal(aniso, border_weight_map(vol, mode="3d", spacing=(3, 1, 1)))
    assert len(list(tmp_path.glob("bwm-*.npy"))) == 3
    # spacing None and (1, 1, 1) are the same computation: one file; reloads from disk
    again = cached_border_weight_map(vol * 255, cache_dir=tmp_path, mode="3d",
                                     spacing=(1, 1, 1.0))
    np.testing.assert_array_equal(again, d3)
    assert len(list(tmp_path.glob("bwm-*.npy"))) == 3
    # 2-D keys do not change with an explicit mode="image"
    fg = vol[0] > 0
    assert wm._cache_key(fg, None, {}) == wm._cache_key(fg, None, {"mode": "image"})
    with pytest.raises(DataError, match="spacing: only used with mode='3d'"):
        cached_border_weight_map(vol[0], cache_dir=tmp_path, spacing=(1, 1, 1))
