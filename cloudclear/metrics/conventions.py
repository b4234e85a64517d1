"""Scoring conventions: which pixels, how images combine, the SSIM window, and :class:`ScoreOptions`.

The anchors disagree on conventions (DESIGN.md section 8); each registry here is a plain dict
(name -> meaning) that feeds the CLI's choices and the validation below.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cloudclear import masks
from cloudclear.errors import ScoreError
from cloudclear.masks import MaskClass

#: Which pixels are scored, given the input date's cloud mask: name -> (classes, help).
PIXEL_SETS: dict[str, tuple[tuple[int, ...] | None, str]] = {
    "all": (None, "every pixel valid in both rasters"),
    "cloudy": (tuple(masks.OBSCURED), "pixels the mask calls cloud, thin cloud or shadow"),
    "clear": (masks.CLEAR_CLASSES, "pixels the mask calls clear (snow included)"),
    "occluded": (
        (*masks.OBSCURED, MaskClass.NODATA),
        "pixels the input did not observe: cloud, thin cloud, shadow or nodata in the mask (U-TILISE)",
    ),
    "observed": (masks.CLEAR_CLASSES, "pixels the input observed; the same set as clear (U-TILISE)"),
}

#: How figures over several images combine.
AGGREGATIONS = {
    "pooled": "one sum over every scored pixel of every image (Decloud)",
    "per-image": "figures per image, then their mean (UnCRtainTS)",
}


#: SSIM's stabilising constants, as fractions of the data range (Wang et al. 2004).
SSIM_K1, SSIM_K2 = 0.01, 0.03


@dataclass(frozen=True)
class SsimWindow:
    """An SSIM window: its 1-D kernel (separable) and the covariance normalisation."""

    name: str
    kernel: tuple[float, ...]
    sample_covariance: bool
    help: str

    @property
    def radius(self) -> int:
        """Pixels from the window's centre to its edge."""
        return len(self.kernel) // 2

    def covariance_norm(self) -> float:
        """The factor on local (co)variances: n / (n - 1) over the window's n pixels for the
        sample covariance, else 1."""
        n = len(self.kernel) ** 2
        return n / (n - 1.0) if self.sample_covariance else 1.0

    @staticmethod
    def constants(peak: float) -> tuple[float, float]:
        """SSIM's C1 and C2 for data ranging over ``peak``: (K1 peak)^2 and (K2 peak)^2."""
        return (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2

    def float32_kernel(self) -> np.ndarray:
        """The kernel in float32, each weight rounded up or down so that their exact sum is as
        near 1 as such roundings get (:func:`float32_weights`)."""
        return float32_weights(self.kernel)


@functools.cache
def float32_weights(kernel: tuple[float, ...]) -> np.ndarray:
    """``kernel``'s weights in float32, each the float32 just below or just above it, picked (in
    symmetric pairs, largest steps first) to bring their exact sum nearest 1.

    Rounded to nearest, seven weights of 1/7 sum to 1 + 4.5e-8: every local mean, variance and
    covariance would be scaled by (1 + 4.5e-8)^2, a bias of about 1e-8 in the mean SSIM, where
    rounding errors are otherwise random.
    """
    exact = np.asarray(kernel, np.float64)
    k = exact.astype(np.float32)
    n = len(k)
    for i in np.argsort(-np.spacing(k[: (n + 1) // 2]), kind="stable"):
        group = sorted({int(i), n - 1 - int(i)})  # a weight and its mirror image
        err = float(k.astype(np.float64).sum()) - 1.0
        other = np.nextafter(k[group], np.float32(-np.inf if err > 0 else np.inf))
        # Only the other rounding of the exact weight (never further), and only when it helps.
        if np.all(np.abs(other - exact[group]) < np.spacing(k[group])):
            if abs(err + float((other.astype(np.float64) - k[group]).sum())) < abs(err):
                k[group] = other
    k.flags.writeable = False
    return k


def _gaussian_kernel(sigma: float, truncate: float) -> tuple[float, ...]:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return tuple(float(v) for v in k / k.sum())


#: SSIM windows: name -> window.
SSIM_WINDOWS: dict[str, SsimWindow] = {
    "gaussian": SsimWindow(
        "gaussian", _gaussian_kernel(1.5, 3.5), False, "11 x 11 Gaussian, sigma 1.5 (Wang et al. 2004)"
    ),
    "uniform": SsimWindow("uniform", (1.0 / 7,) * 7, True, "7 x 7 uniform, sample covariance (scikit-image default)"),
}

SAM_UNITS = ("deg", "rad")


@dataclass(frozen=True)
class ScoreOptions:
    """Conventions for :func:`score`.

    Attributes:
        pixels: a key of :data:`PIXEL_SETS`, or "auto" (cloudy with a mask, all without).
        aggregate: a key of :data:`AGGREGATIONS` (matters when several images are combined).
        scale: reflectance = DN / scale for files whose metadata give no scale.
        peak: the PSNR peak and SSIM data range, in reflectance units (1.0; 10000 with scale 1).
        clip: clip reflectance to [0, peak] first, as the anchors' normalisation does.
        sam_units: "deg" or "rad".
        nodata: a value to ignore in both rasters, overriding their own; None: the files' nodata.
            A pixel is nodata when every band holds it (or any band is NaN).
        bands: bands to score, by name ("B04") or 1-based index ("3"); None: all, matched by name.
        ssim_window: a key of :data:`SSIM_WINDOWS`.
        reproject: warp the prediction onto the reference grid when the CRS or resolution differ.
        block_rows: rows per strip read at once (memory grows with it, not with the tile).
    """

    pixels: str = "auto"
    aggregate: str = "pooled"
    scale: float = 10000.0
    peak: float = 1.0
    clip: bool = True
    sam_units: str = "deg"
    nodata: float | None = None
    bands: tuple[str, ...] | None = None
    ssim_window: str = "gaussian"
    reproject: bool = False
    block_rows: int = 512

    def __post_init__(self) -> None:
        if self.pixels != "auto" and self.pixels not in PIXEL_SETS:
            raise ScoreError(f"unknown pixel set {self.pixels!r}; choose auto, {', '.join(PIXEL_SETS)}")
        if self.aggregate not in AGGREGATIONS:
            raise ScoreError(f"unknown aggregation {self.aggregate!r}; choose {', '.join(AGGREGATIONS)}")
        if self.sam_units not in SAM_UNITS:
            raise ScoreError(f"unknown SAM unit {self.sam_units!r}; choose {', '.join(SAM_UNITS)}")
        if self.ssim_window not in SSIM_WINDOWS:
            raise ScoreError(f"unknown SSIM window {self.ssim_window!r}; choose {', '.join(SSIM_WINDOWS)}")
        if not self.peak > 0 or not self.scale > 0:
            raise ScoreError("--peak and --scale must be positive")
        if self.block_rows < 1:
            raise ScoreError("block_rows must be at least 1")
