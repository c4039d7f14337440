"""FusedAdam follows keras.optimizers.Adam step for step."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import zf_unet
from zf_unet.optimizers import FusedAdam


def _numpy_adam(w, grads, lr=1e-2, b1=0.9, b2=0.999, eps=1e-7):
    """Adam as in Kingma & Ba with the bias correction folded into the step (Keras's form)."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return w


def test_matches_numpy_and_keras_adam():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype("float64")
    grads = [rng.normal(size=(5, 3)) for _ in range(6)]
    results = []
    for cls in (FusedAdam, keras.optimizers.Adam):
        var = keras.Variable(w0.astype("float32"))
        opt = cls(learning_rate=1e-2)
        for g in grads:
            opt.apply_gradients([(tf.constant(g, tf.float32), var)])
        results.append(var.numpy())
    expected = _numpy_adam(w0, grads)
    np.testing.assert_allclose(results[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[0], w0)


@pytest.mark.parametrize("kwargs", [{"weight_decay": 0.1}, {"amsgrad": True},
                                    {"clipnorm": 0.5}])
def test_options_behave_like_keras(kwargs):
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4,)).astype("float32")
    grads = [rng.normal(size=(4,)).astype("float32") * 3 for _ in range(4)]
    out = []
    for cls in (FusedAdam, keras.optimizers.Adam):
        var = keras.Variable(w0)
        opt = cls(learning_rate=0.05, **kwargs)
        for g in grads:
            opt.apply_gradients([(tf.constant(g), var)])
        out.append(var.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_fit_matches_keras_adam_and_round_trips(tmp_path):
    x = np.random.default_rng(2).random((8, 16, 16, 1), dtype=np.float32)
    y = (x > 0.5).astype("float32")
    weights = []
    for opt in (FusedAdam(1e-3), keras.optimizers.Adam(1e-3)):
        keras.utils.set_random_seed(3)
        # no BatchNorm: a conv bias before BN has a ~0 gradient that Adam blows up to +-lr
        model = zf_unet.build_unet((16, 16, 1), depth=2, filters=4, batch_norm=False)
        model.compile(optimizer=opt, loss="binary_crossentropy")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    path = tmp_path / "m.keras"
    model.compile(optimizer=FusedAdam(1e-3), loss="binary_crossentropy")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, FusedAdam)
    assert int(loaded.optimizer.iterations.numpy()) == 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
