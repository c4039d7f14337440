"""Multi-class training end to end: class ids with a void value, inferred num_classes,
median-frequency class weights, a separate validation folder, mIoU monitoring and the input
standardisation stored in the model."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from zf_unet.cli import main
from zf_unet.config import Config
from zf_unet.errors import ConfigError
from zf_unet.training import read_csv_log, train

VOID = 255


def write_folder(root: Path, n: int, seed: int, channels: int = 1) -> Path:
    """``n`` 32x32 images with 3-class masks: class 1 a square, class 2 a bar, void a band."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((32, 32), np.uint8)
        y, x = rng.integers(2, 14, 2)
        mask[y:y + 12, x:x + 12] = 1
        mask[:, 26:29] = 2
        mask[30:, :] = VOID
        img = rng.normal(0.3, 0.05, (32, 32, channels))
        img[mask == 1] += 0.3
        img[mask == 2] += 0.6
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(img[..., 0] if channels == 1 else img).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def test_cli_trains_a_multiclass_model_with_void_and_auto_weights(tmp_path, capsys):
    train_dir = write_folder(tmp_path / "train", 6, seed=0)
    val_dir = write_folder(tmp_path / "val", 2, seed=1)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(train_dir), "--out", str(out), "--epochs", "2", "--quiet",
               "--set", f"data.val_source={json.dumps(str(val_dir))}",
               "--set", f"data.ignore_index={VOID}", "--set", 'loss.class_weights="auto"',
               "--set", "data.patch_size=32", "--set", "model.depth=3",
               "--set", "model.filters=4", "--set", "train.tensorboard=false",
               "--set", 'train.precision="float32"',
               # no XLA augmentation to compile (void + augmentation: test_multiclass_data)
               "--set", "data.augment.enabled=false"])
    assert rc == 0, capsys.readouterr().err
    resolved = json.loads((out / "resolved.json").read_text())
    assert resolved["num_classes"] == 3  # inferred from the ids, void left out
    assert resolved["loss"] == "ce_dice" and resolved["monitor"] == "val_miou"
    assert resolved["train_samples"] == 6 and resolved["val_samples"] == 2
    # Median-frequency weights by hand from the training masks (void excluded).
    masks = [np.asarray(Image.open(p)) for p in sorted((train_dir / "masks").glob("*.png"))]
    labelled = [m[m != VOID] for m in masks]
    pixels = np.array([sum(int((m == c).sum()) for m in labelled) for c in range(3)], float)
    image_pixels = np.array([sum(m.size for m in labelled if (m == c).any()) for c in range(3)],
                            float)
    freq = pixels / image_pixels
    np.testing.assert_allclose(resolved["class_weights"], np.median(freq) / freq, rtol=1e-5)
    log = read_csv_log(out / "log.csv")
    for key in ("val_miou", "val_iou_0", "val_iou_1", "val_iou_2", "miou"):
        assert len(log[key]) == 2, key
        assert all(0.0 <= v <= 1.0 for v in log[key])
    assert json.loads((out / "best.json").read_text())["monitor"] == "val_miou"
    model = keras.saving.load_model(out / "best.keras")  # no custom_objects
    assert model.output_shape[-1] == 3
    assert "input_normalization" not in [layer.name for layer in model.layers]  # 1 channel


def test_rgb_images_are_standardised_inside_the_model(tmp_path):
    data = write_folder(tmp_path / "rgb", 4, seed=2, channels=3)
    cfg = Config().override([f"data.source={json.dumps(str(data))}", "data.patch_size=32",
                             f"data.ignore_index={VOID}", "data.val_fraction=0.0",
                             "model.depth=2", "model.filters=2", "train.epochs=1",
                             "train.tensorboard=false", 'train.precision="float32"',
                             "data.augment.enabled=false"])  # no XLA augmentation to compile
    history, run = train(cfg, tmp_path / "run", verbose=0)
    layer = history.model.get_layer("input_normalization")
    images = np.stack([np.asarray(Image.open(p)) for p in sorted((data / "images").glob("*"))])
    images = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(np.ravel(layer.mean), images.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(np.sqrt(np.ravel(layer.variance)), images.std(axis=(0, 1, 2)),
                               atol=1e-5)
    resolved = json.loads((run / "resolved.json").read_text())
    np.testing.assert_allclose(resolved["input_normalization"]["mean"],
                               images.mean(axis=(0, 1, 2)), atol=1e-5)
    loaded = keras.saving.load_model(run / "final.keras")
    x = images[:1].astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), history.model.predict(x, verbose=0),
                               atol=1e-5)


