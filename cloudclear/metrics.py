"""Reconstruction metrics: MAE, RMSE, PSNR, SSIM and SAM between a prediction and a reference.

The anchors disagree on conventions (DESIGN.md section 8), so each is an option of
:class:`ScoreOptions`; the defaults follow U-TILISE. Rasters are streamed in strips of rows, so
a full 10980 x 10980 tile scores in bounded memory, and SSIM is computed on strips with a halo
of the window radius, so the blockwise value equals the whole-image value.

Formulas, with p and r the prediction and reference reflectance (``DN * scale + offset``, clipped
to [0, peak]) over the scored pixel set P and bands b = 1..B:

- MAE = mean |p - r|, RMSE = sqrt(mean (p - r)^2), over P x bands (per band: over P);
- PSNR = 20 log10(peak / RMSE) (10 log10(peak^2 / MSE));
- SSIM = mean over P' and bands of (2 mu_p mu_r + C1)(2 s_pr + C2) /
  ((mu_p^2 + mu_r^2 + C1)(s_p^2 + s_r^2 + C2)), local statistics in a window (Gaussian
  sigma 1.5, 11 x 11, as Wang et al. 2004; or 7 x 7 uniform with sample covariance, as
  scikit-image's default), C1 = (0.01 peak)^2, C2 = (0.03 peak)^2; P' is P without the pixels
  within the window radius of the image edge or of a nodata pixel (scikit-image crops the
  same border);
- SAM = mean over P of arccos(<p, r> / (|p| |r|)), the angle between spectra (pixels with a
  zero spectrum are left out).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, ScoreError
from cloudclear.masks import MaskClass
from cloudclear.scenes import FileInfo, classify, normalise_band, read_file_info, reflectance_scale

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

log = logging.getLogger(__name__)

#: Which pixels are scored, given the input date's cloud mask: name -> (classes, help).
PIXEL_SETS: dict[str, tuple[tuple[int, ...] | None, str]] = {
    "all": (None, "every pixel valid in both rasters"),
    "cloudy": (tuple(masks.OBSCURED), "pixels the mask calls cloud, thin cloud or shadow"),
    "clear": ((MaskClass.CLEAR, MaskClass.SNOW), "pixels the mask calls clear (snow included)"),
    "occluded": (
        (*masks.OBSCURED, MaskClass.NODATA),
        "pixels the input did not observe: cloud, thin cloud, shadow or nodata in the mask (U-TILISE)",
    ),
    "observed": ((MaskClass.CLEAR, MaskClass.SNOW), "pixels the input observed; the same set as clear (U-TILISE)"),
}

#: How figures over several images combine.
AGGREGATIONS = {
    "pooled": "one sum over every scored pixel of every image (Decloud)",
    "per-image": "figures per image, then their mean (UnCRtainTS)",
}


@dataclass(frozen=True)
class SsimWindow:
    """An SSIM window: its 1-D kernel (separable) and the covariance normalisation."""

    name: str
    kernel: tuple[float, ...]
    sample_covariance: bool
    help: str

    @property
    def radius(self) -> int:
        return len(self.kernel) // 2


def _gaussian_kernel(sigma: float, truncate: float) -> tuple[float, ...]:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return tuple(float(v) for v in k / k.sum())


#: SSIM windows: name -> window.
SSIM_WINDOWS: dict[str, SsimWindow] = {
    "gaussian": SsimWindow(
        "gaussian", _gaussian_kernel(1.5, 3.5), False, "11 x 11 Gaussian, sigma 1.5 (Wang et al. 2004)"
    ),
    "uniform": SsimWindow("uniform", (1.0 / 7,) * 7, True, "7 x 7 uniform, sample covariance (scikit-image default)"),
}

SAM_UNITS = ("deg", "rad")
# Columns processed at once per band: bounds the SSIM working set (eight float64 buffers).
_COL_CHUNK = 2048
_K1, _K2 = 0.01, 0.03


@dataclass(frozen=True)
class ScoreOptions:
    """Conventions for :func:`score`.

    Attributes:
        pixels: a key of :data:`PIXEL_SETS`, or "auto" (cloudy with a mask, all without).
        aggregate: a key of :data:`AGGREGATIONS` (matters when several images are combined).
        scale: reflectance = DN / scale for files whose metadata give no scale.
        peak: the PSNR peak and SSIM data range, in reflectance units (1.0; 10000 with scale 1).
        clip: clip reflectance to [0, peak] first, as the anchors' normalisation does.
        sam_units: "deg" or "rad".
        nodata: a value to ignore in both rasters, overriding their own; None: the files' nodata.
            A pixel is nodata when every band holds it (or any band is NaN).
        bands: bands to score, by name ("B04") or 1-based index ("3"); None: all, matched by name.
        ssim_window: a key of :data:`SSIM_WINDOWS`.
        reproject: warp the prediction onto the reference grid when the CRS or resolution differ.
        block_rows: rows per strip read at once (memory grows with it, not with the tile).
    """

    pixels: str = "auto"
    aggregate: str = "pooled"
    scale: float = 10000.0
    peak: float = 1.0
    clip: bool = True
    sam_units: str = "deg"
    nodata: float | None = None
    bands: tuple[str, ...] | None = None
    ssim_window: str = "gaussian"
    reproject: bool = False
    block_rows: int = 512

    def __post_init__(self) -> None:
        if self.pixels != "auto" and self.pixels not in PIXEL_SETS:
            raise ScoreError(f"unknown pixel set {self.pixels!r}; choose auto, {', '.join(PIXEL_SETS)}")
        if self.aggregate not in AGGREGATIONS:
            raise ScoreError(f"unknown aggregation {self.aggregate!r}; choose {', '.join(AGGREGATIONS)}")
        if self.sam_units not in SAM_UNITS:
            raise ScoreError(f"unknown SAM unit {self.sam_units!r}; choose {', '.join(SAM_UNITS)}")
        if self.ssim_window not in SSIM_WINDOWS:
            raise ScoreError(f"unknown SSIM window {self.ssim_window!r}; choose {', '.join(SSIM_WINDOWS)}")
        if not self.peak > 0 or not self.scale > 0:
            raise ScoreError("--peak and --scale must be positive")
        if self.block_rows < 1:
            raise ScoreError("block_rows must be at least 1")


@dataclass(frozen=True)
class BandScore:
    """Figures for one band."""

    band: str
    mae: float
    rmse: float
    psnr: float
    ssim: float


@dataclass(frozen=True)
class Score:
    """Figures for one prediction (or several images combined) against its reference.

    ``psnr`` is inf when the images are identical; ``ssim``/``sam`` are NaN when no pixel
    qualifies for them (the JSON form writes null).
    """

    pred: str
    ref: str
    mask: str | None
    pixels: str
    aggregate: str
    n_images: int
    n_pixels: int
    n_ssim: int
    n_sam: int
    mae: float
    rmse: float
    psnr: float
    ssim: float
    sam: float
    sam_units: str
    bands: tuple[BandScore, ...]

    def to_dict(self) -> dict[str, Any]:
        """Overall figures first (mae, rmse, psnr, ssim, sam), then per band and the context."""
        d: dict[str, Any] = {k: _json_float(getattr(self, k)) for k in ("mae", "rmse", "psnr", "ssim", "sam")}
        d["bands"] = {b.band: {k: _json_float(v) for k, v in asdict(b).items() if k != "band"} for b in self.bands}
        for k in ("sam_units", "pixels", "aggregate", "n_images", "n_pixels", "n_ssim", "n_sam", "pred", "ref", "mask"):
            d[k] = getattr(self, k)
        return d


def _json_float(v: float) -> float | None:
    return None if not math.isfinite(v) else v


@dataclass(frozen=True)
class Comparison:
    """Several predictions scored: one :class:`Score` each, and their combination when each
    prediction has its own reference (a sequence), aggregated as the options say."""

    results: tuple[Score, ...]
    combined: Score | None = None
    options: ScoreOptions = field(default_factory=ScoreOptions)
    views: tuple[Quicklook, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"results": [r.to_dict() for r in self.results]}
        if self.combined is not None:
            out["combined"] = self.combined.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.results[0].to_dict() if len(self.results) == 1 else self.to_dict(), indent=2)

    def to_text(self) -> str:
        """A table for people: per band for one prediction, one row per prediction for several."""
        opts = self.options
        err = (lambda v: f"{v:9.1f}") if opts.peak > 10 else (lambda v: f"{v:9.5f}")
        first = self.results[0]
        where = first.pixels + (f" (mask {first.mask})" if first.mask and first.pixels != "all" else "")
        lines: list[str] = []
        if len(self.results) == 1:
            lines += [
                f"prediction  {first.pred}",
                f"reference   {first.ref}",
                f"pixels      {where}: {first.n_pixels:,} scored, {first.n_ssim:,} for SSIM",
                f"{'band':<8}{'MAE':>9} {'RMSE':>9} {'PSNR dB':>8} {'SSIM':>7}",
            ]
            for b in first.bands:
                lines.append(f"{b.band:<8}{err(b.mae)} {err(b.rmse)} {b.psnr:8.2f} {b.ssim:7.4f}")
            lines.append(
                f"{'all':<8}{err(first.mae)} {err(first.rmse)} {first.psnr:8.2f} {first.ssim:7.4f}"
                f"   SAM {first.sam:.3f} {first.sam_units}"
            )
            return "\n".join(lines)
        refs = {r.ref for r in self.results}
        if len(refs) == 1:
            lines.append(f"reference   {first.ref}")
        shared_mask = len({r.mask for r in self.results}) == 1
        lines.append(f"pixels      {where if shared_mask else first.pixels}")
        name_w = max(12, *(len(Path(r.pred).name) for r in self.results))
        ref_w = max(10, *(len(Path(r.ref).name) for r in self.results)) if len(refs) > 1 else 0
        head = f"{'prediction':<{name_w}} " + (f"{'reference':<{ref_w}} " if ref_w else "")
        lines.append(
            head + f"{'pixels':>11} {'MAE':>9} {'RMSE':>9} {'PSNR dB':>8} {'SSIM':>7} {'SAM ' + opts.sam_units:>8}"
        )
        rows = list(self.results)
        if self.combined is not None:
            rows.append(self.combined)
        for i, r in enumerate(rows):
            if i == len(self.results):
                name = f"{self.combined.aggregate if self.combined else ''} ({r.n_images} images)"
                label = f"{name:<{name_w}} " + (" " * (ref_w + 1) if ref_w else "")
            else:
                label = f"{Path(r.pred).name:<{name_w}} " + (f"{Path(r.ref).name:<{ref_w}} " if ref_w else "")
            lines.append(
                label + f"{r.n_pixels:>11,} {err(r.mae)} {err(r.rmse)} {r.psnr:8.2f} {r.ssim:7.4f} {r.sam:8.3f}"
            )
        return "\n".join(lines)

    def to_csv(self) -> str:
        """One row per prediction and band ("all" for the overall figures)."""
        lines = ["pred,ref,band,pixels,n_pixels,mae,rmse,psnr,ssim,sam,sam_units"]
        rows = [*self.results, *([self.combined] if self.combined else [])]
        for s in rows:
            ctx = f"{_csv(s.pred)},{_csv(s.ref)}"
            lines.append(
                f"{ctx},all,{s.pixels},{s.n_pixels},{s.mae:.8g},{s.rmse:.8g},{s.psnr:.8g},{s.ssim:.8g},"
                f"{s.sam:.8g},{s.sam_units}"
            )
            for b in s.bands:
                lines.append(
                    f"{ctx},{b.band},{s.pixels},{s.n_pixels},{b.mae:.8g},{b.rmse:.8g},{b.psnr:.8g},{b.ssim:.8g},,"
                )
        return "\n".join(lines) + "\n"


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


# ---------------------------------------------------------------------------------------------
# Opening and aligning the rasters


@dataclass(frozen=True)
class _Source:
    """One raster to read on the common grid: a dataset (or a warped view) and a window in it."""

    path: str
    info: FileInfo
    bands: tuple[int, ...]
    col_off: int
    row_off: int
    warped: bool


def _open_info(path: str | os.PathLike[str], what: str) -> FileInfo:
    p = Path(path)
    if not p.exists():
        raise ScoreError(f"{p}: {what} not found")
    if p.is_dir():
        raise ScoreError(f"{p}: {what} is a folder, not a raster")
    info = read_file_info(p)
    if info.crs is None:
        raise InvalidRasterError(f"{p}: {what} has no CRS; cannot place it against the other raster")
    return info


def _band_names(info: FileInfo) -> list[str | None]:
    return [normalise_band(d) or (d or None) for d in info.descriptions]


def match_bands(pred: FileInfo, ref: FileInfo, bands: Sequence[str] | None) -> tuple[list[int], list[int], list[str]]:
    """Pair the prediction's bands with the reference's.

    Returns:
        1-based band indexes in the prediction and the reference, and the band labels.

    Raises:
        ScoreError: band counts or names differ and ``bands`` does not say which to compare.
    """
    pn, rn = _band_names(pred), _band_names(ref)
    named = all(pn) and all(rn)
    if bands:
        pi, ri, labels = [], [], []
        for token in bands:
            token = token.strip()
            if token.isdigit():
                idx = int(token)
                for info in (pred, ref):
                    if not 1 <= idx <= info.count:
                        raise ScoreError(f"{info.path}: no band {idx} (it has {info.count})")
                pi.append(idx)
                ri.append(idx)
                labels.append(rn[idx - 1] or f"band {idx}")
                continue
            name = normalise_band(token) or token
            for info, names, out in ((pred, pn, pi), (ref, rn, ri)):
                if name not in names:
                    have = ", ".join(n or "?" for n in names)
                    raise ScoreError(f"{info.path}: no band {name} (it has {have})")
                out.append(names.index(name) + 1)
            labels.append(name)
        return pi, ri, labels
    if named and set(pn) == set(rn) and len(pn) == len(rn):
        return [pn.index(n) + 1 for n in rn], list(range(1, ref.count + 1)), [str(n) for n in rn]
    if named and pred.count == ref.count:
        raise ScoreError(
            f"{pred.path}: bands {', '.join(map(str, pn))} differ from the reference's "
            f"({', '.join(map(str, rn))}); choose common bands with --bands"
        )
    if pred.count != ref.count:
        common = [n for n in pn if n and n in rn]
        hint = f" (e.g. --bands {','.join(map(str, common))})" if common else ""
        raise ScoreError(
            f"{pred.path}: {pred.count} band(s) but the reference {Path(ref.path).name} has {ref.count}; "
            f"choose the bands to compare with --bands{hint}"
        )
    same = list(range(1, ref.count + 1))
    return same, same, [rn[i - 1] or (pn[i - 1] or f"band {i}") for i in same]


def _same_crs(a: str, b: str) -> bool:
    from rasterio.crs import CRS

    return bool(CRS.from_wkt(a) == CRS.from_wkt(b))


def _offset_on(ref: FileInfo, other: FileInfo) -> tuple[int, int] | None:
    """(col, row) of ``other``'s origin in ``ref``'s pixel grid when the grids coincide, else None."""
    ra, rb, rc, rd, re_, rf = ref.transform
    oa, ob, oc, od, oe, of = other.transform
    if rb or rd or ob or od:
        return None
    if not (math.isclose(ra, oa, rel_tol=1e-9) and math.isclose(re_, oe, rel_tol=1e-9)):
        return None
    col, row = (oc - rc) / ra, (of - rf) / re_
    if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
        return None
    return round(col), round(row)


@dataclass(frozen=True)
class _Grid:
    """The common region, in the reference's pixel grid."""

    col_off: int
    row_off: int
    width: int
    height: int


