"""Every bad input gets one clear error, through the Python API and through the CLI.

One table (``CASES``): each case builds a bad input in a fresh folder, next to files a user
already has (a run folder, earlier predictions, an export, a JSON report). The test then

* calls the public Python API and checks the error type, that the message names the file or
  argument, and that it says what was expected;
* runs the same input through ``zf_unet.cli.main`` and checks exit code 2, exactly one line
  on stderr with the same information, and no traceback;
* checks that the files the user already had are byte-identical afterwards.

A few cases also run through the installed ``zf-unet`` console script in a subprocess, where
stderr must be exactly one line (TensorFlow's start-up banner included).

``python tests/test_bad_inputs.py`` prints the table of docs/reliability.md.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import tifffile
from PIL import Image

import zf_unet
from zf_unet.cli import main
from zf_unet.config import Config
from zf_unet.errors import (ConfigError, DataError, NonFiniteOutputError, OutputExistsError,
                            ZFUNetError)
from zf_unet.evaluation import evaluate_model
from zf_unet.file_prediction import predict_files
from zf_unet.models import load_model_file
from zf_unet.io_utils import save_model_atomic
from zf_unet.losses import DiceLoss, WeightedCrossentropy
from zf_unet.metrics import DiceCoefficient

from _folders import snapshot, write_folder

ROOT = Path(__file__).resolve().parent.parent
ZF_UNET = Path(sys.executable).parent / "zf-unet"
# Training never starts in these cases; if one did, this keeps it to a second.
# --fresh: the run folder holds another config, which a resumed run would refuse first.
TINY = ["--set", "model.depth=3", "--set", "model.filters=4", "--epochs", "1", "--quiet",
        "--fresh"]


# --------------------------------------------------------------------------- inputs


@dataclass
class Models:
    """Small saved models shared by the cases (built once per module)."""

    gray: Path       # 1 channel in, 1 class out, depth 3
    rgb: Path        # 3 channels in
    multiclass: Path  # 3 classes out
    dense: Path      # a valid .keras file that is not an image model
    zip: Path        # a zip file named .keras


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return make_models(tmp_path_factory.mktemp("models"))


def make_models(d: Path) -> Models:
    import keras

    keras.utils.set_random_seed(0)
    gray = save_model_atomic(zf_unet.build_unet((None, None, 1), depth=3, filters=4),
                             d / "gray.keras")
    rgb = save_model_atomic(zf_unet.build_unet((None, None, 3), depth=3, filters=4),
                            d / "rgb.keras")
    multi = save_model_atomic(zf_unet.build_unet((None, None, 1), num_classes=3, depth=3,
                                                 filters=4), d / "multiclass.keras")
    inp = keras.Input((8,))
    dense = save_model_atomic(keras.Model(inp, keras.layers.Dense(2)(inp)), d / "dense.keras")
    with zipfile.ZipFile(d / "random.keras", "w") as z:
        z.writestr("notes.txt", "not a model")
    return Models(gray, rgb, multi, dense, d / "random.keras")


def existing_run(tmp: Path, model: Path) -> Path:
    """A run folder as ``zf-unet train`` leaves it (files a failed command must not touch)."""
    run = tmp / "run"
    run.mkdir()
    (run / "config.toml").write_text(Config().override(["train.epochs=2"]).to_toml())
    (run / "log.csv").write_text("epoch,loss,val_dice\n0,0.9,0.5\n1,0.8,0.6\n")
    (run / "best.json").write_text('{"best": 0.6, "epoch": 1, "monitor": "val_dice"}\n')
    shutil.copy(model, run / "best.keras")
    return run


def existing_predictions(tmp: Path, model: Path) -> tuple[Path, Path]:
    """A good image and the output folder of an earlier ``zf-unet predict`` of it."""
    good = tmp / "good.png"
    Image.fromarray(np.full((24, 24), 100, np.uint8)).save(good)
    out = tmp / "predictions"
    out.mkdir()
    for name in ("good_prob.tif", "good_mask.png", "good_overlay.png"):
        (out / name).write_bytes(b"an earlier result " + name.encode())
    return good, out


# --------------------------------------------------------------------------- the table


@dataclass
class Bad:
    """One bad input: how the API and the CLI are called and what the error must say."""

    api: Callable[[], Any]
    error: type[Exception]
    cli: list[str] | None
    names: list[str]   # file or argument names the message must contain
    expect: str        # regex: what was expected (searched case-insensitively)
    guard: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, tuple[str, Callable[[Path, Models], Bad]]] = {}


def case(name: str, what: str) -> Callable:
    def register(fn: Callable[[Path, Models], Bad]) -> Callable[[Path, Models], Bad]:
        CASES[name] = (what, fn)
        return fn
    return register


@case("corrupt_png", "a PNG in images/ that is not an image")
def _corrupt_png(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    (data / "images" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data, patch_size=32), DataError,
               ["train", "--data", str(data), "--out", str(run), "--fresh"] + TINY,
               ["images/001.png"], r"cannot read image .*expected a complete PNG file", [run])


@case("truncated_tiff", "a TIFF cut off in the middle, given to predict")
def _truncated_tiff(tmp: Path, m: Models) -> Bad:
    full = tmp / "full.tif"
    tifffile.imwrite(full, np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    bad = tmp / "cut.tif"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    good, out = existing_predictions(tmp, m.gray)
    model = load_model_file(m.gray)
    return Bad(lambda: predict_files(model, [good, bad], out), DataError,
               ["predict", str(good), str(bad), "--model", str(m.gray), "--out", str(out)],
               ["cut.tif"], r"cannot read TIFF .*expected a complete TIFF file", [out])


@case("size_mismatch", "a mask whose size differs from its image")
def _size_mismatch(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(data / "masks" / "001.png")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.load_folder(data), DataError,
               ["train", "--data", str(data), "--out", str(run)] + TINY,
               ["masks/001.png", "images/001.png"], r"32x30 does not match .*\(32x32\)", [run])


@case("rgb_mask", "an RGB colour mask where class ids are expected")
def _rgb_mask(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data", masks="ids")
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16, :, 0] = 200
    rgb[16:, :, 1] = 90
    Image.fromarray(rgb).save(data / "masks" / "002.png")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data, num_classes=3), DataError,
               ["train", "--data", str(data), "--out", str(run),
                "--set", "data.num_classes=3"] + TINY,
               ["masks/002.png"], r"RGB mask .*no palette.*class ids", [run])


@case("mask_values_outside_classes", "mask values outside 0..K-1 (num_classes=3)")
def _outside(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data", masks="ids")
    mask = np.zeros((32, 32), np.uint8)
    mask[5:9, 5:9] = 7
    Image.fromarray(mask).save(data / "masks" / "000.png")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data, num_classes=3), DataError,
               ["train", "--data", str(data), "--out", str(run),
                "--set", "data.num_classes=3"] + TINY,
               ["masks/000.png", "num_classes=3"], r"\[7\] are outside the class ids 0\.\.2",
               [run])


@case("empty_mask_folder", "masks/ exists but holds no images")
def _empty_masks(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    for f in (data / "masks").iterdir():
        f.unlink()
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.find_pairs(data), DataError,
               ["train", "--data", str(data), "--out", str(run)] + TINY,
               ["masks"], r"no image files; expected files ending in \.png", [run])


@case("mismatched_names", "image and mask file names that do not pair up")
def _names(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    (data / "masks" / "001.png").rename(data / "masks" / "001_mask.png")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data), DataError,
               ["train", "--data", str(data), "--out", str(run)] + TINY,
               ["001.png", "001_mask.png"], r"paired by file name", [run])


@case("nan_in_training_image", "a float32 TIFF training image holding NaN")
def _nan_train(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    for i in range(3):
        (data / "images" / f"{i:03d}.png").unlink()
        img = np.random.default_rng(i).random((32, 32), dtype=np.float32)
        if i == 1:
            img[4, 7] = np.nan
        tifffile.imwrite(data / "images" / f"{i:03d}.tif", img)
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data), DataError,
               ["train", "--data", str(data), "--out", str(run)] + TINY,
               ["images/001.tif", "(4, 7, 0)"], r"NaN or Inf .*expected finite", [run])


@case("nan_in_predict_input", "an image with Inf pixels given to predict")
def _nan_predict(tmp: Path, m: Models) -> Bad:
    img = np.random.default_rng(0).random((20, 20), dtype=np.float32)
    img[3, 4] = np.inf
    bad = tmp / "inf.tif"
    tifffile.imwrite(bad, img)
    good, out = existing_predictions(tmp, m.gray)
    model = load_model_file(m.gray)
    return Bad(lambda: predict_files(model, [good, bad], out), DataError,
               ["predict", str(good), str(bad), "--model", str(m.gray), "--out", str(out)],
               ["inf.tif", "(0, 3, 4, 0)"], r"values must be finite", [out])


@case("wrong_channels_predict", "an RGB image given to a 1-channel model")
def _channels(tmp: Path, m: Models) -> Bad:
    bad = tmp / "colour.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(bad)
    good, out = existing_predictions(tmp, m.gray)
    model = load_model_file(m.gray)
    return Bad(lambda: predict_files(model, [good, bad], out), DataError,
               ["predict", str(good), str(bad), "--model", str(m.gray), "--out", str(out)],
               ["colour.png"], r"C=3 channels, but the model expects 1 channel", [out])


@case("fixed_size_impossible", "a fixed input size the U-Net depth cannot take (30 px, "
      "depth 3); CLI: a TFLite export at 30x30 over an earlier export (--overwrite)")
def _fixed_size(tmp: Path, m: Models) -> Bad:
    out = tmp / "m.tflite"
    out.write_bytes(b"an earlier export")
    return Bad(lambda: zf_unet.build_unet((30, 30, 1), depth=3), ValueError,
               ["export", "--model", str(m.gray), "--out", str(out), "--format", "tflite",
                "--input-size", "30", "30", "--overwrite"],
               ["30"], r"(multiple of 2\*\*\(depth-1\) = 4|accepted: 4 \+ k \* 4).*"
                       r"(N|n)earest.*\[28, 32\]", [out])


@case("patch_size_vs_depth", "a training patch size the model depth cannot take "
      "(patch 20, depth 4)")
def _patch_size(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    sets = ["data.synthetic_n=4", "data.synthetic_size=40", "data.patch_size=20",
            "model.depth=4", "model.filters=4", "train.epochs=1", "train.tensorboard=false"]
    cli = ["train", "--out", str(run), "--quiet", "--fresh"]
    for s in sets:
        cli += ["--set", s]
    return Bad(lambda: zf_unet.train(Config().override(sets), run, fresh=True, verbose=0),
               ConfigError,
               cli, ["data.patch_size = 20"], r"multiple of 2\*\*\(depth-1\) = 8 "
               r"\(nearest: \[16, 24\]\)", [run])


@case("tile_size_too_small", "a tile size below the model's smallest input")
def _tile(tmp: Path, m: Models) -> Bad:
    good, out = existing_predictions(tmp, m.gray)
    model = load_model_file(m.gray)
    return Bad(lambda: zf_unet.predict_tiled(model, np.zeros((9, 9), np.uint8), tile_size=2,
                                             overlap=0), ValueError,
               ["predict", str(good), "--model", str(m.gray), "--out", str(out),
                "--tile-size", "2", "--overlap", "0"],
               ["tile_size=2"], r"smallest accepted input is 4 px", [out])


@case("missing_path", "a data folder that does not exist")
def _missing(tmp: Path, m: Models) -> Bad:
    missing = tmp / "no_such_folder"
    report = tmp / "eval.json"
    report.write_text('{"earlier": true}\n')
    return Bad(lambda: zf_unet.data.make_datasets(missing), DataError,
               ["evaluate", "--model", str(m.gray), "--data", str(missing), "--json",
                str(report), "--overwrite"],
               ["no_such_folder"], r"no such folder; expected a folder with images/ and masks/",
               [report])


@case("missing_model", "a model file that does not exist")
def _missing_model(tmp: Path, m: Models) -> Bad:
    good, out = existing_predictions(tmp, m.gray)
    missing = tmp / "best.keras"
    return Bad(lambda: load_model_file(missing), DataError,
               ["predict", str(good), "--model", str(missing), "--out", str(out)],
               ["best.keras"], r"model file not found \(expected a \.keras file\)", [out])


@case("zip_not_a_model", "a .keras file that is a zip of something else")
def _zip(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    report = tmp / "eval.json"
    report.write_text('{"earlier": true}\n')
    return Bad(lambda: evaluate_model(m.zip, data), DataError,
               ["evaluate", "--model", str(m.zip), "--data", str(data), "--json", str(report)],
               ["random.keras"], r"cannot load as a Keras model; expected a \.keras file "
               r"saved by model\.save\(\)", [report])


@case("not_an_image_model", "a Keras model that is not an image model (Dense), exported")
def _dense(tmp: Path, m: Models) -> Bad:
    out = tmp / "serving"
    (out / "1").mkdir(parents=True)
    (out / "1" / "saved_model.pb").write_bytes(b"an earlier export")
    return Bad(lambda: zf_unet.export_saved_model(m.dense, out, version=2), DataError,
               ["export", "--model", str(m.dense), "--out", str(out), "--version", "2"],
               ["dense.keras"], r"not an image segmentation model .*must take one "
               r"\(batch, H, W, C\) image input", [out])


@case("model_channels_differ", "a 3-channel model evaluated on 1-channel data")
def _other_model(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    report = tmp / "eval.json"
    report.write_text('{"earlier": true}\n')
    return Bad(lambda: evaluate_model(m.rgb, data, split="all"), DataError,
               ["evaluate", "--model", str(m.rgb), "--data", str(data), "--split", "all",
                "--json", str(report), "--overwrite"],
               ["rgb.keras", "000.png"], r"expects 3-channel images but .* has 1 channel",
               [report])


@case("multiclass_model_evaluate", "a 3-class model evaluated on 0/255 masks (255 is no "
      "class id of it)")
def _multiclass(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    report = tmp / "eval.json"
    report.write_text('{"earlier": true}\n')
    return Bad(lambda: evaluate_model(m.multiclass, data), DataError,
               ["evaluate", "--model", str(m.multiclass), "--data", str(data), "--json",
                str(report), "--overwrite"],
               ["multiclass.keras", "255"], r"outside the class ids 0\.\.2 .*outputs 3 classes.*"
               r"--ignore-index", [report])


@case("pretrained_checksum", "pretrained weights whose sha256 differs from the manifest")
def _checksum(tmp: Path, m: Models) -> Bad:
    from zf_unet import hub

    weights = tmp / "weights"
    hub.write_manifest(m.gray, weights / "tiny", name="tiny")
    with open(weights / "tiny" / "model.keras", "ab") as fh:
        fh.write(b"tampered")
    good, out = existing_predictions(tmp, m.gray)
    env = {"ZF_UNET_WEIGHTS": str(weights), "ZF_UNET_CACHE": str(tmp / "cache")}
    return Bad(lambda: zf_unet.pretrained("tiny"), DataError,
               ["predict", str(good), "--model", "pretrained:tiny", "--out", str(out)],
               ["tiny/model.keras"], r"does not match the manifest's [0-9a-f]{64}",
               [out, weights], env)


@case("config_unknown_key", "a TOML config with a misspelt key")
def _bad_key(tmp: Path, m: Models) -> Bad:
    cfg = tmp / "bad.toml"
    cfg.write_text("[train]\nepoch = 3\n")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: Config.from_toml(cfg), ConfigError,
               ["train", "--config", str(cfg), "--out", str(run)],
               ["bad.toml", "epoch"], r"unknown key\(s\).*expected some of .*epochs", [run])


@case("config_bad_value", "a config value outside its choices (--set)")
def _bad_value(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    return Bad(lambda: Config().override(["model.upsampling=cubic"]), ConfigError,
               ["train", "--out", str(run), "--set", "model.upsampling=cubic"],
               ["upsampling", "cubic"], r"expected one of \['nearest', 'bilinear', 'transpose'\]",
               [run])


@case("float_image_range", "float images outside [0, 1]")
def _float_range(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    for i in range(3):
        (data / "images" / f"{i:03d}.png").unlink()
        tifffile.imwrite(data / "images" / f"{i:03d}.tif",
                         np.full((32, 32), 180.0 if i == 2 else 0.5, np.float32))
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data), DataError,
               ["train", "--data", str(data), "--out", str(run)] + TINY,
               ["002.tif"], r"expected \[0, 1\]", [run])


@case("monitor_typo_fresh", "a misspelt train.monitor with --fresh on a finished run")
def _monitor_typo(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.train(Config().override(["train.monitor=val_dcie"]), run,
                                     fresh=True),
               ConfigError, ["train", "--out", str(run), "--fresh", "--set",
                             "train.monitor=val_dcie"],
               ["monitor", "val_dcie"], r"not a logged metric \(did you mean 'val_dice'\?\)",
               [run])


@case("resume_other_config", "resuming a run folder with a different model.filters")
def _other_config(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.train(Config().override(["train.epochs=2", "model.filters=8"]),
                                     run),
               ConfigError, ["train", "--out", str(run), "--epochs", "2", "--set",
                             "model.filters=8"],
               [str(run.name), "model.filters = 32 in the run, 8 now", "--fresh"],
               r"belongs to another config", [run])


@case("not_a_run_folder", "--out a folder of the user's files (no config.toml), with --fresh")
def _not_a_run(tmp: Path, m: Models) -> Bad:
    mine = tmp / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    sets = ["train.epochs=1", "model.depth=3", "model.filters=4"]
    return Bad(lambda: zf_unet.train(Config().override(sets), mine, fresh=True),
               ConfigError, ["train", "--out", str(mine), "--fresh"] + TINY,
               ["thesis", "chapter1.tex"], r"not a zf-unet run folder .*use another --out",
               [mine])


@case("missing_data_folder", "--data naming a folder that does not exist (no TFDS look-up)")
def _no_data(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets("nosuchdir"), DataError,
               ["train", "--data", "nosuchdir", "--out", str(run), "--fresh"] + TINY,
               ["nosuchdir"], r"^(zf-unet train: error: )?nosuchdir: no such folder; expected "
               r"a folder with images/ and masks/ \(or tfds:NAME.{0,60}\)$", [run])


@case("negative_learning_rate", "optimizer.learning_rate = -1 in a TOML config")
def _negative_lr(tmp: Path, m: Models) -> Bad:
    cfg = tmp / "neg.toml"
    cfg.write_text("[optimizer]\nlearning_rate = -1\n")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: Config.from_toml(cfg), ConfigError,
               ["train", "--config", str(cfg), "--out", str(run), "--fresh"],
               ["neg.toml", "learning_rate = -1"], r"expected a number > 0", [run])


@case("negative_epochs", "--epochs -3 (CLI) / train.epochs = -3 (API)")
def _negative_epochs(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    cfg = Config()
    cfg.train.epochs = -3  # set in Python: train() checks it too
    return Bad(lambda: zf_unet.train(cfg, run), ConfigError,
               ["train", "--out", str(run), "--epochs", "-3"],
               ["epochs", "-3"], r"expected an integer >= 1", [run])


@case("negative_samples_per_epoch", "data.samples_per_epoch = -5 (--set)")
def _negative_samples(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    return Bad(lambda: Config().override(["data.samples_per_epoch=-5"]), ConfigError,
               ["train", "--out", str(run), "--set", "data.samples_per_epoch=-5"],
               ["samples_per_epoch = -5"], r"expected an integer >= 0", [run])


@case("val_indices_not_ints", "val_indices = [99, \"a\"] in a TOML config")
def _val_indices(tmp: Path, m: Models) -> Bad:
    cfg = tmp / "idx.toml"
    cfg.write_text('[data]\nval_indices = [99, "a"]\n')
    run = existing_run(tmp, m.gray)
    return Bad(lambda: Config.from_toml(cfg), ConfigError,
               ["train", "--config", str(cfg), "--out", str(run)],
               ["idx.toml", "val_indices", "'a'"], r"expected a list of integers", [run])


@case("val_indices_out_of_range", "val_indices = [99] for 3 samples")
def _val_range(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data, val_indices=[99]), DataError,
               ["train", "--data", str(data), "--out", str(run), "--fresh", "--set",
                "data.val_indices=[99]"] + TINY,
               ["val_indices", "99"], r"out of range for 3 samples", [run])


@case("config_not_utf8", "a TOML config saved in Latin-1")
def _latin1(tmp: Path, m: Models) -> Bad:
    cfg = tmp / "latin.toml"
    cfg.write_bytes("# Zürich\n[train]\nepochs = 2\n".encode("latin-1"))
    run = existing_run(tmp, m.gray)
    return Bad(lambda: Config.from_toml(cfg), ConfigError,
               ["train", "--config", str(cfg), "--out", str(run)],
               ["latin.toml", "0xfc"], r"not UTF-8 text .*expected a TOML file saved as UTF-8",
               [run])


@case("all_zero_masks", "every mask is all zero (nothing to learn)")
def _all_zero(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    for f in (data / "masks").iterdir():
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(f)
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data, patch_size=32), DataError,
               ["train", "--data", str(data), "--out", str(run), "--fresh"] + TINY,
               ["only class 0"], r"all-zero masks.*expected masks with at least two classes",
               [run])


@case("patch_larger_than_images", "data.patch_size = 64 for 32x32 images")
def _big_patch(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data, patch_size=64), DataError,
               ["train", "--data", str(data), "--out", str(run), "--fresh", "--set",
                "data.patch_size=64"] + TINY,
               ["patch_size = 64", "32x32"], r"larger than every image.*expected a patch "
               r"size <= 32", [run])


@case("truncated_backup", "a run whose backup/latest.weights.h5 was cut off, resumed")
def _truncated_backup(tmp: Path, m: Models) -> Bad:
    run = tmp / "run"
    sets = ["data.synthetic_n=4", "data.synthetic_size=16", "model.depth=2", "model.filters=2",
            "train.tensorboard=false", 'train.precision="float32"',
            "data.augment.enabled=false",  # no XLA augmentation to compile: not what this tests
            "train.epochs=1"]
    zf_unet.train(Config().override(sets), run, verbose=0)
    weights = run / "backup" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    more = sets[:-1] + ["train.epochs=2"]
    cli = ["train", "--out", str(run), "--quiet"]
    for s in more:
        cli += ["--set", s]
    return Bad(lambda: zf_unet.train(Config().override(more), run, verbose=0), ConfigError,
               cli, ["backup/latest.weights.h5"], r"cannot restore the run's backup .*delete "
               r".*backup to restart the run from epoch 0", [run])


@case("demo_batch_size_zero", "demo --batch-size 0")
def _demo_batch(tmp: Path, m: Models) -> Bad:
    from zf_unet.demo import DemoConfig, run_demo

    out = existing_run(tmp, m.gray)
    return Bad(lambda: run_demo(out, DemoConfig(batch_size=0), verbose=0), ConfigError,
               ["demo", "--out", str(out), "--batch-size", "0"],
               ["batch", "0"], r"expected an integer >= 1", [out])


@case("show_augment_n_zero", "show-augment --n 0 (zero samples)")
def _show_n(tmp: Path, m: Models) -> Bad:
    grid = tmp / "grid.png"
    grid.write_bytes(b"an earlier grid")
    return Bad(lambda: zf_unet.data.make_datasets("synthetic", batch_size=0), DataError,
               ["show-augment", "synthetic", "--n", "0", "--out", str(grid)],
               ["0"], r"(--n: expected an integer >= 1|batch_size must be >= 1)", [grid])


def notes(tmp: Path) -> Path:
    """A file of the user's next to an API-only case (it must stay byte-identical)."""
    path = tmp / "notes.txt"
    path.write_text("the user's notes\n")
    return path


