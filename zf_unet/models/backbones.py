"""Pretrained encoders for U-Net and U-Net++: the ``keras.applications`` models, tapped at
strides 2, 4, 8, 16 and 32.

:data:`BACKBONE_TABLE` is the one table: backbone name -> :class:`Backbone` (the
``keras.applications`` constructor, the names of the layers tapped for the skips at strides
2, 4, 8, 16 and the stride-32 bottleneck, and the family's input scaling). Tap names are the
layer names of Keras 3.15; ``"NAME:input"`` taps the input of layer ``NAME`` (used where the
wanted tensor comes from an auto-named layer whose name changes between builds) and
``"@output"`` the application's output.

Exceptions:

* ConvNeXt has no stride-2 feature (its stem is a 4x4 stride-4 convolution) and its stage
  outputs are unnamed additions: the stride-4/8/16 taps are the inputs of the named
  downsampling blocks, stride 32 is the output, and the stride-2 skip comes from a small
  learned stem on the (preprocessed) input, ``Conv2D 3x3 stride 2 -> BatchNorm -> ReLU``
  (layers ``encoder_stem2_conv`` / ``_bn`` / ``_relu``, not pretrained, never frozen).
* MobileNetV3 names its activations by a global counter: its taps are the named residual
  additions / projections, stride 2 of MobileNetV3Small is the input of the first block's
  padding, and stride 32 is the output.

Input scaling (:class:`BackbonePreprocessing`, the model's first layer after the input): every
zf_unet model takes float images in [0, 1]; the layer maps them to what the family's first
convolution was trained on (``caffe``: x 255, RGB -> BGR, minus the ImageNet BGR means;
``tf``: 2x - 1; ``tf128``: 255x / 128 - 1; ``torch``: ImageNet mean / std; ``uint8``: x 255,
for EfficientNet B0-B7 whose own ``Rescaling`` + ``Normalization`` are part of the
application). Applications with an ``include_preprocessing`` switch are built without theirs.

Inputs with other than 3 channels: the encoder is built for 3 channels, its weights loaded,
then the ``C``-channel encoder is built and the weights copied, the first convolution's kernel
adapted by :func:`adapt_channels` (``C = 1``: sum over RGB; otherwise RGB repeated cyclically
to ``C`` and scaled by ``3 / C``), per-channel statistics likewise (mean for ``C = 1``, cyclic
otherwise, no rescaling).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
from keras import layers, ops

from zf_unet.errors import ConfigError
from zf_unet.models.loading import load_model_file

__all__ = ["BACKBONE_TABLE", "Backbone", "BackbonePreprocessing", "TAP_STRIDES",
           "adapt_channels", "backbone_names", "build_encoder", "check_backbone",
           "encoder_application", "encoder_features", "encoder_layer_names",
           "save_encoder_weights"]

#: The strides of the encoder features: skips at 2, 4, 8, 16; the bottleneck at 32.
TAP_STRIDES = (2, 4, 8, 16, 32)

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("caffe", "tf", "tf128", "torch", "uint8")


def adapt_channels(values: np.ndarray, channels: int, axis: int = -2, rescale: bool = True,
                   ) -> np.ndarray:
    """Adapt an RGB array to ``channels`` input channels along ``axis``.

    ``channels == 3``: unchanged. ``channels == 1``: the sum over RGB (``rescale``) or the mean
    (statistics, ``rescale=False``). Otherwise the RGB entries repeated cyclically
    (R, G, B, R, ...) to ``channels`` entries, times ``3 / channels`` when ``rescale``.

    Args:
        values: e.g. a ``(kh, kw, 3, out)`` kernel (``axis=-2``) or a ``(3,)`` mean (``axis=-1``).
        channels: the number of input channels ``C >= 1``.
        axis: the RGB axis of ``values``.
        rescale: kernels (True) keep the response to a gray image; statistics (False) are
            averaged / repeated.

    Returns:
        ``values`` with ``channels`` entries along ``axis`` (same dtype).
    """
    values = np.asarray(values)
    if values.shape[axis] != 3:
        raise ValueError(f"expected 3 (RGB) entries along axis {axis}, got shape {values.shape}")
    if channels == 3:
        return values.copy()
    if channels == 1:
        out = values.sum(axis=axis, keepdims=True) if rescale else values.mean(
            axis=axis, keepdims=True)
        return out.astype(values.dtype)
    index = [i % 3 for i in range(channels)]
    out = np.take(values, index, axis=axis)
    if rescale:
        out = out * (3.0 / channels)
    return out.astype(values.dtype)


@keras.saving.register_keras_serializable(package="zf_unet")
class BackbonePreprocessing(layers.Layer):
    """A backbone family's input scaling for ``[0, 1]`` images, as a layer (serializable).

    Modes: ``caffe`` (x 255; for 3 channels RGB -> BGR; minus the ImageNet BGR means),
    ``tf`` (2x - 1), ``tf128`` (255x / 128 - 1, EfficientNetV2-S), ``torch`` ((x - mean) / std,
    ImageNet RGB), ``uint8`` (x 255). Per-channel constants are adapted to ``channels`` by
    :func:`adapt_channels` (statistics rule).

    Input ``(B, H, W, channels)`` float; output the same shape, in the compute dtype.
    """

    def __init__(self, mode: str, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"mode must be one of {PREPROCESSING_MODES}, got {mode!r}")
        self.mode, self.channels = mode, int(channels)
        scale, offset = {"caffe": (255.0, 0.0), "tf": (2.0, -1.0),
                         "tf128": (255.0 / 128.0, -1.0), "torch": (1.0, 0.0),
                         "uint8": (255.0, 0.0)}[mode]
        mean = np.zeros(3) - offset
        std = np.ones(3)
        if mode == "caffe":
            mean = np.asarray(_CAFFE_MEAN_BGR)
        elif mode == "torch":
            mean, std = np.asarray(_TORCH_MEAN), np.asarray(_TORCH_STD)
        self._scale = (scale / adapt_channels(std, self.channels, -1, False)).astype("float32")
        self._shift = (adapt_channels(mean, self.channels, -1, False)
                       / adapt_channels(std, self.channels, -1, False)).astype("float32")
        self._flip = mode == "caffe" and self.channels == 3

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self._flip:
            x = ops.flip(x, axis=-1)
        scale = ops.cast(self._scale, self.compute_dtype)
        shift = ops.cast(self._shift, self.compute_dtype)
        return x * scale - shift

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode, "channels": self.channels}


@dataclass(frozen=True)
class Backbone:
    """One encoder: the ``keras.applications`` constructor ``constructor`` (attribute name),
    the tapped layers at strides 2, 4, 8, 16, 32 (``None`` = no such feature, a learned stem
    provides it), the :class:`BackbonePreprocessing` mode, and whether the constructor has an
    ``include_preprocessing`` switch (turned off: the scaling is ``preprocessing``)."""

    name: str
    constructor: str
    taps: tuple[str | None, ...]
    preprocessing: str
    has_preprocessing_switch: bool = False

    def application(self, input_shape: Sequence[int | None], weights: str | None = None
                    ) -> keras.Model:
        """``keras.applications.<constructor>(include_top=False, weights=weights,
        input_shape=input_shape)`` (``(H, W, C)``, ``H``/``W`` may be None)."""
        kwargs: dict = {}
        if self.has_preprocessing_switch:
            kwargs["include_preprocessing"] = False
        ctor = getattr(keras.applications, self.constructor)
        return ctor(include_top=False, weights=weights, input_shape=tuple(input_shape), **kwargs)

    def __call__(self, input_shape: Sequence[int | None], weights: str | None = None
                 ) -> keras.Model:
        """The encoder for ``(H, W, C)`` inputs (see :func:`build_encoder`)."""
        return build_encoder(self.name, input_shape, weights)


def _v1_efficientnet(n: int) -> Backbone:
    return Backbone(f"efficientnetb{n}", f"EfficientNetB{n}",
                    ("block2a_expand_activation", "block3a_expand_activation",
                     "block4a_expand_activation", "block6a_expand_activation", "top_activation"),
                    "uint8")


def _v2_efficientnet(suffix: str, s2: str, s4: str, mode: str) -> Backbone:
    return Backbone(f"efficientnetv2{suffix.lower()}", f"EfficientNetV2{suffix}",
                    (s2, s4, "block4a_expand_activation", "block6a_expand_activation",
                     "top_activation"), mode, True)


def _convnext(size: str) -> Backbone:
    prefix = f"convnext_{size}"
    return Backbone(prefix, f"ConvNeXt{size.capitalize()}",
                    (None, f"{prefix}_downsampling_block_0:input",
                     f"{prefix}_downsampling_block_1:input",
                     f"{prefix}_downsampling_block_2:input", "@output"), "torch", True)


_RESNET_V1 = ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "{c4}", "conv5_block3_out")
_RESNET_V2 = ("conv1_conv", "conv2_block3_1_relu", "conv3_block4_1_relu", "{c4}", "post_relu")

#: backbone name -> :class:`Backbone` (constructor, taps at strides 2/4/8/16/32, scaling).
BACKBONE_TABLE: dict[str, Backbone] = {b.name: b for b in [
    Backbone("resnet50", "ResNet50", tuple(t.format(c4="conv4_block6_out") for t in _RESNET_V1),
             "caffe"),
    Backbone("resnet101", "ResNet101",
             tuple(t.format(c4="conv4_block23_out") for t in _RESNET_V1), "caffe"),
    Backbone("resnet50v2", "ResNet50V2",
             tuple(t.format(c4="conv4_block6_1_relu") for t in _RESNET_V2), "tf"),
    Backbone("resnet101v2", "ResNet101V2",
             tuple(t.format(c4="conv4_block23_1_relu") for t in _RESNET_V2), "tf"),
    *[_v1_efficientnet(n) for n in range(8)],
    _v2_efficientnet("B0", "block1a_project_activation", "block2b_add", "torch"),
    _v2_efficientnet("B1", "block1b_add", "block2c_add", "torch"),
    _v2_efficientnet("B2", "block1b_add", "block2c_add", "torch"),
    _v2_efficientnet("B3", "block1b_add", "block2c_add", "torch"),
    _v2_efficientnet("S", "block1b_add", "block2d_add", "tf128"),
    _convnext("tiny"),
    _convnext("small"),
    Backbone("mobilenetv2", "MobileNetV2",
             ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
              "block_13_expand_relu", "out_relu"), "tf"),
    Backbone("mobilenetv3small", "MobileNetV3Small",
             ("expanded_conv_depthwise_pad:input", "expanded_conv_project_bn",
              "expanded_conv_2_add", "expanded_conv_7_add", "@output"), "tf", True),
    Backbone("mobilenetv3large", "MobileNetV3Large",
             ("expanded_conv_add", "expanded_conv_2_add", "expanded_conv_5_add",
              "expanded_conv_11_add", "@output"), "tf", True),
    Backbone("densenet121", "DenseNet121",
             ("conv1_relu", "pool2_conv", "pool3_conv", "pool4_conv", "relu"), "torch"),
    Backbone("vgg16", "VGG16",
             ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3", "block5_pool"),
             "caffe"),
]}

# One module attribute per name (the registry's factories: ``zf_unet.registry.BACKBONES``).
RESNET50, RESNET101, RESNET50V2, RESNET101V2 = (
    BACKBONE_TABLE[n] for n in ("resnet50", "resnet101", "resnet50v2", "resnet101v2"))
(EFFICIENTNETB0, EFFICIENTNETB1, EFFICIENTNETB2, EFFICIENTNETB3, EFFICIENTNETB4, EFFICIENTNETB5,
 EFFICIENTNETB6, EFFICIENTNETB7) = (BACKBONE_TABLE[f"efficientnetb{n}"] for n in range(8))
EFFICIENTNETV2B0, EFFICIENTNETV2B1, EFFICIENTNETV2B2, EFFICIENTNETV2B3, EFFICIENTNETV2S = (
    BACKBONE_TABLE[f"efficientnetv2{s}"] for s in ("b0", "b1", "b2", "b3", "s"))
CONVNEXT_TINY, CONVNEXT_SMALL = BACKBONE_TABLE["convnext_tiny"], BACKBONE_TABLE["convnext_small"]
MOBILENETV2, MOBILENETV3SMALL, MOBILENETV3LARGE = (
    BACKBONE_TABLE[n] for n in ("mobilenetv2", "mobilenetv3small", "mobilenetv3large"))
DENSENET121, VGG16 = BACKBONE_TABLE["densenet121"], BACKBONE_TABLE["vgg16"]


def backbone_names() -> tuple[str, ...]:
    """Every backbone name, in table order."""
    return tuple(BACKBONE_TABLE)


def check_backbone(name: Any) -> str:
    """``name`` if it is a backbone name, else a ``ValueError`` listing the names."""
    if not isinstance(name, str) or name not in BACKBONE_TABLE:
        from zf_unet.registry import choice_message

        raise ValueError(choice_message("backbone", name, tuple(BACKBONE_TABLE)))
    return name


def _spec(name: Any) -> Backbone:
    return BACKBONE_TABLE[check_backbone(name)]


def _tap_tensor(app: keras.Model, tap: str) -> Any:
    if tap == "@output":
        return app.output
    layer_name, _, where = tap.partition(":")
    layer = app.get_layer(layer_name)
    return layer.input if where == "input" else layer.output


def encoder_layer_names(name: str) -> dict[int, str | None]:
    """``{stride: tap}`` of backbone ``name`` (``None``: no feature at that stride)."""
    return dict(zip(TAP_STRIDES, _spec(name).taps))


# --------------------------------------------------------------------------- weights
def _keras_cache_dir() -> str:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def _download_error(spec: Backbone, exc: BaseException) -> ConfigError:
    text = str(exc)
    url = re.search(r"https?://[^\s:]+(?::\d+)?[^\s:]*", text)
    url_text = url.group(0).rstrip(".,;") if url else None
    where = _keras_cache_dir()
    fetched = (f"Keras tried to fetch {url_text} (file {url_text.rsplit('/', 1)[-1]})"
               if url_text else f"Keras could not fetch the weights file of "
               f"keras.applications.{spec.constructor}")
    return ConfigError(
        f"encoder_weights='imagenet': the ImageNet weights of backbone {spec.name!r} could not "
        f"be downloaded ({type(exc).__name__}: {text.strip()[:300]}). {fetched}. Without "
        f"network: download that file on a machine with internet and put it in {where}/ "
        "(~/.keras/models/, Keras then uses it offline), or pass its local path as "
        "encoder_weights='path/to/file.h5'")


def _load_application(spec: Backbone, input_shape: tuple, weights: Any) -> keras.Model:
    """The application for ``input_shape`` (3 channels when ``weights`` is set) with weights
    ``None``, ``"imagenet"`` (Keras's download, cached) or a local file path."""
    if weights is None:
        return spec.application(input_shape, None)
    if isinstance(weights, str) and weights == "imagenet":
        try:
            return spec.application(input_shape, "imagenet")
        except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception when offline
            text = str(exc)
            if "URL fetch failure" in text or isinstance(exc, OSError) or "fetch" in text.lower():
                raise _download_error(spec, exc) from None
            raise
    path = Path(os.fspath(weights))
    if not path.is_file():
        raise ConfigError(f"encoder_weights: {str(weights)!r} is neither 'imagenet' nor an "
                          "existing weights file; expected None, 'imagenet', the path of a "
                          ".weights.h5 / .h5 file of the same keras.applications model "
                          f"(keras.applications.{spec.constructor}(include_top=False)) or a "
                          "zf_unet .keras model on the same backbone")
    if path.name.endswith(".keras"):
        return _application_from_model_file(spec, path, input_shape)
    if not path.name.endswith(".h5"):
        raise ConfigError(f"encoder_weights: {path} is not a .weights.h5, .h5 or .keras file")
    app = spec.application(input_shape, None)
    try:
        app.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - report which file and which model
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"encoder_weights: {path} cannot be loaded into backbone "
                          f"{spec.name!r} ({type(exc).__name__}: {first}); expected the "
                          f"weights of keras.applications.{spec.constructor}"
                          "(include_top=False)") from None
    return app


