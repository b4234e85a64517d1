"""Window plans: cores tile the image, margins cover the receptive field, weights are positive."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudclear.inference.windows import WindowPlan, blend_weights, hann_weights

plans = st.builds(
    lambda h, w, align_pow, radius, extra: (h, w, 2**align_pow, radius, extra),
    st.integers(1, 700),
    st.integers(1, 700),
    st.integers(0, 4),
    st.integers(0, 40),
    st.integers(1, 200),
)


def _plan(h, w, align, radius, extra):
    window = 2 * radius + align + extra + align  # always leaves a core
    return WindowPlan.build(h, w, window=window, radius=radius, align=align)


@settings(max_examples=300, deadline=None)
@given(plans)
def test_cores_tile_every_pixel_exactly_once(args):
    plan = _plan(*args)
    count = np.zeros((plan.padded_height, plan.padded_width), np.int32)
    for win in plan.windows():
        count[win.rows.core_start : win.rows.core_stop, win.cols.core_start : win.cols.core_stop] += 1
    assert (count == 1).all()
    assert plan.padded_height - plan.height < plan.align and plan.padded_width - plan.width < plan.align


@settings(max_examples=300, deadline=None)
@given(plans)
@pytest.mark.slow
def test_windows_keep_the_margin_or_touch_the_border_and_follow_the_pooling_grid(args):
    plan = _plan(*args)
    for axis, size in (("rows", plan.padded_height), ("cols", plan.padded_width)):
        for win in plan.windows():
            s = getattr(win, axis)
            assert 0 <= s.start and s.stop <= size
            assert s.start <= s.core_start < s.core_stop <= s.stop
            assert s.core_start - s.start >= plan.margin or s.start == 0
            assert s.stop - s.core_stop >= plan.margin or s.stop == size
            assert s.start % plan.align == 0 and s.length % plan.align == 0
            assert s.length == min(plan.window, size)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(plans)
def test_blend_weights_are_positive_over_every_pixel(args):
    plan = _plan(*args)
    total = np.zeros((plan.padded_height, plan.padded_width), np.float64)
    for win in plan.windows():
        w = blend_weights(win.rows.length, win.cols.length)
        assert (w > 0).all()
        total[win.rows.start : win.rows.stop, win.cols.start : win.cols.stop] += w
    assert (total > 0).all()


def test_last_window_is_shifted_inward_not_padded():
    plan = WindowPlan.build(700, 900, window=256, radius=20, align=16)
    assert plan.margin == 32 and plan.core == 192
    cols = plan.spans(plan.padded_width)
    assert cols[-1].start == 912 - 256 and cols[-1].stop == 912 and plan.padded_width == 912
    assert [s.core_start for s in cols] == list(range(0, 912, 192))


def test_hann_taper_is_symmetric_and_never_zero():
    w = hann_weights(8)
    np.testing.assert_allclose(w, w[::-1])
    assert w.min() > 0 and w.max() <= 1


def test_a_window_without_core_is_refused():
    with pytest.raises(ValueError, match="leaves no core"):
        WindowPlan.build(100, 100, window=64, radius=32, align=1)
