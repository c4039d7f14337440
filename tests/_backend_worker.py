"""What ``tests/test_backends.py`` computes on each Keras backend, with the same weights and
inputs: model outputs (inference and training mode), folded models, builders' layer names
and parameter counts, every loss and metric, ``predict_tiled``, optimizer steps, and a
``.keras`` round trip.

Run as a script in a fresh process::

    KERAS_BACKEND=jax python tests/_backend_worker.py WORK_DIR [--block-tf] [--wait-for NAME]...

``WORK_DIR`` holds the TensorFlow-built ``models/*.keras`` and ``inputs.npz``; the results go
to ``WORK_DIR/<backend>.npz`` (arrays) and ``WORK_DIR/<backend>.json`` (names and counts), and
the model trained here to ``WORK_DIR/trained_<backend>.keras``. ``--block-tf`` makes
TensorFlow unimportable first (``sys.modules["tensorflow"] = None``); ``--wait-for NAME``
waits (after computing) until ``WORK_DIR/trained_NAME.keras`` has been written by the process
running backend NAME, so that the workers and the TensorFlow process run side by side.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0


def builders() -> dict[str, Any]:
    """name -> zero-argument builder of a small model (one of each kind)."""
    import zf_unet

    return {
        "unet": lambda: zf_unet.build_unet(input_shape=(None, None, 1), num_classes=3,
                                           filters=4, depth=3),
        "unet_binary_unfused": lambda: zf_unet.build_unet(
            input_shape=(None, None, 2), filters=4, depth=2, fused_batch_norm=False,
            fuse_upsampling=False, upsampling="bilinear"),
        "unet_valid": lambda: zf_unet.build_unet(input_shape=(None, None, 1), filters=4,
                                                 depth=2, padding="valid",
                                                 upsampling="transpose"),
        "unetpp": lambda: zf_unet.build_unet_plus_plus(input_shape=(None, None, 1),
                                                       num_classes=2, filters=4, depth=3,
                                                       deep_supervision=True),
        "unet3d": lambda: zf_unet.build_unet(input_shape=(None, None, None, 1), filters=4,
                                             depth=3, pool_sizes=((1, 2, 2), (2, 2, 2)),
                                             kernel_sizes=((1, 3, 3), 3, 3)),
        "unet3d_linear": lambda: zf_unet.build_unet(input_shape=(None, None, None, 1),
                                                    filters=4, depth=2, upsampling="bilinear"),
        "mobilenetv2": lambda: zf_unet.build_unet(input_shape=(64, 64, 3), num_classes=2,
                                                  backbone="mobilenetv2", encoder_weights=None,
                                                  filters=4),
    }


def randomise(model: Any, seed: int = SEED) -> None:
    """Every weight random (BatchNorm statistics and scales kept sensible), so the outputs
    depend on all of them."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape, name = tuple(w.shape), w.path
        if "moving_variance" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif "gamma" in name:
            value = rng.uniform(0.8, 1.2, shape)
        elif "moving_mean" in name or "beta" in name or "bias" in name:
            value = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = max(1, int(np.prod(shape[:-1])))
            value = rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape)
        w.assign(value.astype(w.dtype))


def make_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    y3 = rng.integers(0, 3, (2, 16, 16, 1)).astype("int32")
    y3[:, :3] = 255
    return {
        "x2d_1": rng.random((2, 32, 32, 1), dtype=np.float32),
        "x2d_2": rng.random((2, 32, 32, 2), dtype=np.float32),
        "x2d_valid": rng.random((2, 44, 44, 1), dtype=np.float32),
        "x3d": rng.random((1, 8, 16, 16, 1), dtype=np.float32),
        "x_rgb": rng.random((2, 64, 64, 3), dtype=np.float32),
        "image": rng.random((70, 90, 1), dtype=np.float32),
        "volume": rng.random((10, 28, 30, 1), dtype=np.float32),
        "y_bin": (rng.random((2, 16, 16, 1)) > 0.5).astype("float32"),
        "p_bin": rng.uniform(0.01, 0.99, (2, 16, 16, 1)).astype("float32"),
        "y3": y3,
        "p3": _softmax(rng.normal(0, 2, (2, 16, 16, 3))).astype("float32"),
        "w": rng.uniform(0.5, 3.0, (2, 16, 16)).astype("float32"),
        "train_x": rng.random((4, 32, 32, 1), dtype=np.float32),
        "train_y": rng.integers(0, 3, (4, 32, 32, 1)).astype("int32"),
    }


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


MODEL_INPUT = {"unet": "x2d_1", "unet_binary_unfused": "x2d_2", "unet_valid": "x2d_valid",
               "unetpp": "x2d_1", "unet3d": "x3d", "unet3d_linear": "x3d",
               "mobilenetv2": "x_rgb"}


