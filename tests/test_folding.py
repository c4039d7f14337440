"""BatchNorm folded into the convolution before it (zf_unet.models.folding): the folded
network computes what the model computes in inference, for every builder, and
predict_tiled / export_saved_model see weight changes and keep their outputs."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import zf_unet
from zf_unet.models import FoldedBatchNorm, FoldedView, fold_batch_norm, foldable_pairs


def _randomise_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine weights (fresh ones are identities)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))


def _bn_reference(x: np.ndarray, conv: keras.layers.Layer, bn: keras.layers.Layer) -> np.ndarray:
    """NumPy: the BatchNorm in inference applied to the convolution output ``x``."""
    g, b = bn.gamma.numpy(), bn.beta.numpy()
    m, v = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    return (x - m) / np.sqrt(v + bn.epsilon) * g + b


@pytest.mark.parametrize("builder", [
    lambda: zf_unet.build_unet((32, 32, 1), depth=3, filters=4, batch_norm=True),
    lambda: zf_unet.build_unet((None, None, 2), num_classes=3, depth=3, filters=4,
                               batch_norm=True, head_batch_norm=True, padding="valid"),
    lambda: zf_unet.build_unet_plus_plus((32, 32, 1), depth=3, filters=4, batch_norm=True,
                                         deep_supervision=True),
    lambda: zf_unet.build_unet((8, 16, 16, 1), depth=2, filters=4, batch_norm=True),
], ids=["unet", "valid-multiclass-headbn", "unetpp-deep", "3d"])
def test_folded_model_computes_the_same(builder):
    keras.utils.set_random_seed(0)
    model = builder()
    _randomise_batch_norms(model)
    pairs = foldable_pairs(model)
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert len(pairs) == n_bn > 0  # every BatchNorm of these builders follows a conv
    folded = fold_batch_norm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert sum(isinstance(layer, FoldedBatchNorm) for layer in folded.layers) == n_bn
    shape = [8 if s is None else s for s in model.input_shape[1:]]
    if model.input_shape[1] is None:
        shape = [44, 44, shape[-1]]  # a size the valid-padding model accepts (depth 3)
    x = np.random.default_rng(1).random((2, *shape), dtype=np.float32)
    want = model(x, training=False)
    got = folded(x, training=False)
    for w, g in zip(keras.tree.flatten(want), keras.tree.flatten(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=1e-4)
    # a copy: changing the model afterwards does not change the folded one
    model.get_layer(pairs[0][1]).moving_mean.assign(
        model.get_layer(pairs[0][1]).moving_mean.numpy() + 1.0)
    again = folded(x, training=False)
    for a, b in zip(keras.tree.flatten(got), keras.tree.flatten(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_folded_conv_weights_against_numpy():
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((16, 16, 1), depth=2, filters=3, batch_norm=True)
    _randomise_batch_norms(model, seed=3)
    view = FoldedView(model)
    conv, bn, folded = view.pairs[0]
    x = np.random.default_rng(2).random((1, 16, 16, int(conv.kernel.shape[2])),
                                        dtype=np.float32)
    ref = _bn_reference(np.asarray(conv(x)), conv, bn)
    np.testing.assert_allclose(np.asarray(folded(x)), ref, atol=1e-5, rtol=1e-5)
    # the view shares the other layers: a changed statistic is seen after refresh()
    bn.moving_variance.assign(bn.moving_variance.numpy() * 4.0)
    assert not np.allclose(np.asarray(folded(x)), _bn_reference(np.asarray(conv(x)), conv, bn))
    view.refresh()
    np.testing.assert_allclose(np.asarray(folded(x)),
                               _bn_reference(np.asarray(conv(x)), conv, bn), atol=1e-5,
                               rtol=1e-5)


def test_what_is_not_folded():
    inp = keras.Input((8, 8, 2))
    a = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="act_conv")(inp)
    a = keras.layers.BatchNormalization(name="bn_after_relu")(a)  # conv has an activation
    b = keras.layers.Conv2D(3, 3, padding="same", name="shared_out")(inp)
    c = keras.layers.BatchNormalization(name="bn_shared")(b)
    d = keras.layers.Add()([b, c])  # the conv output has a second consumer
    e = keras.layers.Conv2D(3, 1, use_bias=False, name="no_bias")(inp)
    f = keras.layers.BatchNormalization(name="bn_ok")(e)
    model = keras.Model(inp, [a, d, f])
    assert foldable_pairs(model) == [("no_bias", "bn_ok")]
    _randomise_batch_norms(model)
    folded = fold_batch_norm(model)
    assert folded.get_layer("no_bias").use_bias and not model.get_layer("no_bias").use_bias
    x = np.random.default_rng(0).random((2, 8, 8, 2), dtype=np.float32)
    for w, g in zip(model(x, training=False), folded(x, training=False)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5)


def test_folded_model_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((16, 16, 1), depth=2, filters=2, batch_norm=True)
    _randomise_batch_norms(model)
    folded = fold_batch_norm(model)
    folded.save(tmp_path / "folded.keras")
    back = keras.saving.load_model(tmp_path / "folded.keras")  # no custom_objects
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(folded(x)), atol=1e-6)


def test_predict_tiled_follows_weight_changes():
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((None, None, 1), depth=2, filters=2, batch_norm=True)
    _randomise_batch_norms(model)
    image = np.random.default_rng(0).random((40, 40), dtype=np.float32)
    before = zf_unet.predict_tiled(model, image, tile_size=16, overlap=4)
    _randomise_batch_norms(model, seed=7)  # as a training step would
    after = zf_unet.predict_tiled(model, image, tile_size=16, overlap=4)
    assert not np.allclose(before, after, atol=1e-3)
    one_tile = zf_unet.predict_tiled(model, image[:16, :16], tile_size=16, overlap=4)
    direct = np.asarray(model(image[None, :16, :16, None], training=False))[0]
    np.testing.assert_allclose(one_tile, direct, atol=1e-5)


def test_predict_tiled_cache_does_not_keep_the_model_alive():
    import gc
    import weakref

    model = zf_unet.build_unet((None, None, 1), depth=2, filters=2, batch_norm=True)
    zf_unet.predict_tiled(model, np.zeros((40, 40), np.float32), tile_size=16, overlap=4)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the folded twin and its graphs went with it
