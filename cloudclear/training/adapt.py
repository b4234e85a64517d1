"""Self-supervised adaptation: fine-tune a checkpoint on the user's own catalog.

:func:`adapt` samples a temporary patch store from a catalog with the layout the model was trained
on (read from its card), with the reference slot simulated: a clear observation of the user's
with one of the user's own real cloud masks pasted on it, so the truth is known and never a pixel
that a mask hides. It then fine-tunes the model on it (:func:`finetune`) within a time budget,
keeping the card (architecture, slots, normalisation), and writes the checkpoint with
``info["adapted"]`` on its card. The temporary store lives beside the output and is removed.

:func:`finetune` fine-tunes a checkpoint on given stores and splits (a bench adapts on a store's
train blocks and scores on its test blocks).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cloudclear.errors import CheckpointError, SampleError
from cloudclear.training.loop import EpochRecord, TrainResult, _prepare_output, file_sha256, train
from cloudclear.training.options import TrainOptions

#: The fine-tuning settings :func:`finetune` and :func:`adapt` use unless told otherwise: a lower
#: peak learning rate than training from scratch (the weights are already good), a cosine schedule
#: over more epochs than a budget of minutes reaches (so the rate stays near its peak), and an
#: early stop after a few epochs without a better validation PSNR.
FINETUNE = {"lr": 5e-4, "epochs": 50, "patience": 6}

_TEMP = re.compile(r"^\.(?P<name>.+)\.adapt-(?P<pid>\d+)$")


def finetune(
    stores: Sequence[str | os.PathLike[str]],
    init: str | os.PathLike[str],
    out: str | os.PathLike[str],
    budget_s: float | None = None,
    splits: Sequence[str] = ("train",),
    options: TrainOptions | None = None,
    *,
    progress: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Fine-tune the checkpoint ``init`` on the ``splits`` of ``stores``; write it to ``out``.

    The card is kept (architecture, slots, normalisation); the stores must fit it. ``init``'s
    weights are epoch 0: they are validated on the ``val`` split (unless it is trained on) and
    stay the checkpoint until an epoch beats them. Without a val split the last epoch is kept.

    Args:
        stores: patch store folders.
        init: the checkpoint (path or model name) to start from.
        out: the ``.safetensors`` to write.
        budget_s: stop after this many seconds (None: by epochs and patience only).
        splits: the store splits trained on.
        options: other :class:`TrainOptions` (default: :data:`FINETUNE`); its ``init``,
            ``budget_s`` and ``train_splits`` are replaced by the arguments.

    Raises:
        CheckpointError: the stores do not fit ``init``'s card, or ``init`` is not a checkpoint.
        and what :func:`~cloudclear.training.train` raises.
    """
    opts = options if options is not None else TrainOptions(**FINETUNE)  # type: ignore[arg-type]
    opts = replace(opts, init=str(init), budget_s=budget_s, train_splits=tuple(splits))
    return train(stores, out, opts, progress=progress, on_epoch=on_epoch)


@dataclass(frozen=True)
class AdaptOptions:
    """Options of :func:`adapt`.

    Attributes:
        minutes: training time budget (sampling comes before it and is not counted).
        count: patches to sample.
        patch_size: patch side (None: the size the model was trained on, at least 32 px).
        block: split block side in patches (train / val by blocks that never overlap).
        val_share: share of the blocks kept for validation (0: no validation, the last epoch is kept).
        lr, epochs, patience, batch_size: fine-tuning settings (:data:`FINETUNE`).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the sampling, the data order and the augmentation.
        workers: sampling threads.
        policy: what counts as clear (None: the catalog's).
        overwrite: replace an existing output.
        progress: progress bars on stderr.
    """

    minutes: float = 5.0
    count: int = 1000
    patch_size: int | None = None
    block: int = 4
    val_share: float = 0.2
    lr: float = FINETUNE["lr"]
    epochs: int = int(FINETUNE["epochs"])
    patience: int = int(FINETUNE["patience"])
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    policy: Any = None
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.minutes >= 0:
            raise CheckpointError(f"--minutes must be >= 0, not {self.minutes}")
        if not self.lr > 0 or self.epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise CheckpointError("--lr must be > 0, epochs, patience and batch size >= 1")
        if not 0 <= self.val_share < 1:
            raise CheckpointError(f"the val share must be in [0, 1), not {self.val_share}")


