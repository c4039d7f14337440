"""End-to-end behaviour: learning, saving and loading without custom_objects."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import zf_unet
from zf_unet.io_utils import save_model_atomic


def test_tiny_model_overfits_a_fixed_batch():
    keras.utils.set_random_seed(0)
    x, y = zf_unet.data.make_synthetic(4, 32, seed=1)
    model = zf_unet.build_unet((32, 32, 1), depth=3, filters=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=zf_unet.losses.BCEDiceLoss(),
                  metrics=[zf_unet.metrics.DiceCoefficient()])
    hist = model.fit(x, y, batch_size=4, epochs=60, verbose=0).history
    first, last = hist["loss"][0], hist["loss"][-1]
    assert last < first / 5, (first, last)
    assert hist["dice"][-1] > 0.97


@pytest.mark.parametrize("padding,up", [("same", "bilinear"), ("valid", "transpose")])
def test_keras_round_trip_without_custom_objects(tmp_path, padding, up):
    model = zf_unet.build_unet((None, None, 1), num_classes=3, depth=3, filters=4,
                               padding=padding, upsampling=up, dropout=0.1)
    model.compile(optimizer="adam", loss=zf_unet.losses.BCEDiceLoss(bce_weight=0.3),
                  metrics=[zf_unet.metrics.DiceCoefficient(num_classes=3),
                           zf_unet.metrics.IoU(num_classes=3)])
    x = np.random.default_rng(0).random((2, 44, 44, 1), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 3, (2,) + model.predict(x, verbose=0).shape[1:3])
    model.fit(x, y, epochs=1, verbose=0)
    path = save_model_atomic(model, tmp_path / "m.keras")
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]  # no temp file left behind
    loaded = keras.saving.load_model(path)  # no custom_objects
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert isinstance(loaded.loss, zf_unet.losses.BCEDiceLoss) and loaded.loss.bce_weight == 0.3
    # Compiled metrics come back as zf_unet objects and keep training.
    loaded.fit(x, y, epochs=1, verbose=0)


def test_zf_unet_224_weights_round_trip(tmp_path):
    model = zf_unet.ZF_UNET_224(dropout_val=0.0)
    path = tmp_path / "zf.weights.h5"
    model.save_weights(path)
    again = zf_unet.ZF_UNET_224(dropout_val=0.0, weights=str(path))
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_failed_save_leaves_previous_file_intact(tmp_path):
    model = zf_unet.build_unet((None, None, 1), depth=2, filters=2)
    path = save_model_atomic(model, tmp_path / "m.keras")
    before = path.read_bytes()

    class Broken:
        def save(self, p):
            with open(p, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_model_atomic(Broken(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]
