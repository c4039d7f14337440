"""zf_unet on every Keras backend: the same numbers on JAX and PyTorch as on TensorFlow, with
TensorFlow unimportable; ``.keras`` files across backends; ``zf-unet train --backend``; and
one clear line for what a backend cannot do.

This process runs TensorFlow (``conftest.py``). ``tests/_backend_worker.py`` computes the
same things (models built here, same weights and inputs) in a subprocess per backend with
``sys.modules["tensorflow"] = None``.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import _backend_worker as worker
import zf_unet
from zf_unet.registry import TILING_DEFAULTS

# find_spec, not importorskip: importing PyTorch or JAX into this TensorFlow process starts
# their thread pools beside TensorFlow's and slowed later training tests ~3x on 2 cores
for _package in ("jax", "torch"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(f"{_package} is not installed", allow_module_level=True)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OTHER_BACKENDS = ("torch", "jax")  # torch first: the jax worker then loads its .keras file

#: XLA's CPU compiler at optimisation level 0: JAX compiles every initializer and step ~6x
#: faster, and these tiny tensors do not need optimised kernels.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

#: Values computed by training steps (two Adam steps through BatchNorm batch statistics)
#: follow float32 rounding of different kernels; everything else must agree to 1e-5.
TRAINING_KEYS = ("train_losses", "train_after", "loaded_trained_")
#: MobileNetV2's 52 BatchNorm layers in training mode (batch statistics of 2 samples)
#: amplify float32 rounding: measured 3e-5 (JAX) and 6e-5 (PyTorch) on 2026-12-07.
LOOSER = {"mobilenetv2_train_mode_0": 2e-4}


def backend_env(backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    if backend == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FAST_XLA).strip()
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """``backend -> (arrays, meta)`` for tensorflow (this process) and the others."""
    work = tmp_path_factory.mktemp("backends")
    worker.write_reference_models(work)
    # The workers run beside this process's own computation (each waits, before loading the
    # other backends' trained .keras files, until they are written): mostly single-threaded
    # Python, so side by side they finish sooner than one after the other.
    procs, waits = {}, ["tensorflow"]
    for backend in OTHER_BACKENDS:  # output to files: no pipe fills up while we compute
        with open(work / f"{backend}.log", "w") as log:
            procs[backend] = subprocess.Popen(
                [sys.executable, str(TESTS / "_backend_worker.py"), str(work), "--block-tf"]
                + [arg for name in waits for arg in ("--wait-for", name)],
                env=backend_env(backend), stdout=log, stderr=subprocess.STDOUT)
        waits = waits + [backend]
    try:
        out = {"tensorflow": worker.compute(work)}
        for backend, proc in procs.items():
            proc.wait(timeout=900)
            assert proc.returncode == 0, (work / f"{backend}.log").read_text()[-3000:]
            out[backend] = (dict(np.load(work / f"{backend}.npz")),
                            json.loads((work / f"{backend}.json").read_text()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out["work"] = work
    return out


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_without_tensorflow(results, backend):
    arrays, meta = results[backend]
    assert meta["backend"] == backend
    assert meta["tensorflow_imported"] is False


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_same_numbers_as_tensorflow(results, backend):
    ref, _ = results["tensorflow"]
    arrays, _ = results[backend]
    compared = [k for k in ref if not k.startswith(TRAINING_KEYS)]
    assert len(compared) > 60  # model outputs, tiling, every loss / metric / optimizer
    worst = {}
    for key in compared:
        assert arrays[key].shape == ref[key].shape, key
        assert np.all(np.isfinite(arrays[key])), key
        tol = LOOSER.get(key, 1e-5)
        if not np.allclose(arrays[key], ref[key], rtol=tol, atol=tol):
            worst[key] = float(np.max(np.abs(arrays[key] - ref[key])))
    assert not worst, f"differences from TensorFlow above 1e-5: {worst}"


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_training_steps_agree(results, backend):
    ref, _ = results["tensorflow"]
    arrays, _ = results[backend]
    np.testing.assert_allclose(arrays["train_losses"], ref["train_losses"], rtol=1e-4)
    # the step moved the weights (the comparison below is not of two untrained models)
    assert not np.allclose(ref["train_after"], ref["train_before"], atol=1e-3)
    np.testing.assert_allclose(arrays["train_after"], ref["train_after"], atol=5e-4)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_builders_same_layers_and_parameters(results, backend):
    _, ref = results["tensorflow"]
    _, meta = results[backend]
    assert meta["layers"] == ref["layers"]
    assert meta["params"] == ref["params"]
    assert meta["params"]["ZF_UNET_224"] == 31_466_757


def test_keras_files_load_on_every_backend(results):
    """Each backend's trained model, loaded under the others, predicts what it predicted
    where it was saved."""
    import keras

    work = results["work"]
    x = np.load(work / "inputs.npz")["train_x"]
    for backend in OTHER_BACKENDS:  # saved there, loaded here (TensorFlow)
        mine = np.asarray(keras.models.load_model(work / f"trained_{backend}.keras")(x))
        np.testing.assert_allclose(mine, results[backend][0]["train_after"], atol=1e-5)
    # saved here, loaded there; and torch's file loaded by the jax worker
    for backend in OTHER_BACKENDS:
        np.testing.assert_allclose(results[backend][0]["loaded_trained_tensorflow"],
                                   results["tensorflow"][0]["train_after"], atol=1e-5)
    np.testing.assert_allclose(results["jax"][0]["loaded_trained_torch"],
                               results["torch"][0]["train_after"], atol=1e-5)


def test_cli_tiling_defaults_are_predict_tiled_defaults():
    params = inspect.signature(zf_unet.predict_tiled).parameters
    assert TILING_DEFAULTS == {k: params[k].default for k in TILING_DEFAULTS}


# --------------------------------------------------------------------------- the command line


def run_cli(args: list[str], backend_env_name: str = "tensorflow", block: str | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``zf-unet ARGS`` in a fresh process (``block``: a package made unimportable)."""
    code = ("import sys\n"
            + (f"sys.modules[{block!r}] = None\n" if block else "")
            + f"sys.argv = ['zf-unet'] + {args!r}\n"
            "from zf_unet.cli import main\nsys.exit(main())\n")
    env = backend_env(backend_env_name)
    env.pop("KERAS_BACKEND")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=900, cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("zf-unet "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


TINY = ["--set", "data.synthetic_n=8", "--set", "data.synthetic_size=64",
        "--set", "data.patch_size=32", "--set", "data.batch_size=4",
        "--set", "model.depth=2", "--set", "model.filters=4"]


def test_cli_train_predict_evaluate_export_across_backends(tmp_path):
    """Train on JAX (augmentation, border weights, a time budget; resumed with the samples
    streamed from disk), evaluate and predict with PyTorch, export for TF Serving."""
    run = tmp_path / "run"
    recipe = TINY + ["--set", "data.border_weights=true", "--set", "train.max_minutes=30"]
    proc = run_cli(["train", "--backend", "jax", "--data", "synthetic", "--epochs", "2",
                    "--out", str(run), "--quiet", "--set", "data.cache=memory"] + recipe, "jax")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backend"] == "jax" and not summary["streaming"]
    assert all(np.isfinite(v) for v in summary["final"].values())
    # resumed with more epochs, still on JAX, now streaming (data.cache may change on resume)
    proc = run_cli(["train", "--backend", "jax", "--data", "synthetic", "--epochs", "3",
                    "--out", str(run), "--quiet", "--set", "data.cache=none"] + recipe, "jax")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((run / "log.csv").read_text().strip().splitlines()) == 1 + 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["streaming"] and summary["epochs_run_this_call"] == 1

    data = zf_unet.data.write_synthetic_folder(tmp_path / "syn", n=3, size=64, seed=1)
    image = tmp_path / "img.tif"
    import tifffile

    tifffile.imwrite(image, (np.random.default_rng(0).random((70, 50)) * 255).astype("uint8"))
    # evaluate, predict and export only read final.keras: three processes side by side
    with ThreadPoolExecutor(3) as pool:
        evaluated = pool.submit(
            run_cli, ["evaluate", "--model", str(run / "final.keras"), "--data", str(data),
                      "--split", "all", "--json", str(tmp_path / "scores.json"),
                      "--backend", "torch"], "torch")
        predicted = pool.submit(
            run_cli, ["predict", str(image), "--model", str(run / "final.keras"),
                      "--out", str(tmp_path / "pred"), "--backend", "torch"], "torch")
        exported = pool.submit(
            run_cli, ["export", "--model", str(run / "final.keras"), "--out",
                      str(tmp_path / "serving")],
            "jax")  # KERAS_BACKEND=jax in the environment: export runs on TensorFlow
    proc = evaluated.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "scores.json").read_text())

    proc = predicted.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((tmp_path / "pred").iterdir())

    proc = exported.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "serving" / "1" / "saved_model.pb").exists()


