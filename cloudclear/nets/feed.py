"""The one network feed: a card's slot pixels -> network input and day offsets; output -> reflectance.

Training (:class:`cloudclear.training.CardSamples`), :func:`cloudclear.training.evaluate` and
inference (``NetMethod``) all feed a network through :class:`Feed`, so what a network sees at
inference is by construction what it was trained on:

- per card slot, in card order: the slot's bands in physical units (S2 reflectance, S1 dB),
  normalised with the card's global constants ``(value - mean) / std``, 0 where the slot did not
  see the surface; then one validity channel (1 seen, 0 not). A slot with no acquisition is all
  zeros (bands and validity);
- ``days`` (N, S2 slots): each S2 slot's signed offset in days from the reconstructed date (0 for an
  empty slot);
- the output (N, frames x bands, H, W) is de-normalised with the card's S2 constants of the output
  bands: ``y * std + mean`` is reflectance.

Everything runs in torch on the feed's device (float32), so inference can move uint16 pixels to the
GPU and convert them there (:meth:`Feed.tensor`); training calls the same methods on CPU tensors
made from numpy arrays without copying.

Example (inference, one batch of windows)::

    feed = Feed(card, device)
    x = feed.input([None if p is None else SlotPixels(feed.tensor(p.values), feed.tensor(p.valid),
                    scale, offset, linear) for p in parts], n, height, width)
    y = feed.reflectance(net(x, feed.days(offsets, n)), frame=card.output_frame())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudclear.errors import CheckpointError
from cloudclear.scenes.reader import LINEAR_FLOOR


@dataclass(frozen=True)
class SlotPixels:
    """One input slot's pixels for a batch, as read.

    Attributes:
        values: (N, bands, H, W) tensor on the feed's device (any real dtype; made float32), in the
            slot's bands and order. The physical value is ``values * scale + offset``: S2
            reflectance; S1 backscatter in dB, or linear power when ``linear``.
        valid: (N, H, W) bool or 0/1 tensor: where the slot saw the surface (S2: clear; S1: valid).
        scale, offset: the scene's digital-number scaling (1 and 0 for values already physical),
            one value for every band or one per band.
        linear: S1 in linear power; converted to dB (``10 log10``, floored at 1e-6) after scaling.
    """

    values: Any
    valid: Any
    scale: float | Sequence[float] = 1.0
    offset: float | Sequence[float] = 0.0
    linear: bool = False


def output_stats(card: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (float32) of every output channel (frames x bands): the card's S2 constants of
    the output bands, repeated per frame. ``y * std + mean`` is reflectance."""
    s2 = card.normalisation["S2"]
    s2_bands = next(s.bands for s in card.slots if s.sensor == "S2")
    idx = [s2_bands.index(b) for b in card.bands]
    mean = np.asarray(s2["mean"], np.float32)[idx]
    std = np.asarray(s2["std"], np.float32)[idx]
    return np.tile(mean, card.frames), np.tile(std, card.frames)


