"""Windows sized by a memory budget (the card's window a minimum) and batch buffers reused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_infer import (
    GAP_TARGET,
    Recorder,
    _checkpoint,
    _opts,
    _read,
    _whole_pass,
    gap_series,  # noqa: F401 (a fixture)
)

from cloudclear.cli.options import parse_memory
from cloudclear.inference import pipeline
from cloudclear.inference.methods import NetMethod, default_window_memory
from cloudclear.inference.select import choose_inputs
from cloudclear.inference.windows import WindowPlan, budget_window, window_bytes
from cloudclear.nets.feed import _live_bytes_peak, forward_bytes_per_pixel

# -- the window maths ------------------------------------------------------------------------------


def _computed(plan: WindowPlan) -> int:
    """Pixels the network computes for ``plan``, counted window by window (the reference)."""
    return sum(w.rows.length * w.cols.length for w in plan.windows())


budgets = st.builds(
    lambda h, w, align_pow, radius, extra, bpp, budget, batch: (h, w, 2**align_pow, radius, extra, bpp, budget, batch),
    st.integers(1, 900),
    st.integers(1, 900),
    st.integers(0, 3),
    st.integers(0, 40),
    st.integers(1, 100),
    st.integers(1, 4000),
    st.integers(1, 2**31),
    st.integers(1, 8),
)


@settings(max_examples=150, deadline=None)
@given(budgets)
def test_budget_window_fits_and_computes_fewest_pixels_of_all_that_fit(args):
    h, w, align, radius, extra, bpp, budget, batch = args
    minimum = 2 * radius + 2 * align + extra
    side = budget_window(
        h, w, budget=budget, bytes_per_pixel=bpp, batch=batch, minimum=minimum, radius=radius, align=align
    )
    floor = WindowPlan.build(h, w, window=minimum, radius=radius, align=align).window
    assert side % align == 0 and side >= floor
    chosen = WindowPlan.build(h, w, window=side, radius=radius, align=align)
    if side != floor:
        assert window_bytes(chosen, batch, bpp) <= budget
    # brute force over every aligned side up to twice the image: none that fits does better
    for s in range(floor, 2 * max(h, w) + 2 * align, align):
        p = WindowPlan.build(h, w, window=s, radius=radius, align=align)
        if window_bytes(p, batch, bpp) <= budget or s == floor:
            assert _computed(p) >= _computed(chosen), (s, side)
            if _computed(p) == _computed(chosen):
                assert s >= side  # ties: the smaller window


def test_an_unlimited_budget_gives_one_window_and_a_tiny_one_the_cards():
    kw = dict(bytes_per_pixel=1000, batch=8, minimum=352, radius=58, align=8)
    assert budget_window(705, 935, budget=2**40, **kw) == 936  # the padded image: one window
    plan = WindowPlan.build(705, 935, window=936, radius=58, align=8)
    assert len(plan.windows()) == 1
    assert budget_window(705, 935, budget=1, **kw) == 352
    # the host rows count as well: a budget the window alone fits, but not with its rows
    assert budget_window(705, 935, budget=712 * 936 * 1000, **kw) == 936
    assert budget_window(705, 935, budget=712 * 936 * 1000, row_bytes_per_pixel=100, **kw) < 936


def test_parse_memory():
    assert parse_memory("1.5GiB") == 3 * 2**29
    assert parse_memory("800MiB") == parse_memory("800M") == parse_memory("800") == 800 * 2**20
    assert parse_memory("2g") == 2 * 2**30 and parse_memory("64KB") == 64 * 2**10
    for bad in ("", "lots", "-1G", "0", "nanG"):
        with pytest.raises(ValueError, match="memory size"):
            parse_memory(bad)


# -- memory per pixel ------------------------------------------------------------------------------


def test_live_bytes_peak_counts_what_is_alive_at_once():
    def run() -> None:
        x = torch.ones(1000)  # 4000 B
        v = x.view(10, 100)  # a view: no new memory
        y = v * 2  # 8000 alive
        del x, v
        z = y + 1  # y and z: 8000
        del y
        w = torch.cat([z, z])  # z (4000) + w (8000) = 12000: the peak
        del z, w

    assert _live_bytes_peak(run) == 12000


def test_forward_bytes_per_pixel_is_per_pixel(tmp_path):
    from cloudclear.nets.card import load_checkpoint
    from cloudclear.nets.feed import Feed

    net, card = load_checkpoint(_checkpoint(tmp_path / "m.safetensors", depth=2, width=8))
    net.eval()
    feed = Feed(card, "cpu")
    a = forward_bytes_per_pixel(net, feed, 32, 32)
    b = forward_bytes_per_pixel(net, feed, 64, 96)
    in_ch = sum(len(s.bands) + 1 for s in card.slots)
    # at least the input, the first convolution's 8 channels and the output, float32
    assert a >= 4 * (in_ch + 8 + len(card.bands))
    assert b == pytest.approx(a, rel=0.02)


def test_default_budget_on_the_cpu_is_bounded():
    assert 0 < default_window_memory("cpu") <= 2 * 2**30


# -- through the pipeline --------------------------------------------------------------------------


def test_budget_window_gives_the_cards_output_bit_for_bit(gap_series, tmp_path):  # noqa: F811
    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, width=4, window=96, s1=True, seed=1)
    card_m = NetMethod(ckpt, device="cpu", batch=3, window=96)
    big = NetMethod(ckpt, device="cpu", batch=3)  # the default budget: one window here
    card_m.net, big.net = Recorder(card_m.net), Recorder(big.net)
    inp = choose_inputs(gap_series, GAP_TARGET, big.layout(), bands=big.bands(), s1_bands=big.s1_bands())
    h, w = inp.grid.height, inp.grid.width
    assert big.window_for(h, w) == math.ceil(max(h, w) / 4) * 4
    big.net.sizes.clear()  # the memory probe's pass
    a = pipeline.run(inp, card_m, tmp_path / "card.tif", _opts(keep_observed=False, strip_rows=64))
    b = pipeline.run(inp, big, tmp_path / "big.tif", _opts(keep_observed=False, strip_rows=64))
    assert sum(big.net.sizes) == 1 < sum(card_m.net.sizes)
    np.testing.assert_array_equal(_read(a.path), _read(b.path))
    np.testing.assert_array_equal(_read(a.status_path), _read(b.status_path))
    want, _ = _whole_pass(big, inp)  # and both are the whole-image pass
    assert np.abs(_read(b.path).astype(np.float64) - want).max() <= 1


def test_budget_sizes_window_then_batch_and_blend_keeps_the_cards(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, width=4, window=96, s1=False)
    m = NetMethod(ckpt, device="cpu", batch=4, window_memory=1)
    assert m.window_for(500, 700) == 96  # nothing larger fits: the card's is the floor
    plan = WindowPlan.build(500, 700, window=96, radius=m.card.receptive_radius, align=m.card.align)
    assert m.batch_for(plan) == 1
    m.window_memory = 10**12  # room for everything: the whole image, batch of at most a row's windows
    assert m.window_for(500, 700) == 700
    bpp, row = m.bytes_per_pixel(), m._row_bytes_per_pixel()
    # room for a window of 200 and its rows, with two of them per batch: the window grows first
    r, a = m.card.receptive_radius, m.card.align
    m.window_memory = int(window_bytes(WindowPlan.build(500, 700, window=200, radius=r, align=a), 2, bpp, row))
    side = m.window_for(500, 700)
    plan = WindowPlan.build(500, 700, window=side, radius=r, align=a)
    assert side > 200 and window_bytes(plan, 1, bpp, row) <= m.window_memory
    assert m.batch_for(plan) == 1
    blend = NetMethod(_checkpoint(tmp_path / "b.safetensors", window=96, fc=False), device="cpu", batch=4)
    assert blend.window_for(500, 700) == 96 and blend.batch_for(plan) == 4
    forced = NetMethod(ckpt, device="cpu", batch=4, window=128)
    assert forced.window_for(500, 700) == 128 and forced.batch_for(plan) == 4


def test_batch_inputs_reuse_buffers_instead_of_stacking(gap_series, tmp_path, monkeypatch):  # noqa: F811
    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, width=4, window=96, s1=True, seed=1)
    m = NetMethod(ckpt, device="cpu", batch=2, window=96)
    m.net = Recorder(m.net)
    inp = choose_inputs(gap_series, GAP_TARGET, m.layout(), bands=m.bands(), s1_bands=m.s1_bands())
    made: list[int] = []
    stacks: list[int] = []
    real_buffer, real_stack = NetMethod._buffer, np.stack

    def buffer(self, key, shape, dtype):
        known = self._local.__dict__.get("buffers", {}).get(key)
        got = real_buffer(self, key, shape, dtype)
        if got is not known:
            made.append(got.nbytes)
        return got

    def stack(*a, **k):
        stacks.append(1)
        return real_stack(*a, **k)

    monkeypatch.setattr(NetMethod, "_buffer", buffer)
    monkeypatch.setattr(np, "stack", stack)
    slots_seen = sum(a is not None for _, a in inp.slots)
    out = pipeline.run(inp, m, tmp_path / "o.tif", _opts(keep_observed=False, status=False, strip_rows=64))
    batches = len(m.net.sizes)
    assert batches > 4
    assert len(made) == 2 * slots_seen  # values and mask per slot, once, whatever the batches
    assert not stacks
    # a second run allocates nothing new
    pipeline.run(inp, m, tmp_path / "o2.tif", _opts(keep_observed=False, status=False, strip_rows=64))
    assert len(made) == 2 * slots_seen
    np.testing.assert_array_equal(_read(out.path), _read(tmp_path / "o2.tif"))
    want, _ = _whole_pass(m, inp)
    assert np.abs(_read(out.path).astype(np.float64) - want).max() <= 1


@pytest.mark.parametrize("size", ["lots", "0", "-2G"])
def test_cli_refuses_a_bad_window_memory(tmp_path, size):
    from typer.testing import CliRunner

    from cloudclear.cli import app

    cat = tmp_path / "cat.gpkg"
    cat.touch()  # never opened: the option is refused first
    args = ["infer", "-c", str(cat), "-d", "2021-05-16", "-o", str(tmp_path / "x.tif"), "--window-memory", size]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "--window-memory" in " ".join(res.stderr.replace("│", " ").split())
    assert not (tmp_path / "x.tif").exists()
