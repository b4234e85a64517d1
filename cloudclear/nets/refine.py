"""Refine: gap filling's estimate plus a learned correction.

The network first computes, inside its forward pass and from its own inputs, exactly what
:func:`cloudclear.gapfill.gapfill` gives for the target date without the target's own pixels: per
pixel, linear interpolation in time between the nearest clear date before and the nearest clear
date after (a copy of the one that exists at the ends). A U-Net then predicts a *correction* that is
added to that estimate. Its last convolution starts at zero, so an untrained (or unsure) network
returns gap filling itself; training only has to learn what gap filling gets wrong.

What the correction sees, per pixel (all S2 values in the card's normalised units):

- the gap-filling estimate, which sides had a clear date, and how many days away they are (/30);
- every other date's departure from the estimate where that date is clear, its validity and its
  day offset, so the network can weigh dates gap filling ignores (the second and third neighbours);
- the target date's own departure from the estimate where the target is clear (partly cloudy
  dates), and that departure spread by normalised convolution at two scales: how this date differs
  from its neighbours nearby (a change of season, haze the masks left, a different sun) is the
  best guess of how it differs under the cloud;
- with S1: the target date's backscatter and its change since the nearest S2 dates before and
  after that gap filling used (something ploughed or harvested under the cloud).

The smoothing kernels widen the receptive radius by :data:`SMOOTH_RADIUS` pixels; the card's
radius includes it, so windowed inference still equals one pass over the whole image.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cloudclear.errors import CheckpointError
from cloudclear.nets.unet import DateStack, Decoder, Encoder

#: Day offsets are divided by this before they enter the network.
DAY_SCALE = 30.0
#: Gaussian sigmas (pixels) of the normalised convolutions that spread the target's departure.
SIGMAS = (3.0, 10.0)
#: Pixels the smoothing reaches on each side (3 sigma of the widest kernel).
SMOOTH_RADIUS = int(math.ceil(3 * max(SIGMAS)))
_INF = 1e9


def _kernel(sigma: float) -> torch.Tensor:
    r = int(math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class Refine(DateStack):
    """Gap filling's estimate of the target plus a U-Net's correction.

    Args:
        spec: a :class:`~cloudclear.nets.NetSpec` with one S2 slot of role ``target`` and at least
            one ``before`` or ``after`` slot; S1 slots pair with the S2 slot of the same role and
            rank.
        width, depth: as :class:`~cloudclear.nets.unet.UNet`.
    """

    def __init__(self, spec: object, width: int = 16, depth: int = 3) -> None:
        from cloudclear.nets import NetSpec

        assert isinstance(spec, NetSpec)
        groups = spec.date_groups()
        if len(groups) < 2 or spec.frames != 1:
            raise CheckpointError(f"refine takes two or more S2 slots and gives one frame, not {len(groups)}")
        super().__init__(groups, depth)
        s2 = spec.s2_slots
        self.target = spec.target_index()
        self.bands = len(s2[0].bands)
        if spec.out_bands != self.bands:
            raise CheckpointError(f"refine outputs the {self.bands} bands it reads, not {spec.out_bands}")
        self.s1_bands = self.group_channels - self.bands - 1 - 1 if self.group_channels > self.bands + 1 else 0
        self.others = [k for k in range(len(s2)) if k != self.target]
        self.register_buffer(
            "before", torch.tensor([s.role == "before" for s in s2], dtype=torch.bool), persistent=False
        )
        self.register_buffer("after", torch.tensor([s.role == "after" for s in s2], dtype=torch.bool), persistent=False)
        for i, sigma in enumerate(SIGMAS):
            self.register_buffer(f"kernel{i}", _kernel(sigma), persistent=False)
        b, o = self.bands, len(self.others)
        n_in = b + 4 + o * (b + 2) + (b + 1) + len(SIGMAS) * (b + 1)
        if self.s1_bands:
            n_in += 3 * self.s1_bands + 3
        self.in_features = n_in
        self.encoder = Encoder(n_in, width, depth)
        self.decoder = Decoder(self.encoder.chans, width, depth, b)
        nn.init.zeros_(self.decoder.head.weight)
        assert self.decoder.head.bias is not None
        nn.init.zeros_(self.decoder.head.bias)

    # -- gap filling inside the network ------------------------------------------------------

    def _nearest(
        self, valid: torch.Tensor, days: torch.Tensor, side: torch.Tensor, later: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per pixel, the clear date on one side nearest the target: (index (N,H,W), found, days)."""
        n, t, h, w = valid.shape
        d = days[:, :, None, None].expand(n, t, h, w)
        ok = valid & side[None, :, None, None]
        key = torch.where(ok, -d if later else d, torch.full_like(d, -_INF))
        best, idx = key.max(1)
        found = best > -_INF / 2
        return idx, found, torch.where(found, -best if later else best, torch.zeros_like(best))

    @staticmethod
    def _gather(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """values (N, T, C, H, W), idx (N, H, W) -> (N, C, H, W)."""
        n, _, c, h, w = values.shape
        return values.gather(1, idx[:, None, None].expand(n, 1, c, h, w))[:, 0]

    def estimate(self, x: torch.Tensor, days: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Gap filling of the target from the other dates, with what the correction reads."""
        n, _, h, w = x.shape
        g = self.per_date(x)
        b = self.bands
        values = g[:, :, :b]
        valid = g[:, :, b] > 0.5
        d = torch.zeros((n, self.dates), device=x.device, dtype=x.dtype) if days is None else days.to(x.dtype)
        others = valid.clone()
        others[:, self.target] = False
        before = self.before
        after = self.after
        assert isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)
        ib, hb, db = self._nearest(others, d, before, later=False)
        ia, ha, da = self._nearest(others, d, after, later=True)
        vb, va = self._gather(values, ib), self._gather(values, ia)
        span = da - db
        frac = torch.where(hb & ha & (span > 0), (0.0 - db) / span.clamp_min(1e-6), torch.zeros_like(span))
        gf = torch.where(hb[:, None], vb, va) + torch.where((hb & ha)[:, None], (va - vb) * frac[:, None], 0.0)
        gf = torch.where((hb | ha)[:, None], gf, torch.zeros_like(gf))
        return {
            "g": g,
            "values": values,
            "valid": valid,
            "days": d,
            "gf": gf,
            "ib": ib,
            "ia": ia,
            "hb": hb,
            "ha": ha,
            "db": db,
            "da": da,
        }

    def _spread(self, r: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
        """Normalised convolution of the departure ``r`` seen where ``v``: per sigma, (value, weight)."""
        out = []
        c = r.shape[1]
        for i in range(len(SIGMAS)):
            k = getattr(self, f"kernel{i}")
            pad = k.numel() // 2
            both = torch.cat([r * v, v], 1)
            kx = k.view(1, 1, 1, -1).expand(c + 1, 1, 1, -1)
            ky = k.view(1, 1, -1, 1).expand(c + 1, 1, -1, 1)
            s = nn.functional.conv2d(both, kx, padding=(0, pad), groups=c + 1)
            s = nn.functional.conv2d(s, ky, padding=(pad, 0), groups=c + 1)
            num, den = s[:, :c], s[:, c:]
            out += [num / den.clamp_min(1e-3), den]
        return out

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        e = self.estimate(x, days)
        gf, values, valid, d = e["gf"], e["values"], e["valid"], e["days"]
        b = self.bands
        has = torch.stack([e["hb"], e["ha"]], 1).to(x.dtype)
        near = torch.stack([-e["db"], e["da"]], 1) / DAY_SCALE
        feats = [gf, has, near]
        for k in self.others:
            vk = valid[:, k, None].to(x.dtype)
            feats += [(values[:, k] - gf) * vk, vk, (d[:, k] / DAY_SCALE)[:, None, None, None].expand_as(vk) * vk]
        vt = valid[:, self.target, None].to(x.dtype)
        rt = (values[:, self.target] - gf) * vt
        feats += [rt, vt, *self._spread(rt, vt)]
        if self.s1_bands:
            s1 = e["g"][:, :, b + 1 :]
            s1v, s1ok = s1[:, :, :-1], s1[:, :, -1:]
            t1, tv = s1v[:, self.target], s1ok[:, self.target]
            for idx in (e["ib"], e["ia"]):
                other, ov = self._gather(s1v, idx), self._gather(s1ok, idx)
                both = tv * ov
                feats += [(t1 - other) * both, both]
            feats += [t1, tv]
        z = torch.cat(feats, 1)
        assert z.shape[1] == self.in_features, (z.shape, self.in_features)
        return gf + self.decoder(self.encoder(z))
