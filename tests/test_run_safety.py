"""A run folder is never lost: ``fresh`` replaces an old run only once the new one has a
checkpoint; a kill during the swap is completed or undone; data paths are never TOML text."""
from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from zf_unet.cli import main
from zf_unet.config import Config, monitor_names
from zf_unet.errors import ConfigError
from zf_unet.run_folder import config_differences, recover_fresh_swap
from zf_unet.training import read_csv_log, train

TINY = ["data.synthetic_n=6", "data.synthetic_size=16", "model.depth=2", "model.filters=2",
        "train.tensorboard=false", 'train.precision="float32"',
        "data.augment.enabled=false"]  # no XLA augmentation to compile: not what these test


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def hidden_siblings(run: Path) -> list[str]:
    return sorted(p.name for p in run.parent.iterdir() if p.name.startswith(f".{run.name}."))


class _Crash(keras.callbacks.Callback):
    """Fails in the middle of the first epoch, before any checkpoint of the new run."""

    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("simulated failure in the first epoch")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(Config().override(TINY + ["train.epochs=2"]), run, verbose=0)
    return run


def test_fresh_keeps_the_old_run_when_the_first_epoch_fails(finished_run, tmp_path):
    run = tmp_path / "run"
    os.system(f"cp -a {finished_run} {run}")
    before = snapshot(run)
    assert {"best.keras", "last.keras", "final.keras", "backup"} <= set(before)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(Config().override(TINY + ["train.epochs=3", "model.filters=4"]), run, fresh=True,
              verbose=0, extra_callbacks=[_Crash()])
    assert snapshot(run) == before  # models, backup, log: all still there, byte-identical
    assert hidden_siblings(run) == []  # the new run's staging folder is gone


