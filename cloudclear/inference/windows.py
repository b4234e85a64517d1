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


def hann_weights(length: int) -> np.ndarray:
    """A positive taper over ``length`` pixels: sin^2(pi (i + 0.5) / length), never zero."""
    i = np.arange(length, dtype=np.float64)
    return np.sin(np.pi * (i + 0.5) / length) ** 2


def blend_weights(rows: int, cols: int) -> np.ndarray:
    """The 2-D blending weight of a window: outer product of the two tapers, float32."""
    return np.outer(hann_weights(rows), hann_weights(cols)).astype(np.float32)
