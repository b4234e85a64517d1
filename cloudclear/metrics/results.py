"""What scoring returns: figures per band (:class:`BandScore`), per prediction (:class:`Score`), and
for several predictions (:class:`Comparison`), as text, JSON or CSV."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear.metrics.conventions import ScoreOptions

if TYPE_CHECKING:
    from cloudclear.metrics.quicklook import Quicklook


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
        """Every result, and the combination when there is one."""
        out: dict[str, Any] = {"results": [r.to_dict() for r in self.results]}
        if self.combined is not None:
            out["combined"] = self.combined.to_dict()
        return out

    def to_json(self) -> str:
        """One prediction's figures (:meth:`Score.to_dict`), or :meth:`to_dict` for several, as JSON."""
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
