"""The maths of the figures: running sums per image, the SSIM sums, PSNR, and the final figures.

Both the raster scorer (:mod:`cloudclear.metrics.strips`, raw values through :func:`block_sums`)
and the in-memory patch scorer (:mod:`cloudclear.metrics.patches`, reflectance through
:func:`pixel_sums`) add blocks of pixels the same way, so a figure means the same whichever
computed it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cloudclear.metrics.conventions import ScoreOptions, SsimWindow
from cloudclear.metrics.results import BandScore, Score

if TYPE_CHECKING:
    import torch

_K1, _K2 = 0.01, 0.03


@dataclass
class Sums:
    """Running sums for one image, per band, enough to finish every figure."""

    n_bands: int
    n: int = 0
    n_ssim: int = 0
    n_sam: int = 0
    abs_err: np.ndarray = field(init=False)
    sq_err: np.ndarray = field(init=False)
    ssim: np.ndarray = field(init=False)
    sam: float = 0.0
    sum_pred: float = 0.0
    sum_ref: float = 0.0

    def __post_init__(self) -> None:
        self.abs_err = np.zeros(self.n_bands)
        self.sq_err = np.zeros(self.n_bands)
        self.ssim = np.zeros(self.n_bands)

    def add(self, other: Sums) -> None:
        """Pool another image's sums into these."""
        self.n += other.n
        self.n_ssim += other.n_ssim
        self.n_sam += other.n_sam
        self.abs_err += other.abs_err
        self.sq_err += other.sq_err
        self.ssim += other.ssim
        self.sam += other.sam
        self.sum_pred += other.sum_pred
        self.sum_ref += other.sum_ref


BandSums = tuple[float, float, float, float, float]  # |d|, d^2, sum pred, sum ref, SSIM


@dataclass(frozen=True)
class Reflectance:
    """How raw values become reflectance: ``DN * scale + offset`` per band, then clipped to
    [0, peak] when ``clip``. The default leaves values as they are (already reflectance)."""

    scale: tuple[float, ...] = ()
    offset: tuple[float, ...] = ()
    clip: bool = False
    peak: float = 1.0

    def _per_band(self, values: tuple[float, ...], ndim: int) -> np.ndarray:
        return np.array(values).reshape((len(values),) + (1,) * (ndim - 1))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """float64 reflectance of ``raw`` (bands first)."""
        out = raw.astype(np.float64)
        if any(s != 1.0 for s in self.scale) or any(o != 0.0 for o in self.offset):
            out *= self._per_band(self.scale, raw.ndim)
            out += self._per_band(self.offset, raw.ndim)
        if self.clip:
            np.clip(out, 0.0, self.peak, out=out)
        return out

    def clips(self, raw: np.ndarray) -> bool:
        """Whether clipping changes any of ``raw`` (bands first): usually not, and then it is skipped."""
        if not self.clip:
            return False
        lo, hi = (np.nanmin(raw), np.nanmax(raw)) if raw.dtype.kind == "f" else (raw.min(), raw.max())
        nb = len(raw)
        ends = np.array([float(lo), float(hi)])[:, None] * np.array(self.scale or (1.0,) * nb)
        ends += np.array(self.offset or (0.0,) * nb)
        return bool(ends.min() < 0.0 or ends.max() > self.peak)

    def centred(self, raw: np.ndarray, out: np.ndarray, clips: bool = True) -> np.ndarray:
        """Reflectance minus a level per band (returned) near the values, into float32 ``out``.

        ``raw`` is (bands, rows, cols); ``out`` is (rows, cols, bands), possibly strided. Computed in
        float32: the rounding (a few 1e-8 per pixel, unbiased) is far below what SSIM at 1e-6 can see.
        ``clips``: False when :meth:`clips` said clipping changes none of these values.
        """
        nb = len(raw)
        scale = np.array(self.scale or (1.0,) * nb)
        offset = np.array(self.offset or (0.0,) * nb)
        sample = raw[:, ::4, ::16].reshape(nb, -1) * scale[:, None] + offset[:, None]
        if self.clip:
            np.clip(sample, 0.0, self.peak, out=sample)
        floats = raw.dtype.kind == "f"  # NaN (nodata) may lie in the halo of selected pixels
        level = (np.nan_to_num(sample) if floats else sample).mean(axis=1)  # any level is exact
        shift, lo, hi = (offset - level).astype(np.float32), -level, self.peak - level
        v = np.empty(raw.shape[1:], np.float32)
        # Band by band: each pass reads in memory order and the last writes the strided output.
        for b in range(nb):
            np.multiply(raw[b], np.float32(scale[b]), out=v)
            if self.clip and clips:  # clip(x, 0, peak) - level == clip(x - level, -level, peak - level)
                v += shift[b]
                np.maximum(v, np.float32(lo[b]), out=v)
                np.minimum(v, np.float32(hi[b]), out=out[:, :, b])
            else:
                np.add(v, shift[b], out=out[:, :, b])
        return level


