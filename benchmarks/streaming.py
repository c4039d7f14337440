"""Streaming input pipelines (Step 11): peak memory against data size, and throughput.

1. Memory. ``N`` synthetic 512x512 grayscale image/mask PNG pairs are written to a temporary
   folder (250 distinct ``zf_unet.data.make_synthetic`` images, repeated under new names for
   larger ``N``; deleted afterwards). In a fresh process per measurement the resident-set
   high-water mark is reset (``/proc/self/clear_refs``), ``make_datasets(folder,
   patch_size=256, batch_size=4, border_weights=True, augment=None, cache=...)`` is built and
   one epoch of its training batches is drawn; the figure is the peak resident memory above
   the level before ``make_datasets`` (``VmHWM - VmRSS``). ``cache="none"`` streams;
   ``cache="memory"`` decodes and stacks every sample (skipped where it would not fit).
2. Throughput of the training pipeline with the paper's augmentation (elastic 3x3 grid, std
   10 px, flips, rot90, gray values) and border weight maps, 512x512 patches, batch 4, from
   the 250-image folder: in-memory, streamed from the PNG files, and streamed from TFRecord
   shards (``zf-unet pack``). The three are built once in one process and timed in turn
   (``--repeats`` rounds of ``--batches`` batches each, interleaved, each block on a fresh
   iterator after 3 warm-up batches, so no pipeline works ahead while another is timed);
   medians per batch.
   The reference is what a training step consumes: the default U-Net (depth 5, 32 filters,
   mixed_bfloat16 on this CPU) timed on a fixed batch of 4 512x512 patches in the same run.

Run (about 10 minutes on 2 cores; the CPU should be otherwise idle):
    python benchmarks/streaming.py [--sizes 250 1000 4000] [--repeats 5] [--batches 10]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 512

MEMORY_CHILD = """
import json, sys
from zf_unet.data import make_datasets

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
train, _ = make_datasets(sys.argv[1], patch_size=256, batch_size=4, val_fraction=0.0,
                         border_weights=True, cache_dir=sys.argv[3], cache=sys.argv[2])
batches = sum(1 for _ in train)
print(json.dumps({"extra": status("VmHWM") - before, "batches": batches}))
"""


def write_folder(root: Path, n: int, distinct: Path | None = None) -> Path:
    """``n`` pairs under ``root``: new files, or links to the first pairs of ``distinct``."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    if distinct is None:
        from zf_unet.data import make_synthetic

        x, y = make_synthetic(n, SIZE, seed=0)
        for i in range(n):
            Image.fromarray((x[i, ..., 0] * 255).astype(np.uint8)).save(
                root / "images" / f"{i:05d}.png")
            Image.fromarray((y[i, ..., 0] * 255).astype(np.uint8)).save(
                root / "masks" / f"{i:05d}.png")
        return root
    base = sorted((distinct / "images").iterdir())
    for i in range(n):
        src = base[i % len(base)].name
        for sub in ("images", "masks"):
            os.link(distinct / sub / src, root / sub / f"{i:05d}.png")
    return root


def measure_memory(folder: Path, cache: str, weight_cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(folder), cache,
                          str(weight_cache)], capture_output=True, text=True, env=env,
                         timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(folder: Path, shards: Path, weight_cache: Path, repeats: int, batches: int
               ) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    import zf_unet
    from zf_unet.data import Augment, make_datasets

    aug = Augment(elastic=True, flips=True, rotate90=True, gray_values=True)
    kw = dict(patch_size=SIZE, batch_size=4, val_fraction=0.0, augment=aug,
              border_weights=True, cache_dir=weight_cache)
    built = {
        "in memory": make_datasets(folder, cache="memory", **kw)[0],
        "streamed PNG files": make_datasets(folder, cache="none", **kw)[0],
        "streamed TFRecord shards": make_datasets(shards, cache="none", **kw)[0],
    }
    times: dict[str, list[float]] = {k: [] for k in built}
    for _ in range(repeats):
        for k, ds in built.items():
            # A fresh iterator per block: no pipeline works ahead while another is timed.
            it = iter(ds.repeat())
            for _ in range(3):  # warm-up: XLA compile (first block), buffers filled
                next(it)
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            times[k].append((time.perf_counter() - t0) / batches)
            del it

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = zf_unet.build_unet((None, None, 1), depth=5, filters=32)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((4, SIZE, SIZE, 1), np.float32)
    y = (x > 0.5).astype(np.float32)
    model.train_on_batch(x, y)
    steps = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        steps.append(time.perf_counter() - t0)
    keras.mixed_precision.set_global_policy("float32")
    out = {k: statistics.median(v) for k, v in times.items()}
    out["training step (U-Net depth 5, 32 filters, bf16)"] = statistics.median(steps)
    del tf
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[250, 1000, 4000],
                        help="folder sizes for the memory table (none: throughput only)")
    parser.add_argument("--memory-limit", type=int, default=1000,
                        help="largest N measured in memory (4000 needs about 16 GB)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--json", default="benchmarks/results/streaming.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="zf-unet-streaming-"))
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg(),
                    "memory": {}, "seconds_per_batch": {}}
    try:
        base = write_folder(tmp / "n250", 250)
        weights = tmp / "weights"
        for n in args.sizes:
            folder = base if n == 250 else write_folder(tmp / f"n{n}", n, distinct=base)
            row = {"streaming": measure_memory(folder, "none", weights)}
            if n <= args.memory_limit:
                row["memory"] = measure_memory(folder, "memory", weights)
            result["memory"][n] = row
            print(n, {k: f"{v['extra'] / 2**20:.0f} MiB" for k, v in row.items()}, flush=True)
        from zf_unet.cli import main as cli

        shards = tmp / "shards"
        cli(["pack", str(base), "--out", str(shards), "--border-weights"])
        result["seconds_per_batch"] = throughput(base, shards, weights, args.repeats,
                                                 args.batches)
        print(json.dumps(result["seconds_per_batch"], indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
