"""What one raster file is: its metadata (:func:`read_file_info`) and its role (:func:`classify`).

Reads metadata only, except one small central window of an S1 file whose units are not stated.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, NotASceneError

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
    # Written by the product readers (SAFE, THEIA, STAC: cloudclear.scenes.products) from the
    # product's metadata onto each member raster's FileInfo.
    "CLOUDCLEAR_PRODUCT",
    "SCALE_SOURCE",
    "SUN_ZENITH",
    "SUN_AZIMUTH",
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
        # pathlib's stem, without building a Path (classify reads it several times per file)
        name = self.name
        i = name.rfind(".")
        return name[:i] if 0 < i < len(name) - 1 else name

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
        # Field by field: asdict deep-copies every tuple, which a cold index paid per file.
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"tags": dict(self.tags)}

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


def read_file_info(
    path: str | os.PathLike[str], *, then: Callable[[Any, FileInfo], FileInfo] | None = None
) -> FileInfo:
    """Open a raster and read its metadata (no pixels).

    Args:
        path: the raster file.
        then: called with the open dataset and its FileInfo before the file is closed; what it
            returns is returned (the catalog reads there the pixels its statistics need, so that
            an index opens each file once).

    Returns:
        Its :class:`FileInfo`.

    Raises:
        InvalidRasterError: the file is not a raster GDAL can open, or a truncated GeoTIFF.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    from cloudclear.gdal import canonical_vsi, is_vsi, path_stat

    # A GDAL virtual path (a member of a .zip, a URL) is not a file name: a .zip member is written
    # in the form pathlib keeps whole (/vsizip/{/abs/a.zip}/x). Its size and time are the archive's.
    path = canonical_vsi(os.fspath(path)) if is_vsi(path) else os.path.abspath(path)
    size, mtime_ns = path_stat(path)
    try:
        # A raster without CRS is reported by assemble() in its own words; rasterio's warning
        # would only repeat it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            if src.driver == "GTiff":
                if not is_vsi(path):
                    _check_tiff_complete(src, size)
            tags = src.tags()
            info = FileInfo(
                path=path,
                size=size,
                mtime_ns=mtime_ns,
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
                tags={k: str(tags[k]) for k in _TAG_KEYS if k in tags} | _band_tags(src),
            )
            if then is not None:
                held = _OPEN.__dict__.setdefault("files", {})
                held[path] = src
                try:
                    info = then(src, info)
                finally:
                    held.pop(path, None)
    except RasterioIOError as exc:
        msg = str(exc).replace(path, "").strip(" :") or "GDAL cannot open it"
        raise InvalidRasterError(f"{path}: not a readable raster ({msg})") from None
    return info


#: Band-level tags that state a band's reflectance scaling (GDAL's SENTINEL2 driver, exports
#: that copy the product's per-band offsets): kept as ``KEY:BAND`` (``BOA_ADD_OFFSET:3``).
_BAND_TAG_KEYS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET", "QUANTIFICATION_VALUE")


def _band_tags(src: Any) -> dict[str, str]:
    out = {}
    for bidx in range(1, min(src.count, 32) + 1):
        tags = src.tags(bidx)
        out.update({f"{k}:{bidx}": str(tags[k]) for k in _BAND_TAG_KEYS if tags.get(k) not in (None, "")})
    return out


def valid_pixels(data: Any, nodata: float | None, sensor: str) -> Any:
    """Where ``data`` holds a value: finite and not ``nodata``.

    Optical reflectance uses 0 for nodata even where a file forgets to say so (DESIGN.md 3), so
    an S2 band (integer or float) without a declared nodata treats 0 as nodata.
    """
    import numpy as np

    if data.dtype.kind == "f":
        valid = np.isfinite(data)
        if nodata is not None and not np.isnan(nodata):
            valid &= data != nodata
        elif nodata is None and sensor == "S2":
            valid &= data != 0  # float reflectance exports fill the outside with 0, like integers
        return valid
    if nodata is None and sensor == "S2":
        nodata = 0
    return data != nodata if nodata is not None else np.ones(data.shape, bool)


