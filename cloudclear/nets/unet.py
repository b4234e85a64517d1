"""A plain U-Net: the backbone of the single-date and multi-temporal reconstruction networks.

Fully convolutional, with BatchNorm (affine at inference, so a window sees exactly what a whole
image would) and max-pooling by 2 at each of ``depth`` levels. Output equals whole-image inference
when windows keep a margin of :func:`receptive_radius` pixels aligned to ``2 ** depth``.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
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
        if depth < 1 or width < 1:
            raise ValueError("width and depth must be >= 1")
        chans = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(_block(cin, c))
            cin = c
        self.bottleneck = _block(chans[-2], chans[-1])
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(_block(chans[level + 1] + chans[level], chans[level]))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        self.depth = depth

    @property
    def align(self) -> int:
        return int(2**self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skip], 1))
        return self.head(x)
