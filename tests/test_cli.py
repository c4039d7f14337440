"""The zf-unet command line."""
from __future__ import annotations

import json
import subprocess
import sys

import keras
import pytest

from zf_unet.cli import main


def test_demo_quick_writes_all_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--quiet", "--precision", "float32"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["metrics.json", "model.keras", "predictions.png", "training_curves.png"]
    assert (out / ".zf_unet-output.json").is_file()  # the folder is zf-unet's (outputs.MARKER)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("dice_cell_interior", "dice_cell_interior_trivial_all_foreground", "iou_cell_interior",
                "pixel_error", "rand_error"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = keras.saving.load_model(out / "model.keras")
    assert model.output_shape[-1] == 1


@pytest.mark.slow
def test_demo_learns_well_above_trivial(tmp_path):
    """The demo exactly as `make demo` runs it must clearly beat the all-foreground guess."""
    from zf_unet.demo import run_demo

    m = run_demo(tmp_path, verbose=0, overwrite=True)  # as `make demo` (--overwrite)
    assert m["dice_cell_interior"] > m["dice_cell_interior_trivial_all_foreground"] + 0.05
    assert m["dice_membrane"] > 0.7
    assert m["pixel_error"] < 0.5 * m["pixel_error_trivial_all_foreground"]


def test_console_script_help_and_version():
    proc = subprocess.run([sys.executable, "-m", "zf_unet.cli", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().count(".") == 2
    proc = subprocess.run([sys.executable, "-m", "zf_unet.cli"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "demo" in proc.stdout


def test_show_augment_writes_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["show-augment", "synthetic", "--out", str(out), "--n", "2",
                 "--patch-size", "64"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(out).size[1] > Image.open(out).size[0] * 0.5  # 2 rows x 3 panels


def test_cli_bad_input_exits_2_with_one_message(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["show-augment", str(missing), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "images/" in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()


def test_cli_export_refuses_to_overwrite_and_checks_sizes(tmp_path, capsys):
    import zf_unet
    from zf_unet.io_utils import save_model_atomic

    model_path = save_model_atomic(zf_unet.build_unet((None, None, 1), depth=3, filters=4),
                                   tmp_path / "m.keras")
    out = tmp_path / "serving"
    assert main(["export", "--model", str(model_path), "--out", str(out)]) == 0
    assert (out / "1" / "saved_model.pb").exists()
    before = (out / "1" / "saved_model.pb").read_bytes()
    assert main(["export", "--model", str(model_path), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "1" / "saved_model.pb").read_bytes() == before  # nothing damaged
    assert main(["export", "--model", str(model_path), "--out", str(tmp_path / "m.tflite"),
                 "--format", "tflite", "--input-size", "65", "96"]) == 2
