"""Tests for zf_unet.data.augment: in-graph, seeded, paper-style augmentation.

Border convention under test: mirror about the edge pixel centres, i.e. SciPy
``map_coordinates(mode="mirror")`` and ``np.pad(mode="reflect")``.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from zf_unet.data.augment import augment_batch, augment_sample, elastic_displacement
from zf_unet.data.augment_config import Augment
from zf_unet.data.augment_layer import AugmentLayer
from zf_unet.data.augment_warp import identity_coords, warp
from zf_unet.errors import DataError

GEOMETRY_ONLY = Augment(gray_values=False)
NO_AUG = Augment(elastic=False, flips=False, rotate90=False, gray_values=False)


def _blobs(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Binary blob images ``(B, H, W)`` with large connected regions (both labels present)."""
    noise = rng.normal(size=(batch, height, width))
    smooth = ndimage.gaussian_filter(noise, sigma=(0, 4, 4))
    return (smooth > np.median(smooth, axis=(1, 2), keepdims=True)).astype(np.uint8)


def _seed(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


# --------------------------------------------------------------------------- config


def test_config_defaults_follow_the_paper_and_round_trip() -> None:
    cfg = Augment()
    assert (cfg.elastic, cfg.elastic_grid, cfg.elastic_std) == (True, 3, 10.0)
    assert cfg.interpolation == "bilinear" and cfg.flips and cfg.rotate90 and cfg.gray_values
    assert (cfg.rotation_degrees, cfg.brightness, cfg.contrast, cfg.gamma) == (0.0, 0.1, 0.2, 0.2)
    custom = Augment(elastic_grid=5, elastic_std=4.5, interpolation="bicubic", rotation_degrees=7)
    as_dict = json.loads(json.dumps(custom.get_config()))
    assert Augment.from_config(as_dict) == custom
    assert Augment.from_config(cfg.get_config()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"elastic_grid": 1}, "elastic_grid"),
        ({"elastic_grid": 3.0}, "elastic_grid"),
        ({"elastic_std": -1.0}, "elastic_std"),
        ({"elastic_std": float("nan")}, "elastic_std"),
        ({"interpolation": "nearest"}, "interpolation"),
        ({"rotation_degrees": 200.0}, "rotation_degrees"),
        ({"brightness": 1.5}, "brightness"),
        ({"contrast": 1.0}, "contrast"),
        ({"gamma": -0.1}, "gamma"),
        ({"flips": "yes"}, "flips"),
    ],
)
def test_config_rejects_bad_arguments_by_name(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Augment(**kwargs)


def test_from_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="elastic_sigma"):
        Augment.from_config({"elastic_sigma": 3.0})


def test_bad_inputs_raise_clear_errors() -> None:
    img = np.zeros((1, 8, 8, 1), np.float32)
    with pytest.raises(DataError, match="nearest"):
        warp(np.zeros((1, 8, 8, 1), np.int32), identity_coords(8, 8)[None], "bilinear")
    with pytest.raises(ValueError, match="interpolation"):
        warp(img, identity_coords(8, 8)[None], "cubic")
    with pytest.raises(DataError, match="masks"):
        augment_batch(img, np.zeros((1, 8, 9, 1), np.uint8), seed=_seed(1), config=NO_AUG)
    with pytest.raises(DataError, match="images"):
        augment_batch(img[0], img[0], seed=_seed(1))
    with pytest.raises(ValueError, match="seed"):
        augment_batch(img, img, seed=tf.constant([1, 2, 3]))


# --------------------------------------------------------------------------- warp


@pytest.mark.parametrize("channels", [1, 3])
def test_bilinear_warp_matches_scipy_mirror(rng: np.random.Generator, channels: int) -> None:
    h, w = 37, 29
    img = rng.random((2, h, w, channels)).astype(np.float32)
    disp = elastic_displacement(2, h, w, _seed(3), grid=4, std=9.0).numpy()
    # Far outside the image too (more than one mirror period on some pixels).
    coords = identity_coords(h, w).numpy()[None] * np.float32(1.3) - 5.0 + disp
    coords[1, :4] += np.float32(2.5 * h)
    out = warp(img, coords, "bilinear").numpy()
    for b in range(2):
        for c in range(channels):
            ref = ndimage.map_coordinates(
                img[b, ..., c].astype(np.float64),
                [coords[b, ..., 0], coords[b, ..., 1]],
                order=1,
                mode="mirror",
            )
            np.testing.assert_allclose(out[b, ..., c], ref, atol=1e-4)


