"""Bad arguments and targets get a clear error naming them (red-team findings, step 8b).

Each test reproduces a finding (what used to happen silently or deep inside TensorFlow) and
checks the new message; positive checks make sure valid inputs give the same values as before,
against NumPy or Keras's own losses and metrics.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import zf_unet
from zf_unet.errors import DataError, OutputExistsError, ZFUNetError
from zf_unet.export import EXPORT_INFO, export_saved_model, recover_interrupted_exports
from zf_unet.losses import BCEDiceLoss, DiceLoss, JaccardLoss, WeightedCrossentropy
from zf_unet.metrics import IoU, DiceCoefficient

BINARY_255 = ("y_true: binary targets must be in [0, 1] (got values up to 255); divide 0/255 "
              "masks by 255")


def square_255(batch: int = 1, size: int = 8) -> np.ndarray:
    """A 0/255 uint8 mask (B, H, W, 1): the usual PNG mask not divided by 255."""
    m = np.zeros((batch, size, size, 1), np.uint8)
    m[:, 2:6, 2:6] = 255
    return m


def np_dice_loss(t: np.ndarray, p: np.ndarray, smooth: float = 1.0) -> float:
    inter = (t * p).sum(axis=(1, 2))
    dice = (2 * inter + smooth) / (t.sum(axis=(1, 2)) + p.sum(axis=(1, 2)) + smooth)
    return float(np.mean(1 - dice.mean(-1)))


def in_graph(fn, *specs):
    """``fn`` as a ``tf.function`` with the given input signature (shapes unknown at trace)."""
    return tf.function(fn, input_signature=list(specs), autograph=False)


# --------------------------------------------------------------------------- target values


BINARY_LOSSES = [DiceLoss(), JaccardLoss(), BCEDiceLoss(), WeightedCrossentropy()]


@pytest.mark.parametrize("loss", BINARY_LOSSES, ids=lambda x: type(x).__name__)
def test_losses_refuse_0_255_masks(loss):
    t, p = square_255(), np.full((1, 8, 8, 1), 0.3, np.float32)
    # Before: DiceLoss gave -0.015 (a "better than perfect" loss), the others nonsense.
    with pytest.raises(DataError) as info:
        loss(t, p)
    assert str(info.value) == BINARY_255
    assert isinstance(info.value, ValueError)
    # Inside a graph (model.fit): a run-time assertion with the same first sentence.
    fn = in_graph(lambda a, b: loss(a, b), tf.TensorSpec([None, None, None, 1], tf.uint8),
                  tf.TensorSpec([None, None, None, 1], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"y_true: binary targets must be in \[0, 1\]; divide 0/255 masks "
                             r"by 255\. Smallest and largest value:\] \[0\] \[255\]"):
        fn(t, p)


@pytest.mark.parametrize("metric", [DiceCoefficient, IoU])
def test_metrics_refuse_0_255_masks(metric):
    t, p = square_255(), np.full((1, 8, 8, 1), 0.7, np.float32)
    with pytest.raises(DataError) as info:
        metric().update_state(t, p)
    assert str(info.value) == BINARY_255
    m = metric()
    fn = in_graph(lambda a, b: m.update_state(a, b),
                  tf.TensorSpec([None, None, None, 1], tf.float32),
                  tf.TensorSpec([None, None, None, 1], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true: binary targets"):
        fn(t.astype(np.float32), p)


def test_negative_binary_targets_are_refused():
    t = -np.ones((1, 8, 8), np.float32)
    with pytest.raises(DataError, match=r"y_true: binary targets must be in \[0, 1\] "
                                        r"\(got values down to -1\)"):
        DiceLoss()(t, np.full((1, 8, 8, 1), 0.5, np.float32))


def test_class_ids_outside_0_to_k_minus_1_are_refused():
    ids = np.zeros((1, 4, 4), np.int32)
    ids[0, 0, 0] = 3  # class 3 of a 3-class model (0..2)
    probs = np.full((1, 4, 4, 3), 1 / 3, np.float32)
    message = ("y_true: class ids must be in 0..2 for a 3-class y_pred (got values up to 3); "
               "check num_classes against the mask values")
    # Before: WeightedCrossEntropy gave 0.0 for the pixel (an all-zero one-hot row).
    for fn in (WeightedCrossentropy(), DiceLoss(),
               DiceCoefficient(num_classes=3).update_state, IoU(num_classes=3).update_state):
        with pytest.raises(DataError) as info:
            fn(ids, probs)
        assert str(info.value) == message
        with pytest.raises(DataError, match="got values down to -1"):
            fn(-np.ones_like(ids), probs)
    graph = in_graph(lambda a, b: WeightedCrossentropy()(a, b),
                     tf.TensorSpec([None, None, None], tf.int32),
                     tf.TensorSpec([None, None, None, 3], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"y_true: class ids must be in 0\.\.2 for a 3-class y_pred"):
        graph(ids, probs)


def test_one_hot_targets_out_of_range_are_refused():
    onehot = np.eye(3, dtype=np.float32)[np.zeros((1, 4, 4), int)] * 255
    with pytest.raises(DataError, match=r"y_true: one-hot targets for a 3-class y_pred must "
                                        r"be in \[0, 1\] \(got values up to 255\)"):
        BCEDiceLoss()(onehot, np.full((1, 4, 4, 3), 1 / 3, np.float32))


# --------------------------------------------------------------------------- target shapes


@pytest.mark.parametrize("fn", [DiceLoss(), WeightedCrossentropy(),
                                DiceCoefficient().update_state],
                         ids=["DiceLoss", "WeightedCrossEntropy", "DiceCoefficient"])
def test_shape_mismatch_names_both_shapes(fn):
    t = np.zeros((2, 8, 6, 1), np.float32)  # e.g. a mask not cropped for a valid-padding model
    p = np.full((2, 8, 8, 1), 0.5, np.float32)
    # Before: a raw InvalidArgumentError ("Incompatible shapes") from inside the graph.
    with pytest.raises(DataError) as info:
        fn(t, p)
    assert str(info.value).startswith(
        "y_true has shape (2, 8, 6, 1) but y_pred has shape (2, 8, 8, 1): the (batch, height, "
        "width) of the targets must equal those of the predictions")
    # Shapes known only at run time: an assertion naming both, with both shapes.
    graph = in_graph(lambda a, b: fn(a, b), tf.TensorSpec([None, None, None, 1], tf.float32),
                     tf.TensorSpec([None, None, None, 1], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"y_true: its shape must fit that of y_pred \(the same batch, height "
                             r"and width\); y_true shape:\] \[2 8 6 1\] \[y_pred shape:\] "
                             r"\[2 8 8 1\]"):
        graph(t, p)
    # Shapes known at trace time: a ValueError while tracing.
    traced = tf.function(lambda a, b: fn(a, b), autograph=False)
    with pytest.raises(ValueError, match=r"y_true has shape \(2, 8, 6, 1\)"):
        traced(tf.constant(t), tf.constant(p))


def test_targets_with_unknown_channel_or_rank():
    graph = in_graph(lambda a, b: DiceLoss()(a, b),
                     tf.TensorSpec([None, None, None, None], tf.float32),
                     tf.TensorSpec([None, None, None, 1], tf.float32))
    t = (np.arange(16).reshape(1, 4, 4, 1) % 3 == 0).astype(np.float32)
    p = np.full((1, 4, 4, 1), 0.5, np.float32)
    assert float(graph(t, p)) == pytest.approx(np_dice_loss(t, p), abs=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_true shape:\] \[1 4 4 3\]"):
        graph(np.zeros((1, 4, 4, 3), np.float32), p)  # before: broadcast to 3 channels
    unknown = in_graph(lambda a, b: DiceLoss()(a, b), tf.TensorSpec(None, tf.float32),
                       tf.TensorSpec([None, None, None, 1], tf.float32))
    with pytest.raises(DataError, match="y_true has an unknown rank"):
        unknown(t, p)


def test_wrong_channel_count_is_explained():
    with pytest.raises(DataError, match=r"y_true has shape \(1, 4, 4, 2\) but y_pred has shape "
                                        r"\(1, 4, 4, 3\): expected y_true \(B, H, W\) or "
                                        r"\(B, H, W, 1\) class ids or \(B, H, W, 3\) one-hot"):
        DiceLoss()(np.zeros((1, 4, 4, 2), np.float32), np.full((1, 4, 4, 3), 0.3, np.float32))
    with pytest.raises(ValueError, match="y_pred has 3 channels but this metric was built "
                                         "with num_classes=1"):
        DiceCoefficient().update_state(np.zeros((1, 4, 4), np.int32),
                                       np.full((1, 4, 4, 3), 0.3, np.float32))


# --------------------------------------------------------------------------- valid targets


def test_valid_targets_give_the_reference_values(rng):
    t = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
    p = rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype(np.float32)
    ref = np_dice_loss(t, p)
    # Every accepted form of the same binary targets gives the NumPy value.
    for y in (t, t[..., 0], t.astype(np.uint8), t.astype(bool), tf.constant(t)):
        assert float(DiceLoss()(y, p)) == pytest.approx(ref, abs=1e-6)
    # Soft targets in [0, 1] stay allowed (label smoothing).
    soft = 0.1 + 0.8 * t
    assert float(DiceLoss()(soft, p)) == pytest.approx(np_dice_loss(soft, p), abs=1e-6)
    bce = keras.losses.BinaryCrossentropy()(t, p)
    assert float(WeightedCrossentropy()(t, p)) == pytest.approx(float(bce), rel=1e-5)
    iou, ref_iou = IoU(), keras.metrics.BinaryIoU(target_class_ids=[1])
    iou.update_state(t, p)
    ref_iou.update_state(t, p)
    assert float(iou.result()) == pytest.approx(float(ref_iou.result()), abs=1e-6)
    # Class ids up to K-1 (sparse, with and without the channel axis) and one-hot.
    ids = rng.integers(0, 3, size=(2, 8, 8))
    ids[0, 0, 0] = 2
    probs = rng.dirichlet(np.ones(3), size=(2, 8, 8)).astype(np.float32)
    sce = float(keras.losses.SparseCategoricalCrossentropy()(ids, probs))
    for y in (ids, ids[..., None], np.eye(3, dtype=np.float32)[ids]):
        assert float(WeightedCrossentropy()(y, probs)) == pytest.approx(sce, rel=1e-5)
    # Empty batches pass the checks (min/max of nothing).
    empty = np.zeros((0, 8, 8, 1), np.float32)
    DiceCoefficient().update_state(empty, empty)


def _tiny_model(*, deep: bool = False, weights: bool = False, precision: str = "float32",
                mirrored: bool = False) -> keras.Model:
    """A tiny compiled U-Net (U-Net++ with deep supervision) for :func:`_tiny_fit`."""
    import contextlib

    from zf_unet.precision import precision_scope

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"]) if mirrored else None
    with precision_scope(precision), (strategy.scope() if strategy else contextlib.nullcontext()):
        if deep:
            model = zf_unet.build_unet_plus_plus((None, None, 1), depth=2, filters=2,
                                                 deep_supervision=True)
        else:
            model = zf_unet.build_unet((None, None, 1), depth=2, filters=2)
        model.compile("adam", loss=WeightedCrossentropy() if weights else BCEDiceLoss(),
                      metrics=None if deep else [DiceCoefficient(), IoU()], jit_compile=False)
    return model


def _tiny_fit(model: keras.Model, masks: np.ndarray, *, deep: bool = False,
              weights: bool = False, **_) -> keras.callbacks.History:
    """One epoch of ``model`` on 4 random 16x16 images."""
    x = np.random.default_rng(0).random((4, 16, 16, 1)).astype(np.float32)
    data = (x, masks) + ((np.full((4, 16, 16), 2.0, np.float32),) if weights else ())
    if deep:
        data = zf_unet.models.repeat_targets(data, model)
    kwargs = dict(zip(("x", "y", "sample_weight"), data))
    return model.fit(**kwargs, batch_size=2, epochs=1, verbose=0)


FIT_CASES = {
    "plain": {},
    "bfloat16_border_weights": {"precision": "mixed_bfloat16", "weights": True},
    "deep_supervision": {"deep": True},
    "mirrored_strategy": {"mirrored": True},
}


@pytest.mark.parametrize("case", FIT_CASES)
def test_fit_refuses_0_255_masks_and_trains_on_0_1_masks(case):
    masks = np.zeros((4, 16, 16, 1), np.uint8)
    masks[:, 4:12, 4:12] = 1
    # One model for both fits: the check runs inside the traced train step, on the values of
    # each batch, so the second fit (same shapes and dtypes) reuses the trace of the first.
    model = _tiny_model(**FIT_CASES[case])
    history = _tiny_fit(model, masks, **FIT_CASES[case])
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"y_true: binary targets must be in \[0, 1\]; divide 0/255 masks"):
        _tiny_fit(model, masks * 255, **FIT_CASES[case])


# --------------------------------------------------------------------------- builders


BAD_BUILDER_ARGS = [
    ({"input_shape": None}, r"input_shape must be \(height, width, channels\), e\.g\. "
                            r"\(None, None, 1\) with None for any size; got None"),
    ({"input_shape": (64, 64)}, r"input_shape must be \(height, width, channels\)"),
    ({"input_shape": (64.0, 64, 1)}, r"input_shape height must be an integer >= 1 or None"),
    ({"input_shape": (None, None, 0)}, r"input_shape channels must be an integer >= 1, got 0"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
    ({"num_classes": "3"}, "num_classes must be an integer >= 1, got '3'"),
    ({"depth": 0}, r"depth must be an integer in \[2, 10\], got 0"),
    ({"depth": 3.0}, r"depth must be an integer in \[2, 10\], got 3\.0"),
    ({"depth": 11}, r"depth must be an integer in \[2, 10\], got 11"),
    ({"filters": -1}, "filters must be an integer >= 1, got -1"),
    ({"filters": [8, 16, 0]}, r"filters\[2\] must be an integer >= 1, got 0"),
    ({"filters": [8, 16]}, "filters has 2 entries but depth=3"),
    ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\), got 1\.5"),
    ({"dropout": "0.1"}, r"dropout must be a number in \[0, 1\), got '0\.1'"),
    ({"upsampling": "nearst"}, r"upsampling must be one of \('nearest', 'bilinear', "
                               r"'transpose'\), got 'nearst' \(did you mean 'nearest'\?\)"),
    ({"batch_norm": "no"}, "batch_norm must be True or False, got 'no'"),
    ({"sync_batch_norm": None}, "sync_batch_norm must be True or False, got None"),
    ({"fused_batch_norm": 2}, "fused_batch_norm must be True or False, got 2"),
    ({"output_activation": "sigmod"}, "output_activation must be 'auto', None .* got 'sigmod'"),
    ({"kernel_initializer": "he_norml"}, "kernel_initializer must be a Keras initializer"),
    ({"name": ""}, "name must be a non-empty string"),
]


@pytest.mark.parametrize("builder", [zf_unet.build_unet, zf_unet.build_unet_plus_plus])
@pytest.mark.parametrize("kwargs,match", BAD_BUILDER_ARGS,
                         ids=[next(iter(k)) + "=" + repr(next(iter(k.values())))
                              for k, _ in BAD_BUILDER_ARGS])
def test_builders_name_every_bad_argument(builder, kwargs, match):
    # Before: build_unet(None) raised TypeError: object of type 'NoneType' has no len();
    # num_classes="3", depth=3.0 or batch_norm="no" were accepted (or failed deep in Keras).
    with pytest.raises(ValueError, match=match):
        builder(**{"input_shape": (None, None, 1), "depth": 3, **kwargs})


def test_builder_specific_arguments(tmp_path):
    with pytest.raises(ValueError, match="padding must be one of .* got 'sam' .*'same'"):
        zf_unet.build_unet((None, None, 1), padding="sam")
    with pytest.raises(ValueError, match="head_batch_norm must be True or False"):
        zf_unet.build_unet((None, None, 1), head_batch_norm="yes")
    with pytest.raises(ValueError, match="deep_supervision must be True or False"):
        zf_unet.build_unet_plus_plus((None, None, 1), deep_supervision="yes")
    with pytest.raises(ValueError, match=r"dropout_val must be a number in \[0, 1\), got 2"):
        zf_unet.ZF_UNET_224(dropout_val=2)
    missing = tmp_path / "zf.weights.h5"
    with pytest.raises(DataError, match=f"weights file not found: {missing}"):
        zf_unet.ZF_UNET_224(weights=str(missing))


def test_checking_the_arguments_leaves_the_initial_weights_alone():
    """Checking kernel_initializer="he_normal" makes an initializer, which draws a seed from
    Python's `random`: without care every weight of the model would change."""
    import random

    from zf_unet.models.builder_args import check_builder_args

    keras.utils.set_random_seed(0)
    state = random.getstate()
    check_builder_args((None, None, 1), 1, depth=3, filters=4, upsampling="nearest",
                       padding="same", output_activation="auto")
    assert random.getstate() == state
    keras.utils.set_random_seed(0)
    expected = np.asarray(keras.initializers.HeNormal()((3, 3, 1, 4)))  # the first draw
    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((None, None, 1), depth=3, filters=4)
    np.testing.assert_array_equal(model.get_layer("enc0_conv1").kernel.numpy(), expected)


