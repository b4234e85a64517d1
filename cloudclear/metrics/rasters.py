"""Scoring rasters: :func:`score` one prediction, :func:`score_many` several (a comparison of methods,
or the dates of a sequence, combined pooled or per image)."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cloudclear.errors import ScoreError
from cloudclear.gdal import gdal_env
from cloudclear.gridio import Grid
from cloudclear.metrics.conventions import ScoreOptions
from cloudclear.metrics.maths import Sums, finish
from cloudclear.metrics.pairs import Pair, open_pair
from cloudclear.metrics.quicklook import Quicklook, decimation, view_of
from cloudclear.metrics.reading import StripReader, nodata_of, open_info, valid
from cloudclear.metrics.results import BandScore, Comparison, Score
from cloudclear.metrics.strips import concat

log = logging.getLogger("cloudclear.metrics")


def _score_sums(
    pair: Pair,
    opts: ScoreOptions,
    mask_convention: str | None,
    progress: bool,
    view_size: int = 0,
) -> tuple[Sums, list[str], str, Quicklook | None]:
    opened = open_pair(pair, opts, mask_convention)
    factor = decimation(opened.grid, view_size) if view_size else 0
    try:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=opened.grid.height, unit="row", desc=Path(pair.pred).name, leave=False)
        try:
            sums = opened.scorer.run(bar.update if bar is not None else None, factor)
        finally:
            if bar is not None:
                bar.close()
    finally:
        opened.close()
    _check_sums(sums, pair)
    view = view_of(opened, functools.reduce(concat, opened.scorer.view_parts)) if factor else None
    return sums, opened.labels, opened.pixels, view


def _check_sums(sums: Sums, pair: Pair) -> None:
    if sums.sum_ref > 0 and sums.sum_pred > 0:
        ratio = sums.sum_pred / sums.sum_ref
        if ratio > 20 or ratio < 1 / 20:
            log.warning(
                "%s: values average %.3gx the reference's; check --scale or the files' scale metadata",
                pair.pred,
                ratio,
            )


def score(
    pred: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    *,
    mask: str | os.PathLike[str] | None = None,
    ref_mask: str | os.PathLike[str] | None = None,
    options: ScoreOptions | None = None,
    mask_convention: str | None = None,
    progress: bool = False,
) -> Score:
    """Score one prediction against a cloud-free reference.

    Args:
        pred: the predicted GeoTIFF.
        ref: the cloud-free reference.
        mask: the input date's cloud mask (any convention cloudclear reads); selects the pixels
            for ``pixels`` = cloudy / clear / occluded / observed.
        ref_mask: the reference's own mask; pixels it does not call clear are left out.
        options: conventions (:class:`ScoreOptions`).
        mask_convention: a key of :data:`cloudclear.masks.CONVENTIONS` when the mask files do
            not say which they are.
        progress: show a progress bar on stderr.

    Raises:
        ScoreError: the rasters cannot be compared (bands, grids, no overlap, no valid pixel).
        InvalidRasterError: a file is not a readable raster.
    """
    pair = Pair(str(pred), str(ref), _opt(mask), _opt(ref_mask))
    return score_many([pair], options, mask_convention, progress).results[0]


def _opt(p: str | os.PathLike[str] | None) -> str | None:
    return None if p is None else str(p)


def score_many(
    pairs: Sequence[Pair],
    options: ScoreOptions | None = None,
    mask_convention: str | None = None,
    progress: bool = False,
    views: int = 0,
) -> Comparison:
    """Score several predictions; combine them when their references differ (a sequence).

    Several predictions of one reference are a comparison (one row each). When each prediction
    has its own reference (dates of a sequence), :attr:`Comparison.combined` aggregates them,
    pooled or per image as ``options.aggregate`` says. With ``views`` > 0, each pair's
    decimated view (at most ``views`` pixels a side) is kept from the same reads, for figures.
    """
    opts = options or ScoreOptions()
    if not pairs:
        raise ScoreError("nothing to score: no prediction given")
    results: list[Score] = []
    all_sums: list[Sums] = []
    labels: list[str] = []
    pixels = ""
    kept: list[Quicklook] = []
    with gdal_env("score"):
        for pair in pairs:
            sums, labels_i, pixels, view = _score_sums(pair, opts, mask_convention, progress, views)
            if view is not None:
                kept.append(view)
            if sums.n == 0:
                _explain_empty(pair, opts, pixels)
            if labels and labels_i != labels and len({p.ref for p in pairs}) > 1:
                raise ScoreError(f"{pair.pred}: bands {labels_i} differ from the first prediction's {labels}")
            labels = labels_i
            all_sums.append(sums)
            results.append(finish(sums, labels_i, opts, pred=pair.pred, ref=pair.ref, mask=pair.mask, pixels=pixels))
    combined = None
    if len(pairs) > 1 and len({p.ref for p in pairs}) > 1:
        combined = _combine(results, all_sums, labels, opts, pixels)
    return Comparison(tuple(results), combined, opts, tuple(kept))


def _explain_empty(pair: Pair, opts: ScoreOptions, pixels: str) -> None:
    """No pixel scored: say why, naming the file at fault."""
    info = open_info(pair.ref, "reference")
    a, b, c, d, e, f = info.transform[:6]
    grid = Grid(info.crs or "", (a, b, c, d, e, f), info.width, info.height)
    bands = range(1, info.count + 1)
    reader = StripReader(info, grid, bands, resampling="nearest", nodata=nodata_of(info, opts.nodata))
    try:
        rows = range(0, info.height, opts.block_rows)
        any_valid = any(valid(reader.rows(r, min(opts.block_rows, info.height - r)), reader.nodata).any() for r in rows)
    finally:
        reader.close()
    if not any_valid:
        raise ScoreError(f"{pair.ref}: the reference holds only nodata")
    if pixels != "all":
        log.warning("%s: no %s pixel in the mask %s; nothing scored", pair.pred, pixels, pair.mask)
        return
    raise ScoreError(f"{pair.pred}: no pixel is valid in both the prediction and the reference")


def _combine(
    results: Sequence[Score], sums: Sequence[Sums], labels: Sequence[str], opts: ScoreOptions, pixels: str
) -> Score:
    name = f"{len(results)} images"
    if opts.aggregate == "pooled":
        total = Sums(len(labels))
        for s in sums:
            total.add(s)
        out = finish(total, labels, opts, pred=name, ref=name, mask=None, pixels=pixels)
        return replace(out, n_images=sum(1 for r in results if r.n_pixels > 0))
    scored = [r for r in results if r.n_pixels > 0]

    def mean(values: Iterator[float]) -> float:
        vals = [v for v in values if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan

    bands = tuple(
        BandScore(
            lab,
            mean(r.bands[i].mae for r in scored),
            mean(r.bands[i].rmse for r in scored),
            mean(r.bands[i].psnr for r in scored),
            mean(r.bands[i].ssim for r in scored),
        )
        for i, lab in enumerate(labels)
    )
    return Score(
        pred=name,
        ref=name,
        mask=None,
        pixels=pixels,
        aggregate="per-image",
        n_images=len(scored),
        n_pixels=sum(r.n_pixels for r in scored),
        n_ssim=sum(r.n_ssim for r in scored),
        n_sam=sum(r.n_sam for r in scored),
        mae=mean(r.mae for r in scored),
        rmse=mean(r.rmse for r in scored),
        psnr=mean(r.psnr for r in scored),
        ssim=mean(r.ssim for r in scored),
        sam=mean(r.sam for r in scored),
        sam_units=opts.sam_units,
        bands=bands,
    )
