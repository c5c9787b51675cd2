"""Image-write benchmark: ``aivc.store.images.write_ome_zarr`` against plain ``ome_zarr.writer.write_image``.

Usage::

    .venv/bin/python benchmarks/bench_image_write.py [--size 20000] [--repeats 1] [--workdir DIR]
        [--peer-format 0.4|0.5] [--no-zstd1] [--keep] [--json]

What it does
------------
1. Builds one synthetic but tissue-like RGB image, ``--size`` x ``--size`` x 3 uint8 (20,000
   by default: 1.2 GB), as a lazy dask array of (3, 512, 512) blocks that every process
   regenerates identically from ``--seed`` (see :func:`synthetic_he`): white background and
   pink tissue (a smooth random field, ~70 % tissue), purple nucleus-sized blobs in the
   tissue and +-8 grey-level pixel noise, so it compresses like a real slide scan (about
   2x), not like a constant.
2. Runs each of these in a fresh subprocess and records wall time, the time inside the call,
   CPU time and peak RSS (``ru_maxrss`` from ``os.wait4``):

   source
       computes every block of the array once and throws it away: the cost of generating the
       input, which both writers pay inside their call.
   aivc
       ``write_ome_zarr(arr, dest, axes="cyx", channel_names=["R", "G", "B"], chunk=512)``:
       NGFF 0.4 / zarr v2, Blosc zstd-1, levels down to <= 256 px (2x2 means), then 50 random
       512 x 512 level-0 windows with ``read_tile`` (and the same windows with plain zarr
       slicing).
   peer (ome-zarr)
       ``ome_zarr.writer.write_image(arr, group, axes="cyx", storage_options={"chunks": (1, 512,
       512)}, fmt=FormatV04())``: its default pyramid (scale factors 2, 4, 8, 16, method
       ``resize``, i.e. skimage's anti-aliased resize) and its default compressor (Blosc
       zstd-5), into the same format as aivc (``--peer-format 0.5`` for its own default,
       NGFF 0.5 / zarr v3).
   peer-zstd1
       the same with aivc's compressor (``storage_options["compressor"]`` = Blosc zstd-1), to
       tell the pyramid's cost from the compressor's (skip with ``--no-zstd1``).

3. Prints the times, the ratio aivc/peer of the time inside the call (target <= 1.5; the
   input's generation is inside both calls and also reported alone), the on-disk sizes, the
   tile-read time and peak RSS (target: aivc < 1 GiB at 20,000, i.e. less than the image
   itself). A missed target prints ``FAIL`` and does not change the exit status; a run that
   fails exits 1. Afterwards (untimed) it checks that aivc's level 0 equals the source on a
   few windows and lists both pyramids' level shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGET_RATIO = 1.5
TARGET_RSS_MIB = 1024
BLOCK = 512
HERE = Path(__file__).resolve().parent


def synthetic_he(size: int, seed: int = 0, block: int = BLOCK) -> Any:
    """A ``(3, size, size)`` uint8 dask array that looks like an H&E slide scan, made block by block.

    Eight ``block`` x ``block`` tissue textures are drawn once: eosin pink with
    hematoxylin-purple nucleus-sized blobs (a bilinear upsampling of a uniform grid with one
    value per 12 px, above 0.6) and +-8 grey-level pixel noise. A smooth random field with one
    value per 256 px (upsampled bilinearly to 1/8 resolution, then by pixel repetition)
    decides tissue vs white background, with a soft edge (16 steps). Each block is one of the
    textures (by its position) blended into the background by that field, so any process
    rebuilds exactly the same image at a few ms per block; it compresses about 2x with Blosc
    zstd, as a real scan does, not like a constant.
    """
    import dask.array as da

    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 256 + 2, size // 256 + 2)).astype(np.float32)
    textures = [_texture(rng, block) for _ in range(8)]

    def make(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        h, w = y1 - y0, x1 - x0
        f = _bilinear(coarse, 32, y0 // 8, -(-y1 // 8), x0 // 8, -(-x1 // 8))  # 1/8 resolution
        m = np.clip((f - 0.40) * 160, 0, 16).astype(np.int16).repeat(8, 0).repeat(8, 1)[:h, :w]
        tex = textures[(y0 // block * 7 + x0 // block * 3) % len(textures)][:, :h, :w]
        return (248 + (((tex - 248) * m) >> 4)).astype(np.uint8)

    chunks = ((3,), _splits(size, block), _splits(size, block))
    return da.map_blocks(make, dtype=np.uint8, chunks=chunks, meta=np.empty((0, 0, 0), np.uint8))


def _bilinear(grid: np.ndarray, cell: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows ``y0:y1``, columns ``x0:x1`` of ``grid`` upsampled bilinearly by ``cell``."""
    yy = (np.arange(y0, y1) + 0.5) / cell
    xx = (np.arange(x0, x1) + 0.5) / cell
    iy, ix = yy.astype(np.int64), xx.astype(np.int64)
    fy, fx = (yy - iy).astype(np.float32)[:, None], (xx - ix).astype(np.float32)
    rows = grid[iy] * (1 - fy) + grid[iy + 1] * fy
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _texture(rng: np.random.Generator, block: int) -> np.ndarray:
    """One ``(3, block, block)`` int16 patch of full tissue: eosin, nuclei, pixel noise."""
    grid = rng.random((block // 12 + 2, block // 12 + 2)).astype(np.float32)
    hem = np.clip((_bilinear(grid, 12, 0, block, 0, block) - 0.6) * 4, 0, 1)
    eos = 0.8
    rgb = np.stack([248 - 40 * eos - 110 * hem, 248 - 120 * eos - 160 * hem, 248 - 50 * eos - 60 * hem])
    rgb += rng.integers(-8, 9, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.int16)


def _splits(n: int, block: int) -> tuple[int, ...]:
    return tuple(min(block, n - i) for i in range(0, n, block))


_PRELUDE = """
import json, sys, time
sys.path.insert(0, HERE)
from bench_image_write import synthetic_he
size, seed, dest, peer_fmt, compressor = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
arr = synthetic_he(size, seed)
"""

SOURCE = _PRELUDE + """
import dask, numpy as np
t = time.perf_counter()
total = 0
for y in range(0, size, 512):
    total += int(arr[:, y : y + 512].sum(dtype=np.uint64).compute())
print(json.dumps({"call_s": time.perf_counter() - t, "checksum": total}))
"""

AIVC = _PRELUDE + """
from pathlib import Path
import numpy as np, zarr
from aivc.store.images import read_tile, write_ome_zarr
t = time.perf_counter()
info = write_ome_zarr(arr, Path(dest), axes="cyx", channel_names=["R", "G", "B"], chunk=512)
call = time.perf_counter() - t
rng = np.random.default_rng(1)
windows = [(int(rng.integers(0, size - 512)), int(rng.integers(0, size - 512))) for _ in range(50)]
tile_s, plain_s = [], []
z0 = zarr.open_group(dest, mode="r")["0"]
for y, x in windows:
    t = time.perf_counter(); a = read_tile(dest, 0, y, x, 512, 512); tile_s.append(time.perf_counter() - t)
    t = time.perf_counter(); b = z0[:, y : y + 512, x : x + 512]; plain_s.append(time.perf_counter() - t)
    assert a.shape == (3, 512, 512) and (a == b).all()
print(json.dumps({"call_s": call, "levels": [list(lv.shape) for lv in info.levels],
                  "tile_ms": 1e3 * float(np.median(tile_s)), "zarr_tile_ms": 1e3 * float(np.median(plain_s))}))
"""

PEER = _PRELUDE + """
import zarr
from numcodecs import Blosc
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_image
options = {"chunks": (1, 512, 512)}
if compressor == "zstd1":  # aivc's compressor (NGFF 0.4 only)
    options["compressor"] = Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE)
t = time.perf_counter()
group = zarr.open_group(dest, mode="w", zarr_format=2 if peer_fmt == "0.4" else 3)
write_image(arr, group, axes="cyx", storage_options=options, fmt=FormatV04() if peer_fmt == "0.4" else FormatV05())
call = time.perf_counter() - t
ms = dict(group.attrs).get("multiscales") or dict(group.attrs)["ome"]["multiscales"]
print(json.dumps({"call_s": call, "levels": [list(group[d["path"]].shape) for d in ms[0]["datasets"]]}))
"""


def _run(code: str, args: list[str]) -> dict[str, Any]:
    """One fresh process: wall, CPU (user + system) and peak RSS of the child, and what it printed."""
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "False", "RAY_AUTH_MODE": "disabled"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, env=env, cwd=HERE.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": errors.strip().splitlines()[-1] if errors.strip() else f"exit {status}"}
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024, **json.loads(text.strip().splitlines()[-1])}


def _du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _check(dest: Path, size: int, seed: int) -> bool:
    """aivc's level 0 equals the source on a few windows (untimed)."""
    from aivc.store.images import read_tile

    arr = synthetic_he(size, seed)
    rng = np.random.default_rng(2)
    for _ in range(5):
        y, x = (int(v) for v in rng.integers(0, max(1, size - 300), 2))
        if not np.array_equal(read_tile(dest, 0, y, x, 300, 300), arr[:, y : y + 300, x : x + 300].compute()):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="image side in pixels (the image is size x size x 3 uint8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peer-format", choices=["0.4", "0.5"], default="0.4", help="NGFF version the peer writes (0.4 = aivc's)")
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-scratch/image_write"))
    parser.add_argument("--no-zstd1", action="store_true", help="skip the second peer run with aivc's compressor")
    parser.add_argument("--keep", action="store_true", help="keep the last written images")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    log(f"image {args.size:,} x {args.size:,} x 3 uint8 ({3 * args.size**2 / 2**30:.2f} GiB), blocks of {BLOCK}; peer format NGFF {args.peer_format}")
    tools = ["source", "aivc", "peer"] + (["peer-zstd1"] if args.peer_format == "0.4" and not args.no_zstd1 else [])
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    codes = {"source": SOURCE, "aivc": AIVC, "peer": PEER, "peer-zstd1": PEER}
    for r in range(args.repeats):
        order = tools if r % 2 == 0 else ["source", *reversed(tools[1:])]
        for tool in order:
            dest = args.workdir / f"{tool}.ome.zarr"
            shutil.rmtree(dest, ignore_errors=True)
            argv = [str(args.size), str(args.seed), str(dest), args.peer_format, "zstd1" if tool == "peer-zstd1" else "default"]
            res = _run(codes[tool].replace("HERE", repr(str(HERE)), 1), argv)
            if "error" in res:
                print(f"{tool} failed: {res['error']}", file=sys.stderr)
                return 1
            if dest.exists():
                res["disk_mib"] = _du_mib(dest)
            runs[tool].append(res)
            log(f"{tool:>10}  {res['call_s']:7.1f} s in call  {res['wall_s']:7.1f} s wall  {res['cpu_s']:7.1f} s cpu  peak RSS {res['rss_mib']:6.0f} MiB"
                + (f"  on disk {res['disk_mib']:6.0f} MiB" if "disk_mib" in res else ""))
    summary = _summary(runs)
    summary["aivc_level0_matches_source"] = ok = _check(args.workdir / "aivc.ome.zarr", args.size, args.seed)
    summary["levels"] = levels = {"aivc": runs["aivc"][-1]["levels"], "peer": runs["peer"][-1]["levels"]}
    summary["lines"] += [
        f"aivc level 0 equals the source on 5 random windows: {'yes' if ok else 'NO'}",
        f"levels (y, x): aivc {[tuple(s[-2:]) for s in levels['aivc']]}",
        f"               peer {[tuple(s[-2:]) for s in levels['peer']]}",
    ]
    if not args.keep:
        for tool in tools[1:]:
            shutil.rmtree(args.workdir / f"{tool}.ome.zarr", ignore_errors=True)
    if args.json:
        print(json.dumps({"size": args.size, "peer_format": args.peer_format, "runs": runs, "summary": summary}, indent=1))
        return 0
    for line in summary["lines"]:
        print(line)
    return 0


