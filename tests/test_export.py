"""Serving exports: TF Serving SavedModel (untiled and tiled) served by a fresh TensorFlow-only
process, saved_model_cli, REST / gRPC request formats, the REST client, TFLite and ONNX."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import zf_unet
from zf_unet.export import (
    EXPORT_INFO,
    export_onnx,
    export_saved_model,
    export_tflite,
    make_serving_fn,
)
from zf_unet.inference import model_geometry, predict_tiled

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "examples" / "serving_client.py"
SIZES = [(1, 1), (37, 301), (512, 512), (1000, 700)]
TILE, OVERLAP = 128, 32


def _unet(seed: int = 0, **kw) -> keras.Model:
    keras.utils.set_random_seed(seed)
    kw.setdefault("depth", 3)
    kw.setdefault("filters", 4)
    kw.setdefault("input_shape", (None, None, 1))
    model = zf_unet.build_unet(**kw)
    # Non-trivial BatchNorm statistics, so that inference mode matters.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(rng.normal(0, 0.1, mean.shape).astype("float32"))
            var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
    return model


def _keras_padded(model: keras.Model, image: np.ndarray, scale: float = 1 / 255) -> np.ndarray:
    """Reference for the untiled export, written independently of zf_unet.export: pad every
    axis to the smallest accepted output length P >= L, (P - L) // 2 before, plus the valid
    margin, by numpy's (repeated) reflection; one Keras call; crop."""
    g = model_geometry(model)
    out0, div, m = g["min_input"] - 2 * g["margin"], g["divisor"], g["margin"]
    _, h, w, _ = image.shape

    def fit(length: int) -> int:
        return out0 + max(0, -(-(length - out0) // div)) * div

    ph, pw = fit(h), fit(w)
    by, bx = (ph - h) // 2, (pw - w) // 2
    x = image.astype(np.float32) * np.float32(scale) if scale != 1 else image.astype(np.float32)
    x = np.pad(x, ((0, 0), (by + m, ph - h - by + m), (bx + m, pw - w - bx + m), (0, 0)),
               mode="reflect")
    y = np.asarray(model(x, training=False), dtype=np.float32)
    return y[:, by : by + h, bx : bx + w]


def _images(seed: int = 7) -> dict:
    """uint8 test images, smooth enough to give non-trivial predictions."""
    rng = np.random.default_rng(seed)
    out = {}
    for h, w in SIZES:
        n = 2 if (h, w) == (37, 301) else 1  # one batched request
        yy, xx = np.mgrid[0:h, 0:w]
        base = 127 + 100 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
        img = base[None, :, :, None] + rng.normal(0, 20, (n, h, w, 1))
        out[f"{h}x{w}"] = np.clip(img, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return _unet(0)


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("serving")
    return {
        "untiled": export_saved_model(model, base / "untiled", version=1),
        "tiled": export_saved_model(model, base / "tiled", version=1, tiled=True,
                                    tile_size=TILE, overlap=OVERLAP),
    }


def _tf_only_site(tmp: Path) -> Path:
    """A copy (symlinks) of the site-packages holding TensorFlow without keras, tf_keras and
    zf_unet, so that a ``python -S`` process on it can import neither."""
    site = Path(tf.__file__).resolve().parent.parent
    fake = tmp / "tf_only_site"
    fake.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if (name.startswith(("keras", "tf_keras", "zf_unet", "__editable__"))
                or name.endswith(".pth")):
            continue
        (fake / entry.name).symlink_to(entry)
    return fake


SERVE_SCRIPT = r"""
import importlib.util, json, sys
import numpy as np
import tensorflow as tf

inputs = np.load(sys.argv[1])
results = {}
for tag, path in json.loads(sys.argv[2]).items():
    loaded = tf.saved_model.load(path)
    sig = loaded.signatures["serving_default"]
    only = loaded.signatures["mask_only"]
    for key in inputs.files:
        out = sig(image=tf.constant(inputs[key]))
        results[f"{tag}/{key}/probabilities"] = out["probabilities"].numpy()
        results[f"{tag}/{key}/mask"] = out["mask"].numpy()
        results[f"{tag}/{key}/mask_only"] = only(image=tf.constant(inputs[key]))["mask"].numpy()
np.savez(sys.argv[3], **results)
print(json.dumps({
    "keras_importable": importlib.util.find_spec("keras") is not None,
    "zf_unet_importable": importlib.util.find_spec("zf_unet") is not None,
    "keras_in_modules": "keras" in sys.modules,
    "zf_unet_in_modules": "zf_unet" in sys.modules,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tf_keras", "zf_unet")),
}))
"""


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory) -> dict:
    """Serve both exports in a fresh Python process that can import TensorFlow but not
    zf_unet or Keras.

    Note: in a normal environment ``import tensorflow`` itself imports Keras 3 when it is
    installed (for ``tf.keras``), so ``'keras' not in sys.modules`` would be false there for
    reasons unrelated to the export. Hiding Keras and zf_unet from the process makes the
    check honest: the SavedModel loads and runs with neither available.
    """
    tmp = tmp_path_factory.mktemp("served")
    if not hasattr(os, "symlink"):  # pragma: no cover
        pytest.skip("needs symlinks")
    images = _images()
    np.savez(tmp / "in.npz", **images)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(_tf_only_site(tmp)), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", SERVE_SCRIPT, str(tmp / "in.npz"),
         json.dumps({k: str(v) for k, v in exports.items()}), str(tmp / "out.npz")],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(tmp / "out.npz") as data:
        outputs = {k: data[k] for k in data.files}
    return {"facts": facts, "outputs": outputs, "images": images}


# --------------------------------------------------------------------------- SavedModel


def test_fresh_process_has_neither_keras_nor_zf_unet(served):
    facts = served["facts"]
    assert facts == {"keras_importable": False, "zf_unet_importable": False,
                     "keras_in_modules": False, "zf_unet_in_modules": False, "loaded": []}


def test_untiled_savedmodel_matches_keras_on_mirror_padded_input(served, model):
    out = served["outputs"]
    worst = 0.0
    for key, image in served["images"].items():
        probs, mask = out[f"untiled/{key}/probabilities"], out[f"untiled/{key}/mask"]
        assert probs.dtype == np.float32 and probs.shape == image.shape
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:3]
        ref = _keras_padded(model, image)
        worst = max(worst, float(np.abs(probs - ref).max()))
        np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(mask, (probs[..., 0] > 0.5).astype(np.uint8))
        np.testing.assert_array_equal(out[f"untiled/{key}/mask_only"], mask)
    # The model gives an informative output (not a constant): both labels occur.
    big = out["untiled/1000x700/mask"]
    assert 0 < big.mean() < 1
    print(f"untiled SavedModel max abs diff vs Keras: {worst:.2e}")


