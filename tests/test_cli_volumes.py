"""`zf-unet predict` / `evaluate` / `export` with volume (3-D) models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

import zf_unet
from zf_unet.cli import main
from zf_unet.inference import predict_tiled
from zf_unet.io_utils import save_model_atomic

SHAPE = (5, 40, 36)


def _model(num_classes: int, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return zf_unet.build_unet((None, None, None, 1), num_classes=num_classes, depth=3,
                              filters=2, pool_sizes=[(1, 2, 2), (1, 2, 2)])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 3-class and a binary volume model, saved as .keras, and a 2-D model."""
    root = tmp_path_factory.mktemp("models")
    multi, binary = _model(3, 1), _model(1, 2)
    image_model = zf_unet.build_unet((None, None, 1), depth=2, filters=2)
    paths = {name: save_model_atomic(m, root / f"{name}.keras")
             for name, m in (("multi", multi), ("binary", binary), ("image", image_model))}
    return {"multi": multi, "binary": binary}, paths


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for needle in needles:
        assert needle in err, err
    return err


def test_predict_volume_files_npy_and_slice_folder(tmp_path, models, volume, capsys):
    model, paths = models[0]["multi"], models[1]
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    np.save(tmp_path / "vol.npy", volume)
    slices = tmp_path / "slices"
    slices.mkdir()
    from PIL import Image

    for z in range(SHAPE[0]):
        Image.fromarray(volume[z]).save(slices / f"s{z + 1}.png")  # s10 sorts naturally
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "stack.tif"), str(tmp_path / "vol.npy"), str(slices),
                 "--model", str(paths["multi"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "volume" in printed and "wrote 6 files" in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "slices_mask.tif", "slices_prob.tif", "stack_mask.tif", "stack_prob.tif",
        "vol_mask.tif", "vol_prob.tif"]
    probs = predict_tiled(model, volume)
    expected = np.argmax(probs, -1).astype(np.uint8)
    for name in ("stack", "vol", "slices"):
        mask = tifffile.imread(out / f"{name}_mask.tif")
        assert mask.shape == SHAPE and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected)
        prob = tifffile.imread(out / f"{name}_prob.tif")
        assert prob.shape == SHAPE + (3,) and prob.dtype == np.float32
        np.testing.assert_allclose(prob, probs, atol=1e-6)


def test_per_axis_tiles_equal_the_python_call(tmp_path, models, volume):
    model, paths = models[0]["binary"], models[1]
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "stack.tif"), "--model", str(paths["binary"]),
                 "--out", str(out), "--tile-size", "4,16,16", "--overlap", "1,4,4",
                 "--no-prob", "--threshold", "0.5"]) == 0
    probs = predict_tiled(model, volume, tile_size=(4, 16, 16), overlap=(1, 4, 4))
    mask = tifffile.imread(out / "stack_mask.tif")
    assert mask.shape == SHAPE and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, (probs[..., 0] > 0.5).astype(np.uint8) * 255)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["stack_mask.tif"]


def test_cli_tile_values_are_parsed_and_checked():
    from zf_unet.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["predict", "x.tif", "--model", "m.keras", "--tile-size",
                              "16,256,256", "--overlap", "2, 8, 8"])
    assert args.tile_size == (16, 256, 256) and args.overlap == (2, 8, 8)
    args = parser.parse_args(["predict", "x.tif", "--model", "m.keras", "--tile-size", "96"])
    assert args.tile_size == 96 and isinstance(args.overlap, int)


@pytest.mark.parametrize("flags, needle", [
    (["--tile-size", "0,16,16"], "--tile-size"),
    (["--tile-size", "16,a,16"], "--tile-size"),
    (["--overlap", "-1"], "--overlap"),
    (["--tile-size", "4,4,16,16"], "--tile-size"),
    (["--tile-size", "16,16"], "--tile-size"),  # 2 values for a model with 3 spatial axes
    (["--overlap", "4,4"], "--overlap"),
])
def test_bad_tile_values_are_one_line_naming_the_flag(tmp_path, models, volume, flags, needle,
                                                      capsys):
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "stack.tif"), "--model", str(models[1]["binary"]),
                 "--out", str(out), *flags]) == 2
    _one_line_error(capsys, needle)
    assert not out.exists()