@case("predict_existing_outputs", "predict into a folder that holds an earlier run's outputs "
      "(no --overwrite)")
def _predict_existing(tmp: Path, m: Models) -> Bad:
    good, out = existing_predictions(tmp, m.gray)
    model = load_model_file(m.gray)
    return Bad(lambda: predict_files(model, [good], out), OutputExistsError,
               ["predict", str(good), "--model", str(m.gray), "--out", str(out)],
               ["good_prob.tif", "good_mask.png", "good_overlay.png"],
               r"exists already.*pass --overwrite .*or choose another --out", [out])


@case("predict_over_ground_truth", "predict a folder into itself (even with --overwrite), "
      "where a_mask.png is the ground truth of a.png")
def _predict_truth(tmp: Path, m: Models) -> Bad:
    data = tmp / "data"
    data.mkdir()
    Image.fromarray(np.full((24, 24), 100, np.uint8)).save(data / "a.png")
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(data / "a_mask.png")
    model = load_model_file(m.gray)
    return Bad(lambda: predict_files(model, [data], data, overwrite=True), DataError,
               ["predict", str(data), "--model", str(m.gray), "--out", str(data), "--overwrite"],
               ["--out", "data"], r"is an input of this command.*not an input", [data])


@case("predict_same_names", "two input folders that both hold a.png (their outputs would "
      "collide)")
