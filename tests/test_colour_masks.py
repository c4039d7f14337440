"""Colour-coded masks through the config (``data.palette``) and the CLI (``--palette``), the
colours ``check-data`` lists, JPEG masks refused, and the config keys that used to be ignored
silently (``~`` in paths, ``data.spacing`` in 2-D, a random encoder frozen for the whole run)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zf_unet
from zf_unet.cli import main
from zf_unet.config import Config
from zf_unet.errors import ConfigWarning
from zf_unet.data import colour_masks
from zf_unet.data.file_sources import FolderSource
from zf_unet.doctor import check_data
from zf_unet.errors import ConfigError, DataError

#: class i = COLOURS[i] (background black, road purple, sidewalk pink: Cityscapes colours)
COLOURS = [(0, 0, 0), (128, 64, 128), (244, 35, 232)]


def class_ids(i: int, size: int = 32) -> np.ndarray:
    """Class-id masks 0..2 whose class 2 shrinks with ``i`` (the colours have distinct
    pixel counts)."""
    ids = np.zeros((size, size), np.uint8)
    ids[: size // 2, : size // 2] = 1
    ids[size // 2:, size // 2: size // 2 + 4 + i] = 2
    return ids


def colour_folder(root: Path, n: int = 3, size: int = 32, colours=COLOURS,
                  ext: str = ".png") -> tuple[Path, list[np.ndarray]]:
    """``root/images`` + RGB ``root/masks`` painted with ``colours``; returns the ids too."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids_all = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
            root / "images" / f"{i:02d}.png")
        ids = class_ids(i, size)
        Image.fromarray(np.asarray(colours, np.uint8)[ids]).save(root / "masks" / f"{i:02d}{ext}")
        ids_all.append(ids)
    return root, ids_all


# --------------------------------------------------------------------------- the config value


def test_list_and_table_forms_give_the_readers_mapping():
    cfg = Config().override(["data.palette=[[0,0,0],[128,64,128],\"#f423e8\"]"])
    assert cfg.data.mask_palette() == {c: i for i, c in enumerate(COLOURS)}
    assert cfg.data.palette_classes() == 3
    table = Config().override(['data.palette={"#000000"=0, "128,64,128"=1, "#FFFFFF"=255}',
                               "data.ignore_index=255"])
    assert table.data.mask_palette() == {(0, 0, 0): 0, (128, 64, 128): 1, (255, 255, 255): 255}
    assert table.data.palette_classes() == 1  # two classes + void: a binary model
    groups = Config().override(["data.palette=[[[0,0,0],[10,10,10]],[[255,0,0]]]"])
    assert groups.data.mask_palette() == {(0, 0, 0): 0, (10, 10, 10): 0, (255, 0, 0): 1}
    assert Config().data.mask_palette() is None and Config().data.palette_classes() == 0


@pytest.mark.parametrize("sets", [
    ["data.palette=[[0,0,0],[128,64,128],[244,35,232]]"],
    ['data.palette={"#000000"=0, "#804080"=1, "#ffffff"=255}', "data.ignore_index=255"],
])
def test_palette_survives_the_run_folder_toml(tmp_path, sets):
    cfg = Config().override(sets)
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    again = Config.from_toml(path)
    assert again.data.palette == cfg.data.palette
    assert again.data.mask_palette() == cfg.data.mask_palette()


@pytest.mark.parametrize("sets,match", [
    (["data.palette=[[0,0,0]]"], r"palette = \[\[0, 0, 0\]\] names one class"),
    (["data.palette=[[0,0,0],[0,0,0]]"], r"palette: the colour \[0, 0, 0\] is listed for "
                                         r"class 0 and class 1"),
    (["data.palette=[[0,0,300],[0,0,0]]"], r"palette\[0\]: \[0, 0, 300\] is not a colour; "
                                           r"expected \[r, g, b\] with integers 0\.\.255"),
    (['data.palette=["#00000g",[1,1,1]]'], r"palette\[0\]: '#00000g' is not a colour"),
    (["data.palette=5"], r"palette = 5; expected a list of colours"),
    (['data.palette={"#000000"=0, "#ff0000"=1, "#ffffff"=255}'],
     r"class ids \[0, 1, 255\]; expected the ids 0\.\.K-1 without gaps.*ignore_index"),
    (['data.palette={"#000000"=0, "#ff0000"=true}'], r"expected a class id"),
    (["data.palette=[[0,0,0],[1,1,1]]", "data.num_classes=3"],
     r"palette names 2 classes but num_classes = 3; expected num_classes = 1"),
    (["data.palette=[[0,0,0],[1,1,1]]", "data.class_values=[0,1]"],
     r"palette and class_values .* cannot be used together"),
    (["data.palette=[[0,0,0],[1,1,1]]", "data.volumes=true"],
     r"palette and volumes = True cannot be used together"),
    (["data.palette=[[0,0,0],[1,1,1],[2,2,2]]", "data.ignore_index=2"],
     r"ignore_index = 2 is a class id of the 3 classes"),
    (["data.palette=[[0,0,0],[1,1,1],[2,2,2]]", "data.border_weights=true"],
     r"border_weights = true needs binary masks"),
])
def test_bad_palettes_name_the_key(sets, match):
    with pytest.raises(ConfigError, match=match) as info:
        Config().override(sets)
    assert "[data]" in str(info.value) and "\n" not in str(info.value)


