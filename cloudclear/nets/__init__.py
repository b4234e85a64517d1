"""Reconstruction network architectures, one module each, and the registry that names them.

:data:`ARCHITECTURES` maps a name to a factory ``(in_channels, out_channels, **options) -> (net,
receptive radius, pooling alignment)``. A checkpoint's card names its architecture and options
(:mod:`cloudclear.nets.card`), so loading one never runs code from the file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cloudclear.errors import ModelError

Factory = Callable[..., tuple[Any, int, int]]


def _unet(in_channels: int, out_channels: int, width: int = 32, depth: int = 3) -> tuple[Any, int, int]:
    from cloudclear.nets.unet import UNet, receptive_radius

    net = UNet(in_channels, out_channels, width=width, depth=depth)
    return net, receptive_radius(depth), net.align


#: Architecture name -> factory. The same dict feeds the card validation and ``cloudclear models``.
ARCHITECTURES: dict[str, Factory] = {"unet": _unet}


def build(name: str, in_channels: int, out_channels: int, options: dict[str, Any]) -> tuple[Any, int, int]:
    """Build a network by registry name: returns (module, receptive radius, alignment).

    Raises:
        ModelError: an unknown name or options the architecture does not take.
    """
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None
    try:
        return factory(in_channels, out_channels, **options)
    except TypeError as exc:
        raise ModelError(f"architecture {name!r} does not take options {options}: {exc}") from None
