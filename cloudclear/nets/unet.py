"""U-Net parts shared by every reconstruction network, and the plain U-Net itself.

Fully convolutional, with BatchNorm (affine at inference, so a window sees exactly what a whole
image would) and max-pooling by 2 at each of ``depth`` levels. Output equals whole-image inference
when windows keep a margin of :func:`receptive_radius` pixels aligned to ``2 ** depth``.

:class:`Encoder` and :class:`Decoder` are the two halves; the single-date, multi-temporal and
sequence networks combine them differently (one encoder over stacked channels, one encoder shared
by the dates, attention across dates at the bottleneck).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions with BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def receptive_radius(depth: int) -> int:
    """Pixels on each side an output pixel depends on.

    Encoder level l (scale 2^l): two 3x3 convolutions (2 * 2^l) and a 2x2 pooling (2^l); the
    bottleneck's two convolutions at 2^depth; decoder level l: nearest upsampling (2^l) and two
    convolutions (2 * 2^l). ``tests/test_nets.py`` checks this bound against gradients.
    """
    levels = sum(3 * 2**level for level in range(depth))
    return 2 * levels + 2 * 2**depth


def channels(width: int, depth: int) -> list[int]:
    """Feature channels at each level, from full resolution to the bottleneck."""
    if depth < 1 or width < 1:
        raise ValueError("width and depth must be >= 1")
    return [width * 2**level for level in range(depth + 1)]


class Encoder(nn.Module):
    """The contracting half: returns the features of every level, the bottleneck last."""

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        chans = channels(width, depth)
        self.chans = chans
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(block(cin, c))
            cin = c
        self.bottleneck = block(chans[-2], chans[-1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for b in self.down:
            x = b(x)
            feats.append(x)
            x = nn.functional.max_pool2d(x, 2)
        feats.append(self.bottleneck(x))
        return feats


class Decoder(nn.Module):
    """The expanding half: from the bottleneck up, joining each level's skip features.

    Args:
        skip_channels: channels of the skip features at each level (full resolution first) and of
            the bottleneck last, as they reach the decoder.
        width, depth: as the encoder's; level l decodes to ``width * 2**l`` channels.
        out_channels: output bands.
    """

    def __init__(self, skip_channels: Sequence[int], width: int, depth: int, out_channels: int) -> None:
        super().__init__()
        chans = channels(width, depth)
        if len(skip_channels) != depth + 1:
            raise ValueError(f"{len(skip_channels)} feature levels for depth {depth}")
        self.up = nn.ModuleList()
        below = skip_channels[-1]
        for level in reversed(range(depth)):
            self.up.append(block(below + skip_channels[level], chans[level]))
            below = chans[level]
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for b, skip in zip(self.up, reversed(feats[:-1]), strict=True):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = b(torch.cat([x, skip], 1))
        return self.head(x)


class UNet(nn.Module):
    """U-Net mapping ``in_channels`` to ``out_channels`` at the input's resolution.

    Args:
        in_channels: input channels (every slot's bands plus its validity channel).
        out_channels: output bands.
        width: channels at the first level; doubled at each level down.
        depth: number of poolings; inputs must be multiples of ``2 ** depth`` on each side.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, width, depth)
        self.decoder = Decoder(self.encoder.chans, width, depth, out_channels)
        self.depth = depth

    @property
    def align(self) -> int:
        return int(2**self.depth)

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        """``days`` (the S2 slots' offsets) is accepted for a uniform call and not used."""
        return self.decoder(self.encoder(x))


class DateStack(nn.Module):
    """Base of the networks that read each date on its own: gathers every date's channels.

    Args:
        groups: per S2 slot, its input channels (its own, then its S1 slot's), from
            :meth:`cloudclear.nets.NetSpec.date_groups`; every date has as many.
        depth: poolings of the U-Net the subclass builds.
    """

    def __init__(self, groups: Sequence[Sequence[int]], depth: int) -> None:
        super().__init__()
        self.dates = len(groups)
        self.group_channels = len(groups[0])
        self.register_buffer("index", torch.tensor(groups, dtype=torch.long).flatten(), persistent=False)
        self.depth = depth

    @property
    def align(self) -> int:
        return int(2**self.depth)

    def per_date(self, x: torch.Tensor) -> torch.Tensor:
        """(N, channels, H, W) -> (N, dates, channels per date, H, W)."""
        n, _, h, w = x.shape
        index = self.index
        assert isinstance(index, torch.Tensor)
        return x.index_select(1, index).view(n, self.dates, self.group_channels, h, w)
