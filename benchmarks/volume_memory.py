"""Memory of overlap-tile prediction on a large VOLUME (Step 13, goal: a 64 x 2048 x 2048
volume predicted with well under 2 GB beyond its output).

In a fresh process: a random-weight 3-D U-Net (depth 4, ``--filters`` at the top, the
anisotropic plan of (50, 4.6, 4.6) nm voxels: pools (1,2,2) x 3, kernels (1,3,3) x 3 then
(3,3,3), 2 classes), a warm-up prediction of a small volume, then the resident-set peak is
reset (``/proc/self/clear_refs``) and read back (``VmHWM``) after ``predict_tiled`` of a
uint8 ``D x S x S`` volume with (16, 256, 256) tiles and (4, 64, 64) overlap. "extra" = peak
minus the resident size just before the call; the float32 ``(D, S, S, 2)`` result (2 GiB for
64 x 2048 x 2048) is what the caller asked for and is reported beside it.

    python benchmarks/volume_memory.py                      # 64 x 2048 x 2048, ~5-15 min
    python benchmarks/volume_memory.py --depth 16 --size 512  # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info, status_kib  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=64, help="sections of the volume")
    ap.add_argument("--size", type=int, default=2048, help="height and width")
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--tile", default="16,256,256")
    ap.add_argument("--overlap", default="4,64,64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    import numpy as np

    import zf_unet

    tile = tuple(int(v) for v in args.tile.split(","))
    overlap = tuple(int(v) for v in args.overlap.split(","))
    model = zf_unet.build_unet((None, None, None, 1), num_classes=2, depth=4,
                               filters=args.filters, pool_sizes="auto", spacing=(50, 4.6, 4.6))
    small = np.random.default_rng(1).integers(0, 256, (20, 300, 300), dtype=np.uint8)
    zf_unet.predict_tiled(model, small, tile_size=tile, overlap=overlap, batch_size=args.batch)
    volume = np.random.default_rng(2).integers(0, 256, (args.depth, args.size, args.size),
                                               dtype=np.uint8)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = status_kib("VmRSS")
    load = os.getloadavg()
    t0 = time.perf_counter()
    out = zf_unet.predict_tiled(model, volume, tile_size=tile, overlap=overlap,
                                batch_size=args.batch)
    seconds = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_start": list(load),
        "loadavg_end": list(os.getloadavg()), "machine": machine_info(),
        "volume": [args.depth, args.size, args.size], "tile": tile, "overlap": overlap,
        "batch": args.batch, "filters": args.filters, "params": int(model.count_params()),
        "seconds": seconds, "voxels_per_s": volume.size / seconds,
        "rss_before_mib": before / 1024, "peak_mib": peak / 1024,
        "extra_mib": (peak - before) / 1024, "output_mib": out.nbytes / 2 ** 20,
        "volume_mib": volume.nbytes / 2 ** 20,
    }
    result["extra_without_output_mib"] = result["extra_mib"] - result["output_mib"]
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
