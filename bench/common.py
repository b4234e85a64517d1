"""Helpers shared by the benchmarks in bench/ (not a test module; nothing here asserts on time).

Each benchmark measures in fresh child processes (``--child SPEC``) so that peak memory and GDAL's
caches belong to one measurement; the parent generates data, runs children and prints a table.
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_peak_rss_mib() -> float:
    """The largest peak resident memory of the children waited for, in MiB (DataLoader workers)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_child(script: str | Path, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python SCRIPT --child JSON`` and return the JSON object it prints last on stdout."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        what = " ".join(str(spec[k]) for k in ("mode", "name") if k in spec)
        raise SystemExit(f"child {what} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls of ``fn`` and the last call's result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def s2_files(root: Path) -> list[Path]:
    """The S2 band stacks of a series written by ``cloudclear synth`` (masks left out)."""
    d = root / "S2"
    return sorted(p for p in d.glob("S2_*.tif") if not p.stem.endswith("_SCL")) if d.is_dir() else []


def prepare_tile(
    root: Path,
    size: int,
    *,
    catalog: str,
    n_dates: int,
    interval_days: int,
    bands: Sequence[str],
    cover: Sequence[float],
    seed: int,
    start: str | None = None,
    need_s1: bool = True,
) -> float | None:
    """Generate a ``size`` x ``size`` synthetic tile in ``root`` (unless it holds one) and index it.

    Returns the seconds spent generating, or None when the data was already there. A folder holding
    a tile of another size, or S2 without the S1 the benchmark needs, stops the benchmark.
    """
    import rasterio

    s2 = s2_files(root)
    shapes = set()
    for p in s2:
        with rasterio.open(p) as src:
            shapes.add((src.height, src.width))
    if shapes and shapes != {(size, size)}:
        raise SystemExit(f"{root}: holds a tile of {sorted(shapes)} px, not {size} x {size}; use another --data")
    s1 = sorted((root / "S1").glob("S1_*.tif")) if (root / "S1").is_dir() else []
    if s2 and (s1 or not need_s1) and (root / catalog).exists():
        return None
    from cloudclear.catalog import build_index
    from cloudclear.synth import generate_series

    gen = None
    t0 = time.perf_counter()
    if not s2:
        print(
            f"generating a {size} x {size} tile ({n_dates} dates x {len(bands)} bands + SCL + S1) in {root} ...",
            file=sys.stderr,
        )
        kwargs: dict[str, Any] = {"start": start} if start is not None else {}
        generate_series(
            root,
            height=size,
            width=size,
            n_dates=n_dates,
            interval_days=interval_days,
            bands=list(bands),
            cloud_cover=list(cover),
            s1=True,
            seed=seed,
            progress=True,
            **kwargs,
        )
        gen = time.perf_counter() - t0
    elif need_s1 and not s1:
        raise SystemExit(f"{root}: holds S2 but no S1 (S1/S1_*.tif); this benchmark pairs S2 with S1")
    shutil.rmtree(root / "out", ignore_errors=True)  # earlier outputs must not be indexed as scenes
    build_index(root, root / catalog, rebuild=True)
    print(f"  indexed in {time.perf_counter() - t0 - (gen or 0.0):.1f} s", file=sys.stderr)
    return gen
