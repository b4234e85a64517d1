"""Catalog records as acquisitions: where a scene's bands and mask are and how to read them.

Both sampling (training patches) and inference (whole tiles) turn catalog rows into
:class:`Acquisition` values; the same acquisition indexed twice (a stack and per-band files) is
kept once, preferring the record with a mask, then the fewest files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudclear.errors import CloudClearError
from cloudclear.gridio import Grid
from cloudclear.masks import MaskBand


@dataclass(frozen=True)
class Acquisition:
    """One chosen scene: where its bands and mask are, and how to read them as physical values.

    Attributes:
        slot: the slot it fills.
        role: target / before / after.
        sensor: S2 or S1.
        scene_id: catalog id.
        datetime: acquisition time (UTC).
        days: signed offset from the target date in days.
        cloud_pct: catalog cloud cover (None if unknown).
        bands: band names, in the order read.
        sources: (path, 1-based band) per band.
        mask: the S2 mask, or None (then every valid pixel counts as clear).
        scale: DN * scale + offset = reflectance (S2) or the file's value (S1).
        offset: see ``scale``.
        nodata: the band nodata value (S2 0 when unset).
        units: catalog units ("reflectance", "dB", "linear", ...).
    """

    slot: str
    role: str
    sensor: str
    scene_id: str
    datetime: datetime
    days: float
    cloud_pct: float | None
    bands: tuple[str, ...]
    sources: tuple[tuple[str, int], ...]
    mask: MaskBand | None
    scale: float
    offset: float
    nodata: float | None
    units: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "scene_id": self.scene_id,
            "datetime": self.datetime.isoformat(),
            "days": round(self.days, 3),
            "cloud_pct": self.cloud_pct,
        }


def row_time(row: Any) -> datetime:
    return row["datetime"].to_pydatetime()


def dedupe(rows: list[Any]) -> list[Any]:
    """One record per acquisition: the same scene indexed twice (a stack and per-band files).

    Two records are one acquisition when they share the minute, the tile and the grid corner; the
    tiles of one datatake share the minute but not the place.
    """
    best: dict[tuple[Any, ...], Any] = {}
    for row in rows:
        when = row_time(row).replace(second=0, microsecond=0)
        key = (when, str(row["tile"] or ""), str(row["crs"]), round(float(row["left"])), round(float(row["top"])))
        prev = best.get(key)
        if prev is None or _preference(row) < _preference(prev):
            best[key] = row
    return sorted(best.values(), key=row_time)


def number(row: Any, key: str) -> float | None:
    """A numeric catalog field, None where it is unset (None or NaN in the GeoPackage)."""
    v = row[key]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _preference(row: Any) -> tuple[Any, ...]:
    has_mask = cloud_of(row) is not None
    return (not has_mask, len(json.loads(row["files"])), row["scene_id"])


def cloud_of(row: Any) -> float | None:
    return number(row, "cloud_pct")


def acquisition(
    catalog: Any,
    row: Any,
    slot: str,
    role: str,
    target: datetime,
    bands: Sequence[str],
    error: type[CloudClearError] = CloudClearError,
) -> Acquisition:
    """The :class:`Acquisition` of catalog record ``row`` for a slot, reading ``bands``.

    Raises:
        error: the scene lacks one of ``bands``.
    """
    have = str(row["bands"]).split(",")
    band_files = json.loads(row["band_files"])
    missing = [b for b in bands if b not in band_files]
    if missing:
        first = catalog.resolve(next(iter(band_files.values()))[0]) if band_files else row["scene_id"]
        raise error(
            f"{first}: scene {row['scene_id']} has bands {','.join(have)} but {','.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} needed (choose bands every scene has with --bands)"
        )
    sources = tuple((str(catalog.resolve(band_files[b][0])), int(band_files[b][1])) for b in bands)
    mask = None
    if isinstance(row["mask_file"], str) and row["mask_file"]:
        mask = MaskBand(str(catalog.resolve(row["mask_file"])), int(row["mask_band"]), str(row["mask_source"]))
    scale, offset = number(row, "scale"), number(row, "offset")
    when = row_time(row)
    return Acquisition(
        slot=slot,
        role=role,
        sensor=str(row["sensor"]),
        scene_id=str(row["scene_id"]),
        datetime=when,
        days=(when - target).total_seconds() / 86400.0,
        cloud_pct=cloud_of(row),
        bands=tuple(bands),
        sources=sources,
        mask=mask,
        scale=1.0 if scale is None else scale,
        offset=0.0 if offset is None else offset,
        nodata=number(row, "nodata"),
        units=str(row["units"]),
    )


def grid_of(catalog: Any, row: Any, error: type[CloudClearError] = CloudClearError) -> Grid:
    """The grid of a scene: its finest band file's CRS, transform and size."""
    import rasterio

    width, height = int(row["width"]), int(row["height"])
    for rel, _ in json.loads(row["band_files"]).values():
        path = catalog.resolve(rel)
        with rasterio.open(path) as src:
            if (src.width, src.height) == (width, height) and src.crs is not None:
                return Grid(src.crs.to_wkt(), tuple(src.transform)[:6], width, height)  # type: ignore[arg-type]
    raise error(f"scene {row['scene_id']}: no band file on the scene's {width} x {height} grid")
