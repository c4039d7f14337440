"""Model builders: U-Net (and the classic ZF_UNET_224), U-Net++ and their blocks, for images
and (anisotropic) volumes (``plan_pooling``); the tiling geometry of a model
(``model_geometry``) and loading ``.keras`` files."""
from zf_unet.models.anisotropy import plan_pooling
from zf_unet.models.backbones import (
    BackbonePreprocessing,
    adapt_channels,
    build_encoder,
    save_encoder_weights,
)
from zf_unet.models.blocks import (
    CenterCropToMatch,
    FusedBatchNormalization,
    LinearUpSampling3D,
    double_conv_layer,
    upsample,
)
from zf_unet.models.folding import (
    FoldedBatchNorm,
    FoldedView,
    fold_batch_norm,
    foldable_pairs,
    fusable_upsamplings,
    unfused_copy,
)
from zf_unet.models.fused_upsampling import FusedUpsampleConv, transposed_up_kernel
from zf_unet.models.builder_args import level_filters
from zf_unet.models.geometry import ModelGeometry, model_geometry, output_size, valid_input_sizes
from zf_unet.models.loading import load_model_file, load_weights_file
from zf_unet.models.unet import ZF_UNET_224, build_unet
from zf_unet.models.unet_plus_plus import (
    build_unet_plus_plus,
    deep_supervision_targets,
    ensemble,
    nested_depth,
    prune,
    repeat_targets,
)

__all__ = [
    "BackbonePreprocessing",
    "CenterCropToMatch",
    "FoldedBatchNorm",
    "FoldedView",
    "FusedBatchNormalization",
    "FusedUpsampleConv",
    "LinearUpSampling3D",
    "ModelGeometry",
    "ZF_UNET_224",
    "adapt_channels",
    "build_encoder",
    "build_unet",
    "build_unet_plus_plus",
    "deep_supervision_targets",
    "ensemble",
    "fold_batch_norm",
    "foldable_pairs",
    "fusable_upsamplings",
    "nested_depth",
    "prune",
    "repeat_targets",
    "save_encoder_weights",
    "transposed_up_kernel",
    "unfused_copy",
    "double_conv_layer",
    "level_filters",
    "load_model_file",
    "load_weights_file",
    "model_geometry",
    "output_size",
    "plan_pooling",
    "upsample",
    "valid_input_sizes",
]
