"""Benchmark: the clear decision (mask + :class:`cloudclear.masks.ClearPolicy` + temporal test)
against real labels.

Usage::

    python bench/decision.py [--shared DIR] [--json]

For each labelled dataset in ``../shared/data`` (absent ones are skipped with a note), the decision
a command makes on each date is scored against an independent reference, pixel counts summed over
all dates (micro-average), counted where both the decision and the reference have data:

- ``greenearthnet_minicubes`` (both sites, every date with >= 1 % valid pixels): the decision from
  Sen2Cor SCL (band 2 of ``MASK_*.tif``) against the learned mask (band 1, ``DLMASK``: 0 clear,
  1 cloud, 2 shadow, 3 snow, 4 masked, 255 nodata); the temporal test runs per site over all its
  dates (blue B02, NIR B8A, snow = the decision's snow), as ``infer --temporal`` does, and
  (rows ``temporal 20 d``) against the dates within 20 days of each date only;
- ``eolearn_slovenia_s2``: the decision from ``timeseries/*_SCL.tif`` (36 dates) against the
  s2cloudless ``_CLM`` of the same date (cloud only: no shadow reference; no bands there, so no
  temporal test);
- ``ukis_csmask_s2_testtile``: the built-in detector alone (``detect_array``, default spatial
  options, ``sun=None``) and the policies applied to its output, against the hand labels.

Rows, one per decision: ``as decoded`` (the mask as decoded, ``masks.AS_DECODED``), ``buffer 3``,
``unclassified cloud``, ``STRICT`` (``masks.STRICT``'s rules: buffer 5 + unclassified cloud),
``buffer 3, then unclassified cloud`` (the same two rules, the buffer growing the mask's own cloud
and shadow only); on greenearthnet also the built-in detector alone (``builtin dil 0`` / ``dil 3``),
the mask's decision joined with it (``SCL or builtin ...``: not clear where either says so; the
``combined`` source) and that union buffered; and, where a site has several dates, ``temporal``
and each decision ``+ temporal`` (the decision first, then ``detect.temporal.temporal_test``: its
flags are not buffered, as in ``infer``). ``buffer 3 + temporal 20 d`` is the library's default
(``masks.DEFAULT_POLICY``: the scene's mask, 3 px buffer, the test over 20 days).

Classes: *cloud* is MaskClass CLOUD or THIN_CLOUD (Sen2Cor 8, 9 and 10: cirrus counts as cloud),
*shadow* is SHADOW, everything else with data (CLEAR, SNOW) is clear; the same for the reference
(DLMASK snow is clear). A pixel that is cloud in one and shadow in the other is a miss for both.
*Not clear* (cloud or shadow, the decision a command acts on) is scored too; on the eolearn
reference, which has no shadow, a decided shadow counts as not clear against a clear reference.
A pooled row per decision scored on two datasets or more sums their confusion matrices. The last
columns are the worst dates: the largest share of a date's pixels the reference calls cloud or
shadow and the decision keeps as clear (what a "cloud-free" output would show), and the largest
share it calls clear and the decision removes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path

import numpy as np

from cloudclear import masks
from cloudclear.detect.temporal import temporal_test
from cloudclear.masks import MaskClass

MIN_VALID_FRACTION = 0.01
#: One rule at a time over the scene's mask as decoded (``masks.AS_DECODED``; the library's
#: default combines more, see DEFAULT_ROW).
POLICIES: dict[str, masks.ClearPolicy] = {
    "as decoded": masks.AS_DECODED,
    "buffer 3": replace(masks.AS_DECODED, buffer_px=3),
    "unclassified cloud": replace(masks.AS_DECODED, unclassified="cloud"),
    "STRICT": replace(masks.STRICT, source="mask", temporal=False),
}
BUFFER_FIRST = "buffer 3, then unclassified cloud"
#: The built-in detector alone: row -> its dilation (3 is the default ``cloudclear mask`` writes).
DETECTOR_ROWS = {"builtin dil 0": 0, "builtin dil 3": 3}
#: The mask's decision (a policy) joined with the detector's: row -> (policy row, detector row).
UNION_ROWS = {
    "SCL or builtin dil 0": ("as decoded", "builtin dil 0"),
    "unclassified cloud or builtin dil 0": ("unclassified cloud", "builtin dil 0"),
    "SCL or builtin dil 3": ("as decoded", "builtin dil 3"),
}
#: The ``combined`` source (``--mask-source combined``) before the temporal test: the mask combined
#: with the detector's (index runs it with no dilation), then the 3 px buffer.
DEFAULT_ROW = "combined: SCL or builtin dil 0, buffer 3"
#: The window of the windowed temporal rows: dates within this many days of the date tested.
WINDOW_DAYS = 20
#: Temporal rows: row -> (the decision the test runs after, window in days; 0: the whole series, as
#: ``infer --temporal`` does with all its inputs).
TEMPORAL_ROWS = {
    "temporal": ("as decoded", 0),
    f"temporal {WINDOW_DAYS} d": ("as decoded", WINDOW_DAYS),
    "buffer 3 + temporal": ("buffer 3", 0),
    "unclassified cloud + temporal": ("unclassified cloud", 0),
    f"unclassified cloud + temporal {WINDOW_DAYS} d": ("unclassified cloud", WINDOW_DAYS),
    "STRICT + temporal": ("STRICT", 0),
    "SCL or builtin dil 0 + temporal": ("SCL or builtin dil 0", 0),
    f"SCL or builtin dil 0 + temporal {WINDOW_DAYS} d": ("SCL or builtin dil 0", WINDOW_DAYS),
    f"SCL or builtin dil 3 + temporal {WINDOW_DAYS} d": ("SCL or builtin dil 3", WINDOW_DAYS),
    f"buffer 3 + temporal {WINDOW_DAYS} d (DEFAULT_POLICY)": ("buffer 3", WINDOW_DAYS),
    f"{DEFAULT_ROW} + temporal {WINDOW_DAYS} d": (DEFAULT_ROW, WINDOW_DAYS),
}


def _read(path: Path, band: int = 1) -> tuple[np.ndarray, float | None]:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(band), src.nodata


def _three(classes: np.ndarray) -> np.ndarray:
    """MaskClass codes -> 0 clear, 1 cloud, 2 shadow, 3 nodata."""
    out = np.zeros(classes.shape, np.int64)
    out[np.isin(classes, (MaskClass.CLOUD, MaskClass.THIN_CLOUD))] = 1
    out[classes == MaskClass.SHADOW] = 2
    out[classes == MaskClass.NODATA] = 3
    return out


@dataclass
class Tally:
    """A 3 x 3 confusion matrix [reference, decision] of clear / cloud / shadow, and its dates."""

    conf: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), np.int64))
    dates: int = 0
    #: The date where the decision keeps most of what the reference calls cloud or shadow as
    #: clear: (% of the date's pixels, its label).
    worst: tuple[float, str] = (0.0, "-")
    #: The date where the decision removes most of what the reference calls clear, the same way.
    worst_removed: tuple[float, str] = (0.0, "-")

    def add(self, decision: np.ndarray, reference: np.ndarray, label: str = "") -> None:
        d, r = _three(decision), _three(reference)
        both = (d < 3) & (r < 3)
        self.conf += np.bincount(r[both] * 3 + d[both], minlength=9).reshape(3, 3)
        self.dates += 1
        if both.any():
            missed = 100 * float(((r > 0) & (d == 0) & both).sum()) / float(both.sum())
            self.worst = max(self.worst, (missed, label))
            wrong = 100 * float(((r == 0) & (d > 0) & both).sum()) / float(both.sum())
            self.worst_removed = max(self.worst_removed, (wrong, label))

    def __iadd__(self, other: Tally) -> Tally:
        self.conf += other.conf
        self.dates += other.dates
        self.worst = max(self.worst, other.worst)
        self.worst_removed = max(self.worst_removed, other.worst_removed)
        return self


def prf(conf: np.ndarray, k: int) -> tuple[float | None, float | None, float | None]:
    """Precision, recall, F1 of class ``k`` (None where undefined)."""
    tp = int(conf[k, k])
    fp, fn = int(conf[:, k].sum()) - tp, int(conf[k, :].sum()) - tp
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    return p, r, f


@dataclass
class Result:
    """One dataset's rows: decision name -> tally; notes printed under its table."""

    name: str
    reference: str
    has_shadow: bool
    rows: dict[str, Tally]
    notes: list[str] = field(default_factory=list)


