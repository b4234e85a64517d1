"""The ``cloudclear`` command line: parse, call one library function, print.

Library modules (rasterio, geopandas, torch...) are imported inside the commands so that
``cloudclear --help`` stays instant.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cloudclear import __version__
from cloudclear.errors import CloudClearError

app = typer.Typer(
    name="cloudclear",
    help="Remove clouds from whole Sentinel-2 tiles, helped by Sentinel-1.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(func: F) -> F:
    """Turn a CloudClearError into one line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CloudClearError as exc:
            typer.echo(f"cloudclear: error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cloudclear {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (repeat for debug).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Remove clouds from whole Sentinel-2 tiles, helped by Sentinel-1."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="cloudclear: %(levelname)s: %(message)s", stream=sys.stderr)


def _progress() -> bool:
    return logging.getLogger().getEffectiveLevel() <= logging.WARNING and sys.stderr.isatty()


def _print_skipped(skipped: Any, limit: int) -> None:
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        reason = s.reason.split(": ", 1)[1] if s.reason.startswith(s.path) else s.reason
        by_reason.setdefault(reason, []).append(s.path)
    typer.echo(f"skipped {len(skipped)} file(s):", err=True)
    for reason, paths in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = paths if limit <= 0 else paths[:limit]
        for p in shown:
            typer.echo(f"  {p}: {reason}", err=True)
        if len(paths) > len(shown):
            typer.echo(f"  ... and {len(paths) - len(shown)} more: {reason}", err=True)


def _check_detector(name: str, option: str) -> None:
    """A detector name not in the registry is a usage error (exit 2) listing the known ones."""
    from cloudclear.detect.pixels import DETECTORS

    if name not in DETECTORS:
        raise typer.BadParameter(f"{name!r}: choose one of {', '.join(DETECTORS)}", param_hint=option)


@app.command()
@_user_errors
def index(
    directory: Annotated[Path, typer.Argument(help="Folder to scan (recursively) for S2, S1 and mask rasters.")],
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", "-c", help="Catalog to write. [default: DIR/cloudclear.gpkg]"),
    ] = None,
    date_pattern: Annotated[
        str | None,
        typer.Option(
            "--date-pattern",
            help="Regex for the date in file names, with named groups 'date' (YYYYMMDD) and "
            "optional 'time' (HHMMSS). Default: YYYYMMDD[THHMMSS] anywhere in the name, then the "
            "DATETIME / TIFFTAG_DATETIME tags.",
        ),
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Reopen every file, ignoring the previous catalog.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    show_skipped: Annotated[int, typer.Option("--show-skipped", help="Skipped files listed per reason (0 = all).")] = 5,
    detect: Annotated[
        str | None,
        typer.Option(
            "--detect",
            help="Compute a cloud/shadow mask with this detector (builtin, s2cloudless) for every S2 "
            "scene without one; masks go to CATALOG_masks/ and are reused while the scene is unchanged.",
        ),
    ] = None,
) -> None:
    """Catalog the scenes in DIR: sensor, tile, date, footprint, cloud and nodata cover.

    Writes a GeoPackage (layer 'scenes', footprints in EPSG:4326; open it in QGIS or geopandas)
    and an rtree index beside it. Re-running reads only new or changed files. Files that are not
    usable scenes are listed on stderr with the reason.
    """
    from cloudclear.catalog import build_index
    from cloudclear.errors import EmptyCatalogError

    if detect is not None:
        _check_detector(detect, "--detect")

    try:
        result = build_index(
            directory, catalog, date_pattern=date_pattern, rebuild=rebuild, progress=_progress(), detect=detect
        )
    except EmptyCatalogError as exc:
        _print_skipped(exc.skipped, show_skipped)
        raise
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_skipped(result.skipped, show_skipped)
    s = result.summary
    typer.echo(
        f"{result.scenes} scenes from {result.files_seen} raster files in {result.seconds:.1f} s "
        f"({result.files_opened} opened, {result.scenes_computed} computed, "
        f"{result.scenes_reused} unchanged)"
    )
    typer.echo(f"catalog: {result.catalog_path}")
    if result.masks_detected:
        typer.echo(f"  detected masks: {result.masks_detected} scene(s), in {result.catalog_path.stem}_masks/")
    for row in s["by_sensor_tile"]:
        typer.echo(f"  {row['sensor']}  tile {row['tile']:<6} {row['scenes']:>6} scenes")
    typer.echo(f"  dates: {s['first'][:10]} .. {s['last'][:10]}")
    dist = "  ".join(f"{k}: {v}" for k, v in s["s2_cloud_distribution"].items())
    typer.echo(f"  S2 cloud cover: {dist}")
    if s["s2_with_s1"]:
        typer.echo(f"  S2 with an S1 over them: {s['s2_with_s1']} (median gap {s['s1_gap_hours_median']:.1f} h)")


