"""``cloudclear train``, ``evaluate`` and ``models``: fit networks, score them, list them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudclear.cli.options import (
    AsDecoded,
    AsJson,
    Buffer,
    MaskSource,
    Snow,
    Strict,
    Temporal,
    TemporalDays,
    Unclassified,
    choice,
    clear_policy,
    interruptible,
    overwrite_option,
    progress,
)


def train(
    store: Annotated[
        list[Path], typer.Option("--store", "-s", help="Patch store from `cloudclear sample` (repeat to combine).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors; card as .json).")],
    net: Annotated[
        str,
        typer.Option(
            "--net", help="Architecture: {architectures} (see `cloudclear models`).", callback=choice("architectures")
        ),
    ] = "multi-temporal",
    size: Annotated[
        str, typer.Option("--size", help="Width/depth preset: {sizes}.", callback=choice("sizes"))
    ] = "small",
    width: Annotated[
        int | None, typer.Option("--width", help="Channels at full resolution. [default: the --size preset's]", min=1)
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option("--depth", help="Poolings (2**depth aligns windows). [default: the --size preset's]", min=1),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="The most epochs.", min=1)] = 40,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Samples per step.", min=1)] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, cosine decay).")] = 2e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 1e-4,
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after N epochs without a better val PSNR.", min=1)
    ] = 10,
    loss_pixels: Annotated[
        str,
        typer.Option(
            "--loss-pixels",
            help="Pixels the loss covers: {loss_pixels} (gaps: masked L1 on reconstructed pixels; all: every "
            "truth pixel).",
            callback=choice("loss_pixels"),
        ),
    ] = "gaps",
    crop: Annotated[int | None, typer.Option("--crop", help="Training crop side [default: smallest patch].")] = None,
    s1: Annotated[bool | None, typer.Option("--s1/--no-s1", help="Feed S1 [default: when a store has it].")] = None,
    s1_dropout: Annotated[float, typer.Option("--s1-dropout", help="Share of samples trained without S1.")] = 0.2,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.", min=0)] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seeds weights, data order and augmentation.", min=0)] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last epoch.")] = False,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Start from this checkpoint (path or model name): its weights, architecture, slots and "
            "normalisation are kept (--net/--size/--width/--depth ignored); its val figures are epoch 0.",
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            help="Time budget in SECONDS: stop when spent (checked every step; the epoch in progress is then "
            "validated and kept if best).",
            min=0,
        ),
    ] = None,
    overwrite: Annotated[bool, overwrite_option("an existing checkpoint")] = False,
    as_json: AsJson = False,
) -> None:
    """Train a reconstruction network on patch stores and write a safetensors checkpoint with its card.

    The network's input slots follow the store's layout; inputs are normalised with constants
    measured on the train split. Masked L1 loss, AdamW, cosine schedule; after every epoch the
    val split is scored (PSNR, SSIM, SAM, MAE as `cloudclear score`), the best epoch is kept and a
    resume state is saved beside the checkpoint. CUDA with bf16 autocast when present.

    With --init CHECKPOINT it fine-tunes that checkpoint instead (keeping its card); with --budget
    SECONDS it stops when the time is spent.

    \b
    Example:
      cloudclear train -s out/os2 --net multi-temporal -o models/mt.safetensors
    """
    from cloudclear.training import TrainOptions, resume_path
    from cloudclear.training import train as run_train

    options = TrainOptions(
        net=net,
        size=size,
        width=width,
        depth=depth,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        patience=patience,
        loss_pixels=loss_pixels,
        crop=crop,
        s1=s1,
        s1_dropout=s1_dropout,
        workers=workers,
        device=device,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        init=init,
        budget_s=budget,
    )
    show = progress()

    def report(rec: Any) -> None:
        if not as_json:
            v = rec.val
            typer.echo(
                f"epoch {rec.epoch}: loss {rec.loss:.4f}, val PSNR {v['psnr']} dB, SSIM {v['ssim']}, "
                f"SAM {v['sam']}, MAE {v['mae']} ({rec.samples_per_s:.0f} samples/s)",
                err=True,
            )

    again = f"the last finished epoch is kept in {resume_path(out).name}: continue with --resume"
    result = interruptible(lambda: run_train(store, out, options, progress=show, on_epoch=report), "", again)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    v = result.card.info.get("val", {})
    typer.echo(
        f"{result.path}: {result.card.architecture} {result.card.options}, {result.parameters:,} parameters, "
        f"best epoch {result.best_epoch} of {len(result.history)}"
        + (" (stopped early)" if result.stopped_early else "")
        + (f" (time budget of {budget:g} s spent, {result.steps} steps)" if result.out_of_time else "")
    )
    if result.val_before is not None:
        b = result.val_before
        typer.echo(f"    before ({init}): PSNR {b.get('psnr')} dB, SSIM {b.get('ssim')}, SAM {b.get('sam')} deg")
    typer.echo(f"    val: PSNR {v.get('psnr')} dB, SSIM {v.get('ssim')}, SAM {v.get('sam')} deg, MAE {v.get('mae')}")


def adapt(
    catalog: Annotated[
        Path, typer.Option("--catalog", "-c", help="Your catalog from `cloudclear index` (or its folder).")
    ],
    model: Annotated[str, typer.Option("--from", "-m", help="Checkpoint to adapt: a path or a model name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Adapted checkpoint to write (.safetensors).")],
    minutes: Annotated[
        float, typer.Option("--minutes", help="Training time budget in minutes (sampling not counted).", min=0)
    ] = 5.0,
    count: Annotated[int, typer.Option("--count", "-n", help="Patches to sample from the catalog.", min=1)] = 1000,
    patch_size: Annotated[
        int | None,
        typer.Option(
            "--patch-size", "-p", help="Patch side (default: the model's training patch, at least 32).", min=8
        ),
    ] = None,
    block: Annotated[int, typer.Option("--block", help="Train/val split block side, in patches.", min=1)] = 4,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate of the fine-tuning.")] = 5e-4,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seeds sampling, data order and augmentation.", min=0)] = 0,
    workers: Annotated[int, typer.Option("--workers", help="Sampling threads.", min=1)] = 2,
    overwrite: Annotated[bool, overwrite_option("an existing checkpoint")] = False,
    as_json: AsJson = False,
    buffer: Buffer = None,
    unclassified: Unclassified = None,
    snow: Snow = None,
    mask_source: MaskSource = None,
    temporal: Temporal = None,
    temporal_days: TemporalDays = None,
    strict: Strict = False,
    as_decoded: AsDecoded = False,
) -> None:
    """Adapt a checkpoint to your own catalog: self-supervised fine-tuning within a time budget.

    Samples patches from the catalog with the layout, bands and slots the model was trained on,
    pasting your own real cloud masks on your own clear observations (so the truth is known, and
    pixels a date's mask hides are never a target), fine-tunes the model on them for --minutes,
    keeping its card and normalisation, and writes the checkpoint whose card records the
    adaptation (info.adapted: base model and SHA-256, scenes, dates, bounds, samples, time, val
    figures before and after). The best epoch by val PSNR is kept, the base weights if none
    beats them. The temporary patch store is removed.

    \b
    Example:
      cloudclear adapt -c my.gpkg --from multi-temporal-small \\
          -o models/mine.safetensors --minutes 5
    """
    from cloudclear.training import AdaptOptions
    from cloudclear.training import adapt as run_adapt

    options = AdaptOptions(
        minutes=minutes,
        count=count,
        patch_size=patch_size,
        block=block,
        lr=lr,
        device=device,
        seed=seed,
        workers=workers,
        overwrite=overwrite,
        progress=progress(),
        policy=clear_policy(
            buffer,
            unclassified,
            snow,
            strict,
            temporal,
            as_decoded=as_decoded,
            source=mask_source,
            temporal_days=temporal_days,
            none_if_unset=True,
        ),
    )

    def report(rec: Any) -> None:
        if not as_json:
            v = rec.val
            typer.echo(f"epoch {rec.epoch}: loss {rec.loss:.4f}, val PSNR {v['psnr']} dB, SSIM {v['ssim']}", err=True)

    result = interruptible(lambda: run_adapt(catalog, model, out, options, on_epoch=report), "checkpoint")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    a = result.adapted
    b, v = a["val_before"] or {}, a["val_after"] or {}
    typer.echo(
        f"{result.path}: {a['base']} adapted on {sum(a['samples'].values())} patches "
        f"({', '.join(f'{k} {n}' for k, n in a['samples'].items() if n)}) of {len(a['scenes'])} scenes, "
        f"{a['dates'][0]} .. {a['dates'][-1]}"
    )
    typer.echo(
        f"    sampling {a['sample_seconds']:.1f} s, training {a['seconds']:.1f} s of {a['budget_s']:g} s: "
        f"{a['epochs']} epochs, {a['steps']} steps, best epoch {a['best_epoch']}"
        + (" (the base weights: no epoch beat them)" if a["best_epoch"] == 0 else "")
    )
    typer.echo(
        f"    val PSNR {b.get('psnr')} -> {v.get('psnr')} dB, SSIM {b.get('ssim')} -> {v.get('ssim')}, "
        f"SAM {b.get('sam')} -> {v.get('sam')} deg"
        if b.get("psnr") is not None
        else "    no val pixels to score: "
        + ("the base weights are kept" if a["best_epoch"] == 0 else "the last epoch is kept")
        + " (raise --count or use a smaller --block)"
    )
    for note in result.notes:
        typer.echo(f"    note: {note}", err=True)


def evaluate(
    store: Annotated[list[Path], typer.Option("--store", "-s", help="Patch store (repeat to pool several).")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="gapfill, or a checkpoint path or name (repeat).")],
    split: Annotated[
        str, typer.Option("--split", help="{splits} or all.", callback=choice("splits", extra=("all",)))
    ] = "test",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    as_json: AsJson = False,
) -> None:
    """Score gapfill and checkpoints on the reconstructed pixels of a store split.

    Every method is scored on the same pixels: valid in the truth, not seen in the input (the
    pasted gaps), and filled by gapfill. Figures are those of `cloudclear score`, pooled.

    \b
    Example:
      cloudclear evaluate -s out/os2 -m gapfill -m multi-temporal-small
    """
    from cloudclear.nets.card import find_checkpoint
    from cloudclear.training import evaluate as run_evaluate

    methods = [m if m == "gapfill" else str(find_checkpoint(m)) for m in model]
    results = run_evaluate(store, methods, None if split == "all" else split, device=device, progress=progress())
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    first = results[0]
    typer.echo(
        f"split {split}: {first.samples} samples, {first.pixels:,} reconstructed pixels scored"
        + (f" ({first.unfilled:,} left out: no date saw them)" if first.unfilled else "")
    )
    # context, not a result row: on stderr, so the table on stdout keeps its shape
    typer.echo(f"clear as the store(s) recorded: {first.clear_policy}", err=True)
    typer.echo(f"{'method':40s} {'PSNR':>7s} {'SSIM':>6s} {'SAM':>6s} {'MAE':>7s} {'RMSE':>7s}")
    for r in results:
        f = r.figures
        typer.echo(
            f"{Path(r.method).name:40s} {f['psnr'] or float('nan'):7.2f} {f['ssim'] or float('nan'):6.3f} "
            f"{f['sam'] or float('nan'):6.2f} {f['mae'] or float('nan'):7.4f} {f['rmse'] or float('nan'):7.4f}"
        )


def models(
    folder: Annotated[
        Path | None, typer.Option("--dir", help="Checkpoint folder [default: ./models, then the shipped models].")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """List the network architectures and the trained checkpoints (cards only; weights are not loaded)."""
    from cloudclear.nets import DESCRIPTIONS, SIZES
    from cloudclear.nets.card import list_checkpoints

    found = list_checkpoints(folder)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "architectures": DESCRIPTIONS,
                    "sizes": SIZES,
                    "checkpoints": [{"path": str(p), **c.to_dict()} for p, c in found],
                },
                indent=2,
            )
        )
        return
    typer.echo(f"architectures (cloudclear train --net NAME --size {'|'.join(SIZES)}):")
    for name, text in DESCRIPTIONS.items():
        typer.echo(f"  {name:15s} {text}")
    typer.echo("checkpoints:" if found else "checkpoints: none found")
    for path, card in found:
        v = card.info.get("val", {})
        params = card.info.get("training", {}).get("parameters")
        slots = ",".join(s.name for s in card.slots)
        typer.echo(
            f"  {path.stem:28s} {card.architecture:15s} {params or 0:>10,} params  bands {','.join(card.bands)}"
            f"  slots {slots}  val PSNR {v.get('psnr')} dB  ({path})"
        )
        for line in _lopo_lines(card.info):
            typer.echo(f"      {line}")


def _lopo_lines(info: dict) -> list[str]:
    """A card's leave-one-place-out figures (bench/quality.py) and adaptation, as lines."""
    out = []
    adapted = info.get("adapted")
    if adapted:
        out.append(
            f"adapted from {adapted.get('base', '?')} on {adapted.get('catalog', '?')} "
            f"(samples {adapted.get('samples', '?')}, {adapted.get('seconds', '?')} s)"
        )
    lopo = info.get("leave_one_place_out")
    if not lopo:
        out.append("leave-one-place-out: not measured (figures at places it was trained on only)")
        return out
    mean = lopo.get("mean_over_places", {})
    g, n = mean.get("gapfill", {}), mean.get("base", {})
    if g and n:
        out.append(
            f"leave-one-place-out, mean of {len(lopo.get('places', {}))} places: PSNR {n['psnr']:.2f} dB vs gapfill "
            f"{g['psnr']:.2f} ({n['psnr'] - g['psnr']:+.2f}), SSIM {n['ssim']:.3f} vs {g['ssim']:.3f}, "
            f"SAM {n['sam']:.2f} vs {g['sam']:.2f} deg"
        )
    for place, row in lopo.get("places", {}).items():
        a, b = row["gapfill"], row["network"]
        out.append(
            f"  {place:15s} {row.get('level', ''):3s} {'S1' if row.get('s1') else '  '} "
            f"PSNR {b['psnr']:.2f} vs gapfill {a['psnr']:.2f} ({b['psnr'] - a['psnr']:+.2f})"
        )
    return out
