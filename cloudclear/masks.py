"""Cloud and shadow masks: recognise a mask's convention and decode it to one set of classes.

Every mask cloudclear reads, whatever its source, is decoded to the classes of :class:`MaskClass`
so that the catalog, sampling and inference count clouds the same way. The conventions known here
are a plain dict (:data:`CONVENTIONS`), name -> decoder, and the same dict drives detection.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, NoReturn

import numpy as np

from cloudclear.errors import MaskError
from cloudclear.morphology import dilate_disk as dilate_disk  # re-exported: the buffer of masks
from cloudclear.morphology import disk as disk


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


@functools.cache
def _lut(members: tuple[int, ...]) -> np.ndarray:
    lut = np.zeros(256, bool)
    lut[list(members)] = True
    return lut


def is_member(classes: np.ndarray, members: tuple[int, ...]) -> np.ndarray:
    """Where ``classes`` (decoded classes, or any codes) are among ``members``: a table lookup on
    uint8 codes, several times faster than ``np.isin`` on full-tile strips; ``np.isin`` otherwise."""
    if isinstance(classes, np.ndarray) and classes.dtype == np.uint8:
        return _lut(tuple(members))[classes]
    return np.isin(classes, members)


def is_clear(classes: np.ndarray) -> np.ndarray:
    """Where decoded classes show the surface (a class in :data:`CLEAR_CLASSES`); NODATA is not clear."""
    return is_member(classes, CLEAR_CLASSES)


def is_obscured(classes: np.ndarray) -> np.ndarray:
    """Where decoded classes hide the surface (a class in :data:`OBSCURED`)."""
    return is_member(classes, OBSCURED)


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
    0: (0, 0, 0, 0), 1: (255, 0, 0, 255), 2: (47, 47, 47, 255), 3: (100, 50, 0, 255), 4: (0, 160, 0, 255),
    5: (255, 230, 90, 255), 6: (0, 0, 255, 255), 7: (128, 128, 128, 255), 8: (192, 192, 192, 255),
    9: (255, 255, 255, 255), 10: (100, 200, 255, 255), 11: (255, 150, 255, 255),
}  # fmt: skip

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


#: A table decoder's lookup entry for a code that is no class of its convention.
_UNKNOWN = 255
#: How many distinct unknown values an error lists.
_LISTED = 8


def _spans(codes: list[int]) -> str:
    """Sorted codes as runs: [0, 1, 2, 4] -> "0-2, 4"."""
    runs: list[list[int]] = []
    for c in codes:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _off_byte(data: np.ndarray) -> np.ndarray:
    """Where values are not whole numbers 0..255 (only ever called on non-uint8 data)."""
    off = (data < 0) | (data > 255)
    if data.dtype.kind == "f":
        off |= data != np.floor(data)
    return off


def _refuse(what: str, values: np.ndarray, codes: str) -> NoReturn:
    """Raise :class:`MaskError` naming the distinct ``values`` found (sorted, the first few)."""
    found = np.unique(values)
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in found[:_LISTED].tolist())
    more = ", ..." if found.size > _LISTED else ""
    raise MaskError(f"{what} {shown}{more} ({codes})")


def _table_decoder(
    name: str, table: dict[int, MaskClass], nodata_codes: tuple[int, ...] = ()
) -> Callable[[np.ndarray, float | None], np.ndarray]:
    """A decoder of a class table; a value neither in ``table`` nor in ``nodata_codes`` (the
    convention's own nodata) nor the band's declared nodata raises :class:`MaskError`."""
    lut = np.full(256, _UNKNOWN, dtype=np.uint8)
    for code, cls in table.items():
        lut[code] = cls
    lut[list(nodata_codes)] = MaskClass.NODATA
    codes = f"{name} codes are {_spans(sorted(table))}" + "".join(f", {c} nodata" for c in nodata_codes)

    def decode(data: np.ndarray, nodata: float | None) -> np.ndarray:
        table_ = lut
        if nodata is not None and float(nodata).is_integer() and 0 <= nodata <= 255:
            # The declared nodata joins the table: one lookup decodes and finds unknown values.
            table_ = lut.copy()
            table_[int(nodata)] = MaskClass.NODATA
            nodata = None
        out = table_[data if data.dtype == np.uint8 else np.clip(data, 0, 255).astype(np.uint8)]
        unknown = out == _UNKNOWN
        if data.dtype != np.uint8:
            unknown |= _off_byte(data)
        if nodata is not None:
            missing = data == nodata
            out[missing] = MaskClass.NODATA
            unknown &= ~missing
        if unknown.any():
            _refuse(f"unknown {name} class value(s)", data[unknown], codes)
        return out

    return decode


def _flags_decoder(name: str, rules: tuple[tuple[int, MaskClass], ...]) -> Callable[..., np.ndarray]:
    """A decoder of 8-bit flags: each ``(bits, class)`` rule in turn gives its class to the pixels
    with any of its bits set (a later rule wins); no flag set is CLEAR. A value that is no byte
    (nor the band's nodata) raises :class:`MaskError`."""

    def decode(data: np.ndarray, nodata: float | None) -> np.ndarray:
        if data.dtype != np.uint8:
            off = _off_byte(data)
            if nodata is not None:
                off &= data != nodata
            if off.any():
                _refuse(f"unknown {name} value(s)", data[off], f"{name} masks are 8-bit flags, 0-255")
        bits = np.clip(data, 0, 255).astype(np.uint8)
        out = np.full(bits.shape, MaskClass.CLEAR, np.uint8)
        for flags, cls in rules:
            out[(bits & flags) != 0] = cls
        if nodata is not None:
            out[data == nodata] = MaskClass.NODATA
        return out

    return decode


# MAJA / THEIA CLM bits (CLM_R1 / CLM_R2): 0 any cloud or shadow (a summary of the others), 1-3 clouds
# except the thinnest (all, mono- and multi-temporal tests), 4 the thinnest clouds, 5-6 shadows of
# clouds in and outside the image, 7 high clouds seen at 1.38 um.
_MAJA_RULES = ((0b0110_0000, MaskClass.SHADOW), (0b1001_0000, MaskClass.THIN_CLOUD), (0b0000_1110, MaskClass.CLOUD))
# THEIA MG2 (geophysical mask, MG2_R1 / MG2_R2) bits: 0 water, 1 clouds except the thinnest, 2 snow,
# 3 cloud shadows, 4 topographic shadow, 5 hidden by the relief (not seen: no observation), 6-7 sun
# too low or tangent to the slope. Water and the terrain flags show the surface; MG2 has no thin cloud.
_MG2_RULES = (
    (0b0100, MaskClass.SNOW),
    (0b1000, MaskClass.SHADOW),
    (0b0010, MaskClass.CLOUD),
    (0b10_0000, MaskClass.NODATA),
)


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
    "SCL": _table_decoder("SCL", SCL_TABLE),
    "MAJA": _flags_decoder("MAJA", _MAJA_RULES),
    "FMASK": _table_decoder("FMASK", FMASK_TABLE, (255,)),
    "DLMASK": _table_decoder("DLMASK", DLMASK_TABLE, (255,)),
    "CLM": _decode_binary,
    "CLP": _probability_decoder(255.0),
    "CLDPRB": _probability_decoder(100.0),
    "MG2": _flags_decoder("MG2", _MG2_RULES),
    # ESA MSK_CLASSI_B00 (baseline 04.00): bands opaque clouds, cirrus, snow/ice, read packed as
    # bits 0, 1, 2 (cloudclear.scenes.reader.MASK_BANDS).
    "CLASSI": _flags_decoder(
        "CLASSI", ((0b100, MaskClass.SNOW), (0b010, MaskClass.THIN_CLOUD), (0b001, MaskClass.CLOUD))
    ),
}

# How a band description or a file-name token names a convention, best first. Masks that also
# mark shadows win (Sen2Cor SCL first); a plain cloud mask next; a probability is the last resort.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("SCL", re.compile(r"^(SCL|SCENE[_ ]?CLASSIFICATION)\b", re.I)),
    ("MAJA", re.compile(r"^(MAJA|THEIA)([_ ]?(CLM|CLOUD)|$)", re.I)),
    ("MG2", re.compile(r"^((MAJA|THEIA)[_ ]?)?MG2$", re.I)),
    ("FMASK", re.compile(r"^FMASK", re.I)),
    ("DLMASK", re.compile(r"^DLMASK", re.I)),
    ("CLM", re.compile(r"^(CLM|CLOUD[_ ]?MASK|CLD[_ ]?MASK)\b", re.I)),
    ("CLDPRB", re.compile(r"(MSK_CLDPRB|CLDPRB|0-100)", re.I)),
    ("CLASSI", re.compile(r"^(MSK_)?CLASSI", re.I)),
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


#: Which mask decides when a scene has several, best first. Masks made from more than the one
#: image come first: MAJA's (multi-temporal tests; CLM, then MG2) and the learned masks (EarthNet's dlmask: on
#: greenearthnet it calls 87.5 % of 34TET 2021-08-04 cloud where Sen2Cor's SCL, beside it in the
#: same file, calls 8.2 %); then Fmask; then Sen2Cor's SCL (cloud, shadow and its "unclassified"
#: class, see :class:`ClearPolicy`); then cloud-only masks, a probability last.
PREFERENCE: tuple[str, ...] = ("MAJA", "MG2", "DLMASK", "FMASK", "SCL", "CLM", "CLDPRB", "CLASSI", "CLP")

_RANK = {conv: i for i, conv in enumerate(PREFERENCE)}


def rank(convention: str) -> int:
    """Preference of a convention when a scene has several masks (lower is better, see :data:`PREFERENCE`)."""
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

    Raises:
        MaskError: a value is no class of a table convention (SCL, FMASK, DLMASK) nor ``nodata``,
            or a MAJA value is not a byte; the message lists the values found, without the file.
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
#: Where the classes come from (:attr:`ClearPolicy.source`).
SOURCES = ("combined", "mask", "detector")
#: The largest temporal window, in days.
MAX_TEMPORAL_DAYS = 366


@dataclass(frozen=True)
class ClearPolicy:
    """The one decision of what is clear: which masks, and what is done to their classes.

    ``index`` (cloud %), ``sample`` (slots and targets), ``infer`` and ``evaluate`` all decide with
    a policy; the catalog and the training store record theirs. The defaults are the ones that
    make outputs cloud-free on the real series of ``bench/cloudfree.py`` (see docs/masks.md);
    :data:`AS_DECODED` is the scene's own mask and nothing else (cloudclear before 0.5).

    Attributes:
        source: which classes are read: "mask" (default: the scene's own mask; a scene without
            one has the built-in detector's, which ``index`` computes), "combined" (the scene's own
            mask and the detector's, which ``index`` then computes for every S2 scene: a pixel
            either calls cloud or shadow is obscured, cloud over shadow) or "detector" (the
            detector's mask only, where ``index`` made one; else the scene's own mask). Not
            "combined" by default: once the temporal test runs it adds nothing on
            ``bench/cloudfree.py`` (gapfill 31.72 vs 31.69 dB pooled), while the detector calls
            bright roofs cloud and a river shadow on clear dates (Bolzano's clear dates, 1 % cloud
            by their SCL, count 14-22 % combined and buffered).
        buffer_px: grow cloud, thin cloud and shadow by this many pixels of the grid read on
            (a disk: every pixel within ``buffer_px`` pixels, Euclidean distance between pixel
            centres, of an obscured pixel), so that halos and edges a mask misses are not kept.
            A buffered pixel takes the class of the object it borders (cloud over thin cloud over
            shadow); NODATA pixels stay NODATA. Readers read a halo of ``buffer_px`` rows and
            columns around each strip or window, so a strip-wise read equals a whole read.
            Default 3 (30 m at 10 m, Fmask's default).
        unclassified: what a pixel the mask leaves unclassified counts as (Sen2Cor SCL class 7,
            see :data:`UNCLASSIFIED_CODES`): "clear" (default, as decoded; the detector and the
            temporal test still judge it) or "cloud" (on hazy scenes the class holds thin cloud,
            but on clear winter scenes of worldcereal 31UDS it is 27 % of the pixels, 60 % once
            buffered). Applied before the buffer.
        snow: what the SNOW class counts as: "clear" (default, the surface is seen; the temporal
            test still calls snow with no snowy date near it cloud) or "cloud".
        temporal: apply the temporal test (:func:`temporal_test`) where several dates of the same
            pixels are read together (``infer``'s inputs; ``sample``'s targets against the dates
            around them): a pixel the mask calls clear that is much brighter in blue than the
            other dates clear there is cloud or haze, much darker in NIR is shadow, and snow with
            no snowy other date is cloud. ``index`` decides each scene alone and cannot apply it.
        temporal_days: the temporal test compares each date with the other dates within this
            many days of it (default 20: a season changes the surface more than haze does over
            longer spans); 0 compares with every other date read.

    Raises:
        MaskError: a field is out of range or not one of its choices.
    """

    buffer_px: int = 3
    unclassified: Literal["clear", "cloud"] = "clear"
    snow: Literal["clear", "cloud"] = "clear"
    temporal: bool = True
    temporal_days: int = 20
    source: Literal["combined", "mask", "detector"] = "mask"

    def __post_init__(self) -> None:
        for name, top in (("buffer_px", MAX_BUFFER_PX), ("temporal_days", MAX_TEMPORAL_DAYS)):
            value = getattr(self, name)
            what = "buffer" if name == "buffer_px" else "temporal window"
            unit = "px" if name == "buffer_px" else "days"
            if isinstance(value, bool) or not isinstance(value, int):
                raise MaskError(f"clear policy: {what} must be a whole number of {unit}, not {value!r}")
            if not 0 <= value <= top:
                raise MaskError(f"clear policy: {what} must be 0..{top} {unit}, not {value}")
        for name in ("unclassified", "snow"):
            value = getattr(self, name)
            if value not in _CHOICES:
                raise MaskError(f"clear policy: {name} must be clear or cloud, not {value!r}")
        if not isinstance(self.temporal, bool):
            raise MaskError(f"clear policy: temporal must be true or false, not {self.temporal!r}")
        if self.source not in SOURCES:
            raise MaskError(f"clear policy: source must be one of {', '.join(SOURCES)}, not {self.source!r}")

    @property
    def is_default(self) -> bool:
        """Whether this is the commands' default policy (:data:`DEFAULT_POLICY`)."""
        return self == DEFAULT_POLICY

    @property
    def changes_nothing(self) -> bool:
        """Whether a scene's own mask is kept as decoded (:data:`AS_DECODED`): nothing removed."""
        return self == AS_DECODED

    @property
    def changes_classes(self) -> bool:
        """Whether a reader changes the decoded classes of one scene (the temporal test aside)."""
        return self.buffer_px > 0 or self.unclassified == "cloud" or self.snow == "cloud"

    @property
    def halo(self) -> int:
        """Rows and columns a read must take around a strip or window for the buffer to be exact."""
        return self.buffer_px

    def describe(self) -> str:
        """One line, e.g. ``combined masks, buffer 3 px, unclassified cloud, snow clear, temporal
        test (20 d)``; ``mask as decoded`` for :data:`AS_DECODED`."""
        if self.changes_nothing:
            return "mask as decoded (buffer 0 px, unclassified clear, snow clear)"
        source = {"combined": "mask and detector", "mask": "scene mask", "detector": "detector"}[self.source]
        text = f"{source}, buffer {self.buffer_px} px, unclassified {self.unclassified}, snow {self.snow}"
        if self.temporal:
            text += f", temporal test ({self.temporal_days} d)" if self.temporal_days else ", temporal test (all dates)"
        return text


#: The commands' default: the scene's mask and the detector's, a 3-pixel buffer, the temporal
#: test over 20 days. Chosen on ``bench/cloudfree.py`` and
#: ``bench/decision.py`` (docs/masks.md has the figures for each rule).
DEFAULT_POLICY = ClearPolicy()

#: The scene's own mask as decoded, nothing else (``--as-decoded``; cloudclear's behaviour before
#: the clear policy): reproduces earlier figures.
AS_DECODED = ClearPolicy(buffer_px=0, unclassified="clear", snow="clear", temporal=False, source="mask")

#: The strict preset (``--strict``): the default with a 5-pixel buffer and Sen2Cor's "unclassified"
#: counted as cloud (it removes much of some clear scenes, so it is not the default).
STRICT = ClearPolicy(buffer_px=5, unclassified="cloud")


def apply_policy(
    classes: np.ndarray,
    policy: ClearPolicy,
    raw: np.ndarray | None = None,
    convention: str | None = None,
    *,
    steps: list[tuple[str, np.ndarray]] | None = None,
) -> np.ndarray:
    """Decoded classes with ``policy``'s rules applied, in order: unclassified, snow, buffer (a new
    array; ``classes`` is left as it is). The ``source`` and ``temporal`` fields are the reader's
    and the multi-date reader's, not this function's.

    Args:
        classes: (rows, cols) MaskClass codes, as :func:`decode` (or :func:`combine`) gave them.
        policy: what to change.
        raw: the raw mask values ``classes`` were decoded from (needed for ``unclassified``).
        convention: their convention (a key of :data:`CONVENTIONS`).
        steps: if given, ``(rule, classes after the rule)`` is appended for each rule that ran
            ("unclassified", "snow", "buffer"), so a caller can count what each removed.

    Returns:
        uint8 MaskClass codes. With a buffer, pixels within ``policy.buffer_px`` of the array's edge
        see only the obscured pixels inside it: read a halo (:attr:`ClearPolicy.halo`) and crop.
    """
    out = np.array(classes, dtype=np.uint8, copy=True)
    if policy.unclassified == "cloud" and raw is not None and convention in UNCLASSIFIED_CODES:
        unclassified = is_member(raw, UNCLASSIFIED_CODES[convention]) & (out == MaskClass.CLEAR)
        out[unclassified] = MaskClass.CLOUD
        if steps is not None:
            steps.append(("unclassified", out.copy()))
    if policy.snow == "cloud":
        out[out == MaskClass.SNOW] = MaskClass.CLOUD
        if steps is not None:
            steps.append(("snow", out.copy()))
    if policy.buffer_px > 0:
        out = buffer_obscured(out, policy.buffer_px)
        if steps is not None:
            steps.append(("buffer", out))
    return out


def combine(mask: np.ndarray | None, detected: np.ndarray | None) -> np.ndarray | None:
    """The classes of a scene's own mask combined with the detector's (:attr:`ClearPolicy.source`
    "combined"): a pixel either calls cloud, thin cloud or shadow is obscured; where both call it
    obscured, cloud wins over thin cloud over shadow. NODATA in ``mask`` stays NODATA (the scene's
    mask knows its data best); snow and clear stay as ``mask`` says where the detector sees nothing.

    Args:
        mask: (rows, cols) MaskClass codes of the scene's own mask, or None.
        detected: the detector's MaskClass codes on the same grid, or None.

    Returns:
        A new uint8 array, or the one given when the other is None (None when both are).
    """
    if detected is None:
        return mask
    if mask is None:
        return detected
    out = np.array(mask, dtype=np.uint8, copy=True)
    known = out != MaskClass.NODATA
    for cls in (MaskClass.SHADOW, MaskClass.THIN_CLOUD, MaskClass.CLOUD):
        hit = known & (detected == cls)
        if cls == MaskClass.SHADOW:
            hit &= ~is_obscured(out)  # a mask's cloud is not turned into the detector's shadow
        out[hit] = cls
    return out


def buffer_obscured(classes: np.ndarray, px: int) -> np.ndarray:
    """Clear pixels (CLEAR or SNOW) within ``px`` pixels (a disk) of cloud, thin cloud or shadow
    take that class (cloud over thin cloud over shadow). A new array; outside it counts as clear."""
    out = np.array(classes, dtype=np.uint8, copy=True)
    if px <= 0:
        return out
    clear = is_clear(out)
    if not clear.any():
        return out
    # One dilation of priorities (cloud 3 > thin cloud 2 > shadow 1): the maximum within the disk is
    # the class a clear pixel takes, as three dilations in turn would give it.
    rank = _BUFFER_RANK[out]
    if not rank.any():
        return out
    near = _BUFFER_CLASS[dilate_disk(rank, px)]
    grow = clear & (near != 0)
    out[grow] = near[grow]
    return out


#: MaskClass code -> buffer priority (0: does not grow) and back.
_BUFFER_RANK = np.zeros(256, np.uint8)
_BUFFER_RANK[[MaskClass.SHADOW, MaskClass.THIN_CLOUD, MaskClass.CLOUD]] = (1, 2, 3)
_BUFFER_CLASS = np.zeros(256, np.uint8)
_BUFFER_CLASS[[1, 2, 3]] = (MaskClass.SHADOW, MaskClass.THIN_CLOUD, MaskClass.CLOUD)
