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
refine         S2 (+ S1) at the dates gapfill reads -> gapfill's estimate :mod:`.refine`
               of t plus a learned correction (zero at the start)
unet           any slots stacked as channels -> S2 at t                  :mod:`.unet`
============== ========================================================= ==========================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from typing import Any

from cloudclear.errors import CheckpointError, ResourceLimitError
from cloudclear.nets.card import Slot, s2_partner

Factory = Callable[..., tuple[Any, int, int]]

#: Width/depth presets: ``small`` trains on a CPU in minutes, ``large`` wants a GPU.
SIZES: dict[str, dict[str, int]] = {
    "small": {"width": 16, "depth": 3},
    "medium": {"width": 32, "depth": 4},
    "large": {"width": 52, "depth": 4},
}


@dataclass(frozen=True)
class NetSpec:
    """The inputs and outputs a network must fit.

    Attributes:
        slots: input slots in channel order.
        out_bands: output S2 bands per frame.
        frames: output frames (1, or one per S2 slot for a sequence).
    """

    slots: tuple[Slot, ...]
    out_bands: int
    frames: int = 1

    @classmethod
    def of(cls, slots: Sequence[Slot], out_bands: int, frames: int = 1) -> NetSpec:
        """From the card's slots."""
        return cls(tuple(slots), out_bands, frames)

    @property
    def in_channels(self) -> int:
        return sum(s.channels for s in self.slots)

    @property
    def s2_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.sensor == "S2"]

    def date_groups(self) -> list[list[int]]:
        """Per S2 slot, in order, the input channels of that date: its own, then its S1 slot's.

        Raises:
            CheckpointError: an S1 slot with no S2 slot of the same role and rank, or dates that carry
                different channels (every date must have S1, or none).
        """
        offsets, start = {}, 0
        for s in self.slots:
            offsets[s.name] = list(range(start, start + s.channels))
            start += s.channels
        partners = {o.name: s2_partner(self.slots, o) for o in self.slots if o.sensor == "S1"}
        groups = []
        for s in self.s2_slots:
            groups.append(
                offsets[s.name] + [c for o in self.slots if partners.get(o.name) is s for c in offsets[o.name]]
            )
        lost = [name for name, partner in partners.items() if partner is None]
        if lost:
            raise CheckpointError(f"S1 slots {lost} have no S2 slot of the same role and rank")
        if len({len(g) for g in groups}) > 1:
            raise CheckpointError("every S2 slot needs the same inputs (each with its S1 slot, or none with one)")
        return groups

    def target_index(self) -> int:
        """Position of the target S2 slot among the S2 slots."""
        roles = [s.role for s in self.s2_slots]
        if roles.count("target") != 1:
            raise CheckpointError(f"needs exactly one S2 slot with role 'target', not {roles.count('target')}")
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


def _refine(spec: NetSpec, width: int = 16, depth: int = 3) -> tuple[Any, int, int]:
    from cloudclear.nets.refine import SMOOTH_RADIUS, Refine
    from cloudclear.nets.unet import receptive_radius

    net = Refine(spec, width=width, depth=depth)
    return net, receptive_radius(depth) + SMOOTH_RADIUS, net.align


#: Architecture name -> factory. The same dict feeds the card validation, ``cloudclear train
#: --net`` and ``cloudclear models``.
ARCHITECTURES: dict[str, Factory] = {
    "single-date": _single_date,
    "multi-temporal": _multi_temporal,
    "sequence": _sequence,
    "refine": _refine,
    "unet": _unet,
}

#: One line per architecture, for ``cloudclear models``.
DESCRIPTIONS: dict[str, str] = {
    "single-date": "cloudy S2 at t (+ S1 at t) -> S2 at t; U-Net over the stacked channels",
    "multi-temporal": "S2 (+ S1) at t-1, t, t+1 -> S2 at t; shared encoder per date, decoder over stacked features",
    "sequence": "T dates of S2 (+ S1) with day offsets -> T dates; U-Net with attention across time",
    "refine": "S2 (+ S1) at t and the dates around it -> gapfill's estimate of t plus a learned correction",
    "unet": "any slots stacked as channels -> S2 at t (plain U-Net)",
}


#: The most parameters a network may have: 2e8 (0.8 GB of float32 weights, about 3.2 GB with
#: gradients and AdamW's moments), far above the ``large`` preset (about 7e6).
MAX_PARAMETERS = 200_000_000


def build(name: str, spec: NetSpec, options: dict[str, Any], device: Any = None) -> tuple[Any, int, int]:
    """Build a network by registry name: returns (module, receptive radius, alignment).

    The parameters are counted first on torch's ``meta`` device (nothing allocated), so a width
    or depth asked for by mistake is refused before the memory is taken.

    Args:
        name: a key of :data:`ARCHITECTURES`.
        spec: the slots and outputs to fit.
        options: the architecture's keyword options (width, depth, ...).
        device: where to build (None: the default device; ``"meta"``: shapes only, for planning).

    Raises:
        CheckpointError: an unknown name, options the architecture does not take, or slots it
            cannot use.
        ResourceLimitError: more than :data:`MAX_PARAMETERS` parameters.
    """
    import torch

    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise CheckpointError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None
    _check_size(name, options)
    try:
        with torch.device("meta"):
            planned = factory(spec, **options)
        n = parameter_count(planned[0])
        if n > MAX_PARAMETERS:
            raise ResourceLimitError(
                f"network {name} with {_describe(options)} would have {n:,} parameters, more than the "
                f"{MAX_PARAMETERS:,} allowed: lower --width or --depth"
            )
        if device is not None and torch.device(device).type == "meta":
            return planned
        with torch.device(device) if device is not None else _nullcontext():
            return factory(spec, **options)
    except TypeError as exc:
        raise CheckpointError(f"architecture {name!r} does not take options {options}: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, ResourceLimitError):
            raise
        raise CheckpointError(f"architecture {name!r} with {options}: {exc}") from None


def _describe(options: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items()) or "its default options"


def _check_size(name: str, options: dict[str, Any]) -> None:
    """Refuse without building what is certainly too big: the bottleneck's last convolution alone
    has ``9 c**2`` weights for ``c = width * 2**depth`` channels (and huge depths overflow the
    shapes even on the meta device)."""
    width, depth = options.get("width", 32), options.get("depth", 3)
    if not isinstance(width, int) or not isinstance(depth, int) or width < 1 or depth < 1:
        return  # the architecture refuses them with its own message
    if depth > 30:
        raise ResourceLimitError(f"network {name} with depth {depth}: at most depth 30; lower --depth")
    c = width * 2**depth
    if 9 * c * c > MAX_PARAMETERS:
        raise ResourceLimitError(
            f"network {name} with {_describe(options)} would have more than {9 * c * c:.2g} parameters "
            f"({c:,} channels at the bottleneck), more than the {MAX_PARAMETERS:,} allowed: lower --width or --depth"
        )


def parameter_count(net: Any) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
