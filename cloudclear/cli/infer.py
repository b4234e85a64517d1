"""``cloudclear infer``: reconstruct cloud-free S2 images of a tile for dates."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

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
    progress,
)
from cloudclear.inference import DEFAULT_METHOD


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
            "--method",
            "-m",
            help="gapfill, a .safetensors checkpoint, or a model name (see `cloudclear models`). "
            "The default is the shipped network that beats gapfill at places it never saw.",
        ),
    ] = DEFAULT_METHOD,
    tile: Annotated[str | None, typer.Option("--tile", "-t", help="S2 tile when the catalog holds several.")] = None,
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
    window: Annotated[int | None, typer.Option("--window", help="Network window side. [default: the card's]")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Windows per network call.")] = 8,
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

    --hide MASK checks a method on a clear date: the mask's cloud and shadow pixels (another
    date's real clouds) are taken from the date's own clear pixels, reconstructed, and can be
    scored against the date's own file with `cloudclear score --mask MASK`.

    \b
    Examples:
      cloudclear infer -c out/sample.gpkg -d 2022-06-02 -o out/32TPS_20220602.tif
      cloudclear infer -c out/sample.gpkg -d 2022-06-15 -o out/hidden.tif \\
          --hide sample_tiles/32TPS/S2_L2A_T32TPS_20220617_SCL.tif
    """
    from cloudclear.catalog import Catalog
    from cloudclear.inference.pipeline import InferOptions, load_method
    from cloudclear.inference.pipeline import infer as run_infer

    box = parse_floats(bbox, 4, "--bbox")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, not {device!r}")
    if batch < 1 or strip_rows < 1 or neighbours < 1 or every < 1:
        raise typer.BadParameter("--batch, --strip-rows, --neighbours and --every must be >= 1")
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
    cat = Catalog.open(catalog)
    m = load_method(
        method,
        neighbours=neighbours,
        max_days=max_days,
        max_cloud=max_cloud,
        bands=list(band_list) if band_list else None,
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

    result = interruptible(
        lambda: run_infer(cat, dates, m, out, tile=tile, options=options, on_result=report, grid=grid), "output"
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    n = len(result.results)
    secs = sum(r.seconds for r in result.results)
    px = sum(r.width * r.height for r in result.results)
    typer.echo(f"{n} date(s), {px / 1e6:.1f} Mpx in {secs:.1f} s ({px / 1e6 / max(secs, 1e-9):.1f} Mpx/s)")
