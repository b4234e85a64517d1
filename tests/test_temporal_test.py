"""The temporal test (cloudclear.detect.temporal.temporal_test) on small arrays, and its policy field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cloudclear.detect.temporal import TEMPORAL_BLUE_ADD, TEMPORAL_BLUE_FACTOR, temporal_test
from cloudclear.errors import MaskError
from cloudclear.masks import DEFAULT_POLICY, STRICT, ClearPolicy


def series(blue: list[float], nir: list[float] | None = None, clear: list[bool] | None = None):
    """One pixel over dates, as (dates, 1, 1) arrays."""
    b = np.array(blue, np.float32).reshape(-1, 1, 1)
    n = None if nir is None else np.array(nir, np.float32).reshape(-1, 1, 1)
    c = np.ones(b.shape, bool) if clear is None else np.array(clear, bool).reshape(-1, 1, 1)
    return b, c, n


def test_hazy_pixel_is_cloud_clear_pixels_are_kept():
    blue, clear, nir = series([0.03, 0.032, 0.10, 0.029, 0.031], [0.3, 0.31, 0.33, 0.3, 0.29])
    f = temporal_test(blue, clear, nir)
    assert f.cloud[:, 0, 0].tolist() == [False, False, True, False, False]
    assert not f.shadow.any()
    assert f.obscured[:, 0, 0].tolist() == [False, False, True, False, False]


def test_thresholds_are_both_needed():
    # +0.05 on a bright surface (0.30): above the absolute step, below the factor -> kept.
    blue, clear, _ = series([0.30, 0.31, 0.35, 0.30])
    assert not temporal_test(blue, clear).cloud.any()
    # x2 on a dark surface but only +0.01: below the absolute step -> kept.
    blue, clear, _ = series([0.01, 0.011, 0.02, 0.01])
    assert not temporal_test(blue, clear).cloud.any()
    # Just above both.
    med = 0.05
    hazy = max(med + TEMPORAL_BLUE_ADD, med * TEMPORAL_BLUE_FACTOR) + 0.001
    blue, clear, _ = series([med, med, hazy, med])
    assert temporal_test(blue, clear).cloud[:, 0, 0].tolist() == [False, False, True, False]


def test_fewer_than_two_other_clear_dates_leaves_the_mask():
    # Only one other date clear where the hazy one is: nothing flagged.
    blue, clear, nir = series([0.03, 0.5, 0.12, 0.5], [0.3, 0.5, 0.3, 0.5], [True, False, True, False])
    f = temporal_test(blue, clear, nir)
    assert not f.obscured.any()
    # Two dates in all: never enough.
    blue, clear, _ = series([0.03, 0.2])
    assert not temporal_test(blue, clear).obscured.any()


def test_obscured_dates_do_not_count_and_are_never_flagged():
    # The cloudy (not clear) date 1 is bright: it must not raise the median nor be flagged again.
    blue, clear, _ = series([0.03, 0.6, 0.03, 0.031, 0.10], clear=[True, False, True, True, True])
    f = temporal_test(blue, clear)
    assert f.cloud[:, 0, 0].tolist() == [False, False, False, False, True]
    assert not (f.obscured & ~clear).any()


def test_shadow_is_much_darker_in_nir_and_not_brighter_in_blue():
    blue, clear, nir = series([0.03, 0.031, 0.02, 0.03], [0.35, 0.36, 0.12, 0.34])
    f = temporal_test(blue, clear, nir)
    assert f.shadow[:, 0, 0].tolist() == [False, False, True, False]
    assert not f.cloud.any()
    # The same NIR drop with a brighter blue (a harvest: soil shows) is not shadow.
    blue, clear, nir = series([0.03, 0.031, 0.05, 0.03], [0.35, 0.36, 0.12, 0.34])
    assert not temporal_test(blue, clear, nir).shadow.any()
    # A small NIR drop is not shadow either.
    blue, clear, nir = series([0.03, 0.031, 0.02, 0.03], [0.35, 0.36, 0.30, 0.34])
    assert not temporal_test(blue, clear, nir).shadow.any()


def test_snow_with_no_snowy_neighbour_is_cloud():
    blue, clear, _ = series([0.03, 0.03, 0.03, 0.03])
    snow = np.array([False, True, False, False]).reshape(-1, 1, 1)
    f = temporal_test(blue, clear, None, snow)
    assert f.cloud[:, 0, 0].tolist() == [False, True, False, False]
    # Snow with a snowy neighbour stays (real snow lasts).
    blue, clear, _ = series([0.7, 0.72, 0.03, 0.03])
    snow = np.array([True, True, False, False]).reshape(-1, 1, 1)
    assert not temporal_test(blue, clear, None, snow).cloud.any()


def test_two_groups_of_dates_flag_nothing():
    # A river's level: three dates dark, three bright. Each group looks unlike the other; the test
    # cannot tell which shows the surface, and leaves the mask's decision.
    blue, clear, nir = series([0.08, 0.15, 0.09, 0.14, 0.07, 0.16], [0.02, 0.1, 0.02, 0.1, 0.04, 0.11])
    assert not temporal_test(blue, clear, nir).obscured.any()


def test_shapes_pixels_apart_and_nan():
    rng = np.random.default_rng(0)
    blue = rng.uniform(0.02, 0.04, (5, 8, 9)).astype(np.float32)
    blue[2, 3, 4] = 0.2
    blue[4, 0, 0] = np.nan  # not a value: not tested, not counted
    clear = np.ones(blue.shape, bool)
    f = temporal_test(blue, clear)
    assert f.cloud.shape == blue.shape and f.cloud.sum() == 1 and f.cloud[2, 3, 4]
    with pytest.raises(ValueError, match="same shape"):
        temporal_test(blue, clear[:, :4])


def test_policy_field_default_on_with_a_window_and_described():
    assert DEFAULT_POLICY.temporal is True and DEFAULT_POLICY.temporal_days == 20 and STRICT.temporal is True
    assert "temporal test (20 d)" in DEFAULT_POLICY.describe()
    every = dataclasses.replace(DEFAULT_POLICY, temporal_days=0)
    assert not every.is_default and "temporal test (all dates)" in every.describe()
    assert "temporal" not in dataclasses.replace(DEFAULT_POLICY, temporal=False).describe()
    with pytest.raises(MaskError, match="temporal must be true or false"):
        ClearPolicy(temporal="yes")  # type: ignore[arg-type]
    with pytest.raises(MaskError, match="temporal window must be 0..366 days"):
        ClearPolicy(temporal_days=400)


# -- the window in time ------------------------------------------------------------------------


def random_series(n: int, seed: int = 0, shape: tuple[int, int] = (6, 7)):
    """``n`` dates of blue, NIR, clear and snow with haze, shadow and snow scattered in them."""
    rng = np.random.default_rng(seed)
    blue = rng.uniform(0.02, 0.05, (n, *shape)).astype(np.float32)
    nir = rng.uniform(0.25, 0.35, (n, *shape)).astype(np.float32)
    hazy = rng.random((n, *shape)) < 0.12
    blue[hazy] += 0.1
    dark = rng.random((n, *shape)) < 0.08
    nir[dark] *= 0.3
    blue[dark] = 0.015
    clear = rng.random((n, *shape)) > 0.15
    snow = (rng.random((n, *shape)) < 0.05) & clear
    return blue, clear, nir, snow


def test_window_holding_every_date_equals_the_unwindowed_test():
    blue, clear, nir, snow = random_series(7)
    days = [0.0, 5.0, 10.2, 14.9, 20.0, 24.8, 30.0]
    whole = temporal_test(blue, clear, nir, snow)
    assert whole.obscured.any()
    for window in (30, 40, 366):
        got = temporal_test(blue, clear, nir, snow, days=days, window_days=window)
        np.testing.assert_array_equal(got.cloud, whole.cloud)
        np.testing.assert_array_equal(got.shadow, whole.shadow)
    # No days, or a window of 0: every other date, whatever the days say.
    for kwargs in ({"days": None, "window_days": 5}, {"days": days, "window_days": 0}):
        got = temporal_test(blue, clear, nir, snow, **kwargs)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got.obscured, whole.obscured)


def test_each_date_is_decided_on_its_window_alone():
    blue, clear, nir, snow = random_series(9, seed=3)
    days = np.array([0, 3, 9, 15, 21, 30, 34, 52, 60], float)
    got = temporal_test(blue, clear, nir, snow, days=days, window_days=10)
    for i in range(len(days)):
        near = np.flatnonzero(np.abs(days - days[i]) <= 10)
        alone = temporal_test(blue[near], clear[near], nir[near], snow[near])
        k = int(np.flatnonzero(near == i)[0])
        np.testing.assert_array_equal(got.cloud[i], alone.cloud[k])
        np.testing.assert_array_equal(got.shadow[i], alone.shadow[k])


def test_a_date_outside_the_window_does_not_count():
    # Date 2 is hazy against dates 0, 1 and 3 (within 20 days); dates 4..6, 200 days later, are as
    # bright as the haze (a different season): with every date, the median of the others rises and
    # the haze is kept; windowed, those dates do not count and it is flagged.
    blue, clear, _ = series([0.03, 0.031, 0.10, 0.029, 0.11, 0.12, 0.115])
    days = [0, 5, 10, 15, 210, 215, 220]
    assert not temporal_test(blue, clear).cloud[2].any()
    win = temporal_test(blue, clear, days=days, window_days=20)
    assert win.cloud[:, 0, 0].tolist() == [False, False, True, False, False, False, False]
    # Far dates changed at will do not change the near dates' decisions.
    blue2 = blue.copy()
    blue2[4:] = [[[0.5]], [[0.01]], [[0.3]]]
    np.testing.assert_array_equal(temporal_test(blue2, clear, days=days, window_days=20).cloud[:4], win.cloud[:4])
    # Too few clear dates in the window: the mask stands, however many dates lie outside it.
    few = temporal_test(blue, clear, days=[0, 5, 10, 50, 210, 215, 220], window_days=6)
    assert not few.cloud[:4].any()


def test_snow_needs_a_snowy_date_in_the_window():
    blue, clear, _ = series([0.03, 0.03, 0.03, 0.03, 0.03, 0.7])
    snow = np.array([False, True, False, False, False, True]).reshape(-1, 1, 1)
    # Every date: date 1 has a snowy other date (date 5) and stays snow.
    assert not temporal_test(blue, clear, None, snow).cloud[1].any()
    # Date 5 is 100 days later: within 20 days, date 1's snow has no snowy neighbour -> cloud.
    days = [0, 5, 10, 15, 20, 105]
    assert temporal_test(blue, clear, None, snow, days=days, window_days=20).cloud[1, 0, 0]


def test_the_ambiguity_rule_counts_the_window_only():
    # Within the window of date 0 (dates 0..3): one hazy date among four, flagged. Dates 4..9, far
    # away, are all as bright as it: over every date, more than half would differ and the test
    # would flag nothing at date 3's pixel... windowed, they do not count.
    blue, clear, _ = series([0.03, 0.031, 0.029, 0.10, 0.10, 0.11, 0.10, 0.12, 0.10, 0.11])
    days = [0, 4, 8, 12, 200, 204, 208, 212, 216, 220]
    assert not temporal_test(blue, clear).cloud[:4].any()
    windowed = temporal_test(blue, clear, days=days, window_days=15).cloud[:, 0, 0]
    assert windowed.tolist() == [i == 3 for i in range(10)]
    # Two groups within one window (two dates dark, three bright): nothing flagged there; over
    # every date, the far dark dates make the bright ones a minority, and they are flagged.
    blue, clear, _ = series([0.03, 0.10, 0.031, 0.11, 0.105, 0.03, 0.03, 0.03])
    days = [0, 2, 4, 6, 8, 300, 302, 304]
    assert not temporal_test(blue, clear, days=days, window_days=10).cloud[:5].any()
    assert temporal_test(blue, clear).cloud[:5, 0, 0].tolist() == [False, True, False, True, True]


def test_window_days_within_half_a_day_count_and_days_are_checked():
    blue, clear, _ = series([0.03, 0.031, 0.10, 0.029])
    # 20.01 days apart (an overpass a quarter of an hour later) is within a 20-day window.
    days = [0.0, 10.0, 20.01, 30.0]
    assert temporal_test(blue, clear, days=days, window_days=20).cloud[2, 0, 0]
    with pytest.raises(ValueError, match="one number per date"):
        temporal_test(blue, clear, days=[0.0, 1.0], window_days=20)


def test_infer_compares_each_input_with_the_inputs_within_the_policy_window():
    """``inference.reading.temporal_flags`` passes the sources' acquisition times and the policy's
    ``temporal_days``: a date far outside the window of the hazy one does not hide its haze."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from cloudclear.inference.reading import Strip, temporal_flags

    blue = [0.03, 0.031, 0.10, 0.029, 0.11, 0.12, 0.115]
    days = [0, 5, 10, 15, 210, 215, 220]
    t0 = datetime(2021, 4, 1, 10, 30, tzinfo=timezone.utc)

    def flags(window: int) -> list[bool]:
        policy = ClearPolicy(temporal_days=window)
        sources, strips = [], []
        for i, (b, d) in enumerate(zip(blue, days, strict=True)):
            # A different minute each date, as real overpasses have.
            when = t0 + timedelta(days=d, minutes=3 * i)
            acq = SimpleNamespace(
                sensor="S2", bands=("B02", "B08"), scale=1e-4, offset=0.0, units="reflectance", datetime=when
            )
            sources.append(SimpleNamespace(acq=acq, policy=policy))
            values = np.array([[[round(b * 1e4)]], [[3000]]], np.uint16)
            ones = np.ones((1, 1), bool)
            strips.append(Strip(values, ones, ones.copy()))
        got = temporal_flags(sources, strips)  # type: ignore[arg-type]
        return [bool(f[0, 0]) for f in got if f is not None]

    assert flags(20) == [i == 2 for i in range(7)]
    assert not flags(0)[2]  # every date: the far bright dates raise the median


