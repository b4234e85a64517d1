"""``cloudclear synth``: write a synthetic S2 (+ S1) series with masks and cloud-free truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cloudclear.cli.options import parse_bands, progress


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the series into (S2/, S1/, truth/).")],
    size: Annotated[
        int | None,
        typer.Option("--size", help="Square size in pixels (sets height and width). [default: --height x --width]"),
    ] = None,
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
    series = generate_series(
        out,
        height=height,
        width=width,
        n_dates=dates,
        start=start,
        interval_days=interval,
        tile=tile,
        # the generator knows bands by their canonical upper-case names
        bands=tuple(b.upper() for b in parse_bands(bands) or ()),
        s1=s1,
        seed=seed,
        progress=progress(),
    )
    typer.echo(
        f"wrote {len(series.s2)} S2 dates, {len(series.s1)} S1 dates, {height} x {width} px, "
        f"{series.crs}, into {series.root}"
    )
    for when, pct in zip(series.s2_dates, series.cloud_pct, strict=True):
        typer.echo(f"  {when:%Y-%m-%d}  cloud {pct:5.1f} %")
