"""Data: synthetic EM-like images, readers, augmentation, weight maps and tf.data pipelines."""
from zf_unet.data.augment import augment_batch, augment_sample, elastic_displacement
from zf_unet.data.augment_config import Augment
from zf_unet.data.augment_warp import warp
from zf_unet.data.io import read_image, read_stack, read_volume, read_volume_pair
from zf_unet.data.loaders import load_arrays, load_folder, load_source, load_tiff_stacks
from zf_unet.data.masks import infer_num_classes, normalize_mask
from zf_unet.data.pairing import find_pairs
from zf_unet.data.pipeline import make_datasets
from zf_unet.data.shard_format import ShardInfo
from zf_unet.data.shard_source import ShardSource
from zf_unet.data.shard_writer import write_shards
from zf_unet.data.sources import Sample, Source, open_source
from zf_unet.data.splits import DataInfo, DataSplit, Datasets
from zf_unet.data.stats import class_pixel_counts, describe_dataset, median_frequency_weights
from zf_unet.data.synthetic import make_synthetic, write_synthetic_folder
from zf_unet.data.tfdata import finish_pipeline, without_autotune_thread
from zf_unet.data.weightmaps import (
    border_weight_map,
    border_weight_maps,
    cached_border_weight_map,
    class_weight_map,
    volume_weight_map,
)
from zf_unet.data.volumes import VolumeSplit, load_volumes, make_volume_datasets
from zf_unet.pixels import to_float_image

__all__ = [
    "Augment",
    "AugmentLayer",
    "DataInfo",
    "DataSplit",
    "Datasets",
    "Sample",
    "ShardInfo",
    "ShardSource",
    "Source",
    "VolumeSplit",
    "augment_batch",
    "augment_sample",
    "border_weight_map",
    "border_weight_maps",
    "cached_border_weight_map",
    "class_weight_map",
    "describe_dataset",
    "elastic_displacement",
    "find_pairs",
    "finish_pipeline",
    "infer_num_classes",
    "load_arrays",
    "load_folder",
    "load_source",
    "load_tiff_stacks",
    "load_volumes",
    "make_datasets",
    "make_synthetic",
    "make_volume_datasets",
    "class_pixel_counts",
    "median_frequency_weights",
    "normalize_mask",
    "open_source",
    "read_image",
    "read_stack",
    "read_volume",
    "read_volume_pair",
    "to_float_image",
    "volume_weight_map",
    "warp",
    "without_autotune_thread",
    "write_shards",
    "write_synthetic_folder",
]


def __getattr__(name: str) -> object:
    """``AugmentLayer`` is imported on first use (PEP 562): it is the one name here that needs
    Keras, and reading a config (``zf_unet.config`` imports ``Augment``) must not import it."""
    if name == "AugmentLayer":
        from zf_unet.data.augment_layer import AugmentLayer

        return AugmentLayer
    raise AttributeError(f"module 'zf_unet.data' has no attribute {name!r}")
