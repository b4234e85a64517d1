"""Fit a reconstruction network on patch stores and write a checkpoint; evaluate methods on a split.

:func:`train` reads one or more stores written by ``cloudclear sample`` (the same layout and
bands), builds a network of :data:`cloudclear.nets.ARCHITECTURES` whose input slots follow the
layout, and fits it:

- inputs are fed exactly as :mod:`cloudclear.inference` feeds them: per slot the bands, normalised
  with global constants measured on the training split, 0 where the slot did not see the surface,
  then a validity channel; S1 slots pair with their S2 slot; the S2 slots' day offsets go along;
- L1 loss in normalised units on the reconstructed pixels (truth valid, input not seen), or on
  every valid truth pixel; AdamW; cosine learning rate; random crops and the eight flips/rotations;
- validation after every epoch with the figures of ``cloudclear score`` (:class:`PatchScores`)
  on the reconstructed pixels; the best epoch by PSNR is the checkpoint; early stopping;
- after every epoch a resume state (weights, optimiser, history; safetensors + JSON, nothing
  pickled) is written beside the checkpoint, so ``--resume`` continues a killed run; data order and
  augmentation depend only on the seed and the epoch, so a resumed run ends where an unbroken one
  would.

:func:`evaluate` scores a checkpoint or the ``gapfill`` baseline on a split of stores, on the same
reconstructed pixels.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cloudclear.errors import ModelError, OutputExistsError, StoreError

log = logging.getLogger(__name__)

#: Which pixels the loss covers: name -> help.
LOSS_PIXELS = {
    "gaps": "reconstructed pixels only: valid in the truth, not seen in the input (masked L1)",
    "all": "every pixel valid in the truth",
}

#: NIR bands that stand in for each other at inference when a scene lacks the one trained on.
NIR_STAND_INS = {"B8A": "B08", "B08": "B8A"}

RESUME_KEY = "cloudclear.resume"
_NORM_SAMPLES = 256


@dataclass(frozen=True)
class TrainOptions:
    """Options of :func:`train`.

    Attributes:
        net: a key of :data:`cloudclear.nets.ARCHITECTURES`.
        size: a key of :data:`cloudclear.nets.SIZES` (width and depth), overridden by ``width``
            and ``depth`` when given.
        width, depth: U-Net width (channels at full resolution) and poolings.
        heads: attention heads (sequence only).
        epochs: the most epochs.
        batch_size: samples per step.
        lr: peak learning rate (AdamW; cosine decay to 0 over ``epochs``).
        weight_decay: AdamW weight decay.
        patience: stop after this many epochs without a better validation PSNR.
        loss_pixels: a key of :data:`LOSS_PIXELS`.
        crop: training crop side (default: the smallest patch, down to the pooling alignment).
        augment: random flips and 90 degree rotations.
        s1: feed S1 slots (None: when any store has S1).
        s1_dropout: probability that a training sample's S1 is withheld, so the network also
            works without S1.
        workers: DataLoader worker processes (0: load in the main process).
        seed: seeds the weights, the data order and the augmentation.
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: continue the run recorded in the resume state beside ``out``.
        overwrite: replace an existing checkpoint.
        window: the window side inference should use (written on the card).
        limit: use at most this many training samples per epoch (quick runs and benches).
    """

    net: str = "multi-temporal"
    size: str = "small"
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    epochs: int = 40
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 10
    loss_pixels: str = "gaps"
    crop: int | None = None
    augment: bool = True
    s1: bool | None = None
    s1_dropout: float = 0.2
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    window: int = 256
    limit: int | None = None

    def __post_init__(self) -> None:
        from cloudclear.nets import ARCHITECTURES, SIZES

        if self.net not in ARCHITECTURES:
            raise ModelError(f"unknown network {self.net!r}; known: {', '.join(ARCHITECTURES)}")
        if self.size not in SIZES:
            raise ModelError(f"unknown size {self.size!r}; known: {', '.join(SIZES)}")
        if self.loss_pixels not in LOSS_PIXELS:
            raise ModelError(f"unknown loss pixels {self.loss_pixels!r}; choose {', '.join(LOSS_PIXELS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.seed < 0:
            raise ModelError("epochs, batch size and patience must be >= 1, the seed >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.s1_dropout <= 1:
            raise ModelError("lr must be > 0, weight decay >= 0 and S1 dropout in [0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ModelError(f"device {self.device!r}: choose auto, cpu or cuda")

    def net_options(self) -> dict[str, Any]:
        """The architecture's keyword options: the size preset with overrides."""
        from cloudclear.nets import SIZES

        opts: dict[str, Any] = dict(SIZES[self.size])
        if self.width is not None:
            opts["width"] = self.width
        if self.depth is not None:
            opts["depth"] = self.depth
        if self.heads is not None:
            opts["heads"] = self.heads
        return opts


