"""What one raster file is, and how files make scenes.

A *scene* is one acquisition: a Sentinel-2 image (one multi-band file, several files at different
resolutions, or ESA-style one file per band) with its cloud mask, or a Sentinel-1 VV/VH image.
This module reads only metadata (:func:`read_file_info`), decides what each file is
(:func:`classify`), and groups files into :class:`SceneDraft` records (:func:`assemble`). It never
reads pixels; :mod:`cloudclear.catalog` does that once per scene for nodata and cloud statistics.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, MissingDateError, NotAScene

#: File name extensions scanned for rasters (lower case).
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")

#: Sentinel-2 bands in product order.
S2_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
S1_BANDS = ("VV", "VH", "HH", "HV")

#: Band lists assumed from the band count when a file names no bands (SEN12MS-CR and friends).
S2_BANDS_BY_COUNT: dict[int, tuple[str, ...]] = {
    13: S2_BANDS,
    12: tuple(b for b in S2_BANDS if b != "B10"),
    10: ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
    4: ("B02", "B03", "B04", "B08"),
}

#: Default file-name date pattern: YYYYMMDD or YYYY-MM-DD, optionally followed by THHMMSS.
DEFAULT_DATE_PATTERN = (
    r"(?<!\d)(?P<date>(?:19|20)\d{2}-?(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01]))"
    r"(?:T(?P<time>\d{6}))?(?!\d)"
)
_DATE_TAGS = ("ACQUISITION_DATETIME", "DATETIME", "TIFFTAG_DATETIME")

# An MGRS tile id (e.g. 31UFQ, T33UUU) standing alone between separators.
_TILE_RE = re.compile(r"(?<![A-Za-z0-9])T?(\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?![A-Za-z0-9])")
# ESA one-file-per-band naming: T33UUU_20170216T102101_B04.jp2 (optionally _10m).
_ESA_BAND_RE = re.compile(r"^T(?P<tile>\d{2}[A-Z]{3})_(?P<dt>\d{8}T\d{6})_(?P<band>B\d{2}|B8A)(?:_\d{2}m)?$", re.I)
_S2_BAND_RE = re.compile(r"^B(?P<num>\d{1,2}|8A)$", re.I)
_TOKEN_SPLIT = re.compile(r"[_\-.\s]+")
_MASK_TOKENS = {"SCL", "CLM", "CLP", "MASK", "CLOUDMASK", "CLDMASK", "FMASK", "FMASK4", "CLOUD", "CLD", "QA"}
_TAG_KEYS = (
    *_DATE_TAGS,
    "TILE_ID",
    "PROCESSING_LEVEL",
    "PROCESSING_BASELINE",
    "QUANTIFICATION_VALUE",
    "BOA_ADD_OFFSET",
    "RADIO_ADD_OFFSET",
    "UNITS",
    "CLOUDCLEAR_ROLE",
    "SPACECRAFT",
    "PRODUCT",
)


def normalise_band(name: str | None) -> str | None:
    """Canonical band name: "B2" -> "B02", "b8a" -> "B8A", "VV_dB" -> "VV"; else None."""
    if not name:
        return None
    text = name.strip()
    m = _S2_BAND_RE.match(text)
    if m:
        num = m.group("num").upper()
        return "B8A" if num == "8A" else f"B{int(num):02d}"
    head = _TOKEN_SPLIT.split(text)[0].upper()
    if head in S1_BANDS:
        return head
    return None


@dataclass(frozen=True)
class FileInfo:
    """Metadata of one raster file, as cached in the catalog so unchanged files are not reopened.

    Attributes:
        path: absolute path.
        size: file size in bytes.
        mtime_ns: modification time, for change detection.
        driver: GDAL driver short name.
        count: band count.
        dtype: numpy dtype name of band 1.
        width: columns.
        height: rows.
        crs: CRS as WKT, or None.
        transform: affine coefficients (a, b, c, d, e, f).
        nodata: nodata value of band 1 (NaN stays NaN), or None.
        descriptions: band descriptions ("" where unset).
        scales: per-band scale.
        offsets: per-band offset.
        tags: the dataset tags cloudclear uses (dates, tile, levels, units, roles).
    """

    path: str
    size: int
    mtime_ns: int
    driver: str
    count: int
    dtype: str
    width: int
    height: int
    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None
    descriptions: tuple[str, ...]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def stem(self) -> str:
        return Path(self.path).stem

    @property
    def resolution(self) -> float:
        """Pixel width in CRS units."""
        return abs(self.transform[0])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the file's CRS (north-up rasters)."""
        a, _, c, _, e, f = self.transform
        xs = (c, c + a * self.width)
        ys = (f, f + e * self.height)
        return (min(xs), min(ys), max(xs), max(ys))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileInfo:
        d = dict(d)
        for key in ("transform", "descriptions", "scales", "offsets"):
            d[key] = tuple(d[key])
        return cls(**d)


