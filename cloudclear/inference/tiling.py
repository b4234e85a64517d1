"""Tiled prediction of an in-memory array with a :class:`~cloudclear.inference.windows.WindowPlan`.

The whole-tile pipeline streams strips through the same window maths; this module holds the
per-window loop (batching, margin crop or Hann blending) so that both share it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cloudclear.inference.windows import Window2D, WindowPlan, blend_weights

Predict = Callable[[np.ndarray], np.ndarray]


def pad_to(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad (channels, rows, cols) at the bottom and right to ``height`` x ``width``."""
    ph, pw = height - x.shape[1], width - x.shape[2]
    if ph == 0 and pw == 0:
        return x
    # Only the true border is padded (bottom / right, to the pooling grid); reflect as the
    # anchors do, so the padded pixels look like the image.
    if x.shape[1] > ph and x.shape[2] > pw:
        return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge")


def predict_array(
    x: np.ndarray,
    predict: Predict,
    plan: WindowPlan,
    *,
    blend: bool = False,
    batch: int = 8,
    out_channels: int | None = None,
) -> np.ndarray:
    """Predict ``x`` (channels, height, width) window by window.

    Args:
        x: the input stack, float32.
        predict: maps a batch (n, channels, window, window) to (n, out_channels, window, window).
        plan: the windows; its height and width must be ``x``'s.
        blend: Hann-blend overlapping windows instead of keeping only each core.
        batch: windows per call of ``predict``.
        out_channels: channels ``predict`` returns (default: ``x``'s).

    Returns:
        (out_channels, height, width) float32.
    """
    if x.shape[1:] != (plan.height, plan.width):
        raise ValueError(f"plan is for {plan.height} x {plan.width}, array is {x.shape[1]} x {x.shape[2]}")
    xp = pad_to(x, plan.padded_height, plan.padded_width)
    channels = out_channels or x.shape[0]
    out = np.zeros((channels, plan.padded_height, plan.padded_width), np.float32)
    weight = np.zeros((plan.padded_height, plan.padded_width), np.float32) if blend else None
    windows = plan.windows()
    for i in range(0, len(windows), batch):
        group = windows[i : i + batch]
        # Windows in a batch share one shape except where the image is smaller than a window.
        shapes = {(w.rows.length, w.cols.length) for w in group}
        for shape in shapes:
            same = [w for w in group if (w.rows.length, w.cols.length) == shape]
            stack = np.stack([xp[:, w.rows.start : w.rows.stop, w.cols.start : w.cols.stop] for w in same])
            pred = predict(stack)
            for w, p in zip(same, pred, strict=True):
                _place(out, weight, w, p, blend)
    if weight is not None:
        out /= weight
    return out[:, : plan.height, : plan.width]


def _place(out: np.ndarray, weight: np.ndarray | None, w: Window2D, p: np.ndarray, blend: bool) -> None:
    r, c = w.rows, w.cols
    if blend:
        assert weight is not None
        wt = blend_weights(r.length, c.length)
        out[:, r.start : r.stop, c.start : c.stop] += p * wt
        weight[r.start : r.stop, c.start : c.stop] += wt
        return
    rs = slice(r.core_start - r.start, r.core_stop - r.start)
    cs = slice(c.core_start - c.start, c.core_stop - c.start)
    out[:, r.core_start : r.core_stop, c.core_start : c.core_stop] = p[:, rs, cs]
