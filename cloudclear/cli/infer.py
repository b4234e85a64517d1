"""``cloudclear infer``: reconstruct cloud-free S2 images of a tile for dates."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudclear.cli.options import (
    AsDecoded,
    Buffer,
    MaskSource,
    Snow,
    Strict,
    Temporal,
    TemporalDays,
    Unclassified,
    clear_policy,
    expand_dates,
    interruptible,
    json_option,
    overwrite_option,
    parse_bands,
    parse_floats,
    parse_memory,
    progress,
)
from cloudclear.inference import DEFAULT_METHOD

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog
    from cloudclear.inference.jobwork import MethodSpec
    from cloudclear.inference.pipeline import InferOptions


def infer(
    catalog: Annotated[
        Path, typer.Option("--catalog", "-c", help="Catalog written by `cloudclear index` (or its folder).")
    ],
    date: Annotated[
        list[str],
        typer.Option(
            "--date",
            "-d",
            help="Date to reconstruct: YYYY-MM-DD (with or without an S2 acquisition), an ISO "
            "datetime, or a range START..END stepped by --every. Repeat for several.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output GeoTIFF for one tile-date; for several, a folder (files "
            "S2_T{tile}_{YYYYMMDD}_{method}.tif) or a path containing {date} and/or {tile}.",
        ),
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="gapfill, a .safetensors checkpoint, or a model name (see `cloudclear models`). "
            "The default is the shipped network that beats gapfill at places it never saw.",
        ),
    ] = DEFAULT_METHOD,
    tile: Annotated[
        list[str] | None,
        typer.Option(
            "--tile",
            "-t",
            help="S2 tile (or grid name) to reconstruct; repeat for several. Default: every S2 tile of the "
            "catalog when --out is a folder or a {tile} path.",
        ),
    ] = None,
    grid: Annotated[
        str | None,
        typer.Option(
            "--grid",
            metavar="NAME|FILE",
            help="Output grid when the tile's S2 scenes lie on several grids: a grid NAME (only its "
            "scenes are read), or a raster FILE whose grid the output takes (every scene covering it "
            "is warped onto it).",
        ),
    ] = None,
    every: Annotated[int, typer.Option("--every", help="Days between dates of a START..END range.")] = 10,
    bands: Annotated[
        str | None, typer.Option("--bands", help="S2 bands to fill with gapfill, e.g. B02,B03,B04,B08.")
    ] = None,
    neighbours: Annotated[int, typer.Option("--neighbours", help="gapfill: scenes used on each side.")] = 3,
    max_days: Annotated[
        float | None, typer.Option("--max-days", help="How far from the date to look for S2. [default: 60]")
    ] = None,
    max_cloud: Annotated[
        float | None,
        typer.Option("--max-cloud", help="Neighbour scenes above this cloud % are not used. [default: 95]"),
    ] = None,
    keep_observed: Annotated[
        bool,
        typer.Option(
            "--keep-observed/--no-keep-observed",
            help="Copy the date's own clear pixels as they are (off: reconstruct every pixel).",
        ),
    ] = True,
    status: Annotated[
        bool,
        typer.Option("--status/--no-status", help="Write NAME_status.tif: 0 nodata, 1 observed, 2 reconstructed."),
    ] = True,
    bbox: Annotated[
        str | None, typer.Option("--bbox", help="minx,miny,maxx,maxy in the tile's CRS: only this part.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (networks).")] = "auto",
    window: Annotated[
        int | None,
        typer.Option(
            "--window",
            help="Force the network window side (and --batch). [default: sized by --window-memory, at least the "
            "card's; a network that is not fully convolutional keeps the card's, the size it was trained on]",
        ),
    ] = None,
    batch: Annotated[
        int, typer.Option("--batch", help="Windows per network call (at most, when --window-memory sizes the window).")
    ] = 8,
    window_memory: Annotated[
        str | None,
        typer.Option(
            "--window-memory",
            metavar="SIZE",
            help="Memory for one batch of network windows, e.g. 1.5GiB or 800MiB: the window is the largest "
            "that fits (the one computing the fewest pixels), never smaller than the card's, then the batch "
            "takes what is left; the output is the same for any window. [default: half the free GPU memory; "
            "on the CPU an eighth of the RAM, at most 2GiB]",
        ),
    ] = None,
    strip_rows: Annotated[int, typer.Option("--strip-rows", help="Rows read per strip (memory grows with it).")] = 512,
    cog: Annotated[bool, typer.Option("--cog", help="Write the output as a Cloud-Optimized GeoTIFF.")] = False,
    buffer: Buffer = None,
    unclassified: Unclassified = None,
    snow: Snow = None,
    mask_source: MaskSource = None,
    temporal: Temporal = None,
    temporal_days: TemporalDays = None,
    strict: Strict = False,
    as_decoded: AsDecoded = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Scene id never used as an input (e.g. a clear date held out for scoring). Repeat for several.",
        ),
    ] = None,
    hide: Annotated[
        Path | None,
        typer.Option(
            "--hide",
            help="A cloud mask raster (SCL, CLM...): every pixel it calls cloud or shadow is also cloud on "
            "the date reconstructed, for any method. Reconstruct a clear date under another date's real "
            "clouds, then score it against itself on those pixels.",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="local|serial|ADDRESS",
            help="Where tile-dates run: local (a Dask cluster on this machine), serial (one after the other "
            "in this process) or a Dask scheduler's address (tcp://HOST:8786; start GPU workers with "
            "`dask worker ADDRESS --resources GPU=1`). [default: local for several tile-dates]",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Workers of the local cluster. [default: one per core]")
    ] = None,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="Go on with the other tile-dates when one fails.")
    ] = False,
    report_path: Annotated[
        Path | None,
        typer.Option("--report", help="Write the run report (JSON) there. [default: OUT/cloudclear_run.json]"),
    ] = None,
    series: Annotated[
        str | None,
        typer.Option(
            "--series",
            help="Also write the outputs as a series a user opens in one line: stac (a STAC catalog, "
            "OUT/catalog.json), zarr (one Zarr store per tile, OUT/S2_T{tile}_series.zarr, "
            "xarray.open_zarr) or stac,zarr.",
        ),
    ] = None,
    overwrite: Annotated[bool, overwrite_option("existing outputs")] = False,
    as_json: Annotated[bool, json_option("Print the results as JSON.")] = False,
) -> None:
    """Reconstruct cloud-free S2 images of a tile for one or more dates.

    Inputs are chosen from the catalog: the date's own acquisition (if any), then the nearest and
    least cloudy S2 scenes before and after it (and S1 near each, for networks that read S1).
    gapfill interpolates each pixel linearly in time between the nearest clear observations
    before and after the date (the nearest one at the ends of the series). A checkpoint runs its
    network in overlapping windows (GPU when there is one).

    What is clear is one decision (the clear policy): the scene's own mask combined with the
    built-in detector's that index made, a 3 px buffer around cloud and shadow, and the temporal
    test across the inputs (dates within 20 days). --mask-source,
    --buffer, --unclassified, --snow, --temporal, --temporal-days, --strict and --as-decoded change
    it; the run summary says which policy was used and how many pixels each rule removed.

    Writes uint16 reflectance x 10000 (nodata 0), 512 x 512 tiles, ZSTD, on the S2 grid, plus a
    status sidecar. Files appear under their final name only when complete.

    Several tiles or dates (every S2 tile of the catalog when no --tile is given and --out is a
    folder) run as tasks, one per tile-date, on a Dask cluster: a local one by default, or
    --scheduler ADDRESS. A rerun skips the outputs that are complete and redoes the rest; a failing
    tile-date stops the run, or with --keep-going is reported while the others go on. One line per
    tile-date, a JSON report (OUT/cloudclear_run.json), exit 0 only when every one is done.

    --hide MASK checks a method on a clear date: the mask's cloud and shadow pixels (another
    date's real clouds) are taken from the date's own clear pixels, reconstructed, and can be
    scored against the date's own file with `cloudclear score --mask MASK`.

    \b
    Examples:
      cloudclear infer -c out/sample.gpkg -d 2022-06-02 -o out/32TPS_20220602.tif
      cloudclear infer -c out/sample.gpkg -d 2022-06-15 -o out/hidden.tif \\
          --hide sample_tiles/32TPS/S2_L2A_T32TPS_20220617_SCL.tif
      cloudclear infer -c out/sample.gpkg -d 2022-06-01..2022-06-30 --every 5 \\
          -o out/series --keep-going
    """
    # Before torch allocates: huge pages for its large CPU tensors (activations). A network's
    # window on the CPU then takes ~10x fewer page faults and ~1.15x less time, values unchanged.
    # Local Dask workers inherit it.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from cloudclear.catalog import Catalog
    from cloudclear.inference.jobs import check_spec
    from cloudclear.inference.jobwork import MethodSpec, cached_method
    from cloudclear.inference.pipeline import InferOptions
    from cloudclear.inference.pipeline import infer as run_infer

    box = parse_floats(bbox, 4, "--bbox")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, not {device!r}")
    if batch < 1 or strip_rows < 1 or neighbours < 1 or every < 1:
        raise typer.BadParameter("--batch, --strip-rows, --neighbours and --every must be >= 1")
    memory = None
    if window_memory is not None:
        try:
            memory = parse_memory(window_memory)
        except ValueError as exc:
            raise typer.BadParameter(f"--window-memory: {exc}") from None
    policy = clear_policy(
        buffer,
        unclassified,
        snow,
        strict,
        temporal,
        as_decoded=as_decoded,
        source=mask_source,
        temporal_days=temporal_days,
    )
    dates = expand_dates(date, every)
    band_list = parse_bands(bands)
    if workers is not None and workers < 1:
        raise typer.BadParameter("--workers must be >= 1")
    cat = Catalog.open(catalog)
    spec = MethodSpec(
        method,
        neighbours=neighbours,
        max_days=max_days,
        max_cloud=max_cloud,
        bands=tuple(band_list) if band_list else None,
        device=device,
        window=window,
        batch=batch,
        window_memory=memory,
    )
    tiles = list(dict.fromkeys(tile or []))
    jobs = JobChoice(scheduler, workers, keep_going, report_path)
    many = len(dates) > 1 or len(tiles) > 1 or jobs.asked or (not tiles and _every_tile(cat, out, grid))
    # Several tile-dates: the method is checked here before any work, loaded once in this process's
    # cache, which the runner's check of every tile-date's inputs then reuses.
    m = cached_method(check_spec(spec, jobs.scheduler or "local")) if many else spec.load()
    options = InferOptions(
        keep_observed=keep_observed,
        strip_rows=strip_rows,
        overwrite=overwrite,
        cog=cog,
        status=status,
        bbox=box,  # type: ignore[arg-type]
        progress=progress(),
        clear=policy,
        exclude=tuple(exclude or ()),
        hide=str(hide) if hide is not None else None,
    )

    def report(r: Any) -> None:
        if as_json:
            return
        total = max(r.width * r.height, 1)
        shown = os.path.relpath(r.path) if r.path.is_relative_to(Path.cwd()) else r.path
        typer.echo(
            f"{r.date.date()}  {shown}  observed {100 * r.observed / total:.1f} %  "
            f"reconstructed {100 * r.reconstructed / total:.1f} %  nodata {100 * r.nodata / total:.1f} %  "
            f"({r.width} x {r.height}, {r.seconds:.1f} s, {r.device})"
        )
        for i in r.inputs:
            cloud = "-" if i["cloud_pct"] is None else f"{i['cloud_pct']:.0f} %"
            typer.echo(f"    {i['slot']:<6} {i['scene_id']}  {i['days']:+.1f} d  cloud {cloud}")
        for note in r.notes:
            typer.echo(f"    note: {note}")

    kinds = _series_kinds(series)
    if many:
        run = _run_jobs(cat, dates, spec, out, tiles, grid, options, jobs, as_json)
        written = [r.task.path for r in run.tasks if r.status in ("done", "skipped")]
        if kinds and written:
            _write_series(written, out, kinds, as_json)
        if not run.ok:
            raise typer.Exit(1)
        return
    one = tiles[0] if tiles else None
    result = interruptible(
        lambda: run_infer(cat, dates, m, out, tile=one, options=options, on_result=report, grid=grid), "output"
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        n = len(result.results)
        secs = sum(r.seconds for r in result.results)
        px = sum(r.width * r.height for r in result.results)
        typer.echo(f"{n} date(s), {px / 1e6:.1f} Mpx in {secs:.1f} s ({px / 1e6 / max(secs, 1e-9):.1f} Mpx/s)")
    if kinds:
        _write_series([str(r.path) for r in result.results], out, kinds, as_json)


def _series_kinds(text: str | None) -> tuple[str, ...]:
    """The kinds ``--series`` names (``stac``, ``zarr``), checked before any work."""
    from cloudclear.inference.series import SERIES_KINDS

    if not text:
        return ()
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in SERIES_KINDS]
    if bad or not kinds:
        named = ", ".join(bad) if bad else repr(text)
        raise typer.BadParameter(f"--series: {named}: choose from {', '.join(SERIES_KINDS)}")
    return kinds


def _write_series(outputs: list[str], out: Path, kinds: tuple[str, ...], as_json: bool) -> None:
    """The series of the run's outputs, in OUT when it is a folder, else beside the outputs."""
    from cloudclear.inference.series import write_series

    folder = out if out.is_dir() else Path(os.path.commonpath([str(Path(p).parent) for p in outputs]))
    res = write_series(outputs, folder, kinds, progress=progress())
    if as_json:
        typer.echo(json.dumps({"series": res.to_dict()}, indent=2))
        return
    for place in res.places:
        made = ", ".join(str(p) for p in (place.zarr, place.collection) if p is not None)
        typer.echo(f"series  {place.label}  {len(place.outputs)} date(s): {made}")
    if res.catalog is not None:
        typer.echo(f"series  STAC catalog: {res.catalog}")


