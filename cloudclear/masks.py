"""Cloud and shadow masks: recognise a mask's convention and decode it to one set of classes.

Every mask cloudclear reads, whatever its source, is decoded to the classes of :class:`MaskClass`
so that the catalog, sampling and inference count clouds the same way. The conventions known here
are a plain dict (:data:`CONVENTIONS`), name -> decoder, and the same dict drives detection.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import numpy as np

from cloudclear.errors import MaskError


class MaskClass(IntEnum):
    """The one mask convention cloudclear uses internally."""

    NODATA = 0
    CLEAR = 1
    CLOUD = 2
    THIN_CLOUD = 3
    SHADOW = 4
    SNOW = 5


#: Classes that hide the surface: counted in a scene's cloud percentage.
OBSCURED = (MaskClass.CLOUD, MaskClass.THIN_CLOUD, MaskClass.SHADOW)
#: Classes that show the surface (snow included): the one definition of a "clear" pixel, the
#: complement of :data:`OBSCURED` among pixels with data.
CLEAR_CLASSES = (MaskClass.CLEAR, MaskClass.SNOW)


def is_clear(classes: np.ndarray) -> np.ndarray:
    """Where decoded classes show the surface (a class in :data:`CLEAR_CLASSES`); NODATA is not clear."""
    return np.isin(classes, CLEAR_CLASSES)


def is_obscured(classes: np.ndarray) -> np.ndarray:
    """Where decoded classes hide the surface (a class in :data:`OBSCURED`)."""
    return np.isin(classes, OBSCURED)


#: Sen2Cor scene classification codes -> MaskClass.
SCL_TABLE: dict[int, MaskClass] = {
    0: MaskClass.NODATA,  # no data
    1: MaskClass.NODATA,  # saturated or defective
    2: MaskClass.CLEAR,  # dark area (topographic shadow)
    3: MaskClass.SHADOW,  # cloud shadow
    4: MaskClass.CLEAR,  # vegetation
    5: MaskClass.CLEAR,  # not vegetated
    6: MaskClass.CLEAR,  # water
    7: MaskClass.CLEAR,  # unclassified
    8: MaskClass.CLOUD,  # cloud, medium probability
    9: MaskClass.CLOUD,  # cloud, high probability
    10: MaskClass.THIN_CLOUD,  # thin cirrus
    11: MaskClass.SNOW,  # snow or ice
}

#: Raw codes, per convention, of pixels the classifier left unclassified. They decode to CLEAR (the
#: default decoding does not change); a :class:`ClearPolicy` may count them as cloud instead.
UNCLASSIFIED_CODES: dict[str, tuple[int, ...]] = {"SCL": (7,)}

#: s2cloudless' default probability threshold.
CLP_THRESHOLD = 0.4


#: Sen2Cor scene classification code -> class name, written into every mask cloudclear makes.
SCL_NAMES: dict[int, str] = {
    0: "NO_DATA",
    1: "SATURATED_OR_DEFECTIVE",
    2: "DARK_AREA_PIXELS",
    3: "CLOUD_SHADOWS",
    4: "VEGETATION",
    5: "NOT_VEGETATED",
    6: "WATER",
    7: "UNCLASSIFIED",
    8: "CLOUD_MEDIUM_PROBABILITY",
    9: "CLOUD_HIGH_PROBABILITY",
    10: "THIN_CIRRUS",
    11: "SNOW",
}

#: Display colours for SCL codes (the Sen2Cor legend), so QGIS shows a written mask as a class map.
SCL_COLOURS: dict[int, tuple[int, int, int, int]] = {
    0: (0, 0, 0, 0),
    1: (255, 0, 0, 255),
    2: (47, 47, 47, 255),
    3: (100, 50, 0, 255),
    4: (0, 160, 0, 255),
    5: (255, 230, 90, 255),
    6: (0, 0, 255, 255),
    7: (128, 128, 128, 255),
    8: (192, 192, 192, 255),
    9: (255, 255, 255, 255),
    10: (100, 200, 255, 255),
    11: (255, 150, 255, 255),
}

#: Fmask (Zhu & Woodcock) output codes -> MaskClass; 255 is no observation.
FMASK_TABLE: dict[int, MaskClass] = {
    0: MaskClass.CLEAR,  # clear land
    1: MaskClass.CLEAR,  # clear water
    2: MaskClass.SHADOW,
    3: MaskClass.SNOW,
    4: MaskClass.CLOUD,
}

#: EarthNet / GreenEarthNet learned mask ("dlmask") codes -> MaskClass; 255 is nodata.
DLMASK_TABLE: dict[int, MaskClass] = {
    0: MaskClass.CLEAR,
    1: MaskClass.CLOUD,
    2: MaskClass.SHADOW,
    3: MaskClass.SNOW,
    4: MaskClass.NODATA,  # masked by the cube builder
}


def _table_decoder(table: dict[int, MaskClass]) -> Callable[[np.ndarray, float | None], np.ndarray]:
    lut = np.full(256, MaskClass.NODATA, dtype=np.uint8)
    for code, cls in table.items():
        lut[code] = cls

    def decode(data: np.ndarray, nodata: float | None) -> np.ndarray:
        out = lut[np.clip(data, 0, 255).astype(np.uint8)]
        bad = (data < 0) | (data > 255)
        if nodata is not None:
            bad |= data == nodata
        out[bad] = MaskClass.NODATA
        return out

    return decode


# MAJA / THEIA CLM bits (the CLM_R1 / CLM_R2 files of a MAJA L2A product).
_MAJA_CLOUD_BITS = 0b0000_1110  # all clouds except the thinnest; mono- and multi-temporal tests
_MAJA_THIN_BITS = 0b1001_0000  # the thinnest clouds; high clouds seen at 1.38 um
_MAJA_SHADOW_BITS = 0b0110_0000  # shadows of clouds in the image, of clouds outside it


def _decode_maja(data: np.ndarray, nodata: float | None) -> np.ndarray:
    bits = np.clip(data, 0, 255).astype(np.uint8)
    out = np.full(bits.shape, MaskClass.CLEAR, np.uint8)
    out[(bits & _MAJA_SHADOW_BITS) != 0] = MaskClass.SHADOW
    out[(bits & _MAJA_THIN_BITS) != 0] = MaskClass.THIN_CLOUD
    out[(bits & _MAJA_CLOUD_BITS) != 0] = MaskClass.CLOUD
    if nodata is not None:
        out[data == nodata] = MaskClass.NODATA
    return out


def _decode_binary(data: np.ndarray, nodata: float | None) -> np.ndarray:
    out = np.where(data == 1, MaskClass.CLOUD, MaskClass.CLEAR).astype(np.uint8)
    bad = data > 1
    if nodata is not None:
        bad |= data == nodata
    out[bad] = MaskClass.NODATA
    return out


def _probability_decoder(peak: float) -> Callable[[np.ndarray, float | None], np.ndarray]:
    def decode(data: np.ndarray, nodata: float | None) -> np.ndarray:
        prob = data.astype(np.float32) / peak
        out = np.where(prob >= CLP_THRESHOLD, MaskClass.CLOUD, MaskClass.CLEAR).astype(np.uint8)
        bad = prob > 1.0
        if nodata is not None:
            bad |= data == nodata
        out[bad] = MaskClass.NODATA
        return out

    return decode


#: Mask conventions: name -> decoder(data, nodata) -> MaskClass array.
CONVENTIONS: dict[str, Callable[[np.ndarray, float | None], np.ndarray]] = {
    "SCL": _table_decoder(SCL_TABLE),
    "MAJA": _decode_maja,
    "FMASK": _table_decoder(FMASK_TABLE),
    "DLMASK": _table_decoder(DLMASK_TABLE),
    "CLM": _decode_binary,
    "CLP": _probability_decoder(255.0),
    "CLDPRB": _probability_decoder(100.0),
}

# How a band description or a file-name token names a convention, best first. Masks that also
# mark shadows win (Sen2Cor SCL first); a plain cloud mask next; a probability is the last resort.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("SCL", re.compile(r"^(SCL|SCENE[_ ]?CLASSIFICATION)\b", re.I)),
    ("MAJA", re.compile(r"^(MAJA|THEIA)[_ ]?(CLM|CLOUD)", re.I)),
    ("FMASK", re.compile(r"^FMASK", re.I)),
    ("DLMASK", re.compile(r"^DLMASK", re.I)),
    ("CLM", re.compile(r"^(CLM|CLOUD[_ ]?MASK|CLD[_ ]?MASK)\b", re.I)),
    ("CLDPRB", re.compile(r"(MSK_CLDPRB|CLDPRB|0-100)", re.I)),
    ("CLP", re.compile(r"^(CLP|CLOUD[_ ]?PROB)", re.I)),
)


def convention_of(name: str) -> str | None:
    """The mask convention a band description or file-name token names, if any.

    Args:
        name: a band description ("SCL", "MSK_CLDPRB(0-100)") or a file-name token ("CLM").

    Returns:
        A key of :data:`CONVENTIONS`, or None.
    """
    for conv, pattern in _PATTERNS:
        if pattern.search(name.strip()):
            return conv
    return None


def convention_of_tokens(tokens: set[str]) -> str | None:
    """The mask convention a file name names, from its upper-case tokens, if any.

    A MAJA product's ``..._CLM_R1.tif`` is told from an s2cloudless ``CLM`` by the MAJA product
    name (``SENTINEL2A_...``) or the ``R1`` / ``R2`` resolution suffix.
    """
    if "CLM" in tokens and (tokens & {"R1", "R2"} or any(t.startswith("SENTINEL2") for t in tokens)):
        return "MAJA"
    named = [c for c in map(convention_of, tokens) if c]
    return min(named, key=rank) if named else None


_RANK = {conv: i for i, (conv, _) in enumerate(_PATTERNS)}


def rank(convention: str) -> int:
    """Preference of a convention when a scene has several masks (lower is better)."""
    return _RANK.get(convention, len(_RANK))


@dataclass(frozen=True)
class MaskBand:
    """Where a scene's mask lives: a file, a 1-based band in it, and its convention."""

    path: str
    band: int
    convention: str