def _decide(raw: np.ndarray, nodata: float | None, convention: str) -> dict[str, np.ndarray]:
    classes = masks.decode(raw, convention, nodata)
    out = {name: masks.apply_policy(classes, pol, raw, convention) for name, pol in POLICIES.items()}
    if convention in masks.UNCLASSIFIED_CODES:
        # STRICT's two rules in the other order: the buffer grows the mask's own cloud and shadow
        # only, not every scattered unclassified pixel.
        unclassified = masks.ClearPolicy(unclassified="cloud")
        out[BUFFER_FIRST] = masks.apply_policy(out["buffer 3"], unclassified, raw, convention)
    return out


def _temporal(
    decisions: list[np.ndarray], blue: np.ndarray, nir: np.ndarray, valid: np.ndarray, when: list[date], window: int
) -> list[np.ndarray]:
    """Each date's decision with the temporal test's flags added (cloud, then shadow). ``window``
    > 0: each date is tested against the dates within that many days of it only
    (:func:`temporal_test`'s ``days`` and ``window_days``); 0: against every date of the series."""
    stack = np.stack(decisions)
    clear = masks.is_clear(stack) & valid
    snow = stack == MaskClass.SNOW
    days = [d.toordinal() for d in when]
    flags = temporal_test(blue, clear, nir, snow, days=days, window_days=window)
    out = stack.copy()
    out[flags.cloud] = MaskClass.CLOUD
    out[flags.shadow] = MaskClass.SHADOW
    return list(out)