def stated_scale(info: FileInfo, bidx: int | None) -> tuple[float, float, str] | None:
    """How band ``bidx`` of an optical file becomes reflectance, where its metadata says so.

    In order: the band's GDAL scale/offset; the band's own BOA_ADD_OFFSET / RADIO_ADD_OFFSET /
    QUANTIFICATION_VALUE tags; the file's (processing baseline 04.00 and later store -1000).
    ``bidx`` None looks at the file's tags only.

    Returns:
        ``(scale, offset, source)`` with ``DN * scale + offset`` the reflectance and ``source``
        where it was read (the ``SCALE_SOURCE`` a product reader wrote, else "band scale/offset",
        "band tags", "tags"); None when the file states nothing.
    """
    product = info.tags.get("SCALE_SOURCE")
    if bidx is not None:
        scale, offset = info.scales[bidx - 1], info.offsets[bidx - 1]
        if scale != 1.0 or offset != 0.0:
            return scale, offset, product or "band scale/offset"
    # The band's own tags (KEY:BAND, see _band_tags), then the file's.
    levels = ([(f":{bidx}", "band tags")] if bidx is not None else []) + [("", "tags")]
    for suffix, source in levels:
        found = {k: info.tags[k + suffix] for k in _BAND_TAG_KEYS if info.tags.get(k + suffix) not in (None, "")}
        if found:
            try:
                quant = float(found.get("QUANTIFICATION_VALUE") or info.tags.get("QUANTIFICATION_VALUE") or 10000.0)
                add = float(found.get("BOA_ADD_OFFSET") or found.get("RADIO_ADD_OFFSET") or 0.0)
            except ValueError:
                raise InvalidRasterError(f"{info.path}: band {bidx}: scaling tags are not numbers ({found})") from None
            if not quant > 0:
                raise InvalidRasterError(f"{info.path}: QUANTIFICATION_VALUE {quant:g} is not a positive number")
            return 1.0 / quant, add / quant, product or source
    return None


def offset_stated(info: FileInfo, bidx: int | None) -> bool:
    """Whether the file says what its reflectance offset is (0 included): a GDAL offset on the
    band, an ``*_ADD_OFFSET`` tag, or a product reader's metadata."""
    if info.tags.get("SCALE_SOURCE"):
        return True
    if bidx is not None and info.offsets[bidx - 1] != 0.0:
        return True
    keys = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")
    return any(info.tags.get(k) not in (None, "") for k in keys) or (
        bidx is not None and any(info.tags.get(f"{k}:{bidx}") not in (None, "") for k in keys)
    )


def reflectance_scale(info: FileInfo, bidx: int | None, default: float = 10000.0) -> tuple[float, float]:
    """How to turn band ``bidx`` of an optical file into reflectance: ``DN * scale + offset``.

    What the metadata states (:func:`stated_scale`), else ``DN / default``.
    """
    stated = stated_scale(info, bidx)
    return (stated[0], stated[1]) if stated else (1.0 / default, 0.0)


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


#: Roles :func:`classify` decided, by what it reads of a file (:func:`_role_key`): an index
#: classifies each file in its metadata pass and again when it assembles scenes.
_ROLES: dict[tuple[Any, ...], FileRole] = {}
_ROLES_MAX = 16384


def _role_key(info: FileInfo) -> tuple[Any, ...]:
    """What :func:`classify` reads of a file: its path (name), its size and time (the pixels an
    S1 file's units may be read from), its shape, bands and the tags it looks at."""
    tags = info.tags
    return (
        info.path,
        info.size,
        info.mtime_ns,
        info.count,
        info.dtype,
        info.width,
        info.height,
        info.descriptions,
        tags.get("CLOUDCLEAR_ROLE"),
        tags.get("UNITS"),
    )


def classify(info: FileInfo) -> FileRole:
    """Decide whether a file holds S2 bands, S1 backscatter or a cloud mask.

    Decisions rest on band descriptions first, then the file name (ESA band naming, tokens such
    as S1, S2, SCL, CLM, MASK), then the band count; anything else is not a scene. A file's
    role is kept (by what the decision reads), so a second call costs a look-up.

    Raises:
        NotASceneError: with the reason, for rasters that are none of these.
    """
    key = _role_key(info)
    role = _ROLES.get(key)
    if role is None:
        role = _classify(info)
        if len(_ROLES) >= _ROLES_MAX:
            _ROLES.clear()
        _ROLES[key] = role
    return role


