"""Realistic synthetic Sentinel-2 / Sentinel-1 time series with known truth.

:func:`generate_series` writes, for one MGRS tile, a series of cloudy Sentinel-2 L2A acquisitions,
one Sen2Cor-coded SCL mask and the cloud-free truth per date, and Sentinel-1 VV/VH backscatter on
the Sentinel-1 revisit grid, all as GeoTIFFs on the tile's real UTM grid.

The landscape is agricultural north-western Europe: parcels of several crops with their own
phenology, forest, a river and lakes, towns with streets, roads. Clouds are thick cumulus with
offset shadows and thin cirrus, blended over the truth by their opacity.

Every field is a pure function of global pixel coordinates, the date and the seed (hashed noise
lattices, jittered-grid Voronoi parcels, per-row random streams), so a raster is rendered in strips
of rows in bounded memory and its content never depends on the strip height.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window
from tqdm import tqdm

from cloudclear.errors import SynthError
from cloudclear.gdal import gdal_env
from cloudclear.masks import SCL_NAMES
from cloudclear.outputs import WriteFailures, atomic_outputs, check_geotiff_complete, output_error

__all__ = [
    "S2_BANDS",
    "SCL_CLASSES",
    "SynthError",
    "SynthSeries",
    "generate_series",
]


#: Sentinel-2 bands the generator can write, with their central wavelength in nm.
S2_BANDS: dict[str, int] = {
    "B02": 490,
    "B03": 560,
    "B04": 665,
    "B05": 705,
    "B06": 740,
    "B07": 783,
    "B08": 842,
    "B8A": 865,
    "B11": 1610,
    "B12": 2190,
}

#: Sen2Cor scene classification (SCL) codes; the generator writes 3, 4, 5, 6, 8, 9 and 10.
SCL_CLASSES: dict[int, str] = SCL_NAMES

_SCL_SHADOW, _SCL_VEG, _SCL_BARE, _SCL_WATER = 3, 4, 5, 6
_SCL_CLOUD_MED, _SCL_CLOUD_HIGH, _SCL_CIRRUS = 8, 9, 10
_SCL_CLOUDY = (_SCL_SHADOW, _SCL_CLOUD_MED, _SCL_CLOUD_HIGH, _SCL_CIRRUS)

_PIXEL_M = 10.0
_STRIP_ROWS = 512
# Rows computed at once inside a strip: small enough that the temporaries stay in cache.
_CHUNK_ROWS = 64
_S2_TIME = (time(10, 30, 21), time(10, 30, 29))  # S2A / S2B, alternating on the 5-day grid
_S2_EPOCH = date(2015, 6, 27)
_S2_REVISIT = 5
_S1_TIME = time(17, 29, 44)
_S1_EPOCH = date(2015, 1, 3)
_S1_REVISIT = 12  # one satellite, one ascending track: the nearest S1 is never > 6 days off
_S1_LOOKS = 4.4
_S1_DB_STEP = 1 / 8  # dB quantum: far below speckle, lets deflate drop the low mantissa bits
_MAX_SHADOW_DEPTH = 0.7

# Purposes mixed into the seed so that each random quantity has its own stream.
(
    _P_LAYOUT,
    _P_BLOCK,
    _P_PARCEL,
    _P_ATTR,
    _P_FOREST,
    _P_CONIFER,
    _P_TEX,
    _P_SOIL,
    _P_TOWN,
    _P_LAKE,
    _P_RIVER,
    _P_CLOUD,
    _P_CIRRUS,
    _P_MOIST,
    _P_RAIN,
    _P_WIND,
    _P_SPECKLE,
    _P_COVER,
    _P_GAIN,
) = range(1, 20)

# ---------------------------------------------------------------------------------------------
# Spectra: surface reflectance of the end-members, in S2_BANDS order.
# ---------------------------------------------------------------------------------------------
_SPECTRA: dict[str, tuple[float, ...]] = {
    #               B02    B03    B04    B05    B06    B07    B08    B8A    B11    B12
    "green": (0.030, 0.065, 0.035, 0.110, 0.300, 0.400, 0.430, 0.445, 0.210, 0.095),
    "dry": (0.062, 0.092, 0.125, 0.165, 0.205, 0.232, 0.258, 0.268, 0.345, 0.255),
    "soil": (0.072, 0.102, 0.142, 0.172, 0.192, 0.210, 0.228, 0.238, 0.318, 0.268),
    "flower": (0.045, 0.135, 0.115, 0.190, 0.330, 0.395, 0.415, 0.425, 0.225, 0.115),
    "decid": (0.022, 0.048, 0.025, 0.080, 0.235, 0.305, 0.325, 0.335, 0.160, 0.065),
    "conif": (0.017, 0.034, 0.019, 0.052, 0.145, 0.185, 0.205, 0.210, 0.105, 0.042),
    "bark": (0.038, 0.052, 0.062, 0.082, 0.110, 0.128, 0.142, 0.148, 0.190, 0.140),
    "water": (0.034, 0.043, 0.028, 0.022, 0.015, 0.012, 0.010, 0.009, 0.005, 0.003),
    "roof": (0.118, 0.124, 0.130, 0.138, 0.145, 0.152, 0.160, 0.164, 0.200, 0.185),
    "tile": (0.082, 0.092, 0.135, 0.160, 0.180, 0.195, 0.210, 0.215, 0.280, 0.240),
    "asphalt": (0.072, 0.082, 0.092, 0.098, 0.103, 0.108, 0.113, 0.116, 0.138, 0.128),
    "cloud": (0.610, 0.598, 0.590, 0.590, 0.588, 0.586, 0.582, 0.580, 0.400, 0.250),
    "cirrus": (0.420, 0.405, 0.395, 0.392, 0.390, 0.388, 0.385, 0.383, 0.200, 0.120),
}
# Shadows are lit by the blue sky: blue loses less than the red and infrared.
_SHADOW_BAND = (0.72, 0.84, 0.90, 0.94, 0.97, 1.0, 1.0, 1.0, 1.0, 1.0)

# ---------------------------------------------------------------------------------------------
# Crops: phenology as piecewise-linear fractions (green, dry, soil, flower) over the day of year.
# ---------------------------------------------------------------------------------------------
_WHEAT = (
    (0, 0.30, 0.05, 0.65, 0),
    (60, 0.40, 0.05, 0.55, 0),
    (90, 0.65, 0.02, 0.33, 0),
    (120, 0.92, 0.0, 0.08, 0),
    (155, 0.93, 0.0, 0.07, 0),
    (170, 0.62, 0.36, 0.02, 0),
    (185, 0.15, 0.83, 0.02, 0),
    (198, 0.02, 0.95, 0.03, 0),
    (200, 0.0, 0.95, 0.05, 0),
    (201, 0.0, 0.42, 0.58, 0),
    (224, 0.02, 0.36, 0.62, 0),
    (225, 0.0, 0.05, 0.95, 0),
    (255, 0.0, 0.0, 1.0, 0),
    (275, 0.12, 0.0, 0.88, 0),
    (310, 0.25, 0.02, 0.73, 0),
    (366, 0.30, 0.05, 0.65, 0),
)
_RAPESEED = (
    (0, 0.55, 0.05, 0.40, 0),
    (60, 0.65, 0.03, 0.32, 0),
    (95, 0.90, 0.0, 0.10, 0),
    (105, 0.72, 0.0, 0.05, 0.23),
    (120, 0.45, 0.0, 0.03, 0.52),
    (138, 0.75, 0.03, 0.04, 0.18),
    (150, 0.82, 0.08, 0.10, 0),
    (165, 0.55, 0.40, 0.05, 0),
    (180, 0.10, 0.85, 0.05, 0),
    (190, 0.0, 0.90, 0.10, 0),
    (191, 0.0, 0.45, 0.55, 0),
    (214, 0.0, 0.40, 0.60, 0),
    (215, 0.0, 0.05, 0.95, 0),
    (240, 0.08, 0.0, 0.92, 0),
    (270, 0.45, 0.0, 0.55, 0),
    (330, 0.55, 0.03, 0.42, 0),
    (366, 0.55, 0.05, 0.40, 0),
)
_MAIZE = (
    (0, 0.0, 0.12, 0.88, 0),
    (105, 0.0, 0.05, 0.95, 0),
    (110, 0.0, 0.0, 1.0, 0),
    (140, 0.0, 0.0, 1.0, 0),
    (152, 0.06, 0.0, 0.94, 0),
    (172, 0.35, 0.0, 0.65, 0),
    (190, 0.80, 0.0, 0.20, 0),
    (205, 0.95, 0.0, 0.05, 0),
    (240, 0.90, 0.05, 0.05, 0),
    (255, 0.55, 0.40, 0.05, 0),
    (275, 0.15, 0.80, 0.05, 0),
    (285, 0.05, 0.88, 0.07, 0),
    (286, 0.0, 0.45, 0.55, 0),
    (366, 0.0, 0.15, 0.85, 0),
)
_BEET = (
    (0, 0.0, 0.05, 0.95, 0),
    (100, 0.0, 0.0, 1.0, 0),
    (122, 0.03, 0.0, 0.97, 0),
    (142, 0.20, 0.0, 0.80, 0),
    (165, 0.70, 0.0, 0.30, 0),
    (185, 0.95, 0.0, 0.05, 0),
    (265, 0.90, 0.05, 0.05, 0),
    (284, 0.82, 0.12, 0.06, 0),
    (285, 0.0, 0.15, 0.85, 0),
    (366, 0.0, 0.05, 0.95, 0),
)
_POTATO = (
    (0, 0.0, 0.05, 0.95, 0),
    (115, 0.0, 0.0, 1.0, 0),
    (142, 0.05, 0.0, 0.95, 0),
    (165, 0.60, 0.0, 0.40, 0),
    (185, 0.92, 0.0, 0.08, 0),
    (205, 0.85, 0.08, 0.07, 0),
    (220, 0.40, 0.50, 0.10, 0),
    (230, 0.05, 0.60, 0.35, 0),
    (244, 0.02, 0.55, 0.43, 0),
    (245, 0.0, 0.05, 0.95, 0),
    (366, 0.0, 0.05, 0.95, 0),
)
_GRASS = (
    (0, 0.62, 0.22, 0.16, 0),
    (90, 0.72, 0.15, 0.13, 0),
    (130, 0.90, 0.05, 0.05, 0),
    (146, 0.90, 0.05, 0.05, 0),
    (147, 0.38, 0.40, 0.22, 0),
    (172, 0.86, 0.08, 0.06, 0),
    (206, 0.82, 0.12, 0.06, 0),
    (207, 0.36, 0.42, 0.22, 0),
    (240, 0.78, 0.14, 0.08, 0),
    (300, 0.78, 0.12, 0.10, 0),
    (366, 0.62, 0.22, 0.16, 0),
)
_FALLOW = (
    (0, 0.35, 0.30, 0.35, 0),
    (110, 0.50, 0.15, 0.35, 0),
    (160, 0.62, 0.12, 0.26, 0),
    (220, 0.38, 0.42, 0.20, 0),
    (366, 0.35, 0.30, 0.35, 0),
)
_LEAF = ((0, 0.12), (105, 0.18), (118, 0.50), (138, 0.93), (270, 0.90), (292, 0.55), (312, 0.2))


@dataclass(frozen=True)
class _Crop:
    name: str
    curve: tuple[tuple[float, ...], ...]
    shift: int  # days the curve runs early (-) or late (+)
    vv_db: float  # backscatter of a full canopy
    vh_db: float


_CROPS = (
    _Crop("wheat", _WHEAT, 0, -13.5, -18.0),
    _Crop("barley", _WHEAT, -12, -13.0, -18.0),
    _Crop("rapeseed", _RAPESEED, 0, -9.5, -14.5),
    _Crop("maize", _MAIZE, 0, -8.5, -13.5),
    _Crop("sugarbeet", _BEET, 0, -8.5, -14.0),
    _Crop("potato", _POTATO, 0, -9.5, -15.0),
    _Crop("grassland", _GRASS, 0, -10.5, -17.0),
    _Crop("fallow", _FALLOW, 0, -11.0, -17.5),
)
_N_CROPS = len(_CROPS)
_WOODLOT = _N_CROPS  # a parcel that is a small wood, drawn like a crop
# Parcel types by block profile (arable plain, pasture), Champagne-like proportions.
_CROP_SHARES = (
    (0.30, 0.13, 0.12, 0.08, 0.12, 0.05, 0.10, 0.05, 0.05),
    (0.08, 0.04, 0.02, 0.08, 0.02, 0.02, 0.66, 0.04, 0.04),
)
_N_OFFSETS = 25  # parcel sowing dates spread over +-12 days
_DRY_DB = (-12.5, -19.5)
_ROAD_DB = (-18.0, -26.0)
_NESZ_DB = (-26.0, -25.0)  # thermal noise floor of IW GRD

_CUMULUS = ((300, 1.0), (150, 0.62), (75, 0.42), (38, 0.28), (19, 0.18), (9.5, 0.12), (4.8, 0.08))
_CIRRUS = ((1.0, 1.0), (0.5, 0.55), (0.25, 0.3), (0.125, 0.18))
_CLOUD_TEX = ((48, 1.0), (24, 0.7), (12, 0.45), (6, 0.25))
_FOREST = ((700, 1.0), (350, 0.62), (175, 0.42), (88, 0.26), (44, 0.16), (22, 0.1))
_CONIFER = ((260, 1.0), (130, 0.5), (65, 0.3))
_FIELD_TEX = ((40, 1.0), (20, 0.75), (10, 0.55), (5, 0.3))
_FOREST_TEX = ((14, 1.0), (7, 0.8), (3.5, 0.65), (2, 0.5))
_SOIL = ((900, 1.0), (450, 0.6), (225, 0.35))
_MOIST = ((700, 1.0), (350, 0.6), (175, 0.35), (88, 0.2))
_EDGE = ((64, 1.0), (32, 0.6), (16, 0.35), (8, 0.2))
_WIND = ((500, 1.0), (120, 0.5), (30, 0.3))

_BLOCK_CELL = 300.0
_JITTER = 0.65  # keeps the nearest jittered-grid seed inside the 3 x 3 neighbour cells
_VILLAGE_CELL = 500.0
_TOWN_CELL = 2500.0
_POND_CELL = 1000.0


# ---------------------------------------------------------------------------------------------
# Public result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthSeries:
    """What :func:`generate_series` wrote.

    Attributes:
        root: The destination directory.
        s2: Cloudy Sentinel-2 acquisitions, in date order.
        masks: The SCL mask of each S2 acquisition, same order.
        truth: The cloud-free reflectance of each S2 acquisition, same order.
        s1: Sentinel-1 acquisitions, in date order (empty without S1).
        s2_dates: Acquisition time of each S2 file, timezone-aware UTC.
        s1_dates: Acquisition time of each S1 file, timezone-aware UTC.
        cloud_pct: Per S2 date, the percentage of pixels that the mask calls cloud, thin cirrus
            or cloud shadow.
        tile: MGRS tile id, e.g. ``"31UFQ"``.
        crs: The UTM CRS of the tile, e.g. ``"EPSG:32631"``.
        height: Rows of every raster.
        width: Columns of every raster.
    """

    root: Path
    s2: tuple[Path, ...]
    masks: tuple[Path, ...]
    truth: tuple[Path, ...]
    s1: tuple[Path, ...]
    s2_dates: tuple[datetime, ...]
    s1_dates: tuple[datetime, ...]
    cloud_pct: tuple[float, ...]
    tile: str
    crs: str
    height: int
    width: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        for name in ("s2", "masks", "truth", "s1"):
            object.__setattr__(self, name, tuple(Path(p) for p in getattr(self, name)))
        for name in ("s2_dates", "s1_dates"):
            stamps = tuple(getattr(self, name))
            if any(d.tzinfo is None for d in stamps):
                raise SynthError(f"{name} must be timezone-aware datetimes")
            object.__setattr__(self, name, tuple(d.astimezone(timezone.utc) for d in stamps))
        object.__setattr__(self, "cloud_pct", tuple(float(p) for p in self.cloud_pct))
        if not len(self.s2) == len(self.masks) == len(self.truth) == len(self.s2_dates):
            raise SynthError("s2, masks, truth and s2_dates must have the same length")
        if len(self.cloud_pct) != len(self.s2) or len(self.s1) != len(self.s1_dates):
            raise SynthError("cloud_pct must match s2, and s1 must match s1_dates")


# ---------------------------------------------------------------------------------------------
# Hashing and noise: pure functions of integer lattice coordinates
# ---------------------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF
_SH16, _SH15, _SH8 = np.uint32(16), np.uint32(15), np.uint32(8)
_K1, _K2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_INV24 = np.float32(1.0 / (1 << 24))
_INV16 = np.float32(1.0 / (1 << 16))
_LO16 = np.uint32(0xFFFF)


def _mix_int(h: int) -> int:
    h &= _M32
    h ^= h >> 16
    h = (h * 0x7FEB352D) & _M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & _M32
    h ^= h >> 16
    return h


def _salt(*values: int) -> int:
    h = 0x9E3779B9
    for value in values:
        v = int(value)
        while True:
            h = _mix_int(h ^ (v & _M32))
            v >>= 32
            if not v:
                break
    return h


def _mix(h: np.ndarray) -> np.ndarray:
    """lowbias32 finaliser, in place on a uint32 array."""
    h ^= h >> _SH16
    h *= _K1
    h ^= h >> _SH15
    h *= _K2
    h ^= h >> _SH16
    return h


def _u32(a: Any) -> np.ndarray:
    a = np.atleast_1d(np.asarray(a))
    if a.dtype == np.uint32:
        return a
    return a.astype(np.int64).astype(np.uint32)  # two's complement wrap for negatives


def _hash(salt: int, *keys: Any) -> np.ndarray:
    h: np.ndarray | None = None
    for key in keys:
        k = _u32(key)
        h = _mix(k ^ np.uint32(salt)) if h is None else _mix(h ^ k)
    assert h is not None
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """Uniform float32 in [0, 1) from hashes."""
    return (h >> _SH8).astype(np.float32) * _INV24


def _fade(t: np.ndarray) -> np.ndarray:
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32, copy=False)


def _noise_grid(fy: np.ndarray, fx: np.ndarray, salt: int) -> np.ndarray:
    """Value noise on the outer product of lattice coordinates ``fy`` (rows) x ``fx`` (columns).

    Separable: the lattice is interpolated along the rows first, then gathered per column, which
    costs a few passes per pixel whatever the octave.
    """
    iy = np.floor(fy)
    wy = _fade((fy - iy).astype(np.float32))
    iy = iy.astype(np.int64)
    ix = np.floor(fx)
    wx = _fade((fx - ix).astype(np.float32))
    ix = ix.astype(np.int64)
    y0, x0 = int(iy.min()), int(ix.min())
    gy = np.arange(y0, int(iy.max()) + 2)
    gx = np.arange(x0, int(ix.max()) + 2)
    lattice = _unit(_hash(salt, gy[:, None], gx[None, :])) * 2.0 - 1.0
    top = lattice[iy - y0]
    v = top + (lattice[iy - y0 + 1] - top) * wy[:, None]
    j = ix - x0
    left = np.take(v, j, axis=1)
    left += (np.take(v, j + 1, axis=1) - left) * wx
    return left


def _noise_points(fy: np.ndarray, fx: np.ndarray, salt: int) -> np.ndarray:
    """Value noise at arbitrary 2-D lattice coordinates (rotated frames)."""
    iy = np.floor(fy)
    wy = _fade((fy - iy).astype(np.float32))
    ix = np.floor(fx)
    wx = _fade((fx - ix).astype(np.float32))
    iy_i = iy.astype(np.int64)
    ix_i = ix.astype(np.int64)
    y0, x0 = int(iy_i.min()), int(ix_i.min())
    gy = np.arange(y0, int(iy_i.max()) + 2)
    gx = np.arange(x0, int(ix_i.max()) + 2)
    lattice = (_unit(_hash(salt, gy[:, None], gx[None, :])) * 2.0 - 1.0).ravel()
    flat = (iy_i - y0) * gx.size + (ix_i - x0)
    v00 = lattice[flat]
    top = v00 + (lattice[flat + 1] - v00) * wx
    v10 = lattice[flat + gx.size]
    bottom = v10 + (lattice[flat + gx.size + 1] - v10) * wx
    top += (bottom - top) * wy
    return top


def _offsets(salt: int) -> tuple[float, float]:
    h = _mix_int(salt ^ 0x5BD1E995)
    return float(h & 0xFFFF) / 61.0, float(h >> 16) / 67.0


def _fbm_grid(
    y: np.ndarray,
    x: np.ndarray,
    salt: int,
    octaves: Sequence[tuple[float, float]],
    scale: float = 1.0,
) -> np.ndarray:
    """Fractal noise of about unit variance at pixel coordinates ``y`` (rows) x ``x`` (columns)."""
    total: np.ndarray | None = None
    norm = 0.0
    for k, (cell, gain) in enumerate(octaves):
        s = _salt(salt, k)
        oy, ox = _offsets(s)
        c = cell * scale
        n = _noise_grid(y / c + oy, x / c + ox, s)
        if total is None:
            total = n * np.float32(gain)
        else:
            total += n * np.float32(gain)
        norm += gain * gain
    assert total is not None
    total *= np.float32(1.0 / (0.43 * math.sqrt(norm)))
    return total


def _fbm_points(u: np.ndarray, v: np.ndarray, salt: int, octaves: Sequence[tuple[float, float]]) -> np.ndarray:
    total: np.ndarray | None = None
    norm = 0.0
    for k, (cell, gain) in enumerate(octaves):
        s = _salt(salt, k)
        oy, ox = _offsets(s)
        n = _noise_points(v / cell + oy, u / cell + ox, s)
        if total is None:
            total = n * np.float32(gain)
        else:
            total += n * np.float32(gain)
        norm += gain * gain
    assert total is not None
    total *= np.float32(1.0 / (0.43 * math.sqrt(norm)))
    return total


def _coverage(distance: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Area fraction of a pixel covered by a line of ``width`` px at ``distance`` px."""
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# Tiles, dates and the sun
# ---------------------------------------------------------------------------------------------
_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_COL_LETTERS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")  # by zone % 3
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_TILE_RE = re.compile(r"(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z])([A-HJ-NP-V])")


