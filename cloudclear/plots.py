"""Figures for scores: RGB quicklooks of input, prediction and reference, error maps, per-band bars.

matplotlib is driven through its object API (no pyplot state), so figures can be drawn from
threads and never open a window. Every PNG is written through
:func:`cloudclear.outputs.atomic_output` (complete or absent, an existing one untouched on failure).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cloudclear.metrics import Comparison, Pair, Quicklook, Score, ScoreOptions, input_view, quicklook
from cloudclear.outputs import atomic_output, check_target, output_error


def stretch(rgb: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Scale (3, h, w) reflectance to [0, 1] per band between ``low`` and ``high``; NaN -> 0.

    Returns:
        An (h, w, 3) array ready for ``imshow``.
    """
    span = np.where(high > low, high - low, 1.0)
    out = (rgb - low[:, None, None]) / span[:, None, None]
    out = np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)
    return np.moveaxis(out, 0, -1)


def percentiles(rgb: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-band 2-98 % cut points of (3, h, w) reflectance, ignoring NaN."""
    flat = rgb.reshape(rgb.shape[0], -1)
    lows, highs = [], []
    for band in flat:
        vals = band[np.isfinite(band)]
        if vals.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        a, b = np.percentile(vals, [lo, hi])
        lows.append(float(a))
        highs.append(float(b))
    return np.asarray(lows), np.asarray(highs)


def _rgb(view: np.ndarray, idx: tuple[int, int, int] | None) -> np.ndarray:
    if idx is None:
        return np.repeat(view[:1], 3, axis=0)
    return view[list(idx)]


def error_map(q: Quicklook) -> np.ndarray:
    """Mean absolute error over bands per pixel; NaN where the pixel is not scored."""
    err = np.abs(q.pred - q.ref).mean(axis=0)
    err[~q.selected] = np.nan
    return err


def plot_scores(
    dst_path: str | os.PathLike[str],
    views: Sequence[Quicklook],
    scores: Sequence[Score],
    *,
    title: str | None = None,
    dpi: int = 110,
    overwrite: bool = False,
) -> Path:
    """Write a PNG: quicklooks (input if known, reference, each prediction), an error map under
    each prediction, and a per-band bar chart of RMSE with PSNR labels.

    Every RGB view is stretched with the reference's 2-98 % per band, so colours compare. The
    file is written through :func:`cloudclear.outputs.atomic_output`: it appears complete or not
    at all, and a PNG already there is untouched by a failed run.

    Args:
        dst_path: the PNG to write (its folder is created if missing).
        views: one :class:`~cloudclear.metrics.Quicklook` per prediction (the first one's
            reference and input are shown).
        scores: the matching scores, for the bar chart and panel titles.
        title: a figure title.
        dpi: resolution of the PNG.
        overwrite: replace an existing PNG.

    Raises:
        OutputExistsError: the PNG exists and ``overwrite`` is false.
        OutputError: the PNG cannot be written (read-only folder, disk full...).
    """
    if not views:
        raise ValueError("no quicklook to plot")
    dst = check_plot_target(dst_path, overwrite)
    with atomic_output(dst, overwrite=overwrite, what="plot") as tmp:
        _figure(views, scores, title).savefig(tmp, dpi=dpi, format="png")
    return dst


def check_plot_target(dst_path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Create the PNG's folder and refuse an existing PNG or an unwritable folder.

    Callers that score first (``cloudclear score --plot``) call it before scoring, so a refusal
    costs no reading.

    Raises:
        OutputExistsError: the PNG exists and ``overwrite`` is false.
        OutputError: the folder cannot be made or written.
    """
    dst = Path(dst_path)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(dst, exc, "plot") from exc
    return check_target(dst, overwrite, "plot")


def _figure(views: Sequence[Quicklook], scores: Sequence[Score], title: str | None) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    first = views[0]
    has_input = first.input is not None
    n_pred = len(views)
    ncols = n_pred + 1 + int(has_input)
    fig = Figure(figsize=(3.2 * ncols, 6.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, ncols)
    ref_rgb = _rgb(first.ref, first.rgb)
    low, high = percentiles(ref_rgb)

    col = 0
    if has_input:
        assert first.input is not None
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(stretch(first.input, low, high), interpolation="nearest")
        ax.set_title("input", fontsize=9)
        ax.set_axis_off()
        col += 1
    ax = fig.add_subplot(grid[0, col])
    ax.imshow(stretch(ref_rgb, low, high), interpolation="nearest")
    ax.set_title(f"reference\n{Path(first.ref_path).name}", fontsize=8)
    ax.set_axis_off()
    bar_cols = col + 1

    errors = [error_map(v) for v in views]
    finite = np.concatenate([e[np.isfinite(e)] for e in errors]) if errors else np.array([])
    vmax = float(np.percentile(finite, 98)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    image = None
    for i, (v, s, err) in enumerate(zip(views, scores, errors, strict=True)):
        c = bar_cols + i
        ax = fig.add_subplot(grid[0, c])
        ax.imshow(stretch(_rgb(v.pred, v.rgb), low, high), interpolation="nearest")
        ax.set_title(f"{Path(v.pred_path).name}\nPSNR {s.psnr:.2f} dB  SSIM {s.ssim:.3f}", fontsize=8)
        ax.set_axis_off()
        ax = fig.add_subplot(grid[1, c])
        ax.set_facecolor("0.85")
        image = ax.imshow(np.ma.masked_invalid(err), cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"|error|, mean over bands ({s.pixels} pixels)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=fig.axes[-1], shrink=0.8, label="reflectance")

    ax = fig.add_subplot(grid[1, :bar_cols])
    labels = [b.band for b in scores[0].bands]
    width = 0.8 / len(scores)
    x = np.arange(len(labels))
    for i, s in enumerate(scores):
        rmse = [b.rmse for b in s.bands]
        bars = ax.bar(x + (i - (len(scores) - 1) / 2) * width, rmse, width, label=Path(s.pred).name)
        for rect, b in zip(bars, s.bands, strict=True):
            if math.isfinite(b.psnr):
                ax.annotate(
                    f"{b.psnr:.1f}",
                    (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("RMSE (reflectance)", fontsize=8)
    ax.set_title("per band RMSE (labels: PSNR dB)", fontsize=8)
    if len(scores) > 1:
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_comparison(
    dst_path: str | os.PathLike[str],
    comparison: Comparison,
    pairs: Sequence[Pair],
    *,
    input_path: str | os.PathLike[str] | None = None,
    mask_convention: str | None = None,
    max_size: int = 800,
    overwrite: bool = False,
) -> Path:
    """Write the figure of scored pairs (see :func:`plot_scores`), from the views kept while
    scoring (``score_many(..., views=N)``) or, without them, from a decimated read.

    Args:
        dst_path: the PNG to write.
        comparison: what :func:`cloudclear.metrics.score_many` returned for ``pairs``.
        pairs: the scored pairs.
        input_path: the cloudy input to show beside the first pair.
        mask_convention: as for scoring.
        max_size: longest side of each view in pixels.
        overwrite: replace an existing PNG.

    Raises:
        OutputExistsError: the PNG exists and ``overwrite`` is false (checked before any read).
        OutputError: the PNG cannot be written (read-only folder, disk full...).
    """
    check_plot_target(dst_path, overwrite)
    opts: ScoreOptions = comparison.options
    if len(comparison.views) == len(pairs):
        views = list(comparison.views)
    else:
        views = [quicklook(p, opts, mask_convention=mask_convention, max_size=max_size) for p in pairs]
    if input_path is not None:
        rgb = input_view(input_path, pairs[0], opts, mask_convention=mask_convention, max_size=max_size)
        views[0] = replace(views[0], input=rgb)
    return plot_scores(dst_path, views, comparison.results, overwrite=overwrite)