def _predict_same_names(tmp: Path, m: Models) -> Bad:
    for sub in ("x", "y"):
        (tmp / sub).mkdir()
        Image.fromarray(np.full((24, 24), 100, np.uint8)).save(tmp / sub / "a.png")
    good, out = existing_predictions(tmp, m.gray)
    model = load_model_file(m.gray)
    return Bad(lambda: predict_files(model, [tmp / "x", tmp / "y"], out), DataError,
               ["predict", str(tmp / "x"), str(tmp / "y"), "--model", str(m.gray), "--out",
                str(out)],
               ["x/a.png", "y/a.png"], r"both would write a_png.*expected inputs with "
               r"different names", [out])


@case("predict_threshold_range", "predict --threshold 5 (a probability is expected)")
def _predict_threshold(tmp: Path, m: Models) -> Bad:
    good, out = existing_predictions(tmp, m.gray)
    model = load_model_file(m.gray)
    return Bad(lambda: predict_files(model, [good], out, threshold=5), ValueError,
               ["predict", str(good), "--model", str(m.gray), "--out", str(out),
                "--threshold", "5"],
               ["threshold", "5"], r"between 0 and 1", [out])


@case("predict_tiled_no_model", "predict_tiled(None, image): no model (API)")
def _predict_no_model(tmp: Path, m: Models) -> Bad:
    good, out = existing_predictions(tmp, m.gray)
    return Bad(lambda: zf_unet.predict_tiled(None, np.zeros((9, 9), np.uint8)), ValueError,
               None, ["model"], r"expected a keras\.Model.*got NoneType", [out])