def _parse_bbox(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected minx,miny,maxx,maxy") from None
    if len(vals) != 4:
        raise typer.BadParameter(f"{text!r}: expected 4 numbers minx,miny,maxx,maxy")
    return vals


def _parse_range(text: str | None) -> tuple[float | None, float | None]:
    if text is None:
        return None, None
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            return None, float(lo)
        return (float(lo) if lo else None), (float(hi) if hi else None)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected MIN:MAX, :MAX, MIN: or MAX (percent)") from None


@app.command()
@_user_errors
def query(
    catalog: Annotated[Path, typer.Argument(help="A catalog (.gpkg) or the folder that holds cloudclear.gpkg.")],
    bbox: Annotated[
        str | None,
        typer.Option("--bbox", help="minx,miny,maxx,maxy in --bbox-crs (default lon/lat)."),
    ] = None,
    bbox_crs: Annotated[str, typer.Option("--bbox-crs", help="CRS of --bbox.")] = "EPSG:4326",
    start: Annotated[str | None, typer.Option("--start", help="First date, YYYY-MM-DD[THH:MM:SS].")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last date (inclusive).")] = None,
    cloud: Annotated[str | None, typer.Option("--cloud", help="Cloud % range MIN:MAX (e.g. 0:20, :10, 50:).")] = None,
    sensor: Annotated[str | None, typer.Option("--sensor", help="S2 or S1.")] = None,
    tile: Annotated[str | None, typer.Option("--tile", help="MGRS tile id, e.g. 31UFQ.")] = None,
    with_unmasked: Annotated[
        bool,
        typer.Option("--with-unmasked/--masked-only", help="With --cloud, keep scenes of unknown cloud %."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print records as JSON.")] = False,
) -> None:
    """List catalogued scenes by place, date range, cloud range, sensor and tile."""
    from cloudclear.catalog import Catalog

    lo, hi = _parse_range(cloud)
    cat = Catalog.open(catalog)
    hits = cat.query(
        _parse_bbox(bbox),
        bbox_crs=bbox_crs,
        start=start,
        end=end,
        cloud_min=lo,
        cloud_max=hi,
        sensor=sensor,
        tile=tile,
        include_unmasked=with_unmasked,
    )
    cols = [
        "scene_id",
        "sensor",
        "tile",
        "datetime",
        "cloud_pct",
        "nodata_pct",
        "bands",
        "nearest_s1",
        "s1_gap_hours",
    ]
    if as_json:
        records = json.loads(hits[cols + ["crs", "files"]].to_json(orient="records", date_format="iso"))
        typer.echo(json.dumps(records, indent=2))
        return
    typer.echo(f"{'datetime':<20} {'sensor':<6} {'tile':<6} {'cloud%':>7} {'nodata%':>7}  scene")
    for _, r in hits.iterrows():
        cloud_txt = "-" if r["cloud_pct"] is None or r["cloud_pct"] != r["cloud_pct"] else f"{r['cloud_pct']:.1f}"
        typer.echo(
            f"{r['datetime'].strftime('%Y-%m-%dT%H:%M:%S'):<20} {r['sensor']:<6} "
            f"{str(r['tile'] or '-'):<6} "
            f"{cloud_txt:>7} {r['nodata_pct']:>7.1f}  {r['scene_id']}"
        )
    counts = Counter(hits["sensor"])
    typer.echo(
        f"{len(hits)} scene(s)" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})" if counts else "")
    )


@app.command()
@_user_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the series into (S2/, S1/, truth/).")],
    size: Annotated[int | None, typer.Option("--size", help="Square size in pixels (sets height and width).")] = None,
    height: Annotated[int, typer.Option("--height", help="Rows.")] = 512,
    width: Annotated[int, typer.Option("--width", help="Columns.")] = 512,
    dates: Annotated[int, typer.Option("--dates", help="Number of S2 dates.")] = 12,
    interval: Annotated[int, typer.Option("--interval", help="Days between S2 dates (on the 5-day grid).")] = 15,
    start: Annotated[str, typer.Option("--start", help="First S2 date, YYYY-MM-DD.")] = "2021-04-01",
    tile: Annotated[str, typer.Option("--tile", help="MGRS tile id; sets the UTM zone.")] = "31UFQ",
    bands: Annotated[str, typer.Option("--bands", help="Comma list of S2 bands (B02..B12, B8A).")] = "B02,B03,B04,B08",
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same files.")] = 0,
    s1: Annotated[bool, typer.Option("--s1/--no-s1", help="Write Sentinel-1 VV/VH too.")] = True,
) -> None:
    """Write a realistic synthetic S2 (+ S1) time series with cloud masks and cloud-free truth."""
    from cloudclear.synth import generate_series

    if size is not None:
        height = width = size
    if height < 16 or width < 16:
        raise typer.BadParameter("height and width must be at least 16 pixels")
    band_list = tuple(b.strip().upper() for b in bands.split(",") if b.strip())
    series = generate_series(
        out,
        height=height,
        width=width,
        n_dates=dates,
        start=start,
        interval_days=interval,
        tile=tile,
        bands=band_list,
        s1=s1,
        seed=seed,
        progress=_progress(),
    )
    typer.echo(
        f"wrote {len(series.s2)} S2 dates, {len(series.s1)} S1 dates, {height} x {width} px, "
        f"{series.crs}, into {series.root}"
    )
    for when, pct in zip(series.s2_dates, series.cloud_pct, strict=True):
        typer.echo(f"  {when:%Y-%m-%d}  cloud {pct:5.1f} %")


def _expand(patterns: list[str] | None, what: str) -> list[str]:
    """Expand quoted globs (the shell leaves them when nothing matches or when quoted)."""
    import glob

    out: list[str] = []
    for pat in patterns or []:
        if any(c in pat for c in "*?["):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise typer.BadParameter(f"{pat}: no {what} matches this pattern")
            out.extend(hits)
        else:
            out.append(pat)
    return out


_SCORE_HELP = """Score predictions against a cloud-free reference: MAE, RMSE, PSNR, SSIM, SAM.

\b
  cloudclear score PRED REF                      one prediction
  cloudclear score --ref REF PRED1 PRED2 ...     compare methods (or a glob: 'out/*.tif')
  cloudclear score --ref 'truth/*.tif' 'pred/*.tif' --mask 'S2/*_SCL.tif'
                                                 a sequence: pairs by sorted order
\b
Values: reflectance x = DN * scale + offset (the file's scale/offset, its BOA_ADD_OFFSET and
QUANTIFICATION_VALUE tags, else DN / --scale), clipped to [0, peak]. Over the scored pixels P
and bands b (per band: over P only):
  MAE  = mean |p - r|
  RMSE = sqrt(mean (p - r)^2)
  PSNR = 20 log10(peak / RMSE)   (overall: from the MSE pooled over bands)
  SSIM = mean of (2 mu_p mu_r + C1)(2 cov_pr + C2) / ((mu_p^2 + mu_r^2 + C1)(var_p + var_r + C2)),
         C1 = (0.01 peak)^2, C2 = (0.03 peak)^2, local statistics in the --ssim-window, over
         the pixels of P whose window lies inside the image and holds no nodata; then the
         mean over bands
  SAM  = mean over P of arccos(<p, r> / (|p| |r|)), the angle between the spectra
\b
Pixels (--pixels, from the input date's cloud mask --mask): all; cloudy (cloud, thin cloud,
shadow); clear (clear, snow); occluded (cloudy or nodata in the input, as U-TILISE);
observed (= clear). --ref-mask leaves out pixels the reference's own mask does not call
clear. Several images combine pooled (one sum over all pixels) or per image (mean of figures).
Defaults follow U-TILISE: reflectance / 10000, peak 1, the masked (cloudy) pixels when a
mask is given, SAM in degrees.
"""


@app.command(help=_SCORE_HELP)
@_user_errors
def score(
    paths: Annotated[
        list[str],
        typer.Argument(help="Predictions (globs allowed); without --ref, exactly PRED REF.", metavar="FILES"),
    ],
    ref: Annotated[
        list[str] | None,
        typer.Option("--ref", "-r", help="Reference(s): one for all predictions, or one per prediction."),
    ] = None,
    mask: Annotated[
        list[str] | None,
        typer.Option(
            "--mask", "-m", help="The input date's cloud mask (SCL, CLM, CLP...): one, or one per prediction."
        ),
    ] = None,
    ref_mask: Annotated[
        list[str] | None,
        typer.Option("--ref-mask", help="The reference's own mask; its non-clear pixels are left out."),
    ] = None,
    pixels: Annotated[
        str,
        typer.Option("--pixels", help="auto | all | cloudy | clear | occluded | observed (auto: cloudy with --mask)."),
    ] = "auto",
    aggregate: Annotated[str, typer.Option("--aggregate", help="pooled | per-image, for several images.")] = "pooled",
    bands: Annotated[
        str | None, typer.Option("--bands", help="Bands to compare, by name or 1-based index: B02,B03,B04,B08.")
    ] = None,
    peak: Annotated[float, typer.Option("--peak", help="PSNR peak and SSIM range (1.0; 10000 with --scale 1).")] = 1.0,
    scale: Annotated[
        float, typer.Option("--scale", help="Reflectance = DN / scale, for files whose metadata give no scale.")
    ] = 10000.0,
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="Clip reflectance to [0, peak].")] = True,
    sam_units: Annotated[str, typer.Option("--sam", help="SAM units: deg | rad.")] = "deg",
    nodata: Annotated[
        float | None, typer.Option("--nodata", help="Value to ignore in both rasters (default: each file's nodata).")
    ] = None,
    ssim_window: Annotated[
        str, typer.Option("--ssim-window", help="gaussian (11 x 11, sigma 1.5) | uniform (7 x 7, sample covariance).")
    ] = "gaussian",
    reproject: Annotated[
        bool,
        typer.Option(
            "--reproject", help="Warp predictions onto the reference grid (bilinear) when CRS or resolution differ."
        ),
    ] = False,
    mask_convention: Annotated[
        str | None, typer.Option("--mask-convention", help="SCL | CLM | CLP | CLDPRB, when a mask's name does not say.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (overall mae, rmse, psnr, ssim, sam, then per band).")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV, one row per prediction and band.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG: RGB quicklooks, error maps, per-band bars.")
    ] = None,
    input_path: Annotated[
        str | None, typer.Option("--input", help="The cloudy input, shown in the --plot figure.")
    ] = None,
    block_rows: Annotated[int, typer.Option("--block-rows", help="Rows read per strip (memory grows with it).")] = 512,
) -> None:
    import os

    # Every block is read once, so GDAL's default block cache (5 % of RAM) would only hold
    # memory; 512 MiB still holds a strip of a 13-band tile. A user's own setting wins.
    os.environ.setdefault("GDAL_CACHEMAX", "512")
    from cloudclear.errors import ScoreError
    from cloudclear.metrics import ScoreOptions, pair_up, score_many

    files = _expand(paths, "prediction")
    refs = _expand(ref, "reference")
    if not refs:
        if len(files) != 2:
            raise typer.BadParameter("give PRED REF, or the reference with --ref REF and any number of predictions")
        files, refs = files[:1], files[1:]
    if as_json and as_csv:
        raise typer.BadParameter("--json and --csv: choose one")
    try:
        options = ScoreOptions(
            pixels=pixels,
            aggregate=aggregate,
            scale=scale,
            peak=peak,
            clip=clip,
            sam_units=sam_units,
            nodata=nodata,
            bands=tuple(b for b in bands.split(",") if b.strip()) if bands else None,
            ssim_window=ssim_window,
            reproject=reproject,
            block_rows=block_rows,
        )
    except ScoreError as exc:
        raise typer.BadParameter(str(exc)) from None
    pairs = pair_up(files, refs, _expand(mask, "mask"), _expand(ref_mask, "reference mask"))
    result = score_many(pairs, options, mask_convention=mask_convention, progress=_progress(), views=800 if plot else 0)
    if plot is not None:
        from cloudclear.plots import plot_comparison

        plot_comparison(plot, result, pairs, input_path=input_path, mask_convention=mask_convention)
    if as_json:
        typer.echo(result.to_json())
    elif as_csv:
        typer.echo(result.to_csv(), nl=False)
    else:
        typer.echo(result.to_text())
    if plot is not None:
        typer.echo(f"figure: {plot}", err=True)


