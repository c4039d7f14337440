"""Data: synthetic EM-like images, readers, augmentation, weight maps and tf.data pipelines."""
from zf_unet.data.augment import (
    Augment,
    AugmentLayer,
    augment_batch,
    augment_sample,
    elastic_displacement,
    warp,
)
from zf_unet.data.io import (
    describe_dataset,
    find_pairs,
    load_arrays,
    load_folder,
    load_tiff_stacks,
    normalize_mask,
    read_image,
    read_stack,
    read_volume,
    read_volume_pair,
)
from zf_unet.data.pipeline import (
    DataInfo,
    DataSplit,
    class_pixel_counts,
    infer_num_classes,
    load_source,
    make_datasets,
    median_frequency_weights,
    to_float_image,
)
from zf_unet.data.shards import ShardInfo, ShardSource, write_shards
from zf_unet.data.sources import Sample, Source, open_source
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

__all__ = [
    "Augment",
    "AugmentLayer",
    "DataInfo",
    "DataSplit",
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
