"""The refine network: gap filling's estimate, computed inside the network, plus a correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloudclear.gapfill import gapfill
from cloudclear.nets import ARCHITECTURES, NetSpec, build
from cloudclear.nets.card import Slot
from cloudclear.nets.refine import SMOOTH_RADIUS
from cloudclear.nets.unet import receptive_radius

S2 = ("B02", "B03", "B04", "B08")
NAMES = ("t-3", "t-2", "t-1", "t", "t+1", "t+2", "t+3")


def _spec(s1: bool, names: tuple[str, ...] = NAMES) -> NetSpec:
    centre = names.index("t")
    slots = []
    for k, n in enumerate(names):
        role = "target" if k == centre else ("before" if k < centre else "after")
        slots.append(Slot(n, "S2", role, 1 if role == "target" else abs(k - centre), S2))
    if s1:
        slots += [Slot(f"s1@{s.name}", "S1", s.role, s.rank, ("VV", "VH")) for s in list(slots)]
    return NetSpec.of(slots, len(S2))


def _inputs(spec: NetSpec, values: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """The network input as the feed builds it: per S2 slot bands (0 where not seen) + validity,
    then per S1 slot its bands + validity."""
    chans = []
    for k in range(values.shape[1]):
        v = valid[:, k, None].astype(np.float32)
        chans += [torch.from_numpy(values[:, k] * v), torch.from_numpy(v)]
    n_s1 = len([s for s in spec.slots if s.sensor == "S1"])
    n, _, _, h, w = values.shape
    for _ in range(n_s1):
        v = (rng.random((n, 1, h, w)) > 0.3).astype(np.float32)
        chans += [torch.from_numpy(rng.normal(size=(n, 2, h, w)).astype(np.float32) * v), torch.from_numpy(v)]
    return torch.cat(chans, 1)


def test_refine_is_registered_with_the_smoothing_in_its_radius():
    assert "refine" in ARCHITECTURES
    _, radius, align = build("refine", _spec(False), {"width": 4, "depth": 2})
    assert radius == receptive_radius(2) + SMOOTH_RADIUS
    assert align == 4


@pytest.mark.parametrize("s1", [False, True])
def test_an_untrained_refine_network_is_gapfill_of_the_other_dates(s1):
    """Zero-initialised correction: the output is exactly gapfill without the target's pixels, also
    where only one side or no date is clear, and with empty slots (day 0, validity 0)."""
    rng = np.random.default_rng(1)
    spec = _spec(s1)
    net, _, _ = build("refine", spec, {"width": 4, "depth": 2})
    net.eval()
    n, h, w = 3, 16, 24
    values = rng.normal(size=(n, 7, len(S2), h, w)).astype(np.float32)
    valid = rng.random((n, 7, h, w)) > 0.6
    valid[0, :3] = False  # sample 0: nothing before -> a copy of the first clear date after
    valid[1, :, :4] = False  # sample 1: four rows no date saw
    days = np.array([[-30, -20, -10, 0, 5, 15, 40], [-50, -12, -2, 0, 3, 9, 70], [0, -8, -4, 0, 4, 0, 0]], np.float32)
    valid[2, [0, 5, 6]] = False  # sample 2: empty slots have day 0 and no validity
    x = _inputs(spec, values, valid, rng)
    with torch.no_grad():
        y = net(x, torch.from_numpy(days)).numpy()
    for i in range(n):
        clear = valid[i].copy()
        clear[3] = False
        order = np.argsort(days[i], kind="stable")
        ref, _ = gapfill(values[i][order], clear[order], days[i][order], 0.0)
        np.testing.assert_allclose(y[i], ref, atol=1e-5)


def test_training_moves_refine_away_from_gapfill_towards_the_truth():
    """A few steps on a date 0.2 brighter than its neighbours (a change the neighbours cannot show):
    the correction learns it from the target's own clear pixels, where gapfill cannot."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = _spec(False, ("t-1", "t", "t+1"))
    net, _, _ = build("refine", spec, {"width": 8, "depth": 2})
    n, h, w = 8, 16, 16
    base = rng.normal(size=(n, 1, len(S2), h, w)).astype(np.float32)
    values = np.concatenate([base, base + 0.2, base], 1)
    valid = np.ones((n, 3, h, w), bool)
    valid[:, 1, 4:12, 4:12] = False  # the hidden square of the target
    x = _inputs(spec, values, valid, rng)
    days = torch.tensor([[-10.0, 0.0, 10.0]]).expand(n, 3)
    truth = torch.from_numpy(values[:, 1])
    hole = torch.from_numpy(~valid[:, 1])[:, None].expand_as(truth)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        err = (net(x, days) - truth).abs()[hole].mean()
        first = float(err.detach()) if first is None else first
        opt.zero_grad()
        err.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        after = float((net(x, days) - truth).abs()[hole].mean())
    assert first == pytest.approx(0.2, abs=1e-4)  # gapfill misses the change by exactly 0.2
    assert after < 0.1, after


def test_a_window_with_the_radius_as_margin_gives_the_whole_image_centre():
    """With the smoothing inside, windowed inference still equals one pass (the radius covers it)."""
    torch.manual_seed(3)
    spec = _spec(True)
    net, radius, align = build("refine", spec, {"width": 4, "depth": 2})
    with torch.no_grad():  # a non-zero correction, so the U-Net's reach matters too
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    net.eval()
    rng = np.random.default_rng(2)
    size = 2 * radius + 3 * align
    size = -(-size // align) * align
    days = torch.tensor([[-30.0, -20, -10, 0, 5, 15, 40]])
    with torch.no_grad():
        a = -(-radius // align) * align  # margin aligned to the pooling
        # a window cut out of a larger image: its centre equals the larger image's
        big_values = rng.normal(size=(1, 7, len(S2), size + 2 * a, size + 2 * a)).astype(np.float32)
        big_valid = rng.random((1, 7, size + 2 * a, size + 2 * a)) > 0.4
        big = _inputs(spec, big_values, big_valid, rng)
        out_big = net(big, days)
        cut = big[:, :, a : a + size, a : a + size]
        out_cut = net(cut, days)
        torch.testing.assert_close(out_cut[..., a : size - a, a : size - a], out_big[..., 2 * a : size, 2 * a : size])


def test_refine_refuses_a_spec_it_cannot_fill():
    from cloudclear.errors import CheckpointError

    one = NetSpec.of([Slot("t", "S2", "target", 1, S2)], len(S2))
    with pytest.raises(CheckpointError, match="two or more S2 slots"):
        build("refine", one, {})
    with pytest.raises(CheckpointError, match="outputs the 4 bands"):
        build("refine", NetSpec.of(_spec(False).slots, 3), {})


def test_the_card_window_keeps_margins_to_a_third_of_its_side():
    from cloudclear.training.samples import card_window

    assert card_window(256, receptive_radius(3) + SMOOTH_RADIUS, 8) == 528  # refine, depth 3: 88 px
    assert card_window(256, receptive_radius(3), 8) == 352
    assert card_window(1024, receptive_radius(3), 8) == 1024  # a wider window asked for is kept
    assert card_window(100, 10, 16) == 112  # aligned to the pooling
