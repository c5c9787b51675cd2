#!/usr/bin/env python3
"""Regenerate the test images in this folder from the stardist 0.9.1 wheel.

The wheel (``pip download --no-deps stardist==0.9.1``; never installed) ships five small
example images under ``stardist/data/images/``. This script checks the wheel's sha256
against the digest pinned below, reads those images from the zip and writes:

===========================  ==================================================================
``nuclei2d.tif``             ``img2d.tif`` (512 x 512 uint16 nuclei), re-saved zlib-compressed
``nuclei2d_mask.tif``        ``mask2d.tif`` (its 125-nucleus label mask, ids up to 183), zlib
``nuclei_2ch.ome.tif``       an OME-TIFF, 2 x 512 x 512 uint16: channel ``nuclei`` = ``img2d``,
                             channel ``nuclei_edges`` = the Sobel gradient magnitude of
                             ``img2d`` (Gaussian-smoothed, sigma 1), rescaled to 0..255;
                             ``PhysicalSizeX/Y`` = 0.65 µm (invented for the test: the source
                             gives no pixel size); zlib
``histo.jpg``                ``histo.jpg`` (H&E, RGB 300 x 500), byte for byte
``histo_rgba.png``           rows 100..227, columns 50..177 of ``histo.jpg`` as an RGBA PNG,
                             alpha 255 except 0 in the top-left 16 x 16 corner
``stack3d.tif``              ``img3d.tif`` (31 x 61 x 57 uint16 synthetic nuclei), byte for byte
``stack3d_mask.tif``         ``mask3d.tif`` (its 51-label mask), byte for byte
===========================  ==================================================================

Usage::

    python tests/ingest/data/images/build_images.py [--wheel PATH] [--out DIR]

Needs numpy, scipy, tifffile, Pillow (the project's environment) and pip (to download).
The outputs are deterministic for a given tifffile/Pillow/zlib.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "stardist-0.9.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "1f2caf3a071c1ead1b0cbbf9614ff2c82967be1bd22764f097871fb9bbd2718f"
INNER = "stardist/data/images/"
PIXEL_SIZE_UM = 0.65
#: fixed OME UUID and Creator, so that the OME-TIFF is byte-stable (tifffile draws a new UUID otherwise)
OME_UUID = "urn:uuid:8c5e9b2e-0d3a-5d8e-9a57-6e1a1c0a7f01"


def fetch_wheel(dest: Path) -> Path:
    """Download the wheel with pip (no dependencies) into ``dest``."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                    "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "stardist==0.9.1", "-d", str(dest)], check=True)
    return dest / WHEEL


def build(wheel: Path, out: Path) -> list[Path]:
    import numpy as np
    import tifffile
    from PIL import Image
    from scipy import ndimage

    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not the pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as z:
        raw = {name: z.read(INNER + name) for name in ("img2d.tif", "mask2d.tif", "img3d.tif", "mask3d.tif", "histo.jpg")}
    out.mkdir(parents=True, exist_ok=True)
    img = tifffile.imread(io.BytesIO(raw["img2d.tif"]))
    mask = tifffile.imread(io.BytesIO(raw["mask2d.tif"]))
    written = []

    def put(name: str, data: bytes) -> None:
        (out / name).write_bytes(data)
        written.append(out / name)

    for name, array in (("nuclei2d.tif", img), ("nuclei2d_mask.tif", mask)):
        buf = io.BytesIO()
        tifffile.imwrite(buf, array, compression="zlib", metadata=None)
        put(name, buf.getvalue())
    smooth = ndimage.gaussian_filter(img.astype(np.float64), 1.0)
    edges = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    edges = np.round(edges / edges.max() * 255).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.stack([img, edges]), ome=True, compression="zlib", photometric="minisblack",
                     metadata={"UUID": OME_UUID, "Creator": "aivc build_images.py", "axes": "CYX", "Channel": {"Name": ["nuclei", "nuclei_edges"]},
                               "PhysicalSizeX": PIXEL_SIZE_UM, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": PIXEL_SIZE_UM, "PhysicalSizeYUnit": "µm"})
    put("nuclei_2ch.ome.tif", buf.getvalue())
    put("histo.jpg", raw["histo.jpg"])
    rgb = np.asarray(Image.open(io.BytesIO(raw["histo.jpg"])).convert("RGB"))[100:228, 50:178]
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    alpha[:16, :16] = 0
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(buf, format="PNG", optimize=True)
    put("histo_rgba.png", buf.getvalue())
    put("stack3d.tif", raw["img3d.tif"])
    put("stack3d_mask.tif", raw["mask3d.tif"])
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {WHEEL} (default: pip download it)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        for p in build(wheel, args.out):
            print(f"{p.stat().st_size:>8,}  {hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
