"""The :class:`Scene` value: one catalogued acquisition, as the catalog hands it to the later stages.

A scene has files, bands (each from a file and a band index), a grid (rasterio's ``CRS``,
``Affine`` and ``BoundingBox``), an acquisition time (aware UTC), a place, a sensor and level, how
to turn its numbers into physical values (scale, offset, units, nodata), a mask, cloud and nodata
cover, per-cell cloud and validity grids, and the S1 acquisition nearest to it.

A scene's *place* is the MGRS tile it belongs to (``31UFQ``) or, for a scene whose name and tags
name no tile, the grid it lies on (:func:`grid_name`: EPSG code, origin, resolution and size), so
that every scene can be chosen by ``--tile``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cloudclear.masks import MaskBand

if TYPE_CHECKING:
    import numpy as np
    from affine import Affine
    from rasterio.coords import BoundingBox
    from rasterio.crs import CRS

# An MGRS tile id, with or without the leading "T" of ESA product names.
_MGRS = re.compile(r"^T?(\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2})$")


def normalise_tile(text: str | None) -> str | None:
    """The canonical form of a tile id: "T31UFQ" / "t31ufq" / " 31UFQ " -> "31UFQ".

    A text that is no MGRS id (a grid name, see :func:`grid_name`) is returned stripped, unchanged
    otherwise; an empty text gives None.
    """
    if text is None:
        return None
    t = str(text).strip()
    if not t:
        return None
    m = _MGRS.match(t.upper())
    return m.group(1) if m else t


def is_mgrs(text: str | None) -> bool:
    """Whether ``text`` is an MGRS tile id (after :func:`normalise_tile`)."""
    return text is not None and re.fullmatch(r"\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2}", text) is not None


def place_label(place: str) -> str:
    """A place as file names show it: "T31UFQ" for an MGRS tile, the grid name otherwise."""
    return f"T{place}" if is_mgrs(place) else place


def _num(v: float, decimals: int = 3) -> str:
    # Metres to the millimetre, degrees to 1e-7 (about a centimetre): never an exponent
    # ("5p08025e+06" once named two grids alike).
    text = f"{round(float(v), decimals):.{decimals}f}".rstrip("0").rstrip(".")
    return (text if text not in ("", "-0") else "0").replace(".", "p").replace("-", "m")


def grid_name(
    crs_name: str, transform: tuple[float, ...] | Affine, width: int, height: int, epsg: int | None = None
) -> str:
    """A stable name for a grid: ``G{EPSG}_{x0}_{y0}_{res}m_{width}x{height}``.

    For example ``G32632_699960_4600020_10m_1000x1000``, or on a lon/lat grid
    ``G4326_17p9371235_59p0523456_0p00008983153deg_128x128``; a CRS without an EPSG code is named by a
    short hash of its text (``Gcrs1a2b3c_...``). Scenes whose names and tags give no tile id belong
    to the grid they lie on, and this is the name the catalog reports and ``--tile`` accepts.
    """
    a, _, c, _, e, f = tuple(transform)[:6]
    if epsg is None and crs_name.upper().startswith("EPSG:") and crs_name[5:].isdigit():
        epsg = int(crs_name[5:])
    code = str(epsg) if epsg else "crs" + hashlib.sha1(crs_name.encode()).hexdigest()[:6]
    # A pixel under 0.01 CRS units is in degrees (EPSG:4326 exports): name it to 1e-7 degree.
    deg = abs(a) < 0.01

    def num(v: float) -> str:
        return _num(v, (12 if abs(v) < 0.01 else 7) if deg else 3)

    res = num(abs(a)) if abs(abs(a) - abs(e)) < 1e-12 else f"{num(abs(a))}x{num(abs(e))}"
    unit = "deg" if deg else "m"
    return f"G{code}_{num(c)}_{num(f)}_{res}{unit}_{int(width)}x{int(height)}"


class BandSource(NamedTuple):
    """Where one band of a scene is: an absolute file path and a 1-based band index."""

    path: str
    band: int


class CellGrids:
    """Per-cell statistics of a scene, decoded on first use.

    The catalog keeps, per ``size`` x ``size`` pixel cell of the scene grid, the cloud % of the
    valid pixels (255 where unknown) and the % of pixels with data; decoding them costs time and
    memory, so a scene carries a loader and decodes only when asked.

    Attributes:
        size: cell side in pixels.
        rows: cell rows.
        cols: cell columns.
    """

    def __init__(self, size: int, rows: int, cols: int, load: Callable[[], tuple[np.ndarray, np.ndarray]]):
        self.size = size
        self.rows = rows
        self.cols = cols
        self._load = load
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def _get(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = self._load()
        return self._arrays

    @property
    def cloud(self) -> np.ndarray:
        """(rows, cols) uint8 cloud % of each cell's valid pixels; 255 where unknown (no mask, no data)."""
        return self._get()[0]

    @property
    def valid(self) -> np.ndarray:
        """(rows, cols) uint8 % of each cell's pixels with data."""
        return self._get()[1]

    def __repr__(self) -> str:
        return f"CellGrids(size={self.size}, rows={self.rows}, cols={self.cols})"


@functools.lru_cache(maxsize=64)
def _crs(name: str) -> CRS:
    from rasterio.crs import CRS

    return CRS.from_user_input(name)


