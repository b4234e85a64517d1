"""Benchmark `cloudclear index` and catalog queries (prints figures, asserts nothing about time).

Writes ~2,000 small generated scenes (S2 with SCL sidecars, and S1) at many places, then reports:
- the I/O bound: opening every raster file once with rasterio and reading its metadata;
- a cold index (every file opened, statistics computed), in scenes/s and as a ratio to the bound;
- a warm re-index (nothing changed: no file reopened);
- query latency through the rtree against a brute-force geopandas filter on the same records,
  with the results checked to be identical.

    python bench/index.py [--series 100] [--dates 10] [--size 64] [--repeat 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import rasterio
import shapely
from common import median_time

from cloudclear.catalog import Catalog, build_index
from cloudclear.synth import generate_series

# MGRS tiles in a few UTM zones so footprints spread over Europe.
# MGRS column letters repeat every three zones: A-H, J-R, S-Z.
_COLUMNS = {30: "TUVWXY", 31: "CDEFGH", 32: "KLMNPQ", 33: "TUVWXY"}
TILES = [f"{z}U{a}{b}" for z, cols in _COLUMNS.items() for a in cols for b in "PQRSTU"]


def _metadata_bound(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with rasterio.open(p) as src:
            _ = (src.count, src.crs, src.transform, src.tags(), src.descriptions, src.nodata)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=100, help="generated series (places)")
    ap.add_argument("--dates", type=int, default=10, help="S2 dates per series")
    ap.add_argument("--size", type=int, default=64, help="pixels per side")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="keep the generated scenes here")
    args = ap.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="cc-bench-index-"))
    try:
        t0 = time.perf_counter()
        for i in range(args.series):
            if not (root / f"s{i:04d}").exists():
                generate_series(
                    root / f"s{i:04d}",
                    height=args.size,
                    width=args.size,
                    n_dates=args.dates,
                    interval_days=10,
                    start=f"2021-0{3 + i % 6}-01",
                    tile=TILES[i % len(TILES)],
                    seed=i,
                )
        gen = time.perf_counter() - t0
        rasters = sorted(p for p in root.rglob("*.tif") if "truth" not in p.parts)
        print(f"generated {args.series} series in {gen:.1f} s: {len(rasters)} raster files (truth excluded)")
        for t in list(root.glob("s*/truth")):
            shutil.rmtree(t)  # the bench indexes acquisitions only
        cat_path = root.parent / f"{root.name}.gpkg" if args.out else Path(tempfile.mkdtemp()) / "bench.gpkg"

        bound, nfiles = median_time(lambda: _metadata_bound(rasters), args.repeat)
        cold, res = median_time(lambda: build_index(root, cat_path, rebuild=True), args.repeat)
        warm, res2 = median_time(lambda: build_index(root, cat_path), args.repeat)
        n = res.scenes
        print(f"scenes: {n} ({res.summary['by_sensor']}), files: {nfiles}")
        print(f"metadata bound (open + metadata, every file): {bound:.2f} s  ({nfiles / bound:.0f} files/s)")
        print(f"cold index: {cold:.2f} s  {n / cold:.0f} scenes/s  ratio to bound {cold / bound:.2f}x")
        print(
            f"warm re-index (nothing changed): {warm:.2f} s  {n / warm:.0f} scenes/s  "
            f"files reopened: {res2.files_opened}  ratio to bound {warm / bound:.2f}x"
        )

        cat = Catalog.open(cat_path)
        frame = cat.scenes
        rng = np.random.default_rng(0)
        b = frame.total_bounds
        t_lo, t_hi = frame["datetime"].min(), frame["datetime"].max()
        queries = []
        for _ in range(args.queries):
            x, y = rng.uniform(b[0], b[2]), rng.uniform(b[1], b[3])
            span = rng.uniform(0.05, 1.0)
            d0 = t_lo + (t_hi - t_lo) * rng.uniform(0, 0.8)
            queries.append(
                ((x, y, x + span, y + span), d0, d0 + timedelta(days=int(rng.integers(5, 60))), rng.uniform(0, 100))
            )
        _ = cat.rtree  # load once, as a long-lived process would
        t_rtree, t_brute = [], []
        for box, d0, d1, cmax in queries:
            t = time.perf_counter()
            got = cat.query(box, start=d0, end=d1, cloud_max=cmax)
            t_rtree.append(time.perf_counter() - t)
            t = time.perf_counter()
            poly = shapely.box(*box)
            sel = frame[
                frame.geometry.intersects(poly)
                & (frame["datetime"] >= d0)
                & (frame["datetime"] <= d1)
                & ((frame["cloud_pct"] <= cmax) | frame["cloud_pct"].isna())
            ]
            t_brute.append(time.perf_counter() - t)
            assert sorted(s.scene_id for s in got) == sorted(sel["scene_id"]), "rtree and brute force disagree"
        mr, mb = statistics.median(t_rtree) * 1e3, statistics.median(t_brute) * 1e3
        print(
            f"query latency (median of {args.queries}): rtree {mr:.2f} ms, "
            f"brute-force geopandas {mb:.2f} ms ({mb / mr:.1f}x)"
        )
        print(f"catalog size: {cat_path.stat().st_size / 1e6:.1f} MB")
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