class Feed:
    """How a card's network is fed, on one device.

    Args:
        card: the network's :class:`~cloudclear.nets.card.ModelCard` (slots, normalisation, bands).
        device: a torch device or its name (``"cpu"``, ``"cuda"``).
    """

    def __init__(self, card: Any, device: Any = "cpu") -> None:
        import torch

        self.card = card
        self.device = torch.device(device)
        self.norm = {
            sensor: (
                torch.tensor(v["mean"], dtype=torch.float32, device=self.device)[:, None, None],
                torch.tensor(v["std"], dtype=torch.float32, device=self.device)[:, None, None],
            )
            for sensor, v in card.normalisation.items()
        }
        mean, std = output_stats(card)
        self.out_mean = torch.from_numpy(mean).to(self.device)[:, None, None]
        self.out_std = torch.from_numpy(std).to(self.device)[:, None, None]
        self.n_bands = len(card.bands)
        self._zero = torch.zeros((), device=self.device)

    def tensor(self, array: np.ndarray) -> Any:
        """A numpy array as a float32 tensor on the device (uint16 moved as 16 bits and widened there;
        bool as 0/1). Host arrays of float32 on the CPU are not copied."""
        import torch

        if array.dtype == np.uint16:  # torch's uint16 support is partial: move as int16, widen there
            t = torch.from_numpy(array.view(np.int16)).to(self.device, non_blocking=True)
            return t.to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)
        return torch.from_numpy(array).to(self.device, non_blocking=True).to(torch.float32)

    def input(self, slots: Sequence[SlotPixels | None], n: int, height: int, width: int) -> Any:
        """The network input (N, in_channels, H, W), float32 on the device.

        Args:
            slots: per card slot, in card order, its pixels, or None for a slot with no acquisition
                (all zeros, validity 0).
            n, height, width: batch size and window shape (for empty slots).

        Raises:
            CheckpointError: not one entry per card slot, or a slot with other band counts.
        """
        import torch

        if len(slots) != len(self.card.slots):
            raise CheckpointError(f"the card has {len(self.card.slots)} input slots, not {len(slots)}")
        chans = []
        for slot, px in zip(self.card.slots, slots, strict=True):
            nb = len(slot.bands)
            if px is None:
                chans.append(torch.zeros((n, nb + 1, height, width), device=self.device))
                continue
            x = px.values.to(torch.float32)
            if x.shape[1] != nb:
                raise CheckpointError(f"slot {slot.name}: {x.shape[1]} bands given, the card reads {nb}")
            if not isinstance(px.scale, int | float) or not isinstance(px.offset, int | float):
                # One scale and offset per band (offsets honoured band by band).
                sc = torch.as_tensor(px.scale, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
                off = torch.as_tensor(px.offset, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
                x = x * sc + off
            elif px.scale != 1.0 or px.offset != 0.0:
                x = x * px.scale + px.offset
            if px.linear:
                x = 10.0 * torch.log10(x.clamp_min(LINEAR_FLOOR))  # as scenes.reader.to_physical
            mean, std = self.norm[slot.sensor]
            v = px.valid[:, None].to(torch.float32)
            x = torch.where(v > 0, (x - mean) / std, self._zero)
            chans += [x, v]
        return torch.cat(chans, 1)

    def days(self, offsets: Sequence[float | None], n: int = 1) -> Any:
        """(n, S2 slots) float32: each S2 slot's offset in days from the date (None: 0, empty slot)."""
        import torch

        row = [0.0 if d is None else float(d) for d in offsets]
        n_s2 = sum(1 for s in self.card.slots if s.sensor == "S2")
        if len(row) != n_s2:
            raise CheckpointError(f"the card has {n_s2} S2 slots, not {len(row)} day offsets")
        return torch.tensor([row], dtype=torch.float32, device=self.device).expand(n, -1)

    def normalise(self, reflectance: Any) -> Any:
        """Reflectance (N, frames x bands, H, W) in the network's output units (the loss target)."""
        return (reflectance - self.out_mean) / self.out_std

    def reflectance(self, y: Any, frame: int | None = None) -> Any:
        """The network output (N, frames x bands, H, W) as float32 reflectance: every frame, or only
        ``frame`` (N, bands, H, W)."""
        if frame is None:
            return y.float() * self.out_std + self.out_mean
        sl = slice(frame * self.n_bands, (frame + 1) * self.n_bands)
        return y[:, sl].float() * self.out_std[sl] + self.out_mean[sl]


def day_offsets(hours: Sequence[float], reference_hours: float) -> list[float]:
    """Offsets in days of acquisition times (hours) from the reconstructed date's (hours)."""
    return [(float(h) - float(reference_hours)) / 24.0 for h in hours]


def _live_bytes_peak(run: Any) -> int:
    """Peak bytes of the tensors alive at once while ``run()`` executes (storages created by torch
    operators during the call, counted once however many views share them, freed when their last
    tensor is), plus what is alive at the end. Works on any device: it watches torch's dispatch, not
    an allocator, so it misses only the scratch memory inside one operator (e.g. a convolution's
    workspace)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors holding it]
    state = {"now": 0, "peak": 0}

    def release(key: int) -> None:
        entry = live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            state["now"] -= entry[0]
            del live[key]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not hasattr(t, "untyped_storage"):
                    continue
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size == 0:
                    continue
                if key in live:
                    live[key][1] += 1
                else:
                    live[key] = [size, 1]
                    state["now"] += size
                    state["peak"] = max(state["peak"], state["now"])
                weakref.finalize(t, release, key)
            return out

    with Watch():
        run()
    return state["peak"]


def forward_bytes_per_pixel(net: Any, feed: Feed, height: int, width: int) -> float:
    """Memory per window pixel of one forward pass of ``net`` fed by ``feed``, measured once on a
    window of ``height`` x ``width`` (batch 1, all-empty slots: memory does not depend on values).

    On the CPU the peak of the tensors alive at once (:func:`_live_bytes_peak`), divided by the
    pixels. On CUDA the allocator's own peak, with bf16 autocast and channels_last as inference runs,
    measured at ``height`` x ``width`` and at twice both sides: the slope between the two, so that
    what does not grow with the window (cuDNN workspaces, the allocator's rounding) does not inflate
    the figure of a small probe. Either way it covers the network input, every activation alive at
    the peak and the output; each of them scales with the window's pixels, so the figure sizes
    windows of any side (:func:`cloudclear.inference.windows.budget_window`).
    """
    import torch

    n_s2 = sum(1 for s in feed.card.slots if s.sensor == "S2")
    cuda = feed.device.type == "cuda"

    def run(height: int = height, width: int = width) -> None:
        with torch.inference_mode():
            x = feed.input([None] * len(feed.card.slots), 1, height, width)
            days = feed.days([0.0] * n_s2, 1)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = net(x, days)
            else:
                y = net(x, days)
            feed.reflectance(y, frame=feed.card.output_frame())

    if not cuda:
        return _live_bytes_peak(run) / (height * width)
    peaks = []
    for h, w in ((height, width), (2 * height, 2 * width)):
        torch.cuda.synchronize(feed.device)
        base = torch.cuda.memory_allocated(feed.device)
        torch.cuda.reset_peak_memory_stats(feed.device)
        run(h, w)
        torch.cuda.synchronize(feed.device)
        peaks.append(torch.cuda.max_memory_allocated(feed.device) - base)
    return max(peaks[1] - peaks[0], 0) / (3 * height * width) or peaks[1] / (4 * height * width)
