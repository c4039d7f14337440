"""Interrupted runs lose nothing; ``train.deterministic`` runs are bit-identical (CPU).

Everything trains in subprocesses of the installed ``zf-unet`` script: op determinism is
process-wide and permanent, so it must not leak into the other tests, and SIGKILL needs a
process of its own.

* Two uninterrupted runs of one tiny config (``train.deterministic = true``, same seed) run
  side by side: their weights after 8 epochs x 16 steps are bit-identical, and so are their
  logs. The first is also the reference for the interrupted run.
* The same config in a third folder is SIGKILLed three times at seeded random moments (each
  after at least one more epoch finished, anywhere inside the next one or its checkpoint
  writes) and restarted with the same command. After every kill ``best.keras`` loads and the
  backup (after the recovery the next start performs) is consistent; at the end ``log.csv``
  holds each of the 8 epochs exactly once and the final scores are within noise of the
  reference.
"""
from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from zf_unet.config import Config
from zf_unet.training import make_model, recover_backup


def tf_determinism_enabled() -> bool:
    from tensorflow.python.framework import config as tf_config

    return bool(tf_config.is_op_determinism_enabled())

ZF_UNET = Path(sys.executable).parent / "zf-unet"
EPOCHS = 8
# No batch norm: its moving averages need hundreds of steps, and until then the validation
# predictions of a tiny model are all one class. lr 0.01 learns in a few epochs. No
# augmentation: it would only add an XLA compile to every start.
SETTINGS = [
    "data.synthetic_n=16", "data.synthetic_size=32", "data.patch_size=32",
    "data.samples_per_epoch=64", "data.batch_size=4", "data.augment.enabled=false",
    "model.depth=3", "model.filters=4", "model.batch_norm=false",
    "optimizer.learning_rate=0.01", f"train.epochs={EPOCHS}", 'train.precision="float32"',
    "train.tensorboard=false", "train.deterministic=true", "train.seed=0",
]
# Final scores of this config over seeds 0-2 (measured; the seed also picks the validation
# images): val_dice_mean 0.882-0.939, val_loss 0.110-0.268, val_dice 0.939-0.967. An
# interrupted run differs from the reference only in the order of its patches after each
# restart; it must stay within about that seed-to-seed spread.
TOLERANCE = {"val_dice_mean": 0.08, "val_loss": 0.15, "val_dice": 0.03}
KILLS = 3


def _cmd(config: Path, out: Path) -> list[str]:
    return [str(ZF_UNET), "train", "--config", str(config), "--out", str(out), "--quiet"]


def _rows(log: Path) -> list[dict[str, str]]:
    if not log.exists():
        return []
    with open(log, newline="") as fh:
        return list(csv.DictReader(fh))