def _copy_by_name(src: keras.Model, dst: keras.Model) -> int:
    """Copy the weights of every layer of ``dst`` that ``src`` has under the same name and
    with the same weight shapes; returns the number of layers copied."""
    by_name = {lyr.name: lyr for lyr in src.layers if lyr.weights}
    copied = 0
    for lyr in dst.layers:
        other = by_name.get(lyr.name)
        if not lyr.weights or other is None:
            continue
        if [tuple(w.shape) for w in lyr.weights] != [tuple(w.shape) for w in other.weights]:
            continue
        lyr.set_weights([np.asarray(w.numpy()) for w in other.weights])
        copied += 1
    return copied


def encoder_application(model: keras.Model, backbone: str | None = None) -> keras.Model:
    """The complete ``keras.applications`` model (``include_top=False``) behind the encoder
    of ``model`` (a zf_unet model on a backbone), with the encoder's trained weights.

    Args:
        model: a model from ``build_unet`` / ``build_unet_plus_plus`` with ``backbone=``; its
            nested ``"encoder"`` model holds the weights.
        backbone: the backbone name; ``None`` = found from the encoder's layers.

    Returns:
        The application for ``(None, None, C)`` inputs, ``C`` = the model's input channels.
        Layers past the stride-32 tap that the encoder does not use keep their initial values.
    """
    try:
        encoder = model.get_layer("encoder")
    except ValueError:
        raise ValueError("model has no pretrained-encoder backbone (no layer named 'encoder'); "
                         "build it with backbone=...") from None
    channels = int(encoder.input_shape[-1])
    names = {lyr.name: [tuple(w.shape) for w in lyr.weights] for lyr in encoder.layers
             if lyr.weights}
    candidates = [backbone] if backbone is not None else [
        n for n, spec in BACKBONE_TABLE.items()
        if all(t is None or t == "@output" or t.partition(":")[0] in
               {lyr.name for lyr in encoder.layers} for t in spec.taps)]
    for name in candidates:
        spec = _spec(name)
        app = spec.application((None, None, channels), None)
        app_names = {lyr.name: [tuple(w.shape) for w in lyr.weights] for lyr in app.layers
                     if lyr.weights}
        if all(app_names.get(k) == v for k, v in names.items()):
            _copy_by_name(encoder, app)
            return app
        del app
    raise ValueError("the encoder of this model matches no backbone"
                     + (f" {backbone!r}" if backbone else "") + f" of {backbone_names()}")


