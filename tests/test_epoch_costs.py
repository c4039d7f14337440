"""What an epoch costs outside its training steps (issue 19): the pipelines carry no tf.data
autotune thread (whose timed wait stalled the end of every `fit`), the collapse check draws its
batches once, and `last.keras` is a copy of `best.keras` when both hold the same model.

Timings themselves live in benchmarks/epoch_overhead.py, not here."""
from __future__ import annotations

import filecmp

import keras
import numpy as np
import pytest
import tensorflow as tf

import zf_unet
from zf_unet.callbacks import BestModelCheckpoint
from zf_unet.data import (finish_pipeline, make_datasets, make_synthetic, make_volume_datasets,
                          write_synthetic_folder, without_autotune_thread)
from zf_unet.training import CollapseWarning


def _autotune(ds: tf.data.Dataset) -> bool | None:
    return ds.options().autotune.enabled


def test_without_autotune_thread_keeps_the_elements():
    ds = tf.data.Dataset.range(10).map(lambda v: v * 3, num_parallel_calls=tf.data.AUTOTUNE)
    assert _autotune(ds) is None  # TensorFlow's default: on
    off = without_autotune_thread(ds)
    assert _autotune(off) is False
    assert [int(v) for v in off] == [int(v) for v in ds] == list(range(0, 30, 3))
    fin = finish_pipeline(ds.batch(4))
    assert _autotune(fin) is False
    assert [b.numpy().tolist() for b in fin] == [[0, 3, 6, 9], [12, 15, 18, 21], [24, 27]]


def test_in_memory_and_streaming_pipelines_have_no_autotune_thread(tmp_path):
    x, y = make_synthetic(6, 32, seed=0)
    train, val = make_datasets((x, y), batch_size=2, val_fraction=0.34, seed=0)
    assert _autotune(train) is False and _autotune(val) is False
    folder = write_synthetic_folder(tmp_path / "synth", n=6, size=32, seed=1)
    train, val = make_datasets(folder, batch_size=2, val_fraction=0.34, seed=0,
                               patch_size=16, cache="none")
    assert _autotune(train) is False and _autotune(val) is False
    assert next(iter(train))[0].shape == (2, 16, 16, 1)
    # what the options are for: a fit over these datasets still trains and validates
    model = zf_unet.build_unet((None, None, 1), depth=2, filters=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    hist = model.fit(train, validation_data=val, epochs=1, verbose=0)
    assert np.isfinite(hist.history["val_loss"][0])


def test_volume_pipelines_have_no_autotune_thread():
    rng = np.random.default_rng(0)
    vols = [rng.random((8, 16, 16, 1), dtype=np.float32) for _ in range(3)]
    masks = [(v > 0.5).astype(np.float32) for v in vols]
    train, val = make_volume_datasets((vols, masks), patch_size=(4, 8, 8), batch_size=2,
                                      val_indices=[2], seed=0)
    assert _autotune(train) is False and _autotune(val) is False


class _Counter:
    def __init__(self) -> None:
        self.n = 0


def test_collapse_check_draws_its_batches_once():
    rng = np.random.default_rng(0)
    x = rng.random((8, 16, 16, 1), dtype=np.float32)
    y = (rng.random((8, 16, 16, 1)) < 0.4).astype(np.float32)
    reads = _Counter()

    def count(a, b):
        reads.n += 1
        return a, b

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).map(
        lambda a, b: tf.numpy_function(count, [a, b], [tf.float32, tf.float32]))
    cb = CollapseWarning(ds)
    assert cb.max_batches == 2
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((16, 16, 1), depth=2, filters=2)
    cb.set_model(model)
    for epoch in range(3):
        cb.on_epoch_end(epoch)
    assert reads.n == 2  # two batches, read in the first epoch only
    # the counts are those of the first two batches, predicted again each epoch
    pred = np.asarray(model.predict_on_batch(x[:4]))
    want = np.bincount((pred[..., 0] > 0.5).astype(int).ravel(), minlength=2) / pred[..., 0].size
    assert np.allclose(cb.history[2]["predicted"], want)
    truth = np.bincount(y[:4].astype(int).ravel(), minlength=2) / y[:4].size
    assert np.allclose(cb.history[2]["truth"], truth)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_last_model_is_a_copy_of_the_best_when_it_improved(tmp_path, mode):
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((16, 16, 1), depth=2, filters=2)
    best, last = tmp_path / "best.keras", tmp_path / "last.keras"
    cb = BestModelCheckpoint(best, last, monitor="val_dice", mode=mode)
    cb.set_model(model)
    good, bad = (0.5, 0.1) if mode == "max" else (0.1, 0.5)
    cb.on_epoch_end(0, {"val_dice": good})
    assert filecmp.cmp(best, last, shallow=False)  # the same bytes: one save, one copy
    first = model.get_weights()
    model.set_weights([w + 1.0 for w in first])  # the model moves on, the score does not
    cb.on_epoch_end(1, {"val_dice": bad})
    assert cb.best_epoch == 0 and not filecmp.cmp(best, last, shallow=False)
    for path, want in ((best, first), (last, model.get_weights())):
        got = keras.saving.load_model(path).get_weights()
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.keras",
                                                          "last.keras"]