def decode(data: np.ndarray, convention: str, nodata: float | None = None) -> np.ndarray:
    """Decode raw mask values to :class:`MaskClass` codes.

    Args:
        data: the mask band as read from the file.
        convention: a key of :data:`CONVENTIONS`.
        nodata: the band's nodata value, if the file declares one.

    Returns:
        A uint8 array of MaskClass codes, the shape of ``data``.
    """
    try:
        decoder = CONVENTIONS[convention]
    except KeyError:
        valid = ", ".join(CONVENTIONS)
        raise ValueError(f"unknown mask convention {convention!r}; known: {valid}") from None
    if data.dtype.kind == "f":
        # NaN (a float mask's usual nodata) compares unequal to everything and casts to 0: take it
        # out before decoding so it cannot read as a class.
        missing = ~np.isfinite(data)
        if missing.any():
            out = decoder(np.where(missing, 0, data), None if nodata is None or nodata != nodata else nodata)
            out[missing] = MaskClass.NODATA
            return out
        if nodata is not None and nodata != nodata:
            nodata = None
    return decoder(data, nodata)


# -- what is clear -----------------------------------------------------------------------------

#: The largest buffer a :class:`ClearPolicy` takes, in pixels (reads take this many halo rows).
MAX_BUFFER_PX = 64