def test_tiled_savedmodel_matches_predict_tiled(served, model):
    out = served["outputs"]
    worst = 0.0
    for key, image in served["images"].items():
        probs, mask = out[f"tiled/{key}/probabilities"], out[f"tiled/{key}/mask"]
        assert probs.dtype == np.float32 and probs.shape == image.shape
        ref = predict_tiled(model, image, tile_size=TILE, overlap=OVERLAP)
        worst = max(worst, float(np.abs(probs - ref).max()))
        np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5, err_msg=key)
        decided = np.abs(ref[..., 0] - 0.5) > 1e-5
        np.testing.assert_array_equal(mask[decided], (ref[..., 0] > 0.5)[decided])
    # Large images really were tiled: tile borders see less context than one whole-image call.
    for key in ("512x512", "1000x700"):
        assert np.abs(out[f"tiled/{key}/probabilities"]
                      - out[f"untiled/{key}/probabilities"]).max() > 1e-4
    print(f"tiled SavedModel max abs diff vs predict_tiled: {worst:.2e}")


def test_saved_model_cli_lists_the_signature(exports):
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        cli = shutil.which("saved_model_cli")
        if cli is None:
            pytest.skip("saved_model_cli not installed")
    proc = subprocess.run([str(cli), "show", "--dir", str(exports["untiled"]), "--all"],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    start = text.index("signature_def['serving_default']")
    end = text.find("signature_def[", start + 10)
    block = text[start : end if end > 0 else None]
    inputs, outputs = block.split("output(s):", 1)
    assert re.search(r"inputs\['image'\] tensor_info:\s*dtype: DT_UINT8\s*"
                     r"shape: \(-1, -1, -1, 1\)", inputs), block
    assert re.search(r"\['probabilities'\] tensor_info:\s*dtype: DT_FLOAT\s*"
                     r"shape: \(-1, -1, -1, 1\)", outputs), block
    assert re.search(r"\['mask'\] tensor_info:\s*dtype: DT_UINT8\s*shape: \(-1, -1, -1\)",
                     outputs), block
    assert "Method name is: tensorflow/serving/predict" in block
    assert "signature_def['mask_only']" in text


def test_export_is_atomic_and_keeps_versions(tmp_path, monkeypatch):
    # file safety: the smallest U-Net (each of the five exports below traces and saves it)
    model = _unet(0, depth=2, filters=2)
    base = tmp_path / "srv"
    first = export_saved_model(model, base, version=3, threshold=0.25)
    assert first == base / "3" and (first / "saved_model.pb").is_file()
    info = json.loads((first / "assets.extra" / EXPORT_INFO).read_text())
    assert info["threshold"] == 0.25 and info["tiled"] is False and info["version"] == 3

    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_saved_model(model, base, version=3)

    real_save = tf.saved_model.save

    def crashing_save(*args, **kwargs):
        real_save(*args, **kwargs)  # half the work is on disk, then the "crash"
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(model, base, version=4)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(model, base, version=3, overwrite=True, threshold=0.75)
    assert sorted(p.name for p in base.iterdir()) == ["3"]  # no version 4, no temp folders
    info = json.loads((base / "3" / "assets.extra" / EXPORT_INFO).read_text())
    assert info["threshold"] == 0.25  # the old version 3 survived the failed overwrite

    monkeypatch.setattr(tf.saved_model, "save", real_save)

    def failing_rename(src, dst):  # the final rename of an overwrite fails
        raise OSError("rename failed")

    with monkeypatch.context() as m:
        m.setattr(os, "rename", failing_rename)
        with pytest.raises(OSError, match="rename failed"):
            export_saved_model(model, base, version=3, overwrite=True, threshold=0.75)
    assert sorted(p.name for p in base.iterdir()) == ["3"]
    info = json.loads((base / "3" / "assets.extra" / EXPORT_INFO).read_text())
    assert info["threshold"] == 0.25  # the old version was put back

    export_saved_model(model, base, version=3, overwrite=True, threshold=0.75)
    assert sorted(p.name for p in base.iterdir()) == ["3"]
    info = json.loads((base / "3" / "assets.extra" / EXPORT_INFO).read_text())
    assert info["threshold"] == 0.75
    # The version folder has ordinary permissions (not mkdtemp's 0700).
    (tmp_path / "ref").mkdir()
    assert (base / "3").stat().st_mode & 0o777 == (tmp_path / "ref").stat().st_mode & 0o777


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_float32_input_multiclass_rgb(tiled):
    model = _unet(2, input_shape=(None, None, 3), num_classes=3)
    fn = make_serving_fn(model, tiled=tiled, tile_size=32, overlap=8, input_dtype="float32")
    image = np.random.default_rng(3).random((2, 45, 70, 3), dtype=np.float32)
    out = fn(tf.constant(image))
    probs, mask = out["probabilities"].numpy(), out["mask"].numpy()
    ref = (predict_tiled(model, image, tile_size=32, overlap=8) if tiled
           else _keras_padded(model, image, scale=1.0))
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.argmax(probs, axis=-1))
    assert len(np.unique(mask)) > 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        bad = image.copy()
        bad[0, 3, 4, 1] = np.nan
        fn(tf.constant(bad))


