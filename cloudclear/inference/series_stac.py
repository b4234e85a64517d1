"""The STAC side of the series (see :mod:`cloudclear.inference.series`): a STAC 1.0 Catalog
(``DST/catalog.json``) with one Collection per place (``DST/S2_T31UFQ_series/collection.json``)
and one Item per output (``items/<id>.json``), written by hand as plain JSON (no pystac needed).

Each Item carries the date, the footprint and bounding box in lon/lat, the grid (``proj:epsg``,
``proj:transform``, ``proj:shape``), ``cloudclear:method``, ``s2:mgrs_tile`` (or
``cloudclear:place``, the grid name), ``processing:level``, and two assets whose hrefs are
relative to the item: ``data`` (``eo:bands`` B02.. with common names, ``raster:bands`` nodata 0,
scale 0.0001, offset 0, uint16) and ``status`` (the sidecar, ``classification:classes`` 0 nodata,
1 observed, 2 reconstructed). odc-stac loads it as a series, QGIS browses it, and
:mod:`cloudclear.scenes.stac` reads its items back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cloudclear.gapfill import PixelStatus
from cloudclear.inference.series import MARK, SeriesOutput, SeriesPlace, refuse_foreign
from cloudclear.inference.writer import QUANTIFICATION
from cloudclear.outputs import atomic_output
from cloudclear.scenes.scene import is_mgrs

STAC_VERSION = "1.0.0"
EXTENSIONS = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
}
#: Sentinel-2 band -> (eo common name, centre wavelength in micrometres).
S2_EO = {
    "B01": ("coastal", 0.443), "B02": ("blue", 0.49), "B03": ("green", 0.56), "B04": ("red", 0.665),
    "B05": ("rededge", 0.705), "B06": ("rededge", 0.74), "B07": ("rededge", 0.783), "B08": ("nir", 0.842),
    "B8A": ("nir08", 0.865), "B09": ("nir09", 0.945), "B10": ("cirrus", 1.375), "B11": ("swir16", 1.61),
    "B12": ("swir22", 2.19),
}  # fmt: skip
STATUS_DESCRIPTIONS = {
    PixelStatus.NODATA: "no input saw the pixel",
    PixelStatus.OBSERVED: "a clear observation at the date, copied",
    PixelStatus.RECONSTRUCTED: "reconstructed by the method",
}


# -- STAC ------------------------------------------------------------------------------------------


def write_stac(places: Sequence[SeriesPlace], dst: Path) -> tuple[list[SeriesPlace], Path]:
    """Write one collection folder per place and ``dst/catalog.json`` linking them (and the
    collections of other places an earlier run wrote there)."""
    catalog_path = dst / "catalog.json"
    refuse_foreign(catalog_path, _is_our_json, "STAC catalog")
    done = []
    for place in places:
        folder = dst / f"S2_{place.label}_series"
        refuse_foreign(folder, lambda p: _is_our_json(p / "collection.json"), "STAC collection folder")
        with atomic_output(folder, overwrite=True, what="series") as tmp:
            _write_collection(place, folder, tmp)
        done.append(SeriesPlace(place.place, place.outputs, zarr=place.zarr, collection=folder / "collection.json"))
    children = {f"./{p.collection.parent.name}/collection.json": p.label for p in done if p.collection}
    if catalog_path.exists():
        old = json.loads(catalog_path.read_text(encoding="utf-8"))
        for link in old.get("links", []):
            href = link.get("href", "")
            if link.get("rel") == "child" and href not in children and (dst / href).is_file():
                children[href] = link.get("title", "")
    catalog = {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": "cloudclear-series",
        "title": "cloudclear series",
        "description": "Gap-free Sentinel-2 series reconstructed by cloudclear, one collection per place.",
        MARK: True,
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            *[
                {"rel": "child", "href": href, "type": "application/json", "title": children[href]}
                for href in sorted(children)
            ],
        ],
    }
    with atomic_output(catalog_path, overwrite=True, what="series") as tmp:
        _dump(catalog, tmp)
    return done, catalog_path


def _is_our_json(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get(MARK) is True


_NUMBERS = re.compile(r"\[\n[-+0-9.eE,\s]*\]")  # json.dumps breaks the line after "[", never in a string


def _dump(doc: dict[str, Any], path: Path) -> None:
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    # arrays of numbers (coordinates, transforms, boxes) on one line each
    text = _NUMBERS.sub(lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


def _item_ids(outs: Sequence[SeriesOutput], label: str) -> list[str]:
    ids = [o.path.stem for o in outs]
    if len(set(ids)) != len(ids):  # same file names in several folders: name them by date
        ids = [f"S2_{label}_{o.when:%Y%m%dT%H%M%S}_{o.method or 'output'}" for o in outs]
    return ids


def _write_collection(place: SeriesPlace, folder: Path, tmp: Path) -> None:
    """Write ``collection.json`` and ``items/`` into ``tmp``, with hrefs as seen from ``folder``."""
    outs = place.outputs
    first = outs[0]
    cid = folder.name
    (tmp / "items").mkdir(parents=True)
    ids = _item_ids(outs, place.label)
    boxes = []
    for o, iid in zip(outs, ids, strict=True):
        item = _item(o, iid, cid, place, folder / "items")
        boxes.append(item["bbox"])
        _dump(item, tmp / "items" / f"{iid}.json")
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    collection = {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [EXTENSIONS["eo"], EXTENSIONS["raster"], EXTENSIONS["proj"]],
        "id": cid,
        "title": f"cloudclear series of {place.label}",
        "description": (
            f"Sentinel-2 reflectance of {place.label} reconstructed by cloudclear at {len(outs)} dates "
            f"(uint16 x 10000, nodata 0), each with a status asset (0 nodata, 1 observed, 2 reconstructed)."
        ),
        "license": "other",
        MARK: True,
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[_stac_time(outs[0].when), _stac_time(outs[-1].when)]]},
        },
        "summaries": {
            "constellation": ["sentinel-2"],
            "cloudclear:method": sorted({o.method for o in outs}),
            "processing:level": sorted({o.level for o in outs}),
            "eo:bands": _eo_bands(first.bands),
            **({"proj:epsg": [first.epsg]} if first.epsg else {}),
        },
        "links": [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
            *[{"rel": "item", "href": f"./items/{iid}.json", "type": "application/geo+json"} for iid in ids],
        ],
    }
    _dump(collection, tmp / "collection.json")


def _stac_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _eo_bands(bands: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for b in bands:
        entry: dict[str, Any] = {"name": b}
        if b in S2_EO:
            entry["common_name"], entry["center_wavelength"] = S2_EO[b]
        out.append(entry)
    return out


def _footprint(o: SeriesOutput) -> tuple[list[list[float]], list[float]]:
    """The grid's outline in lon/lat (edges densified, 16 points each) and its bounding box."""
    from rasterio.crs import CRS
    from rasterio.warp import transform

    a, _, c, _, e, f = o.transform
    x0, x1, y0, y1 = c, c + a * o.width, f + e * o.height, f
    steps = [i / 16 for i in range(16)]
    ring = (
        [(x0 + (x1 - x0) * s, y0) for s in steps]
        + [(x1, y0 + (y1 - y0) * s) for s in steps]
        + [(x1 - (x1 - x0) * s, y1) for s in steps]
        + [(x0, y1 - (y1 - y0) * s) for s in steps]
    )
    lons, lats = transform(CRS.from_wkt(o.crs), CRS.from_epsg(4326), [p[0] for p in ring], [p[1] for p in ring])
    coords = [[round(x, 7), round(y, 7)] for x, y in zip(lons, lats, strict=True)]
    coords.append(coords[0])
    bbox = [min(p[0] for p in coords), min(p[1] for p in coords), max(p[0] for p in coords), max(p[1] for p in coords)]
    return coords, bbox


