"""Leave-one-place-out quality: gapfill, the refine network and the refine network adapted.

For each place of ``bench/places.py`` (one piece of ground, even when two datasets cover it):

1. **base**: train the ``refine`` network on the ``gapfill-3`` stores of every OTHER place (their
   train splits; their val splits pick the best epoch), for ``--budget`` seconds;
2. score gapfill and base on EVERY sample of the held-out place (real masks of that place pasted on
   its clear dates, scored on the pasted pixels; the same pixels and bands for both);
3. **adapted**: fine-tune base on the held-out place's train-split blocks only (its own masks on
   its own clear dates, as ``cloudclear adapt`` does on a user's catalog) for ``--adapt-budget``
   seconds, then score gapfill, base and adapted on its test-split blocks: ground the adaptation
   never saw.

Prints one row per place and the mean over places (each place counted once), and writes
``OUT/quality.json``. ``--ship CHECKPOINT`` also trains that checkpoint on every place with the
same recipe and writes the per-place figures into its card (``info.leave_one_place_out``), which
``cloudclear models`` shows.

Run (about an hour on 2 CPU cores)::

    python bench/quality.py --out /tmp/q17 --budget 300 --epochs 5 --adapt-budget 90 --adapt-epochs 3 \
        --ship models/refine-small.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from places import DATA_ROOT, PLACES, build_stores  # noqa: E402

FIGS = ("psnr", "ssim", "sam")


def _train(stores: list[str], out: Path, budget: float, epochs: int, init: str | None = None) -> float:
    """Train (or fine-tune from ``init``) refine on ``stores``: cosine learning rate over ``epochs``,
    stopped early when ``budget`` seconds are spent; seconds taken (0: the checkpoint existed)."""
    from cloudclear.training import TrainOptions, train

    t0 = time.perf_counter()
    if out.exists():
        return 0.0
    opts = TrainOptions(
        net="refine",
        epochs=epochs,
        patience=epochs,
        budget_s=budget,
        init=init,
        overwrite=True,
        seed=0,
        lr=2e-3 if init is None else 5e-4,
    )
    train(stores, out, opts, progress=False)
    return time.perf_counter() - t0


def _scores(stores: list[str], methods: list[str], split: str | None) -> dict[str, dict[str, Any]]:
    from cloudclear.training import evaluate

    out = {}
    for e in evaluate(stores, methods, split=split):
        name = "gapfill" if e.method == "gapfill" else Path(e.method).stem
        out[name] = {"pixels": e.pixels, "samples": e.samples, **{k: e.figures.get(k) for k in FIGS}}
    return out


def _trainable(paths: list[str]) -> list[str]:
    """Stores whose patches can be batched together with the rest (32 px; Antwerp's 16 px store is
    only scored)."""
    from cloudclear.sampling import PatchStore

    return [p for p in paths if int(PatchStore(p).manifest["patch_size"]) >= 32]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA_ROOT)
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per held-out place")
    ap.add_argument("--adapt-budget", type=float, default=90.0, help="adaptation seconds per place (0: skip)")
    ap.add_argument("--epochs", type=int, default=12, help="epochs of the cosine schedule (base)")
    ap.add_argument("--adapt-epochs", type=int, default=6, help="epochs of the cosine schedule (adaptation)")
    ap.add_argument("--places", default=None, help="comma-separated place ids (default: all)")
    ap.add_argument("--count", type=int, default=1500, help="samples per store")
    ap.add_argument(
        "--ship",
        type=Path,
        default=None,
        help="also train this checkpoint on EVERY place with the same recipe, and write the figures into its card",
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no real data folder; this bench needs ../shared/data")
    stores = build_stores(args.out, args.data, count=args.count)
    wanted = args.places.split(",") if args.places else [p for p in PLACES if stores.get(p)]
    models = args.out / "lopo"
    models.mkdir(parents=True, exist_ok=True)
    if args.ship:
        every = [str(s) for ss in stores.values() for s in ss]
        secs = _train(_trainable(every), args.ship, args.budget, args.epochs)
        print(f"{args.ship}: trained on every place in {secs:.0f} s", flush=True)
    rows: dict[str, Any] = {}
    for place in wanted:
        held = [str(s) for s in stores[place]]
        others = [str(s) for p, ss in stores.items() if p != place for s in ss]
        base = models / f"refine-no-{place}.safetensors"
        secs = _train(_trainable(others), base, args.budget, args.epochs)
        row: dict[str, Any] = {"level": PLACES[place].level, "s1": PLACES[place].s1, "train_s": round(secs, 1)}
        row["all"] = _scores(held, ["gapfill", str(base)], None)
        if args.adapt_budget > 0:
            adapted = models / f"refine-no-{place}-adapted.safetensors"
            try:
                # its train-split blocks only; its val blocks pick the epoch; its test blocks are scored
                row["adapt_s"] = round(_train(held, adapted, args.adapt_budget, args.adapt_epochs, str(base)), 1)
                row["test"] = _scores(held, ["gapfill", str(base), str(adapted)], "test")
            except Exception as exc:  # a place too small to adapt (empty split): say so, go on
                row["adapt_error"] = str(exc)
        rows[place] = row
        print(_line(place, row), flush=True)
        (args.out / "quality.json").write_text(json.dumps(rows, indent=1))
    summary = _summary(rows)
    print(summary["text"])
    result = {"places": rows, "mean_over_places": summary["mean"], "settings": vars(args) | {"out": str(args.out)}}
    result["settings"] = {k: str(v) for k, v in result["settings"].items()}
    (args.out / "quality.json").write_text(json.dumps(result, indent=1))
    if args.ship:
        _write_card(args.ship, result)


def _fmt(d: dict[str, Any] | None) -> str:
    if not d or d.get("psnr") is None:
        return "   -      -     - "
    return f"{d['psnr']:6.2f} {d['ssim']:.3f} {d['sam']:5.2f}"


def _line(place: str, row: dict[str, Any]) -> str:
    a = row["all"]
    base = next(k for k in a if k != "gapfill")
    text = f"{place:15s} {row['level']} {'S1' if row['s1'] else '  '} px {a['gapfill']['pixels']:8,d}  "
    text += f"gapfill {_fmt(a['gapfill'])} | base {_fmt(a[base])} ({a[base]['psnr'] - a['gapfill']['psnr']:+.2f})"
    t = row.get("test")
    if t:
        ad = [k for k in t if k.endswith("-adapted")][0]
        b = [k for k in t if k not in ("gapfill", ad)][0]
        text += (
            f" || test px {t['gapfill']['pixels']:,d}: gapfill {t['gapfill']['psnr']:.2f} base {t[b]['psnr']:.2f}"
            f" adapted {t[ad]['psnr']:.2f}"
        )
    elif row.get("adapt_error"):
        text += f" || adapt: {row['adapt_error'][:80]}"
    return text


def _summary(rows: dict[str, Any]) -> dict[str, Any]:
    mean: dict[str, Any] = {}
    for which in ("gapfill", "base"):
        vals = []
        for row in rows.values():
            a = row["all"]
            key = "gapfill" if which == "gapfill" else next(k for k in a if k != "gapfill")
            vals.append(a[key])
        mean[which] = {k: round(statistics.fmean(v[k] for v in vals), 3) for k in FIGS}
    tests = [r["test"] for r in rows.values() if r.get("test")]
    if tests:
        for which in ("gapfill", "base", "adapted"):
            vals = []
            for t in tests:
                ad = [k for k in t if k.endswith("-adapted")][0]
                key = {"gapfill": "gapfill", "adapted": ad}.get(which) or [k for k in t if k not in ("gapfill", ad)][0]
                vals.append(t[key])
            mean[f"test_{which}"] = {k: round(statistics.fmean(v[k] for v in vals), 3) for k in FIGS}
    worst = min(
        (r["all"][next(k for k in r["all"] if k != "gapfill")]["psnr"] - r["all"]["gapfill"]["psnr"], p)
        for p, r in rows.items()
    )
    g, b = mean["gapfill"], mean["base"]
    text = (
        f"mean over {len(rows)} places (each counted once), every sample: gapfill {_fmt(g)}, base {_fmt(b)} "
        f"({b['psnr'] - g['psnr']:+.2f} dB); worst place {worst[1]} {worst[0]:+.2f} dB"
    )
    if tests:
        text += (
            f"\nmean over {len(tests)} places, test blocks: gapfill {_fmt(mean['test_gapfill'])}, base "
            f"{_fmt(mean['test_base'])}, adapted {_fmt(mean['test_adapted'])}"
        )
    mean["worst"] = {"place": worst[1], "psnr_gain": round(worst[0], 3)}
    return {"mean": mean, "text": text}


def _write_card(path: Path, result: dict[str, Any]) -> None:
    """Record the figures in a checkpoint's card (the weights are rewritten unchanged)."""
    from dataclasses import replace

    from cloudclear.nets.card import load_checkpoint, save_checkpoint

    net, card = load_checkpoint(path)
    places = {}
    for p, row in result["places"].items():
        a = row["all"]
        base = next(k for k in a if k != "gapfill")
        places[p] = {
            "level": row["level"],
            "s1": row["s1"],
            "pixels": a["gapfill"]["pixels"],
            "gapfill": {k: a["gapfill"][k] for k in FIGS},
            "network": {k: a[base][k] for k in FIGS},
        }
    info = dict(card.info)
    info["leave_one_place_out"] = {
        "what": "refine trained without the place, scored on every sample of it (its real masks pasted on "
        "its clear dates); the same architecture and recipe as this checkpoint",
        "command": "python bench/quality.py --out OUT --budget {budget} --epochs {epochs} --adapt-budget "
        "{adapt_budget} --adapt-epochs {adapt_epochs} --ship {ship}".format(**result["settings"]),
        "places": places,
        "mean_over_places": result["mean_over_places"],
    }
    save_checkpoint(path, net, replace(card, info=info))


if __name__ == "__main__":
    main()
