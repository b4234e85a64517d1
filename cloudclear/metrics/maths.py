"""The maths of the figures: running sums per image, the SSIM map, PSNR, and the final figures.

Both the raster scorer (:mod:`cloudclear.metrics.strips`) and the in-memory patch scorer
(:mod:`cloudclear.metrics.patches`) add blocks of pixels through :func:`pixel_sums`, so a figure
means the same whichever computed it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloudclear.metrics.conventions import ScoreOptions, SsimWindow
from cloudclear.metrics.results import BandScore, Score

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
    n = int(sel.sum())
    dot, pp, rr = np.zeros(n), np.zeros(n), np.zeros(n)
    per_band = []
    for x, y in pairs:
        xs, ys = x[core][sel], y[core][sel]
        d = xs - ys
        ssim = float(ssim_map(x, y, window, peak)[core][ssim_sel].sum()) if ssim_sel.any() else 0.0
        per_band.append((float(np.abs(d).sum()), float(np.dot(d, d)), float(xs.sum()), float(ys.sum()), ssim))
        dot += xs * ys
        pp += xs * xs
        rr += ys * ys
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


def ssim_map(x: np.ndarray, y: np.ndarray, window: SsimWindow, peak: float) -> np.ndarray:
    """The SSIM map of two float64 images (valid only where the window fits; the caller crops).

    Six image-sized buffers, reused in place: large temporaries cost page faults at tile width.
    """
    from scipy.ndimage import correlate1d

    k = np.asarray(window.kernel)
    c1, c2 = (_K1 * peak) ** 2, (_K2 * peak) ** 2
    tmp, ux, uy, sxy, sxx_yy, out = (np.empty_like(x) for _ in range(6))

    def local_mean(a: np.ndarray, dst: np.ndarray) -> None:
        correlate1d(a, k, axis=0, mode="nearest", output=tmp)
        correlate1d(tmp, k, axis=1, mode="nearest", output=dst)

    local_mean(x, ux)
    local_mean(y, uy)
    np.multiply(x, y, out=out)
    local_mean(out, sxy)
    # The denominator needs only var(x) + var(y): filter x^2 + y^2 once instead of twice.
    np.multiply(x, x, out=out)
    np.multiply(y, y, out=tmp)
    out += tmp
    local_mean(out, sxx_yy)
    cov_norm = 1.0
    if window.sample_covariance:
        npix = len(k) ** 2
        cov_norm = npix / (npix - 1.0)
    np.multiply(ux, uy, out=out)  # ux uy
    sxy -= out
    sxy *= 2.0 * cov_norm
    sxy += c2  # A2 = 2 cov + C2
    out *= 2.0
    out += c1  # A1 = 2 ux uy + C1
    np.square(ux, out=ux)
    np.square(uy, out=uy)
    ux += uy  # ux^2 + uy^2
    sxx_yy -= ux
    sxx_yy *= cov_norm
    sxx_yy += c2  # B2 = var x + var y + C2
    ux += c1  # B1
    out *= sxy
    ux *= sxx_yy
    out /= ux
    return out
