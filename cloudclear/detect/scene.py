"""Mask whole scenes on disk: read in strips, detect, write a Sen2Cor-coded GeoTIFF atomically.

Memory: the per-pixel stage reads ``strip_rows`` rows of every band at a time (floats only for
the strip) and keeps three uint8 layers for the whole scene; the spatial stage adds a few boolean
layers. A 10980 x 10980 tile stays near 1.5 GB whatever the number of bands (bench/masks.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloudclear import __version__, masks
from cloudclear.detect import histogram
from cloudclear.detect import pixels as px
from cloudclear.detect.spatial import CIRRUS, CLOUD, CLOUD_RING, SHADOW, SNOW, SpatialOptions, check_dilation, finish
from cloudclear.detect.sun import SunAngles, from_tags, solar_position
from cloudclear.errors import InvalidRasterError, MaskError, OutputExistsError, SceneNotFoundError
from cloudclear.gdal import gdal_env
from cloudclear.gridio import Grid
from cloudclear.outputs import WriteFailures, atomic_output, check_geotiff_complete, check_target, output_error
from cloudclear.scenes import (
    RASTER_SUFFIXES,
    FileInfo,
    SceneDraft,
    assemble,
    classify,
    read_file_info,
    scene_ids,
)
from cloudclear.scenes.reader import ReadSpec, SceneReader

#: Median visible reflectance outside this range means the scale is wrong. Overcast L2A scenes
#: reach a median of 1.6 (over-corrected bright cloud), so the upper bound only catches data
#: scaled twice or not at all.
PLAUSIBLE_REFLECTANCE = (0.002, 5.0)


@dataclass(frozen=True)
class MaskOptions:
    """How to mask scenes.

    Attributes:
        detector: a key of :data:`cloudclear.detect.DETECTORS`.
        spatial: dilation, cloud heights, shadow matching.
        sun: solar angles to use instead of the scene's tags or its time and place.
        strip_rows: rows read at a time.
        overwrite: replace existing mask files.
        progress: show a progress bar on stderr.
    """

    detector: str = "builtin"
    spatial: SpatialOptions = field(default_factory=SpatialOptions)
    sun: SunAngles | None = None
    strip_rows: int = 512
    overwrite: bool = False
    progress: bool = False


@dataclass(frozen=True)
class MaskResult:
    """One written mask.

    Attributes:
        path: the mask GeoTIFF.
        scene: the scene's id (sensor, tile, time).
        source: the scene's grid file.
        detector: the detector used.
        width: columns.
        height: rows.
        cloud_pct: % of valid pixels coded cloud (SCL 8, 9; 10 thin cirrus included).
        shadow_pct: % of valid pixels coded cloud shadow (SCL 3).
        snow_pct: % of valid pixels coded snow (SCL 11).
        nodata_pct: % of pixels without data.
        sun: the solar angles used, or None.
        shadow_source: where the shadow direction came from.
        seconds: wall time.
    """

    path: Path
    scene: str
    source: str
    detector: str
    width: int
    height: int
    cloud_pct: float
    shadow_pct: float
    snow_pct: float
    nodata_pct: float
    sun: SunAngles | None
    shadow_source: str
    seconds: float


def find_scenes(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[SceneDraft], list[str]]:
    """Assemble the S2 scenes in files and folders (folders are searched recursively).

    Files given together are grouped as the catalog groups them, so one JP2 per band makes one
    scene. Returns the scenes and the ids the catalog would give them.

    Raises:
        SceneNotFoundError: a path does not exist.
        InvalidRasterError: a file given by name cannot be read or is not an S2 scene.
        MaskError: no S2 scene was found.
    """
    infos: list[FileInfo] = []
    named: set[str] = set()
    for p in paths:
        path = Path(p).expanduser().resolve()
        if not path.exists():
            raise SceneNotFoundError(f"{path}: no such file or directory")
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.suffix.lower() in RASTER_SUFFIXES and not f.name.startswith("."):
                    try:
                        infos.append(read_file_info(f))
                    except InvalidRasterError:
                        continue
        else:
            infos.append(read_file_info(path))
            named.add(str(path))
    drafts, skipped = assemble(infos)
    s2 = [d for d in drafts if d.sensor == "S2"]
    used = {f for d in s2 for f in d.files}
    for name in sorted(named - used):
        try:
            kind = classify(next(i for i in infos if i.path == name)).kind
        except InvalidRasterError:
            kind = "unknown"
        if kind in ("mask", "s1"):
            what = "a mask" if kind == "mask" else "a Sentinel-1 image"
            raise MaskError(f"{name}: {what}; give the S2 band file(s)")
        # Why assembling left it out (another CRS or extent than the scene's other files...).
        reason = next((s.reason for s in skipped if s.path == name), f"{name}: not part of an S2 scene")
        raise MaskError(reason)
    if not s2:
        raise MaskError(f"{', '.join(map(str, paths))}: no S2 scene found")
    return s2, scene_ids(s2)


def mask_name(scene_id: str) -> str:
    """File name of a scene's detected mask: the scene id and ``_SCL``, which the catalog pairs."""
    return f"{scene_id}_SCL.tif"


