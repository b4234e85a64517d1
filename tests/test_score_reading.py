"""The score's strip reading: buffers reused between strips, validity in the raw type, mask classes
by table lookup, and the garbage collector left as the caller had it."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from conftest import write_raster

from cloudclear import masks
from cloudclear.masks import MaskClass
from cloudclear.metrics import ScoreOptions, score
from cloudclear.metrics.pairs import Pair, open_pair
from cloudclear.metrics.reading import valid
from cloudclear.metrics.strips import _no_collection


@pytest.fixture
def pair(tmp_path, rng):
    ref = rng.integers(1, 9000, size=(4, 70, 90)).astype(np.uint16)
    pred = (ref.astype(np.int32) + rng.integers(-300, 300, size=ref.shape)).clip(1, 9999).astype(np.uint16)
    return write_raster(tmp_path / "pred.tif", pred, nodata=0), write_raster(tmp_path / "ref.tif", ref, nodata=0)


def test_strips_read_into_a_slot_reuse_its_memory_and_equal_a_fresh_read(pair):
    opened = open_pair(Pair(str(pair[0]), str(pair[1])), ScoreOptions(block_rows=16), None)
    try:
        scorer = opened.scorer
        fresh = [scorer.read_strip(r, 20) for r in (0, 20, 40)]
        first = scorer.read_strip(0, 20, slot=1)  # allocates the slot's buffer
        again = [scorer.read_strip(r, 20, slot=1) for r in (0, 20, 40)]
        assert np.shares_memory(again[0].pred, again[2].pred)  # the same memory, strip after strip
        assert not np.shares_memory(again[0].pred, scorer.read_strip(0, 20, slot=0).pred)  # slots apart
        np.testing.assert_array_equal(first.pred, fresh[0].pred)
        np.testing.assert_array_equal(again[2].pred, fresh[2].pred)
        np.testing.assert_array_equal(again[2].ref, fresh[2].ref)
        np.testing.assert_array_equal(again[2].selected, fresh[2].selected)
    finally:
        opened.close()


def test_many_strips_through_the_slots_score_as_one_strip(pair):
    # 70 rows in strips of 3: every slot is reused many times while strips are read ahead.
    many = score(str(pair[0]), str(pair[1]), options=ScoreOptions(block_rows=3))
    one = score(str(pair[0]), str(pair[1]), options=ScoreOptions(block_rows=512))
    assert many.n_pixels == one.n_pixels == 70 * 90
    assert many.mae == pytest.approx(one.mae, rel=1e-12)
    assert many.rmse == pytest.approx(one.rmse, rel=1e-12)
    assert many.sam == pytest.approx(one.sam, rel=1e-12)
    assert many.ssim == pytest.approx(one.ssim, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_validity_of_integers_compares_in_their_type(rng, dtype):
    raw = rng.integers(0, 50, size=(3, 40, 30)).astype(dtype)
    raw[:, 5, 5] = 0  # every band nodata: invalid
    raw[0, 6, 6] = 0  # one band only: still valid
    want = ~(raw.astype(np.float64) == 0.0).all(axis=0)
    np.testing.assert_array_equal(valid(raw, 0.0), want)
    assert not valid(raw, 0.0)[5, 5] and valid(raw, 0.0)[6, 6]
    # A nodata no value of the type can hold (a fraction, out of range) marks nothing.
    for nodata in (0.5, -70000.0, 1e6):
        assert valid(raw, nodata).all()


def test_validity_of_floats_counts_nan_in_any_band_and_nodata_in_all(rng):
    raw = rng.random((2, 10, 10)).astype(np.float32)
    raw[1, 2, 2] = np.nan
    raw[:, 3, 3] = -1.0
    raw[0, 4, 4] = -1.0
    ok = valid(raw, -1.0)
    assert not ok[2, 2] and not ok[3, 3] and ok[4, 4]
    assert int((~ok).sum()) == 2
    assert valid(raw, float("nan")).sum() == 99  # NaN nodata: only the NaN pixel


def test_class_membership_by_lookup_equals_isin(rng):
    classes = rng.integers(0, 8, size=(50, 60)).astype(np.uint8)
    for members in (masks.OBSCURED, masks.CLEAR_CLASSES, (MaskClass.NODATA, MaskClass.CLOUD), ()):
        want = np.isin(classes, members)
        np.testing.assert_array_equal(masks.is_member(classes, tuple(members)), want)
        np.testing.assert_array_equal(masks.is_member(classes.astype(np.int64), tuple(members)), want)
    np.testing.assert_array_equal(masks.is_clear(classes), np.isin(classes, masks.CLEAR_CLASSES))
    np.testing.assert_array_equal(masks.is_obscured(classes), np.isin(classes, masks.OBSCURED))


def test_the_garbage_collector_is_left_as_the_caller_had_it(pair):
    assert gc.isenabled()
    score(str(pair[0]), str(pair[1]), options=ScoreOptions(block_rows=16))
    assert gc.isenabled()
    gc.disable()
    try:
        with _no_collection():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the caller had it off: still off
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), _no_collection():
        raise RuntimeError("boom")
    assert gc.isenabled()  # restored after an error too


def test_what_the_paused_loop_made_goes_to_the_oldest_generation_unfrozen():
    """Objects made while collection is paused are moved to the oldest generation (no collection
    walks them at the end of the loop), and nothing stays frozen."""
    frozen = gc.get_freeze_count()
    with _no_collection():
        kept = [[] for _ in range(1000)]
        assert gc.get_count()[0] >= 900
    assert gc.get_count()[0] < 100 and gc.get_freeze_count() == frozen
    assert any(o is kept for o in gc.get_referrers(kept[0]))


@pytest.mark.parametrize("native_on", ["1", "0"], ids=["kernel", "numpy-torch"])
def test_tile_buffers_made_under_inference_mode_serve_outside_it(rng, monkeypatch, native_on):
    # Training scores patches under torch.inference_mode, then again outside it, on one thread.
    import torch

    from cloudclear.metrics import native
    from cloudclear.metrics.conventions import SSIM_WINDOWS
    from cloudclear.metrics.maths import ssim_sums

    monkeypatch.setenv("CLOUDCLEAR_NATIVE", native_on)
    native.library.cache_clear()
    try:
        win = SSIM_WINDOWS["gaussian"]
        x = rng.random((2, 40, 50))
        y = x + rng.normal(0, 0.01, size=x.shape)
        core = (slice(5, 35), slice(5, 45))
        sel = np.ones((30, 40), bool)
        with torch.inference_mode():
            inside = ssim_sums(x, y, core, sel, win, 1.0)
        outside = ssim_sums(x, y, core, sel, win, 1.0)
        np.testing.assert_array_equal(inside, outside)
    finally:
        native.library.cache_clear()
