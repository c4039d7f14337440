"""zf-unet predict / evaluate and the ISBI-style evaluation helpers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import zf_unet
from zf_unet.cli import main
from zf_unet.evaluation import evaluate_arrays, split_for


def test_evaluate_arrays_perfect_and_inverted():
    _, masks = zf_unet.data.make_synthetic(2, 48, seed=0)
    truth = [m[..., 0] for m in masks]
    perfect = evaluate_arrays([t.astype(np.float32) for t in truth], truth, thresholds=[0.5])
    b = perfect["best"]
    assert b["pixel_error"] == 0 and b["rand_error"] == pytest.approx(0, abs=1e-12)
    assert b["dice_foreground"] == 1 and b["iou_background"] == 1
    noisy = [np.clip(t + np.random.default_rng(0).normal(0, 0.3, t.shape), 0, 1) for t in truth]
    res = evaluate_arrays(noisy, truth, thresholds=[0.3, 0.5, 0.7])
    assert len(res["per_threshold"]) == 3
    assert res["best"]["rand_error"] == min(r["rand_error"] for r in res["per_threshold"])
    assert 0 < res["best"]["pixel_error"] < 0.5


def test_split_follows_training_config():
    from zf_unet.config import Config
    from zf_unet.data.loaders import load_source

    x, y = zf_unet.data.make_synthetic(6, 16, seed=0)
    data = load_source((x, y))
    cfg = Config().override(["data.val_indices=[4, 5]"])
    assert split_for(data, "val", cfg).names == ["array[4]", "array[5]"]
    assert len(split_for(data, "train", cfg)) == 4
    assert len(split_for(data, "all", cfg)) == 6


def test_cli_predict_files_folders_and_stacks(tmp_path, tiny_model_path):
    folder = zf_unet.data.write_synthetic_folder(tmp_path / "d", n=2, size=40)
    stack = (np.random.default_rng(0).random((3, 37, 50)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "pred"
    assert main(["predict", str(folder / "images"), str(tmp_path / "stack.tif"),
                 "--model", str(tiny_model_path), "--out", str(out), "--tile-size", "32",
                 "--overlap", "8"]) == 0
    mask = np.asarray(Image.open(out / "000_mask.png"))
    assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 255}
    probs = tifffile.imread(out / "stack_prob.tif")
    assert probs.shape == (3, 37, 50, 1) and probs.dtype == np.float32
    assert tifffile.imread(out / "stack_mask.tif").shape == (3, 37, 50)
    assert (out / "stack_overlay.png").exists() and (out / "001_overlay.png").exists()


def test_cli_predict_and_evaluate_errors(tmp_path, tiny_model_path, capsys):
    assert main(["predict", str(tmp_path / "nope.png"), "--model", str(tiny_model_path)]) == 2
    assert "nope.png" in capsys.readouterr().err
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    assert main(["predict", str(tmp_path), "--model", str(bad)]) == 2
    assert "bad.keras" in capsys.readouterr().err


def test_cli_evaluate_prints_isbi_scores(tmp_path, tiny_model_path, capsys):
    folder = zf_unet.data.write_synthetic_folder(tmp_path / "d", n=3, size=32)
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tiny_model_path), "--data", str(folder),
                 "--val-indices", "1,2", "--tile-size", "32", "--overlap", "8", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "Rand error" in text and "2 image(s)" in text
    result = json.loads(out_json.read_text())
    assert 0 <= result["best"]["pixel_error"] <= 1 and result["images"] == ["001.png", "002.png"]


def test_cli_reports_bad_arguments_without_traceback(tmp_path, tiny_model_path, capsys):
    folder = zf_unet.data.write_synthetic_folder(tmp_path / "d", n=1, size=32)
    assert main(["predict", str(folder / "images"), "--model", str(tiny_model_path),
                 "--tile-size", "32", "--overlap", "64"]) == 2
    err = capsys.readouterr().err
    assert "overlap=64" in err and "Traceback" not in err
