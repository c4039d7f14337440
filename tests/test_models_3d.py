"""Volumetric (3-D, anisotropic) U-Net and U-Net++: the pooling plan, hand-counted parameters,
shapes, argument errors, .keras round trips, mixed precision, and 2-D models left as they were.

Tiny models only (filters 2-4, inputs of a few thousand voxels)."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest

import zf_unet
from zf_unet.models import (
    FusedBatchNormalization,
    LinearUpSampling3D,
    build_unet,
    build_unet_plus_plus,
    double_conv_layer,
    ensemble,
    nested_depth,
    plan_pooling,
    prune,
    upsample,
)

POOLS = [(1, 2, 2), (2, 2, 2)]


def volume(shape=(2, 4, 32, 32, 1), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# --------------------------------------------------------------------------- plan_pooling


def test_plan_pooling_em_spacing_worked_by_hand():
    # spacing (z, y, x)       2*min   kernel     pool
    # (50, 4.6, 4.6)          9.2     (1,3,3)    (1,2,2)
    # (50, 9.2, 9.2)          18.4    (1,3,3)    (1,2,2)
    # (50, 18.4, 18.4)        36.8    (1,3,3)    (1,2,2)
    # (50, 36.8, 36.8)        73.6    (3,3,3)    (2,2,2)
    # (100, 73.6, 73.6)       147.2   (3,3,3)    -
    pools, kernels = plan_pooling((50, 4.6, 4.6), 5)
    assert pools == [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert kernels == [(1, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]


def test_plan_pooling_isotropic_and_2d_and_edge_cases():
    assert plan_pooling((1, 1, 1), 4) == ([(2, 2, 2)] * 3, [(3, 3, 3)] * 4)
    assert plan_pooling((1, 1), 3) == ([(2, 2)] * 2, [(3, 3)] * 3)
    assert plan_pooling([0.5, 0.5], 1) == ([], [(3, 3)])
    # exactly 2x coarser counts as "about isotropic": pooled and convolved from the start
    assert plan_pooling((2, 1, 1), 3) == ([(2, 2, 2)] * 2, [(3, 3, 3)] * 3)
    # 5x coarser z: (5,1,1) -> (5,2,2) -> (5,4,4): z joins at level 2
    assert plan_pooling((5, 1, 1), 4) == (
        [(1, 2, 2), (1, 2, 2), (2, 2, 2)], [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)])
    # a coarse x axis in 2-D
    assert plan_pooling((1, 3), 3) == ([(2, 1), (2, 2)], [(3, 1), (3, 3), (3, 3)])


@pytest.mark.parametrize("spacing,match", [
    ((50, 0, 4.6), "spacing must hold positive finite numbers"),
    ((50, -1, 4.6), "spacing must hold positive finite numbers"),
    ((50, float("nan"), 4.6), "spacing must hold positive finite numbers"),
    ("50,4.6,4.6", "spacing must be a tuple of positive numbers"),
    (None, "spacing must be a tuple of positive numbers"),
])
def test_plan_pooling_rejects_bad_spacing(spacing, match):
    with pytest.raises(ValueError, match=match):
        plan_pooling(spacing, 3)


# --------------------------------------------------------------------------- parameter counts


def conv(kernel, cin: int, cout: int) -> int:
    return math.prod(kernel) * cin * cout + cout


def hand_count_3d(in_ch, num_classes, widths, kernels, pools, upsampling, bn=True) -> int:
    """Parameters of a 3-D U-Net from its description, written independently of the builder."""
    b = (lambda c: 4 * c) if bn else (lambda c: 0)  # gamma, beta, moving mean / variance
    total, cin = 0, in_ch
    for w, k in zip(widths, kernels):  # encoder blocks + bottleneck
        total += conv(k, cin, w) + b(w) + conv(k, w, w) + b(w)
        cin = w
    for level in reversed(range(len(widths) - 1)):
        w, k = widths[level], kernels[level]
        if upsampling == "transpose":  # Conv3DTranspose(w, kernel = stride = pool size)
            total += conv(pools[level], cin, w)
            up_ch = w
        else:  # UpSampling3D / LinearUpSampling3D keep the channels
            up_ch = cin
        total += conv(k, up_ch + w, w) + b(w) + conv(k, w, w) + b(w)
        cin = w
    return total + conv((1, 1, 1), cin, num_classes)


def test_tiny_3d_unet_parameter_count_by_hand():
    model = build_unet((4, 32, 32, 1), num_classes=2, depth=2, filters=2,
                       pool_sizes=[(1, 2, 2)], kernel_sizes=[(1, 3, 3), (3, 3, 3)])
    # enc0 (1x3x3, 1 -> 2 -> 2):    (9*1*2 + 2) + 8 + (9*2*2 + 2) + 8      =  74
    # bottleneck (3x3x3, 2 -> 4 -> 4): (27*2*4 + 4) + 16 + (27*4*4 + 4) + 16 = 688
    # dec0 (up keeps 4, concat 4 + 2 = 6 -> 2 -> 2):
    #                               (9*6*2 + 2) + 8 + (9*2*2 + 2) + 8      = 164
    # head (1x1x1, 2 -> 2):         2*2 + 2                                =   6
    assert model.count_params() == 74 + 688 + 164 + 6 == 932
    assert model.count_params() == hand_count_3d(1, 2, [2, 4], [(1, 3, 3), (3, 3, 3)],
                                                 [(1, 2, 2)], "nearest")
    assert model.get_layer("enc0_conv1").kernel.shape == (1, 3, 3, 1, 2)
    assert model.get_layer("bottleneck_conv2").kernel.shape == (3, 3, 3, 4, 4)
    assert model.get_layer("enc0_pool").pool_size == (1, 2, 2)


@pytest.mark.parametrize("upsampling", ["nearest", "bilinear", "transpose"])
def test_3d_unet_counts_and_output_shape(upsampling):
    kernels = [(1, 3, 3), (3, 3, 3), (3, 3, 3)]
    model = build_unet((4, 32, 32, 1), num_classes=2, depth=3, filters=2, pool_sizes=POOLS,
                       kernel_sizes=kernels, upsampling=upsampling, dropout=0.1)
    assert model.count_params() == hand_count_3d(1, 2, [2, 4, 8], kernels, POOLS, upsampling)
    x = volume()
    y = model.predict(x, verbose=0)
    assert model.output_shape == (None, 4, 32, 32, 2)
    assert y.shape == (2, 4, 32, 32, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)  # softmax over 2 classes
    assert "enc0_dropout" in {lyr.name for lyr in model.layers}
    assert type(model.get_layer("enc0_dropout")).__name__ == "SpatialDropout3D"


def test_3d_unet_variable_size_and_auto_plan():
    model = build_unet((None, None, None, 1), num_classes=5, depth=5, filters=2,
                       pool_sizes="auto", kernel_sizes="auto", spacing=(50, 4.6, 4.6))
    assert model.get_layer("enc0_conv1").kernel.shape[:3] == (1, 3, 3)
    assert model.get_layer("enc3_conv1").kernel.shape[:3] == (3, 3, 3)
    assert [model.get_layer(f"enc{i}_pool").pool_size for i in range(4)] == \
        [(1, 2, 2)] * 3 + [(2, 2, 2)]
    # z pooled once (divisor 2), y/x four times (divisor 16)
    assert model(volume((1, 6, 48, 16, 1))).shape == (1, 6, 48, 16, 5)
    # pool_sizes="auto" alone plans the kernels too; explicit kernel_sizes=3 keeps 3x3x3
    alone = build_unet((None, None, None, 1), depth=3, filters=2, pool_sizes="auto",
                       spacing=(50, 4.6, 4.6))
    assert alone.get_layer("enc0_conv1").kernel.shape[:3] == (1, 3, 3)
    iso = build_unet((None, None, None, 1), depth=3, filters=2, pool_sizes="auto",
                     kernel_sizes=3, spacing=(50, 4.6, 4.6))
    assert iso.get_layer("enc0_conv1").kernel.shape[:3] == (3, 3, 3)
    assert iso.get_layer("enc0_pool").pool_size == (1, 2, 2)


def test_int_per_level_and_default_pools_in_3d():
    model = build_unet((8, 8, 8, 1), depth=3, filters=2, pool_sizes=[2, (2, 2, 2)],
                       kernel_sizes=3)
    assert model.get_layer("enc0_pool").pool_size == (2, 2, 2)
    default = build_unet((8, 8, 8, 1), depth=3, filters=2)
    assert default.count_params() == model.count_params() == hand_count_3d(
        1, 1, [2, 4, 8], [(3, 3, 3)] * 3, [(2, 2, 2)] * 2, "nearest")


def test_double_conv_layer_and_upsample_take_volumes():
    inp = keras.Input((4, 8, 8, 3))
    out = double_conv_layer(inp, 4, dropout=0.1, name="blk", kernel_size=(1, 3, 3))
    model = keras.Model(inp, out)
    assert model.output_shape == (None, 4, 8, 8, 4)
    assert model.get_layer("blk_conv1").kernel.shape == (1, 3, 3, 3, 4)
    assert type(model.get_layer("blk_conv1")).__name__ == "Conv3D"
    up = upsample(inp, "transpose", 5, size=(1, 2, 2))
    assert tuple(up.shape) == (None, 4, 16, 16, 5)
    with pytest.raises(ValueError, match="kernel_size must be an integer or 3 integers"):
        double_conv_layer(inp, 4, kernel_size=(3, 3))
    with pytest.raises(ValueError, match=r"x must be a \(batch, H, W, C\) image or a "):
        double_conv_layer(keras.Input((8, 3)), 4)


# --------------------------------------------------------------------------- trilinear upsampling


def _linear_matrix(n: int, f: int) -> np.ndarray:
    """1-D linear upsampling by ``f`` with half-pixel centres (edge-clamped), as a matrix."""
    m = np.zeros((n * f, n))
    for o in range(n * f):
        src = min(max((o + 0.5) / f - 0.5, 0.0), n - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, n - 1)
        m[o, lo] += 1 - (src - lo)
        m[o, hi] += src - lo
    return m


@pytest.mark.parametrize("size", [(2, 2, 2), (1, 2, 2), (2, 1, 3)])
def test_linear_upsampling_3d_is_separable_linear_interpolation(size):
    x = volume((2, 3, 4, 5, 2), seed=1)
    y = np.asarray(LinearUpSampling3D(size)(x))
    md, mh, mw = (_linear_matrix(n, f) for n, f in zip(x.shape[1:4], size))
    ref = np.einsum("ad,bh,cw,ndhwk->nabck", md, mh, mw, x)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_fused_batch_norm_on_volumes_matches_keras():
    x = volume((2, 3, 4, 5, 3), seed=2) * 3 + 1
    fused = FusedBatchNormalization(momentum=0.5)
    ref = keras.layers.BatchNormalization(momentum=0.5)
    for layer in (fused, ref):
        layer.build(x.shape)
    for training in (True, False):
        np.testing.assert_allclose(np.asarray(fused(x, training=training)),
                                   np.asarray(ref(x, training=training)), atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean.numpy(), ref.moving_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), ref.moving_variance.numpy(),
                               atol=1e-5)


# --------------------------------------------------------------------------- errors


BAD_3D_ARGS = [
    ({"pool_sizes": [(1, 2, 2)]}, r"pool_sizes has 1 entries but needs 2 \(one per level"),
    ({"kernel_sizes": [3, 3]}, r"kernel_sizes has 2 entries but needs 3"),
    ({"pool_sizes": [(1, 2, 2), (2, 2)]}, r"pool_sizes\[1\] has 2 entries but the input has 3 "
                                          "spatial axes"),
    ({"pool_sizes": [(1, 2, 2), (0, 2, 2)]}, r"pool_sizes\[1\] must hold positive integers"),
    ({"pool_sizes": [(1, 2, 2), (1.5, 2, 2)]}, r"pool_sizes\[1\] must hold positive integers"),
    ({"pool_sizes": [(1, 2, 2), "2"]}, r"pool_sizes\[1\] must be a positive integer or a tuple"),
    ({"kernel_sizes": [(1, 3, 3), (3, 3, 3), (3, 0, 3)]},
     r"kernel_sizes\[2\] must hold positive integers"),
    ({"pool_sizes": "auto"}, r"pool_sizes='auto' needs spacing, the voxel size per spatial "
                             "axis"),
    ({"kernel_sizes": "auto"}, r"kernel_sizes='auto' needs spacing"),
    ({"pool_sizes": "nnunet"}, r"pool_sizes must be None, 'auto' or per-level sizes"),
    ({"pool_sizes": "auto", "spacing": (50, 0, 4.6)},
     "spacing must hold positive finite numbers"),
    ({"spacing": (4.6, 4.6)}, "spacing has 2 entries but the input has 3 spatial axes"),
    ({"padding": "valid"}, r"(padding='valid' is not supported for 3-D inputs .* only|"
                           r"U-Net\+\+ supports only) padding='same'"),
    ({"input_shape": (5, 32, 32, 1), "pool_sizes": POOLS},
     r"input_shape D \(depth axis\)=5 cannot be processed with pool_sizes=.*multiple of the "
     r"product of the pool sizes along that axis = 2\. Nearest valid sizes: \[4, 6\]"),
    ({"input_shape": (4, 30, 32, 1), "pool_sizes": POOLS},
     r"input_shape height=30 .* = 4\. Nearest valid sizes: \[28, 32\]"),
    ({"input_shape": (6, 32, 32, 1)}, r"input_shape D \(depth axis\)=6 cannot be processed by "
                                      r"a depth-3 U-Net .* multiple of 2\*\*\(depth-1\) = 4"),
]


@pytest.mark.parametrize("builder", [build_unet, build_unet_plus_plus])
@pytest.mark.parametrize("kwargs,match", BAD_3D_ARGS,
                         ids=[",".join(map(str, k)) for k, _ in BAD_3D_ARGS])
def test_3d_builders_name_every_bad_argument(builder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        builder(**{"input_shape": (None, None, None, 1), "depth": 3, "filters": 2, **kwargs})


def test_2d_and_backbone_specific_errors():
    with pytest.raises(ValueError, match=r"pool_sizes\[0\] has 3 entries but the input has 2 "
                                         r"spatial axes; .* e\.g\. \[\(1, 2\), \(2, 2\)\]"):
        build_unet((None, None, 1), depth=3, pool_sizes=[(1, 2, 2), (2, 2, 2)])
    with pytest.raises(ValueError, match=r"pool_sizes / kernel_sizes other than 2 / 3 need "
                                         "padding='same'"):
        build_unet((None, None, 1), depth=3, padding="valid", pool_sizes=[(1, 2), (2, 2)])
    for builder in (build_unet, build_unet_plus_plus):
        with pytest.raises(ValueError, match=r"backbone='resnet50' cannot be used with a 3-D "
                                             r"input_shape=.*pretrained encoders are 2-D only"):
            builder((None, None, None, 3), backbone="resnet50")
        with pytest.raises(ValueError, match=r"pool_sizes=\[2\] cannot be used with "
                                             "backbone='resnet50'"):
            builder((None, None, 3), backbone="resnet50", pool_sizes=[2])
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\).*"
                                         r"Volumes take \(depth, height, width, channels\)"):
        build_unet((None, None, None, None, 1))


def test_anisotropic_2d_model():
    model = build_unet((8, 32, 1), depth=3, filters=2, pool_sizes=[(1, 2), (2, 2)],
                       kernel_sizes=[(1, 3), (3, 3), (3, 3)], upsampling="bilinear")
    assert model.get_layer("enc0_pool").pool_size == (1, 2)
    assert model(volume((1, 8, 32, 1))).shape == (1, 8, 32, 1)


# --------------------------------------------------------------------------- 2-D unchanged


def test_2d_default_build_unet_unchanged():
    """Counted with the builder before 3-D support was added (and with test_models.py's hand
    formula): 2-D models keep their layers, names and parameters."""
    model = build_unet()
    assert model.count_params() == 7_857_857
    small = build_unet((None, None, 3), 2, depth=3, filters=4, upsampling="transpose")
    assert small.count_params() == 7_794
    assert type(small.get_layer("dec0_up")).__name__ == "Conv2DTranspose"
    assert small.get_layer("enc0_pool").pool_size == (2, 2)
    assert build_unet_plus_plus().count_params() == 9_170_049
    # explicit classic values build the very same model
    same = build_unet((None, None, 3), 2, depth=3, filters=4, upsampling="transpose",
                      pool_sizes=[2, (2, 2)], kernel_sizes=3, spacing=(1, 1))
    assert [(lyr.name, lyr.get_config()) for lyr in same.layers] == \
        [(lyr.name, lyr.get_config()) for lyr in small.layers]


# --------------------------------------------------------------------------- saving, precision


@pytest.mark.parametrize("upsampling", ["bilinear", "transpose"])
def test_3d_keras_round_trip_without_custom_objects(upsampling, tmp_path):
    model = build_unet((None, None, None, 1), num_classes=3, depth=3, filters=2,
                       pool_sizes=POOLS, kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)],
                       upsampling=upsampling, input_normalization=([0.5], [0.25]))
    x = volume((1, 4, 16, 16, 1), seed=3)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "vol.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6, rtol=0)
    assert loaded.count_params() == model.count_params()
    from zf_unet.models import load_model_file  # geometry checks of volumes: not here

    assert load_model_file(path, image_model=False).count_params() == model.count_params()


def test_3d_mixed_precision_outputs_float32():
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for up in ("bilinear", "transpose"):
            model = build_unet((None, None, None, 1), num_classes=2, depth=3, filters=2,
                               pool_sizes=POOLS, upsampling=up)
            assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
            y = model(volume((1, 4, 16, 16, 1)), training=False)
            assert y.dtype == "float32" and tuple(y.shape) == (1, 4, 16, 16, 2)
            # one eager step (no train function traced): the dtypes are the point
            model.compile("adam", "categorical_crossentropy", run_eagerly=True)
            target = np.eye(2, dtype="float32")[np.zeros((1, 4, 16, 16), int)]
            loss = model.train_on_batch(volume((1, 4, 16, 16, 1)), target)
            assert np.isfinite(loss)
        pp = build_unet_plus_plus((None, None, None, 1), depth=3, filters=2, pool_sizes=POOLS,
                                  deep_supervision=True)
        assert all(o.dtype == "float32" for o in pp(volume((1, 4, 16, 16, 1))))
    finally:
        keras.mixed_precision.set_global_policy(policy)


# --------------------------------------------------------------------------- U-Net++ 3-D


def test_unet_plus_plus_3d_deep_supervision_prune_and_round_trip(tmp_path):
    kernels = [(1, 3, 3), (3, 3, 3), (3, 3, 3)]
    model = build_unet_plus_plus((None, None, None, 1), num_classes=2, depth=3, filters=2,
                                 pool_sizes=POOLS, kernel_sizes=kernels, deep_supervision=True,
                                 upsampling="transpose")
    assert model.output_names == ["L1", "L2"]
    assert nested_depth(model) == 3
    assert model.get_layer("x0_1_conv1").kernel.shape[:3] == (1, 3, 3)
    assert model.get_layer("x1_1_conv1").kernel.shape[:3] == (3, 3, 3)
    assert model.get_layer("x0_1_up").strides == (1, 2, 2)
    assert model.get_layer("x1_1_up").strides == (2, 2, 2)
    x = volume((1, 4, 16, 16, 1), seed=4)
    heads = model.predict(x, verbose=0)
    assert [h.shape for h in heads] == [(1, 4, 16, 16, 2)] * 2
    p1 = prune(model, 1)
    assert p1.output_names == ["L1"] and "x1_1_conv1" not in {lyr.name for lyr in p1.layers}
    assert p1.count_params() < prune(model, 2).count_params()
    np.testing.assert_allclose(p1.predict(x, verbose=0), heads[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(ensemble(model).predict(x, verbose=0), np.mean(heads, axis=0),
                               atol=1e-6, rtol=0)
    path = tmp_path / "pp.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(loaded.predict(x, verbose=0), heads):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    np.testing.assert_allclose(prune(loaded, 1).predict(x, verbose=0), heads[0], atol=1e-6,
                               rtol=0)
