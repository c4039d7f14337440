"""One worker of the two-process MultiWorkerMirroredStrategy test (run by test_train.py)."""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from zf_unet.config import Config  # noqa: E402
from zf_unet.training import train  # noqa: E402

out, weights_file = sys.argv[1], sys.argv[2]
cfg = Config().override([
    'train.strategy="multiworker"', "train.epochs=2", 'train.precision="float32"',
    "train.tensorboard=false", 'data.source="synthetic"', "data.synthetic_n=8",
    "data.synthetic_size=32", "data.batch_size=4", "data.val_fraction=0.25",
    "model.depth=2", "model.filters=4",
    "data.augment.enabled=false",  # no XLA augmentation to compile: not what this tests
])
history, run = train(cfg, out, verbose=0)
np.savez(weights_file, steps=len(history.epoch),
         *[np.asarray(w) for w in history.model.get_weights()])
