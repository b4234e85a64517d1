"""Benchmark: training patches per second from a full-size generated tile, against the I/O bound.

Usage::

    python bench/sample.py [--size 10980] [--repeat 3] [--data DIR] [--count 200] [--patch 256]
                           [--workers 2] [--s1-max-gap HOURS] [--no-level3]

Generates a tile of ``--size`` x ``--size`` px (``cloudclear.synth``: 3 S2 dates 10 days apart x
4 bands with SCL masks, the middle one clear, and the S1 acquisitions near them: every S2 date has
one within 72 h, as the presets ask) and indexes it; kept in ``--data`` when given, so later runs
reuse it. A folder that already holds a series with a catalog is used as it is, e.g. the one
``bench/infer.py --data DIR`` made; but its last S2 date has no S1 within 72 h (then the largest S1
gap every S2 date needs is used instead, and printed) and its middle date is 60 % cloudy, so OS2
with a simulated t, which needs fully clear patches on that date, finds almost no sample there:
time on a tile this benchmark generated. Then, each in a fresh process:

- ``sample()`` of layout OS2 with ``--simulate t`` (t-1 at -10 d, t clear with a real mask pasted
  on it, t+1 at +10 d, each S2 slot with its S1), ``--count`` patches of ``--patch`` px, in
  ``--workers`` reading threads, zlib level 1 (the default);
- the same at zlib level 3 (same seed, so the same samples: the difference is the compressor's
  share), unless ``--no-level3``;
- ``sample()`` of layout single-date with ``--simulate t`` (t and its S1).

Reported per case: samples (patches) per second, MB/s of raw array bytes (what the store holds
before compression), the store's size on disk and compression ratio, peak RSS (VmHWM), and where
the time goes: wrappers around the library's functions in the child process (the library's code
is unchanged) sum the candidate search, the reads and checks in the threads (thread-seconds),
the compression (``pack``, in the reading threads) and the final commit.

The I/O bound, per layout: for the very samples of the store just written (its samples.gpkg:
row, col, each slot's scene and files, the S1 scene paired with it, and the ``SCENE@row,col`` a
simulated slot's gap came from), open the same files once per thread (through
``cloudclear.gridio.GridReader``, the library's own reader: a direct window read when the file is
on the grid, as generated tiles are) and read exactly the same windows: the bands (grouped by
file, as the catalog's band_files say), the mask, the pasted mask and the S1 bands, in
``--workers`` threads, timing only the reads. Files sit in the page cache for both (the tile was
just written or read); GDAL's block cache is the environment's (GDAL_CACHEMAX) for both.
Benchmarks print figures; they assert nothing about time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import peak_rss_mib, prepare_tile, run_child, s2_files

N_DATES = 3
INTERVAL_DAYS = 10
# On synth's grids, S2 on 2021-04-16, 04-26 and 05-06 have S1 at 65 h, 17 h and 31 h: all within 72 h.
START = "2021-04-16"
COVER = (0.3, 0.0, 0.4)  # the middle date (the reference t) is clear: a simulated slot needs clear patches
BANDS = ("B02", "B03", "B04", "B08")
SEED = 7
CATALOG = "cloudclear.gpkg"
PRESET_S1_GAP = 72.0


# -- child process: one measurement -------------------------------------------------------------


class _Timers:
    """Seconds summed per name over every call in every thread, and the first start per name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.starts: dict[str, float] = {}
        self.off_main: set[str] = set()  # names called from another thread than the main one
        self.lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                with self.lock:
                    self.starts.setdefault(name, t0)
                    self.seconds[name] = self.seconds.get(name, 0.0) + dt
                    if threading.current_thread() is not threading.main_thread():
                        self.off_main.add(name)

        return wrapper


