"""Does the output hold cloud? Reconstruct real cloudy dates and score every pixel against a clear date.

For real cloudy dates of ../shared/data that have a clear date a few days away, the bench indexes the
series WITHOUT that clear date (a folder of symlinks to every other file), reconstructs the cloudy date
with each method, and compares ALL valid output pixels (observed ones included: haze kept as
"observed" is an error) with the clear date. The floor is the same score between two clear dates of
the series the same number of days apart (or the nearest gap found). Residual cloud is the share of
output pixels that the temporal test flags against the clear date::

    blue_out > blue_clear + 0.04  and  blue_out > 1.3 * blue_clear      (B02 reflectance)

(s2cloudless needs B01, B05, B09, B10 ...; none of these series has them). Quicklooks (input, status,
gapfill, best network, clear date, all with the clear date's 2-98 % stretch) go to --quicklooks.

    python bench/cloudfree.py --json /tmp/cloudfree/before.json
    python bench/cloudfree.py --policy strict --json /tmp/cloudfree/after.json   # cloudclear.masks.STRICT
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MAX_CLEAR_PCT = 1.0  # catalog cloud % (and nodata %) of a clear reference
MAX_LEARNED_PCT = 5.0  # and the learned mask's (it calls 2.6-9 % of every SCL-clear date of 34VCL cloud)
MIN_CLOUDY_PCT = 20.0  # cloud % (catalog, or the learned mask where one ships) of a cloudy case
HAZE_RATIO = 1.3  # a "clear" date whose median blue exceeds this x the series' clear median looks hazy
BLUE_EXCESS, BLUE_RATIO = 0.04, 1.3  # the temporal residual-cloud test
#: Dates clear by every number above that are not clear to the eye (seen on 2026-12-06, clear_*.png):
#: eurac 06-10 and 06-30 hold a small cumulus SCL calls clear; worldcereal 2018-04-19 is hazy all over.
NOT_CLEAR_BY_EYE = {"eurac": ("2022-06-10", "2022-06-30"), "31UDS": ("2018-04-19",)}
FLOOR_SEASON_DAYS = 45  # floor pairs are sought this close to the case first
METHODS = ("gapfill", "multi-temporal-small", "single-date-small")


@dataclass(frozen=True)
class Series:
    key: str
    folder: str
    max_days: int
    cap: int  # cases kept from this series
    must: tuple[tuple[str, str], ...] = ()  # (cloudy, clear) pairs named in issue 16, kept first
    learned: bool = False  # MASK_*.tif band 1 + dates.csv (greenearthnet)


SERIES = (
    Series("eurac", "eurac_bolzano_s2l2a_32TPS", 3, 5, (("2022-06-17", "2022-06-15"),)),
    Series(
        "34TET",
        "greenearthnet_minicubes/34TET_47.37N_22.05E",
        5,
        3,
        (("2021-05-01", "2021-05-06"), ("2021-08-04", "2021-07-30")),
        True,
    ),
    Series("34VCL", "greenearthnet_minicubes/34VCL_59.04N_17.96E", 5, 3, learned=True),
    Series("31UDS", "worldcereal_patches/00002806639B424A_31UDS", 5, 3),
)


@dataclass(frozen=True)
class Case:
    name: str
    series: Series
    cloudy: str
    clear: str
    cloud_pct: float  # catalog (SCL) cloud % of the cloudy date
    learned_pct: float | None  # the learned mask's cloud + shadow %, where one ships

    @property
    def days(self) -> int:
        return abs((datetime.fromisoformat(self.cloudy) - datetime.fromisoformat(self.clear)).days)


# -- reading -------------------------------------------------------------------------------------


def s2_table(cat: Any) -> Any:
    s = cat.scenes[cat.scenes.sensor == "S2"].copy()
    s["day"] = [d.strftime("%Y-%m-%d") for d in s.datetime]
    return s.set_index("day")


def read_catalog_bands(cat: Any, row: Any, names: list[str]) -> np.ndarray:
    """(len(names), H, W) reflectance of a catalog scene, NaN where nodata."""
    import rasterio

    from cloudclear.gdal import gdal_env

    files = json.loads(row.band_files)
    out = []
    with gdal_env("score"):
        for b in names:
            path, idx = files[b]
            with rasterio.open(cat.resolve(path)) as src:
                a = src.read(idx).astype(np.float32)
                nd = src.nodata
            out.append(np.where(a == nd, np.nan, a * float(row.scale)) if nd is not None else a * float(row.scale))
    return np.stack(out)


def read_output(path: Path, names: list[str]) -> np.ndarray:
    """(len(names), H, W) reflectance of a reconstruction (uint16 x 10000, nodata 0), by band name."""
    import rasterio

    from cloudclear.gdal import gdal_env

    with gdal_env("score"), rasterio.open(path) as src:
        desc = list(src.descriptions)
        a = np.stack([src.read(desc.index(b) + 1) for b in names]).astype(np.float32)
    return np.where(a == 0, np.nan, a / 10000.0)


def read_status(path: Path) -> np.ndarray:
    import rasterio

    from cloudclear.gdal import gdal_env

    with gdal_env("score"), rasterio.open(path) as src:
        return src.read(1)


def band_names(path: Path) -> list[str]:
    import rasterio

    with rasterio.open(path) as src:
        return [d or "" for d in src.descriptions]


def learned_pcts(folder: Path) -> dict[str, float]:
    """greenearthnet's dates.csv: date -> learned cloud + shadow %."""
    with open(folder / "dates.csv") as f:
        return {r["date"]: 100.0 * float(r["dl_cloud_or_shadow_frac"]) for r in csv.DictReader(f)}


