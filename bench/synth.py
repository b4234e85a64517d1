"""Benchmark: write a full synthetic Sentinel-2 tile series and report speed and footprint.

Usage::

    python bench/synth.py [--size 10980] [--dates 3] [--out DIR] [--keep]

Writes ``--dates`` S2 dates (4 bands, SCL masks, truth) and the S1 acquisitions between them,
then prints wall time, throughput, output size and peak resident memory. The output goes to a
temporary directory (or ``--out``) and is removed afterwards unless ``--keep`` is given.
Benchmarks print figures; they assert nothing about time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cloudclear.synth import generate_series


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="rows = columns (default 10980)")
    parser.add_argument("--dates", type=int, default=3, help="S2 dates (default 3)")
    parser.add_argument("--interval", type=int, default=15, help="days between S2 dates")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the output")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.out is None:
        out = Path(tempfile.mkdtemp(prefix="cloudclear-bench-synth-"))
    else:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        series = generate_series(
            out,
            height=args.size,
            width=args.size,
            n_dates=args.dates,
            interval_days=args.interval,
            seed=args.seed,
            progress=True,
        )
        wall = time.perf_counter() - t0
        size = _tree_size(out)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    px = series.height * series.width
    n_s1 = len(series.s1)
    # pixels rendered per acquisition: each S2 date yields image + truth + mask, each S1 date one
    acquisitions = len(series.s2) + n_s1
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"raster        {series.height} x {series.width} px ({px / 1e6:.1f} Mpx), {series.crs}")
    print(f"written       {len(series.s2)} S2 (+ SCL + truth), {n_s1} S1, 4 bands")
    print(f"cloud %       {', '.join(f'{c:.1f}' for c in series.cloud_pct)}")
    print(f"wall time     {wall:.1f} s on {os.cpu_count()} CPUs")
    print(f"throughput    {px * acquisitions / wall / 1e6:.1f} Mpx/s (acquisition pixels)")
    print(f"              {px / wall / 1e6:.2f} Mpx/s (tile pixels, whole series)")
    print(f"output size   {size / 1e9:.2f} GB ({size / 1e6 / acquisitions:.0f} MB per acquisition)")
    print(f"peak RSS      {peak_kib / 1024**2:.2f} GiB")
    print(f"output        {'kept in ' + str(out) if args.keep else 'removed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