def _detector(path: Path, dilation: int, tmp: Path) -> np.ndarray | None:
    """The built-in detector's MaskClass codes for a scene file (sun from time and place), or None
    when ``mask_scenes`` refuses it."""
    from cloudclear.detect import SpatialOptions
    from cloudclear.detect.scene import MaskOptions, mask_scenes
    from cloudclear.errors import MaskError

    spatial = SpatialOptions(cloud_dilation=dilation, shadow_dilation=dilation)
    out = tmp / "pred.tif"
    try:
        mask_scenes([path], out=out, options=MaskOptions(spatial=spatial, overwrite=True))
    except MaskError:
        return None
    raw, nodata = _read(out)
    return masks.decode(raw, "SCL", nodata)


def union(mask: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """The mask's decision, with what the detector calls obscured where the mask calls it clear."""
    out = mask.copy()
    add = masks.is_clear(mask) & masks.is_obscured(detected)
    out[add] = detected[add]
    return out


def greenearthnet(root: Path) -> Result:
    names = (*POLICIES, BUFFER_FIRST, *DETECTOR_ROWS, *UNION_ROWS, DEFAULT_ROW)
    rows = {name: Tally() for name in (*names, *TEMPORAL_ROWS)}
    skipped, removed, agreed = [], dict.fromkeys(TEMPORAL_ROWS, 0), dict.fromkeys(TEMPORAL_ROWS, 0)
    import rasterio

    with tempfile.TemporaryDirectory() as td:
        for site in sorted(p for p in root.iterdir() if p.is_dir()):
            per_date: list[tuple[dict[str, np.ndarray], np.ndarray, bool, str]] = []
            blues, nirs, valids, when = [], [], [], []
            for path in sorted(site.glob("S2_*.tif")):
                day = path.stem.split("_")[1]
                with rasterio.open(path) as src:
                    bands = src.read().astype(np.float32)
                valid = (bands != 0).all(axis=0)
                mpath = path.with_name(f"MASK_{day}.tif")
                dl, dl_nodata = _read(mpath, 1)
                scl, _ = _read(mpath, 2)
                ref = masks.decode(dl, "DLMASK", dl_nodata)
                decisions = _decide(scl, 0, "SCL")
                ok = valid.mean() >= MIN_VALID_FRACTION
                for name, dil in DETECTOR_ROWS.items():
                    det = _detector(path, dil, Path(td)) if ok else None
                    decisions[name] = np.zeros_like(scl, np.uint8) if det is None else det
                for name, (pol, det_name) in UNION_ROWS.items():
                    decisions[name] = union(decisions[pol], decisions[det_name])
                decisions[DEFAULT_ROW] = masks.buffer_obscured(decisions["SCL or builtin dil 0"], 3)
                for dec in decisions.values():
                    dec[~valid] = MaskClass.NODATA
                if not ok:
                    skipped.append(f"{site.name[:5]} {day} ({100 * valid.mean():.2f} % valid)")
                per_date.append((decisions, ref, ok, f"{site.name[:5]} {day}"))
                blues.append(bands[0] / 10000)
                nirs.append(bands[3] / 10000)
                valids.append(valid)
                when.append(datetime.strptime(day, "%Y%m%d").date())
            for decisions, ref, ok, label in per_date:
                if ok:
                    for name, dec in decisions.items():
                        rows[name].add(dec, ref, label)
            blue, nir, valid = np.stack(blues), np.stack(nirs), np.stack(valids)
            for name, (base, window) in TEMPORAL_ROWS.items():
                before = [dec[base] for dec, _, _, _ in per_date]
                after = _temporal(before, blue, nir, valid, when, window)
                for (_, ref, ok, label), b, a in zip(per_date, before, after, strict=True):
                    flagged = masks.is_clear(b) & ~masks.is_clear(a)
                    flagged &= ref != MaskClass.NODATA
                    removed[name] += int(flagged.sum())
                    agreed[name] += int((flagged & masks.is_obscured(ref)).sum())
                    if ok:
                        rows[name].add(a, ref, label)
    notes = [
        "decision from Sen2Cor SCL (band 2), reference the learned mask (band 1); "
        f"skipped (< {MIN_VALID_FRACTION:.0%} valid): {', '.join(skipped) or 'none'}",
        "builtin: mask_scenes (sun from time and place) on B02, B03, B04, B8A; "
        "SCL or builtin: obscured if either says so",
        "temporal test, pixels it removed where the reference has data (of which the reference calls cloud or shadow): "
        + "; ".join(f"{n}: {v:,} ({agreed[n]:,}, {100 * agreed[n] / max(1, v):.0f} %)" for n, v in removed.items()),
    ]
    return Result(root.name, "learned mask (dlmask)", True, rows, notes)


def eolearn(root: Path) -> Result:
    rows = {name: Tally() for name in (*POLICIES, BUFFER_FIRST)}
    for spath in sorted((root / "timeseries").glob("*_SCL.tif")):
        cpath = spath.with_name(spath.name.replace("_SCL", "_CLM"))
        if not cpath.exists():
            continue
        raw, nodata = _read(spath)
        clm, clm_nodata = _read(cpath)
        ref = masks.decode(clm, "CLM", clm_nodata)
        for name, d in _decide(raw, nodata, "SCL").items():
            rows[name].add(d, ref, spath.name[:8])
    note = f"{rows['as decoded'].dates} dates with SCL and CLM in timeseries/; reference has no shadow class"
    return Result(root.name, "s2cloudless CLM", False, rows, [note])


def ukis(root: Path) -> Result:
    from cloudclear.detect import SpatialOptions, detect_array

    d = np.load(root / "sentinel2.npz")
    img, msk = d["img"], d["msk"][..., 0]
    names = ("B02", "B03", "B04", "B08", "B11", "B12")
    ref = np.full(msk.shape, MaskClass.NODATA, np.uint8)
    ref[np.isin(msk, (1, 2, 3))] = MaskClass.CLEAR
    ref[msk == 4] = MaskClass.CLOUD
    ref[msk == 0] = MaskClass.SHADOW
    rows = {}
    for name, dil in DETECTOR_ROWS.items():
        opts = SpatialOptions(cloud_dilation=dil, shadow_dilation=dil)
        res = detect_array({b: img[..., i] for i, b in enumerate(names)}, pixel_size=10.0, sun=None, options=opts)
        classes = masks.decode(res.scl, "SCL", 0)
        for pname in ("as decoded", "buffer 3"):
            row = name if pname == "as decoded" else f"{name} + {pname}"
            rows[row] = Tally()
            rows[row].add(masks.apply_policy(classes, POLICIES[pname], res.scl, "SCL"), ref, "tile")
    note = (
        "built-in detector alone (detect_array, sun=None: no georeferencing), the policy on its output; "
        "unclassified / STRICT rows equal the buffer rows (the detector writes no class 7)"
    )
    return Result(root.name, "hand labels", True, rows, [note])


DATASETS = (
    ("greenearthnet_minicubes", greenearthnet),
    ("eolearn_slovenia_s2", eolearn),
    ("ukis_csmask_s2_testtile", ukis),
)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _line(name: str, t: Tally, has_shadow: bool) -> str:
    c = t.conf
    n = int(c.sum())
    ref_c = 100 * c[1].sum() / n if n else 0.0
    dec_c = 100 * c[:, 1].sum() / n if n else 0.0
    cloud = " | ".join(_f(v) for v in prf(c, 1))
    shadow = " | ".join(_f(v) for v in prf(c, 2)) if has_shadow else "n/a | n/a | n/a"
    ob = " | ".join(_f(v) for v in prf(_obscured(c), 1))
    worst = f"{t.worst[0]:.1f} ({t.worst[1]}) | {t.worst_removed[0]:.1f} ({t.worst_removed[1]})"
    return f"| {name} | {t.dates} | {n:,} | {ref_c:.1f} / {dec_c:.1f} | {cloud} | {shadow} | {ob} | {worst} |"


def _obscured(conf: np.ndarray) -> np.ndarray:
    """The 3 x 3 matrix folded to 2 x 2 clear / not clear (cloud or shadow): the decision itself."""
    return np.array([[conf[0, 0], conf[0, 1:].sum()], [conf[1:, 0].sum(), conf[1:, 1:].sum()]])


HEAD = (
    "| decision | dates | px | cloud % ref / decision | cloud P | R | F1 | shadow P | R | F1 "
    "| not clear P | R | F1 | worst date: % kept wrongly | % removed wrongly |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _as_json(r: Result) -> dict[str, object]:
    out: dict[str, object] = {"dataset": r.name, "reference": r.reference, "notes": r.notes, "rows": {}}
    rows: dict[str, object] = {}
    for name, t in r.rows.items():
        cp, cr, cf = prf(t.conf, 1)
        sp, sr, sf = prf(t.conf, 2) if r.has_shadow else (None, None, None)
        rows[name] = {
            "dates": t.dates,
            "pixels": int(t.conf.sum()),
            "confusion": t.conf.tolist(),
            "worst_date_kept": {"pct": t.worst[0], "date": t.worst[1]},
            "worst_date_removed": {"pct": t.worst_removed[0], "date": t.worst_removed[1]},
            "cloud": {"precision": cp, "recall": cr, "f1": cf},
            "shadow": {"precision": sp, "recall": sr, "f1": sf},
            "not_clear": dict(zip(("precision", "recall", "f1"), prf(_obscured(t.conf), 1), strict=True)),
        }
    out["rows"] = rows
    return out


def run(shared: Path) -> Iterator[Result | str]:
    for name, fn in DATASETS:
        root = shared / name
        if not root.exists():
            yield f"{name}: absent, skipped"
            continue
        yield fn(root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    here = Path(__file__).resolve().parent.parent
    ap.add_argument("--shared", type=Path, default=here.parent / "shared" / "data")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)
    results = list(run(args.shared))
    pooled: dict[str, Tally] = {}
    pooled_shadow: dict[str, Tally] = {}  # datasets with a shadow reference only
    seen: dict[str, int] = {}
    for r in results:
        if not isinstance(r, str):
            for name in r.rows:
                seen[name] = seen.get(name, 0) + 1
    for r in results:
        if isinstance(r, str):
            continue
        for name, t in r.rows.items():
            if seen[name] < 2:
                continue
            key = name
            pooled.setdefault(key, Tally())
            pooled[key] += Tally(t.conf.copy(), t.dates, t.worst, t.worst_removed)
            if r.has_shadow:
                pooled_shadow.setdefault(key, Tally())
                pooled_shadow[key] += Tally(t.conf.copy(), t.dates, t.worst, t.worst_removed)
    if args.json:
        doc = {
            "datasets": [_as_json(r) if not isinstance(r, str) else {"skipped": r} for r in results],
            "pooled": {
                k: {"cloud": prf(t.conf, 1), "not_clear": prf(_obscured(t.conf), 1), "dates": t.dates}
                for k, t in pooled.items()
            },
            "pooled_shadow": {k: {"shadow": prf(t.conf, 2), "dates": t.dates} for k, t in pooled_shadow.items()},
        }
        json.dump(doc, sys.stdout, indent=1)
        print()
        return 0
    for r in results:
        if isinstance(r, str):
            print(r, "\n")
            continue
        print(f"### {r.name} (reference: {r.reference})\n\n{HEAD}")
        for name, t in r.rows.items():
            print(_line(name, t, r.has_shadow))
        print()
        for note in r.notes:
            print(f"- {note}")
        print()
    print("### pooled, decisions scored on two datasets or more (shadow: those with a shadow reference)\n")
    print(HEAD)
    for name, t in pooled.items():
        head, tail = _line(name, t, False).split("| n/a | n/a | n/a |")
        sh = pooled_shadow.get(name)
        shadow = " | ".join(_f(v) for v in prf(sh.conf, 2)) if sh else "- | - | -"
        print(f"{head}| {shadow} |{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
