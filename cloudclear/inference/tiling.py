"""The window loop of tiled inference, shared by the whole-tile pipeline and in-memory arrays.

A :class:`~cloudclear.inference.windows.WindowPlan` cuts an image into rows of windows.
:func:`predict_row` runs one row of windows through a network in batches and keeps, per window,
only its core (margin crop) or every pixel weighted by a Hann taper (blend);
:class:`BlendAccumulator` sums blended rows until no later window row touches them. The pipeline
(:mod:`cloudclear.inference.pipeline`) drives these over strips streamed from disk, feeding each
batch from :class:`~cloudclear.inference.methods.NetMethod`; :func:`predict_array` drives the same
loop over an array in memory. Both therefore give the same values, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cloudclear.inference.windows import Span, WindowPlan, blend_weights

Predict = Callable[[np.ndarray], np.ndarray]
#: Maps the column spans of a batch of windows of one window row to the network's output for
#: them, (n, channels, window rows, window cols) float32 in output units.
PredictBatch = Callable[[Sequence[Span]], np.ndarray]


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


@dataclass
class RowPrediction:
    """What one row of windows predicted, across the padded width.

    Attributes:
        values: margin crop: (channels, core rows, padded width), each window's core; blend:
            (channels, window rows, padded width), predictions times their blend weights, summed.
        weight: blend: (window rows, padded width) summed weights; None for margin crop.
    """

    values: np.ndarray
    weight: np.ndarray | None


def predict_row(
    span: Span,
    plan: WindowPlan,
    predict: PredictBatch,
    channels: int,
    *,
    blend: bool = False,
    batch: int = 8,
    columns: Sequence[Span] | None = None,
) -> RowPrediction:
    """Predict one row of windows (rows ``span``), ``batch`` windows per call of ``predict``.

    Args:
        span: the window row: rows read ``[span.start, span.stop)``, core rows kept.
        plan: the window plan (column spans and padded width).
        predict: the network on a batch of windows of this row, see :data:`PredictBatch`.
        channels: output channels.
        blend: Hann-blend the windows instead of keeping only their cores.
        batch: windows per call of ``predict``.
        columns: the column spans to run (default: all of the plan's); windows left out (all
            nodata) stay zero, with zero weight.
    """
    pw = plan.padded_width
    rows = span.length
    cols = plan.spans(pw) if columns is None else list(columns)
    if blend:
        values = np.zeros((channels, rows, pw), np.float32)
        weight: np.ndarray | None = np.zeros((rows, pw), np.float32)
    else:
        values = np.zeros((channels, span.core_stop - span.core_start, pw), np.float32)
        weight = None
    r_core = slice(span.core_start - span.start, span.core_stop - span.start)
    for i in range(0, len(cols), batch):
        group = cols[i : i + batch]
        out = predict(group)
        for c, p in zip(group, out, strict=True):
            if weight is not None:
                wt = blend_weights(rows, c.length)
                values[:, :, c.start : c.stop] += p * wt
                weight[:, c.start : c.stop] += wt
            else:
                cc = slice(c.core_start - c.start, c.core_stop - c.start)
                values[:, :, c.core_start : c.core_stop] = p[:, r_core, cc]
    return RowPrediction(values, weight)


class BlendAccumulator:
    """Blend-mode sums for the rows not yet final (fp32, as wide as the output), and optionally a
    per-pixel status (the last window row's wins).

    Args:
        channels: output channels.
        width: output columns.
        status: keep a uint8 status per row as well.
    """

    def __init__(self, channels: int, width: int, status: bool = False):
        self.r0 = 0
        self.values = np.zeros((channels, 0, width), np.float32)
        self.weight = np.zeros((0, width), np.float32)
        self.status = np.zeros((0, width), np.uint8) if status else None

    def add(self, start: int, values: np.ndarray, weight: np.ndarray, status: np.ndarray | None = None) -> None:
        """Add a window row's weighted sums starting at row ``start`` (never before the last pop)."""
        h = weight.shape[0]
        stop = start + h
        have = self.r0 + self.weight.shape[0]
        if stop > have:
            grow = stop - have
            self.values = np.concatenate(
                [self.values, np.zeros((self.values.shape[0], grow, self.values.shape[2]), np.float32)], 1
            )
            self.weight = np.concatenate([self.weight, np.zeros((grow, self.weight.shape[1]), np.float32)], 0)
            if self.status is not None:
                self.status = np.concatenate([self.status, np.zeros((grow, self.status.shape[1]), np.uint8)], 0)
        a = start - self.r0
        self.values[:, a : a + h] += values
        self.weight[a : a + h] += weight
        if self.status is not None and status is not None:
            self.status[a : a + h] = status

    def pop(self, until: int) -> tuple[int, np.ndarray, np.ndarray | None] | None:
        """The final rows up to ``until`` (exclusive): their first row, blended values and status,
        or None when there are none."""
        n = until - self.r0
        if n <= 0:
            return None
        w = self.weight[:n]
        vals = np.divide(self.values[:, :n], w, out=np.zeros_like(self.values[:, :n]), where=w > 0)
        st = self.status[:n].copy() if self.status is not None else None
        r0 = self.r0
        self.values, self.weight = self.values[:, n:], self.weight[n:]
        if self.status is not None:
            self.status = self.status[n:]
        self.r0 = until
        return r0, vals, st


def predict_array(
    x: np.ndarray,
    predict: Predict,
    plan: WindowPlan,
    *,
    blend: bool = False,
    batch: int = 8,
    out_channels: int | None = None,
) -> np.ndarray:
    """Predict ``x`` (channels, height, width) window by window, with the pipeline's window loop.

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
    height, width = plan.height, plan.width
    out = np.zeros((channels, height, width), np.float32)
    acc = BlendAccumulator(channels, width) if blend else None
    spans = plan.spans(plan.padded_height)
    for k, span in enumerate(spans):

        def run(group: Sequence[Span], rows: Span = span) -> np.ndarray:
            return predict(np.stack([xp[:, rows.start : rows.stop, c.start : c.stop] for c in group]))

        res = predict_row(span, plan, run, channels, blend=blend, batch=batch)
        if acc is not None:
            assert res.weight is not None
            acc.add(span.start, res.values[:, :, :width], res.weight[:, :width])
            nxt = spans[k + 1].start if k + 1 < len(spans) else height
            popped = acc.pop(min(nxt, height))
            if popped is not None:
                r0, vals, _ = popped
                out[:, r0 : r0 + vals.shape[1]] = vals
        else:
            r0, r1 = span.core_start, min(span.core_stop, height)
            out[:, r0:r1] = res.values[:, : r1 - r0, :width]
    return out
