"""``cloudclear index`` and ``cloudclear query``: build a catalog of a folder, list its scenes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudclear.cli.options import (
    AsDecoded,
    AsJson,
    Buffer,
    MaskSource,
    Snow,
    Strict,
    Unclassified,
    choice,
    clear_policy,
    json_option,
    parse_bbox,
    parse_range,
    print_skipped,
    progress,
)


def index(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Folder to scan (recursively) for S2, S1 and mask rasters and products, or one "
            "product file (a SAFE .zip, a STAC item)."
        ),
    ],
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", "-c", help="Catalog to write. [default: DIR/cloudclear.gpkg]"),
    ] = None,
    date_pattern: Annotated[
        str | None,
        typer.Option(
            "--date-pattern",
            help="Regex for the date in file names, with named groups 'date' (YYYYMMDD) and "
            "optional 'time' (HHMMSS). [default: YYYYMMDD[THHMMSS] anywhere in the name, then the "
            "DATETIME / TIFFTAG_DATETIME tags]",
        ),
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Reopen every file, ignoring the previous catalog.")
    ] = False,
    as_json: AsJson = False,
    show_skipped: Annotated[int, typer.Option("--show-skipped", help="Skipped files listed per reason (0 = all).")] = 5,
    detect: Annotated[
        str | None,
        typer.Option(
            "--detect",
            help="Compute a cloud/shadow mask with this detector ({detectors}) for every S2 scene "
            "that has its bands: the mask of a scene without one, combined with the scene's own "
            "otherwise (see --mask-source); masks go to CATALOG_masks/ and are reused while the "
            "scene is unchanged.",
            callback=choice("detectors"),
        ),
    ] = "builtin",
    no_detect: Annotated[
        bool, typer.Option("--no-detect", help="Run no detector (masks made by an earlier run are still used).")
    ] = False,
    buffer: Buffer = None,
    unclassified: Unclassified = None,
    snow: Snow = None,
    mask_source: MaskSource = None,
    strict: Strict = False,
    as_decoded: AsDecoded = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Processes that open the files (the catalog is the same whatever it is). "
            "[default: one per core, at most 8]",
        ),
    ] = None,
) -> None:
    """Catalog the scenes in DIR: sensor, tile, date, footprint, cloud and nodata cover.

    Reads GeoTIFF / JP2 rasters and products as downloaded: ESA SAFE folders and .zip files,
    THEIA L2A folders, STAC items (JSON). Writes a GeoPackage (layer 'scenes', footprints in
    EPSG:4326; open it in QGIS or geopandas) and an rtree index beside it. Re-running reads only
    new or changed files. Each S2 scene's scale and offset come from its metadata or its data and
    are checked. Files that are no scene are listed on stderr with the reason; wrong inputs
    (unreadable, undated, values that fit no scale, broken products) get one line each and exit
    code 1, after the catalog of the other scenes is written. The built-in detector runs on every S2
    scene (--no-detect: none). The cloud % counts what the clear policy (--mask-source, --buffer,
    --unclassified, --snow, --strict, --as-decoded) calls obscured, and the pixels each rule
    removed are reported; the catalog records the policy, and re-indexing with another policy
    recomputes every scene. (The temporal test compares dates: sample and infer apply it.)
    """
    from cloudclear.catalog import build_index
    from cloudclear.errors import EmptyCatalogError

    policy = clear_policy(buffer, unclassified, snow, strict, as_decoded=as_decoded, source=mask_source)
    try:
        result = build_index(
            directory,
            catalog,
            date_pattern=date_pattern,
            rebuild=rebuild,
            progress=progress(),
            detect=None if no_detect else detect,
            policy=policy,
            jobs=workers,
        )
    except EmptyCatalogError as exc:
        print_skipped([s for s in exc.skipped if not getattr(s, "refused", False)], show_skipped)
        print_refused(exc.skipped)
        raise
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        if result.refused:
            raise typer.Exit(1)
        return
    print_skipped([s for s in result.skipped if not s.refused], show_skipped)
    print_refused(result.skipped)
    s = result.summary
    products = f" and {result.products_seen} products" if result.products_seen else ""
    typer.echo(
        f"{result.scenes} scenes from {result.files_seen} raster files{products} in {result.seconds:.1f} s "
        f"({result.files_opened} opened, {result.scenes_computed} computed, "
        f"{result.scenes_reused} unchanged)"
    )
    if result.products_seen:
        typer.echo(f"  products (SAFE, THEIA, STAC): {result.products_seen} ({result.products_read} read)")
    typer.echo(f"catalog: {result.catalog_path}")
    if result.masks_detected:
        typer.echo(f"  detector masks: {result.masks_detected} scene(s), in {result.catalog_path.stem}_masks/")
    for row in s["by_sensor_tile"]:
        grids = f" on {row['grids']} grids (infer --grid picks one)" if row.get("grids", 1) > 1 else ""
        typer.echo(f"  {row['sensor']}  tile {row['tile']:<6} {row['scenes']:>6} scenes{grids}")
    typer.echo(f"  dates: {s['first'][:10]} .. {s['last'][:10]}")
    dist = "  ".join(f"{k}: {v}" for k, v in s["s2_cloud_distribution"].items())
    typer.echo(f"  S2 cloud cover: {dist}")
    again = ", every scene recomputed (the catalog had another policy)" if result.recomputed_policy else ""
    temporal = " (its temporal test: sample and infer)" if result.policy.temporal else ""
    typer.echo(f"  clear policy: {result.policy.describe()}{temporal}{again}")
    if not result.policy.changes_nothing:
        rules = ", ".join(f"{rule} {n}" for rule, n in result.removed_by.items()) or "none"
        typer.echo(
            f"    {result.removed_total} px the scenes' masks call clear counted as obscured, in "
            f"{len(result.removed)} scene(s); by rule: {rules}"
        )
    if s["s2_with_s1"]:
        typer.echo(f"  S2 with an S1 over them: {s['s2_with_s1']} (median gap {s['s1_gap_hours_median']:.1f} h)")
    if result.refused:
        typer.echo(
            f"{len(result.refused)} input(s) refused (listed above); the catalog holds the other scenes", err=True
        )
        raise typer.Exit(1)


def print_refused(skipped: Any) -> None:
    """One line on stderr per refused input (wrong, not merely no scene), even under -q."""
    for s in skipped:
        if getattr(s, "refused", False):
            typer.echo(s.reason if s.reason.startswith(s.path) else f"{s.path}: {s.reason}", err=True)


_QUERY_COLUMNS = [
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
    as_json: Annotated[bool, json_option("Print records as JSON.")] = False,
) -> None:
    """List catalogued scenes by place, date range, cloud range, sensor and tile."""
    from cloudclear.catalog import Catalog

    lo, hi = parse_range(cloud)
    cat = Catalog.open(catalog)
    # the records as a table: the columns printed below are the catalog's own
    hits = cat.query_frame(
        parse_bbox(bbox),
        bbox_crs=bbox_crs,
        start=start,
        end=end,
        cloud_min=lo,
        cloud_max=hi,
        sensor=sensor,
        tile=tile,
        include_unmasked=with_unmasked,
    )
    if as_json:
        records = json.loads(
            hits[_QUERY_COLUMNS + ["place", "crs", "files"]].to_json(orient="records", date_format="iso")
        )
        typer.echo(json.dumps(records, indent=2))
        return
    typer.echo(f"{'datetime':<20} {'sensor':<6} {'tile':<6} {'cloud%':>7} {'nodata%':>7}  scene")
    for _, r in hits.iterrows():
        cloud_txt = "-" if r["cloud_pct"] is None or r["cloud_pct"] != r["cloud_pct"] else f"{r['cloud_pct']:.1f}"
        typer.echo(
            f"{r['datetime'].strftime('%Y-%m-%dT%H:%M:%S'):<20} {r['sensor']:<6} "
            f"{str(r['place']):<6} "
            f"{cloud_txt:>7} {r['nodata_pct']:>7.1f}  {r['scene_id']}"
        )
    counts = Counter(hits["sensor"])
    typer.echo(
        f"{len(hits)} scene(s)" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})" if counts else "")
    )
