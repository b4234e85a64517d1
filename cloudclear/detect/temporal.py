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
from cloudclear.scenes.reader import to_physical

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


@dataclass(frozen=True)
class RawBand:
    """One band of several dates as read, with each date's scale and offset to reflectance.

    :func:`temporal_test` takes one for ``blue`` and ``nir`` so that most pixels are never
    converted: the test looks at the pixels where the band's spread over the dates is wide
    enough to flag one, and finds them on the raw values when every date shares one scale and
    offset (``raw * scale + offset`` is monotonic, so the spread of the converted values is the
    converted maximum minus the converted minimum, exactly). Only those pixels are converted.
    A plain float array is a RawBand of scale 1 and offset 0.

    Attributes:
        planes: per date, the raw values (any shape, the same for every date; any real dtype).
        scale: per date, ``reflectance = raw * scale + offset`` (float32 arithmetic, as
            :func:`cloudclear.scenes.reader.to_physical`).
        offset: per date.
    """

    planes: tuple[np.ndarray, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @staticmethod
    def of(values: np.ndarray | RawBand) -> RawBand:
        """``values`` (dates, ...) in reflectance as a RawBand (itself when it is one)."""
        if isinstance(values, RawBand):
            return values
        v = np.asarray(values, dtype=np.float32)
        return RawBand(tuple(v), (1.0,) * v.shape[0], (0.0,) * v.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """(dates, ...), as the stacked array's."""
        return (len(self.planes), *self.planes[0].shape)

    def dates(self, idx: Sequence[int]) -> RawBand:
        """The dates ``idx`` only."""
        return RawBand(
            tuple(self.planes[i] for i in idx), tuple(self.scale[i] for i in idx), tuple(self.offset[i] for i in idx)
        )

    def _convert(self, i: int, raw: np.ndarray) -> np.ndarray:
        return to_physical(raw, self.scale[i], self.offset[i])

    def flat(self, i: int) -> np.ndarray:
        """Date ``i``'s raw values as one row (a view where they are contiguous)."""
        return self.planes[i].reshape(-1)

    def physical(self, idx: np.ndarray | None = None) -> np.ndarray:
        """(dates, pixels) float32 reflectance, of the flat pixel indexes ``idx`` (all: None)."""
        rows = [self.flat(i) if idx is None else self.flat(i)[idx] for i in range(len(self.planes))]
        return np.stack([self._convert(i, r) for i, r in enumerate(rows)])

    def finite(self, ok: np.ndarray) -> np.ndarray:
        """``ok`` (dates, pixels) and where the values are finite (integers always are)."""
        if all(np.issubdtype(p.dtype, np.integer) for p in self.planes):
            return ok
        return ok & np.isfinite(np.stack([self._convert(i, self.flat(i)) for i in range(len(self.planes))]))

    def extremes(self, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixels,) the least and the greatest reflectance over the dates ``ok`` (dates, pixels)
        there; where none is, the least exceeds the greatest."""
        dtype = self.planes[0].dtype
        shared = (  # unsigned raw values of one scale: extremes of the raw values, converted
            np.issubdtype(dtype, np.unsignedinteger)
            and all(p.dtype == dtype for p in self.planes)
            and len(set(self.scale)) == 1
            and len(set(self.offset)) == 1
            and self.scale[0] > 0
        )
        if not shared:
            phys = self.physical()
            hi = np.full(ok.shape[1:], -np.inf, np.float32)
            lo = np.full(ok.shape[1:], np.inf, np.float32)
            for v, m in zip(phys, ok, strict=True):
                np.maximum(hi, v, out=hi, where=m)
                np.minimum(lo, v, out=lo, where=m)
            return lo, hi
        hi_raw = np.zeros(ok.shape[1:], dtype)
        lo_raw = np.full(ok.shape[1:], np.iinfo(dtype).max, dtype)
        # A date not ok is 0 for the maximum (raw x 0/1) and all ones for the minimum (raw | 0/all
        # ones), in cache-sized runs of pixels (about 20x faster than masked ufuncs, where=).
        flats = [self.flat(i) for i in range(len(self.planes))]
        size = hi_raw.size
        run = _RUN_PIXELS
        tmp = np.empty(min(run, size), dtype)
        for a in range(0, size, run):
            b = min(a + run, size)
            h, lo_, t = hi_raw[a:b], lo_raw[a:b], tmp[: b - a]
            for v, m in zip(flats, ok, strict=True):
                m_raw = m[a:b].view(np.uint8).astype(dtype)
                np.multiply(v[a:b], m_raw, out=t)
                np.maximum(h, t, out=h)
                m_raw -= 1  # 1 -> 0, 0 -> all ones
                np.bitwise_or(v[a:b], m_raw, out=t)
                np.minimum(lo_, t, out=lo_)
        return self._convert(0, lo_raw), self._convert(0, hi_raw)


#: Pixels per run of the loops over dates that are kept in cache (64 Ki px: 128 KiB of uint16).
_RUN_PIXELS = 1 << 16

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
        n = self.v.shape[0]
        if n <= _DIRECT_DATES:
            return self._direct(i, k), k
        # Date i's place among the sorted values: the values below it (a not-ok date: all the ok ones).
        rank = (self.v < self.v[i]).sum(axis=0) if self.rank is None else self.rank[i]
        lo = np.clip((k - 1) // 2, 0, None)
        hi = k // 2
        top = self.v.shape[0] - 1
        lo = np.minimum(lo + (lo >= rank), top)[None]
        hi = np.minimum(hi + (hi >= rank), top)[None]
        med = 0.5 * (np.take_along_axis(self.sorted, lo, 0)[0] + np.take_along_axis(self.sorted, hi, 0)[0])
        return np.where(k > 0, med, np.nan).astype(np.float32), k

    def _direct(self, i: int, k: np.ndarray) -> np.ndarray:
        """The median of the other dates sorted on their own (a few elementwise min / max), then
        picked per count ``k``: cheaper than ranks and gathers for a few dates, same values."""
        planes = [p for j, p in enumerate(self.v) if j != i]
        m = len(planes)
        for r in range(m):
            for j in range(r % 2, m - 1, 2):
                lo, hi = planes[j], planes[j + 1]
                planes[j], planes[j + 1] = np.minimum(lo, hi), np.maximum(lo, hi)
        med = np.full(k.shape, np.nan, np.float32)
        for kk in range(1, m + 1):
            pick = k == kk
            if pick.any():
                a, b = planes[(kk - 1) // 2], planes[kk // 2]
                np.copyto(med, 0.5 * (a + b), where=pick)
        return med


#: Up to this many dates, :meth:`_OthersMedian.__call__` sorts the other dates of each date on
#: their own (the work grows as dates cubed, against ranks and two gathers per date).
_DIRECT_DATES = 4


def temporal_test(
    blue: np.ndarray | RawBand,
    clear: np.ndarray,
    nir: np.ndarray | RawBand | None = None,
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
        blue: (dates, ...) blue (B02) reflectance, or the raw values as a :class:`RawBand`.
        clear: (dates, ...) bool: the masks' decision (valid and clear).
        nir: (dates, ...) NIR (B08 or B8A) reflectance (or a :class:`RawBand`), or None (no shadow test).
        snow: (dates, ...) bool: where the masks say snow, or None (no snow test).
        days: (dates,) each date's day number (e.g. days since an epoch, fractional), or None.
        window_days: the window in days; 0 (or no ``days``): every other date given.

    Returns:
        :class:`TemporalFlags`; every flagged pixel is clear in ``clear``.

    Raises:
        ValueError: the arrays' shapes differ, or ``days`` is not one number per date.
    """
    blue_r = RawBand.of(blue)
    nir_r = None if nir is None else RawBand.of(nir)
    clear = np.asarray(clear, dtype=bool)
    if blue_r.shape != clear.shape or (nir_r is not None and nir_r.shape != clear.shape):
        raise ValueError("temporal_test: blue, clear and nir must have the same shape")
    if snow is not None and np.shape(snow) != clear.shape:
        raise ValueError("temporal_test: snow must have the shape of clear")
    if days is None or window_days <= 0:
        return _temporal_all(blue_r, clear, nir_r, snow)
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
                flags = _temporal_all(blue_r, clear, nir_r, snow)
            else:
                idx = list(near)
                flags = _temporal_all(
                    blue_r.dates(idx),
                    clear[idx],
                    None if nir_r is None else nir_r.dates(idx),
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


def _temporal_all(blue: RawBand, clear: np.ndarray, nir: RawBand | None, snow: np.ndarray | None) -> TemporalFlags:
    """:func:`temporal_test` of every date against all the others given.

    Each pixel is decided alone, so the test runs only on the pixels where a date can be flagged:
    blue over the dates clear there spans more than :data:`TEMPORAL_BLUE_ADD` (a hazy date is
    that far above a median of the others), NIR more than :data:`TEMPORAL_NIR_SUB` (shadow), or
    a date is snow; elsewhere nothing is flagged. Most pixels of most series are neither, and only
    the others are converted to reflectance (:class:`RawBand`).
    """
    n = clear.shape[0]
    cloud = np.zeros(clear.shape, bool)
    shadow = np.zeros(clear.shape, bool)
    if n < 2:  # the date tested and at least one other (the snow and shadow rules need one)
        return TemporalFlags(cloud, shadow)
    clear2 = blue.finite(clear.reshape(n, -1))
    # Dates clear at each pixel: the cloud test needs TEMPORAL_MIN_OTHERS others besides the date
    # tested, the snow and shadow tests one other (a spread over one date is 0).
    count = clear2.sum(axis=0, dtype=np.int32)
    # The cloud pass where a date can be cloud: it is above a median of the others by
    # TEMPORAL_BLUE_ADD (0.9 of it: a margin over float rounding, so that no pixel the test would
    # flag is left out) and above TEMPORAL_BLUE_FACTOR times it, which is at least that factor
    # times the least value (float32 products round monotonically: exact).
    lo, hi = blue.extremes(clear2)
    active = hi - lo > 0.9 * TEMPORAL_BLUE_ADD
    active &= hi > TEMPORAL_BLUE_FACTOR * lo
    active &= count > TEMPORAL_MIN_OTHERS
    snow2 = None if snow is None else np.asarray(snow, dtype=bool).reshape(n, -1)
    if snow2 is not None:
        active |= (snow2 & clear2).any(axis=0) & (count > TEMPORAL_MIN_OTHERS_SNOW)
    cloud2, shadow2 = cloud.reshape(n, -1), shadow.reshape(n, -1)
    idx = np.flatnonzero(active)
    if len(idx):
        sub = _temporal_pixels(blue.physical(idx), clear2[:, idx], None, None if snow2 is None else snow2[:, idx])
        cloud2[:, idx] = sub.cloud
    # The shadow pass where a date can be shadow (below a median of others, at most the greatest
    # value, by TEMPORAL_NIR_SUB and under TEMPORAL_NIR_FACTOR times it), with the cloud flags
    # found (none elsewhere).
    if nir is not None:
        lo, hi = nir.extremes(nir.finite(clear2))
        shade = hi - lo > 0.9 * TEMPORAL_NIR_SUB
        shade &= lo < TEMPORAL_NIR_FACTOR * hi
        idx = np.flatnonzero(shade)
        if len(idx):
            sub = _temporal_pixels(blue.physical(idx), clear2[:, idx], nir.physical(idx), None, cloud=cloud2[:, idx])
            shadow2[:, idx] = sub.shadow
    return TemporalFlags(cloud, shadow)


def _ambiguous(flags: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """(pixels,) where ``flags`` would remove more than half the dates ``clear`` there, or exactly
    half with at least two on each side (two groups of dates): the dates disagree too much to tell
    which of them shows the surface, and the masks stand. (One date flagged of two is not
    ambiguous: a lone "snow" beside one snow-free clear date.)"""
    flagged = flags.sum(axis=0)
    total = clear.sum(axis=0)
    return (2 * flagged > total) | ((2 * flagged == total) & (flagged >= 2))


def _temporal_pixels(
    blue: np.ndarray,
    clear: np.ndarray,
    nir: np.ndarray | None,
    snow: np.ndarray | None,
    cloud: np.ndarray | None = None,
) -> TemporalFlags:
    """:func:`_temporal_all` on (dates, pixels) arrays, every pixel tested; with ``cloud`` (the
    cloud pass's flags, known), the shadow pass only."""
    n = clear.shape[0]
    shadow = np.zeros(clear.shape, bool)
    if n < 2:  # the date tested and at least one other (the snow and shadow rules need one)
        return TemporalFlags(np.zeros(clear.shape, bool), shadow)
    clear = clear & np.isfinite(blue)
    if cloud is None:
        cloud = _cloud_pass(blue, clear, snow)
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


def _cloud_pass(blue: np.ndarray, clear: np.ndarray, snow: np.ndarray | None) -> np.ndarray:
    """The cloud and haze flags of :func:`_temporal_pixels` (dates, pixels), against the other
    dates the masks call clear (``clear``, finite blue)."""
    n = clear.shape[0]
    cloud = np.zeros(clear.shape, bool)
    snow_b = None if snow is None else (np.asarray(snow, dtype=bool) & clear)
    snowy = None if snow_b is None else snow_b.sum(axis=0)
    blue_median = _OthersMedian(blue, clear)
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
    return cloud
