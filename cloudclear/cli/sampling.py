"""``cloudclear layouts`` and ``cloudclear sample``: acquisition layouts, training patch stores."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

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
    interruptible,
    json_option,
    overwrite_option,
    parse_bands,
    parse_floats,
    parse_list,
    progress,
)


def layouts(
    ctx: typer.Context,
    as_json: Annotated[bool, json_option("Print the presets as JSON.")] = False,
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


def layouts_show(
    name: Annotated[str, typer.Argument(help="A preset name ({layouts}) or a layout .toml file.")],
) -> None:
    """Print a layout as a TOML file (a preset, or a file after validation) to copy and edit."""
    from cloudclear.layouts import load_layout

    typer.echo(load_layout(name).to_toml(), nl=False)


def _split_fractions(text: str) -> tuple[float, float, float]:
    a, b, c = parse_floats(text, 3, "--split") or (0.0, 0.0, 0.0)
    if min(a, b, c) < 0 or a <= 0:
        raise typer.BadParameter(f"takes 3 shares >= 0 with train > 0, not {text!r}", param_hint="--split")
    return a, b, c


def sample(
    catalog: Annotated[
        Path, typer.Option("--catalog", "-c", help="Catalog written by `cloudclear index` (or its folder).")
    ],
    layout: Annotated[str, typer.Option("--layout", "-l", help="A preset ({layouts}) or a .toml file.")],
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
        float | None,
        typer.Option("--block-days", help="Also split by periods of this many days. [default: no period split]"),
    ] = None,
    per_location: Annotated[
        int | None,
        typer.Option("--per-location", "-k", help="At most K samples per patch location. [default: no limit]", min=1),
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
        float | None,
        typer.Option("--s1-max-gap", help="Replace every slot's largest S1-S2 gap (hours). [default: the layout's]"),
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
    overwrite: Annotated[bool, overwrite_option("an existing store")] = False,
    as_json: Annotated[bool, json_option()] = False,
    buffer: Buffer = None,
    unclassified: Unclassified = None,
    snow: Snow = None,
    mask_source: MaskSource = None,
    temporal: Temporal = None,
    temporal_days: TemporalDays = None,
    strict: Strict = False,
    as_decoded: AsDecoded = False,
) -> None:
    """Build training patches from an acquisition layout and write a patch store.

    Patch locations come from the catalog's grids; for each reference scene and location the
    per-cell cloud cover and the rtree find acquisitions for every slot. Locations are split into
    train / val / test by blocks that never overlap. The store holds uint16 patches (compressed),
    masks, pasted gaps and a samples.gpkg table; cloudclear.sampling.PatchDataset reads it.
    What is clear follows the clear policy (--mask-source, --buffer, --unclassified, --snow,
    --temporal, --temporal-days, --strict, --as-decoded; without them, the catalog's, with the
    temporal test on a target's dates), recorded in store.json.

    \b
    Example, on a synthetic series with S1:
      cloudclear synth out/T31UFQ --size 480 --dates 10 --interval 15 \\
          --start 2021-04-01 --seed 42
      cloudclear index out/T31UFQ
      cloudclear sample -c out/T31UFQ -l sequence -p 128 -n 40 -o out/seq
    """
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
        simulate=parse_list(simulate),
        s1=s1,
        s1_max_gap=s1_max_gap,
        bands=parse_bands(bands),
        tile=tile,
        start=start,
        end=end,
        seed=seed,
        dem=str(dem) if dem else None,
        workers=workers,
        compression=compression,
        overwrite=overwrite,
        progress=progress(),
        policy=clear_policy(
            buffer,
            unclassified,
            snow,
            strict,
            temporal,
            as_decoded=as_decoded,
            source=mask_source,
            temporal_days=temporal_days,
            none_if_unset=True,  # without policy options: the catalog's
        ),
    )

    result = interruptible(lambda: run_sample(catalog, layout, out, options), "store")
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