def _dates(values: list[str], every: int) -> list[str]:
    from cloudclear.inference.select import date_range

    out: list[str] = []
    for v in values:
        if ".." in v:
            a, _, b = v.partition("..")
            out += [d.strftime("%Y-%m-%d") for d in date_range(a, b, every)]
        else:
            out.append(v)
    return out


def _floats(text: str | None, n: int, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise typer.BadParameter(f"{name} takes {n} comma-separated numbers, not {text!r}")
    return values


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run can remove its temporary files."""


R = TypeVar("R")


def _interruptible(call: Callable[[], R], what: str, message: str | None = None) -> R:
    """Run ``call`` with SIGTERM raised as an exception, so its temporaries are removed; Ctrl-C or
    SIGTERM then exit 130 with one line saying no partial ``what`` was left (or ``message``)."""
    import signal

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return call()
    except (KeyboardInterrupt, _Terminated):
        typer.echo(f"cloudclear: error: interrupted; {message or f'no partial {what} was left'}", err=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@_user_errors
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
            help="Output GeoTIFF for one date; for several, a folder (files S2_T{tile}_{YYYYMMDD}_{method}.tif) "
            "or a path containing {date}.",
        ),
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method", "-m", help="gapfill, a .safetensors checkpoint, or a model name (see `cloudclear models`)."
        ),
    ] = "gapfill",
    tile: Annotated[str | None, typer.Option("--tile", "-t", help="S2 tile when the catalog holds several.")] = None,
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
    window: Annotated[int | None, typer.Option("--window", help="Network window side. [default: the card's]")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Windows per network call.")] = 8,
    strip_rows: Annotated[int, typer.Option("--strip-rows", help="Rows read per strip (memory grows with it).")] = 512,
    cog: Annotated[bool, typer.Option("--cog", help="Write the output as a Cloud-Optimized GeoTIFF.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Reconstruct cloud-free S2 images of a tile for one or more dates.

    Inputs are chosen from the catalog: the date's own acquisition (if any), then the nearest and
    least cloudy S2 scenes before and after it (and S1 near each, for networks that read S1).
    gapfill interpolates each pixel linearly in time between the nearest clear observations
    before and after the date (the nearest one at the ends of the series). A checkpoint runs its
    network in overlapping windows (GPU when there is one).

    Writes uint16 reflectance x 10000 (nodata 0), 512 x 512 tiles, ZSTD, on the S2 grid, plus a
    status sidecar. Files appear under their final name only when complete.

    Example: cloudclear infer -c sample_tiles/T31UFQ -d 2021-05-16 -o out/T31UFQ_20210516.tif
    """
    import os

    os.environ.setdefault("GDAL_CACHEMAX", "512")
    from cloudclear.catalog import Catalog
    from cloudclear.inference.pipeline import InferOptions, infer, load_method

    box = _floats(bbox, 4, "--bbox")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, not {device!r}")
    if batch < 1 or strip_rows < 1 or neighbours < 1 or every < 1:
        raise typer.BadParameter("--batch, --strip-rows, --neighbours and --every must be >= 1")
    dates = _dates(date, every)
    cat = Catalog.open(catalog)
    m = load_method(
        method,
        neighbours=neighbours,
        max_days=max_days,
        max_cloud=max_cloud,
        bands=[b.strip() for b in bands.split(",") if b.strip()] if bands else None,
        device=device,
        window=window,
        batch=batch,
    )
    options = InferOptions(
        keep_observed=keep_observed,
        strip_rows=strip_rows,
        overwrite=overwrite,
        cog=cog,
        status=status,
        bbox=box,  # type: ignore[arg-type]
        progress=_progress(),
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

    result = _interruptible(lambda: infer(cat, dates, m, out, tile=tile, options=options, on_result=report), "output")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    n = len(result.results)
    secs = sum(r.seconds for r in result.results)
    px = sum(r.width * r.height for r in result.results)
    typer.echo(f"{n} date(s), {px / 1e6:.1f} Mpx in {secs:.1f} s ({px / 1e6 / max(secs, 1e-9):.1f} Mpx/s)")


@app.command()
@_user_errors
def mask(
    scenes: Annotated[
        list[Path], typer.Argument(help="S2 scene files (a stack, or one file per band) or folders to search.")
    ],
    detector: Annotated[str, typer.Option("--detector", help="builtin (no extra package) or s2cloudless.")] = "builtin",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="A .tif (one scene) or a folder for SCENE_ID_SCL.tif files. [default: beside each scene, "
            "where 'cloudclear index' pairs the mask with its scene]",
        ),
    ] = None,
    dilate_cloud: Annotated[int, typer.Option("--dilate-cloud", help="Grow clouds by N pixels (SCL 8).", min=0)] = 3,
    dilate_shadow: Annotated[int, typer.Option("--dilate-shadow", help="Grow shadows by N pixels.", min=0)] = 3,
    shadows: Annotated[bool, typer.Option("--shadows/--no-shadows", help="Find cloud shadows.")] = True,
    sun: Annotated[
        str | None,
        typer.Option(
            "--sun",
            help="ZENITH,AZIMUTH in degrees, instead of the scene's angle tags or its time and place.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing mask files.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Compute cloud and cloud-shadow masks of S2 scenes and write them as Sen2Cor SCL GeoTIFFs.

    Codes: 0 nodata, 3 cloud shadow, 4 vegetation, 5 not vegetated, 6 water, 8 cloud (dilation
    ring), 9 cloud, 10 thin cirrus, 11 snow; the table is in the file's tags. The builtin detector
    needs B02, B03, B04 and B08 (or B8A) and uses B11, B12, B10 when present.
    """
    from cloudclear.detect.scene import MaskOptions, mask_scenes
    from cloudclear.detect.spatial import SpatialOptions
    from cloudclear.detect.sun import SunAngles

    _check_detector(detector, "--detector")
    angles = None
    if sun is not None:
        zen, az = _floats(sun, 2, "--sun") or (0.0, 0.0)
        try:
            angles = SunAngles(zen, az, "parameters")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--sun") from None
    options = MaskOptions(
        detector=detector,
        spatial=SpatialOptions(cloud_dilation=dilate_cloud, shadow_dilation=dilate_shadow, shadows=shadows),
        sun=angles,
        overwrite=overwrite,
        progress=_progress(),
    )
    results = mask_scenes(scenes, out, options)
    if as_json:
        rows = []
        for r in results:
            row = {k: (str(v) if isinstance(v, Path) else v) for k, v in r.__dict__.items() if k != "sun"}
            row["sun"] = (
                None if r.sun is None else {"zenith": r.sun.zenith, "azimuth": r.sun.azimuth, "source": r.sun.source}
            )
            rows.append(row)
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in results:
        sun_txt = (
            "unknown" if r.sun is None else f"zenith {r.sun.zenith:.1f}, azimuth {r.sun.azimuth:.1f} ({r.sun.source})"
        )
        typer.echo(
            f"{r.path}: cloud {r.cloud_pct:.1f} %, shadow {r.shadow_pct:.1f} %, snow {r.snow_pct:.1f} %, "
            f"nodata {r.nodata_pct:.1f} % ({r.width} x {r.height}, {r.seconds:.1f} s)"
        )
        typer.echo(f"    sun: {sun_txt}; shadow direction from {r.shadow_source}")


layouts_app = typer.Typer(
    name="layouts",
    help="List the acquisition layout presets, or show one as a TOML file to copy and edit.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(layouts_app)


@layouts_app.callback()
def layouts(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the presets as JSON.")] = False,
) -> None:
    """List the acquisition layout presets: slots, windows (hours from the reference), cloud ranges.

    Example: cloudclear layouts show OS2 > my_layout.toml
    """
    if ctx.invoked_subcommand is not None:
        return
    from cloudclear.layouts import PRESETS

    if as_json:
        typer.echo(json.dumps({k: v.to_dict() for k, v in PRESETS.items()}, indent=2))
        return
    for name, lay in PRESETS.items():
        typer.echo(f"{name}: {lay.description}")
        for line in lay.describe():
            typer.echo(f"    {line}")


@layouts_app.command("show")
@_user_errors
def layouts_show(
    name: Annotated[str, typer.Argument(help="A preset name (see `cloudclear layouts`) or a layout .toml file.")],
) -> None:
    """Print a layout as a TOML file (a preset, or a file after validation) to copy and edit."""
    from cloudclear.layouts import load_layout

    typer.echo(load_layout(name).to_toml(), nl=False)


def _split_fractions(text: str) -> tuple[float, float, float]:
    a, b, c = _floats(text, 3, "--split") or (0.0, 0.0, 0.0)
    if min(a, b, c) < 0 or a <= 0:
        raise typer.BadParameter(f"takes 3 shares >= 0 with train > 0, not {text!r}", param_hint="--split")
    return a, b, c


@app.command()
@_user_errors
def sample(
    catalog: Annotated[
        Path, typer.Option("--catalog", "-c", help="Catalog written by `cloudclear index` (or its folder).")
    ],
    layout: Annotated[str, typer.Option("--layout", "-l", help="A preset (see `cloudclear layouts`) or a .toml file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Patch store folder to write.")],
    patch_size: Annotated[int, typer.Option("--patch-size", "-p", help="Patch side in pixels.", min=8)] = 256,
    count: Annotated[int, typer.Option("--count", "-n", help="Samples to write.", min=1)] = 1000,
    simulate: Annotated[
        str | None,
        typer.Option(
            "--simulate",
            help="S2 slots whose gaps are simulated: a clear acquisition with a real mask pasted on it, "
            "truth kept (comma-separated, or 'all'). A simulated reference becomes the target.",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="train,val,test shares.")] = "0.8,0.1,0.1",
    block: Annotated[int, typer.Option("--block", help="Split block side, in patches.", min=1)] = 4,
    block_days: Annotated[
        float | None, typer.Option("--block-days", help="Also split by periods of this many days.")
    ] = None,
    per_location: Annotated[
        int | None, typer.Option("--per-location", "-k", help="At most K samples per patch location.", min=1)
    ] = None,
    seasonal: Annotated[
        bool, typer.Option("--seasonal", help="Equal draws per season (DJF, MAM, JJA, SON) of the reference date.")
    ] = False,
    stride: Annotated[
        int | None, typer.Option("--stride", help="Step between patch origins. [default: the patch size]", min=1)
    ] = None,
    bands: Annotated[
        str | None, typer.Option("--bands", help="S2 bands, e.g. B02,B03,B04,B08. [default: those all scenes have]")
    ] = None,
    s1: Annotated[
        bool, typer.Option("--s1/--no-s1", help="--no-s1 drops the layout's S1 (optical only, for series without S1).")
    ] = True,
    s1_max_gap: Annotated[
        float | None, typer.Option("--s1-max-gap", help="Replace every slot's largest S1-S2 gap (hours).")
    ] = None,
    tile: Annotated[str | None, typer.Option("--tile", help="Sample only this MGRS tile.")] = None,
    start: Annotated[str | None, typer.Option("--start", help="First reference date (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last reference date (YYYY-MM-DD).")] = None,
    dem: Annotated[Path | None, typer.Option("--dem", help="DEM raster for a layout's DEM slot.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same store.")] = 0,
    workers: Annotated[int, typer.Option("--workers", help="Reading threads.", min=1)] = 2,
    compression: Annotated[
        int, typer.Option("--compression", help="zlib level of the store (1 fastest, 9 smallest).", min=1, max=9)
    ] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build training patches from an acquisition layout and write a patch store.

    Patch locations come from the catalog's grids; for each reference scene and location the
    per-cell cloud cover and the rtree find acquisitions for every slot. Locations are split into
    train / val / test by blocks that never overlap. The store holds uint16 patches (compressed),
    masks, pasted gaps and a samples.gpkg table; cloudclear.sampling.PatchDataset reads it.

    Example: cloudclear sample -c sample_tiles/T31UFQ -l sequence -p 128 -n 40 -o out/seq
    """
    import os

    # Patches are read once each: a large GDAL block cache only costs memory.
    os.environ.setdefault("GDAL_CACHEMAX", "256")
    from cloudclear.sampling import SampleOptions
    from cloudclear.sampling import sample as run_sample

    options = SampleOptions(
        patch_size=patch_size,
        count=count,
        stride=stride,
        fractions=_split_fractions(split),
        block=block,
        block_days=block_days,
        per_location=per_location,
        seasonal=seasonal,
        simulate=tuple(s.strip() for s in simulate.split(",") if s.strip()) if simulate else (),
        s1=s1,
        s1_max_gap=s1_max_gap,
        bands=tuple(b.strip() for b in bands.split(",") if b.strip()) if bands else None,
        tile=tile,
        start=start,
        end=end,
        seed=seed,
        dem=str(dem) if dem else None,
        workers=workers,
        compression=compression,
        overwrite=overwrite,
        progress=_progress(),
    )

    result = _interruptible(lambda: run_sample(catalog, layout, out, options), "store")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    shown = os.path.relpath(result.path) if result.path.is_relative_to(Path.cwd()) else result.path
    typer.echo(
        f"{shown}: {result.count} samples of layout {result.layout} "
        f"({result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s; {result.candidates} candidate "
        f"reference x location pairs at {result.locations} locations)"
    )
    typer.echo("    " + ", ".join(f"{k} {v}" for k, v in result.by_split.items()))
    if result.by_season:
        typer.echo("    seasons: " + ", ".join(f"{k} {v}" for k, v in result.by_season.items()))
    for reason, n in sorted(result.rejected.items(), key=lambda kv: -kv[1]):
        typer.echo(f"    skipped {n}: {reason}")
    for note in result.notes:
        typer.echo(f"    note: {note}")


@app.command()
@_user_errors
def train(
    store: Annotated[
        list[Path], typer.Option("--store", "-s", help="Patch store from `cloudclear sample` (repeat to combine).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors; card as .json).")],
    net: Annotated[str, typer.Option("--net", help="Architecture (see `cloudclear models`).")] = "multi-temporal",
    size: Annotated[str, typer.Option("--size", help="Width/depth preset: small, medium, large.")] = "small",
    width: Annotated[int | None, typer.Option("--width", help="Channels at full resolution.", min=1)] = None,
    depth: Annotated[int | None, typer.Option("--depth", help="Poolings (2**depth aligns windows).", min=1)] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="The most epochs.", min=1)] = 40,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Samples per step.", min=1)] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, cosine decay).")] = 2e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 1e-4,
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after N epochs without a better val PSNR.", min=1)
    ] = 10,
    loss_pixels: Annotated[
        str, typer.Option("--loss-pixels", help="gaps: masked L1 on reconstructed pixels; all: every truth pixel.")
    ] = "gaps",
    crop: Annotated[int | None, typer.Option("--crop", help="Training crop side [default: smallest patch].")] = None,
    s1: Annotated[bool | None, typer.Option("--s1/--no-s1", help="Feed S1 [default: when a store has it].")] = None,
    s1_dropout: Annotated[float, typer.Option("--s1-dropout", help="Share of samples trained without S1.")] = 0.2,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.", min=0)] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seeds weights, data order and augmentation.", min=0)] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last epoch.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing checkpoint.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a reconstruction network on patch stores and write a safetensors checkpoint with its card.

    The network's input slots follow the store's layout; inputs are normalised with constants
    measured on the train split. Masked L1 loss, AdamW, cosine schedule; after every epoch the
    val split is scored (PSNR, SSIM, SAM, MAE as `cloudclear score`), the best epoch is kept and a
    resume state is saved beside the checkpoint. CUDA with bf16 autocast when present.

    Example: cloudclear train -s out/os2 --net multi-temporal -o models/mt.safetensors
    """
    from cloudclear.training import TrainOptions, resume_path
    from cloudclear.training import train as run_train

    options = TrainOptions(
        net=net,
        size=size,
        width=width,
        depth=depth,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        loss_pixels=loss_pixels,
        crop=crop,
        s1=s1,
        s1_dropout=s1_dropout,
        workers=workers,
        device=device,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
    )
    show = _progress()

    def report(rec: Any) -> None:
        if not as_json:
            v = rec.val
            typer.echo(
                f"epoch {rec.epoch}: loss {rec.loss:.4f}, val PSNR {v['psnr']} dB, SSIM {v['ssim']}, "
                f"SAM {v['sam']}, MAE {v['mae']} ({rec.samples_per_s:.0f} samples/s)",
                err=True,
            )

    again = f"the last finished epoch is kept in {resume_path(out).name}: continue with --resume"
    result = _interruptible(lambda: run_train(store, out, options, progress=show, on_epoch=report), "", again)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    v = result.card.info.get("val", {})
    typer.echo(
        f"{result.path}: {result.card.architecture} {result.card.options}, {result.parameters:,} parameters, "
        f"best epoch {result.best_epoch} of {len(result.history)}"
        + (" (stopped early)" if result.stopped_early else "")
    )
    typer.echo(f"    val: PSNR {v.get('psnr')} dB, SSIM {v.get('ssim')}, SAM {v.get('sam')} deg, MAE {v.get('mae')}")


@app.command()
@_user_errors
def evaluate(
    store: Annotated[list[Path], typer.Option("--store", "-s", help="Patch store (repeat to pool several).")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="gapfill, or a checkpoint path or name (repeat).")],
    split: Annotated[str, typer.Option("--split", help="train, val, test or all.")] = "test",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Score gapfill and checkpoints on the reconstructed pixels of a store split.

    Every method is scored on the same pixels: valid in the truth, not seen in the input (the
    pasted gaps), and filled by gapfill. Figures are those of `cloudclear score`, pooled.

    Example: cloudclear evaluate -s out/os2 -m gapfill -m models/multi-temporal-small.safetensors
    """
    from cloudclear.nets.card import find_checkpoint
    from cloudclear.training import evaluate as run_evaluate

    methods = [m if m == "gapfill" else str(find_checkpoint(m)) for m in model]
    results = run_evaluate(store, methods, None if split == "all" else split, device=device, progress=_progress())
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    first = results[0]
    typer.echo(
        f"split {split}: {first.samples} samples, {first.pixels:,} reconstructed pixels scored"
        + (f" ({first.unfilled:,} left out: no date saw them)" if first.unfilled else "")
    )
    typer.echo(f"{'method':40s} {'PSNR':>7s} {'SSIM':>6s} {'SAM':>6s} {'MAE':>7s} {'RMSE':>7s}")
    for r in results:
        f = r.figures
        typer.echo(
            f"{Path(r.method).name:40s} {f['psnr'] or float('nan'):7.2f} {f['ssim'] or float('nan'):6.3f} "
            f"{f['sam'] or float('nan'):6.2f} {f['mae'] or float('nan'):7.4f} {f['rmse'] or float('nan'):7.4f}"
        )


