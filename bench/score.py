"""Benchmark: score a full-size generated tile and compare with reading both rasters once.

Usage::

    python bench/score.py [--size 10980] [--repeat 3] [--block-rows 512] [--data DIR]

Generates one cloudy S2 date with its SCL mask and cloud-free truth (``cloudclear.synth``;
kept in ``--data`` when given, so later runs reuse it), then, each in a fresh process, times:

- the I/O bound: read every strip of the prediction and the reference once (all bands), and
  again with the mask, which score reads too;
- ``cloudclear.metrics.score`` of the date against its truth, cloudy pixels of the mask;

and prints medians, the ratio score / bound, and each process's peak resident memory
(VmHWM), with GDAL's block cache at 512 MiB as ``cloudclear score`` sets it (the environment's
GDAL_CACHEMAX wins). Benchmarks print figures; they assert nothing about time.
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
from pathlib import Path

_CHILD = r"""
import json, sys, time
from pathlib import Path
mode, pred, ref, mask, block = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
t0 = time.perf_counter()
if mode.startswith("bound"):
    import rasterio
    from rasterio.windows import Window
    for path in (pred, ref, mask) if mode == "bound_mask" else (pred, ref):
        with rasterio.open(path) as src:
            for r in range(0, src.height, block):
                src.read(window=Window(0, r, src.width, min(block, src.height - r)))
    out = {}
else:
    from cloudclear.metrics import ScoreOptions, score
    s = score(pred, ref, mask=mask, options=ScoreOptions(block_rows=block))
    out = {"psnr": s.psnr, "ssim": s.ssim, "sam": s.sam, "mae": s.mae, "n_pixels": s.n_pixels}
out["seconds"] = time.perf_counter() - t0
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        out["peak_rss_mib"] = int(line.split()[1]) / 1024
print(json.dumps(out))
"""


def _child(mode: str, pred: Path, ref: Path, mask: Path, block: int) -> dict:
    cmd = [sys.executable, "-c", _CHILD, mode, str(pred), str(ref), str(mask), str(block)]
    # The GDAL block cache `cloudclear score` sets, for both measures alike.
    env = {**os.environ, "GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX", "512")}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _top_rows(src_path: Path, dst_dir: Path, rows: int) -> Path:
    """Copy the first ``rows`` rows of a raster (same profile and tags) into ``dst_dir``."""
    import rasterio
    from rasterio.windows import Window

    dst = dst_dir / src_path.name
    if dst.exists():
        return dst
    dst_dir.mkdir(parents=True, exist_ok=True)
    with rasterio.open(src_path) as src:
        win = Window(0, 0, src.width, min(rows, src.height))
        profile = {**src.profile, "height": int(win.height), "transform": src.window_transform(win)}
        with rasterio.open(dst, "w", **profile) as out:
            out.write(src.read(window=win))
            out.descriptions = src.descriptions
            out.update_tags(**src.tags())
    return dst


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="rows = columns (default 10980)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (median printed)")
    parser.add_argument("--block-rows", type=int, default=512, help="rows per strip")
    parser.add_argument("--data", type=Path, default=None, help="keep / reuse the generated tile here")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--crop-rows", type=int, default=2048, help="also score the top rows only, for memory")
    args = parser.parse_args(argv)

    from cloudclear.synth import generate_series

    root = args.data or Path(tempfile.mkdtemp(prefix="cloudclear-bench-score-"))
    try:
        tifs = sorted((root / "S2").glob("S2_*[0-9].tif")) if (root / "S2").is_dir() else []
        if not tifs:
            print(f"generating a {args.size} x {args.size} date (4 bands, SCL, truth) in {root} ...", file=sys.stderr)
            generate_series(
                root,
                height=args.size,
                width=args.size,
                n_dates=1,
                s1=False,
                seed=args.seed,
                cloud_cover=[0.35],
                progress=True,
            )
            tifs = sorted((root / "S2").glob("S2_*[0-9].tif"))
        pred = tifs[0]
        ref = root / "truth" / f"{pred.stem}_truth.tif"
        mask = pred.with_name(f"{pred.stem}_SCL.tif")
        raw_gb = sum(p.stat().st_size for p in (pred, ref)) / 1e9

        crop_dir = root / f"top{args.crop_rows}"
        crops = [_top_rows(p, crop_dir, args.crop_rows) for p in (pred, ref, mask)]
        crop_run = _child("score", *crops, args.block_rows)

        bounds, masked, runs = [], [], []
        for _ in range(args.repeat):
            bounds.append(_child("bound", pred, ref, mask, args.block_rows))
            masked.append(_child("bound_mask", pred, ref, mask, args.block_rows))
            runs.append(_child("score", pred, ref, mask, args.block_rows))
        bound = statistics.median(b["seconds"] for b in bounds)
        bound_mask = statistics.median(b["seconds"] for b in masked)
        wall = statistics.median(r["seconds"] for r in runs)
        # Each round's ratio (measures side by side, so a slower machine state slows both alike).
        rounds = [r["seconds"] / b["seconds"] for r, b in zip(runs, bounds, strict=True)]
        rounds_mask = [r["seconds"] / b["seconds"] for r, b in zip(runs, masked, strict=True)]
        mpx = args.size * args.size / 1e6
        last = runs[-1]
        print(f"tile: {args.size} x {args.size} px, 4 bands uint16, prediction + reference {raw_gb:.2f} GB on disk")
        print(f"  figures: PSNR {last['psnr']:.2f} dB  SSIM {last['ssim']:.4f}  SAM {last['sam']:.2f} deg")
        print(f"  on {last['n_pixels']:,} cloudy pixels")
        print(f"I/O bound (read both rasters once), median of {args.repeat}: {bound:.2f} s")
        print(f"I/O bound with the mask (read every input once), median of {args.repeat}: {bound_mask:.2f} s")
        print(f"score (MAE, RMSE, PSNR, SSIM, SAM + mask), median of {args.repeat}: {wall:.2f} s")
        print(
            f"  {mpx / wall:.1f} Mpx/s, {wall / bound:.2f}x the I/O bound "
            f"(median of the rounds' ratios {statistics.median(rounds):.2f}x; "
            f"{statistics.median(rounds_mask):.2f}x the bound with the mask)"
        )
        print(
            f"peak RSS: score {max(r['peak_rss_mib'] for r in runs):.0f} MiB, "
            f"bound {max(b['peak_rss_mib'] for b in bounds):.0f} MiB "
            f"(one band of the tile as float64 would be {args.size * args.size * 8 / 2**20:.0f} MiB)"
        )
        print(
            f"peak RSS scoring the top {args.crop_rows} rows only ({args.crop_rows} x {args.size}): "
            f"{crop_run['peak_rss_mib']:.0f} MiB: memory follows the width and strip height, not the rows"
        )
    finally:
        if args.data is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
