"""FusedBatchNormalization computes exactly what keras.layers.BatchNormalization does."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import zf_unet
from zf_unet.models import FusedBatchNormalization
from zf_unet.precision import precision_scope


def _pair(policy: str, shape: tuple, **kwargs):
    """A fused and a Keras BN layer with identical non-trivial weights, built for ``shape``."""
    rng = np.random.default_rng(7)
    c = shape[-1]
    with precision_scope(policy):
        fused = FusedBatchNormalization(**kwargs)
        ref = keras.layers.BatchNormalization(**kwargs)
    for layer in (fused, ref):
        layer.build(shape)
    weights = [rng.uniform(0.5, 2.0, c), rng.normal(0, 1, c), rng.normal(0, 1, c),
               rng.uniform(0.5, 3.0, c)]
    if not kwargs.get("scale", True):
        weights.pop(0)
    if not kwargs.get("center", True):
        weights.pop(0 if not kwargs.get("scale", True) else 1)
    fused.set_weights(weights)
    ref.set_weights(weights)
    return fused, ref


def _run(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        # an asymmetric loss, so that the gradient through the batch statistics matters
        loss = tf.reduce_sum(tf.cast(y, "float32") ** 3 * tf.range(1.0, x.shape[-1] + 1.0))
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return tf.cast(y, "float32").numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("policy,atol", [("float32", 2e-5), ("mixed_bfloat16", 2e-2)])
@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9, "epsilon": 1e-5},
                                    {"center": False}, {"scale": False}])
def test_training_step_matches_keras(policy, atol, kwargs):
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (4, 6, 5, 8)).astype("float32"))
    fused, ref = _pair(policy, x.shape, **kwargs)
    y_f, g_f = _run(fused, x, training=True)
    y_r, g_r = _run(ref, x, training=True)
    assert fused.compute_dtype == ref.compute_dtype
    np.testing.assert_allclose(y_f, y_r, atol=atol, rtol=atol)
    for a, b in zip(g_f, g_r):
        scale = np.abs(b).max() + 1e-6
        np.testing.assert_allclose(a / scale, b / scale, atol=atol)
    # moving statistics follow the biased batch variance, as in Keras
    np.testing.assert_allclose(fused.moving_mean.numpy(), ref.moving_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), ref.moving_variance.numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy,atol", [("float32", 2e-5), ("mixed_bfloat16", 2e-2)])
def test_inference_matches_keras_and_numpy(policy, atol):
    x = tf.constant(np.random.default_rng(1).normal(0.0, 2.0, (2, 7, 3, 4)).astype("float32"))
    fused, ref = _pair(policy, x.shape, epsilon=1e-3)
    y_f, _ = _run(fused, x, training=False)
    y_r, _ = _run(ref, x, training=False)
    np.testing.assert_allclose(y_f, y_r, atol=atol, rtol=atol)
    gamma, beta, mean, var = fused.get_weights()
    expected = gamma * (x.numpy() - mean) / np.sqrt(var + 1e-3) + beta
    np.testing.assert_allclose(y_f, expected, atol=atol, rtol=atol)
    # inference must not touch the moving statistics
    np.testing.assert_array_equal(fused.get_weights()[2], mean)


def test_training_uses_batch_statistics_like_numpy():
    x = np.random.default_rng(2).normal(5.0, 2.0, (3, 4, 4, 2)).astype("float32")
    layer = FusedBatchNormalization(epsilon=1e-3, momentum=0.5)
    y = layer(x, training=True).numpy()
    mu = x.reshape(-1, 2).mean(0)
    var = x.reshape(-1, 2).var(0)  # biased, as Keras
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-3), atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.5 * mu, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.5 + 0.5 * var, rtol=1e-5)


def test_frozen_layer_uses_moving_statistics_in_training():
    x = np.random.default_rng(3).normal(1.0, 1.0, (2, 4, 4, 3)).astype("float32")
    layer = FusedBatchNormalization()
    layer.build(x.shape)
    layer.trainable = False
    before = [w.copy() for w in layer.get_weights()]
    y = layer(x, training=True).numpy()
    np.testing.assert_allclose(y, x / np.sqrt(1.0 + 1e-3), atol=1e-5)
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_other_ranks_fall_back_to_keras():
    x = np.random.default_rng(4).normal(0.0, 1.0, (8, 5)).astype("float32")
    fused, ref = _pair("float32", x.shape)
    np.testing.assert_allclose(fused(x, training=True).numpy(), ref(x, training=True).numpy(),
                               atol=1e-5)


def test_models_use_it_by_default_and_round_trip(tmp_path):
    model = zf_unet.build_unet((32, 32, 1), depth=3, filters=4)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(la, FusedBatchNormalization) for la in bns)
    plain = zf_unet.build_unet((32, 32, 1), depth=3, filters=4, fused_batch_norm=False)
    assert not any(isinstance(la, FusedBatchNormalization) for la in plain.layers)
    assert plain.count_params() == model.count_params()
    # same weights -> same outputs, in training and inference mode
    plain.set_weights(model.get_weights())
    x = np.random.default_rng(5).normal(0.0, 1.0, (2, 32, 32, 1)).astype("float32")
    for training in (False, True):
        np.testing.assert_allclose(model(x, training=training).numpy(),
                                   plain(x, training=training).numpy(), atol=1e-4)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects needed
    assert isinstance(loaded.get_layer("enc0_bn1"), FusedBatchNormalization)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_sync_batch_norm_keeps_keras_layer():
    model = zf_unet.build_unet((32, 32, 1), depth=2, filters=4, sync_batch_norm=True)
    bn = model.get_layer("enc0_bn1")
    assert type(bn) is keras.layers.BatchNormalization and bn.synchronized
