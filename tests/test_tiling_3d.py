"""Volumes: 3-D model geometry, N-D tile plans (NumPy / TensorFlow parity), overlap-tile
prediction of (D, H, W[, C]) volumes against independent NumPy references, TTA, errors and
the serving export. Models are built by hand (tiny Conv3D / MaxPooling3D(1, 2, 2) nets)."""
from __future__ import annotations

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from zf_unet.export import export_onnx, export_saved_model, export_tflite, make_serving_fn
from zf_unet.inference import as_image_stack, check_finite, predict_tiled
from zf_unet.models import ModelGeometry, model_geometry
from zf_unet.tiling import TilePlan, tta_transforms


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
def _tiny_unet3d(seed: int = 0, channels: int = 1, classes: int = 2, levels: int = 2
                 ) -> keras.Model:
    """A U-Net-like volume model pooling only in-plane ((1, 2, 2), ``levels - 1`` times)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, None, channels))
    x, skips = inp, []
    for i in range(levels - 1):
        x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(x)
        skips.append(x)
        x = keras.layers.MaxPooling3D(pool_size=(1, 2, 2))(x)
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(x)
    for skip in reversed(skips):
        x = keras.layers.UpSampling3D((1, 2, 2))(x)
        x = keras.layers.Concatenate()([skip, x])
        x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(x)
    act = "sigmoid" if classes == 1 else "softmax"
    return keras.Model(inp, keras.layers.Conv3D(classes, 1, activation=act)(x))


@pytest.fixture(scope="module")
def unet3d() -> keras.Model:
    return _tiny_unet3d(0)


@pytest.fixture(scope="module")
def pointwise() -> keras.Model:
    """A 1x1x1 linear conv: out = 2 * x - 0.25 (purely local)."""
    inp = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(1, 1, use_bias=True)
    out = conv(inp)
    conv.set_weights([np.full((1, 1, 1, 1, 1), 2.0, "float32"), np.array([-0.25], "float32")])
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def tile_mean() -> keras.Model:
    """Each output voxel is the mean of the input tile it was predicted in: the blended
    result depends on every tile's position, weight and normaliser."""
    inp = keras.Input((None, None, None, 1))
    zero = keras.layers.Conv3D(1, 1, kernel_initializer="zeros", bias_initializer="zeros")
    mean = keras.layers.GlobalAveragePooling3D(keepdims=True)(inp)
    return keras.Model(inp, keras.layers.Add()([zero(inp), mean]))


