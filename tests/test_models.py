"""U-Net builder: shapes, parameter counts against a hand formula, names, errors."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import zf_unet
from zf_unet.models import output_size, valid_input_sizes


def infer(model, x) -> np.ndarray:
    """``model.predict(x)`` for one small batch, as a direct inference call (the same
    numbers; no predict function traced per model)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def hand_count(in_ch, num_classes, depth, base, batch_norm, upsampling, head_bn=False) -> int:
    """Parameters of a U-Net from its description, written independently of the builder."""
    widths = [base * 2**i for i in range(depth)]
    bn = (lambda c: 4 * c) if batch_norm else (lambda c: 0)
    total, cin = 0, in_ch
    for w in widths:  # encoder blocks + bottleneck
        total += conv(3, cin, w) + bn(w) + conv(3, w, w) + bn(w)
        cin = w
    for level in reversed(range(depth - 1)):
        w = widths[level]
        if upsampling == "transpose":
            total += 2 * 2 * cin * w + w  # Conv2DTranspose(w, 2x2)
            up_ch = w
        else:
            up_ch = cin  # UpSampling2D keeps channels
        cat = up_ch + w
        total += conv(3, cat, w) + bn(w) + conv(3, w, w) + bn(w)
        cin = w
    total += conv(1, cin, num_classes) + (4 * num_classes if head_bn else 0)
    return total


@pytest.mark.parametrize(
    "in_ch,classes,depth,base,bn,up",
    [
        (1, 1, 5, 32, True, "nearest"),
        (3, 4, 4, 16, False, "bilinear"),
        (1, 2, 3, 8, True, "transpose"),
        (2, 1, 6, 4, False, "transpose"),
    ],
)
def test_parameter_count_matches_hand_formula(in_ch, classes, depth, base, bn, up):
    model = zf_unet.build_unet((None, None, in_ch), num_classes=classes, depth=depth,
                               filters=base, batch_norm=bn, upsampling=up)
    assert model.count_params() == hand_count(in_ch, classes, depth, base, bn, up)


def test_zf_unet_224_is_the_classic_model():
    model = zf_unet.ZF_UNET_224()
    assert model.name == "ZF_UNET_224"
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 224, 224, 1)
    assert model.count_params() == 31_466_757
    assert model.count_params() == hand_count(3, 1, 6, 32, True, "nearest", head_bn=True)
    # 1024 filters at 7x7, nearest upsampling, BN before the sigmoid head.
    assert model.get_layer("bottleneck_conv2").filters == 1024
    assert model.get_layer("bottleneck_conv2").output.shape[1:3] == (7, 7)
    # nearest upsampling + concatenation + first conv of each decoder block, fused
    dec4 = model.get_layer("dec4_conv1")
    assert isinstance(dec4, zf_unet.models.FusedUpsampleConv) and dec4.up_index == 0
    assert dec4.kernel.shape == (3, 3, 1024 + 512, 512)
    classic = zf_unet.build_unet((224, 224, 3), depth=6, filters=32, dropout=0.2,
                                 head_batch_norm=True, fuse_upsampling=False)
    assert classic.get_layer("dec4_up").interpolation == "nearest"
    assert classic.count_params() == model.count_params()
    assert isinstance(model.get_layer("head_bn"), keras.layers.BatchNormalization)
    # Dropout everywhere except the last decoder block, as in the original.
    dropouts = [layer.name for layer in model.layers if isinstance(layer, keras.layers.SpatialDropout2D)]
    assert "dec0_dropout" not in dropouts and "enc0_dropout" in dropouts
    assert len(dropouts) == 10
    assert len(model.layers) == len({layer.name for layer in model.layers})


def test_paper_unet_valid_padding_572_to_388():
    model = zf_unet.build_unet((572, 572, 1), num_classes=2, depth=5, filters=64,
                               batch_norm=False, upsampling="transpose", padding="valid")
    assert model.output_shape == (None, 388, 388, 2)
    assert model.count_params() == 31_030_658
    assert model.count_params() == hand_count(1, 2, 5, 64, False, "transpose")


def test_unetpp_reference_setting_for_plain_unet():
    model = zf_unet.build_unet((None, None, 1), 1, depth=5, filters=32, batch_norm=False,
                               upsampling="transpose")
    assert model.count_params() == 7_759_521


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
@pytest.mark.parametrize("up", ["nearest", "bilinear", "transpose"])
def test_same_padding_keeps_size(depth, up):
    model = zf_unet.build_unet((None, None, 1), depth=depth, filters=4, upsampling=up)
    side = 2 ** (depth - 1) * 3
    x = np.random.default_rng(0).random((2, side, 2 * side, 1), dtype=np.float32)
    y = infer(model, x)
    assert y.shape == (2, side, 2 * side, 1)
    assert y.dtype == np.float32 and (y >= 0).all() and (y <= 1).all()


@pytest.mark.parametrize("depth,size", [(2, 20), (3, 44), (4, 92), (5, 188)])
def test_valid_padding_output_size_static_and_dynamic(depth, size):
    expected = output_size(size, depth, "valid")
    assert expected is not None and expected < size
    static = zf_unet.build_unet((size, size, 1), depth=depth, filters=4, padding="valid")
    assert static.output_shape[1:3] == (expected, expected)
    dynamic = zf_unet.build_unet((None, None, 1), depth=depth, filters=4, padding="valid")
    dynamic.set_weights(static.get_weights())
    x = np.random.default_rng(1).random((1, size, size, 1), dtype=np.float32)
    y_dyn = infer(dynamic, x)
    assert y_dyn.shape == (1, expected, expected, 1)
    np.testing.assert_allclose(y_dyn, infer(static, x), atol=1e-5)


