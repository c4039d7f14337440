"""Serving exports: TF Serving SavedModels, TFLite and ONNX files.

``export_saved_model(model, "serving/isbi", version=1)`` writes ``serving/isbi/1/``, the
layout TF Serving watches (``--model_base_path=serving/isbi``). The SavedModel needs neither
zf_unet nor Keras to run: ``tf.saved_model.load(...).signatures["serving_default"]`` or TF
Serving is enough. Its signatures:

``serving_default``
    input ``image``: ``[batch, H, W, C]`` uint8 (default; ``input_dtype="uint16"`` and
    ``"float32"`` also exist), ``H`` and ``W`` any size >= 1.
    outputs ``probabilities``: float32 ``[batch, H, W, K]`` (float32 also for mixed-precision
    models); ``mask``: uint8 ``[batch, H, W]`` labels (``p > threshold`` for one class, the
    argmax for several; int32 for more than 256 classes).
``mask_only``
    the same input, only the ``mask`` output (a REST response without the probability map
    is several times smaller).

Volume models (input ``(batch, D, H, W, C)``, see ``zf_unet.predict_tiled``) export the same
two signatures with a ``[batch, D, H, W, C]`` input, ``probabilities`` ``[batch, D, H, W, K]``
and ``mask`` ``[batch, D, H, W]``; tiled (``tile_size`` / ``overlap`` an int or per axis,
e.g. ``(16, 128, 128)``) and untiled. ``export_tflite`` and ``export_onnx`` refuse volume
models (``ValueError``): they are neither built nor tested for 3-D convolutions.

Everything the training pipeline did to an image happens inside the graph:
uint8 / 255 and uint16 / 65535 (``zf_unet.data.to_float_image``); float32 is used as it is
(it must be finite, expected in [0, 1]). Sizes the U-Net cannot take are padded by mirror
reflection and the output is cropped back:

- untiled (``tiled=False``): the whole image in one model call. Each axis of length ``L`` is
  padded to the smallest accepted output length ``P >= L`` (a multiple of ``2**(depth-1)``
  for ``padding="same"`` models), ``(P - L) // 2`` pixels before and the rest after, plus
  the context margin on both sides for ``padding="valid"`` models. Peak memory grows with
  the image: use ``tiled=True`` for large images.
- tiled (``tiled=True``): the overlap-tile strategy of ``zf_unet.inference.predict_tiled``
  in TensorFlow ops, with the same tile size fitting, the same tile starts (evenly spread,
  ``round(linspace(0, L - tile, n))``, one centred tile for short axes), the same blend
  window (Gaussian, sigma = tile / 8; or linear / none) normalised by the weight sum, and
  the same mirrored context. Tiles are read straight from the input by mirrored indices
  (no padded copy of the image), predicted ``batch_size`` at a time in a ``tf.while_loop``
  and accumulated into one float32 canvas. Outputs equal ``predict_tiled(model, image,
  tile_size, overlap, blend, batch_size=batch_size)`` up to float32 rounding (~1e-7).
  Both run the same :class:`zf_unet.tiling.TilePlan` (its NumPy and TensorFlow forms).

Mirror padding is ``numpy.pad(mode="reflect")`` applied as often as needed (the edge pixel
is not repeated; images smaller than the padding are reflected back and forth, a 1-pixel
axis is repeated), the rule ``predict_tiled`` uses.

``padding="valid"`` models are supported in both modes (their margin is mirrored too).
Models with a fixed input size (e.g. ``ZF_UNET_224``) need ``tiled=True``.

``export_tflite`` writes a fixed-size float32 TFLite model and ``export_onnx`` an ONNX
model (dynamic batch / H / W); both are the bare network (float32 input in [0, 1], output
probabilities, no padding or thresholding in the graph).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

from zf_unet import registry
from zf_unet.checks import check_bool, check_int, check_threshold
from zf_unet.errors import ConfigError, OutputExistsError
from zf_unet.io_utils import atomic_path, new_locked_dir, remove_abandoned_dirs, unlock
from zf_unet.models.folding import fold_batch_norm
from zf_unet.models.geometry import ModelGeometry, model_geometry
from zf_unet.inference import check_model_finite
from zf_unet.hub import load_model
from zf_unet.outputs import check_not_input, claim_file
from zf_unet.tiling.plan import TilePlan, check_tile_args
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("SavedModel / TFLite / ONNX export")

__all__ = [
    "INPUT_DTYPES",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "make_serving_fn",
    "recover_interrupted_exports",
]

INPUT_DTYPES = registry.INPUT_DTYPES

#: Name of the JSON file (inside ``<version>/assets.extra/``) describing an export.
EXPORT_INFO = "zf_unet_export.json"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _as_model(model: Any) -> keras.Model:
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ConfigError(f"exports trace TensorFlow graphs and need the Keras TensorFlow "
                          f"backend, but this process runs on {backend!r}: save the model "
                          "(model.save('model.keras')) and run `zf-unet export model.keras "
                          "--out DIR`, which exports a model trained on any backend")
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)  # DataError naming the file if it cannot be used
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model or a .keras path, got {type(model).__name__}")
    return model


def _is_mixed(model: keras.Model) -> bool:
    return any(
        getattr(layer.dtype_policy, "compute_dtype", "float32")
        != getattr(layer.dtype_policy, "variable_dtype", "float32")
        for layer in model.layers
    )


def _float32_clone(model: keras.Model) -> keras.Model:
    """``model`` rebuilt with a float32 dtype policy in every layer and the same weights
    (TFLite and ONNX converters need float32 graphs); ``model`` itself if it is float32."""
    if not _is_mixed(model):
        return model

    def _clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        cfg = layer.get_config()
        cfg["dtype"] = "float32"
        return layer.__class__.from_config(cfg)

    clone = keras.models.clone_model(model, clone_function=_clone_layer)
    clone.set_weights(model.get_weights())
    return clone


class _Plan:
    """What the serving graph needs to know about a model (all static Python values); the
    tiling itself is :class:`zf_unet.tiling.TilePlan`'s TensorFlow execution."""

    def __init__(self, model: keras.Model, tiled: bool, tile_size: int, overlap: int,
                 blend: str, batch_size: int, input_dtype: str, threshold: float) -> None:
        geom = model_geometry(model)
        self.channels = geom.channels
        self.num_classes = geom.num_classes
        self.geom = geom
        self.tiled = bool(tiled)
        self.tile_size, self.overlap, self.blend = tile_size, overlap, blend
        self.batch_size = batch_size
        self.input_dtype = input_dtype
        self.threshold = float(threshold)
        if not self.tiled and geom.fixed_size is not None:
            raise ValueError(
                f"this model has a fixed input size {geom.fixed_size}; an untiled export would "
                "only accept that size. Export it with tiled=True (tiles of the fixed "
                "size cover images of any size)."
            )
        self.tiles = TilePlan.for_geometry(geom, tile_size if self.tiled else None, overlap,
                                           blend)
        self.tiles.check_overlap()

    def info(self) -> dict:
        return dict(
            tiled=self.tiled, tile_size=self.tile_size if self.tiled else None,
            overlap=self.overlap if self.tiled else None,
            blend=self.blend if self.tiled else None,
            batch_size=self.batch_size if self.tiled else None,
            input_dtype=self.input_dtype, threshold=self.threshold,
            geometry={k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in self.geom.as_dict().items()},
        )

    def labels(self, probs: tf.Tensor) -> tf.Tensor:
        if self.num_classes == 1:
            return tf.cast(probs[..., 0] > self.threshold, tf.uint8)
        dtype = tf.uint8 if self.num_classes <= 256 else tf.int32
        return tf.cast(tf.argmax(probs, axis=-1), dtype)