def test_fresh_replaces_the_old_run_after_its_first_epoch(finished_run, tmp_path):
    run = tmp_path / "run"
    os.system(f"cp -a {finished_run} {run}")
    seen = {}

    class Look(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # the swap happened at the end of epoch 0
                seen["config"] = Config.from_toml(run / "config.toml").model.filters

    cfg = Config().override(TINY + ["train.epochs=2", "model.filters=4"])
    history, out = train(cfg, run, fresh=True, verbose=0, extra_callbacks=[Look()])
    assert out == run and history.epoch == [0, 1]
    assert seen["config"] == 4  # during epoch 1 the folder already held the new run
    assert Config.from_toml(run / "config.toml") == cfg
    assert len(read_csv_log(run / "log.csv")["loss"]) == 2  # only the new run's epochs
    for name in ("best.keras", "last.keras", "final.keras", "training_curves.png"):
        assert (run / name).is_file(), name
    assert keras.saving.load_model(run / "final.keras").count_params() == \
        keras.saving.load_model(run / "best.keras").count_params()
    assert hidden_siblings(run) == []
    # The swapped-in run resumes like any other: two more epochs.
    history, _ = train(cfg.override(["train.epochs=4"]), run, verbose=0)
    assert history.epoch == [2, 3]


def test_a_kill_between_the_two_renames_puts_the_old_run_back(tmp_path):
    run = tmp_path / "run"
    holder = tmp_path / ".run.old-0123abcd"
    (holder / "run").mkdir(parents=True)
    (holder / "run" / "best.keras").write_bytes(b"the old model")
    stale = tmp_path / ".run.fresh-89abcdef"
    stale.mkdir()
    (stale / "log.csv").write_text("epoch\n0\n")
    other = tmp_path / ".run.old-notmine"  # not a name the swap makes: left alone
    other.mkdir()
    recover_fresh_swap(run)
    assert (run / "best.keras").read_bytes() == b"the old model"
    assert not holder.exists() and not stale.exists() and other.exists()
    # After the second rename only the holder is left: it is deleted, the new run kept.
    holder.mkdir()
    (holder / "run").mkdir()
    recover_fresh_swap(run)
    assert not holder.exists() and (run / "best.keras").exists()


def test_resume_refuses_another_config_without_touching_the_run(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    os.system(f"cp -a {finished_run} {run}")
    before = snapshot(run)
    rc = main(["train", "--out", str(run), "--quiet"] + sum(
        (["--set", s] for s in TINY + ["model.filters=8", "train.epochs=3"]), []))
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "model.filters = 2 in the run, 8 now" in err and "--fresh" in err
    assert len(err) < 1000  # no Keras warnings or weight arrays
    assert snapshot(run) == before  # config.toml included


def test_config_differences_and_monitor_names():
    a = Config()
    b = a.override(["model.filters=8", "data.augment.gamma=0.1"])
    assert config_differences(a, b) == [("data.augment.gamma", 0.2, 0.1),
                                        ("model.filters", 32, 8)]
    assert config_differences(a, a) == []
    names = monitor_names(Config().override(["model.architecture=unet_plus_plus",
                                             "model.deep_supervision=true", "model.depth=3"]))
    assert {"val_L2_dice", "L1_iou", "val_dice", "dice_mean"} <= set(names)
    assert "dice_mean" not in monitor_names(Config().override(["data.num_classes=3"]))


def test_monitor_names_are_what_training_logs(tmp_path):
    """The schema's list of monitor names matches the logs of a real run (no typo slips by,
    no valid name is refused)."""
    cfg = Config().override(TINY + ["train.epochs=1"])  # num_classes inferred: binary
    history, _ = train(cfg, tmp_path / "run", verbose=0)
    assert set(history.history) <= set(monitor_names(cfg, 1))
    assert {n for n in monitor_names(cfg, 1) if "L" not in n} <= set(history.history)
    assert set(history.history) <= set(monitor_names(cfg))  # 0 = not known yet: a superset


def test_data_paths_with_quotes_and_backslashes_train(tmp_path, capsys):
    data = tmp_path / 'my "cells" \\ v2'
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(
            data / "images" / f"{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(data / "masks" / f"{i}.png")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--quiet",
               "--set", "model.depth=2", "--set", "model.filters=2",
               "--set", "train.tensorboard=false", "--set", "data.augment.enabled=false"])
    assert rc == 0, capsys.readouterr().err
    assert Config.from_toml(out / "config.toml").data.source == str(data)
    assert "best.keras" in capsys.readouterr().out


def test_bad_numbers_are_refused_in_python_too():
    cfg = Config()
    cfg.optimizer.learning_rate = -1.0
    with pytest.raises(ConfigError, match=r"learning_rate = -1.0; expected a number > 0"):
        cfg.validate()
    for bad, match in [("data.batch_size=0", r"batch_size = 0; expected an integer >= 1"),
                       ("data.val_fraction=1.0", r"val_fraction = 1.0; expected a number in "
                                                 r"\[0, 1\)"),
                       ("model.depth=1", r"depth = 1; expected an integer in \[2, 10\]"),
                       ("data.sigma=inf", r"sigma = inf; expected a finite number"),
                       ("data.augment.elastic_grid=1", r"data.augment.*elastic_grid must be an "
                                                       r"integer >= 2")]:
        with pytest.raises(ConfigError, match=match):
            Config().override([bad])


def test_demo_config_is_checked():
    from zf_unet.demo import DemoConfig

    with pytest.raises(ConfigError, match=r"size = 100 must be a multiple of 2\*\*\(depth-1\)"):
        DemoConfig(size=100).validate()
    with pytest.raises(ConfigError, match=r"demo: n_val = 0; expected an integer >= 1"):
        DemoConfig(n_val=0).validate()
    assert DemoConfig().validate() == DemoConfig()


def test_max_minutes_stops_after_the_epoch_that_passes_the_budget(tmp_path):
    cfg = Config().override(TINY + ["train.epochs=3", "train.max_minutes=0.0001"])
    history, run = train(cfg, tmp_path / "run", verbose=0)
    assert history.epoch == [0]  # the first epoch took longer than 6 ms
    assert (run / "best.keras").exists() and (run / "final.keras").exists()
    with pytest.raises(ConfigError, match=r"max_minutes = -1.0; expected a number >= 0"):
        Config().override(["train.max_minutes=-1"])
