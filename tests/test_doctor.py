"""The data doctor (``check_data`` / ``zf-unet check-data``) and the CollapseWarning callback."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile
from PIL import Image

import zf_unet
from zf_unet.cli import build_parser, main
from zf_unet.config import Config
from zf_unet.doctor import check_data
from zf_unet.errors import DataError
from zf_unet.training import CollapseWarning


def folder(root: Path, masks: list[np.ndarray], images: list[np.ndarray] | None = None,
           ext: str = ".png") -> Path:
    """``root/images`` + ``root/masks`` from arrays (images default to random uint8)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in enumerate(masks):
        img = images[i] if images is not None else rng.integers(
            0, 256, m.shape[:2], dtype=np.uint8)
        if img.dtype == np.float32:
            tifffile.imwrite(root / "images" / f"{i:02d}.tif", img)
        else:
            Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(m).save(root / "masks" / f"{i:02d}{ext}")
    return root


def square(size: int = 32, value: int = 255, frac: float = 0.5) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[: int(size * frac)] = value
    return m


# --------------------------------------------------------------------------- check_data


def test_healthy_folder_reports_what_it_saw(tmp_path, capsys):
    data = zf_unet.data.write_synthetic_folder(tmp_path / "d", n=4, size=48, seed=1)
    report = check_data(data)
    assert report.ok and report.exit_code == 0 and report.num_checked == 4
    s = report.summary
    assert s["sizes"] == {"48x48": 4} and s["channels"] == [1] and s["image_dtypes"] == ["uint8"]
    assert sum(s["class_frequencies"].values()) == pytest.approx(1.0)
    # The frequencies are the masks' own: compare with a direct count.
    masks = [np.asarray(Image.open(p)) for p in sorted((data / "masks").iterdir())]
    fg = np.mean([np.mean(m == 255) for m in masks])
    assert s["class_frequencies"][1] == pytest.approx(fg)
    assert report.conventions == {"{0, 255}": 4}
    assert main(["check-data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "{0, 255} (4)" in out and "48x48 (4)" in out


def test_problems_are_all_found_in_one_pass(tmp_path):
    masks = [square(), square(), square(), square(value=7), square()]
    images = [np.random.default_rng(i).random((32, 32), dtype=np.float32) for i in range(5)]
    images[1][2, 3] = np.nan
    data = folder(tmp_path / "d", masks, images)
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(data / "masks" / "02.png")
    report = check_data(data)
    codes = {p.code: p for p in report.problems}
    assert {"nan_pixels", "size_mismatch", "bad_mask_values"} <= set(codes)
    assert all(codes[c].severity == "error" for c in ("nan_pixels", "size_mismatch"))
    assert "images/01.tif" in codes["nan_pixels"].message
    assert "masks/02.png is 32x30 but images/02.tif is 32x32" in codes["size_mismatch"].message
    assert "masks/03.png" in codes["bad_mask_values"].message
    assert report.num_checked == 2 and report.exit_code == 1


@pytest.mark.parametrize("masks,kwargs,code,severity", [
    ([np.zeros((32, 32), np.uint8)] * 3, {}, "one_class", "error"),
    ([square(frac=1 / 32)] * 2 + [np.zeros((32, 32), np.uint8)] * 6, {}, "imbalance",
     "warning"),
    ([square(value=1), square(value=255), square(value=255)], {}, "mixed_conventions",
     "warning"),
    ([square(16), square(16)], {"patch_size": 32}, "small_images", "warning"),
    ([square(value=1)] * 3, {"num_classes": 3}, "missing_classes", "warning"),
    ([np.zeros((32, 32), np.uint8)] * 3 + [square()], {}, "empty_masks", "warning"),
    ([square(value=2)] * 2, {}, "bad_mask_values", "error"),
])
def test_likely_problems(tmp_path, masks, kwargs, code, severity):
    report = check_data(folder(tmp_path / "d", masks), **kwargs)
    found = {p.code: p.severity for p in report.problems}
    assert found.get(code) == severity, report.format()
    assert report.exit_code == 1


def test_class_id_masks_need_num_classes(tmp_path):
    m = square(value=1)
    m[:4] = 2
    data = folder(tmp_path / "d", [m, m])
    bad = check_data(data)
    assert [p.code for p in bad.problems] == ["bad_mask_values"]
    assert "num_classes=3" in bad.problems[0].message  # the loader's hint
    good = check_data(data, num_classes=3)
    assert good.ok and good.conventions == {"class ids 0..2": 2}
    assert set(good.summary["class_frequencies"]) == {0, 1, 2}


def test_jpeg_masks_are_flagged(tmp_path):
    data = folder(tmp_path / "d", [square(value=255)] * 2, ext=".jpg")
    codes = {p.code: p for p in check_data(data).problems}
    assert codes["jpeg_masks"].severity == "error"  # training refuses JPEG masks
    assert "masks/00.jpg" in codes["jpeg_masks"].message
    assert "bad_mask_values" not in codes  # one finding per JPEG mask, not two


def test_unreadable_files_exit_2_after_the_report(tmp_path, capsys):
    data = zf_unet.data.write_synthetic_folder(tmp_path / "d", n=3, size=32)
    (data / "images" / "001.png").write_bytes(b"junk")
    report = check_data(data)
    assert report.exit_code == 2 and len(report.unreadable) == 1 and report.num_checked == 2
    assert main(["check-data", str(data), "--json", str(tmp_path / "r.json")]) == 2
    out, err = capsys.readouterr()
    assert "unreadable files (1)" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "images/001.png" in lines[0] and "cannot read image" in lines[0]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["exit_code"] == 2 and saved["num_pairs"] == 3


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "missing", "folder not found"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "expected a folder"),
    (lambda p: (p / "images").mkdir() or p, "images: no image files"),
])
def test_unreadable_folders(tmp_path, capsys, make, match):
    path = make(tmp_path)
    with pytest.raises(DataError, match=match):
        check_data(path)
    assert main(["check-data", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err and "Traceback" not in err


def test_bad_arguments():
    with pytest.raises(DataError, match="num_classes=0"):
        check_data(".", num_classes=0)
    with pytest.raises(DataError, match="patch_size=-1"):
        check_data(".", patch_size=-1)


def test_cli_exit_codes_are_documented_in_help():
    sub = build_parser()._subparsers._group_actions[0].choices["check-data"]
    text = " ".join(sub.format_help().split())
    assert "0 no problems found" in text and "1 problems found" in text
    assert "2 unreadable input" in text


def test_problem_folder_exits_1(tmp_path, capsys):
    data = folder(tmp_path / "d", [np.zeros((32, 32), np.uint8)] * 2)
    assert main(["check-data", str(data)]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "only class 0" in out


@pytest.mark.isbi
def test_isbi_data_is_healthy(isbi_dir):
    report = check_data(isbi_dir)
    assert report.exit_code == 0, report.format()
    assert report.conventions == {"{0, 255}": report.num_pairs}
    assert 0.7 < report.summary["class_frequencies"][1] < 0.85  # ~78 % cell interior


# --------------------------------------------------------------------------- CollapseWarning


def _constant_model(value: float, num_classes: int = 1) -> keras.Model:
    """A U-Net whose head ignores its input: logit ``value`` (one class) or ``value`` on the
    last class (several)."""
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((None, None, 1), num_classes=num_classes, depth=2, filters=2)
    head = model.get_layer("head_conv")
    kernel, bias = head.get_weights()
    bias = np.zeros_like(bias)
    bias[-1] = value
    head.set_weights([np.zeros_like(kernel), bias])
    return model


def _mixed_batches(n: int = 2, fg: float = 0.4) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        y = (rng.random((2, 16, 16, 1)) < fg).astype(np.float32)
        out.append((rng.random((2, 16, 16, 1), dtype=np.float32), y))
    return out


@pytest.mark.parametrize("logit,cls", [(-12.0, 0), (12.0, 1)])
def test_constant_binary_model_warns(logit, cls, caplog, capsys):
    cb = CollapseWarning(_mixed_batches())
    cb.set_model(_constant_model(logit))
    with caplog.at_level(logging.WARNING, logger="zf_unet"):
        cb.on_epoch_end(0)
    assert len(cb.warnings) == 1 and cb.history[0]["collapsed"]
    assert cb.history[0]["predicted"][cls] == 1.0
    assert f"predicted as class {cls}" in cb.warnings[0]
    assert any("CollapseWarning" in r.getMessage() for r in caplog.records)
    assert "CollapseWarning: epoch 1" in capsys.readouterr().out


def test_mixed_predictions_and_unmixed_truth_do_not_warn():
    # A model that returns its input: fed the masks, it predicts the truth exactly.
    inp = keras.Input((None, None, 1))
    echo = keras.Model(inp, keras.layers.Activation("linear")(inp))
    batches = [(y, y) for _, y in _mixed_batches()]
    cb = CollapseWarning(batches)
    cb.set_model(echo)
    cb.on_epoch_end(0)
    assert not cb.warnings and not cb.history[0]["collapsed"]
    # All-background truth: predicting background everywhere is right, not a collapse.
    empty = [(x, np.zeros_like(y)) for x, y in _mixed_batches()]
    cb = CollapseWarning(empty)
    cb.set_model(_constant_model(-12.0))
    cb.on_epoch_end(0)
    assert cb.history[0]["collapsed"] is False and not cb.warnings


def test_multiclass_collapse_and_patience_through_fit(capsys):
    model = _constant_model(12.0, num_classes=3)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x = rng.random((4, 16, 16, 1), dtype=np.float32)
    y = rng.integers(0, 3, (4, 16, 16, 1)).astype(np.float32)
    cb = CollapseWarning((x, y), patience=2)
    model.fit(x, y, epochs=3, batch_size=2, verbose=0, callbacks=[cb])
    assert [h["collapsed"] for h in cb.history] == [True, True, True]
    assert len(cb.warnings) == 2  # epochs 2 and 3 (patience 2)
    assert "predicted as class 2" in cb.warnings[0]
    assert capsys.readouterr().out.count("CollapseWarning") == 2


def test_train_adds_the_callback_by_default(tmp_path, monkeypatch):
    import zf_unet.training as training

    made: list[CollapseWarning] = []

    class Recording(CollapseWarning):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(training, "CollapseWarning", Recording)
    cfg = Config().override(["data.synthetic_n=8", "data.synthetic_size=32",
                             "data.patch_size=32", "model.depth=2", "model.filters=2",
                             "train.epochs=2", "train.tensorboard=false",
                             'train.precision="float32"',
                             "data.augment.enabled=false"])  # no XLA augmentation to compile
    assert cfg.train.collapse_warning is True
    training.train(cfg, tmp_path / "run", verbose=0)
    assert len(made) == 1 and made[0].label == "validation"
    assert [h["epoch"] for h in made[0].history] == [0, 1]
    made.clear()
    training.train(cfg.override(["train.collapse_warning=false", "train.epochs=3"]),
                   tmp_path / "run", verbose=0)
    assert made == []


# --------------------------------------------------------------------------- every problem


def test_check_data_reports_unpaired_and_corrupt_files_together(tmp_path):
    data = zf_unet.data.write_synthetic_folder(tmp_path / "d", n=5, size=32, seed=3)
    (data / "images" / "extra.png").write_bytes((data / "images" / "000.png").read_bytes())
    (data / "images" / "002.png").write_bytes(b"corrupt")
    report = check_data(data)
    codes = {p.code: p for p in report.problems}
    assert "unpaired" in codes and codes["unpaired"].files == ["images/extra.png"]
    assert "extra.png" in codes["unpaired"].message
    assert len(report.unreadable) == 1 and "002.png" in report.unreadable[0]
    assert report.num_pairs == 5 and report.num_checked == 4 and report.exit_code == 2
    text = report.format()
    assert "extra.png" in text and "002.png" in text and "ERROR" in text
    assert main(["check-data", str(data)]) == 2


def test_check_data_unpaired_mask_only_is_an_error(tmp_path):
    data = zf_unet.data.write_synthetic_folder(tmp_path / "d", n=5, size=32, seed=3)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(data / "masks" / "lonely.png")
    report = check_data(data)
    assert [p.code for p in report.problems if p.severity == "error"] == ["unpaired"]
    assert report.exit_code == 1 and report.num_checked == 5