def _meridian_northing(lat_deg: float) -> float:
    phi = math.radians(lat_deg)
    return 0.9996 * (111132.954 * lat_deg - 16038.509 * math.sin(2 * phi) + 16.833 * math.sin(4 * phi))


@dataclass(frozen=True)
class _TileGrid:
    tile: str
    epsg: int
    x0: float
    y0: float
    lat: float  # approximate latitude of the tile, for the sun


def _tile_grid(tile: str) -> _TileGrid:
    """UTM zone, hemisphere and upper-left corner of an MGRS 100 km square (as S2 tiles use)."""
    m = _TILE_RE.fullmatch(tile.upper())
    if m is None:
        raise SynthError(
            f"tile {tile!r} is not an MGRS tile id: expected zone, latitude band and 100 km square, e.g. '31UFQ'"
        )
    zone, band, col, row = int(m[1]), m[2], m[3], m[4]
    if not 1 <= zone <= 60:
        raise SynthError(f"tile {tile!r}: UTM zone {zone} is outside 1..60")
    letters = _COL_LETTERS[zone % 3]
    if col not in letters:
        raise SynthError(
            f"tile {tile!r}: column letter {col!r} does not exist in zone {zone} (valid: {', '.join(letters)})"
        )
    north = band >= "N"
    easting = (letters.index(col) + 1) * 100_000.0
    row_north = ((_ROW_LETTERS.index(row) - (5 if zone % 2 == 0 else 0)) % 20) * 100_000.0
    lat_lo = -80.0 + 8.0 * _LAT_BANDS.index(band)
    lat_mid = lat_lo + (6.0 if band == "X" else 4.0)
    band_north = _meridian_northing(lat_mid) + (0.0 if north else 10_000_000.0)
    k = round((band_north - row_north - 50_000.0) / 2_000_000.0)
    northing = row_north + 2_000_000.0 * k
    false_n = 0.0 if north else 10_000_000.0
    lat = (northing + 50_000.0 - false_n) / (0.9996 * 111_132.954)
    lat = (northing + 50_000.0 - false_n) / 0.9996 / 111_132.954 + 0.1444 * math.sin(2 * math.radians(lat))
    return _TileGrid(
        tile=f"{zone:02d}{band}{col}{row}",
        epsg=(32600 if north else 32700) + zone,
        x0=easting,
        y0=northing + 100_000.0,
        lat=lat,
    )


