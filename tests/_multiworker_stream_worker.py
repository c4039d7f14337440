"""One worker of the two-process streaming test (run by test_streaming.py): which training
samples does this worker read in one epoch, and what weights does training end with?"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from zf_unet.config import Config  # noqa: E402
from zf_unet.data import make_datasets  # noqa: E402
from zf_unet.distribute import make_strategy  # noqa: E402
from zf_unet.training import train  # noqa: E402

folder, out, result = sys.argv[1], sys.argv[2], sys.argv[3]
strategy = make_strategy("multiworker")
info = make_datasets(folder, batch_size=2, val_fraction=0.0, cache="none").info
dist = strategy.distribute_datasets_from_function(info.make_train)
seen = []
for batch in dist:
    for image in strategy.experimental_local_results(batch[0]):
        seen += [int(round(float(v) * 255 / 10)) - 1 for v in np.asarray(image)[:, 0, 0, 0]]

cfg = Config().override([
    f'data.source="{folder}"', 'data.cache="none"', "data.batch_size=2",
    "data.val_fraction=0.25", "data.augment.enabled=false", 'train.strategy="multiworker"',
    "train.epochs=1", 'train.precision="float32"', "train.tensorboard=false",
    "train.collapse_warning=false", "model.depth=2", "model.filters=4",
])
history, _ = train(cfg, out, verbose=0, strategy=strategy)
np.savez(result + ".npz", *[np.asarray(w) for w in history.model.get_weights()])
with open(result + ".json", "w") as f:
    json.dump({"seen": seen}, f)
