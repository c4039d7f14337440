"""Loading ``.keras`` model files with errors that name the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from zf_unet.errors import DataError
from zf_unet.models.geometry import model_geometry

__all__ = ["load_model_file"]


def load_model_file(path: Any, *, image_model: bool = True) -> keras.Model:
    """Load a ``.keras`` file (compile-free) with errors that name the file.

    Args:
        path: the ``.keras`` file, or ``"pretrained:NAME"`` for a model of
            :func:`zf_unet.hub.list_pretrained` (sha256-checked).
        image_model: also check that it is a single-input image model that
            :func:`zf_unet.predict_tiled` can use (see :func:`model_geometry`).

    Raises:
        DataError: missing file, a file Keras cannot load (not a ``.keras`` archive, another
            library's model, a corrupt download), or not an image model.
    """
    text = str(path)
    if text.startswith("pretrained:"):
        from zf_unet.hub import load_pretrained

        model = load_pretrained(text[len("pretrained:"):])
    else:
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
    if image_model:
        try:
            model_geometry(model)
        except ValueError as exc:
            raise DataError(f"{text}: not an image segmentation model that zf_unet can use: "
                            f"{exc}") from None
    return model
