"""zf_unet.train / zf-unet train: config, run folder, resume, precision, multi-worker."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from zf_unet.callbacks import read_csv_log
from zf_unet.cli import main
from zf_unet.config import Config
from zf_unet.errors import ConfigError
from zf_unet.training import train

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.synthetic_n=12", "data.synthetic_size=32", "data.patch_size=32", "model.depth=2",
        "model.filters=4", "train.tensorboard=false", "data.batch_size=4",
        "data.augment.enabled=false"]  # no XLA augmentation to compile: not what these test


def test_every_shipped_config_loads_and_round_trips():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        cfg = Config.from_toml(path)
        again = Config.from_dict(__import__("tomllib").loads(cfg.to_toml()))
        assert again == cfg, path


@pytest.mark.parametrize("text,match", [
    ("[train]\nepoch = 3\n", "unknown key.*epoch"),
    ("[model]\nupsampling = 'cubic'\n", "upsampling.*nearest"),
    ("[train]\nepochs = 'ten'\n", "epochs: expected an integer"),
    ("[train\n", "not valid TOML"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        Config.from_toml(path)
    assert "bad.toml" in str(info.value) or "--set" in str(info.value)


def test_train_writes_run_folder_and_resumes(tmp_path):
    cfg = Config().override(TINY + ["train.epochs=2", 'train.precision="float32"'])
    history, run = train(cfg, tmp_path / "run", verbose=0)
    assert history.epoch == [0, 1]
    names = {p.name for p in run.iterdir()}
    assert {"config.toml", "best.keras", "last.keras", "final.keras", "log.csv",
            "training_curves.png", "summary.json", "backup"} <= names
    assert Config.from_toml(run / "config.toml") == cfg  # resolved config saved
    best = json.loads((run / "best.json").read_text())
    assert best["monitor"] == "val_dice" and 0 <= best["epoch"] <= 1
    keras.saving.load_model(run / "best.keras")  # loads without custom_objects
    # Asking for more epochs in the same folder continues from epoch 2.
    history, _ = train(cfg.override(["train.epochs=4"]), run, verbose=0)
    assert history.epoch == [2, 3]
    log = read_csv_log(run / "log.csv")
    assert len(log["loss"]) == 4


class _Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated crash")


def test_interrupted_run_resumes_with_optimizer_state(tmp_path):
    cfg = Config().override(TINY + ["train.epochs=4", 'train.precision="float32"'])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "run", verbose=0, extra_callbacks=[_Crash(at_epoch=1)])
    # Callbacks run in order: the backup of epoch 1 was written before the crash.
    opt_backup = np.load(tmp_path / "run" / "backup" / "optimizer.npz")
    iterations_saved = int(opt_backup["arr_0"])
    assert iterations_saved > 0
    history, run = train(cfg, tmp_path / "run", verbose=0)
    assert history.epoch == [2, 3]
    assert int(history.model.optimizer.iterations.numpy()) == 2 * iterations_saved
    assert len(read_csv_log(run / "log.csv")["loss"]) == 4
    # fresh=True starts over.
    history, _ = train(cfg.override(["train.epochs=1"]), run, fresh=True, verbose=0)
    assert history.epoch == [0]


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_training(tmp_path, precision):
    cfg = Config().override(TINY + ["train.epochs=1", f'train.precision="{precision}"'])
    history, run = train(cfg, tmp_path / "run", verbose=0)
    model = history.model
    assert model.get_layer("enc0_conv1").compute_dtype == precision.split("_")[1]
    assert model.output.dtype == "float32"
    if precision == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history.history["loss"][0])
    assert json.loads((run / "summary.json").read_text())["precision"] == precision
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_cli_train_with_config_and_overrides(tmp_path):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(Config().override(TINY).to_toml())
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--data", "synthetic", "--out", str(out),
                 "--epochs", "1", "--precision", "float32", "--quiet"]) == 0
    saved = Config.from_toml(out / "config.toml")
    assert saved.train.epochs == 1 and saved.train.precision == "float32"
    assert (out / "final.keras").exists()
    assert main(["train", "--config", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2


@pytest.mark.slow
def test_multiworker_two_processes_end_with_identical_weights(tmp_path):
    from _multiworker import run_workers

    run_workers(ROOT / "tests" / "_multiworker_worker.py",
                [[str(tmp_path / "run"), str(tmp_path / f"w{i}.npz")] for i in range(2)])
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(w0["steps"]) == 2
    keys = [k for k in w0.files if k.startswith("arr_")]
    assert keys and keys == [k for k in w1.files if k.startswith("arr_")]
    for k in keys:
        np.testing.assert_array_equal(w0[k], w1[k])
    initial_kernel_changed = any(np.abs(w0[k]).sum() > 0 for k in keys)
    assert initial_kernel_changed
    # Only the chief (worker 0) wrote the run folder's model files.
    assert (tmp_path / "run" / "final.keras").exists()


def test_unet_plus_plus_deep_supervision_trains_without_extra_code(tmp_path):
    cfg = Config().override(TINY + ["train.epochs=1", 'train.precision="float32"',
                                    'model.architecture="unet_plus_plus"', "model.depth=3",
                                    "model.deep_supervision=true"])
    history, run = train(cfg, tmp_path / "run", verbose=0)
    model = history.model
    assert model.output_names == ["L1", "L2"]
    assert "val_L2_dice" in history.history and "val_L1_dice" in history.history
    assert json.loads((run / "best.json").read_text())["monitor"] == "val_L2_dice"
    import zf_unet

    pruned = zf_unet.prune(keras.saving.load_model(run / "best.keras"), 1)
    assert len(pruned.outputs) == 1


@pytest.mark.slow
def test_sigkill_mid_epoch_then_restart_continues(tmp_path):
    """Kill `zf-unet train` with SIGKILL during epoch 2, restart it: all epochs end up run."""
    import signal
    import time

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(Config().override(TINY + [
        "train.epochs=4", 'train.precision="float32"', "data.samples_per_epoch=160",
        "data.synthetic_n=16"]).to_toml())
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "zf_unet.cli", "train", "--config", str(cfg_path),
           "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = out / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and not meta.exists():
        time.sleep(0.2)
    assert meta.exists(), "epoch 1 never finished"
    time.sleep(0.5)  # somewhere inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = json.loads(meta.read_text())["epoch"]
    assert 1 <= done_before < 4
    keras.saving.load_model(out / "best.keras")  # the best checkpoint is never half-written
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    log = read_csv_log(out / "log.csv")
    assert len(log["loss"]) == 4  # epochs 0..3, each once after de-duplication
    assert json.loads(meta.read_text())["epoch"] == 4
    keras.saving.load_model(out / "final.keras")


def test_train_without_validation_set(tmp_path):
    """No validation data (val_fraction=0): best checkpoint by training loss, curves drawn."""
    cfg = Config().override(TINY + ["train.epochs=2", 'train.precision="float32"',
                                     "data.val_fraction=0.0", 'train.monitor="loss"'])
    history, run = train(cfg, tmp_path / "run", verbose=0)
    assert history.epoch == [0, 1]
    assert not any(k.startswith("val_") for k in history.history)
    assert (run / "training_curves.png").stat().st_size > 0
    assert json.loads((run / "best.json").read_text())["monitor"] == "loss"
    log = read_csv_log(run / "log.csv")
    assert len(log["loss"]) == 2 and all(np.isfinite(log["loss"]))


def test_read_csv_log_turns_na_into_nan(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss,val_loss\n0,0.5,NA\n1,0.4,0.3\n1,0.35,0.25\n")
    log = read_csv_log(path)
    assert log["loss"] == [0.5, 0.35]
    assert np.isnan(log["val_loss"][0]) and log["val_loss"][1] == 0.25
