"""Overlap-tile inference: shapes for any size, seam-free blending, exactness against direct
model calls (same and valid padding), test-time augmentation, input forms, memory, errors."""
from __future__ import annotations

import time
import tracemalloc

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zf_unet
from zf_unet.inference import model_geometry, predict_tiled


def _unet(seed: int = 0, **kw) -> keras.Model:
    keras.utils.set_random_seed(seed)
    kw.setdefault("depth", 3)
    kw.setdefault("filters", 4)
    return zf_unet.build_unet(**kw)


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Direct (untiled) model call on a (B, H, W, C) float32 batch."""
    return np.asarray(model(np.ascontiguousarray(x, dtype=np.float32), training=False))


@pytest.fixture(scope="module")
def same_model() -> keras.Model:
    return _unet(0, input_shape=(None, None, 1), num_classes=1)


@pytest.fixture(scope="module")
def valid_model() -> keras.Model:
    return _unet(1, input_shape=(None, None, 1), num_classes=2, padding="valid")


@pytest.fixture(scope="module")
def rgb_model() -> keras.Model:
    return _unet(2, input_shape=(None, None, 3), num_classes=3)


@pytest.fixture(scope="module")
def const_model() -> keras.Model:
    """A U-Net whose head ignores its input: sigmoid(0.3) everywhere."""
    model = _unet(3, input_shape=(None, None, 1), num_classes=1)
    head = model.get_layer("head_conv")
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.full_like(bias, 0.3)])
    return model


@pytest.fixture(scope="module")
def identity_model() -> keras.Model:
    """Output = input (no downsampling): tiling and blending must reproduce the image."""
    inp = keras.Input((None, None, 1))
    return keras.Model(inp, keras.layers.Activation("linear")(inp))


@pytest.fixture(scope="module")
def shift_model() -> keras.Model:
    """Two valid 3x3 delta convolutions: output[y, x] = input[y + 2, x + 2] (margin 2).
    The overlap-tile prediction of the whole image must be the image itself."""
    inp = keras.Input((None, None, 1))
    x = inp
    for i in range(2):
        conv = keras.layers.Conv2D(1, 3, padding="valid", use_bias=False, name=f"delta{i}")
        x = conv(x)
        k = np.zeros((3, 3, 1, 1), dtype="float32")
        k[1, 1] = 1.0
        conv.set_weights([k])
    return keras.Model(inp, x)


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------
def test_model_geometry(same_model, valid_model, shift_model):
    g = model_geometry(same_model)
    assert (g["depth"], g["divisor"], g["margin"], g["padding"]) == (3, 4, 0, "same")
    assert (g["channels"], g["num_classes"]) == (1, 1)
    g = model_geometry(valid_model)
    # Hand count for depth 3: 2 valid 3x3 convs per block trim 2 px at each level's scale:
    # 2 (enc0) + 4 (enc1) + 8 (bottleneck) + 4 (dec1) + 2 (dec0) = 20 px per side.
    assert (g["depth"], g["divisor"], g["margin"], g["padding"]) == (3, 4, 20, "valid")
    assert g["num_classes"] == 2
    g = model_geometry(shift_model)
    assert (g["depth"], g["divisor"], g["margin"]) == (1, 1, 2)


def test_fixed_size_model_tiles_with_its_own_size():
    model = _unet(4, input_shape=(32, 32, 1), num_classes=1)
    assert model_geometry(model)["fixed_size"] == (32, 32)
    img = np.random.default_rng(0).random((70, 45), dtype=np.float32)
    out = predict_tiled(model, img, tile_size=999, overlap=8)
    assert out.shape == (70, 45, 1)
    tile = img[:32, :32]
    direct = _predict(model, tile[None, ..., None])[0]
    single = predict_tiled(model, tile, overlap=8)
    np.testing.assert_allclose(single, direct, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Shapes and ranges for any size
# ------------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    kind=st.sampled_from(["same", "valid"]),
    blend=st.sampled_from(["gaussian", "linear", "none"]),
)
def test_any_size_gives_input_shape_and_probabilities(same_model, valid_model, h, w, kind, blend):
    rng = np.random.default_rng(h * 1000 + w)
    img = rng.random((h, w), dtype=np.float32)
    model, k, tile = (same_model, 1, 64) if kind == "same" else (valid_model, 2, 96)
    out = predict_tiled(model, img, tile_size=tile, overlap=16, blend=blend)
    assert out.shape == (h, w, k)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    if k == 2:  # softmax stays normalised after blending
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    h=st.integers(1, 150),
    w=st.integers(1, 150),
    blend=st.sampled_from(["gaussian", "linear", "none"]),
    tta=st.sampled_from([None, "flips", "d4"]),
)
def test_identity_model_reproduces_the_image(identity_model, h, w, blend, tta):
    img = np.random.default_rng(h + 7 * w).random((h, w), dtype=np.float32)
    out = predict_tiled(identity_model, img, tile_size=32, overlap=8, blend=blend, tta=tta)
    np.testing.assert_allclose(out[..., 0], img, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (97, 61)])
def test_valid_model_with_mirrored_context_reproduces_the_image(shift_model, shape):
    """Context at the borders (and tiles smaller than the margin) come from mirroring; the
    output tiles must land exactly where their input tiles came from."""
    img = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    out = predict_tiled(shift_model, img, tile_size=20, overlap=4)
    np.testing.assert_allclose(out[..., 0], img, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Blending
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blend", ["gaussian", "linear", "none"])
def test_constant_model_is_seam_free(const_model, blend):
    img = np.random.default_rng(5).random((333, 517), dtype=np.float32)
    out = predict_tiled(const_model, img, tile_size=64, overlap=16, blend=blend, batch_size=8)
    assert out.shape == (333, 517, 1)
    expected = 1.0 / (1.0 + np.exp(-0.3))
    assert float(out.max() - out.min()) < 1e-6
    assert abs(float(out.mean()) - expected) < 1e-6


def test_single_tile_equals_direct_prediction(same_model, valid_model):
    img = np.random.default_rng(6).random((64, 64), dtype=np.float32)
    direct = _predict(same_model, img[None, ..., None])[0]
    for tile in (64, 256):
        out = predict_tiled(same_model, img, tile_size=tile, overlap=16)
        np.testing.assert_allclose(out, direct, atol=1e-5)


def test_tiled_approximates_full_image_in_tile_interiors(same_model):
    img = np.random.default_rng(7).random((256, 256), dtype=np.float32)
    full = _predict(same_model, img[None, ..., None])[0, ..., 0]
    tiled = predict_tiled(same_model, img, tile_size=128, overlap=96)[..., 0]
    assert not np.allclose(tiled, full, atol=1e-7)  # several tiles were really used
    inner = (slice(16, -16), slice(16, -16))
    corr = np.corrcoef(tiled[inner].ravel(), full[inner].ravel())[0, 1]
    assert corr > 0.99
    assert np.abs(tiled[inner] - full[inner]).mean() < 0.01


def test_valid_model_single_tile_equals_mirror_padded_direct_call(valid_model):
    margin = model_geometry(valid_model)["margin"]
    img = np.random.default_rng(8).random((60, 60), dtype=np.float32)  # 60 = 4 + 14 * 4
    padded = np.pad(img, margin, mode="reflect")
    direct = _predict(valid_model, padded[None, ..., None])[0]
    assert direct.shape == (60, 60, 2)
    out = predict_tiled(valid_model, img, tile_size=128, overlap=16)
    np.testing.assert_allclose(out, direct, atol=1e-5)


def test_valid_model_multi_tile_shape(valid_model):
    img = np.random.default_rng(9).random((157, 203), dtype=np.float32)
    out = predict_tiled(valid_model, img, tile_size=100, overlap=12, batch_size=3)
    assert out.shape == (157, 203, 2)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Test-time augmentation
# ------------------------------------------------------------------------------------------
def _manual_tta(model, img, transforms):
    preds = []
    for fwd, inv in transforms:
        x = np.ascontiguousarray(fwd(img))[None, ..., None]
        preds.append(inv(_predict(model, x)[0]))
    return np.mean(preds, axis=0)


def test_tta_equals_average_of_manual_transforms(same_model):
    img = np.random.default_rng(10).random((64, 64), dtype=np.float32)
    flips = [
        (lambda a: a, lambda a: a),
        (lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
        (lambda a: a[::-1], lambda a: a[::-1]),
        (lambda a: a[::-1, ::-1], lambda a: a[::-1, ::-1]),
    ]
    d4 = []
    for k in range(4):
        d4.append((lambda a, k=k: np.rot90(a, k), lambda a, k=k: np.rot90(a, -k)))
        d4.append(
            (lambda a, k=k: np.rot90(a.T, k), lambda a, k=k: np.rot90(a, -k).transpose(1, 0, 2))
        )
    plain = predict_tiled(same_model, img, tile_size=64, overlap=16)
    for tta, transforms in (("flips", flips), ("d4", d4)):
        out = predict_tiled(same_model, img, tile_size=64, overlap=16, tta=tta)
        expected = _manual_tta(same_model, img, transforms)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        assert np.abs(out - plain).max() > 1e-4  # the random U-Net is not equivariant
    d4_out = predict_tiled(same_model, img, tile_size=64, overlap=16, tta="d4")
    flips_out = predict_tiled(same_model, img, tile_size=64, overlap=16, tta="flips")
    assert np.abs(d4_out - flips_out).max() > 1e-5


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tta_on_non_square_multi_tile_images(same_model, valid_model, tta):
    img = np.random.default_rng(11).random((90, 141), dtype=np.float32)
    out = predict_tiled(same_model, img, tile_size=64, overlap=16, tta=tta)
    assert out.shape == (90, 141, 1) and 0.0 <= out.min() and out.max() <= 1.0
    out = predict_tiled(valid_model, img[:50, :31], tile_size=80, overlap=8, tta=tta)
    assert out.shape == (50, 31, 2)


# ------------------------------------------------------------------------------------------
# Input forms and dtypes
# ------------------------------------------------------------------------------------------
def test_stacks_rgb_and_dtypes(same_model, rgb_model):
    rng = np.random.default_rng(12)
    stack = rng.random((3, 70, 50), dtype=np.float32)
    out = predict_tiled(same_model, stack, tile_size=32, overlap=8)
    assert out.shape == (3, 70, 50, 1)
    for i in range(3):
        np.testing.assert_allclose(out[i], predict_tiled(same_model, stack[i], 32, 8), atol=1e-6)
    out4 = predict_tiled(same_model, stack[..., None], tile_size=32, overlap=8)
    np.testing.assert_allclose(out4, out, atol=1e-6)
    # (H, W, 1) with a 1-channel model is one image, not a stack of 1-px-wide images.
    assert predict_tiled(same_model, stack[0][..., None], 32, 8).shape == (70, 50, 1)

    rgb = rng.integers(0, 256, (45, 77, 3), dtype=np.uint8)
    out = predict_tiled(rgb_model, rgb, tile_size=32, overlap=8)
    assert out.shape == (45, 77, 3)
    ref = predict_tiled(rgb_model, rgb.astype(np.float32) / 255.0, tile_size=32, overlap=8)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    assert predict_tiled(rgb_model, np.stack([rgb, rgb]), 32, 8).shape == (2, 45, 77, 3)

    g16 = rng.integers(0, 65536, (40, 40), dtype=np.uint16)
    np.testing.assert_allclose(
        predict_tiled(same_model, g16, 32, 8),
        predict_tiled(same_model, g16.astype(np.float64) / 65535.0, 32, 8),
        atol=1e-6,
    )


def test_threshold_labels(same_model, rgb_model):
    rng = np.random.default_rng(13)
    img = rng.random((50, 60), dtype=np.float32)
    prob = predict_tiled(same_model, img, 32, 8)
    t = float(np.median(prob))
    labels = predict_tiled(same_model, img, 32, 8, threshold=t)
    assert labels.dtype == np.uint8 and labels.shape == (50, 60)
    np.testing.assert_array_equal(labels, (prob[..., 0] > t).astype(np.uint8))
    assert 0 < labels.sum() < labels.size

    rgb = rng.random((2, 40, 36, 3), dtype=np.float32)
    prob = predict_tiled(rgb_model, rgb, 32, 8)
    labels = predict_tiled(rgb_model, rgb, 32, 8, threshold=0.5)
    assert labels.dtype == np.uint8 and labels.shape == (2, 40, 36)
    np.testing.assert_array_equal(labels, prob.argmax(-1))


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------
def test_errors(same_model, valid_model, rgb_model):
    img = np.zeros((40, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="ndim=1"):
        predict_tiled(same_model, np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="ndim=5"):
        predict_tiled(same_model, np.zeros((1, 2, 8, 8, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="expects 3 channels"):
        predict_tiled(rgb_model, img)
    with pytest.raises(ValueError, match="expects 3"):
        predict_tiled(rgb_model, np.zeros((2, 8, 8, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="expects 1 channel"):
        predict_tiled(same_model, np.zeros((20, 20, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="overlap=64 must be smaller than tile_size=64"):
        predict_tiled(same_model, img, tile_size=64, overlap=64)
    with pytest.raises(ValueError, match="overlap=30 must be smaller than the output tile"):
        predict_tiled(valid_model, np.zeros((200, 200), np.float32), tile_size=64, overlap=30)
    with pytest.raises(ValueError, match="tile_size=3 is too small"):
        predict_tiled(same_model, img, tile_size=3, overlap=0)
    with pytest.raises(ValueError, match="tile_size=40 is too small.*44"):
        predict_tiled(valid_model, img, tile_size=40, overlap=8)
    bad = img.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf.*3, 5"):
        predict_tiled(same_model, bad)
    bad[3, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        predict_tiled(same_model, bad)
    with pytest.raises(ValueError, match="blend"):
        predict_tiled(same_model, img, blend="cosine")
    with pytest.raises(ValueError, match="tta"):
        predict_tiled(same_model, img, tta="rot")
    with pytest.raises(ValueError, match="batch_size"):
        predict_tiled(same_model, img, batch_size=0)
    with pytest.raises(ValueError, match="dtype int64"):
        predict_tiled(same_model, np.zeros((8, 8), dtype=np.int64))


# ------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_large_image_memory_is_bounded():
    """8192 x 8192 uint8 through a one-convolution model: numpy allocations beyond the
    float32 output (256 MiB) stay far below 2 GB: tiles are gathered one batch at a time, never
    padded or converted as a whole image. (The model's own cost is beside the point: even the
    smallest U-Net made this test ~3x slower. How fast it runs belongs in benchmarks/.)"""
    keras.utils.set_random_seed(14)
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same",
                                                    activation="sigmoid")(inputs))
    img = np.random.default_rng(14).integers(0, 256, (8192, 8192), dtype=np.uint8)
    predict_tiled(model, img[:600, :600], tile_size=512, overlap=32)  # trace the graph once
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        out = predict_tiled(model, img, tile_size=512, overlap=32)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (8192, 8192, 1) and out.dtype == np.float32
    extra = peak - out.nbytes
    print(f"8192^2: {elapsed:.1f} s, peak numpy extra {extra / 2**20:.1f} MiB")
    assert extra < 2 * 2**30
    assert extra < 256 * 2**20  # regression guard: no whole-image float copy or padding
    assert np.isfinite(out[::512, ::512]).all()


def test_channels_last_reads_short_last_axes_as_the_caller_says(same_model, rgb_model):
    """A stack of 3 px wide strips (N, H, 3) for a 1-channel model looks like an RGB image:
    refused without channels_last, predicted strip by strip with channels_last=False."""
    rng = np.random.default_rng(5)
    strips = rng.random((2, 40, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(N, H, W, 1\), or channels_last=False"):
        predict_tiled(same_model, strips, tile_size=32, overlap=8)
    got = predict_tiled(same_model, strips, tile_size=32, overlap=8, channels_last=False)
    assert got.shape == (2, 40, 3, 1)
    for n in range(2):  # the same as each strip alone, given as an (H, W) image
        one = predict_tiled(same_model, strips[n], tile_size=32, overlap=8)
        np.testing.assert_allclose(got[n], one, atol=1e-6)
    # A 3 px wide strip (H, 3) and its (H, 3, 1) form: one image either way.
    np.testing.assert_allclose(
        predict_tiled(same_model, strips[0][..., None], tile_size=32, overlap=8,
                      channels_last=True),
        predict_tiled(same_model, strips[0], tile_size=32, overlap=8, channels_last=False),
        atol=1e-6)
    # channels_last=True: the last axis must be the model's channels.
    with pytest.raises(ValueError, match=r"has 3 channels but the model expects 1"):
        predict_tiled(same_model, strips, tile_size=32, overlap=8, channels_last=True)
    # A 3-channel model: (H, W, 3) is unambiguous; without a channel axis it cannot work.
    rgb = rng.random((20, 3, 3), dtype=np.float32)
    assert predict_tiled(rgb_model, rgb, tile_size=32, overlap=8).shape == (20, 3, 3)
    with pytest.raises(ValueError, match=r"channels_last=False: image of shape \(20, 3, 3\) "
                                         r"has no channel axis, but the model expects 3"):
        predict_tiled(rgb_model, rgb, tile_size=32, overlap=8, channels_last=False)
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        predict_tiled(same_model, strips, channels_last="no")


def test_channels_last_for_volumes_with_a_short_last_axis():
    """A (D, H, 3) volume for a 1-channel volume model is a volume 3 px wide (no channel
    axis), and a batch of such volumes needs channels_last=False."""
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((None, None, None, 1), depth=2, filters=2)
    rng = np.random.default_rng(6)
    vol = rng.random((4, 10, 3), dtype=np.float32)
    got = predict_tiled(model, vol, tile_size=8, overlap=2)
    assert got.shape == (4, 10, 3, 1)
    np.testing.assert_allclose(
        got, predict_tiled(model, vol[..., None], tile_size=8, overlap=2, channels_last=True),
        atol=1e-6)
    batch = np.stack([vol, vol[::-1]])
    with pytest.raises(ValueError, match=r"channels_last=False for a batch \(N, D, H, W\)"):
        predict_tiled(model, batch, tile_size=8, overlap=2)
    both = predict_tiled(model, batch, tile_size=8, overlap=2, channels_last=False)
    assert both.shape == (2, 4, 10, 3, 1)
    np.testing.assert_allclose(both[0], got, atol=1e-6)