def _sample_child(spec: dict[str, Any]) -> dict[str, Any]:
    t_setup = time.perf_counter()
    import cloudclear.sampling.build as b
    import cloudclear.sampling.candidates as cm
    import cloudclear.sampling.patches as pm
    from cloudclear.catalog import Catalog
    from cloudclear.sampling import PatchStore, SampleOptions

    tm = _Timers()
    # Wrapped in this process only: the library's code is unchanged.
    for name in ("s2_groups", "locate", "attach_s1", "candidates"):
        setattr(cm, name, tm.wrap("candidates", getattr(cm, name)))
    b.assign_splits = tm.wrap("draw", b.assign_splits)  # type: ignore[assignment]
    b.draw_order = tm.wrap("draw", b.draw_order)  # type: ignore[assignment]
    pm.SampleReader.__init__ = tm.wrap("pools", pm.SampleReader.__init__)  # type: ignore[method-assign]
    pm.SampleReader.build = tm.wrap("build", pm.SampleReader.build)  # type: ignore[method-assign]
    pm.SampleReader.read_s2 = tm.wrap("read_s2", pm.SampleReader.read_s2)  # type: ignore[method-assign]
    pm.SampleReader.read_s1 = tm.wrap("read_s1", pm.SampleReader.read_s1)  # type: ignore[method-assign]
    pm.SampleReader.read_s2_mask = tm.wrap("read_paste", pm.SampleReader.read_s2_mask)  # type: ignore[method-assign]
    pm.pack = tm.wrap("pack", pm.pack)  # type: ignore[assignment]
    b.StoreWriter.commit = tm.wrap("commit", b.StoreWriter.commit)  # type: ignore[method-assign]

    cat = Catalog.open(spec["catalog"])
    options = SampleOptions(
        patch_size=spec["patch"],
        count=spec["count"],
        simulate=tuple(spec["simulate"]),
        s1_max_gap=spec["s1_max_gap"],
        seed=spec["seed"],
        workers=spec["workers"],
        compression=spec["compression"],
        overwrite=True,
    )
    out: dict[str, Any] = {"setup_seconds": time.perf_counter() - t_setup}
    t0 = time.perf_counter()
    res = b.sample(cat, spec["layout"], spec["out"], options)
    out["seconds"] = time.perf_counter() - t0
    store = PatchStore(res.path)
    per_sample = sum(math.prod(s.shape) * _itemsize(s.dtype) for s in store.specs)
    out.update(
        count=res.count,
        requested=res.requested,
        candidates=res.candidates,
        locations=res.locations,
        rejected=res.rejected,
        notes=list(res.notes),
        raw_bytes=per_sample * res.count,
        data_bytes=(res.path / "patches.bin").stat().st_size,
        store_bytes=res.bytes,
        arrays=[s.name for s in store.specs],
        stages=tm.seconds,
        pack_in_threads="pack" in tm.off_main,
        # the sampling loop: from the first sample's read to the commit
        loop=tm.starts.get("commit", t0 + out["seconds"]) - tm.starts.get("build", t0),
    )
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def _itemsize(dtype: str) -> int:
    return {"uint8": 1, "uint16": 2, "int16": 2, "float32": 4}[dtype]


def _bound_tasks(store_path: str, catalog_path: str) -> tuple[list[list[tuple[tuple[Any, ...], int, int]]], Any]:
    """Per sample of the store, the (reader key, row, col) windows sampling read for it."""
    from cloudclear.acquisitions import grid_of
    from cloudclear.catalog import Catalog
    from cloudclear.sampling import PatchStore
    from cloudclear.scenes import Scene

    store = PatchStore(store_path)
    cat = Catalog.open(catalog_path)
    layout = store.layout
    bands = store.bands
    s1_bands = list(store.manifest["s1_bands"])
    frame = store.metadata().sort_values("sample_id")
    by_id: dict[str, list[Scene]] = {}
    for sc in cat:
        by_id.setdefault(sc.scene_id, []).append(sc)
    grids: dict[str, Any] = {}

    def scene(scene_id: str, files: list[str] | None) -> Scene:
        found = by_id.get(scene_id)
        if not found:
            raise SystemExit(f"bound: scene {scene_id} of the store is not in {catalog_path}")
        for sc in found:
            if files is None or sorted(sc.files) == sorted(files):
                return sc
        raise SystemExit(f"bound: no catalog record of {scene_id} has the files the store names ({files})")

    def grid(sc: Scene) -> Any:
        if sc.scene_id not in grids:
            grids[sc.scene_id] = grid_of(sc)
        return grids[sc.scene_id]

    def s2_keys(sc: Scene, g: Any) -> list[tuple[Any, ...]]:
        """One reader per band file (bands in the store's order) as read_s2 opens them."""
        nodata = 0.0 if sc.nodata is None else sc.nodata
        by_file: dict[str, list[int]] = {}
        for band in bands:
            path, bidx = sc.sources[band]
            by_file.setdefault(path, []).append(bidx)
        return [(path, tuple(idx), g, "bilinear", nodata) for path, idx in by_file.items()]

    def mask_key(sc: Scene, g: Any) -> tuple[Any, ...]:
        assert sc.mask is not None
        return (sc.mask.path, (sc.mask.band,), g, "nearest", None)

    def s1_keys(sc: Scene, g: Any) -> list[tuple[Any, ...]]:
        """The S1 bands grouped by file (sampling reads them one band at a time)."""
        by_file: dict[str, list[int]] = {}
        for band in s1_bands:
            path, bidx = sc.sources[band]
            by_file.setdefault(path, []).append(bidx)
        return [(path, tuple(idx), g, "bilinear", sc.nodata) for path, idx in by_file.items()]

    out = []
    for rec in frame.to_dict("records"):
        r0, c0 = int(rec["row"]), int(rec["col"])
        ref = scene(str(rec[f"{layout.reference}_scene"]), json.loads(rec[f"{layout.reference}_files"]))
        g = grid(ref)
        windows: list[tuple[tuple[Any, ...], int, int]] = []
        for slot in layout.slots:
            if slot.sensor == "DEM":
                continue
            if slot.sensor == "S1":
                s1 = scene(str(rec[f"{slot.name}_scene"]), json.loads(rec[f"{slot.name}_files"]))
                windows += [(k, r0, c0) for k in s1_keys(s1, g)]
                continue
            row = scene(str(rec[f"{slot.name}_scene"]), json.loads(rec[f"{slot.name}_files"]))
            windows += [(k, r0, c0) for k in s2_keys(row, g)]
            if row.mask is not None:
                windows.append((mask_key(row, g), r0, c0))
            source = rec.get(f"{slot.name}_gap_source")
            if slot.simulated and isinstance(source, str) and source:
                sid, at = source.rsplit("@", 1)
                pr, pc = (int(v) for v in at.split(","))
                other = scene(sid, None)
                windows.append((mask_key(other, grid(other)), pr, pc))
            s1_scene = rec.get(f"{slot.name}_s1_scene")
            if isinstance(s1_scene, str) and s1_scene:
                s1 = scene(s1_scene, json.loads(rec[f"{slot.name}_s1_files"]))
                windows += [(k, r0, c0) for k in s1_keys(s1, g)]
        out.append(windows)
    return out, store


