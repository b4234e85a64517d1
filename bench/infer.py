"""Benchmark: reconstruct a full-size generated tile and compare with the I/O bound.

Usage::

    python bench/infer.py [--size 10980] [--repeat 3] [--data DIR] [--crop 2048]
                          [--device auto|cpu|cuda] [--skip-unet] [--skip-gapfill]

Generates a tile of ``--size`` x ``--size`` px (``cloudclear.synth``: 3 S2 dates x 4 bands with
SCL masks, the middle one the cloudy target, plus the S1 acquisitions between them) and indexes
it; kept in ``--data`` when given, so later runs reuse it. A U-Net checkpoint with random weights
(width 32, depth 3: about 1.95 M parameters; slots S2 before / target / after with B02, B03, B04,
B08 and S1 VV, VH near the target) is written beside it. Then, each in a fresh process with GDAL's
block cache at 512 MiB as ``cloudclear infer`` sets it (the environment's GDAL_CACHEMAX wins):

- ``gapfill`` of the target date on the whole tile, on the CPU;
- the U-Net on a centred ``--crop`` x ``--crop`` px part of the tile (``InferOptions.bbox``), on
  the CPU, with the CLI defaults: the window sized by the memory budget (``--window-memory``,
  default on the CPU an eighth of the RAM, at most 2 GiB), batch 8 at most; and, alternating with
  it run by run against the same bound, with the card's window (512, margin 64) forced: a second
  table gives each one's window, batch, windows computed, pixels computed per pixel written, time,
  ratio to the bound, minor page faults and peak RSS;
- with a GPU (``--device auto`` finds one, ``cuda`` requires one): the U-Net on the whole tile;
- per case, the I/O bound: choose the same inputs, open them through the pipeline's own reader
  (``pipeline._Source``: S1 through a WarpedVRT, the SCL mask decoded) and read every strip once
  (same strip height, the files read in parallel threads as the pipeline does), and write an
  output of the same size and band count plus the status sidecar with ``OUTPUT_PROFILE`` (uint16,
  ZSTD 1, predictor 2, 512 x 512 tiles) in 512-row bands on a writer thread; what is written is
  the target date's own bands, so the compressor sees real data.

``--repeat`` runs of each (the bound and the reconstruction alternate) give medians. Peak RSS
(VmHWM) is also measured at a second size with the same width (the top half of the tile for
gapfill, a crop of half the rows for the U-Net): it follows the width and the strip height, not
the rows. Benchmarks print figures; they assert nothing about time.
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
from pathlib import Path
from typing import Any

from common import peak_rss_mib, prepare_tile, run_child, s2_files

N_DATES = 3
INTERVAL_DAYS = 10
COVER = (0.2, 0.6, 0.1)  # the middle date is the cloudy target
BANDS = ("B02", "B03", "B04", "B08")
SEED = 7
CHECKPOINT = "bench_unet.safetensors"
CARD_WINDOW = 512  # the bench U-Net card's window
CATALOG = "cloudclear.gpkg"
# The GDAL block cache `cloudclear infer` uses, for both measures alike.
_ENV = {**os.environ, "GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX", "512")}


# -- child process: one measurement -------------------------------------------------------------


def _bound(cat: Any, spec: dict[str, Any], method: Any, options: Any) -> dict[str, Any]:
    """Choose the inputs, read every strip of every input once and write an output of the same shape."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from cloudclear.gapfill import PixelStatus
    from cloudclear.inference.pipeline import _Source, _strip_bounds, output_profile, status_profile
    from cloudclear.inference.select import choose_inputs

    inputs = choose_inputs(cat, spec["date"], method.layout(), bands=method.bands(), s1_bands=method.s1_bands())
    grid = inputs.grid.crop(options.bbox) if options.bbox else inputs.grid
    out_bands = method.output_bands(inputs)
    keep = [inputs.bands.index(b) for b in out_bands]
    acqs = inputs.acquisitions
    t_i = next((i for i, a in enumerate(acqs) if a.role == "target" and a.sensor == "S2"), None)
    if t_i is None:
        t_i = next(i for i, a in enumerate(acqs) if a.sensor == "S2")
    path = Path(spec["out"])
    spath = path.with_name(f"{path.stem}_status{path.suffix}")
    profile = output_profile(grid, len(out_bands))
    sprofile = status_profile(grid)
    sources = [_Source(a, grid) for a in acqs]
    bounds = _strip_bounds(sources, grid.height, options.strip_rows)  # the pipeline's own strips
    readers = ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 2, 4)))
    writer = ThreadPoolExecutor(max_workers=1)
    pending: list[Any] = []
    out_block = 512
    try:
        with rasterio.open(path, "w", **profile) as dst, rasterio.open(spath, "w", **sprofile) as sdst:
            buf_v: list[np.ndarray] = []
            buf_s: list[np.ndarray] = []
            row = 0

            def write(r0: int, v: np.ndarray, s: np.ndarray) -> None:
                win = Window(0, r0, v.shape[2], v.shape[1])
                dst.write(v, window=win)
                sdst.write(s[None], window=win)

            for r0, r1 in bounds:
                strips = list(readers.map(lambda s, a=r0, b=r1: s.read(a, b), sources))
                t = strips[t_i]
                buf_v.append(t.values[keep].astype(np.uint16, copy=False))
                buf_s.append(np.where(t.clear, PixelStatus.OBSERVED, PixelStatus.RECONSTRUCTED).astype(np.uint8))
                have = sum(s.shape[0] for s in buf_s)
                final = r1 == grid.height
                n = have if final else (have // out_block) * out_block
                if n == 0:
                    continue
                v = np.concatenate(buf_v, axis=1) if len(buf_v) > 1 else buf_v[0]
                s = np.concatenate(buf_s, axis=0) if len(buf_s) > 1 else buf_s[0]
                while len(pending) >= 2:  # the pipeline's writer queue is bounded too
                    pending.pop(0).result()
                pending.append(writer.submit(write, row, v[:, :n], s[:n]))
                row += n
                buf_v = [v[:, n:]] if n < s.shape[0] else []
                buf_s = [s[n:]] if n < s.shape[0] else []
            for f in pending:
                f.result()
            if row != grid.height:
                raise RuntimeError(f"bound wrote {row} of {grid.height} rows")
    finally:
        readers.shutdown(wait=True)
        writer.shutdown(wait=True)
        for src in sources:
            src.close()
    return {
        "width": grid.width,
        "height": grid.height,
        "strips": len(bounds),
        "inputs": [a.scene_id for a in acqs],
        "out_mb": (path.stat().st_size + spath.stat().st_size) / 1e6,
        "_remove": [str(path), str(spath)],
    }


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: ``infer`` or ``bound`` of one case."""
    t_setup = time.perf_counter()
    from cloudclear.catalog import Catalog
    from cloudclear.inference.pipeline import InferOptions, infer, load_method

    cat = Catalog.open(spec["catalog"])
    method = load_method(spec["method"], device=spec["device"], batch=spec["batch"], window=spec.get("window"))
    bbox = tuple(spec["bbox"]) if spec["bbox"] else None
    options = InferOptions(overwrite=True, bbox=bbox, strip_rows=spec["strip_rows"])
    out: dict[str, Any] = {"setup_seconds": time.perf_counter() - t_setup}
    t0 = time.perf_counter()
    if spec["mode"] == "bound":
        out.update(_bound(cat, spec, method, options))
        out["seconds"] = time.perf_counter() - t0
        for p in out.pop("_remove"):
            Path(p).unlink(missing_ok=True)
    else:
        import resource

        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        res = infer(cat, [spec["date"]], method, spec["out"], options=options).results[0]
        out["seconds"] = time.perf_counter() - t0
        out["minflt"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        if hasattr(method, "window_for"):  # a network: the windows it computed
            from cloudclear.inference.windows import WindowPlan

            card = method.card
            side = method.window_for(res.height, res.width)
            plan = WindowPlan.build(res.height, res.width, window=side, radius=card.receptive_radius, align=card.align)
            done = sum(w.rows.length * w.cols.length for w in plan.windows())
            computed = done / plan.height / plan.width
            out.update(window=side, batch=method.batch_for(plan), windows=len(plan.windows()), computed=computed)
        out.update(
            run_seconds=res.seconds,
            width=res.width,
            height=res.height,
            device=res.device,
            inputs=[i["scene_id"] for i in res.inputs],
            notes=list(res.notes),
            pixels={"observed": res.observed, "reconstructed": res.reconstructed, "nodata": res.nodata},
            out_mb=(res.path.stat().st_size + (res.status_path.stat().st_size if res.status_path else 0)) / 1e6,
        )
    out["peak_rss_mib"] = peak_rss_mib()
    if "torch" in sys.modules:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        if spec["device"] == "cuda":
            out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            out["gpu"] = torch.cuda.get_device_name()
    return out


# -- parent: data, checkpoint, cases, table -----------------------------------------------------


def _write_checkpoint(path: Path) -> int:
    """A U-Net (width 32, depth 3) with random weights and a card for the generated series."""
    import torch

    from cloudclear.nets.card import ModelCard, Slot, build_net, save_checkpoint
    from cloudclear.nets.unet import receptive_radius

    card = ModelCard(
        architecture="unet",
        options={"width": 32, "depth": 3},
        bands=BANDS,
        slots=(
            Slot("t-1", "S2", "before", 1, BANDS),
            Slot("t", "S2", "target", 1, BANDS),
            Slot("t+1", "S2", "after", 1, BANDS),
            Slot("s1@t", "S1", "target", 1, ("VV", "VH")),
        ),
        normalisation={
            "S2": {"mean": [0.05, 0.07, 0.06, 0.25], "std": [0.03, 0.03, 0.04, 0.08]},
            "S1": {"mean": [-11.0, -18.0], "std": [3.0, 3.0]},
        },
        receptive_radius=receptive_radius(3),
        align=8,
        window=CARD_WINDOW,
        # synth puts an S1 within 6 days of every S2 date (12-day revisit, 17:29 vs 10:30 UTC)
        s1_max_hours=8 * 24,
        info={"purpose": "bench/infer.py: random weights, for timing only"},
    )
    torch.manual_seed(0)
    net = build_net(card)
    for m in net.modules():  # running statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(path, net, card)
    return sum(p.numel() for p in net.parameters())


def _target_date(root: Path) -> str:
    from cloudclear.catalog import Catalog

    s2 = Catalog.open(root / CATALOG).scenes
    times = sorted(s2.loc[s2["sensor"] == "S2", "datetime"])
    return times[len(times) // 2].isoformat()


def _bbox(root: Path, r0: int, r1: int, c0: int, c1: int) -> list[float]:
    """Map coordinates of rows [r0, r1) and columns [c0, c1) of the tile."""
    import rasterio

    with rasterio.open(s2_files(root)[0]) as src:
        a, _, c, _, e, f = tuple(src.transform)[:6]
    return [c + a * c0, f + e * r1, c + a * c1, f + e * r0]


def _cuda() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _fmt(v: float | None, spec: str, unit: str = "") -> str:
    return "-" if v is None else format(v, spec) + unit


def _details(runs: list[dict[str, Any]], bounds: list[dict[str, Any]]) -> str:
    """One line on a case: the bound's own footprint, setup time, GPU memory, what was written."""
    extra = []
    if bounds:
        extra.append(
            f"bound peak RSS {max(b['peak_rss_mib'] for b in bounds):.0f} MiB, "
            f"bound output {statistics.median(b['out_mb'] for b in bounds):.1f} MB"
        )
    extra.append(f"setup (imports, catalog, model) {statistics.median(r['setup_seconds'] for r in runs):.2f} s")
    if "gpu_peak_mib" in runs[0]:
        extra.append(f"GPU peak {max(r['gpu_peak_mib'] for r in runs):.0f} MiB ({runs[0]['gpu']})")
    px = runs[0]["pixels"]
    total = max(sum(px.values()), 1)
    pct = {k: 100 * v / total for k, v in px.items()}
    extra.append(
        f"observed {pct['observed']:.1f} %, reconstructed {pct['reconstructed']:.1f} %, nodata {pct['nodata']:.1f} %"
    )
    return "; ".join(extra)


def _windows_table(results: dict[str, dict[str, list[dict[str, Any]]]], cases: list[Any]) -> None:
    """The U-Net on the CPU crop: the budget's window against the card's (medians, alternate runs)."""
    head = (
        f"{'case':<40} {'window':>6} {'batch':>5} {'windows':>7} {'computed':>8} {'wall s':>8} "
        f"{'ratio':>6} {'minflt M':>8} {'peak RSS MiB':>12}"
    )
    print("\nU-Net windows (computed: pixels computed per pixel written; ratio: to the I/O bound):")
    print(head)
    print("-" * len(head))
    for name, label, *_ in cases:
        if name not in ("unet_crop", "unet_crop_card"):
            continue
        runs, bounds = results[name]["runs"], results[name]["bounds"]
        r0 = runs[0]
        wall = statistics.median(r["seconds"] for r in runs)
        bound = statistics.median(b["seconds"] for b in bounds)
        flt = statistics.median(r["minflt"] for r in runs) / 1e6
        print(
            f"{label:<40} {r0['window']:>6} {r0['batch']:>5} {r0['windows']:>7} {r0['computed']:>7.2f}x "
            f"{wall:>8.2f} {wall / bound:>5.2f}x {flt:>8.2f} {max(r['peak_rss_mib'] for r in runs):>12.0f}"
        )
    a = statistics.median(r["seconds"] for r in results["unet_crop_card"]["runs"])
    b = statistics.median(r["seconds"] for r in results["unet_crop"]["runs"])
    print(f"card window / budget window: {a / b:.2f}x the time")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="rows = columns (default 10980)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (median printed)")
    parser.add_argument("--data", type=Path, default=None, help="keep / reuse the generated tile here")
    parser.add_argument("--crop", type=int, default=2048, help="side of the U-Net's CPU crop (default 2048)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: also run the U-Net on the whole tile on a GPU when there is one; cuda: require one",
    )
    parser.add_argument("--batch", type=int, default=8, help="windows per network call (CLI default 8)")
    parser.add_argument("--strip-rows", type=int, default=512, help="rows read per strip (CLI default 512)")
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--skip-gapfill", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    size, crop = args.size, min(args.crop, args.size)
    if size < 64 or crop < 64 or args.repeat < 1:
        parser.error("--size and --crop must be >= 64 and --repeat >= 1")

    gpu = None
    if not args.skip_unet and args.device != "cpu":
        gpu = _cuda()
        if gpu is None and args.device == "cuda":
            parser.error("--device cuda: no CUDA device is available")

    root = args.data or Path(tempfile.mkdtemp(prefix="cloudclear-bench-infer-"))
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        gen_s = prepare_tile(
            root,
            size,
            catalog=CATALOG,
            n_dates=N_DATES,
            interval_days=INTERVAL_DAYS,
            bands=BANDS,
            cover=COVER,
            seed=SEED,
        )
        date = _target_date(root)
        n_params = _write_checkpoint(root / CHECKPOINT) if not args.skip_unet else 0
        (root / "out").mkdir(exist_ok=True)
        half = size // 2
        c0 = (size - crop) // 2
        crop_box = _bbox(root, c0, c0 + crop, c0, c0 + crop)
        crop_half_box = _bbox(root, c0, c0 + crop // 2, c0, c0 + crop)
        ckpt = str(root / CHECKPOINT)
        # name, label, method, device, bbox, measured `repeat` times with its bound (else once, memory only)
        cases: list[tuple[str, str, str, str, list[float] | None, bool]] = []
        if not args.skip_gapfill:
            cases.append(("gapfill", f"gapfill, cpu, {size} x {size}", "gapfill", "cpu", None, True))
            box = _bbox(root, 0, half, 0, size)
            cases.append(("gapfill_half", f"gapfill, cpu, {size} x {half} (top half)", "gapfill", "cpu", box, False))
        if not args.skip_unet:
            cases.append(("unet_crop", f"U-Net, cpu, {crop} x {crop}", ckpt, "cpu", crop_box, True))
            # run alternately with unet_crop, against its bound (see below)
            cases.append(("unet_crop_card", f"U-Net, cpu, {crop} x {crop}, card window", ckpt, "cpu", crop_box, True))
            label = f"U-Net, cpu, {crop} x {crop // 2} (half the rows)"
            cases.append(("unet_crop_half", label, ckpt, "cpu", crop_half_box, False))
            if gpu is not None:
                cases.append(("unet_gpu", f"U-Net, cuda, {size} x {size}", ckpt, "cuda", None, True))

        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        paired = {"unet_crop": "unet_crop_card"}  # the second runs after the first, run by run
        for name, label, method, device, bbox, timed in cases:
            if name in paired.values():
                continue
            spec = {
                "name": name,
                "catalog": str(root / CATALOG),
                "date": date,
                "method": method,
                "device": device,
                "bbox": bbox,
                "batch": args.batch,
                "strip_rows": args.strip_rows,
            }
            runs, bounds = [], []
            twin = paired.get(name)
            twin_runs: list[dict[str, Any]] = []
            for k in range(args.repeat if timed else 1):
                if timed:
                    out = str(root / "out" / f"bound_{name}.tif")
                    bounds.append(run_child(__file__, {**spec, "mode": "bound", "out": out}, env=_ENV))
                runs.append(
                    run_child(__file__, {**spec, "mode": "infer", "out": str(root / "out" / f"{name}.tif")}, env=_ENV)
                )
                r = runs[-1]
                b = f", bound {bounds[-1]['seconds']:.2f} s" if timed else ""
                print(
                    f"  {label} [{k + 1}]: {r['seconds']:.2f} s{b}, peak RSS {r['peak_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                )
                if twin is not None:
                    tspec = {**spec, "name": twin, "window": CARD_WINDOW, "mode": "infer"}
                    twin_runs.append(run_child(__file__, {**tspec, "out": str(root / "out" / f"{twin}.tif")}, env=_ENV))
                    print(f"  {label}, card window [{k + 1}]: {twin_runs[-1]['seconds']:.2f} s", file=sys.stderr)
            results[name] = {"runs": runs, "bounds": bounds}
            if twin is not None:
                results[twin] = {"runs": twin_runs, "bounds": bounds}

        # -- report ------------------------------------------------------------------------------
        import rasterio

        threads = next(
            (r["runs"][0]["torch_threads"] for r in results.values() if "torch_threads" in r["runs"][0]), None
        )
        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        print(
            f"machine: {os.cpu_count()} cores, {mem_gib:.1f} GiB RAM, torch threads {threads or '-'}, "
            f"GPU {gpu or 'none'}; GDAL {rasterio.__gdal_version__}, "
            f"GDAL_CACHEMAX {os.environ.get('GDAL_CACHEMAX', '512')} MiB"
        )
        raw_gb = sum(p.stat().st_size for p in root.rglob("*.tif") if "out" not in p.relative_to(root).parts) / 1e9
        gen = f", generated in {gen_s:.0f} s" if gen_s is not None else ", reused"
        print(
            f"tile: {size} x {size} px, {N_DATES} S2 dates x 4 bands uint16 + SCL + "
            f"{len(list((root / 'S1').glob('S1_*.tif')))} S1 (VV, VH), target {date[:10]} "
            f"(cloud {COVER[N_DATES // 2]:.0%}); {raw_gb:.2f} GB on disk{gen} ({root})"
        )
        if not args.skip_unet:
            print(
                f"U-Net: width 32, depth 3, {n_params:,} parameters, card window {CARD_WINDOW} (margin 64), "
                f"batch {args.batch}"
            )
        for name, r in results.items():
            for note in r["runs"][0]["notes"]:
                print(f"note ({name}): {note}")
        head = (
            f"{'case':<40} {'Mpx':>7} {'wall s':>8} {'Mpx/s':>7} {'peak RSS MiB':>12} "
            f"{'I/O bound s':>11} {'ratio':>6} {'out MB':>7}"
        )
        print(f"\nmedians of {args.repeat} runs (one run for the second sizes):")
        print(head)
        print("-" * len(head))
        for name, label, *_ in cases:
            runs, bounds = results[name]["runs"], results[name]["bounds"]
            wall = statistics.median(r["seconds"] for r in runs)
            bound = statistics.median(b["seconds"] for b in bounds) if bounds else None
            mpx = runs[0]["width"] * runs[0]["height"] / 1e6
            peak = max(r["peak_rss_mib"] for r in runs)
            ratio = wall / bound if bound else None
            out_mb = statistics.median(r["out_mb"] for r in runs)
            print(
                f"{label:<40} {mpx:>7.1f} {wall:>8.2f} {mpx / wall:>7.2f} {peak:>12.0f} "
                f"{_fmt(bound, '.2f'):>11} {_fmt(ratio, '.2f', 'x'):>6} {out_mb:>7.1f}"
            )
        if "unet_crop_card" in results:
            _windows_table(results, cases)
        print()
        for name, *_ in cases:
            print(f"{name}: {_details(results[name]['runs'], results[name]['bounds'])}")
        pairs = [("gapfill", "gapfill_half"), ("unet_crop", "unet_crop_half")]
        for big, small in pairs:
            if big in results and small in results:
                pb = max(r["peak_rss_mib"] for r in results[big]["runs"])
                ps = max(r["peak_rss_mib"] for r in results[small]["runs"])
                rb, rs = results[big]["runs"][0]["height"], results[small]["runs"][0]["height"]
                print(
                    f"peak RSS, {big}: {rs} rows {ps:.0f} MiB -> {rb} rows {pb:.0f} MiB "
                    f"({pb / ps:.2f}x for {rb / rs:.2f}x the rows, same width)"
                )
    finally:
        if args.data is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