@dataclass(frozen=True, eq=False)
class Scene:
    """One catalogued acquisition (S2 or S1), with absolute file paths.

    Returned by :meth:`cloudclear.catalog.Catalog.get`, :meth:`~cloudclear.catalog.Catalog.query`
    and iteration over a catalog. Two scenes compare equal when they are the same object; compare
    ``scene_id`` to match scenes of one catalog.

    Attributes:
        scene_id: the catalog's id, ``SENSOR_TILE_YYYYMMDDTHHMMSS`` (plus a suffix on a clash).
        index: position in the catalog (date order); the id of the scene in the catalog's rtree.
        sensor: "S2" or "S1".
        tile: MGRS tile id ("31UFQ"), or None when the name and tags give none.
        place: the tile id, or for a scene without one the name of its grid (:func:`grid_name`).
        datetime: acquisition time, aware UTC.
        datetime_source: where the time came from ("name", "tag:DATETIME", ...).
        level: "L1C", "L2A", "GRD" or "".
        crs_name: the CRS as the catalog shows it ("EPSG:32631", else a PROJ string).
        epsg: its EPSG code, or None.
        transform: the grid's affine transform (north-up).
        width: grid columns.
        height: grid rows.
        bounds: (left, bottom, right, top) in the grid's CRS.
        footprint: the scene's outline in lon/lat (a shapely polygon).
        bands: band names, in product order.
        sources: band name -> :class:`BandSource`.
        band_source: how bands were identified ("descriptions", "name", "count").
        dtype: numpy dtype of the band values.
        nodata: the bands' nodata value, or None.
        scale: ``value * scale + offset`` is reflectance (S2) or the backscatter in ``units`` (S1).
        offset: see ``scale``.
        units: "reflectance" (S2), "dB" or "linear" (S1), "unknown".
        mask: the mask band used for cloud statistics, or None.
        mask_source: the mask convention ("SCL", "CLM", ...) or "no mask".
        cloud_pct: % of valid pixels that are cloud, thin cloud or shadow; None without a mask.
        nodata_pct: % of pixels without data.
        cells: per-cell cloud and validity grids (:class:`CellGrids`), decoded on first use.
        nearest_s1: id of the S1 scene over this one nearest in time (S2 only), or None.
        s1_gap_hours: hours between this scene and ``nearest_s1``, or None.
        files: every file of the scene (bands and mask), absolute paths in catalog order.
        detected: the built-in detector's mask of a scene that also has its own (``index`` made it;
            the clear policy's ``source`` decides how the two combine), or None.
        scale_source: where ``scale`` and ``offset`` came from (metadata, data) and what the
            catalog's check of the values found.
        band_scales: band name -> (scale, offset), per band (empty in catalogs made before it:
            every band then has ``scale`` and ``offset``).
    """

    scene_id: str
    index: int
    sensor: str
    tile: str | None
    place: str
    datetime: datetime
    datetime_source: str
    level: str
    crs_name: str
    epsg: int | None
    transform: Affine
    width: int
    height: int
    bounds: BoundingBox
    footprint: Any
    bands: tuple[str, ...]
    sources: Mapping[str, BandSource]
    band_source: str
    dtype: str
    nodata: float | None
    scale: float
    offset: float
    units: str
    mask: MaskBand | None
    mask_source: str
    cloud_pct: float | None
    nodata_pct: float
    cells: CellGrids = field(repr=False)
    nearest_s1: str | None
    s1_gap_hours: float | None
    files: tuple[str, ...]
    detected: MaskBand | None = None
    scale_source: str = ""
    band_scales: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def scaling(self, band: str) -> tuple[float, float]:
        """(scale, offset) of one band: ``DN * scale + offset`` is its physical value."""
        return self.band_scales.get(band, (self.scale, self.offset))

    @property
    def crs(self) -> CRS:
        """The grid's CRS (rasterio)."""
        return _crs(self.crs_name)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, both positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def has_mask(self) -> bool:
        """Whether the catalog knows the scene's cloud cover (it has a mask)."""
        return self.cloud_pct is not None

    @property
    def paths(self) -> tuple[Path, ...]:
        """:attr:`files` as paths."""
        return tuple(Path(p) for p in self.files)

    def has_bands(self, names: Sequence[str]) -> bool:
        """Whether the scene has every band in ``names``."""
        return all(b in self.sources for b in names)

    def to_dict(self) -> dict[str, Any]:
        """The scene's plain fields, JSON-serialisable (for ``--json`` output)."""
        return {
            "scene_id": self.scene_id,
            "sensor": self.sensor,
            "tile": self.tile,
            "place": self.place,
            "datetime": self.datetime.isoformat(),
            "level": self.level,
            "crs": self.crs_name,
            "bounds": list(self.bounds),
            "width": self.width,
            "height": self.height,
            "bands": list(self.bands),
            "cloud_pct": self.cloud_pct,
            "nodata_pct": self.nodata_pct,
            "mask_source": self.mask_source,
            "detected_mask": self.detected.path if self.detected else None,
            "nearest_s1": self.nearest_s1,
            "s1_gap_hours": self.s1_gap_hours,
            "files": list(self.files),
        }
