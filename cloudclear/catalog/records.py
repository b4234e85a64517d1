"""Scene records: how a scene is stored in the catalog's GeoPackage, and read back as a :class:`Scene`.

Only this module knows the column encoding (band files as JSON, per-cell grids as base64 zlib);
every other module sees :class:`cloudclear.scenes.Scene` values.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cloudclear.catalog.stats import CELL, SceneStats
from cloudclear.catalog.values import Calibration, level_of
from cloudclear.gdal import absolute_path
from cloudclear.masks import MaskBand
from cloudclear.scenes import BandSource, CellGrids, FileInfo, Scene, SceneDraft, grid_name, reflectance_scale

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def encode_cells(arr: np.ndarray) -> str:
    """A per-cell grid as stored in the catalog: uint8 bytes, zlib, base64 text."""
    return base64.b64encode(zlib.compress(arr.astype("uint8").tobytes(), 6)).decode("ascii")


def decode_cells(text: str, rows: int, cols: int) -> np.ndarray:
    """Decode a per-cell grid column (``cloud_cells`` / ``valid_cells``) to a (rows, cols) array."""
    import numpy as np

    return np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# Records


def footprints(info: FileInfo) -> tuple[Any, Any]:
    """A file's outline in its own CRS and in lon/lat (edges densified so they curve; the lon/lat
    outline is :func:`~cloudclear.scenes.duplicates.footprint`'s, cached by grid)."""
    import shapely

    from cloudclear.scenes.duplicates import footprint

    native = shapely.box(*info.bounds)
    return native, footprint(info) or native


@functools.lru_cache(maxsize=64)
def crs_label(wkt: str | None) -> tuple[str, int | None]:
    """A CRS's display label ("EPSG:32631", else its PROJ string) and EPSG code, cached by WKT."""
    from pyproj import CRS

    if not wkt:
        return "", None
    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return (f"EPSG:{epsg}" if epsg else crs.to_string()), epsg


def _scale_offset(draft: SceneDraft) -> tuple[float, float]:
    info = draft.grid
    path, bidx = next(iter(draft.band_sources.values()))
    if draft.sensor != "S2":
        return info.scales[0] if info.scales else 1.0, info.offsets[0] if info.offsets else 0.0
    return reflectance_scale(info, bidx if path == info.path else None)


def _level(draft: SceneDraft) -> str:
    if draft.sensor != "S1":
        return level_of(draft)
    stated = draft.grid.tags.get("PROCESSING_LEVEL", "").upper()
    # STAC sentinel-1-rtc items and ASF HyP3 (..._RTC30_G_gpuned_...) are terrain corrected.
    return stated or ("RTC" if "RTC" in draft.grid.stem.upper() else "GRD")


#: Column of the pixels the clear policy removed beyond the scene's own mask, per S2 scene with a
#: mask; absent from catalogs whose policy removes nothing (the mask as decoded).
REMOVED_COLUMN = "policy_removed_px"
#: The same per rule, as JSON (``{"detector": n, "unclassified": n, "snow": n, "buffer": n}``).
REMOVED_BY_COLUMN = "policy_removed_by"
#: Where a scene's scale and offset came from, and what the data check found (catalogs made
#: before it have no such column).
SCALE_SOURCE_COLUMN = "scale_source"
#: Per band ``[scale, offset]`` as JSON (per-band offsets are honoured).
BAND_SCALES_COLUMN = "band_scales"
#: Column of the path of the detector's mask of a scene that has a mask of its own.
DETECTED_COLUMN = "detected_file"


def signature(paths: Sequence[str], infos: dict[str, FileInfo]) -> str:
    """What tells a scene's files changed: names, sizes and modification times."""
    return json.dumps(sorted((os.path.basename(p), infos[p].size, infos[p].mtime_ns) for p in paths))


