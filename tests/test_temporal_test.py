"""The temporal test (cloudclear.masks.temporal_test) on small arrays, and its policy field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cloudclear.errors import MaskError
from cloudclear.masks import (
    DEFAULT_POLICY,
    STRICT,
    TEMPORAL_BLUE_ADD,
    TEMPORAL_BLUE_FACTOR,
    ClearPolicy,
    temporal_test,
)


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


def test_policy_field_default_off_and_described():
    assert DEFAULT_POLICY.temporal is False and STRICT.temporal is False
    on = dataclasses.replace(DEFAULT_POLICY, temporal=True)
    assert not on.is_default and on.halo == 0
    assert on.describe() == "buffer 0 px, unclassified clear, snow clear, temporal test"
    assert "temporal" not in STRICT.describe()
    with pytest.raises(MaskError, match="temporal must be true or false"):
        ClearPolicy(temporal="yes")  # type: ignore[arg-type]