def test_wrong_inputs_are_one_line_errors_naming_the_file(tmp_path, models, volume, capsys):
    from PIL import Image

    paths = models[1]
    png = tmp_path / "image.png"
    Image.fromarray(volume[0]).save(png)
    single = tmp_path / "page.tif"
    tifffile.imwrite(single, volume[0], photometric="minisblack")
    out = tmp_path / "pred"
    for bad in (png, single):  # a 2-D image given to a volume model
        assert main(["predict", str(bad), "--model", str(paths["binary"]), "--out",
                     str(out)]) == 2
        _one_line_error(capsys, str(bad))
    np.save(tmp_path / "vol.npy", volume)  # a volume given to a 2-D image model
    assert main(["predict", str(tmp_path / "vol.npy"), "--model", str(paths["image"]),
                 "--out", str(out)]) == 2
    _one_line_error(capsys, str(tmp_path / "vol.npy"))
    rgb = tmp_path / "rgb.npy"  # channels that do not fit the model
    np.save(rgb, np.zeros(SHAPE + (3,), np.uint8))
    assert main(["predict", str(rgb), "--model", str(paths["binary"]), "--out", str(out)]) == 2
    _one_line_error(capsys, str(rgb))
    # 2-D only outputs, asked for explicitly, are refused
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    assert main(["predict", str(tmp_path / "stack.tif"), "--model", str(paths["binary"]),
                 "--out", str(out), "--cells"]) == 2
    _one_line_error(capsys, "cells")
    assert main(["predict", str(tmp_path / "stack.tif"), "--model", str(paths["multi"]),
                 "--out", str(out), "--palette", "tab10"]) == 2
    _one_line_error(capsys, "palette")
    assert not out.exists()