def test_nearest_warp_matches_scipy_away_from_ties(rng: np.random.Generator) -> None:
    h, w = 33, 40
    labels = rng.integers(0, 1000, (2, h, w, 1)).astype(np.int32)
    coords = identity_coords(h, w).numpy()[None] + elastic_displacement(
        2, h, w, _seed(5), std=12.0
    ).numpy()
    out = warp(labels, coords, "nearest").numpy()
    assert out.dtype == np.int32
    frac = coords - np.floor(coords)
    away = np.all(np.abs(frac - 0.5) > 1e-3, axis=-1)
    assert away.mean() > 0.99
    for b in range(2):
        ref = ndimage.map_coordinates(
            labels[b, ..., 0], [coords[b, ..., 0], coords[b, ..., 1]], order=0, mode="mirror"
        )
        np.testing.assert_array_equal(out[b, ..., 0][away[b]], ref[away[b]])


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize(("dy", "dx"), [(5, -7), (-12, 3), (0, 29 + 16)])
def test_constant_shift_past_border_gives_mirror_image(
    rng: np.random.Generator, interpolation: str, dy: int, dx: int
) -> None:
    h, w = 20, 17
    img = rng.random((1, h, w, 2)).astype(np.float32)
    coords = identity_coords(h, w).numpy()[None] + np.array([dy, dx], np.float32)
    out = warp(img, coords, interpolation).numpy()[0]
    pad = 3 * max(h, w)
    padded = np.pad(img[0], ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    expected = padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_bicubic_reproduces_smooth_ramps_and_is_exact_on_the_grid(
    rng: np.random.Generator,
) -> None:
    h, w = 24, 30
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (0.3 * yy - 0.2 * xx + 0.01 * yy * xx)[None, ..., None]
    coords = rng.uniform([1, 1], [h - 2.001, w - 2.001], (1, 50, 60, 2)).astype(np.float32)
    out = warp(ramp, coords, "bicubic").numpy()[0, ..., 0]
    y, x = coords[0, ..., 0], coords[0, ..., 1]
    np.testing.assert_allclose(out, 0.3 * y - 0.2 * x + 0.01 * y * x, atol=1e-3)
    img = rng.random((1, h, w, 1)).astype(np.float32)
    same = warp(img, identity_coords(h, w)[None], "bicubic").numpy()
    np.testing.assert_array_equal(same, img)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    values=st.lists(st.floats(-40.0, 40.0, allow_nan=False, width=32), min_size=1, max_size=6),
)
def test_nearest_indexing_is_mirror_about_pixel_centres(n: int, values: list[float]) -> None:
    row = np.arange(n, dtype=np.int32)[None, None, :, None]  # (1, 1, n, 1)
    cols = np.asarray(values, np.float32)
    frac = cols - np.floor(cols)
    cols = np.where(np.abs(frac - 0.5) < 1e-3, cols + 0.25, cols).astype(np.float32)
    coords = np.stack([np.zeros_like(cols), cols], axis=-1)[None, None]  # (1, 1, k, 2)
    got = warp(row, coords, "nearest").numpy()[0, 0, :, 0]
    idx = np.floor(cols + 0.5).astype(np.int64)
    if n == 1:
        expected = np.zeros_like(idx)
    else:
        period = 2 * (n - 1)
        idx = np.mod(idx, period)
        expected = np.where(idx > n - 1, period - idx, idx)
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- one field for all


def test_one_field_for_image_mask_and_weight(rng: np.random.Generator) -> None:
    blobs = _blobs(rng, 4, 96, 80)
    image = blobs[..., None].astype(np.float32)
    mask = blobs[..., None].astype(np.int32)
    weight = image.copy()  # resampled nearest: must equal the mask exactly
    cfg = Augment(elastic_std=8.0, rotation_degrees=20.0, gray_values=False)
    out_img, out_mask, out_w = (t.numpy() for t in augment_batch(
        image, mask, weight, seed=_seed(11), config=cfg
    ))
    # Nearest-neighbour tensors at the same field are identical.
    np.testing.assert_array_equal(out_w, out_mask.astype(np.float32))
    # Bilinear image vs nearest mask: agree wherever the image is clearly inside/outside.
    clear_bg, clear_fg = out_img < 0.01, out_img > 0.99
    assert (clear_bg | clear_fg).mean() > 0.6
    assert np.all(out_mask[clear_bg] == 0) and np.all(out_mask[clear_fg] == 1)
    # ... and the deformation did something.
    assert (out_mask != mask).mean() > 0.1