def _bound_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Read the windows the store's samples came from, once, in the same number of threads."""
    t_setup = time.perf_counter()
    from cloudclear.gridio import GridReader

    tasks, store = _bound_tasks(spec["store"], spec["catalog"])
    patch = int(store.manifest["patch_size"])
    workers = max(1, spec["workers"])
    chunks = [tasks[i::workers] for i in range(workers)]  # interleaved, as the pool takes a batch
    barrier = threading.Barrier(workers + 1)
    done: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(chunk: list[list[tuple[tuple[Any, ...], int, int]]]) -> None:
        readers: dict[tuple[Any, ...], Any] = {}
        try:
            for windows in chunk:
                for key, _, _ in windows:
                    if key not in readers:
                        readers[key] = GridReader(key[0], list(key[1]), key[2], key[3], key[4])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        barrier.wait()
        if errors:
            return
        n = nbytes = 0
        try:
            for windows in chunk:
                for key, r0, c0 in windows:
                    nbytes += readers[key].read_window(r0, r0 + patch, c0, c0 + patch).nbytes
                    n += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            for r in readers.values():
                r.close()
        with lock:
            done.append((n, nbytes))

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    setup = time.perf_counter() - t_setup
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {
        "setup_seconds": setup,
        "seconds": seconds,
        "samples": len(tasks),
        "windows": sum(n for n, _ in done),
        "read_bytes": sum(b for _, b in done),
        "files": len({k[0] for w in tasks for k, _, _ in w}),
        "peak_rss_mib": peak_rss_mib(),
    }


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    return _bound_child(spec) if spec["mode"] == "bound" else _sample_child(spec)


# -- parent: data, cases, table -----------------------------------------------------------------


def _s1_gap_needed(root: Path) -> tuple[float, list[str]]:
    """The largest S1 gap (hours) any S2 date of the catalog has to its nearest S1, and the dates."""
    from cloudclear.catalog import Catalog

    s2 = Catalog.open(root / CATALOG).scenes
    s2 = s2[s2["sensor"] == "S2"].sort_values("datetime")
    gaps = [float(g) for g in s2["s1_gap_hours"]]
    if any(math.isnan(g) for g in gaps):
        raise SystemExit(f"{root / CATALOG}: an S2 date has no S1 at all; the layouts here need one at each")
    return max(gaps), [f"{t:%Y-%m-%d} ({g:.0f} h)" for t, g in zip(s2["datetime"], gaps, strict=True)]


