"""Benchmark `cloudclear index` and catalog queries (prints figures, asserts nothing about time).

Writes ~2,000 small generated scenes (S2 with SCL sidecars, and S1) at many places, then reports,
each measurement in a fresh process and the rounds alternating (bound, cold, warm), medians of
``--repeat`` rounds:
- the I/O bound: opening every raster file once with rasterio and reading its metadata (plain
  rasterio, and under the GDAL settings ``index`` runs with: no folder listing on open);
- a cold index (every file opened once, statistics computed), in scenes/s, as a ratio to the bound:
  as ``index`` runs by default (worker processes, one per core) and in one process (``--workers 1``,
  where rasterio opens per file are counted: a worker's opens are not seen here);
- a warm re-index (nothing changed: no file reopened);
- query latency through the rtree against a brute-force geopandas filter on the same records,
  with the results checked to be identical.

    python bench/index.py [--series 100] [--dates 10] [--size 64] [--repeat 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from common import run_child

from cloudclear.catalog import Catalog, build_index
from cloudclear.synth import generate_series

# MGRS tiles in a few UTM zones so footprints spread over Europe.
# MGRS column letters repeat every three zones: A-H, J-R, S-Z.
_COLUMNS = {30: "TUVWXY", 31: "CDEFGH", 32: "KLMNPQ", 33: "TUVWXY"}
TILES = [f"{z}U{a}{b}" for z, cols in _COLUMNS.items() for a in cols for b in "PQRSTU"]


def _rasters(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tif") if "truth" not in p.parts)


def _metadata_bound(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with rasterio.open(p) as src:
            _ = (src.count, src.crs, src.transform, src.tags(), src.descriptions, src.nodata)
            n += 1
    return n


def _children_cpu() -> float:
    """CPU seconds of this process's ended children (the index's workers)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: "bound", "bound_env", "cold", "cold1" (one process)
    or "warm". CPU counts this process and its workers."""
    import geopandas  # noqa: F401 - imported before timing, as in a long-lived process
    import pyogrio  # noqa: F401
    import pyproj  # noqa: F401

    from cloudclear.gdal import gdal_env

    root, cat_path, mode = Path(spec["root"]), Path(spec["catalog"]), spec["mode"]
    if mode.startswith("bound"):
        paths = _rasters(root)
        t0, c0 = time.perf_counter(), time.process_time()
        if mode == "bound_env":
            with gdal_env("index", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
                n = _metadata_bound(paths)
        else:
            n = _metadata_bound(paths)
        return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "files": n}
    opens: Counter[str] = Counter()
    real = rasterio.open

    def counting(fp: Any, *args: Any, **kwargs: Any) -> Any:
        opens[str(fp)] += 1
        return real(fp, *args, **kwargs)

    rasterio.open = counting  # type: ignore[assignment]
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    res = build_index(root, cat_path, rebuild=mode.startswith("cold"), jobs=1 if mode == "cold1" else None)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0 + _children_cpu() - k0
    return {
        "seconds": seconds,
        "cpu": cpu,
        "scenes": res.scenes,
        "by_sensor": res.summary["by_sensor"],
        "files_seen": res.files_seen,
        "files_opened": res.files_opened,
        "opens": sum(opens.values()),
        "most_opens": max(opens.values(), default=0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=100, help="generated series (places)")
    ap.add_argument("--dates", type=int, default=10, help="S2 dates per series")
    ap.add_argument("--size", type=int, default=64, help="pixels per side")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="keep the generated scenes here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

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

        spec = {"root": str(root), "catalog": str(cat_path)}
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ("bound", "bound_env", "cold", "cold1", "warm")}
        for k in range(args.repeat):
            for mode in runs:  # alternating, so that the machine's load falls on every mode alike
                runs[mode].append(run_child(__file__, {**spec, "mode": mode}))
            print(
                "  [" + str(k + 1) + "] " + ", ".join(f"{m} {r[-1]['seconds']:.2f} s" for m, r in runs.items()),
                file=sys.stderr,
            )
        med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
        # The ratio of each round (bound and index measured side by side), then their median.
        ratio = {
            (m, b): statistics.median(x["seconds"] / y["seconds"] for x, y in zip(runs[m], runs[b], strict=True))
            for m in ("cold", "cold1", "warm")
            for b in ("bound", "bound_env")
        }
        # CPU seconds (user + system) too: on a shared machine they move less with the load than wall time.
        cpu = {m: statistics.median(r["cpu"] for r in rs) for m, rs in runs.items()}
        cold, cold1, warm = runs["cold"][-1], runs["cold1"][-1], runs["warm"][-1]
        n, nfiles = cold["scenes"], runs["bound"][-1]["files"]
        print(f"scenes: {n} ({cold['by_sensor']}), files: {nfiles}; medians of {args.repeat} rounds, fresh processes")
        print(f"  {'measurement':<44} {'median s':>9} {'per s':>12} {'/ bound':>8} {'/ bound env':>12}")
        plain = "metadata bound (plain rasterio)"
        print(f"  {plain:<44} {med['bound']:9.2f} {nfiles / med['bound']:7.0f} files {1:8.2f}x")
        print(
            f"  {'metadata bound (index GDAL settings)':<44} {med['bound_env']:9.2f} "
            f"{nfiles / med['bound_env']:7.0f} files {med['bound_env'] / med['bound']:8.2f}x {1:11.2f}x"
        )
        rows = (
            (f"cold index ({os.cpu_count()} cores, default workers)", "cold"),
            ("cold index, one process (--workers 1)", "cold1"),
            ("warm re-index (nothing changed)", "warm"),
        )
        for name, mode in rows:
            print(
                f"  {name:<44} {med[mode]:9.2f} {n / med[mode]:6.0f} scenes "
                f"{ratio[mode, 'bound']:8.2f}x {ratio[mode, 'bound_env']:11.2f}x"
            )
        print(
            "  CPU s (medians, workers included): " + ", ".join(f"{m} {cpu[m]:.2f}" for m in runs) + f"; cold / bound "
            f"{cpu['cold'] / cpu['bound']:.2f}x, cold1 / bound {cpu['cold1'] / cpu['bound']:.2f}x; warm / bound "
            f"{cpu['warm'] / cpu['bound']:.2f}x"
        )
        print(
            f"  rasterio opens (one process): cold {cold1['opens']} for {cold1['files_seen']} files (at most "
            f"{cold1['most_opens']} per file); files opened by the default cold index {cold['files_opened']}; warm "
            f"{warm['opens']}, files reopened {warm['files_opened']}"
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