@dataclass(frozen=True)
class AdaptResult:
    """What :func:`adapt` did: the checkpoint written and the figures of ``info["adapted"]``."""

    path: Path
    card: Any
    train: TrainResult
    sample_seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def adapted(self) -> dict[str, Any]:
        return dict(self.card.info["adapted"])

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "adapted": self.adapted, "notes": list(self.notes)}


def training_layout(card: Any, name: str = "model") -> tuple[Any, tuple[str, ...], int]:
    """The layout, simulated slots and patch size a card's network was trained (or adapted) on.

    Looks at ``info["adapted"]`` (the layout TOML), then ``info["trained_on"]`` (a preset name, or
    the store's ``store.json`` when it is still there), then the base of a fine-tuned card.

    Raises:
        CheckpointError: the card does not say which layout its network was trained on.
    """
    import json

    from cloudclear.layouts import PRESETS, parse_layout

    info = card.info or {}
    simulate_default = ("all",) if card.output_slots else ("t",)
    adapted = info.get("adapted") or {}
    if adapted.get("layout"):
        lay = parse_layout(adapted["layout"], f"{name}: info.adapted.layout")
        return lay, tuple(adapted.get("simulate") or simulate_default), int(adapted.get("patch_size") or 32)
    seen = []
    for entry in [*(info.get("trained_on") or []), *((info.get("init") or {}).get("trained_on") or [])]:
        layout, simulate = entry.get("layout"), tuple(entry.get("simulate") or simulate_default)
        patch = int(entry.get("patch_size") or 32)
        store_json = Path(str(entry.get("store"))) / "store.json"
        if store_json.is_file():
            manifest = json.loads(store_json.read_text())
            simulated = [s["name"] for s in manifest["layout"]["slots"] if s.get("gaps") == "simulated"]
            return parse_layout(manifest["layout"], str(store_json)), tuple(simulated) or simulate, patch
        if layout in PRESETS:
            return PRESETS[layout], simulate, patch
        seen.append(str(layout))
    why = f"layouts {', '.join(seen)} are not presets and their stores are gone" if seen else "no info.trained_on"
    raise CheckpointError(
        f"{name}: its card does not say which layout it was trained on ({why}); adapt needs a card written "
        "by `cloudclear train` from a store of a preset layout"
    )