def _summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {t: {k: float(np.median([r[k] for r in rs])) for k in ("call_s", "wall_s", "cpu_s")} for t, rs in runs.items()}
    rss = {t: max(r["rss_mib"] for r in rs) for t, rs in runs.items()}
    ratio = med["aivc"]["call_s"] / med["peer"]["call_s"]
    if "peer-zstd1" in runs:
        z1 = med["peer-zstd1"]["call_s"]
        same = f"   [peer with aivc's compressor (Blosc zstd-1): {z1:.1f} s, aivc/that = {med['aivc']['call_s'] / z1:.2f}]"
    else:
        same = ""
    disk = {t: rs[-1].get("disk_mib") for t, rs in runs.items() if rs[-1].get("disk_mib")}
    tile = float(np.median([r["tile_ms"] for r in runs["aivc"]]))
    zarr_tile = float(np.median([r["zarr_tile_ms"] for r in runs["aivc"]]))
    ok_ratio, ok_rss = ratio <= TARGET_RATIO, rss["aivc"] <= TARGET_RSS_MIB
    lines = [
        f"write time aivc/peer = {med['aivc']['call_s']:.1f} s / {med['peer']['call_s']:.1f} s = {ratio:.2f}  (target <= {TARGET_RATIO})  {'PASS' if ok_ratio else 'FAIL'}"
        + f"   [generating the input alone: {med['source']['call_s']:.1f} s]" + same,
        "on disk: " + ", ".join(f"{t} {v:.0f} MiB" for t, v in disk.items()),
        f"peak RSS aivc {rss['aivc']:.0f} MiB, peer {rss['peer']:.0f} MiB, source alone {rss['source']:.0f} MiB  (target aivc <= {TARGET_RSS_MIB} MiB)  {'PASS' if ok_rss else 'FAIL'}",
        f"read_tile 512 x 512 x 3 at level 0: {tile:.1f} ms median over 50 random windows (plain zarr slicing: {zarr_tile:.1f} ms)",
    ]
    return {"median": med, "peak_rss_mib": rss, "disk_mib": disk, "ratio_call": ratio, "pass_ratio": ok_ratio, "pass_rss": ok_rss,
            "tile_ms": tile, "zarr_tile_ms": zarr_tile, "lines": lines}


if __name__ == "__main__":
    sys.exit(main())