def write_reference_models(work: Path) -> None:
    """Build every model (on the running backend), randomise it and save it under
    ``work/models``, with the inputs in ``work/inputs.npz``."""
    (work / "models").mkdir(parents=True, exist_ok=True)
    for name, build in builders().items():
        model = build()
        randomise(model)
        model.save(work / "models" / f"{name}.keras")
    np.savez(work / "inputs.npz", **make_inputs())


def _outputs(y: Any) -> list[np.ndarray]:
    from keras import ops

    ys = list(y.values()) if isinstance(y, dict) else list(y) if isinstance(y, (list, tuple)) \
        else [y]
    return [np.asarray(ops.convert_to_numpy(t), np.float32) for t in ys]


def losses_and_metrics(inp: dict) -> dict[str, float]:
    """Every loss (binary and 3-class, with ignore_class and weights) and metric value."""
    from keras import ops

    from zf_unet import losses as zl
    from zf_unet import metrics as zm

    yb, pb, y3, p3, w = inp["y_bin"], inp["p_bin"], inp["y3"], inp["p3"], inp["w"]
    y3_clean = np.where(y3 == 255, 0, y3)
    values: dict[str, float] = {}
    binary = {"dice": zl.DiceLoss(), "jaccard": zl.JaccardLoss(), "tversky": zl.TverskyLoss(),
              "bce_dice": zl.BCEDiceLoss(), "ce": zl.Crossentropy(),
              "focal": zl.FocalLoss(), "weighted_ce": zl.WeightedCrossentropy()}
    for name, loss in binary.items():
        values[f"loss_bin_{name}"] = float(ops.convert_to_numpy(loss(yb, pb)))
        values[f"loss_bin_w_{name}"] = float(ops.convert_to_numpy(loss(yb, pb, w)))
    multi = {"ce_dice": zl.CEDiceLoss(ignore_class=255),
             "ce": zl.Crossentropy(class_weights=[0.5, 1.0, 2.0], ignore_class=255),
             "dice": zl.DiceLoss(ignore_class=255, include_background=False),
             "focal": zl.FocalLoss(ignore_class=255), "tversky": zl.TverskyLoss(ignore_class=255),
             "jaccard": zl.JaccardLoss(ignore_class=255)}
    for name, loss in multi.items():
        values[f"loss_3_{name}"] = float(ops.convert_to_numpy(loss(y3, p3)))
    values["loss_3_onehot_ce_dice"] = float(ops.convert_to_numpy(
        zl.CEDiceLoss()(np.eye(3, dtype="float32")[y3_clean[..., 0]], p3)))
    metrics = {"bin_dice": (zm.DiceCoefficient(), yb, pb),
               "bin_iou": (zm.IoU(), yb, pb),
               "3_miou": (zm.MeanIoU(num_classes=3, ignore_class=255), y3, p3),
               "3_class_iou_2": (zm.ClassIoU(2, num_classes=3, ignore_class=255), y3, p3),
               "3_dice": (zm.DiceCoefficient(num_classes=3), y3_clean, p3)}
    for name, (metric, yt, yp) in metrics.items():
        metric.update_state(yt, yp)
        metric.update_state(yt[::-1], yp)
        values[f"metric_{name}"] = float(ops.convert_to_numpy(metric.result()))
    return values


