"""Many tile-dates on Dask: tile-dates per minute serial and with 1 and 2 local workers, peak RSS
per worker, and the scheduler's overhead per task (issue 19).

    python bench/scale.py --size 1024 --tiles 2 --dates 4 --repeat 3 --data /tmp/bscale

Generates ``--tiles`` synthetic tiles (``cloudclear.synth``, 9 S2 dates 10 days apart, 4 bands +
SCL, no S1) of ``--size`` px and one catalog over them, then reconstructs ``--dates`` dates of
every tile with gapfill (``cloudclear.inference.jobs``): in this process (``serial``) and on a
``LocalCluster`` of 1 and 2 workers started for the run, each measurement in a fresh child
process whose process tree is sampled for resident memory every 0.1 s. The scheduler overhead is
the round trip of a no-op task on a running 2-worker cluster, against calling it in-process.
Medians of ``--repeat`` runs; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = (("serial", None), ("local", 1), ("local", 2))


def _tiles(n: int) -> list[str]:
    return ["31UFQ", "31UGQ", "32ULU", "32UMU"][:n]


def prepare(root: Path, size: int, n_tiles: int) -> Path:
    """The tiles and their catalog under ``root`` (made once)."""
    from cloudclear.catalog import build_index
    from cloudclear.synth import generate_series

    cat = root / "scale.gpkg"
    if cat.exists():
        return cat
    for i, tile in enumerate(_tiles(n_tiles)):
        print(f"generating tile {tile}: {size} x {size} px, 9 dates ...", file=sys.stderr)
        generate_series(
            root / tile,
            height=size,
            width=size,
            n_dates=9,
            interval_days=10,
            tile=tile,
            s1=False,
            seed=i,
            cloud_cover=[0.1, 0.6, 0.2, 0.8, 0.3, 0.5, 0.1, 0.7, 0.2],
        )
        shutil.rmtree(root / tile / "truth", ignore_errors=True)
    build_index(root, cat, detect=None)
    return cat


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    from cloudclear.catalog import Catalog
    from cloudclear.inference.jobs import MethodSpec, plan_tasks, run_tasks
    from cloudclear.inference.pipeline import InferOptions
    from cloudclear.masks import AS_DECODED

    cat = Catalog.open(spec["catalog"])
    out = Path(spec["out"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tasks = plan_tasks(cat, spec["dates"], "gapfill", out)
    options = InferOptions(clear=AS_DECODED, overwrite=True)
    t0 = time.perf_counter()
    report = run_tasks(
        spec["catalog"], tasks, MethodSpec("gapfill"), options, scheduler=spec["mode"], workers=spec["workers"]
    )
    wall = time.perf_counter() - t0
    return {"tasks": len(tasks), "wall": wall, "ok": report.ok, "done": report.count("done")}


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one child, sampling the resident memory of its process tree."""
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, float] = {}
    root = psutil.Process(proc.pid)

    def sample() -> None:
        while proc.poll() is None:
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        peaks[p.pid] = max(peaks.get(p.pid, 0.0), p.memory_info().rss / 2**20)
                    except psutil.Error:
                        continue
            except psutil.Error:
                pass
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    if proc.returncode != 0:
        sys.stderr.write(err)
        raise SystemExit(f"child {spec['mode']} {spec['workers']} failed")
    res = json.loads(out.strip().splitlines()[-1])
    main_rss = peaks.pop(proc.pid, float("nan"))
    # Worker processes are the heaviest children (a nanny and the resource tracker stay small).
    workers = sorted(peaks.values(), reverse=True)[: spec["workers"] or 0]
    res.update(main_rss=main_rss, worker_rss=max(workers) if workers else None)
    return res


def overhead(n: int = 200) -> dict[str, float]:
    """Seconds per no-op task: on a running 2-worker LocalCluster (submit + gather) and in-process."""
    from distributed import Client, LocalCluster

    def noop(i: int) -> int:
        return i

    t0 = time.perf_counter()
    for i in range(n):
        noop(i)
    local = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        start = time.perf_counter() - t0
        with Client(cluster) as client:
            client.gather(client.map(noop, range(10), pure=False))  # warm
            t1 = time.perf_counter()
            futures = [client.submit(noop, i, pure=False) for i in range(n)]
            client.gather(futures)
            per_task = (time.perf_counter() - t1) / n
            t1 = time.perf_counter()
            for i in range(50):
                client.submit(noop, i, pure=False).result()
            one_by_one = (time.perf_counter() - t1) / 50
    return {"start_s": start, "per_task_s": per_task, "round_trip_s": one_by_one, "in_process_s": local}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="tile side in px")
    ap.add_argument("--tiles", type=int, default=2)
    ap.add_argument("--dates", type=int, default=4, help="dates reconstructed per tile")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("/tmp/bscale"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    args.data.mkdir(parents=True, exist_ok=True)
    cat = prepare(args.data, args.size, args.tiles)
    # Target dates between the synthetic acquisitions (2021-04-01 + 10 d steps): gapfill every pixel.
    dates = [f"2021-04-{d:02d}" for d in (16, 26)] + [f"2021-05-{d:02d}" for d in (6, 16, 26)]
    dates = dates[: args.dates]
    n = args.tiles * len(dates)
    print(f"{n} tile-dates ({args.tiles} tiles x {len(dates)} dates, {args.size} x {args.size} px, gapfill)")
    head = f"{'mode':<18} {'wall s':>8} {'tile-dates/min':>15} {'s/tile-date':>12}"
    print(f"{head} {'peak RSS main':>14} {'peak RSS/worker':>16}")
    for mode, workers in MODES:
        runs = [
            _measure(
                {
                    "mode": mode,
                    "workers": workers,
                    "catalog": str(cat),
                    "dates": dates,
                    "out": str(args.data / f"out_{mode}_{workers}"),
                }
            )
            for _ in range(args.repeat)
        ]
        if not all(r["ok"] and r["done"] == n for r in runs):
            raise SystemExit(f"{mode}: not every tile-date was done: {runs}")
        wall = statistics.median(r["wall"] for r in runs)
        main_rss = statistics.median(r["main_rss"] for r in runs)
        w = [r["worker_rss"] for r in runs if r["worker_rss"] is not None]
        label = mode if workers is None else f"{mode}, {workers} worker(s)"
        wrss = f"{statistics.median(w):,.0f} MiB" if w else "-"
        print(f"{label:<18} {wall:>8.2f} {60 * n / wall:>15.1f} {wall / n:>12.2f} {main_rss:>10,.0f} MiB {wrss:>16}")
    o = overhead()
    print(
        f"scheduler: LocalCluster start {o['start_s']:.2f} s; per no-op task {1e3 * o['per_task_s']:.2f} ms "
        f"submitted together, {1e3 * o['round_trip_s']:.2f} ms one by one; in-process call "
        f"{1e6 * o['in_process_s']:.2f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
