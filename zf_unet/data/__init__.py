"""Data: synthetic EM-like images, readers, augmentation and tf.data pipelines."""