def test_builders_still_accept_valid_arguments():
    model = zf_unet.build_unet([16, None, 2], num_classes=np.int64(3),
                               depth=np.int32(3), filters=[4, 8, 16], dropout=0,
                               batch_norm=np.bool_(True), output_activation=None,
                               kernel_initializer=keras.initializers.HeNormal(seed=1))
    assert model.input_shape == (None, 16, None, 2) and model.output_shape == (None, 16, None, 3)
    pp = zf_unet.build_unet_plus_plus([None, None, 1], depth=2, filters=2,
                                      output_activation="relu", dropout=0.25)
    assert pp.output_shape == (None, None, None, 1)


# --------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def tiny() -> keras.Model:
    keras.utils.set_random_seed(0)
    return zf_unet.build_unet((None, None, 1), depth=2, filters=2)


def _threshold(version_dir: Path) -> float:
    return json.loads((version_dir / "assets.extra" / EXPORT_INFO).read_text())["threshold"]


def _hidden(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.startswith("."))


def test_existing_version_is_a_clear_error(tiny, tmp_path):
    base = tmp_path / "serving"
    export_saved_model(tiny, base, version=1)
    before = (base / "1" / "saved_model.pb").read_bytes()
    # Before: a bare FileExistsError from the API (only the CLI explained it).
    with pytest.raises(OutputExistsError) as info:
        export_saved_model(tiny, base, version=1)
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, ZFUNetError)
    assert str(info.value) == (f"{base / '1'} already exists; pass overwrite=True or another "
                               "version (zf-unet export: --overwrite or --version N)")
    assert (base / "1" / "saved_model.pb").read_bytes() == before