_CHOICES = ("clear", "cloud")


@dataclass(frozen=True)
class ClearPolicy:
    """How decoded mask classes become the one decision of what is clear, beyond the mask itself.

    The default policy changes nothing: pixels are clear exactly as the mask's classes say
    (:data:`CLEAR_CLASSES`). Each field makes the decision stricter:

    Attributes:
        buffer_px: grow cloud, thin cloud and shadow by this many pixels of the grid read on
            (a disk: every pixel within ``buffer_px`` pixels, Euclidean distance between pixel
            centres, of an obscured pixel), so that halos and edges a mask misses are not kept.
            A buffered pixel takes the class of the object it borders (cloud over thin cloud over
            shadow); NODATA pixels stay NODATA. Readers read a halo of ``buffer_px`` rows and
            columns around each strip or window, so a strip-wise read equals a whole read.
        unclassified: what a pixel the mask leaves unclassified counts as (Sen2Cor SCL class 7,
            see :data:`UNCLASSIFIED_CODES`): "clear" (the decoding's default) or "cloud" (decoded
            as CLOUD: in Sen2Cor the class often holds thin cloud and haze).
        snow: what the SNOW class counts as: "clear" (default, the surface is seen) or "cloud"
            (Sen2Cor often calls cloud "snow", and gap filling would copy it into neighbours).
        temporal: also apply the temporal test (:func:`temporal_test`) where several dates of the
            same pixels are read together (``infer``): a pixel the mask calls clear that is much
            brighter in blue than the other dates clear there is cloud or haze, much darker in NIR
            is shadow, and snow with no snowy other date is cloud. A reader of one scene alone
            cannot apply it and ignores it.

    Raises:
        MaskError: a field is out of range or not one of its choices.
    """

    buffer_px: int = 0
    unclassified: Literal["clear", "cloud"] = "clear"
    snow: Literal["clear", "cloud"] = "clear"
    temporal: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.buffer_px, bool) or not isinstance(self.buffer_px, int):
            raise MaskError(f"clear policy: buffer must be a whole number of pixels, not {self.buffer_px!r}")
        if not 0 <= self.buffer_px <= MAX_BUFFER_PX:
            raise MaskError(f"clear policy: buffer must be 0..{MAX_BUFFER_PX} px, not {self.buffer_px}")
        for name in ("unclassified", "snow"):
            value = getattr(self, name)
            if value not in _CHOICES:
                raise MaskError(f"clear policy: {name} must be clear or cloud, not {value!r}")
        if not isinstance(self.temporal, bool):
            raise MaskError(f"clear policy: temporal must be true or false, not {self.temporal!r}")

    @property
    def is_default(self) -> bool:
        """Whether the policy keeps the mask's decision as it is."""
        return self == DEFAULT_POLICY

    @property
    def halo(self) -> int:
        """Rows and columns a read must take around a strip or window for the buffer to be exact."""
        return self.buffer_px

    def describe(self) -> str:
        """One line: ``buffer 3 px, unclassified cloud, snow clear`` (``, temporal test`` when on;
        ``mask as decoded`` by default)."""
        if self.is_default:
            return "mask as decoded (buffer 0 px, unclassified clear, snow clear)"
        text = f"buffer {self.buffer_px} px, unclassified {self.unclassified}, snow {self.snow}"
        return text + (", temporal test" if self.temporal else "")


