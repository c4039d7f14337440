"""``benchmarks/gpu_check.py --quick`` runs on the JAX and PyTorch backends with TensorFlow
unimportable (as on a GPU machine that has no TensorFlow), on the CPU. Skipped where the
backend's package is missing (CI installs both); about 20-40 s per backend on 2 cores."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# TensorFlow made unimportable, then the script run as __main__.
WRAPPER = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = sys.argv[1:]; "
           "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_gpu_check_quick_without_tensorflow(backend: str, tmp_path: Path) -> None:
    # find_spec, not importorskip: the framework stays out of the test process
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               TF_CPP_MIN_LOG_LEVEL="2",
               # XLA's CPU compiler at level 0: JAX compiles ~6x faster; tiny tensors here
               XLA_FLAGS="--xla_backend_optimization_level=0 "
                         "--xla_llvm_disable_expensive_passes=true")
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(SCRIPT), "--quick", "--backend", backend,
         "--json", str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["failures"] == []
    assert res["backend"] == backend and res["precision"] == "float32"
    assert res["tensorflow_imported"] is False
    for name in ("zf224", "isbi"):
        row = res["models"][name]
        assert math.isfinite(row["keras_ips"]) and row["keras_ips"] > 0, row
        assert row["keras_steps"] == 4 and row["keras_loss_finite"], row
        if "torch_ips" in row:  # PyTorch installed: the plain PyTorch twin ran beside it
            assert math.isfinite(row["torch_ips"]) and row["torch_ips"] > 0, row
            assert row["params_torch"] == row["params_keras"], row
        assert res["round_trip"][name] < 1e-4
    assert res["tiled"]["finite"] and res["tiled"]["shape"] == [512, 512, 1]
    assert "gpu_check OK" in proc.stdout
