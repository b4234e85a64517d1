"""Reading the inputs of one date: every acquisition in full-width strips on the output grid.

Each acquisition is a :class:`Source` (its band files and mask, through the one scene reader,
:class:`~cloudclear.scenes.reader.SceneReader`, warped when on another grid). A :class:`Prefetcher` thread
reads consecutive strips of every source ahead of the computation, each strip a whole number of
the main S2 file's blocks (:func:`strip_bounds`), so every source block is read once. The
computation asks a :class:`RowBuffer` for the rows a window row needs; strips it no longer needs
are dropped.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudclear import masks
from cloudclear.detect.temporal import TEMPORAL_BLUE_BANDS, TEMPORAL_NIR_BANDS, RawBand, temporal_test
from cloudclear.errors import CloudClearError, MaskError
from cloudclear.gridio import Grid, GridReader
from cloudclear.inference.select import Acquisition
from cloudclear.masks import DEFAULT_POLICY, ClearPolicy, MaskClass, dilate_disk
from cloudclear.scenes.reader import ReadSpec, SceneReader, mask_indexes, pack_mask, pick, to_physical


@dataclass
class Strip:
    """Rows of one acquisition on the output grid: raw values, where valid, where clear."""

    values: np.ndarray  # (bands, rows, cols), the file's dtype
    valid: np.ndarray  # (rows, cols) bool
    clear: np.ndarray  # (rows, cols) bool: valid and not cloud / shadow per the mask
    snow: np.ndarray | None = None  # (rows, cols) bool: clear and snow; read for the temporal test only
    # (rows, cols) bool: clear per the mask alone, before the policy; None with the default policy
    mask_clear: np.ndarray | None = None

    def rows(self, a: int, b: int) -> Strip:
        """Rows ``a..b`` of this strip (views, no copy)."""
        snow = None if self.snow is None else self.snow[a:b]
        mask_clear = None if self.mask_clear is None else self.mask_clear[a:b]
        return Strip(self.values[:, a:b], self.valid[a:b], self.clear[a:b], snow, mask_clear)

    @staticmethod
    def concat(parts: Sequence[Strip]) -> Strip:
        """Consecutive strips as one."""
        if len(parts) == 1:
            return parts[0]
        return Strip(
            np.concatenate([p.values for p in parts], axis=1),
            np.concatenate([p.valid for p in parts], axis=0),
            np.concatenate([p.clear for p in parts], axis=0),
            None if any(p.snow is None for p in parts) else np.concatenate([p.snow for p in parts], axis=0),
            None if any(p.mask_clear is None for p in parts) else np.concatenate([p.mask_clear for p in parts], axis=0),
        )


def reflectance(strip: Strip, acq: Acquisition, cols: slice) -> np.ndarray:
    """Columns ``cols`` of a strip in physical units (the acquisition's scale and offset), float32."""
    return to_physical(strip.values[:, :, cols], acq.scale, acq.offset, acq.units)


class HideMask:
    """A mask raster whose cloud and shadow pixels are hidden from the date reconstructed
    (``cloudclear infer --hide``): to score a method on a clear date under another date's real
    clouds.

    The file is read as a scene's mask is: its convention recognised from its band descriptions or
    name (SCL, CLM, CLP, FMASK, MAJA...; an S2 file holding a mask band gives that band), decoded by
    :func:`cloudclear.masks.decode`, and placed on the output grid (nearest neighbour where it lies
    on another grid). Pixels it calls cloud, thin cloud or shadow are hidden; its nodata, clear and
    snow pixels, and the grid's pixels it does not cover, are not. No buffer is added.

    Attributes:
        path: the mask file (absolute).
        convention: its mask convention (a key of :data:`cloudclear.masks.CONVENTIONS`).

    Raises:
        MaskError: the file is missing, not a raster, holds no mask cloudclear recognises, has no
            CRS, or holds values its convention does not define; the message names the file.
    """

    def __init__(self, path: str | os.PathLike[str], grid: Grid):
        from cloudclear.scenes.files import classify, read_file_info

        self.path = os.path.abspath(path)
        if not os.path.exists(self.path):
            raise MaskError(f"{self.path}: --hide mask not found")
        if os.path.isdir(self.path):
            raise MaskError(f"{self.path}: --hide mask is a folder, not a raster")
        try:
            info = read_file_info(self.path)
            band = classify(info).mask
        except CloudClearError as exc:
            raise MaskError(f"--hide: {exc}") from None
        if band is None:
            raise MaskError(
                f"{self.path}: --hide mask holds no cloud mask cloudclear recognises "
                f"(band descriptions or file name naming one of {', '.join(masks.CONVENTIONS)})"
            )
        if info.crs is None:
            raise MaskError(f"{self.path}: --hide mask has no CRS; cannot place it on the output grid")
        self.convention = band.convention
        self.nodata = info.nodata
        self.grid = grid
        try:
            self.reader = GridReader(self.path, list(mask_indexes(band)), grid, "nearest", info.nodata)
        except CloudClearError as exc:
            raise MaskError(f"--hide: {exc}") from None

    def read(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0..r1`` of the output grid: (rows, cols) bool, True where the mask hides the surface."""
        raw = pack_mask(self.reader.read(r0, r1), self.convention)
        try:
            classes = masks.decode(raw, self.convention, self.nodata)
        except MaskError as exc:
            raise MaskError(f"{self.path}: --hide mask: {exc}") from None
        return masks.is_obscured(classes)

    def count(self, strip_rows: int = 512) -> int:
        """Pixels of the output grid the mask hides (read strip by strip)."""
        n = 0
        for r0 in range(0, self.grid.height, max(strip_rows, 1)):
            n += int(self.read(r0, min(r0 + strip_rows, self.grid.height)).sum())
        return n

    def close(self) -> None:
        """Close the file."""
        self.reader.close()


class Source:
    """One acquisition's bands and mask, read strip by strip on the output grid through the one
    scene reader (:class:`~cloudclear.scenes.reader.SceneReader`), with a clear policy.

    Attributes:
        removed: valid pixels read so far that the mask calls clear and the policy does not (each
            strip is read once, so after a whole run: the acquisition's count on the grid); with
            the policy's temporal test, the pixels :func:`apply_temporal` removed too, less the
            pixels :func:`restore_mask_clear` gave back.
        removed_by: ``removed`` per rule before any was given back: "detector", "unclassified",
            "snow", "buffer" (the reader's, see :attr:`~cloudclear.scenes.reader.Pixels.removed_by`)
            and "temporal".

        hidden: clear pixels read so far that ``hide`` (:class:`HideMask`) took out: cloud to every
            later step (the temporal test, :func:`restore_mask_clear`, the method, the output).

    Raises:
        SceneNotFoundError: a file the catalog lists is gone.
        InvalidRasterError: a file cannot be opened or placed on the grid.
    """

    def __init__(
        self,
        acq: Acquisition,
        grid: Grid,
        policy: ClearPolicy = DEFAULT_POLICY,
        *,
        witness: bool = False,
        hide: HideMask | None = None,
    ):
        #: Read for the temporal test only (:func:`~cloudclear.inference.select.choose_witnesses`):
        #: it takes part in :func:`temporal_flags`, never in the method or :func:`restore_mask_clear`.
        self.witness = witness
        self.acq = acq
        self.reader = SceneReader(ReadSpec.of(acq), grid, policy=policy)
        self.policy = policy
        self.removed = 0
        self.removed_by: dict[str, int] = {}
        #: Pixels :func:`restore_mask_clear` gave back (``removed`` is after them, ``removed_by``
        #: before: the sum of ``removed_by`` is ``removed + given_back``).
        self.given_back = 0
        self.hide = hide
        self.hidden = 0
        # The counts are updated by a strip's read on a pool thread while the prefetcher's thread
        # finishes the strip before it (temporal flags, restore): one lock keeps every update.
        self._lock = threading.Lock()

    def count(self, rule: str, n: int) -> None:
        """Add ``n`` pixels removed by ``rule`` to :attr:`removed` and :attr:`removed_by`."""
        with self._lock:
            self.removed += n
            self.removed_by[rule] = self.removed_by.get(rule, 0) + n

    def give_back(self, n: int) -> None:
        """``n`` removed pixels the masks' decision took back (:func:`restore_mask_clear`)."""
        with self._lock:
            self.removed -= n
            self.given_back += n

    @property
    def block_rows(self) -> int:
        """Block height of the first band file read directly (0 when read through a VRT)."""
        return self.reader.block_rows

    @property
    def row_off(self) -> int:
        """Row of the output grid's first row in the first band file."""
        return self.reader.row_off

    def read(self, r0: int, r1: int) -> Strip:
        """Rows ``r0..r1`` of the output grid."""
        px = self.reader.read(r0, r1)
        if px.removed is not None:
            with self._lock:
                self.removed += int(px.removed.sum())
                for rule, n in (px.removed_by or {}).items():
                    self.removed_by[rule] = self.removed_by.get(rule, 0) + n
        clear = px.clear
        snow = (px.classes == MaskClass.SNOW) & clear if self.policy.temporal else None
        mask_clear = None if self.policy.changes_nothing else (clear if px.removed is None else clear | px.removed)
        if self.hide is not None:
            # Hidden pixels are cloud to every later step: the masks' own decision too, so that
            # restore_mask_clear can never give them back.
            shown = ~self.hide.read(r0, r1)
            self.hidden += int((clear & ~shown).sum())
            clear = clear & shown
            snow = None if snow is None else snow & shown
            mask_clear = None if mask_clear is None else mask_clear & shown
        return Strip(px.values, px.valid, clear, snow, mask_clear)

    def close(self) -> None:
        """Close every file."""
        self.reader.close()


class Worker:
    """A daemon thread started apart from construction, so the owner holds it before it runs.

    A signal can interrupt ``Thread.start()`` after the thread began but before it said so; then
    ``join()`` refuses ("cannot join thread before it is started") for a moment, so it is retried.
    """

    def __init__(self, target: Callable[[], None], name: str):
        self.thread = threading.Thread(target=target, name=name, daemon=True)
        self.start_called = False

    def start(self) -> None:
        """Start the thread."""
        self.start_called = True
        self.thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread to end (nothing if it never started)."""
        if not self.start_called:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.thread.join(timeout=max(0.0, deadline - time.monotonic()))
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)


_DONE = object()


class Prefetcher:
    """A thread that reads consecutive strips of every source ahead of the computation.

    Iterating yields ``(r0, r1, strips)`` in order; a read error is raised by the iteration.
    """

    def __init__(self, sources: Sequence[Source], bounds: Sequence[tuple[int, int]], ring: int):
        self.sources = sources
        self.bounds = bounds
        self.q: queue.Queue[Any] = queue.Queue(maxsize=max(ring, 1))
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 2, 4)))
        self.worker = Worker(self._run, "cloudclear-reader")
        self.temporal = any(s.policy.temporal for s in sources)
        #: Rows the temporal test's flags are grown by (the policy's buffer).
        self.buffer = max((s.policy.buffer_px for s in sources), default=0)
        #: Pixels where the policy left no S2 input clear and the masks' decision was restored.
        self.restored = 0

    def start(self) -> None:
        """Start reading."""
        self.worker.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            # With the temporal test and a buffer, a strip is finished once the flags of the
            # ``buffer`` rows below it are known: ``window`` holds the strips read (with their
            # flags) from ``buffer`` rows above the first unfinished one on.
            window: deque[tuple[int, int, list[Strip], list[np.ndarray | None]]] = deque()
            done = 0  # strips of the window already finished and put

            def submit(k: int) -> list[Future[Strip]]:
                a, b = self.bounds[k]
                return [self.pool.submit(s.read, a, b) for s in self.sources]

            # One strip read ahead: the next strip's reads run while this one's temporal test
            # and finishing run here (each source still reads one strip at a time, in order).
            ahead = submit(0) if self.bounds else []
            for k, (r0, r1) in enumerate(self.bounds):
                strips = [f.result() for f in ahead]
                ahead = submit(k + 1) if k + 1 < len(self.bounds) else []
                if not self.temporal:
                    self._finish(strips)
                    if not self._put((r0, r1, strips)):
                        return
                    continue
                window.append((r0, r1, strips, temporal_flags(self.sources, strips)))
                while done < len(window) and (window[done][1] + self.buffer <= r1 or r1 >= self.bounds[-1][1]):
                    if not self._emit(window, done):
                        return
                    done += 1
                    while window and window[0][1] + self.buffer <= (window[done - 1][1] if done else 0):
                        window.popleft()
                        done -= 1
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)

    def _emit(self, window: deque[tuple[int, int, list[Strip], list[np.ndarray | None]]], k: int) -> bool:
        """Apply the temporal flags, grown by the buffer, to strip ``k`` of ``window``, then put it."""
        r0, r1, strips, _ = window[k]
        a, b = r0 - self.buffer, r1 + self.buffer
        for i, (src, st) in enumerate(zip(self.sources, strips, strict=True)):
            parts = [(q0, q1, fl[i]) for q0, q1, _, fl in window if q1 > a and q0 < b]
            if any(f is None for _, _, f in parts):
                continue
            lo = parts[0][0]
            flags = np.concatenate([f[max(a, q0) - q0 : min(b, q1) - q0] for q0, q1, f in parts if f is not None])
            if self.buffer > 0 and flags.any():
                flags = dilate_disk(flags, self.buffer)
            gone = flags[r0 - max(a, lo) : r1 - max(a, lo)] & st.clear
            n = int(gone.sum())
            if n:
                st.clear = st.clear & ~gone
                src.count("temporal", n)
        self._finish(strips)
        return self._put((r0, r1, strips))

    def _finish(self, strips: list[Strip]) -> None:
        """The last step of a strip's clear decision: :func:`restore_mask_clear`."""
        self.restored += restore_mask_clear(self.sources, strips)

    def __iter__(self) -> Iterator[tuple[int, int, list[Strip]]]:
        while True:
            item = self.q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading and wait for the reads in flight."""
        self.stop.set()
        self.worker.join(timeout=60)
        self.pool.shutdown(wait=True)  # no read may still use a dataset the caller closes next


#: Band names the temporal test reads, in order of preference.
BLUE_BANDS = TEMPORAL_BLUE_BANDS
NIR_BANDS = TEMPORAL_NIR_BANDS


def _band(acq: Acquisition, names: Sequence[str]) -> int | None:
    return next((acq.bands.index(n) for n in names if n in acq.bands), None)


def temporal_flags(sources: Sequence[Source], strips: Sequence[Strip]) -> list[np.ndarray | None]:
    """The temporal test (:func:`cloudclear.detect.temporal.temporal_test`) on the same rows of every S2
    source that has a blue band: per source, the (rows, cols) pixels it flags (None for a source
    that takes no part: S1, S2 without blue, or fewer than three taking part). The shadow test
    runs when every source taking part has a NIR band, the snow test when each has a mask. Each
    date is compared with the dates within the policy's ``temporal_days`` of it (acquisition
    times; all sources share one policy; 0: every other date read).
    """
    out: list[np.ndarray | None] = [None] * len(sources)
    part = [
        (j, src, st, b)
        for j, (src, st) in enumerate(zip(sources, strips, strict=True))
        if src.acq.sensor == "S2" and (b := _band(src.acq, BLUE_BANDS)) is not None
    ]
    if len(part) < 2:  # the date tested and at least one other (the snow and shadow rules need one)
        return out
    nir_idx = [_band(src.acq, NIR_BANDS) for _, src, _, _ in part]

    def band(bands: Sequence[tuple[Source, Strip, int]]) -> RawBand | np.ndarray:
        """One band of every source taking part, raw with its scales (converted only where the
        temporal test needs it), or converted here when a source's units are not linear in DN."""
        if any(src.acq.units.lower() == "linear" for src, _, _ in bands):
            return np.stack(
                [
                    to_physical(st.values[k : k + 1], pick(src.acq.scale, k), pick(src.acq.offset, k), src.acq.units)[0]
                    for src, st, k in bands
                ]
            )
        return RawBand(
            tuple(st.values[k] for _, st, k in bands),
            tuple(float(pick(src.acq.scale, k)) for src, _, k in bands),
            tuple(float(pick(src.acq.offset, k)) for src, _, k in bands),
        )

    blue = band([(src, st, b) for _, src, st, b in part])
    clear = np.stack([st.clear for _, _, st, _ in part])
    nir = None
    if all(k is not None for k in nir_idx):
        nir = band([(src, st, k) for (_, src, st, _), k in zip(part, nir_idx, strict=True) if k is not None])
    snows = [st.snow for _, _, st, _ in part if st.snow is not None]
    snow = np.stack(snows) if len(snows) == len(part) else None
    days = [src.acq.datetime.timestamp() / 86400.0 for _, src, _, _ in part]
    window = part[0][1].policy.temporal_days
    flags = temporal_test(blue, clear, nir, snow, days=days, window_days=window).obscured
    for (j, _, _, _), f in zip(part, flags, strict=True):
        out[j] = f
    return out


def apply_temporal(sources: Sequence[Source], strips: Sequence[Strip], buffer_px: int = 0) -> None:
    """:func:`temporal_flags` on whole strips: flagged pixels, grown by ``buffer_px`` (a disk, as
    the policy's buffer grows the masks' obscured classes; the strips' edges see only the flags
    inside them), leave each strip's ``clear`` (in place) and are counted in the source's
    ``removed``. The :class:`Prefetcher` does the same with the rows of the neighbouring strips.
    """
    for src, st, flags in zip(sources, strips, temporal_flags(sources, strips), strict=True):
        if flags is None:
            continue
        if buffer_px > 0 and flags.any():
            flags = dilate_disk(flags, buffer_px)
        gone = flags & st.clear
        n = int(gone.sum())
        if n:
            st.clear = st.clear & ~gone
            src.count("temporal", n)


def restore_mask_clear(sources: Sequence[Source], strips: Sequence[Strip]) -> int:
    """Where the clear policy left no S2 input of a date clear at a pixel but the masks alone had
    one, the masks' decision stands there: each S2 strip's ``clear`` takes its mask's own
    decision at those pixels (in place; the sources' ``removed`` drop by what comes back). The
    policy must never turn a pixel that can be reconstructed into nodata. Where an S1 input has a
    value, a method that reads S1 reconstructs the pixel from it, and nothing is restored there.

    Returns:
        The pixels restored (each counted once, however many inputs came back there).
    """
    pairs = [(src, st) for src, st in zip(sources, strips, strict=True) if not src.witness]
    s2 = [(src, st) for src, st in pairs if src.acq.sensor == "S2"]
    if not s2 or any(st.mask_clear is None for _, st in s2):
        return 0
    any_clear = np.logical_or.reduce([st.clear for _, st in s2])
    any_mask = np.logical_or.reduce([st.mask_clear for _, st in s2 if st.mask_clear is not None])
    lost = any_mask & ~any_clear
    s1 = [st.valid for src, st in pairs if src.acq.sensor == "S1"]
    if s1:
        lost &= ~np.logical_or.reduce(s1)
    if not lost.any():
        return 0
    for src, st in s2:
        assert st.mask_clear is not None
        back = lost & st.mask_clear
        st.clear = st.clear | back
        src.give_back(int(back.sum()))
    return int(lost.sum())


def strip_bounds(sources: Sequence[Source], height: int, strip_rows: int) -> list[tuple[int, int]]:
    """Strip row ranges on the output grid that fall on the first S2 file's block boundaries.

    Strips are a whole number of blocks high, and with a bbox (a crop starting mid-block) the first
    strip ends at the next block boundary, so every strip reads whole blocks, each once.
    """
    main = next((s for s in sources if s.acq.sensor == "S2" and s.block_rows), None)
    if main is None:
        return [(r, min(r + strip_rows, height)) for r in range(0, height, strip_rows)]
    block = main.block_rows
    rows = max(block, int(math.ceil(strip_rows / block) * block))
    phase = main.row_off % block
    cuts = [0] + [r - phase for r in range(rows, height + phase, rows) if 0 < r - phase < height] + [height]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


class RowBuffer:
    """The strips covering the rows the computation needs now; older strips are dropped."""

    def __init__(self, strips: Iterator[tuple[int, int, list[Strip]]], n_sources: int):
        self.it = strips
        self.items: deque[tuple[int, int, list[Strip]]] = deque()
        self.n = n_sources

    def get(self, a: int, b: int) -> list[Strip]:
        """Rows ``a..b`` of every source (``a`` never decreases between calls)."""
        while not self.items or self.items[-1][1] < b:
            self.items.append(next(self.it))
        while self.items and self.items[0][1] <= a:
            self.items.popleft()
        out = []
        for k in range(self.n):
            parts = [s[k].rows(max(a, r0) - r0, min(b, r1) - r0) for r0, r1, s in self.items if r1 > a and r0 < b]
            out.append(Strip.concat(parts))
        return out
