"""Scenes as acquisitions: where a scene's bands and mask are and how to read them.

Both sampling (training patches) and inference (whole tiles) turn catalog
:class:`~cloudclear.scenes.Scene` values into :class:`Acquisition` values; the same acquisition
indexed twice (a stack and per-band files, copies on two grids) is kept once, by the rule ``index``
applies (:mod:`cloudclear.scenes.duplicates`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudclear.errors import CloudClearError
from cloudclear.gdal import path_exists
from cloudclear.gridio import Grid, missing_file
from cloudclear.masks import MaskBand
from cloudclear.scenes import Scene, grid_name
from cloudclear.scenes.duplicates import (
    MIN_SAME_GROUND,
    ground_overlap,
    has_time_of_day,
    preference,
    resolution_m,
    same_time,
)


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
        scale: DN * scale + offset = reflectance (S2) or the file's value (S1): one value for
            every band, or one per band where the catalog recorded different ones.
        offset: see ``scale``.
        nodata: the band nodata value (S2 0 when unset).
        units: catalog units ("reflectance", "dB", "linear", ...).
        detected: the detector's mask of an S2 scene that also has ``mask`` (``index`` made it;
            the clear policy combines the two), or None.
        level: the scene's processing level ("L1C", "L2A", "" unknown): outputs say it.
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
    scale: float | tuple[float, ...]
    offset: float | tuple[float, ...]
    nodata: float | None
    units: str
    detected: MaskBand | None = None
    level: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "scene_id": self.scene_id,
            "datetime": self.datetime.isoformat(),
            "days": round(self.days, 3),
            "cloud_pct": self.cloud_pct,
        }


def dedupe(scenes: Iterable[Scene], within: Any = None) -> list[Scene]:
    """One scene per acquisition: the same acquisition indexed twice (a stack and per-band files, a
    copy with a date-only name, a copy in another CRS), for catalogs indexed before ``index`` kept
    one of them (:func:`cloudclear.scenes.duplicates.drop_duplicates`).

    Two scenes are one acquisition under the same rule: same sensor, same UTC day (within 10
    minutes when both know their time of day) and the same ground (footprints overlapping by at
    least 80 %); the tiles of one datatake share the minute but not the ground. Of those, the one
    with a mask is kept, then the one with a time of day, the most bands, the finest resolution,
    the fewest files, the smallest id.

    Args:
        scenes: the scenes.
        within: a lon/lat polygon (the output grid's outline): the ground compared is the part of
            each footprint inside it, so that two deliveries of one acquisition cut to different
            extents are one acquisition where an output on another grid reads them.
    """
    pool = list(scenes)
    by_day: dict[tuple[str, Any], list[Scene]] = {}
    for scene in sorted(pool, key=_preference):
        by_day.setdefault((scene.sensor, scene.datetime.date()), []).append(scene)
    kept: list[Scene] = []
    for members in by_day.values():
        chosen: list[Scene] = []
        for scene in members:
            if not any(same_acquisition(scene, k, within) for k in chosen):
                chosen.append(scene)
        kept += chosen
    return sorted(kept, key=lambda s: (s.datetime, s.scene_id))


def same_acquisition(a: Scene, b: Scene, within: Any = None) -> bool:
    """Whether two scenes are one acquisition (the rule of :func:`dedupe`)."""
    if a.sensor != b.sensor:
        return False
    if not same_time(a.datetime, has_time_of_day(a.datetime), b.datetime, has_time_of_day(b.datetime)):
        return False
    fa, fb = a.footprint, b.footprint
    if within is not None:
        fa, fb = _clip(fa, within), _clip(fb, within)
    return ground_overlap(fa, fb) >= MIN_SAME_GROUND


def _clip(footprint: Any, within: Any) -> Any:
    return None if footprint is None else footprint.intersection(within)


def grid_label(scene: Scene) -> str:
    """The name of the grid a scene lies on (:func:`cloudclear.scenes.grid_name`), whatever its place."""
    return grid_name(scene.crs_name, tuple(scene.transform)[:6], scene.width, scene.height, scene.epsg)


def _preference(scene: Scene) -> tuple[Any, ...]:
    return preference(
        has_mask=scene.has_mask,
        has_time=has_time_of_day(scene.datetime),
        bands=len(scene.bands),
        res_m=resolution_m(scene.crs_name, scene.res[0]),
        product=False,
        files=len(scene.files),
        path=scene.scene_id,
    )


def acquisition(
    scene: Scene,
    slot: str,
    role: str,
    target: datetime,
    bands: Sequence[str],
    error: type[CloudClearError] = CloudClearError,
) -> Acquisition:
    """The :class:`Acquisition` of ``scene`` for a slot, reading ``bands``.

    Raises:
        error: the scene lacks one of ``bands``.
    """
    missing = [b for b in bands if b not in scene.sources]
    if missing:
        first = next(iter(scene.sources.values())).path if scene.sources else scene.scene_id
        raise error(
            f"{first}: scene {scene.scene_id} has bands {','.join(scene.bands)} but {','.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} needed (choose bands every scene has with --bands)"
        )
    return Acquisition(
        slot=slot,
        role=role,
        sensor=scene.sensor,
        scene_id=scene.scene_id,
        datetime=scene.datetime,
        days=(scene.datetime - target).total_seconds() / 86400.0,
        cloud_pct=scene.cloud_pct,
        bands=tuple(bands),
        sources=tuple((scene.sources[b].path, scene.sources[b].band) for b in bands),
        mask=scene.mask,
        scale=_per_band([scene.scaling(b)[0] for b in bands]),
        offset=_per_band([scene.scaling(b)[1] for b in bands]),
        nodata=scene.nodata,
        units=scene.units,
        detected=scene.detected,
        level=scene.level,
    )


def _per_band(values: Sequence[float]) -> float | tuple[float, ...]:
    """One value when every band has it (the common case), else one per band."""
    return float(values[0]) if len(set(values)) <= 1 and values else tuple(float(v) for v in values)


def check_files(scene: Scene, catalog_path: str | os.PathLike[str] | None = None) -> None:
    """Check that every file of ``scene`` is still there.

    Raises:
        SceneNotFoundError: a file was deleted or moved after indexing.
    """
    for path in scene.files:
        if not path_exists(path):
            raise missing_file(path, catalog_path)


def grid_of(scene: Scene, error: type[CloudClearError] = CloudClearError, catalog_path: Any = None) -> Grid:
    """The grid of a scene: its finest band file's CRS, transform and size.

    Raises:
        SceneNotFoundError: a band file is gone.
        error: no band file lies on the scene's grid.
    """
    import rasterio

    for path, _ in scene.sources.values():
        if not path_exists(path):
            raise missing_file(path, catalog_path)
        with rasterio.open(path) as src:
            if (src.width, src.height) == (scene.width, scene.height) and src.crs is not None:
                return Grid(src.crs.to_wkt(), tuple(src.transform)[:6], scene.width, scene.height)  # type: ignore[arg-type]
    raise error(f"scene {scene.scene_id}: no band file on the scene's {scene.width} x {scene.height} grid")


def grid_of_file(path: str | os.PathLike[str], error: type[CloudClearError] = CloudClearError) -> Grid:
    """The grid of a raster file (``--grid FILE``): its CRS, transform and size.

    Raises:
        error: the file is missing, unreadable or has no CRS.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    if not os.path.isfile(path):
        raise error(f"{path}: no such file (--grid takes a grid name or a raster whose grid the output takes)")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise error(f"{path}: the raster has no CRS, so its grid cannot be the output's")
            return Grid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height)  # type: ignore[arg-type]
    except RasterioIOError as exc:
        raise error(f"{path}: not a raster GDAL can open ({exc})") from None


def grid_outline(grid: Grid) -> Any:
    """A grid's outline in lon/lat (a shapely polygon, edges densified)."""
    import shapely
    from pyproj import CRS, Transformer

    b = grid.bounds()
    ring = shapely.segmentize(shapely.box(*b), max(b.right - b.left, b.top - b.bottom) / 20)
    xy = shapely.get_coordinates(ring)
    lon, lat = Transformer.from_crs(CRS.from_wkt(grid.crs), "EPSG:4326", always_xy=True).transform(xy[:, 0], xy[:, 1])
    return shapely.Polygon(list(zip(lon, lat, strict=True)))