def mask_scenes(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    options: MaskOptions | None = None,
) -> list[MaskResult]:
    """Compute and write the masks of every S2 scene in ``paths``.

    Args:
        paths: scene files (one stack, or one file per band) and folders.
        out: a ``.tif`` path (one scene only), or a folder for ``SCENE_ID_SCL.tif`` files; default:
            beside each scene's files, where ``cloudclear index`` pairs them with their scene.
        options: see :class:`MaskOptions`.

    Raises:
        MaskError: missing bands, wrong reflectance scale, all nodata, unknown detector.
        ResourceLimitError: a dilation radius larger than the scene or than
            :data:`~cloudclear.detect.spatial.MAX_DILATION`.
        OutputExistsError: a mask exists and ``options.overwrite`` is False.
        OutputError: a mask cannot be written (read-only folder, disk full...).
    """
    options = options or MaskOptions()
    px.get_detector(options.detector)  # a wrong name fails before any reading
    with gdal_env("mask"):
        drafts, ids = find_scenes(paths)
        dests = _destinations(drafts, ids, out)
        for draft, dst in zip(drafts, dests, strict=True):
            check_dilation(options.spatial, draft.grid.height, draft.grid.width)
            if not options.overwrite and (dst.exists() or dst.is_symlink()):
                raise OutputExistsError(f"{dst}: exists; pass --overwrite to replace it")
            if dst.parent.is_dir():  # a missing --out folder is made when the first mask is written
                check_target(dst, True, "mask")  # a read-only folder fails before any detection
        return [mask_draft(d, sid, dst, options) for d, sid, dst in zip(drafts, ids, dests, strict=True)]


def _destinations(drafts: Sequence[SceneDraft], ids: Sequence[str], out: str | os.PathLike[str] | None) -> list[Path]:
    dests: list[Path] = []
    for draft, sid in zip(drafts, ids, strict=True):
        if out is None:
            dests.append(Path(draft.grid.path).parent / mask_name(sid))
        elif str(out).lower().endswith((".tif", ".tiff")):
            if len(drafts) > 1:
                raise MaskError(f"{out}: {len(drafts)} scenes found; give a folder for --out")
            dests.append(Path(out).expanduser().resolve())
        else:
            dests.append(Path(out).expanduser().resolve() / mask_name(sid))
    return dests


def _pixel_size(grid: FileInfo) -> float:
    from pyproj import CRS

    if grid.crs is None:
        return abs(grid.transform[0])
    crs = CRS.from_wkt(grid.crs)
    if crs.is_geographic:
        # Geometric mean of the east and north pixel sizes at the centre latitude.
        lat = grid.transform[5] + grid.transform[4] * grid.height / 2
        dx = abs(grid.transform[0]) * 111_320.0 * abs(math.cos(math.radians(lat)))
        dy = abs(grid.transform[4]) * 111_320.0
        return math.sqrt(dx * dy)
    return abs(grid.transform[0]) * crs.axis_info[0].unit_conversion_factor


def _place(grid: FileInfo) -> tuple[float, float, float] | None:
    """(lon, lat, grid_north) at the scene centre; grid_north: clockwise angle of true north from grid up."""
    from pyproj import CRS, Transformer

    if grid.crs is None:
        return None
    a, _, c, _, e, f = grid.transform[:6]
    x, y = c + a * grid.width / 2, f + e * grid.height / 2
    to_geo = Transformer.from_crs(CRS.from_wkt(grid.crs), "EPSG:4326", always_xy=True)
    lon, lat = to_geo.transform(x, y)
    back = Transformer.from_crs("EPSG:4326", CRS.from_wkt(grid.crs), always_xy=True)
    xn, yn = back.transform(lon, min(lat + 0.01, 89.99))
    return lon, lat, math.degrees(math.atan2(xn - x, yn - y))


