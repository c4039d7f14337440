"""Tests for volume (3-D) augmentation in zf_unet.data.augment (``spatial_dims=3``).

Border convention under test, as in 2-D: mirror about the edge voxel centres, i.e. SciPy
``map_coordinates(mode="mirror")`` and ``np.pad(mode="reflect")``, on every axis.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from zf_unet.data.augment import augment_batch, augment_sample, elastic_displacement
from zf_unet.data.augment_config import Augment
from zf_unet.data.augment_data import augment_dataset, augment_margin
from zf_unet.data.augment_layer import AugmentLayer
from zf_unet.data.augment_warp import identity_coords, warp
from zf_unet.pixels import pad_reflect_axes
from zf_unet.errors import DataError

RIGID = Augment(elastic=False, gray_values=False)


def _seed(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


def _blobs3d(rng: np.random.Generator, shape: tuple[int, ...], classes: int) -> np.ndarray:
    """Label volume ``shape`` (B, D, H, W) of large smooth regions with ``classes`` labels."""
    noise = rng.normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, sigma=(0, 2, 3, 3))
    edges = np.quantile(smooth, np.linspace(0, 1, classes + 1)[1:-1])
    return np.digitize(smooth, edges).astype(np.int32)


# --------------------------------------------------------------------------- config


def test_spacing_field_round_trips_and_is_validated() -> None:
    cfg = Augment()
    assert cfg.spacing is None and not cfg.elastic_in_plane
    aniso = Augment(spacing=[4, 1.0, 1.5])  # TOML gives a list
    assert aniso.spacing == (4.0, 1.0, 1.5) and aniso.elastic_in_plane
    assert not Augment(spacing=(3.0, 1.0, 1.5)).elastic_in_plane  # 3 <= 2 * 1.5
    assert not Augment(spacing=(1.0, 1.0, 1.0)).elastic_in_plane
    restored = Augment.from_config(json.loads(json.dumps(aniso.get_config())))
    assert restored == aniso and hash(restored) == hash(aniso)
    for bad in ([1.0, 1.0], [0.0, 1.0, 1.0], [1.0, float("inf"), 1.0], "1,1,1", [True, 1, 1]):
        with pytest.raises(ValueError, match="spacing"):
            Augment(spacing=bad)


def test_augment_margin_per_axis() -> None:
    cfg = Augment(elastic_std=4.0, rotation_degrees=10.0)
    assert augment_margin(32, cfg) == 12 + 4  # 2-D unchanged: an int
    rot = int(np.ceil(40 * 0.7072 * np.radians(10.0)))
    assert augment_margin((8, 40, 24), cfg, spatial_dims=3) == (12, 12 + rot, 12 + rot)
    aniso = Augment(elastic_std=4.0, spacing=(10.0, 1.0, 1.0))
    assert augment_margin(16, aniso, spatial_dims=3) == (0, 12, 12)
    assert augment_margin(16, None, spatial_dims=3) == (0, 0, 0)
    with pytest.raises(ValueError, match="spatial_dims"):
        augment_margin(16, cfg, spatial_dims=4)


def test_pad_reflect_axes_matches_numpy_reflect(rng: np.random.Generator) -> None:
    vol = rng.random((4, 5, 6, 2))
    got = pad_reflect_axes(vol, [(3, 2), (2, 1), (4, 0)])
    np.testing.assert_array_equal(got, np.pad(vol, ((3, 2), (2, 1), (4, 0), (0, 0)), "reflect"))


# --------------------------------------------------------------------------- warp


@pytest.mark.parametrize("channels", [1, 2])
def test_trilinear_warp_matches_scipy_mirror(rng: np.random.Generator, channels: int) -> None:
    d, h, w = 6, 20, 24
    vol = rng.random((1, d, h, w, channels)).astype(np.float32)
    disp = elastic_displacement(1, h, w, _seed(3), grid=3, std=4.0, depth=d).numpy()
    coords = identity_coords(d, h, w).numpy()[None] * np.float32(1.2) - 3.0 + disp
    coords[0, :2] += np.float32(2.5 * d)  # beyond one mirror period in z on some voxels
    out = warp(vol, coords, "bilinear").numpy()
    assert out.shape == vol.shape and out.dtype == np.float32
    pts = [coords[0, ..., a] for a in range(3)]
    for c in range(channels):
        ref = ndimage.map_coordinates(vol[0, ..., c].astype(np.float64), pts, order=1,
                                      mode="mirror")
        np.testing.assert_allclose(out[0, ..., c], ref, atol=1e-5)


def test_nearest_warp_matches_scipy_exactly(rng: np.random.Generator) -> None:
    d, h, w = 6, 20, 24
    labels = rng.integers(0, 1000, (1, d, h, w, 1)).astype(np.int32)
    coords = identity_coords(d, h, w).numpy()[None] + elastic_displacement(
        1, h, w, _seed(5), std=6.0, depth=d
    ).numpy()
    coords[0, -2:] += np.float32(d)
    frac = coords - np.floor(coords)
    coords = np.where(np.abs(frac - 0.5) < 1e-3, coords + 0.25, coords).astype(np.float32)
    out = warp(labels, coords, "nearest").numpy()
    assert out.dtype == np.int32
    ref = ndimage.map_coordinates(labels[0, ..., 0], [coords[0, ..., a] for a in range(3)],
                                  order=0, mode="mirror")
    np.testing.assert_array_equal(out[0, ..., 0], ref)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_constant_shift_gives_mirror_padded_volume(
    rng: np.random.Generator, interpolation: str
) -> None:
    d, h, w = 5, 9, 7
    vol = rng.random((1, d, h, w, 1)).astype(np.float32)
    shift = np.array([-3, 4, 9], np.float32)
    out = warp(vol, identity_coords(d, h, w)[None] + shift, interpolation).numpy()[0]
    pad = 12
    padded = np.pad(vol[0], ((pad, pad),) * 3 + ((0, 0),), mode="reflect")
    dz, dy, dx = (pad + int(s) for s in shift)
    np.testing.assert_allclose(out, padded[dz:dz + d, dy:dy + h, dx:dx + w], atol=1e-6)


def test_tricubic_reproduces_a_smooth_ramp(rng: np.random.Generator) -> None:
    d, h, w = 8, 10, 12
    zz, yy, xx = np.mgrid[0:d, 0:h, 0:w].astype(np.float32)
    ramp = (0.3 * zz - 0.2 * yy + 0.1 * xx + 0.01 * zz * xx)[None, ..., None]
    coords = rng.uniform([1, 1, 1], [d - 2.001, h - 2.001, w - 2.001],
                         (1, 4, 5, 6, 3)).astype(np.float32)
    got = warp(ramp, coords, "bicubic").numpy()[0, ..., 0]
    z, y, x = (coords[0, ..., a] for a in range(3))
    np.testing.assert_allclose(got, 0.3 * z - 0.2 * y + 0.1 * x + 0.01 * z * x, atol=1e-3)


def test_warp_rejects_mismatched_coords() -> None:
    vol = np.zeros((1, 4, 6, 6, 1), np.float32)
    with pytest.raises(DataError, match="coords"):
        warp(vol, identity_coords(6, 6)[None, None])
    with pytest.raises(DataError, match="nearest"):
        warp(vol.astype(np.int32), identity_coords(4, 6, 6)[None], "bilinear")


# --------------------------------------------------------------------------- one field for all


def test_image_mask_and_weight_share_one_transform(rng: np.random.Generator) -> None:
    mask = _blobs3d(rng, (2, 8, 24, 20), classes=3)
    image = np.eye(3, dtype=np.float32)[mask]  # (2, 8, 24, 20, 3) one-hot of the mask
    weight = mask.astype(np.float32)  # (B, D, H, W): no channel axis, nearest like the mask
    cfg = Augment(elastic_std=3.0, rotation_degrees=20.0, gray_values=False)
    out_img, out_mask, out_w = (t.numpy() for t in augment_batch(
        image, mask, weight, seed=_seed(11), config=cfg, spatial_dims=3
    ))
    assert out_img.shape == image.shape and out_mask.shape == mask.shape
    assert out_w.shape == weight.shape and out_mask.dtype == np.int32
    np.testing.assert_array_equal(out_w, out_mask.astype(np.float32))
    clear = out_img.max(axis=-1) > 0.99  # all 8 trilinear neighbours have one label
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(out_img.argmax(-1)[clear], out_mask[clear])
    assert (out_mask != mask).mean() > 0.1  # ... and the deformation did something


def test_augment_uses_exactly_the_public_3d_field(rng: np.random.Generator) -> None:
    d, h, w = 6, 16, 12
    img = rng.random((2, d, h, w, 1)).astype(np.float32)
    cfg = Augment(elastic_std=3.0, flips=False, rotate90=False, gray_values=False)
    out_img, _ = augment_batch(img, img, seed=_seed(21), config=cfg, spatial_dims=3)
    coords = identity_coords(d, h, w)[None] + elastic_displacement(
        2, h, w, _seed(21), std=3.0, depth=d
    )
    np.testing.assert_allclose(out_img.numpy(), warp(img, coords).numpy(), atol=1e-5)


def test_sample_equals_batch_entry_and_seeds_matter(rng: np.random.Generator) -> None:
    img = rng.random((3, 4, 10, 10, 1)).astype(np.float32)
    mask = (img[..., 0] > 0.5).astype(np.uint8)
    seed = _seed(8, 9)
    out = [t.numpy() for t in augment_batch(img, mask, seed=seed, spatial_dims=3)]
    per_sample = tf.random.experimental.stateless_split(seed, 3, alg="philox")
    for i in range(3):
        single = augment_sample(img[i], mask[i], seed=per_sample[i], spatial_dims=3)
        np.testing.assert_allclose(single[0].numpy(), out[0][i], atol=1e-6)
        np.testing.assert_array_equal(single[1].numpy(), out[1][i])
    other = augment_batch(img, mask, seed=_seed(8, 10), spatial_dims=3)
    assert not np.allclose(other[0].numpy(), out[0])


# --------------------------------------------------------------------------- anisotropy


def test_in_plane_field_has_zero_z_and_same_in_plane_part() -> None:
    iso = elastic_displacement(2, 16, 12, _seed(4), std=5.0, depth=5).numpy()
    flat = elastic_displacement(2, 16, 12, _seed(4), std=5.0, depth=5, in_plane=True).numpy()
    assert flat.shape == (2, 5, 16, 12, 3)
    assert np.all(flat[..., 0] == 0.0) and np.abs(iso[..., 0]).max() > 0.5
    np.testing.assert_array_equal(flat[..., 1:], iso[..., 1:])
    # In-plane displacement varies smoothly across sections (not one shared 2-D field).
    assert np.abs(flat[:, 0, ..., 1:] - flat[:, -1, ..., 1:]).max() > 0.5


@pytest.mark.parametrize("flips", [False, True])
def test_coarse_z_keeps_each_section_in_its_section(flips: bool) -> None:
    d, h, w = 5, 16, 16
    levels = np.linspace(0.1, 0.9, d).astype(np.float32)
    vol = np.broadcast_to(levels[:, None, None, None], (d, h, w, 1))
    img = np.repeat(vol[None], 6, axis=0)
    mask = np.repeat(np.arange(d, dtype=np.uint8)[None, :, None, None], h, 2).repeat(w, 3)
    mask = np.repeat(mask, 6, axis=0)
    common = dict(elastic_std=4.0, rotation_degrees=25.0, gray_values=False, flips=flips)
    aniso = Augment(spacing=(8.0, 1.0, 1.0), **common)
    out_img, out_mask = (t.numpy() for t in augment_batch(
        img, mask, seed=_seed(2), config=aniso, spatial_dims=3
    ))
    orders = set()
    for b in range(6):
        for z in range(d):
            values = np.unique(out_img[b, z])
            assert values.size == 1, f"sample {b} section {z} mixes sections: {values}"
            assert np.all(out_mask[b, z] == out_mask[b, z, 0, 0])
        src = [int(out_mask[b, z, 0, 0]) for z in range(d)]
        np.testing.assert_array_equal(out_img[b, :, 0, 0, 0], levels[src])
        assert src in (list(range(d)), list(range(d))[::-1])
        orders.add(tuple(src))
    assert len(orders) == (2 if flips else 1)
    # The same settings with isotropic voxels do move content across sections.
    iso = augment_batch(img, mask, seed=_seed(2), config=Augment(**common), spatial_dims=3)
    assert any(np.unique(iso[0].numpy()[b, z]).size > 1 for b in range(6) for z in range(d))


# --------------------------------------------------------------------------- flips / rot90


def _volume_group(x: np.ndarray, square: bool) -> list[np.ndarray]:
    """The in-plane D4 (D2 when not square) times the z flip of ``(D, H, W, ...)``."""
    out = []
    for zflip in (False, True):
        v = x[::-1] if zflip else x
        for k in range(4) if square else (0, 2):
            r = np.rot90(v, k, axes=(1, 2))
            out += [r, r[:, ::-1]]
    return out


@pytest.mark.parametrize(("shape", "n_expected"), [((4, 7, 7), 16), ((5, 6, 9), 8)])
def test_flips_and_rot90_stay_in_plane(
    rng: np.random.Generator, shape: tuple[int, int, int], n_expected: int
) -> None:
    labels = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.int32)
    base = (labels / labels.max()).astype(np.float32)[..., None]
    batch = 96
    img = np.repeat(base[None], batch, 0)
    mask = np.repeat(labels[None], batch, 0)
    out_img, out_mask = (t.numpy() for t in augment_batch(
        img, mask, seed=_seed(3), config=RIGID, spatial_dims=3
    ))
    assert out_img.shape == img.shape and out_mask.shape == mask.shape
    cands_img = _volume_group(base, shape[1] == shape[2])
    cands_mask = _volume_group(labels, shape[1] == shape[2])
    seen = set()
    for i in range(batch):
        hits = [k for k, (ci, cm) in enumerate(zip(cands_img, cands_mask))
                if np.array_equal(ci, out_img[i]) and np.array_equal(cm, out_mask[i])]
        assert hits, f"sample {i} is not an in-plane flip/rotation (+ z flip) of the input"
        seen.add(hits[0])
        # Sections are only permuted by the z flip: each output section is one input section.
        sections = {int(np.isin(labels, out_mask[i, z]).any(axis=(1, 2)).argmax())
                    for z in range(shape[0])}
        assert len(sections) == shape[0]
    assert len(seen) == n_expected


# --------------------------------------------------------------------------- gray values


def test_gray_values_per_volume_touch_only_the_image(rng: np.random.Generator) -> None:
    img = rng.random((3, 4, 12, 12, 1)).astype(np.float32)
    mask = rng.integers(0, 2, (3, 4, 12, 12, 1)).astype(np.uint8)
    weight = rng.random((3, 4, 12, 12, 1)).astype(np.float32)
    gray = Augment(elastic=False, flips=False, rotate90=False, brightness=0.3, contrast=0.0,
                   gamma=0.0)
    out_img, out_mask, out_w = (t.numpy() for t in augment_batch(
        img, mask, weight, seed=_seed(2), config=gray, spatial_dims=3
    ))
    np.testing.assert_array_equal(out_mask, mask)
    np.testing.assert_array_equal(out_w, weight)
    # Brightness only: away from clipping, one offset per volume (all sections alike).
    for b in range(3):
        inside = (out_img[b] > 0.0) & (out_img[b] < 1.0)
        offsets = (out_img[b] - img[b])[inside]
        assert np.ptp(offsets) < 1e-5 and abs(offsets.mean()) > 1e-3


# --------------------------------------------------------------------------- graph modes


def test_augment_dataset_volumes_samples_and_batches(rng: np.random.Generator) -> None:
    img = rng.random((4, 4, 12, 10, 1)).astype(np.float32)
    mask = rng.integers(0, 3, (4, 4, 12, 10)).astype(np.uint8)
    weight = rng.random((4, 4, 12, 10, 1)).astype(np.float32)
    base = tf.data.Dataset.from_tensor_slices((img, mask, weight))
    cfg = Augment(elastic_std=2.0, rotation_degrees=10.0)
    for ds, lead in ((base, []), (base.batch(2), [None])):
        out = augment_dataset(ds, cfg, seed=5, jit_compile=False, spatial_dims=3)
        spec = out.element_spec
        assert [s.dtype for s in spec] == [tf.float32] * 3
        assert spec[0].shape.as_list() == lead + [4, 12, 10, 1]
        assert spec[1].shape.as_list() == lead + [4, 12, 10]
        first = [[t.numpy() for t in e] for e in out]
        assert sum(e[0].shape[0] if lead else 1 for e in first) == 4
        for e in first:
            assert set(np.unique(e[1])) <= {0.0, 1.0, 2.0}
            assert np.all((e[0] >= 0.0) & (e[0] <= 1.0))
        assert not np.allclose(first[0][0], img[: first[0][0].shape[0]] if lead else img[0])


def test_xla_compiled_matches_eager(rng: np.random.Generator) -> None:
    img = rng.random((2, 4, 12, 12, 1)).astype(np.float32)
    mask = _blobs3d(rng, (2, 4, 12, 12), classes=2).astype(np.uint8)
    cfg = Augment(elastic_std=2.0, rotation_degrees=15.0, spacing=(1.0, 1.0, 1.0))

    @tf.function(jit_compile=True)
    def compiled(x: tf.Tensor, m: tf.Tensor, s: tf.Tensor) -> tuple:
        return augment_batch(x, m, seed=s, config=cfg, spatial_dims=3)

    got = compiled(img, mask, _seed(12))
    want = augment_batch(img, mask, seed=_seed(12), config=cfg, spatial_dims=3)
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), atol=1e-4)
    assert (got[1].numpy() == want[1].numpy()).mean() > 0.999
    assert got[1].dtype == tf.uint8 and tuple(got[1].shape) == mask.shape


def test_layer_spatial_dims_and_rank_checks(rng: np.random.Generator) -> None:
    layer = AugmentLayer(Augment(spacing=(3.0, 1.0, 1.0)), seed=3, spatial_dims=3)
    config = layer.get_config()
    json.dumps(config)
    clone = AugmentLayer.from_config(config)
    assert clone.spatial_dims == 3 and clone.augment == layer.augment
    img = rng.random((1, 4, 8, 8, 1)).astype(np.float32)
    mask = rng.integers(0, 2, (1, 4, 8, 8, 1)).astype(np.uint8)
    out = layer((img, mask), training=True)
    assert tuple(out[0].shape) == img.shape and not np.allclose(np.asarray(out[0]), img)
    with pytest.raises(ValueError, match="spatial_dims"):
        AugmentLayer(spatial_dims=1)
    # A 5-D batch without spatial_dims=3 is rejected with a hint, not misread.
    with pytest.raises(DataError, match="spatial_dims=3"):
        augment_batch(img, mask, seed=_seed(1))
    with pytest.raises(DataError, match="masks"):
        augment_batch(img, mask[:, :, :7], seed=_seed(1), spatial_dims=3)