def save_encoder_weights(model: keras.Model, path: str | os.PathLike,
                         backbone: str | None = None) -> Path:
    """Write the trained encoder of ``model`` as the weights file of its
    ``keras.applications`` model (``include_top=False``), atomically, for
    ``encoder_weights=path`` in another model: the fine-tuning recipe for an encoder
    pretrained on your own data. ``path`` must end in ``.weights.h5``. The file holds
    weights for the model's input channels; a model with another channel count adapts them
    as it adapts 3-channel ImageNet weights."""
    path = Path(os.fspath(path))
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"save_encoder_weights: {path} must end in .weights.h5")
    app = encoder_application(model, backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:-len('.weights.h5')]}.{os.getpid()}.tmp.weights.h5")
    try:
        app.save_weights(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _application_from_model_file(spec: Backbone, path: Path, input_shape: tuple) -> keras.Model:
    """The application of ``spec`` with the encoder weights of the zf_unet model file
    ``path`` (3 channels, or the file's own channel count when it equals ``input_shape``'s)."""
    try:
        model = load_model_file(path, image_model=False)
        app = encoder_application(model, spec.name)
    except ValueError as exc:
        raise ConfigError(f"encoder_weights: {path} holds no encoder of backbone "
                          f"{spec.name!r} ({exc})") from None
    return app


def _load_own_channels(spec: Backbone, shape: tuple, weights: Any) -> keras.Model | None:
    """For a ``C != 3``-channel encoder and a weights *file*: the application loaded from it
    when the file holds ``C``-channel weights (e.g. from :func:`save_encoder_weights` on a
    grayscale model), else ``None`` (3-channel weights: adapted by the caller)."""
    if weights is None or (isinstance(weights, str) and weights == "imagenet"):
        return None
    path = Path(os.fspath(weights))
    if not path.is_file():
        return None
    if path.name.endswith(".keras"):
        app = _load_application(spec, shape, weights)
        if int(app.input_shape[-1]) == 3 and int(shape[-1]) != 3:
            dst = spec.application(shape, None)
            _transfer_weights(app, dst, int(shape[-1]))
            return dst
        return app
    app = spec.application(shape, None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            app.load_weights(str(path))
    except Exception:  # noqa: BLE001 - not C-channel weights: 3-channel ones are adapted
        return None
    return app


def _transfer_weights(src: keras.Model, dst: keras.Model, channels: int) -> None:
    """Copy the weights of the 3-channel ``src`` into the ``channels``-channel ``dst`` (same
    constructor): the first kernel with 3 input channels by :func:`adapt_channels`, per-channel
    (3,) statistics by the statistics rule; an ImageNet-only ``Rescaling`` with per-channel
    scales (EfficientNet B0-B7) is folded into the statistics of the layer before it."""
    src_layers = [lyr for lyr in src.layers if lyr.weights]
    dst_layers = [lyr for lyr in dst.layers if lyr.weights]
    if len(src_layers) != len(dst_layers):  # pragma: no cover - same constructor
        raise ValueError("encoders differ in structure; cannot transfer weights")
    fold: dict[int, np.ndarray] = {}
    for i, lyr in enumerate(src.layers):
        scale = getattr(lyr, "scale", None)
        if isinstance(lyr, layers.Rescaling) and isinstance(scale, (list, tuple)) \
                and len(scale) == 3 and i > 0:
            fold[id(src.layers[i - 1])] = np.asarray(scale, "float64")
    kernel_done = False
    for a, b in zip(src_layers, dst_layers):
        values = []
        for wa, wb in zip(a.weights, b.weights):
            va = np.asarray(wa.numpy())
            if tuple(va.shape) == tuple(wb.shape):
                values.append(va)
            elif va.ndim == 4 and va.shape[2] == 3 and not kernel_done:
                values.append(adapt_channels(va, channels, axis=2, rescale=True))
                kernel_done = True
            elif va.ndim == 1 and va.shape[0] == 3:
                if id(a) in fold and "variance" in wa.path:
                    va = va / fold[id(a)] ** 2
                values.append(adapt_channels(va, channels, axis=-1, rescale=False))
            else:  # pragma: no cover - same constructor
                raise ValueError(f"cannot adapt {wa.path} {va.shape} to {tuple(wb.shape)}")
        b.set_weights(values)


def build_encoder(name: str, input_shape: Sequence[int | None] = (None, None, 3),
                  weights: str | os.PathLike | None = None) -> keras.Model:
    """The encoder of backbone ``name`` as a ``keras.Model`` named ``"encoder"``.

    Args:
        name: a :data:`BACKBONE_TABLE` name (``zf_unet.registry.BACKBONES``).
        input_shape: ``(H, W, C)`` of the *preprocessed* input (``H``/``W`` None or >= 32).
        weights: ``None`` (random), ``"imagenet"`` (downloaded by Keras and cached in
            ``~/.keras/models/``; a :class:`ConfigError` naming the file when that fails) or
            the path of a ``.weights.h5`` / Keras-2 ``.h5`` weights file of the same
            application (``include_top=False``). For ``C != 3`` the 3-channel weights are
            adapted (see :func:`adapt_channels`).

    Returns:
        A model mapping ``(B, H, W, C)`` to the list of features at the strides that have a
        tap, in stride order (``[s2, s4, s8, s16, s32]``; ConvNeXt: ``[s4, s8, s16, s32]``).
    """
    spec = _spec(name)
    shape = tuple(input_shape)
    channels = int(shape[-1])
    own = _load_own_channels(spec, shape, weights) if channels != 3 else None
    if own is not None:
        app = own
    elif weights is not None and channels != 3:
        src = _load_application(spec, shape[:2] + (3,), weights)
        app = spec.application(shape, None)
        _transfer_weights(src, app, channels)
        del src
    else:
        app = _load_application(spec, shape, weights)
    got = int(app.input_shape[-1])
    if got != channels:
        raise ConfigError(f"encoder_weights: {weights} holds an encoder for {got}-channel "
                          f"input; this model takes {channels} channels (only 3-channel "
                          "weights are adapted to other channel counts)")
    outputs = [_tap_tensor(app, tap) for tap in spec.taps if tap is not None]
    return keras.Model(app.inputs, outputs, name="encoder")


def encoder_features(name: str, image: Any, weights: Any = None, stem_filters: int = 32,
                     kernel_initializer: Any = "he_normal", batch_norm_cls: Any = None
                     ) -> tuple[dict[int, Any], keras.Model]:
    """Preprocess ``image`` (the model's ``(B, H, W, C)`` [0, 1] input) for backbone ``name``
    and run its encoder: ``({stride: feature}, encoder)`` for strides 2, 4, 8, 16, 32. A
    missing stride-2 tap is replaced by a learned stem (``encoder_stem2_*``, ``stem_filters``
    channels, ``batch_norm_cls`` its BatchNorm class)."""
    spec = _spec(name)
    channels = int(image.shape[-1])
    x = BackbonePreprocessing(spec.preprocessing, channels, name="encoder_preprocessing")(image)
    encoder = build_encoder(name, tuple(image.shape[1:3]) + (channels,), weights)
    feats = encoder(x)
    feats = feats if isinstance(feats, (list, tuple)) else [feats]
    strides = [s for s, tap in zip(TAP_STRIDES, spec.taps) if tap is not None]
    out = dict(zip(strides, feats))
    if 2 not in out:
        bn_cls = batch_norm_cls or layers.BatchNormalization
        y = layers.Conv2D(int(stem_filters), 3, strides=2, padding="same",
                          kernel_initializer=kernel_initializer, name="encoder_stem2_conv")(x)
        y = bn_cls(axis=-1, name="encoder_stem2_bn")(y)
        out[2] = layers.Activation("relu", name="encoder_stem2_relu")(y)
    return out, encoder
