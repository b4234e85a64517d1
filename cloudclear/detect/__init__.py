"""Compute cloud and cloud-shadow masks where a scene has none.

Two stages: a per-pixel stage (:mod:`cloudclear.detect.pixels`: spectral tests, strip by strip,
so a whole tile never sits in memory as floats) and a spatial stage
(:mod:`cloudclear.detect.spatial`: smoothing, shadows by projecting clouds away from the sun,
dilation). The result is a mask in Sen2Cor SCL codes, which every part of cloudclear reads.

Detectors (:data:`DETECTORS`): ``builtin`` (rules; needs B02, B03, B04 and B08 or B8A, better with
B11, B12, B10) and ``s2cloudless`` (an optional extra: ``pip install 'cloudclear[s2cloudless]'``).

For arrays in memory use :func:`detect_array`; for files on disk, :func:`cloudclear.detect.scene.mask_scene`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cloudclear.detect import pixels as px
from cloudclear.detect.pixels import DETECTORS, get_detector, pixel_layers, resolve_bands
from cloudclear.detect.spatial import SpatialOptions, SpatialResult, finish
from cloudclear.detect.sun import SunAngles, solar_position

__all__ = [
    "DETECTORS",
    "SpatialOptions",
    "SpatialResult",
    "SunAngles",
    "detect_array",
    "solar_position",
]


def detect_array(
    bands: Mapping[str, np.ndarray],
    *,
    valid: np.ndarray | None = None,
    detector: str = "builtin",
    pixel_size: float = 10.0,
    sun: SunAngles | None = None,
    options: SpatialOptions | None = None,
    grid_north: float = 0.0,
) -> SpatialResult:
    """Detect clouds and shadows on bands held in memory.

    Args:
        bands: band name ("B02", "B8A"...) -> reflectance (0..1), all the same (rows, cols) shape.
        valid: pixels with data; default: finite and non-zero in every band.
        detector: a key of :data:`DETECTORS`.
        pixel_size: metres per pixel.
        sun: solar angles; None estimates the shadow direction from the image.
        options: spatial options (dilation, cloud heights...).
        grid_north: clockwise angle from grid up to true north, degrees.

    Returns:
        A :class:`SpatialResult` whose ``scl`` holds Sen2Cor codes.

    Raises:
        MaskError: bands the detector needs are missing, or it is not installed.
    """
    det = get_detector(detector)
    mapping = resolve_bands(det, list(bands))
    refl = {k: np.asarray(bands[v], dtype=np.float32) for k, v in mapping.items()}
    if valid is None:
        valid = np.logical_and.reduce([np.isfinite(a) & (a != 0) for a in refl.values()])
    layers = pixel_layers(det, refl, valid)
    hist = histogram(layers.score, layers.bright, layers.flags)
    return finish(
        det,
        layers.score,
        layers.bright,
        layers.flags,
        hist,
        pixel_size,
        sun,
        options or SpatialOptions(),
        grid_north,
    )


def histogram(score: np.ndarray, bright: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """(256, 256) counts of (score, bright) over valid pixels that are not water."""
    keep = ((flags & px.VALID) != 0) & ((flags & px.WATER) == 0)
    idx = score[keep].astype(np.int64) * 256 + bright[keep]
    return np.bincount(idx, minlength=65536).reshape(256, 256)
