"""Sequence reconstruction: T dates of S2 (+ S1) -> T cloud-free dates, U-TILISE-like.

Stucker et al. (2023, U-TILISE) encode every date with a shared U-Net encoder, let the dates
attend to each other at the bottleneck (per pixel, with the acquisition dates as positional
encoding), apply the same attention weights, upsampled, to combine the skip features across
time, and decode every date with a shared decoder. This module follows that design in plain
PyTorch:

- attention runs per bottleneck pixel across the T dates, so the network stays fully
  convolutional in space and its receptive field is the U-Net's;
- the positional encoding is sinusoidal in days relative to the mean date of the sequence, so
  the same sequence shifted in time gives the same output;
- one attention layer (multi-head, pre-norm, with a feed-forward block); the head-averaged
  weights mix the skip features, so a cloudy date borrows fine detail from clear ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cloudclear.errors import CheckpointError
from cloudclear.nets.unet import DateStack, Decoder, Encoder


def day_encoding(days: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding (..., dim) of day offsets, periods from 1 day to about 1000 days."""
    half = dim // 2
    freq = torch.exp(-math.log(1000.0) * torch.arange(half, device=days.device, dtype=torch.float32) / max(half, 1))
    angle = days.float()[..., None] * (2 * math.pi) * freq
    enc = torch.cat([torch.sin(angle), torch.cos(angle)], -1)
    if enc.shape[-1] < dim:
        enc = nn.functional.pad(enc, (0, dim - enc.shape[-1]))
    return enc


class SequenceNet(DateStack):
    """Shared encoder, temporal attention at the bottleneck, shared decoder; T frames out.

    Args:
        spec: a :class:`~cloudclear.nets.NetSpec` whose S2 slots are the dates (S1 slots pair
            with the S2 slot of the same role and rank); ``frames`` must equal the S2 slots.
        width, depth: as :class:`~cloudclear.nets.unet.UNet`.
        heads: attention heads (must divide the bottleneck channels, ``width * 2**depth``).
    """

    def __init__(self, spec: object, width: int = 16, depth: int = 3, heads: int = 4) -> None:
        from cloudclear.nets import NetSpec

        assert isinstance(spec, NetSpec)
        groups = spec.date_groups()
        if len(groups) < 2 or spec.frames != len(groups):
            raise CheckpointError(f"sequence takes two or more S2 slots and gives one frame each ({len(groups)} slots)")
        super().__init__(groups, depth)
        self.encoder = Encoder(self.group_channels, width, depth)
        c = self.encoder.chans[-1]
        if heads < 1 or c % heads:
            raise ValueError(f"heads {heads} must divide the bottleneck channels {c}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.norm2 = nn.LayerNorm(c)
        self.ffn = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.decoder = Decoder(self.encoder.chans, width, depth, spec.out_bands)

    def _attend(self, tokens: torch.Tensor, days: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, C), days (B, T) -> new tokens and head-averaged weights (B, T, T)."""
        b, t, c = tokens.shape
        h = self.heads
        x = tokens + day_encoding(days, c).to(tokens.dtype)
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(c // h), -1)  # (B, h, T, T)
        out = (weights @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(out)
        x = x + self.ffn(self.norm2(x))
        return x, weights.mean(1)

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        t, cg = self.dates, self.group_channels
        g = self.per_date(x).view(n * t, cg, h, w)
        feats = self.encoder(g)
        d = torch.zeros((n, t), device=x.device) if days is None else days.float()
        d = d - d.mean(1, keepdim=True)
        bott = feats[-1]
        c, hb, wb = bott.shape[1:]
        tokens = bott.view(n, t, c, hb, wb).permute(0, 3, 4, 1, 2).reshape(n * hb * wb, t, c)
        dd = d[:, None, None, :].expand(n, hb, wb, t).reshape(n * hb * wb, t)
        tokens, weights = self._attend(tokens, dd)
        bott = tokens.view(n, hb, wb, t, c).permute(0, 3, 4, 1, 2).reshape(n * t, c, hb, wb)
        # (n, T_out, T_in, hb, wb): how much each output date draws on each input date.
        a = weights.view(n, hb, wb, t, t).permute(0, 3, 4, 1, 2)
        mixed = []
        for f in feats[:-1]:
            cl, hl, wl = f.shape[1:]
            al = nn.functional.interpolate(a.reshape(n, t * t, hb, wb), size=(hl, wl), mode="nearest")
            al = al.view(n, t, t, 1, hl, wl).to(f.dtype)
            mixed.append((al * f.view(n, 1, t, cl, hl, wl)).sum(2).reshape(n * t, cl, hl, wl))
        y = self.decoder([*mixed, bott])
        return y.view(n, t * y.shape[1], h, w)