def _volume(shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ------------------------------------------------------------------------------------------
# Independent NumPy references
# ------------------------------------------------------------------------------------------
def _ref_starts(length: int, tile: int, overlap: int, divisor: int = 1) -> list[int]:
    """The fewest tiles that keep the overlap, evenly spread; on multiples of ``divisor``
    (all but the last) when that many tiles can reach the end in grid steps."""
    if length <= tile:
        return [-((tile - length) // 2)]
    span, step = length - tile, tile - overlap
    n = math.ceil(span / step) + 1
    grid = step // divisor * divisor
    if divisor > 1 and grid > 0:
        units = math.ceil(span / divisor)
        n_grid = math.ceil(units * divisor / grid) + 1
        if n_grid <= n:
            ks = [round(units * i / (n_grid - 1)) for i in range(n_grid)]
            return sorted({min(k * divisor, span) for k in ks[:-1]} | {span})
    return [int(round(span * i / (n - 1))) for i in range(n)]


def _ref_linear(tile: int, overlap: int) -> np.ndarray:
    i = np.arange(tile, dtype=np.float64)
    return np.minimum(1.0, np.minimum(i + 1, tile - i) / (overlap + 1.0))


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------
def test_volume_geometry_has_per_axis_divisors(unet3d):
    g = model_geometry(_tiny_unet3d(1, levels=3))
    assert (g.depth, g.divisor, g.margin, g.padding, g.divisors) == (3, 4, 0, "same", (1, 4, 4))
    assert g.spatial_axes == 3 and g.axis_divisors == (1, 4, 4) and g.min_inputs == (1, 4, 4)
    assert g["divisors"] == (1, 4, 4) and "divisors" in dict(g) and g.fixed_size is None
    assert g.max_output_tile((16, 30, 30)) == (16, 28, 28)
    assert g.max_output_tile(64) == (64, 64, 64)
    # An int tile is fitted per axis: a 6-slice volume gets a 6-slice tile.
    assert g.fit_output_tile(6, 64, 0) == 6 and g.fit_output_tile(37, 64, 1) == 40
    with pytest.raises(ValueError, match="along height"):
        g.max_output_tile((4, 3, 8))
    with pytest.raises(ValueError, match="3 spatial axes"):
        g.max_output_tile((16, 16))
    # 2-D geometry keeps its 8 dict keys and an int divisor.
    g2 = ModelGeometry(depth=1, divisor=1, margin=0, padding="same", min_input=1,
                       fixed_size=None, channels=1, num_classes=1)
    assert "divisors" not in g2.keys() and g2.spatial_axes == 2 and g2.axis_divisors == (1, 1)


def test_volume_geometry_strided_conv_nested_encoder_and_errors():
    inp = keras.Input((None, None, None, 2))
    enc_in = keras.Input((None, None, None, 2))
    e = keras.layers.Conv3D(3, 3, strides=(1, 2, 2), padding="same")(enc_in)
    e = keras.layers.AveragePooling3D(pool_size=(2, 2, 2))(e)
    encoder = keras.Model(enc_in, e, name="encoder")
    x = keras.layers.UpSampling3D((2, 4, 4))(encoder(inp))
    g = model_geometry(keras.Model(inp, keras.layers.Conv3D(3, 1)(x)))
    assert g.divisors == (2, 4, 4) and g.depth == 3 and (g.channels, g.num_classes) == (2, 3)

    inp = keras.Input((None, None, None, 1))
    valid = keras.Model(inp, keras.layers.Conv3D(1, 3, padding="valid")(inp))
    with pytest.raises(ValueError, match="padding='same'"):
        model_geometry(valid)
    partial = keras.Input((8, None, None, 1))
    with pytest.raises(ValueError, match="fixes only some"):
        model_geometry(keras.Model(partial, keras.layers.Conv3D(1, 1)(partial)))


def test_fixed_size_volume_model():
    inp = keras.Input((4, 8, 8, 1))
    model = keras.Model(inp, keras.layers.Conv3D(1, 1, kernel_initializer="ones")(inp))
    g = model_geometry(model)
    assert g.fixed_size == (4, 8, 8) and g.divisors == (1, 1, 1)
    vol = _volume((6, 13, 9))
    out = predict_tiled(model, vol, tile_size=8, overlap=(1, 2, 2))
    np.testing.assert_allclose(out[..., 0], vol, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Tile plan: NumPy and TensorFlow twins in 3-D
# ------------------------------------------------------------------------------------------
def test_numpy_and_tensorflow_plans_agree_in_3d():
    geom = ModelGeometry(depth=2, divisor=2, margin=0, padding="same", min_input=2,
                         fixed_size=None, channels=1, num_classes=1, divisors=(1, 2, 2))
    cases = 0
    for blend in ("gaussian", "linear", "none"):
        plan = TilePlan.for_geometry(geom, (4, 12, 10), (1, 4, 3), blend)
        assert plan.t_max == (4, 12, 10)
        for lengths in [(1, 1, 1), (3, 7, 5), (4, 12, 10), (9, 31, 26), (5, 40, 11)]:
            tiles, starts, wins, inv = [], [], [], []
            for a, length in enumerate(lengths):
                t = plan.output_tile(length, a)
                assert t == int(plan.output_tile_tf(tf.constant(length), a))
                assert t % geom.divisors[a] == 0
                st = plan.tile_starts(length, t, a)
                st_tf = plan.tile_starts_tf(tf.constant(length), tf.constant(t), a).numpy()
                np.testing.assert_array_equal(st_tf, st)
                np.testing.assert_array_equal(st, _ref_starts(length, t, plan.overlap_at(a),
                                                             geom.divisors[a]))
                w = plan.window(t, a)
                np.testing.assert_allclose(plan.window_tf(tf.constant(t), a).numpy(), w,
                                           rtol=1e-12)
                if blend == "linear":
                    np.testing.assert_allclose(w, _ref_linear(t, plan.overlap_at(a)))
                inv.append(plan.normaliser(st, w, length))
                np.testing.assert_allclose(
                    plan.normaliser_tf(tf.constant(st_tf), tf.constant(w),
                                       tf.constant(length)).numpy(), inv[-1], rtol=1e-12)
                tiles.append(t), starts.append(st), wins.append(w)
            weight = plan.tile_weights(*wins)
            ref = np.einsum("i,j,k->ijk", *wins).astype(np.float32)[..., None]
            np.testing.assert_allclose(weight, ref, rtol=1e-6)
            np.testing.assert_allclose(
                plan.tile_weights_tf(*[tf.constant(w) for w in wins]).numpy(), weight,
                rtol=1e-7)
            norm = plan.outer_normaliser(inv)
            np.testing.assert_array_equal(
                plan.outer_normaliser_tf([tf.constant(v) for v in inv]).numpy(), norm)
            # The separable normaliser is 1 / (sum of the tile weights): check in full.
            total = np.zeros(lengths)
            for st in itertools.product(*starts):
                full = np.zeros([max(L, t) + 2 * t for L, t in zip(lengths, tiles)])
                sl = tuple(slice(s + t, s + 2 * t) for s, t in zip(st, tiles))
                full[sl] = np.einsum("i,j,k->ijk", *wins)
                total += full[tuple(slice(t, t + L) for L, t in zip(lengths, tiles))]
            np.testing.assert_allclose(norm, 1.0 / total, rtol=1e-6)
            cases += 1
    assert cases == 15


def test_read_tile_mirrors_every_axis():
    geom = ModelGeometry(depth=1, divisor=1, margin=2, padding="valid", min_input=5,
                         fixed_size=None, channels=1, num_classes=1, divisors=(1, 1, 1))
    plan = TilePlan(geom, 1, "none", 7, (3, 3, 3))  # margin 2 on a 3-D geometry (plan only)
    vol = np.arange(6 * 7 * 8).reshape(6, 7, 8, 1)
    padded = np.pad(vol, ((2, 2), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for st in [(0, 0, 0), (1, 2, 3), (0, 4, 1), (3, 4, 5), (2, 1, 5)]:
        tile = plan.read_tile(vol, st, (3, 3, 3))
        assert tile.shape == (7, 7, 7, 1)
        expect = padded[tuple(slice(s, s + 7) for s in st)]
        np.testing.assert_array_equal(tile, expect)
    assert np.shares_memory(plan.read_tile(vol, (2, 2, 2), (1, 1, 1)), vol)  # inside: a view


# ------------------------------------------------------------------------------------------
# predict_tiled on volumes
# ------------------------------------------------------------------------------------------
def test_blending_matches_an_independent_reference(tile_mean):
    vol = _volume((6, 40, 36), 1)
    tile, overlap = (4, 16, 16), (2, 4, 4)
    out = predict_tiled(tile_mean, vol, tile_size=tile, overlap=overlap, blend="linear",
                        batch_size=3)
    assert out.shape == (6, 40, 36, 1) and out.dtype == np.float32
    num, den = np.zeros(vol.shape), np.zeros(vol.shape)
    divs = model_geometry(tile_mean).axis_divisors
    starts = [_ref_starts(L, t, o, d) for L, t, o, d in zip(vol.shape, tile, overlap, divs)]
    assert [len(s) for s in starts] == [2, 3, 3]
    w = np.einsum("i,j,k->ijk", *[_ref_linear(t, o) for t, o in zip(tile, overlap)])
    for st in itertools.product(*starts):
        sl = tuple(slice(s, s + t) for s, t in zip(st, tile))
        num[sl] += w * vol[sl].mean()
        den[sl] += w
    np.testing.assert_allclose(out[..., 0], num / den, atol=1e-5)


def test_local_model_tiled_equals_whole_and_numpy(pointwise):
    vol = _volume((7, 23, 19), 2)
    expect = 2.0 * vol - 0.25
    for blend in ("gaussian", "linear", "none"):
        out = predict_tiled(pointwise, vol, tile_size=(3, 8, 8), overlap=(1, 2, 3), blend=blend)
        np.testing.assert_allclose(out[..., 0], expect, atol=1e-6)
    whole = predict_tiled(pointwise, vol, tile_size=64, overlap=0, blend="none")
    direct = np.asarray(pointwise(vol[None, ..., None]))[0, ..., 0]
    np.testing.assert_array_equal(whole[..., 0], direct)
    for tta in ("flips", "d4"):
        out = predict_tiled(pointwise, vol, tile_size=(4, 8, 8), overlap=2, tta=tta)
        np.testing.assert_allclose(out[..., 0], expect, atol=1e-6)


def test_whole_volume_tile_equals_one_forward_pass(unet3d):
    vol = _volume((4, 16, 12), 3)
    direct = np.asarray(unet3d(vol[None, ..., None], training=False))[0]
    for blend in ("none", "gaussian"):
        out = predict_tiled(unet3d, vol, tile_size=(4, 16, 12), overlap=0, blend=blend)
        np.testing.assert_allclose(out, direct, atol=1e-6)
    # An int tile larger than every axis gives the same single tile.
    np.testing.assert_allclose(predict_tiled(unet3d, vol, tile_size=256, overlap=64), direct,
                               atol=1e-6)


def test_unet_on_odd_sizes_batches_dtypes_and_labels(unet3d):
    vol = _volume((5, 37, 29), 4)
    out = predict_tiled(unet3d, vol, tile_size=(4, 16, 16), overlap=(1, 4, 4))
    assert out.shape == (5, 37, 29, 2) and np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    # Tiled vs whole: the blend of overlapping tiles stays close to one big tile.
    whole = predict_tiled(unet3d, vol, tile_size=(8, 40, 32), overlap=0)
    assert np.abs(out - whole).mean() < 0.05
    batch = np.stack([vol, vol[::-1]])[..., None]
    both = predict_tiled(unet3d, batch, tile_size=(4, 16, 16), overlap=(1, 4, 4), batch_size=3)
    assert both.shape == (2, 5, 37, 29, 2)
    np.testing.assert_allclose(both[0], out, atol=1e-6)
    u8 = (vol * 255).astype(np.uint8)
    np.testing.assert_allclose(
        predict_tiled(unet3d, u8, tile_size=(4, 16, 16), overlap=(1, 4, 4)),
        predict_tiled(unet3d, u8.astype(np.float32) / 255, tile_size=(4, 16, 16),
                      overlap=(1, 4, 4)), atol=1e-6)
    labels = predict_tiled(unet3d, vol, tile_size=(4, 16, 16), overlap=(1, 4, 4),
                           threshold=0.5)
    assert labels.shape == (5, 37, 29) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(out, -1))


def test_tta_averages_the_transformed_predictions(unet3d):
    vol = _volume((4, 16, 16), 5)
    x = vol[None, ..., None]
    for tta, n in (("flips", 8), ("d4", 16)):
        transforms = tta_transforms(tta, 3)
        assert len(transforms) == n
        ref = np.mean([inv(np.asarray(unet3d(np.ascontiguousarray(fwd(x)), training=False)))
                       for fwd, inv in transforms], axis=0)[0]
        out = predict_tiled(unet3d, vol, tile_size=(4, 16, 16), overlap=0, blend="none",
                            tta=tta)
        np.testing.assert_allclose(out, ref, atol=1e-6)
    # Depth is flipped, never rotated into the plane: an anisotropic tile keeps its shape.
    for fwd, inv in tta_transforms("d4", 3):
        y = fwd(np.zeros((1, 3, 8, 8, 1)))
        assert y.shape == (1, 3, 8, 8, 1)


def test_wrong_ranks_and_arguments_are_clear_errors(unet3d):
    with pytest.raises(ValueError, match=r"segments volumes \(D, H, W\[, C\]\); got an image "
                                         r"of shape \(40, 36\)"):
        predict_tiled(unet3d, np.zeros((40, 36), np.float32))
    with pytest.raises(ValueError, match="3 channels in its last axis"):
        predict_tiled(unet3d, np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="3 spatial axes"):
        predict_tiled(unet3d, np.zeros((4, 8, 8), np.float32), tile_size=(16, 16), overlap=4)
    with pytest.raises(ValueError, match="overlap"):
        predict_tiled(unet3d, np.zeros((4, 8, 8), np.float32), tile_size=(4, 16, 16),
                      overlap=(4, 2, 2))
    with pytest.raises(ValueError, match="overlap"):  # 2 >= the 2-slice tile along depth
        predict_tiled(unet3d, np.zeros((5, 8, 8), np.float32), tile_size=(2, 16, 16),
                      overlap=(2, 2, 2))
    img_model_in = keras.Input((None, None, 1))
    img_model = keras.Model(img_model_in, keras.layers.Conv2D(1, 1)(img_model_in))
    with pytest.raises(ValueError, match="volume needs a 3-D model"):
        predict_tiled(img_model, np.zeros((1, 4, 8, 8, 1), np.float32))
    stack, is_stack = as_image_stack(np.zeros((3, 4, 5)), 1, 3)
    assert stack.shape == (1, 3, 4, 5, 1) and not is_stack
    bad = np.zeros((1, 2, 3, 4, 1), np.float32)
    bad[0, 1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"\(n, z, y, x, c\) = \(0, 1, 2, 3, 0\)"):
        check_finite(bad)


# ------------------------------------------------------------------------------------------
# Serving export
# ------------------------------------------------------------------------------------------
def test_volume_saved_model_matches_predict_tiled(unet3d, tmp_path):
    vol = (_volume((6, 40, 36, 1), 6) * 255).astype(np.uint8)
    kw = dict(tile_size=(4, 16, 16), overlap=(1, 4, 4), batch_size=3)
    ref = predict_tiled(unet3d, vol, **kw)
    path = export_saved_model(unet3d, tmp_path / "vol", tiled=True, **kw)
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = fn(image=tf.constant(vol[None]))
    assert out["probabilities"].shape == (1, 6, 40, 36, 2)
    np.testing.assert_allclose(out["probabilities"].numpy()[0], ref, atol=1e-5)
    np.testing.assert_array_equal(out["mask"].numpy()[0], np.argmax(ref, -1))
    # Untiled: one model call on the mirror-padded volume (width 36 -> 36, height 40 -> 40).
    untiled = make_serving_fn(unet3d, input_dtype="float32")
    x = _volume((3, 10, 13, 1), 7)
    probs = untiled(tf.constant(x[None]))["probabilities"].numpy()[0]
    assert probs.shape == (3, 10, 13, 2)
    np.testing.assert_allclose(probs, predict_tiled(unet3d, x, tile_size=64, overlap=0),
                               atol=1e-5)
    with pytest.raises(ValueError, match="2-D image models only"):
        export_tflite(unet3d, tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="2-D image models only"):
        export_onnx(unet3d, tmp_path / "m.onnx")
