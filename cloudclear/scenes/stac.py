"""STAC items: a JSON file holding a STAC Item (``"type": "Feature"`` with ``stac_version``) or an
ItemCollection (``"type": "FeatureCollection"`` of items, what ``pystac-client`` saves); one
:class:`Product` per item, keyed ``<json path>#<item id>``.

Sentinel-2 items (Planetary Computer ``sentinel-2-l2a``: assets ``B02``.. ``SCL``; Element84
earth-search v1: ``blue``, ``nir08``, ``scl``, ...): each band asset becomes a member named by its
``eo:bands`` name, common name or asset key (a COG wins over a ``-jp2`` duplicate; ``visual``,
``aot``, ``wvp`` are left out), ``SCL`` the mask. Read from the item:

===================== ====================================================================
DATETIME              ``datetime`` (else ``start_datetime``)
SPACECRAFT            ``platform`` (``sentinel-2a``), else the id's ``S2A_``
TILE_ID               ``s2:mgrs_tile``, ``mgrs:utm_zone`` + ``mgrs:latitude_band`` +
                      ``mgrs:grid_square``, ``sentinel:*`` (earth-search v0), else the id
PROCESSING_LEVEL      ``s2:product_type`` (S2MSI2A), ``processing:level``, collection, id
PROCESSING_BASELINE   ``s2:processing_baseline``, else ``N0400`` in ``s2:product_uri`` or the id
SUN_ZENITH / AZIMUTH  ``view:sun_elevation`` (zenith = 90 - elevation), ``view:sun_azimuth``;
                      else ``s2:mean_solar_zenith`` / ``s2:mean_solar_azimuth``
scale / offset        the asset's ``raster:bands`` ``scale`` / ``offset`` (SCALE_SOURCE ``STAC
                      raster:bands``; earth-search's ``earthsearch:boa_offset_applied: true``
                      means the offset is already in the DN: offset 0); else the processing
                      baseline: from 04.00 DN - 1000 (SCALE_SOURCE ``STAC <field>``); else the
                      date (before 2022-01-25 no product had an offset); else refused.
===================== ====================================================================

Sentinel-1 items (``sentinel-1-rtc``, ``sentinel-1-grd``): assets ``vv``, ``vh`` (``hh``, ``hv``)
make one S1 product; UNITS from ``raster:bands`` ``unit``, else the collection (RTC is linear
power); amplitude (uncalibrated GRD DN) is refused.

``href``: relative (to the JSON's folder), absolute, ``file://``, ``http(s)://`` (read through
``/vsicurl/``), ``s3://`` (``/vsis3/``), ``gs://`` (``/vsigs/``). A URL is not opened when the item
gives its grid (``proj:epsg`` or ``proj:code``, ``proj:transform``, ``proj:shape``): the
:class:`FileInfo` is made from those fields and ``raster:bands``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cloudclear.errors import InvalidRasterError, NotASceneError
from cloudclear.gdal import is_vsi, path_stat
from cloudclear.scenes.files import S1_BANDS, S2_BANDS, FileInfo, normalise_band, read_file_info
from cloudclear.scenes.products import Product

KIND = "STAC"
#: How much of a JSON file :func:`matches` reads to recognise an item.
HEAD_BYTES = 1 << 20
#: The first day of Sentinel-2 products of processing baseline 04.00 (DN offset -1000).
BASELINE_04_START = datetime(2022, 1, 25, tzinfo=timezone.utc)

#: Common names (and earth-search v1 asset keys) -> Sentinel-2 band.
COMMON_NAMES = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11",
    "swir22": "B12",
}  # fmt: skip
_SKIPPED_ASSETS = {"visual", "tci", "aot", "wvp", "preview", "thumbnail", "overview", "rendered_preview"}
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
_PLATFORM_RE = re.compile(r"sentinel[-_ ]?([12])([a-d])?", re.I)
_ID_PLATFORM_RE = re.compile(r"^S([12])([A-D])_", re.I)
_BASELINE_RE = re.compile(r"_N(\d{2})(\d{2})_")
_TILE_RE = re.compile(r"(?<![A-Za-z0-9])T?(\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})(?![A-Za-z0-9])")


def matches(path: Path) -> bool:
    """Whether ``path`` is a JSON file that looks like a STAC Item or ItemCollection (its first
    :data:`HEAD_BYTES` name a ``stac_version`` and a ``Feature``)."""
    if path.suffix.lower() not in (".json", ".geojson") or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return False
    return b'"stac_version"' in head and b'"Feature' in head


def read(path: Path) -> list[Product]:
    """One product per item of the STAC JSON at ``path``.

    Raises:
        NotASceneError: the JSON is no STAC Item / ItemCollection, or an item is neither
            Sentinel-2 nor Sentinel-1.
        InvalidRasterError: an item lacks what cloudclear needs (its date, a band asset, a way to
            tell its scale) or an asset's local file is absent; the message names the item.
    """
    path = Path(os.path.abspath(path))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRasterError(f"{path}: unreadable JSON ({exc})") from None
    return [_Item(path, item).product() for item in _items(path, doc)]


def _items(path: Path, doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and doc.get("type") == "Feature" and "stac_version" in doc:
        return [doc]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = [f for f in doc.get("features") or [] if isinstance(f, dict) and f.get("type") == "Feature"]
        if feats and ("stac_version" in doc or all("stac_version" in f for f in feats)):
            return feats
    raise NotASceneError(f"{path}: not a STAC Item or ItemCollection")


class _Item:
    """One item being read: its fields, where they came from, and its members."""

    def __init__(self, path: Path, item: dict[str, Any]) -> None:
        self.path = path
        self.item = item
        self.id = str(item.get("id") or "")
        self.label = f"{path}#{self.id}"
        if not self.id:
            raise InvalidRasterError(f"{path}: a STAC item without an id")
        self.props: dict[str, Any] = item.get("properties") or {}
        self.assets: dict[str, dict[str, Any]] = item.get("assets") or {}
        self.collection = str(item.get("collection") or "").lower()

    # -- what the item is ----------------------------------------------------------------------

    def product(self) -> Product:
        when = self._datetime()
        tags = {"CLOUDCLEAR_PRODUCT": self.label, "DATETIME": when.isoformat(), "PRODUCT": self.id}
        sensor, spacecraft = self._platform()
        if spacecraft:
            tags["SPACECRAFT"] = spacecraft
        members = self._s2_members(tags, when) if sensor == "2" else self._s1_members(tags)
        return Product(
            kind=KIND, path=str(self.path), key=self.label, members=tuple(members), metadata=(str(self.path),)
        )

    def _datetime(self) -> datetime:
        text = self.props.get("datetime") or self.props.get("start_datetime")
        if not text:
            raise InvalidRasterError(f"{self.label}: no datetime nor start_datetime in the item's properties")
        try:
            dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRasterError(f"{self.label}: datetime {text!r} is no date") from None
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)

    def _platform(self) -> tuple[str, str | None]:
        """("2" or "1", "Sentinel-2A" or None) from platform, constellation, collection or id."""
        for text in (self.props.get("platform"), self.props.get("constellation"), self.collection):
            m = _PLATFORM_RE.search(str(text or ""))
            if m:
                sat = m.group(2) or (_ID_PLATFORM_RE.match(self.id) or [None, None, None])[2]
                return m.group(1), f"Sentinel-{m.group(1)}{sat.upper()}" if sat else None
        m = _ID_PLATFORM_RE.match(self.id)
        if m:
            return m.group(1), f"Sentinel-{m.group(1)}{m.group(2).upper()}"
        what = self.props.get("platform") or self.collection or "unknown platform"
        raise NotASceneError(f"{self.label}: a STAC item of {what}; cloudclear reads Sentinel-2 and Sentinel-1")

    def _level_s2(self) -> str:
        ptype = str(self.props.get("s2:product_type") or "").upper()
        ptype = ptype.replace("MSI2A", "MSIL2A").replace("MSI1C", "MSIL1C")  # S2MSI2A: the product type
        for text in (ptype, self.props.get("processing:level"), self.collection, self.id):
            up = str(text or "").upper()
            for level in ("L2A", "L1C"):
                if level in up:
                    return level
        raise InvalidRasterError(f"{self.label}: processing level unknown (no s2:product_type nor processing:level)")

    def _tile(self) -> str | None:
        p = self.props
        if p.get("s2:mgrs_tile"):
            return str(p["s2:mgrs_tile"]).upper().removeprefix("T")
        for pre in ("mgrs", "sentinel"):
            zone, band, square = (p.get(f"{pre}:{k}") for k in ("utm_zone", "latitude_band", "grid_square"))
            if zone is not None and band and square:
                return f"{int(zone):02d}{band}{square}".upper()
        m = _TILE_RE.search(self.id)
        return m.group(1).upper() if m else None

    def _baseline(self) -> tuple[str, str] | None:
        """(baseline "04.00", the field it came from), or None."""
        for key in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
            if self.props.get(key) and re.fullmatch(r"\d{1,2}\.\d{2}", str(self.props[key])):
                return f"{float(self.props[key]):05.2f}", key
        for key in ("s2:product_uri", "sentinel:product_id"):
            m = _BASELINE_RE.search(str(self.props.get(key) or ""))
            if m:
                return f"{m.group(1)}.{m.group(2)}", key
        m = _BASELINE_RE.search(self.id)
        return (f"{m.group(1)}.{m.group(2)}", "id") if m else None

    def _sun(self) -> tuple[float, float] | None:
        p = self.props
        try:
            if p.get("view:sun_elevation") is not None and p.get("view:sun_azimuth") is not None:
                return 90.0 - float(p["view:sun_elevation"]), float(p["view:sun_azimuth"])
            if p.get("s2:mean_solar_zenith") is not None and p.get("s2:mean_solar_azimuth") is not None:
                return float(p["s2:mean_solar_zenith"]), float(p["s2:mean_solar_azimuth"])
        except (TypeError, ValueError):
            raise InvalidRasterError(f"{self.label}: sun angles that are not numbers") from None
        return None

    # -- Sentinel-2 ----------------------------------------------------------------------------

    def _s2_members(self, tags: dict[str, str], when: datetime) -> list[FileInfo]:
        level = self._level_s2()
        tags = {**tags, "PROCESSING_LEVEL": level}
        tile = self._tile()
        if tile:
            tags["TILE_ID"] = tile
        baseline = self._baseline()
        if baseline:
            tags["PROCESSING_BASELINE"] = baseline[0]
        sun = self._sun()
        if sun:
            tags["SUN_ZENITH"], tags["SUN_AZIMUTH"] = (f"{a:.6g}" for a in sun)
        # band -> (rank, asset key, 0-based band of the asset): a COG beats its -jp2 duplicate.
        chosen: dict[str, tuple[tuple[bool, bool, bool], str, int]] = {}
        for key, asset in self.assets.items():
            for i, name in _s2_asset_bands(key, asset):
                rank = (_href_suffix(asset) == ".jp2", key.lower().endswith("-jp2"), i > 0)
                if name not in chosen or rank < chosen[name][0]:
                    chosen[name] = (rank, key, i)
        bands = [b for b in S2_BANDS if b in chosen]
        if not bands:
            raise InvalidRasterError(f"{self.label}: no Sentinel-2 band asset (B02 / blue, ...)")
        add_key = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
        members = []
        for key in dict.fromkeys(chosen[b][1] for b in bands):
            held = {chosen[b][2]: b for b in bands if chosen[b][1] == key}  # one asset, several bands
            n = max(held) + 1
            scaling = [self._scale(self.assets[key], level, baseline, when, i) for i in range(n)]
            scale, offset, source = scaling[min(held)]
            btags = {**tags, "SCALE_SOURCE": source, "QUANTIFICATION_VALUE": _num(1.0 / scale)}
            btags[add_key] = _num(offset / scale)
            names = tuple(held.get(i, "") for i in range(n))
            info = self._member(key, names, "uint16", btags)
            if info.count != n and n > 1:
                raise InvalidRasterError(f"{self.label}: asset {key} has {info.count} bands, its eo:bands list {n}")
            members.append(
                replace(
                    info,
                    scales=tuple(sc for sc, _, _ in scaling) + info.scales[n:],
                    offsets=tuple(off for _, off, _ in scaling) + info.offsets[n:],
                )
            )
        scl = [k for k, a in self.assets.items() if _s2_asset_name(k, a) == "SCL"]
        if scl:
            scl.sort(key=lambda k: (_href_suffix(self.assets[k]) == ".jp2", k.lower().endswith("-jp2")))
            members.append(self._member(scl[0], "SCL", "uint8", tags))
        return members

    def _scale(
        self, asset: dict[str, Any], level: str, baseline: tuple[str, str] | None, when: datetime, band: int = 0
    ) -> tuple[float, float, str]:
        """(scale, offset, SCALE_SOURCE) turning the DN of the asset's band ``band`` (0-based)
        into reflectance."""
        rb = _raster_band(asset, band)
        if rb.get("scale") is not None or rb.get("offset") is not None:
            scale, offset = float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0))
            if offset and self.props.get("earthsearch:boa_offset_applied") is True:
                return scale, 0.0, "STAC raster:bands, earthsearch:boa_offset_applied (offset already in the DN)"
            return scale, offset, "STAC raster:bands"
        if baseline is not None:
            offset = -1000.0 if baseline[0] >= "04.00" else 0.0
            return 1e-4, offset / 10000.0, f"STAC {baseline[1]}"
        if when < BASELINE_04_START:
            return 1e-4, 0.0, "STAC datetime (before baseline 04.00)"
        raise InvalidRasterError(
            f"{self.label}: no raster:bands scale/offset nor processing baseline (s2:processing_baseline): "
            f"from {BASELINE_04_START.date()} Sentinel-2 DN may carry an offset of -1000, which cannot be told"
        )

    # -- Sentinel-1 ----------------------------------------------------------------------------

    def _s1_members(self, tags: dict[str, str]) -> list[FileInfo]:
        rtc = "rtc" in self.collection or self.id.lower().endswith("rtc")
        tags = {**tags, "PROCESSING_LEVEL": "RTC" if rtc else "GRD"}
        members = []
        for key, asset in self.assets.items():
            pol = normalise_band(key)
            if pol not in S1_BANDS or not _is_raster(asset):
                continue
            rb = _raster_band(asset)
            unit = str(rb.get("unit") or "").lower()
            units = {"db": "dB", "decibel": "dB", "linear": "linear", "power": "linear"}.get(unit)
            dtype = str(rb.get("data_type") or ("float32" if rtc else "uint16"))
            if unit in ("amplitude", "dn") or (units is None and not rtc and not dtype.startswith("float")):
                raise NotASceneError(
                    f"{self.label}: Sentinel-1 {key} is uncalibrated amplitude ({dtype}), not backscatter "
                    f"(use a calibrated product, e.g. sentinel-1-rtc)"
                )
            units = units or ("linear" if rtc else None)
            members.append(self._member(key, pol, dtype, {**tags, "UNITS": units} if units else tags))
        if not members:
            raise InvalidRasterError(f"{self.label}: no Sentinel-1 vv / vh asset")
        return members

    # -- one asset -----------------------------------------------------------------------------

    def _member(self, key: str, description: str | tuple[str, ...], dtype: str, tags: dict[str, str]) -> FileInfo:
        asset = self.assets[key]
        href = str(asset.get("href") or "")
        if not href:
            raise InvalidRasterError(f"{self.label}: asset {key} has no href")
        path = gdal_path(href, self.path.parent)
        rb = _raster_band(asset)
        grid = self._grid(asset)
        if is_vsi(path) and grid is not None:
            info = _info_from_fields(path, grid, str(rb.get("data_type") or dtype), rb.get("nodata"))
        else:
            try:
                info = read_file_info(path)
            except OSError:
                raise InvalidRasterError(f"{self.label}: asset {key}: {path} does not exist") from None
            want = 1 if isinstance(description, str) else len(description)
            if info.count != want:
                raise InvalidRasterError(f"{self.label}: asset {key} has {info.count} bands, not {want}")
        nodata = info.nodata
        if nodata is None and rb.get("nodata") is not None:
            nodata = _nodata(rb["nodata"])
        names = (description,) if isinstance(description, str) else description
        return replace(info, descriptions=names, nodata=nodata, tags={**info.tags, **tags})

    def _grid(self, asset: dict[str, Any]) -> tuple[str, tuple[float, ...], tuple[int, int]] | None:
        """(CRS WKT, transform, (rows, cols)) from the asset's (else the item's) proj: fields."""

        def field(name: str) -> Any:
            return asset.get(name, self.props.get(name))

        transform, shape = field("proj:transform"), field("proj:shape")
        code = field("proj:code") or (f"EPSG:{field('proj:epsg')}" if field("proj:epsg") else None)
        wkt = field("proj:wkt2")
        if not transform or not shape or len(transform) < 6 or len(shape) != 2 or not (code or wkt):
            return None
        from rasterio.crs import CRS

        crs = CRS.from_wkt(wkt) if wkt else CRS.from_user_input(code)
        return crs.to_wkt(), tuple(float(v) for v in transform[:6]), (int(shape[0]), int(shape[1]))


def gdal_path(href: str, folder: Path) -> str:
    """The path GDAL opens for an asset ``href`` of an item whose JSON lies in ``folder``."""
    scheme = urlparse(href).scheme.lower()
    if scheme in ("http", "https"):
        return "/vsicurl/" + href
    for prefix, vsi in (("s3", "/vsis3/"), ("gs", "/vsigs/")):
        if scheme == prefix:
            return vsi + href[len(prefix) + 3 :]
    if scheme == "file":
        return os.path.abspath(unquote(urlparse(href).path))
    if href.startswith("/vsi"):
        return href
    return os.path.abspath(folder / href)


def _info_from_fields(
    path: str, grid: tuple[str, tuple[float, ...], tuple[int, int]], dtype: str, nodata: Any
) -> FileInfo:
    wkt, transform, (rows, cols) = grid
    size, mtime = path_stat(path)
    driver = "JP2OpenJPEG" if path.lower().split("?")[0].endswith(".jp2") else "GTiff"
    return FileInfo(
        path=path,
        size=size,
        mtime_ns=mtime,
        driver=driver,
        count=1,
        dtype=dtype,
        width=cols,
        height=rows,
        crs=wkt,
        transform=transform,
        nodata=_nodata(nodata) if nodata is not None else None,
        descriptions=("",),
        scales=(1.0,),
        offsets=(0.0,),
        tags={},
    )


def _s2_asset_bands(key: str, asset: dict[str, Any]) -> list[tuple[int, str]]:
    """The S2 bands an asset holds, as (0-based band of the file, "B02"): one for the providers'
    single-band COGs, several for a stack whose ``eo:bands`` lists them (openEO, ODC exports)."""
    bands = asset.get("eo:bands") or asset.get("bands") or []
    if len(bands) <= 1:
        name = _s2_asset_name(key, asset)
        return [(0, name)] if name and name != "SCL" else []
    if key.lower().removesuffix("-jp2") in _SKIPPED_ASSETS or not _is_raster(asset):
        return []
    out = []
    for i, b in enumerate(bands):
        if not isinstance(b, dict):
            continue
        for text in (b.get("name"), b.get("common_name"), b.get("eo:common_name")):
            band = normalise_band(str(text)) if text else None
            band = band if band in S2_BANDS else COMMON_NAMES.get(str(text or "").lower())
            if band:
                out.append((i, band))
                break
    return out


def _s2_asset_name(key: str, asset: dict[str, Any]) -> str | None:
    """The band ("B02") or "SCL" an asset holds, or None for any other asset."""
    base = key.lower().removesuffix("-jp2")
    if base in _SKIPPED_ASSETS or not _is_raster(asset):
        return None
    bands = asset.get("eo:bands") or asset.get("bands") or []
    if len(bands) > 1:
        return None
    first = bands[0] if bands and isinstance(bands[0], dict) else {}
    for name in (first.get("name"), key, base):
        if not name:
            continue
        if str(name).upper() == "SCL":
            return "SCL"
        band = normalise_band(str(name))
        if band in S2_BANDS:
            return band
        if str(name).lower() in COMMON_NAMES:
            return COMMON_NAMES[str(name).lower()]
    common = str(first.get("common_name") or first.get("eo:common_name") or "").lower()
    return COMMON_NAMES.get(common)


def _href_suffix(asset: dict[str, Any]) -> str:
    return os.path.splitext(urlparse(str(asset.get("href") or "")).path)[1].lower()


def _is_raster(asset: dict[str, Any]) -> bool:
    media = str(asset.get("type") or "").lower()
    return _href_suffix(asset) in _RASTER_SUFFIXES or "image/tiff" in media or "image/jp2" in media


def _raster_band(asset: dict[str, Any], i: int = 0) -> dict[str, Any]:
    """The asset's ``raster:bands`` entry of band ``i`` (STAC 1.1 ``bands`` with ``raster:`` keys alike)."""
    rbs = asset.get("raster:bands")
    if rbs and len(rbs) > i and isinstance(rbs[i], dict):
        return dict(rbs[i])
    bands = asset.get("bands")
    if bands and len(bands) > i and isinstance(bands[i], dict):
        b = bands[i]
        out = {k.removeprefix("raster:"): v for k, v in b.items() if k.startswith("raster:")}
        for k in ("nodata", "data_type", "unit"):
            if k in b:
                out[k] = b[k]
        return out
    return {}


def _nodata(value: Any) -> float:
    return float("nan") if str(value).lower() == "nan" else float(value)


def _num(value: float) -> str:
    rounded = round(value, 6)
    return f"{rounded:g}" if rounded == int(rounded) else repr(rounded)


def local_assets(path: Path) -> set[str]:
    """Every local file the STAC JSON at ``path`` points at, read leniently (no checks): the scan
    leaves them out of the loose rasters even when the item itself is refused."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        items = _items(Path(path), doc)
    except (OSError, UnicodeDecodeError, ValueError, InvalidRasterError):
        return set()
    folder = Path(os.path.abspath(path)).parent
    out = set()
    for item in items:
        for asset in (item.get("assets") or {}).values():
            href = asset.get("href") if isinstance(asset, dict) else None
            if isinstance(href, str) and href:
                p = gdal_path(href, folder)
                if not p.startswith("/vsi"):
                    out.add(p)
    return out