def test_palette_flag_text_forms():
    assert colour_masks.parse_palette_text("[[0,0,0],[255,0,0]]") == [[0, 0, 0], [255, 0, 0]]
    assert colour_masks.parse_palette_text('{"#000000": 0, "#ff0000": 1}') == {
        "#000000": 0, "#ff0000": 1}  # JSON works too
    with pytest.raises(ConfigError, match=r"--palette 'red': not a list or table"):
        colour_masks.parse_palette_text("red")
    mapping, k = colour_masks.palette_arguments("[[0,0,0],[9,9,9],[7,7,7]]", None, None)
    assert mapping == {(0, 0, 0): 0, (9, 9, 9): 1, (7, 7, 7): 2} and k == 3
    assert colour_masks.palette_arguments("[[0,0,0],[9,9,9]]", None, None)[1] == 1
    assert colour_masks.palette_arguments(None, 4, None) == (None, 4)


# --------------------------------------------------------------------------- reading masks


def test_colour_folder_reads_to_the_painted_ids(tmp_path):
    data, ids = colour_folder(tmp_path / "d")
    cfg = Config().override(["data.palette=[[0,0,0],[128,64,128],[244,35,232]]"])
    loaded = zf_unet.data.load_source(data, palette=cfg.data.mask_palette(), num_classes=3)
    for got, want in zip(loaded.masks, ids):
        np.testing.assert_array_equal(got, want)


def test_training_data_takes_the_palette_and_its_class_count(tmp_path):
    """data.num_classes = 0 with a palette: K is the palette's (3), though no training
    mask holds class 2 (class ids inferred from the masks would give a binary model)."""
    from zf_unet.training import make_data

    data, _ = colour_folder(tmp_path / "d", n=4)
    for f in (data / "masks").iterdir():  # repaint class 2 (pink) as class 1 (purple)
        rgb = np.asarray(Image.open(f)).copy()
        rgb[(rgb == COLOURS[2]).all(-1)] = COLOURS[1]
        Image.fromarray(rgb).save(f)
    cfg = Config().override([f"data.source={json.dumps(str(data))}",
                             "data.palette=[[0,0,0],[128,64,128],[244,35,232]]",
                             "data.val_fraction=0.25", "data.batch_size=2",
                             "data.augment.enabled=false"])
    _, _, info = make_data(cfg, seed=0)
    assert info.num_classes == 3
    assert info.class_pixels[2] == 0 and info.class_pixels[1] > 0


def test_rgb_mask_error_names_the_config_and_cli_forms(tmp_path):
    data, _ = colour_folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"masks/00\.png: RGB mask with coloured pixels but no "
                       r"palette; set the class colours with --set data\.palette=") as info:
        FolderSource(data, num_classes=3).read(0)
    assert "--palette" in str(info.value) and "check-data" in str(info.value)


def test_unknown_colour_names_file_colour_and_key(tmp_path):
    data, _ = colour_folder(tmp_path / "d")
    src = FolderSource(data, palette={(0, 0, 0): 0, (128, 64, 128): 1}, num_classes=2)
    with pytest.raises(DataError, match=r"00\.png: 1 colour\(s\) not in the palette: "
                       r"\(244, 35, 232\); add them to data\.palette / --palette"):
        src.read(0)


