"""Per-pixel stage of cloud detection: spectral tests that need no neighbours, strip by strip.

Each detector turns reflectances (0..1) into three uint8 layers that the spatial stage
(:mod:`cloudclear.detect.spatial`) finishes on the whole scene:

* ``score``: how cloudy a pixel looks, quantised (0 = nodata). The built-in detector uses the haze
  optimised transform HOT = B02 - 0.5 B04 (Zhang et al. 2002): clear land and water lie on a line
  of low HOT whatever their brightness, while cloud and haze raise blue with red, so HOT grows with
  cloud optical thickness. The threshold is relative to the scene's own clear baseline (its 10th
  percentile), so top-of-atmosphere (L1C) and surface (L2A) reflectances both work. s2cloudless
  gives its cloud probability instead.
* ``bright``: NIR + SWIR1 (NIR alone without B11), the darkness that cloud shadows show.
* ``flags``: bit flags: valid, snow, water, vegetation, cirrus, and "fails a cloud test"
  (Fmask's whiteness, NIR/SWIR1 and SWIR2 tests), which vetoes cloud after smoothing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudclear.errors import MaskError

VALID, SNOW, WATER, VEG, CIRRUS, NOTCLOUD = 1, 2, 4, 8, 16, 32

#: HOT quantisation: score = (HOT - HOT_MIN) / HOT_STEP, 1..255.
HOT_MIN, HOT_STEP = -0.1, 0.002
#: Darkness quantisation: bright = (NIR + SWIR1) / BRIGHT_STEP, 0..255.
BRIGHT_STEP = 0.006
#: B10 (1.38 um, TOA) reflectance above which a pixel is thin cirrus, for every detector.
CIRRUS_REFLECTANCE = 0.012


@dataclass(frozen=True)
class PixelLayers:
    """The per-pixel stage's output for one strip (see the module docstring)."""

    score: np.ndarray
    bright: np.ndarray
    flags: np.ndarray


