"""``cloudclear mask``: cloud and shadow masks of S2 scenes, written as Sen2Cor SCL GeoTIFFs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cloudclear.cli.options import choice, json_option, overwrite_option, parse_floats, progress


def mask(
    scenes: Annotated[
        list[Path], typer.Argument(help="S2 scene files (a stack, or one file per band) or folders to search.")
    ],
    detector: Annotated[
        str,
        typer.Option(
            "--detector",
            help="Cloud detector: {detectors} (builtin needs no extra package).",
            callback=choice("detectors"),
        ),
    ] = "builtin",
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
            help="ZENITH,AZIMUTH in degrees, instead of the scene's angle tags or its time and place. "
            "[default: the angle tags, else the time and place]",
        ),
    ] = None,
    overwrite: Annotated[bool, overwrite_option("existing mask files")] = False,
    as_json: Annotated[bool, json_option("Print the results as JSON.")] = False,
) -> None:
    """Compute cloud and cloud-shadow masks of S2 scenes and write them as Sen2Cor SCL GeoTIFFs.

    Codes: 0 nodata, 3 cloud shadow, 4 vegetation, 5 not vegetated, 6 water, 8 cloud (dilation
    ring), 9 cloud, 10 thin cirrus, 11 snow; the table is in the file's tags. The builtin detector
    needs B02, B03, B04 and B08 (or B8A) and uses B11, B12, B10 when present.
    """
    from cloudclear.detect.scene import MaskOptions, mask_scenes
    from cloudclear.detect.spatial import SpatialOptions
    from cloudclear.detect.sun import SunAngles

    angles = None
    if sun is not None:
        zen, az = parse_floats(sun, 2, "--sun") or (0.0, 0.0)
        try:
            angles = SunAngles(zen, az, "parameters")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--sun") from None
    options = MaskOptions(
        detector=detector,
        spatial=SpatialOptions(cloud_dilation=dilate_cloud, shadow_dilation=dilate_shadow, shadows=shadows),
        sun=angles,
        overwrite=overwrite,
        progress=progress(),
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
