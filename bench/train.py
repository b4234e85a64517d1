"""Benchmark: CPU training throughput of the reconstruction networks, against the data-loading bound.

Usage::

    python bench/train.py [--store PATH ...] [--nets multi-temporal,single-date,sequence]
                          [--size small] [--repeat 3] [--limit 32] [--epochs 1] [--warmup 2]
                          [--batch-size 16] [--workers 0,2] [--train-workers 0]
                          [--data-limit N] [--data-epochs 3] [--threads N] [--count 64] [--patch 64]

By default three patch stores are built in a temporary folder from a synthetic series (the one
the sample tiles held before issue 17, generated there: ``cloudclear synth T31UFQ --size 480
--dates 10 --interval 15 --start 2021-04-01 --seed 42``, then indexed), as ``cloudclear sample``
writes them: ``-l OS2 --simulate t --s1-max-gap 150`` (for multi-temporal), ``-l single-date
--simulate t --s1-max-gap 150`` (single-date) and ``-l sequence --simulate all`` (sequence), each
``-n 64 -p 64 --block 1``, seed 0. ``--store PATH`` (repeatable) uses existing stores instead:
each network takes the first store whose layout it fits (``training.plan_card``) and is skipped,
with a note, when none does.

Each run is a fresh process, on the CPU, set up as ``cloudclear.training.train`` sets it up (the
same card, the normalisation measured on the train split, ``CardSamples`` with random crops of
the patch side, flips / rotations and S1 dropout, the same ``DataLoader``):

- the data-loading bound: ``--data-epochs`` passes over the train split (``--data-limit``
  samples) through the DataLoader without the network (read, decode, normalise, augment, batch),
  for each ``--workers`` value; the time to the first batch (the workers' start, which ``train``
  pays every epoch as it keeps no persistent workers) is reported apart from the rate of the
  batches after it;
- for each ``--train-workers`` value, a fresh network: ``--warmup`` untimed steps, then
  ``--epochs`` epochs of the first ``--limit`` training samples doing what ``train`` does per
  step: cosine learning rate, forward, masked L1 on the reconstructed pixels, backward, AdamW.
  The epoch time includes the DataLoader; ``step`` is forward + backward + AdamW alone, ``wait``
  the time the loop waited for the next batch.

Validation, checkpoints and resume states (``train`` writes them once per epoch) are not timed.
Reported per network and workers value (medians of ``--repeat`` runs): samples per second of the
data alone and of training, their ratio, the compute-only rate, the share of the epoch spent
waiting, the parameter count, and the peak RSS of the main process (VmHWM, after the data passes
and after training) and of the largest DataLoader worker (``RUSAGE_CHILDREN``; a worker starts
from the parent's RSS at fork). The load average is printed: another process using the CPU slows
and scatters every figure. Benchmarks print figures; they assert nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from common import children_peak_rss_mib, peak_rss_mib, run_child

#: The synthetic series the stores are sampled from (``cloudclear.synth.generate_series`` arguments).
SERIES = dict(height=480, width=480, n_dates=10, interval_days=15, start="2021-04-01", seed=42)
CATALOG = "cat.gpkg"
NETS = ("multi-temporal", "single-date", "sequence")
# Net -> (store name, layout, simulated slots, S1 gap in hours) of the stores built by default.
STORES = {
    "multi-temporal": ("os2", "OS2", ("t",), 150.0),
    "single-date": ("single", "single-date", ("t",), 150.0),
    "sequence": ("seq", "sequence", ("all",), None),
}


# -- child process: one measurement -------------------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    t_setup = time.perf_counter()
    import math
    from dataclasses import replace

    import torch
    from torch.utils.data import Subset

    from cloudclear import training as tr
    from cloudclear.nets import parameter_count
    from cloudclear.nets.card import build_net

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    seed, batch, epochs = spec["seed"], spec["batch_size"], spec["epochs"]
    opts = tr.TrainOptions(net=spec["net"], size=spec["size"], batch_size=batch, seed=seed, device="cpu")
    stores = tr._open_stores([spec["store"]])
    card, slot_map = tr.plan_card(stores, opts)
    crop = min(int(s.manifest["patch_size"]) for s in stores)
    crop -= crop % card.align
    torch.manual_seed(seed)
    card = replace(card, normalisation=tr.measure_normalisation(stores, card, seed))
    part = tr.CardSamples(stores[0], "train", card, slot_map, crop, opts.augment, opts.s1_dropout, seed)
    train_set = Subset(part, range(min(spec["limit"], len(part))))
    n_samples = len(train_set)
    out: dict[str, Any] = {
        "samples": n_samples,
        "crop": crop,
        "threads": torch.get_num_threads(),
        "setup_seconds": time.perf_counter() - t_setup,
        "data": {},
        "train": {},
    }

    # The data-loading bound: passes over the training split without the network (epochs 1, 2, ...:
    # other crops and flips each), after an untimed batch that pays for first-touch costs. The
    # time to the first batch (the workers' start, paid every epoch as train keeps none) is kept
    # apart from the rate of the batches after it.
    data_set = Subset(part, range(min(spec["data_limit"] or len(part), len(part))))
    part.epoch = 0
    next(iter(tr._loader(data_set, batch, True, seed, 0, 0)))
    out["data_samples"] = len(data_set)
    for workers in spec["data_workers"]:
        starts, rest, n_rest = [], 0.0, 0
        for epoch in range(1, spec["data_epochs"] + 1):
            part.epoch = epoch
            t0 = time.perf_counter()
            loader = iter(tr._loader(data_set, batch, True, seed, epoch, workers))
            next(loader)
            t1 = time.perf_counter()
            for b in loader:
                n_rest += b["x"].shape[0]
            rest += time.perf_counter() - t1
            starts.append(t1 - t0)
        out["data"][workers] = {"samples": n_rest, "seconds": rest, "first_batch": statistics.median(starts)}
    out["data_rss_mib"] = peak_rss_mib()
    out["data_worker_rss_mib"] = children_peak_rss_mib()

    nb = len(card.bands)
    mean, std = tr._denorm(card)
    mean_t = torch.tensor(mean)[None, :, None, None]
    std_t = torch.tensor(std)[None, :, None, None]
    loss_key = "gaps" if opts.loss_pixels == "gaps" else "truth_valid"
    steps_per_epoch = math.ceil(n_samples / batch)
    total = steps_per_epoch * epochs
    cpu = torch.device("cpu")

    for workers in spec["train_workers"]:
        torch.manual_seed(seed)
        net = build_net(card)  # a fresh network for every run
        out["parameters"] = parameter_count(net)
        optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

        def step(b: dict[str, Any], lr: float, net: Any = net, optimizer: Any = optimizer) -> bool:
            """One step of ``train``'s loop; False when the batch has no pixel to learn from."""
            for group in optimizer.param_groups:
                group["lr"] = lr
            y = tr._predict(net, b, cpu, False)
            truth = (b["truth"] - mean_t) / std_t
            m = b[loss_key].repeat_interleave(nb, 1).to(y.dtype)
            denom = m.sum()
            if denom == 0:
                return False
            loss = ((y - truth).abs() * m).sum() / denom
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return True

        # Warm-up (untimed): the first steps pay for kernel selection, and until the allocator
        # keeps the activations' memory, for fresh pages (the first 2-3 steps run 2-4x slower).
        part.epoch = 0
        net.train()
        t0 = time.perf_counter()
        first = next(iter(tr._loader(train_set, batch, True, seed, 0, 0)))
        for _ in range(spec["warmup"]):
            step(first, opts.lr)
        warmup = time.perf_counter() - t0

        seen = skipped = 0
        step_s = wait_s = 0.0
        t0 = time.perf_counter()
        for e in range(epochs):
            epoch = e + 1
            part.epoch = epoch
            loader = iter(tr._loader(train_set, batch, True, seed, epoch, workers))
            for k in range(steps_per_epoch + 1):
                tw = time.perf_counter()
                b = next(loader, None)
                ts = time.perf_counter()
                wait_s += ts - tw
                if b is None:
                    break
                lr = opts.lr * 0.5 * (1 + math.cos(math.pi * (e * steps_per_epoch + k) / total))
                if step(b, lr):
                    seen += b["x"].shape[0]
                else:
                    skipped += 1
                step_s += time.perf_counter() - ts
        out["train"][workers] = {
            "seconds": time.perf_counter() - t0,
            "step_seconds": step_s,
            "wait_seconds": wait_s,
            "warmup_seconds": warmup,
            "seen": seen,
            "skipped_batches": skipped,
            "rss_mib": peak_rss_mib(),
            "worker_rss_mib": children_peak_rss_mib(),
        }
    return out


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    r = run_child(__file__, {**spec, "name": spec["net"]})
    r["data"] = {int(k): v for k, v in r["data"].items()}  # JSON keys are strings
    r["train"] = {int(k): v for k, v in r["train"].items()}
    return r


