"""The training loop: fit a network on patch stores, validate every epoch, keep the best epoch as
the checkpoint, write a resume state, and stop with an error when the loss diverges."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cloudclear.errors import CheckpointError, OutputError, OutputExistsError, StoreError, TrainingDivergedError
from cloudclear.training.options import TrainOptions, check_depth
from cloudclear.training.resume import load_resume, resume_meta, resume_path, save_resume
from cloudclear.training.samples import (
    CardSamples,
    map_card,
    measure_normalisation,
    open_stores,
    plan_card,
    store_summary,
)

#: A step whose loss exceeds this many times the run's first step loss has diverged. In normalised
#: units an untrained network's L1 loss is about 1; healthy training only lowers it.
DIVERGENCE_FACTOR = 1e3
#: The first step loss is counted as at least this much, so a nearly perfect start (a store of
#: almost constant truth) does not make ordinary noise look like an explosion.
_LOSS_FLOOR = 0.01

FIGURES = ("psnr", "ssim", "sam", "mae", "rmse")


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss, validation figures on the reconstructed pixels, time."""

    epoch: int
    loss: float
    val: dict[str, Any]
    lr: float
    seconds: float
    samples_per_s: float


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did."""

    path: Path
    card: Any
    history: tuple[EpochRecord, ...]
    best_epoch: int
    stopped_early: bool
    resumed_from: int
    parameters: int
    device: str
    out_of_time: bool = False
    steps: int = 0
    seconds: float = 0.0
    val_before: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "architecture": self.card.architecture,
            "options": self.card.options,
            "parameters": self.parameters,
            "device": self.device,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "resumed_from": self.resumed_from,
            "out_of_time": self.out_of_time,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "init": self.card.info.get("init"),
            "val_before": self.val_before,
            "val": self.card.info.get("val", {}),
            "history": [asdict(h) for h in self.history],
        }


def device_of(name: str) -> Any:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` as a torch device."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda: no CUDA device is available")
    return torch.device(name)


def progress_bar(it: Any, desc: str, show: bool) -> Any:
    """A tqdm bar on stderr over ``it`` (hidden unless ``show``)."""
    from tqdm import tqdm

    return tqdm(it, desc=desc, disable=not show, leave=False, unit="batch", dynamic_ncols=True)


def _loader(ds: Any, batch: int, shuffle: bool, seed: int, epoch: int, workers: int) -> Any:
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=shuffle,
        generator=g,
        num_workers=workers,
        drop_last=False,
        persistent_workers=False,
    )


def _predict(net: Any, batch: dict[str, Any], device: Any, amp: bool) -> Any:
    import torch

    x = batch["x"].to(device, non_blocking=True)
    days = batch["days"].to(device, non_blocking=True)
    if amp:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return net(x, days).float()
    return net(x, days)


def _validate(net: Any, datasets: Sequence[Any], card: Any, device: Any, amp: bool, batch: int) -> dict[str, Any]:
    """Figures of ``cloudclear score`` on the reconstructed pixels of every sample and frame."""
    import torch

    from cloudclear.metrics import PatchScores
    from cloudclear.nets.feed import Feed

    net.eval()
    scores = PatchScores(card.bands)
    feed = Feed(card, device)
    nb = len(card.bands)
    with torch.inference_mode():
        for ds in datasets:
            for b in _loader(ds, batch, False, 0, 0, 0):
                y = feed.reflectance(_predict(net, b, device, amp)).cpu().numpy()
                truth, gaps, tv = b["truth"].numpy(), b["gaps"].numpy(), b["truth_valid"].numpy()
                for i in range(y.shape[0]):
                    for f in range(card.frames):
                        sl = slice(f * nb, (f + 1) * nb)
                        if gaps[i, f].any():
                            scores.add(y[i, sl], truth[i, sl], gaps[i, f], tv[i, f])
    s = scores.result()
    return {k: (None if not math.isfinite(getattr(s, k)) else round(getattr(s, k), 5)) for k in FIGURES} | {
        "pixels": s.n_pixels,
        "samples": sum(len(d) for d in datasets),
    }


def _prepare_output(out: Path, opts: TrainOptions) -> Path:
    """Refuse a checkpoint path that cannot be written, before any training."""
    from cloudclear.outputs import check_target

    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: checkpoints are .safetensors files")
    state_path = resume_path(out)
    if opts.resume and not state_path.exists():
        raise CheckpointError(f"{out}: --resume, but no resume state ({state_path.name}) is there")
    if not opts.resume and not opts.overwrite:
        if out.exists():
            raise OutputExistsError(f"{out}: exists (pass --overwrite to replace it)")
        if state_path.exists():
            raise OutputExistsError(
                f"{out}: a killed run left {state_path.name}; pass --resume to continue it or --overwrite to start over"
            )
    # the folder is made at the first save (a run that fails before leaves no empty folder), so
    # here the nearest folder that exists must take it
    folder = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    if folder == out.parent:
        check_target(out, overwrite=True, what="checkpoint")
    elif not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: cannot write checkpoint (folder {folder} is not writable)")
    return state_path


def train(
    stores: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    opts: TrainOptions | None = None,
    *,
    progress: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Fit ``opts.net`` (or fine-tune ``opts.init``) on the train split of ``stores``; keep the best
    validation epoch at ``out``.

    With ``opts.init`` the checkpoint's weights and card are the start (its normalisation kept)
    and count as epoch 0: validated first and written to ``out``, replaced only by a better epoch.
    With ``opts.budget_s`` the run stops when the time is spent (see :class:`TrainOptions`).

    The checkpoint and its card are rewritten whenever an epoch beats the best validation PSNR, and
    a resume state after every epoch (both atomically). A non-finite loss, or a step loss
    :data:`DIVERGENCE_FACTOR` times the run's first, stops the run: the diverged weights are never
    saved, and the checkpoint and resume state of the run's earlier epochs are removed (resuming
    would diverge again, and resuming with another ``--lr`` is refused); a checkpoint that was
    there before the run and not yet replaced is left alone.

    Args:
        stores: patch store folders (same layout and bands).
        out: the ``.safetensors`` checkpoint to write (its card beside it as ``.json``).
        opts: :class:`TrainOptions` (None: the defaults).
        progress: show a progress bar per epoch (loss, validation PSNR) on stderr.
        on_epoch: called after every epoch with its record.

    Raises:
        StoreError: an unreadable store, an empty train or val split, stores that disagree.
        CheckpointError: a layout the network cannot take, a bad resume state.
        ResourceLimitError: a width or depth too big to build or to pool the patches.
        TrainingDivergedError: the loss diverged; names the epoch.
        OutputExistsError: ``out`` exists (without ``overwrite`` or ``resume``).
        OutputError: the checkpoint or resume state cannot be written; names the file and cause.
    """
    import torch

    from cloudclear import __version__
    from cloudclear.nets import parameter_count
    from cloudclear.nets.card import build_net, find_checkpoint, load_checkpoint, read_card, save_checkpoint
    from cloudclear.nets.feed import Feed

    t_run = time.perf_counter()
    opts = opts if opts is not None else TrainOptions()
    out = Path(out).expanduser()
    state_path = _prepare_output(out, opts)
    opened = open_stores(stores)
    patch = min(int(s.manifest["patch_size"]) for s in opened)
    base: dict[str, Any] | None = None
    if opts.init is not None:
        base_path = find_checkpoint(opts.init)
        base_net, base_card = load_checkpoint(base_path)
        try:
            slot_map = map_card(base_card, opened[0])
            for s in opened[1:]:
                map_card(base_card, s)
        except CheckpointError as exc:
            raise CheckpointError(f"--init {base_path.name}: the stores do not fit its card: {exc}") from None
        card = replace(base_card, info={})
        base = {
            "model": base_path.stem,
            "path": str(base_path.resolve()),
            "sha256": file_sha256(base_path),
            "trained_on": base_card.info.get("trained_on"),
        }
        if "adapted" in base_card.info:
            base["adapted"] = base_card.info["adapted"]
    else:
        check_depth(opts, patch)
        card, slot_map = plan_card(opened, opts)
    crop = opts.crop or patch
    crop -= crop % card.align
    if crop < card.align:
        raise CheckpointError(f"crop {crop} px is smaller than the pooling alignment {card.align}")

    device = device_of(opts.device)
    amp = device.type == "cuda"

    torch.manual_seed(opts.seed)
    if base is None:
        norm = measure_normalisation(opened, card, opts.seed)
        card = replace(card, normalisation=norm)
        net = build_net(card).to(device)
    else:
        net = base_net.to(device)  # the card's normalisation is kept: the weights expect it
    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

    def samples(split: str, augment: bool) -> list[Any]:
        return [
            CardSamples(s, split, card, slot_map, crop if augment else None, augment, opts.s1_dropout, opts.seed)
            for s in opened
        ]

    from torch.utils.data import ConcatDataset, Subset

    train_parts = [d for split in opts.train_splits for d in samples(split, opts.augment) if len(d)]
    val_sets = [] if "val" in opts.train_splits else [d for d in samples("val", False) if len(d)]
    if not train_parts:
        raise StoreError(f"{opened[0].path}: the {'+'.join(opts.train_splits)} split is empty")
    if not val_sets and base is None:
        raise StoreError(f"{opened[0].path}: the val split is empty (sample with a smaller --block or more --count)")
    # fine-tuning without a val split keeps the last epoch (nothing to choose the best by)
    has_val = bool(val_sets)
    train_set: Any = ConcatDataset(train_parts)
    if opts.limit is not None and opts.limit < len(train_set):
        train_set = Subset(train_set, range(opts.limit))
    steps_per_epoch = math.ceil(len(train_set) / opts.batch_size)
    total = steps_per_epoch * opts.epochs

    history: list[EpochRecord] = []
    best_psnr, best_epoch, start = -math.inf, -1, 0
    first_loss: float | None = None
    # Everything that changes what is trained; device, workers and the resume flags do not.
    settings = {
        k: v for k, v in asdict(opts).items() if k not in ("device", "workers", "resume", "overwrite", "budget_s")
    }
    fingerprint = json.loads(
        json.dumps({"stores": [str(s.path) for s in opened], "options": card.options, "crop": crop, **settings})
    )
    written = False  # whether ``out`` holds this run's checkpoint
    val_before: dict[str, Any] | None = None
    if opts.resume:
        previous = resume_meta(state_path).get("fingerprint")
        if previous != fingerprint:
            changed = sorted(
                k for k in set(fingerprint) | set(previous or {}) if (previous or {}).get(k) != fingerprint.get(k)
            )
            raise CheckpointError(
                f"{state_path}: the killed run used other settings ({', '.join(changed)} differ); "
                "resume with the same stores and options, or --overwrite"
            )
        meta = load_resume(state_path, net, optimizer, device)
        history = [EpochRecord(**h) for h in meta["history"]]
        best_psnr, best_epoch, start = meta["best_psnr"], meta["best_epoch"], meta["epoch"] + 1
        first_loss = meta.get("first_loss") or (history[0].loss if history else None)
        val_before = meta.get("val_before")
        written = out.exists()
        if best_psnr is None:
            best_psnr = -math.inf
    resumed_from = start
    n_params = parameter_count(net)
    summary = [store_summary(s) for s in opened]
    stopped = out_of_time = False
    steps_run = 0
    loss_key = "gaps" if opts.loss_pixels == "gaps" else "truth_valid"
    nb = len(card.bands)
    feed = Feed(card, device)

    def diverged(epoch: int, value: float) -> TrainingDivergedError:
        """Remove what this run wrote; the error to raise."""
        why = f"loss {value}" if not math.isfinite(value) else f"loss {value:.3g}"
        if first_loss is not None and math.isfinite(value):
            why += f", over {DIVERGENCE_FACTOR:g} x the first step's {first_loss:.3g}"
        removed = written or state_path.exists()
        if written:
            out.unlink(missing_ok=True)
            out.with_suffix(".json").unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
        return TrainingDivergedError(
            f"{out}: training diverged at epoch {epoch + 1} ({why}); no checkpoint was written"
            + ("; the run's earlier checkpoint and resume state were removed" if removed else "")
            + f": train again with a lower --lr than {opts.lr:g}"
        )

    def save_best(val: dict[str, Any] | None, epoch: int) -> None:
        """Write ``net`` as the checkpoint: ``epoch`` 0-based, -1 for the ``init`` weights."""
        info: dict[str, Any] = {
            "trained_on": summary,
            "val": val,
            "training": {
                "epochs_run": epoch + 1,
                "best_epoch": epoch + 1,
                "loss_pixels": opts.loss_pixels,
                "crop": crop,
                "batch_size": opts.batch_size,
                "lr": opts.lr,
                "weight_decay": opts.weight_decay,
                "s1_dropout": opts.s1_dropout,
                "seed": opts.seed,
                "device": str(device),
                "samples_per_epoch": len(train_set),
                "train_splits": list(opts.train_splits),
                "selection": "best val PSNR" if has_val else f"last epoch (no val {'pixels' if val_sets else 'split'})",
                "budget_s": opts.budget_s,
                "parameters": n_params,
            },
        }
        if base is not None:
            info["init"] = dict(base, val=val_before)
        save_checkpoint(out, net, replace(card, info=info, version=__version__))

    if base is not None and not opts.resume:
        # epoch 0: the checkpoint started from, so fine-tuning never hands back worse weights
        if has_val:
            val_before = _validate(net, val_sets, card, device, amp, opts.batch_size)
            best_psnr = val_before["psnr"] if val_before["psnr"] is not None else -math.inf
            # a val split without a reconstructed pixel cannot choose: keep the last epoch
            has_val = val_before["psnr"] is not None
        save_best(val_before, -1)
        written = True

    def spent() -> bool:
        return opts.budget_s is not None and time.perf_counter() - t_run >= opts.budget_s

    for epoch in range(start, opts.epochs):
        if epoch - best_epoch > opts.patience and (best_epoch >= 0 or (base is not None and has_val)):
            stopped = True
            break
        if spent() and written:
            out_of_time = True
            break
        for part in train_parts:
            part.epoch = epoch
        net.train()
        t0 = time.perf_counter()
        loader = _loader(train_set, opts.batch_size, True, opts.seed, epoch, opts.workers)
        bar = progress_bar(loader, f"epoch {epoch + 1}/{opts.epochs}", progress)
        loss_sum, loss_n, seen = 0.0, 0, 0
        for step, b in enumerate(bar):
            if seen and spent():
                out_of_time = True
                break
            lr = opts.lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps_per_epoch + step) / total))
            for group in optimizer.param_groups:
                group["lr"] = lr
            y = _predict(net, b, device, amp)
            truth = feed.normalise(b["truth"].to(device))
            m = b[loss_key].to(device)
            m = m.repeat_interleave(nb, 1).to(y.dtype)
            denom = m.sum()
            if denom == 0:
                continue
            loss = ((y - truth).abs() * m).sum() / denom
            value = float(loss.detach())
            if not math.isfinite(value) or (
                first_loss is not None and value > DIVERGENCE_FACTOR * max(first_loss, _LOSS_FLOOR)
            ):
                raise diverged(epoch, value)
            if first_loss is None:
                first_loss = value
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps_run += 1
            loss_sum += value * b["x"].shape[0]
            loss_n += b["x"].shape[0]
            seen += b["x"].shape[0]
            if progress:
                bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.4f}", refresh=False)
        bar.close()
        if out_of_time and not seen:
            break
        seconds = time.perf_counter() - t0
        val = (
            _validate(net, val_sets, card, device, amp, opts.batch_size)
            if has_val
            else {k: None for k in FIGURES} | {"pixels": 0, "samples": 0}
        )
        record = EpochRecord(
            epoch=epoch + 1,
            loss=round(loss_sum / max(loss_n, 1), 6),
            val=val,
            lr=lr,
            seconds=round(seconds, 3),
            samples_per_s=round(seen / seconds, 2) if seconds > 0 else 0.0,
        )
        history.append(record)
        psnr = val["psnr"] if val["psnr"] is not None else -math.inf
        if progress:
            bar.write(f"epoch {epoch + 1}: loss {record.loss:.4f}, val PSNR {psnr:.2f} dB, SSIM {val['ssim']}")
        if psnr > best_psnr or not has_val:
            best_psnr, best_epoch = psnr, epoch
            save_best(val if has_val else None, epoch)
            written = True
        if out_of_time:
            # a partial epoch: no resume state (a resumed run would not end where an unbroken
            # one would); the state of the last full epoch is removed below
            if on_epoch:
                on_epoch(record)
            break
        save_resume(
            state_path,
            net,
            optimizer,
            {
                "fingerprint": fingerprint,
                "epoch": epoch,
                "best_psnr": None if not math.isfinite(best_psnr) else best_psnr,
                "best_epoch": best_epoch,
                "first_loss": first_loss,
                "val_before": val_before,
                "history": [asdict(h) for h in history],
            },
        )
        if on_epoch:
            on_epoch(record)
    if not out.exists() or not written:
        raise CheckpointError(f"{out}: no epoch gave a finite validation PSNR; nothing was written")
    seconds_run = time.perf_counter() - t_run
    final_card = read_card(out)
    final_info: dict[str, Any] = dict(final_card.info)
    final_info["training"] = dict(
        final_info["training"],
        epochs_run=len(history),
        stopped_early=stopped,
        out_of_time=out_of_time,
        steps=steps_run,
        seconds=round(seconds_run, 3),
    )
    final_info["history"] = [{"epoch": h.epoch, "loss": h.loss, "val_psnr": h.val["psnr"]} for h in history]
    final_card = replace(final_card, info=final_info)
    best_net, _ = load_checkpoint(out)
    save_checkpoint(out, best_net, final_card)
    state_path.unlink(missing_ok=True)
    return TrainResult(
        out,
        final_card,
        tuple(history),
        best_epoch + 1,
        stopped,
        resumed_from,
        n_params,
        str(device),
        out_of_time=out_of_time,
        steps=steps_run,
        seconds=seconds_run,
        val_before=val_before,
    )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