def _model_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """``model`` on float32 images in [0, 1], with float32 outputs (also mixed precision)."""
    return lambda x: tf.cast(model(x, training=False), tf.float32)


def _predict_untiled(model: keras.Model, plan: _Plan, image: tf.Tensor) -> tf.Tensor:
    return plan.tiles.predict_untiled_tf(_model_fn(model), image)


def _predict_tiled(model: keras.Model, plan: _Plan, image: tf.Tensor) -> tf.Tensor:
    return plan.tiles.predict_tf(_model_fn(model), image, plan.batch_size)


def _validate(tiled: bool, tile_size: Any, overlap: Any, blend: str, batch_size: Any,
              input_dtype: str, threshold: Any) -> tuple:
    check_bool("tiled", tiled)
    tile_size, overlap, batch_size = check_tile_args(tile_size, overlap, batch_size, tiled)
    registry.BLEND_MODES.check(blend, "blend")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")
    threshold = check_threshold("threshold", threshold)
    return tile_size, overlap, batch_size, threshold


def _serving_fns(model: keras.Model, *, tiled: bool = False,
                 tile_size: int | Sequence[int] = 256, overlap: int | Sequence[int] = 64,
                 blend: str = "gaussian", batch_size: int = 4, input_dtype: str = "uint8",
                 threshold: float = 0.5) -> tuple:
    tile_size, overlap, batch_size, threshold = _validate(
        tiled, tile_size, overlap, blend, batch_size, input_dtype, threshold
    )
    plan = _Plan(model, tiled, tile_size, overlap, blend, batch_size, input_dtype, threshold)
    nd = plan.geom.spatial_axes
    spec = tf.TensorSpec([None] * (1 + nd) + [plan.channels], tf.as_dtype(input_dtype),
                         name="image")
    sides = "height and width" if nd == 2 else "depth, height and width"
    predict = _predict_tiled if plan.tiled else _predict_untiled

    def _probs(image: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(image)
        checks = [tf.debugging.assert_positive(
            shape[1 : 1 + nd], message=f"image {sides} must be >= 1")]
        if input_dtype == "float32":
            checks.append(tf.debugging.assert_all_finite(
                image, "image contains NaN or Inf pixels; values must be finite"))
        with tf.control_dependencies(checks):
            image = tf.identity(image)
        return predict(model, plan, image)

    @tf.function(input_signature=[spec], autograph=False)
    def serving_default(image):
        probs = _probs(image)
        return {"probabilities": probs, "mask": plan.labels(probs)}

    @tf.function(input_signature=[spec], autograph=False)
    def mask_only(image):
        return {"mask": plan.labels(_probs(image))}

    return serving_default, mask_only, spec, plan


def make_serving_fn(model: Any, *, tiled: bool = False,
                    tile_size: int | Sequence[int] = 256, overlap: int | Sequence[int] = 64,
                    blend: str = "gaussian", batch_size: int = 4, input_dtype: str = "uint8",
                    threshold: float = 0.5) -> Callable:
    """The ``serving_default`` function of ``export_saved_model`` as an in-process
    ``tf.function``: ``fn(image)`` -> ``{"probabilities": ..., "mask": ...}`` (see the module
    docstring). Useful to check an export before writing it."""
    fn, _, _, _ = _serving_fns(_as_model(model), tiled=tiled, tile_size=tile_size,
                               overlap=overlap, blend=blend, batch_size=batch_size,
                               input_dtype=input_dtype, threshold=threshold)
    return fn


# --------------------------------------------------------------------------------------------
# SavedModel for TF Serving
# --------------------------------------------------------------------------------------------
def export_saved_model(
    model: Any,
    path: str | os.PathLike,
    version: int = 1,
    *,
    tiled: bool = False,
    tile_size: int | Sequence[int] = 256,
    overlap: int | Sequence[int] = 64,
    blend: str = "gaussian",
    batch_size: int = 4,
    input_dtype: str = "uint8",
    threshold: float = 0.5,
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Write a TF Serving SavedModel to ``path/<version>/`` and return that folder.

    Args:
        model: a ``keras.Model`` from ``zf_unet.build_unet`` (or any single-input image or
            volume model ``predict_tiled`` accepts), or the path of a ``.keras`` file. The
            ``image`` input is ``[batch, H, W, C]``, for volume models ``[batch, D, H, W, C]``.
        path: the model's base folder (TF Serving's ``--model_base_path``).
        version: integer >= 1; the version subfolder.
        tiled: overlap-tile prediction inside the graph (any image size with bounded
            memory); else one model call on the mirror-padded whole image.
        tile_size, overlap, blend, batch_size: tiling parameters, as in ``predict_tiled``
            (used when ``tiled``; ``tile_size`` / ``overlap`` an int or one per spatial axis).
        input_dtype: dtype of the ``image`` input: ``"uint8"`` (scaled by 1/255, the
            default), ``"uint16"`` (1/65535) or ``"float32"`` (in [0, 1], used as it is).
        threshold: the ``mask`` output of a one-class model is ``probabilities > threshold``.
        overwrite: replace an existing ``path/<version>`` (else ``OutputExistsError``).
        verbose: let Keras print the exported variables.

    The version folder appears atomically: the SavedModel is written into a hidden temporary
    folder in ``path`` (not a number, so TF Serving ignores it) and renamed when complete.
    With ``overwrite=True`` the old version is renamed away first and deleted afterwards, so
    for a moment neither exists (TF Serving keeps serving the version it has loaded). What a
    killed export left in ``path`` is tidied up first (``recover_interrupted_exports``).

    Raises:
        OutputExistsError: ``path/<version>`` exists and ``overwrite`` is False (a
            ``FileExistsError`` and a ``zf_unet.errors.ZFUNetError``).
        DataError: ``model`` is a path that cannot be loaded as an image model.
        ValueError: bad parameters, or an untiled export of a fixed-input-size model.
    """
    # BatchNorm folded into the convolutions: the export is a snapshot, and the served graph
    # skips every BatchNorm pass (zf_unet.models.folding)
    given = model
    model = _as_model(model)
    check_model_finite(model)  # a NaN model is never exported
    model = fold_batch_norm(model)
    version = check_int("version", version, 1)
    check_bool("overwrite", overwrite)
    serving_default, mask_only, spec, plan = _serving_fns(
        model, tiled=tiled, tile_size=tile_size, overlap=overlap, blend=blend,
        batch_size=batch_size, input_dtype=input_dtype, threshold=threshold,
    )
    base = Path(path).expanduser()
    final = base / str(version)
    check_not_input(base, [given] if isinstance(given, (str, os.PathLike)) else [])
    if base.is_dir():
        recover_interrupted_exports(base)
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"{final} already exists; pass overwrite=True or another version "
            "(zf-unet export: --overwrite or --version N)"
        )
    if final.exists() and not (final / "saved_model.pb").is_file():
        raise OutputExistsError(
            f"{final}: exists and is not a SavedModel (no saved_model.pb); a folder zf-unet "
            "did not write is never replaced, even with --overwrite: choose another --version "
            "or base folder")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint("mask_only", mask_only)
    base.mkdir(parents=True, exist_ok=True)
    tmp, tmp_lock = new_locked_dir(base, f".{version}.tmp-")
    old = old_lock = None
    try:
        archive.write_out(str(tmp), verbose=verbose)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        info = dict(plan.info(), version=version, model_name=model.name,
                    tensorflow=tf.__version__, keras=keras.__version__,
                    signatures={"serving_default": ["probabilities", "mask"],
                                "mask_only": ["mask"]})
        (extra / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # overwrite=True (checked above)
            old, old_lock = new_locked_dir(base, f".{version}.old-")
            os.replace(final, old / "v")
        os.rename(tmp, final)  # fails if another export created `final` meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists() and (old / "v").exists():
            os.replace(old / "v", final)  # put the previous version back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        unlock(tmp_lock)
        unlock(old_lock)
    return final


# Work folders of export_saved_model in the base folder: ``.{version}.tmp-XXXXXXXX`` (the new
# SavedModel being written) and ``.{version}.old-XXXXXXXX`` (holds the replaced version as
# ``v`` during an overwrite), exactly as ``make_hidden_dir`` names them.
_WORK_DIR = re.compile(r"\.([1-9][0-9]*)\.(tmp|old)-[0-9a-f]{8}")

def recover_interrupted_exports(path: str | os.PathLike) -> list[Path]:
    """Tidy up the base folder ``path`` after ``export_saved_model`` runs that were killed
    (``kill -9``, power loss; an exception or Ctrl-C cleans up by itself). Returns the
    version folders put back. ``export_saved_model`` calls it before every export.

    Only folders named exactly as an export names them are touched, and only those no
    running export holds (a ``flock``; where folder locks do not work, those unchanged for
    ``ABANDONED_AFTER_S``):

    - ``.{N}.tmp-XXXXXXXX``: an unfinished SavedModel: deleted.
    - ``.{N}.old-XXXXXXXX``: during ``overwrite=True`` it holds the previous version ``N``
      as ``v``. If the folder ``N`` is missing (the kill came between moving the old
      version out and the new one in), ``v`` is renamed back to ``N`` (the newest such
      folder wins); the folder is then deleted.
    """
    base = Path(path)
    restored: list[Path] = []

    def put_back(work: Path) -> None:
        match = _WORK_DIR.fullmatch(work.name)
        version_dir, kept = base / match.group(1), work / "v"
        if match.group(2) == "old" and kept.is_dir() and not version_dir.exists():
            os.rename(kept, version_dir)
            restored.append(version_dir)

    remove_abandoned_dirs(base, _WORK_DIR, salvage=put_back)
    return restored


# --------------------------------------------------------------------------------------------
# TFLite and ONNX
# --------------------------------------------------------------------------------------------
def export_tflite(model: Any, path: str | os.PathLike, input_size: Sequence[int] = (256, 256),
                  quantize: bool = False, overwrite: bool = False) -> Path:
    """Write a TFLite flatbuffer for one fixed input size and return its path.

    The graph is the bare network: input ``[1, H, W, C]`` float32 in [0, 1] (``H, W`` =
    ``input_size``, a size the model accepts: a multiple of ``2**(depth-1)`` for
    ``padding="same"``), output ``[1, H', W', K]`` float32 probabilities. Mixed-precision
    models are converted from a float32 copy. ``quantize=True`` applies dynamic-range
    quantisation (int8 weights, float activations; about 4x smaller, not bit-exact).
    Volume models are refused (``ValueError``; use ``export_saved_model``). An existing
    ``path`` is replaced only with ``overwrite=True`` (``OutputExistsError`` otherwise), and
    a model whose output is not finite is refused (``NonFiniteOutputError``).
    """
    path = claim_file(path, inputs=[model] if isinstance(model, (str, os.PathLike)) else [],
                      overwrite=check_bool("overwrite", overwrite))
    model = _as_model(model)
    check_model_finite(model)
    model = _float32_clone(model)
    geom = model_geometry(model)
    _refuse_volumes(geom, "export_tflite")
    check_bool("quantize", quantize)
    if isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool):
        input_size = (int(input_size), int(input_size))
    if not isinstance(input_size, (list, tuple, np.ndarray)) or len(input_size) != 2:
        raise ValueError(f"input_size must be (height, width), got {input_size!r}")
    h, w = (check_int("input_size", s, 1) for s in input_size)
    _check_size(geom, (h, w))
    spec = tf.TensorSpec([1, h, w, geom.channels], tf.float32, name="image")

    @tf.function(input_signature=[spec], autograph=False)
    def probabilities(image):
        return {"probabilities": tf.cast(model(image, training=False), tf.float32)}

    # ExportArchive -> SavedModel -> converter: converting the concrete function directly
    # (from_concrete_functions) does not freeze Keras 3 variables and gives NaN outputs.
    with tempfile.TemporaryDirectory() as saved:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", probabilities)
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(flatbuffer)
    return Path(path)


def _refuse_volumes(geom: ModelGeometry, what: str) -> None:
    """``ValueError`` for volume models (3 spatial axes): ``what`` supports images only."""
    if geom.spatial_axes != 2:
        raise ValueError(
            f"{what} supports 2-D image models only; this model segments volumes "
            "(input (batch, D, H, W, C)). Export it with export_saved_model (tiled or not)."
        )


def _check_size(geom: ModelGeometry, size: tuple) -> None:
    from zf_unet.models.geometry import valid_input_sizes

    if geom.fixed_size is not None:
        if tuple(size) != tuple(geom.fixed_size):
            raise ValueError(f"this model only accepts {geom.fixed_size}, got {tuple(size)}")
        return
    s0, div = geom.min_input, geom.divisor
    for s in size:
        if s < s0 or (s - s0) % div:
            padding = geom.padding
            raise ValueError(
                f"input size {s} is not accepted by this model (accepted: {s0} + k * {div}); "
                f"nearest: {valid_input_sizes(geom.depth, padding, near=s)}"
            )


def export_onnx(model: Any, path: str | os.PathLike, opset: int | None = None,
                overwrite: bool = False) -> Path:
    """Write an ONNX model (Keras 3 ``model.export(format="onnx")``, i.e. tf2onnx) and return
    its path. Input ``image`` float32 ``[batch, H, W, C]`` in [0, 1] with batch, H and W
    dynamic (H, W must be sizes the model accepts; no padding in the graph); output float32
    probabilities ``[batch, H', W', K]``. Mixed-precision models are exported from a float32
    copy. Needs ``pip install tf2onnx onnx`` (and ``onnxruntime`` to run it). Volume models
    are refused (``ValueError``). An existing ``path`` is replaced only with
    ``overwrite=True``; a model whose output is not finite is refused."""
    path = claim_file(path, inputs=[model] if isinstance(model, (str, os.PathLike)) else [],
                      overwrite=check_bool("overwrite", overwrite))
    if isinstance(model, keras.Model):  # a volume model is refused before the import check
        _refuse_volumes(model_geometry(model), "export_onnx")
    try:
        import tf2onnx  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "export_onnx needs tf2onnx and onnx: pip install tf2onnx onnx onnxruntime"
        ) from exc
    model = _as_model(model)
    _refuse_volumes(model_geometry(model), "export_onnx")
    check_model_finite(model)
    model = _float32_clone(model)
    geom = model_geometry(model)
    fixed = geom.fixed_size or (None, None)
    spec = tf.TensorSpec([None, fixed[0], fixed[1], geom.channels], tf.float32, name="image")
    with atomic_path(path) as tmp:
        model.export(str(tmp), format="onnx", input_signature=[spec], verbose=False,
                     opset_version=opset)
    return Path(path)