#: The default policy: the masks' classes as decoded.
DEFAULT_POLICY = ClearPolicy()

#: The strict preset (``--strict``): a 3-pixel buffer (30 m at 10 m: Sen2Cor's cloud and shadow
#: edges are typically one to a few 20 m pixels off, and a bright halo surrounds each cloud) and
#: Sen2Cor's "unclassified" counted as cloud (on hazy scenes it is mostly thin cloud). Snow stays
#: clear: real snow is common in the mountains, and counting it as cloud would empty winter scenes.
STRICT = ClearPolicy(buffer_px=3, unclassified="cloud")


def apply_policy(
    classes: np.ndarray, policy: ClearPolicy, raw: np.ndarray | None = None, convention: str | None = None
) -> np.ndarray:
    """Decoded classes with ``policy`` applied (a new array; ``classes`` is left as it is).

    Args:
        classes: (rows, cols) MaskClass codes, as :func:`decode` gave them.
        policy: what to change.
        raw: the raw mask values ``classes`` were decoded from (needed for ``unclassified``).
        convention: their convention (a key of :data:`CONVENTIONS`).

    Returns:
        uint8 MaskClass codes. With a buffer, pixels within ``policy.buffer_px`` of the array's edge
        see only the obscured pixels inside it: read a halo (:attr:`ClearPolicy.halo`) and crop.
    """
    out = np.array(classes, dtype=np.uint8, copy=True)
    if policy.unclassified == "cloud" and raw is not None and convention in UNCLASSIFIED_CODES:
        unclassified = np.isin(raw, UNCLASSIFIED_CODES[convention]) & (out == MaskClass.CLEAR)
        out[unclassified] = MaskClass.CLOUD
    if policy.snow == "cloud":
        out[out == MaskClass.SNOW] = MaskClass.CLOUD
    if policy.buffer_px > 0:
        out = buffer_obscured(out, policy.buffer_px)
    return out