def test_jpeg_masks_are_refused_naming_the_file(tmp_path):
    data, _ = colour_folder(tmp_path / "d", colours=[(0, 0, 0), (255, 255, 255),
                                                     (255, 255, 255)], ext=".jpg")
    with pytest.raises(DataError, match=r"masks/01\.jpg: a JPEG mask; JPEG's lossy compression "
                       r"alters label values.*expected masks saved as PNG or TIFF"):
        FolderSource(data).read(1)
    with pytest.raises(DataError, match=r"\.jpg: a JPEG mask"):
        zf_unet.data.make_datasets(data, num_classes="auto")


# --------------------------------------------------------------------------- check-data


def test_check_data_lists_colours_and_a_palette_that_works(tmp_path, capsys):
    data, ids = colour_folder(tmp_path / "d")
    report = check_data(data)
    # pixel counts against a direct count of the painted ids
    want = {"#{:02x}{:02x}{:02x}".format(*COLOURS[c]): int(sum(np.sum(m == c) for m in ids))
            for c in range(3)}
    assert report.colours == want
    lines = [s for s in report.suggestions if s.startswith("data.palette=")]
    assert len(lines) == 1
    pasted = lines[0].split()[0]
    # black first, then by pixel count: purple (256 px per mask) before pink
    assert pasted == "data.palette=[[0,0,0],[128,64,128],[244,35,232]]"
    assert "data.num_classes=3" in report.suggestions
    # the pasted line is a valid config and reads every mask
    cfg = Config().override([pasted])
    good = check_data(data, palette=cfg.data.palette)
    assert good.ok, good.format()
    assert set(good.summary["class_frequencies"]) == {0, 1, 2}
    assert main(["check-data", str(data)]) == 1
    out = capsys.readouterr().out
    assert "mask colours (3, pixels): (0, 0, 0) #000000:" in out
    assert "--palette '[[0,0,0],[128,64,128],[244,35,232]]'" in out
    assert main(["check-data", str(data), "--palette", "[[0,0,0],[128,64,128],[244,35,232]]"]) == 0