def test_leftovers_of_killed_exports_are_tidied_up(tiny, tmp_path):
    base = tmp_path / "serving"
    base.mkdir()
    (base / ".2.tmp-0123abcd" / "variables").mkdir(parents=True)  # an unfinished export
    (base / ".5.tmp-89abcdef").mkdir()  # empty: killed before write_out wrote anything
    kept = base / ".3.old-0a1b2c3d" / "v"  # killed between the two renames: 3 is missing
    kept.mkdir(parents=True)
    (kept / "saved_model.pb").write_bytes(b"version 3")
    done = base / ".4.old-ffffffff" / "v"  # killed after the second rename: 4 exists
    done.mkdir(parents=True)
    (done / "saved_model.pb").write_bytes(b"the replaced version 4")
    (base / "4").mkdir()
    (base / "4" / "saved_model.pb").write_bytes(b"the new version 4")
    not_ours = [".2.tmp-notmine1", ".02.tmp-0123abcd", ".2.tmp-0123ABCD", ".2.tmp-0123abcd0",
                ".2.new-0123abcd", "2.tmp-0123abcd"]
    for name in not_ours:
        (base / name).mkdir()
    (base / ".6.tmp-76543210").write_text("a file, not a folder of ours")
    not_ours.append(".6.tmp-76543210")

    export_saved_model(tiny, base, version=1)

    assert (base / "3" / "saved_model.pb").read_bytes() == b"version 3"  # put back
    assert (base / "4" / "saved_model.pb").read_bytes() == b"the new version 4"
    assert (base / "1" / "saved_model.pb").is_file()
    assert _hidden(base) == sorted(n for n in not_ours if n.startswith("."))
    assert (base / "2.tmp-0123abcd").is_dir()


