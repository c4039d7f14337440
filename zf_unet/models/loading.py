"""Loading ``.keras`` model files and ``.weights.h5`` weight files with errors that name the
file."""
from __future__ import annotations

import warnings
import weakref
from pathlib import Path
from typing import Any

import keras

from zf_unet.errors import DataError
from zf_unet.models.folding import unfused_copy
from zf_unet.models.fused_upsampling import FusedUpsampleConv
from zf_unet.models.geometry import model_geometry

__all__ = ["PRETRAINED_PREFIX", "checked_model", "load_model_file", "load_weights_file",
           "model_source"]

#: Model arguments that start with this name a pretrained model (``"pretrained:NAME"``),
#: resolved by :func:`zf_unet.hub.load_model`.
PRETRAINED_PREFIX = "pretrained:"


#: The file each model of :func:`load_model_file` came from (for error messages).
_SOURCES: "weakref.WeakKeyDictionary[keras.Model, str]" = weakref.WeakKeyDictionary()


def model_source(model: Any) -> str:
    """Where ``model`` came from, for messages: the file :func:`load_model_file` read it
    from, else ``model 'NAME'``."""
    try:
        source = _SOURCES.get(model)
    except TypeError:  # not weak-referenceable
        source = None
    return source or f"model {getattr(model, 'name', type(model).__name__)!r}"


def load_model_file(path: Any, *, image_model: bool = True) -> keras.Model:
    """Load a ``.keras`` file (compile-free) with errors that name the file.

    Args:
        path: the ``.keras`` file (``"pretrained:NAME"`` is resolved by
            :func:`zf_unet.hub.load_model`).
        image_model: also check that it is a single-input image model that
            :func:`zf_unet.predict_tiled` can use (see :func:`model_geometry`).

    Raises:
        DataError: missing file, a file Keras cannot load (not a ``.keras`` archive, another
            library's model, a corrupt download), or not an image model.
    """
    text = str(path)
    if text.startswith(PRETRAINED_PREFIX):
        raise DataError(f"{text}: a pretrained model, not a file; load it with "
                        "zf_unet.hub.load_model (or zf_unet.pretrained(NAME))")
    p = Path(text)
    if not p.exists():
        raise DataError(f"{p}: model file not found (expected a .keras file)")
    if not p.is_file():
        raise DataError(f"{p}: is a folder; expected a .keras model file")
    if p.suffix.lower() != ".keras":
        raise DataError(f"{p}: expected a .keras model file (Keras 3 format), got "
                        f"{p.suffix or 'no extension'!r}")
    try:
        model = keras.saving.load_model(p, compile=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad model file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{p}: cannot load as a Keras model; expected a .keras file saved "
                        f"by model.save() ({type(exc).__name__}: {first})") from None
    return checked_model(model, text, image_model=image_model)


def checked_model(model: keras.Model, source: str, *, image_model: bool = True) -> keras.Model:
    """``model``, remembered as coming from ``source`` (for messages, :func:`model_source`)
    and, with ``image_model``, checked to be an image / volume model that
    :func:`zf_unet.predict_tiled` can use (``DataError`` naming ``source`` otherwise)."""
    text = str(source)
    try:
        _SOURCES[model] = text
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    if image_model:
        try:
            model_geometry(model)
        except ValueError as exc:
            raise DataError(f"{text}: not an image segmentation model that zf_unet can use: "
                            f"{exc}") from None
    return model


def load_weights_file(model: keras.Model, path: Any) -> None:
    """``model.load_weights(path)`` that also reads weight files saved from the model's
    unfused layout (``fuse_upsampling=False``, or zf_unet before
    :class:`~zf_unet.models.FusedUpsampleConv`): Keras keys ``.weights.h5`` entries by layer
    class and position, so those files do not match a model whose decoder convolutions are
    fused. They are loaded into :func:`zf_unet.models.folding.unfused_copy` and copied over.

    Raises:
        DataError: the file is missing or fits neither layout (naming the file).
    """
    p = Path(str(path))
    if not p.is_file():
        raise DataError(f"{p}: weights file not found (expected a .weights.h5 file)")

    def load(into: keras.Model) -> Exception | None:
        try:
            with warnings.catch_warnings():  # Keras warns about every unmatched entry
                warnings.simplefilter("ignore")
                into.load_weights(str(p))
        except Exception as exc:  # noqa: BLE001 - reported below with the file name
            return exc
        return None

    error = load(model)
    if error is None:
        return
    if any(isinstance(layer, FusedUpsampleConv) and not layer.cache_kernels
           for layer in model.layers):
        twin = unfused_copy(model)
        if load(twin) is None:  # else report the first error: the model's own layout
            model.set_weights(twin.get_weights())
            return
    first = (str(error).strip().splitlines() or [""])[0][:200]
    raise DataError(f"{p}: cannot load these weights into model {model.name!r} "
                    f"({type(error).__name__}: {first}); expected a .weights.h5 file saved "
                    "from a model of the same architecture") from None