def compute(work: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Everything compared across backends: ``(arrays, names and counts)``."""
    import keras

    import zf_unet
    from zf_unet.models import fold_batch_norm
    from zf_unet.registry import OPTIMIZERS

    inp = dict(np.load(work / "inputs.npz"))
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"backend": keras.backend.backend(), "layers": {}, "params": {}}
    models = {}
    for name in builders():
        model = keras.models.load_model(work / "models" / f"{name}.keras")
        models[name] = model
        x = inp[MODEL_INPUT[name]]
        # direct calls, not predict(): one XLA compilation less per model on JAX
        for i, y in enumerate(_outputs(model(x, training=False))):
            arrays[f"{name}_predict_{i}"] = y
        for i, y in enumerate(_outputs(model(x, training=True))):  # BatchNorm batch statistics
            arrays[f"{name}_train_mode_{i}"] = y
        for i, y in enumerate(_outputs(fold_batch_norm(model)(x, training=False))):
            arrays[f"{name}_folded_{i}"] = y
    for name, build in builders().items():  # the builders themselves, on this backend
        model = build()
        meta["layers"][name] = [layer.name for layer in model.layers]
        meta["params"][name] = int(model.count_params())
    meta["params"]["ZF_UNET_224"] = int(zf_unet.ZF_UNET_224().count_params())
    pp = models["unetpp"]
    for level in (1, 2):
        arrays[f"unetpp_prune_{level}"] = _outputs(
            zf_unet.prune(pp, level)(inp["x2d_1"], training=False))[0]
    arrays["unetpp_ensemble"] = _outputs(zf_unet.ensemble(pp)(inp["x2d_1"], training=False))[0]
    _lap("models")

    for blend in ("gaussian", "linear", "none"):
        arrays[f"tiled_{blend}"] = zf_unet.predict_tiled(
            models["unet"], inp["image"], tile_size=32, overlap=8, blend=blend)
    # TTA: all 6 tiles in one batch per transform (one model call per transform, not two)
    for tta in ("flips", "d4"):
        arrays[f"tiled_tta_{tta}"] = zf_unet.predict_tiled(
            models["unet"], inp["image"], tile_size=48, overlap=8, tta=tta, batch_size=16)
    arrays["tiled_valid"] = zf_unet.predict_tiled(models["unet_valid"], inp["image"],
                                                  tile_size=44, overlap=4)
    arrays["tiled_3d"] = zf_unet.predict_tiled(models["unet3d"], inp["volume"],
                                               tile_size=(8, 16, 16), overlap=(2, 4, 4))
    arrays["tiled_3d_flips"] = zf_unet.predict_tiled(models["unet3d_linear"], inp["volume"],
                                                     tile_size=(8, 16, 16), overlap=(2, 4, 4),
                                                     tta="flips", batch_size=16)  # all 12
    # the shipped weights (weights/), sha256-checked, on this backend
    pretrained = zf_unet.pretrained("isbi2012-em")
    arrays["pretrained_tiled"] = zf_unet.predict_tiled(
        pretrained, inp["image"][..., :pretrained.input_shape[-1]], tile_size=64, overlap=16)
    _lap("predict_tiled, pretrained")
    for name, value in losses_and_metrics(inp).items():
        arrays[name] = np.float32(value)

    # Two optimizer steps of each registered optimizer on the same variable and gradients.
    rng = np.random.default_rng(1)
    start = rng.normal(size=(3, 4)).astype("float32")
    grads = [rng.normal(size=(3, 4)).astype("float32") for _ in range(2)]
    for name in ("adam", "adamw", "sgd"):
        var = keras.Variable(start)
        opt = OPTIMIZERS.create(name, 1e-2, momentum=0.9)
        for g in grads:
            opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        arrays[f"optimizer_{name}"] = np.asarray(keras.ops.convert_to_numpy(var))

    _lap("losses, metrics, optimizers")
    # Two training steps of the 3-class U-Net (FusedAdam, CEDiceLoss with ignore_class, MeanIoU).
    model = keras.models.load_model(work / "models" / "unet.keras")
    model.compile(optimizer=zf_unet.optimizers.FusedAdam(1e-3),
                  loss=zf_unet.losses.CEDiceLoss(ignore_class=255),
                  metrics=[zf_unet.metrics.MeanIoU(num_classes=3, ignore_class=255)])
    arrays["train_before"] = _outputs(model(inp["train_x"], training=False))[0]
    y = inp["train_y"].copy()
    y[:, :2] = 255
    steps = [model.train_on_batch(inp["train_x"], y, return_dict=True) for _ in range(2)]
    arrays["train_losses"] = np.array([s["loss"] for s in steps], np.float32)
    arrays["train_after"] = _outputs(model(inp["train_x"], training=False))[0]
    save_atomic(model, work / f"trained_{meta['backend']}.keras")
    _lap("training")
    return arrays, meta


_T0 = [time.perf_counter()]


def _lap(what: str) -> None:
    """Seconds since the last lap, on stderr (where the time of a slow backend goes)."""
    now = time.perf_counter()
    print(f"{what}: {now - _T0[0]:.1f} s", file=sys.stderr, flush=True)
    _T0[0] = now


def save_atomic(model: Any, path: Path) -> None:
    """``model.save(path)`` through a temporary folder, then a rename: a process waiting for
    ``path`` never reads half a file."""
    tmp = path.parent / f"tmp_{path.stem}"
    tmp.mkdir(exist_ok=True)
    model.save(tmp / path.name)
    os.replace(tmp / path.name, path)
    tmp.rmdir()


def wait_for(paths: list[Path], timeout: float = 900.0) -> None:
    """Until every path exists (written by ``save_atomic`` in another process)."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not written in {timeout:.0f} s: {[str(p) for p in paths]}")
        time.sleep(0.2)


def load_and_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """Predictions of the ``.keras`` file ``path`` on ``x`` (no custom_objects)."""
    import keras

    import zf_unet  # noqa: F401  (registers zf_unet's objects)

    return _outputs(keras.models.load_model(path)(x, training=False))[0]


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    if "--block-tf" in argv:
        sys.modules["tensorflow"] = None  # TensorFlow made unimportable
    import keras

    backend = keras.backend.backend()
    arrays, meta = compute(work)
    inp = np.load(work / "inputs.npz")
    # .keras files trained under the other backends (those waited for, or those already
    # written) load here too
    waited = [work / f"trained_{argv[i + 1]}.keras" for i, a in enumerate(argv)
              if a == "--wait-for"]
    wait_for(waited)
    for other in waited or sorted(work.glob("trained_*.keras")):
        if other.stem != f"trained_{backend}":
            arrays[f"loaded_{other.stem}"] = load_and_predict(other, inp["train_x"])
    meta["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
    np.savez(work / f"{backend}.npz", **arrays)
    (work / f"{backend}.json").write_text(json.dumps(meta))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