# -- cases ---------------------------------------------------------------------------------------


def clear_dates(series: Series, cat: Any, table: Any, learned: dict[str, float]) -> list[str]:
    """Dates clear by the catalog (cloud and nodata <= 1 %), by the learned mask where one ships (<= 5 %),
    not hazy (median blue <= HAZE_RATIO x the median over those dates) and not in NOT_CLEAR_BY_EYE."""
    days = [
        d
        for d, r in table.iterrows()
        if r.cloud_pct <= MAX_CLEAR_PCT and r.nodata_pct <= MAX_CLEAR_PCT and learned.get(d, 0.0) <= MAX_LEARNED_PCT
    ]
    blue = {d: float(np.nanmedian(read_catalog_bands(cat, table.loc[d], ["B02"]))) for d in days}
    typical = float(np.median(list(blue.values()))) if blue else 0.0
    return [d for d in days if blue[d] <= HAZE_RATIO * typical and d not in NOT_CLEAR_BY_EYE.get(series.key, ())]


def pick_cases(data: Path, only: list[str] | None) -> tuple[list[Case], dict[str, list[str]]]:
    """Deterministic: per series the issue's named pairs, then partly cloudy dates before fully cloudy
    ones, then by date, each with its nearest clear date (the earlier on a tie), up to the series' cap.
    The named pairs are taken as given (eurac 2022-06-15 is 2 % cloud by SCL: a cumulus, bottom right)."""
    from cloudclear.catalog import Catalog

    cases, clears = [], {}
    for s in SERIES:
        folder = data / s.folder
        if not folder.is_dir():
            print(f"# {s.key}: {folder} absent, skipped", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory(prefix="cloudfree_") as tmp:
            cat = Catalog.open(index_folder(folder, Path(tmp) / "cat.gpkg"))
            table = s2_table(cat)
            learned = learned_pcts(folder) if s.learned else {}
            ok = clear_dates(s, cat, table, learned)
        clears[s.key] = ok

        def cloud(d: str, table: Any = table, learned: dict[str, float] = learned) -> float:
            return max(float(table.loc[d].cloud_pct), learned.get(d, 0.0))

        picked = [(a, b) for a, b in s.must if a in table.index and b in table.index]
        for d, r in table.iterrows():
            if cloud(d) < MIN_CLOUDY_PCT or r.nodata_pct > 50 or d in ok:
                continue
            near = sorted(ok, key=lambda c: (abs((datetime.fromisoformat(c) - datetime.fromisoformat(d)).days), c))
            gap = abs((datetime.fromisoformat(near[0]) - datetime.fromisoformat(d)).days) if near else 99
            if gap <= s.max_days and (d, near[0]) not in picked:
                picked.append((d, near[0]))
        named, rest = picked[: len(s.must)], picked[len(s.must) :]
        rest.sort(key=lambda p: (cloud(p[0]) >= 99.0, p[0]))
        for a, b in (named + rest)[: s.cap]:
            c = Case(f"{s.key}-{a}-c{b[5:]}", s, a, b, float(table.loc[a].cloud_pct), learned.get(a))
            if only is None or any(o in c.name for o in only):
                cases.append(c)
    return cases, clears


#: Cases and clear dates are chosen as before issue 16, from each scene's mask as decoded with
#: Sen2Cor's SCL preferred (cloudclear now prefers greenearthnet's learned mask, which would
#: change the cases): the same 12 cases before and after, whatever decision is under test.
SELECTION_PREFERENCE = ("SCL", "MAJA", "FMASK", "DLMASK", "CLM", "CLDPRB", "CLP")


def index_folder(folder: Path, cat_path: Path, leave_out: frozenset[Path] = frozenset(), policy: Any = None) -> Path:
    """Index ``folder`` (through symlinks in a fresh folder when files are left out).

    ``policy`` None: the selection catalog (masks as decoded, SCL first, no detector); else the
    catalog infer reads under that policy (the built-in detector run unless it reads masks only).
    """
    from cloudclear import masks
    from cloudclear.catalog import build_index

    root = folder
    if leave_out:
        root = cat_path.parent / "series"
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.resolve() not in leave_out:
                link = root / p.relative_to(folder)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(p.resolve())
    if policy is None:
        saved = dict(masks._RANK)
        masks._RANK.clear()
        masks._RANK.update({c: i for i, c in enumerate(SELECTION_PREFERENCE)})
        try:
            build_index(root, cat_path, rebuild=True, detect=None, policy=masks.AS_DECODED)
        finally:
            masks._RANK.clear()
            masks._RANK.update(saved)
        return cat_path
    detect = None if policy.source == "mask" else "builtin"
    build_index(root, cat_path, rebuild=True, detect=detect, policy=policy)
    return cat_path


# -- one case ------------------------------------------------------------------------------------


def load_policy(spec: str) -> Any:
    """A cloudclear.masks.ClearPolicy: the default, as-decoded or strict preset, or JSON fields
    (over the default's)."""
    from cloudclear import masks
    from cloudclear.errors import CloudClearError

    presets = {"default": masks.DEFAULT_POLICY, "as-decoded": masks.AS_DECODED, "strict": masks.STRICT}
    if spec in presets:
        return presets[spec]
    try:
        return masks.ClearPolicy(**json.loads(spec))
    except (ValueError, TypeError, CloudClearError) as exc:
        raise SystemExit(
            f"--policy: {spec!r}: not default, strict or a JSON object of ClearPolicy fields ({exc})"
        ) from None


def residual(out_blue: np.ndarray, ref_blue: np.ndarray) -> tuple[float, np.ndarray]:
    """% of pixels valid in both that the temporal test flags, and the flag map."""
    ok = np.isfinite(out_blue) & np.isfinite(ref_blue)
    flag = ok & (out_blue > ref_blue + BLUE_EXCESS) & (out_blue > BLUE_RATIO * ref_blue)
    return 100.0 * flag.sum() / max(int(ok.sum()), 1), flag


def floor_pair(case: Case, clears: list[str]) -> tuple[str, str] | None:
    """Two clear dates (the case's reference may be one) within FLOOR_SEASON_DAYS of the case where
    any are, whose gap is nearest the case's, then nearest the case in time."""
    t = datetime.fromisoformat(case.cloudy)

    def dist(d: str) -> int:
        return abs((datetime.fromisoformat(d) - t).days)

    pairs = [(a, b) for i, a in enumerate(clears) for b in clears[i + 1 :]]
    pairs = [p for p in pairs if max(dist(p[0]), dist(p[1])) <= FLOOR_SEASON_DAYS] or pairs
    if not pairs:
        return None

    def key(p: tuple[str, str]) -> tuple[int, int, str]:
        gap = (datetime.fromisoformat(p[1]) - datetime.fromisoformat(p[0])).days
        return abs(gap - case.days), dist(p[0]) + dist(p[1]), p[0]

    return min(pairs, key=key)


def score_row(pred: Path, ref: Path, bands: list[str]) -> dict[str, Any]:
    from cloudclear.metrics import score
    from cloudclear.metrics.conventions import ScoreOptions

    s = score(pred, ref, options=ScoreOptions(pixels="all", bands=tuple(bands)))
    return {"psnr": s.psnr, "ssim": s.ssim, "sam": s.sam, "rmse": s.rmse, "mse": s.rmse**2, "n": s.n_pixels}


def run_case(case: Case, data: Path, out: Path, methods: list[str], policy: Any, clears: list[str]) -> dict[str, Any]:
    from cloudclear.catalog import Catalog
    from cloudclear.errors import CloudClearError
    from cloudclear.inference.pipeline import InferOptions, infer, load_method

    folder = data / case.series.folder
    full = Catalog.open(index_folder(folder, out / "full" / "cat.gpkg"))
    table = s2_table(full)
    ref_row = table.loc[case.clear]
    ref_file = full.resolve(json.loads(ref_row.band_files)["B02"][0])
    leave = frozenset(full.resolve(f).resolve() for f in json.loads(ref_row.files))
    cat = index_folder(folder, out / "without" / "cat.gpkg", leave, policy)
    opts = InferOptions(overwrite=True, clear=policy)
    ref_names = band_names(ref_file)
    ref_blue = read_catalog_bands(full, ref_row, ["B02"])[0]
    rec: dict[str, Any] = {"case": case.name, "cloudy": case.cloudy, "clear": case.clear, "days": case.days}
    rec.update(cloud_pct=case.cloud_pct, learned_pct=case.learned_pct, methods={}, notes=[])
    rec["input_residual_pct"] = residual(read_catalog_bands(full, table.loc[case.cloudy], ["B02"])[0], ref_blue)[0]
    fp = floor_pair(case, clears)
    floors: dict[tuple[str, ...], dict[str, Any]] = {}
    for m in methods:
        dst = out / f"{m}.tif"
        t0 = time.perf_counter()
        try:
            res = infer(cat, [case.cloudy], load_method(m), dst, options=opts).results[0]
        except CloudClearError as exc:
            rec["notes"].append(f"{m}: skipped ({str(exc).splitlines()[0]})")
            continue
        bands = [b for b in band_names(dst) if b in ref_names]
        total = res.observed + res.reconstructed + res.nodata
        row = score_row(dst, ref_file, bands)
        pct, _ = residual(read_output(dst, ["B02"])[0], ref_blue)
        row.update(bands=bands, residual_pct=pct, observed_pct=100.0 * res.observed / total)
        row.update(reconstructed_pct=100.0 * res.reconstructed / total, seconds=time.perf_counter() - t0)
        row.update(path=str(dst), notes=list(res.notes))
        if fp is not None:
            if tuple(bands) not in floors:
                a, b = (json.loads(table.loc[d].band_files)["B02"][0] for d in fp)
                floors[tuple(bands)] = score_row(full.resolve(b), full.resolve(a), bands)
                floors[tuple(bands)]["residual_pct"] = residual(
                    read_catalog_bands(full, table.loc[fp[1]], ["B02"])[0],
                    read_catalog_bands(full, table.loc[fp[0]], ["B02"])[0],
                )[0]
            row["floor"] = floors[tuple(bands)]
        rec["methods"][m] = row
    rec["floor_pair"] = list(fp) if fp else None
    return rec


# -- quicklook -----------------------------------------------------------------------------------


def quicklook(case: Case, rec: dict[str, Any], out: Path, dst: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from cloudclear.catalog import Catalog
    from cloudclear.outputs import atomic_output

    full = Catalog.open(out / "full" / "cat.gpkg")
    table = s2_table(full)
    rgb = ["B04", "B03", "B02"]
    ref = read_catalog_bands(full, table.loc[case.clear], rgb)
    lo, hi = (np.nanpercentile(ref.reshape(3, -1), q, axis=1)[:, None, None] for q in (2, 98))

    def show(a: np.ndarray) -> np.ndarray:
        return np.nan_to_num(np.clip((a - lo) / np.maximum(hi - lo, 1e-6), 0, 1)).transpose(1, 2, 0)

    ms = rec["methods"]
    nets = [m for m in ms if m != "gapfill"]
    best = max(nets, key=lambda m: ms[m]["psnr"]) if nets else None
    status_of = next(iter(ms), None)
    inp = read_catalog_bands(full, table.loc[case.cloudy], rgb)
    panels: list[tuple[str, Any]] = [(f"input {case.cloudy} (cloud {case.cloud_pct:.0f} %)", show(inp))]
    if status_of:
        st = read_status(Path(ms[status_of]["path"]).with_name(Path(ms[status_of]["path"]).stem + "_status.tif"))
        panels.append((f"decision: obs {ms[status_of]['observed_pct']:.0f} % / rec", st))
    for m in ("gapfill", best):
        if m in ms:
            r = ms[m]
            title = f"{m}: {r['psnr']:.1f} dB, resid {r['residual_pct']:.1f} %"
            panels.append((title, show(read_output(Path(r["path"]), rgb))))
    panels.append((f"clear {case.clear} (left out)", show(ref)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels, strict=True):
        if img.ndim == 2:
            cmap = ListedColormap(["black", "tab:green", "tab:orange"])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    what = f"{case.name}: clear {case.clear} ({case.days} d) left out"
    fig.suptitle(f"{what}; status: green observed, orange reconstructed, black nodata", fontsize=9)
    fig.tight_layout()
    with atomic_output(dst, overwrite=True, what="quicklook") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


# -- report --------------------------------------------------------------------------------------


def psnr_of(mse: float) -> float:
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf


def pooled(recs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: PSNR of the mean MSE over cases (peak 1.0), the floor likewise, max residual %."""
    out = {}
    for m in methods:
        rows = [r["methods"][m] for r in recs if m in r["methods"]]
        if not rows:
            continue
        mse = float(np.mean([x["mse"] for x in rows]))
        fl = [x["floor"]["mse"] for x in rows if "floor" in x]
        out[m] = {
            "cases": len(rows),
            "psnr": psnr_of(mse),
            "floor_psnr": psnr_of(float(np.mean(fl))) if fl else None,
            "residual_max_pct": max(x["residual_pct"] for x in rows),
            "residual_mean_pct": float(np.mean([x["residual_pct"] for x in rows])),
        }
        if out[m]["floor_psnr"] is not None:
            out[m]["gap_db"] = out[m]["floor_psnr"] - out[m]["psnr"]
    return out


def print_table(recs: list[dict[str, Any]], pool: dict[str, Any]) -> None:
    head = f"{'case':<24} {'method':<21} {'PSNR':>6} {'SSIM':>6} {'SAM':>6} {'RMSE':>7} {'floor':>6} {'gap':>6}"
    head += f" {'resid%':>7} {'obs%':>6}"
    print(head)
    for r in recs:
        for m, x in r["methods"].items():
            fl = x.get("floor", {}).get("psnr", math.nan)
            print(
                f"{r['case']:<24} {m:<21} {x['psnr']:6.2f} {x['ssim']:6.3f} {x['sam']:6.2f} "
                f"{x['rmse']:7.4f} {fl:6.2f} {fl - x['psnr']:6.2f} {x['residual_pct']:7.2f} {x['observed_pct']:6.1f}"
            )
        for n in r["notes"]:
            print(f"{'':<24} note: {n}")
    print("\npooled (PSNR of the mean MSE over cases; gap = floor - method):")
    for m, p in pool.items():
        fl = p["floor_psnr"] if p["floor_psnr"] is not None else math.nan
        print(
            f"  {m:<21} cases {p['cases']:2d}  PSNR {p['psnr']:6.2f}  floor {fl:6.2f}  "
            f"gap {p.get('gap_db', math.nan):5.2f} dB  residual max {p['residual_max_pct']:5.2f} %  "
            f"mean {p['residual_mean_pct']:5.2f} %"
        )


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n\n")[0]
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--cases", default=None, help="comma-separated substrings of case names (eurac,34TET-2021-05-01)")
    ap.add_argument(
        "--policy",
        default="default",
        help="default, as-decoded, strict, or JSON ClearPolicy fields (over the default's)",
    )
    ap.add_argument("--quicklooks", type=Path, default=Path("/tmp/cloudfree/quicklooks"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--list", action="store_true", help="print the cases and stop")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    policy = load_policy(args.policy)
    methods = [m for m in args.methods.split(",") if m]
    t0 = time.perf_counter()
    cases, clears = pick_cases(args.data, args.cases.split(",") if args.cases else None)
    out = args.out or (Path("-") if args.list else Path(tempfile.mkdtemp(prefix="cloudfree_")))
    print(f"# policy {args.policy}; {len(cases)} cases; work folder {out}")
    print("# residual cloud: the temporal test against the clear date (s2cloudless needs B01, B09, B10: none here)")
    for k, v in clears.items():
        print(f"# {k} clear dates (catalog <= 1 %, learned mask <= 5 %, not hazy, clear to the eye): {', '.join(v)}")
    if args.list:
        for c in cases:
            print(
                f"{c.name}: cloudy {c.cloudy} (catalog {c.cloud_pct:.0f} %, learned {c.learned_pct}), clear {c.clear}"
            )
        return 0
    args.quicklooks.mkdir(parents=True, exist_ok=True)
    recs = []
    for c in cases:
        learned = f", learned mask {c.learned_pct:.0f} %" if c.learned_pct is not None else ""
        print(f"# case {c.name}: cloud {c.cloud_pct:.0f} % by the catalog{learned}, {c.days} d", flush=True)
        rec = run_case(c, args.data, out / c.name, methods, policy, clears[c.series.key])
        rec["quicklook"] = str(args.quicklooks / f"{c.name}.png")
        quicklook(c, rec, out / c.name, Path(rec["quicklook"]))
        recs.append(rec)
    pool = pooled(recs, methods)
    print()
    print_table(recs, pool)
    print(f"\n# {time.perf_counter() - t0:.0f} s; floor: two clear dates of the series (pairs in --json)")
    if args.json:
        from cloudclear.outputs import atomic_output

        rule = f"B02_out > B02_clear + {BLUE_EXCESS} and > {BLUE_RATIO} x B02_clear"
        res = {"policy": args.policy, "residual_rule": rule, "cases": recs, "pooled": pool, "clear_dates": clears}
        with atomic_output(args.json, overwrite=True, what="bench results") as tmp:
            tmp.write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
