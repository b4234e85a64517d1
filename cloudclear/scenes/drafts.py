"""How files make scenes: acquisition dates and tiles, grouping into :class:`SceneDraft` records.

A *scene* is one acquisition: a Sentinel-2 image (one multi-band file, several files at different
resolutions, or ESA-style one file per band) with its cloud mask, or a Sentinel-1 VV/VH image.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, MissingDateError, NotASceneError
from cloudclear.scenes.files import (
    _DATE_TAGS,
    _TILE_RE,
    S1_BANDS,
    S2_BANDS,
    FileInfo,
    FileRole,
    classify,
)
from cloudclear.scenes.scene import is_mgrs, normalise_tile

#: Default file-name date pattern: YYYYMMDD or YYYY-MM-DD, optionally followed by THHMMSS.
DEFAULT_DATE_PATTERN = (
    r"(?<!\d)(?P<date>(?:19|20)\d{2}-?(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01]))"
    r"(?:T(?P<time>\d{6}))?(?!\d)"
)


#: YYYYMMDD, YYYY-MM-DD or YYYY:MM:DD, then optionally THHMMSS, THH:MM:SS or " HH:MM:SS", and Z.
_PLAIN_DATETIME = re.compile(r"(\d{4})([-:]?)(\d{2})\2(\d{2})(?:[T ](\d{2})(:?)(\d{2})\6(\d{2}))?Z?")


def parse_datetime(text: str) -> datetime:
    """Parse an acquisition date as found in names and tags, to an aware UTC datetime.

    Accepts "20170216", "2017-02-16", "20170216T102101", "2017-02-16T10:21:01(Z)" and the TIFF
    tag form "2017:02:16 10:21:01".
    """
    s = text.strip()
    # The forms names and tags hold in practice, without strptime's cost (an index parses a few
    # per file); anything else (fractions, other offsets) goes the general way below.
    m = _PLAIN_DATETIME.fullmatch(s)
    if m:
        y, mo, d, hh, mi, ss = (int(v or 0) for v in m.group(1, 3, 4, 5, 7, 8))
        return datetime(y, mo, d, hh, mi, ss, tzinfo=timezone.utc)
    s = re.sub(r"^(\d{4}):(\d{2}):(\d{2})", r"\1-\2-\3", s)
    s = s.replace("Z", "+00:00")
    for fmt in ("%Y%m%dT%H%M%S", "%Y%m%d", "%Y%m%dT%H%M%S%z"):
        try:
            dt = datetime.strptime(s, fmt)
            break
        except ValueError:
            continue
    else:
        dt = datetime.fromisoformat(s.replace(" ", "T"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


@dataclass(frozen=True)
class DateFound:
    """An acquisition datetime and where it came from ("name" or "tag:KEY")."""

    value: datetime
    source: str
    has_time: bool


def _date_from_match(m: re.Match[str]) -> DateFound | None:
    g = {k: v for k, v in m.groupdict().items() if v}
    try:
        if {"year", "month", "day"} <= g.keys():
            y, mo, d, hh, mi, ss = (int(g.get(k, 0)) for k in ("year", "month", "day", "hour", "minute", "second"))
            value = datetime(y, mo, d, hh, mi, ss, tzinfo=timezone.utc)
            return DateFound(value, "name", "hour" in g)
        raw = g.get("datetime") or g.get("date") or m.group(0)
        tim = g.get("time")
        text = raw.replace("-", "") + (f"T{tim}" if tim else "")
        return DateFound(parse_datetime(text), "name", bool(tim) or "T" in raw)
    except ValueError:
        return None


def find_datetime(info: FileInfo, pattern: str | re.Pattern[str] | None = None) -> DateFound:
    """The acquisition datetime of a file: from its name, else from its tags.

    The file name (matched by ``pattern``, whose named groups ``date`` and optional ``time``, or
    ``datetime``, or ``year``, ``month``, ``day`` and optional ``hour``, ``minute``, ``second``
    hold the value) is the user's explicit statement and wins; a tag on the same
    day supplies the time of day when the name has none. A product member (SAFE, THEIA, STAC:
    tag ``CLOUDCLEAR_PRODUCT``) takes the sensing time its metadata states. Nothing is guessed.

    Raises:
        MissingDateError: neither the name nor a DATETIME / TIFFTAG_DATETIME tag holds a date.
    """
    if info.tags.get("CLOUDCLEAR_PRODUCT") and info.tags.get("DATETIME"):
        # A product's metadata states the sensing time; its file names hold the datatake's start
        # (or, in old SAFE naming, the processing time).
        try:
            return DateFound(parse_datetime(info.tags["DATETIME"]), "tag:DATETIME", True)
        except ValueError:
            pass
    regex = re.compile(pattern or DEFAULT_DATE_PATTERN)
    from_name: DateFound | None = None
    m = regex.search(info.stem)
    if m:
        from_name = _date_from_match(m)
    from_tag: DateFound | None = None
    for key in _DATE_TAGS:
        if info.tags.get(key):
            try:
                from_tag = DateFound(parse_datetime(info.tags[key]), f"tag:{key}", True)
                break
            except ValueError:
                continue
    if from_name and from_tag and not from_name.has_time:
        if from_name.value.date() == from_tag.value.date():
            return DateFound(from_tag.value, f"name+{from_tag.source}", True)
    if from_name:
        return from_name
    if from_tag:
        return from_tag
    raise MissingDateError(
        f"{info.path}: no acquisition date: the name does not match the date pattern and the "
        f"file has no DATETIME / TIFFTAG_DATETIME tag (use --date-pattern)"
    )


def find_tile(info: FileInfo) -> str | None:
    """The MGRS tile id from the file name, its parent folders or the TILE_ID tag."""
    m = _TILE_RE.search(info.stem)
    if m:
        return m.group(1).upper()
    if info.tags.get("TILE_ID"):
        tag = info.tags["TILE_ID"]
        tile = normalise_tile(tag)
        # A TILE_ID that is no MGRS id is kept the way catalogs have always stored it.
        return tile if is_mgrs(tile) else tag.upper().lstrip("T")
    for parent in list(Path(info.path).parents)[:3]:
        m = _TILE_RE.search(parent.name)
        if m:
            return m.group(1).upper()
    return None


@dataclass(frozen=True)
class SceneDraft:
    """A scene assembled from files, before its pixel statistics are computed.

    Attributes:
        sensor: "S2" or "S1".
        datetime: acquisition time, aware UTC.
        datetime_source: where the time came from.
        tile: MGRS tile id, if known.
        grid: the FileInfo whose grid the scene uses (the finest resolution file).
        band_sources: band name -> (path, 1-based band index), in canonical band order.
        band_source: how bands were identified ("descriptions", "name", "count").
        mask: the mask used for cloud statistics, if any.
        mask_files: every mask file found for the scene.
        units: S1 units ("dB" or "linear"); S2: "reflectance".
        files: every file of the scene (bands and masks).
        detected: the built-in detector's mask of a scene that has a mask of its own (``index``
            writes it to ``CATALOG_masks/``; combined with ``mask`` by the clear policy), or None.
    """

    sensor: str
    datetime: datetime
    datetime_source: str
    tile: str | None
    grid: FileInfo
    band_sources: dict[str, tuple[str, int]]
    band_source: str
    mask: masks.MaskBand | None
    mask_files: tuple[str, ...]
    units: str
    files: tuple[str, ...]
    detected: masks.MaskBand | None = None

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.band_sources)

    @property
    def base_id(self) -> str:
        """Sensor, tile and time: the scene id unless two scenes share it (see scene_ids)."""
        return f"{self.sensor}_{self.tile or 'NOTILE'}_{self.datetime.strftime('%Y%m%dT%H%M%S')}"


def scene_ids(drafts: Sequence[SceneDraft]) -> list[str]:
    """Short, stable, unique ids: SENSOR_TILE_TIME, plus the folder, then the file stem, on a clash.

    Two patches of one tile on one date (folders differ) or one acquisition delivered twice (a
    stacked GeoTIFF beside its per-band JP2s) would otherwise share an id.
    """
    from collections import Counter

    ids = [d.base_id for d in drafts]
    for suffix in (lambda d: Path(d.grid.path).parent.name, lambda d: d.grid.stem):
        counts = Counter(ids)
        ids = [f"{i}_{suffix(d)}" if counts[i] > 1 else i for i, d in zip(ids, drafts, strict=True)]
    # Last resort (same-named folders under different parents): number them in path order.
    seen: Counter[str] = Counter()
    counts = Counter(ids)
    out = []
    for i in ids:
        seen[i] += 1
        out.append(f"{i}_{seen[i]}" if counts[i] > 1 else i)
    return out


@dataclass(frozen=True)
class Skipped:
    """A file left out of the catalog, and why.

    ``refused`` marks wrong input (a scene that cannot be read, dated or trusted: unreadable,
    no CRS, no date, values that fit no scale, a broken product), as opposed to a file that is no
    scene (a DEM, a reference) or a duplicate; ``index`` exits non-zero when it refused any.
    """

    path: str
    reason: str
    refused: bool = False


@dataclass
class _Group:
    sensor: str
    when: DateFound
    tile: str | None
    files: list[tuple[FileInfo, FileRole]] = field(default_factory=list)


def _mask_covers(scene: FileInfo, mask: FileInfo) -> bool:
    """Whether a mask sidecar holds the scene's extent, in its CRS: the same extent, or more (the
    reader crops it); its resolution may differ (a 20 m SCL of a 10 m scene is read nearest)."""
    if scene.crs != mask.crs:
        return False
    tol = max(scene.resolution, mask.resolution)
    (sl, sb, sr, st), (ml, mb, mr, mt) = scene.bounds, mask.bounds
    return ml <= sl + tol and mb <= sb + tol and mr >= sr - tol and mt >= st - tol


def _same_place(a: FileInfo, b: FileInfo) -> bool:
    if a.crs != b.crs:
        return False
    tol = max(a.resolution, b.resolution)
    return all(abs(x - y) <= tol for x, y in zip(a.bounds, b.bounds, strict=True))


def _folder(info: FileInfo) -> str:
    """What files of one acquisition share: their product (a SAFE's R10m and R20m folders, see
    :mod:`cloudclear.scenes.products`), else their folder."""
    return info.tags.get("CLOUDCLEAR_PRODUCT") or os.path.dirname(info.path)


def assemble(infos: Iterable[FileInfo], date_pattern: str | None = None) -> tuple[list[SceneDraft], list[Skipped]]:
    """Group files into scenes and pair masks with the S2 scenes they describe.

    Files of one acquisition (same folder or product, sensor, tile and time) make one scene: ESA
    per-band JP2s, or 10 m and 20 m files of one date. A mask sidecar belongs to the S2 scene in the same
    folder at the same time (or the same day when either side has no time of day).

    Returns:
        The scenes, and the files skipped with their reasons.
    """
    skipped: list[Skipped] = []
    groups: dict[tuple[str, str, str, str], _Group] = {}
    mask_files: list[tuple[FileInfo, FileRole, DateFound, str | None]] = []
    for info in infos:
        try:
            role = classify(info)
            if info.crs is None:
                raise InvalidRasterError(f"{info.path}: raster has no CRS (not georeferenced)")
            when = find_datetime(info, date_pattern)
        except InvalidRasterError as exc:
            skipped.append(Skipped(info.path, str(exc), refused=not isinstance(exc, NotASceneError)))
            continue
        tile = find_tile(info)
        if role.kind == "mask":
            mask_files.append((info, role, when, tile))
            continue
        sensor = "S2" if role.kind == "s2" else "S1"
        key = (_folder(info), sensor, tile or "", when.value.isoformat())
        group = groups.setdefault(key, _Group(sensor, when, tile))
        group.files.append((info, role))

    scenes: list[SceneDraft] = []
    drafts_by_dir: dict[str, list[int]] = defaultdict(list)
    for (folder, *_), group in sorted(groups.items()):
        draft = _draft(group, skipped)
        if draft is not None:
            drafts_by_dir[folder].append(len(scenes))
            scenes.append(draft)

    for info, role, when, tile in mask_files:
        target = _match_mask(scenes, drafts_by_dir[_folder(info)], info, when, tile)
        if target is None:
            skipped.append(Skipped(info.path, f"{info.path}: mask with no S2 scene of the same date in its folder"))
            continue
        scene = scenes[target]
        assert role.mask is not None
        if not _mask_covers(scene.grid, info):
            skipped.append(
                Skipped(info.path, f"{info.path}: mask grid does not cover scene {scene.grid.path}", refused=True)
            )
            continue
        best = scene.mask
        if best is None or masks.rank(role.mask.convention) < masks.rank(best.convention):
            best = role.mask
        scenes[target] = replace(
            scene,
            mask=best,
            mask_files=(*scene.mask_files, info.path),
            files=(*scene.files, info.path),
        )
    return scenes, skipped


def _draft(group: _Group, skipped: list[Skipped]) -> SceneDraft | None:
    files = sorted(group.files, key=lambda fr: (fr[0].resolution, fr[0].path))
    grid = files[0][0]
    band_sources: dict[str, tuple[str, int]] = {}
    sources = set()
    mask = None
    for info, role in files:
        if not _same_place(grid, info):
            skipped.append(
                Skipped(
                    info.path,
                    f"{info.path}: same date as {grid.path} but a different CRS or extent",
                    refused=True,
                )
            )
            continue
        new = {b: (info.path, i) for b, i in role.bands.items() if b not in band_sources}
        if not new and not role.mask:
            skipped.append(Skipped(info.path, f"{info.path}: duplicate of {grid.path} (same acquisition and bands)"))
            continue
        band_sources.update(new)
        sources.add(role.band_source)
        if role.mask and (mask is None or masks.rank(role.mask.convention) < masks.rank(mask.convention)):
            mask = role.mask
    order = S2_BANDS if group.sensor == "S2" else S1_BANDS
    band_sources = {b: band_sources[b] for b in order if b in band_sources}
    units = "reflectance" if group.sensor == "S2" else (files[0][1].units or "unknown")
    used = tuple(sorted({p for p, _ in band_sources.values()}))
    return SceneDraft(
        sensor=group.sensor,
        datetime=group.when.value,
        datetime_source=group.when.source,
        tile=group.tile,
        grid=grid,
        band_sources=band_sources,
        band_source="+".join(sorted(sources)),
        mask=mask,
        mask_files=(mask.path,) if mask else (),
        units=units,
        files=used,
    )


def _match_mask(
    scenes: Sequence[SceneDraft],
    candidates: Sequence[int],
    info: FileInfo,
    when: DateFound,
    tile: str | None,
) -> int | None:
    best: tuple[timedelta, int] | None = None
    for i in candidates:
        scene = scenes[i]
        if scene.sensor != "S2" or (tile and scene.tile and tile != scene.tile):
            continue
        gap = abs(scene.datetime - when.value)
        exact = gap < timedelta(seconds=1)
        same_day = scene.datetime.date() == when.value.date()
        if exact or (same_day and (not when.has_time or scene.datetime_source == "name")):
            if best is None or gap < best[0]:
                best = (gap, i)
    return best[1] if best else None
