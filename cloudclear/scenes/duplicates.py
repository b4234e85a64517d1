"""One acquisition, one scene: the same acquisition delivered twice is recognised and kept once.

Users often hold one acquisition in two forms: a stacked GeoTIFF beside the product's per-band
files, an export with a date-only name beside one with the sensing time in its tags, a copy
reprojected to the neighbouring UTM zone. File names and grids differ, so :func:`~cloudclear.scenes.assemble` makes
two scenes of them; :func:`drop_duplicates` recognises them by what they are:

- the same sensor;
- the same UTC day, and within :data:`MAX_TIME_GAP` when both know their time of day (a place
  seen twice in one day is seen from adjacent orbits, about 100 minutes apart); a time of exactly
  midnight is a date without a time (:func:`has_time_of_day`);
- the same ground: their footprints in lon/lat (the grid's extent, edges densified so that a
  copy in another CRS compares fairly) overlap with an intersection over union of at least
  :data:`MIN_SAME_GROUND`. A crop of another extent is another product and is kept.

Of each set of duplicates one scene is kept (:func:`preference`): the one with a mask, then the one
that knows its time of day, then the most bands, the finest resolution, a product (a
``CLOUDCLEAR_PRODUCT`` tag) over loose files, the fewest files (one stack reads faster than 13
JP2s), and last the path order. The same rule picks the scene used at selection time
for catalogs indexed before it existed (:func:`cloudclear.acquisitions.dedupe`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Any

from cloudclear.scenes.drafts import SceneDraft, Skipped
from cloudclear.scenes.files import FileInfo

#: Two acquisitions that both know their time of day are one only within this gap.
MAX_TIME_GAP = timedelta(minutes=10)
#: The least intersection over union of two footprints that makes them the same ground.
MIN_SAME_GROUND = 0.8
#: The tag a product reader (SAFE, THEIA, STAC) sets on the files it hands over.
PRODUCT_TAG = "CLOUDCLEAR_PRODUCT"
_METRES_PER_DEGREE = 111_320.0


def has_time_of_day(when: datetime) -> bool:
    """Whether an acquisition time holds a time of day, or only a date.

    A date-only file name gives 00:00:00, and so do the tags of exports that store a date as a
    datetime (``ACQUISITION_DATETIME=2021-03-14T00:00:00Z``): exactly midnight counts as no time
    of day, whether it came from a name or a tag (tags hold such placeholders as often as names).
    """
    return when.timetz().replace(tzinfo=None) != time(0, 0)


def same_time(a: datetime, a_has_time: bool, b: datetime, b_has_time: bool) -> bool:
    """Whether two acquisition times can be one acquisition: the same UTC day, and within
    :data:`MAX_TIME_GAP` when both hold a time of day."""
    if a.date() != b.date():
        return False
    return not (a_has_time and b_has_time) or abs(a - b) <= MAX_TIME_GAP


def ground_overlap(a: Any, b: Any) -> float:
    """Intersection over union of two footprints (shapely polygons in one CRS), 0 to 1."""
    if a is None or b is None or a.is_empty or b.is_empty:
        return 0.0
    union = a.union(b).area
    return float(a.intersection(b).area / union) if union > 0 else 0.0


@functools.lru_cache(maxsize=64)
def _to_lonlat(wkt: str) -> Any:
    from pyproj import CRS, Transformer

    return Transformer.from_crs(CRS.from_user_input(wkt), "EPSG:4326", always_xy=True)


@functools.lru_cache(maxsize=64)
def _metres_per_unit(wkt: str) -> float | None:
    """Metres per CRS unit (None for a geographic CRS, whose units are degrees)."""
    from pyproj import CRS

    crs = CRS.from_user_input(wkt)
    if crs.is_geographic:
        return None
    try:
        factor = crs.axis_info[0].unit_conversion_factor
    except (IndexError, AttributeError):
        return 1.0
    return float(factor) or 1.0


def footprint(info: FileInfo) -> Any:
    """A file's extent in lon/lat as a shapely polygon (edges densified so that they curve), or
    None without a CRS."""
    if not info.crs:
        return None
    return _footprint(info.crs, info.bounds)


@functools.lru_cache(maxsize=4096)
def _footprint(crs: str, bounds: tuple[float, float, float, float]) -> Any:
    """:func:`footprint` by CRS and bounds: the scenes of a series share their grid (shapely
    geometries are immutable, so one polygon serves them all)."""
    import shapely

    left, bottom, right, top = bounds
    ring = shapely.segmentize(shapely.box(left, bottom, right, top), max(right - left, top - bottom) / 20)
    xy = shapely.get_coordinates(ring)
    lon, lat = _to_lonlat(crs).transform(xy[:, 0], xy[:, 1])
    return shapely.Polygon(list(zip(lon, lat, strict=True)))


def _apart(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    """Whether two footprints' bounding boxes (minx, miny, maxx, maxy) are disjoint, so that
    their :func:`ground_overlap` is 0 (None: no footprint)."""
    if a is None or b is None:
        return True
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def resolution_m(crs: str | None, res: float) -> float:
    """A pixel size in metres (a geographic CRS's degrees counted along a meridian), to compare
    grids in different CRSs."""
    if not crs:
        return res
    per = _metres_per_unit(crs)
    return res * (_METRES_PER_DEGREE if per is None else per)


def preference(
    *, has_mask: bool, has_time: bool, bands: int, res_m: float, product: bool, files: int, path: str
) -> tuple[Any, ...]:
    """The sort key of duplicates: the smallest is kept (see the module's description)."""
    return (not has_mask, not has_time, -bands, round(res_m, 6), not product, files, path)


def _preference(draft: SceneDraft) -> tuple[Any, ...]:
    return preference(
        has_mask=draft.mask is not None,
        has_time=has_time_of_day(draft.datetime),
        bands=len(draft.band_sources),
        res_m=resolution_m(draft.grid.crs, draft.grid.resolution),
        product=bool(draft.grid.tags.get(PRODUCT_TAG)),
        files=len(draft.files),
        path=draft.grid.path,
    )


def drop_duplicates(drafts: Sequence[SceneDraft]) -> tuple[list[SceneDraft], list[Skipped]]:
    """Keep one scene per acquisition (see the module's description).

    Args:
        drafts: the scenes :func:`cloudclear.scenes.assemble` made.

    Returns:
        The scenes kept, in their input order, and one :class:`Skipped` per scene dropped (its grid
        file, ``"<path>: duplicate of <kept path> (S2, same day, 97 % same ground)"``).
    """
    order = sorted(range(len(drafts)), key=lambda i: _preference(drafts[i]))
    shapes = [footprint(d.grid) for d in drafts]
    # Bounding boxes first: most scenes of a day lie elsewhere, and a box test costs far less.
    boxes = [None if s is None or s.is_empty else tuple(s.bounds) for s in shapes]
    timed = [has_time_of_day(d.datetime) for d in drafts]
    kept: list[int] = []
    # Duplicates share the sensor and the UTC day: compare within those only.
    kept_on: dict[tuple[str, date], list[int]] = {}
    skipped: list[Skipped] = []
    for i in order:
        d = drafts[i]
        dup: tuple[int, float] | None = None
        same_day = kept_on.setdefault((d.sensor, d.datetime.date()), [])
        for k in same_day:
            other = drafts[k]
            if not same_time(d.datetime, timed[i], other.datetime, timed[k]):
                continue
            if _apart(boxes[i], boxes[k]):
                continue
            iou = ground_overlap(shapes[i], shapes[k])
            if iou >= MIN_SAME_GROUND:
                dup = (k, iou)
                break
        if dup is None:
            kept.append(i)
            same_day.append(i)
            continue
        k, iou = dup
        other = drafts[k]
        when = "same time" if timed[i] and timed[k] else "same day"
        skipped.append(
            Skipped(
                d.grid.path,
                f"{d.grid.path}: duplicate of {other.grid.path} ({d.sensor}, {when}, {100 * iou:.0f} % same ground)",
            )
        )
    keep = sorted(kept)
    skipped.sort(key=lambda s: s.path)
    return [drafts[i] for i in keep], skipped
