"""Window plans for tiled inference: which input windows to read and which output pixels each keeps.

Two modes, as DESIGN.md section 7 sets out:

- **margin crop** (default, for fully convolutional networks): each window is an output *core*
  plus a margin of at least the receptive-field radius on every side that is not the image edge;
  only the core is kept, and the cores partition the image. Window origins, sizes and margins are
  multiples of the network's pooling factor, so every window sees the same pooling grid as a
  whole-image pass, and the result equals whole-image inference exactly: no seams, no accumulator.
- **blend** (networks with per-window context): the same windows, every predicted pixel kept and
  weighted by a positive Hann (sine-squared) taper, normalised by the summed weights.

The last window along an axis is shifted inward (its origin is ``size - window``) rather than
padded; only an image smaller than one window is padded, at its true border.

**Window size from a memory budget** (:func:`budget_window`): in margin-crop mode a window of side
``w`` keeps a core of ``w - 2 margin``, so a small window computes far more pixels than it writes
(a 256 px window with a 64 px margin computes 4x its core). The window is therefore the one, among
the multiples of ``align`` from the card's window (a minimum) up to the padded image, that fits a
memory budget and computes the fewest pixels (ties: the smaller); the memory of a batch is
``min(batch, windows per row) x rows x cols x bytes per pixel`` plus the window row's host arrays
(:func:`window_bytes`), the bytes per pixel measured once per network
(:func:`cloudclear.nets.feed.forward_bytes_per_pixel`). Memory thus follows the window and the
image width, never the number of rows. Any window with a margin of at
least the receptive-field radius on the pooling grid gives the same values, so the choice changes
time and memory, not the output. Blend mode keeps the card's window (the network saw windows of
that size in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    """One window along one axis: read [start, start + length), keep [core_start, core_stop)."""

    start: int
    length: int
    core_start: int
    core_stop: int

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Window2D:
    """A window to read (rows x cols) and the output core it contributes in margin-crop mode."""

    rows: Span
    cols: Span


def _round_up(value: int, step: int) -> int:
    return int(math.ceil(value / step) * step)


@dataclass(frozen=True)
class WindowPlan:
    """Windows that cover an image of ``height`` x ``width`` pixels.

    Attributes:
        height: image rows.
        width: image columns.
        window: window side in pixels (a multiple of ``align``); smaller only when the image is.
        margin: pixels discarded on each inner side of a window (>= the receptive-field radius).
        align: the network's pooling factor (2 ** number of downsamplings).
        padded_height: rows after padding to ``align`` at the bottom border (= height when aligned).
        padded_width: columns likewise.
    """

    height: int
    width: int
    window: int
    margin: int
    align: int
    padded_height: int
    padded_width: int

    @classmethod
    def build(cls, height: int, width: int, *, window: int = 512, radius: int = 0, align: int = 1) -> WindowPlan:
        """Plan windows for an image.

        Args:
            height: image rows.
            width: image columns.
            window: the preferred window side; rounded up to a multiple of ``align``.
            radius: the network's receptive-field radius; the margin is at least this, rounded up
                to a multiple of ``align``.
            align: the pooling factor; window origins and sizes are multiples of it.

        Raises:
            ValueError: the window leaves no core after two margins.
        """
        if height < 1 or width < 1:
            raise ValueError(f"image of {height} x {width} pixels has nothing to cover")
        if align < 1 or radius < 0:
            raise ValueError("align must be >= 1 and radius >= 0")
        margin = _round_up(radius, align)
        window = _round_up(window, align)
        if window - 2 * margin < align:
            need = 2 * margin + align
            raise ValueError(
                f"a {window} px window leaves no core after two margins of {margin} px "
                f"(receptive-field radius {radius}); use a window of at least {need} px"
            )
        return cls(height, width, window, margin, align, _round_up(height, align), _round_up(width, align))

    @property
    def core(self) -> int:
        return self.window - 2 * self.margin

    def spans(self, size: int) -> list[Span]:
        """Windows along an axis of ``size`` (padded) pixels."""
        win, core, margin = self.window, self.core, self.margin
        if size <= win:
            return [Span(0, size, 0, size)]
        spans = []
        for c in range(0, size, core):
            c_stop = min(c + core, size)
            start = min(max(c - margin, 0), size - win)
            spans.append(Span(start, win, c, c_stop))
        return spans

    def windows(self) -> list[Window2D]:
        """Every window, row-major; cores tile the padded image exactly."""
        rows = self.spans(self.padded_height)
        cols = self.spans(self.padded_width)
        return [Window2D(r, c) for r in rows for c in cols]


def axis_pixels(spans: list[Span]) -> int:
    """Pixels computed along one axis by these windows (overlaps counted every time)."""
    return sum(s.length for s in spans)


def window_bytes(plan: WindowPlan, batch: int, bytes_per_pixel: float, row_bytes_per_pixel: float = 0.0) -> float:
    """Memory of one batch of windows of ``plan``: the batch (at most one window row) times the
    window's rows and columns (an image smaller than the window gives a smaller window) times the
    network's bytes per pixel, plus the window row's host arrays (the inputs' rows and the
    predictions, ``row_bytes_per_pixel`` per pixel of the padded width)."""
    rows = min(plan.window, plan.padded_height)
    cols = plan.spans(plan.padded_width)
    net = min(batch, len(cols)) * rows * cols[0].length * bytes_per_pixel
    return net + rows * plan.padded_width * row_bytes_per_pixel


def budget_window(
    height: int,
    width: int,
    *,
    budget: float,
    bytes_per_pixel: float,
    batch: int,
    minimum: int,
    radius: int = 0,
    align: int = 1,
    row_bytes_per_pixel: float = 0.0,
) -> int:
    """The window side for an image under a memory budget (margin-crop mode).

    Among the multiples of ``align`` from ``minimum`` (rounded up to ``align``) to the larger padded
    image side, the windows whose batch fits ``budget`` (:func:`window_bytes`); of those, the one
    that computes the fewest pixels, and the smallest such (a window a little smaller than the image
    can cost two heavily overlapping windows where a smaller one costs fewer pixels). ``minimum``
    itself when nothing larger fits: it is the floor, never undercut.

    Args:
        height: image rows.
        width: image columns.
        budget: bytes one batch of windows may take.
        bytes_per_pixel: memory of the network per window pixel (activations, inputs, output).
        batch: windows per network call.
        minimum: the smallest window (the card's).
        radius: the receptive-field radius (the margin).
        align: the pooling factor.
        row_bytes_per_pixel: host memory per pixel of a window row (see :func:`window_bytes`).

    Raises:
        ValueError: ``minimum`` leaves no core (as :meth:`WindowPlan.build`).
    """

    def computed(plan: WindowPlan) -> int:
        return axis_pixels(plan.spans(plan.padded_height)) * axis_pixels(plan.spans(plan.padded_width))

    best = WindowPlan.build(height, width, window=minimum, radius=radius, align=align)
    top = _round_up(max(best.padded_height, best.padded_width), align)
    best_cost = computed(best)
    for side in range(best.window + align, top + 1, align):
        plan = WindowPlan.build(height, width, window=side, radius=radius, align=align)
        if window_bytes(plan, batch, bytes_per_pixel, row_bytes_per_pixel) > budget:
            continue  # not monotonic: fewer windows per row can mean a smaller batch
        cost = computed(plan)
        if cost < best_cost:
            best, best_cost = plan, cost
    return best.window


def hann_weights(length: int) -> np.ndarray:
    """A positive taper over ``length`` pixels: sin^2(pi (i + 0.5) / length), never zero."""
    i = np.arange(length, dtype=np.float64)
    return np.sin(np.pi * (i + 0.5) / length) ** 2


def blend_weights(rows: int, cols: int) -> np.ndarray:
    """The 2-D blending weight of a window: outer product of the two tapers, float32."""
    return np.outer(hann_weights(rows), hann_weights(cols)).astype(np.float32)
