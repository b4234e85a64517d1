"""Spatial stage of cloud detection: smoothing, cloud shadows by projection, dilation, SCL codes.

Works on the whole scene's uint8 layers from :mod:`cloudclear.detect.pixels` (three bytes per
pixel: 360 MB for a 10980 x 10980 tile) and never makes a float copy of the whole scene:
smoothing and dilation run in row strips with a halo, and shadow matching runs on a grid
coarsened to at most :data:`MATCH_SIZE` pixels a side.

Shadows follow Fmask's idea (Zhu & Woodcock 2012): every cloud object is moved away from the sun
by the distance a cloud at height h casts its shadow (h tan(zenith)); the height kept is the
first peak of the share of the moved object that lands on dark pixels (or other clouds). The
shadow is then the dark pixels within a tolerance of the moved objects. When the sun's position is
unknown (no tags, no time and place), the direction comes from the image: the offset at which the
cloud mask best correlates with the dark-pixel map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cloudclear.detect import pixels as px
from cloudclear.detect.sun import SunAngles
from cloudclear.errors import ResourceLimitError

#: Shadow matching runs on a grid coarsened to at most this many pixels a side.
MATCH_SIZE = 2048
#: The most distances tried per cloud object.
MAX_DISTANCES = 300
#: Rows per strip for smoothing and dilation.
STRIP = 1024
#: The largest dilation radius accepted, pixels (10 km at 10 m). A strip of the dilation holds
#: ``STRIP + 2 * radius`` rows of 16 bytes a pixel, so the bound keeps a tile's dilation near 0.5 GB.
MAX_DILATION = 1000
# Up to this radius a disk-shaped structuring element is fastest; beyond it, a distance transform
# (same result, cost independent of the radius, where the element's cost grows with its area).
_DISK_UP_TO = 5
_EDT_STRIP = 128

# SCL codes written.
NODATA, SHADOW, VEGETATION, NOT_VEGETATED, WATER, CLOUD_RING, CLOUD, CIRRUS, SNOW = 0, 3, 4, 5, 6, 8, 9, 10, 11


@dataclass(frozen=True)
class SpatialOptions:
    """Parameters of the spatial stage.

    Attributes:
        cloud_dilation: grow clouds by this many pixels (written as SCL 8, cloud medium probability).
        shadow_dilation: grow shadows by this many pixels (SCL 3).
        min_height: lowest cloud height tried, metres.
        max_height: highest cloud height tried, metres.
        tolerance_m: how far from a moved cloud a dark pixel still counts as its shadow, metres.
        dark_fraction: a pixel is dark when NIR + SWIR1 is below this share of the clear median.
        min_match: the least share of a moved cloud on dark pixels for a shadow to be kept.
        shadows: find shadows at all.
    """

    cloud_dilation: int = 3
    shadow_dilation: int = 3
    min_height: float = 200.0
    max_height: float = 12000.0
    tolerance_m: float = 60.0
    dark_fraction: float = 0.6
    min_match: float = 0.3
    shadows: bool = True

    def __post_init__(self) -> None:
        if self.cloud_dilation < 0 or self.shadow_dilation < 0:
            raise ValueError("dilation must be 0 or more pixels")
        check_dilation(self)
        if not 0 <= self.min_height < self.max_height:
            raise ValueError("cloud heights need 0 <= min_height < max_height")


@dataclass(frozen=True)
class SpatialResult:
    """The mask and how it was found.

    Attributes:
        scl: uint8 Sen2Cor SCL codes.
        threshold: the score above which the smoothed score was cloud.
        sun: the solar angles used, or None when the direction came from the image (or shadows
            were not sought).
        shadow_direction: unit (row, col) step from a cloud to its shadow, or None.
        shadow_source: "sun" (angles), "image" (estimated), or why shadows were not sought.
    """

    scl: np.ndarray
    threshold: float
    sun: SunAngles | None
    shadow_direction: tuple[float, float] | None
    shadow_source: str


def _strips(height: int) -> range:
    return range(0, height, STRIP)


def _smoothed_above(score: np.ndarray, size: int, threshold: float, exclude: np.ndarray) -> np.ndarray:
    """score averaged over size x size pixels > threshold, strip by strip.

    Nodata pixels and ``exclude`` pixels (snow) are left out of the average, so a bright snowfield
    does not lift its neighbours' score.
    """
    from scipy import ndimage as ndi

    h = score.shape[0]
    out = np.zeros(score.shape, bool)
    if size <= 1:
        return (score > threshold) & ~exclude
    halo = size // 2 + 1
    for r0 in _strips(h):
        a, b = max(0, r0 - halo), min(h, r0 + STRIP + halo)
        v = ((score[a:b] > 0) & ~exclude[a:b]).astype(np.float32)
        s = score[a:b].astype(np.float32) * v
        num = ndi.uniform_filter(s, size, mode="nearest")
        den = ndi.uniform_filter(v, size, mode="nearest")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = num / den
        rows = slice(r0 - a, r0 - a + min(STRIP, h - r0))
        out[r0 : r0 + STRIP] = (mean[rows] > threshold) & (v[rows] > 0)
    return out


def check_dilation(options: SpatialOptions, height: int | None = None, width: int | None = None) -> None:
    """Refuse a dilation radius above :data:`MAX_DILATION` or larger than the scene, before any
    memory is spent on it.

    Args:
        options: the dilation radii to check.
        height: the scene's rows, if known.
        width: the scene's columns, if known.

    Raises:
        ResourceLimitError: naming the option, the radius and the limit.
    """
    for what, flag, radius in (
        ("cloud", "--dilate-cloud", options.cloud_dilation),
        ("shadow", "--dilate-shadow", options.shadow_dilation),
    ):
        if radius > MAX_DILATION:
            raise ResourceLimitError(
                f"{flag} {radius}: a {what} dilation radius above the limit of {MAX_DILATION} px "
                f"({MAX_DILATION * 10 // 1000} km at 10 m)"
            )
        if height is not None and width is not None and radius > max(height, width):
            raise ResourceLimitError(
                f"{flag} {radius}: a {what} dilation radius larger than the scene itself ({width} x {height} px); "
                f"at most {max(height, width)} px"
            )


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(x * x + y * y <= radius * radius + radius)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean mask by ``radius`` pixels (a disk), strip by strip.

    A pixel joins when a mask pixel lies within the disk ``x^2 + y^2 <= radius^2 + radius``
    around it, whichever way this is computed.

    Args:
        mask: (rows, cols) bool.
        radius: pixels; 0 returns a copy.

    Raises:
        ResourceLimitError: ``radius`` is above :data:`MAX_DILATION`.
    """
    from scipy import ndimage as ndi

    if radius <= 0:
        return mask.copy()
    if radius > MAX_DILATION:
        raise ResourceLimitError(f"dilation radius {radius} px: above the limit of {MAX_DILATION} px")
    h = mask.shape[0]
    out = np.zeros_like(mask)
    disk = _disk(radius) if radius <= _DISK_UP_TO else None
    # The distance transform holds ~24 bytes a pixel (float64 distances and its own int arrays):
    # shorter strips keep that near 50 MB on a full-width tile row band.
    step = STRIP if disk is not None else _EDT_STRIP
    for r0 in range(0, h, step):
        a, b = max(0, r0 - radius), min(h, r0 + step + radius)
        part = mask[a:b]
        if not part.any():
            continue
        if disk is not None:
            grown = ndi.binary_dilation(part, structure=disk)
        else:
            # Squared distances to the nearest mask pixel are integers: half a unit of slack
            # absorbs the rounding of the square root.
            dist = ndi.distance_transform_edt(~part)
            grown = dist * dist <= radius * radius + radius + 0.5
        out[r0 : r0 + step] = grown[r0 - a : r0 - a + min(step, h - r0)]
    return out