@app.command()
@_user_errors
def models(
    folder: Annotated[
        Path | None, typer.Option("--dir", help="Checkpoint folder [default: ./models, then the shipped models].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """List the network architectures and the trained checkpoints (cards only; weights are not loaded)."""
    from cloudclear.nets import DESCRIPTIONS, SIZES
    from cloudclear.nets.card import list_checkpoints

    found = list_checkpoints(folder)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "architectures": DESCRIPTIONS,
                    "sizes": SIZES,
                    "checkpoints": [{"path": str(p), **c.to_dict()} for p, c in found],
                },
                indent=2,
            )
        )
        return
    typer.echo("architectures (cloudclear train --net NAME --size small|medium|large):")
    for name, text in DESCRIPTIONS.items():
        typer.echo(f"  {name:15s} {text}")
    typer.echo("checkpoints:" if found else "checkpoints: none found")
    for path, card in found:
        v = card.info.get("val", {})
        params = card.info.get("training", {}).get("parameters")
        slots = ",".join(s.name for s in card.slots)
        typer.echo(
            f"  {path.stem:28s} {card.architecture:15s} {params or 0:>10,} params  bands {','.join(card.bands)}"
            f"  slots {slots}  val PSNR {v.get('psnr')} dB  ({path})"
        )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