def adapt(
    catalog: str | os.PathLike[str],
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: AdaptOptions | None = None,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> AdaptResult:
    """Fine-tune ``model`` on patches of ``catalog`` with the catalog's own masks pasted; write ``out``.

    Samples ``options.count`` patches with the layout, bands and simulated slots the model was
    trained on (S1 when both the card and the catalog have it), into a temporary store beside
    ``out``; fine-tunes within ``options.minutes``; writes the checkpoint with ``info["adapted"]``
    (base model name and SHA-256, catalog, scenes, dates and bounds used, samples, budget and
    seconds used, epochs, validation figures before and after). The truth of every sample is a
    clear observation: pixels that a date's mask hides are never a target.

    Raises:
        CatalogNotFoundError: no catalog at ``catalog``.
        CheckpointNotFoundError, CheckpointError: no such model, or a card without layout info.
        SampleError: the catalog gives no sample for the model's layout (the message says why).
        OutputExistsError: ``out`` exists without ``overwrite``.
        OutputError: the checkpoint cannot be written; nothing is left half-written.
    """
    from cloudclear._tempfiles import remove_orphans
    from cloudclear.catalog import Catalog
    from cloudclear.nets.card import find_checkpoint, load_checkpoint, read_card, save_checkpoint
    from cloudclear.sampling import PatchStore, SampleOptions, sample

    opts = options or AdaptOptions()
    out = Path(out).expanduser()
    _prepare_output(out, TrainOptions(overwrite=opts.overwrite))  # refuse an existing output before sampling
    base_path = find_checkpoint(model)
    card = read_card(base_path)
    layout, simulate, trained_patch = training_layout(card, base_path.name)
    cat = Catalog.open(catalog)
    s1 = any(s.sensor == "S1" for s in card.slots) and cat.has_sensor("S1")
    patch = opts.patch_size or max(trained_patch, 32)
    if patch < card.align:
        raise CheckpointError(f"--patch-size {patch}: smaller than the network's pooling alignment {card.align} px")
    sample_opts = SampleOptions(
        patch_size=patch,
        count=opts.count,
        fractions=(1.0 - opts.val_share, opts.val_share, 0.0),
        block=opts.block,
        simulate=simulate,
        s1=s1,
        s1_max_gap=card.s1_max_hours if s1 else None,
        bands=tuple(card.bands),
        seed=opts.seed,
        workers=opts.workers,
        progress=opts.progress,
        policy=opts.policy,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(out.parent, f".{out.name}.adapt-*", _TEMP)
    temp = out.parent / f".{out.name}.adapt-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        try:
            sampled = sample(cat, layout, temp / "store", sample_opts)
        except SampleError as exc:
            raise SampleError(
                f"{cat.path}: no patches to adapt {base_path.stem} on (layout {layout.name}, bands "
                f"{','.join(card.bands)}, {patch} px, a clear date needed under each pasted mask): {exc}"
            ) from None
        sample_seconds = time.perf_counter() - t0
        train_opts = TrainOptions(
            lr=opts.lr,
            epochs=opts.epochs,
            patience=opts.patience,
            batch_size=opts.batch_size,
            crop=None,
            device=opts.device,
            seed=opts.seed,
            overwrite=True,
        )
        tuned = temp / "adapted.safetensors"
        result = finetune(
            [sampled.path],
            base_path,
            tuned,
            opts.minutes * 60,
            ("train",),
            train_opts,
            progress=opts.progress,
            on_epoch=on_epoch,
        )
        net, tuned_card = load_checkpoint(tuned)
        store = PatchStore(sampled.path)
        info = dict(tuned_card.info)
        info["adapted"] = _record(
            base_path, Path(cat.path), store, sampled, result, opts, layout, simulate, patch, s1, sample_seconds
        )
        final = replace(tuned_card, info=info)
        save_checkpoint(out, net, final)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return AdaptResult(out, final, result, sample_seconds, tuple(sampled.notes))


def _record(
    base_path: Path,
    catalog_path: Path,
    store: Any,
    sampled: Any,
    result: TrainResult,
    opts: AdaptOptions,
    layout: Any,
    simulate: tuple[str, ...],
    patch: int,
    s1: bool,
    sample_seconds: float,
) -> dict[str, Any]:
    """The card's ``info["adapted"]``: what the network was adapted on and what it gained."""
    meta = store.metadata()
    scene_cols = [c for c in meta.columns if c.endswith("_scene")]
    scenes = sorted({str(v) for c in scene_cols for v in meta[c].dropna()})
    targets = sorted({str(v)[:10] for v in meta["datetime"].dropna()})
    dt_cols = [c for c in meta.columns if c.endswith("_datetime")]
    dates = sorted({str(v)[:10] for c in dt_cols for v in meta[c].dropna()})
    west, south, east, north = (round(float(v), 6) for v in meta.total_bounds)
    training = result.card.info.get("training", {})
    return {
        "base": base_path.stem,
        "base_path": str(base_path.resolve()),
        "base_sha256": file_sha256(base_path),
        "catalog": str(catalog_path.resolve()),
        "layout": layout.to_dict(),
        "simulate": list(simulate),
        "patch_size": patch,
        "s1": s1,
        "bands": list(store.bands),
        "scenes": scenes,
        "dates": dates,
        "target_dates": targets,
        "tiles": sorted({str(t) for t in meta["tile"].dropna()}),
        "bounds_lonlat": [west, south, east, north],
        "samples": dict(sampled.by_split),
        "samples_requested": opts.count,
        "budget_s": round(opts.minutes * 60, 3),
        "sample_seconds": round(sample_seconds, 3),
        "seconds": round(result.seconds, 3),
        "epochs": len(result.history),
        "steps": result.steps,
        "best_epoch": result.best_epoch,
        "out_of_time": result.out_of_time,
        "stopped_early": result.stopped_early,
        "lr": opts.lr,
        "device": result.device,
        "selection": training.get("selection"),
        "val_before": result.val_before,
        "val_after": result.card.info.get("val"),
    }
