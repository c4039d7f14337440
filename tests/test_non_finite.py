"""A model that outputs NaN is a failure, not a result: training that diverges exits non-zero
and says at which epoch; predict, evaluate and export refuse a model whose output is not
finite, naming the model file, before they write anything."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import zf_unet
import zf_unet.training as training
from zf_unet.callbacks import StopOnNonFinite, completed_epochs
from _folders import write_folder
from zf_unet.cli import main
from zf_unet.errors import NonFiniteOutputError
from zf_unet.io_utils import save_model_atomic

TINY = ["--set", "model.depth=3", "--set", "model.filters=4", "--quiet",
        "--set", "data.patch_size=32", "--set", "data.batch_size=2",
        "--set", "train.collapse_warning=false",
        "--set", "data.augment.enabled=false"]  # no XLA augmentation to compile


def finite_weights(path: Path) -> bool:
    model = keras.saving.load_model(path, compile=False)
    return all(np.isfinite(w).all() for w in model.get_weights())


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((None, None, 1), depth=3, filters=4)
    first = model.trainable_weights[0]
    first.assign(np.full(first.shape, np.nan, np.float32))
    return save_model_atomic(model, tmp_path_factory.mktemp("nan") / "diverged.keras")


class PoisonAtSecondEpoch(StopOnNonFinite):
    """Sets the first kernel to NaN when the second epoch starts (a diverging run)."""

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if epoch == 1:
            w = self.model.trainable_weights[0]
            w.assign(np.full(w.shape, np.nan, np.float32))


def test_diverged_training_exits_1_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(training, "StopOnNonFinite", PoisonAtSecondEpoch)
    data = write_folder(tmp_path / "data")
    run = tmp_path / "run"
    capsys.readouterr()
    code = main(["train", "--data", str(data), "--out", str(run), "--epochs", "3"] + TINY)
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "epoch 2, batch 1" in lines[0] and "best.keras holds epoch 1" in lines[0]
    summary = json.loads((run / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert summary["status"] == "failed" and "epoch 2" in summary["error"]
    assert summary["best"]["epoch"] == 0
    assert finite_weights(run / "best.keras") and finite_weights(run / "last.keras")
    assert completed_epochs(run / "backup") == 1  # a resumed run restarts from epoch 2
    assert not (run / "final.keras").exists()


def test_diverged_first_epoch_saves_no_model(tmp_path, monkeypatch):
    class PoisonNow(StopOnNonFinite):
        def on_train_begin(self, logs=None):
            w = self.model.trainable_weights[0]
            w.assign(np.full(w.shape, np.nan, np.float32))

    monkeypatch.setattr(training, "StopOnNonFinite", PoisonNow)
    data = write_folder(tmp_path / "data")
    cfg = zf_unet.Config().override([
        f"data.source={json.dumps(str(data))}", "model.depth=3", "model.filters=4",
        "data.patch_size=32", "train.epochs=2", "train.collapse_warning=false",
        "data.augment.enabled=false"])  # no XLA augmentation to compile
    with pytest.raises(zf_unet.errors.TrainingFailedError,
                       match=r"epoch 1, batch 1.*no finite checkpoint"):
        zf_unet.train(cfg, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "best.keras").exists()
    assert not (tmp_path / "run" / "last.keras").exists()
    json.loads((tmp_path / "run" / "summary.json").read_text())


def test_predict_tiled_refuses_a_nan_model(nan_model):
    model = zf_unet.models.load_model_file(nan_model)
    with pytest.raises(NonFiniteOutputError, match=r"diverged\.keras.*NaN or Inf"):
        zf_unet.predict_tiled(model, np.full((40, 40, 1), 0.5, np.float32), tile_size=32,
                              overlap=8)


@pytest.mark.parametrize("command", ["predict", "evaluate", "export-saved_model",
                                     "export-tflite"])
def test_commands_refuse_a_nan_model_naming_it(command, nan_model, tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "out"
    argv = {
        "predict": ["predict", str(data / "images"), "--model", str(nan_model), "--out",
                    str(out)],
        "evaluate": ["evaluate", "--model", str(nan_model), "--data", str(data), "--json",
                     str(out / "r.json")],
        "export-saved_model": ["export", "--model", str(nan_model), "--out", str(out)],
        "export-tflite": ["export", "--model", str(nan_model), "--format", "tflite",
                          "--out", str(out / "m.tflite"), "--tile-size", "32"],
    }[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert str(nan_model) in lines[0] and "NaN or Inf" in lines[0], lines[0]
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == [], written
