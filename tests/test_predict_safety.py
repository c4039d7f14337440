"""``predict`` keeps what the user has and refuses input it would get wrong (Step 8b).

* no file is overwritten unless asked (``overwrite=True`` / ``--overwrite``), checked before
  the first write; predict's own outputs in a folder are not taken as inputs; inputs that
  share a name get distinct outputs;
* ``threshold`` outside (0, 1), a missing model, float images outside [0, 1] (the rule of
  training) are clear errors;
* the readers' size limit replaces Pillow's decompression-bomb limit, with a message that
  says how to lift it, and the overlay of a large image is written downsampled.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import zf_unet
from zf_unet.cli import main
from zf_unet.data import io as data_io
from zf_unet.data import to_float_image
from zf_unet import pixels
from zf_unet.errors import ConfigError, DataError, OutputExistsError
from zf_unet.file_prediction import predict_files
from zf_unet.inference import predict_tiled
from zf_unet.models import load_model_file
from zf_unet.io_utils import save_model_atomic


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("m") / "gray.keras"
    return save_model_atomic(zf_unet.build_unet((None, None, 1), depth=3, filters=4), path)


@pytest.fixture(scope="module")
def model(model_path: Path):
    return load_model_file(model_path)


def _png(path: Path, seed: int, size: tuple[int, int] = (24, 30)) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(path)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("zf-unet predict: error: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- overwriting


def test_existing_outputs_are_refused_before_any_write(tmp_path, model, model_path, capsys):
    good, other = _png(tmp_path / "good.png", 0), _png(tmp_path / "other.png", 1)
    out = tmp_path / "pred"
    out.mkdir()
    for name in ("good_prob.tif", "good_mask.png", "good_overlay.png"):
        (out / name).write_bytes(b"an earlier result " + name.encode())
    before = _snapshot(out)
    with pytest.raises(OutputExistsError) as info:
        predict_files(model, [other, good], out)
    text = str(info.value)
    for name in ("good_prob.tif", "good_mask.png", "good_overlay.png", str(out)):
        assert name in text
    assert "--overwrite" in text and "another --out" in text
    assert _snapshot(out) == before  # not even other.png's outputs were written

    capsys.readouterr()
    assert main(["predict", str(other), str(good), "--model", str(model_path), "--out",
                 str(out)]) == 2
    line = _one_error_line(capsys)
    assert "good_mask.png" in line and "--overwrite" in line
    assert _snapshot(out) == before


def test_overwrite_replaces_the_files(tmp_path, model_path, capsys):
    good = _png(tmp_path / "good.png", 0)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "good_mask.png").write_bytes(b"an earlier result")
    assert main(["predict", str(good), "--model", str(model_path), "--out", str(out),
                 "--overwrite"]) == 0
    assert "wrote 3 files" in capsys.readouterr().out
    mask = np.asarray(Image.open(out / "good_mask.png"))
    assert mask.shape == (24, 30) and set(np.unique(mask)) <= {0, 255}
    assert sorted(p.name for p in out.iterdir()) == ["good_mask.png", "good_overlay.png",
                                                    "good_prob.tif"]


def test_ground_truth_next_to_its_image_is_kept(tmp_path, model):
    folder = tmp_path / "data"
    folder.mkdir()
    _png(folder / "a.png", 0)
    truth = np.zeros((24, 30), np.uint8)
    truth[5:15] = 255
    Image.fromarray(truth).save(folder / "a_mask.png")
    before = _snapshot(folder)
    for overwrite in (False, True):  # predicting a folder into itself: never
        with pytest.raises(DataError, match="is an input of this command"):
            predict_files(model, [folder], folder, overwrite=overwrite)
        with pytest.raises(DataError, match="inside the input folder"):
            predict_files(model, [folder], folder / "pred", overwrite=overwrite)
    assert _snapshot(folder) == before
    # Elsewhere: a_mask.png looks like a's output, so it is not predicted as an image.
    written = predict_files(model, [folder], tmp_path / "pred")
    assert sorted(p.name for p in written) == ["a_mask.png", "a_overlay.png", "a_prob.tif"]
    assert _snapshot(folder) == before


def test_own_outputs_are_not_inputs_of_the_next_run(tmp_path, model):
    folder = tmp_path / "data"
    folder.mkdir()
    _png(folder / "a.png", 0)
    _png(folder / "b_prob.png", 1)  # an image whose name merely ends like an output
    first = predict_files(model, [folder], tmp_path / "pred")
    assert len(first) == 6
    for f in first:  # an earlier run's results copied beside the images
        (folder / f.name).write_bytes(f.read_bytes())
    second = predict_files(model, [folder], tmp_path / "pred", overwrite=True)
    assert sorted(second) == sorted(first)
    names = sorted(p.name for p in (tmp_path / "pred").iterdir() if not p.name.startswith("."))
    assert names == ["a_mask.png", "a_overlay.png", "a_prob.tif", "b_prob_mask.png",
                     "b_prob_overlay.png", "b_prob_prob.tif"]


def test_inputs_sharing_a_name_get_distinct_outputs(tmp_path, model, model_path):
    a_png = _png(tmp_path / "a.png", 0)
    a_tif = tmp_path / "a.tif"
    img_tif = np.random.default_rng(1).integers(0, 256, (20, 28), dtype=np.uint8)
    tifffile.imwrite(a_tif, img_tif)
    out = tmp_path / "pred"
    written = predict_files(model, [a_png, a_tif], out)
    assert sorted(p.name for p in written) == [
        "a_png_mask.png", "a_png_overlay.png", "a_png_prob.tif",
        "a_tif_mask.png", "a_tif_overlay.png", "a_tif_prob.tif"]
    img_png = np.asarray(Image.open(a_png))
    for name, img in (("a_png", img_png), ("a_tif", img_tif)):
        np.testing.assert_allclose(tifffile.imread(out / f"{name}_prob.tif"),
                                   predict_tiled(model, img), atol=1e-6)
    # A name used once keeps today's output names; the folder listing follows the same rule.
    assert main(["predict", str(a_tif), "--model", str(model_path), "--out",
                 str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "a_mask.png").exists()


def test_same_file_name_in_two_folders_is_an_error(tmp_path, model):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        _png(tmp_path / sub / "a.png", 0)
    with pytest.raises(DataError, match=r"x/a\.png and .*y/a\.png: both would write a_png"):
        predict_files(model, [tmp_path / "x", tmp_path / "y"], tmp_path / "pred")
    assert not (tmp_path / "pred").exists()
    # The same file given twice (directly and through its folder) is predicted once.
    written = predict_files(model, [tmp_path / "x", tmp_path / "x" / "a.png"], tmp_path / "p")
    assert len(written) == 3


def test_an_input_is_never_replaced_by_an_output(tmp_path, model):
    a = _png(tmp_path / "a.png", 0)
    truth = _png(tmp_path / "a_mask.png", 1)
    before = truth.read_bytes()
    with pytest.raises(DataError, match="a_mask.png: is an input of this command"):
        predict_files(model, [a, truth], tmp_path, overwrite=True)
    assert truth.read_bytes() == before


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("threshold", [5, 1.0, 0.0, -0.2, "x", None])
def test_threshold_outside_0_1_is_refused(tmp_path, model, threshold):
    good = _png(tmp_path / "good.png", 0)
    with pytest.raises(ValueError, match="threshold"):
        predict_files(model, [good], tmp_path / "pred", threshold=threshold)
    assert not (tmp_path / "pred").exists()


def test_cli_threshold_outside_0_1_is_one_line(tmp_path, model_path, capsys):
    good = _png(tmp_path / "good.png", 0)
    capsys.readouterr()
    assert main(["predict", str(good), "--model", str(model_path), "--out",
                 str(tmp_path / "pred"), "--threshold", "5"]) == 2
    line = _one_error_line(capsys)
    assert "--threshold" in line and "expected a value between 0 and 1, got 5" in line
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("bad", [None, "model.keras", np.zeros(3)])
def test_predict_tiled_without_a_model(bad):
    with pytest.raises(ValueError, match=r"model: expected a keras\.Model"):
        predict_tiled(bad, np.zeros((8, 8), np.uint8))


# --------------------------------------------------------------------------- pixel values


def test_float_tiff_scaled_0_255_is_refused_like_training(tmp_path, model, model_path,
                                                          capsys):
    img = np.random.default_rng(0).random((20, 20), dtype=np.float32) * 255
    bad = tmp_path / "float255.tif"
    tifffile.imwrite(bad, img)
    with pytest.raises(DataError) as info:
        predict_files(model, [bad], tmp_path / "pred")
    with pytest.raises(DataError) as train_info:
        to_float_image(img[..., None], str(bad))
    assert str(info.value) == str(train_info.value)  # one rule, one message
    assert str(bad) in str(info.value) and "expected [0, 1]" in str(info.value)
    assert not (tmp_path / "pred").exists()
    with pytest.raises(DataError, match=r"image: float values span .*expected \[0, 1\]"):
        predict_tiled(model, img)

    capsys.readouterr()
    assert main(["predict", str(bad), "--model", str(model_path), "--out",
                 str(tmp_path / "pred")]) == 2
    line = _one_error_line(capsys)
    assert "float255.tif" in line and "expected [0, 1]" in line


def test_float_images_in_0_1_are_accepted_within_the_tolerance(model):
    img = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    img[0, 0] = 1.0 + pixels.FLOAT_RANGE_TOLERANCE / 2
    assert predict_tiled(model, img).shape == (16, 16, 1)
    img[0, 0] = 1.0 + 2 * pixels.FLOAT_RANGE_TOLERANCE
    with pytest.raises(DataError):
        predict_tiled(model, img)
    pixels.check_float_range(np.full((4, 4), 255, np.uint8), "ints pass")


# --------------------------------------------------------------------------- size limit


def test_size_limit_names_the_file_and_how_to_lift_it(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    png = _png(tmp_path / "big.png", 0, (40, 50))
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, np.zeros((3, 40, 50), np.uint8), photometric="minisblack")
    monkeypatch.delenv(data_io.MAX_PIXELS_ENV, raising=False)
    monkeypatch.setattr(data_io, "MAX_IMAGE_PIXELS", 1000)
    pillow_limit = PILImage.MAX_IMAGE_PIXELS
    for path, read in ((png, data_io.read_image), (tif, data_io.read_stack)):
        with pytest.raises(DataError) as info:
            read(path)
        text = str(info.value)
        assert str(path) in text and "50x40 = 2,000 pixels" in text and "1,000" in text
        assert "ZF_UNET_MAX_IMAGE_PIXELS" in text and "corrupt" not in text
    assert PILImage.MAX_IMAGE_PIXELS == pillow_limit

    monkeypatch.setenv(data_io.MAX_PIXELS_ENV, "none")  # the variable wins
    assert data_io.read_image(png).shape == (40, 50, 1)
    assert data_io.read_stack(tif).shape == (3, 40, 50, 1)
    monkeypatch.setenv(data_io.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match="ZF_UNET_MAX_IMAGE_PIXELS='lots': expected"):
        data_io.read_image(png)


def test_pillow_bomb_limit_is_lifted_only_during_the_read(tmp_path, monkeypatch):
    """An image over Pillow's decompression-bomb limit (here set to 100 pixels) is read, and
    Pillow's limit is back afterwards."""
    from PIL import Image as PILImage

    png = _png(tmp_path / "a.png", 0, (40, 50))
    monkeypatch.delenv(data_io.MAX_PIXELS_ENV, raising=False)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(PILImage.DecompressionBombError):
        PILImage.open(png)
    expected = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    np.testing.assert_array_equal(data_io.read_image(png)[..., 0], expected)
    assert PILImage.MAX_IMAGE_PIXELS == 100