# -- stores and the card ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _SlotMap:
    """How a store's slots feed a card: card S2 slot name -> store slot, in card order."""

    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]  # card output slot -> store slot holding its truth


def _time_key(slot: Any, reference: str) -> tuple[float, float]:
    if slot.name == reference:
        return (0.0, 0.0)
    mid = 0.0 if slot.window is None else (slot.window[0] + slot.window[1]) / 2
    return (float(slot.nth or 0), mid)


def _store_s1(store: Any) -> bool:
    return any(s.kind == "S1" or s.name.endswith(".s1") for s in store.specs)


def _open_stores(paths: Sequence[str | os.PathLike[str]]) -> list[Any]:
    from cloudclear.sampling import PatchStore

    if not paths:
        raise StoreError("no patch store given (--store)")
    stores = [PatchStore(p) for p in paths]
    first = stores[0]
    for s in stores[1:]:
        if s.bands != first.bands:
            raise StoreError(f"{s.path}: bands {s.bands} differ from {first.path}'s {first.bands}")
        a = [x.name for x in s.layout.s2_slots], s.layout.targets
        b = [x.name for x in first.layout.s2_slots], first.layout.targets
        if a != b:
            raise StoreError(
                f"{s.path}: layout {s.layout.name} has other slots than {first.path}'s {first.layout.name}"
            )
    return stores