def _align(pred: FileInfo, ref: FileInfo, reproject: bool) -> tuple[_Grid, bool]:
    """The region both rasters cover, and whether the prediction must be warped onto the reference."""
    assert pred.crs is not None and ref.crs is not None
    same_crs = _same_crs(pred.crs, ref.crs)
    offset = _offset_on(ref, pred) if same_crs else None
    if offset is None:
        if not reproject:
            from rasterio.crs import CRS

            if not same_crs:
                why = "a different CRS"
            elif not (
                math.isclose(pred.transform[0], ref.transform[0], rel_tol=1e-9)
                and math.isclose(pred.transform[4], ref.transform[4], rel_tol=1e-9)
            ):
                unit = "deg" if CRS.from_wkt(ref.crs).is_geographic else "m"
                res = f"{abs(pred.transform[0]):g} {unit} vs {abs(ref.transform[0]):g} {unit}"
                why = f"a different resolution ({res})"
            else:
                why = "a grid shifted by a fraction of a pixel"
            raise ScoreError(
                f"{pred.path}: {why} from the reference {Path(ref.path).name}; "
                "pass --reproject to warp the prediction onto the reference grid"
            )
        from rasterio.warp import transform_bounds

        left, bottom, right, top = transform_bounds(pred.crs, ref.crs, *pred.bounds)
        a, _, c, _, e, f = ref.transform
        c0, c1 = sorted(((left - c) / a, (right - c) / a))
        r0, r1 = sorted(((top - f) / e, (bottom - f) / e))
        col0, row0 = max(0, math.floor(c0)), max(0, math.floor(r0))
        col1, row1 = min(ref.width, math.ceil(c1)), min(ref.height, math.ceil(r1))
        warped = True
    else:
        col, row = offset
        col0, row0 = max(0, col), max(0, row)
        col1, row1 = min(ref.width, col + pred.width), min(ref.height, row + pred.height)
        warped = False
    if col1 <= col0 or row1 <= row0:
        raise ScoreError(f"{pred.path}: does not overlap the reference {Path(ref.path).name}")
    return _Grid(col0, row0, col1 - col0, row1 - row0), warped