def _sun_elevation(lat: float, day: date) -> float:
    """Solar elevation (deg) at the S2 overpass, 10:30 local solar time."""
    doy = day.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    phi = math.radians(lat)
    hour = math.radians(-22.5)
    s = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour)
    return math.degrees(math.asin(max(-1.0, min(1.0, s))))


def _parse_start(start: str | date | datetime) -> date:
    if isinstance(start, datetime):
        return start.date()
    if isinstance(start, date):
        return start
    try:
        return date.fromisoformat(str(start))
    except ValueError:
        raise SynthError(f"start {start!r} is not a date: use YYYY-MM-DD") from None


def _s2_days(start: date, n: int, interval: int) -> list[date]:
    """Dates on the 5-day S2 grid nearest to start + k * interval."""
    first = (start - _S2_EPOCH).days
    first = _S2_EPOCH.toordinal() + -(-first // _S2_REVISIT) * _S2_REVISIT
    out: list[int] = []
    for k in range(n):
        target = first + k * interval
        g = _S2_EPOCH.toordinal() + round((target - _S2_EPOCH.toordinal()) / _S2_REVISIT) * _S2_REVISIT
        if out and g <= out[-1]:
            g = out[-1] + _S2_REVISIT
        out.append(g)
    return [date.fromordinal(g) for g in out]


def _s2_stamp(day: date) -> datetime:
    slot = ((day - _S2_EPOCH).days // _S2_REVISIT) % 2
    return datetime.combine(day, _S2_TIME[slot], tzinfo=timezone.utc)


def _s1_stamps(s2: Sequence[datetime]) -> list[datetime]:
    """S1 acquisitions from the one nearest the first S2 date to the one nearest the last."""

    def nearest(t: datetime) -> int:
        k = (t.date() - _S1_EPOCH).days / _S1_REVISIT
        cands = (math.floor(k) - 1, math.floor(k), math.floor(k) + 1, math.floor(k) + 2)
        return min(cands, key=lambda c: abs(stamp(c) - t))

    def stamp(k: int) -> datetime:
        day = _S1_EPOCH + timedelta(days=k * _S1_REVISIT)
        return datetime.combine(day, _S1_TIME, tzinfo=timezone.utc)

    return [stamp(k) for k in range(nearest(s2[0]), nearest(s2[-1]) + 1)]


def _default_cover(n: int, seed: int) -> list[float]:
    """Cloud cover per date: two clear dates, one overcast, a stratified spread in between."""
    rng = np.random.default_rng([seed, _P_COVER])
    if n == 1:
        return [round(float(rng.uniform(0.2, 0.6)), 3)]
    n_clear = 2 if n >= 5 else 1
    n_over = 1 if n >= 3 else 0
    m = n - n_clear - n_over
    spread = [0.04 + 0.92 * (i + float(rng.uniform(0.15, 0.85))) / m for i in range(m)]
    values = [0.0] * n_clear + [1.0] * n_over + [round(v, 3) for v in spread]
    return [values[i] for i in rng.permutation(n)]


def _rain_wetness(seed: int, day: date) -> float:
    """Regional soil wetness in 0..1 from hashed daily rain with a 6-day decay."""
    total = 0.0
    for lag in range(40):
        d = day.toordinal() - lag
        u = _mix_int(_salt(seed, _P_RAIN, d))
        if u % 100 < 30:
            total += (u >> 8) % 1000 / 1000.0 * math.exp(-lag / 6.0)
    return min(1.0, 0.15 + 0.35 * total)


# ---------------------------------------------------------------------------------------------
# Layout of the landscape: features placed once per call
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Disc:
    """A town or a lake: a noisy ellipse."""

    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float
    key: int


@dataclass(frozen=True)
class _Line:
    """A river or a main road: a meandering line through the raster."""

    px: float
    py: float
    angle: float
    width: float
    amps: tuple[float, ...]
    waves: tuple[float, ...]
    phases: tuple[float, ...]


def _scatter(
    seed: int,
    purpose: int,
    kind: int,
    height: int,
    width: int,
    cell: float,
    p: float,
    r_min: float,
    r_max: float,
    elong: float,
) -> list[_Disc]:
    """Discs on a jittered grid: each cell holds one with probability ``p``."""
    out = []
    for i in range(-1, int(height / cell) + 2):
        for j in range(-1, int(width / cell) + 2):
            h = [float(_unit(_hash(_salt(seed, purpose, kind, k), i, j))[0]) for k in range(6)]
            if h[0] >= p:
                continue
            out.append(
                _Disc(
                    cx=(j + 0.2 + 0.6 * h[1]) * cell,
                    cy=(i + 0.2 + 0.6 * h[2]) * cell,
                    radius=r_min + (r_max - r_min) * h[3] ** 2,
                    aspect=1.0 + elong * h[4],
                    angle=h[5] * math.pi,
                    key=int(_hash(_salt(seed, purpose, kind, 99), i, j)[0]) & 0x7FFFFFFF,
                )
            )
    return out


def _layout(height: int, width: int, seed: int) -> tuple[list[_Disc], list[_Disc], list[_Line], list[_Line]]:
    rng = np.random.default_rng([seed, _P_LAYOUT, height, width])
    small = min(height, width)

    towns = [
        _Disc(
            cx=float(width * rng.uniform(0.3, 0.7)),
            cy=float(height * rng.uniform(0.3, 0.7)),
            radius=float(np.clip(0.12 * small, 12.0, 160.0)),
            aspect=float(rng.uniform(1.0, 1.5)),
            angle=float(rng.uniform(0, math.pi)),
            key=int(rng.integers(1 << 31)),
        )
    ]
    # villages everywhere, larger towns sparser; hashed per grid cell, so a feature does not
    # move when the raster grows
    towns += _scatter(seed, _P_TOWN, 1, height, width, _VILLAGE_CELL, 0.6, 14.0, 70.0, 0.5)
    towns += _scatter(seed, _P_TOWN, 2, height, width, _TOWN_CELL, 0.7, 80.0, 200.0, 0.4)
    main = towns[0]
    lake_r = float(np.clip(0.075 * small, 6.0, 120.0))
    for _ in range(50):
        lx, ly = float(width * rng.uniform(0.15, 0.85)), float(height * rng.uniform(0.15, 0.85))
        if math.hypot(lx - main.cx, ly - main.cy) > main.radius * 1.6 + lake_r * 1.6:
            break
    lakes = [_Disc(lx, ly, lake_r, float(rng.uniform(1.0, 1.8)), float(rng.uniform(0, math.pi)), 1)]
    lakes += _scatter(seed, _P_LAKE, 1, height, width, _POND_CELL, 0.4, 6.0, 60.0, 0.8)

    def line(width_px: float, amp: float, wave: float) -> _Line:
        return _Line(
            px=float(width * rng.uniform(0.2, 0.8)),
            py=float(height * rng.uniform(0.2, 0.8)),
            angle=float(rng.uniform(0, math.pi)),
            width=width_px,
            amps=(amp, amp * 0.3, amp * 0.08),
            waves=(wave, wave * 0.27, wave * 0.07),
            phases=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, 3)),
        )

    big = small >= 3000
    rivers = [line(6.5, 40.0, 900.0)] + ([line(3.5, 25.0, 600.0)] if big else [])
    roads = [line(2.0, 18.0, 3200.0)] + ([line(2.0, 15.0, 2500.0) for _ in range(2)] if big else [])
    return towns, lakes, rivers, roads