def plan_card(stores: Sequence[Any], opts: TrainOptions) -> tuple[Any, _SlotMap]:
    """The card (normalisation still empty) and slot mapping for training ``opts.net`` on ``stores``.

    Single-date and multi-temporal networks reconstruct the layout's target; their S2 slots keep
    the layout's names, with roles before / target / after by time. A sequence network
    reconstructs every S2 slot; its slots are renamed t-k .. t .. t+m with the middle one the
    target, as inference fills them around a date.

    Raises:
        ModelError: the layout does not fit the network.
    """
    from cloudclear.nets import NetSpec, build
    from cloudclear.nets.card import ModelCard, Slot

    store = stores[0]
    layout = store.layout
    bands = tuple(store.bands)
    targets = list(layout.targets)
    s2 = sorted(layout.s2_slots, key=lambda s: _time_key(s, layout.reference))
    sequence = opts.net == "sequence"
    if sequence:
        if len(targets) < 2 or set(targets) != {s.name for s in s2}:
            raise ModelError(f"{store.path}: network sequence needs a sequence layout (every S2 slot a target)")
        centre = len(s2) // 2
        names = [("t" if k == centre else f"t{k - centre:+d}") for k in range(len(s2))]
        inputs = tuple(zip(names, [s.name for s in s2], strict=True))
        outputs = inputs
        ref_pos = centre
    else:
        if len(targets) != 1:
            raise ModelError(
                f"{store.path}: layout {layout.name} has {len(targets)} target slots; "
                f"{opts.net} reconstructs one date (sample with a target or --simulate the reference)"
            )
        target = targets[0]
        separate = target != layout.reference
        s2 = [s for s in s2 if not (separate and s.name == target)]
        inputs = tuple((s.name, s.name) for s in s2)
        outputs = ((layout.reference, target),)
        ref_pos = [s.name for s in s2].index(layout.reference)
        n_s2 = len(s2)
        if opts.net == "single-date" and n_s2 != 1:
            raise ModelError(f"{store.path}: single-date needs one S2 input slot; layout {layout.name} has {n_s2}")
        if opts.net == "multi-temporal" and n_s2 < 2:
            raise ModelError(f"{store.path}: multi-temporal needs two or more S2 slots; layout {layout.name} has 1")
    use_s1 = any(_store_s1(s) for s in stores) if opts.s1 is None else opts.s1
    s1_bands = tuple(store.manifest.get("s1_bands") or ("VV", "VH"))
    slots = []
    for k, (name, _) in enumerate(inputs):
        role = "target" if k == ref_pos else ("before" if k < ref_pos else "after")
        rank = 1 if role == "target" else abs(k - ref_pos)
        slots.append(Slot(name, "S2", role, rank, bands))
    if use_s1:
        slots += [Slot(f"s1@{s.name}", "S1", s.role, s.rank, s1_bands) for s in list(slots)]
    net_opts = opts.net_options()
    spec = NetSpec.of(slots, len(bands), len(outputs) if sequence else 1)
    _, radius, align = build(opts.net, spec, net_opts)
    hours = [abs(h) for s in layout.s2_slots if s.window for h in s.window]
    max_days = max(hours) / 24 if hours else 60.0
    gaps = [s.s1_max_gap for s in layout.s2_slots if s.s1_max_gap is not None]
    s1_gap = store.manifest.get("options", {}).get("s1_max_gap") or (max(gaps) if gaps else 72.0)
    norm = {sensor: {"mean": [0.0] * n, "std": [1.0] * n} for sensor, n in (("S2", len(bands)), ("S1", len(s1_bands)))}
    stand_ins = {b: NIR_STAND_INS[b] for b in bands if b in NIR_STAND_INS and NIR_STAND_INS[b] not in bands}
    window = max(opts.window, 2 * radius + align)
    window = -(-window // align) * align
    card = ModelCard(
        architecture=opts.net,
        bands=bands,
        slots=tuple(slots),
        normalisation={k: v for k, v in norm.items() if k == "S2" or use_s1},
        receptive_radius=radius,
        align=align,
        options=net_opts,
        fully_convolutional=True,
        window=window,
        max_days=max(float(math.ceil(max_days)), 1.0),
        s1_max_hours=float(s1_gap),
        output_slots=tuple(n for n, _ in outputs) if sequence else (),
        stand_ins=stand_ins,
    )
    return card, _SlotMap(inputs, outputs)


def measure_normalisation(stores: Sequence[Any], card: Any, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Per-band mean and std of the valid pixels of up to 256 training samples per store.

    S2 in reflectance, S1 in dB; the constants go on the card and never change after training.
    """
    from cloudclear.sampling import PatchDataset

    acc: dict[str, list[np.ndarray]] = {"S2": [], "S1": []}
    rng = np.random.default_rng(seed)
    for store in stores:
        ds = PatchDataset(store, split="train")
        if len(ds) == 0:
            continue
        for k in rng.permutation(len(ds))[:_NORM_SAMPLES]:
            item = ds[int(k)]
            for s in store.layout.s2_slots:
                if s.name in item and item[f"{s.name}.valid"].any():
                    acc["S2"].append(item[s.name][:, item[f"{s.name}.valid"]])
                if f"{s.name}.s1" in item and item[f"{s.name}.s1.valid"].any():
                    acc["S1"].append(item[f"{s.name}.s1"][:, item[f"{s.name}.s1.valid"]])
    out = {}
    for sensor, norm in card.normalisation.items():
        if not acc[sensor]:
            out[sensor] = norm
            continue
        v = np.concatenate(acc[sensor], axis=1).astype(np.float64)
        out[sensor] = {
            "mean": [round(float(m), 5) for m in v.mean(1)],
            "std": [round(max(float(s), 1e-3), 5) for s in v.std(1)],
        }
    return out


# -- the Dataset --------------------------------------------------------------------------------------


class CardSamples:
    """A store's split as network tensors for a card: ``x``, ``days``, ``truth``, ``loss`` and ``score``.

    - ``x`` (channels, H, W): per card slot the normalised bands (0 where not seen), then validity;
    - ``days`` (S2 slots,): offsets in days from the reconstructed date;
    - ``truth`` (frames x bands, H, W) reflectance; ``truth_valid`` (frames, H, W);
    - ``gaps`` (frames, H, W): truth valid and not seen in the input: the reconstructed pixels.

    Args:
        store: an open :class:`~cloudclear.sampling.PatchStore`.
        split: the split to read.
        card: the network's card (slots, bands, normalisation).
        slot_map: from :func:`plan_card`.
        crop: side of a crop (random when ``augment``, central otherwise); None: the whole patch.
        augment: random crops, flips and rotations, and S1 dropout.
        s1_dropout: probability of withholding S1 from a sample (with ``augment``).
        seed: with :attr:`epoch` and the sample, seeds the augmentation.
    """

    def __init__(
        self,
        store: Any,
        split: str | None,
        card: Any,
        slot_map: _SlotMap,
        crop: int | None = None,
        augment: bool = False,
        s1_dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        from cloudclear.sampling import PatchDataset

        self.data = PatchDataset(store, split=split)
        self.card = card
        self.slot_map = slot_map
        self.crop = crop
        self.augment = augment
        self.s1_dropout = s1_dropout
        self.seed = seed
        self.epoch = 0
        self.ids = self.data.ids
        # Per card slot: the store slot it reads (an S1 slot: its S2 partner of the same role and
        # rank, whose ".s1" arrays hold it) and its normalisation as (bands, 1, 1) arrays.
        store_of = dict(slot_map.inputs)
        s2 = {(s.role, s.rank): s.name for s in card.slots if s.sensor == "S2"}
        self._feeds = []
        for slot in card.slots:
            partner = slot.name if slot.sensor == "S2" else s2[(slot.role, slot.rank)]
            norm = card.normalisation[slot.sensor]
            mean, std = (np.asarray(norm[key], np.float32)[:, None, None] for key in ("mean", "std"))
            self._feeds.append((slot, store_of[partner], mean, std))
        self._reference = store_of[next(s.name for s in card.slots if s.sensor == "S2" and s.role == "target")]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.tensors(self.data[k], k)

    def tensors(self, item: dict[str, Any], k: int) -> dict[str, Any]:
        """The network tensors of sample ``k`` from its :class:`PatchDataset` item."""
        import torch

        store_of = dict(self.slot_map.inputs)
        rng = np.random.default_rng([self.seed, self.epoch, int(self.ids[k])])
        drop_s1 = self.augment and rng.random() < self.s1_dropout
        ref_hours = float(item.get(f"{self._reference}.hours", 0.0))
        chans, days = [], []
        for slot, name, mean, std in self._feeds:
            if slot.sensor == "S2":
                values, valid = item[name], item[f"{name}.valid"]
                days.append((float(item[f"{name}.hours"]) - ref_hours) / 24.0)
            else:
                if f"{name}.s1" in item and not drop_s1:
                    values, valid = item[f"{name}.s1"], item[f"{name}.s1.valid"]
                else:
                    values = np.zeros((len(slot.bands), *item[name].shape[1:]), np.float32)
                    valid = np.zeros(item[name].shape[1:], bool)
            x = np.where(valid[None], (values - mean) / std, np.float32(0))
            chans += [x.astype(np.float32), valid[None].astype(np.float32)]
        truth, truth_valid, gaps = [], [], []
        for card_name, store_name in self.slot_map.outputs:
            seen = item[f"{store_of[card_name]}.valid"]
            tv = item[f"{store_name}.truth.valid"]
            truth.append(item[f"{store_name}.truth"])
            truth_valid.append(tv)
            gaps.append(tv & ~seen)
        arrays = {
            "x": np.concatenate(chans, 0),
            "truth": np.concatenate(truth, 0).astype(np.float32),
            "truth_valid": np.stack(truth_valid).astype(bool),
            "gaps": np.stack(gaps).astype(bool),
        }
        arrays = self._geometry(arrays, rng)
        out: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        out["days"] = torch.tensor(days, dtype=torch.float32)
        out["index"] = int(self.ids[k])
        return out

    def _geometry(self, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        h, w = arrays["x"].shape[-2:]
        if self.crop is not None and (self.crop < h or self.crop < w):
            c = self.crop
            if self.augment:
                r0, c0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            else:
                r0, c0 = (h - c) // 2, (w - c) // 2
            arrays = {k: v[..., r0 : r0 + c, c0 : c0 + c] for k, v in arrays.items()}
        if self.augment:
            turns, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            arrays = {k: np.rot90(v, turns, axes=(-2, -1)) for k, v in arrays.items()}
            if flip:
                arrays = {k: v[..., ::-1] for k, v in arrays.items()}
        return arrays


# -- training ------------------------------------------------------------------------------------------


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
            "val": self.card.info.get("val", {}),
            "history": [asdict(h) for h in self.history],
        }


def resume_path(out: Path) -> Path:
    """The resume state of a training run writing ``out``: ``.NAME.resume.safetensors`` beside it."""
    return out.with_name(f".{out.stem}.resume.safetensors")


def _save_resume(path: Path, net: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Weights and optimiser moments as safetensors tensors; the rest as JSON metadata."""
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if hasattr(v, "detach"):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    meta = dict(state, opt_scalars=scalars, opt_groups=opt["param_groups"])
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={RESUME_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _resume_meta(path: Path) -> dict[str, Any]:
    """The JSON part of a resume state (settings, epoch, history), without loading tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta: dict[str, Any] = json.loads((f.metadata() or {})[RESUME_KEY])
    except Exception as exc:  # noqa: BLE001 - safetensors and JSON raise their own
        raise ModelError(f"{path}: not a readable resume state ({exc})") from None
    return meta


def _load_resume(path: Path, net: Any, optimizer: Any, device: Any) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    meta = _resume_meta(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors and JSON raise their own
        raise ModelError(f"{path}: not a readable resume state ({exc})") from None
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta.pop("opt_scalars").items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = torch.tensor(v) if name == "step" else v
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("opt_groups")})
    return meta


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


def _denorm(card: Any) -> tuple[np.ndarray, np.ndarray]:
    s2 = card.normalisation["S2"]
    s2_bands = next(s.bands for s in card.slots if s.sensor == "S2")
    idx = [s2_bands.index(b) for b in card.bands]
    mean = np.asarray(s2["mean"], np.float32)[idx]
    std = np.asarray(s2["std"], np.float32)[idx]
    return np.tile(mean, card.frames), np.tile(std, card.frames)


def _validate(net: Any, datasets: Sequence[Any], card: Any, device: Any, amp: bool, batch: int) -> dict[str, Any]:
    """Figures of ``cloudclear score`` on the reconstructed pixels of every sample and frame."""
    import torch

    from cloudclear.metrics import PatchScores

    net.eval()
    scores = PatchScores(card.bands)
    mean, std = _denorm(card)
    nb = len(card.bands)
    with torch.inference_mode():
        for ds in datasets:
            for b in _loader(ds, batch, False, 0, 0, 0):
                y = _predict(net, b, device, amp).float().cpu().numpy()
                y = y * std[None, :, None, None] + mean[None, :, None, None]
                truth, gaps, tv = b["truth"].numpy(), b["gaps"].numpy(), b["truth_valid"].numpy()
                for i in range(y.shape[0]):
                    for f in range(card.frames):
                        sl = slice(f * nb, (f + 1) * nb)
                        if gaps[i, f].any():
                            scores.add(y[i, sl], truth[i, sl], gaps[i, f], tv[i, f])
    s = scores.result()
    return {k: (None if not math.isfinite(getattr(s, k)) else round(getattr(s, k), 5)) for k in _FIGURES} | {
        "pixels": s.n_pixels,
        "samples": sum(len(d) for d in datasets),
    }


_FIGURES = ("psnr", "ssim", "sam", "mae", "rmse")


def store_summary(store: Any) -> dict[str, Any]:
    """What a card records about a training store: where, which layout, what it was sampled from."""
    m = store.manifest
    meta = store.metadata()
    folders = {
        str(Path(f).parent)
        for col in meta.columns
        if col.endswith("_files")
        for text in meta[col].dropna()
        for f in json.loads(text)
    }
    sources = sorted(folders)
    return {
        "store": str(store.path),
        "layout": store.layout.name,
        "catalog": m.get("catalog"),
        "patch_size": m.get("patch_size"),
        "bands": m.get("bands"),
        "splits": m.get("splits"),
        "simulate": m.get("options", {}).get("simulate"),
        "s1": _store_s1(store),
        "sources": sources[:20],
        "tiles": sorted({str(t) for t in meta["tile"].dropna()}) if "tile" in meta else [],
        "dates": [str(meta["datetime"].min())[:10], str(meta["datetime"].max())[:10]] if len(meta) else None,
    }


def train(
    stores: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    opts: TrainOptions = TrainOptions(),
    *,
    progress: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Fit ``opts.net`` on the train split of ``stores``; keep the best validation epoch at ``out``.

    Args:
        stores: patch store folders (same layout and bands).
        out: the ``.safetensors`` checkpoint to write (its card beside it as ``.json``).
        opts: :class:`TrainOptions`.
        progress: show a progress bar per epoch (loss, validation PSNR) on stderr.
        on_epoch: called after every epoch with its record.

    Raises:
        StoreError: an unreadable store, an empty train or val split, stores that disagree.
        ModelError: a layout the network cannot take, a bad resume state.
        OutputExistsError: ``out`` exists (without ``overwrite`` or ``resume``).
    """
    import torch

    from cloudclear import __version__
    from cloudclear.nets import parameter_count
    from cloudclear.nets.card import build_net, save_checkpoint

    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise ModelError(f"{out}: checkpoints are .safetensors files")
    state_path = resume_path(out)
    if opts.resume and not state_path.exists():
        raise ModelError(f"{out}: --resume, but no resume state ({state_path.name}) is there")
    if not opts.resume and not opts.overwrite:
        if out.exists():
            raise OutputExistsError(f"{out}: exists (pass --overwrite to replace it)")
        if state_path.exists():
            raise OutputExistsError(
                f"{out}: a killed run left {state_path.name}; pass --resume to continue it or --overwrite to start over"
            )
    opened = _open_stores(stores)
    card, slot_map = plan_card(opened, opts)
    crop = opts.crop or min(int(s.manifest["patch_size"]) for s in opened)
    crop -= crop % card.align
    if crop < card.align:
        raise ModelError(f"crop {crop} px is smaller than the pooling alignment {card.align}")

    device = _device(opts.device)
    amp = device.type == "cuda"

    torch.manual_seed(opts.seed)
    norm = measure_normalisation(opened, card, opts.seed)
    card = replace(card, normalisation=norm)
    net = build_net(card).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

    def samples(split: str, augment: bool) -> list[Any]:
        return [
            CardSamples(s, split, card, slot_map, crop if augment else None, augment, opts.s1_dropout, opts.seed)
            for s in opened
        ]

    from torch.utils.data import ConcatDataset, Subset

    train_parts = [d for d in samples("train", opts.augment) if len(d)]
    val_sets = [d for d in samples("val", False) if len(d)]
    if not train_parts:
        raise StoreError(f"{opened[0].path}: the train split is empty")
    if not val_sets:
        raise StoreError(f"{opened[0].path}: the val split is empty (sample with a smaller --block or more --count)")
    train_set: Any = ConcatDataset(train_parts)
    if opts.limit is not None and opts.limit < len(train_set):
        train_set = Subset(train_set, range(opts.limit))
    steps_per_epoch = math.ceil(len(train_set) / opts.batch_size)
    total = steps_per_epoch * opts.epochs

    history: list[EpochRecord] = []
    best_psnr, best_epoch, start = -math.inf, -1, 0
    # Everything that changes what is trained; device, workers and the resume flags do not.
    settings = {k: v for k, v in asdict(opts).items() if k not in ("device", "workers", "resume", "overwrite")}
    fingerprint = json.loads(
        json.dumps({"stores": [str(s.path) for s in opened], "options": card.options, "crop": crop, **settings})
    )
    if opts.resume:
        previous = _resume_meta(state_path).get("fingerprint")
        if previous != fingerprint:
            changed = sorted(
                k for k in set(fingerprint) | set(previous or {}) if (previous or {}).get(k) != fingerprint.get(k)
            )
            raise ModelError(
                f"{state_path}: the killed run used other settings ({', '.join(changed)} differ); "
                "resume with the same stores and options, or --overwrite"
            )
        meta = _load_resume(state_path, net, optimizer, device)
        history = [EpochRecord(**h) for h in meta["history"]]
        best_psnr, best_epoch, start = meta["best_psnr"], meta["best_epoch"], meta["epoch"] + 1
        if best_psnr is None:
            best_psnr = -math.inf
    resumed_from = start
    n_params = parameter_count(net)
    summary = [store_summary(s) for s in opened]
    stopped = False
    loss_key = "gaps" if opts.loss_pixels == "gaps" else "truth_valid"
    nb = len(card.bands)
    mean, std = _denorm(card)
    mean_t = torch.tensor(mean, device=device)[None, :, None, None]
    std_t = torch.tensor(std, device=device)[None, :, None, None]

    for epoch in range(start, opts.epochs):
        if epoch - best_epoch > opts.patience and best_epoch >= 0:
            stopped = True
            break
        for part in train_parts:
            part.epoch = epoch
        net.train()
        t0 = time.perf_counter()
        loader = _loader(train_set, opts.batch_size, True, opts.seed, epoch, opts.workers)
        bar = _bar(loader, f"epoch {epoch + 1}/{opts.epochs}", progress)
        loss_sum, loss_n, seen = 0.0, 0, 0
        for step, b in enumerate(bar):
            lr = opts.lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps_per_epoch + step) / total))
            for group in optimizer.param_groups:
                group["lr"] = lr
            y = _predict(net, b, device, amp)
            truth = (b["truth"].to(device) - mean_t) / std_t
            m = b[loss_key].to(device)
            m = m.repeat_interleave(nb, 1).to(y.dtype)
            denom = m.sum()
            if denom == 0:
                continue
            loss = ((y - truth).abs() * m).sum() / denom
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * b["x"].shape[0]
            loss_n += b["x"].shape[0]
            seen += b["x"].shape[0]
            if progress:
                bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.4f}", refresh=False)
        seconds = time.perf_counter() - t0
        val = _validate(net, val_sets, card, device, amp, opts.batch_size)
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
        if psnr > best_psnr:
            best_psnr, best_epoch = psnr, epoch
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
                    "parameters": n_params,
                },
            }
            best_card = replace(card, info=info, version=__version__)
            save_checkpoint(out, net, best_card)
        _save_resume(
            state_path,
            net,
            optimizer,
            {
                "fingerprint": fingerprint,
                "epoch": epoch,
                "best_psnr": None if not math.isfinite(best_psnr) else best_psnr,
                "best_epoch": best_epoch,
                "history": [asdict(h) for h in history],
            },
        )
        if on_epoch:
            on_epoch(record)
    if not out.exists():
        raise ModelError(f"{out}: no epoch gave a finite validation PSNR; nothing was written")
    from cloudclear.nets.card import read_card

    final_card = read_card(out)
    final_info: dict[str, Any] = dict(final_card.info)
    final_info["training"] = dict(final_info["training"], epochs_run=len(history), stopped_early=stopped)
    final_info["history"] = [{"epoch": h.epoch, "loss": h.loss, "val_psnr": h.val["psnr"]} for h in history]
    final_card = replace(final_card, info=final_info)
    from cloudclear.nets.card import load_checkpoint

    best_net, _ = load_checkpoint(out)
    save_checkpoint(out, best_net, final_card)
    state_path.unlink(missing_ok=True)
    return TrainResult(out, final_card, tuple(history), best_epoch + 1, stopped, resumed_from, n_params, str(device))


