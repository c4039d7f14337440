"""Pretrained weights: manifests, checksums, the download path (tested with file:// URLs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import zf_unet
from zf_unet import hub as pretrained
from zf_unet.errors import DataError
from zf_unet.io_utils import save_model_atomic


@pytest.fixture
def weights_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ZF_UNET_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("ZF_UNET_CACHE", str(tmp_path / "cache"))
    model = zf_unet.build_unet((None, None, 1), depth=2, filters=2)
    src = save_model_atomic(model, tmp_path / "src.keras")
    pretrained.write_manifest(src, tmp_path / "weights" / "tiny", name="tiny",
                              normalisation="uint8 / 255")
    return tmp_path, model


def test_load_verified_model(weights_env):
    tmp_path, model = weights_env
    assert "tiny" in pretrained.list_pretrained()
    loaded = pretrained.load_pretrained("tiny")
    x = np.random.default_rng(0).random((1, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_checksum_mismatch_is_refused(weights_env):
    tmp_path, _ = weights_env
    manifest_path = tmp_path / "weights" / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="sha256"):
        pretrained.load_pretrained("tiny")


def test_download_path_with_local_url(weights_env):
    tmp_path, _ = weights_env
    folder = tmp_path / "weights" / "tiny"
    manifest = json.loads((folder / "manifest.json").read_text())
    hosted = tmp_path / "hosted.keras"
    (folder / "model.keras").rename(hosted)
    manifest["url"] = hosted.as_uri()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    model = pretrained.load_pretrained("tiny")
    assert (tmp_path / "cache" / "weights" / "tiny" / "model.keras").exists()
    assert model.count_params() == manifest["parameters"]
    # A download whose checksum does not match is not kept.
    with pytest.raises(DataError, match="sha256"):
        pretrained.fetch(hosted.as_uri(), tmp_path / "x.keras", "f" * 64)
    assert not (tmp_path / "x.keras").exists()


def test_unknown_name_lists_available(weights_env):
    with pytest.raises(DataError, match="tiny"):
        pretrained.load_pretrained("nope")


@pytest.mark.isbi
def test_shipped_isbi_weights_segment_a_validation_slice(isbi_dir):
    from PIL import Image

    manifest = pretrained.list_pretrained()["isbi2012-em"]
    assert manifest["sha256"] == pretrained.sha256_of(f"{manifest['_dir']}/model.keras")
    assert manifest["bytes"] <= 25 * 2**20
    model = zf_unet.pretrained("isbi2012-em")
    image = np.asarray(Image.open(isbi_dir / "images" / "22.png"))
    truth = np.asarray(Image.open(isbi_dir / "masks" / "22.png")) > 127
    probs = zf_unet.predict_tiled(model, image, tile_size=256, overlap=32)[..., 0]
    error = zf_unet.metrics.misclassification_rate(probs, truth, threshold=0.45)
    trivial = 1.0 - truth.mean()  # everything "cell interior"
    assert error < 0.13 and error < 0.6 * trivial, (error, trivial)


def test_shipped_drosophila_vnc_weights_reproduce_their_manifest(vnc_dir):
    """The 5-class VNC model: sha256-checked, 5 softmax outputs, and on the held-out sections
    16-19 (the data beside the project) the mIoU of its manifest, from the same predictions
    and confusion matrix (NumPy; skipped without the data, failed under CI)."""
    import tifffile
    from PIL import Image

    manifest = pretrained.list_pretrained()["drosophila-vnc"]
    assert manifest["sha256"] == pretrained.sha256_of(f"{manifest['_dir']}/model.keras")
    model = zf_unet.pretrained("drosophila-vnc")
    assert model.output_shape[-1] == 5
    vnc = vnc_dir
    lut = np.full(256, 255, np.uint8)
    for cls, values in enumerate(manifest["class_values"]):
        lut[values] = cls
    cm = np.zeros((5, 5), np.int64)
    for i in range(16, 20):
        image = tifffile.imread(vnc / "images" / f"{i:02d}.tif")
        truth = lut[np.asarray(Image.open(vnc / "masks" / f"{i:02d}.png"))]
        pred = np.argmax(zf_unet.predict_tiled(model, image, tile_size=256, overlap=64), -1)
        cm += np.bincount(truth.ravel().astype(np.int64) * 5 + pred.ravel(),
                          minlength=25).reshape(5, 5)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert float(iou.mean()) == pytest.approx(manifest["metrics_validation"]["miou"], abs=0.01)
    assert iou[3] > 0.1  # synapses, 0.6 % of the pixels, are found


def test_hub_load_model_resolves_pretrained_names_and_files(weights_env, tmp_path):
    """"pretrained:NAME" is resolved by zf_unet.hub.load_model (the hub imports the file
    loader, never the reverse); files load through it too, and the file loader refuses the
    name with a pointer to the hub."""
    from zf_unet.models import load_model_file
    from zf_unet.models.loading import model_source

    _, model = weights_env
    loaded = pretrained.load_model("pretrained:tiny")
    assert loaded.count_params() == model.count_params()
    assert model_source(loaded) == "pretrained:tiny"
    assert pretrained.is_pretrained("pretrained:tiny") and not pretrained.is_pretrained("a.keras")
    path = tmp_path / "m.keras"
    save_model_atomic(model, path)
    assert pretrained.load_model(path).count_params() == model.count_params()
    with pytest.raises(DataError, match=r"pretrained:tiny: a pretrained model, not a file; "
                                        r"load it with zf_unet.hub.load_model"):
        load_model_file("pretrained:tiny")
    with pytest.raises(DataError, match="pretrained model 'nope' not found"):
        pretrained.load_model("pretrained:nope")