@case("float_255_predict", "a float32 TIFF scaled 0..255 given to predict (even with "
      "--overwrite)")
def _float_255_predict(tmp: Path, m: Models) -> Bad:
    bad = tmp / "float255.tif"
    tifffile.imwrite(bad, np.random.default_rng(0).random((20, 20), dtype=np.float32) * 255)
    good, out = existing_predictions(tmp, m.gray)
    model = load_model_file(m.gray)
    return Bad(lambda: predict_files(model, [good, bad], out, overwrite=True), DataError,
               ["predict", str(good), str(bad), "--model", str(m.gray), "--out", str(out),
                "--overwrite"],
               ["float255.tif"], r"outside \[0, 1\]; expected \[0, 1\] for float images", [out])


@case("image_over_size_limit", "an image larger than the readers' pixel limit "
      "(ZF_UNET_MAX_IMAGE_PIXELS=1000)")
def _image_over_size_limit(tmp: Path, m: Models) -> Bad:
    big = tmp / "big.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(big)
    good, out = existing_predictions(tmp, m.gray)
    return Bad(lambda: zf_unet.data.read_image(big), DataError,
               ["predict", str(good), str(big), "--model", str(m.gray), "--out", str(out)],
               ["big.png", "50x40"], r"more than the readers' limit of 1,000.*"
               r"ZF_UNET_MAX_IMAGE_PIXELS", [out], {"ZF_UNET_MAX_IMAGE_PIXELS": "1000"})


