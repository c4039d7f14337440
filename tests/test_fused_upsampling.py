"""Nearest 2x upsampling + concatenation + 3x3 convolution as one transposed convolution
(zf_unet.models.fused_upsampling) and where FoldedView uses it: checked against a NumPy
convolution of the upsampled, concatenated input and against the model it replaces."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import zf_unet
from zf_unet.models import (
    FoldedView,
    FusedUpsampleConv,
    fold_batch_norm,
    fusable_upsamplings,
    transposed_up_kernel,
)


def _numpy_reference(low: np.ndarray, others: list[np.ndarray], up_index: int,
                     kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """conv3x3 (or 3x3x3), zero "same" padding, of concat(inputs, low repeated 2x per axis)."""
    rank = low.ndim - 2
    up = low
    for axis in range(1, rank + 1):
        up = np.repeat(up, 2, axis=axis)
    parts = list(others)
    parts.insert(up_index, up)
    x = np.concatenate(parts, axis=-1).astype(np.float64)
    pad = [(0, 0)] + [(1, 1)] * rank + [(0, 0)]
    xp = np.pad(x, pad)
    out = np.zeros(x.shape[:-1] + (kernel.shape[-1],))
    spatial = x.shape[1:-1]
    for taps in np.ndindex(*(3,) * rank):
        window = xp[(slice(None),) + tuple(slice(t, t + n) for t, n in zip(taps, spatial))]
        out += window @ kernel[taps].astype(np.float64)
    return out + bias


@pytest.mark.parametrize("rank,up_index,n_other", [(2, 0, 1), (2, 1, 2), (3, 0, 1)])
def test_layer_matches_numpy(rank, up_index, n_other):
    rng = np.random.default_rng(rank + up_index)
    spatial = (5, 6) if rank == 2 else (3, 4, 5)
    low = rng.normal(size=(2, *spatial, 3)).astype(np.float32)
    others = [rng.normal(size=(2, *(2 * s for s in spatial), c)).astype(np.float32)
              for c in (2, 4)[:n_other]]
    c_total = 3 + sum(o.shape[-1] for o in others)
    kernel = rng.normal(size=(3,) * rank + (c_total, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    layer = FusedUpsampleConv(5, up_index=up_index, rank=rank)
    inputs = list(others)
    inputs.insert(up_index, low)
    layer.build([x.shape for x in inputs])
    layer.assign_conv(kernel, bias)
    got = np.asarray(layer(inputs))
    want = _numpy_reference(low, others, up_index, kernel, bias)
    assert got.shape == want.shape == (2, *(2 * s for s in spatial), 5)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_transposed_kernel_by_hand():
    # one input and one output channel, 1-D along each axis: k = (a, b, c) per axis
    k = np.zeros((3, 3, 1, 1), np.float32)
    k[:, :, 0, 0] = np.outer([1.0, 2.0, 4.0], [1.0, 10.0, 100.0])
    t = np.asarray(transposed_up_kernel(k))[:, :, 0, 0]
    # per axis [k2, k1 + k2, k0 + k1, k0]
    np.testing.assert_array_equal(t, np.outer([4.0, 6.0, 3.0, 1.0], [100.0, 110.0, 11.0, 1.0]))


def _chain(up: keras.layers.Layer | None = None, conv: keras.layers.Layer | None = None,
           reuse_up: bool = False, reuse_concat: bool = False) -> keras.Model:
    inp = keras.Input((8, 8, 2))
    skip = keras.layers.Conv2D(3, 3, padding="same", name="skip")(inp)
    low = keras.layers.MaxPooling2D(name="pool")(skip)
    u = (up or keras.layers.UpSampling2D(name="up"))(low)
    c = keras.layers.Concatenate(name="cat")([u, skip])
    y = (conv or keras.layers.Conv2D(4, 3, padding="same", name="conv"))(c)
    outs = [y]
    if reuse_up:
        outs.append(u)
    if reuse_concat:
        outs.append(c)
    return keras.Model(inp, outs)


@pytest.mark.parametrize("model,fused", [
    (lambda: _chain(), 1),
    (lambda: _chain(conv=keras.layers.Conv2D(4, 3, padding="same", activation="relu",
                                             name="conv")), 1),
    (lambda: _chain(up=keras.layers.UpSampling2D(interpolation="bilinear", name="up")), 0),
    (lambda: _chain(conv=keras.layers.Conv2D(4, 5, padding="same", name="conv")), 0),
    (lambda: _chain(conv=keras.layers.Conv2D(4, 3, padding="valid", name="conv")), 0),
    (lambda: _chain(conv=keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv")), 0),
    (lambda: _chain(conv=keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same",
                                             name="conv")), 0),
    (lambda: _chain(reuse_up=True), 0),
    (lambda: _chain(reuse_concat=True), 0),
], ids=["plain", "conv-activation", "bilinear", "5x5", "valid", "stride2", "dilated",
        "upsampled-used-twice", "concat-used-twice"])
def test_which_chains_are_fused(model, fused):
    keras.utils.set_random_seed(0)
    m = model()
    assert len(fusable_upsamplings(m)) == fused
    twin = FoldedView(m).model
    assert sum(isinstance(layer, FusedUpsampleConv) for layer in twin.layers) == fused
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype(np.float32)
    for w, g in zip(keras.tree.flatten(m(x)), keras.tree.flatten(twin(x))):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5)


def test_builders_are_fused_and_unchanged_in_output():
    keras.utils.set_random_seed(0)
    classic = zf_unet.build_unet((32, 32, 1), depth=4, filters=4, fuse_upsampling=False)
    chains = fusable_upsamplings(classic)
    assert [c[2] for c in chains] == [f"dec{lv}_conv1" for lv in (2, 1, 0)]
    model = zf_unet.build_unet((32, 32, 1), depth=4, filters=4)
    assert fusable_upsamplings(model) == []
    assert [layer.name for layer in model.layers if isinstance(layer, FusedUpsampleConv)] == [
        f"dec{lv}_conv1" for lv in (2, 1, 0)]
    assert not any(isinstance(layer, (keras.layers.UpSampling2D, keras.layers.Concatenate))
                   for layer in model.layers)
    assert [w.shape for w in model.weights] == [w.shape for w in classic.weights]
    model.set_weights(classic.get_weights())
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    want = np.asarray(classic(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x, training=False)), want, atol=2e-5)
    for twin in (fold_batch_norm(model), fold_batch_norm(classic)):
        fused = [layer for layer in twin.layers if isinstance(layer, FusedUpsampleConv)]
        assert len(fused) == 3 and all(layer.cache_kernels for layer in fused)
        np.testing.assert_allclose(np.asarray(twin(x)), want, atol=2e-5)
    unfused = fold_batch_norm(classic, fuse_upsampling=False)
    assert sum(isinstance(layer, keras.layers.UpSampling2D) for layer in unfused.layers) == 3
    np.testing.assert_allclose(np.asarray(unfused(x)), want, atol=2e-5)


@pytest.mark.parametrize("shape", [(32, 32, 2), (8, 16, 16, 1)], ids=["2d", "3d"])
def test_training_gradients_match_the_unfused_model(shape):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    classic = zf_unet.build_unet(shape, depth=3 if len(shape) == 3 else 2, filters=4,
                                 num_classes=3, fuse_upsampling=False)
    model = zf_unet.build_unet(shape, depth=3 if len(shape) == 3 else 2, filters=4,
                               num_classes=3)
    model.set_weights(classic.get_weights())
    rng = np.random.default_rng(0)
    x = rng.random((2, *shape), dtype=np.float32)
    y = keras.ops.one_hot(rng.integers(0, 3, (2, *shape[:-1])), 3)
    grads = []
    for m in (classic, model):
        with tf.GradientTape() as tape:
            loss = keras.losses.categorical_crossentropy(y, m(x, training=True))
            loss = tf.reduce_mean(loss)
        grads.append([np.asarray(g) for g in tape.gradient(loss, m.trainable_weights)])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)


def test_weights_of_the_unfused_layout_load(tmp_path):
    from zf_unet.errors import DataError
    from zf_unet.models import load_weights_file, unfused_copy

    keras.utils.set_random_seed(0)
    classic = zf_unet.build_unet((16, 16, 1), depth=3, filters=4, fuse_upsampling=False)
    for layer in classic.layers:  # non-trivial statistics, so that every value matters
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, np.float32))
    classic.save_weights(tmp_path / "classic.weights.h5")
    model = zf_unet.build_unet((16, 16, 1), depth=3, filters=4)
    with pytest.raises(ValueError):  # Keras alone: the layouts differ
        model.load_weights(tmp_path / "classic.weights.h5")
    load_weights_file(model, tmp_path / "classic.weights.h5")
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    want = np.asarray(classic(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x, training=False)), want, atol=1e-5)
    copy = unfused_copy(model)  # the inverse rewrite: the classic layers, same weights
    assert [layer.name for layer in copy.layers] == [layer.name for layer in classic.layers]
    np.testing.assert_allclose(np.asarray(copy(x, training=False)), want, atol=1e-5)
    model.save_weights(tmp_path / "fused.weights.h5")  # its own layout loads directly
    again = zf_unet.build_unet((16, 16, 1), depth=3, filters=4)
    load_weights_file(again, tmp_path / "fused.weights.h5")
    np.testing.assert_allclose(np.asarray(again(x, training=False)), want, atol=1e-5)
    other = zf_unet.build_unet((16, 16, 1), depth=3, filters=8)
    with pytest.raises(DataError, match="classic.weights.h5"):
        load_weights_file(other, tmp_path / "classic.weights.h5")
    with pytest.raises(DataError, match="not found"):
        load_weights_file(model, tmp_path / "missing.weights.h5")


def test_bfloat16_twin_close_to_float32_model():
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((32, 32, 1), depth=3, filters=8, batch_norm=True)
    model16 = keras.models.clone_model(model, clone_function=lambda layer: layer.__class__
                                       .from_config({**layer.get_config(),
                                                     "dtype": "mixed_bfloat16"}))
    model16.set_weights(model.get_weights())
    twin = fold_batch_norm(model16)
    fused = [layer for layer in twin.layers if isinstance(layer, FusedUpsampleConv)]
    assert fused and all(layer.compute_dtype == "bfloat16" for layer in fused)
    assert all(layer.up_kernel.dtype == "float32" for layer in fused)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    want = np.asarray(model(x, training=False))
    got = np.asarray(keras.ops.cast(twin(x), "float32"))
    assert np.abs(got - want).mean() < 1e-2  # bfloat16 rounding, not a different function


def test_refresh_follows_the_replaced_convolution():
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((16, 16, 1), depth=2, filters=2, batch_norm=False)
    view = FoldedView(model)
    (conv, bn, fused), = view.fused
    assert bn is None and conv.name == "dec0_conv1"
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    conv.kernel.assign(conv.kernel.numpy() * -2.0)
    assert not np.allclose(np.asarray(view.model(x)), np.asarray(model(x)), atol=1e-4)
    view.refresh()
    np.testing.assert_allclose(np.asarray(view.model(x)), np.asarray(model(x)), atol=1e-5)


def test_fused_twin_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((16, 16, 2), depth=3, filters=2, num_classes=3)
    twin = fold_batch_norm(model)
    assert any(isinstance(layer, FusedUpsampleConv) for layer in twin.layers)
    twin.save(tmp_path / "twin.keras")
    back = keras.saving.load_model(tmp_path / "twin.keras")  # no custom_objects
    x = np.random.default_rng(0).random((1, 16, 16, 2), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), atol=1e-5)


def test_bad_up_index():
    layer = FusedUpsampleConv(2, up_index=2)
    with pytest.raises(ValueError, match="up_index"):
        layer([np.zeros((1, 2, 2, 1), np.float32), np.zeros((1, 4, 4, 1), np.float32)])
    with pytest.raises(ValueError, match="rank"):
        FusedUpsampleConv(2, rank=1)


def test_run_backed_up_unfused_resumes_into_the_fused_model(tmp_path):
    """A run interrupted under an earlier zf_unet (decoders unfused) resumes: the backup's
    weights, optimizer state and epoch count are restored into today's fused model."""
    from zf_unet.callbacks import AtomicBackupAndRestore
    from zf_unet.optimizers import FusedAdam

    rng = np.random.default_rng(0)
    x = rng.random((4, 16, 16, 1), dtype=np.float32)
    y = (rng.random((4, 16, 16, 1)) > 0.5).astype(np.float32)
    keras.utils.set_random_seed(0)
    old = zf_unet.build_unet((16, 16, 1), depth=2, filters=2, fuse_upsampling=False)
    old.compile(optimizer=FusedAdam(1e-2), loss="binary_crossentropy")
    old.fit(x, y, batch_size=2, epochs=1, verbose=0,
            callbacks=[AtomicBackupAndRestore(tmp_path / "backup")])
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.setdefault("epoch", epoch)
            seen.setdefault("weights", [np.asarray(w) for w in self.model.get_weights()])
            seen.setdefault("iterations", int(self.model.optimizer.iterations.numpy()))

    new = zf_unet.build_unet((16, 16, 1), depth=2, filters=2)
    new.compile(optimizer=FusedAdam(1e-2), loss="binary_crossentropy")
    new.fit(x, y, batch_size=2, epochs=2, verbose=0,
            callbacks=[AtomicBackupAndRestore(tmp_path / "backup"), Record()])
    assert seen["epoch"] == 1  # epoch 0 was done before the interruption
    assert seen["iterations"] == 2  # the optimizer state came back too
    for got, want in zip(seen["weights"], old.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_bad_fuse_upsampling_argument():
    with pytest.raises(ValueError, match="fuse_upsampling"):
        zf_unet.build_unet((16, 16, 1), depth=2, fuse_upsampling="yes")
