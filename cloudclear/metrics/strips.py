"""The strip scorer: streams a prediction and its reference in strips of rows, in bounded memory.

SSIM needs the window radius of rows around each scored row, so each strip is read together with
the rows above it that its first rows' windows need (again, from GDAL's block cache, rather than
joining copies of two strips): the blockwise figures equal the whole-image figures (SSIM to float32
rounding, far below 1e-6).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cloudclear import masks
from cloudclear.errors import MaskError
from cloudclear.masks import MaskClass
from cloudclear.metrics.conventions import PIXEL_SETS, SSIM_WINDOWS, ScoreOptions
from cloudclear.metrics.maths import BandSums, Reflectance, Sums, add_pixel_sums, block_sums, one_torch_thread
from cloudclear.metrics.reading import StripReader, valid

# Strips read ahead of the one being scored.
_AHEAD = 2
# Columns processed at once (every band): a task for the thread pool; SSIM works within it in
# tiles (maths.ssim_sums), the plain figures on its selected pixels.
_COL_CHUNK = 2048


@dataclass
class Strip:
    """Rows of a pair as read (raw values), with their validity and the pixels selected for scoring."""

    pred: np.ndarray
    ref: np.ndarray
    valid: np.ndarray  # both rasters valid
    selected: np.ndarray  # valid and in the pixel set


class Scorer:
    """Streams one prediction against its reference and returns the sums."""

    def __init__(
        self,
        pred: StripReader,
        ref: StripReader,
        mask: StripReader | None,
        mask_band: masks.MaskBand | None,
        ref_mask: StripReader | None,
        ref_mask_band: masks.MaskBand | None,
        pred_scale: Sequence[tuple[float, float]],
        ref_scale: Sequence[tuple[float, float]],
        pixels: str,
        opts: ScoreOptions,
    ) -> None:
        self.pred, self.ref, self.mask, self.ref_mask = pred, ref, mask, ref_mask
        self.mask_band, self.ref_mask_band = mask_band, ref_mask_band
        self.pred_scale, self.ref_scale = pred_scale, ref_scale
        self.classes = PIXEL_SETS[pixels][0]
        self.opts = opts
        self.window = SSIM_WINDOWS[opts.ssim_window]
        self._pool: ThreadPoolExecutor
        # What the chunks read raw values through (Scorer.reflectance, every band at once).
        self._pred_refl, self._ref_refl = (
            Reflectance(tuple(s for s, _ in sc), tuple(o for _, o in sc), opts.clip, opts.peak)
            for sc in (pred_scale, ref_scale)
        )
        self.view_parts: list[Strip] = []
        self._buffers: dict[tuple[str, int], np.ndarray] = {}

    def read_strip(self, row: int, height: int, slot: int | None = None) -> Strip:
        """Rows [row, row + height) of the pair, with validity and the pixel set applied.

        ``slot``: read into that one of the buffers kept per raster, so that a run's strips reuse
        memory rather than have fresh pages zeroed by the kernel for each; the strip is then valid
        until the next read into the same slot.
        """
        p = self._rows(self.pred, "pred", slot, row, height)
        r = self._rows(self.ref, "ref", slot, row, height)
        ok = valid(p, self.pred.nodata) & valid(r, self.ref.nodata)
        selected = ok.copy()
        if self.classes is not None and self.mask is not None and self.mask_band is not None:
            selected &= masks.is_member(self._classes(self.mask, self.mask_band, row, height), self.classes)
        if self.ref_mask is not None and self.ref_mask_band is not None:
            rc = self._classes(self.ref_mask, self.ref_mask_band, row, height)
            selected &= masks.is_clear(rc)
        return Strip(p, r, ok, selected)

    def _rows(self, reader: StripReader, name: str, slot: int | None, row: int, height: int) -> np.ndarray:
        if slot is None:
            return reader.rows(row, height)
        buf = self._buffers.get((name, slot))
        if buf is None or buf.shape[1] < height:
            data = reader.rows(row, height)
            rows = max(height, self.opts.block_rows + 2 * self.window.radius)
            self._buffers[name, slot] = np.empty((data.shape[0], rows, data.shape[2]), data.dtype)
            return data
        return reader.rows(row, height, out=buf[:, :height])

    @staticmethod
    def _classes(reader: StripReader, band: masks.MaskBand, row: int, height: int) -> np.ndarray:
        raw = reader.rows(row, height)[0]
        nodata = None if reader.warped else reader.info.nodata
        if raw.dtype.kind == "f":
            outside = np.isnan(raw)
            raw = np.where(outside, 0, raw)
        else:
            outside = ~reader.valid_rows(row, height)
        try:
            cls = masks.decode(raw, band.convention, nodata)
        except MaskError as exc:
            raise MaskError(f"{band.path}: {exc}") from None
        cls[outside] = MaskClass.NODATA
        return cls

    def reflectance(self, raw: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
        """One band's raw values to float64 reflectance (``DN * scale + offset``), clipped when the
        options say (:class:`~cloudclear.metrics.maths.Reflectance`, as the chunks read them)."""
        return Reflectance((scale[0],), (scale[1],), self.opts.clip, self.opts.peak)(raw[None])[0]

    def run(self, progress: Callable[[int], None] | None = None, view_factor: int = 0) -> Sums:
        """Score every strip; with ``view_factor``, also keep every ``view_factor``-th row and
        column of each strip as read (in ``self.view_parts``), so a figure needs no second read."""
        H, W = self.pred.grid.height, self.pred.grid.width
        pad = self.window.radius
        sums = Sums(len(self.pred.bands))
        block = self.opts.block_rows
        starts = list(range(0, H, block))
        # Each strip after the first is read with the rows above it that its first scored row's
        # window needs (again, from GDAL's block cache): no copy joins two strips.
        # Strip k scores rows [ends[k - 1], ends[k]) (0 before the first): every row but the last
        # pad of each strip, which wait for the next one's rows below them.
        reads, ends = [(0, min(block, H))], [0]
        for k, r0 in enumerate(starts):
            ends.append(max(ends[-1], H if r0 + block >= H else r0 + block - pad))
            if k + 1 < len(starts):
                row = min(max(ends[-1] - pad, 0), starts[k + 1])
                reads.append((row, min(block, H - starts[k + 1]) + starts[k + 1] - row))
        view_rows = {r0: k0 for r0, _, k0 in strided_rows(H, block, view_factor)} if view_factor else {}
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        with (
            _no_collection(),
            ThreadPoolExecutor(1) as pool,
            ThreadPoolExecutor(threads, initializer=one_torch_thread) as self._pool,
        ):
            # Strips are read _AHEAD ahead of the one scored, each into its own buffer slot: the
            # reader keeps going through uneven strips.
            reading = deque(pool.submit(self.read_strip, *reads[k], k) for k in range(min(_AHEAD, len(starts))))
            # A strip's chunks are queued before the previous strip's are summed, so the chunk
            # threads never wait for each other at the end of a strip. Sums are added in strip and
            # chunk order: figures do not depend on thread timing.
            pending: list[Future[tuple[list[BandSums], float, int]]] = []
            pending_rows = 0
            for k, r0 in enumerate(starts):
                buf, buf_row = reading.popleft().result(), reads[k][0]
                if r0 in view_rows:
                    self.view_parts.append(every(strip_slice(buf, r0 - buf_row, None), view_rows[r0], view_factor))
                o0, o1 = ends[k], ends[k + 1]
                queued = self._queue_rows(buf, buf_row, o0, o1, H, W, pad, sums) if o1 > o0 else []
                _add(sums, pending, pending_rows, progress)
                pending, pending_rows = queued, o1 - o0
                if k + _AHEAD < len(starts):  # into the slot of the strip just summed
                    reading.append(pool.submit(self.read_strip, *reads[k + _AHEAD], (k + _AHEAD) % (_AHEAD + 1)))
            _add(sums, pending, pending_rows, progress)
        return sums

    def _queue_rows(
        self, buf: Strip, buf_row: int, o0: int, o1: int, H: int, W: int, pad: int, sums: Sums
    ) -> list[Future[tuple[list[BandSums], float, int]]]:
        """Queue the scoring of rows [o0, o1) of the grid on the chunk threads (their pixel counts
        go to ``sums`` now); ``buf`` holds rows from ``buf_row`` with a halo."""
        s0 = max(o0 - pad, buf_row)
        s1 = min(o1 + pad, buf_row + buf.valid.shape[0])
        slab = strip_slice(buf, s0 - buf_row, s1 - buf_row)
        a, b = o0 - s0, o1 - s0  # output rows inside the slab
        sel = slab.selected[a:b]
        # SSIM counts a pixel when its whole window lies inside the image and holds valid pixels.
        if slab.valid.all():
            win_ok = np.ones((b - a, W), bool)
        else:
            from scipy.ndimage import minimum_filter  # here only: importing it costs 0.2 s

            win_ok = minimum_filter(slab.valid.view(np.uint8), size=2 * pad + 1, mode="constant", cval=0)[a:b] > 0
        rows = np.arange(o0, o1)
        inner_rows = (rows >= pad) & (rows < H - pad)
        win_ok &= inner_rows[:, None]
        win_ok[:, :pad] = False
        win_ok[:, W - pad :] = False
        ssim_sel = sel & win_ok
        n_sel, n_ssim = int(np.count_nonzero(sel)), int(np.count_nonzero(ssim_sel))
        sums.n += n_sel
        sums.n_ssim += n_ssim
        if n_sel == 0 and n_ssim == 0:
            return []

        chunks = [(c0, min(c0 + _COL_CHUNK, W)) for c0 in range(0, W, _COL_CHUNK)]
        peak, window = self.opts.peak, self.window
        # Whether clipping may change a value, once for the rows rather than per chunk.
        clips = (self._pred_refl.clips(slab.pred), self._ref_refl.clips(slab.ref))

        def chunk(c0: int, c1: int) -> tuple[list[BandSums], float, int]:
            # Columns [c0, c1) of every band, read with a halo of the window radius each side.
            e0, e1 = max(c0 - pad, 0), min(c1 + pad, W)
            core = (slice(a, b), slice(c0 - e0, c1 - e0))
            return block_sums(
                slab.pred[:, :, e0:e1],
                slab.ref[:, :, e0:e1],
                core,
                sel[:, c0:c1],
                ssim_sel[:, c0:c1],
                window,
                peak,
                self._pred_refl,
                self._ref_refl,
                clips,
            )

        # Column chunks are independent and numpy / torch release the GIL, so threads share the
        # cores; chunks keep the working set small whatever the tile width.
        return [self._pool.submit(chunk, c0, c1) for c0, c1 in chunks]


def _add(
    sums: Sums,
    queued: list[Future[tuple[list[BandSums], float, int]]],
    rows: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Add the sums of a strip's chunks in chunk order, as they finish; then count its rows."""
    for f in queued:
        add_pixel_sums(sums, *f.result())
    if progress and rows:
        progress(rows)


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """Python's cyclic garbage collector paused: the loop makes no reference cycles, and each full
    collection would walk every object torch, rasterio and scipy loaded, while
    holding the lock the chunk threads need (about 0.2 s over a full tile).

    What the loop made (torch's objects, when it imported torch) would otherwise sit in the
    youngest generation, and the first collection after the loop would walk it all: 0.2-0.4 s of
    one core at the end of a run. It is moved to the oldest generation instead, uncollected
    (``gc.freeze`` then ``gc.unfreeze``: nothing stays frozen, ``gc.get_referrers`` still sees
    it), where only a full collection looks at it again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was:
            gc.enable()


def concat(a: Strip, b: Strip) -> Strip:
    """``b``'s rows below ``a``'s."""
    return Strip(
        np.concatenate([a.pred, b.pred], axis=1),
        np.concatenate([a.ref, b.ref], axis=1),
        np.concatenate([a.valid, b.valid], axis=0),
        np.concatenate([a.selected, b.selected], axis=0),
    )


def every(s: Strip, k0: int, f: int) -> Strip:
    """Every f-th row (from row k0) and column of a strip, copied so the strip can be freed."""
    return Strip(
        s.pred[:, k0::f, ::f].copy(),
        s.ref[:, k0::f, ::f].copy(),
        s.valid[k0::f, ::f].copy(),
        s.selected[k0::f, ::f].copy(),
    )


def strip_slice(s: Strip, start: int, stop: int | None) -> Strip:
    """Rows [start, stop) of a strip (views, not copies)."""
    return Strip(s.pred[:, start:stop], s.ref[:, start:stop], s.valid[start:stop], s.selected[start:stop])


def strided_rows(height: int, block: int, factor: int) -> list[tuple[int, int, int]]:
    """Strips (row, height, first kept row in the strip) that hold every ``factor``-th row.

    Views are read strip by strip at full resolution and subsampled: on tiled, compressed files
    without overviews a decimated GDAL read costs several times one full read.
    """
    out = []
    for r0 in range(0, height, block):
        h = min(block, height - r0)
        k0 = (-r0) % factor
        if k0 < h:
            out.append((r0, h, k0))
    return out