@case("export_version_exists", "export onto an existing SavedModel version, no --overwrite")
def _export_exists(tmp: Path, m: Models) -> Bad:
    out = tmp / "serving"
    (out / "1").mkdir(parents=True)
    (out / "1" / "saved_model.pb").write_bytes(b"an earlier export")
    return Bad(lambda: zf_unet.export_saved_model(m.gray, out, version=1), OutputExistsError,
               ["export", "--model", str(m.gray), "--out", str(out), "--version", "1"],
               [str(out / "1")], r"already exists; pass overwrite=True or another version",
               [out])


@case("build_unet_no_input_shape", "build_unet(None): no input shape (API)")
def _build_none(tmp: Path, m: Models) -> Bad:
    return Bad(lambda: zf_unet.build_unet(None), ValueError, None, ["input_shape"],
               r"\(height, width, channels\), e\.g\. \(None, None, 1\) with None for any size",
               [notes(tmp)])


@case("build_unet_num_classes_text", "build_unet(num_classes=\"3\") (API)")
def _build_classes(tmp: Path, m: Models) -> Bad:
    return Bad(lambda: zf_unet.build_unet((None, None, 1), num_classes="3"), ValueError, None,
               ["num_classes"], r"must be an integer >= 1, got '3'", [notes(tmp)])


@case("dice_loss_0_255_targets", "a 0/255 mask given to DiceLoss (API)")
def _dice_255(tmp: Path, m: Models) -> Bad:
    mask = np.zeros((1, 8, 8, 1), np.uint8)
    mask[:, 2:6, 2:6] = 255
    probs = np.full((1, 8, 8, 1), 0.3, np.float32)
    return Bad(lambda: DiceLoss()(mask, probs), DataError, None, ["y_true"],
               r"binary targets must be in \[0, 1\] \(got values up to 255\); divide 0/255 "
               r"masks by 255", [notes(tmp)])


@case("class_id_outside_classes_loss", "class id 3 for a 3-class WeightedCrossEntropy (API)")
def _ce_ids(tmp: Path, m: Models) -> Bad:
    ids = np.zeros((1, 4, 4), np.int32)
    ids[0, 0, 0] = 3
    probs = np.full((1, 4, 4, 3), 1 / 3, np.float32)
    return Bad(lambda: WeightedCrossentropy()(ids, probs), DataError, None, ["y_true"],
               r"class ids must be in 0\.\.2 for a 3-class y_pred \(got values up to 3\)",
               [notes(tmp)])