def pixel_sums(
    pairs: Iterator[tuple[np.ndarray, np.ndarray]],
    core: tuple[slice, slice],
    sel: np.ndarray,
    ssim_sel: np.ndarray,
    window: SsimWindow,
    peak: float,
) -> tuple[list[BandSums], float, int]:
    """Per band, the sums of one block of pixels; then the SAM sum and its pixel count.

    ``pairs`` gives each band's (prediction, reference) reflectance, possibly with a halo around
    ``core``; ``sel`` and ``ssim_sel`` select pixels of the core for the plain figures and SSIM.
    """
    pred, ref = (np.stack(a) for a in zip(*pairs, strict=True))
    return block_sums(pred, ref, core, sel, ssim_sel, window, peak)


def block_sums(
    pred: np.ndarray,
    ref: np.ndarray,
    core: tuple[slice, slice],
    sel: np.ndarray,
    ssim_sel: np.ndarray,
    window: SsimWindow,
    peak: float,
    pred_refl: Reflectance = Reflectance(),
    ref_refl: Reflectance = Reflectance(),
) -> tuple[list[BandSums], float, int]:
    """:func:`pixel_sums` of (bands, rows, cols) arrays of raw values, read as reflectance through
    ``pred_refl`` and ``ref_refl``: only the selected pixels and the SSIM tiles are converted."""
    rows, cols = core
    idx = np.flatnonzero(sel)
    xs, ys = (
        refl(np.stack([b.reshape(-1)[idx] for b in a[:, rows, cols]]))
        for a, refl in ((pred, pred_refl), (ref, ref_refl))
    )
    ssim = ssim_sums(pred, ref, core, ssim_sel, window, peak, pred_refl, ref_refl)
    n = xs.shape[1]
    dot, pp, rr = np.zeros(n), np.zeros(n), np.zeros(n)
    per_band = []
    for i in range(len(xs)):
        x, y = xs[i], ys[i]
        d = x - y
        abs_err = float(np.abs(d).sum())
        # Not np.dot: OpenBLAS wakes its threads for it (several ms a call while the pool keeps the
        # cores busy) and rounds by thread count and alignment; a pairwise sum rounds the same everywhere.
        sq_err = float(np.square(d, out=d).sum())
        per_band.append((abs_err, sq_err, float(x.sum()), float(y.sum()), float(ssim[i])))
        dot += x * y
        pp += x * x
        rr += y * y
    norm = np.sqrt(pp * rr)
    ok = norm > 0
    cos = np.clip(dot[ok] / norm[ok], -1.0, 1.0)
    return per_band, float(np.arccos(cos).sum()), int(ok.sum())


def add_pixel_sums(sums: Sums, per_band: list[BandSums], sam: float, n_ok: int) -> None:
    """Add what :func:`pixel_sums` returned for one block to an image's running sums."""
    for i, (ae, se, sp, sr, ss) in enumerate(per_band):
        sums.abs_err[i] += ae
        sums.sq_err[i] += se
        sums.sum_pred += sp
        sums.sum_ref += sr
        sums.ssim[i] += ss
    sums.sam += sam
    sums.n_sam += n_ok


def psnr(mse: float, peak: float) -> float:
    """10 log10(peak^2 / MSE): inf for identical images, NaN when the MSE is not finite."""
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse) if math.isfinite(mse) else math.nan


