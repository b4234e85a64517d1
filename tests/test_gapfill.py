"""Gap filling against a per-pixel reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudclear.gapfill import PixelStatus, gapfill, gapfill_raw


def _one_pixel(values, clear, times, target):
    """Plain-Python reference: nearest clear before / after, linear in time."""
    before = [i for i in range(len(times)) if clear[i] and times[i] <= target]
    after = [i for i in range(len(times)) if clear[i] and times[i] >= target]
    if not before and not after:
        return None, PixelStatus.NODATA
    if before and after:
        b, a = before[-1], after[0]
        if times[a] == times[b]:
            status = PixelStatus.OBSERVED if times[b] == target else PixelStatus.RECONSTRUCTED
            return values[b], status
        f = (target - times[b]) / (times[a] - times[b])
        return values[b] + (values[a] - values[b]) * f, PixelStatus.RECONSTRUCTED
    return values[(before or after)[-1 if before else 0]], PixelStatus.RECONSTRUCTED


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(0, 2**31),
    st.floats(-5, 60),
)
def test_matches_per_pixel_reference(n, seed, target):
    rng = np.random.default_rng(seed)
    times = np.sort(rng.choice(np.arange(0, 55, 5), size=n, replace=False)).astype(float)
    stack = rng.random((n, 3, 5, 6), dtype=np.float32)
    clear = rng.random((n, 5, 6)) < 0.5
    out, status = gapfill(stack, clear, times, target)
    for r in range(5):
        for c in range(6):
            want, st_want = _one_pixel(stack[:, :, r, c], clear[:, r, c], times, target)
            assert status[r, c] == st_want
            if want is None:
                assert (out[:, r, c] == 0).all()
            else:
                np.testing.assert_allclose(out[:, r, c], want, rtol=1e-5, atol=1e-6)


def test_linear_in_time_between_two_clear_dates():
    stack = np.stack([np.full((1, 2, 2), 100.0), np.full((1, 2, 2), 300.0)]).astype(np.float32)
    clear = np.ones((2, 2, 2), bool)
    out, status = gapfill(stack, clear, [0.0, 20.0], 5.0)
    np.testing.assert_allclose(out, 150.0)
    assert (status == PixelStatus.RECONSTRUCTED).all()


def test_clear_target_date_is_kept_as_observed():
    stack = np.stack([np.full((1, 1, 1), v) for v in (1.0, 2.0, 3.0)]).astype(np.float32)
    out, status = gapfill(stack, np.ones((3, 1, 1), bool), [0.0, 10.0, 20.0], 10.0)
    assert out[0, 0, 0] == 2.0 and status[0, 0] == PixelStatus.OBSERVED


def test_mismatched_shapes_and_unsorted_times_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        gapfill(np.zeros((2, 1, 2, 2)), np.ones((3, 2, 2), bool), [0, 1], 0.5)
    with pytest.raises(ValueError, match="ascending"):
        gapfill(np.zeros((2, 1, 2, 2)), np.ones((2, 2, 2), bool), [1, 0], 0.5)


# -- gapfill_raw: raw values, per-acquisition scales, the date's own scene kept -------------------


def _to_physical(raw, scale, offset):
    from cloudclear.scenes.reader import to_physical

    return to_physical(raw, scale, offset)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(0, 2**31), st.booleans())
def test_raw_values_give_the_converted_stack_s_result_bit_for_bit(n, seed, shared):
    """Gathering raw DN and converting once equals converting every acquisition first, whether the
    acquisitions share one scale and offset (raw gather) or not (converted gather)."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.choice(np.arange(-30, 31, 5), size=n, replace=False)).astype(float)
    raw = [rng.integers(0, 12000, (4, 9, 11), dtype=np.uint16) for _ in range(n)]
    clear = [rng.random((9, 11)) < 0.5 for _ in range(n)]
    if shared:
        scales, offsets = [1e-4] * n, [(-0.1, -0.1, 0.0, -0.1)] * n
    else:
        scales = [float(rng.choice([1e-4, 2.75e-5])) for _ in range(n)]
        offsets = [tuple(float(v) for v in rng.choice([0.0, -0.1], size=4)) for _ in range(n)]
    stack = np.stack([_to_physical(r, s, o) for r, s, o in zip(raw, scales, offsets, strict=True)])
    want, want_status = gapfill(stack, np.stack(clear), times, 0.0)
    got, got_status = gapfill_raw(raw, clear, times, 0.0, scales, offsets)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got_status, want_status)
    assert np.array_equal(got, want)  # bit for bit, not within a tolerance


def test_the_kept_scene_wins_over_another_clear_scene_of_the_same_time():
    """Two acquisitions at the target time, both clear: ``keep`` says which one is the date's own."""
    a = np.full((1, 2, 2), 100, np.uint16)
    b = np.full((1, 2, 2), 300, np.uint16)
    clear = [np.ones((2, 2), bool), np.ones((2, 2), bool)]
    for keep, want in ((0, 100.0), (1, 300.0)):
        out, status = gapfill_raw([a, b], clear, [0.0, 0.0], 0.0, keep=keep)
        assert (out == want).all() and (status == PixelStatus.OBSERVED).all()
    with pytest.raises(ValueError, match="keep"):
        gapfill_raw([a, b], clear, [0.0, 5.0], 0.0, keep=1)


def test_many_acquisitions_use_wide_indexes():
    """From 255 acquisitions on, the per-pixel indexes are not uint8 any more: still the reference."""
    rng = np.random.default_rng(3)
    n = 300
    times = np.arange(n, dtype=float) - 150
    raw = [rng.integers(1, 9000, (2, 3, 4), dtype=np.uint16) for _ in range(n)]
    clear = [rng.random((3, 4)) < 0.02 for _ in range(n)]
    stack = np.stack(raw).astype(np.float32)
    out, status = gapfill_raw(raw, clear, times, 0.5)
    for r in range(3):
        for c in range(4):
            want, st_want = _one_pixel(stack[:, :, r, c], [m[r, c] for m in clear], times, 0.5)
            assert status[r, c] == st_want
            if want is not None:
                np.testing.assert_allclose(out[:, r, c], want, rtol=1e-6)