def _mask_band(info: FileInfo, convention: str | None) -> masks.MaskBand:
    if convention:
        if convention not in masks.CONVENTIONS:
            raise ScoreError(f"unknown mask convention {convention!r}; choose {', '.join(masks.CONVENTIONS)}")
        return masks.MaskBand(info.path, 1, convention)
    try:
        role = classify(info)
    except InvalidRasterError:
        role = None
    if role is None or role.mask is None:
        raise ScoreError(
            f"{info.path}: cannot tell which mask convention this file uses; "
            f"name it with --mask-convention ({', '.join(masks.CONVENTIONS)})"
        )
    return role.mask


# ---------------------------------------------------------------------------------------------
# Strip reading


class _Reader:
    """Reads strips of the common grid from one raster (directly, or warped onto the grid)."""

    def __init__(
        self,
        info: FileInfo,
        ref: FileInfo,
        grid: _Grid,
        bands: Sequence[int],
        *,
        warp: str | None,
        nodata: float | None,
    ) -> None:
        import rasterio

        self.info = info
        self.bands = list(bands)
        self._ds: DatasetReader = rasterio.open(info.path)
        self._vrt: Any = None
        self.grid = grid
        if warp is None:
            offset = _offset_on(ref, info)
            assert offset is not None
            self.col = grid.col_off - offset[0]
            self.row = grid.row_off - offset[1]
            self.nodata = nodata
            self._src: Any = self._ds
        else:
            from rasterio.enums import Resampling
            from rasterio.vrt import WarpedVRT
            from rasterio.warp import transform_bounds

            # GDAL derives the resampling scale from each requested window unless told; fixing
            # it to the whole raster's ratio makes strip reads equal one whole read.
            left, bottom, right, top = transform_bounds(info.crs, ref.crs, *info.bounds)
            xscale = (right - left) / abs(ref.transform[0]) / info.width
            yscale = (top - bottom) / abs(ref.transform[4]) / info.height
            self._vrt = WarpedVRT(
                self._ds,
                crs=ref.crs,
                transform=rasterio.Affine(*ref.transform),
                width=ref.width,
                height=ref.height,
                resampling=Resampling[warp],
                dtype="float32",
                nodata=float("nan"),
                src_nodata=nodata,
                XSCALE=f"{xscale:.12g}",
                YSCALE=f"{yscale:.12g}",
            )
            self._src = self._vrt
            self.col, self.row = grid.col_off, grid.row_off
            self.nodata = float("nan")

    def read(self, row: int, height: int) -> np.ndarray:
        """Rows [row, row + height) of the common grid, shape (bands, height, width); outside the
        raster is filled with nodata (NaN for floats, else the nodata value or 0)."""
        from rasterio.windows import Window

        win = Window(self.col, self.row + row, self.grid.width, height)
        fill = self.nodata if self.nodata is not None else 0
        return self._src.read(self.bands, window=win, boundless=self._outside(win), fill_value=fill)

    def read_valid(self, row: int, height: int) -> np.ndarray:
        """GDAL's mask of band 1 for the same rows: False outside the raster or where masked."""
        from rasterio.windows import Window

        win = Window(self.col, self.row + row, self.grid.width, height)
        return self._src.read_masks(self.bands[0], window=win, boundless=self._outside(win)) > 0

    def _outside(self, win: Any) -> bool:
        src = self._src
        return bool(
            win.col_off < 0
            or win.row_off < 0
            or win.col_off + win.width > src.width
            or win.row_off + win.height > src.height
        )

    def close(self) -> None:
        if self._vrt is not None:
            self._vrt.close()
        self._ds.close()