def _coarsen(mask: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return mask
    h, w = mask.shape
    hc, wc = -(-h // f), -(-w // f)
    out = np.zeros((hc, wc), np.float32)
    for r in range(hc):
        block = mask[r * f : (r + 1) * f]
        pad = wc * f - w
        if pad:
            block = np.pad(block, ((0, 0), (0, pad)))
        out[r] = block.reshape(block.shape[0], wc, f).mean(axis=(0, 2))
    return out > 0.5


def estimate_direction(cloud: np.ndarray, dark: np.ndarray, max_shift: float) -> tuple[float, float, float] | None:
    """The offset (rows, cols) from clouds to their shadows that best explains the dark pixels.

    The cross-correlation of the cloud mask with the dark map (by FFT), normalised by how many
    cloud pixels each offset keeps inside the image, peaks at the typical cloud-to-shadow offset.

    Returns:
        (d_row, d_col, lift): the offset in pixels and how much more often a moved cloud lands on
        dark pixels than a random pixel is dark; None when there is nothing to correlate.
    """
    h, w = cloud.shape
    n_cloud = float(cloud.sum())
    bg = float(dark.mean())
    if n_cloud < 4 or bg <= 0:
        return None
    shape = (2 * h, 2 * w)
    fc = np.conj(np.fft.rfft2(cloud.astype(np.float32), shape))
    corr = np.fft.irfft2(fc * np.fft.rfft2(dark.astype(np.float32), shape), shape)
    count = np.fft.irfft2(fc * np.fft.rfft2(np.ones((h, w), np.float32), shape), shape)
    dy = np.fft.fftfreq(2 * h, 1.0 / (2 * h))
    dx = np.fft.fftfreq(2 * w, 1.0 / (2 * w))
    dist = np.hypot(dy[:, None], dx[None, :])
    ok = (dist >= 2) & (dist <= max_shift) & (count > 0.2 * n_cloud)
    if not ok.any():
        return None
    score = np.where(ok, corr / np.maximum(count, 1.0), -1.0)
    i = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(dy[i[0]]), float(dx[i[1]]), float(score[i]) / bg


def _first_peak(sim: np.ndarray, floor: float) -> int | None:
    best, top = None, 0.0
    for j, s in enumerate(sim):
        if s > top:
            best, top = j, float(s)
        elif top >= floor and s < 0.9 * top:
            break
    return best if top >= floor else None


def project_shadows(
    cloud: np.ndarray,
    dark: np.ndarray,
    direction: tuple[float, float],
    distances: np.ndarray,
    min_match: float,
    sample: int = 1500,
) -> np.ndarray:
    """Move each cloud object along ``direction`` to where it best lands on dark pixels.

    Args:
        cloud: (rows, cols) bool cloud mask.
        dark: (rows, cols) bool candidate shadow pixels.
        direction: unit (row, col) step from a cloud towards its shadow.
        distances: the distances tried, pixels, increasing.
        min_match: the least share of moved pixels on dark (or cloud) pixels to keep a shadow.
        sample: at most this many pixels per object are moved while searching.

    Returns:
        (rows, cols) bool: the moved cloud objects.
    """
    from scipy import ndimage as ndi

    h, w = cloud.shape
    labels, n = ndi.label(cloud, structure=np.ones((3, 3), bool))
    out = np.zeros((h, w), bool)
    if n == 0 or distances.size == 0:
        return out
    target = dark | cloud
    uy, ux = direction
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        rr, cc = np.nonzero(labels[sl] == k)
        rr = rr + sl[0].start
        cc = cc + sl[1].start
        step = rr.size // sample + 1
        rs, cs = rr[::step], cc[::step]
        y = np.rint(rs[None, :] + distances[:, None] * uy).astype(np.int64)
        x = np.rint(cs[None, :] + distances[:, None] * ux).astype(np.int64)
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        yc, xc = np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)
        use = inside & (labels[yc, xc] != k)
        hit = use & target[yc, xc]
        n_use = use.sum(axis=1)
        sim = np.where(n_use >= max(3, 0.1 * rs.size), hit.sum(axis=1) / np.maximum(n_use, 1), 0.0)
        j = _first_peak(sim, min_match)
        if j is None:
            continue
        y1 = np.rint(rr + distances[j] * uy).astype(np.int64)
        x1 = np.rint(cc + distances[j] * ux).astype(np.int64)
        ok = (y1 >= 0) & (y1 < h) & (x1 >= 0) & (x1 < w)
        out[y1[ok], x1[ok]] = True
    return out


def shadow_step(sun: SunAngles, grid_north: float = 0.0) -> tuple[float, float]:
    """Unit (row, col) step from a cloud to its shadow on a north-up grid.

    Args:
        sun: solar angles; the shadow lies at azimuth + 180 deg.
        grid_north: clockwise angle from grid up to true north, degrees (the UTM convergence).
    """
    az = math.radians(sun.azimuth + 180.0 + grid_north)
    return -math.cos(az), math.sin(az)


def finish(
    det: px.Detector,
    score: np.ndarray,
    bright: np.ndarray,
    flags: np.ndarray,
    hist: np.ndarray,
    pixel_size: float,
    sun: SunAngles | None,
    options: SpatialOptions,
    grid_north: float = 0.0,
) -> SpatialResult:
    """Turn the per-pixel layers of a whole scene into a Sen2Cor-coded mask.

    Args:
        det: the detector that made ``score``.
        score: (rows, cols) uint8 cloud score, 0 = nodata.
        bright: (rows, cols) uint8 darkness layer.
        flags: (rows, cols) uint8 bit flags.
        hist: (256, 256) counts of (score, bright) over valid, non-water pixels.
        pixel_size: metres per pixel.
        sun: solar angles, or None to estimate the shadow direction from the image.
        options: see :class:`SpatialOptions`.
        grid_north: clockwise angle from grid up to true north, degrees.

    Raises:
        ResourceLimitError: a dilation radius larger than the scene or :data:`MAX_DILATION`.
    """
    check_dilation(options, *score.shape)
    valid = (flags & px.VALID) != 0
    threshold = det.threshold(hist.sum(axis=1))
    size = max(1, int(round(det.smooth_m / pixel_size)))
    size += 1 - size % 2
    veto = (flags & (px.NOTCLOUD | px.SNOW | px.WATER)) != 0
    snow = (flags & px.SNOW) != 0
    cloud = _smoothed_above(score, size, threshold, snow) & valid & ~veto
    cirrus = ((flags & px.CIRRUS) != 0) & ~cloud & valid

    shadow = np.zeros_like(cloud)
    direction: tuple[float, float] | None = None
    source = "no shadows sought"
    used_sun: SunAngles | None = None
    if options.shadows and cloud.any():
        # Clear darkness: median of the darkness layer over pixels whose score is below the cut.
        clear_hist = hist[: int(math.floor(threshold)) + 1].sum(axis=0)
        if clear_hist.sum() > 0:
            median = float(np.searchsorted(np.cumsum(clear_hist), 0.5 * clear_hist.sum()))
            dark = (bright < options.dark_fraction * median) & valid & ~cloud
            dark &= (flags & (px.WATER | px.SNOW)) == 0
            shadow, direction, source, used_sun = _shadows(cloud, dark, pixel_size, sun, options, grid_north)
        else:
            source = "no clear pixels to measure darkness"

    # Surface classes from the flags through a lookup table (one pass), then the obscured classes
    # on top, weakest first; putmask is several times faster than boolean-index assignment.
    scl = _SURFACE[flags]
    if options.shadow_dilation and shadow.any():
        np.putmask(scl, dilate(shadow, options.shadow_dilation) & valid, SHADOW)
    np.putmask(scl, shadow, SHADOW)
    np.putmask(scl, cirrus, CIRRUS)
    if options.cloud_dilation:
        np.putmask(scl, dilate(cloud, options.cloud_dilation) & valid, CLOUD_RING)
    np.putmask(scl, cloud, CLOUD)
    return SpatialResult(scl, threshold, used_sun, direction, source)


def _surface_table() -> np.ndarray:
    lut = np.full(256, NODATA, np.uint8)
    for f in range(256):
        if not f & px.VALID:
            continue
        lut[f] = SNOW if f & px.SNOW else WATER if f & px.WATER else VEGETATION if f & px.VEG else NOT_VEGETATED
    return lut


#: flags -> SCL code of the surface (nodata, snow, water, vegetation, not vegetated).
_SURFACE = _surface_table()


def _shadows(
    cloud: np.ndarray,
    dark: np.ndarray,
    pixel_size: float,
    sun: SunAngles | None,
    options: SpatialOptions,
    grid_north: float,
) -> tuple[np.ndarray, tuple[float, float] | None, str, SunAngles | None]:
    h, w = cloud.shape
    f = max(1, -(-max(h, w) // MATCH_SIZE))
    cloud_c, dark_c = _coarsen(cloud, f), _coarsen(dark, f)
    cpx = pixel_size * f
    if sun is not None:
        direction = shadow_step(sun, grid_north)
        tan = math.tan(math.radians(sun.zenith))
        d0, d1 = options.min_height * tan / cpx, options.max_height * tan / cpx
        source = f"sun ({sun.source})"
    else:
        # Up to 60 deg zenith, within half the scene.
        reach = min(options.max_height * math.tan(math.radians(60.0)) / cpx, min(cloud_c.shape) / 2)
        est = estimate_direction(cloud_c, dark_c, reach)
        if est is None or est[2] < 1.5:
            return np.zeros_like(cloud), None, "no sun angles and no clear cloud-shadow offset in the image", None
        dy, dx, _ = est
        length = math.hypot(dy, dx)
        direction = (dy / length, dx / length)
        d0, d1 = 0.0, min(reach, 4.0 * length)
        source = "image"
    # At most MAX_DISTANCES steps: finer than the tolerance on any scene, and the search stays
    # linear in the number of cloud objects.
    step = max(1.0, (d1 - d0) / MAX_DISTANCES)
    distances = np.arange(math.floor(d0), math.ceil(d1) + step, step, dtype=np.float64)
    moved = project_shadows(cloud_c, dark_c, direction, distances, options.min_match)
    tol = int(math.ceil(options.tolerance_m / cpx))
    moved = dilate(moved, tol)
    if f > 1:
        shadow = np.zeros_like(cloud)
        for r0 in _strips(h):
            r1 = min(h, r0 + STRIP)
            rows = moved[np.arange(r0, r1) // f]
            shadow[r0:r1] = np.repeat(rows, f, axis=1)[:, :w] & dark[r0:r1]
    else:
        shadow = moved & dark
    return shadow, direction, source, sun