def test_cli_size_limit_is_one_line(tmp_path, model_path, monkeypatch, capsys):
    png = _png(tmp_path / "big.png", 0, (40, 50))
    monkeypatch.setenv(data_io.MAX_PIXELS_ENV, "1000")
    capsys.readouterr()
    assert main(["predict", str(png), "--model", str(model_path), "--out",
                 str(tmp_path / "pred")]) == 2
    line = _one_error_line(capsys)
    assert "big.png" in line and "ZF_UNET_MAX_IMAGE_PIXELS" in line
    assert not (tmp_path / "pred").exists()


# --------------------------------------------------------------------------- overlay


def test_overlay_of_a_large_image_is_downsampled(tmp_path, model, monkeypatch):
    import zf_unet.file_prediction as file_prediction

    monkeypatch.setattr(file_prediction, "OVERLAY_MAX_SIDE", 16)
    png = _png(tmp_path / "a.png", 0, (40, 50))
    predict_files(model, [png], tmp_path / "pred")
    overlay = np.asarray(Image.open(tmp_path / "pred" / "a_overlay.png"))
    assert overlay.shape == (10, 13, 3)  # every 4th pixel: ceil(50 / 16) = 4
    mask = np.asarray(Image.open(tmp_path / "pred" / "a_mask.png"))
    image = np.asarray(Image.open(png))
    expected = (zf_unet.plots.overlay(image[::4, ::4] / np.float32(255), mask[::4, ::4]) * 255)
    np.testing.assert_allclose(overlay, expected.astype(np.uint8), atol=1)


def test_two_channel_images_get_an_overlay(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((None, None, 2), depth=3, filters=4)
    tif = tmp_path / "two.tif"
    tifffile.imwrite(tif, np.zeros((16, 16, 2), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    written = predict_files(model, [tif], tmp_path / "pred")
    assert np.asarray(Image.open(tmp_path / "pred" / "two_overlay.png")).shape == (16, 16, 3)
    assert len(written) == 3