# -- the vectorised test against a per-pixel reference, on floats and on raw values ---------------


def _median(values: list[np.float32]) -> np.float32:
    """The median as the test takes it: the mean of the two middle values, in float32."""
    v = sorted(values)
    k = len(v)
    return np.float32(0.5) * (v[(k - 1) // 2] + v[k // 2])


def _reference_pixel(blue, clear, nir, snow):
    """The temporal test of one pixel, written out from its docstring, date by date."""
    n = len(blue)
    ok = [bool(clear[i]) and np.isfinite(blue[i]) for i in range(n)]
    sn = [bool(snow[i]) and ok[i] for i in range(n)] if snow is not None else [False] * n
    cloud = [False] * n
    for i in range(n):
        others = [blue[j] for j in range(n) if j != i and ok[j]]
        k = len(others)
        if snow is not None and sn[i]:
            cloud[i] = k >= 1 and not any(sn[j] for j in range(n) if j != i)
            continue
        if ok[i] and k >= 2:
            med = _median(others)
            cloud[i] = bool(blue[i] > med + np.float32(TEMPORAL_BLUE_ADD)) and bool(
                blue[i] > np.float32(TEMPORAL_BLUE_FACTOR) * med
            )

    def unambiguous(flags, base):
        f, t = sum(flags), sum(base)
        return [False] * n if (2 * f > t or (2 * f == t and f >= 2)) else flags

    cloud = unambiguous(cloud, ok)
    shadow = [False] * n
    if nir is not None:
        still = [ok[i] and not cloud[i] for i in range(n)]
        nok = [still[i] and np.isfinite(nir[i]) for i in range(n)]
        for i in range(n):
            others_n = [nir[j] for j in range(n) if j != i and nok[j]]
            if not nok[i] or len(others_n) < 1:
                continue
            med_n = _median(others_n)
            others_b = [blue[j] for j in range(n) if j != i and still[j]]
            med_b = _median(others_b) if others_b else np.float32(np.nan)
            shadow[i] = (
                bool(nir[i] < np.float32(0.6) * med_n)
                and bool(nir[i] < med_n - np.float32(0.04))
                and bool(blue[i] <= med_b)
            )
        shadow = unambiguous(shadow, still)
    return cloud, shadow


def _series_with_events(rng, n, pixels):
    """Raw uint16 blue and NIR (DN = reflectance x 10000 + 1000, as L2A with its offset) of ``n``
    dates whose pixels are now and then hazy or shadowed, around both thresholds of each test."""
    # each pixel's surface, a few % apart from date to date (reflectance x 10000)
    blue = rng.integers(200, 900, pixels) * rng.uniform(0.95, 1.05, (n, pixels))
    nir = rng.integers(300, 3500, pixels) * rng.uniform(0.95, 1.05, (n, pixels))  # water to crops
    haze = rng.random((n, pixels)) < 0.15
    blue[haze] *= rng.uniform(1.15, 2.2, haze.sum())
    shade = rng.random((n, pixels)) < 0.15
    nir[shade] /= rng.uniform(1.2, 3.0, shade.sum())
    return (blue + 1000).astype(np.uint16), (nir + 1000).astype(np.uint16)


@pytest.mark.parametrize("dates", [3, 4, 6, 9])
@pytest.mark.parametrize("with_snow", [False, True])
def test_flags_equal_a_per_pixel_reference_on_floats_and_on_raw_values(dates, with_snow):
    from cloudclear.detect.temporal import RawBand

    rng = np.random.default_rng(dates * 10 + with_snow)
    px = 400
    blue_raw, nir_raw = _series_with_events(rng, dates, px)
    clear = rng.random((dates, px)) < 0.8
    snow = (rng.random((dates, px)) < 0.1) if with_snow else None
    scale, offset = 1e-4, -0.1
    blue = blue_raw.astype(np.float32) * np.float32(scale) + np.float32(offset)
    nir = nir_raw.astype(np.float32) * np.float32(scale) + np.float32(offset)
    floats = temporal_test(blue, clear, nir, snow)
    raw = temporal_test(
        RawBand(tuple(blue_raw), (scale,) * dates, (offset,) * dates),
        clear,
        RawBand(tuple(nir_raw), (scale,) * dates, (offset,) * dates),
        snow,
    )
    np.testing.assert_array_equal(raw.cloud, floats.cloud)
    np.testing.assert_array_equal(raw.shadow, floats.shadow)
    assert floats.cloud.any() and floats.shadow.any()  # the series does exercise both passes
    for p in range(px):
        cloud, shadow = _reference_pixel(blue[:, p], clear[:, p], nir[:, p], None if snow is None else snow[:, p])
        assert floats.cloud[:, p].tolist() == cloud, p
        assert floats.shadow[:, p].tolist() == shadow, p


def test_raw_values_with_a_scale_per_date_and_signed_values_equal_their_floats():
    """Dates of different scales (no shared scale: converted first) and signed integers (masked
    extremes) give the flags of the converted floats."""
    from cloudclear.detect.temporal import RawBand

    rng = np.random.default_rng(5)
    blue_raw, nir_raw = _series_with_events(rng, 5, 600)
    clear = rng.random((5, 600)) < 0.85
    scales = (1e-4, 1e-4, 2e-4, 1e-4, 1e-4)
    b = blue_raw.copy()
    b[2] //= 2  # the third date stored at half the scale
    n = nir_raw.copy()
    n[2] //= 2
    for blue_in, nir_in in ((b, n), (b.astype(np.int16), n.astype(np.int16))):
        raw = temporal_test(
            RawBand(tuple(blue_in), scales, (0.0,) * 5), clear, RawBand(tuple(nir_in), scales, (0.0,) * 5)
        )
        fb = np.stack([v.astype(np.float32) * np.float32(s) for v, s in zip(blue_in, scales, strict=True)])
        fn = np.stack([v.astype(np.float32) * np.float32(s) for v, s in zip(nir_in, scales, strict=True)])
        floats = temporal_test(fb, clear, fn)
        np.testing.assert_array_equal(raw.cloud, floats.cloud)
        np.testing.assert_array_equal(raw.shadow, floats.shadow)
        assert floats.obscured.any()
