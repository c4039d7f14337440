#!/usr/bin/env python3
"""Send one image to a TF Serving REST endpoint that serves a zf_unet export; write the mask.

Needs only the Python standard library, NumPy and Pillow (no TensorFlow, no zf_unet)::

    python examples/serving_client.py cell.png \\
        --url http://localhost:8501/v1/models/isbi:predict --out cell_mask.png

    # build the request and print its size, send nothing
    python examples/serving_client.py cell.png --dry-run

The request is TF Serving's row format::

    {"signature_name": "serving_default", "instances": [{"image": <H x W x C nested list>}]}

and the reply ``{"predictions": [{"probabilities": ..., "mask": ...}]}`` (or, for a
signature with one output such as ``mask_only``, ``{"predictions": [<mask>]}``). The mask of a
one-class model (0/1) is written as 0/255 (255 = foreground, the ISBI convention) unless
``--scale none``; multi-class label images are written as they are.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_URL = "http://localhost:8501/v1/models/zf_unet:predict"


def load_image(path: str | Path, channels: int | None = None, dtype: str = "uint8") -> np.ndarray:
    """Read ``path`` as an ``(H, W, C)`` array of the export's input ``dtype``.

    ``channels``: 1 (grayscale) or 3 (RGB); ``None`` keeps grayscale images gray and makes
    everything else RGB. ``dtype``: ``uint8``, ``uint16`` (16-bit images are kept, 8-bit ones
    scaled by 257) or ``float32`` (scaled to [0, 1] by the image's dtype maximum).
    """
    with Image.open(path) as im:
        im.load()
        gray = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
        want = channels or (1 if gray else 3)
        if want == 1 and not gray:
            im = im.convert("L")
        elif want == 3 and im.mode != "RGB":
            im = im.convert("RGB")
        elif want not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        arr = np.asarray(im)
    if arr.dtype == np.int32:  # Pillow's mode "I" (16-bit PNGs)
        arr = arr.astype(np.uint16)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    maximum = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
    if dtype == "uint8":
        if arr.dtype != np.uint8:
            arr = np.round(arr.astype(np.float64) * (255.0 / maximum)).astype(np.uint8)
        return arr
    if dtype == "uint16":
        if arr.dtype == np.uint8:
            return arr.astype(np.uint16) * 257
        return np.round(arr.astype(np.float64) * (65535.0 / maximum)).astype(np.uint16)
    if dtype == "float32":
        return (arr.astype(np.float32) / np.float32(maximum)).astype(np.float32)
    raise ValueError(f"dtype must be uint8, uint16 or float32, got {dtype!r}")


def request_body(image: np.ndarray, signature: str = "serving_default") -> dict:
    """TF Serving REST "instances" body for one ``(H, W, C)`` image."""
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    return {"signature_name": signature, "instances": [{"image": image.tolist()}]}


def encode_body(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def post(url: str, data: bytes, timeout: float = 60.0) -> dict:
    """POST ``data`` as JSON to ``url``; return the parsed reply (server errors raised with
    TF Serving's ``{"error": ...}`` message)."""
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise RuntimeError(f"{url}: HTTP {exc.code}: {detail}") from None


def mask_from_response(response: dict, scale: str = "auto") -> np.ndarray:
    """The first instance's ``(H, W)`` uint8 mask from a TF Serving predict reply (row
    ``predictions`` or columnar ``outputs`` format). ``scale="auto"`` maps a 0/1 mask to
    0/255; ``"none"`` keeps the labels."""
    if "error" in response:
        raise RuntimeError(f"server error: {response['error']}")
    if "predictions" in response:
        first = response["predictions"][0]
        mask = first["mask"] if isinstance(first, dict) else first
    elif "outputs" in response:
        outputs = response["outputs"]
        mask = (outputs["mask"] if isinstance(outputs, dict) else outputs)[0]
    else:
        raise ValueError(f"unexpected reply keys {sorted(response)}; expected 'predictions'")
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"mask labels {arr.min()}..{arr.max()} do not fit a PNG")
    arr = arr.astype(np.uint8)
    if scale == "auto" and arr.max() <= 1:
        arr = arr * np.uint8(255)
    return arr


def save_png(mask: np.ndarray, path: str | Path) -> Path:
    """Write ``mask`` as a PNG through a temporary file (never a half-written PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(mask).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", help="image file (PNG, TIFF, JPEG, ...)")
    ap.add_argument("--url", default=DEFAULT_URL,
                    help=f"TF Serving REST predict URL (default {DEFAULT_URL})")
    ap.add_argument("--out", help="mask PNG to write (default IMAGE_mask.png)")
    ap.add_argument("--signature", default="serving_default",
                    help="serving_default (probabilities + mask) or mask_only (smaller reply)")
    ap.add_argument("--dtype", choices=["uint8", "uint16", "float32"], default="uint8",
                    help="the export's input dtype (zf-unet export --input-dtype)")
    ap.add_argument("--channels", type=int, choices=[1, 3],
                    help="model input channels (default: 1 for gray images, else 3)")
    ap.add_argument("--scale", choices=["auto", "none"], default="auto",
                    help="auto: write a 0/1 mask as 0/255")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds")
    ap.add_argument("--dry-run", action="store_true",
                    help="build the JSON body and print its size; send nothing")
    args = ap.parse_args(argv)

    image = load_image(args.image, args.channels, args.dtype)
    data = encode_body(request_body(image, args.signature))
    h, w, c = image.shape
    if args.dry_run:
        print(f"dry run: {len(data)} bytes of JSON for a {h}x{w}x{c} {image.dtype} image "
              f"(signature {args.signature}); would POST to {args.url}")
        return 0
    response = post(args.url, data, args.timeout)
    mask = mask_from_response(response, args.scale)
    if mask.shape != (h, w):
        raise SystemExit(f"reply mask is {mask.shape}, expected {(h, w)}")
    out = args.out or str(Path(args.image).with_name(Path(args.image).stem + "_mask.png"))
    save_png(mask, out)
    print(f"wrote {out} ({h}x{w}, labels {sorted(np.unique(mask).tolist())[:10]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
