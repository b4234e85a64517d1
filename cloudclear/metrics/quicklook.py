"""Decimated views of scored pairs, for figures (:mod:`cloudclear.plots`).

:func:`cloudclear.metrics.score_many` with ``views`` keeps them from the reads it scores; without
them, :func:`quicklook` reads every n-th row and column on the pair's common grid.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cloudclear.errors import InvalidRasterError, ScoreError
from cloudclear.gdal import gdal_env
from cloudclear.gridio import Grid
from cloudclear.metrics.conventions import ScoreOptions
from cloudclear.metrics.pairs import OpenPair, Pair, open_pair
from cloudclear.metrics.reading import StripReader, open_info, valid
from cloudclear.metrics.strips import Strip, concat, every, strided_rows
from cloudclear.scenes import classify, reflectance_scale


@dataclass(frozen=True)
class Quicklook:
    """A decimated view of one scored pair on its common grid, for figures.

    ``pred`` and ``ref`` are (bands, h, w) float32 reflectance with NaN where nodata;
    ``selected`` marks the scored pixels; ``rgb`` indexes the red, green and blue bands in
    ``labels`` (None when the bands hold no RGB triplet).
    """

    pred_path: str
    ref_path: str
    labels: tuple[str, ...]
    pred: np.ndarray
    ref: np.ndarray
    selected: np.ndarray
    rgb: tuple[int, int, int] | None
    input: np.ndarray | None = None


def decimation(grid: Grid, max_size: int) -> int:
    """The step between kept rows and columns so that a view of ``grid`` is at most ``max_size`` a side."""
    return max(1, math.ceil(max(grid.height, grid.width) / max_size))


def _rgb_of(labels: Sequence[str]) -> tuple[int, int, int] | None:
    if all(b in labels for b in ("B04", "B03", "B02")):
        return labels.index("B04"), labels.index("B03"), labels.index("B02")
    return (0, 1, 2) if len(labels) >= 3 else None


def view_of(opened: OpenPair, strip: Strip) -> Quicklook:
    """The view of a decimated strip as read (raw values) from an opened pair."""
    sc = opened.scorer
    n = len(opened.labels)
    pred = np.stack([sc.reflectance(strip.pred[i], sc.pred_scale[i]) for i in range(n)])
    ref = np.stack([sc.reflectance(strip.ref[i], sc.ref_scale[i]) for i in range(n)])
    pred[:, ~strip.valid] = np.nan
    ref[:, ~strip.valid] = np.nan
    return Quicklook(
        opened.pair.pred,
        opened.pair.ref,
        tuple(opened.labels),
        pred.astype(np.float32),
        ref.astype(np.float32),
        strip.selected,
        _rgb_of(opened.labels),
    )


def quicklook(
    pair: Pair,
    options: ScoreOptions | None = None,
    *,
    input_path: str | os.PathLike[str] | None = None,
    mask_convention: str | None = None,
    max_size: int = 800,
) -> Quicklook:
    """Read a decimated view (at most ``max_size`` pixels a side) of a pair for a figure.

    :func:`score_many` with ``views`` gives the same view without a second read.

    Args:
        pair: the prediction, reference and masks, as for :func:`score_many`.
        options: the same options as for scoring (bands, scale, nodata, pixels).
        input_path: the cloudy input; its red, green and blue bands are read onto the same grid.
        mask_convention: as for :func:`score`.
        max_size: the longest side of the view, in pixels.
    """
    opts = options or ScoreOptions()
    with gdal_env("score"):
        opened = open_pair(pair, opts, mask_convention)
        try:
            factor = decimation(opened.grid, max_size)
            rows = strided_rows(opened.grid.height, opts.block_rows, factor)
            parts = [every(opened.scorer.read_strip(r0, h), k0, factor) for r0, h, k0 in rows]
            view = view_of(opened, functools.reduce(concat, parts))
            if input_path is not None:
                view = replace(view, input=_input_rgb(str(input_path), opened, factor, opts))
        finally:
            opened.close()
    return view


def input_view(
    input_path: str | os.PathLike[str],
    pair: Pair,
    options: ScoreOptions | None = None,
    *,
    mask_convention: str | None = None,
    max_size: int = 800,
) -> np.ndarray:
    """The cloudy input's red, green and blue reflectance on ``pair``'s view grid, (3, h, w)."""
    opts = options or ScoreOptions()
    with gdal_env("score"):
        opened = open_pair(pair, opts, mask_convention)
        try:
            return _input_rgb(str(input_path), opened, decimation(opened.grid, max_size), opts)
        finally:
            opened.close()


def _input_rgb(path: str, opened: OpenPair, factor: int, opts: ScoreOptions) -> np.ndarray:
    info = open_info(path, "input")
    try:
        bands = classify(info).bands
    except InvalidRasterError:
        bands = {}
    if all(b in bands for b in ("B04", "B03", "B02")):
        idx = [bands["B04"], bands["B03"], bands["B02"]]
    elif info.count >= 3:
        idx = [1, 2, 3]
    else:
        raise ScoreError(f"{path}: the input has {info.count} band(s); a colour view needs 3")
    reader = StripReader(info, opened.grid, idx, resampling="nearest", nodata=info.nodata)
    try:
        rows = strided_rows(opened.grid.height, opts.block_rows, factor)
        raw = np.concatenate([reader.rows(r0, h)[:, k0::factor, ::factor].copy() for r0, h, k0 in rows], axis=1)
    finally:
        reader.close()
    ok = valid(raw, reader.nodata)
    out = np.stack(
        [opened.scorer.reflectance(raw[i], reflectance_scale(info, b, opts.scale)) for i, b in enumerate(idx)]
    )
    out[:, ~ok] = np.nan
    return out.astype(np.float32)