# -- parent: stores, runs, table ----------------------------------------------------------------


def _build_stores(root: Path, nets: list[str], count: int, patch: int) -> dict[str, Path]:
    """Generate the synthetic series, index it and write the store each network trains on."""
    from cloudclear.catalog import Catalog, build_index
    from cloudclear.sampling import SampleOptions, sample
    from cloudclear.synth import generate_series

    data = root / "T31UFQ"
    t0 = time.perf_counter()
    generate_series(data, **SERIES)  # type: ignore[arg-type]
    shutil.rmtree(data / "truth")  # not an input: index would only list it as skipped
    build_index(data, root / CATALOG)
    cat = Catalog.open(root / CATALOG)
    out = {}
    for net in nets:
        name, layout, simulate, gap = STORES[net]
        opts = SampleOptions(patch_size=patch, count=count, block=1, simulate=simulate, s1_max_gap=gap, seed=0)
        res = sample(cat, layout, root / name, opts)
        out[net] = res.path
    print(f"  stores built in {time.perf_counter() - t0:.1f} s ({root})", file=sys.stderr)
    return out


def _fit(net: str, stores: list[Path], size: str) -> tuple[Path | None, str]:
    """The first store whose layout ``net`` can train on, or None and why not."""
    from cloudclear import training as tr
    from cloudclear.errors import CloudClearError

    reasons = []
    for s in stores:
        try:
            tr.plan_card(tr._open_stores([s]), tr.TrainOptions(net=net, size=size))
            return s, ""
        except CloudClearError as exc:
            reasons.append(str(exc))
    return None, "; ".join(reasons)