def test_valid_output_size_formula_matches_paper_and_rejects_odd():
    assert output_size(572, 5, "valid") == 388
    assert output_size(573, 5, "valid") is None
    assert output_size(16, 5, "valid") is None


def test_invalid_fixed_size_names_nearest_valid_sizes():
    with pytest.raises(ValueError, match=r"height=100.*\[96, 112\]"):
        zf_unet.build_unet((100, 128, 1), depth=5)
    with pytest.raises(ValueError, match=r"width=570.*572"):
        zf_unet.build_unet((572, 570, 1), depth=5, padding="valid")
    assert valid_input_sizes(5, "valid", near=570) == [556, 572]


def test_softmax_head_for_several_classes_and_logits():
    model = zf_unet.build_unet((32, 32, 3), num_classes=3, depth=3, filters=4)
    y = infer(model, np.zeros((1, 32, 32, 3), np.float32))
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    logits = zf_unet.build_unet((32, 32, 3), num_classes=3, depth=3, filters=4,
                                output_activation=None)
    logits.set_weights(model.get_weights())
    z = infer(logits, np.ones((1, 32, 32, 3), np.float32))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.softmax(z)),
        infer(model, np.ones((1, 32, 32, 3), np.float32)), atol=1e-5)


def test_mixed_precision_model_outputs_float32():
    from zf_unet.precision import precision_scope

    with precision_scope("mixed_bfloat16"):
        model = zf_unet.build_unet((None, None, 1), depth=3, filters=4)
    assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


@pytest.mark.parametrize("kwargs,match", [
    ({"depth": 1}, "depth"),
    ({"padding": "reflect"}, "padding"),
    ({"upsampling": "cubic"}, "upsampling"),
    ({"num_classes": 0}, "num_classes"),
    ({"input_shape": (64, 64)}, "input_shape"),
    ({"filters": [8, 16]}, "filters"),
    ({"dropout": 1.5}, "dropout"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zf_unet.build_unet(**{"input_shape": (None, None, 1), "depth": 3, **kwargs})


def test_double_conv_layer_is_public_and_names_layers():
    inp = keras.Input((16, 16, 2))
    out = zf_unet.double_conv_layer(inp, 8, dropout=0.1, name="blk")
    model = keras.Model(inp, out)
    names = [layer.name for layer in model.layers[1:]]
    assert names == ["blk_conv1", "blk_bn1", "blk_relu1", "blk_conv2", "blk_bn2", "blk_relu2",
                     "blk_dropout"]
    init = model.get_layer("blk_conv1").kernel_initializer
    assert isinstance(init, keras.initializers.HeNormal)
    valid = keras.Model(inp, zf_unet.double_conv_layer(inp, 8, padding="valid"))
    assert valid.output_shape == (None, 12, 12, 8)


def test_builders_share_one_keyword_only_order():
    """Every parameter after num_classes is keyword-only; the options both builders have
    come first, in the same order, and the builder-specific ones after them."""
    import inspect

    sigs = [inspect.signature(b).parameters for b in (zf_unet.build_unet,
                                                      zf_unet.build_unet_plus_plus)]
    for params in sigs:
        names = list(params)
        assert names[:2] == ["input_shape", "num_classes"]
        assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names[2:])
    shared = [n for n in sigs[0] if n in sigs[1]]
    assert list(sigs[0])[:len(shared)] == shared == list(sigs[1])[:len(shared)]
    assert "padding" in shared and list(sigs[0])[len(shared):] == ["head_batch_norm",
                                                                   "fuse_upsampling"]
    assert list(sigs[1])[len(shared):] == ["deep_supervision"]


@pytest.mark.parametrize("builder, args, keywords", [
    (zf_unet.build_unet, (2, 3, 4, True, 0.0, "nearest", "same"),
     ["depth", "filters", "batch_norm", "dropout", "upsampling", "padding"]),
    (zf_unet.build_unet_plus_plus, (2, 3, 4, True, 0.0, "nearest", True),
     ["depth", "filters", "batch_norm", "dropout", "upsampling", "deep_supervision"]),
])
def test_old_positional_builder_calls_still_work_with_a_deprecation_warning(builder, args,
                                                                           keywords):
    keras.utils.set_random_seed(0)
    with pytest.warns(DeprecationWarning) as record:
        old = builder((None, None, 1), *args)
    assert len(record) == 1
    message = str(record[0].message)
    assert all(f"{k}=..." in message for k in keywords) and "by position" in message
    keras.utils.set_random_seed(0)
    new = builder((None, None, 1), args[0], **dict(zip(keywords, args[1:])))
    assert [w.shape for w in old.weights] == [w.shape for w in new.weights]
    assert len(old.outputs) == len(new.outputs)
    for a, b in zip(old.get_weights(), new.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="multiple values for argument 'depth'"):
        builder((None, None, 1), 2, 3, depth=3)


def test_double_conv_layer_keywords_and_old_positional_call():
    x = keras.Input((None, None, 2))
    with pytest.warns(DeprecationWarning, match=r"dropout, batch_norm by position"):
        y = zf_unet.double_conv_layer(x, 4, 0.1, False, name="old")
    assert y.shape[-1] == 4
    z = zf_unet.double_conv_layer(x, 4, dropout=0.1, batch_norm=False, name="new")
    assert z.shape == y.shape


def test_output_size_lives_with_the_geometry():
    from zf_unet.models import geometry

    assert zf_unet.models.output_size is geometry.output_size
    assert zf_unet.valid_input_sizes is geometry.valid_input_sizes
    assert geometry.output_size(572, 5, "valid") == 388
