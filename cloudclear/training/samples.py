"""Patch stores as network tensors: the card planned for a store, how the store's slots feed it,
the normalisation measured on the train split, and :class:`CardSamples` (a torch Dataset).

The tensors come from :class:`cloudclear.nets.feed.Feed`, the feed inference uses, so a network is
trained on exactly what it will see.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudclear.errors import CheckpointError, StoreError
from cloudclear.training.options import NIR_STAND_INS, TrainOptions

_NORM_SAMPLES = 256


@dataclass(frozen=True)
class StoreSlots:
    """Which slots of a patch store feed a card: the binding of a card to one store's layout.

    A card's :class:`~cloudclear.nets.card.Slot` says what a network takes; this says where a store
    keeps it (a card is evaluated on stores of other layouts, and a sequence card renames the
    store's slots by time). An S1 card slot reads the ``.s1`` arrays of the store slot that feeds
    its S2 slot of the same role and rank.

    Attributes:
        inputs: (card S2 slot, store slot) in card order.
        outputs: (card output slot, store slot holding its truth), one per output frame.
    """

    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]

    def sources(self, card: Any) -> list[str]:
        """Per card slot, in card order, the store slot whose arrays feed it."""
        from cloudclear.nets.card import s2_partner

        store_of = dict(self.inputs)
        out = []
        for s in card.slots:
            partner = s if s.sensor == "S2" else s2_partner(card.slots, s)
            if partner is None:
                raise CheckpointError(f"card slot {s.name} has no S2 slot of the same role and rank")
            out.append(store_of[partner.name])
        return out


def _time_key(slot: Any, reference: str) -> tuple[float, float]:
    if slot.name == reference:
        return (0.0, 0.0)
    mid = 0.0 if slot.window is None else (slot.window[0] + slot.window[1]) / 2
    return (float(slot.nth or 0), mid)


def _store_s1(store: Any) -> bool:
    return any(s.kind == "S1" or s.name.endswith(".s1") for s in store.specs)


def open_stores(paths: Sequence[str | os.PathLike[str]]) -> list[Any]:
    """Open patch stores that train or evaluate together (same layout slots and bands).

    Raises:
        StoreError: no store, an unreadable one, or stores that disagree.
    """
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


_open_stores = open_stores


def plan_card(stores: Sequence[Any], opts: TrainOptions) -> tuple[Any, StoreSlots]:
    """The card (normalisation still empty) and slot binding for training ``opts.net`` on ``stores``.

    Single-date and multi-temporal networks reconstruct the layout's target; their S2 slots keep
    the layout's names, with roles before / target / after by time. A sequence network
    reconstructs every S2 slot; its slots are renamed t-k .. t .. t+m with the middle one the
    target, as inference fills them around a date. The network is planned on torch's meta device:
    nothing is allocated.

    Raises:
        CheckpointError: the layout does not fit the network.
        ResourceLimitError: the width and depth ask for too big a network.
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
            raise CheckpointError(f"{store.path}: network sequence needs a sequence layout (every S2 slot a target)")
        centre = len(s2) // 2
        names = [("t" if k == centre else f"t{k - centre:+d}") for k in range(len(s2))]
        inputs = tuple(zip(names, [s.name for s in s2], strict=True))
        outputs = inputs
        ref_pos = centre
    else:
        if len(targets) != 1:
            raise CheckpointError(
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
            raise CheckpointError(f"{store.path}: single-date needs one S2 input slot; layout {layout.name} has {n_s2}")
        if opts.net == "multi-temporal" and n_s2 < 2:
            raise CheckpointError(
                f"{store.path}: multi-temporal needs two or more S2 slots; layout {layout.name} has 1"
            )
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
    _, radius, align = build(opts.net, spec, net_opts, device="meta")
    hours = [abs(h) for s in layout.s2_slots if s.window for h in s.window]
    max_days = max(hours) / 24 if hours else 60.0
    gaps = [s.s1_max_gap for s in layout.s2_slots if s.s1_max_gap is not None]
    s1_gap = store.manifest.get("options", {}).get("s1_max_gap") or (max(gaps) if gaps else 72.0)
    norm = {sensor: {"mean": [0.0] * n, "std": [1.0] * n} for sensor, n in (("S2", len(bands)), ("S1", len(s1_bands)))}
    stand_ins = {b: NIR_STAND_INS[b] for b in bands if b in NIR_STAND_INS and NIR_STAND_INS[b] not in bands}
    window = card_window(opts.window, radius, align)
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
    return card, StoreSlots(inputs, outputs)


def card_window(asked: int, radius: int, align: int) -> int:
    """The inference window written on a card: at least ``asked``, and wide enough that the margins
    (``radius`` on each side, recomputed and thrown away) take at most a third of its side, aligned
    to the pooling. (The refine network's 88 px radius in 256 px windows kept an 80 px core: the
    512 px sample crop took 94 s; in 528 px windows it takes 10 s, with the same pixels.)"""
    window = max(asked, 2 * radius + align, 6 * radius)
    return -(-window // align) * align


def map_card(card: Any, store: Any) -> StoreSlots:
    """How a store feeds a checkpoint's card: slots by name, or by time order for a sequence.

    A single-date card (slot ``t``) fits a multi-temporal store too: it reads the slots it names.

    Raises:
        CheckpointError: the card names a slot the store lacks, or other bands.
    """
    layout = store.layout
    s2_bands = next(s.bands for s in card.slots if s.sensor == "S2")
    if tuple(store.bands) != tuple(s2_bands):
        raise CheckpointError(f"{store.path}: bands {store.bands} differ from the card's {list(s2_bands)}")
    card_s2 = [s.name for s in card.slots if s.sensor == "S2"]
    if card.output_slots:
        s2 = sorted(layout.s2_slots, key=lambda s: _time_key(s, layout.reference))
        if len(s2) != len(card_s2) or set(layout.targets) != {s.name for s in s2}:
            raise CheckpointError(
                f"{store.path}: layout {layout.name} is not a {len(card_s2)}-date sequence like the card's"
            )
        inputs = tuple(zip(card_s2, [s.name for s in s2], strict=True))
        return StoreSlots(inputs, inputs)
    names = {s.name for s in layout.s2_slots}
    missing = [n for n in card_s2 if n not in names]
    targets = list(layout.targets)
    if missing or len(targets) != 1:
        raise CheckpointError(
            f"{store.path}: layout {layout.name} lacks the card's slots {missing or card_s2} or one target"
        )
    ref = next(s.name for s in card.slots if s.sensor == "S2" and s.role == "target")
    return StoreSlots(tuple((n, n) for n in card_s2), ((ref, targets[0]),))


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


class CardSamples:
    """A store's split as network tensors for a card: ``x``, ``days``, ``truth``, ``loss`` and ``score``.

    - ``x`` (channels, H, W) and ``days`` (S2 slots,): the network input and day offsets from
      :class:`~cloudclear.nets.feed.Feed` (per card slot the normalised bands, 0 where not seen,
      then validity; offsets in days from the reconstructed date);
    - ``truth`` (frames x bands, H, W) reflectance; ``truth_valid`` (frames, H, W);
    - ``gaps`` (frames, H, W): truth valid and not seen in the input: the reconstructed pixels.

    Args:
        store: an open :class:`~cloudclear.sampling.PatchStore`.
        split: the split to read.
        card: the network's card (slots, bands, normalisation).
        slot_map: from :func:`plan_card` or :func:`map_card`.
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
        slot_map: StoreSlots,
        crop: int | None = None,
        augment: bool = False,
        s1_dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        from cloudclear.nets.feed import Feed
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
        self.feed = Feed(card, "cpu")  # samples are made on the CPU (in DataLoader workers too)
        self._sources = list(zip(card.slots, slot_map.sources(card), strict=True))
        store_of = dict(slot_map.inputs)
        self._reference = store_of[next(s.name for s in card.slots if s.sensor == "S2" and s.role == "target")]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.tensors(self.data[k], k)

    def tensors(self, item: dict[str, Any], k: int) -> dict[str, Any]:
        """The network tensors of sample ``k`` from its :class:`PatchDataset` item."""
        import torch

        from cloudclear.nets.feed import SlotPixels, day_offsets

        store_of = dict(self.slot_map.inputs)
        rng = np.random.default_rng([self.seed, self.epoch, int(self.ids[k])])
        drop_s1 = self.augment and rng.random() < self.s1_dropout
        pixels: list[SlotPixels | None] = []
        hours = []
        for slot, name in self._sources:
            key = name if slot.sensor == "S2" else f"{name}.s1"
            if slot.sensor == "S2":
                hours.append(float(item[f"{name}.hours"]))
            elif key not in item or drop_s1:
                pixels.append(None)
                continue
            pixels.append(SlotPixels(torch.from_numpy(item[key][None]), torch.from_numpy(item[f"{key}.valid"][None])))
        h, w = item[self._reference].shape[1:]
        x = self.feed.input(pixels, 1, h, w)[0]
        days = day_offsets(hours, float(item.get(f"{self._reference}.hours", 0.0)))
        truth, truth_valid, gaps = [], [], []
        for card_name, store_name in self.slot_map.outputs:
            seen = item[f"{store_of[card_name]}.valid"]
            tv = item[f"{store_name}.truth.valid"]
            truth.append(item[f"{store_name}.truth"])
            truth_valid.append(tv)
            gaps.append(tv & ~seen)
        arrays = {
            "x": x.numpy(),
            "truth": np.concatenate(truth, 0).astype(np.float32),
            "truth_valid": np.stack(truth_valid).astype(bool),
            "gaps": np.stack(gaps).astype(bool),
        }
        arrays = self._geometry(arrays, rng)
        out: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        out["days"] = self.feed.days(days)[0].clone()
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
