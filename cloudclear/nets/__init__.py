"""Reconstruction network architectures, one module each, and the registry that names them.

:data:`ARCHITECTURES` maps a name to a factory ``(spec, **options) -> (net, receptive radius,
pooling alignment)``; :class:`NetSpec` says what the network must fit: its input slots (channel
order: per slot its bands, then a validity channel) and its output bands and frames. A
checkpoint's card names the architecture and options (:mod:`cloudclear.nets.card`), so loading one
never runs code from the file.

Every network is called as ``net(x, days)``: ``x`` (N, channels, H, W) and ``days`` (N, S2 slots),
the signed offset of each S2 slot from the date reconstructed (0 for an empty slot). It returns
(N, frames x bands, H, W).

============== ========================================================= ==========================
name           inputs -> output                                          module
============== ========================================================= ==========================
single-date    cloudy S2 at t (+ S1 at t) -> S2 at t                     :mod:`.single_date`
multi-temporal S2 (+ S1) at several dates -> S2 at t; one encoder shared :mod:`.multitemporal`
               by the dates, decoder over their stacked features
sequence       T dates of S2 (+ S1) -> T dates; attention across time at :mod:`.sequence`
               the bottleneck, its weights also mix the skip features
unet           any slots stacked as channels -> S2 at t                  :mod:`.unet`
============== ========================================================= ==========================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cloudclear.errors import ModelError

Factory = Callable[..., tuple[Any, int, int]]

#: Width/depth presets: ``small`` trains on a CPU in minutes, ``large`` wants a GPU.
SIZES: dict[str, dict[str, int]] = {
    "small": {"width": 16, "depth": 3},
    "medium": {"width": 32, "depth": 4},
    "large": {"width": 52, "depth": 4},
}


@dataclass(frozen=True)
class SlotSpec:
    """One input slot as a network sees it: name, sensor (S2 / S1), role, rank and band count."""

    name: str
    sensor: str
    role: str
    rank: int
    n_bands: int

    @property
    def channels(self) -> int:
        return self.n_bands + 1


@dataclass(frozen=True)
class NetSpec:
    """The inputs and outputs a network must fit.

    Attributes:
        slots: input slots in channel order.
        out_bands: output S2 bands per frame.
        frames: output frames (1, or one per S2 slot for a sequence).
    """

    slots: tuple[SlotSpec, ...]
    out_bands: int
    frames: int = 1

    @classmethod
    def of(cls, slots: Sequence[Any], out_bands: int, frames: int = 1) -> NetSpec:
        """From card slots (anything with name, sensor, role, rank and bands)."""
        return cls(tuple(SlotSpec(s.name, s.sensor, s.role, s.rank, len(s.bands)) for s in slots), out_bands, frames)

    @property
    def in_channels(self) -> int:
        return sum(s.channels for s in self.slots)

    @property
    def s2_slots(self) -> list[SlotSpec]:
        return [s for s in self.slots if s.sensor == "S2"]

    def date_groups(self) -> list[list[int]]:
        """Per S2 slot, in order, the input channels of that date: its own, then its S1 slot's.

        Raises:
            ModelError: an S1 slot with no S2 slot of the same role and rank, or dates that carry
                different channels (every date must have S1, or none).
        """
        offsets, start = {}, 0
        for s in self.slots:
            offsets[s.name] = list(range(start, start + s.channels))
            start += s.channels
        groups = []
        paired = set()
        for s in self.s2_slots:
            chans = list(offsets[s.name])
            for o in self.slots:
                if o.sensor == "S1" and (o.role, o.rank) == (s.role, s.rank):
                    chans += offsets[o.name]
                    paired.add(o.name)
            groups.append(chans)
        lost = [s.name for s in self.slots if s.sensor == "S1" and s.name not in paired]
        if lost:
            raise ModelError(f"S1 slots {lost} have no S2 slot of the same role and rank")
        if len({len(g) for g in groups}) > 1:
            raise ModelError("every S2 slot needs the same inputs (each with its S1 slot, or none with one)")
        return groups

    def target_index(self) -> int:
        """Position of the target S2 slot among the S2 slots."""
        roles = [s.role for s in self.s2_slots]
        if roles.count("target") != 1:
            raise ModelError(f"needs exactly one S2 slot with role 'target', not {roles.count('target')}")
        return roles.index("target")


def _unet(spec: NetSpec, width: int = 32, depth: int = 3) -> tuple[Any, int, int]:
    from cloudclear.nets.unet import UNet, receptive_radius

    net = UNet(spec.in_channels, spec.out_bands * spec.frames, width=width, depth=depth)
    return net, receptive_radius(depth), net.align


def _single_date(spec: NetSpec, width: int = 16, depth: int = 3) -> tuple[Any, int, int]:
    from cloudclear.nets.single_date import SingleDate
    from cloudclear.nets.unet import receptive_radius

    net = SingleDate(spec, width=width, depth=depth)
    return net, receptive_radius(depth), net.align


def _multi_temporal(spec: NetSpec, width: int = 16, depth: int = 3) -> tuple[Any, int, int]:
    from cloudclear.nets.multitemporal import MultiTemporal
    from cloudclear.nets.unet import receptive_radius

    net = MultiTemporal(spec, width=width, depth=depth)
    return net, receptive_radius(depth), net.align


def _sequence(spec: NetSpec, width: int = 16, depth: int = 3, heads: int = 4) -> tuple[Any, int, int]:
    from cloudclear.nets.sequence import SequenceNet
    from cloudclear.nets.unet import receptive_radius

    net = SequenceNet(spec, width=width, depth=depth, heads=heads)
    return net, receptive_radius(depth), net.align


#: Architecture name -> factory. The same dict feeds the card validation, ``cloudclear train
#: --net`` and ``cloudclear models``.
ARCHITECTURES: dict[str, Factory] = {
    "single-date": _single_date,
    "multi-temporal": _multi_temporal,
    "sequence": _sequence,
    "unet": _unet,
}

#: One line per architecture, for ``cloudclear models``.
DESCRIPTIONS: dict[str, str] = {
    "single-date": "cloudy S2 at t (+ S1 at t) -> S2 at t; U-Net over the stacked channels",
    "multi-temporal": "S2 (+ S1) at t-1, t, t+1 -> S2 at t; shared encoder per date, decoder over stacked features",
    "sequence": "T dates of S2 (+ S1) with day offsets -> T dates; U-Net with attention across time",
    "unet": "any slots stacked as channels -> S2 at t (plain U-Net)",
}


def build(name: str, spec: NetSpec, options: dict[str, Any]) -> tuple[Any, int, int]:
    """Build a network by registry name: returns (module, receptive radius, alignment).

    Raises:
        ModelError: an unknown name, options the architecture does not take, or slots it cannot use.
    """
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None
    try:
        return factory(spec, **options)
    except TypeError as exc:
        raise ModelError(f"architecture {name!r} does not take options {options}: {exc}") from None
    except ValueError as exc:
        raise ModelError(f"architecture {name!r} with {options}: {exc}") from None


def parameter_count(net: Any) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
