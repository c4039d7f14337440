"""zf_unet: Keras 3 / TensorFlow U-Nets with the U-Net paper's methods.

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

from zf_unet import _backend  # noqa: F401  (must run before keras is used)
from zf_unet import data, hub, losses, metrics, models, optimizers, postprocess
from zf_unet.config import Config
from zf_unet.models import (
    ZF_UNET_224,
    build_unet,
    build_unet_plus_plus,
    double_conv_layer,
    ensemble,
    prune,
    valid_input_sizes,
)
from zf_unet.export import export_saved_model
from zf_unet.inference import predict_tiled
from zf_unet.postprocess import watershed_cells
from zf_unet.training import train

pretrained = hub.load_pretrained  # zf_unet.pretrained("isbi2012-em") -> keras.Model

__version__ = "0.1.0"

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