@pytest.mark.parametrize("voxels", [1, 3000], ids=["one-batch-per-update", "uneven-groups"])
def test_tiled_canvas_updates_in_groups(monkeypatch, voxels):
    """The in-graph tiler adds whole model batches of about SCATTER_VOXELS output pixels to
    the canvas per update; any grouping gives predict_tiled's result (here 2 images of 5 x 7
    tiles of 16² = 70 tiles, batches of 3: groups of 3 tiles, or of 9 with a last one of 7)."""
    import zf_unet.tiling.plan as plan

    monkeypatch.setattr(plan, "SCATTER_VOXELS", voxels)
    model = _unet(1, num_classes=2)
    fn = make_serving_fn(model, tiled=True, tile_size=16, overlap=4, batch_size=3,
                         input_dtype="float32")
    image = np.random.default_rng(5).random((2, 60, 80, 1), dtype=np.float32)
    probs = fn(tf.constant(image))["probabilities"].numpy()
    ref = predict_tiled(model, image, tile_size=16, overlap=4)
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_valid_padding_model(tiled):
    model = _unet(1, num_classes=2, padding="valid")
    geom = model_geometry(model)
    assert geom["margin"] > 0
    fn = make_serving_fn(model, tiled=tiled, tile_size=100, overlap=16, input_dtype="uint16")
    image = np.random.default_rng(4).integers(0, 65536, (1, 90, 57, 1), dtype=np.uint16)
    probs = fn(tf.constant(image))["probabilities"].numpy()
    ref = (predict_tiled(model, image, tile_size=100, overlap=16) if tiled
           else _keras_padded(model, image, scale=1 / 65535))
    assert probs.shape == (1, 90, 57, 2)
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5)


