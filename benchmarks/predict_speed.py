"""Overlap-tile prediction speed and memory (Step 4).

1. Tiling overhead. ``zf_unet.predict_tiled`` on a 2048 x 2048 uint8 image is timed against
   the sum of plain forward passes over exactly the tiles it predicts: the same number of
   model calls, the same batch shape ``(batch, tile, tile, 1)``, through one traced
   ``tf.function`` of ``model(x, training=False)`` on ready-made float32 batches. The
   difference is what tiling itself costs: gathering tiles with mirror padding, scaling,
   blending windows, accumulation and normalisation. Both are timed alternately in the same
   process (median of ``--repeats``); overhead = tiled / plain - 1. Goal: <= 15 %.
   With ``tta="flips"`` the reference is 4x the plain passes (4 transforms per tile batch).
2. Peak memory for 8192 x 8192: in a fresh process, after a warm-up prediction, the resident
   set high-water mark is reset (``/proc/self/clear_refs``) and read back (``VmHWM``) after
   ``predict_tiled``; "extra" = peak - resident size just before the call, with and without
   the float32 result (256 MiB for one class), which the caller asked for. For scale, one
   forward pass of the whole image at once would hold a single 16-channel float32 feature map
   of 4 GiB at the first level alone.

Model: the shipped ISBI model (``zf_unet.pretrained("isbi2012-em")``: depth 5, 16..256
filters, float32) unless ``--filters`` builds a random-weight U-Net of that width instead.

Run (about 3-5 minutes on 2 cores):
    python benchmarks/predict_speed.py
    python benchmarks/predict_speed.py --quick          # 1024^2, 2048^2 for memory, 3 repeats
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import status_kib  # noqa: E402


def _load_model(filters: int | None):
    import zf_unet

    if filters:
        import keras

        keras.utils.set_random_seed(0)
        return zf_unet.build_unet((None, None, 1), depth=5, filters=filters)
    return zf_unet.pretrained("isbi2012-em")


def tiles_for(model, size: int, tile: int, overlap: int, batch: int):
    """The tile grid ``predict_tiled`` uses for a ``size`` x ``size`` image."""
    from zf_unet.tiling import TilePlan, model_geometry

    geom = model_geometry(model)
    plan = TilePlan.for_geometry(geom, tile, overlap)
    out = plan.output_tile(size, 0)
    n = len(plan.tile_starts(size, out)) ** 2
    return n, out + 2 * geom.margin


def bench_overhead(args: argparse.Namespace) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    import zf_unet

    model = _load_model(args.filters)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size), dtype=np.uint8)
    rows = []
    for tile, overlap, tta in args.settings:
        n_tiles, in_tile = tiles_for(model, args.size, tile, overlap, args.batch)
        calls = -(-n_tiles // args.batch)
        n_tf = 4 if tta == "flips" else 1
        spec = tf.TensorSpec((args.batch, in_tile, in_tile, 1), tf.float32)
        forward = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                              autograph=False)
        batches = [tf.constant(rng.random((args.batch, in_tile, in_tile, 1), dtype=np.float32))
                   for _ in range(min(calls, 4))]

        def plain() -> None:
            for i in range(calls * n_tf):
                np.asarray(forward(batches[i % len(batches)]))

        def tiled() -> None:
            zf_unet.predict_tiled(model, image, tile_size=tile, overlap=overlap,
                                  batch_size=args.batch, tta=tta)

        plain()  # trace + warm up
        tiled()
        t_plain, t_tiled = [], []
        for _ in range(args.repeats):
            for fn, times in ((plain, t_plain), (tiled, t_tiled)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        mp, mt = statistics.median(t_plain), statistics.median(t_tiled)
        paired = statistics.median(b / a for a, b in zip(t_plain, t_tiled))
        rows.append({"tile": tile, "overlap": overlap, "tta": tta, "tiles": n_tiles,
                     "calls": calls * n_tf, "input_tile": in_tile, "plain_s": mp,
                     "tiled_s": mt, "overhead": mt / mp - 1.0, "paired_overhead": paired - 1.0,
                     "plain_all": t_plain, "tiled_all": t_tiled})
        print(f"  tile {tile} overlap {overlap} tta {tta}: {n_tiles} tiles, plain {mp:.2f} s, "
              f"tiled {mt:.2f} s, overhead {100 * (mt / mp - 1):+.1f} % "
              f"(paired {100 * (paired - 1):+.1f} %)", file=sys.stderr, flush=True)
    return rows


def memory_child(args: argparse.Namespace) -> dict:
    import numpy as np

    import zf_unet

    model = _load_model(args.filters)
    small = np.random.default_rng(1).integers(0, 256, (600, 600), dtype=np.uint8)
    zf_unet.predict_tiled(model, small, tile_size=args.mem_tile, batch_size=args.batch)
    image = np.random.default_rng(2).integers(0, 256, (args.mem_size,) * 2, dtype=np.uint8)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset the peak resident set size
    before = status_kib("VmRSS")
    t0 = time.perf_counter()
    out = zf_unet.predict_tiled(model, image, tile_size=args.mem_tile, batch_size=args.batch)
    elapsed = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    return {"size": args.mem_size, "tile": args.mem_tile, "seconds": elapsed,
            "rss_before_mib": before / 1024, "peak_mib": peak / 1024,
            "extra_mib": (peak - before) / 1024, "output_mib": out.nbytes / 2**20,
            "image_mib": image.nbytes / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="image side for the overhead table")
    p.add_argument("--batch", type=int, default=4, help="tiles per model call (predict_tiled)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--filters", type=int, default=None,
                   help="random-weight U-Net of this width instead of the shipped ISBI model")
    p.add_argument("--mem-size", type=int, default=8192)
    p.add_argument("--mem-tile", type=int, default=256)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write raw results here")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.mem_size = 1024, 3, 2048
    args.settings = [(256, 64, None), (256, 32, None), (512, 64, None), (256, 64, "flips")]
    if args.quick:
        args.settings = args.settings[:1]
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return 0

    import tensorflow as tf

    rows = bench_overhead(args)
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child",
           "--mem-size", str(args.mem_size), "--mem-tile", str(args.mem_tile),
           "--batch", str(args.batch)] + (["--filters", str(args.filters)] if args.filters else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    mem = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None

    model_name = (f"random U-Net depth 5, {args.filters} filters" if args.filters
                  else "shipped `isbi2012-em` U-Net (depth 5, 16..256 filters, float32)")
    print(f"# predict_tiled speed, {args.size}x{args.size} uint8, {model_name}, "
          f"batch {args.batch}, median of {args.repeats}")
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| tile / overlap / TTA | tiles | model calls | plain forward passes (s) "
          "| predict_tiled (s) | overhead | paired overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tile']} / {r['overlap']} / {r['tta'] or 'none'} | {r['tiles']} | "
              f"{r['calls']} | {r['plain_s']:.2f} | {r['tiled_s']:.2f} | "
              f"{100 * r['overhead']:+.1f} % | {100 * r['paired_overhead']:+.1f} % |")
    if mem:
        print(f"\n{mem['size']}x{mem['size']} uint8 ({mem['image_mib']:.0f} MiB) in "
              f"{mem['seconds']:.1f} s with tile {mem['tile']}: peak resident set "
              f"{mem['extra_mib']:.0f} MiB above the {mem['rss_before_mib']:.0f} MiB before the "
              f"call, of which {mem['output_mib']:.0f} MiB is the float32 result; without it "
              f"{mem['extra_mib'] - mem['output_mib']:.0f} MiB.")
    else:
        print(f"\nmemory run failed: {proc.stderr[-2000:]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"overhead": rows, "memory": mem}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