def test_folders_of_running_exports_are_left_alone(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    base = tmp_path / "serving"
    busy = base / ".1.tmp-00000000"
    busy.mkdir(parents=True)
    fd = os.open(busy, os.O_RDONLY)  # what a running export holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert recover_interrupted_exports(base) == []
        assert busy.is_dir()
    finally:
        os.close(fd)
    assert recover_interrupted_exports(base) == [] and not busy.exists()


def test_interrupted_overwrite_puts_the_old_version_back(tiny, tmp_path, monkeypatch):
    base = tmp_path / "serving"
    export_saved_model(tiny, base, version=1, threshold=0.25)

    def interrupted(src, dst):  # Ctrl-C between moving the old version out and the new in
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(os, "rename", interrupted)
        with pytest.raises(KeyboardInterrupt):
            export_saved_model(tiny, base, version=1, overwrite=True, threshold=0.75)
    assert _threshold(base / "1") == 0.25 and _hidden(base) == []


def test_killed_overwrite_is_recovered_by_the_next_export(tiny, tmp_path):
    """A real kill (``os._exit``, no cleanup) between the two renames of an overwrite."""
    model_path = tmp_path / "tiny.keras"
    tiny.save(model_path)
    base = tmp_path / "serving"
    export_saved_model(tiny, base, version=1, threshold=0.25)
    child = textwrap.dedent(f"""
        import os
        from zf_unet.export import export_saved_model

        def killed(src, dst):
            os._exit(9)

        os.rename = killed
        export_saved_model({str(model_path)!r}, {str(base)!r}, version=1, overwrite=True,
                           threshold=0.75)
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    names = _hidden(base)
    assert not (base / "1").exists() and len(names) == 2, names  # .1.old-*, .1.tmp-*
    old = next(base.glob(".1.old-*"))
    assert _threshold(old / "v") == 0.25

    export_saved_model(tiny, base, version=2)
    assert _threshold(base / "1") == 0.25  # the old version 1 is back
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    loaded = tf.saved_model.load(str(base / "1"))
    out = loaded.signatures["serving_default"](image=tf.zeros([1, 8, 8, 1], tf.uint8))
    assert out["mask"].shape == (1, 8, 8)


# --------------------------------------------------------------------------- one home


def test_checks_imports_no_keras():
    """zf_unet.checks (argument checks, limits, spacing) is read by the config, which must not
    import Keras; the target checks that need Keras are zf_unet.target_checks."""
    import ast

    import zf_unet.checks as checks
    import zf_unet.target_checks as target_checks

    for module in (checks, "zf_unet/data/augment_config.py"):
        path = Path(module.__file__) if not isinstance(module, str) else \
            Path(zf_unet.__file__).parent.parent / module
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}
        assert not imported & {"keras", "tensorflow"}, (path, imported)
    assert target_checks.check_targets is zf_unet.losses.check_targets


def test_one_table_of_limits_for_config_builders_and_augment(monkeypatch):
    """config validation, the builders and Augment all read zf_unet.checks.LIMITS."""
    from zf_unet.checks import LIMITS, Range
    from zf_unet.config import Config, ConfigError
    from zf_unet.data import Augment

    assert LIMITS["model.depth"] == Range(2, 10, integer=True)
    with pytest.raises(ConfigError, match=r"depth = 11; expected an integer in \[2, 10\]"):
        Config().override(["model.depth=11"])
    with pytest.raises(ValueError, match=r"depth must be an integer in \[2, 10\], got 11"):
        zf_unet.build_unet((None, None, 1), depth=11)
    monkeypatch.setitem(LIMITS, "model.depth", Range(2, 4, integer=True))
    monkeypatch.setitem(LIMITS, "data.augment.elastic_grid", Range(2, 5, integer=True))
    monkeypatch.setitem(LIMITS, "data.batch_size", Range(1, 8, integer=True))
    with pytest.raises(ConfigError, match=r"depth = 5; expected an integer in \[2, 4\]"):
        Config().override(["model.depth=5"])
    with pytest.raises(ValueError, match=r"depth must be an integer in \[2, 4\], got 5"):
        zf_unet.build_unet((None, None, 1), depth=5)
    with pytest.raises(ValueError, match=r"Augment: elastic_grid must be an integer in "
                                         r"\[2, 5\], got 6"):
        Augment(elastic_grid=6)
    with pytest.raises(ConfigError, match=r"data.augment.*elastic_grid must be an integer in "
                                          r"\[2, 5\], got 6"):
        Config().override(["data.augment.elastic_grid=6"])
    with pytest.raises(ConfigError, match=r"batch_size = 9; expected an integer in \[1, 8\]"):
        Config().override(["data.batch_size=9"])
    assert Augment(elastic_grid=5).elastic_grid == 5


@pytest.mark.parametrize(("value", "match"), [
    ((50, 0, 4.6), r"spacing must hold positive finite numbers \(the voxel size per spatial "
                   r"axis\), got \(50, 0, 4\.6\)"),
    ([1.0, float("inf"), 1.0], "spacing must hold positive finite numbers"),
    ([True, 1, 1], "spacing must hold positive finite numbers"),
    ("50,4.6,4.6", r"spacing must be a tuple of positive numbers, one per spatial axis"),
    (5.0, r"spacing must be a tuple of positive numbers"),
    (np.ones((3, 1)), r"spacing must be a tuple of positive numbers"),
    ((4.6, 4.6), r"spacing has 2 entries but the input has 3 spatial axes"),
    ((), r"spacing has 0 entries"),
])
def test_check_spacing_is_one_rule_with_one_error_type(value, match):
    from zf_unet.checks import check_spacing
    from zf_unet.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        check_spacing(value, "spacing", ndim=3)


def test_check_spacing_values_and_its_users():
    from zf_unet.checks import check_spacing
    from zf_unet.config import Config
    from zf_unet.data import Augment
    from zf_unet.errors import ConfigError

    assert check_spacing(None) is None
    assert check_spacing([50, 4.6, 4.6], ndim=3) == (50.0, 4.6, 4.6)
    assert check_spacing(np.array([2, 1]), "s") == (2.0, 1.0)
    with pytest.raises(ConfigError, match="^s must not be empty"):
        check_spacing([], "s")
    # the config and Augment raise the same rule's ConfigError, naming their place
    with pytest.raises(ConfigError, match=r"--set \[data\]: spacing has 2 entries but the "
                                          r"input has 3 spatial axes"):
        Config().override(["data.spacing=[1, 2]", "data.volumes=true"])
    with pytest.raises(ConfigError, match=r"^Augment: spacing must hold positive finite"):
        Augment(spacing=(0.0, 1.0, 1.0))
    assert Config().override(["data.spacing=[]"]).data.spacing == []
