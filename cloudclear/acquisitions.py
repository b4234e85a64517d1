"""Scenes as acquisitions: where a scene's bands and mask are and how to read them.

Both sampling (training patches) and inference (whole tiles) turn catalog
:class:`~cloudclear.scenes.Scene` values into :class:`Acquisition` values; the same acquisition
indexed twice (a stack and per-band files) is kept once, preferring the scene with a mask, then the
fewest files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudclear.errors import CloudClearError
from cloudclear.gridio import Grid, missing_file
from cloudclear.masks import MaskBand
from cloudclear.scenes import Scene


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
        detected: the detector's mask of an S2 scene that also has ``mask`` (``index`` made it;
            the clear policy combines the two), or None.
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
    detected: MaskBand | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "scene_id": self.scene_id,
            "datetime": self.datetime.isoformat(),
            "days": round(self.days, 3),
            "cloud_pct": self.cloud_pct,
        }


def dedupe(scenes: Iterable[Scene]) -> list[Scene]:
    """One scene per acquisition: the same acquisition indexed twice (a stack and per-band files).

    Two scenes are one acquisition when they share the minute, the tile and the grid corner; the
    tiles of one datatake share the minute but not the place. Of those, the one with a mask is
    kept, then the one with the fewest files.
    """
    best: dict[tuple[Any, ...], Scene] = {}
    for scene in scenes:
        when = scene.datetime.replace(second=0, microsecond=0)
        key = (when, scene.tile or "", scene.crs_name, round(scene.bounds.left), round(scene.bounds.top))
        prev = best.get(key)
        if prev is None or _preference(scene) < _preference(prev):
            best[key] = scene
    return sorted(best.values(), key=lambda s: s.datetime)


def _preference(scene: Scene) -> tuple[Any, ...]:
    return (not scene.has_mask, len(scene.files), scene.scene_id)


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
        scale=scene.scale,
        offset=scene.offset,
        nodata=scene.nodata,
        units=scene.units,
        detected=scene.detected,
    )


def check_files(scene: Scene, catalog_path: str | os.PathLike[str] | None = None) -> None:
    """Check that every file of ``scene`` is still there.

    Raises:
        SceneNotFoundError: a file was deleted or moved after indexing.
    """
    for path in scene.files:
        if not os.path.exists(path):
            raise missing_file(path, catalog_path)


def grid_of(scene: Scene, error: type[CloudClearError] = CloudClearError, catalog_path: Any = None) -> Grid:
    """The grid of a scene: its finest band file's CRS, transform and size.

    Raises:
        SceneNotFoundError: a band file is gone.
        error: no band file lies on the scene's grid.
    """
    import rasterio

    for path, _ in scene.sources.values():
        if not os.path.exists(path):
            raise missing_file(path, catalog_path)
        with rasterio.open(path) as src:
            if (src.width, src.height) == (scene.width, scene.height) and src.crs is not None:
                return Grid(src.crs.to_wkt(), tuple(src.transform)[:6], scene.width, scene.height)  # type: ignore[arg-type]
    raise error(f"scene {scene.scene_id}: no band file on the scene's {scene.width} x {scene.height} grid")