class BuiltinDetector:
    """Rule-based detector on B02, B03, B04 and NIR (B08 or B8A); better with B11, B12, B10.

    Attributes:
        hot_excess: cloud where the locally averaged HOT exceeds the scene's clear baseline by
            this much (reflectance).
        smooth_m: the averaging window for HOT, in metres.
        cirrus: B10 (1.38 um, TOA) reflectance above which a pixel is thin cirrus.
    """

    name = "builtin"
    needs = ("B02", "B03", "B04", "B08")
    alternatives = {"B08": "B8A"}
    optional = ("B10", "B11", "B12")

    def __init__(self, hot_excess: float = 0.045, smooth_m: float = 50.0, cirrus: float = CIRRUS_REFLECTANCE):
        self.hot_excess = hot_excess
        self.smooth_m = smooth_m
        self.cirrus = cirrus

    def unavailable(self) -> str | None:
        """Why the detector cannot run here (a missing package), or None."""
        return None

    def score(self, refl: Mapping[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
        hot = refl["B02"] - 0.5 * refl["B04"]
        q = np.clip(np.rint((hot - HOT_MIN) / HOT_STEP), 1, 255).astype(np.uint8)
        q[~valid] = 0
        return q

    def threshold(self, hist: np.ndarray) -> float:
        """The score above which the smoothed score means cloud, from the scene's score histogram.

        The clear baseline is the 10th percentile of HOT; it is capped at 0.09 (a bright, hazy
        clear scene) so that a scene that is almost all cloud still finds its clouds.
        """
        total = hist[1:].sum()
        if total == 0:
            return 255.0
        cum = np.cumsum(hist[1:])
        base = 1 + int(np.searchsorted(cum, 0.10 * total))
        base = min(base, int(round((0.09 - HOT_MIN) / HOT_STEP)))
        return base + self.hot_excess / HOT_STEP


class S2CloudlessDetector:
    """Sentinel Hub's s2cloudless (LightGBM on ten L1C bands), an optional extra.

    Its model ships in the wheel, so it runs offline. Like the package's own ``CloudMasker``, the
    probability is averaged over ``smooth_m`` metres and thresholded at 0.4; shadows come from the
    shared spatial stage.
    """

    name = "s2cloudless"
    needs = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")
    alternatives: dict[str, str] = {}
    optional = ("B03",)

    def __init__(self, probability: float = 0.4, smooth_m: float = 220.0):
        self.probability = probability
        self.smooth_m = smooth_m
        self.cirrus = CIRRUS_REFLECTANCE

    def unavailable(self) -> str | None:
        try:
            import s2cloudless  # noqa: F401
        except ImportError:
            return "the s2cloudless detector needs the optional package: pip install 'cloudclear[s2cloudless]'"
        return None

    def score(self, refl: Mapping[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
        stack = np.stack([refl[b] for b in self.needs], axis=-1)[None]
        prob = _s2cloudless_classifier().get_cloud_probability_maps(np.nan_to_num(stack))[0]
        q = np.clip(np.rint(prob * 254.0) + 1, 1, 255).astype(np.uint8)
        q[~valid] = 0
        return q

    def threshold(self, hist: np.ndarray) -> float:
        return 1 + self.probability * 254.0


@functools.cache
def _s2cloudless_classifier() -> Any:
    """s2cloudless' LightGBM classifier, loaded once per process (about 1 s), not once per scene."""
    from s2cloudless import S2PixelCloudDetector

    return S2PixelCloudDetector(all_bands=False)


Detector = BuiltinDetector | S2CloudlessDetector

#: Detectors by name; the same dict feeds the CLI choices and the error for a wrong name.
DETECTORS: dict[str, type[BuiltinDetector] | type[S2CloudlessDetector]] = {
    "builtin": BuiltinDetector,
    "s2cloudless": S2CloudlessDetector,
}


def get_detector(name: str) -> Detector:
    """A detector by name.

    Raises:
        MaskError: unknown name (the message lists the known ones) or a missing optional package.
    """
    try:
        det = DETECTORS[name]()
    except KeyError:
        raise MaskError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}") from None
    why = det.unavailable()
    if why:
        raise MaskError(why)
    return det


def resolve_bands(det: Detector, available: Sequence[str]) -> dict[str, str]:
    """Map each band the detector reads to the band the scene has (B8A standing in for B08).

    Raises:
        MaskError: naming the bands that are missing.
    """
    have = set(available)
    mapping: dict[str, str] = {}
    missing = []
    for b in det.needs:
        if b in have:
            mapping[b] = b
        elif det.alternatives.get(b) in have:
            mapping[b] = det.alternatives[b]
        else:
            alt = det.alternatives.get(b)
            missing.append(f"{b} (or {alt})" if alt else b)
    if missing:
        raise MaskError(
            f"the {det.name} detector needs {', '.join(det.needs)}; missing {', '.join(missing)} "
            f"(the scene has {', '.join(available) or 'no S2 bands'})"
        )
    for b in det.optional:
        if b in have:
            mapping[b] = b
    return mapping


def pixel_layers(det: Detector, refl: Mapping[str, np.ndarray], valid: np.ndarray) -> PixelLayers:
    """Run the per-pixel stage on one strip.

    Args:
        det: the detector.
        refl: band name -> reflectance (0..1) float32, each (rows, cols); keys as the detector
            names them (see :func:`resolve_bands`).
        valid: (rows, cols) bool, pixels with data in every band read.
    """
    score = det.score(refl, valid)
    b, g, r, n = refl["B02"], refl["B03"], refl["B04"], refl["B08"]
    s1 = refl.get("B11")
    s2 = refl.get("B12")
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (n - r) / (n + r)
        vis = (b + g + r) / 3.0
        whiteness = (np.abs(b - vis) + np.abs(g - vis) + np.abs(r - vis)) / vis
        flags = np.where(valid, VALID, 0).astype(np.uint8)
        notcloud = whiteness > 0.7
        if s1 is not None:
            ndsi = (g - s1) / (g + s1)
            flags |= np.where((ndsi > 0.4) & (n > 0.11) & (g > 0.1), SNOW, 0).astype(np.uint8)
            notcloud |= n / s1 < 0.75
        if s2 is not None:
            notcloud |= s2 < 0.03
        water = ((ndvi < 0.01) & (n < 0.11)) | ((ndvi < 0.1) & (n < 0.05))
        flags |= np.where(water, WATER, 0).astype(np.uint8)
        flags |= np.where(ndvi > 0.4, VEG, 0).astype(np.uint8)
        flags |= np.where(notcloud, NOTCLOUD, 0).astype(np.uint8)
        if "B10" in refl:
            flags |= np.where(refl["B10"] > det.cirrus, CIRRUS, 0).astype(np.uint8)
        dark = n + s1 if s1 is not None else n
        bright = np.clip(np.rint(np.nan_to_num(dark) / BRIGHT_STEP), 0, 255).astype(np.uint8)
    flags[~valid] = 0
    return PixelLayers(score, bright, flags)