@pytest.mark.parametrize("sets,match", [
    (["data.num_classes=3", "data.ignore_index=2"], r"ignore_index = 2 is a class id"),
    (["data.num_classes=3", "loss.class_weights=[1.0, 2.0]"], r"class_weights has 2 weights; "
                                                              r"expected 3"),
    (["data.class_values=[[0, 32], [255]]", "data.num_classes=3"], r"class_values has 2 groups"),
    (["data.class_values=[[0, 32], [32]]"], r"lists the mask value 32 for class 0 and class 1"),
    (["loss.class_weights=\"often\""], r"class_weights = 'often'; expected"),
    (["data.num_classes=3", "train.monitor=\"val_mIoU\""], r"did you mean 'val_miou'"),
    (["data.num_classes=3", "data.border_weights=true"], r"border_weights = true needs binary"),
])
def test_multiclass_config_mistakes_are_named(sets, match):
    with pytest.raises(ConfigError, match=match):
        Config().override(sets)


def test_class_weights_do_not_apply_to_overlap_losses():
    from zf_unet.training import make_loss

    cfg = Config().override(["data.num_classes=3", "loss.name=\"dice\""])
    with pytest.raises(ConfigError, match=r"class_weights applies to the cross-entropy losses"):
        make_loss(cfg, 3, [1.0, 2.0, 3.0])
    for name, cls in [("auto", "CEDiceLoss"), ("focal", "FocalLoss"), ("tversky", "TverskyLoss"),
                      ("ce", "Crossentropy")]:
        loss = make_loss(Config().override([f"loss.name=\"{name}\"", "data.ignore_index=255",
                                            "data.num_classes=3"]), 3)
        assert type(loss).__name__ == cls and loss.get_config()["ignore_class"] == 255


def test_check_data_suggests_void_and_gray_codes_and_leaves_void_out(tmp_path, capsys):
    from zf_unet.doctor import check_data

    data = write_folder(tmp_path / "ids", 3, seed=4)
    report = check_data(data)
    assert "data.ignore_index=255" in "\n".join(report.suggestions)
    assert "data.num_classes=3" in "\n".join(report.suggestions)
    report = check_data(data, num_classes=3, ignore_index=VOID)
    masks = [np.asarray(Image.open(p)) for p in sorted((data / "masks").glob("*.png"))]
    labelled = np.concatenate([m[m != VOID] for m in masks])
    shares = report.summary["class_frequencies"]
    assert set(shares) == {0, 1, 2}  # void is no class
    for c in range(3):
        assert shares[c] == pytest.approx(np.mean(labelled == c))
    assert report.summary["ignored_pixels"] == sum(int((m == VOID).sum()) for m in masks)
    # Gray codes: one group per value suggested; with class_values the classes are counted.
    gray = tmp_path / "gray"
    (gray / "images").mkdir(parents=True)
    (gray / "masks").mkdir()
    codes = np.array([0, 32, 159, 255], np.uint8)
    for i in range(2):
        Image.fromarray(np.full((16, 16), 90, np.uint8)).save(gray / "images" / f"{i}.png")
        Image.fromarray(np.repeat(codes, 64).reshape(16, 16)).save(gray / "masks" / f"{i}.png")
    assert main(["check-data", str(gray)]) == 1
    out = capsys.readouterr().out
    assert "data.class_values=[[0], [32], [159], [255]]" in out
    rc = main(["check-data", str(gray), "--class-values", "[[0, 32], [159], [255]]"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0: 50.00 %" in out and "1: 25.00 %" in out and "2: 25.00 %" in out
