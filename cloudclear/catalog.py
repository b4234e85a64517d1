"""The scene catalog: scan a directory, persist scene records, query them through an R-tree.

The records are the data: one GeoPackage (``scenes`` layer with footprints in EPSG:4326, plus the
``files`` and ``meta`` tables) that geopandas and QGIS open. The rtree index over
(lon, lat, time) is derived from the records, persisted beside them for speed and rebuilt when it
is missing or stale; it is never the only copy. Re-indexing reopens only new or changed files and
recomputes statistics only for scenes whose files changed. Every write goes to a temporary file
that replaces the catalog in one rename, so an interrupted run leaves the previous catalog intact.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear import __version__, masks
from cloudclear.errors import (
    CatalogError,
    CatalogWriteError,
    CloudClearError,
    EmptyCatalogError,
    InvalidRasterError,
    QueryError,
    SceneNotFoundError,
)
from cloudclear.scenes import (
    RASTER_SUFFIXES,
    FileInfo,
    SceneDraft,
    Skipped,
    assemble,
    read_file_info,
    reflectance_scale,
    scene_ids,
    valid_pixels,
)

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np

log = logging.getLogger(__name__)

#: Default catalog file name, written inside the indexed directory.
DEFAULT_NAME = "cloudclear.gpkg"
#: Side of the square statistics cells, in pixels of the scene grid.
CELL = 64
#: Rows read at a time when computing statistics (a multiple of CELL): bounds memory on full tiles.
STRIP_ROWS = 8 * CELL
#: Cell value meaning "no valid pixel" in the per-cell grids.
NO_CELL = 255
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SceneStats:
    """Pixel statistics of one scene on its grid.

    Attributes:
        nodata_pct: % of pixels without data.
        cloud_pct: % of valid pixels that are cloud, thin cloud or cloud shadow; None without mask.
        cloud_cells: per CELL x CELL cell, cloud % (0-100), NO_CELL where unknown.
        valid_cells: per cell, % of pixels with data (0-100).
    """

    nodata_pct: float
    cloud_pct: float | None
    cloud_cells: np.ndarray
    valid_cells: np.ndarray


def _cell_sums(arr: np.ndarray, cell: int) -> np.ndarray:
    import numpy as np

    h, w = arr.shape
    ph, pw = -h % cell, -w % cell
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw)))
    return arr.reshape(arr.shape[0] // cell, cell, arr.shape[1] // cell, cell).sum(axis=(1, 3))


def scene_stats(draft: SceneDraft, cell: int = CELL) -> SceneStats:
    """Read band 1 and the mask of a scene in strips and compute its statistics.

    Only the first band (for validity) and the mask are read, strip by strip, so memory stays
    bounded on full 10980 x 10980 tiles. A mask on another grid (a 20 m SCL for a 10 m scene) is
    sampled at the scene's pixel centres (nearest neighbour).

    Raises:
        InvalidRasterError: a file fails to decode (truncated, corrupt).
    """
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    grid = draft.grid
    height, width = grid.height, grid.width
    # Validity comes from a band on the scene grid (the finest file), not e.g. a 60 m B01.
    path, bidx = next((p, b) for p, b in draft.band_sources.values() if p == grid.path)
    ncy, ncx = -(-height // cell), -(-width // cell)
    valid_n = np.zeros((ncy, ncx), np.int64)
    known_n = np.zeros((ncy, ncx), np.int64)
    cloud_n = np.zeros((ncy, ncx), np.int64)
    # Pixels per cell: full cells, smaller ones along the bottom and right edges.
    total_n = np.outer(
        np.minimum(cell, height - cell * np.arange(ncy)), np.minimum(cell, width - cell * np.arange(ncx))
    )
    strip = max(cell, STRIP_ROWS - STRIP_ROWS % cell)
    current = path
    try:
        with rasterio.open(path) as src:
            msrc = rasterio.open(draft.mask.path) if draft.mask else None
            try:
                for r0 in range(0, height, strip):
                    current = path
                    h = min(strip, height - r0)
                    data = src.read(bidx, window=Window(0, r0, width, h))
                    valid = valid_pixels(data, src.nodatavals[bidx - 1], draft.sensor)
                    c0 = r0 // cell
                    c1 = c0 + -(-h // cell)
                    valid_n[c0:c1] += _cell_sums(valid, cell)
                    if msrc is not None and draft.mask is not None:
                        current = draft.mask.path
                        cls = _mask_strip(msrc, draft.mask, grid, r0, h)
                        known = valid & (cls != masks.MaskClass.NODATA)
                        cloud = known & np.isin(cls, masks.OBSCURED)
                        known_n[c0:c1] += _cell_sums(known, cell)
                        cloud_n[c0:c1] += _cell_sums(cloud, cell)
            finally:
                if msrc is not None:
                    msrc.close()
    except rasterio.errors.RasterioIOError as exc:
        raise InvalidRasterError(f"{current}: cannot read pixels, corrupt or truncated ({exc})") from None

    total = int(total_n.sum())
    nodata_pct = 100.0 * (1.0 - valid_n.sum() / total)
    with np.errstate(invalid="ignore", divide="ignore"):
        valid_cells = np.round(100.0 * valid_n / total_n).astype(np.uint8)
        cloud_frac = np.where(known_n > 0, 100.0 * cloud_n / np.maximum(known_n, 1), NO_CELL)
    cloud_cells = np.round(cloud_frac).astype(np.uint8)
    if draft.mask is None:
        cloud_pct = None
        cloud_cells[:] = NO_CELL
    else:
        known = int(known_n.sum())
        cloud_pct = 100.0 * cloud_n.sum() / known if known else None
    return SceneStats(float(nodata_pct), None if cloud_pct is None else float(cloud_pct), cloud_cells, valid_cells)


def _mask_strip(msrc: Any, mask: masks.MaskBand, grid: FileInfo, r0: int, h: int) -> np.ndarray:
    import numpy as np
    from rasterio.windows import Window

    same = (
        msrc.width == grid.width
        and msrc.height == grid.height
        and all(
            abs(a - b) <= 1e-6 * max(1.0, abs(b))
            for a, b in zip(tuple(msrc.transform)[:6], grid.transform, strict=True)
        )
    )
    nodata = msrc.nodatavals[mask.band - 1]
    if same:
        raw = msrc.read(mask.band, window=Window(0, r0, grid.width, h))
        return masks.decode(raw, mask.convention, nodata)
    # Map the scene's pixel centres in this strip to mask pixels (nearest neighbour); north-up
    # grids only, so columns depend on x alone and rows on y alone.
    ga, _, gc, _, ge, gf = grid.transform
    ma, _, mc, _, me, mf = tuple(msrc.transform)[:6]
    xs = gc + ga * (np.arange(grid.width) + 0.5)
    ys = gf + ge * (np.arange(r0, r0 + h) + 0.5)
    cols = np.floor((xs - mc) / ma).astype(np.int64)
    rows = np.floor((ys - mf) / me).astype(np.int64)
    lo, hi = max(int(rows.min()), 0), min(int(rows.max()) + 1, msrc.height)
    out = np.full((h, grid.width), masks.MaskClass.NODATA, np.uint8)
    if lo >= hi:
        return out
    raw = msrc.read(mask.band, window=Window(0, lo, msrc.width, hi - lo))
    decoded = masks.decode(raw, mask.convention, nodata)
    rin = (rows >= lo) & (rows < hi)
    cin = (cols >= 0) & (cols < msrc.width)
    sub = decoded[np.clip(rows - lo, 0, hi - lo - 1)][:, np.clip(cols, 0, msrc.width - 1)]
    out[np.ix_(rin, cin)] = sub[np.ix_(rin, cin)]
    return out


def _encode_cells(arr: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(arr.astype("uint8").tobytes(), 6)).decode("ascii")


def decode_cells(text: str, rows: int, cols: int) -> np.ndarray:
    """Decode a per-cell grid column (``cloud_cells`` / ``valid_cells``) to a (rows, cols) array."""
    import numpy as np

    return np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# Records


@functools.lru_cache(maxsize=64)
def _to_lonlat(wkt: str) -> Any:
    from pyproj import CRS, Transformer

    return Transformer.from_crs(CRS.from_wkt(wkt), "EPSG:4326", always_xy=True)


def _footprints(info: FileInfo) -> tuple[Any, Any]:
    import shapely

    native = shapely.box(*info.bounds)
    if not info.crs:
        return native, native
    left, bottom, right, top = info.bounds
    ring = shapely.segmentize(native, max(right - left, top - bottom) / 20)
    xy = shapely.get_coordinates(ring)
    lon, lat = _to_lonlat(info.crs).transform(xy[:, 0], xy[:, 1])
    return native, shapely.Polygon(list(zip(lon, lat, strict=True)))


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
    info = draft.grid
    text = " ".join((info.tags.get("PROCESSING_LEVEL", ""), info.tags.get("PRODUCT", ""), info.stem)).upper()
    for level in ("L2A", "L1C"):
        if level in text:
            return level
    return "GRD" if draft.sensor == "S1" else ""


def _signature(paths: Sequence[str], infos: dict[str, FileInfo]) -> str:
    return json.dumps(sorted((Path(p).name, infos[p].size, infos[p].mtime_ns) for p in paths))


def _record(
    scene_id: str, draft: SceneDraft, stats: SceneStats, infos: dict[str, FileInfo], rel: Any
) -> dict[str, Any]:
    native, geo = _footprints(draft.grid)
    label, epsg = crs_label(draft.grid.crs)
    scale, offset = _scale_offset(draft)
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
        "mask_source": draft.mask.convention if draft.mask else "no mask",
        "mask_file": rel(draft.mask.path) if draft.mask else None,
        "mask_band": draft.mask.band if draft.mask else None,
        "nodata_pct": round(stats.nodata_pct, 4),
        "cloud_pct": None if stats.cloud_pct is None else round(stats.cloud_pct, 4),
        "cell_size": CELL,
        "cells_rows": int(stats.cloud_cells.shape[0]),
        "cells_cols": int(stats.cloud_cells.shape[1]),
        "cloud_cells": _encode_cells(stats.cloud_cells),
        "valid_cells": _encode_cells(stats.valid_cells),
        "nearest_s1": None,
        "s1_gap_hours": None,
        "files": json.dumps([rel(p) for p in draft.files]),
        "signature": _signature(draft.files, infos),
        "geometry": geo,
    }


def _stats_from_row(row: Any) -> SceneStats:
    rows, cols = int(row["cells_rows"]), int(row["cells_cols"])
    cloud = None if _isnull(row["cloud_pct"]) else float(row["cloud_pct"])
    return SceneStats(
        float(row["nodata_pct"]),
        cloud,
        decode_cells(row["cloud_cells"], rows, cols),
        decode_cells(row["valid_cells"], rows, cols),
    )


def _isnull(v: Any) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


# ---------------------------------------------------------------------------------------------
# The catalog


@dataclass(frozen=True)
class IndexResult:
    """What :func:`build_index` did.

    Attributes:
        catalog_path: the GeoPackage written.
        scenes: scene count in the catalog.
        files_seen: raster files found under the root.
        files_opened: files whose metadata was read this run (new or changed).
        scenes_computed: scenes whose pixel statistics were computed this run.
        scenes_reused: scenes carried over unchanged from the previous catalog.
        skipped: files left out, with reasons.
        seconds: wall time.
        summary: counts by sensor and tile, dates, cloud distribution.
        masks_detected: S2 scenes whose mask was computed (or reused) by a detector.
    """

    catalog_path: Path
    scenes: int
    files_seen: int
    files_opened: int
    scenes_computed: int
    scenes_reused: int
    skipped: tuple[Skipped, ...]
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    masks_detected: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "catalog": str(self.catalog_path),
            "scenes": self.scenes,
            "files_seen": self.files_seen,
            "files_opened": self.files_opened,
            "scenes_computed": self.scenes_computed,
            "scenes_reused": self.scenes_reused,
            "masks_detected": self.masks_detected,
            "seconds": round(self.seconds, 3),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "summary": self.summary,
        }


def _iter_rasters(
    root: Path, exclude: set[Path], exclude_dirs: frozenset[Path] | set[Path] = frozenset()
) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and Path(dirpath, d) not in exclude_dirs)
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if name.lower().endswith(RASTER_SUFFIXES) and not name.startswith(".") and p not in exclude:
                found.append(p)
    return found


def _check_writable(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise CatalogWriteError(f"{path}: cannot create the catalog folder ({exc.strerror})") from None
    probe = parent / f".{path.name}.probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CatalogWriteError(f"{path}: catalog folder is not writable ({exc.strerror})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise CatalogWriteError(f"{path}: catalog file is not writable")


def _remove_stale_temporaries(cat_path: Path) -> None:
    """Delete temporary files left by an index run that was killed (its process is gone)."""
    import re

    from cloudclear._tempfiles import remove_orphans

    pattern = re.compile(rf"^\.{re.escape(cat_path.name)}(\.rtree)?\.tmp-(?P<pid>\d+)")
    remove_orphans(cat_path.parent, f".{cat_path.name}*.tmp-*", pattern)


def build_index(
    root: str | os.PathLike[str],
    catalog_path: str | os.PathLike[str] | None = None,
    *,
    date_pattern: str | None = None,
    rebuild: bool = False,
    progress: bool = False,
    detect: str | None = None,
) -> IndexResult:
    """Scan a directory for S2, S1 and mask rasters and write (or update) its catalog.

    Args:
        root: the directory to scan, recursively.
        catalog_path: the GeoPackage to write; default ``ROOT/cloudclear.gpkg``.
        date_pattern: regex for dates in file names, with named group ``date`` (YYYYMMDD) and
            optional ``time`` (HHMMSS), or ``datetime``; default matches YYYYMMDD[THHMMSS].
        rebuild: ignore the previous catalog and reopen every file.
        progress: show progress bars on stderr.
        detect: a detector (:data:`cloudclear.detect.DETECTORS`) that computes a mask for every S2
            scene without one. Masks go to ``CATALOG_masks/`` beside the catalog as SCL GeoTIFFs and
            are reused by later runs (with or without ``detect``) while the scene is unchanged.

    Returns:
        An :class:`IndexResult`.

    Raises:
        SceneNotFoundError: root does not exist or is not a directory.
        CatalogWriteError: the catalog cannot be written.
        EmptyCatalogError: no usable scene was found (the previous catalog is left as it was).
    """
    import re

    t0 = time.perf_counter()
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise SceneNotFoundError(f"{root}: no such directory")
    cat_path = Path(catalog_path).expanduser().resolve() if catalog_path else root / DEFAULT_NAME
    if date_pattern:
        try:
            re.compile(date_pattern)
        except re.error as exc:
            raise QueryError(f"date pattern {date_pattern!r} is not a valid regular expression: {exc}") from None
    _check_writable(cat_path)
    _remove_stale_temporaries(cat_path)

    previous: Catalog | None = None
    if cat_path.exists() and not rebuild:
        try:
            previous = Catalog.open(cat_path)
        except CatalogError as exc:
            log.warning("%s; indexing from scratch", exc)

    import rasterio

    # GDAL lists a file's folder on every open to find sidecars: quadratic in big folders.
    if detect is not None:
        from cloudclear.detect.pixels import get_detector

        get_detector(detect)  # a wrong name or a missing package fails before the scan
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        return _build(root, cat_path, previous, date_pattern, progress, t0, detect)


def masks_folder(cat_path: Path) -> Path:
    """Where ``index --detect`` writes the masks it computes: ``CATALOG_masks/`` beside the catalog."""
    return cat_path.parent / f"{cat_path.stem}_masks"


def _detected_mask(
    draft: SceneDraft, scene_id: str, folder: Path, detect: str | None, progress: bool
) -> tuple[masks.MaskBand | None, str | None, bool]:
    """The detected mask of an unmasked S2 scene: reused if current, computed if ``detect``.

    Returns the mask (or None), why detection failed (or None), and whether it was computed now.
    """
    import rasterio

    from cloudclear.detect.scene import MaskOptions, mask_draft, mask_name
    from cloudclear.errors import DetectError

    dst = folder / mask_name(scene_id)
    if dst.exists():
        newest = max(Path(p).stat().st_mtime_ns for p in draft.files)
        with rasterio.open(dst) as src:
            made_by = src.tags().get("CLOUDCLEAR_DETECTOR")
        if dst.stat().st_mtime_ns >= newest and (detect is None or made_by == detect):
            return masks.MaskBand(str(dst), 1, "SCL"), None, False
    if detect is None:
        return None, None, False
    try:
        mask_draft(draft, scene_id, dst, MaskOptions(detector=detect, overwrite=True, progress=progress))
    except (DetectError, InvalidRasterError) as exc:
        return None, str(exc), False
    return masks.MaskBand(str(dst), 1, "SCL"), None, True


def _build(
    root: Path,
    cat_path: Path,
    previous: Catalog | None,
    date_pattern: str | None,
    progress: bool,
    t0: float,
    detect: str | None = None,
) -> IndexResult:
    from dataclasses import replace

    from tqdm import tqdm

    mask_dir = masks_folder(cat_path)
    paths = _iter_rasters(root, {cat_path}, {mask_dir})
    cache = previous.file_cache() if previous else {}
    infos: dict[str, FileInfo] = {}
    errors: list[Skipped] = []
    file_rows: list[dict[str, Any]] = []
    opened = 0
    for p in tqdm(paths, desc="metadata", unit="file", disable=not progress, leave=False):
        st = p.stat()
        key = str(p)
        hit = cache.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            info, error = hit[2], hit[3]
        else:
            opened += 1
            try:
                info, error = read_file_info(p), None
            except InvalidRasterError as exc:
                info, error = None, str(exc)
        if info is not None:
            infos[key] = info
        else:
            errors.append(Skipped(key, error or f"{key}: unreadable"))
        file_rows.append(
            {
                "path": key,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "info": info,
                "error": error,
            }
        )

    drafts, skipped = assemble(infos.values(), date_pattern)
    skipped = errors + skipped

    old_rows = previous.rows_by_id() if previous else {}
    rel = _relativiser(cat_path.parent)
    records = []
    computed = reused = 0
    ids = scene_ids(drafts)
    detected = 0
    for scene_id, draft in tqdm(
        list(zip(ids, drafts, strict=True)), desc="scenes", unit="scene", disable=not progress, leave=False
    ):
        old = old_rows.get(scene_id)
        fresh = False
        if draft.sensor == "S2" and draft.mask is None and (detect or mask_dir.is_dir()):
            found, why, fresh = _detected_mask(draft, scene_id, mask_dir, detect, progress)
            if why:
                log.warning("no mask detected for %s: %s", scene_id, why)
            if found is not None:
                draft = replace(draft, mask=found, mask_files=(found.path,))
                detected += 1
        # draft.files lists the mask file too, so the signature also tells a changed mask; a
        # detected mask is not among the files, so its path is compared as well.
        same_mask = old is not None and (old["mask_file"] or None) == (rel(draft.mask.path) if draft.mask else None)
        if old is not None and same_mask and not fresh and old["signature"] == _signature(draft.files, infos):
            stats = _stats_from_row(old)
            reused += 1
        else:
            try:
                stats = scene_stats(draft)
            except InvalidRasterError as exc:
                skipped.extend(Skipped(p, str(exc)) for p in draft.files[:1])
                continue
            computed += 1
        records.append(_record(scene_id, draft, stats, infos, rel))

    if not records:
        raise EmptyCatalogError(
            f"{root}: no usable S2 or S1 scene found ({len(paths)} raster file(s) looked at, {len(skipped)} skipped)",
            tuple(skipped),
        )
    frame = _frame(records)
    _link_nearest_s1(frame)
    meta = {
        "root": rel(str(root)),
        "version": __version__,
        "date_pattern": date_pattern or "",
        "generation": uuid.uuid4().hex,
    }
    write_catalog(cat_path, frame, file_rows, skipped, meta, rel)
    catalog = Catalog(cat_path, frame, meta)
    catalog.build_rtree(persist=True)
    return IndexResult(
        catalog_path=cat_path,
        scenes=len(frame),
        files_seen=len(paths),
        files_opened=opened,
        scenes_computed=computed,
        scenes_reused=reused,
        skipped=tuple(skipped),
        seconds=time.perf_counter() - t0,
        summary=catalog.summary(),
        masks_detected=detected,
    )


def _relativiser(base: Path) -> Any:
    def rel(p: str) -> str:
        return os.path.relpath(p, base)

    return rel


def _frame(records: list[dict[str, Any]]) -> gpd.GeoDataFrame:
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


def _link_nearest_s1(frame: gpd.GeoDataFrame) -> None:
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
    for _, row in frame.iterrows():
        if row["sensor"] != "S2":
            nearest.append(None)
            gaps.append(None)
            continue
        idx = tree.query(row.geometry, predicate="intersects")
        if len(idx) == 0:
            nearest.append(None)
            gaps.append(None)
            continue
        dt = np.abs(s1_times[idx] - (row["datetime"] - _EPOCH).total_seconds())
        k = int(np.argmin(dt))
        nearest.append(s1_ids[idx[k]])
        gaps.append(round(float(dt[k]) / 3600.0, 3))
    frame["nearest_s1"] = nearest
    frame["s1_gap_hours"] = np.array([np.nan if g is None else g for g in gaps], dtype="float64")


def write_catalog(
    path: Path,
    frame: gpd.GeoDataFrame,
    file_rows: list[dict[str, Any]],
    skipped: Sequence[Skipped],
    meta: dict[str, str],
    rel: Any,
) -> None:
    """Write the catalog to a temporary GeoPackage and rename it over ``path`` (atomic)."""
    import pandas as pd
    import pyogrio

    files = pd.DataFrame(
        [
            {
                "path": rel(r["path"]),
                "size": r["size"],
                "mtime_ns": r["mtime_ns"],
                "info": json.dumps(r["info"].to_dict()) if r["info"] else "",
                "error": r["error"] or "",
            }
            for r in file_rows
        ]
    )
    skip = pd.DataFrame([{"path": rel(s.path), "reason": s.reason} for s in skipped], columns=["path", "reason"])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.gpkg")
    try:
        pyogrio.write_dataframe(frame, tmp, layer="scenes", driver="GPKG")
        pyogrio.write_dataframe(files, tmp, layer="files", driver="GPKG")
        if not skip.empty:
            pyogrio.write_dataframe(skip, tmp, layer="skipped", driver="GPKG")
        pyogrio.write_dataframe(
            pd.DataFrame({"key": list(meta), "value": list(meta.values())}),
            tmp,
            layer="meta",
            driver="GPKG",
        )
        os.replace(tmp, path)
    except OSError as exc:
        raise CatalogWriteError(f"{path}: cannot write the catalog ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


class Catalog:
    """A persisted scene catalog: records in a GeoPackage, an rtree over (lon, lat, time).

    Open one with :meth:`Catalog.open`; query it with :meth:`query`.
    """

    def __init__(self, path: Path, scenes: gpd.GeoDataFrame, meta: dict[str, str]):
        import numpy as np

        self.path = path
        self.scenes = scenes.sort_values(["datetime", "scene_id"]).reset_index(drop=True)
        self.meta = meta
        self._rtree: Any = None
        # Plain arrays for the query filters: pandas indexing costs more than the rtree itself.
        self._cloud = self.scenes["cloud_pct"].to_numpy(dtype="float64", na_value=np.nan)
        self._sensor = self.scenes["sensor"].to_numpy(dtype=object)
        self._tile = self.scenes["tile"].fillna("").to_numpy(dtype=object)
        self._geoms = np.asarray(self.scenes.geometry.array)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Catalog:
        """Open a catalog written by :func:`build_index`.

        Raises:
            SceneNotFoundError: no file at ``path``.
            CatalogError: the file is not a cloudclear catalog.
        """
        import pandas as pd
        import pyogrio

        path = Path(path).expanduser().resolve()
        if path.is_dir():
            path = path / DEFAULT_NAME
        if not path.exists():
            raise SceneNotFoundError(f"{path}: no catalog here (run `cloudclear index DIR` first)")
        try:
            layers = {name for name, _ in pyogrio.list_layers(path)}
            if not {"scenes", "meta"} <= layers:
                raise CatalogError(f"{path}: not a cloudclear catalog (layers: {', '.join(sorted(layers))})")
            scenes = pyogrio.read_dataframe(path, layer="scenes")
            meta_df = pyogrio.read_dataframe(path, layer="meta", read_geometry=False)
        except CatalogError:
            raise
        except Exception as exc:  # noqa: BLE001 - GDAL raises several types for a bad file
            raise CatalogError(f"{path}: cannot read the catalog ({exc})") from None
        scenes["datetime"] = pd.to_datetime(scenes["datetime"], utc=True)
        meta = dict(zip(meta_df["key"], meta_df["value"], strict=True))
        return cls(path, scenes, meta)

    # -- paths ----------------------------------------------------------------------------

    def resolve(self, rel_path: str) -> Path:
        """Absolute path of a path stored in the catalog (stored relative to the catalog)."""
        return (self.path.parent / rel_path).resolve()

    def file_cache(self) -> dict[str, tuple[int, int, FileInfo | None, str | None]]:
        """Absolute path -> (size, mtime_ns, FileInfo or None, error) from the last scan."""
        import pyogrio

        files = pyogrio.read_dataframe(self.path, layer="files", read_geometry=False)
        out = {}
        for row in files.itertuples(index=False):
            p = str(self.resolve(row.path))
            info = FileInfo.from_dict({**json.loads(row.info), "path": p}) if row.info else None
            out[p] = (int(row.size), int(row.mtime_ns), info, row.error or None)
        return out

    def rows_by_id(self) -> dict[str, Any]:
        out = {}
        for _, row in self.scenes.iterrows():
            out[row["scene_id"]] = row
        return out

    def skipped(self) -> list[Skipped]:
        """Files the last scan left out, with the reasons."""
        import pyogrio

        if "skipped" not in {n for n, _ in pyogrio.list_layers(self.path)}:
            return []
        df = pyogrio.read_dataframe(self.path, layer="skipped", read_geometry=False)
        return [Skipped(str(self.resolve(p)), r) for p, r in zip(df["path"], df["reason"], strict=True)]

    # -- rtree ----------------------------------------------------------------------------

    @property
    def _rtree_base(self) -> Path:
        return self.path.with_name(self.path.name + ".rtree")

    @staticmethod
    def _boxes(frame: gpd.GeoDataFrame) -> Any:
        b = frame.geometry.bounds.to_numpy()
        t = (frame["datetime"] - _EPOCH).dt.total_seconds().to_numpy()
        for i in range(len(frame)):
            yield i, (b[i, 0], b[i, 1], t[i], b[i, 2], b[i, 3], t[i]), None

    def build_rtree(self, persist: bool = False) -> Any:
        """Build the (lon, lat, time) rtree from the records; with persist, save it atomically."""
        from rtree import index

        props = index.Property()
        props.dimension = 3
        if not persist:
            self._rtree = index.Index(self._boxes(self.scenes), properties=props)
            return self._rtree
        base = self._rtree_base
        tmp = base.with_name(f".{base.name}.tmp-{os.getpid()}")
        try:
            idx = index.Index(str(tmp), self._boxes(self.scenes), properties=props)
            idx.close()
            for ext in (".dat", ".idx"):
                os.replace(f"{tmp}{ext}", f"{base}{ext}")
            Path(f"{base}.json").write_text(
                json.dumps({"generation": self.meta.get("generation"), "count": len(self.scenes)})
            )
        except OSError as exc:
            log.warning("%s: cannot persist the rtree (%s); it will be rebuilt in memory", base, exc)
        finally:
            for ext in (".dat", ".idx"):
                Path(f"{tmp}{ext}").unlink(missing_ok=True)
        self._rtree = None
        return self.rtree

    @property
    def rtree(self) -> Any:
        """The rtree over (lon, lat, time); loaded from disk when current, else rebuilt."""
        if self._rtree is not None:
            return self._rtree
        from rtree import index

        base = self._rtree_base
        stamp = Path(f"{base}.json")
        try:
            ok = json.loads(stamp.read_text()) == {
                "generation": self.meta.get("generation"),
                "count": len(self.scenes),
            }
        except (OSError, ValueError):
            ok = False
        if ok and Path(f"{base}.idx").exists() and Path(f"{base}.dat").exists():
            props = index.Property()
            props.dimension = 3
            self._rtree = index.Index(str(base), properties=props)
            return self._rtree
        return self.build_rtree(persist=False)

    # -- queries --------------------------------------------------------------------------

    def query(
        self,
        bbox: Sequence[float] | None = None,
        *,
        bbox_crs: str = "EPSG:4326",
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        cloud_min: float | None = None,
        cloud_max: float | None = None,
        sensor: str | None = None,
        tile: str | None = None,
        include_unmasked: bool = True,
    ) -> gpd.GeoDataFrame:
        """Scenes intersecting a box, within a date range and a cloud-cover range.

        Args:
            bbox: (minx, miny, maxx, maxy) in ``bbox_crs``; None for everywhere.
            bbox_crs: CRS of ``bbox`` (anything pyproj accepts).
            start: first datetime (inclusive); a date string "YYYY-MM-DD" means its midnight UTC.
            end: last datetime (inclusive); a bare date includes that whole day.
            cloud_min: lowest cloud % (inclusive).
            cloud_max: highest cloud % (inclusive).
            sensor: "S2" or "S1".
            tile: MGRS tile id.
            include_unmasked: with a cloud range, keep scenes whose cloud % is unknown (no mask).

        Returns:
            The matching records sorted by datetime.

        Raises:
            QueryError: an inverted range or a bad box.
        """
        import numpy as np

        t0 = parse_time(start, end_of_day=False) if start is not None else None
        t1 = parse_time(end, end_of_day=True) if end is not None else None
        if t0 is not None and t1 is not None and t1 < t0:
            raise QueryError(f"date range is inverted: {start} is after {end}")
        if cloud_min is not None and cloud_max is not None and cloud_max < cloud_min:
            raise QueryError(f"cloud range is inverted: {cloud_min} > {cloud_max}")
        geom = None
        if bbox is not None:
            geom = _bbox_to_lonlat(bbox, bbox_crs)
            x0, y0, x1, y1 = geom.bounds
        else:
            x0, y0, x1, y1 = -1e9, -1e9, 1e9, 1e9
        lo = (t0 - _EPOCH).total_seconds() if t0 else -1e18
        hi = (t1 - _EPOCH).total_seconds() if t1 else 1e18
        import shapely

        hits = np.sort(np.fromiter(self.rtree.intersection((x0, y0, lo, x1, y1, hi)), dtype=np.int64))
        keep = np.ones(len(hits), bool)
        if sensor:
            keep &= self._sensor[hits] == sensor.upper()
        if tile:
            keep &= self._tile[hits] == tile.upper().lstrip("T")
        if cloud_min is not None or cloud_max is not None:
            c = self._cloud[hits]
            in_range = np.ones(len(hits), bool)
            if cloud_min is not None:
                in_range &= c >= cloud_min
            if cloud_max is not None:
                in_range &= c <= cloud_max
            keep &= in_range | (np.isnan(c) if include_unmasked else False)
        hits = hits[keep]
        if geom is not None and len(hits):
            hits = hits[shapely.intersects(self._geoms[hits], geom)]
        return self.scenes.iloc[hits]

    def get(self, scene_id: str) -> Any:
        """One record by scene id."""
        hit = self.scenes[self.scenes["scene_id"] == scene_id]
        if hit.empty:
            raise QueryError(f"{self.path}: no scene {scene_id!r}")
        return hit.iloc[0]

    def cloud_cells(self, scene_id: str) -> np.ndarray:
        """Per-cell cloud % grid (CELL x CELL pixels; NO_CELL where unknown) of one scene."""
        row = self.get(scene_id)
        return decode_cells(row["cloud_cells"], int(row["cells_rows"]), int(row["cells_cols"]))

    def summary(self) -> dict[str, Any]:
        """Scenes per sensor and tile, date range, and the cloud-cover distribution of S2."""
        import numpy as np

        df = self.scenes
        per = Counter(zip(df["sensor"], df["tile"].fillna("?"), strict=True))
        s2 = df[df["sensor"] == "S2"]
        cloud = s2["cloud_pct"]
        bins = [
            ("0%", 0, 0),
            ("0-10%", 0, 10),
            ("10-50%", 10, 50),
            ("50-90%", 50, 90),
            ("90-100%", 90, 100),
        ]
        dist: dict[str, int] = {}
        for label, a, b in bins:
            if a == b:
                dist[label] = int((cloud == 0).sum())
            else:
                dist[label] = int(((cloud > a) & (cloud <= b)).sum())
        dist["no mask"] = int(cloud.isna().sum())
        gaps = s2["s1_gap_hours"].dropna()
        return {
            "scenes": int(len(df)),
            "by_sensor": {k: int(v) for k, v in Counter(df["sensor"]).items()},
            "by_sensor_tile": [{"sensor": s, "tile": t, "scenes": int(n)} for (s, t), n in sorted(per.items())],
            "first": df["datetime"].min().isoformat() if len(df) else None,
            "last": df["datetime"].max().isoformat() if len(df) else None,
            "s2_cloud_distribution": dist,
            "s2_with_s1": int(len(gaps)),
            "s1_gap_hours_median": float(np.median(gaps)) if len(gaps) else None,
        }


def parse_time(value: datetime | str, end_of_day: bool, error: type[CloudClearError] = QueryError) -> datetime:
    """A datetime or a date string as an aware datetime; a bare date's end of day with ``end_of_day``."""
    from datetime import timedelta

    from cloudclear.scenes import parse_datetime

    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        dt = parse_datetime(value)
    except ValueError:
        raise error(f"cannot read {value!r} as a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)") from None
    if end_of_day and len(value.strip()) <= 10:
        dt = dt + timedelta(days=1) - timedelta(microseconds=1)
    return dt


def _bbox_to_lonlat(bbox: Sequence[float], crs: str) -> Any:
    import shapely
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    if len(bbox) != 4:
        raise QueryError(f"bounding box needs 4 numbers minx,miny,maxx,maxy, got {len(bbox)}")
    x0, y0, x1, y1 = map(float, bbox)
    if x1 < x0 or y1 < y0:
        raise QueryError(f"bounding box {bbox} has min > max")
    box = shapely.box(x0, y0, x1, y1)
    if crs.upper() in ("EPSG:4326", "WGS84", "OGC:CRS84"):
        return box
    try:
        src = CRS.from_user_input(crs)
    except CRSError:
        raise QueryError(f"unknown CRS {crs!r}") from None
    if src.equals(CRS.from_epsg(4326)):
        return box
    ring = shapely.segmentize(box, max(x1 - x0, y1 - y0) / 20 or 1.0)
    xy = shapely.get_coordinates(ring)
    lon, lat = Transformer.from_crs(src, "EPSG:4326", always_xy=True).transform(xy[:, 0], xy[:, 1])
    return shapely.Polygon(list(zip(lon, lat, strict=True)))
