"""Multi-temporal reconstruction: S2 (+ S1) at t-1, t, t+1 -> S2 at t.

Each date's channels (S2 bands with clouds at 0, validity, S1 bands and validity, and a constant
channel with the date's offset in days / 30) go through one encoder shared by the dates, so a
date is read the same way whatever its position. The features of every level are stacked over
the dates, in slot order, and one decoder maps them to the target date. Dates whose slot is empty
(or whose S1 is missing) arrive as zeros with validity 0: trained with such dropouts, the same
network serves optical-only inputs.
"""

from __future__ import annotations

import torch

from cloudclear.errors import CheckpointError
from cloudclear.nets.unet import DateStack, Decoder, Encoder

#: Day offsets are divided by this before they enter the network as a channel.
DAY_SCALE = 30.0


class MultiTemporal(DateStack):
    """Shared per-date encoder, decoder over the dates' stacked features.

    Args:
        spec: a :class:`~cloudclear.nets.NetSpec` with two or more S2 slots, one of them the
            target; S1 slots pair with the S2 slot of the same role and rank.
        width, depth: as :class:`~cloudclear.nets.unet.UNet`.
    """

    def __init__(self, spec: object, width: int = 16, depth: int = 3) -> None:
        from cloudclear.nets import NetSpec

        assert isinstance(spec, NetSpec)
        groups = spec.date_groups()
        if len(groups) < 2 or spec.frames != 1:
            raise CheckpointError(f"multi-temporal takes two or more S2 slots and gives one frame, not {len(groups)}")
        spec.target_index()
        super().__init__(groups, depth)
        self.encoder = Encoder(self.group_channels + 1, width, depth)
        self.decoder = Decoder([self.dates * c for c in self.encoder.chans], width, depth, spec.out_bands)

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        t, cg = self.dates, self.group_channels
        g = self.per_date(x)
        d = torch.zeros((n, t), device=x.device, dtype=x.dtype) if days is None else days.to(x.dtype)
        d = (d / DAY_SCALE)[:, :, None, None, None].expand(n, t, 1, h, w)
        feats = self.encoder(torch.cat([g, d], 2).reshape(n * t, cg + 1, h, w))
        stacked = [f.reshape(n, t * f.shape[1], f.shape[2], f.shape[3]) for f in feats]
        return self.decoder(stacked)