def test_check_data_too_many_colours_suggests_no_palette(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "images/a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "masks/a.png")
    report = check_data(root)
    assert not any(s.startswith("data.palette") for s in report.suggestions)
    assert any("too many for class colours" in n for n in report.notes)


def test_check_data_jpeg_masks_are_an_error_without_made_up_classes(tmp_path):
    data, _ = colour_folder(tmp_path / "d", colours=[(0, 0, 0), (255, 255, 255),
                                                     (255, 255, 255)], ext=".jpg")
    report = check_data(data)
    jpeg = [p for p in report.problems if p.code == "jpeg_masks"]
    assert len(jpeg) == 1 and jpeg[0].severity == "error"
    assert "masks/00.jpg" in jpeg[0].message and "lossy" in jpeg[0].message
    assert report.suggestions == [] and report.num_checked == 0


def palette_png_folder(root: Path, masks: list[np.ndarray], palette: list[int]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i, m in enumerate(masks):
        Image.fromarray(rng.integers(0, 256, m.shape, dtype=np.uint8)).save(
            root / "images" / f"{i}.png")
        p = Image.fromarray(m, mode="P")
        p.putpalette(palette)
        p.save(root / "masks" / f"{i}.png")
    return root


def test_palette_png_majority_index_is_not_proposed_as_void(tmp_path):
    """Quantised colour masks: the background got the last index (3), most of the pixels.
    The old advice made it void (ignore_index = 3); there is no evidence of void."""
    m = np.full((32, 32), 3, np.uint8)
    m[:8, :8] = 0
    m[8:12, :] = 1
    palette = [255, 0, 0, 0, 255, 0, 9, 9, 9, 0, 0, 0] + [0] * (252 * 3)
    report = check_data(palette_png_folder(tmp_path / "d", [m, m], palette))
    assert not any(s.startswith("data.ignore_index") for s in report.suggestions), \
        report.suggestions
    assert report.suggestions[0].startswith("data.class_values=[[0], [1], [3]]")
    assert any("palette (\"P\" mode) PNGs" in n for n in report.notes)


@pytest.mark.parametrize("void,colour", [(255, (7, 7, 7)), (5, colour_masks.VOC_VOID_COLOUR)])
def test_palette_png_void_from_evidence(tmp_path, void, colour):
    m = np.zeros((32, 32), np.uint8)
    m[:8] = 1
    m[8:12] = 2
    m[12:14] = void  # a thin void border
    palette = [0] * (256 * 3)
    palette[3 * void: 3 * void + 3] = colour
    report = check_data(palette_png_folder(tmp_path / "d", [m, m], palette))
    assert len(report.suggestions) >= 2 and report.suggestions[1] == "data.num_classes=3", \
        report.suggestions
    assert report.suggestions[0].startswith(f"data.ignore_index={void}  #")


# --------------------------------------------------------------------------- pack --palette


def test_pack_palette_stores_the_class_ids(tmp_path, capsys):
    from zf_unet.data.shard_source import ShardSource

    data, ids = colour_folder(tmp_path / "d")
    out = tmp_path / "shards"
    assert main(["pack", str(data), "--out", str(out),
                 "--palette", "[[0,0,0],[128,64,128],[244,35,232]]"]) == 0
    shards = ShardSource(out)
    assert shards.info.num_classes == 3
    for i, want in enumerate(ids):
        np.testing.assert_array_equal(np.asarray(shards.read(i).mask).reshape(want.shape), want)
    assert main(["pack", str(data), "--out", str(tmp_path / "s2"), "--palette", "[[0,0,0]]"]) == 2
    assert "--palette = [[0, 0, 0]] names one class" in capsys.readouterr().err


# --------------------------------------------------------------------------- silent settings


def test_tilde_in_paths_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    toml = tmp_path / "c.toml"
    toml.write_text('[data]\nsource = "~/data/train"\nval_source = "~/data/val"\n'
                    '[model]\nbackbone = "mobilenetv2"\nencoder_weights = "~/enc.weights.h5"\n')
    cfg = Config.from_toml(toml)
    assert cfg.data.source == str(tmp_path / "data" / "train")
    assert cfg.data.val_source == str(tmp_path / "data" / "val")
    assert cfg.model.encoder_weights == str(tmp_path / "enc.weights.h5")
    assert Config().override(["data.source=~/x"]).data.source == str(tmp_path / "x")
    assert Config().override(["model.backbone=resnet50", "model.encoder_weights=imagenet"]
                             ).model.encoder_weights == "imagenet"


def config_warnings(sets: list[str]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Config().override(sets)
    return [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def test_spacing_on_a_2d_run_warns_naming_the_key():
    (msg,) = config_warnings(["data.spacing=[50, 4.6, 4.6]"])
    assert msg.startswith("data.spacing = [50, 4.6, 4.6] is ignored") and "volume" in msg
    assert config_warnings(["data.spacing=[50, 4.6, 4.6]", "data.volumes=true"]) == []
    with pytest.warns(ConfigWarning) as rec:
        Config().override(["data.spacing=[2, 1, 1]"])
    w = rec[0]
    line = warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
    assert line.count("\n") == 1 and line.startswith("--set:")  # one line, naming the place


def test_random_encoder_frozen_for_the_whole_run_warns():
    base = ["model.backbone=mobilenetv2", "train.epochs=3"]
    (msg,) = config_warnings(base + ["model.encoder_freeze_epochs=3"])
    for key in ("model.encoder_freeze_epochs = 3", "train.epochs = 3", "model.encoder_weights"):
        assert key in msg
    assert config_warnings(base + ["model.encoder_freeze_epochs=2"]) == []
    assert config_warnings(base + ["model.encoder_freeze_epochs=3",
                                   "model.encoder_weights=imagenet"]) == []


def test_evaluate_reads_colour_masks_with_the_runs_palette(tmp_path):
    """``zf-unet evaluate`` reads masks as the run's config.toml says: its data.palette."""
    from zf_unet.evaluation import evaluate_model
    from zf_unet.io_utils import save_model_atomic

    data, ids = colour_folder(tmp_path / "d", n=2)
    run = tmp_path / "run"
    run.mkdir()
    model = save_model_atomic(zf_unet.build_unet((None, None, 1), num_classes=3, depth=2,
                                                 filters=4), run / "best.keras")
    (run / "config.toml").write_text(Config().override(
        ["data.palette=[[0,0,0],[128,64,128],[244,35,232]]"]).to_toml())
    result = evaluate_model(model, data, split="all")
    assert result["num_classes"] == 3
    assert result["pixels"] == sum(m.size for m in ids)
    np.testing.assert_array_equal(np.asarray(result["confusion"]).sum(axis=1),
                                  [sum(int(np.sum(m == c)) for m in ids) for c in range(3)])
    (run / "config.toml").write_text(Config().to_toml())  # the same run without the palette
    with pytest.raises(DataError, match=r"RGB mask with coloured pixels but no palette"):
        evaluate_model(model, data, split="all")