@case("metric_shape_mismatch", "a (2, 8, 6) target for (2, 8, 8) predictions in "
      "DiceCoefficient (API)")
def _metric_shapes(tmp: Path, m: Models) -> Bad:
    t = np.zeros((2, 8, 6, 1), np.float32)
    p = np.full((2, 8, 8, 1), 0.5, np.float32)
    return Bad(lambda: DiceCoefficient().update_state(t, p), DataError, None,
               ["y_true", "y_pred", "(2, 8, 6, 1)", "(2, 8, 8, 1)"],
               r"\(batch, height, width\) of the targets must equal those of the predictions",
               [notes(tmp)])


# ---- Step 15 cases: shards (helper A adds its cases below this line)


def packed_shards(tmp: Path, n: int = 3) -> tuple[Path, list[Path]]:
    """A folder of ``n`` samples packed one per shard file, and the shard files."""
    from zf_unet.data.shard_writer import write_shards
    from zf_unet.data.sources import open_source

    out = tmp / "shards"
    write_shards(open_source(write_folder(tmp / "data", n=n)), out, shard_size=1)
    return out, sorted(out.glob("*.tfrecord"))


@case("shard_truncated", "a TFRecord shard file cut off in the middle, given to train")
def _shard_truncated(tmp: Path, m: Models) -> Bad:
    shards, files = packed_shards(tmp)
    files[0].write_bytes(files[0].read_bytes()[:-40])
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(shards, patch_size=32), DataError,
               ["train", "--data", str(shards), "--out", str(run)] + TINY,
               [files[0].name], r"damaged shard file .*repack", [run])


@case("shard_missing", "a shard file listed in zf_unet_shards.json was deleted")
def _shard_missing(tmp: Path, m: Models) -> Bad:
    shards, files = packed_shards(tmp)
    files[1].unlink()
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(shards, patch_size=32, cache="none"),
               DataError, ["train", "--data", str(shards), "--out", str(run)] + TINY,
               [files[1].name], r"shard file not found \(listed in zf_unet_shards.json\)", [run])


@case("shard_index_lies", "zf_unet_shards.json says 3 channels, the records hold 1")
def _shard_index_lies(tmp: Path, m: Models) -> Bad:
    import json

    shards, files = packed_shards(tmp)
    index = shards / "zf_unet_shards.json"
    data = json.loads(index.read_text())
    data.update(channels=3, channel_sum=data["channel_sum"] * 3,
                channel_sum_sq=data["channel_sum_sq"] * 3)
    index.write_text(json.dumps(data))
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(shards, patch_size=32), DataError,
               ["train", "--data", str(shards), "--out", str(run)] + TINY,
               [files[0].name, "zf_unet_shards.json"],
               r"1 channel\(s\), zf_unet_shards.json says channels = 3", [run])


@case("val_convention_mismatch", "data.val_source holds 0/255 masks, training class ids 0..2")
def _val_convention_mismatch(tmp: Path, m: Models) -> Bad:
    train = write_folder(tmp / "train", masks="ids")
    val = write_folder(tmp / "val", n=2)
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(train, val_source=val, num_classes="auto",
                                                  patch_size=32), DataError,
               ["train", "--data", str(train), "--out", str(run),
                "--set", f'data.val_source="{val}"'] + TINY,
               ["data.val_source"],
               r"\{0, 255\} binary masks .*training masks are class ids \[0, 1, 2\]", [run])


@case("val_only_class", "data.val_source holds a class id the training masks never hold")
def _val_only_class(tmp: Path, m: Models) -> Bad:
    train = write_folder(tmp / "train", masks="ids")
    val = write_folder(tmp / "val", n=2, masks="ids")
    for path in (val / "masks").iterdir():
        mask = np.asarray(Image.open(path)).copy()
        mask[-4:] = 3
        Image.fromarray(mask).save(path)
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(train, val_source=val, num_classes="auto",
                                                  patch_size=32), DataError,
               ["train", "--data", str(train), "--out", str(run),
                "--set", f'data.val_source="{val}"'] + TINY,
               ["data.val_source", "data.num_classes"],
               r"class id\(s\) \[3\] appear only in the validation masks", [run])


@case("patch_deeper_than_volume", "a 3-D data.patch_size deeper than the only volume")
def _patch_deeper_than_volume(tmp: Path, m: Models) -> Bad:
    vol = write_folder(tmp / "vol", n=4)  # 4 slices: a volume 4 sections deep
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_volume_datasets(vol, patch_size=[8, 16, 16],
                                                         val_fraction=0), DataError,
               ["train", "--data", str(vol), "--out", str(run), "--set", "data.volumes=true",
                "--set", "data.patch_size=[8, 16, 16]", "--set", "data.val_fraction=0"] + TINY,
               ["data.patch_size", "4 z-sections"], r"expected a patch depth <= 4", [run])


# ---- Step 15 cases: masks and config (helper B adds its cases below this line)


@case("jpeg_mask", "a JPEG file among the training masks (lossy compression alters labels)")
def _jpeg_mask(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    mask = np.asarray(Image.open(data / "masks" / "001.png"))
    (data / "masks" / "001.png").unlink()
    Image.fromarray(mask).save(data / "masks" / "001.jpg")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data), DataError,
               ["train", "--data", str(data), "--out", str(run)] + TINY,
               ["masks/001.jpg"], r"JPEG's lossy compression alters label values.*expected "
               r"masks saved as PNG or TIFF", [run])