def test_augment_uses_exactly_the_public_elastic_field(rng: np.random.Generator) -> None:
    h, w = 48, 40
    img = rng.random((3, h, w, 1)).astype(np.float32)
    mask = rng.integers(0, 4, (3, h, w, 1)).astype(np.uint8)
    cfg = Augment(elastic_std=7.0, flips=False, rotate90=False, gray_values=False)
    out_img, out_mask = augment_batch(img, mask, seed=_seed(21), config=cfg)
    coords = identity_coords(h, w)[None] + elastic_displacement(3, h, w, _seed(21), std=7.0)
    np.testing.assert_allclose(out_img.numpy(), warp(img, coords).numpy(), atol=1e-5)
    same = out_mask.numpy() == warp(mask, coords, "nearest").numpy()
    assert same.mean() > 0.999


# --------------------------------------------------------------------------- behaviour


def test_zero_std_is_identity(rng: np.random.Generator) -> None:
    img = rng.random((2, 30, 26, 3)).astype(np.float32)
    mask = rng.integers(0, 5, (2, 30, 26, 1)).astype(np.int64)
    weight = rng.random((2, 30, 26, 1)).astype(np.float32)
    for interp in ("bilinear", "bicubic"):
        cfg = Augment(elastic_std=0.0, interpolation=interp, flips=False, rotate90=False,
                      gray_values=False)
        out = augment_batch(img, mask, weight, seed=_seed(4), config=cfg)
        for got, want in zip(out, (img, mask, weight)):
            np.testing.assert_array_equal(got.numpy(), want)
    assert np.all(elastic_displacement(2, 30, 26, _seed(4), std=0.0).numpy() == 0.0)


