"""Evaluation and prediction for models with several classes (Step 9).

* ``evaluate`` of a K-class model: a confusion matrix summed over all images, void pixels left
  out, and its per-class scores; CSV + PNG of the matrix; the CLI table;
* ``--split auto``: every image of a folder that is not the run's training source, the
  held-out images of the training source;
* ``predict`` of a K-class model: an overlay with one colour per class and a legend strip,
  ``--palette`` and ``--no-prob``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import zf_unet
from zf_unet.cli import main
from zf_unet.config import Config
from zf_unet.evaluation import evaluate_model, resolve_split, save_confusion
from zf_unet.file_prediction import predict_files
from zf_unet.inference import predict_tiled
from zf_unet.models import load_model_file
from zf_unet.io_utils import save_model_atomic
from zf_unet.plots import class_colors

K, VOID, TILE = 3, 255, ["--tile-size", "32", "--overlap", "8"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("m") / "k3.keras"
    return save_model_atomic(zf_unet.build_unet((None, None, 1), num_classes=K, depth=2,
                                                filters=4), path)


@pytest.fixture(scope="module")
def model(model_path: Path):
    return load_model_file(model_path)


def write_folder(root: Path, n: int = 3, size: int = 24, seed: int = 0,
                 void_value: int = VOID) -> Path:
    """``images/00i.png`` + ``masks/00i.png`` with class ids 0..2 and a void border band."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + 4 * i), dtype=np.uint8)).save(
            root / "images" / f"{i:03d}.png")
        mask = rng.integers(0, K, (size, size + 4 * i)).astype(np.uint8)
        mask[:3] = void_value
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def _numpy_scores(model, folder: Path, names: list[str]) -> tuple[np.ndarray, dict]:
    cm = np.zeros((K, K), np.int64)
    for name in names:
        img = np.asarray(Image.open(folder / "images" / name))[..., None]
        truth = np.asarray(Image.open(folder / "masks" / name)).astype(np.int64)
        pred = np.argmax(predict_tiled(model, img, tile_size=32, overlap=8), axis=-1)
        keep = truth != VOID
        for t in range(K):
            for p in range(K):
                cm[t, p] += int(np.sum((truth[keep] == t) & (pred[keep] == p)))
    tp = np.diag(cm).astype(float)
    t_n, p_n = cm.sum(1).astype(float), cm.sum(0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (t_n + p_n - tp)
        scores = {"iou": iou, "dice": 2 * tp / (t_n + p_n), "precision": tp / p_n,
                  "recall": tp / t_n, "support": t_n,
                  "miou": np.nanmean(iou), "pixel_accuracy": tp.sum() / cm.sum(),
                  "mean_class_accuracy": np.nanmean(tp / t_n)}
    return cm, scores


def test_multiclass_scores_equal_numpy_and_void_pixels_do_not_count(tmp_path, model, model_path):
    folder = write_folder(tmp_path / "d")
    result = evaluate_model(model_path, folder, split="all", tile_size=32, overlap=8,
                            ignore_index=VOID)
    names = ["000.png", "001.png", "002.png"]
    assert result["kind"] == "multiclass" and result["images"] == names
    cm, expect = _numpy_scores(model, folder, names)
    np.testing.assert_array_equal(np.asarray(result["confusion"]), cm)
    assert result["pixels"] == cm.sum() and result["ignore_index"] == VOID
    for key in ("iou", "dice", "precision", "recall", "support"):
        np.testing.assert_allclose(result[key], expect[key], rtol=1e-12)
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
        assert result[key] == pytest.approx(float(expect[key]), rel=1e-12)
    # a loaded model scores the same as its file
    same = evaluate_model(model, folder, split="all", tile_size=32, overlap=8,
                          ignore_index=VOID)
    assert same["confusion"] == result["confusion"]


def test_mask_values_at_void_pixels_change_nothing(tmp_path, model):
    """Whatever labels lie under the void band, once it is void they are left out: a mask
    with the band relabelled (not void) adds exactly the band's pixels to the matrix."""
    a = write_folder(tmp_path / "a")
    ra = evaluate_model(model, a, split="all", tile_size=32, overlap=8, ignore_index=VOID)
    band = np.zeros((K, K), np.int64)
    for name in ("000.png", "001.png", "002.png"):
        m = np.asarray(Image.open(a / "masks" / name)).copy()
        img = np.asarray(Image.open(a / "images" / name))[..., None]
        pred = np.argmax(predict_tiled(model, img, tile_size=32, overlap=8), axis=-1)
        m[:3] = 2  # relabel the void band as class 2: now it counts ...
        np.add.at(band, (m[:3].ravel(), pred[:3].ravel()), 1)
        Image.fromarray(m).save(a / "masks" / name)
    rb = evaluate_model(model, a, split="all", tile_size=32, overlap=8, ignore_index=VOID)
    np.testing.assert_array_equal(np.asarray(rb["confusion"]) - np.asarray(ra["confusion"]),
                                  band)
    # ... and with an ignore value that matches nothing, the same data scores like rb
    rc = evaluate_model(model, a, split="all", tile_size=32, overlap=8, ignore_index=-1)
    assert rc["confusion"] == rb["confusion"] and rc["ignore_index"] is None


def test_confusion_csv_and_png(tmp_path, model):
    folder = write_folder(tmp_path / "d", n=2)
    result = evaluate_model(model, folder, split="all", tile_size=32, overlap=8,
                            ignore_index=VOID)
    csv_path, png_path = save_confusion(result, tmp_path / "out" / "cm")
    assert csv_path.name == "cm.csv" and png_path.name == "cm.png"
    table = np.loadtxt(csv_path, delimiter=",", skiprows=1, dtype=np.int64)
    np.testing.assert_array_equal(table[:, 0], np.arange(K))
    np.testing.assert_array_equal(table[:, 1:], np.asarray(result["confusion"]))
    assert Image.open(png_path).size[0] > 50
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_cli_multiclass_table_json_and_confusion_files(tmp_path, model_path, capsys):
    folder = write_folder(tmp_path / "d")
    out_json = tmp_path / "r" / "eval.json"
    assert main(["evaluate", "--model", str(model_path), "--data", str(folder),
                 "--ignore-index", str(VOID), "--json", str(out_json), *TILE]) == 0
    text = capsys.readouterr().out
    assert "3 image(s), split=all" in text and "mIoU" in text and "precision" in text
    assert "void value 255 left out" in text
    assert all(f"\n{c:>5}  " in text for c in range(K))
    result = json.loads(out_json.read_text())
    assert result["kind"] == "multiclass" and len(result["iou"]) == K
    table = np.loadtxt(tmp_path / "r" / "eval_confusion.csv", delimiter=",", skiprows=1,
                       dtype=np.int64)
    np.testing.assert_array_equal(table[:, 1:], np.asarray(result["confusion"]))
    assert (tmp_path / "r" / "eval_confusion.png").is_file()
    # --confusion PREFIX instead of the JSON's name; --num-classes must match the model
    assert main(["evaluate", "--model", str(model_path), "--data", str(folder),
                 "--ignore-index", str(VOID), "--confusion", str(tmp_path / "c" / "m"),
                 *TILE]) == 0
    assert (tmp_path / "c" / "m.csv").is_file() and (tmp_path / "c" / "m.png").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_path), "--data", str(folder),
                 "--num-classes", "4", *TILE]) == 2
    assert "outputs 3 class" in capsys.readouterr().err
    # void pixels unknown to the run: 255 is no class id of a 3-class model
    assert main(["evaluate", "--model", str(model_path), "--data", str(folder), *TILE]) == 2
    assert "255" in capsys.readouterr().err


