"""Pretrained encoders (zf_unet.models.backbones): taps, decoders on them, weights by path,
channel adaptation, preprocessing, serialization, export parity, freezing. Nothing downloads:
weights files are written from randomly initialised encoders."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import zf_unet  # noqa: E402
from zf_unet import registry  # noqa: E402
from zf_unet.errors import ConfigError  # noqa: E402
from zf_unet.models import backbones  # noqa: E402
from zf_unet.models.backbones import BACKBONE_TABLE, TAP_STRIDES, adapt_channels  # noqa: E402

#: One representative per family (all are built); the rest are checked by name only.
FAMILIES = ["resnet50", "resnet50v2", "efficientnetb0", "efficientnetv2b0", "convnext_tiny",
            "mobilenetv2", "mobilenetv3small", "mobilenetv3large", "densenet121", "vgg16"]


def test_registry_lists_the_table():
    assert registry.BACKBONES.names() == tuple(BACKBONE_TABLE)
    assert len(BACKBONE_TABLE) == 24
    for name in BACKBONE_TABLE:
        spec = registry.BACKBONES[name]
        assert spec.name == name and len(spec.taps) == 5
        assert hasattr(keras.applications, spec.constructor)


@pytest.mark.parametrize("name", FAMILIES)
def test_taps_exist_at_their_strides(name):
    enc = backbones.build_encoder(name, (64, 64, 3))
    spec = BACKBONE_TABLE[name]
    strides = [s for s, t in zip(TAP_STRIDES, spec.taps) if t is not None]
    assert [64 // o.shape[1] for o in enc.outputs] == strides
    if name.startswith("convnext"):  # documented exception: no stride-2 feature
        assert strides == [4, 8, 16, 32]


def test_same_family_variants_share_tap_rules():
    # The variants not built above use the names of their family (checked on the layer
    # names of the installed Keras for the cheap ones).
    for name in ("resnet101v2", "efficientnetv2s"):
        app = BACKBONE_TABLE[name].application((64, 64, 3))
        names = {lyr.name for lyr in app.layers}
        for tap in BACKBONE_TABLE[name].taps:
            if tap and not tap.startswith("@"):
                assert tap.partition(":")[0] in names, (name, tap)


@pytest.mark.parametrize("name", ["mobilenetv2", "convnext_tiny"])
def test_unet_and_unet_plus_plus_output_at_input_resolution(name):
    x = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    m = zf_unet.build_unet((None, None, 3), num_classes=3, backbone=name, filters=8)
    assert m(x).shape == (1, 64, 64, 3)
    pp = zf_unet.build_unet_plus_plus((64, 64, 3), backbone=name, filters=8,
                                      deep_supervision=True)
    assert [tuple(o.shape) for o in pp(x)] == [(1, 64, 64, 1)] * 5
    pruned = zf_unet.models.prune(pp, 2)
    assert pruned(x).shape == (1, 64, 64, 1)
    if name == "convnext_tiny":
        m.get_layer("encoder_stem2_conv")  # the learned stride-2 stem


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="padding='valid' cannot be used"):
        zf_unet.build_unet((64, 64, 3), backbone="vgg16", padding="valid")
    with pytest.raises(ValueError, match="backbone must be one of"):
        zf_unet.build_unet((64, 64, 3), backbone="resnet5")
    with pytest.raises(ValueError, match="encoder_weights needs a backbone"):
        zf_unet.build_unet((64, 64, 3), encoder_weights="imagenet")
    with pytest.raises(ValueError, match="multiple of"):
        zf_unet.build_unet((48, 48, 3), backbone="vgg16")


def test_adapt_channels_arithmetic():
    k = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    np.testing.assert_allclose(adapt_channels(k, 1), k.sum(axis=2, keepdims=True))
    four = adapt_channels(k, 4)
    np.testing.assert_allclose(four[:, :, :3], k * 0.75)
    np.testing.assert_allclose(four[:, :, 3], k[:, :, 0] * 0.75)
    np.testing.assert_allclose(adapt_channels(np.array([1.0, 2.0, 3.0]), 1, -1, False), [2.0])


def test_weights_by_path_arrive_and_channels_adapt(tmp_path):
    src = BACKBONE_TABLE["vgg16"].application((None, None, 3))
    rng = np.random.default_rng(1)
    src.set_weights([rng.normal(size=w.shape).astype("float32") for w in src.weights])
    path = tmp_path / "vgg16.weights.h5"
    src.save_weights(path)
    m = zf_unet.build_unet((None, None, 3), backbone="vgg16", encoder_weights=str(path),
                           filters=4)
    enc = m.get_layer("encoder")
    for name in ("block1_conv1", "block5_conv3"):
        for a, b in zip(enc.get_layer(name).weights, src.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    kernel = src.get_layer("block1_conv1").kernel.numpy()
    for c, expect in ((1, kernel.sum(axis=2, keepdims=True)),
                      (4, np.concatenate([kernel, kernel[:, :, :1]], axis=2) * 0.75)):
        mc = zf_unet.build_unet((None, None, c), backbone="vgg16", encoder_weights=str(path),
                                filters=4)
        got = mc.get_layer("encoder").get_layer("block1_conv1").kernel.numpy()
        np.testing.assert_allclose(got, expect, rtol=1e-6)
    with pytest.raises(ConfigError, match="neither 'imagenet' nor an existing"):
        zf_unet.build_unet((None, None, 3), backbone="vgg16", encoder_weights="nope.h5")


def test_encoder_trained_here_is_reused_by_path_or_model_file(tmp_path):
    """The fine-tuning recipe without ImageNet: the encoder of a trained grayscale model is
    written as its application's weights file (or the .keras file itself is named) and a
    new model with other classes starts from it; a 3-channel model refuses 1-channel weights."""
    rng = np.random.default_rng(3)
    pre = zf_unet.build_unet((None, None, 1), num_classes=1, backbone="mobilenetv2", filters=4)
    enc = pre.get_layer("encoder")
    for lyr in enc.layers:
        if lyr.weights:
            lyr.set_weights([rng.normal(size=w.shape).astype("float32") for w in lyr.weights])
    path = backbones.save_encoder_weights(pre, tmp_path / "enc" / "mine.weights.h5")
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    app = keras.applications.MobileNetV2(include_top=False, weights=None,
                                         input_shape=(None, None, 1))
    app.load_weights(str(path))  # a plain keras.applications weights file
    pre.save(tmp_path / "pre.keras")
    for weights in (str(path), str(tmp_path / "pre.keras")):
        new = zf_unet.build_unet((None, None, 1), num_classes=5, backbone="mobilenetv2",
                                 filters=4, encoder_weights=weights)
        got = new.get_layer("encoder")
        for name in ("Conv1", "block_16_project", "block_6_expand_BN"):
            for a, b in zip(got.get_layer(name).weights, enc.get_layer(name).weights):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ConfigError, match="1-channel|cannot be loaded"):
        zf_unet.build_unet((None, None, 3), backbone="mobilenetv2", filters=4,
                           encoder_weights=str(tmp_path / "pre.keras"))
    with pytest.raises(ValueError, match="weights.h5"):
        backbones.save_encoder_weights(pre, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="no layer named 'encoder'"):
        backbones.save_encoder_weights(zf_unet.build_unet((None, None, 1), filters=2,
                                                          depth=2), tmp_path / "y.weights.h5")


def test_imagenet_download_failure_names_the_file(monkeypatch):
    url = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")

    def offline(*args, **kwargs):
        if kwargs.get("weights") == "imagenet":
            raise Exception(f"URL fetch failure on {url}: None -- [Errno -3] "
                            "Temporary failure in name resolution")
        raise AssertionError("unexpected")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(ConfigError) as err:
        zf_unet.build_unet((None, None, 3), backbone="mobilenetv2", encoder_weights="imagenet")
    text = str(err.value)
    assert url in text and "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" \
        in text and "~/.keras/models/" in text and "path" in text


def test_preprocessing_layer_modes():
    x = np.full((1, 2, 2, 3), 0.5, np.float32)
    caffe = backbones.BackbonePreprocessing("caffe", 3)(x).numpy()[0, 0, 0]
    np.testing.assert_allclose(caffe, 127.5 - np.array([103.939, 116.779, 123.68]), rtol=1e-5)
    np.testing.assert_allclose(backbones.BackbonePreprocessing("tf", 1)(x[..., :1]).numpy(), 0.0)
    torch = backbones.BackbonePreprocessing("torch", 3)(x).numpy()[0, 0, 0]
    np.testing.assert_allclose(torch, (0.5 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-5)


def test_keras_file_loads_without_custom_objects(tmp_path):
    m = zf_unet.build_unet((None, None, 1), backbone="mobilenetv3small", filters=4)
    x = np.random.default_rng(2).random((1, 64, 64, 1), dtype=np.float32)
    path = tmp_path / "m.keras"
    m.save(path)
    back = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(back.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-5)
    tiled = zf_unet.predict_tiled(back, np.tile(x[0], (2, 2, 1)), tile_size=64, overlap=32)
    assert tiled.shape[:2] == (128, 128)


@pytest.mark.parametrize("name", ["mobilenetv2", "mobilenetv3small"])
def test_export_parity(name, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from zf_unet.export import export_saved_model

    m = zf_unet.build_unet((None, None, 3), backbone=name, filters=4)
    img = (np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8)
    out = export_saved_model(m, tmp_path / "export", tiled=False)
    sig = tf.saved_model.load(str(out)).signatures["serving_default"]
    served = sig(image=tf.constant(img[None]))["probabilities"].numpy()
    # the Keras model's inference output (a direct call: no predict function to trace)
    expect = keras.ops.convert_to_numpy(m(img[None].astype(np.float32) / 255.0,
                                          training=False))
    np.testing.assert_allclose(served, expect, atol=1e-4)


def test_config_keys_and_freezing(tmp_path):
    from zf_unet.config import Config

    with pytest.raises(ConfigError, match="backbone"):
        Config.from_dict({"model": {"backbone": "resnet5"}})
    with pytest.raises(ConfigError, match="needs a backbone"):
        Config.from_dict({"model": {"encoder_freeze_epochs": 1}})
    # Tiny data without augmentation (tracing its pipeline was a third of the time): the
    # assertions are about freezing, not learning.
    cfg = Config.from_dict({
        "data": {"synthetic_n": 5, "synthetic_size": 32, "batch_size": 4,
                 "augment": {"enabled": False}},
        "model": {"backbone": "mobilenetv2", "filters": 4, "encoder_freeze_epochs": 1},
        "train": {"epochs": 2, "tensorboard": False, "collapse_warning": False}})
    seen: list = []

    class Snapshot(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if not seen:
                seen.append([w.numpy().copy() for w in self.model.get_layer("encoder").weights])

        def on_epoch_end(self, epoch, logs=None):
            enc = self.model.get_layer("encoder")
            seen.append(([w.numpy().copy() for w in enc.weights], enc.trainable,
                         float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))))

    history, run = zf_unet.train(cfg, tmp_path / "run", verbose=0,
                                 extra_callbacks=[Snapshot()])
    assert len(history.history["loss"]) == 2
    initial, (w0, t0, lr0), (w1, t1, lr1) = seen
    assert not t0 and t1 and lr1 < lr0
    assert all(np.array_equal(a, b) for a, b in zip(initial, w0))  # frozen epoch: unchanged
    assert any(not np.array_equal(a, b) for a, b in zip(w0, w1))  # trained after unfreezing


def test_resuming_across_the_unfreeze_switch(tmp_path):
    """A run stopped after its frozen epochs resumes into the fine-tuning phase: encoder
    trainable, learning rate divided by 10, the encoder trained further."""
    from zf_unet.callbacks import read_csv_log
    from zf_unet.config import Config

    base = {"data": {"synthetic_n": 5, "synthetic_size": 32, "batch_size": 4,
                     "augment": {"enabled": False}},
            "model": {"backbone": "mobilenetv2", "filters": 4, "encoder_freeze_epochs": 1},
            "optimizer": {"schedule": "constant"},
            "train": {"epochs": 1, "tensorboard": False, "collapse_warning": False}}
    first, run = zf_unet.train(Config.from_dict(base), tmp_path / "run", verbose=0)
    frozen = [w.numpy().copy() for w in first.model.get_layer("encoder").weights]
    seen: list = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            enc = self.model.get_layer("encoder")
            seen.append((epoch, enc.trainable,
                         float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))))

    base["train"]["epochs"] = 2  # resumable key: the same run continues
    second, _ = zf_unet.train(Config.from_dict(base), run, verbose=0,
                              extra_callbacks=[Snapshot()])
    assert [e for e, *_ in seen] == [1]  # only the second epoch ran
    (_, trainable, lr), = seen
    assert trainable and lr == pytest.approx(1e-3 / 10)
    after = [w.numpy() for w in second.model.get_layer("encoder").weights]
    assert any(not np.array_equal(a, b) for a, b in zip(frozen, after))
    assert len(read_csv_log(run / "log.csv")["loss"]) == 2