def test_same_seed_same_output_different_seed_different(rng: np.random.Generator) -> None:
    img = rng.random((2, 40, 40, 1)).astype(np.float32)
    mask = _blobs(rng, 2, 40, 40)[..., None]
    a = augment_batch(img, mask, seed=_seed(1, 2))
    b = augment_batch(img, mask, seed=_seed(1, 2))
    c = augment_batch(img, mask, seed=_seed(1, 3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert not np.allclose(a[0].numpy(), c[0].numpy())
    assert np.any(a[1].numpy() != c[1].numpy())


def test_each_sample_has_its_own_field_from_its_own_seed(rng: np.random.Generator) -> None:
    one = rng.random((40, 36, 1)).astype(np.float32)
    img = np.repeat(one[None], 4, axis=0)
    mask = (img > 0.5).astype(np.uint8)
    seed = _seed(8, 9)
    out = [t.numpy() for t in augment_batch(img, mask, img, seed=seed)]
    for i in range(1, 4):
        assert not np.allclose(out[0][0], out[0][i])
    per_sample = tf.random.experimental.stateless_split(seed, 4, alg="philox")
    for i in range(4):
        single = augment_sample(img[i], mask[i], img[i], seed=per_sample[i])
        image, labels, weight = (t.numpy() for t in single)
        np.testing.assert_array_equal(labels, out[1][i])  # nearest sampling: exact
        # interpolated values: batched and single kernels may sum in another order (the
        # oneDNN build of this TF release differs by up to 2e-6 on values near 0.5)
        np.testing.assert_allclose(image, out[0][i], atol=1e-5)
        np.testing.assert_allclose(weight, out[2][i], atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32])
def test_masks_keep_dtype_and_only_original_labels(
    rng: np.random.Generator, dtype: type
) -> None:
    labels = np.array([0, 3, 7], dtype=dtype) if dtype != np.float32 else np.array(
        [0.0, 0.25, 1.0], np.float32
    )
    mask = labels[rng.integers(0, 3, (2, 32, 48, 1))]
    img = rng.random((2, 32, 48, 1)).astype(np.float32)
    cfg = Augment(rotation_degrees=30.0, interpolation="bicubic")
    _, out = augment_batch(img, mask, seed=_seed(6), config=cfg)
    assert out.dtype == tf.as_dtype(dtype)
    assert set(np.unique(out.numpy())) <= set(labels.tolist())


def test_gray_values_touch_only_the_image(rng: np.random.Generator) -> None:
    img = rng.random((4, 32, 32, 1)).astype(np.float32)
    mask = rng.integers(0, 2, (4, 32, 32, 1)).astype(np.uint8)
    weight = rng.random((4, 32, 32, 1)).astype(np.float32) * 10
    gray_only = Augment(elastic=False, flips=False, rotate90=False, brightness=0.3)
    out_img, out_mask, out_w = augment_batch(img, mask, weight, seed=_seed(2), config=gray_only)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    np.testing.assert_array_equal(out_w.numpy(), weight)
    assert np.abs(out_img.numpy() - img).mean() > 1e-3
    assert out_img.numpy().min() >= 0.0 and out_img.numpy().max() <= 1.0
    # With geometry on, switching gray values on/off changes nothing but the image.
    with_gray = augment_batch(img, mask, weight, seed=_seed(5), config=Augment())
    without = augment_batch(img, mask, weight, seed=_seed(5), config=GEOMETRY_ONLY)
    np.testing.assert_array_equal(with_gray[1].numpy(), without[1].numpy())
    np.testing.assert_array_equal(with_gray[2].numpy(), without[2].numpy())
    assert not np.allclose(with_gray[0].numpy(), without[0].numpy())


def _d4(x: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of ``(H, W, C)``."""
    out = []
    for k in range(4):
        r = np.rot90(x, k, axes=(0, 1))
        out += [r, r[::-1]]
    return out


@pytest.mark.parametrize(("h", "w", "n_expected"), [(9, 9, 8), (7, 10, 4)])
def test_flips_and_rot90_are_consistent(
    rng: np.random.Generator, h: int, w: int, n_expected: int
) -> None:
    base = rng.random((h, w, 1)).astype(np.float32)
    labels = rng.permutation(h * w).reshape(h, w, 1).astype(np.int32)
    batch = 64
    img = np.repeat(base[None], batch, 0)
    mask = np.repeat(labels[None], batch, 0)
    cfg = Augment(elastic=False, gray_values=False)
    out_img, out_mask = (t.numpy() for t in augment_batch(img, mask, seed=_seed(3), config=cfg))
    assert out_img.shape == img.shape
    candidates_img, candidates_mask = _d4(base), _d4(labels)
    seen = set()
    for i in range(batch):
        hits = [
            k for k, (ci, cm) in enumerate(zip(candidates_img, candidates_mask))
            if ci.shape == out_img[i].shape
            and np.array_equal(ci, out_img[i]) and np.array_equal(cm, out_mask[i])
        ]
        assert hits, f"sample {i} is not a flip/rotation of the input (or mask disagrees)"
        seen.add(hits[0])
    assert len(seen) == n_expected


@pytest.mark.parametrize(("h", "w", "c"), [(64, 64, 1), (48, 80, 3), (33, 20, 1)])
def test_shapes_preserved_static_and_dynamic(
    rng: np.random.Generator, h: int, w: int, c: int
) -> None:
    img = rng.random((2, h, w, c)).astype(np.float32)
    mask = rng.integers(0, 3, (2, h, w, 1)).astype(np.uint8)
    weight = rng.random((2, h, w, 1)).astype(np.float32)
    out = augment_batch(img, mask, weight, seed=_seed(1), config=Augment(rotation_degrees=5))
    assert [tuple(t.shape) for t in out] == [img.shape, mask.shape, weight.shape]
    assert [t.dtype for t in out] == [tf.float32, tf.uint8, tf.float32]

    @tf.function(input_signature=[
        tf.TensorSpec([None, h, w, c], tf.float32),
        tf.TensorSpec([None, None, None, 1], tf.uint8),
    ])
    def run(x: tf.Tensor, m: tf.Tensor) -> tuple[tf.Tensor, ...]:
        res = augment_batch(x, m, seed=_seed(1))
        assert res[0].shape.as_list() == [None, h, w, c]
        assert res[1].shape.as_list() == [None, h, w, 1]  # merged from the image
        return res

    got = run(img, mask)
    assert tuple(got[0].shape) == img.shape and tuple(got[1].shape) == mask.shape


def test_augment_sample_unbatched(rng: np.random.Generator) -> None:
    img = rng.random((40, 30, 3)).astype(np.float32)
    mask = rng.integers(0, 2, (40, 30, 1)).astype(np.uint8)
    out_img, out_mask = augment_sample(img, mask, seed=_seed(2), config=Augment())
    assert out_img.shape == img.shape and out_mask.shape == mask.shape
    assert out_mask.dtype == tf.uint8


# --------------------------------------------------------------------------- graph modes


def test_runs_under_tf_data_map_and_is_deterministic(rng: np.random.Generator) -> None:
    img = rng.random((6, 32, 24, 1)).astype(np.float32)
    mask = rng.integers(0, 3, (6, 32, 24, 1)).astype(np.uint8)
    weight = rng.random((6, 32, 24, 1)).astype(np.float32)
    cfg = Augment(rotation_degrees=10.0)

    def per_sample(i: tf.Tensor, xmw: tuple) -> tuple:
        return augment_sample(*xmw, seed=tf.stack([tf.constant(7, tf.int64), i]), config=cfg)

    def per_batch(i: tf.Tensor, xmw: tuple) -> tuple:
        return augment_batch(*xmw, seed=tf.stack([tf.constant(9, tf.int64), i]), config=cfg)

    base = tf.data.Dataset.from_tensor_slices((img, mask, weight))
    ds1 = base.enumerate().map(per_sample, num_parallel_calls=2).batch(4)
    ds2 = base.batch(4).enumerate().map(per_batch).prefetch(1)
    for ds in (ds1, ds2):
        assert ds.element_spec[0].shape.as_list() == [None, 32, 24, 1]
        assert ds.element_spec[1].dtype == tf.uint8
        first = [[t.numpy() for t in b] for b in ds]
        second = [[t.numpy() for t in b] for b in ds]
        for b1, b2 in zip(first, second):
            for t1, t2 in zip(b1, b2):
                np.testing.assert_array_equal(t1, t2)
        assert sum(b[0].shape[0] for b in first) == 6
    # The tf.data result equals the eager call with the same seed.
    eager = augment_batch(img[:4], mask[:4], weight[:4], seed=_seed(9, 0), config=cfg)
    first_batch = next(iter(ds2))
    for got, want in zip(first_batch, eager):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_xla_compiled_matches_eager(rng: np.random.Generator) -> None:
    img = rng.random((3, 40, 56, 1)).astype(np.float32)
    mask = _blobs(rng, 3, 40, 56)[..., None]
    weight = rng.random((3, 40, 56, 1)).astype(np.float32)
    cfg = Augment(rotation_degrees=15.0)

    @tf.function(jit_compile=True)
    def compiled(x: tf.Tensor, m: tf.Tensor, w: tf.Tensor, s: tf.Tensor) -> tuple:
        return augment_batch(x, m, w, seed=s, config=cfg)

    got = compiled(img, mask, weight, _seed(12))
    want = augment_batch(img, mask, weight, seed=_seed(12), config=cfg)
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), atol=1e-4)
    assert (got[1].numpy() == want[1].numpy()).mean() > 0.999
    assert (got[2].numpy() == want[2].numpy()).mean() > 0.999
    assert got[1].dtype == tf.uint8
    other = compiled(img, mask, weight, _seed(13))
    assert not np.allclose(other[0].numpy(), got[0].numpy())


# --------------------------------------------------------------------------- Keras layer


def test_augment_layer_config_round_trip_and_inference_identity(
    rng: np.random.Generator,
) -> None:
    layer = AugmentLayer(Augment(elastic_std=5.0, rotation_degrees=3.0), seed=17, name="aug")
    config = layer.get_config()
    json.dumps(config)
    clone = AugmentLayer.from_config(config)
    assert clone.augment == layer.augment and clone.seed == 17 and clone.name == "aug"
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(revived, AugmentLayer) and revived.augment == layer.augment

    img = rng.random((2, 32, 32, 1)).astype(np.float32)
    mask = rng.integers(0, 2, (2, 32, 32, 1)).astype(np.uint8)
    for out in (layer((img, mask)), layer((img, mask), training=False)):
        np.testing.assert_array_equal(np.asarray(out[0]), img)
        np.testing.assert_array_equal(np.asarray(out[1]), mask)

    # training=True: augments, varies per call, and is reproducible from the seed.
    a1 = layer((img, mask, img), training=True)
    a2 = layer((img, mask, img), training=True)
    b1 = clone((img, mask, img), training=True)
    assert len(a1) == 3
    assert not np.allclose(np.asarray(a1[0]), img)
    assert not np.allclose(np.asarray(a1[0]), np.asarray(a2[0]))
    np.testing.assert_array_equal(np.asarray(a1[0]), np.asarray(b1[0]))
    np.testing.assert_array_equal(np.asarray(a1[1]), np.asarray(b1[1]))


def test_augment_layer_keeps_its_registered_name_and_old_files_load() -> None:
    """The layer moved to zf_unet.data.augment_layer; .keras files name it by its registered
    name ``zf_unet>AugmentLayer`` (and the module it was saved from), so they keep loading."""
    import zf_unet.data

    assert keras.saving.get_registered_name(AugmentLayer) == "zf_unet>AugmentLayer"
    assert keras.saving.get_registered_object("zf_unet>AugmentLayer") is AugmentLayer
    assert zf_unet.data.AugmentLayer is AugmentLayer  # lazy (PEP 562): needs Keras
    old = {"module": "zf_unet.data.augment", "class_name": "AugmentLayer",
           "registered_name": "zf_unet>AugmentLayer",
           "config": {"name": "aug", "trainable": True, "dtype": "float32",
                      "augment": Augment(elastic_std=4.0).get_config(), "seed": 5,
                      "spatial_dims": 2}}
    revived = keras.saving.deserialize_keras_object(old)
    assert isinstance(revived, AugmentLayer)
    assert revived.augment == Augment(elastic_std=4.0) and revived.seed == 5


def test_augment_sample_is_augment_batch_of_one_split_seed(rng: np.random.Generator) -> None:
    """One implementation behind both: sample i of a batch equals augment_sample with the
    i-th split seed, for images and for volumes without a channel axis."""
    seed = _seed(21, 4)
    img = rng.random((3, 24, 24, 1)).astype(np.float32)
    mask = rng.integers(0, 3, (3, 24, 24, 1)).astype(np.int32)
    batch = augment_batch(img, mask, seed=seed)
    splits = tf.random.experimental.stateless_split(seed, 3, alg="philox")
    for i in range(3):
        one = augment_sample(img[i], mask[i], seed=splits[i])
        np.testing.assert_allclose(np.asarray(one[0]), np.asarray(batch[0][i]), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(one[1]), np.asarray(batch[1][i]))
    vol = rng.random((2, 6, 16, 16, 1)).astype(np.float32)
    labels = rng.integers(0, 2, (2, 6, 16, 16)).astype(np.uint8)
    vb = augment_batch(vol, labels, seed=seed, spatial_dims=3)
    vs = augment_sample(vol[1], labels[1], seed=tf.random.experimental.stateless_split(
        seed, 2, alg="philox")[1], spatial_dims=3)
    assert vb[1].shape == labels.shape and vs[1].shape == labels.shape[1:]
    np.testing.assert_array_equal(np.asarray(vs[1]), np.asarray(vb[1][1]))
    off = Augment(enabled=False)
    np.testing.assert_array_equal(np.asarray(augment_sample(img[0], mask[0], seed=seed,
                                                            config=off)[1]), mask[0])


# --------------------------------------------------------------------------- statistics


def test_elastic_field_std_at_grid_points_matches_config() -> None:
    h, w, grid, std = 33, 41, 3, 10.0
    # Traced once (tf.map_fn as a graph loop, not 600 eager iterations); the numbers are
    # the eager ones bit for bit.
    field = tf.function(
        lambda: elastic_displacement(600, h, w, _seed(99), grid=grid, std=std))().numpy()
    assert field.shape == (600, h, w, 2) and field.dtype == np.float32
    rows, cols = [0, 16, 32], [0, 20, 40]  # the corner-aligned 3x3 grid points
    at_grid = field[:, rows][:, :, cols]  # (600, 3, 3, 2)
    assert abs(at_grid.std() - std) < 0.4  # 10800 draws: std error ~0.07
    assert abs(at_grid.mean()) < 0.3
    per_point = at_grid.std(axis=0)
    assert np.all(np.abs(per_point - std) < 1.5)
    # Between grid points the field is smooth: small pixel-to-pixel steps.
    assert np.abs(np.diff(field, axis=1)).max() < std
    # Different grid points are independent.
    corr = np.corrcoef(at_grid[:, 0, 0, 0], at_grid[:, 2, 2, 0])[0, 1]
    assert abs(corr) < 0.15