def _nodata_of(info: FileInfo, override: float | None) -> float | None:
    if override is not None:
        return override
    return info.nodata


def _valid(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """A pixel is valid unless every band holds nodata or any band is NaN (rasterio's dataset mask)."""
    if raw.dtype.kind == "f":
        valid = ~np.isnan(raw).any(axis=0)
    else:
        valid = np.ones(raw.shape[1:], dtype=bool)
    if nodata is not None and not math.isnan(nodata):
        valid &= ~(raw == nodata).all(axis=0)
    return valid


# ---------------------------------------------------------------------------------------------
# Accumulation


@dataclass
class _Sums:
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

    def add(self, other: _Sums) -> None:
        self.n += other.n
        self.n_ssim += other.n_ssim
        self.n_sam += other.n_sam
        self.abs_err += other.abs_err
        self.sq_err += other.sq_err
        self.ssim += other.ssim
        self.sam += other.sam
        self.sum_pred += other.sum_pred
        self.sum_ref += other.sum_ref


_BandSums = tuple[float, float, float, float, float]  # |d|, d^2, sum pred, sum ref, SSIM


def _pixel_sums(
    pairs: Iterator[tuple[np.ndarray, np.ndarray]],
    core: tuple[slice, slice],
    sel: np.ndarray,
    ssim_sel: np.ndarray,
    window: SsimWindow,
    peak: float,
) -> tuple[list[_BandSums], float, int]:
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
        ssim = float(_ssim_map(x, y, window, peak)[core][ssim_sel].sum()) if ssim_sel.any() else 0.0
        per_band.append((float(np.abs(d).sum()), float(np.dot(d, d)), float(xs.sum()), float(ys.sum()), ssim))
        dot += xs * ys
        pp += xs * xs
        rr += ys * ys
    norm = np.sqrt(pp * rr)
    ok = norm > 0
    cos = np.clip(dot[ok] / norm[ok], -1.0, 1.0)
    return per_band, float(np.arccos(cos).sum()), int(ok.sum())


def _add_pixel_sums(sums: _Sums, per_band: list[_BandSums], sam: float, n_ok: int) -> None:
    for i, (ae, se, sp, sr, ss) in enumerate(per_band):
        sums.abs_err[i] += ae
        sums.sq_err[i] += se
        sums.sum_pred += sp
        sums.sum_ref += sr
        sums.ssim[i] += ss
    sums.sam += sam
    sums.n_sam += n_ok


def _psnr(mse: float, peak: float) -> float:
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse) if math.isfinite(mse) else math.nan