@case("palette_bad_colour", "data.palette with a colour that is not [r, g, b] 0..255 (--set)")
def _palette_bad_colour(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    value = "data.palette=[[0,0,0],[128,64,300]]"
    return Bad(lambda: Config().override([value]), ConfigError,
               ["train", "--out", str(run), "--set", value],
               ["palette[1]", "[128, 64, 300]"],
               r"is not a colour; expected \[r, g, b\] with integers 0\.\.255", [run])


@case("palette_void_without_ignore_index", "a data.palette table mapping a colour to 255 "
      "(void) while data.ignore_index is not set")
def _palette_void(tmp: Path, m: Models) -> Bad:
    run = existing_run(tmp, m.gray)
    value = 'data.palette={"#000000"=0, "#ff0000"=1, "#ffffff"=255}'
    return Bad(lambda: Config().override([value]), ConfigError,
               ["train", "--out", str(run), "--set", value],
               ["palette", "[0, 1, 255]"],
               r"expected the ids 0\.\.K-1 without gaps.*data\.ignore_index", [run])


@case("palette_unknown_colour", "a colour mask holding a colour that data.palette does not "
      "list")
def _palette_unknown(tmp: Path, m: Models) -> Bad:
    data = write_folder(tmp / "data")
    for i in range(3):
        rgb = np.zeros((32, 32, 3), np.uint8)
        rgb[:16, :, 0] = 255
        if i == 2:
            rgb[20:, :, 2] = 255
        Image.fromarray(rgb).save(data / "masks" / f"{i:03d}.png")
    run = existing_run(tmp, m.gray)
    return Bad(lambda: zf_unet.data.make_datasets(data, palette={(0, 0, 0): 0,
                                                                 (255, 0, 0): 1}), DataError,
               ["train", "--data", str(data), "--out", str(run),
                "--set", "data.palette=[[0,0,0],[255,0,0]]"] + TINY,
               ["masks/002.png", "(0, 0, 255)"], r"not in the palette.*add them to "
               r"data\.palette / --palette", [run])


@case("palette_flag_not_colours", "check-data --palette with text that is not a list of "
      "colours")
def _palette_flag(tmp: Path, m: Models) -> Bad:
    from zf_unet.data.colour_masks import parse_palette_text

    data = write_folder(tmp / "data")
    return Bad(lambda: parse_palette_text("red"), ConfigError,
               ["check-data", str(data), "--palette", "red"], ["--palette", "'red'"],
               r"not a list or table of colours; expected e\.g\. \[\[0, 0, 0\], "
               r"\[255, 0, 0\]\]", [data])


# ---- Step 15 cases: outputs and non-finite models


def nan_model(tmp: Path) -> Path:
    """A saved tiny binary U-Net whose first kernel is NaN (a run that diverged)."""
    model = zf_unet.build_unet((None, None, 1), depth=3, filters=4)
    first = model.trainable_weights[0]
    first.assign(np.full(first.shape, np.nan, np.float32))
    return save_model_atomic(model, tmp / "diverged.keras")


def _pack_source(data: Path):
    from zf_unet.data.sources import open_source

    return open_source(str(data), convention="auto")


@case("pack_out_is_source", "zf-unet pack SRC --out SRC --overwrite")
def _pack_into_source(tmp: Path, m: Models) -> Bad:
    from zf_unet.data.shard_writer import write_shards

    data = write_folder(tmp / "data")
    return Bad(lambda: write_shards(_pack_source(data), data, overwrite=True, inputs=[data]),
               DataError, ["pack", str(data), "--out", str(data), "--overwrite"],
               [str(data)], r"is an input of this command.*not an input", [data])


@case("pack_out_holds_source", "zf-unet pack SRC --out SRC/.. --overwrite")
def _pack_into_parent(tmp: Path, m: Models) -> Bad:
    from zf_unet.data.shard_writer import write_shards

    data = write_folder(tmp / "data")
    return Bad(lambda: write_shards(_pack_source(data), tmp, overwrite=True, inputs=[data]),
               DataError, ["pack", str(data), "--out", str(tmp), "--overwrite"],
               [str(tmp), str(data)], r"holds the input .*expected a folder that holds no input",
               [data])


@case("pack_over_users_folder", "pack --out a folder of the user's files, with --overwrite")
def _pack_over_mine(tmp: Path, m: Models) -> Bad:
    from zf_unet.data.shard_writer import write_shards

    data = write_folder(tmp / "data")
    mine = tmp / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    return Bad(lambda: write_shards(_pack_source(data), mine, overwrite=True, inputs=[data]),
               OutputExistsError, ["pack", str(data), "--out", str(mine), "--overwrite"],
               ["thesis", "chapter1.tex"], r"never replaced, even with --overwrite", [mine, data])


@case("evaluate_json_exists", "evaluate --json naming an existing file (no --overwrite)")
def _evaluate_json(tmp: Path, m: Models) -> Bad:
    from zf_unet.outputs import claim_file

    data = write_folder(tmp / "data")
    report = notes(tmp)
    return Bad(lambda: claim_file(report, flag="--json"), OutputExistsError,
               ["evaluate", "--model", str(m.gray), "--data", str(data), "--json", str(report)],
               ["--json", "notes.txt"], r"exists already.*--overwrite", [report])


@case("export_tflite_exists", "export --format tflite --out an existing file (no --overwrite)")
def _tflite_exists(tmp: Path, m: Models) -> Bad:
    target = tmp / "model.tflite"
    target.write_bytes(b"an earlier export of another model")
    return Bad(lambda: zf_unet.export.export_tflite(m.gray, target, input_size=(32, 32)),
               OutputExistsError, ["export", "--model", str(m.gray), "--format", "tflite",
                                   "--out", str(target), "--tile-size", "32"],
               ["model.tflite"], r"exists already.*--overwrite", [target])


@case("predict_out_inside_input", "predict a folder into a folder inside it")
def _predict_inside(tmp: Path, m: Models) -> Bad:
    from zf_unet.file_prediction import predict_files

    data = write_folder(tmp / "data")
    out = data / "images" / "predictions"
    return Bad(lambda: predict_files(load_model_file(m.gray), [data / "images"], out),
               DataError, ["predict", str(data / "images"), "--model", str(m.gray), "--out",
                           str(out)], ["predictions", "images"], r"inside the input folder",
               [data])


@case("export_out_is_the_model", "export --out naming the .keras model itself "
      "(--overwrite)")
def _export_onto_model(tmp: Path, m: Models) -> Bad:
    model = tmp / "model.keras"
    model.write_bytes(m.gray.read_bytes())
    return Bad(lambda: zf_unet.export.export_onnx(model, model, overwrite=True), DataError,
               ["export", "--model", str(model), "--format", "onnx", "--out", str(model),
                "--overwrite"], ["--out", "model.keras"], r"is an input of this command",
               [model])


@case("check_data_json_is_input", "check-data DIR --json DIR/masks/000.png --overwrite")
def _check_json_input(tmp: Path, m: Models) -> Bad:
    from zf_unet.outputs import claim_file

    data = write_folder(tmp / "data")
    target = data / "masks" / "000.png"
    return Bad(lambda: claim_file(target, inputs=[data], overwrite=True, flag="--json"),
               DataError, ["check-data", str(data), "--json", str(target), "--overwrite"],
               ["--json", "000.png"], r"inside the input folder .*outside the inputs", [data])


@case("show_augment_out_is_folder", "show-augment --out naming an existing folder")
def _show_out_folder(tmp: Path, m: Models) -> Bad:
    from zf_unet.outputs import claim_file

    data = write_folder(tmp / "data")
    folder = tmp / "figures"
    folder.mkdir()
    (folder / "fig1.png").write_bytes(b"a figure of the user's")
    return Bad(lambda: claim_file(folder, overwrite=True), DataError,
               ["show-augment", str(data), "--out", str(folder), "--patch-size", "32",
                "--overwrite"], ["figures"], r"is a folder; expected a file path", [folder])


@case("nan_model_predict", "predict with a model whose weights are NaN (a diverged run)")
def _nan_predict_model(tmp: Path, m: Models) -> Bad:
    from zf_unet.file_prediction import predict_files

    bad = nan_model(tmp)
    good, out = existing_predictions(tmp, m.gray)
    return Bad(lambda: predict_files(load_model_file(bad), [good], out, overwrite=True),
               NonFiniteOutputError, ["predict", str(good), "--model", str(bad), "--out",
                                      str(out), "--overwrite"],
               ["diverged.keras"], r"NaN or Inf; expected finite probabilities", [out])


@case("nan_model_export", "export a model whose output is NaN")
def _nan_export(tmp: Path, m: Models) -> Bad:
    bad = nan_model(tmp)
    base = tmp / "serving"
    return Bad(lambda: zf_unet.export_saved_model(bad, base), NonFiniteOutputError,
               ["export", "--model", str(bad), "--out", str(base)], ["diverged.keras"],
               r"NaN or Inf; expected finite probabilities", [notes(tmp)])



# --------------------------------------------------------------------------- tests


def _check_message(text: str, bad: Bad) -> None:
    for name in bad.names:
        assert name in text, f"{name!r} not named in: {text}"
    assert re.search(bad.expect, text, re.IGNORECASE | re.DOTALL), \
        f"{bad.expect!r} not found in: {text}"


def test_the_table_has_at_least_twelve_kinds():
    assert len(CASES) >= 12
    cli_commands = {fn.__name__: None for _, fn in CASES.values()}
    assert len(cli_commands) == len(CASES)  # one builder per case


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, models, monkeypatch, capsys):
    _, build = CASES[name]
    bad = build(tmp_path, models)
    for key, value in bad.env.items():
        monkeypatch.setenv(key, value)
    before = snapshot(bad.guard)
    assert bad.guard and all(v is not None for v in before.values())

    with pytest.raises(Exception) as info:
        bad.api()
    assert isinstance(info.value, bad.error), repr(info.value)
    assert isinstance(info.value, (ZFUNetError, ValueError))
    _check_message(str(info.value), bad)
    assert snapshot(bad.guard) == before, "the API call changed files the user had"

    if bad.cli is not None:
        capsys.readouterr()
        assert main(bad.cli) == 2
        out, err = capsys.readouterr()
        assert "Traceback" not in err + out
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith(f"zf-unet {bad.cli[0]}: error: "), lines[0]
        _check_message(lines[0], bad)
        assert snapshot(bad.guard) == before, "the command changed files the user had"