def _voronoi(u: np.ndarray, v: np.ndarray, base: np.ndarray, inv_a: Any, inv_b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Jittered-grid Voronoi in lattice coordinates (u, v) = (x / a, y / b) after a rotation.

    Returns the hash of the nearest seed (a cell key) and the distance in pixels to the nearest
    cell edge. ``base`` salts the seeds (per block or town); ``inv_a``, ``inv_b`` are 1 / cell size
    along u and v, needed to bring edge distances back to pixels.
    """
    fu, fv = np.floor(u), np.floor(v)
    iu, iv = fu.astype(np.int32), fv.astype(np.int32)
    seeds_u = np.empty((9, *u.shape), np.float32)
    seeds_v = np.empty((9, *u.shape), np.float32)
    best = np.full(u.shape, np.inf, np.float32)
    best_k = np.zeros(u.shape, np.uint8)
    best_h = np.zeros(u.shape, np.uint32)
    for a in range(3):
        hu = _mix(base ^ _u32(iu + (a - 1)))
        for b in range(3):
            k = a * 3 + b
            h = _mix(hu ^ _u32(iv + (b - 1)))
            # two 16-bit jitters from one hash: a 65536th of a cell is plenty
            su = fu + (a - 0.5 + _JITTER * ((h >> _SH16).astype(np.float32) * _INV16 - 0.5))
            sv = fv + (b - 0.5 + _JITTER * ((h & _LO16).astype(np.float32) * _INV16 - 0.5))
            seeds_u[k], seeds_v[k] = su, sv
            d2 = (u - su) ** 2 + (v - sv) ** 2
            closer = d2 < best
            np.copyto(best_k, k, where=closer)
            np.copyto(best_h, h, where=closer)
            np.minimum(best, d2, out=best)
    bu = np.take_along_axis(seeds_u, best_k[None], 0)[0]
    bv = np.take_along_axis(seeds_v, best_k[None], 0)[0]
    edge = np.full(u.shape, np.inf, np.float32)
    for k in range(9):
        nu, nv = seeds_u[k] - bu, seeds_v[k] - bv
        sep = np.sqrt(nu * nu + nv * nv)
        with np.errstate(divide="ignore", invalid="ignore"):
            e_uv = ((u - seeds_u[k]) ** 2 + (v - seeds_v[k]) ** 2 - best) / (2.0 * sep)
            # an edge with unit normal n in (u, v) is |M^T n| times closer in pixels
            stretch = np.sqrt((nu / sep * inv_a) ** 2 + (nv / sep * inv_b) ** 2)
            e = e_uv / stretch
        e[best_k == k] = np.inf
        np.minimum(edge, e, out=edge)
    return best_h, edge


def _line_distance(line: _Line, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Distance (px) from pixel centres to a meandering line, y (h, 1) x (1, w); inf when far."""
    c, s = math.cos(line.angle), math.sin(line.angle)
    dx = (x - line.px).astype(np.float32)
    dy = (y - line.py).astype(np.float32)
    n = dy * c - dx * s
    out = np.full(n.shape, np.inf, np.float32)
    near = np.abs(n) < sum(line.amps) + line.width + 8.0
    if not near.any():
        return out
    t = (dx * c + dy * s)[near]
    n = n[near]
    off = np.zeros_like(t)
    slope = np.zeros_like(t)
    for amp, wave, ph in zip(line.amps, line.waves, line.phases, strict=True):
        k = 2 * math.pi / wave
        arg = t * np.float32(k) + np.float32(ph)
        off += np.float32(amp) * np.sin(arg)
        slope += np.float32(amp * k) * np.cos(arg)
    out[near] = np.abs(n - off) / np.sqrt(1.0 + slope * slope)
    return out


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
@dataclass
class _Static:
    """What does not change with the date, for some rows."""

    w_crop: np.ndarray
    w_dec: np.ndarray
    w_con: np.ndarray
    w_water: np.ndarray
    w_urban: np.ndarray
    w_road: np.ndarray
    w_margin: np.ndarray
    lut: np.ndarray  # crop * _N_OFFSETS + sowing offset, uint16
    gmul: np.ndarray  # canopy vigour and texture
    soilb: np.ndarray  # soil brightness
    ftex: np.ndarray  # forest canopy texture
    urban_db: np.ndarray  # VV backscatter of the town fabric (dB)
    rough_db: np.ndarray  # soil roughness term of the backscatter (dB)
    bands: np.ndarray  # (n_bands, h, w) reflectance of the date-invariant covers

    @classmethod
    def empty(cls, n_bands: int, h: int, w: int) -> _Static:
        arrays = {name: np.empty((h, w), np.float32) for name in cls.__dataclass_fields__}
        arrays["lut"] = np.empty((h, w), np.uint16)
        arrays["bands"] = np.empty((n_bands, h, w), np.float32)
        return cls(**arrays)

    def put(self, rows: slice, part: _Static) -> None:
        for name in self.__dataclass_fields__:
            target, value = getattr(self, name), getattr(part, name)
            if target.ndim == 3:
                target[:, rows] = value
            else:
                target[rows] = value

    def rows(self, rows: slice) -> _Static:
        return _Static(
            **{
                name: (v[:, rows] if v.ndim == 3 else v[rows])
                for name, v in ((n, getattr(self, n)) for n in self.__dataclass_fields__)
            }
        )


@dataclass(frozen=True)
class _CloudPlan:
    active: bool
    thresh: float = 0.0  # cumulus noise level where the opacity leaves 0
    soft: float = 0.5  # noise range over which the opacity goes 0 -> 1
    floor: float = 0.0  # least opacity anywhere (overcast)
    scale: float = 1.0
    salt: int = 0
    shadow_dy: float = 0.0  # rows from a cloud to its shadow
    shadow_dx: float = 0.0
    depth: float = 0.5  # shadow darkening under a thick cloud
    bright: float = 1.0
    cirrus: bool = False
    ci_thresh: float = 0.0
    ci_angle: float = 0.0
    ci_salt: int = 0


@dataclass(frozen=True)
class _DatePlan:
    stamp: datetime
    ordinal: int
    wetness: float
    wind: float
    leaf: float
    lut: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # green, dry, soil, flower
    gain: np.ndarray  # per band: residual of atmospheric correction and BRDF
    clouds: _CloudPlan
    sun_elevation: float


def _phenology(doy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fractions (green, dry, soil, flower) of every crop x sowing offset on a day of the year."""
    out = np.zeros((4, _N_CROPS, _N_OFFSETS), np.float32)
    offsets = np.arange(_N_OFFSETS) - _N_OFFSETS // 2
    for c, crop in enumerate(_CROPS):
        curve = np.asarray(crop.curve, np.float64)
        t = np.mod(doy - crop.shift - offsets, 365.0)
        for k in range(4):
            out[k, c] = np.interp(t, curve[:, 0], curve[:, k + 1])
    flat = out.reshape(4, -1)
    return flat[0].copy(), flat[1].copy(), flat[2].copy(), flat[3].copy()


def _db_to_lin(db: np.ndarray | float) -> Any:
    return np.exp(np.float32(math.log(10) / 10) * db)


class _Scene:
    """The landscape of one call: everything as pure functions of (row, col, date, seed)."""

    def __init__(self, height: int, width: int, bands: Sequence[str], seed: int, sun_azimuth: float) -> None:
        self.height, self.width, self.seed = height, width, seed
        self.bands = tuple(sorted(set(bands) | {"B04", "B08"}, key=list(S2_BANDS).index))
        self.out_index = [self.bands.index(b) for b in bands]
        self.red, self.nir = self.bands.index("B04"), self.bands.index("B08")
        idx = [list(S2_BANDS).index(b) for b in self.bands]
        self.spec = {k: np.array([v[i] for i in idx], np.float32) for k, v in _SPECTRA.items()}
        self.shadow_k = np.array([_SHADOW_BAND[i] for i in idx], np.float32)
        self.sun_azimuth = sun_azimuth
        self.towns, self.lakes, self.rivers, self.roads = _layout(height, width, seed)
        self.x = np.arange(width, dtype=np.float64) + 0.5
        self.crop_cum = [(np.cumsum(s)[:-1] / np.sum(s)).astype(np.float32) for s in _CROP_SHARES]
        self.veg_db = np.array([[c.vv_db, c.vh_db] for c in _CROPS], np.float32).T
        # Incidence angle grows across the swath (east for an ascending right-looking pass).
        incidence = 33.0 + 7.0 * self.x / 10980.0
        self.incidence_gain = _db_to_lin((-0.12 * (incidence - 38.0)).astype(np.float32))

    # -- blocks and parcels -------------------------------------------------------------------
    def _blocks(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Jittered-grid Voronoi of farm blocks; the 3 x 3 neighbour cells hold the nearest seed."""
        x, cell = self.x, _BLOCK_CELL
        bi = np.floor(y / cell).astype(np.int64)
        bj = np.floor(x / cell).astype(np.int64)
        i0 = int(bi.min()) - 1
        ci = np.arange(i0, int(bi.max()) + 2)[:, None]
        cj = np.arange(-1, int(bj.max()) + 2)[None, :]
        s = _salt(self.seed, _P_BLOCK)
        h = [_unit(_hash(_salt(s, k), ci, cj)) for k in range(8)]
        table = {
            "sx": ((cj + 0.5 + _JITTER * (h[0] - 0.5)) * cell).astype(np.float32),
            "sy": ((ci + 0.5 + _JITTER * (h[1] - 0.5)) * cell).astype(np.float32),
            "key": _hash(_salt(s, 99), ci, cj),
            "cos": np.cos(h[2] * np.float32(math.pi)),
            "sin": np.sin(h[2] * np.float32(math.pi)),
            "inv_a": 1.0 / (13.0 + 21.0 * h[3]),
            "inv_b": 1.0 / ((13.0 + 21.0 * h[3]) * (1.0 + 1.6 * h[4])),
            "pasture": (h[5] < 0.18).astype(np.uint8),
            "margin": 0.12 + 0.5 * h[6],
            "strips": (h[7] < 0.7).astype(np.uint8),
        }
        nj, w = cj.size, x.size
        xf = x.astype(np.float32)
        cols = np.arange(w)
        flat = np.empty((y.size, w), np.int64)
        other = np.empty((y.size, w), np.int64)
        edge = np.empty((y.size, w), np.float32)
        # rows of one block-cell row share their 9 candidate seeds per column: (9, w) vectors
        for g in np.unique(bi):
            rows = slice(int(np.argmax(bi == g)), int(y.size - np.argmax(bi[::-1] == g)))
            yg = y[rows].astype(np.float32)[:, None]
            ti = np.repeat(np.arange(g - i0 - 1, g - i0 + 2), 3)[:, None]
            tj = bj[None, :] + 1 + np.tile(np.arange(-1, 2), 3)[:, None]
            cand_flat = ti * nj + tj  # (9, w)
            cx = table["sx"].ravel()[cand_flat]
            cy = table["sy"].ravel()[cand_flat]
            dxx = (xf - cx) ** 2
            best = np.full((yg.size, w), np.inf, np.float32)
            best_k = np.zeros((yg.size, w), np.intp)
            for k in range(9):
                d2 = dxx[k] + (yg - cy[k]) ** 2
                np.copyto(best_k, k, where=d2 < best)
                np.minimum(best, d2, out=best)
            pick = best_k * w + cols
            bx, by = cx.ravel()[pick], cy.ravel()[pick]
            e_min = np.full_like(best, np.inf)
            k_min = np.zeros_like(best_k)
            for k in range(9):
                sep = np.sqrt((cx[k] - bx) ** 2 + (cy[k] - by) ** 2)
                with np.errstate(divide="ignore", invalid="ignore"):
                    e = (dxx[k] + (yg - cy[k]) ** 2 - best) / (2.0 * sep)
                e[best_k == k] = np.inf
                np.copyto(k_min, k, where=e < e_min)
                np.minimum(e_min, e, out=e_min)
            flat[rows] = cand_flat.ravel()[pick]
            other[rows] = cand_flat.ravel()[k_min * w + cols]
            edge[rows] = e_min
        keys = table["key"].ravel()
        ka, kb = keys[flat], keys[other]
        pair = _unit(_hash(_salt(s, 7), np.minimum(ka, kb), np.maximum(ka, kb)))
        out = {name: table[name].ravel()[flat] for name in table}
        out["edge"] = edge
        out["road"] = (pair < 0.72).astype(np.float32)
        return out

    def _parcels(self, y: np.ndarray, blk: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Parcel key and distance (px) to the parcel edge, in each block's own rotated frame.

        Most blocks are open fields cut into long strips (rows of fields with staggered ends);
        the others are an irregular Voronoi patchwork (bocage-like).
        """
        yy = y.astype(np.float32)[:, None]
        xx = self.x.astype(np.float32)[None, :]
        dx, dy = xx - blk["sx"], yy - blk["sy"]
        c, s = blk["cos"], blk["sin"]
        along, across = dx * c + dy * s, dy * c - dx * s
        base = _hash(_salt(self.seed, _P_PARCEL), blk["key"])
        # strips: rows one short cell high, cut along the row at a per-row length and phase
        ia, ib = blk["inv_b"], blk["inv_a"]  # long cells along the row
        v = across * ib
        fv = np.floor(v)
        row = _mix(base ^ _u32(fv.astype(np.int32)))
        stretch = 0.55 + 1.1 * _unit(row)
        u = along * ia / stretch + _unit(_mix(row.copy()))
        fu = np.floor(u)
        key = _mix(row ^ _u32(fu.astype(np.int32)))
        ru, rv = u - fu, v - fv
        edge = np.minimum(np.minimum(ru, 1.0 - ru) * stretch / ia, np.minimum(rv, 1.0 - rv) / ib).astype(np.float32)
        patch = blk["strips"] == 0
        if np.any(patch):
            ia, ib = blk["inv_a"][patch], blk["inv_b"][patch]
            k, e = _voronoi(along[patch] * ia, across[patch] * ib, base[patch], ia, ib)
            key[patch], edge[patch] = k, e
        return key, edge

    # -- discs ----------------------------------------------------------------------------------
    def _disc_window(
        self, disc: _Disc, y: np.ndarray, grow: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        half = disc.radius * max(disc.aspect, 1.0) * grow + 3.0
        r0 = int(y[0] - 0.5)
        lo = max(0, math.floor(disc.cy - half) - r0)
        hi = min(y.size, math.ceil(disc.cy + half) - r0)
        c0 = max(0, math.floor(disc.cx - half))
        c1 = min(self.width, math.ceil(disc.cx + half))
        if lo >= hi or c0 >= c1:
            return None
        ys, xs = y[lo:hi], self.x[c0:c1]
        return slice(lo, hi), slice(c0, c1), ys, xs

    def _disc_frame(
        self, disc: _Disc, ys: np.ndarray, xs: np.ndarray, salt: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c, s = math.cos(disc.angle), math.sin(disc.angle)
        dx = (xs[None, :] - disc.cx).astype(np.float32)
        dy = (ys[:, None] - disc.cy).astype(np.float32)
        u = dx * c + dy * s
        v = dy * c - dx * s
        r = disc.radius
        noise = _fbm_grid(ys, xs, salt, _EDGE, scale=max(r, 8.0) / 48.0)
        q = np.sqrt((u / (r * disc.aspect)) ** 2 + (v / r) ** 2) + 0.3 * noise
        return u, v, q

    def _paint_lake(self, disc: _Disc, y: np.ndarray, lake: np.ndarray, turbid: np.ndarray) -> None:
        win = self._disc_window(disc, y, 1.9)
        if win is None:
            return
        rs, cs, ys, xs = win
        _, _, q = self._disc_frame(disc, ys, xs, _salt(self.seed, _P_LAKE, 77))
        alpha = np.clip((1.0 - q) * disc.radius + 0.5, 0.0, 1.0)
        sub = lake[rs, cs]
        turbid[rs, cs] = np.where(alpha > sub, 0.05 + 0.4 * ((disc.key >> 4) % 100) / 100, turbid[rs, cs])
        np.maximum(sub, alpha, out=sub)

    def _paint_town(
        self,
        disc: _Disc,
        y: np.ndarray,
        urban: np.ndarray,
        mats: np.ndarray,
        urban_db: np.ndarray,
    ) -> None:
        win = self._disc_window(disc, y, 1.8)
        if win is None:
            return
        rs, cs, ys, xs = win
        salt = _salt(self.seed, _P_TOWN, 77)
        u, v, q = self._disc_frame(disc, ys, xs, salt)
        alpha = np.clip((1.0 - q) * disc.radius * 0.5 + 0.5, 0.0, 1.0)
        centre = np.clip(1.0 - q, 0.0, 1.0)
        # town blocks: an irregular Voronoi of ~1 ha whose edges are the streets
        spacing = 9.0 + disc.key % 4
        inv = 1.0 / spacing
        base = _hash(salt, np.full(u.shape, disc.key & 0x7FFFFFFF, np.int64))
        bkey, e_street = _voronoi(u * inv, v * inv, base, inv, inv)
        street = _coverage(e_street, 1.0 + 0.6 * centre)
        hb = [_unit(_hash(_salt(salt, k), bkey)) for k in range(3)]
        industrial = hb[0] < 0.12 * (1.2 - centre)
        # houses: cells of ~30 m, each a roof and its garden sharing the pixel
        cu, cv = np.floor(u / 3.0), np.floor(v / 3.0)
        h = _hash(salt, disc.key, cu.astype(np.int32), cv.astype(np.int32))
        m, b = _unit(h), _unit(_mix(h.copy()))
        built = np.clip(0.35 + 0.55 * centre + 0.35 * (m - 0.5) + 0.2 * (hb[1] - 0.5), 0.1, 0.95)
        built = np.where(industrial, 0.92, built)
        tile = (b < 0.35 + 0.3 * hb[2]) & ~industrial
        lot = 1.0 - street
        roof_b = np.where(industrial, 1.05 + 0.3 * m, 0.75 + 0.45 * b)
        parts = (
            lot * built * roof_b * ~tile,
            lot * built * (0.85 + 0.3 * m) * tile,
            street + lot * (1.0 - built) * 0.25,  # asphalt: streets, yards, parking
            lot * (1.0 - built) * 0.55,
            lot * (1.0 - built) * 0.2,
        )
        db = (-12.0 + 18.0 * built) * (0.7 + 0.8 * b)
        db = db * lot + street * -15.0
        paint = alpha > urban[rs, cs]
        for k, part in enumerate(parts):
            mats[k, rs, cs] = np.where(paint, part, mats[k, rs, cs])
        urban_db[rs, cs] = np.where(paint, db, urban_db[rs, cs])
        urban[rs, cs] = np.where(paint, alpha, urban[rs, cs])

    # -- static layers ---------------------------------------------------------------------------
    def static(self, r0: int, r1: int) -> _Static:
        """Date-invariant layers of rows r0:r1."""
        seed, x = self.seed, self.x
        y = np.arange(r0, r1, dtype=np.float64) + 0.5
        shape = (r1 - r0, self.width)
        yy, xx = y[:, None], x[None, :]

        blk = self._blocks(y)
        pkey, e_parcel = self._parcels(y, blk)
        attr = [_unit(_hash(_salt(seed, _P_ATTR, k), pkey)) for k in range(6)]
        crop = np.where(
            blk["pasture"] == 0,
            np.searchsorted(self.crop_cum[0], attr[1], side="right"),
            np.searchsorted(self.crop_cum[1], attr[1], side="right"),
        ).astype(np.uint16)
        woodlot = crop == _WOODLOT
        crop[woodlot] = _N_CROPS - 1
        offset = np.minimum((attr[2] * _N_OFFSETS).astype(np.uint16), _N_OFFSETS - 1)
        lut = crop * _N_OFFSETS + offset

        tex = _fbm_grid(y, x, _salt(seed, _P_TEX, 1), _FIELD_TEX)
        gmul = (0.86 + 0.2 * attr[3]) * (1.0 + 0.08 * tex)
        soil = _fbm_grid(y, x, _salt(seed, _P_SOIL), _SOIL)
        soilb = (0.8 + 0.4 * attr[4]) * (1.0 + 0.1 * soil) * (1.0 + 0.035 * tex)
        rough_db = (attr[5] - 0.5) * 5.0 + 0.6 * tex

        forest = np.clip((_fbm_grid(y, x, _salt(seed, _P_FOREST), _FOREST) - 0.9) * 9.0, 0, 1)
        np.maximum(forest, woodlot, out=forest)
        conifer = np.clip((_fbm_grid(y, x, _salt(seed, _P_CONIFER), _CONIFER) - 0.5) * 3, 0, 1)
        conifer *= ~woodlot
        ftex = 1.0 + 0.11 * _fbm_grid(y, x, _salt(seed, _P_TEX, 2), _FOREST_TEX)

        lake = np.zeros(shape, np.float32)
        turbid = np.full(shape, 0.25, np.float32)
        for disc in self.lakes:
            self._paint_lake(disc, y, lake, turbid)
        river = np.zeros(shape, np.float32)
        for k, line in enumerate(self.rivers):
            d = _line_distance(line, yy, xx)
            np.maximum(river, _coverage(d, line.width), out=river)
            # riparian trees along some reaches of the banks
            reach = _fbm_grid(y, x, _salt(seed, _P_RIVER, k), ((60, 1.0),)) > -0.2
            bank = _coverage(np.abs(d - line.width / 2 - 1.5), 2.5) * reach
            np.maximum(forest, bank, out=forest)
        water = np.maximum(lake, river)
        turbid[river > lake] = 0.55

        urban = np.zeros(shape, np.float32)
        mats = np.zeros((5, *shape), np.float32)  # roof, tile, asphalt, garden green, soil
        urban_db = np.zeros(shape, np.float32)
        for disc in self.towns:
            self._paint_town(disc, y, urban, mats, urban_db)

        # roads on most block boundaries plus the main roads; bridges cross rivers, not lakes
        road = _coverage(blk["edge"], 1.0) * blk["road"]
        for line in self.roads:
            np.maximum(road, _coverage(_line_distance(line, yy, xx), line.width), out=road)
        road *= 1.0 - lake

        # painted bottom to top: fields, forest, towns, water, roads
        w_water = water * (1.0 - road)
        rest = (1.0 - water) * (1.0 - road)
        w_urban = urban * rest
        rest *= 1.0 - urban
        w_forest = forest * rest
        rest *= 1.0 - forest
        w_margin = rest * blk["margin"] * _coverage(e_parcel, 0.7)
        w_crop = rest - w_margin

        sp = self.spec
        grass = 0.78 * sp["green"] + 0.12 * sp["dry"] + 0.10 * sp["soil"]
        road_b = 0.9 + 0.2 * attr[3]
        bands = np.empty((len(self.bands), *shape), np.float32)
        for b in range(len(self.bands)):
            v = w_water * (sp["water"][b] + 0.12 * sp["soil"][b] * turbid)
            v += road * road_b * sp["asphalt"][b]
            v += w_margin * grass[b]
            town = mats[0] * sp["roof"][b]
            town += mats[1] * sp["tile"][b]
            town += mats[2] * sp["asphalt"][b]
            town += mats[3] * sp["green"][b]
            town += mats[4] * sp["soil"][b]
            v += w_urban * town
            bands[b] = v
        return _Static(
            w_crop=w_crop,
            w_dec=w_forest * (1.0 - conifer),
            w_con=w_forest * conifer,
            w_water=w_water,
            w_urban=w_urban,
            w_road=road,
            w_margin=w_margin,
            lut=lut,
            gmul=gmul,
            soilb=soilb,
            ftex=ftex,
            urban_db=urban_db,
            rough_db=rough_db,
            bands=bands,
        )

    # -- per date ---------------------------------------------------------------------------------
    def date_plan(self, stamp: datetime, cover: float | None, lat: float) -> _DatePlan:
        """Everything about one acquisition date; ``cover`` None means no clouds (S1)."""
        day = stamp.date()
        doy = float(day.timetuple().tm_yday)
        leaf_curve = np.asarray(_LEAF)
        rng = np.random.default_rng([self.seed, _P_GAIN, day.toordinal()])
        gain = (1.0 + rng.normal(0, 0.01) + rng.normal(0, 0.008, len(self.bands))).astype(np.float32)
        elevation = _sun_elevation(lat, day)
        return _DatePlan(
            stamp=stamp,
            ordinal=day.toordinal(),
            wetness=_rain_wetness(self.seed, day),
            wind=float(_unit(_hash(_salt(self.seed, _P_WIND), day.toordinal()))[0]),
            leaf=float(np.interp(doy, leaf_curve[:, 0], leaf_curve[:, 1])),
            lut=_phenology(doy),
            gain=gain,
            clouds=self._cloud_plan(day, cover, elevation) if cover is not None else _CloudPlan(False),
            sun_elevation=elevation,
        )

    def _sample_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel centres where the cloud cover is calibrated: all, or a 1024 x 1024 lattice."""
        h, w = self.height, self.width
        if h * w <= 1 << 20:
            return np.arange(h) + 0.5, np.arange(w) + 0.5
        return (
            np.unique(np.linspace(0, h - 1, 1024).round()) + 0.5,
            np.unique(np.linspace(0, w - 1, 1024).round()) + 0.5,
        )

    def _cloud_plan(self, day: date, cover: float, elevation: float) -> _CloudPlan:
        if cover <= 0.0:
            return _CloudPlan(False)
        rng = np.random.default_rng([self.seed, _P_CLOUD, day.toordinal()])
        scale = float(rng.uniform(0.55, 1.5))
        soft = float(rng.uniform(0.3, 0.65))
        cloud_height = float(rng.uniform(500.0, 1800.0))
        reach = cloud_height / math.tan(math.radians(max(elevation, 10.0))) / _PIXEL_M
        az = math.radians(self.sun_azimuth)
        # the shadow falls away from the sun: east -sin(az), north -cos(az); rows grow southward
        plan = _CloudPlan(
            True,
            scale=scale,
            soft=soft,
            salt=_salt(self.seed, _P_CLOUD, day.toordinal()),
            shadow_dx=-reach * math.sin(az),
            shadow_dy=reach * math.cos(az),
            depth=float(rng.uniform(0.4, _MAX_SHADOW_DEPTH)),
            bright=float(rng.uniform(0.88, 1.12)),
            ci_angle=float(rng.uniform(0.0, math.pi)),
            ci_salt=_salt(self.seed, _P_CIRRUS, day.toordinal()),
        )
        cirrus_share = 0.0 if rng.uniform() < 0.55 else float(rng.uniform(0.15, 0.6))
        if cover >= 0.995:
            # overcast: every pixel at least half opaque, no ground shadow to see
            return replace(plan, thresh=-1.0, floor=0.5)

        # Thresholds are order statistics of the very noise the strips will evaluate, so the
        # cover is exact when all pixels are sampled (rasters up to 1024 x 1024).
        ys, xs = self._sample_axes()
        c = _fbm_grid(ys, xs, plan.salt, _CUMULUS, scale)
        cs = _fbm_grid(ys - plan.shadow_dy, xs - plan.shadow_dx, plan.salt, _CUMULUS, scale)
        m = np.maximum(c, cs).ravel()
        n = m.size
        target = round(cover * n)
        ci_thresh, cirrus = 0.0, cirrus_share > 0.0 and target * cirrus_share >= 1
        if cirrus:
            ci = self._cirrus_noise(ys, xs, plan.ci_angle, plan.ci_salt).ravel()
            k = int(target * cirrus_share)
            ci_thresh = float(np.partition(ci, n - k - 1)[n - k - 1])
            m = m[ci <= np.float32(ci_thresh)]
            target -= int(np.count_nonzero(ci > np.float32(ci_thresh)))
        if target <= 0:
            thresh = float(m.max()) + 1.0
        elif target >= m.size:
            thresh = float(m.min()) - 1.0
        else:
            thresh = float(np.partition(m, m.size - target - 1)[m.size - target - 1])
        return replace(plan, thresh=thresh, cirrus=cirrus, ci_thresh=ci_thresh)

    @staticmethod
    def _cirrus_noise(ys: np.ndarray, xs: np.ndarray, angle: float, salt: int) -> np.ndarray:
        """Streaky noise: cells 6 x longer along the wind than across it."""
        c, s = math.cos(angle), math.sin(angle)
        u = xs[None, :] * c + ys[:, None] * s
        v = ys[:, None] * c - xs[None, :] * s
        return _fbm_points(u / 260.0, v / 45.0, salt, _CIRRUS)

    def render_s2(self, st: _Static, r0: int, plan: _DatePlan) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Cloudy image, truth (uint16, output bands) and SCL of the rows of ``st``."""
        h = st.w_crop.shape[0]
        nb = len(self.out_index)
        s2 = np.empty((nb, h, self.width), np.uint16)
        truth = np.empty((nb, h, self.width), np.uint16)
        scl = np.empty((h, self.width), np.uint8)
        for c0 in range(0, h, _CHUNK_ROWS):
            rows = slice(c0, min(h, c0 + _CHUNK_ROWS))
            y = np.arange(r0 + rows.start, r0 + rows.stop, dtype=np.float64) + 0.5
            a, b, m = self._render_s2_rows(st.rows(rows), y, plan)
            s2[:, rows], truth[:, rows], scl[rows] = a, b, m
        cloudy = int(np.count_nonzero(np.isin(scl, _SCL_CLOUDY)))
        return s2, truth, scl, cloudy

    def _surface(self, st: _Static, y: np.ndarray, plan: _DatePlan) -> np.ndarray:
        """Cloud-free reflectance, all internal bands, float32."""
        green, dry, soil, flower = (np.take(t, st.lut) for t in plan.lut)
        g = np.minimum(green * st.gmul, 0.98)
        soil = np.maximum(soil + green - g, 0.0)
        moist = self._moisture(y, plan)
        wc = st.w_crop
        fg, fd, ff = wc * g, wc * dry, wc * flower
        fs = wc * soil * st.soilb * (1.0 - 0.32 * moist)
        fdec = st.w_dec * st.ftex
        fcon = st.w_con * st.ftex
        sp, leaf = self.spec, plan.leaf
        out = np.empty_like(st.bands)
        for b in range(len(self.bands)):
            v = st.bands[b] + fg * sp["green"][b]
            v += fd * sp["dry"][b]
            v += fs * sp["soil"][b]
            v += ff * sp["flower"][b]
            v += fdec * (leaf * sp["decid"][b] + (1.0 - leaf) * sp["bark"][b])
            v += fcon * sp["conif"][b]
            v *= plan.gain[b]
            out[b] = v
        return out

    def _moisture(self, y: np.ndarray, plan: _DatePlan) -> np.ndarray:
        field_ = _fbm_grid(y, self.x, _salt(self.seed, _P_MOIST, plan.ordinal), _MOIST)
        return np.clip(plan.wetness + 0.18 * field_, 0.0, 1.0)

    def _render_s2_rows(self, st: _Static, y: np.ndarray, plan: _DatePlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        truth = self._surface(st, y, plan)
        red, nir = truth[self.red], truth[self.nir]
        ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
        scl = np.where(st.w_water > 0.5, _SCL_WATER, np.where(ndvi > 0.4, _SCL_VEG, _SCL_BARE))
        scl = scl.astype(np.uint8)
        out = truth[self.out_index]
        cp = plan.clouds
        if cp.active:
            out = out.copy()
            x = self.x
            c = _fbm_grid(y, x, cp.salt, _CUMULUS, cp.scale)
            alpha = np.clip((c - np.float32(cp.thresh)) / np.float32(cp.soft), 0.0, 1.0)
            if cp.floor:
                alpha = cp.floor + (1.0 - cp.floor) * alpha
            cs = _fbm_grid(y - cp.shadow_dy, x - cp.shadow_dx, cp.salt, _CUMULUS, cp.scale)
            shade = np.clip((cs - np.float32(cp.thresh)) / np.float32(cp.soft), 0.0, 1.0)
            if cp.floor:
                shade[:] = 0.0
            cirrus = None
            if cp.cirrus:
                ci = self._cirrus_noise(y, x, cp.ci_angle, cp.ci_salt)
                cirrus = 0.35 * np.clip((ci - np.float32(cp.ci_thresh)) / 1.0, 0.0, 1.0)
            scl[shade > 0] = _SCL_SHADOW
            if cirrus is not None:
                scl[cirrus > 0] = _SCL_CIRRUS
            scl[alpha > 0] = _SCL_CLOUD_MED
            scl[alpha >= 0.6] = _SCL_CLOUD_HIGH
            bright: Any = 1.0
            if np.any(alpha > 0):
                tex = _fbm_grid(y, x, _salt(cp.salt, 5), _CLOUD_TEX)
                core = np.clip((c - np.float32(cp.thresh)) / np.float32(cp.soft) - 1.0, 0.0, 2.0)
                bright = cp.bright * (0.84 + 0.08 * tex + 0.07 * core)
            sp = self.spec
            for k, b in enumerate(self.out_index):
                v = out[k]
                v *= 1.0 - (cp.depth * self.shadow_k[b]) * shade
                v += alpha * (sp["cloud"][b] * bright - v)
                if cirrus is not None:
                    v += cirrus * (sp["cirrus"][b] - v)
        return _to_dn(out), _to_dn(truth[self.out_index]), scl

    def _speckle(self, y: np.ndarray, ordinal: int) -> np.ndarray:
        """Multiplicative speckle, mean 1, exactly Gamma(4.4 looks) per pixel.

        A 10 m GRD pixel oversamples the ~20 m resolution, so speckle is correlated over 2 x 2
        pixels: each pixel sums four Gamma(4.4 / 4) draws it shares with its neighbours, and a sum
        of gammas of one scale is a gamma. Draws come from one random stream per image row.
        """
        rows = np.arange(int(y[0]), int(y[-1]) + 2)
        draws = np.empty((2, rows.size, self.width + 1), np.float32)
        for i, row in enumerate(rows):
            rng = np.random.default_rng([self.seed, _P_SPECKLE, ordinal, int(row)])
            draws[:, i] = rng.standard_gamma(_S1_LOOKS / 4, size=(2, self.width + 1))
        pairs = draws[:, :, :-1] + draws[:, :, 1:]
        return (pairs[:, :-1] + pairs[:, 1:]) * np.float32(1.0 / _S1_LOOKS)

    def render_s1(self, st: _Static, r0: int, plan: _DatePlan) -> np.ndarray:
        """VV and VH backscatter (dB, float32) of the rows of ``st``."""
        h = st.w_crop.shape[0]
        out = np.empty((2, h, self.width), np.float32)
        for c0 in range(0, h, _CHUNK_ROWS):
            rows = slice(c0, min(h, c0 + _CHUNK_ROWS))
            y = np.arange(r0 + rows.start, r0 + rows.stop, dtype=np.float64) + 0.5
            out[:, rows] = self._render_s1_rows(st.rows(rows), y, plan)
        return out

    def _render_s1_rows(self, st: _Static, y: np.ndarray, plan: _DatePlan) -> np.ndarray:
        green, dry, soil, flower = (np.take(t, st.lut) for t in plan.lut)
        crop = st.lut // _N_OFFSETS
        g = np.minimum(green * st.gmul, 0.98) + flower
        d = dry
        bare = np.clip(1.0 - g - d, 0.0, 1.0)
        moist = self._moisture(y, plan)
        soil_vv = -16.0 + 9.0 * moist + st.rough_db
        wind = _fbm_grid(y, self.x, _salt(self.seed, _P_WIND, plan.ordinal), _WIND)
        water_vv = -24.0 + 6.0 * plan.wind**2 + 1.5 * wind
        tex = (st.ftex - 1.0) * 14.0
        sigma = []
        for p, (drop, dry_db, road_db, urban_off, nesz) in enumerate(
            (
                (0.0, _DRY_DB[0], _ROAD_DB[0], 0.0, _NESZ_DB[0]),
                (9.5, _DRY_DB[1], _ROAD_DB[1], 8.5, _NESZ_DB[1]),
            )
        ):
            veg = np.take(_db_to_lin(self.veg_db[p]), crop)
            s = st.w_crop * (g * veg + d * np.float32(_db_to_lin(dry_db)) + bare * _db_to_lin(soil_vv - drop))
            leaf_db = (-7.5 + 0.6 * plan.leaf) if p == 0 else (-13.5 + 1.2 * plan.leaf)
            s += st.w_dec * _db_to_lin(leaf_db + tex)
            s += st.w_con * _db_to_lin((-7.0 if p == 0 else -12.5) + tex)
            s += st.w_urban * _db_to_lin(st.urban_db - urban_off)
            s += st.w_road * np.float32(_db_to_lin(road_db))
            s += st.w_water * _db_to_lin(water_vv - (0.0 if p == 0 else 6.5))
            grass_db = -10.5 + 2.0 * moist if p == 0 else -17.0 + 1.0 * moist
            s += st.w_margin * _db_to_lin(grass_db)
            s *= self.incidence_gain
            s += np.float32(_db_to_lin(nesz))
            sigma.append(s)
        out = np.stack(sigma)
        out *= self._speckle(y, plan.ordinal)
        db = np.float32(10.0) * np.log10(out)
        return (np.round(db * np.float32(1 / _S1_DB_STEP)) * np.float32(_S1_DB_STEP)).astype(np.float32)


def _to_dn(refl: np.ndarray) -> np.ndarray:
    """Reflectance to uint16 x 10000; 0 is nodata, so valid pixels are at least 1."""
    return np.clip(np.rint(refl * np.float32(10000.0)), 1, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _profile(height: int, width: int, count: int, dtype: str, nodata: float) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if dtype == "float32" else 2,
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
        # small rasters are cheap to squeeze; whole tiles favour speed
        "ZLEVEL": 9 if height * width <= 1024 * 1024 else 1,
    }
    side = min(height, width)
    block = 512 if side >= 512 else 256 if side >= 256 else 0
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    else:
        profile["tiled"] = False
    return profile


def _stamp_tags(stamp: datetime, tile: str) -> dict[str, str]:
    return {
        "DATETIME": stamp.strftime("%Y-%m-%dT%H:%M:%S"),
        "TIFFTAG_DATETIME": stamp.strftime("%Y:%m:%d %H:%M:%S"),
        "TILE_ID": tile,
    }


class _Outputs:
    """Every output file of a call, open under its temporary name until all strips are written."""

    def __init__(self, crs: CRS, transform: Affine, temporaries: dict[Path, Path]) -> None:
        self.crs, self.transform = crs, transform
        self._tmp = temporaries
        self._open: list[Any] = []

    def create(self, final: Path, profile: dict[str, Any], descriptions: Sequence[str], tags: dict[str, str]) -> Any:
        ds = rasterio.open(self._tmp[final], "w", crs=self.crs, transform=self.transform, **profile)
        self._open.append(ds)
        for i, name in enumerate(descriptions, start=1):
            ds.set_band_description(i, name)
            if name in S2_BANDS:
                ds.update_tags(i, BANDNAME=name, WAVELENGTH=str(S2_BANDS[name]), WAVELENGTH_UNIT="nm")
        ds.update_tags(**tags)
        return ds

    def close(self) -> None:
        """Close every file, then check that each holds every block (GDAL logs some failed writes,
        a full disk among them, instead of raising)."""
        while self._open:
            self._open.pop().close()
        for final, tmp in self._tmp.items():
            check_geotiff_complete(tmp, final)

    def abort(self) -> None:
        """Close what is still open after a failure; the caller removes the temporaries."""
        while self._open:
            # the first failure is the one reported; closing the rest may fail the same way
            with contextlib.suppress(Exception):
                self._open.pop().close()


def _make_folders(folders: Sequence[Path]) -> list[Path]:
    """Create missing folders (parents first); returns those created, to remove after a failure."""
    created: list[Path] = []
    for folder in folders:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _remove_empty(created)
            raise output_error(folder, exc, "folder") from exc
        created.extend(reversed(missing))
    return created


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in reversed(folders):
        # a folder something else was put in meanwhile stays
        with contextlib.suppress(OSError):
            folder.rmdir()


_S2_TAGS = {
    "SPACECRAFT": "Sentinel-2 (synthetic)",
    "PROCESSING_LEVEL": "L2A",
    "QUANTIFICATION_VALUE": "10000",
    "BOA_ADD_OFFSET": "0",
    "CLOUDCLEAR_SYNTH": "1",
}
_S1_TAGS = {
    "UNITS": "dB",
    "POLARISATIONS": "VV,VH",
    "ORBIT_DIRECTION": "ASCENDING",
    "SPACECRAFT": "Sentinel-1 (synthetic)",
    "CLOUDCLEAR_SYNTH": "1",
}


def _open_outputs(
    outputs: _Outputs,
    scene: _Scene,
    tile: str,
    sun_azimuth: float,
    s2_plans: Sequence[_DatePlan],
    s1_plans: Sequence[_DatePlan],
    s2_paths: Sequence[Path],
    mask_paths: Sequence[Path],
    truth_paths: Sequence[Path],
    s1_paths: Sequence[Path],
) -> tuple[list[tuple[Any, Any, Any]], list[Any]]:
    """Create every output file; returns (S2, truth, SCL) datasets per S2 date, S1 datasets."""
    h, w = scene.height, scene.width
    names = tuple(scene.bands[i] for i in scene.out_index)
    uint16 = _profile(h, w, len(names), "uint16", 0)
    uint8 = _profile(h, w, 1, "uint8", 0)
    float32 = _profile(h, w, 2, "float32", float("nan"))
    classes = ",".join(f"{k}={v}" for k, v in SCL_CLASSES.items())
    s2_sets = []
    for plan, p_s2, p_mask, p_truth in zip(s2_plans, s2_paths, mask_paths, truth_paths, strict=True):
        tags = {
            **_stamp_tags(plan.stamp, tile),
            **_S2_TAGS,
            "MEAN_SUN_AZIMUTH_ANGLE": f"{sun_azimuth:.2f}",
            "MEAN_SUN_ZENITH_ANGLE": f"{90.0 - plan.sun_elevation:.2f}",
        }
        s2_sets.append(
            (
                outputs.create(p_s2, uint16, names, tags),
                outputs.create(p_truth, uint16, names, {**tags, "CLOUDCLEAR_ROLE": "truth"}),
                outputs.create(p_mask, uint8, ("SCL",), {**tags, "CLASSES": classes}),
            )
        )
    s1_sets = [
        outputs.create(path, float32, ("VV", "VH"), {**_stamp_tags(plan.stamp, tile), **_S1_TAGS})
        for plan, path in zip(s1_plans, s1_paths, strict=True)
    ]
    return s2_sets, s1_sets


def _render_strips(
    scene: _Scene,
    s2_plans: Sequence[_DatePlan],
    s1_plans: Sequence[_DatePlan],
    s2_sets: Sequence[tuple[Any, Any, Any]],
    s1_sets: Sequence[Any],
    strip_rows: int,
    progress: bool,
) -> list[int]:
    """Render and write every file strip by strip; returns the cloudy pixel count per S2 date.

    Per strip, the date-invariant layers are computed once (chunks in parallel), then each date is
    one job; finished jobs are written in submission order, so the files do not depend on timing.
    """
    h, w = scene.height, scene.width
    workers = max(1, min(4, os.cpu_count() or 1))
    counts = [0] * len(s2_plans)
    strips = [(r, min(h, r + strip_rows)) for r in range(0, h, strip_rows)]
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(strips), desc="synth", unit="strip", disable=not progress) as bar,
    ):
        for r0, r1 in strips:
            st = _Static.empty(len(scene.bands), r1 - r0, w)
            chunks = [(c, min(r1, c + _CHUNK_ROWS)) for c in range(r0, r1, _CHUNK_ROWS)]
            for (c0, c1), part in zip(chunks, pool.map(lambda c: scene.static(*c), chunks), strict=True):
                st.put(slice(c0 - r0, c1 - r0), part)
            window = Window(0, r0, w, r1 - r0)
            jobs: list[tuple[Callable[[], Any], Callable[[Any], None]]] = []
            for k, plan in enumerate(s2_plans):
                jobs.append((partial(scene.render_s2, st, r0, plan), partial(_write_s2, s2_sets[k], window, counts, k)))
            for k, plan in enumerate(s1_plans):
                jobs.append((partial(scene.render_s1, st, r0, plan), partial(_write_s1, s1_sets[k], window)))
            pending: deque[tuple[Future[Any], Callable[[Any], None]]] = deque()
            for job, write in jobs:
                pending.append((pool.submit(job), write))
                if len(pending) > workers:  # bounds the finished strips held in memory
                    fut, wr = pending.popleft()
                    wr(fut.result())
            while pending:
                fut, wr = pending.popleft()
                wr(fut.result())
            bar.update(1)
    return counts


def _write_s2(datasets: tuple[Any, Any, Any], window: Window, counts: list[int], k: int, res: Any) -> None:
    s2, truth, mask = datasets
    s2.write(res[0], window=window)
    truth.write(res[1], window=window)
    mask.write(res[2], 1, window=window)
    counts[k] += res[3]


def _write_s1(ds: Any, window: Window, res: np.ndarray) -> None:
    ds.write(res, window=window)


def _validate(
    height: int,
    width: int,
    n_dates: int,
    interval_days: int,
    bands: Sequence[str],
    cloud_cover: Sequence[float] | None,
    seed: int,
    sun_azimuth: float,
) -> tuple[tuple[str, ...], list[float] | None]:
    for name, value, least in (
        ("height", height, 16),
        ("width", width, 16),
        ("n_dates", n_dates, 1),
        ("interval_days", interval_days, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise SynthError(f"{name} must be an integer >= {least}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")
    if not math.isfinite(sun_azimuth):
        raise SynthError(f"sun_azimuth must be a finite angle in degrees, got {sun_azimuth!r}")
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",") if b.strip()]
    names = tuple(str(b).upper() for b in bands)
    unknown = [b for b in names if b not in S2_BANDS]
    if not names or unknown or len(set(names)) != len(names):
        raise SynthError(f"bands {tuple(bands)!r} must be distinct names among {', '.join(S2_BANDS)}")
    if cloud_cover is None:
        return names, None
    covers = [float(c) for c in cloud_cover]
    if len(covers) != n_dates:
        raise SynthError(f"cloud_cover has {len(covers)} values for {n_dates} dates")
    bad = [c for c in covers if not 0.0 <= c <= 1.0]
    if bad:
        raise SynthError(f"cloud_cover values are fractions in 0..1, got {bad}")
    return names, covers


def generate_series(
    dst_dir: str | os.PathLike[str],
    *,
    height: int = 512,
    width: int = 512,
    n_dates: int = 12,
    start: str | date = "2021-04-01",
    interval_days: int = 15,
    tile: str = "31UFQ",
    bands: Sequence[str] = ("B02", "B03", "B04", "B08"),
    cloud_cover: Sequence[float] | None = None,
    s1: bool = True,
    seed: int = 0,
    progress: bool = False,
    sun_azimuth: float = 150.0,
    _strip_rows: int | None = None,
) -> SynthSeries:
    """Write a synthetic S2 (+ S1) time series with known cloud-free truth.

    Layout under ``dst_dir``::

        S2/S2_T{tile}_{YYYYMMDD}T{HHMMSS}.tif            cloudy L2A reflectance, uint16 x 10000
        S2/S2_T{tile}_{YYYYMMDD}T{HHMMSS}_SCL.tif        Sen2Cor SCL codes, uint8
        truth/S2_T{tile}_{YYYYMMDD}T{HHMMSS}_truth.tif   cloud-free reflectance, uint16 x 10000
        S1/S1_T{tile}_{YYYYMMDD}T{HHMMSS}.tif            VV, VH backscatter in dB, float32

    S2 dates lie on a 5-day revisit grid (10:30 UTC) near ``start + k * interval_days``; S1
    acquisitions lie on a 12-day ascending grid (17:29 UTC) from the one nearest the first S2 date
    to the one nearest the last, so every S2 date has an S1 within 6 days. Output is a pure
    function of the arguments: the same arguments give byte-identical files.

    Args:
        dst_dir: Destination directory, created if missing; files of the same names are replaced
            once the whole series is written.
        height: Rows (10 m pixels); a full Sentinel-2 tile is 10980.
        width: Columns.
        n_dates: Number of S2 acquisitions.
        start: First S2 date (``YYYY-MM-DD``), rounded up to the S2 revisit grid.
        interval_days: Target spacing of S2 dates, rounded to the 5-day grid.
        tile: MGRS tile id; sets the UTM CRS and the origin of the grid.
        bands: S2 bands to write, among B02 B03 B04 B05 B06 B07 B08 B8A B11 B12 (all at 10 m).
        cloud_cover: Target fraction (0..1) of cloud, thin cirrus and shadow pixels per date;
            None draws a spread with two clear dates and one overcast date (for >= 5 dates).
        s1: Write Sentinel-1 acquisitions.
        seed: Seed of the landscape, clouds and speckle.
        progress: Show a progress bar on stderr.
        sun_azimuth: Sun azimuth in degrees clockwise from north; sets where shadows fall.
        _strip_rows: Rows generated at once (testing hook; the output does not depend on it).

    Returns:
        The paths, dates and per-date cloud percentages written.

    Raises:
        SynthError: An argument is out of range (unknown band or tile, bad cover list, ...).
        OutputError: A file cannot be written (read-only folder, disk full...); no file of the
            series is then replaced or left behind.
    """
    band_names, covers = _validate(height, width, n_dates, interval_days, bands, cloud_cover, seed, sun_azimuth)
    height, width, seed = int(height), int(width), int(seed)
    if _strip_rows is not None and _strip_rows < 1:
        raise SynthError(f"_strip_rows must be >= 1, got {_strip_rows}")
    strip_rows = _strip_rows or _STRIP_ROWS
    grid = _tile_grid(tile)
    tile_id = grid.tile
    s2_stamps = [_s2_stamp(d) for d in _s2_days(_parse_start(start), n_dates, interval_days)]
    s1_stamps = _s1_stamps(s2_stamps) if s1 else []
    if covers is None:
        covers = _default_cover(n_dates, seed)

    scene = _Scene(height, width, band_names, seed, float(sun_azimuth))
    s2_plans = [scene.date_plan(t, c, grid.lat) for t, c in zip(s2_stamps, covers, strict=True)]
    s1_plans = [scene.date_plan(t, None, grid.lat) for t in s1_stamps]

    root = Path(dst_dir)
    s2_paths, mask_paths, truth_paths = [], [], []
    for t in s2_stamps:
        stem = f"S2_T{tile_id}_{t:%Y%m%dT%H%M%S}"
        s2_paths.append(root / "S2" / f"{stem}.tif")
        mask_paths.append(root / "S2" / f"{stem}_SCL.tif")
        truth_paths.append(root / "truth" / f"{stem}_truth.tif")
    s1_paths = [root / "S1" / f"S1_T{tile_id}_{t:%Y%m%dT%H%M%S}.tif" for t in s1_stamps]
    created = _make_folders([root / sub for sub in ("S2", "truth") + (("S1",) if s1 else ())])
    targets = [*s2_paths, *mask_paths, *truth_paths, *s1_paths]
    try:
        # Files of the same names are replaced, each only once the whole series is written.
        with (
            gdal_env("synth"),
            atomic_outputs(targets, overwrite=True, what="synthetic image") as temporaries,
            WriteFailures() as failures,
        ):
            outputs = _Outputs(
                CRS.from_epsg(grid.epsg),
                Affine(_PIXEL_M, 0.0, grid.x0, 0.0, -_PIXEL_M, grid.y0),
                dict(zip(targets, temporaries, strict=True)),
            )
            try:
                s2_sets, s1_sets = _open_outputs(
                    outputs,
                    scene,
                    tile_id,
                    sun_azimuth,
                    s2_plans,
                    s1_plans,
                    s2_paths,
                    mask_paths,
                    truth_paths,
                    s1_paths,
                )
                counts = _render_strips(scene, s2_plans, s1_plans, s2_sets, s1_sets, strip_rows, progress)
                cloud_pct = [100.0 * c / (height * width) for c in counts]
                for (s2_ds, _, mask_ds), pct in zip(s2_sets, cloud_pct, strict=True):
                    s2_ds.update_tags(CLOUDY_PIXEL_PERCENTAGE=f"{pct:.4f}")
                    mask_ds.update_tags(CLOUDY_PIXEL_PERCENTAGE=f"{pct:.4f}")
                outputs.close()
                failures.check(root)
            except BaseException:
                outputs.abort()
                raise
    except BaseException:
        _remove_empty(created)
        raise

    return SynthSeries(
        root=root,
        s2=tuple(s2_paths),
        masks=tuple(mask_paths),
        truth=tuple(truth_paths),
        s1=tuple(s1_paths),
        s2_dates=tuple(s2_stamps),
        s1_dates=tuple(s1_stamps),
        cloud_pct=tuple(cloud_pct),
        tile=tile_id,
        crs=f"EPSG:{grid.epsg}",
        height=height,
        width=width,
    )