def finish(
    sums: Sums, labels: Sequence[str], opts: ScoreOptions, *, pred: str, ref: str, mask: str | None, pixels: str
) -> Score:
    """The figures of one image (or of pooled images) from its running sums; NaN where no pixel counts."""
    nan = math.nan
    n, nb = sums.n, len(labels)
    mae_b = sums.abs_err / n if n else np.full(nb, nan)
    mse_b = sums.sq_err / n if n else np.full(nb, nan)
    ssim_b = sums.ssim / sums.n_ssim if sums.n_ssim else np.full(nb, nan)
    mse = float(mse_b.mean())
    sam = sums.sam / sums.n_sam if sums.n_sam else nan
    if opts.sam_units == "deg":
        sam = math.degrees(sam)
    bands = tuple(
        BandScore(lab, float(mae_b[i]), math.sqrt(mse_b[i]), psnr(float(mse_b[i]), opts.peak), float(ssim_b[i]))
        for i, lab in enumerate(labels)
    )
    return Score(
        pred=pred,
        ref=ref,
        mask=mask,
        pixels=pixels,
        aggregate=opts.aggregate,
        n_images=1,
        n_pixels=n,
        n_ssim=sums.n_ssim,
        n_sam=sums.n_sam,
        mae=float(mae_b.mean()),
        rmse=math.sqrt(mse),
        psnr=psnr(mse, opts.peak),
        ssim=float(ssim_b.mean()),
        sam=sam,
        sam_units=opts.sam_units,
        bands=bands,
    )


# Rows and columns of the SSIM map computed at once: a tile's buffers (a few MB) stay in cache,
# where the convolutions run several times faster than over a whole strip. 64 x 512 was the
# fastest of 32 to 128 rows by 256 to 1024 columns on the 10980 x 10980 bench.
_TILE_ROWS, _TILE_COLS = 64, 512


def ssim_sums(
    pred: np.ndarray,
    ref: np.ndarray,
    core: tuple[slice, slice],
    ssim_sel: np.ndarray,
    window: SsimWindow,
    peak: float,
    pred_refl: Reflectance = Reflectance(),
    ref_refl: Reflectance = Reflectance(),
) -> np.ndarray:
    """Per band, the sum of the SSIM map of ``pred`` against ``ref`` over the ``ssim_sel`` pixels of ``core``.

    ``pred`` and ``ref`` are (bands, rows, cols), with at least the window radius of pixels around
    each selected pixel. The map is computed tile by tile, only where a tile holds selected pixels.
    The four local means of each band (x, y, xy, x^2 + y^2) are float32 depthwise convolutions in
    torch, every band's four maps interleaved (channels last, which its SIMD kernel needs). float32
    stays within 1e-6 of the float64 figure because each tile's values are first centred on a
    constant near their level: var = E[x'^2] - E[x']^2 then subtracts numbers of the size of the
    local contrast, not of the squared reflectance (tests/test_ssim_fast.py shows plain float32 fail).
    """
    r = window.radius
    r0, c0 = core[0].indices(pred.shape[1])[0], core[1].indices(pred.shape[2])[0]
    h, w = ssim_sel.shape
    total = np.zeros(len(pred))
    clips: tuple[bool, bool] | None = None
    for i in range(0, h, _TILE_ROWS):
        own = ssim_sel[i : i + _TILE_ROWS]
        if not own.any():
            continue
        # Every tile has the same shape (torch compiles a kernel per shape): one at an edge of
        # the array moves inwards and counts only its own pixels; every selected pixel has its
        # halo inside the arrays, so the moved tile still covers them.
        ti, ti1 = _place(i, _TILE_ROWS, r - r0, pred.shape[1] - r0 - r)
        for j in range(0, w, _TILE_COLS):
            mine = own[:, j : j + _TILE_COLS]
            if not mine.any():
                continue
            tj, tj1 = _place(j, _TILE_COLS, r - c0, pred.shape[2] - c0 - r)
            if clips is None:  # once for the block, not per tile
                clips = (pred_refl.clips(pred), ref_refl.clips(ref))
            sel = np.zeros((ti1 - ti, tj1 - tj), bool)
            a0, a1 = max(i, ti), min(i + mine.shape[0], ti1)  # own rows and columns inside the tile
            b0, b1 = max(j, tj), min(j + mine.shape[1], tj1)
            sel[a0 - ti : a1 - ti, b0 - tj : b1 - tj] = mine[a0 - i : a1 - i, b0 - j : b1 - j]
            win = (slice(r0 + ti, r0 + ti1), slice(c0 + tj, c0 + tj1))
            total += _tile_sums(pred, ref, win, sel, window, peak, pred_refl, ref_refl, clips)
    return total