def test_cli_bad_backend_choices(tmp_path):
    out = tmp_path / "run"
    cases = [  # (run_cli arguments, what the one line names); the five run side by side
        ((["train", "--backend", "nosuch", "--out", str(out)],), {}, ("--backend", "nosuch")),
        ((["train", "--backend", "jax", "--data", "synthetic", "--out", str(out)] + TINY,),
         {"block": "jax"}, ("jax", "pip install")),
        ((["train", "--backend", "torch", "--data", "synthetic", "--strategy", "mirrored",
           "--out", str(out)] + TINY,), {}, ("mirrored", "tensorflow")),
        # zf-unet train reads through tf.data: without TensorFlow, one line that says so
        ((["train", "--backend", "jax", "--data", "synthetic", "--out", str(out)] + TINY,
          "jax"), {"block": "tensorflow"}, ("TensorFlow", "pip install")),
        ((["export", "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "s")],
          "jax"), {"block": "tensorflow"}, ("tensorflow", "pip install")),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        procs = [pool.submit(run_cli, *args, **kwargs) for args, kwargs, _ in cases]
    for proc, (_, _, needles) in zip(procs, cases):
        one_line_error(proc.result(), *needles)
    assert not out.exists() and not (tmp_path / "s").exists()


def test_tensorflow_only_parts_name_what_needs_tensorflow(tmp_path):
    code = ("import sys\nsys.modules['tensorflow'] = None\n"
            "import zf_unet, zf_unet.data\n"
            "from zf_unet.errors import MissingDependencyError\n"
            "try:\n    zf_unet.data.make_datasets('synthetic')\n"
            "except MissingDependencyError as e:\n    print('ERR', e)\n"
            "m = zf_unet.build_unet(filters=2, depth=2)\n"
            "try:\n    zf_unet.export_saved_model(m, sys.argv[1])\n"
            "except Exception as e:\n    print('ERR', type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")],
                          env=backend_env("torch"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERR")]
    assert len(errors) == 2, proc.stdout
    assert "tf.data" in errors[0] and "pip install" in errors[0]
    assert "ConfigError" in errors[1] and "zf-unet export" in errors[1]
    assert not (tmp_path / "s").exists()
