"""Gap filling: per-pixel linear interpolation in time between the nearest clear observations.

The deterministic baseline of Decloud and U-TILISE. For a target time t and each pixel, take the
last clear observation at or before t and the first at or after t; interpolate linearly in time
between them, or copy the one that exists at the ends of the series. A clear observation at t
itself is kept as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

import numpy as np


class PixelStatus(IntEnum):
    """What happened to each output pixel (the status band written beside the reconstruction)."""

    NODATA = 0
    OBSERVED = 1
    RECONSTRUCTED = 2


def gapfill(
    stack: np.ndarray, clear: np.ndarray, times: Sequence[float], target: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fill a target date from the clear pixels of a time series.

    Args:
        stack: (T, C, H, W) values (reflectance or DN) of T acquisitions.
        clear: (T, H, W) True where the acquisition saw the surface (no cloud, shadow or nodata).
        times: acquisition times (days, any origin), ascending, one per acquisition.
        target: the time to reconstruct, in the same units.

    Returns:
        (C, H, W) float32 values (0 where no acquisition is clear) and an (H, W) uint8
        :class:`PixelStatus` array.
    """
    t = np.asarray(times, dtype=np.float64)
    if stack.ndim != 4 or clear.shape != (stack.shape[0], *stack.shape[2:]) or t.shape != (stack.shape[0],):
        raise ValueError(f"stack {stack.shape}, clear {clear.shape} and {t.size} times do not match")
    if np.any(np.diff(t) < 0):
        raise ValueError("times must be ascending")
    n, c, h, w = stack.shape
    before = np.full((h, w), -1, np.int64)
    after = np.full((h, w), -1, np.int64)
    for i in range(n):  # last clear at or before the target
        if t[i] <= target:
            before[clear[i]] = i
    for i in range(n - 1, -1, -1):  # first clear at or after the target
        if t[i] >= target:
            after[clear[i]] = i
    has_b, has_a = before >= 0, after >= 0
    # A missing side takes the other side's index, so the interpolation copies it (span 0).
    ib = np.where(has_b, before, after)
    ia = np.where(has_a, after, before)
    none = ~(has_b | has_a)
    ib[none] = ia[none] = 0
    # take_along_axis gathers (C, H, W) directly: about 2x faster than fancy indexing per pixel.
    vb = np.take_along_axis(stack, ib[None, None], axis=0)[0].astype(np.float32, copy=False)
    va = np.take_along_axis(stack, ia[None, None], axis=0)[0].astype(np.float32, copy=False)
    tb, ta = t[ib], t[ia]
    span = ta - tb
    frac = np.divide(target - tb, span, out=np.zeros_like(span), where=span > 0).astype(np.float32)
    out = vb + (va - vb) * frac
    out[:, none] = 0
    status = np.full((h, w), PixelStatus.RECONSTRUCTED, np.uint8)
    status[has_b & has_a & (tb == target) & (ta == target)] = PixelStatus.OBSERVED
    status[none] = PixelStatus.NODATA
    return out, status