def test_fixed_size_model_needs_tiled_export():
    model = _unet(5, input_shape=(32, 32, 1))
    with pytest.raises(ValueError, match="tiled=True"):
        make_serving_fn(model)
    fn = make_serving_fn(model, tiled=True, overlap=8)
    image = np.random.default_rng(5).integers(0, 256, (1, 50, 71, 1), dtype=np.uint8)
    probs = fn(tf.constant(image))["probabilities"].numpy()
    np.testing.assert_allclose(probs, predict_tiled(model, image, overlap=8), rtol=0, atol=1e-5)


def test_mixed_precision_model_outputs_float32():
    from zf_unet.precision import precision_scope

    with precision_scope("mixed_bfloat16"):
        model = _unet(6)
    fn = make_serving_fn(model)
    image = np.random.default_rng(6).integers(0, 256, (1, 20, 30, 1), dtype=np.uint8)
    out = fn(tf.constant(image))
    assert out["probabilities"].dtype == tf.float32 and out["mask"].dtype == tf.uint8
    ref = _keras_padded(model, image)
    np.testing.assert_allclose(out["probabilities"].numpy(), ref, rtol=0, atol=1e-5)


def test_bad_export_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="input_dtype"):
        make_serving_fn(model, input_dtype="int8")
    with pytest.raises(ValueError, match="overlap"):
        make_serving_fn(model, tiled=True, tile_size=64, overlap=64)
    with pytest.raises(ValueError, match="version"):
        export_saved_model(model, tmp_path, version=0)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- request formats


def _client():
    spec = importlib.util.spec_from_file_location("serving_client", CLIENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.isbi
def test_rest_json_body_roundtrip_and_client_reply(isbi_dir, exports):
    from PIL import Image

    path = isbi_dir / "images" / "00.png"
    image = np.asarray(Image.open(path))
    assert image.dtype == np.uint8 and image.ndim == 2
    instance = image[:, :, None]
    body = {"signature_name": "serving_default", "instances": [{"image": instance.tolist()}]}
    text = json.dumps(body, separators=(",", ":"))
    decoded = json.loads(text)
    assert decoded["signature_name"] == "serving_default"
    back = np.asarray(decoded["instances"][0]["image"], dtype=np.uint8)
    np.testing.assert_array_equal(back, instance)

    client = _client()
    loaded = client.load_image(path)
    np.testing.assert_array_equal(loaded, instance)
    assert client.encode_body(client.request_body(loaded)) == text.encode()

    # What TF Serving would do with the body (row format: stack the instances), and its reply.
    sig = tf.saved_model.load(str(exports["untiled"])).signatures["serving_default"]
    batch = np.stack([np.asarray(i["image"], dtype=np.uint8) for i in decoded["instances"]])
    out = {k: v.numpy() for k, v in sig(image=tf.constant(batch)).items()}
    reply = {"predictions": [{k: v[i].tolist() for k, v in out.items()}
                             for i in range(len(batch))]}
    reply = json.loads(json.dumps(reply))
    mask = client.mask_from_response(reply)
    np.testing.assert_array_equal(mask, out["mask"][0] * 255)
    single = {"predictions": [out["mask"][0].tolist()]}  # a one-output signature (mask_only)
    np.testing.assert_array_equal(client.mask_from_response(single, scale="none"), out["mask"][0])


def test_grpc_predict_request_roundtrip():
    predict_pb2 = pytest.importorskip(
        "tensorflow_serving.apis.predict_pb2",
        reason="pip install --no-deps tensorflow-serving-api (see docs/serving.md)",
    )
    image = np.random.default_rng(8).integers(0, 256, (1, 37, 301, 1), dtype=np.uint8)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "isbi"
    req.model_spec.signature_name = "serving_default"
    req.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
    wire = req.SerializeToString()
    parsed = predict_pb2.PredictRequest.FromString(wire)
    assert parsed.model_spec.name == "isbi"
    assert parsed.model_spec.signature_name == "serving_default"
    assert parsed.inputs["image"].dtype == tf.uint8.as_datatype_enum
    back = tf.make_ndarray(parsed.inputs["image"])
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, image)

    resp = predict_pb2.PredictResponse()
    mask = (image[..., 0] > 128).astype(np.uint8)
    resp.outputs["mask"].CopyFrom(tf.make_tensor_proto(mask))
    again = predict_pb2.PredictResponse.FromString(resp.SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(again.outputs["mask"]), mask)