def _run_folder(tmp_path: Path, model_path: Path, source: Path, **data) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    model = run / "best.keras"
    model.write_bytes(model_path.read_bytes())
    cfg = Config().override([f"data.source={json.dumps(str(source))}",
                             "data.val_indices=[1]", f"data.ignore_index={VOID}",
                             f"data.num_classes={K}"]
                            + [f"data.{k}={json.dumps(v)}" for k, v in data.items()])
    (run / "config.toml").write_text(cfg.to_toml())
    (run / "resolved.json").write_text(json.dumps({"num_classes": K, "ignore_index": VOID}))
    return model


def test_split_auto_rule_both_ways(tmp_path, model_path, capsys):
    train = write_folder(tmp_path / "train")
    other = write_folder(tmp_path / "other", n=2, seed=1)
    model = _run_folder(tmp_path, model_path, train, val_source=str(other))
    # the training source: the held-out image only (val_indices=[1]); void from the run
    res = evaluate_model(model, train, tile_size=32, overlap=8)
    assert res["split"] == "val" and res["images"] == ["001.png"]
    assert res["ignore_index"] == VOID
    # the same folder named differently is still the source; no run config: all
    cfg = Config.from_toml(model.parent / "config.toml")
    assert resolve_split("auto", str(train / "images" / ".."), cfg) == "val"
    assert resolve_split("auto", train, None) == "all"
    assert resolve_split("auto", train, None, val_indices_given=True) == "val"
    # any other folder, here the run's val_source: all of it
    res = evaluate_model(model, other, tile_size=32, overlap=8)
    assert res["split"] == "all" and res["images"] == ["000.png", "001.png"]
    # explicit splits are kept
    assert evaluate_model(model, train, split="all", tile_size=32,
                          overlap=8)["images"] == ["000.png", "001.png", "002.png"]
    assert evaluate_model(model, train, split="train", tile_size=32,
                          overlap=8)["images"] == ["000.png", "002.png"]
    # the CLI: default --split auto, both ways
    assert main(["evaluate", "--model", str(model), "--data", str(train), *TILE]) == 0
    assert "1 image(s), split=val" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(model), "--data", str(other), *TILE]) == 0
    assert "2 image(s), split=all" in capsys.readouterr().out
    # --ignore-index -1 overrides the run's void value: 255 is then a bad class id
    assert main(["evaluate", "--model", str(model), "--data", str(other),
                 "--ignore-index", "-1", *TILE]) == 2
    capsys.readouterr()