def record(
    scene_id: str,
    draft: SceneDraft,
    stats: SceneStats,
    infos: dict[str, FileInfo],
    rel: Any,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """The stored record (one row of the ``scenes`` layer) of a scene; ``rel`` makes paths
    relative to the catalog's folder; ``calibration`` is an S2 scene's scaling
    (:func:`~cloudclear.catalog.values.calibrate`), None for S1."""
    native, geo = footprints(draft.grid)
    label, epsg = crs_label(draft.grid.crs)
    if calibration is not None:
        scale, offset = calibration.first
        band_scales = {b: [calibration.scales[b], calibration.offsets[b]] for b in draft.bands}
        scale_source = calibration.source
    else:
        scale, offset = _scale_offset(draft)
        band_scales = {b: [scale, offset] for b in draft.bands}
        scale_source = draft.grid.tags.get("SCALE_SOURCE") or ("units: " + draft.units)
    info = draft.grid
    return {
        "scene_id": scene_id,
        "sensor": draft.sensor,
        "tile": draft.tile,
        "datetime": draft.datetime,
        "datetime_source": draft.datetime_source,
        "level": _level(draft),
        "crs": label,
        "epsg": epsg,
        "left": info.bounds[0],
        "bottom": info.bounds[1],
        "right": info.bounds[2],
        "top": info.bounds[3],
        "footprint_native": native.wkt,
        "res_x": abs(info.transform[0]),
        "res_y": abs(info.transform[4]),
        "width": info.width,
        "height": info.height,
        "bands": ",".join(draft.bands),
        "band_files": json.dumps({b: [rel(p), i] for b, (p, i) in draft.band_sources.items()}),
        "band_source": draft.band_source,
        "dtype": info.dtype,
        "nodata": info.nodata,
        "scale": scale,
        "offset": offset,
        "units": draft.units,
        SCALE_SOURCE_COLUMN: scale_source,
        BAND_SCALES_COLUMN: json.dumps(band_scales),
        "mask_source": draft.mask.convention if draft.mask else "no mask",
        "mask_file": rel(draft.mask.path) if draft.mask else None,
        "mask_band": draft.mask.band if draft.mask else None,
        DETECTED_COLUMN: rel(draft.detected.path) if draft.detected else None,
        "nodata_pct": round(stats.nodata_pct, 4),
        "cloud_pct": None if stats.cloud_pct is None else round(stats.cloud_pct, 4),
        "cell_size": CELL,
        "cells_rows": int(stats.cloud_cells.shape[0]),
        "cells_cols": int(stats.cloud_cells.shape[1]),
        "cloud_cells": encode_cells(stats.cloud_cells),
        "valid_cells": encode_cells(stats.valid_cells),
        "nearest_s1": None,
        "s1_gap_hours": None,
        "files": json.dumps([rel(p) for p in draft.files]),
        "signature": signature(draft.files, infos),
        "geometry": geo,
    } | (
        {}
        if stats.removed_px is None
        else {REMOVED_COLUMN: stats.removed_px, REMOVED_BY_COLUMN: json.dumps(stats.removed_by or {})}
    )


def stats_from_row(row: Any) -> SceneStats:
    """The statistics kept in a stored record (re-indexing reuses them for unchanged scenes)."""
    rows, cols = int(row["cells_rows"]), int(row["cells_cols"])
    cloud = None if _isnull(row["cloud_pct"]) else float(row["cloud_pct"])
    return SceneStats(
        float(row["nodata_pct"]),
        cloud,
        decode_cells(row["cloud_cells"], rows, cols),
        decode_cells(row["valid_cells"], rows, cols),
        None if REMOVED_COLUMN not in row or _isnull(row[REMOVED_COLUMN]) else int(row[REMOVED_COLUMN]),
        None if REMOVED_BY_COLUMN not in row or _isnull(row[REMOVED_BY_COLUMN]) else json.loads(row[REMOVED_BY_COLUMN]),
    )


def calibration_from_row(row: Any, draft: SceneDraft) -> Calibration | None:
    """The scaling a stored record holds for ``draft``'s bands; None when the record predates
    per-band scaling or lacks a band (the scene's values are then checked again)."""
    text = row.get(BAND_SCALES_COLUMN) if hasattr(row, "get") else None
    if text is None or _isnull(text) or not text:
        return None
    stored = json.loads(text)
    if any(b not in stored for b in draft.bands):
        return None
    source = row.get(SCALE_SOURCE_COLUMN)
    return Calibration(
        {b: float(stored[b][0]) for b in draft.bands},
        {b: float(stored[b][1]) for b in draft.bands},
        "" if source is None or _isnull(source) else str(source),
    )


def _isnull(v: Any) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def make_frame(records: list[dict[str, Any]]) -> gpd.GeoDataFrame:
    """The ``scenes`` layer from records: typed columns, footprints in EPSG:4326, date order."""
    import geopandas as gpd
    import pandas as pd

    frame = gpd.GeoDataFrame(records, geometry="geometry", crs="EPSG:4326")
    frame["datetime"] = pd.to_datetime(frame["datetime"], utc=True)
    # All-None columns would otherwise be stored as text; keep them numeric.
    for col in ("cloud_pct", "nodata", "s1_gap_hours"):
        frame[col] = frame[col].astype("float64")
    frame["mask_band"] = frame["mask_band"].astype("Int64")
    # Date order: query results are then in date order without a sort.
    return frame.sort_values(["datetime", "scene_id"]).reset_index(drop=True)


def link_nearest_s1(frame: gpd.GeoDataFrame) -> None:
    """For each S2 scene, the S1 scene over it nearest in time, and the gap in hours."""
    import numpy as np
    import shapely

    s1 = frame[frame["sensor"] == "S1"]
    if s1.empty:
        return
    tree = shapely.STRtree(s1.geometry.values)
    s1_times = (s1["datetime"] - _EPOCH).dt.total_seconds().to_numpy()
    s1_ids = s1["scene_id"].to_numpy()
    nearest: list[Any] = []
    gaps: list[Any] = []
    # Column by column, not row by row (a Series per row costs more than the query).
    for sensor, geom, when in zip(frame["sensor"], frame.geometry.values, frame["datetime"], strict=True):
        if sensor != "S2":
            nearest.append(None)
            gaps.append(None)
            continue
        idx = tree.query(geom, predicate="intersects")
        if len(idx) == 0:
            nearest.append(None)
            gaps.append(None)
            continue
        dt = np.abs(s1_times[idx] - (when - _EPOCH).total_seconds())
        k = int(np.argmin(dt))
        nearest.append(s1_ids[idx[k]])
        gaps.append(round(float(dt[k]) / 3600.0, 3))
    frame["nearest_s1"] = nearest
    frame["s1_gap_hours"] = np.array([np.nan if g is None else g for g in gaps], dtype="float64")


# ---------------------------------------------------------------------------------------------
# Records back to scenes

#: Columns a :class:`Scene` is built from.
_SCENE_COLUMNS = (
    "scene_id", "sensor", "tile", "datetime", "datetime_source", "level", "crs", "epsg",
    "left", "bottom", "right", "top", "res_x", "res_y", "width", "height", "bands", "band_files",
    "band_source", "dtype", "nodata", "scale", "offset", "units", "mask_source", "mask_file",
    "mask_band", "nodata_pct", "cloud_pct", "cell_size", "cells_rows", "cells_cols", "cloud_cells",
    "valid_cells", "nearest_s1", "s1_gap_hours", "files",
)  # fmt: skip


def _text(v: Any) -> str | None:
    return None if _isnull(v) or v == "" else str(v)


def _float(v: Any) -> float | None:
    return None if _isnull(v) else float(v)


def _cells_loader(cloud: str, valid: str, rows: int, cols: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        return decode_cells(cloud, rows, cols), decode_cells(valid, rows, cols)

    return load


class SceneRows:
    """Builds :class:`Scene` values from a catalog frame, one position at a time, on demand.

    Column values are taken out of the frame once (pandas row access costs more than building a
    scene); relative paths are resolved against the catalog's folder once each.

    Args:
        frame: the catalog's ``scenes`` records, in catalog order.
        base: the folder stored paths are relative to (the catalog's).
    """

    def __init__(self, frame: gpd.GeoDataFrame, base: Path):
        self._cols = {c: frame[c].to_numpy() for c in _SCENE_COLUMNS}
        # Catalogs made before detected masks were combined have no such column.
        self._cols[DETECTED_COLUMN] = (
            frame[DETECTED_COLUMN].to_numpy() if DETECTED_COLUMN in frame else [None] * len(frame)
        )
        for column in (SCALE_SOURCE_COLUMN, BAND_SCALES_COLUMN):
            self._cols[column] = frame[column].to_numpy() if column in frame else [None] * len(frame)
        self._geoms = frame.geometry.to_numpy()
        self._base = base
        self._paths: dict[str, str] = {}
        self._places: list[str] | None = None
        self._scenes: dict[int, Scene] = {}

    def __len__(self) -> int:
        return len(self._geoms)

    def resolve(self, rel: str) -> str:
        """A stored path made absolute (memoised: resolving stats every component)."""
        out = self._paths.get(rel)
        if out is None:
            out = self._paths[rel] = absolute_path(rel, self._base)
        return out

    def place(self, i: int) -> str:
        """The place of record ``i``: its tile id, or the name of its grid."""
        c = self._cols
        tile = _text(c["tile"][i])
        if tile:
            return tile
        epsg = _float(c["epsg"][i])
        transform = (float(c["res_x"][i]), 0.0, float(c["left"][i]), 0.0, -float(c["res_y"][i]), float(c["top"][i]))
        return grid_name(
            str(c["crs"][i]), transform, int(c["width"][i]), int(c["height"][i]), None if epsg is None else int(epsg)
        )

    def places(self) -> list[str]:
        """Every record's place, in catalog order."""
        if self._places is None:
            self._places = [self.place(i) for i in range(len(self))]
        return self._places

    def scene(self, i: int) -> Scene:
        """The :class:`Scene` of record ``i`` (built once)."""
        got = self._scenes.get(i)
        if got is None:
            got = self._scenes[i] = self._build(i)
        return got

    def _build(self, i: int) -> Scene:
        from affine import Affine
        from rasterio.coords import BoundingBox

        c = {k: v[i] for k, v in self._cols.items()}
        band_files = json.loads(c["band_files"])
        sources = {b: BandSource(self.resolve(rel), int(bidx)) for b, (rel, bidx) in band_files.items()}
        mask_file = _text(c["mask_file"])
        mask = None
        if mask_file:
            mask = MaskBand(self.resolve(mask_file), int(c["mask_band"]), str(c["mask_source"]))
        detected_file = _text(c[DETECTED_COLUMN])
        detected = MaskBand(self.resolve(detected_file), 1, "SCL") if detected_file else None
        rows, cols = int(c["cells_rows"]), int(c["cells_cols"])
        epsg = _float(c["epsg"])
        scale, offset = _float(c["scale"]), _float(c["offset"])
        when = c["datetime"]
        return Scene(
            scene_id=str(c["scene_id"]),
            index=i,
            sensor=str(c["sensor"]),
            tile=_text(c["tile"]),
            place=self.places()[i] if self._places is not None else self.place(i),
            datetime=when.to_pydatetime() if hasattr(when, "to_pydatetime") else when,
            datetime_source=str(c["datetime_source"]),
            level=_text(c["level"]) or "",
            crs_name=str(c["crs"]),
            epsg=None if epsg is None else int(epsg),
            transform=Affine(float(c["res_x"]), 0.0, float(c["left"]), 0.0, -float(c["res_y"]), float(c["top"])),
            width=int(c["width"]),
            height=int(c["height"]),
            bounds=BoundingBox(float(c["left"]), float(c["bottom"]), float(c["right"]), float(c["top"])),
            footprint=self._geoms[i],
            bands=tuple(b for b in str(c["bands"]).split(",") if b),
            sources=MappingProxyType(sources),
            band_source=str(c["band_source"]),
            dtype=str(c["dtype"]),
            nodata=_float(c["nodata"]),
            scale=1.0 if scale is None else scale,
            offset=0.0 if offset is None else offset,
            units=str(c["units"]),
            mask=mask,
            mask_source=str(c["mask_source"]),
            cloud_pct=_float(c["cloud_pct"]),
            nodata_pct=float(c["nodata_pct"]),
            cells=CellGrids(
                int(c["cell_size"]), rows, cols, _cells_loader(c["cloud_cells"], c["valid_cells"], rows, cols)
            ),
            nearest_s1=_text(c["nearest_s1"]),
            s1_gap_hours=_float(c["s1_gap_hours"]),
            files=tuple(self.resolve(p) for p in json.loads(c["files"])),
            detected=detected,
            scale_source=_text(c[SCALE_SOURCE_COLUMN]) or "",
            band_scales=MappingProxyType(
                {b: (float(v[0]), float(v[1])) for b, v in json.loads(c[BAND_SCALES_COLUMN]).items()}
                if _text(c[BAND_SCALES_COLUMN])
                else {}
            ),
        )
