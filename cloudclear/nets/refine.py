"""Refine: gap filling's estimate plus a learned correction built from the date's own evidence.

The network first computes, inside its forward pass and from its own inputs, exactly what
:func:`cloudclear.gapfill.gapfill` gives for the target date without the target's own pixels: per
pixel, linear interpolation in time between the nearest clear date before and the nearest clear
date after (a copy of the one that exists at the ends). Then it looks at what the target date's own
clear pixels say about how this date differs from that estimate (a change of season, another sun,
haze the masks left, a field cut), in three deterministic ways, all in normalised units:

- its departure from the estimate spread by normalised convolution at two scales (sigma 3, 10 px);
- local linear regressions of the target on each other date over the pixels both saw (Gaussian
  weights, sigma 10 px, ridge towards slope 1), the dates' predictions weighted by how well they fit.

The output is ``gapfill + trust x (regression - gapfill) + sum_j w_j x signal_j``: ``trust`` is one
learned number and the ``w_j`` are per-pixel weights a U-Net gives to those three signals. Both start
at zero, so an untrained network returns gap filling itself.

**Why weights and not a free correction.** A U-Net that adds any value it likes learns the training
places' priors (Bolzano's June greening, a darker red): at an unseen Hungarian cropland it lost
0.74 dB to gapfill. Mixing the other dates' departures as well lost 2.5 dB there (dates weeks apart
in fast-changing fields). Weighting only the date's own evidence cannot invent a level the date does
not show; where its clear pixels agree with gapfill, the output is gapfill.

**What the U-Net sees, one band at a time with shared weights** (so it learns how departures behave,
not band- or sensor-specific levels; L1C and L2A alike): which sides had a clear date and how many
days away (/30); every other date's departure from the estimate where clear, with its day offset;
the target's own departure and validity; the spreads and their support; the regression's departure
and support; the target's and the regression's departures averaged over the bands; with S1, the
target date's backscatter and its change since the S2 dates gap filling used. Never the reflectance
level itself.

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
#: Gaussian sigma (pixels) of the local regressions of the target on each other date.
REGRESSION_SIGMA = 10.0
#: Ridge of those regressions, in normalised units squared: pulls a slope with little support
#: towards 1 (the other date's departure taken as it is).
REGRESSION_RIDGE = 0.2
#: Floor of a regression's residual variance when the dates' predictions are weighted.
REGRESSION_FLOOR = 0.01
#: The steepest slope a local regression may take: an unmasked cloud on a neighbour date, multiplied
#: by a steep slope, gave predictions off by 2 in reflectance on Bolzano's 2022-06-17.
MAX_SLOPE = 2.0
#: The largest departure from gap filling (normalised units, about one band standard deviation) a
#: signal or the output may take: the evidence of a date's clear pixels corrects gap filling; it
#: never replaces it with something brighter or darker than any land nearby.
MAX_DEPARTURE = 1.0
#: Pixels the smoothing reaches on each side (3 sigma of the widest kernel).
SMOOTH_RADIUS = int(math.ceil(3 * max(*SIGMAS, REGRESSION_SIGMA)))
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
        self.s1_bands = max(self.group_channels - self.bands - 2, 0)  # S1 bands + their validity
        self.others = [k for k in range(len(s2)) if k != self.target]
        self.register_buffer(
            "before", torch.tensor([s.role == "before" for s in s2], dtype=torch.bool), persistent=False
        )
        self.register_buffer("after", torch.tensor([s.role == "after" for s in s2], dtype=torch.bool), persistent=False)
        for i, sigma in enumerate(SIGMAS):
            self.register_buffer(f"kernel{i}", _kernel(sigma), persistent=False)
        self.register_buffer("kernel_regression", _kernel(REGRESSION_SIGMA), persistent=False)
        o = len(self.others)
        # per band: sides found and their days (4), per other date its departure, validity and
        # day (3), the target's departure and validity (2), each spread (2), the regression's
        # departure and support (2), the departures of the target and of the regression averaged
        # over the bands (2); shared by the bands: S1's change and level (3 per S1 band + 3)
        n_in = 4 + 3 * o + 2 + 2 * len(SIGMAS) + 2 + 2
        if self.s1_bands:
            n_in += 3 * self.s1_bands + 3
        self.in_features = n_in
        self.encoder = Encoder(n_in, width, depth)
        #: the departures the correction mixes, all evidence of the target date itself: each spread
        #: of its own departure, and the regressions' departure
        self.signals = len(SIGMAS) + 1
        self.decoder = Decoder(self.encoder.chans, width, depth, self.signals)
        nn.init.zeros_(self.decoder.head.weight)
        assert self.decoder.head.bias is not None
        nn.init.zeros_(self.decoder.head.bias)
        #: How much of the local regressions' departure from gap filling the output takes, per
        #: band: 0 at the start (the output is gap filling), learned.
        self.trust = nn.Parameter(torch.zeros(()))

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
        both = torch.cat([r * v, v], 1)
        for i in range(len(SIGMAS)):
            s = self._blur(both, getattr(self, f"kernel{i}"))
            num, den = s[:, :c], s[:, c:]
            out += [num / den.clamp_min(1e-3), den]
        return out

    @staticmethod
    def _blur(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Separable convolution of every channel of ``z`` with the 1-D kernel ``k`` (zero padding)."""
        c, pad = z.shape[1], k.numel() // 2
        z = nn.functional.conv2d(z, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, pad), groups=c)
        return nn.functional.conv2d(z, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(pad, 0), groups=c)

    def regression(self, e: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The target predicted from each other date by local linear regression, per band.

        Around each pixel (Gaussian weights, sigma :data:`REGRESSION_SIGMA`) the target is regressed
        on the other date over the pixels both saw (ridge :data:`REGRESSION_RIDGE` towards slope 1);
        where that date is clear, its prediction counts with the inverse of the fit's residual
        variance. Returns the weighted prediction (gap filling where no date gives one) and the
        weights' sum (0 there).
        """
        values, valid = e["values"], e["valid"].to(e["values"].dtype)
        t, vt = values[:, self.target], valid[:, self.target, None]
        k = self.kernel_regression
        assert isinstance(k, torch.Tensor)
        b = self.bands
        num = torch.zeros_like(t)
        den = torch.zeros_like(vt)
        for j in self.others:
            x, vx = values[:, j], valid[:, j, None]
            both = vt * vx
            m = self._blur(torch.cat([both, t * both, x * both, x * x * both, x * t * both, t * t * both], 1), k)
            s0 = m[:, :1].clamp_min(1e-6)
            mt, mx, mxx, mxt, mtt = (m[:, 1 + i * b : 1 + (i + 1) * b] / s0 for i in range(5))
            var_x = (mxx - mx * mx).clamp_min(0.0)
            cov = mxt - mx * mt
            var_t = (mtt - mt * mt).clamp_min(0.0)
            slope = ((cov + REGRESSION_RIDGE) / (var_x + REGRESSION_RIDGE)).clamp(0.0, MAX_SLOPE)
            pred = mt + slope * (x - mx)
            resid = (var_t - 2 * slope * cov + slope * slope * var_x).clamp_min(0.0)
            w = (m[:, :1] > 0.05).to(t.dtype) * vx / (resid + REGRESSION_FLOOR)
            num = num + w * pred
            den = den + w
        pred = torch.where(den > 0, num / den.clamp_min(1e-9), e["gf"])
        return pred, den.mean(1, keepdim=True)

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        e = self.estimate(x, days)
        gf, values, valid, d = e["gf"], e["values"], e["valid"], e["days"]
        n, b, h, w = gf.shape
        dt = x.dtype

        def shared(z: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, B, C, H, W)
            return z[:, None].expand(n, b, *z.shape[1:])

        def per_band(z: torch.Tensor) -> torch.Tensor:  # (N, B, H, W) -> (N, B, 1, H, W)
            return z[:, :, None]

        has = torch.stack([e["hb"], e["ha"]], 1).to(dt)
        near = torch.stack([-e["db"], e["da"]], 1) / DAY_SCALE
        feats = [shared(has), shared(near)]
        signals = []
        for k in self.others:
            vk = valid[:, k, None].to(dt)
            day = (d[:, k] / DAY_SCALE)[:, None, None, None].expand_as(vk) * vk
            feats += [per_band((values[:, k] - gf) * vk), shared(vk), shared(day)]
        vt = valid[:, self.target, None].to(dt)
        rt = (values[:, self.target] - gf) * vt
        feats += [per_band(rt), shared(vt)]
        spread = self._spread(rt, vt)
        for value, weight in zip(spread[::2], spread[1::2], strict=True):
            signals.append(value.clamp(-MAX_DEPARTURE, MAX_DEPARTURE))
            feats += [per_band(value), shared(weight)]
        reg, support = self.regression(e)
        signals.append((reg - gf).clamp(-MAX_DEPARTURE, MAX_DEPARTURE))
        feats += [per_band(reg - gf), shared(torch.log1p(support))]
        feats += [shared(rt.mean(1, keepdim=True)), shared((reg - gf).mean(1, keepdim=True))]
        if self.s1_bands:
            s1 = e["g"][:, :, b + 1 :]
            s1v, s1ok = s1[:, :, :-1], s1[:, :, -1:]
            t1, tv = s1v[:, self.target], s1ok[:, self.target]
            for idx in (e["ib"], e["ia"]):
                other, ov = self._gather(s1v, idx), self._gather(s1ok, idx)
                both = tv * ov
                feats += [shared((t1 - other) * both), shared(both)]
            feats += [shared(t1), shared(tv)]
        z = torch.cat(feats, 2)
        assert z.shape[2] == self.in_features, (z.shape, self.in_features)
        mix = self.decoder(self.encoder(z.reshape(n * b, self.in_features, h, w))).view(n, b, self.signals, h, w)
        correction = (mix * torch.stack(signals, 2)).sum(2) + self.trust * signals[-1]
        return gf + correction.clamp(-MAX_DEPARTURE, MAX_DEPARTURE)
