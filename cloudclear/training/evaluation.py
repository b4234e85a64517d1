"""Score gapfill and checkpoints on a split of patch stores, on the same reconstructed pixels."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cloudclear.errors import CheckpointError, StoreError
from cloudclear.training.loop import FIGURES, device_of, progress_bar
from cloudclear.training.options import TrainOptions
from cloudclear.training.samples import CardSamples, StoreSlots, map_card, open_stores, plan_card


@dataclass(frozen=True)
class Evaluation:
    """Figures of one method on a split of stores, on the reconstructed pixels.

    ``pixels`` counts the pixels scored: reconstructed pixels where every compared method gave a
    value (gapfill gives none where no date saw the surface); ``unfilled`` the reconstructed pixels
    left out for that reason. ``clear_policy`` says which decision of what is clear made the
    reconstructed pixels: the one each store recorded when it was sampled (its mask classes were
    stored with it applied), ``mixed: ...`` when the stores differ.
    """

    method: str
    split: str | None
    samples: int
    pixels: int
    unfilled: int
    figures: dict[str, float | None]
    stores: tuple[str, ...] = field(default_factory=tuple)
    clear_policy: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gapfill_frames(item: dict[str, Any], card: Any, slot_map: StoreSlots) -> list[tuple[np.ndarray, np.ndarray]]:
    """Gapfill of every output frame of one store item: (prediction, filled) per frame, in the
    bands of the card planned for the item's store (its own bands, in order)."""
    from cloudclear.gapfill import PixelStatus, gapfill

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


def store_policy(store: Any) -> Any:
    """The :class:`~cloudclear.masks.ClearPolicy` a store recorded (``clear_policy`` in store.json;
    stores written before it was recorded used the default policy)."""
    from cloudclear.catalog import policy_of

    return policy_of(store.manifest.get("clear_policy"))


def _policies_text(opened: Sequence[Any]) -> str:
    described = list(dict.fromkeys(store_policy(s).describe() for s in opened))
    return described[0] if len(described) == 1 else "mixed: " + "; ".join(described)


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
    single-date card reads only ``t`` and its S1), fed by :class:`~cloudclear.nets.feed.Feed` as
    inference feeds it. What is clear (in the truth and in the inputs) is the store's recorded
    decision (:func:`store_policy`): its mask classes were stored with the policy applied.

    Raises:
        StoreError: unreadable stores or an empty split.
        CheckpointError: a checkpoint whose card does not fit a store's layout or bands.
    """
    import torch

    from cloudclear.metrics import PatchScores
    from cloudclear.nets.card import load_checkpoint
    from cloudclear.nets.feed import Feed

    if not methods:
        raise CheckpointError("nothing to evaluate: give gapfill and/or checkpoints")
    opened = open_stores(stores)
    dev = device_of(device)
    bands = opened[0].bands
    nets = {}
    for m in methods:
        if m != "gapfill":
            net, card = load_checkpoint(m)
            if tuple(card.bands) != tuple(bands):
                raise CheckpointError(
                    f"{m}: the card's output bands {list(card.bands)} differ from the stores' {bands}"
                )
            nets[m] = (net.to(dev).eval(), card, Feed(card, dev))
    results = {m: PatchScores(bands) for m in methods}
    counts = {"samples": 0, "pixels": 0, "unfilled": 0}
    for store in opened:
        layout = store.layout
        if len(layout.s2_slots) < 2:
            raise CheckpointError(f"{store.path}: evaluation compares with gapfill, which needs two or more S2 slots")
        kind = "sequence" if len(layout.targets) > 1 else "multi-temporal"
        ref_card, ref_map = plan_card([store], TrainOptions(net=kind, s1=False))
        ref_set = CardSamples(store, split, ref_card, ref_map)
        samples = {m: CardSamples(store, split, card, map_card(card, store)) for m, (_, card, _) in nets.items()}
        for k in progress_bar(range(len(ref_set)), f"evaluate {store.path.name}", progress):
            raw = ref_set.data[k]  # read and decoded once, fed to every method
            sample = ref_set.tensors(raw, k)
            frames = _gapfill_frames(raw, ref_card, ref_map)
            preds: dict[str, list[np.ndarray]] = {}
            if "gapfill" in results:
                preds["gapfill"] = [p for p, _ in frames]
            for m, (net, card, feed) in nets.items():
                x = samples[m].tensors(raw, k)
                with torch.inference_mode():
                    y = feed.reflectance(net(x["x"][None].to(dev), x["days"][None].to(dev)))
                y = y.cpu().numpy()[0]
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
    policy = _policies_text(opened)
    for m in methods:
        s = results[m].result()
        figures = {k: (None if not math.isfinite(getattr(s, k)) else round(getattr(s, k), 4)) for k in FIGURES}
        paths = tuple(str(s.path) for s in opened)
        out.append(
            Evaluation(m, split, counts["samples"], counts["pixels"], counts["unfilled"], figures, paths, policy)
        )
    return out