def _href(target: Path, folder: Path) -> str:
    return Path(os.path.relpath(target, folder)).as_posix()


def _media_type(o: SeriesOutput) -> str:
    return "image/tiff; application=geotiff" + ("; profile=cloud-optimized" if o.cog else "")


def _item(o: SeriesOutput, iid: str, cid: str, place: SeriesPlace, folder: Path) -> dict[str, Any]:
    """One output as a STAC Item whose file will lie in ``folder``."""
    ring, bbox = _footprint(o)
    res = abs(o.transform[0])
    props: dict[str, Any] = {
        "datetime": _stac_time(o.when),
        "constellation": "sentinel-2",
        "gsd": res,
        "proj:epsg": o.epsg,
        "proj:transform": list(o.transform),
        "proj:shape": [o.height, o.width],
        "processing:level": o.level or "unknown",
        "cloudclear:method": o.method,
        "cloudclear:place": place.place,
    }
    if o.epsg is None:
        props["proj:wkt2"] = o.crs
    if is_mgrs(place.place):
        props["s2:mgrs_tile"] = place.place
    extensions = [EXTENSIONS[k] for k in ("eo", "raster", "proj", "processing")]
    assets: dict[str, Any] = {
        "data": {
            "href": _href(o.path, folder),
            "type": _media_type(o),
            "title": "reflectance x 10000 (nodata 0)",
            "roles": ["data"],
            "eo:bands": _eo_bands(o.bands),
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "scale": 1.0 / QUANTIFICATION,
                    "offset": 0,
                    "spatial_resolution": res,
                }
                for _ in o.bands
            ],
        }
    }
    if o.status is not None:
        extensions.append(EXTENSIONS["classification"])
        assets["status"] = {
            "href": _href(o.status, folder),
            "type": _media_type(o),
            "title": "status: 0 nodata, 1 observed, 2 reconstructed",
            "roles": ["metadata"],
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": res}],
            "classification:classes": [
                {"value": int(s), "name": s.name.lower(), "description": STATUS_DESCRIPTIONS[s]} for s in PixelStatus
            ],
        }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": extensions,
        "id": iid,
        "collection": cid,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": bbox,
        "properties": props,
        "links": [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        ],
        "assets": assets,
    }