def _fmt_mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="rows = columns (default 10980)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (median printed)")
    parser.add_argument("--data", type=Path, default=None, help="keep / reuse the generated tile here")
    parser.add_argument("--count", type=int, default=200, help="samples per store (default 200)")
    parser.add_argument("--patch", type=int, default=256, help="patch side in px (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="reading threads (SampleOptions default 2)")
    parser.add_argument(
        "--s1-max-gap",
        type=float,
        default=None,
        help="S1-S2 gap in hours (default: the presets' 72 h, or what the data's S2 dates need when more)",
    )
    parser.add_argument("--no-level3", action="store_true", help="skip the OS2 run at zlib level 3")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.size < 64 or args.repeat < 1 or args.count < 1 or args.workers < 1 or args.patch < 8:
        parser.error("--size must be >= 64, --patch >= 8, --repeat, --count and --workers >= 1")
    if args.patch > args.size:
        parser.error(f"--patch {args.patch} is larger than the tile ({args.size} px)")

    root = (args.data or Path(tempfile.mkdtemp(prefix="cloudclear-bench-sample-"))).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    stores = Path(tempfile.mkdtemp(prefix="cloudclear-bench-sample-stores-"))
    try:
        gen_s = prepare_tile(
            root,
            args.size,
            catalog=CATALOG,
            n_dates=N_DATES,
            interval_days=INTERVAL_DAYS,
            bands=BANDS,
            cover=COVER,
            seed=SEED,
            start=START,
        )
        need, per_date = _s1_gap_needed(root)
        s1_gap = args.s1_max_gap
        nearest = f"nearest S1 per S2 date: {', '.join(per_date)}"
        if s1_gap is not None:
            gap_note = f"S1 gap --s1-max-gap {s1_gap:g} h ({nearest})"
        elif need > PRESET_S1_GAP:
            s1_gap = float(math.ceil(need))
            gap_note = f"S1 gap {s1_gap:g} h instead of the presets' 72 h, which a date here misses ({nearest})"
        else:
            gap_note = f"S1 gap: the presets' 72 h ({nearest})"

        base = {
            "catalog": str(root / CATALOG),
            "patch": args.patch,
            "count": args.count,
            "workers": args.workers,
            "seed": 0,
            "s1_max_gap": s1_gap,
        }
        # name, label, layout, zlib level, bound of this case's store (None: same samples as another case)
        cases: list[tuple[str, str, str, int, bool]] = [("os2", "OS2 --simulate t", "OS2", 1, True)]
        if not args.no_level3:
            cases.append(("os2_z3", "OS2 --simulate t, zlib 3", "OS2", 3, False))
        cases.append(("single", "single-date --simulate t", "single-date", 1, True))

        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name, label, layout, level, bounded in cases:
            spec = {
                **base,
                "name": name,
                "layout": layout,
                "simulate": ["t"],
                "compression": level,
                "out": str(stores / name),
            }
            runs, bounds = [], []
            for k in range(args.repeat):
                runs.append(run_child(__file__, {**spec, "mode": "sample"}))
                if bounded:  # reads what the store just written holds (the same each run: same seed)
                    bounds.append(run_child(__file__, {**spec, "mode": "bound", "store": spec["out"]}))
                r = runs[-1]
                b = f", bound {bounds[-1]['seconds']:.2f} s" if bounded else ""
                print(
                    f"  {label} [{k + 1}]: {r['count']} samples in {r['seconds']:.2f} s{b}, "
                    f"peak RSS {r['peak_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                )
            results[name] = {"runs": runs, "bounds": bounds}
            shutil.rmtree(spec["out"], ignore_errors=True)

        # -- report ------------------------------------------------------------------------------
        import rasterio

        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        disk_mb = sum(p.stat().st_size for d in ("S2", "S1") for p in (root / d).glob("*.tif")) / 1e6
        n_s2 = len(s2_files(root))
        made = f"generated in {gen_s:.0f} s" if gen_s is not None else "reused"
        print(f"machine: {os.cpu_count()} cores, {mem_gib:.1f} GiB RAM; GDAL {rasterio.__gdal_version__}, ", end="")
        print(f"GDAL_CACHEMAX {os.environ.get('GDAL_CACHEMAX', 'unset (GDAL default: 5 % of RAM)')}")
        print(
            f"tile: {args.size} x {args.size} px, {n_s2} S2 dates x {len(BANDS)} bands + SCL, with S1 "
            f"({disk_mb:.0f} MB on disk, {made}; {root})"
        )
        print(gap_note)
        print(
            f"samples: {args.count} asked, {args.patch} px, {args.workers} reading threads, seed 0; "
            f"medians of {args.repeat} runs, each in a fresh process"
        )
        print()
        head = (
            f"  {'case':<28} {'samples':>7} {'wall s':>8} {'samples/s':>9} {'raw MB/s':>9} {'store MB':>9} "
            f"{'compr.':>6} {'peak RSS':>9}"
        )
        print(head)
        for name, label, _, _, _ in cases:
            runs = results[name]["runs"]
            wall = statistics.median(r["seconds"] for r in runs)
            last = runs[-1]
            n = last["count"]
            print(
                f"  {label:<28} {n:>7} {wall:>8.2f} {n / wall:>9.2f} {last['raw_bytes'] / 1e6 / wall:>9.1f} "
                f"{_fmt_mb(last['store_bytes']):>9} {last['raw_bytes'] / max(last['data_bytes'], 1):>5.2f}x "
                f"{max(r['peak_rss_mib'] for r in runs):>5.0f} MiB"
            )
        print("  (samples/s: patches of all the layout's slots per second; raw MB/s: uncompressed array bytes")
        print("  stored per second; compr.: raw bytes / patches.bin; wall: sample() after imports and Catalog.open)")
        for name, label, _, _, _ in cases:
            last = results[name]["runs"][-1]
            if last["count"] < min(args.count, 10) or last["count"] < args.count / 2:
                print(
                    f"  note: {label} wrote {last['count']} of the {args.count} samples asked for "
                    f"({last['candidates']} candidates): too few to time; a simulated t needs fully clear "
                    "patches on the middle date, as the tile this benchmark generates has"
                )
        print()
        print("  I/O bound: the same windows of the same files, read once, in the same number of threads")
        for name, label, _, _, bounded in cases:
            if not bounded:
                continue
            runs, bounds = results[name]["runs"], results[name]["bounds"]
            wall = statistics.median(r["seconds"] for r in runs)
            read = statistics.median(b["seconds"] for b in bounds)
            b = bounds[-1]
            print(
                f"  {label:<28} {b['samples']:>7} {read:>8.2f} {b['samples'] / read:>9.2f} "
                f"{b['read_bytes'] / 1e6 / read:>9.1f}  ({b['windows']} windows of {b['files']} files, "
                f"{_fmt_mb(b['read_bytes'])} MB read; peak RSS {max(x['peak_rss_mib'] for x in bounds):.0f} MiB)"
            )
            print(f"  {'':<28} ratio sample / I/O bound: {wall / read:.2f}x")
        print()
        print("  where the time goes (medians, s; thread-s: summed over the reading threads)")
        for name, label, _, _, _ in cases:
            runs = results[name]["runs"]

            def med(key: str, rs: list[dict[str, Any]] = runs) -> float:
                return statistics.median(r["stages"].get(key, 0.0) for r in rs)

            wall = statistics.median(r["seconds"] for r in runs)
            loop = statistics.median(r["loop"] for r in runs)
            reads = med("read_s2") + med("read_s1") + med("read_paste")
            checks = max(0.0, med("build") - reads)
            before = med("candidates") + med("draw") + med("pools")
            if runs[-1]["pack_in_threads"]:
                pack_where = "compression (pack, thread-s)"
            else:
                pack_where = "compression (pack) on the main thread, the reading threads idle meanwhile,"
            print(
                f"  {label}: candidates {med('candidates'):.2f}, splits + order {med('draw'):.2f}, paste pools "
                f"{med('pools'):.2f}; sampling loop {loop:.2f} wall: in threads {med('build'):.2f} thread-s "
                f"(read S2 + mask {med('read_s2'):.2f}, S1 {med('read_s1'):.2f}, masks to paste "
                f"{med('read_paste'):.2f}, checks / encoding {checks:.2f}), {pack_where} "
                f"{med('pack'):.2f}; commit {med('commit'):.2f}; "
                f"other {max(0.0, wall - before - loop - med('commit')):.2f}; "
                f"setup (imports, Catalog.open) {statistics.median(r['setup_seconds'] for r in runs):.2f}"
            )
            last = runs[-1]
            extra = []
            if last["count"] < last["requested"]:
                extra.append(f"{last['count']} of {last['requested']} asked for")
            extra.append(f"{last['candidates']} candidates at {last['locations']} locations")
            if last["rejected"]:
                extra.append("rejected: " + "; ".join(f"{k} ({v})" for k, v in last["rejected"].items()))
            extra.append("arrays " + ", ".join(last["arrays"]))
            print("    " + "; ".join(extra))
        if args.size < 10980:
            print(f"\n(a full tile is 10980 x 10980 px: {10980**2 / args.size**2:.1f}x this one's area)")
    finally:
        shutil.rmtree(stores, ignore_errors=True)
        if args.data is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
