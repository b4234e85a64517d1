"""Single-date reconstruction: a cloudy S2 acquisition and its S1 -> the S2 acquisition cloud-free.

Meraner et al. (2020) mapped SAR + cloudy optical to cloud-free optical with a ResNet; Decloud
replaced it with a U-Net, about 30 times faster at equal quality. Here the S2 bands (clouds and
gaps at 0), their validity channel, and the S1 bands with theirs are stacked and go through one
:class:`~cloudclear.nets.unet.UNet`. Without S1 the network can only inpaint from the
surroundings; with it, the radar's structure guides the fill.
"""

from __future__ import annotations

import torch

from cloudclear.errors import CheckpointError
from cloudclear.nets.unet import UNet


class SingleDate(UNet):
    """U-Net over one date's S2 (+ S1) channels.

    Args:
        spec: a :class:`~cloudclear.nets.NetSpec` with exactly one S2 slot (role ``target``).
        width, depth: as :class:`~cloudclear.nets.unet.UNet`.
    """

    def __init__(self, spec: object, width: int = 16, depth: int = 3) -> None:
        from cloudclear.nets import NetSpec

        assert isinstance(spec, NetSpec)
        if len(spec.s2_slots) != 1 or spec.frames != 1:
            raise CheckpointError(f"single-date takes one S2 slot and gives one frame, not {len(spec.s2_slots)} slots")
        spec.target_index()
        spec.date_groups()
        super().__init__(spec.in_channels, spec.out_bands, width=width, depth=depth)

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.encoder(x))
