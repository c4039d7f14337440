"""Run every notebooks/*.ipynb top to bottom (quick mode) and check what it reports.

The kernel is this interpreter (the project's virtualenv), not whatever ``python3`` kernel a
user installed: a temporary kernelspec that runs ``sys.executable -m ipykernel_launcher`` is
put first on ``JUPYTER_PATH`` for the test only (no global ``jupyter kernelspec install``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def _ids(paths):
    return [p.name for p in paths]


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """Environment for the kernel: quick mode, TF backend, this interpreter as ``python3``."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (zf_unet tests)",
        "language": "python",
    }), encoding="utf-8")
    old = os.environ.get("JUPYTER_PATH")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter") + (os.pathsep + old if old else ""))
    monkeypatch.setenv("ZF_UNET_QUICK", "1")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.delenv("ZF_UNET_USE_ISBI", raising=False)  # synthetic data: no files needed
    monkeypatch.delenv("MPLBACKEND", raising=False)        # the kernel's inline backend
    return tmp_path


def _execute(path: Path) -> tuple[nbformat.NotebookNode, float]:
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb, time.perf_counter() - t0


def _stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


def _last_json(nb) -> dict:
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    text = _stream_text(code_cells[-1])
    start = text.find("{")
    assert start >= 0, f"last cell printed no JSON summary:\n{text}"
    return json.loads(text[start:])


def _same_python(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b) or os.path.abspath(a) == os.path.abspath(b)


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    assert "quickstart.ipynb" in _ids(NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs; clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution_count"


def test_quickstart_has_colab_badge_and_guarded_install():
    nb = nbformat.read(NOTEBOOK_DIR / "quickstart.ipynb", as_version=4)
    first_md = next(c for c in nb.cells if c.cell_type == "markdown")
    assert ("https://colab.research.google.com/github/zf-unet/zf_unet/blob/main/notebooks/"
            "quickstart.ipynb") in first_md.source
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert 'if "google.colab" in sys.modules:' in first_code.source
    assert "git+https://github.com/zf-unet/zf_unet" in first_code.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, kernel_env, capsys):
    nb, seconds = _execute(path)
    with capsys.disabled():
        print(f"\n{path.name}: executed in {seconds:.1f} s (ZF_UNET_QUICK=1)")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code_cells):
        assert not any(o.get("output_type") == "error" for o in cell.outputs), f"cell {i} errored"
    # The Colab install cell is a no-op outside Colab.
    assert code_cells[0].outputs == []
    if path.name == "quickstart.ipynb":
        _check_quickstart(nb)


def _check_quickstart(nb) -> None:
    s = _last_json(nb)
    # The kernel ran this interpreter (the project's virtualenv), not some other python3.
    assert _same_python(s["python"], sys.executable), (s["python"], sys.executable)
    assert s["quick"] is True and s["data"] == "synthetic"
    assert s["depth"] == 3 and s["filters"] == 8 and 1 <= s["epochs"] <= 2
    assert s["n_train"] > 0 and s["n_val"] > 0 and s["params"] > 0
    assert s["final_loss"] == pytest.approx(s["final_loss"]) and 0 < s["final_loss"] < 10
    for key in ("pixel_error", "rand_error", "dice_cell", "iou_cell", "baseline_dice_cell", "threshold"):
        assert 0.0 <= s[key] <= 1.0, (key, s[key])
    if s["val_dice_keras"] is not None:
        assert 0.0 <= s["val_dice_keras"] <= 1.0
    # The reloaded SavedModel (uint8 in, no Keras) matches the Keras model.
    assert s["savedmodel_max_abs_diff"] < 1e-5, s["savedmodel_max_abs_diff"]
    assert s["seconds"] < 300  # quick mode: "well under 60 s of compute"; generous for busy CPUs
    # Figures rendered into the outputs (augmented samples, curves, predictions).
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if "image/png" in o.get("data", {}))
    assert images >= 3, f"expected at least 3 figures, got {images}"