def _weights(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(Config().override(SETTINGS).to_toml())
    return path


@pytest.fixture(scope="module")
def reference(config: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two uninterrupted runs of ``config``, side by side."""
    base = tmp_path_factory.mktemp("reference")
    runs = (base / "a", base / "b")
    procs = [subprocess.Popen(_cmd(config, r), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in runs]
    for p in procs:
        out, _ = p.communicate(timeout=400)
        assert p.returncode == 0, out[-3000:]
    return runs


@pytest.mark.slow
def test_deterministic_runs_are_bit_identical(reference):
    a, b = reference
    for run in (a, b):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["deterministic"] is True and summary["epochs_run_this_call"] == EPOCHS
    wa, wb = _weights(a / "final.keras"), _weights(b / "final.keras")
    assert len(wa) == len(wb) > 0
    for x, y in zip(wa, wb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit-identical, not merely close
    assert (a / "log.csv").read_bytes() == (b / "log.csv").read_bytes()
    rows = _rows(a / "log.csv")
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it trained ...
    assert float(rows[-1]["val_dice_mean"]) > 0.75  # ... and learned


def _check_after_kill(run: Path, cfg: Config) -> int:
    """Invariants of a run folder right after SIGKILL; returns the completed epochs."""
    if (run / "best.keras").exists():
        keras.saving.load_model(run / "best.keras")  # never half-written
    backup = run / "backup"
    recover_backup(backup)  # what the next start does first
    assert not (backup / ".pending").exists() and not (backup / ".committed").exists()
    meta = backup / "training_metadata.json"
    if not meta.exists():
        return 0
    done = json.loads(meta.read_text())["epoch"]
    # The backup is one consistent unit: weights and optimizer state load into the model.
    model = make_model(cfg, channels=1)
    model.load_weights(backup / "latest.weights.h5")
    with np.load(backup / "optimizer.npz") as opt:
        assert int(opt["arr_0"]) == done * 16  # iterations = completed epochs x 16 steps
    # The log has every completed epoch (maybe also the one in flight, dropped on restart).
    epochs = [int(r["epoch"]) for r in _rows(run / "log.csv") if r.get("epoch", "").isdigit()]
    assert epochs[:done] == list(range(done))
    return done


@pytest.mark.slow
def test_sigkill_three_times_then_finish(config, reference, tmp_path):
    cfg = Config.from_toml(config)
    run = tmp_path / "run"
    rng = random.Random(20120)  # seeded kill moments
    # One epoch's duration, from the reference runs (two ran side by side: about half).
    summary = json.loads((reference[0] / "summary.json").read_text())
    epoch_s = summary["seconds_this_call"] / EPOCHS / 2
    cmd = _cmd(config, run)
    done, kills_in_epoch = 0, []
    for _ in range(KILLS):
        rows_before = len(_rows(run / "log.csv"))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        # Wait for one more finished epoch, then kill somewhere in the next one.
        while time.time() < deadline and len(_rows(run / "log.csv")) <= rows_before:
            assert proc.poll() is None, "training ended before it was killed"
            time.sleep(0.05)
        delay = rng.uniform(0.0, 1.0) * epoch_s
        time.sleep(delay)
        if proc.poll() is not None:
            pytest.fail("training finished before the kill; make the run longer")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        new_done = _check_after_kill(run, cfg)
        assert new_done >= done  # progress is never lost
        done = new_done
        kills_in_epoch.append((done, round(delay, 2)))
    print("kills (completed epochs, delay s):", kills_in_epoch)
    assert 1 <= done < EPOCHS, kills_in_epoch
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    raw = _rows(run / "log.csv")
    assert [int(r["epoch"]) for r in raw] == list(range(EPOCHS)), kills_in_epoch
    assert json.loads((run / "backup" / "training_metadata.json").read_text())["epoch"] == EPOCHS
    keras.saving.load_model(run / "best.keras")
    keras.saving.load_model(run / "final.keras")
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # no temporary files of killed writes
    ref = _rows(reference[0] / "log.csv")[-1]
    got = raw[-1]
    for key, tol in TOLERANCE.items():
        assert abs(float(got[key]) - float(ref[key])) <= tol, (key, got[key], ref[key])
    assert float(got["val_dice_mean"]) > 0.75  # learned, well above all-foreground (~0.42)


# --------------------------------------------------------------------------- kill points, unit


def test_recover_backup_rolls_forward_a_commit_and_drops_a_pending_one(tmp_path):
    d = tmp_path / "backup"
    d.mkdir()
    for name, text in (("latest.weights.h5", "w1"), ("optimizer.npz", "o1"),
                       ("training_metadata.json", '{"epoch": 1, "batch": 0}')):
        (d / name).write_text(text)
    # Killed after the commit point, with one of three files already moved into place.
    committed = d / ".committed"
    committed.mkdir()
    (d / "latest.weights.h5").write_text("w2")
    (committed / "optimizer.npz").write_text("o2")
    (committed / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    recover_backup(d)
    assert sorted(p.name for p in d.iterdir()) == ["latest.weights.h5", "optimizer.npz",
                                                  "training_metadata.json"]
    assert [(d / n).read_text() for n in ("latest.weights.h5", "optimizer.npz")] == ["w2", "o2"]
    assert json.loads((d / "training_metadata.json").read_text())["epoch"] == 2
    # Killed before the commit point: the new files are dropped, the old backup stays.
    pending = d / ".pending"
    pending.mkdir()
    (pending / "latest.weights.h5").write_text("w3")
    recover_backup(d)
    assert not pending.exists() and (d / "latest.weights.h5").read_text() == "w2"


def test_repair_csv_log_keeps_each_completed_epoch_once(tmp_path):
    from zf_unet.training import repair_csv_log

    log = tmp_path / "log.csv"
    header = "epoch,loss,val_dice\r\n"
    log.write_bytes((header + "0,0.9,0.5\r\n1,0.8,0.6\r\n2,0.7,0.7\r\n1,0.75,0.65\r\n2,0.6")
                    .encode())
    repair_csv_log(log, next_epoch=2)  # epochs 0, 1 completed; 2 re-runs; half a line
    assert log.read_bytes() == (header + "0,0.9,0.5\r\n1,0.75,0.65\r\n").encode()
    before = log.read_bytes()
    repair_csv_log(log, next_epoch=2)
    assert log.read_bytes() == before  # idempotent
    log.write_bytes(b"epoch,lo")  # killed while writing the header
    repair_csv_log(log, next_epoch=0)
    assert not log.exists()


def test_backup_is_written_as_one_unit(tmp_path, monkeypatch):
    """A crash between the backup's files leaves the previous backup in force."""
    import zf_unet.training as training

    # In-process: op determinism is process-wide, so it stays off here.
    cfg = Config().override(SETTINGS + ["train.deterministic=false", "train.epochs=2",
                                        "data.samples_per_epoch=8"])
    training.train(cfg.override(["train.epochs=1"]), tmp_path / "run", verbose=0)
    backup = tmp_path / "run" / "backup"
    before = {p.name: p.read_bytes() for p in backup.iterdir()}
    real_savez = np.savez

    def crash(*args, **kwargs):  # the optimizer file of epoch 2 fails to write
        real_savez(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(training.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        training.train(cfg, tmp_path / "run", verbose=0)
    monkeypatch.undo()
    recover_backup(backup)
    assert {p.name: p.read_bytes() for p in backup.iterdir()} == before
    history, _ = training.train(cfg, tmp_path / "run", verbose=0)
    assert history.epoch == [1]
    assert not tf_determinism_enabled()
    assert [int(r["epoch"]) for r in _rows(tmp_path / "run" / "log.csv")] == [0, 1]