def _sun_for(draft: SceneDraft, tags: dict[str, str], options: MaskOptions) -> tuple[SunAngles | None, float]:
    place = _place(draft.grid)
    north = place[2] if place else 0.0
    if options.sun is not None:
        return options.sun, north
    found = from_tags(tags)
    if found is not None:
        return found, north
    if place is None:
        return None, north
    try:
        return solar_position(draft.datetime, place[0], place[1]), north
    except ValueError:
        return None, north


def mask_draft(
    draft: SceneDraft, scene_id: str, dst: Path, options: MaskOptions, infos: Mapping[str, FileInfo] | None = None
) -> MaskResult:
    """Detect and write the mask of one assembled scene (see :func:`mask_scenes`).

    ``infos`` (path -> FileInfo, as the catalog holds them) keeps what a product's metadata or the
    catalog's scale check wrote onto the files (scale, offset, sun angles); files not in it are
    read again.

    Raises:
        MaskError: missing bands, wrong reflectance scale, all nodata, unknown detector.
        ResourceLimitError: a dilation radius too large for the scene (checked before reading).
        OutputError: the mask cannot be written; an existing mask is then untouched.
    """
    check_dilation(options.spatial, draft.grid.height, draft.grid.width)
    with gdal_env("mask"):
        return _mask_draft(draft, scene_id, dst, options, infos or {})


def _mask_draft(
    draft: SceneDraft, scene_id: str, dst: Path, options: MaskOptions, known: Mapping[str, FileInfo]
) -> MaskResult:
    from tqdm import tqdm

    t0 = time.perf_counter()
    det = px.get_detector(options.detector)
    info = draft.grid
    try:
        mapping = px.resolve_bands(det, list(draft.band_sources))
    except MaskError as exc:
        raise MaskError(f"{info.path}: {exc}") from None
    a, b, c, d, e, f = info.transform[:6]
    grid = Grid(info.crs or "", (a, b, c, d, e, f), info.width, info.height)
    infos = {info.path: info}
    for path, _ in draft.band_sources.values():
        if path not in infos:
            infos[path] = known.get(path) or read_file_info(path)

    # The one scene reader: one read per file for all the bands it holds, each band with its
    # file's scale, offset and nodata.
    sources = {key: draft.band_sources[band] for key, band in mapping.items()}
    spec = ReadSpec.from_files("S2", sources, infos)
    h, w = info.height, info.width
    score = np.zeros((h, w), np.uint8)
    bright = np.zeros((h, w), np.uint8)
    flags = np.zeros((h, w), np.uint8)
    hist = np.zeros((256, 256), np.int64)
    checked = False
    reader = SceneReader(spec, grid)
    try:
        import rasterio

        with rasterio.open(info.path) as first:
            tags = {**first.tags(), **info.tags}  # a product's sun angles (MTD_TL.xml, STAC view:)
        rows = range(0, h, options.strip_rows)
        for r0 in tqdm(rows, desc=scene_id, unit="strip", disable=not options.progress, leave=False):
            r1 = min(h, r0 + options.strip_rows)
            pixels = reader.read(r0, r1)
            valid = pixels.valid
            refl = dict(zip(spec.names, pixels.physical(), strict=True))
            del pixels
            if not checked and (valid.sum() >= 1000 or (r1 == h and valid.any())):
                _check_scale(refl, valid, mapping, draft)
                checked = True
            layers = px.pixel_layers(det, refl, valid)
            score[r0:r1], bright[r0:r1], flags[r0:r1] = layers.score, layers.bright, layers.flags
            hist += histogram(layers.score, layers.bright, layers.flags)
    finally:
        reader.close()

    n_valid = int(((flags & px.VALID) != 0).sum())
    if n_valid == 0:
        raise MaskError(f"{info.path}: every pixel is nodata; nothing to mask")
    sun, north = _sun_for(draft, tags, options)
    res = finish(det, score, bright, flags, hist, _pixel_size(info), sun, options.spatial, north)
    del score, bright
    scl = res.scl
    valid_all = scl != 0
    pct = 100.0 / n_valid
    cloud_pct = float(np.count_nonzero(masks.is_member(scl, (CLOUD, CLOUD_RING, CIRRUS))) * pct)
    shadow_pct = float((scl == SHADOW).sum() * pct)
    snow_pct = float((scl == SNOW).sum() * pct)
    nodata_pct = 100.0 * (1.0 - valid_all.sum() / scl.size)
    tags_out = {
        "CLOUDCLEAR_DETECTOR": det.name,
        "CLOUDCLEAR_VERSION": __version__,
        "CLOUDCLEAR_SCENE": scene_id,
        "CLOUDCLEAR_SOURCES": json.dumps(sorted(draft.files)),
        "CLOUDCLEAR_OPTIONS": json.dumps(
            {
                "cloud_dilation": options.spatial.cloud_dilation,
                "shadow_dilation": options.spatial.shadow_dilation,
                "threshold": round(res.threshold, 2),
                "bands": mapping,
            }
        ),
        "SHADOW_DIRECTION_SOURCE": res.shadow_source,
        "ACQUISITION_DATETIME": draft.datetime.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "TIFFTAG_DATETIME": draft.datetime.strftime("%Y:%m:%d %H:%M:%S"),
        "CLASSES": json.dumps({str(k): v for k, v in masks.SCL_NAMES.items()}),
        "CLOUD_PCT": f"{cloud_pct:.2f}",
        "SHADOW_PCT": f"{shadow_pct:.2f}",
    }
    if draft.tile:
        tags_out["MGRS_TILE"] = draft.tile
    if sun is not None:
        tags_out["SUN_ZENITH"] = f"{sun.zenith:.3f}"
        tags_out["SUN_AZIMUTH"] = f"{sun.azimuth:.3f}"
        tags_out["SUN_ANGLES_SOURCE"] = sun.source
    write_scl(dst, scl, info, tags_out, overwrite=options.overwrite)
    return MaskResult(
        path=dst,
        scene=scene_id,
        source=info.path,
        detector=det.name,
        width=w,
        height=h,
        cloud_pct=cloud_pct,
        shadow_pct=shadow_pct,
        snow_pct=snow_pct,
        nodata_pct=float(nodata_pct),
        sun=sun,
        shadow_source=res.shadow_source,
        seconds=time.perf_counter() - t0,
    )