SUBPROCESS_CASES = ["corrupt_png", "wrong_channels_predict", "zip_not_a_model",
                    "config_bad_value"]


def test_console_script_prints_one_line_and_no_traceback(tmp_path, models):
    """The installed ``zf-unet`` script, in fresh processes (run side by side)."""
    assert ZF_UNET.exists(), ZF_UNET
    procs = {}
    for name in SUBPROCESS_CASES:
        work = tmp_path / name
        work.mkdir()
        bad = CASES[name][1](work, models)
        env = dict(os.environ, **bad.env)
        env.pop("ZF_UNET_TF_LOGS", None)
        procs[name] = (bad, snapshot(bad.guard), subprocess.Popen(
            [str(ZF_UNET)] + bad.cli, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    for name, (bad, before, proc) in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        assert "Traceback" not in out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1, (name, err)  # not even TensorFlow's start-up banner
        assert lines[0].startswith(f"zf-unet {bad.cli[0]}: error: ")
        _check_message(lines[0], bad)
        assert snapshot(bad.guard) == before, name


def test_docs_list_every_case():
    text = (ROOT / "docs" / "reliability.md").read_text()
    missing = [name for name in CASES if f"`{name}`" not in text]
    assert not missing, f"docs/reliability.md lacks {missing}: run python {__file__}"


# --------------------------------------------------------------------------- docs table


def markdown_table() -> str:
    """The docs table: each case with the API error and the CLI's stderr line."""
    import contextlib
    import io
    import tempfile

    def clean(text: str, prefixes: list[str]) -> str:
        for prefix in prefixes:
            text = text.replace(prefix, "")
        text = re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)
        return text.replace("|", "\\|").replace("\n", " ").strip()

    rows = ["| case | bad input | Python API | `zf-unet` (exit 2), stderr |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        m = make_models(base / "models")
        for name, (what, build) in CASES.items():
            work = base / name
            work.mkdir()
            bad = build(work, m)
            saved = {k: os.environ.get(k) for k in bad.env}
            os.environ.update(bad.env)
            try:
                try:
                    bad.api()
                    api = "(no error!)"
                except Exception as exc:  # noqa: BLE001 - recorded for the table
                    api = f"`{type(exc).__name__}`: {exc}"
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = main(bad.cli) if bad.cli else None
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            prefixes = [str(work) + "/", str(base / "models") + "/"]
            if bad.cli is None:
                cli = "(API only)"
            else:
                cli = clean(err.getvalue(), prefixes) if code == 2 else f"(exit {code}!)"
            rows.append(f"| `{name}` | {what} | {clean(api, prefixes)} | {cli} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(markdown_table())
