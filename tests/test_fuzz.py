"""Property-based fuzzing (hypothesis) of the three places where user data enters:

* the training pipeline (``make_datasets`` from arrays): random sizes, dtypes (uint8, uint16,
  float32), channels (1, 3), mask conventions and class counts never crash, give the
  requested shapes, and keep masks within the classes they had;
* the tiler (``predict_tiled``): random sizes (1 px, non-square), dtypes (uint8, uint16,
  float32, bool), channels (1, 3), single images and stacks: output size = input size, and
  integer images equal their float equivalent (scaling by the dtype maximum);
* the exported SavedModel signature (``export_saved_model``, exported once per module):
  random batch sizes and image sizes of the dtype it accepts give probabilities and masks of
  the input size; other dtypes and NaN pixels are refused.

tests/test_inference.py already fuzzes float32 grayscale sizes against same/valid models;
this file adds dtypes, channels, stacks and thresholds. Examples are few (``max_examples``
small, no deadline) to keep the file under a minute on 2 cores.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zf_unet
from zf_unet.data import Augment, make_datasets
from zf_unet.export import export_saved_model
from zf_unet.inference import predict_tiled

FUZZ = settings(max_examples=10, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _image(rng: np.random.Generator, shape: tuple, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return rng.random(shape, dtype=np.float32)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    info = np.iinfo(dtype)
    return rng.integers(0, int(info.max) + 1, shape, dtype=dtype)


# --------------------------------------------------------------------------- pipeline


@st.composite
def samples(draw: st.DrawFn) -> dict:
    n = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
    channels = draw(st.sampled_from([1, 3]))
    k = draw(st.sampled_from([None, 3]))  # None: binary masks
    convention = "ids" if k else draw(st.sampled_from(["01", "0255"]))
    patch = draw(st.sampled_from([8, 16]))
    # make_datasets refuses a patch larger than every image and masks of one class only
    # (nothing to learn): the first image is at least a patch, the others any size.
    sizes = [(draw(st.integers(patch, 40)), draw(st.integers(patch, 40)))]
    sizes += [(draw(st.integers(1, 40)), draw(st.integers(1, 40))) for _ in range(n - 1)]
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for h, w in sizes:
        images.append(_image(rng, (h, w, channels), dtype))
        ids = rng.integers(0, k or 2, (h, w)).astype(np.uint8)
        if not masks:
            ids[0, 0], ids[-1, -1] = 0, 1
        masks.append(ids * 255 if convention == "0255" else ids)
    return dict(images=images, masks=masks, k=k, channels=channels, seed=seed,
                patch=patch, batch=draw(st.integers(1, 3)),
                val_fraction=draw(st.sampled_from([0.0, 0.5])),
                augment=draw(st.booleans()), weights=draw(st.booleans()) and k is None)


@FUZZ
@given(s=samples())
def test_pipeline_from_arrays(s):
    train, val = make_datasets(
        (s["images"], s["masks"]), patch_size=s["patch"], batch_size=s["batch"],
        val_fraction=s["val_fraction"], seed=s["seed"], num_classes=s["k"],
        augment=Augment(elastic_std=4.0) if s["augment"] else None,
        border_weights=s["weights"], jit_compile=False)
    classes = set(range(s["k"] or 2))
    present = set(np.unique(np.concatenate([np.ravel(m) for m in s["masks"]])).tolist())
    present = {1 if v == 255 else v for v in present}
    p, c = s["patch"], s["channels"]
    for ds, batch_size in ((train, s["batch"]), (val, None)):
        if ds is None:
            assert s["val_fraction"] == 0.0 or len(s["images"]) == 1
            continue
        for batch in ds.take(2):
            x, y = batch[0].numpy(), batch[1].numpy()
            assert x.dtype == np.float32 and y.dtype == np.float32
            assert x.shape[1:] == (p, p, c) and y.shape[1:] == (p, p, 1)
            if batch_size is not None:
                assert x.shape[0] == batch_size
            assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0 + 1e-6
            values = set(np.unique(y).tolist())
            assert values <= classes and values <= present, (values, present)
            if s["weights"]:
                assert len(batch) == 3 and batch[2].shape == y.shape
                assert float(tf.reduce_min(batch[2])) > 0.0


# --------------------------------------------------------------------------- tiler


@pytest.fixture(scope="module")
def tiler_models() -> dict[int, keras.Model]:
    keras.utils.set_random_seed(7)
    return {1: zf_unet.build_unet((None, None, 1), num_classes=1, depth=3, filters=4),
            3: zf_unet.build_unet((None, None, 3), num_classes=2, depth=3, filters=4)}


@FUZZ
@given(h=st.integers(1, 90), w=st.integers(1, 90), n=st.sampled_from([None, 1, 2]),
       channels=st.sampled_from([1, 3]),
       dtype=st.sampled_from(["uint8", "uint16", "float32", "bool"]),
       threshold=st.sampled_from([None, 0.5]), seed=st.integers(0, 1000))
def test_tiler_any_size_dtype_channels(tiler_models, h, w, n, channels, dtype, threshold,
                                       seed):
    model = tiler_models[channels]
    k = 1 if channels == 1 else 2
    shape = (h, w, channels) if n is None else (n, h, w, channels)
    image = _image(np.random.default_rng(seed), shape, dtype)
    out = predict_tiled(model, image, tile_size=32, overlap=8, threshold=threshold)
    lead = () if n is None else (n,)
    if threshold is None:
        assert out.shape == lead + (h, w, k) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
        scale = 1.0 if dtype in ("float32", "bool") else float(np.iinfo(dtype).max)
        as_float = image.astype(np.float32) / np.float32(scale)
        ref = predict_tiled(model, as_float, tile_size=32, overlap=8)
        np.testing.assert_allclose(out, ref, atol=1e-5)
    else:
        assert out.shape == lead + (h, w) and out.dtype == np.uint8
        assert out.max() < max(k, 2)


# --------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiler_models) -> dict[str, tuple]:
    """Two exports (loaded back): gray uint8 untiled, RGB 2-class float32 tiled."""
    base = tmp_path_factory.mktemp("export")
    out = {}
    for name, model, kw in (
        ("uint8", tiler_models[1], dict(input_dtype="uint8")),
        ("float32", tiler_models[3], dict(input_dtype="float32", tiled=True, tile_size=32,
                                           overlap=8, batch_size=3)),
    ):
        path = export_saved_model(model, base / name, **kw)
        out[name] = (tf.saved_model.load(str(path)).signatures["serving_default"], model)
    return out


@FUZZ
@given(kind=st.sampled_from(["uint8", "float32"]), b=st.integers(1, 2),
       h=st.integers(1, 70), w=st.integers(1, 70), seed=st.integers(0, 1000))
def test_exported_signature_any_size(served, kind, b, h, w, seed):
    fn, model = served[kind]
    channels, k = (1, 1) if kind == "uint8" else (3, 2)
    image = _image(np.random.default_rng(seed), (b, h, w, channels), kind)
    result = fn(image=tf.constant(image))
    probs, mask = result["probabilities"].numpy(), result["mask"].numpy()
    assert probs.shape == (b, h, w, k) and probs.dtype == np.float32
    assert mask.shape == (b, h, w) and mask.dtype == np.uint8
    assert np.isfinite(probs).all() and probs.min() >= 0.0 and probs.max() <= 1.0
    expected = (probs[..., 0] > 0.5) if k == 1 else np.argmax(probs, axis=-1)
    # Labels follow the probabilities (ties at exactly 0.5 aside).
    assert np.mean(mask == expected) > 0.999
    if kind == "float32":  # tiled export = predict_tiled with the same tiling
        ref = predict_tiled(model, image, tile_size=32, overlap=8, batch_size=3)
        np.testing.assert_allclose(probs, ref, atol=1e-5)


def test_exported_signature_refuses_other_dtypes_and_nan(served):
    fn8, _ = served["uint8"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        fn8(image=tf.constant(np.zeros((1, 8, 8, 1), np.float32)))
    fn32, _ = served["float32"]
    bad = np.zeros((1, 9, 9, 3), np.float32)
    bad[0, 4, 4, 1] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        fn32(image=tf.constant(bad))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        fn32(image=tf.constant(np.zeros((1, 8, 8, 1), np.float32)))  # 1 channel, needs 3