def _check_scale(refl: dict[str, np.ndarray], valid: np.ndarray, mapping: dict[str, str], draft: SceneDraft) -> None:
    lo, hi = PLAUSIBLE_REFLECTANCE
    # Visible bands only: open water can have a NIR reflectance near 0.
    for key in ("B02", "B03", "B04"):
        med = float(np.median(refl[key][valid]))
        if lo <= med <= hi:
            continue
        path, bidx = draft.band_sources[mapping[key]]
        if med < lo:
            raise MaskError(
                f"{path}: band {mapping[key]} reflectance looks 10000 times too small (median {med:.6f} "
                "after scaling): the values look like 0..1 floats where DN x 10000 is expected; "
                "tag the file with QUANTIFICATION_VALUE=1 (gdal_edit.py -mo QUANTIFICATION_VALUE=1 FILE)"
            )
        raise MaskError(
            f"{path}: band {mapping[key]} reflectance looks too large (median {med:.3f} after scaling); "
            "check the file's scale (QUANTIFICATION_VALUE tag or GDAL band scale)"
        )


def write_scl(dst: Path, scl: np.ndarray, grid: FileInfo, tags: dict[str, str], overwrite: bool = True) -> None:
    """Write a uint8 SCL-coded mask on ``grid``: tiled, compressed, with the SCL colour table.

    Written through :func:`cloudclear.outputs.atomic_output`, so a failed or killed run leaves no
    file that looks complete and an existing mask untouched.

    Raises:
        OutputExistsError: ``dst`` exists and ``overwrite`` is false.
        OutputError: the mask cannot be written (read-only folder, disk full...).
    """
    import rasterio

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(dst, exc, "mask") from exc
    h, w = scl.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": 1,
        "dtype": "uint8",
        "crs": grid.crs,
        "transform": rasterio.Affine(*grid.transform[:6]),
        "nodata": 0,
        "compress": "deflate",
        "predictor": 2,
        "tiled": w >= 256 and h >= 256,
        "interleave": "band",
    }
    if profile["tiled"]:
        profile.update(blockxsize=512 if w >= 512 else 256, blockysize=512 if h >= 512 else 256)
    with atomic_output(dst, overwrite=overwrite, what="mask") as tmp, WriteFailures() as failures:
        with rasterio.open(tmp, "w", **profile) as out:
            out.write(scl, 1)
            out.set_band_description(1, "SCL")
            out.update_tags(**tags)
            out.update_tags(1, **{f"SCL_{k}": v for k, v in masks.SCL_NAMES.items()})
            out.write_colormap(1, {**{i: (0, 0, 0, 0) for i in range(256)}, **masks.SCL_COLOURS})
        failures.check(dst)
        check_geotiff_complete(tmp, dst)
