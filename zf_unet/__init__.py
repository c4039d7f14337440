"""zf_unet: Keras 3 U-Nets with the U-Net paper's methods, on TensorFlow, JAX or PyTorch.

Public API (everything else is internal)::

    zf_unet.build_unet(...)          # configurable U-Net (functional keras.Model)
    zf_unet.ZF_UNET_224(...)         # the classic 224x224x3 model, exactly
    zf_unet.double_conv_layer(...)   # (Conv3x3 -> BN -> ReLU) x 2 block
    zf_unet.build_unet_plus_plus(...) # U-Net++ (nested skips, deep supervision)
    zf_unet.prune(model, level)      # U-Net++ sub-model L1..L4 sharing the weights
    zf_unet.ensemble(model)          # U-Net++ average of the supervised heads
    zf_unet.losses                   # Dice, BCE+Dice, Jaccard, weighted cross-entropy
    zf_unet.metrics                  # Dice/IoU Keras metrics, ISBI-style NumPy scores
    zf_unet.optimizers               # FusedAdam: Keras Adam as one fused kernel per variable
    zf_unet.data                     # synthetic EM-like data, readers, augmentation, pipelines
    zf_unet.train(config, out_dir)   # model.fit with checkpoints, resume, precision, strategies
    zf_unet.predict_tiled(model, image)  # overlap-tile prediction for any image size
    zf_unet.watershed_cells(prob)    # cells (int labels) from a probability map
    zf_unet.pretrained(name)         # shipped weights (weights/), sha256-checked
    zf_unet.export_saved_model(model, path)   # TF Serving SavedModel (path/<version>/)
"""
from __future__ import annotations

import importlib
from typing import Any

from zf_unet import backend  # noqa: F401  (chooses the Keras backend before keras is imported)

if not backend.running_as_cli():
    # Register every serializable layer, loss, metric and optimizer, so that .keras files load
    # without custom_objects. The zf-unet command does it after choosing --backend, so that
    # it reads and checks a config (zf_unet.config imports no Keras) before Keras is imported.
    from zf_unet import losses, metrics, models, optimizers  # noqa: F401,E402
    from zf_unet.data import augment_layer  # noqa: E402

    #: The modules whose Keras objects this import registered.
    _REGISTERED = (losses, metrics, models, optimizers, augment_layer)

__version__ = "0.1.0"

#: Public name -> the module that defines it. Imported on first use (PEP 562), so that
#: ``import zf_unet`` is quick, imports no TensorFlow, and the ``zf-unet`` command can choose
#: the Keras backend (``--backend``) before Keras is imported.
_EXPORTS = {
    "Config": "zf_unet.config",
    "ZF_UNET_224": "zf_unet.models",
    "build_unet": "zf_unet.models",
    "build_unet_plus_plus": "zf_unet.models",
    "double_conv_layer": "zf_unet.models",
    "ensemble": "zf_unet.models",
    "prune": "zf_unet.models",
    "valid_input_sizes": "zf_unet.models",
    "export_saved_model": "zf_unet.export",
    "predict_tiled": "zf_unet.inference",
    "watershed_cells": "zf_unet.postprocess",
    "train": "zf_unet.training",
}
_SUBMODULES = ("data", "hub", "losses", "metrics", "models", "optimizers", "postprocess")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"zf_unet.{name}")
    elif name == "pretrained":  # zf_unet.pretrained("isbi2012-em") -> keras.Model
        value = importlib.import_module("zf_unet.hub").load_pretrained
    else:
        raise AttributeError(f"module 'zf_unet' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Config",
    "ZF_UNET_224",
    "build_unet",
    "build_unet_plus_plus",
    "data",
    "double_conv_layer",
    "ensemble",
    "export_saved_model",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "postprocess",
    "predict_tiled",
    "hub",
    "pretrained",
    "prune",
    "train",
    "valid_input_sizes",
    "watershed_cells",
    "__version__",
]
