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
    ib, ia = np.where(has_b, before, 0), np.where(has_a, after, 0)
    rows, cols = np.indices((h, w))
    vb = stack[ib, :, rows, cols].astype(np.float32)  # (H, W, C)
    va = stack[ia, :, rows, cols].astype(np.float32)
    tb, ta = t[ib], t[ia]
    span = ta - tb
    frac = np.divide(target - tb, span, out=np.zeros_like(span), where=span > 0).astype(np.float32)
    both = has_b & has_a
    out = np.where(both[..., None], vb + (va - vb) * frac[..., None], np.where(has_b[..., None], vb, va))
    out[~(has_b | has_a)] = 0
    status = np.full((h, w), PixelStatus.RECONSTRUCTED, np.uint8)
    observed = both & (tb == target) & (ta == target)
    status[observed] = PixelStatus.OBSERVED
    status[~(has_b | has_a)] = PixelStatus.NODATA
    return np.moveaxis(out, -1, 0).astype(np.float32), status