def test_volume_outputs_are_not_overwritten_unless_asked(tmp_path, models, volume, capsys):
    paths = models[1]
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, volume, photometric="minisblack")
    out = tmp_path / "pred"
    args = ["predict", str(stack), "--model", str(paths["binary"]), "--out", str(out)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tifffile.imwrite(stack, 255 - volume, photometric="minisblack")
    assert main(args) == 2
    _one_line_error(capsys, "--overwrite", "stack_mask.tif")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(args + ["--overwrite"]) == 0
    assert (out / "stack_prob.tif").read_bytes() != before["stack_prob.tif"]
    # an output that would replace an input volume, and --out inside a folder of slices
    tifffile.imwrite(out / "stack_mask_prob.tif", volume, photometric="minisblack")
    capsys.readouterr()
    assert main(["predict", str(out / "stack_mask_prob.tif"), str(out / "stack_mask.tif"),
                 "--model", str(paths["binary"]), "--out", str(out), "--overwrite"]) == 2
    _one_line_error(capsys, "is an input")
    slices = tmp_path / "slices"
    slices.mkdir()
    from PIL import Image

    for z in range(3):
        Image.fromarray(volume[z]).save(slices / f"{z}.png")
    assert main(["predict", str(slices), "--model", str(paths["binary"]), "--out",
                 str(slices)]) == 2
    _one_line_error(capsys, str(slices), "--out")
    assert sorted(p.name for p in slices.iterdir()) == ["0.png", "1.png", "2.png"]


def _confusion(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (truth.ravel().astype(int), pred.ravel().astype(int)), 1)
    return cm


def test_evaluate_volumes_matches_a_numpy_confusion_matrix(tmp_path, models, volume, capsys):
    model, paths = models[0]["multi"], models[1]
    rng = np.random.default_rng(1)
    truths = {"a": rng.integers(0, 3, SHAPE, dtype=np.uint8),
              "b": rng.integers(0, 3, (4, 24, 32), dtype=np.uint8)}
    images = {"a": volume, "b": rng.integers(0, 256, (4, 24, 32), dtype=np.uint8)}
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks" / "b").mkdir(parents=True)
    tifffile.imwrite(data / "images" / "a.tif", images["a"], photometric="minisblack")
    tifffile.imwrite(data / "masks" / "a.tif", truths["a"], photometric="minisblack")
    np.save(data / "images" / "b.npy", images["b"])
    from PIL import Image

    for z in range(4):  # b's mask volume as a folder of slices
        Image.fromarray(truths["b"][z]).save(data / "masks" / "b" / f"{z}.png")
    js = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(paths["multi"]), "--data", str(data),
                 "--json", str(js), "--tile-size", "4,16,16", "--overlap", "1,4,4"]) == 0
    printed = capsys.readouterr().out
    assert "2 volume(s)" in printed and "Rand" in printed and "note:" in printed
    cm = sum(_confusion(truths[n], np.argmax(predict_tiled(
        model, images[n], tile_size=(4, 16, 16), overlap=(1, 4, 4)), -1), 3) for n in "ab")
    result = json.loads(js.read_text())
    assert result["confusion"] == cm.tolist() and result["images"] == ["a", "b"]
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    np.testing.assert_allclose(result["iou"], iou, rtol=1e-12)
    np.testing.assert_allclose(result["miou"], iou.mean(), rtol=1e-12)
    np.testing.assert_allclose(result["dice"], 2 * tp / (cm.sum(0) + cm.sum(1)), rtol=1e-12)
    assert (tmp_path / "eval_confusion.csv").exists()

    # a binary model on one image / mask volume pair (--data + --masks): p > 0.5, 2 classes
    mask = (truths["a"] > 0).astype(np.uint8) * 255
    tifffile.imwrite(tmp_path / "m.tif", mask, photometric="minisblack")
    js2 = tmp_path / "bin.json"
    assert main(["evaluate", "--model", str(paths["binary"]), "--data",
                 str(data / "images" / "a.tif"), "--masks", str(tmp_path / "m.tif"),
                 "--json", str(js2)]) == 0
    assert "note:" in capsys.readouterr().out
    pred = predict_tiled(models[0]["binary"], volume)[..., 0] > 0.5
    cm = _confusion(mask > 0, pred, 2)
    result = json.loads(js2.read_text())
    assert result["confusion"] == cm.tolist() and result["num_classes"] == 2
    tp = np.diag(cm)
    np.testing.assert_allclose(result["iou"], tp / (cm.sum(0) + cm.sum(1) - tp), rtol=1e-12)

    # 2-D only options asked for explicitly are refused
    assert main(["evaluate", "--model", str(paths["binary"]), "--data",
                 str(data / "images" / "a.tif"), "--masks", str(tmp_path / "m.tif"),
                 "--segmentation", "watershed"]) == 2
    _one_line_error(capsys, "segmentation")

    # a mask volume of another size: one line naming the mask
    tifffile.imwrite(tmp_path / "short.tif", mask[:3], photometric="minisblack")
    assert main(["evaluate", "--model", str(paths["binary"]), "--data",
                 str(data / "images" / "a.tif"), "--masks", str(tmp_path / "short.tif")]) == 2
    _one_line_error(capsys, "short.tif")


def test_export_tiled_volume_saved_model_and_refusals(tmp_path, models, volume, capsys):
    import tensorflow as tf

    model, paths = models[0]["multi"], models[1]
    out = tmp_path / "serving"
    assert main(["export", "--model", str(paths["multi"]), "--out", str(out), "--tiled",
                 "--tile-size", "8,32,32", "--overlap", "2,8,8"]) == 0
    sig = tf.saved_model.load(str(out / "1")).signatures["serving_default"]
    got = sig(image=tf.constant(volume[None, ..., None]))
    expected = predict_tiled(model, volume, tile_size=(8, 32, 32), overlap=(2, 8, 8))
    np.testing.assert_allclose(got["probabilities"].numpy()[0], expected, atol=1e-5)
    capsys.readouterr()
    for fmt, target in (("tflite", "m.tflite"), ("onnx", "m.onnx")):
        assert main(["export", "--model", str(paths["multi"]), "--out", str(tmp_path / target),
                     "--format", fmt]) == 2
        _one_line_error(capsys, f"--format {fmt}", "saved_model")
        assert not (tmp_path / target).exists()
    assert main(["export", "--model", str(paths["multi"]), "--out", str(tmp_path / "s2"),
                 "--tiled", "--tile-size", "32,32"]) == 2
    _one_line_error(capsys, "--tile-size")