def test_client_dry_run_prints_body_size(tmp_path):
    from PIL import Image

    from zf_unet.data import make_synthetic

    images, _ = make_synthetic(1, size=48, seed=2)
    arr = np.round(images[0, :, :, 0] * 255).astype(np.uint8)
    png = tmp_path / "cell.png"
    Image.fromarray(arr).save(png)
    proc = subprocess.run(
        [sys.executable, str(CLIENT), str(png), "--dry-run",
         "--url", "http://127.0.0.1:9/v1/models/isbi:predict"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    expected = json.dumps({"signature_name": "serving_default",
                           "instances": [{"image": arr[:, :, None].tolist()}]},
                          separators=(",", ":"))
    got = int(re.search(r"(\d+) bytes", proc.stdout).group(1))
    assert got == len(expected.encode())
    assert "48x48x1 uint8" in proc.stdout
    assert not (tmp_path / "cell_mask.png").exists()


# --------------------------------------------------------------------------- TFLite / ONNX


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_tflite_parity(model, tmp_path):
    path = export_tflite(model, tmp_path / "m.tflite", input_size=(64, 96))
    qpath = export_tflite(model, tmp_path / "q.tflite", input_size=(64, 96), quantize=True)
    image = np.random.default_rng(9).random((1, 64, 96, 1), dtype=np.float32)
    ref = np.asarray(model(image, training=False))
    results = {}
    for p in (path, qpath):
        interp = tf.lite.Interpreter(model_path=str(p))
        interp.allocate_tensors()
        (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
        assert list(inp["shape"]) == [1, 64, 96, 1] and inp["dtype"] == np.float32
        interp.set_tensor(inp["index"], image)
        interp.invoke()
        results[p.name] = interp.get_tensor(out["index"])
    diff = float(np.abs(results["m.tflite"] - ref).max())
    qdiff = float(np.abs(results["q.tflite"] - ref).max())
    print(f"TFLite max abs diff vs Keras: float32 {diff:.2e}, dynamic-range int8 {qdiff:.2e}")
    assert diff <= 1e-4
    assert qdiff < 0.1  # quantised weights: close, not exact
    assert qpath.stat().st_size < path.stat().st_size
    with pytest.raises(ValueError, match="not accepted"):
        export_tflite(model, tmp_path / "bad.tflite", input_size=(65, 96))
    assert not (tmp_path / "bad.tflite").exists()


def test_onnx_parity(model, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    pytest.importorskip("tf2onnx", reason="pip install tf2onnx onnx")
    path = export_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert inp.shape[3] == 1 and not all(isinstance(d, int) for d in inp.shape[:3])
    rng = np.random.default_rng(10)
    worst = 0.0
    for shape in [(1, 64, 64, 1), (2, 40, 96, 1)]:  # dynamic batch, height and width
        x = rng.random(shape, dtype=np.float32)
        (y,) = sess.run(None, {"image": x})
        ref = np.asarray(model(x, training=False))
        assert y.shape == ref.shape
        worst = max(worst, float(np.abs(y - ref).max()))
    print(f"ONNX max abs diff vs Keras: {worst:.2e}")
    assert worst <= 1e-4