def test_predict_overlay_legend_palette_and_no_prob(tmp_path, model, model_path, capsys):
    folder = write_folder(tmp_path / "d", n=1)
    img = folder / "images" / "000.png"
    written = predict_files(model, [img], tmp_path / "p", tile_size=32, overlap=8)
    names = sorted(p.name for p in written)
    assert names == ["000_mask.png", "000_overlay.png", "000_prob.tif"]
    mask = np.asarray(Image.open(tmp_path / "p" / "000_mask.png"))
    assert mask.dtype == np.uint8 and mask.max() < K
    assert tifffile.imread(tmp_path / "p" / "000_prob.tif").shape == (24, 24, K)
    ov = np.asarray(Image.open(tmp_path / "p" / "000_overlay.png").convert("RGB"))
    assert ov.shape[0] > 24 and ov.shape[1] >= 24  # image + legend strip below
    legend = ov[24:]
    for c in class_colors(K):  # every class colour appears as a swatch in the legend
        assert np.all(legend == c, axis=-1).sum() >= 50
    # --palette with hex colours, --no-prob
    pal = "#ff0000,#00ff00,#0000ff"
    assert main(["predict", str(img), "--model", str(model_path), "--out", str(tmp_path / "q"),
                 "--palette", pal, "--no-prob", *TILE]) == 0
    assert sorted(p.name for p in (tmp_path / "q").iterdir()
                  if not p.name.startswith(".")) == ["000_mask.png",
                                                                 "000_overlay.png"]
    ov = np.asarray(Image.open(tmp_path / "q" / "000_overlay.png").convert("RGB"))
    for c in ([255, 0, 0], [0, 255, 0], [0, 0, 255]):
        assert np.all(ov[24:] == c, axis=-1).sum() >= 50
    # the overlay itself blends each pixel with its class colour
    gray = np.asarray(Image.open(img)).astype(np.float32) / 255
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.float32) / 255
    expect = (0.55 * gray[..., None] + 0.45 * cols[mask]) * 255
    assert np.abs(ov[:24, :24].astype(np.float32) - expect).max() <= 1.0
    # a colormap name; bad palettes are refused before anything is written
    assert main(["predict", str(img), "--model", str(model_path), "--out", str(tmp_path / "r"),
                 "--palette", "viridis", *TILE]) == 0
    for bad in ("#ff0000,#00ff00", "no_such_map", "#zzzzzz,#00ff00,#0000ff"):
        assert main(["predict", str(img), "--model", str(model_path), "--out",
                     str(tmp_path / "s"), "--palette", bad, *TILE]) == 2
        assert "palette" in capsys.readouterr().err
        assert not (tmp_path / "s").exists()
