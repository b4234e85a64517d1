"""Cloud and shadow masks: recognise a mask's convention and decode it to one set of classes.

Every mask cloudclear reads, whatever its source, is decoded to the classes of :class:`MaskClass`
so that the catalog, sampling and inference count clouds the same way. The conventions known here
are a plain dict (:data:`CONVENTIONS`), name -> decoder, and the same dict drives detection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


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

#: s2cloudless' default probability threshold.
CLP_THRESHOLD = 0.4


def _decode_scl(data: np.ndarray, nodata: float | None) -> np.ndarray:
    lut = np.full(256, MaskClass.NODATA, dtype=np.uint8)
    for code, cls in SCL_TABLE.items():
        lut[code] = cls
    out = lut[np.clip(data, 0, 255).astype(np.uint8)]
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
    "SCL": _decode_scl,
    "CLM": _decode_binary,
    "CLP": _probability_decoder(255.0),
    "CLDPRB": _probability_decoder(100.0),
}

# How a band description or a file-name token names a convention, best first. Sen2Cor SCL wins
# because it also marks shadows; a probability is the last resort.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("SCL", re.compile(r"^(SCL|SCENE[_ ]?CLASSIFICATION)\b", re.I)),
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
    return decoder(data, nodata)