def _device(name: str) -> Any:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` as a torch device."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available")
    return torch.device(name)


def _bar(it: Any, desc: str, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(it, desc=desc, disable=not show, leave=False, unit="batch", dynamic_ncols=True)


# -- evaluation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Figures of one method on a split of stores, on the reconstructed pixels.

    ``pixels`` counts the pixels scored: reconstructed pixels where every compared method gave a
    value (gapfill gives none where no date saw the surface); ``unfilled`` the reconstructed pixels
    left out for that reason.
    """

    method: str
    split: str | None
    samples: int
    pixels: int
    unfilled: int
    figures: dict[str, float | None]
    stores: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gapfill_frames(item: dict[str, Any], card: Any, slot_map: _SlotMap) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gapfill of every output frame of one store item: (prediction, filled) per frame, in the
    bands of the card planned for the item's store (its own bands, in order)."""
    from cloudclear.inference.gapfill import PixelStatus, gapfill

    store_of = dict(slot_map.inputs)
    names = [store_of[s.name] for s in card.slots if s.sensor == "S2"]
    hours = np.array([float(item[f"{n}.hours"]) for n in names])
    order = np.argsort(hours, kind="stable")
    stack = np.stack([item[names[i]] for i in order])
    clear = np.stack([item[f"{names[i]}.valid"] for i in order])
    out = []
    for card_name, _ in slot_map.outputs:
        t = float(item[f"{store_of[card_name]}.hours"])
        pred, status = gapfill(stack, clear, [float(h) for h in hours[order]], t)
        out.append((pred, status != PixelStatus.NODATA))
    return out


def map_card(card: Any, store: Any) -> _SlotMap:
    """How a store feeds a checkpoint's card: slots by name, or by time order for a sequence.

    A single-date card (slot ``t``) fits a multi-temporal store too: it reads the slots it names.

    Raises:
        ModelError: the card names a slot the store lacks, or other bands.
    """
    layout = store.layout
    s2_bands = next(s.bands for s in card.slots if s.sensor == "S2")
    if tuple(store.bands) != tuple(s2_bands):
        raise ModelError(f"{store.path}: bands {store.bands} differ from the card's {list(s2_bands)}")
    card_s2 = [s.name for s in card.slots if s.sensor == "S2"]
    if card.output_slots:
        s2 = sorted(layout.s2_slots, key=lambda s: _time_key(s, layout.reference))
        if len(s2) != len(card_s2) or set(layout.targets) != {s.name for s in s2}:
            raise ModelError(
                f"{store.path}: layout {layout.name} is not a {len(card_s2)}-date sequence like the card's"
            )
        inputs = tuple(zip(card_s2, [s.name for s in s2], strict=True))
        return _SlotMap(inputs, inputs)
    names = {s.name for s in layout.s2_slots}
    missing = [n for n in card_s2 if n not in names]
    targets = list(layout.targets)
    if missing or len(targets) != 1:
        raise ModelError(
            f"{store.path}: layout {layout.name} lacks the card's slots {missing or card_s2} or one target"
        )
    ref = next(s.name for s in card.slots if s.sensor == "S2" and s.role == "target")
    return _SlotMap(tuple((n, n) for n in card_s2), ((ref, targets[0]),))


def evaluate(
    stores: Sequence[str | os.PathLike[str]],
    methods: Sequence[str],
    split: str | None = "test",
    *,
    device: str = "auto",
    progress: bool = False,
) -> list[Evaluation]:
    """Score ``methods`` (``gapfill`` or checkpoint paths) on the reconstructed pixels of ``split``.

    Every method is scored on the same pixels: reconstructed (valid in the truth, not seen in the
    input) and filled by gapfill, which interpolates the store's S2 slots in time and has no value
    where no date of the sample saw the surface. A checkpoint sees the slots its card names (a
    single-date card reads only ``t`` and its S1).

    Raises:
        StoreError: unreadable stores or an empty split.
        ModelError: a checkpoint whose card does not fit a store's layout or bands.
    """
    import torch

    from cloudclear.metrics import PatchScores
    from cloudclear.nets.card import load_checkpoint

    if not methods:
        raise ModelError("nothing to evaluate: give gapfill and/or checkpoints")
    opened = _open_stores(stores)
    dev = _device(device)
    bands = opened[0].bands
    nets = {}
    for m in methods:
        if m != "gapfill":
            net, card = load_checkpoint(m)
            if tuple(card.bands) != tuple(bands):
                raise ModelError(f"{m}: the card's output bands {list(card.bands)} differ from the stores' {bands}")
            nets[m] = (net.to(dev).eval(), card, _denorm(card))
    results = {m: PatchScores(bands) for m in methods}
    counts = {"samples": 0, "pixels": 0, "unfilled": 0}
    for store in opened:
        layout = store.layout
        if len(layout.s2_slots) < 2:
            raise ModelError(f"{store.path}: evaluation compares with gapfill, which needs two or more S2 slots")
        kind = "sequence" if len(layout.targets) > 1 else "multi-temporal"
        ref_card, ref_map = plan_card([store], TrainOptions(net=kind, s1=False))
        ref_set = CardSamples(store, split, ref_card, ref_map)
        feeds = {m: CardSamples(store, split, card, map_card(card, store)) for m, (_, card, _) in nets.items()}
        for k in _bar(range(len(ref_set)), f"evaluate {store.path.name}", progress):
            raw = ref_set.data[k]  # read and decoded once, fed to every method
            sample = ref_set.tensors(raw, k)
            frames = _gapfill_frames(raw, ref_card, ref_map)
            preds: dict[str, list[np.ndarray]] = {}
            if "gapfill" in results:
                preds["gapfill"] = [p for p, _ in frames]
            for m, (net, card, (mean, std)) in nets.items():
                x = feeds[m].tensors(raw, k)
                with torch.inference_mode():
                    y = net(x["x"][None].to(dev), x["days"][None].to(dev)).float().cpu().numpy()[0]
                y = y * std[:, None, None] + mean[:, None, None]
                nb = len(card.bands)
                preds[m] = [y[f * nb : (f + 1) * nb] for f in range(card.frames)]
            counts["samples"] += 1
            nb = len(bands)
            for f, (_, filled) in enumerate(frames):
                gaps = sample["gaps"][f].numpy()
                sel = gaps & filled
                counts["pixels"] += int(sel.sum())
                counts["unfilled"] += int((gaps & ~filled).sum())
                if not sel.any():
                    continue
                truth = sample["truth"].numpy()[f * nb : (f + 1) * nb]
                for m in methods:
                    results[m].add(preds[m][f], truth, sel, sample["truth_valid"][f].numpy())
    if counts["samples"] == 0:
        raise StoreError(f"split {split} of {', '.join(str(s.path) for s in opened)} is empty")
    out = []
    for m in methods:
        s = results[m].result()
        figures = {k: (None if not math.isfinite(getattr(s, k)) else round(getattr(s, k), 4)) for k in _FIGURES}
        paths = tuple(str(s.path) for s in opened)
        out.append(Evaluation(m, split, counts["samples"], counts["pixels"], counts["unfilled"], figures, paths))
    return out
