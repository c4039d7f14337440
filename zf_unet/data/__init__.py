"""Data: synthetic EM-like images, readers, augmentation and tf.data pipelines."""
from zf_unet.data.synthetic import make_synthetic, write_synthetic_folder

__all__ = ["make_synthetic", "write_synthetic_folder"]