def _finish(
    sums: _Sums, labels: Sequence[str], opts: ScoreOptions, *, pred: str, ref: str, mask: str | None, pixels: str
) -> Score:
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
        BandScore(lab, float(mae_b[i]), math.sqrt(mse_b[i]), _psnr(float(mse_b[i]), opts.peak), float(ssim_b[i]))
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
        psnr=_psnr(mse, opts.peak),
        ssim=float(ssim_b.mean()),
        sam=sam,
        sam_units=opts.sam_units,
        bands=bands,
    )


def _ssim_map(x: np.ndarray, y: np.ndarray, window: SsimWindow, peak: float) -> np.ndarray:
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


@dataclass
class _Strip:
    pred: np.ndarray
    ref: np.ndarray
    valid: np.ndarray  # both rasters valid
    selected: np.ndarray  # valid and in the pixel set


class _Scorer:
    """Streams one prediction against its reference and returns the sums."""

    def __init__(
        self,
        pred: _Reader,
        ref: _Reader,
        mask: _Reader | None,
        mask_band: masks.MaskBand | None,
        ref_mask: _Reader | None,
        ref_mask_band: masks.MaskBand | None,
        pred_scale: Sequence[tuple[float, float]],
        ref_scale: Sequence[tuple[float, float]],
        pixels: str,
        opts: ScoreOptions,
    ) -> None:
        self.pred, self.ref, self.mask, self.ref_mask = pred, ref, mask, ref_mask
        self.mask_band, self.ref_mask_band = mask_band, ref_mask_band
        self.pred_scale, self.ref_scale = pred_scale, ref_scale
        self.classes = PIXEL_SETS[pixels][0]
        self.opts = opts
        self.window = SSIM_WINDOWS[opts.ssim_window]
        self._pool: ThreadPoolExecutor
        self.view_parts: list[_Strip] = []

    def _read(self, row: int, height: int) -> _Strip:
        p = self.pred.read(row, height)
        r = self.ref.read(row, height)
        valid = _valid(p, self.pred.nodata) & _valid(r, self.ref.nodata)
        selected = valid.copy()
        if self.classes is not None and self.mask is not None and self.mask_band is not None:
            selected &= np.isin(self._classes(self.mask, self.mask_band, row, height), self.classes)
        if self.ref_mask is not None and self.ref_mask_band is not None:
            rc = self._classes(self.ref_mask, self.ref_mask_band, row, height)
            selected &= np.isin(rc, (MaskClass.CLEAR, MaskClass.SNOW))
        return _Strip(p, r, valid, selected)

    @staticmethod
    def _classes(reader: _Reader, band: masks.MaskBand, row: int, height: int) -> np.ndarray:
        raw = reader.read(row, height)[0]
        nodata = reader.info.nodata if reader._vrt is None else None
        if raw.dtype.kind == "f":
            outside = np.isnan(raw)
            raw = np.where(outside, 0, raw)
        else:
            outside = ~reader.read_valid(row, height)
        cls = masks.decode(raw, band.convention, nodata)
        cls[outside] = MaskClass.NODATA
        return cls

    def _reflectance(self, raw: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
        out = raw.astype(np.float64)
        if scale != (1.0, 0.0):
            out *= scale[0]
            out += scale[1]
        if self.opts.clip:
            np.clip(out, 0.0, self.opts.peak, out=out)
        return out

    def run(self, progress: Callable[[int], None] | None = None, view_factor: int = 0) -> _Sums:
        """Score every strip; with ``view_factor``, also keep every ``view_factor``-th row and
        column of each strip as read (in ``self.view_parts``), so a figure needs no second read."""
        grid = self.pred.grid
        H, W = grid.height, grid.width
        nb = len(self.pred.bands)
        pad = self.window.radius
        sums = _Sums(nb)
        block = self.opts.block_rows
        carry: _Strip | None = None  # rows [carry_row, ...) kept for the next strip's halo
        carry_row = 0
        done = 0  # rows [0, done) are scored
        starts = list(range(0, H, block))
        view_rows = {r0: k0 for r0, _, k0 in _strided_rows(H, block, view_factor)} if view_factor else {}
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(threads) as self._pool:
            future = pool.submit(self._read, 0, min(block, H))
            for k, r0 in enumerate(starts):
                h = min(block, H - r0)
                new = future.result()
                if r0 in view_rows:
                    self.view_parts.append(_every(new, view_rows[r0], view_factor))
                if k + 1 < len(starts):
                    nxt = starts[k + 1]
                    future = pool.submit(self._read, nxt, min(block, H - nxt))
                buf = new if carry is None else _concat(carry, new)
                buf_row = r0 if carry is None else carry_row
                last = r0 + h >= H
                end = H if last else r0 + h - pad
                if end > done:
                    self._score_rows(buf, buf_row, done, end, H, W, pad, sums)
                    if progress:
                        progress(end - done)
                    done = end
                keep = max(done - pad, buf_row)
                carry = _slice(buf, keep - buf_row, None)
                carry_row = keep
        return sums

    def _score_rows(self, buf: _Strip, buf_row: int, o0: int, o1: int, H: int, W: int, pad: int, sums: _Sums) -> None:
        """Score rows [o0, o1) of the grid; ``buf`` holds rows from ``buf_row`` with a halo."""
        from scipy.ndimage import minimum_filter

        s0 = max(o0 - pad, buf_row)
        s1 = min(o1 + pad, buf_row + buf.valid.shape[0])
        slab = _slice(buf, s0 - buf_row, s1 - buf_row)
        a, b = o0 - s0, o1 - s0  # output rows inside the slab
        sel = slab.selected[a:b]
        # SSIM counts a pixel when its whole window lies inside the image and holds valid pixels.
        win_ok = minimum_filter(slab.valid.view(np.uint8), size=2 * pad + 1, mode="constant", cval=0)[a:b] > 0
        rows = np.arange(o0, o1)
        inner_rows = (rows >= pad) & (rows < H - pad)
        win_ok &= inner_rows[:, None]
        win_ok[:, :pad] = False
        win_ok[:, W - pad :] = False
        ssim_sel = sel & win_ok
        n_sel, n_ssim = int(sel.sum()), int(ssim_sel.sum())
        sums.n += n_sel
        sums.n_ssim += n_ssim
        if n_sel == 0 and n_ssim == 0:
            return

        chunks = [(c0, min(c0 + _COL_CHUNK, W)) for c0 in range(0, W, _COL_CHUNK)]
        peak, window = self.opts.peak, self.window

        nb = len(self.pred.bands)

        def chunk(c0: int, c1: int) -> tuple[list[_BandSums], float, int]:
            # Columns [c0, c1) of every band, read with a halo of the window radius each side.
            e0, e1 = max(c0 - pad, 0), min(c1 + pad, W)
            core = (slice(a, b), slice(c0 - e0, c1 - e0))
            pairs = (
                (
                    self._reflectance(slab.pred[i][:, e0:e1], self.pred_scale[i]),
                    self._reflectance(slab.ref[i][:, e0:e1], self.ref_scale[i]),
                )
                for i in range(nb)
            )
            return _pixel_sums(pairs, core, sel[:, c0:c1], ssim_sel[:, c0:c1], window, peak)

        # Column chunks are independent and scipy / numpy release the GIL, so threads share
        # the cores; chunks keep the working set small whatever the tile width. Results are
        # summed in chunk order, so figures do not depend on thread timing.
        for per_band, sam, n_ok in self._pool.map(lambda c: chunk(*c), chunks):
            _add_pixel_sums(sums, per_band, sam, n_ok)


def _concat(a: _Strip, b: _Strip) -> _Strip:
    return _Strip(
        np.concatenate([a.pred, b.pred], axis=1),
        np.concatenate([a.ref, b.ref], axis=1),
        np.concatenate([a.valid, b.valid], axis=0),
        np.concatenate([a.selected, b.selected], axis=0),
    )


def _every(s: _Strip, k0: int, f: int) -> _Strip:
    """Every f-th row (from row k0) and column of a strip, copied so the strip can be freed."""
    return _Strip(
        s.pred[:, k0::f, ::f].copy(),
        s.ref[:, k0::f, ::f].copy(),
        s.valid[k0::f, ::f].copy(),
        s.selected[k0::f, ::f].copy(),
    )


def _slice(s: _Strip, start: int, stop: int | None) -> _Strip:
    return _Strip(s.pred[:, start:stop], s.ref[:, start:stop], s.valid[start:stop], s.selected[start:stop])


# ---------------------------------------------------------------------------------------------
# Public entry points


@dataclass(frozen=True)
class Pair:
    """One prediction, its reference, and optionally the input's cloud mask and the reference's mask."""

    pred: str
    ref: str
    mask: str | None = None
    ref_mask: str | None = None


def _date_in_name(path: str) -> str | None:
    import re

    from cloudclear.scenes import DEFAULT_DATE_PATTERN

    m = re.search(DEFAULT_DATE_PATTERN, Path(path).name)
    return m.group("date").replace("-", "") if m else None


def pair_up(
    preds: Sequence[str],
    refs: Sequence[str],
    masks_: Sequence[str] = (),
    ref_masks: Sequence[str] = (),
) -> list[Pair]:
    """Pair predictions with references and masks.

    One reference serves every prediction (a comparison of methods); as many references as
    predictions pair by order (a sequence: one date each). Masks likewise: none, one for all, or
    one per prediction. Paired files whose names carry different dates are refused, so a sorted
    glob that skipped a date cannot pair the wrong dates silently.

    Raises:
        ScoreError: the counts do not pair, or paired names carry different dates.
    """
    if not preds:
        raise ScoreError("nothing to score: no prediction given")
    if not refs:
        raise ScoreError("no reference given")

    def spread(items: Sequence[str], what: str) -> list[str | None]:
        if not items:
            return [None] * len(preds)
        if len(items) == 1:
            return [items[0]] * len(preds)
        if len(items) != len(preds):
            raise ScoreError(f"{len(preds)} prediction(s) but {len(items)} {what}: give one, or one per prediction")
        return list(items)

    ref_list = spread(refs, "references")
    mask_list = spread(masks_, "masks")
    ref_mask_list = spread(ref_masks, "reference masks")
    pairs = []
    for pred, ref, mask, ref_mask in zip(preds, ref_list, mask_list, ref_mask_list, strict=True):
        assert ref is not None
        if len(refs) > 1:
            for other in (ref, mask):
                if other is None:
                    continue
                dp, do = _date_in_name(pred), _date_in_name(other)
                if dp and do and dp != do:
                    raise ScoreError(f"{pred}: dated {dp} but paired by order with {other} dated {do}")
        pairs.append(Pair(pred, ref, mask, ref_mask))
    return pairs


def _resolve_pixels(opts: ScoreOptions, mask: str | None) -> str:
    pixels = opts.pixels
    if pixels == "auto":
        return "cloudy" if mask else "all"
    if pixels != "all" and not mask:
        raise ScoreError(f"--pixels {pixels} needs the input date's cloud mask (--mask)")
    return pixels


@dataclass
class _OpenPair:
    """A pair opened for reading: its readers on the common grid, and what to score."""

    pair: Pair
    ref_info: FileInfo
    grid: _Grid
    labels: list[str]
    pixels: str
    scorer: _Scorer
    readers: list[_Reader]

    def close(self) -> None:
        for rd in self.readers:
            rd.close()


def _open_pair(pair: Pair, opts: ScoreOptions, mask_convention: str | None) -> _OpenPair:
    pred_info = _open_info(pair.pred, "prediction")
    ref_info = _open_info(pair.ref, "reference")
    pi, ri, labels = match_bands(pred_info, ref_info, opts.bands)
    grid, warped = _align(pred_info, ref_info, opts.reproject)
    pixels = _resolve_pixels(opts, pair.mask)
    readers: list[_Reader] = []
    try:
        warp = "bilinear" if warped else None
        pred = _Reader(pred_info, ref_info, grid, pi, warp=warp, nodata=_nodata_of(pred_info, opts.nodata))
        readers.append(pred)
        ref = _Reader(ref_info, ref_info, grid, ri, warp=None, nodata=_nodata_of(ref_info, opts.nodata))
        readers.append(ref)
        mask = mask_band = ref_mask = ref_mask_band = None
        if pair.mask and PIXEL_SETS[pixels][0] is not None:
            mask, mask_band = _mask_reader(pair.mask, ref_info, grid, mask_convention)
            readers.append(mask)
        if pair.ref_mask:
            ref_mask, ref_mask_band = _mask_reader(pair.ref_mask, ref_info, grid, mask_convention)
            readers.append(ref_mask)
        scorer = _Scorer(
            pred,
            ref,
            mask,
            mask_band,
            ref_mask,
            ref_mask_band,
            [reflectance_scale(pred_info, i, opts.scale) for i in pi],
            [reflectance_scale(ref_info, i, opts.scale) for i in ri],
            pixels,
            opts,
        )
    except BaseException:
        for rd in readers:
            rd.close()
        raise
    return _OpenPair(pair, ref_info, grid, labels, pixels, scorer, readers)


def _score_sums(
    pair: Pair,
    opts: ScoreOptions,
    mask_convention: str | None,
    progress: bool,
    view_size: int = 0,
) -> tuple[_Sums, list[str], str, Quicklook | None]:
    opened = _open_pair(pair, opts, mask_convention)
    factor = _decimation(opened.grid, view_size) if view_size else 0
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
    view = _view(opened, functools.reduce(_concat, opened.scorer.view_parts)) if factor else None
    return sums, opened.labels, opened.pixels, view


def _mask_reader(path: str, ref: FileInfo, grid: _Grid, convention: str | None) -> tuple[_Reader, masks.MaskBand]:
    info = _open_info(path, "mask")
    band = _mask_band(info, convention)
    assert info.crs is not None and ref.crs is not None
    aligned = _same_crs(info.crs, ref.crs) and _offset_on(ref, info) is not None
    # Masks are often coarser (SCL at 20 m): nearest-neighbour onto the grid, never interpolated.
    reader = _Reader(info, ref, grid, [band.band], warp=None if aligned else "nearest", nodata=info.nodata)
    return reader, band


def _check_sums(sums: _Sums, pair: Pair) -> None:
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
    all_sums: list[_Sums] = []
    labels: list[str] = []
    pixels = ""
    kept: list[Quicklook] = []
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
        results.append(_finish(sums, labels_i, opts, pred=pair.pred, ref=pair.ref, mask=pair.mask, pixels=pixels))
    combined = None
    if len(pairs) > 1 and len({p.ref for p in pairs}) > 1:
        combined = _combine(results, all_sums, labels, opts, pixels)
    return Comparison(tuple(results), combined, opts, tuple(kept))


def _explain_empty(pair: Pair, opts: ScoreOptions, pixels: str) -> None:
    """No pixel scored: say why, naming the file at fault."""
    ref_info = _open_info(pair.ref, "reference")
    import rasterio

    with rasterio.open(ref_info.path) as src:
        nodata = _nodata_of(ref_info, opts.nodata)
        any_valid = False
        for _, win in src.block_windows(1):
            if _valid(src.read(window=win), nodata).any():
                any_valid = True
                break
    if not any_valid:
        raise ScoreError(f"{pair.ref}: the reference holds only nodata")
    if pixels != "all":
        log.warning("%s: no %s pixel in the mask %s; nothing scored", pair.pred, pixels, pair.mask)
        return
    raise ScoreError(f"{pair.pred}: no pixel is valid in both the prediction and the reference")


def _combine(
    results: Sequence[Score], sums: Sequence[_Sums], labels: Sequence[str], opts: ScoreOptions, pixels: str
) -> Score:
    name = f"{len(results)} images"
    if opts.aggregate == "pooled":
        total = _Sums(len(labels))
        for s in sums:
            total.add(s)
        out = _finish(total, labels, opts, pred=name, ref=name, mask=None, pixels=pixels)
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


# ---------------------------------------------------------------------------------------------
# Quicklooks for figures


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


def _decimation(grid: _Grid, max_size: int) -> int:
    return max(1, math.ceil(max(grid.height, grid.width) / max_size))


def _strided_rows(height: int, block: int, factor: int) -> list[tuple[int, int, int]]:
    """Strips (row, height, first kept row in the strip) that hold every ``factor``-th row.

    Views are read strip by strip at full resolution and subsampled: on tiled, compressed files
    without overviews a decimated GDAL read costs several times one full read.
    """
    out = []
    for r0 in range(0, height, block):
        h = min(block, height - r0)
        k0 = (-r0) % factor
        if k0 < h:
            out.append((r0, h, k0))
    return out


def _rgb_of(labels: Sequence[str]) -> tuple[int, int, int] | None:
    if all(b in labels for b in ("B04", "B03", "B02")):
        return labels.index("B04"), labels.index("B03"), labels.index("B02")
    return (0, 1, 2) if len(labels) >= 3 else None


def _view(opened: _OpenPair, strip: _Strip) -> Quicklook:
    sc = opened.scorer
    n = len(opened.labels)
    pred = np.stack([sc._reflectance(strip.pred[i], sc.pred_scale[i]) for i in range(n)])
    ref = np.stack([sc._reflectance(strip.ref[i], sc.ref_scale[i]) for i in range(n)])
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
    opened = _open_pair(pair, opts, mask_convention)
    try:
        factor = _decimation(opened.grid, max_size)

        rows = _strided_rows(opened.grid.height, opts.block_rows, factor)
        parts = [_every(opened.scorer._read(r0, h), k0, factor) for r0, h, k0 in rows]
        view = _view(opened, functools.reduce(_concat, parts))
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
    opened = _open_pair(pair, opts, mask_convention)
    try:
        return _input_rgb(str(input_path), opened, _decimation(opened.grid, max_size), opts)
    finally:
        opened.close()


def _input_rgb(path: str, opened: _OpenPair, factor: int, opts: ScoreOptions) -> np.ndarray:
    info = _open_info(path, "input")
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
    assert info.crs is not None and opened.ref_info.crs is not None
    aligned = _same_crs(info.crs, opened.ref_info.crs) and _offset_on(opened.ref_info, info) is not None
    reader = _Reader(info, opened.ref_info, opened.grid, idx, warp=None if aligned else "nearest", nodata=info.nodata)
    try:
        rows = _strided_rows(opened.grid.height, opts.block_rows, factor)
        raw = np.concatenate([reader.read(r0, h)[:, k0::factor, ::factor].copy() for r0, h, k0 in rows], axis=1)
    finally:
        reader.close()
    valid = _valid(raw, reader.nodata)
    out = np.stack(
        [opened.scorer._reflectance(raw[i], reflectance_scale(info, b, opts.scale)) for i, b in enumerate(idx)]
    )
    out[:, ~valid] = np.nan
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# In-memory patches (training validation and evaluation)


class PatchScores:
    """The figures of :func:`score`, pooled over many in-memory patches.

    Training validates on patch stores, not files; this applies the same formulas, clipping,
    SSIM window (pixels whose window leaves the patch or meets an invalid pixel are left out of
    SSIM, as :func:`score` does at the image edge and around nodata) and SAM, so the figures in a
    model card mean what ``cloudclear score`` prints.

    Args:
        bands: band labels, in order.
        opts: conventions (``pixels`` and ``aggregate`` are not used: the caller selects the
            pixels, and patches are pooled).
    """

    def __init__(self, bands: Sequence[str], opts: ScoreOptions | None = None) -> None:
        self.labels = list(bands)
        self.opts = opts or ScoreOptions()
        self.sums = _Sums(len(self.labels))
        self.images = 0

    def add(self, pred: np.ndarray, ref: np.ndarray, selected: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one patch: ``pred`` and ``ref`` (bands, H, W) in reflectance; ``selected`` (H, W) the
        pixels scored; ``valid`` (H, W) where the reference holds a value (default: everywhere)."""
        from scipy.ndimage import minimum_filter

        if pred.shape != ref.shape or pred.shape[0] != len(self.labels) or selected.shape != pred.shape[1:]:
            raise ValueError(f"pred {pred.shape}, ref {ref.shape} and pixels {selected.shape} do not match")
        opts, window = self.opts, SSIM_WINDOWS[self.opts.ssim_window]
        valid = np.ones(selected.shape, bool) if valid is None else valid
        sel = selected & valid
        pad = window.radius
        h, w = sel.shape
        win_ok = minimum_filter(valid.view(np.uint8), size=2 * pad + 1, mode="constant", cval=0) > 0
        win_ok[:pad], win_ok[h - pad :], win_ok[:, :pad], win_ok[:, w - pad :] = False, False, False, False
        ssim_sel = sel & win_ok
        s = self.sums
        s.n += int(sel.sum())
        s.n_ssim += int(ssim_sel.sum())
        self.images += 1
        if not sel.any():
            return

        def reflectance(a: np.ndarray) -> np.ndarray:
            out = a.astype(np.float64)
            if opts.clip:
                np.clip(out, 0.0, opts.peak, out=out)
            return out

        pairs = ((reflectance(pred[i]), reflectance(ref[i])) for i in range(len(self.labels)))
        whole = (slice(None), slice(None))
        _add_pixel_sums(s, *_pixel_sums(pairs, whole, sel, ssim_sel, window, opts.peak))

    def result(self, pred: str = "", ref: str = "", pixels: str = "reconstructed") -> Score:
        """The pooled :class:`Score` so far."""
        out = _finish(self.sums, self.labels, self.opts, pred=pred, ref=ref, mask=None, pixels=pixels)
        return replace(out, n_images=self.images)