def _store_line(path: Path) -> str:
    from cloudclear.sampling import PatchStore

    s = PatchStore(path)
    m = s.manifest
    s1 = "with S1" if any(x.name.endswith(".s1") for x in s.specs) else "no S1"
    splits = ", ".join(f"{k} {v}" for k, v in (m.get("splits") or {}).items())
    return f"layout {s.layout.name}, {m['patch_size']} px, bands {','.join(s.bands)}, {s1}; {splits}"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _ints(text: str, name: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = sorted({int(w) for w in text.split(",") if w.strip()})
    except ValueError:
        parser.error(f"{name} takes comma-separated integers, not {text!r}")
    if not values or min(values) < 0:
        parser.error(f"{name} takes integers >= 0, not {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, action="append", default=None, help="use this patch store (repeatable)")
    parser.add_argument("--nets", default=",".join(NETS), help=f"networks to time (default {','.join(NETS)})")
    parser.add_argument("--size", default="small", help="size preset (default small)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (median printed)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per run (default 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first (default 2)")
    parser.add_argument("--limit", type=int, default=32, help="training samples per epoch (default 32)")
    parser.add_argument(
        "--data-limit", type=int, default=None, help="training samples per data pass (default: the whole split)"
    )
    parser.add_argument("--data-epochs", type=int, default=3, help="data passes per workers value (default 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step (default 16, as train)")
    parser.add_argument("--workers", default="0,2", help="DataLoader workers of the data passes (default 0,2)")
    parser.add_argument(
        "--train-workers", default="0", help="DataLoader workers of the training runs (default 0; e.g. 0,2)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads in the runs (default 0: torch's choice)"
    )
    parser.add_argument("--count", type=int, default=64, help="samples per built store (default 64)")
    parser.add_argument("--patch", type=int, default=64, help="patch side of built stores (default 64)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    from cloudclear.nets import ARCHITECTURES, SIZES

    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown or not nets:
        parser.error(f"--nets: {unknown} not among {', '.join(NETS)} (of {', '.join(ARCHITECTURES)})")
    if args.size not in SIZES:
        parser.error(f"--size: choose one of {', '.join(SIZES)}")
    data_workers = _ints(args.workers, "--workers", parser)
    train_workers = _ints(args.train_workers, "--train-workers", parser)
    if (
        args.warmup < 0
        or min(args.repeat, args.epochs, args.limit, args.batch_size, args.data_epochs, args.data_limit or 1) < 1
    ):
        parser.error(
            "--threads, --warmup >= 0; --repeat, --epochs, --limit, --data-limit, --data-epochs and --batch-size >= 1"
        )
    if args.count < 8 or args.patch < 16:
        parser.error("--count must be >= 8 and --patch >= 16")

    tmp = Path(tempfile.mkdtemp(prefix="cloudclear-bench-train-"))
    try:
        load_before = _load()
        t_all = time.perf_counter()
        if args.store:
            for s in args.store:
                if not s.expanduser().is_dir():
                    raise SystemExit(f"{s}: no such patch store")
            chosen: dict[str, Path | None] = {}
            skipped: dict[str, str] = {}
            for net in nets:
                store, why = _fit(net, [s.expanduser().resolve() for s in args.store], args.size)
                chosen[net] = store
                if store is None:
                    skipped[net] = why
                    print(f"  {net}: skipped, no store fits ({why})", file=sys.stderr)
            made = "given"
        else:
            chosen = dict(_build_stores(tmp, nets, args.count, args.patch))
            skipped = {}
            made = "built from the synthetic series (480 px, 10 dates, seed 42): "
            made += f"--count {args.count} --patch {args.patch} --block 1"

        results: dict[str, list[dict[str, Any]]] = {}
        for net in nets:
            store = chosen.get(net)
            if store is None:
                continue
            runs = []
            for k in range(args.repeat):
                spec = {
                    "net": net,
                    "store": str(store),
                    "size": args.size,
                    "data_workers": data_workers,
                    "train_workers": train_workers,
                    "batch_size": args.batch_size,
                    "limit": args.limit,
                    "data_limit": args.data_limit,
                    "data_epochs": args.data_epochs,
                    "warmup": args.warmup,
                    "threads": args.threads,
                    "epochs": args.epochs,
                    "seed": 0,
                }
                r = _run_child(spec)
                runs.append(r)
                data = ", ".join(f"{d['samples'] / d['seconds']:.1f} (workers {w})" for w, d in r["data"].items())
                train = ", ".join(f"{t['seen'] / t['seconds']:.1f} (workers {w})" for w, t in r["train"].items())
                print(f"  {net} [{k + 1}]: data {data}; train {train} samples/s", file=sys.stderr)
            results[net] = runs
        load_after = _load()

        # -- report ------------------------------------------------------------------------------
        import torch

        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        first = next(iter(results.values()))[0] if results else {}
        print(
            f"machine: {os.cpu_count()} cores, {mem_gib:.1f} GiB RAM; torch {torch.__version__}, "
            f"{first.get('threads', '?')} intra-op threads; load average {load_before} before, {load_after} after"
        )
        print(f"stores ({made}):")
        for net in nets:
            store = chosen.get(net)
            if store is not None:
                print(f"  {net:<15} {store}: {_store_line(store)}")
            else:
                print(f"  {net:<15} skipped: no store fits ({skipped[net]})")
        print(
            f"runs: size {args.size}, batch {args.batch_size}, {args.epochs} timed epoch(s) of at most {args.limit} "
            f"training samples (after {args.warmup} untimed warm-up step(s)); data passes: {args.data_epochs} over "
            f"{args.data_limit or 'all the'} training samples; medians of {args.repeat} runs, each in a fresh process, "
            "a fresh network per training run"
        )
        print()
        print(
            f"  {'network':<15} {'params':>8} {'samples':>7} {'crop':>4} {'workers':>7} {'data/s':>8} {'1st batch':>8} "
            f"{'train/s':>8} {'data/train':>10} {'step/s':>7} {'wait':>5} {'peak RSS data / train':>22} "
            f"{'worker RSS':>10}"
        )
        for net, runs in results.items():
            last = runs[-1]

            def med(f: Any, rs: list[dict[str, Any]] = runs) -> float:
                return statistics.median(f(r) for r in rs)

            base_train = min(train_workers)
            for w in sorted(set(data_workers) | set(train_workers)):
                trained = w in train_workers
                tw = w if trained else base_train
                data_rate = (
                    med(lambda r, w=w: r["data"][w]["samples"] / r["data"][w]["seconds"]) if w in data_workers else None
                )
                first = med(lambda r, w=w: r["data"][w]["first_batch"]) if w in data_workers else None
                train_rate = med(lambda r, tw=tw: r["train"][tw]["seen"] / r["train"][tw]["seconds"])
                step_rate = med(lambda r, tw=tw: r["train"][tw]["seen"] / r["train"][tw]["step_seconds"])
                wait = med(lambda r, tw=tw: r["train"][tw]["wait_seconds"] / r["train"][tw]["seconds"])
                ratio = "-" if data_rate is None else f"{data_rate / train_rate:.1f}x" + ("" if trained else "*")
                cells = [
                    f"{data_rate:>8.1f}" if data_rate is not None else f"{'-':>8}",
                    f"{first * 1000:>6.0f}ms" if first is not None else f"{'-':>8}",
                    f"{train_rate:>8.1f}" if trained else f"{'-':>8}",
                    f"{ratio:>10}",
                    f"{step_rate:>7.1f}" if trained else f"{'-':>7}",
                    f"{wait:>5.0%}" if trained else f"{'-':>5}",
                ]
                rss_train = max(r["train"][tw]["rss_mib"] for r in runs)
                rss = f"{max(r['data_rss_mib'] for r in runs):.0f} / {rss_train:.0f} MiB"
                worker = "-"
                if w:
                    worker = f"{max(r['data_worker_rss_mib'] for r in runs):.0f} MiB"
                print(
                    f"  {net:<15} {last['parameters'] / 1e6:>7.3f}M {last['samples']:>7} {last['crop']:>4} {w:>7} "
                    + " ".join(cells)
                    + f" {rss:>22} {worker:>10}"
                )
            skipped = max(t["skipped_batches"] for r in runs for t in r["train"].values())
            if skipped:
                print(f"    note: up to {skipped} batches per run had no reconstructed pixel (no step taken)")
        legend = (
            "data/s: training batches through the DataLoader alone (read, decode, normalise, augment, batch: the "
            "I/O bound), after the first batch; 1st batch: the time to it (the workers' start, paid every epoch); "
            f"train/s: whole training epochs, DataLoader included (for --train-workers {args.train_workers}); "
            "data/train: how far training is from the I/O bound (*: against training with "
            f"{min(train_workers)} workers); step/s: forward + backward + AdamW alone; wait: the share of the "
            "epoch spent waiting for the next batch; peak RSS of the main process after the data passes and "
            "after training; worker RSS: the largest DataLoader worker's peak (it starts from the parent's RSS)"
        )
        print("\n".join(textwrap.wrap(legend, 110, initial_indent="  (", subsequent_indent="   ")) + ")")
        print(f"\n  total {time.perf_counter() - t_all:.0f} s")
        busy = max((float(x.split()[0]) for x in (load_before, load_after) if x != "unknown"), default=0.0)
        if busy > (os.cpu_count() or 1) * 0.75:
            print(
                f"  note: 1-minute load average up to {busy:.1f} on {os.cpu_count()} cores: another process "
                "shares the CPU (the load before this benchmark counts others alone), so these figures are lower "
                "and noisier than on an idle machine; threaded torch operations suffer most (the DataLoader's "
                "batching in the main process too), --threads 1 shows how much"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
