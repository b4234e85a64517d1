"""The temporal test: pixels the masks call clear that the other dates of the same pixels show to
be cloud, haze or shadow (the multi-temporal tests of MAJA, against a median of dates).

A pure function on arrays of dates (:func:`temporal_test`), optionally windowed in time, and
:func:`temporal_classes`, which turns one date's flags into mask classes. The clear policy's
``temporal`` and ``temporal_days`` (:class:`cloudclear.masks.ClearPolicy`) switch it on where
several dates of the same pixels are read together: ``infer``'s inputs
(:mod:`cloudclear.inference.reading`) and ``sample``'s S2 slots against the scenes around them
(:mod:`cloudclear.sampling.patches`); ``bench/decision.py`` scores it on real labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cloudclear.masks import MaskClass, dilate_disk, is_clear

#: Temporal test, haze and cloud: a clear pixel is cloud when its blue (B02) reflectance exceeds the
#: median of the other dates clear there by more than this (absolute reflectance)...
TEMPORAL_BLUE_ADD = 0.03
#: ... and is more than this factor times that median. Clear land varies by about 0.01-0.02 in
#: blue from date to date (view angle, aerosol correction); MAJA's multi-temporal cloud test
#: (Hagolle et al. 2010) flags a blue increase above 0.03 over the last clear date. Over dark
#: forest (blue 0.02) the haze at cloud edges adds 0.03 and more. The factor keeps bright
#: surfaces (bare soil, gravel, roofs), whose blue varies in proportion, from being flagged.
TEMPORAL_BLUE_FACTOR = 1.3
#: Temporal test, shadow: a clear pixel whose NIR (B08, else B8A) is below this factor of the other
#: dates' median...
TEMPORAL_NIR_FACTOR = 0.6
#: ... and below that median minus this (reflectance), and not brighter in blue than the blue
#: median: a shadow darkens every band, while a harvest or a mowing, which also drops NIR within
#: a few weeks, brightens the visible bands.
TEMPORAL_NIR_SUB = 0.04
#: Other dates clear at a pixel the test needs there; with fewer, the mask's decision stands.
TEMPORAL_MIN_OTHERS = 2
#: Other dates clear at a pixel the snow rule needs: one snow-free clear date near it is enough to
#: call a lone "snow" cloud (on worldcereal 31UDS, 2017-12-12 keeps a white "snow" patch in the
#: output otherwise, with only 2017-11-22 clear there within 20 days).
TEMPORAL_MIN_OTHERS_SNOW = 1
#: Other dates still clear at a pixel the shadow pass needs: one is enough, since the pass asks
#: for a darkening a surface change rarely gives (NIR below 0.6 x and 0.04 under the other
#: date's, blue not brighter). On worldcereal 31UDS, 2017-12-27 lies under the shadow of a cloud
#: outside its 640 m patch (NIR half that of the dates around it, Sen2Cor calls 37 % of it "dark
#: area", i.e. clear) with one clear date within 20 days: it was copied dark into 2017-12-12.
TEMPORAL_MIN_OTHERS_SHADOW = 1
#: Band names the temporal test reads as blue, in order of preference...
TEMPORAL_BLUE_BANDS = ("B02", "B2")
#: ... and as NIR (the shadow test).
TEMPORAL_NIR_BANDS = ("B08", "B8", "B8A")


@dataclass(frozen=True)
class TemporalFlags:
    """What :func:`temporal_test` removes, per date: (dates, rows, cols) bool arrays.

    Attributes:
        cloud: clear per the mask, but cloud or haze (much brighter in blue than the other dates,
            or snow with no snowy other date).
        shadow: clear per the mask, but much darker in NIR than the other dates (not cloud).
    """

    cloud: np.ndarray
    shadow: np.ndarray

    @property
    def obscured(self) -> np.ndarray:
        """(dates, rows, cols): cloud or shadow."""
        return self.cloud | self.shadow


#: Up to this many dates, :class:`_OthersMedian` sorts with a network of elementwise min / max
#: (numpy sorts a short axis slowly: a call per pixel); above, with one argsort.
_NETWORK_DATES = 12


class _OthersMedian:
    """Per date ``i``: the median over the *other* dates ``ok`` at each pixel, and how many there
    are, from one sort of all the dates (removing date ``i`` from the sorted values shifts the
    positions at and above its rank by one; equal values are interchangeable)."""

    def __init__(self, values: np.ndarray, ok: np.ndarray):
        self.ok = ok
        self.v = np.where(ok, values, np.inf).astype(np.float32)  # not ok: sorts last, never picked
        self.total = ok.sum(axis=0)
        n = self.v.shape[0]
        self.rank: np.ndarray | None = None
        if n <= _NETWORK_DATES:
            # Odd-even transposition sort: n rounds of compare-and-swap of neighbouring planes.
            planes = list(self.v)
            for r in range(n):
                for j in range(r % 2, n - 1, 2):
                    lo, hi = planes[j], planes[j + 1]
                    planes[j], planes[j + 1] = np.minimum(lo, hi), np.maximum(lo, hi)
            self.sorted = np.stack(planes)
        else:
            order = np.argsort(self.v, axis=0, kind="stable")
            self.sorted = np.take_along_axis(self.v, order, axis=0)
            self.rank = np.empty(order.shape, np.int32)
            np.put_along_axis(self.rank, order, np.arange(n, dtype=np.int32).reshape((n,) + (1,) * (order.ndim - 1)), 0)

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        k = self.total - self.ok[i]
        # Date i's place among the sorted values: the values below it (a not-ok date: all the ok ones).
        rank = (self.v < self.v[i]).sum(axis=0) if self.rank is None else self.rank[i]
        lo = np.clip((k - 1) // 2, 0, None)
        hi = k // 2
        top = self.v.shape[0] - 1
        lo = np.minimum(lo + (lo >= rank), top)[None]
        hi = np.minimum(hi + (hi >= rank), top)[None]
        med = 0.5 * (np.take_along_axis(self.sorted, lo, 0)[0] + np.take_along_axis(self.sorted, hi, 0)[0])
        return np.where(k > 0, med, np.nan).astype(np.float32), k


def temporal_test(
    blue: np.ndarray,
    clear: np.ndarray,
    nir: np.ndarray | None = None,
    snow: np.ndarray | None = None,
    days: Sequence[float] | np.ndarray | None = None,
    window_days: float = 0,
) -> TemporalFlags:
    """The temporal test: pixels the masks call clear that the other dates of the same pixel show
    to be cloud, haze or shadow (the multi-temporal tests of MAJA, against a median of dates).

    A pure function on arrays of dates of the same pixels (any spatial shape). For each date ``i``
    and pixel the mask calls clear there, with at least :data:`TEMPORAL_MIN_OTHERS` *other* dates
    clear at the pixel (else the mask's decision stands):

    - cloud or haze: blue > median + :data:`TEMPORAL_BLUE_ADD` and blue >
      :data:`TEMPORAL_BLUE_FACTOR` x median (median of blue over the other clear dates);
    - snow (``snow`` true): cloud when no other clear date is snowy there, else kept (the blue
      test does not apply to it: fresh snow is much brighter than the snow-free dates around it);
      this rule needs only :data:`TEMPORAL_MIN_OTHERS_SNOW` other clear date;
    - shadow, in a second pass over the dates the first pass left clear: NIR <
      :data:`TEMPORAL_NIR_FACTOR` x median and NIR < median - :data:`TEMPORAL_NIR_SUB` (median of
      NIR over the *other* dates still clear, at least :data:`TEMPORAL_MIN_OTHERS_SHADOW` of them), and
      blue not above their blue median. (In one pass, a bright cloud among three dates raised the
      NIR median so far that both clear dates beside it looked like shadow.)

    Within a pass every decision uses the dates as that pass starts (a date flagged in it still
    counts as clear for the others). Each pass removes a minority: where it would flag more than
    half of the dates clear at a pixel, or half with at least two on each side (a river whose
    level changes, a field mown: two groups of dates, each unlike the other), it cannot tell which
    shows the surface, and flags none there.

    With ``days`` and ``window_days`` > 0, date ``i`` is tested against the dates ``j`` with
    ``|days[j] - days[i]| <= window_days`` (:attr:`ClearPolicy.temporal_days`) only: the medians,
    the :data:`TEMPORAL_MIN_OTHERS` count, the snow rule and the ambiguity rule are all taken over
    that window (date ``i``'s flags are those of this test run on its window's dates alone). Day
    numbers may carry a time of day: differences within half a day of the window count as in it
    (two overpasses 20 days apart are 20 days apart whatever their minutes).

    Args:
        blue: (dates, ...) blue (B02) reflectance.
        clear: (dates, ...) bool: the masks' decision (valid and clear).
        nir: (dates, ...) NIR (B08 or B8A) reflectance, or None (no shadow test).
        snow: (dates, ...) bool: where the masks say snow, or None (no snow test).
        days: (dates,) each date's day number (e.g. days since an epoch, fractional), or None.
        window_days: the window in days; 0 (or no ``days``): every other date given.

    Returns:
        :class:`TemporalFlags`; every flagged pixel is clear in ``clear``.

    Raises:
        ValueError: the arrays' shapes differ, or ``days`` is not one number per date.
    """
    blue = np.asarray(blue, dtype=np.float32)
    clear = np.asarray(clear, dtype=bool)
    if blue.shape != clear.shape or (nir is not None and np.shape(nir) != clear.shape):
        raise ValueError("temporal_test: blue, clear and nir must have the same shape")
    if snow is not None and np.shape(snow) != clear.shape:
        raise ValueError("temporal_test: snow must have the shape of clear")
    if days is None or window_days <= 0:
        return _temporal_all(blue, clear, nir, snow)
    when = np.asarray(days, dtype=np.float64)
    if when.shape != clear.shape[:1]:
        raise ValueError(f"temporal_test: days must hold one number per date ({clear.shape[0]}), not {when.shape}")
    cloud = np.zeros(clear.shape, bool)
    shadow = np.zeros(clear.shape, bool)
    # Dates whose windows hold the same dates share one test (all of them, when every date lies
    # within the window of every other: then this is the unwindowed test exactly).
    tested: dict[tuple[int, ...], TemporalFlags] = {}
    for i in range(clear.shape[0]):
        near = tuple(int(j) for j in np.flatnonzero(np.abs(when - when[i]) <= window_days + 0.5))
        flags = tested.get(near)
        if flags is None:
            if len(near) == clear.shape[0]:
                flags = _temporal_all(blue, clear, nir, snow)
            else:
                idx = list(near)
                flags = _temporal_all(
                    blue[idx],
                    clear[idx],
                    None if nir is None else np.asarray(nir)[idx],
                    None if snow is None else np.asarray(snow)[idx],
                )
            tested[near] = flags
        k = near.index(i)
        cloud[i] = flags.cloud[k]
        shadow[i] = flags.shadow[k]
    return TemporalFlags(cloud, shadow)


def temporal_classes(
    classes: np.ndarray, cloud: np.ndarray, shadow: np.ndarray, buffer_px: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One date's classes with its :func:`temporal_test` flags made obscured: flagged cloud (grown
    by ``buffer_px``, a disk as the policy's buffer; the array's edges see only the flags inside
    it) becomes CLOUD and flagged shadow SHADOW (cloud over shadow), where the classes are clear.

    Args:
        classes: (rows, cols) MaskClass codes (left as they are).
        cloud: (rows, cols) bool, the date's :attr:`TemporalFlags.cloud`.
        shadow: (rows, cols) bool, its :attr:`TemporalFlags.shadow`.
        buffer_px: the policy's buffer.

    Returns:
        (the new uint8 classes, the pixels clear before and obscured now).
    """
    if buffer_px > 0:
        cloud = dilate_disk(cloud, buffer_px) if cloud.any() else cloud
        shadow = dilate_disk(shadow, buffer_px) if shadow.any() else shadow
    was = is_clear(classes)
    out = np.array(classes, dtype=np.uint8, copy=True)
    out[was & shadow & ~cloud] = MaskClass.SHADOW
    out[was & cloud] = MaskClass.CLOUD
    return out, was & (cloud | shadow)


def _temporal_all(
    blue: np.ndarray, clear: np.ndarray, nir: np.ndarray | None, snow: np.ndarray | None
) -> TemporalFlags:
    """:func:`temporal_test` of every date against all the others given.

    Each pixel is decided alone, so the test runs only on the pixels where a date can be flagged:
    blue over the dates clear there spans more than :data:`TEMPORAL_BLUE_ADD` (a hazy date is
    that far above a median of the others), NIR more than :data:`TEMPORAL_NIR_SUB` (shadow), or
    a date is snow; elsewhere nothing is flagged. Most pixels of most series are neither.
    """
    n = clear.shape[0]
    cloud = np.zeros(clear.shape, bool)
    shadow = np.zeros(clear.shape, bool)
    if n < 2:  # the date tested and at least one other (the snow and shadow rules need one)
        return TemporalFlags(cloud, shadow)
    blue2 = np.asarray(blue, dtype=np.float32).reshape(n, -1)
    clear2 = clear.reshape(n, -1) & np.isfinite(blue2)
    # 0.9: a margin over float rounding, so that no pixel the test would flag is left out.
    active = _spread(blue2, clear2) > 0.9 * TEMPORAL_BLUE_ADD
    nir2 = None if nir is None else np.asarray(nir, dtype=np.float32).reshape(n, -1)
    if nir2 is not None:
        active |= _spread(nir2, clear2 & np.isfinite(nir2)) > 0.9 * TEMPORAL_NIR_SUB
    snow2 = None if snow is None else np.asarray(snow, dtype=bool).reshape(n, -1)
    if snow2 is not None:
        active |= (snow2 & clear2).any(axis=0)
    idx = np.flatnonzero(active)
    if not len(idx):
        return TemporalFlags(cloud, shadow)
    sub = _temporal_pixels(
        blue2[:, idx], clear2[:, idx], None if nir2 is None else nir2[:, idx], None if snow2 is None else snow2[:, idx]
    )
    cloud.reshape(n, -1)[:, idx] = sub.cloud
    shadow.reshape(n, -1)[:, idx] = sub.shadow
    return TemporalFlags(cloud, shadow)


def _ambiguous(flags: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """(pixels,) where ``flags`` would remove more than half the dates ``clear`` there, or exactly
    half with at least two on each side (two groups of dates): the dates disagree too much to tell
    which of them shows the surface, and the masks stand. (One date flagged of two is not
    ambiguous: a lone "snow" beside one snow-free clear date.)"""
    flagged = flags.sum(axis=0)
    total = clear.sum(axis=0)
    return (2 * flagged > total) | ((2 * flagged == total) & (flagged >= 2))


def _spread(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(pixels,) max - min of ``values`` over the dates ``ok`` there (-inf where none is)."""
    return np.where(ok, values, -np.inf).max(axis=0) - np.where(ok, values, np.inf).min(axis=0)


def _temporal_pixels(
    blue: np.ndarray, clear: np.ndarray, nir: np.ndarray | None, snow: np.ndarray | None
) -> TemporalFlags:
    """:func:`_temporal_all` on (dates, pixels) arrays, every pixel tested."""
    n = clear.shape[0]
    cloud = np.zeros(clear.shape, bool)
    shadow = np.zeros(clear.shape, bool)
    if n < 2:  # the date tested and at least one other (the snow and shadow rules need one)
        return TemporalFlags(cloud, shadow)
    clear = clear & np.isfinite(blue)
    snow_b = None if snow is None else (np.asarray(snow, dtype=bool) & clear)
    snowy = None if snow_b is None else snow_b.sum(axis=0)
    blue_median = _OthersMedian(blue, clear)
    # Cloud and haze first, against the other dates the masks call clear.
    for i in range(n):
        med_b, k = blue_median(i)
        test = clear[i] & (k >= TEMPORAL_MIN_OTHERS)
        snow_test = None if snow_b is None else snow_b[i] & (k >= TEMPORAL_MIN_OTHERS_SNOW)
        if not test.any() and (snow_test is None or not snow_test.any()):
            continue
        with np.errstate(invalid="ignore"):
            b = blue[i]
            hazy = test & (b > med_b + TEMPORAL_BLUE_ADD) & (b > TEMPORAL_BLUE_FACTOR * med_b)
            if snow_b is not None and snowy is not None:
                # Snow is decided by its neighbours alone: cloud without a snowy one, else snow
                # (fresh snow is much brighter than the snow-free dates around it).
                others_snowy = snowy - snow_b[i] > 0
                assert snow_test is not None
                hazy = np.where(snow_b[i], snow_test & ~others_snowy, hazy)
            cloud[i] = hazy
    cloud &= ~_ambiguous(cloud, clear)
    # Then shadow, against the other dates still clear: a cloud the first pass found would
    # otherwise raise the NIR median and make every clear date beside it look like shadow (with
    # three dates, all three would be flagged and, by the ambiguity rule, none).
    if nir is not None:
        still = clear & ~cloud
        nir_f = np.asarray(nir, dtype=np.float32)
        nir_ok = still & np.isfinite(nir_f)
        blue_still = _OthersMedian(blue, still)
        nir_median = _OthersMedian(nir_f, nir_ok)
        for i in range(n):
            med_n, kn = nir_median(i)
            test = nir_ok[i] & (kn >= TEMPORAL_MIN_OTHERS_SHADOW)
            if not test.any():
                continue
            med_b, _ = blue_still(i)
            with np.errstate(invalid="ignore"):
                x = nir_f[i]
                dark = (x < TEMPORAL_NIR_FACTOR * med_n) & (x < med_n - TEMPORAL_NIR_SUB) & (blue[i] <= med_b)
            shadow[i] = test & dark
        shadow &= ~_ambiguous(shadow, still)
    return TemporalFlags(cloud, shadow)