def disk(radius: int) -> np.ndarray:
    """The (2r+1, 2r+1) bool footprint of a buffer: offsets within ``radius`` (Euclidean)."""
    r = np.arange(-radius, radius + 1)
    return np.asarray((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius)


def buffer_obscured(classes: np.ndarray, px: int) -> np.ndarray:
    """Clear pixels (CLEAR or SNOW) within ``px`` pixels (a disk) of cloud, thin cloud or shadow
    take that class (cloud over thin cloud over shadow). A new array; outside it counts as clear."""
    out = np.array(classes, dtype=np.uint8, copy=True)
    if px <= 0:
        return out
    clear = is_clear(classes)
    if not clear.any():
        return out
    for cls in (MaskClass.SHADOW, MaskClass.THIN_CLOUD, MaskClass.CLOUD):
        seed = classes == cls
        if seed.any():
            out[dilate_disk(seed, px) & clear] = cls
    return out


def dilate_disk(seed: np.ndarray, radius: int) -> np.ndarray:
    """``seed`` (rows, cols) bool grown by a :func:`disk` of ``radius``; outside the array is False.

    The disk is a stack of horizontal runs, so the dilation is one 1-D maximum filter per run width
    and one shifted OR per row of the disk (a few times faster than a 2-D structuring element).
    """
    from scipy.ndimage import maximum_filter1d

    src = seed.view(np.uint8) if seed.dtype == bool else seed.astype(np.uint8)
    rows = seed.shape[0]
    out = np.zeros(seed.shape, bool)
    runs: dict[int, np.ndarray] = {}
    for dy in range(-radius, radius + 1):
        w = math.isqrt(radius * radius - dy * dy)
        if w not in runs:
            runs[w] = maximum_filter1d(src, 2 * w + 1, axis=1, mode="constant", cval=0).astype(bool)
        # out[y] |= runs[w][y + dy] wherever y + dy is inside the array.
        a, b = max(0, -dy), min(rows, rows - dy)
        if a < b:
            out[a:b] |= runs[w][a + dy : b + dy]
    return out


# -- the temporal test ---------------------------------------------------------------------------

#: Temporal test, haze and cloud: a clear pixel is cloud when its blue (B02) reflectance exceeds the
#: median of the other dates clear there by more than this (absolute reflectance)...
TEMPORAL_BLUE_ADD = 0.03
#: ... and is more than this factor times that median. Clear land varies by about 0.01-0.02 in
#: blue from date to date (view angle, aerosol correction); MAJA's multi-temporal cloud test
#: (Hagolle et al. 2010) flags a blue increase above 0.03 over the last clear date. Over dark
#: forest (blue 0.02) the haze at cloud edges adds 0.03 and more. The factor keeps bright
#: surfaces (bare soil, gravel, roofs), whose blue varies in proportion, from being flagged.
TEMPORAL_BLUE_FACTOR = 1.3
#: Temporal test, shadow: a clear pixel whose NIR (B08, else B8A) is below this factor of the other
#: dates' median...
TEMPORAL_NIR_FACTOR = 0.6
#: ... and below that median minus this (reflectance), and not brighter in blue than the blue
#: median: a shadow darkens every band, while a harvest or a mowing, which also drops NIR within
#: a few weeks, brightens the visible bands.
TEMPORAL_NIR_SUB = 0.04
#: Other dates clear at a pixel the test needs there; with fewer, the mask's decision stands.
TEMPORAL_MIN_OTHERS = 2


@dataclass(frozen=True)
class TemporalFlags:
    """What :func:`temporal_test` removes, per date: (dates, rows, cols) bool arrays.

    Attributes:
        cloud: clear per the mask, but cloud or haze (much brighter in blue than the other dates,
            or snow with no snowy other date).
        shadow: clear per the mask, but much darker in NIR than the other dates (not cloud).
    """

    cloud: np.ndarray
    shadow: np.ndarray

    @property
    def obscured(self) -> np.ndarray:
        """(dates, rows, cols): cloud or shadow."""
        return self.cloud | self.shadow


def _others_median(values: np.ndarray, clear: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(median over the dates other than ``i`` clear at each pixel, how many there are)."""
    keep = [j for j in range(values.shape[0]) if j != i]
    v = np.where(clear[keep], values[keep], np.inf)  # obscured dates sort last
    v.sort(axis=0)
    k = clear[keep].sum(axis=0)
    lo = np.clip((k - 1) // 2, 0, None)[None]
    hi = np.clip(k // 2, 0, None)[None]
    med = 0.5 * (np.take_along_axis(v, lo, 0)[0] + np.take_along_axis(v, hi, 0)[0])
    return np.where(k > 0, med, np.nan).astype(np.float32), k


def temporal_test(
    blue: np.ndarray,
    clear: np.ndarray,
    nir: np.ndarray | None = None,
    snow: np.ndarray | None = None,
) -> TemporalFlags:
    """The temporal test: pixels the masks call clear that the other dates of the same pixel show
    to be cloud, haze or shadow (the multi-temporal tests of MAJA, against a median of dates).

    A pure function on arrays of dates of the same pixels (any spatial shape). For each date ``i``
    and pixel the mask calls clear there, with at least :data:`TEMPORAL_MIN_OTHERS` *other* dates
    clear at the pixel (else the mask's decision stands):

    - cloud or haze: blue > median + :data:`TEMPORAL_BLUE_ADD` and blue >
      :data:`TEMPORAL_BLUE_FACTOR` x median (median of blue over the other clear dates);
    - snow (``snow`` true): cloud when no other clear date is snowy there, else kept (the blue
      test does not apply to it: fresh snow is much brighter than the snow-free dates around it);
    - shadow (when not cloud): NIR < :data:`TEMPORAL_NIR_FACTOR` x median and NIR < median -
      :data:`TEMPORAL_NIR_SUB` (median of NIR over the other clear dates), and blue not above
      its median.

    Every decision uses the masks as given (a flagged date still counts as clear for the others).
    The test removes a minority: where it would flag more than half of the dates clear at a pixel
    (a river whose level changes, a field mown: two groups of dates, each unlike the other), it
    cannot tell which shows the surface, and flags none there.

    Args:
        blue: (dates, ...) blue (B02) reflectance.
        clear: (dates, ...) bool: the masks' decision (valid and clear).
        nir: (dates, ...) NIR (B08 or B8A) reflectance, or None (no shadow test).
        snow: (dates, ...) bool: where the masks say snow, or None (no snow test).

    Returns:
        :class:`TemporalFlags`; every flagged pixel is clear in ``clear``.
    """
    blue = np.asarray(blue, dtype=np.float32)
    clear = np.asarray(clear, dtype=bool)
    if blue.shape != clear.shape or (nir is not None and np.shape(nir) != clear.shape):
        raise ValueError("temporal_test: blue, clear and nir must have the same shape")
    n = clear.shape[0]
    cloud = np.zeros(clear.shape, bool)
    shadow = np.zeros(clear.shape, bool)
    if n <= TEMPORAL_MIN_OTHERS:
        return TemporalFlags(cloud, shadow)
    clear = clear & np.isfinite(blue)
    nir_f = None if nir is None else np.asarray(nir, dtype=np.float32)
    if nir_f is not None:
        nir_ok = clear & np.isfinite(nir_f)
    snow_b = None if snow is None else (np.asarray(snow, dtype=bool) & clear)
    for i in range(n):
        med_b, k = _others_median(blue, clear, i)
        test = clear[i] & (k >= TEMPORAL_MIN_OTHERS)
        if not test.any():
            continue
        with np.errstate(invalid="ignore"):
            b = blue[i]
            hazy = test & (b > med_b + TEMPORAL_BLUE_ADD) & (b > TEMPORAL_BLUE_FACTOR * med_b)
            if snow_b is not None:
                # Snow is decided by its neighbours alone: cloud without a snowy one, else snow
                # (fresh snow is much brighter than the snow-free dates around it).
                others_snowy = np.delete(snow_b, i, axis=0).any(axis=0)
                hazy = np.where(snow_b[i], test & ~others_snowy, hazy)
            cloud[i] = hazy
            if nir_f is not None:
                med_n, kn = _others_median(nir_f, nir_ok, i)
                x = nir_f[i]
                dark = (x < TEMPORAL_NIR_FACTOR * med_n) & (x < med_n - TEMPORAL_NIR_SUB) & (b <= med_b)
                shadow[i] = test & nir_ok[i] & (kn >= TEMPORAL_MIN_OTHERS) & dark & ~hazy
    # The test removes a minority: where it would remove more than half the clear dates of a pixel,
    # the dates disagree too much to tell which of them shows the surface, and the masks stand.
    ambiguous = 2 * (cloud | shadow).sum(axis=0) > clear.sum(axis=0)
    cloud &= ~ambiguous
    shadow &= ~ambiguous
    return TemporalFlags(cloud, shadow)
