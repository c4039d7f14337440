"""U-Net++: node wiring, parameter counts (official code + hand formula), deep supervision
training, pruning, ensembling, saving."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from zf_unet.losses import BCEDiceLoss
from zf_unet.models.unet_plus_plus import (
    build_unet_plus_plus,
    deep_supervision_targets,
    ensemble,
    nested_depth,
    prune,
    repeat_targets,
)

# ---------------------------------------------------------------------------------------------
# Hand formula, written from the paper's description, independently of the builder.


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def hand_count(in_ch, num_classes, depth, base, batch_norm, upsampling, heads) -> int:
    """Parameters of the U-Net++ sub-network that ``heads`` (nested levels) need.

    ``heads=[depth-1]`` is the full model with one head, ``range(1, depth)`` the deeply
    supervised one, ``[k]`` the model pruned to level ``k`` (nodes X^{i,j} with i + j <= k).
    """
    w = [base * 2**i for i in range(depth)]
    bn = (lambda c: 4 * c) if batch_norm else (lambda c: 0)

    def unit(cin, cout):  # (conv3x3 [-> BN] -> ReLU) x 2
        return conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)

    top = max(heads)
    total = 0
    for i in range(top + 1):  # X^{i,0}
        total += unit(in_ch if i == 0 else w[i - 1], w[i])
    for i in range(top):
        for j in range(1, top - i + 1):  # X^{i,j}, i + j <= top
            if upsampling == "transpose":
                total += 2 * 2 * w[i + 1] * w[i] + w[i]  # Conv2DTranspose to level i's width
                up_ch = w[i]
            else:
                up_ch = w[i + 1]
            total += unit(j * w[i] + up_ch, w[i])
    total += len(heads) * conv(1, w[0], num_classes)
    return total


# ---------------------------------------------------------------------------------------------


def test_parameter_counts_match_official_unetplusplus():
    """1 channel in, 32..512 filters, transposed 2x2 up-convs, no BN, one sigmoid class."""
    kw = dict(input_shape=(None, None, 1), num_classes=1, depth=5, filters=32,
              batch_norm=False, upsampling="transpose")
    one = build_unet_plus_plus(**kw)
    four = build_unet_plus_plus(**kw, deep_supervision=True)
    assert one.count_params() == 9_041_601
    assert four.count_params() == 9_041_700
    assert one.count_params() == hand_count(1, 1, 5, 32, False, "transpose", [4])
    assert four.count_params() == hand_count(1, 1, 5, 32, False, "transpose", [1, 2, 3, 4])
    assert four.output_names == ["L1", "L2", "L3", "L4"]
    assert one.output_names == ["L4"]


@pytest.mark.parametrize(
    "in_ch,classes,depth,base,bn,up,ds",
    [
        (1, 1, 4, 8, True, "nearest", True),
        (3, 4, 3, 16, False, "bilinear", False),
        (2, 2, 4, 4, True, "transpose", False),
        (1, 3, 2, 8, False, "nearest", True),
    ],
)
def test_parameter_count_matches_hand_formula(in_ch, classes, depth, base, bn, up, ds):
    model = build_unet_plus_plus((None, None, in_ch), num_classes=classes, depth=depth,
                                 filters=base, batch_norm=bn, upsampling=up, deep_supervision=ds)
    heads = list(range(1, depth)) if ds else [depth - 1]
    assert model.count_params() == hand_count(in_ch, classes, depth, base, bn, up, heads)
    assert len(model.outputs) == len(heads)


# ---------------------------------------------------------------------------------------------
# A small deeply supervised model shared by the wiring / prune / ensemble / save tests.


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(7)
    return build_unet_plus_plus((None, None, 1), depth=4, filters=4, deep_supervision=True,
                                upsampling="nearest")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def heads(model, images) -> list[np.ndarray]:
    out = model.predict(images, verbose=0)
    assert isinstance(out, list) and len(out) == 3
    return out


def _names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers}


def _inbound(model: keras.Model, name: str) -> list[str]:
    tensors = model.get_layer(name).input
    tensors = tensors if isinstance(tensors, (list, tuple)) else [tensors]
    return [t._keras_history.operation.name for t in tensors]


def test_wiring(model):
    assert model.output_names == ["L1", "L2", "L3"]
    assert [tuple(o.shape) for o in model.outputs] == [(None, None, None, 1)] * 3
    fixed = build_unet_plus_plus((32, 24, 1), num_classes=2, depth=4, filters=4,
                                 deep_supervision=True)
    assert [tuple(o.shape) for o in fixed.outputs] == [(None, 32, 24, 2)] * 3
    names = _names(model)
    nodes = {(i, j) for i in range(4) for j in range(4 - i)}
    for i in range(5):
        for j in range(5):
            assert (f"x{i}_{j}_conv1" in names) == ((i, j) in nodes), (i, j)
            assert (f"x{i}_{j}_concat" in names) == ((i, j) in nodes and j >= 1), (i, j)
            assert (f"x{i}_{j}_up" in names) == ((i, j) in nodes and j >= 1), (i, j)
    assert {f"head{k}_conv" for k in (1, 2, 3)} <= names and "head4_conv" not in names
    assert {"x0_0_pool", "x1_0_pool", "x2_0_pool"} <= names and "x3_0_pool" not in names
    # X^{i,j} = conv(concat(X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})))
    assert _inbound(model, "x0_1_concat") == ["x0_0_relu2", "x0_1_up"]
    assert _inbound(model, "x1_2_concat") == ["x1_0_relu2", "x1_1_relu2", "x1_2_up"]
    assert _inbound(model, "x0_3_concat") == ["x0_0_relu2", "x0_1_relu2", "x0_2_relu2",
                                              "x0_3_up"]
    assert _inbound(model, "x0_3_up") == ["x1_2_relu2"]
    assert _inbound(model, "x2_1_up") == ["x3_0_relu2"]
    assert _inbound(model, "head2_conv") == ["x0_2_relu2"]
    # nearest upsampling keeps the channels of level i+1 (filters 4, 8, 16, 32)
    assert model.get_layer("x0_3_concat").output.shape[-1] == 3 * 4 + 8
    assert model.get_layer("x1_2_concat").output.shape[-1] == 2 * 8 + 16
    assert model.get_layer("x2_1_concat").output.shape[-1] == 16 + 32
    assert model.get_layer("x1_1_conv1").filters == 8


def test_single_head_and_dropout_placement():
    m = build_unet_plus_plus((16, 16, 3), depth=3, filters=4, dropout=0.1)
    assert m.output_names == ["L2"] and m.output_shape == (None, 16, 16, 1)
    names = _names(m)
    assert {"x0_0_dropout", "x1_0_dropout", "x2_0_dropout", "x1_1_dropout"} <= names
    assert not {"x0_1_dropout", "x0_2_dropout"} & names  # nodes feeding the heads
    assert "head1_conv" not in names
    assert m.get_layer("L2").dtype_policy.compute_dtype == "float32"


def test_prune_matches_heads(model, images, heads):
    counts = []
    for level in (1, 2, 3):
        pruned = prune(model, level)
        assert pruned.output_names == [f"L{level}"]
        out = pruned.predict(images, verbose=0)
        np.testing.assert_allclose(out, heads[level - 1], atol=1e-6, rtol=0)
        for other in {1, 2, 3} - {level}:  # the heads do differ: the check above can fail
            assert np.abs(out - heads[other - 1]).max() > 1e-4
        names = _names(pruned)
        for i in range(4):
            for j in range(4 - i):
                assert (f"x{i}_{j}_conv1" in names) == (i + j <= level), (level, i, j)
        assert {f"head{k}_conv" for k in (1, 2, 3)} & names == {f"head{level}_conv"}
        for name in names:  # shared layer objects, not copies
            assert pruned.get_layer(name) is model.get_layer(name)
        counts.append(pruned.count_params())
        assert counts[-1] == hand_count(1, 1, 4, 4, True, "nearest", [level])
    assert counts[0] < counts[1] < counts[2] < model.count_params()


def test_ensemble_is_mean_of_heads(model, images, heads):
    ens = ensemble(model)
    assert len(ens.outputs) == 1
    assert ens.get_layer("x0_1_conv1") is model.get_layer("x0_1_conv1")
    np.testing.assert_allclose(ens.predict(images, verbose=0), np.mean(heads, axis=0),
                               atol=1e-6, rtol=0)


def test_keras_round_trip_and_prune_after_load(model, images, heads, tmp_path):
    full_path = tmp_path / "full.keras"
    model.save(full_path)
    loaded = keras.saving.load_model(full_path)
    assert loaded.output_names == ["L1", "L2", "L3"]
    for a, b in zip(loaded.predict(images, verbose=0), heads):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert nested_depth(loaded) == 4
    for source in (model, loaded):
        pruned = prune(source, 2)
        path = tmp_path / f"pruned_{id(source)}.keras"
        pruned.save(path)
        back = keras.saving.load_model(path)
        assert back.output_names == ["L2"]
        assert back.count_params() == pruned.count_params()
        np.testing.assert_allclose(back.predict(images, verbose=0), heads[1], atol=1e-6, rtol=0)
    assert prune(loaded, 1).get_layer("x0_1_conv1") is loaded.get_layer("x0_1_conv1")


def test_pruned_model_exports_saved_model(model, images, heads, tmp_path):
    pruned = prune(model, 1)
    pruned.export(str(tmp_path / "sm"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    out = reloaded.serve(tf.constant(images))
    np.testing.assert_allclose(np.asarray(out), heads[0], atol=1e-6, rtol=0)


def test_deep_supervision_fit_trains_every_head():
    keras.utils.set_random_seed(3)
    model = build_unet_plus_plus((16, 16, 1), depth=4, filters=4, deep_supervision=True)
    rng = np.random.default_rng(1)
    x = rng.random((4, 16, 16, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)

    # Keras 3 does not broadcast one target to several outputs: repeat_targets is needed.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=BCEDiceLoss())
    with pytest.raises((ValueError, KeyError)):
        model.fit(ds, epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)

    # every head's loss contributes a gradient to its own 1x1 conv
    with tf.GradientTape() as tape:
        preds = model(x, training=True)
        loss = sum(BCEDiceLoss()(y, p) for p in preds)
    kernels = [model.get_layer(f"head{k}_conv").kernel for k in (1, 2, 3)]
    grads = tape.gradient(loss, kernels)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=BCEDiceLoss())
    before = [k.numpy().copy() for k in kernels]
    hist = model.fit(repeat_targets(ds, model), epochs=1, shuffle=False, verbose=0)
    assert {"L1_loss", "L2_loss", "L3_loss"} <= set(hist.history)
    assert np.isfinite(hist.history["loss"][0])
    for b, k in zip(before, kernels):
        assert not np.allclose(b, k.numpy())

    # a dict of losses with loss weights, sample weights repeated too, in-memory arrays
    # (eager: tracing a second train step would double this test's time)
    model.compile(optimizer="adam", loss={f"L{k}": BCEDiceLoss() for k in (1, 2, 3)},
                  loss_weights={"L1": 1 / 3, "L2": 1 / 3, "L3": 1 / 3}, run_eagerly=True)
    w = np.ones((4, 16, 16), np.float32)
    xs, ys, ws = deep_supervision_targets((x, y, w), 3)
    assert len(ys) == 3 and len(ws) == 3 and ys[2] is y
    hist = model.fit(xs, ys, sample_weight=ws, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def test_repeat_targets_dataset_structure():
    x = np.zeros((2, 8, 8, 1), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, x, x[..., 0])).batch(2)
    xb, yb, wb = next(iter(repeat_targets(ds, 4)))
    assert len(yb) == 4 and len(wb) == 4 and wb[0].shape == (2, 8, 8)
    with pytest.raises(ValueError):
        repeat_targets(ds, 0)


def test_errors(model):
    for bad in (0, 4, -1, 1.5, True):
        with pytest.raises(ValueError, match="level"):
            prune(model, bad)
    with pytest.raises(ValueError, match="padding"):
        build_unet_plus_plus(depth=3, filters=4, padding="valid")
    with pytest.raises(ValueError, match="multiple of"):
        build_unet_plus_plus((30, 32, 1), depth=3, filters=4)
    with pytest.raises(ValueError, match="upsampling"):
        build_unet_plus_plus(depth=3, filters=4, upsampling="cubic")
    with pytest.raises(ValueError, match="depth"):
        build_unet_plus_plus(depth=1)
    single = build_unet_plus_plus(depth=3, filters=4)
    with pytest.raises(ValueError, match="deep_supervision"):
        prune(single, 1)
    assert prune(single, 2).output_names == ["L2"]
    with pytest.raises(ValueError, match="several heads"):
        ensemble(single)
    with pytest.raises(ValueError, match="not a U-Net"):
        prune(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]), 1)
