"""Seeded watershed cells (zf_unet.watershed_cells), `predict --cells`,
`evaluate --segmentation`."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

import zf_unet
from zf_unet import metrics as M
from zf_unet.cli import main
from zf_unet.evaluation import evaluate_arrays
from zf_unet.io_utils import save_model_atomic


def two_cells_with_a_gap(gap: int = 1):
    """Two 20x20 cells side by side; the membrane between them (column 20) has a hole."""
    truth = np.ones((20, 41), np.uint8)
    truth[:, 20] = 0
    prob = np.where(truth > 0, 0.95, 0.05).astype(np.float32)
    prob[9 : 9 + gap, 20] = 0.6  # a faint stretch: above 0.5, so thresholding merges
    return prob, truth


def test_gap_merges_components_but_not_watershed_cells():
    prob, truth = two_cells_with_a_gap()
    assert M.label_cells(prob, 0.5).max() == 1  # one merged component
    cells = zf_unet.watershed_cells(prob, seed_threshold=0.8)
    assert cells.dtype == np.int32 and cells.shape == truth.shape
    assert set(np.unique(cells)) == {1, 2}  # every pixel assigned, two cells
    left, right = cells[:, :20], cells[:, 21:]
    assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1 and left[0, 0] != right[0, 0]
    assert M.rand_error(cells, truth, pred_is_labels=True) == pytest.approx(0.0, abs=1e-12)
    assert M.rand_error(prob, truth, 0.5) == pytest.approx(1 / 3)  # precision 1/2, recall 1


def test_mask_threshold_small_seeds_and_no_seeds():
    prob, _ = two_cells_with_a_gap()
    masked = zf_unet.watershed_cells(prob, seed_threshold=0.8, mask_threshold=0.5)
    assert np.all(masked[prob <= 0.5] == 0) and np.all(masked[prob > 0.5] > 0)
    speck = np.full((30, 30), 0.1, np.float32)
    speck[5:8, 5:8] = 0.9  # 9-px seed
    speck[15:25, 15:25] = 0.9  # 100-px seed
    cells = zf_unet.watershed_cells(speck, seed_threshold=0.8, min_seed_size=20)
    assert cells.max() == 1 and cells[6, 6] == 1  # the speck joined the big seed's flood
    assert zf_unet.watershed_cells(speck, min_seed_size=10).max() == 1
    assert zf_unet.watershed_cells(speck, min_seed_size=5).max() == 2
    assert not zf_unet.watershed_cells(np.full((8, 8), 0.3, np.float32)).any()
    assert zf_unet.watershed_cells(prob[..., None]).max() == 2  # (H, W, 1) accepted


@pytest.mark.parametrize("prob, kwargs, match", [
    (np.zeros((2, 3, 4), np.float32), {}, "2-D"),
    (np.full((4, 4), np.nan, np.float32), {}, "finite"),
    (np.zeros((4, 4), np.uint8), {}, "float"),
    (np.zeros((4, 4), bool), {}, "not labels"),
    (np.zeros((4, 4), np.float32), {"seed_threshold": 0.5, "mask_threshold": 0.6}, "below"),
    (np.zeros((4, 4), np.float32), {"seed_threshold": 1.5}, "seed_threshold"),
    (np.zeros((4, 4), np.float32), {"mask_threshold": 0.0}, "mask_threshold"),
    (np.zeros((4, 4), np.float32), {"min_seed_size": 0}, "min_seed_size"),
])
def test_bad_arguments_are_named(prob, kwargs, match):
    with pytest.raises(ValueError, match=match):
        zf_unet.watershed_cells(prob, **kwargs)


def test_evaluate_arrays_with_watershed_segmentation():
    prob, truth = two_cells_with_a_gap()
    ths = (0.5, 0.7, 0.9)
    plain = evaluate_arrays([prob], [truth], ths)
    ws = evaluate_arrays([prob], [truth], ths, segmentation="watershed")
    assert plain["best"]["segmentation"] == "threshold"
    assert ws["best"]["segmentation"] == "watershed"
    assert ws["best"]["rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert plain["per_threshold"][0]["rand_error"] == pytest.approx(1 / 3)  # 0.5 merges them
    assert ws["best"]["pixel_error"] == plain["best"]["pixel_error"]  # pixel scores the same
    with pytest.raises(zf_unet.errors.ConfigError, match="segmentation"):
        evaluate_arrays([prob], [truth], segmentation="graphcut")


def test_cli_predict_cells_for_an_image_and_a_stack(tmp_path, tiny_model_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 30), dtype=np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "s.tif", rng.integers(0, 255, (3, 40, 40), dtype=np.uint8),
                     photometric="minisblack")
    out = tmp_path / "pred"
    rc = main(["predict", str(tmp_path / "a.png"), str(tmp_path / "s.tif"), "--model",
               str(tiny_model_path), "--out", str(out), "--cells", "--seed-threshold", "0.5"])
    assert rc == 0
    one = tifffile.imread(out / "a_cells.tif")
    stack = tifffile.imread(out / "s_cells.tif")
    assert one.shape == (24, 30) and one.dtype == np.uint32
    assert stack.shape == (3, 40, 40) and stack.dtype == np.uint32
    prob = tifffile.imread(out / "a_prob.tif")[..., 0]
    np.testing.assert_array_equal(one, zf_unet.watershed_cells(prob, seed_threshold=0.5))
    capsys.readouterr()
    # Without --cells nothing extra is written; a bad seed threshold is one clear line.
    rc = main(["predict", str(tmp_path / "a.png"), "--model", str(tiny_model_path), "--out",
               str(tmp_path / "p2")])
    assert rc == 0 and not (tmp_path / "p2" / "a_cells.tif").exists()
    rc = main(["predict", str(tmp_path / "a.png"), "--model", str(tiny_model_path), "--out",
               str(tmp_path / "p3"), "--cells", "--seed-threshold", "2"])
    assert rc == 2  # argparse: one error line, exit 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "--seed-threshold" in err and "expected a value between 0 and 1, got 2" in err
    assert "Traceback" not in err
    rc = main(["predict", str(tmp_path / "a.png"), "--model", str(tiny_model_path), "--out",
               str(tmp_path / "p3"), "--seed-threshold", "0.7"])
    assert rc == 2 and "--seed-threshold only applies with --cells" in capsys.readouterr().err
    assert not (tmp_path / "p3").exists()


def test_cli_predict_cells_refuses_multiclass_models(tmp_path, capsys):
    path = tmp_path / "mc.keras"
    save_model_atomic(zf_unet.build_unet((None, None, 1), depth=2, filters=4, num_classes=3), path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    rc = main(["predict", str(tmp_path / "a.png"), "--model", str(path), "--out",
               str(tmp_path / "p"), "--cells"])
    assert rc == 2
    assert "binary (1-class) model" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # refused before anything was written


def test_cli_evaluate_watershed(tmp_path, tiny_model_path, capsys):
    images, masks = zf_unet.data.make_synthetic(2, 32, seed=1)
    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for i, (img, m) in enumerate(zip(images, masks)):
        name = f"{i}.png"
        Image.fromarray((img[..., 0] * 255).astype(np.uint8)).save(tmp_path / "d/images" / name)
        Image.fromarray((m[..., 0] > 0).astype(np.uint8) * 255).save(tmp_path / "d/masks" / name)
    rc = main(["evaluate", "--model", str(tiny_model_path), "--data", str(tmp_path / "d"),
               "--split", "all", "--segmentation", "watershed",
               "--json", str(tmp_path / "r.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cells: seeded watershed" in out and "pixel error (1 - F-score)" in out
    import json

    best = json.loads((tmp_path / "r.json").read_text())["best"]
    assert best["segmentation"] == "watershed" and 0 <= best["rand_error"] <= 1