def _place(start: int, size: int, lo: int, hi: int) -> tuple[int, int]:
    """Where a tile of ``size`` meant to start at ``start`` goes, within [lo, hi) when it fits."""
    if hi - lo < size:
        return max(start, lo), min(start + size, hi)
    s = min(max(start, lo), hi - size)
    return s, s + size


def _tile_sums(
    pred: np.ndarray,
    ref: np.ndarray,
    win: tuple[slice, slice],
    sel: np.ndarray,
    window: SsimWindow,
    peak: float,
    pred_refl: Reflectance,
    ref_refl: Reflectance,
    clips: tuple[bool, bool],
) -> np.ndarray:
    """:func:`ssim_sums` over one tile ``win`` (its halo is read around it); ``clips``: whether
    clipping changes any prediction, reference value of the block."""
    import torch

    r, nb = window.radius, len(pred)
    rows, cols = slice(win[0].start - r, win[0].stop + r), slice(win[1].start - r, win[1].stop + r)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    maps = np.empty((h, w, nb, 4), np.float32)
    # Any constants keep the covariances exact; ones near the tile's level keep float32's error small.
    levels = [
        refl.centred(src[:, rows, cols], maps[..., k], clips[k])
        for k, (src, refl) in enumerate(((pred, pred_refl), (ref, ref_refl)))
    ]
    xc, yc = maps[..., 0], maps[..., 1]
    np.multiply(xc, yc, out=maps[..., 2])
    np.square(xc, out=maps[..., 3])
    maps[..., 3] += np.square(yc)
    kv, kh = _kernels(window, 4 * nb)
    # An NCHW view of channels-last memory (unsqueezed first: torch then sees the layout).
    t = torch.from_numpy(maps.reshape(h, w, 4 * nb))[None].permute(0, 3, 1, 2)
    t = torch.nn.functional.conv2d(torch.nn.functional.conv2d(t, kv, groups=4 * nb), kh, groups=4 * nb)
    # The selected pixels' local means, as float64 rows (one per map and band) for the formula.
    m = t[0].permute(1, 2, 0).numpy().reshape(-1, nb, 4)[sel.ravel()].transpose(2, 1, 0).astype(np.float64)
    ux, uy, sxy, s2 = m  # each (bands, pixels)
    cov_norm = 1.0
    if window.sample_covariance:
        npix = len(window.kernel) ** 2
        cov_norm = npix / (npix - 1.0)
    c1, c2 = (_K1 * peak) ** 2, (_K2 * peak) ** 2
    a2 = ux * uy
    np.subtract(sxy, a2, out=a2)
    a2 *= 2.0 * cov_norm
    a2 += c2  # 2 cov + C2
    b2 = ux * ux
    np.subtract(s2, b2, out=b2)
    b2 -= np.square(uy)
    b2 *= cov_norm
    b2 += c2  # var x + var y + C2
    ux += levels[0][:, None]
    uy += levels[1][:, None]
    a1 = ux * uy
    a1 *= 2.0
    a1 += c1  # 2 ux uy + C1
    np.square(ux, out=ux)
    np.square(uy, out=uy)
    ux += uy
    ux += c1  # ux^2 + uy^2 + C1
    a1 *= a2
    ux *= b2
    a1 /= ux
    return a1.sum(axis=1)


@functools.cache
def _kernels(window: SsimWindow, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's vertical and horizontal float32 kernels, one per channel (depthwise)."""
    import torch

    k = torch.tensor(window.kernel, dtype=torch.float32)
    return k.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), k.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