def _check_tiff_complete(src: Any, size: int) -> None:
    """Raise if a GeoTIFF's last block of any band lies beyond the end of the file.

    GDAL opens a truncated GeoTIFF happily (the header is at the start) and fails only when a
    missing block is read; the TIFF directory's block offsets tell without reading pixels.
    """
    ny = -(-src.height // src.block_shapes[0][0])
    nx = -(-src.width // src.block_shapes[0][1])
    for bidx in {1, src.count}:
        try:
            off = src.get_tag_item(f"BLOCK_OFFSET_{nx - 1}_{ny - 1}", "TIFF", bidx=bidx)
            nbytes = src.get_tag_item(f"BLOCK_SIZE_{nx - 1}_{ny - 1}", "TIFF", bidx=bidx)
        except Exception:  # noqa: BLE001 - a driver without the TIFF domain: nothing to check
            return
        if off and nbytes and int(off) + int(nbytes) > size:
            raise InvalidRasterError(
                f"{src.name}: truncated GeoTIFF (band {bidx} ends at byte {int(off) + int(nbytes)}, file has {size})"
            )


def read_file_info(path: str | os.PathLike[str]) -> FileInfo:
    """Open a raster and read its metadata (no pixels).

    Args:
        path: the raster file.

    Returns:
        Its :class:`FileInfo`.

    Raises:
        InvalidRasterError: the file is not a raster GDAL can open, or a truncated GeoTIFF.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = os.path.abspath(path)
    st = os.stat(path)
    try:
        # A raster without CRS is reported by assemble() in its own words; rasterio's warning
        # would only repeat it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            if src.driver == "GTiff":
                _check_tiff_complete(src, st.st_size)
            tags = src.tags()
            info = FileInfo(
                path=path,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                driver=src.driver,
                count=src.count,
                dtype=src.dtypes[0],
                width=src.width,
                height=src.height,
                crs=src.crs.to_wkt() if src.crs else None,
                transform=tuple(src.transform)[:6],
                nodata=src.nodata,
                descriptions=tuple(d or "" for d in src.descriptions),
                scales=tuple(float(s) for s in src.scales),
                offsets=tuple(float(o) for o in src.offsets),
                tags={k: str(tags[k]) for k in _TAG_KEYS if k in tags},
            )
    except RasterioIOError as exc:
        msg = str(exc).replace(path, "").strip(" :") or "GDAL cannot open it"
        raise InvalidRasterError(f"{path}: not a readable raster ({msg})") from None
    return info


def valid_pixels(data: Any, nodata: float | None, sensor: str) -> Any:
    """Where ``data`` holds a value: finite and not ``nodata``.

    Optical reflectance uses 0 for nodata even where a file forgets to say so (DESIGN.md 3), so
    an S2 integer band without a declared nodata treats 0 as nodata.
    """
    import numpy as np

    if data.dtype.kind == "f":
        valid = np.isfinite(data)
        if nodata is not None and not np.isnan(nodata):
            valid &= data != nodata
        return valid
    if nodata is None and sensor == "S2":
        nodata = 0
    return data != nodata if nodata is not None else np.ones(data.shape, bool)


def reflectance_scale(info: FileInfo, bidx: int | None, default: float = 10000.0) -> tuple[float, float]:
    """How to turn band ``bidx`` of an optical file into reflectance: ``DN * scale + offset``.

    A GDAL scale/offset on the band wins (``bidx`` None: look at the tags only); else the
    product's QUANTIFICATION_VALUE and BOA_ADD_OFFSET / RADIO_ADD_OFFSET tags (processing baseline
    04.00 and later store -1000); else ``DN / default``.
    """
    scale = info.scales[bidx - 1] if bidx is not None else 1.0
    offset = info.offsets[bidx - 1] if bidx is not None else 0.0
    if scale != 1.0 or offset != 0.0:
        return scale, offset
    quant = float(info.tags.get("QUANTIFICATION_VALUE") or default)
    add = info.tags.get("BOA_ADD_OFFSET") or info.tags.get("RADIO_ADD_OFFSET") or "0"
    return 1.0 / quant, float(add) / quant


def parse_datetime(text: str) -> datetime:
    """Parse an acquisition date as found in names and tags, to an aware UTC datetime.

    Accepts "20170216", "2017-02-16", "20170216T102101", "2017-02-16T10:21:01(Z)" and the TIFF
    tag form "2017:02:16 10:21:01".
    """
    s = text.strip()
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
    day supplies the time of day when the name has none. Nothing is guessed.

    Raises:
        MissingDateError: neither the name nor a DATETIME / TIFFTAG_DATETIME tag holds a date.
    """
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
        return info.tags["TILE_ID"].upper().lstrip("T")
    for parent in list(Path(info.path).parents)[:3]:
        m = _TILE_RE.search(parent.name)
        if m:
            return m.group(1).upper()
    return None


@dataclass(frozen=True)
class FileRole:
    """What a file is: its kind and, per kind, what it holds.

    kind is "s2" (S2 bands), "s1" (SAR backscatter) or "mask". ``bands`` maps band name to the
    1-based band index in the file; ``mask`` is set for masks (and S2 files with a mask band).
    """

    kind: str
    bands: dict[str, int]
    band_source: str
    mask: masks.MaskBand | None = None
    units: str | None = None


def _tokens(info: FileInfo) -> set[str]:
    return {t.upper() for t in _TOKEN_SPLIT.split(info.stem) if t}


def classify(info: FileInfo) -> FileRole:
    """Decide whether a file holds S2 bands, S1 backscatter or a cloud mask.

    Decisions rest on band descriptions first, then the file name (ESA band naming, tokens such
    as S1, S2, SCL, CLM, MASK), then the band count; anything else is not a scene.

    Raises:
        NotAScene: with the reason, for rasters that are none of these.
    """
    tokens = _tokens(info)
    if info.tags.get("CLOUDCLEAR_ROLE", "").lower() == "truth" or "TRUTH" in tokens:
        raise NotAScene(f"{info.path}: cloud-free reference (truth), not an acquisition")
    names = [normalise_band(d) for d in info.descriptions]
    convs = [masks.convention_of(d) if d else None for d in info.descriptions]

    if any(n in S1_BANDS for n in names if n):
        bands = {n: i + 1 for i, n in enumerate(names) if n in S1_BANDS}
        return FileRole("s1", bands, "descriptions", units=_s1_units(info))

    s2_bands = {n: i + 1 for i, n in enumerate(names) if n in S2_BANDS}
    mask_band = _pick_mask_band(info, convs, tokens)
    if s2_bands:
        return FileRole("s2", s2_bands, "descriptions", mask=mask_band)
    if mask_band is not None:
        return FileRole("mask", {}, "", mask=mask_band)

    esa = _ESA_BAND_RE.match(info.stem)
    if esa and info.count == 1:
        return FileRole("s2", {esa.group("band").upper(): 1}, "name")

    is_float = info.dtype.startswith("float")
    if "S1" in tokens and info.count in (1, 2):
        bands = dict(zip(("VV", "VH")[: info.count], range(1, info.count + 1), strict=True))
        return FileRole("s1", bands, "count", units=_s1_units(info))
    if ("S2" in tokens or tokens & {"L1C", "L2A", "MSIL1C", "MSIL2A"}) and not is_float:
        assumed = S2_BANDS_BY_COUNT.get(info.count)
        if assumed:
            return FileRole("s2", {b: i + 1 for i, b in enumerate(assumed)}, "count")
    raise NotAScene(
        f"{info.path}: not recognised as S2, S1 or a mask ({info.count} band(s) {info.dtype}, "
        f"no band descriptions naming S2/S1 bands or a mask)"
    )


def _pick_mask_band(info: FileInfo, convs: list[str | None], tokens: set[str]) -> masks.MaskBand | None:
    found = [(masks.rank(c), i + 1, c) for i, c in enumerate(convs) if c]
    if found:
        _, bidx, conv = min(found)
        return masks.MaskBand(info.path, bidx, conv)
    if info.count == 1 and tokens & _MASK_TOKENS and not info.dtype.startswith("float"):
        named = masks.convention_of_tokens(tokens)
        if named:
            return masks.MaskBand(info.path, 1, named)
    return None


def _s1_units(info: FileInfo) -> str:
    text = " ".join((*info.descriptions, info.tags.get("UNITS", ""))).lower()
    if "db" in text.split() or "_db" in text or "db" == info.tags.get("UNITS", "").lower():
        return "dB"
    if "linear" in text or not info.dtype.startswith("float"):
        return "linear"
    return _s1_units_from_pixels(info)


def _s1_units_from_pixels(info: FileInfo) -> str:
    # Backscatter in dB is mostly negative; linear power is positive. One central block decides.
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    h, w = min(info.height, 256), min(info.width, 256)
    win = Window((info.width - w) // 2, (info.height - h) // 2, w, h)
    with rasterio.open(info.path) as src:
        data = src.read(1, window=win, masked=True).astype("float64").filled(np.nan)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return "unknown"
    return "dB" if float(np.median(data)) < 0 else "linear"


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
    """A file left out of the catalog, and why."""

    path: str
    reason: str


@dataclass
class _Group:
    sensor: str
    when: DateFound
    tile: str | None
    files: list[tuple[FileInfo, FileRole]] = field(default_factory=list)


def _same_place(a: FileInfo, b: FileInfo) -> bool:
    if a.crs != b.crs:
        return False
    tol = max(a.resolution, b.resolution)
    return all(abs(x - y) <= tol for x, y in zip(a.bounds, b.bounds, strict=True))


def assemble(infos: Iterable[FileInfo], date_pattern: str | None = None) -> tuple[list[SceneDraft], list[Skipped]]:
    """Group files into scenes and pair masks with the S2 scenes they describe.

    Files of one acquisition (same folder, sensor, tile and time) make one scene: ESA per-band
    JP2s, or 10 m and 20 m files of one date. A mask sidecar belongs to the S2 scene in the same
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
            skipped.append(Skipped(info.path, str(exc)))
            continue
        tile = find_tile(info)
        if role.kind == "mask":
            mask_files.append((info, role, when, tile))
            continue
        sensor = "S2" if role.kind == "s2" else "S1"
        key = (os.path.dirname(info.path), sensor, tile or "", when.value.isoformat())
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
        target = _match_mask(scenes, drafts_by_dir[os.path.dirname(info.path)], info, when, tile)
        if target is None:
            skipped.append(Skipped(info.path, f"{info.path}: mask with no S2 scene of the same date in its folder"))
            continue
        scene = scenes[target]
        assert role.mask is not None
        if not _same_place(scene.grid, info):
            skipped.append(Skipped(info.path, f"{info.path}: mask grid does not cover scene {scene.grid.path}"))
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
