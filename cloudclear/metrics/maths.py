"""The maths of the figures: running sums per image, the SSIM sums, PSNR, and the final figures.

Both the raster scorer (:mod:`cloudclear.metrics.strips`, raw values through :func:`block_sums`)
and the in-memory patch scorer (:mod:`cloudclear.metrics.patches`, reflectance through
:func:`pixel_sums`) add blocks of pixels the same way, so a figure means the same whichever
computed it.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cloudclear.metrics import native, scratch
from cloudclear.metrics.conventions import ScoreOptions, SsimWindow
from cloudclear.metrics.results import BandScore, Score

if TYPE_CHECKING:
    import torch


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

    def __call__(self, raw: np.ndarray, clips: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """float64 reflectance of ``raw`` (bands first), into ``out`` when given; ``clips``: False
        when :meth:`clips` said clipping changes none of these values."""
        if out is None:
            out = np.empty(raw.shape, np.float64)
        if any(s != 1.0 for s in self.scale):
            np.multiply(raw, self._per_band(self.scale, raw.ndim), out=out)
        else:
            out[...] = raw
        if any(o != 0.0 for o in self.offset):
            out += self._per_band(self.offset, raw.ndim)
        if self.clip and clips:
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

    def centred(self, raw: np.ndarray, out: torch.Tensor, clips: bool = True) -> np.ndarray:
        """Reflectance minus a level per band (returned) near the values, into float32 ``out``.

        ``raw`` is (bands, rows, cols), ``out`` a float32 CPU tensor of that shape (written through
        its numpy view). Computed in float32 (raw value times scale, plus the shift, one pass per
        step over every band): the rounding (a few 1e-8 per pixel, unbiased) is far below what
        SSIM at 1e-6 can see. ``clips``: False when :meth:`clips` said clipping changes none of
        these values.
        """
        nb = len(raw)
        scale = np.array(self.scale or (1.0,) * nb)
        offset = np.array(self.offset or (0.0,) * nb)
        sample = raw[:, ::4, ::16].reshape(nb, -1) * scale[:, None] + offset[:, None]
        if self.clip:
            np.clip(sample, 0.0, self.peak, out=sample)
        floats = raw.dtype.kind == "f"  # NaN (nodata) may lie in the halo of selected pixels
        level = (np.nan_to_num(sample) if floats else sample).mean(axis=1)  # any level is exact

        def per_band(v: np.ndarray) -> np.ndarray:
            return v.astype(np.float32).reshape(nb, 1, 1)

        # numpy converts and scales in one pass (float32(raw) * float32(scale), as a copy then a
        # multiply would round), a third faster than torch's copy then multiply.
        dst = out.numpy()
        if any(s != 1.0 for s in scale):
            np.multiply(raw, per_band(scale), out=dst, dtype=np.float32, casting="unsafe")
        else:
            np.copyto(dst, raw, casting="unsafe")
        dst += per_band(offset - level)
        if self.clip and clips:  # clip(x, 0, peak) - level == clip(x - level, -level, peak - level)
            np.clip(dst, per_band(-level), per_band(self.peak - level), out=dst)
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
    clips: tuple[bool, bool] | None = None,
) -> tuple[list[BandSums], float, int]:
    """:func:`pixel_sums` of (bands, rows, cols) arrays of raw values, read as reflectance through
    ``pred_refl`` and ``ref_refl``: only the selected pixels and the SSIM tiles are converted.
    ``clips``: whether clipping may change a prediction, reference value (:meth:`Reflectance.clips`
    of these arrays or of larger ones that hold them); found here when not given."""
    rows, cols = core
    idx = np.flatnonzero(sel)
    # Usually clipping changes no value, and then no pass clips.
    if clips is None:
        clips = (pred_refl.clips(pred), ref_refl.clips(ref))
    # The selected pixels' raw values, every band. Every array here is a buffer of this thread's,
    # reused from block to block: fresh ones would each have their pages zeroed.
    nb, n = len(pred), len(idx)
    raws = []
    for a, name in ((pred, "pred"), (ref, "ref")):
        core_px, picked = scratch.buffer("core", sel.shape, a.dtype), scratch.buffer(name, (nb, n), a.dtype)
        for i, band in enumerate(a[:, rows, cols]):
            np.copyto(core_px, band)  # contiguous, then one take (faster than a 2-D fancy index)
            np.take(core_px.reshape(-1), idx, out=picked[i])
        raws.append(picked)
    ssim = ssim_sums(pred, ref, core, ssim_sel, window, peak, pred_refl, ref_refl, clips)
    abs_err, sq_err, sum_x, sum_y = (np.zeros(nb) for _ in range(4))
    sam, n_ok = 0.0, 0
    # The figures in slices of pixels whose float64 arrays stay in the CPU's cache through the
    # dozen passes below (a quarter less time than whole blocks, which go out to memory each pass).
    for k0 in range(0, n, _SLICE):
        k1 = min(k0 + _SLICE, n)
        m = k1 - k0
        xs = pred_refl(raws[0][:, k0:k1], clips[0], out=scratch.buffer("x", (nb, m), np.float64))
        ys = ref_refl(raws[1][:, k0:k1], clips[1], out=scratch.buffer("y", (nb, m), np.float64))
        # Not np.dot: OpenBLAS wakes its threads for it (several ms a call while the pool keeps the
        # cores busy) and rounds by thread count and alignment; a pairwise sum along each band's
        # contiguous row rounds the same everywhere.
        sum_x += xs.sum(axis=1)
        sum_y += ys.sum(axis=1)
        # Each pixel's dot products over its few bands (einsum: no temporary per band).
        dot, pp, rr = (
            np.einsum("bn,bn->n", u, v, out=scratch.buffer(name, (m,), np.float64))
            for name, u, v in (("dot", xs, ys), ("pp", xs, xs), ("rr", ys, ys))
        )
        d = np.subtract(xs, ys, out=xs)
        abs_err += np.abs(d, out=scratch.buffer("abs", (nb, m), np.float64)).sum(axis=1)
        sq_err += np.square(d, out=d).sum(axis=1)
        norm = np.multiply(pp, rr, out=pp)
        np.sqrt(norm, out=norm)
        ok = norm > 0
        k_ok = int(np.count_nonzero(ok))
        cos = np.divide(dot, norm, out=dot) if k_ok == m else dot[ok] / norm[ok]
        np.clip(cos, -1.0, 1.0, out=cos)
        sam += float(np.arccos(cos, out=cos).sum())
        n_ok += k_ok
    per_band = [
        (float(abs_err[i]), float(sq_err[i]), float(sum_x[i]), float(sum_y[i]), float(ssim[i])) for i in range(nb)
    ]
    return per_band, sam, n_ok


#: Selected pixels whose plain figures are computed at once (:func:`block_sums`): 32768 x 4 bands
#: of float64 is 1 MiB an array, and the figures' few arrays stay in a core's cache.
_SLICE = 32768


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
# Columns of the compiled kernel's tiles (cloudclear.metrics.native): its rows of four planes
# stay in cache; it takes every row of the selection at once.
_NATIVE_COLS = 512


def ssim_sums(
    pred: np.ndarray,
    ref: np.ndarray,
    core: tuple[slice, slice],
    ssim_sel: np.ndarray,
    window: SsimWindow,
    peak: float,
    pred_refl: Reflectance = Reflectance(),
    ref_refl: Reflectance = Reflectance(),
    clips: tuple[bool, bool] | None = None,
) -> np.ndarray:
    """Per band, the sum of the SSIM map of ``pred`` against ``ref`` over the ``ssim_sel`` pixels of ``core``.

    ``pred`` and ``ref`` are (bands, rows, cols), with at least the window radius of pixels around
    each selected pixel. The map is computed tile by tile, only where a tile holds selected pixels:
    by the compiled kernel (:mod:`cloudclear.metrics.native`) where it is built and reads both
    arrays, else as below. The four local means of each band (x, y, xy, x^2 + y^2) are float32
    depthwise convolutions in torch, channels last (which its SIMD kernel needs). float32 stays
    within 1e-6 of the float64 figure because each tile's values are first centred on a constant
    near their level:
    var = E[x'^2] - E[x']^2 then subtracts numbers of the size of the local contrast, not of the
    squared reflectance (tests/test_ssim_fast.py shows plain float32 fail). ``clips``: whether
    clipping changes any prediction, reference value of the arrays (found here when not given).
    """
    r = window.radius
    r0, c0 = core[0].indices(pred.shape[1])[0], core[1].indices(pred.shape[2])[0]
    h, w = ssim_sel.shape
    total = np.zeros(len(pred))
    if native.available() and native.readable(pred) and native.readable(ref):
        # The compiled kernel, over the selected pixels' bounding box (whose halo the arrays
        # hold) in column tiles whose rows stay in the CPU's cache.
        rows, cols = np.flatnonzero(ssim_sel.any(axis=1)), np.flatnonzero(ssim_sel.any(axis=0))
        if len(rows):
            i0, i1 = int(rows[0]), int(rows[-1]) + 1
            for j0 in range(int(cols[0]), int(cols[-1]) + 1, _NATIVE_COLS):
                j1 = min(j0 + _NATIVE_COLS, int(cols[-1]) + 1)
                win = (slice(r0 + i0 - r, r0 + i1 + r), slice(c0 + j0 - r, c0 + j1 + r))
                x, y, sel = pred[:, win[0], win[1]], ref[:, win[0], win[1]], ssim_sel[i0:i1, j0:j1]
                native.ssim_tile(x, y, sel, window, peak, pred_refl, ref_refl, total)
        return total
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

    if getattr(_local, "one_torch_thread", False):  # asked for by one_torch_thread, made here
        torch.set_num_threads(1)
        _local.one_torch_thread = False
    r, nb = window.radius, len(pred)
    rows, cols = slice(win[0].start - r, win[0].stop + r), slice(win[1].start - r, win[1].stop + r)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    # Four planes per band: x, y, xy and x^2 + y^2 (every band's x first, then y, ...).
    planes, last = _tile_buffers(4 * nb, h, w)
    # Any constants keep the covariances exact; ones near the tile's level keep float32's error small.
    levels = [
        refl.centred(src[:, rows, cols], planes[k * nb : (k + 1) * nb], clips[k])
        for k, (src, refl) in enumerate(((pred, pred_refl), (ref, ref_refl)))
    ]
    xc, yc = planes[:nb], planes[nb : 2 * nb]
    torch.mul(xc, yc, out=planes[2 * nb : 3 * nb])
    torch.mul(xc, xc, out=planes[3 * nb :]).addcmul_(yc, yc)
    kv, kh = _kernels(window, 4 * nb)
    # Channels last: torch's SIMD depthwise kernel runs across channels. (numpy's transposing
    # copy is a third faster than torch's here.)
    np.copyto(last.numpy()[0].transpose(1, 2, 0), planes.numpy().transpose(1, 2, 0))
    t = torch.nn.functional.conv2d(torch.nn.functional.conv2d(last, kv, groups=4 * nb), kh, groups=4 * nb)
    # The selected pixels' local means, as contiguous float32 rows (one per plane) for the formula.
    # (np.take of the selected rows: several times faster than a boolean index of them.)
    m = np.take(t[0].permute(1, 2, 0).contiguous().numpy().reshape(-1, 4 * nb), np.flatnonzero(sel), axis=0)
    m = np.ascontiguousarray(m.T).reshape(4, nb, -1)
    ux, uy, sxy, s2 = m  # each (bands, pixels), float32, centred on the levels
    cov_norm = window.covariance_norm()
    c1, c2 = window.constants(peak)
    # The formula in float32 too: each term is formed from numbers of its own size (the centred
    # means; the luminance as 1 - (ux - uy)^2 / (ux^2 + uy^2 + C1), not as a ratio of two sums near
    # each other), so its rounding stays near float32's 6e-8 relative (tests/test_ssim_fast.py).
    f32 = np.float32
    lx, ly = (lv.astype(f32)[:, None] for lv in levels)
    a2 = ux * uy
    np.subtract(sxy, a2, out=a2)
    a2 *= f32(2.0 * cov_norm)
    a2 += f32(c2)  # 2 cov + C2
    b2 = ux * ux
    b2 += np.square(uy)
    np.subtract(s2, b2, out=b2)  # s2 - (ux^2 + uy^2): equal to 2 cov, to the bit, for equal images
    b2 *= f32(cov_norm)
    b2 += f32(c2)  # var x + var y + C2
    d = ux - uy
    d += (levels[0] - levels[1]).astype(f32)[:, None]  # mean x - mean y
    ux += lx
    uy += ly
    np.square(ux, out=ux)
    np.square(uy, out=uy)
    ux += uy
    ux += f32(c1)  # mean x^2 + mean y^2 + C1
    np.square(d, out=d)
    d /= ux
    np.subtract(f32(1.0), d, out=d)  # (2 mean x mean y + C1) / (mean x^2 + mean y^2 + C1)
    a2 /= b2
    d *= a2
    return d.sum(axis=1, dtype=np.float64)


_local = threading.local()


def one_torch_thread() -> None:
    """Have this thread run torch's SSIM convolutions (where the compiled kernel of
    :mod:`cloudclear.metrics.native` does not serve) on one torch thread: the strip scorer's chunk
    threads already keep every core busy, and a torch thread team per chunk thread would contend
    for them. The setting is per thread, so the caller's torch is left as it was; it is made at
    the thread's first tile, so that a run the kernel serves never loads torch (a second of CPU)."""
    _local.one_torch_thread = True


def _tile_buffers(channels: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch views of this thread's buffers (:func:`cloudclear.metrics.scratch.buffer`): float32
    planes (channels, h, w) and a channels-last (1, channels, h, w) array for their copy."""
    import torch

    planes = torch.from_numpy(scratch.buffer("planes", (channels, h, w), np.float32))
    last = torch.from_numpy(scratch.buffer("last", (1, h, w, channels), np.float32)).permute(0, 3, 1, 2)
    return planes, last


@functools.cache
def _kernels(window: SsimWindow, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's vertical and horizontal float32 kernels, one per channel (depthwise)."""
    import torch

    k = torch.from_numpy(window.float32_kernel().copy())
    return k.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), k.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