@dataclass(frozen=True)
class JobChoice:
    """How the tile-dates of a run are scheduled (``--scheduler``, ``--workers``, ``--keep-going``,
    ``--report``)."""

    scheduler: str | None = None
    workers: int | None = None
    keep_going: bool = False
    report: Path | None = None

    @property
    def asked(self) -> bool:
        return self.scheduler is not None or self.workers is not None or self.keep_going or self.report is not None


def _names_one_file(out: Path) -> bool:
    from cloudclear.inference.jobs import PLACEHOLDERS

    text = str(out)
    return out.suffix.lower() in (".tif", ".tiff") and not out.is_dir() and not any(p in text for p in PLACEHOLDERS)


def _every_tile(cat: Catalog, out: Path, grid: str | None) -> bool:
    """No --tile, several S2 tiles in the catalog and an output that is no single file: every tile.
    (With one file named, the single-date run refuses: "choose one with --tile".)"""
    return grid is None and len(cat.places("S2")) > 1 and not _names_one_file(out)


def _run_jobs(
    cat: Catalog,
    dates: list[str],
    spec: MethodSpec,
    out: Path,
    tiles: list[str],
    grid: str | None,
    options: InferOptions,
    jobs: JobChoice,
    as_json: bool,
) -> Any:
    """Several tile-dates (or a scheduler asked for): plan them, run them as tasks, one line each."""
    from cloudclear.inference.jobs import PLACEHOLDERS, plan_tasks, run_tasks

    tasks = plan_tasks(cat, dates, spec.method, out, tiles=tiles or None, grid=grid)
    scheduler = jobs.scheduler or ("local" if len(tasks) > 1 else "serial")
    report_path = jobs.report
    if report_path is None and not _names_one_file(out) and not any(p in str(out) for p in PLACEHOLDERS):
        report_path = out / "cloudclear_run.json"

    def shown(path: str) -> str:
        p = Path(path)
        return os.path.relpath(p) if p.is_relative_to(Path.cwd()) else str(p)

    def line(r: Any) -> None:
        if as_json:
            return
        where = f"{r.task.tile}  {r.task.date}"
        if r.status == "failed":
            typer.echo(f"cloudclear: error: {r.task.tile} {r.task.date}: {r.error}", err=True)
        elif r.status == "skipped":
            typer.echo(f"skipped  {where}  {shown(r.task.path)}  (complete)")
        else:
            d = r.result
            total = max(d["width"] * d["height"], 1)
            px = d["pixels"]
            typer.echo(
                f"done     {where}  {shown(r.task.path)}  observed {100 * px['observed'] / total:.1f} %  "
                f"reconstructed {100 * px['reconstructed'] / total:.1f} %  nodata {100 * px['nodata'] / total:.1f} %"
                f"  ({r.seconds:.1f} s, {r.worker})"
            )

    run = interruptible(
        lambda: run_tasks(
            cat,
            tasks,
            spec,
            options,
            scheduler=scheduler,
            workers=jobs.workers,
            keep_going=jobs.keep_going,
            progress=options.progress,
            report=report_path,
            on_result=line,
        ),
        "output",
        "no partial output was left; run the same command again to finish the rest",
    )
    if as_json:
        typer.echo(json.dumps(run.to_dict(), indent=2))
    else:
        done = [r for r in run.tasks if r.status == "done"]
        px = sum(r.result["width"] * r.result["height"] for r in done if r.result)
        what = "date(s)" if len({t.tile for t in tasks}) == 1 else "tile-date(s)"
        counts = ", ".join(f"{run.count(s)} {s}" for s in ("done", "skipped", "failed", "not run") if run.count(s))
        typer.echo(f"{counts}; report: {shown(str(report_path))}" if report_path else counts)
        secs = run.seconds
        typer.echo(
            f"{len(done)} {what}, {px / 1e6:.1f} Mpx in {secs:.1f} s ({px / 1e6 / max(secs, 1e-9):.1f} Mpx/s, "
            f"{run.workers} worker(s), {run.scheduler})"
        )
    return run