def _classify(info: FileInfo) -> FileRole:
    tokens = _tokens(info)
    role = info.tags.get("CLOUDCLEAR_ROLE", "").lower()
    if role == "truth" or "TRUTH" in tokens:
        raise NotASceneError(f"{info.path}: cloud-free reference (truth), not an acquisition")
    if role in ("reconstruction", "status"):
        raise NotASceneError(f"{info.path}: a cloudclear {role} output, not an acquisition")
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
    s1_role = _s1_role_from_name(info, tokens)
    if s1_role is not None:
        return s1_role
    if ("S2" in tokens or tokens & {"L1C", "L2A", "MSIL1C", "MSIL2A"}) and not is_float:
        assumed = S2_BANDS_BY_COUNT.get(info.count)
        if assumed:
            return FileRole("s2", {b: i + 1 for i, b in enumerate(assumed)}, "count")
    raise NotASceneError(
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


#: File-name tokens that say a file is Sentinel-1 (the mission, or one of its satellites).
_S1_TOKENS = {"S1", "S1A", "S1B", "S1C", "S1D"}
# ASF HyP3 RTC names (S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_FD6A_VV.tif): after "RTCzz_G_",
# gamma-0 or sigma-0 (g/s), then the scale: power (p), decibel (d) or amplitude (a).
_HYP3_SCALE_RE = re.compile(r"_RTC\d{2}_G_[gs](?P<scale>[pda])[uw][nf][ec][dm](?:_|$)", re.I)
_HYP3_UNITS = {"p": "linear", "d": "dB", "a": "amplitude"}


def _s1_role_from_name(info: FileInfo, tokens: set[str]) -> FileRole | None:
    """The S1 role a file name gives (no band descriptions name S1 bands), or None.

    A polarisation token in the name (``..._VH.tif``, ``S1_20200101_VV.tif``) names the bands of a
    file that holds as many; the band count names them (VV, then VH) only where the name says
    ``S1`` and names no polarisation. A satellite token (S1A, S1B, ...) alone is not enough: an
    ASF RTC folder also holds its DEM and incidence-angle maps under the same base name.
    """
    if not tokens & _S1_TOKENS:
        return None
    pols = [t.upper() for t in _TOKEN_SPLIT.split(info.stem) if t.upper() in S1_BANDS]
    pols = list(dict.fromkeys(pols))
    if pols:
        if len(pols) != info.count:  # an S1 file that contradicts its name: wrong, refused
            raise InvalidRasterError(
                f"{info.path}: the name names polarisation(s) {', '.join(pols)} but the file has {info.count} band(s)"
            )
        return FileRole("s1", {p: i + 1 for i, p in enumerate(pols)}, "name", units=_s1_units(info))
    if "S1" in tokens and info.count in (1, 2):
        bands = dict(zip(("VV", "VH")[: info.count], range(1, info.count + 1), strict=True))
        return FileRole("s1", bands, "count", units=_s1_units(info))
    return None


def _s1_units(info: FileInfo) -> str:
    """ "linear" (power) or "dB": as the band descriptions, the UNITS tag or the file name state,
    else as the data show (:func:`_s1_units_from_pixels`).

    Raises:
        InvalidRasterError: the file states amplitude, which is neither (cloudclear reads
            backscatter as power or dB): a wrong input, refused.
    """
    units = _s1_units_stated(info)
    if units == "amplitude":
        raise InvalidRasterError(
            f"{info.path}: Sentinel-1 amplitude, not power or dB backscatter (square it to power, "
            f"or process the product with scale power or decibel)"
        )
    if units:
        return units
    if not info.dtype.startswith("float"):
        return "linear"
    return _s1_units_from_pixels(info)


def _s1_units_stated(info: FileInfo) -> str | None:
    """What the descriptions and UNITS tag, then the name, say: "linear", "dB", "amplitude" or None."""
    for text in (" ".join((*info.descriptions, info.tags.get("UNITS", ""))), info.stem):
        words = {w.lower() for w in _TOKEN_SPLIT.split(text) if w}
        if words & {"db", "decibel", "decibels"}:
            return "dB"
        if words & {"amplitude", "amp"}:
            return "amplitude"
        if words & {"linear", "lin", "power", "pwr"}:
            return "linear"
    m = _HYP3_SCALE_RE.search(info.stem)
    return _HYP3_UNITS[m.group("scale").lower()] if m else None


#: Files :func:`read_file_info` holds open in this thread while its ``then`` runs (``.files``:
#: path -> dataset): the units an S1 file's pixels show are read there, not by opening it again.
_OPEN = threading.local()


def _s1_units_from_pixels(info: FileInfo) -> str:
    # Backscatter in dB is mostly negative; linear power is positive. One central block decides.
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    h, w = min(info.height, 256), min(info.width, 256)
    win = Window((info.width - w) // 2, (info.height - h) // 2, w, h)
    src = getattr(_OPEN, "files", {}).get(info.path)
    if src is not None:
        data = src.read(1, window=win, masked=True).astype("float64").filled(np.nan)
    else:
        with rasterio.open(info.path) as opened:
            data = opened.read(1, window=win, masked=True).astype("float64").filled(np.nan)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return "unknown"
    return "dB" if float(np.median(data)) < 0 else "linear"
