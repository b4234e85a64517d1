"""Whole-tile reconstruction: read -> predict -> write, streamed in strips (DESIGN.md section 7).

- **Read:** every acquisition is read in full-width strips of ``strip_rows`` rows aligned to the
  file's blocks, each source block once, by a prefetch thread that keeps a small ring of strips
  ahead (reads of different files run in parallel threads). Files on another grid (S1, 20 m masks
  or bands) are read through a WarpedVRT onto the S2 grid.
- **Predict:** windows are cut from the strips in memory. A network sees windows of its declared
  size with a margin of at least its receptive-field radius aligned to its pooling grid, batched,
  on the GPU with bf16 autocast when there is one, else on the CPU; only window cores are kept
  (exact for fully convolutional networks) or, for networks with per-window context, the overlap is
  Hann-blended in an fp32 accumulator covering the current strip. Gap filling works per pixel on
  column chunks in a thread pool. Windows whose inputs are all nodata are skipped.
- **Write:** a writer thread converts to uint16 reflectance x 10000 (nodata 0) and writes
  512-row bands of 512 x 512 tiles, ZSTD level 1 with predictor 2, BIGTIFF=IF_SAFER, to a hidden
  temporary file beside the output, renamed into place only when complete. A status sidecar
  (``NAME_status.tif``) records per pixel :class:`~cloudclear.inference.gapfill.PixelStatus`.

Peak memory follows the strip height, the window batch and the tile width, not the tile height.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cloudclear import masks
from cloudclear.errors import InferError, OutputExistsError
from cloudclear.gridio import Grid, GridReader
from cloudclear.inference.gapfill import PixelStatus, gapfill
from cloudclear.inference.select import Acquisition, InputSet, Layout, SlotRequest, gapfill_layout
from cloudclear.inference.windows import Span, WindowPlan, blend_weights
from cloudclear.scenes import valid_pixels

#: Output creation options (DESIGN.md section 7).
OUTPUT_PROFILE: dict[str, Any] = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 512,
    "blockysize": 512,
    "compress": "zstd",
    "zstd_level": 1,
    "predictor": 2,
    "bigtiff": "IF_SAFER",
    "num_threads": "ALL_CPUS",
    "interleave": "pixel",
}
QUANTIFICATION = 10000.0


# -- options and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class InferOptions:
    """How to run inference.

    Attributes:
        keep_observed: copy the target date's clear pixels to the output as they are.
        strip_rows: rows read per strip (rounded to the files' block height).
        overwrite: replace an existing output.
        cog: make the output a Cloud-Optimized GeoTIFF (a copy of the streamed file, with overviews).
        status: write the status sidecar.
        bbox: (minx, miny, maxx, maxy) in the tile's CRS: reconstruct only this part.
        progress: show a progress bar on stderr.
        ring: strips the reader keeps ready ahead of the computation.
    """

    keep_observed: bool = True
    strip_rows: int = 512
    overwrite: bool = False
    cog: bool = False
    status: bool = True
    bbox: tuple[float, float, float, float] | None = None
    progress: bool = False
    ring: int = 2


@dataclass(frozen=True)
class InferResult:
    """What one date's run wrote and from what.

    Attributes:
        path: the reconstruction (uint16 reflectance x 10000, nodata 0).
        status_path: the status sidecar, or None.
        date: the target time.
        tile: S2 tile.
        method: ``gapfill`` or the checkpoint path.
        inputs: the acquisitions used (slot, scene id, datetime, offset in days, cloud %).
        notes: slots left empty and similar remarks.
        observed: pixels copied from the target date.
        reconstructed: pixels predicted.
        nodata: pixels left nodata (no input saw them).
        width: output columns.
        height: output rows.
        seconds: wall time of this date.
        device: where the network ran (``cpu`` for gapfill).
    """

    path: Path
    status_path: Path | None
    date: datetime
    tile: str
    method: str
    inputs: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]
    observed: int
    reconstructed: int
    nodata: int
    width: int
    height: int
    seconds: float
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "status_path": str(self.status_path) if self.status_path else None,
            "date": self.date.isoformat(),
            "tile": self.tile,
            "method": self.method,
            "inputs": list(self.inputs),
            "notes": list(self.notes),
            "pixels": {"observed": self.observed, "reconstructed": self.reconstructed, "nodata": self.nodata},
            "width": self.width,
            "height": self.height,
            "seconds": round(self.seconds, 3),
            "device": self.device,
        }


# -- reading ------------------------------------------------------------------------------------


@dataclass
class Strip:
    """Rows of one acquisition on the output grid: raw values, where valid, where clear."""

    values: np.ndarray  # (bands, rows, cols), the file's dtype
    valid: np.ndarray  # (rows, cols) bool
    clear: np.ndarray  # (rows, cols) bool: valid and not cloud / shadow per the mask

    def rows(self, a: int, b: int) -> Strip:
        return Strip(self.values[:, a:b], self.valid[a:b], self.clear[a:b])

    @staticmethod
    def concat(parts: Sequence[Strip]) -> Strip:
        if len(parts) == 1:
            return parts[0]
        return Strip(
            np.concatenate([p.values for p in parts], axis=1),
            np.concatenate([p.valid for p in parts], axis=0),
            np.concatenate([p.clear for p in parts], axis=0),
        )


class _Source:
    """One acquisition's bands and mask, read strip by strip on the output grid."""

    def __init__(self, acq: Acquisition, grid: Grid):
        self.acq = acq
        by_file: dict[str, list[tuple[int, int]]] = {}
        for pos, (path, bidx) in enumerate(acq.sources):
            by_file.setdefault(path, []).append((pos, bidx))
        cont = "bilinear"
        self.nodata = acq.nodata if acq.nodata is not None else (0.0 if acq.sensor == "S2" else None)
        self.files: list[tuple[GridReader, list[int]]] = []
        self.mask: GridReader | None = None
        try:
            for path, items in by_file.items():
                band = GridReader(path, [b for _, b in items], grid, cont, self.nodata)
                self.files.append((band, [p for p, _ in items]))
            if acq.mask is not None:
                self.mask = GridReader(acq.mask.path, [acq.mask.band], grid, "nearest", None)
        except BaseException:
            self.close()
            raise

    @property
    def block_rows(self) -> int:
        """Block height of the first band file read directly (0 when read through a VRT)."""
        return self.files[0][0].block_rows

    @property
    def row_off(self) -> int:
        """Row of the output grid's first row in the first band file."""
        return self.files[0][0].row_off

    def read(self, r0: int, r1: int) -> Strip:
        parts = [(band.read(r0, r1), pos) for band, pos in self.files]
        dtype = np.result_type(*[p.dtype for p, _ in parts])
        values = np.empty((len(self.acq.bands), r1 - r0, parts[0][0].shape[2]), dtype)
        for data, pos in parts:
            values[pos] = data
        # A pixel is valid where every band read is (the catalog's rule, per band).
        valid = valid_pixels(values, self.acq.nodata, self.acq.sensor).all(axis=0)
        clear = valid
        if self.mask is not None and self.acq.mask is not None:
            raw = self.mask.read(r0, r1)[0]
            cls = masks.decode(raw, self.acq.mask.convention, self.mask.nodatavals[self.acq.mask.band - 1])
            clear = valid & (cls != masks.MaskClass.NODATA) & ~np.isin(cls, masks.OBSCURED)
        return Strip(values, np.asarray(valid), np.asarray(clear))

    def close(self) -> None:
        for band, _ in self.files:
            band.close()
        if self.mask is not None:
            self.mask.close()


_DONE = object()


class _Worker:
    """A daemon thread started apart from construction, so the owner holds it before it runs.

    A signal can interrupt ``Thread.start()`` after the thread began but before it said so; then
    ``join()`` refuses ("cannot join thread before it is started") for a moment, so it is retried.
    """

    def __init__(self, target: Callable[[], None], name: str):
        self.thread = threading.Thread(target=target, name=name, daemon=True)
        self.start_called = False

    def start(self) -> None:
        self.start_called = True
        self.thread.start()

    def join(self, timeout: float) -> None:
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


class _Prefetcher:
    """A thread that reads consecutive strips of every source ahead of the computation."""

    def __init__(self, sources: Sequence[_Source], bounds: Sequence[tuple[int, int]], ring: int):
        self.sources = sources
        self.bounds = bounds
        self.q: queue.Queue[Any] = queue.Queue(maxsize=max(ring, 1))
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 2, 4)))
        self.worker = _Worker(self._run, "cloudclear-reader")

    def start(self) -> None:
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
            for r0, r1 in self.bounds:
                strips = list(self.pool.map(lambda s, a=r0, b=r1: s.read(a, b), self.sources))
                if not self._put((r0, r1, strips)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)

    def __iter__(self) -> Iterator[tuple[int, int, list[Strip]]]:
        while True:
            item = self.q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.worker.join(timeout=60)
        self.pool.shutdown(wait=True)  # no read may still use a dataset the caller closes next


def _strip_bounds(sources: Sequence[_Source], height: int, strip_rows: int) -> list[tuple[int, int]]:
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


class _RowBuffer:
    """The strips covering the rows the computation needs now; older strips are dropped."""

    def __init__(self, strips: Iterator[tuple[int, int, list[Strip]]], n_sources: int):
        self.it = strips
        self.items: deque[tuple[int, int, list[Strip]]] = deque()
        self.n = n_sources

    def get(self, a: int, b: int) -> list[Strip]:
        while not self.items or self.items[-1][1] < b:
            self.items.append(next(self.it))
        while self.items and self.items[0][1] <= a:
            self.items.popleft()
        out = []
        for k in range(self.n):
            parts = [s[k].rows(max(a, r0) - r0, min(b, r1) - r0) for r0, r1, s in self.items if r1 > a and r0 < b]
            out.append(Strip.concat(parts))
        return out


# -- methods ------------------------------------------------------------------------------------


@dataclass
class SpanResult:
    """A method's output for one row span: reflectance, status, and (blend mode) weights."""

    values: np.ndarray  # (bands, rows, cols) float32 reflectance (or weighted sums when blending)
    status: np.ndarray  # (rows, cols) uint8 PixelStatus
    weight: np.ndarray | None = None  # (rows, cols) summed blend weights


class Method:
    """What the pipeline needs from a reconstruction method."""

    name: str = ""
    device: str = "cpu"
    blend: bool = False

    def layout(self) -> Layout:
        raise NotImplementedError

    def row_spans(
        self, height: int, width: int, strips: Sequence[tuple[int, int]]
    ) -> tuple[list[Span], WindowPlan | None]:
        """Row spans to compute, in order (each a window row: rows to read, core rows kept)."""
        raise NotImplementedError

    def run(
        self, inputs: InputSet, strips: list[Strip | None], span: Span, plan: Any, opts: InferOptions
    ) -> SpanResult:
        raise NotImplementedError

    def bands(self) -> Sequence[str] | None:
        """S2 bands to read (None: those of the nearest scene)."""
        return None

    def s1_bands(self) -> Sequence[str]:
        """S1 bands to read for S1 slots."""
        return ("VV", "VH")

    def output_bands(self, inputs: InputSet) -> list[str]:
        """Bands written, in order; each is one of ``inputs.bands``."""
        return list(inputs.bands)


def _reflectance(strip: Strip, acq: Acquisition, cols: slice) -> np.ndarray:
    v = strip.values[:, :, cols].astype(np.float32)
    if acq.scale != 1.0 or acq.offset != 0.0:
        v *= np.float32(acq.scale)
        v += np.float32(acq.offset)
    return v


class GapfillMethod(Method):
    """Per-pixel linear interpolation in time between the nearest clear dates (no training).

    Args:
        neighbours: acquisitions looked for on each side of the date.
        max_days: how far from the date to look.
        max_cloud: neighbour scenes above this cloud % are skipped.
        bands: S2 bands to fill (default: the nearest scene's).
        chunk_cols: columns per work item of the thread pool.
    """

    name = "gapfill"

    def __init__(
        self,
        neighbours: int = 3,
        max_days: float = 60.0,
        max_cloud: float = 95.0,
        bands: Sequence[str] | None = None,
        chunk_cols: int = 1024,
    ):
        if neighbours < 1:
            raise InferError(f"gapfill needs at least 1 neighbour on each side, not {neighbours}")
        self._layout = gapfill_layout(neighbours, max_days, max_cloud)
        self._bands = bands
        self.chunk_cols = chunk_cols

    def layout(self) -> Layout:
        return self._layout

    def bands(self) -> Sequence[str] | None:
        return self._bands

    def row_spans(
        self, height: int, width: int, strips: Sequence[tuple[int, int]]
    ) -> tuple[list[Span], WindowPlan | None]:
        # Per pixel: compute exactly the strips the reader delivers, so no rows are copied.
        return [Span(a, b - a, a, b) for a, b in strips], None

    def run(
        self, inputs: InputSet, strips: list[Strip | None], span: Span, plan: Any, opts: InferOptions
    ) -> SpanResult:
        used = [
            (acq, s)
            for (_, acq), s in zip(inputs.slots, strips, strict=True)
            if acq is not None and s is not None and (opts.keep_observed or acq.role != "target")
        ]
        used.sort(key=lambda p: p[0].days)
        times = [a.days for a, _ in used]
        h = span.core_stop - span.core_start
        width = inputs.grid.width
        out = np.zeros((len(inputs.bands), h, width), np.float32)
        status = np.zeros((h, width), np.uint8)

        def work(c0: int) -> None:
            cols = slice(c0, min(c0 + self.chunk_cols, width))
            clear = np.stack([s.clear[:, cols] for _, s in used])
            if not clear.any():
                return
            stack = np.stack([_reflectance(s, a, cols) for a, s in used])
            out[:, :, cols], status[:, cols] = gapfill(stack, clear, times, 0.0)

        if used:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                list(pool.map(work, range(0, width, self.chunk_cols)))
        return SpanResult(out, status)


class NetMethod(Method):
    """A network from a checkpoint, run window by window.

    Args:
        path: the ``.safetensors`` checkpoint (its card says how to feed it).
        device: ``auto``, ``cpu`` or ``cuda``.
        window: window side (default: the card's).
        batch: windows per forward pass.
        max_days: override the card's S2 search window.
        max_cloud: override the card's cloud limit.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "auto",
        window: int | None = None,
        batch: int = 8,
        max_days: float | None = None,
        max_cloud: float | None = None,
        net: Any = None,
        card: Any = None,
    ):
        import torch

        from cloudclear.nets.card import load_checkpoint

        if net is None or card is None:
            net, card = load_checkpoint(path)
        self.card = card
        self.name = str(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise InferError("--device cuda: no CUDA device is available")
        self.device = device
        self.torch_device = torch.device(device)
        self.net = net.to(self.torch_device).eval()
        if device == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.blend = not card.fully_convolutional
        self.window = window or card.window
        self.batch = max(1, batch)
        slots = tuple(SlotRequest(s.name, s.sensor, s.role, s.rank) for s in card.slots)
        self._layout = Layout(
            slots,
            max_days=card.max_days if max_days is None else max_days,
            max_cloud=card.max_cloud if max_cloud is None else max_cloud,
            s1_max_hours=card.s1_max_hours,
            stand_ins=tuple(card.stand_ins.items()),
        )
        self.norm = {
            k: (
                torch.tensor(v["mean"], dtype=torch.float32, device=self.torch_device)[:, None, None],
                torch.tensor(v["std"], dtype=torch.float32, device=self.torch_device)[:, None, None],
            )
            for k, v in card.normalisation.items()
        }
        s2_bands = next(s.bands for s in card.slots if s.sensor == "S2")
        self.out_index = [s2_bands.index(b) for b in card.bands]
        self.frame = card.output_frame()

    def _days(self, inputs: InputSet) -> Any:
        """(1, S2 slots) offsets in days of each S2 slot's acquisition from the date (0 if empty)."""
        import torch

        days = [acq.days if acq is not None else 0.0 for slot, acq in inputs.slots if slot.sensor == "S2"]
        return torch.tensor([days], dtype=torch.float32, device=self.torch_device)

    def layout(self) -> Layout:
        return self._layout

    def bands(self) -> Sequence[str] | None:
        return next(s.bands for s in self.card.slots if s.sensor == "S2")

    def s1_bands(self) -> Sequence[str]:
        return next((s.bands for s in self.card.slots if s.sensor == "S1"), ("VV", "VH"))

    def output_bands(self, inputs: InputSet) -> list[str]:
        # Named as read: a B08 stand-in for B8A is written (and scored) as B08.
        read = dict(zip(self.bands() or (), inputs.bands, strict=False))
        return [read.get(b, b) for b in self.card.bands]

    def row_spans(
        self, height: int, width: int, strips: Sequence[tuple[int, int]]
    ) -> tuple[list[Span], WindowPlan | None]:
        try:
            plan = WindowPlan.build(
                height, width, window=self.window, radius=self.card.receptive_radius, align=self.card.align
            )
        except ValueError as exc:
            raise InferError(str(exc)) from None
        return plan.spans(plan.padded_height), plan

    def _tensor(self, raw: np.ndarray) -> Any:
        import torch

        if raw.dtype == np.uint16:  # torch's uint16 support is partial: move as int16, widen there
            t = torch.from_numpy(raw.view(np.int16)).to(self.torch_device, non_blocking=True)
            return t.to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)
        return torch.from_numpy(raw).to(self.torch_device, non_blocking=True).to(torch.float32)

    def _inputs(
        self, inputs: InputSet, parts: list[tuple[np.ndarray, np.ndarray] | None], n: int, h: int, w: int
    ) -> Any:
        """Assemble the network input on the device: per slot, normalised bands and validity."""
        import torch

        chans = []
        for (slot, acq), part in zip(inputs.slots, parts, strict=True):
            nb = len(next(s.bands for s in self.card.slots if s.name == slot.name))
            if acq is None or part is None:
                chans.append(torch.zeros((n, nb + 1, h, w), device=self.torch_device))
                continue
            raw, ok = part
            x = self._tensor(raw)
            if acq.scale != 1.0 or acq.offset != 0.0:
                x = x * acq.scale + acq.offset
            if acq.sensor == "S1" and acq.units == "linear":
                x = 10.0 * torch.log10(x.clamp_min(1e-6))
            mean, std = self.norm[acq.sensor]
            v = torch.from_numpy(ok).to(self.torch_device, non_blocking=True)[:, None].to(torch.float32)
            x = torch.where(v > 0, (x - mean) / std, torch.zeros((), device=self.torch_device))
            chans += [x, v]
        return torch.cat(chans, 1)

    def run(
        self, inputs: InputSet, strips: list[Strip | None], span: Span, plan: Any, opts: InferOptions
    ) -> SpanResult:
        import torch

        from cloudclear.inference.tiling import pad_to

        assert plan is not None
        rows = span.length
        pw = plan.padded_width
        padded: list[Strip | None] = []
        for s in strips:
            if s is None:
                padded.append(None)
                continue
            # S1 pixels count as valid when seen; S2 slots feed only clear pixels.
            values = pad_to(s.values, rows, pw)
            valid = pad_to(s.valid[None], rows, pw)[0]
            clear = pad_to(s.clear[None], rows, pw)[0]
            padded.append(Strip(values, valid, clear))
        col_spans = plan.spans(pw)
        n_out = len(self.card.bands)
        if self.blend:
            values = np.zeros((n_out, rows, pw), np.float32)
            weight = np.zeros((rows, pw), np.float32)
        else:
            values = np.zeros((n_out, span.core_stop - span.core_start, pw), np.float32)
            weight = None
        r_core = slice(span.core_start - span.start, span.core_stop - span.start)
        todo = []
        for c in col_spans:
            cs = slice(c.start, c.stop)
            if any(p is not None and p.valid[:, cs].any() for p in padded):
                todo.append(c)
        days_row = self._days(inputs)
        status_any = np.zeros((rows, pw), bool)
        for p in padded:
            if p is not None:
                status_any |= p.valid
        for i in range(0, len(todo), self.batch):
            group = todo[i : i + self.batch]
            parts: list[tuple[np.ndarray, np.ndarray] | None] = []
            for (_, acq), p in zip(inputs.slots, padded, strict=True):
                if p is None or acq is None:
                    parts.append(None)
                    continue
                ok = p.clear if acq.sensor == "S2" else p.valid
                parts.append(
                    (
                        np.stack([p.values[:, :, c.start : c.stop] for c in group]),
                        np.stack([ok[:, c.start : c.stop] for c in group]),
                    )
                )
            with torch.inference_mode():
                x = self._inputs(inputs, parts, len(group), rows, group[0].length)
                days = days_row.expand(len(group), -1)
                if self.device == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        y = self.net(x, days)
                else:
                    y = self.net(x, days)
                mean, std = self.norm["S2"]
                idx = self.out_index
                f0 = self.frame * len(idx)
                y = (y[:, f0 : f0 + len(idx)].float() * std[idx] + mean[idx]).cpu().numpy()
            for c, p in zip(group, y, strict=True):
                if self.blend:
                    assert weight is not None
                    wt = blend_weights(rows, c.length)
                    values[:, :, c.start : c.stop] += p * wt
                    weight[:, c.start : c.stop] += wt
                else:
                    cc = slice(c.core_start - c.start, c.core_stop - c.start)
                    values[:, :, c.core_start : c.core_stop] = p[:, r_core, cc]
        width = inputs.grid.width
        status = np.where(status_any, PixelStatus.RECONSTRUCTED, PixelStatus.NODATA).astype(np.uint8)
        if self.blend:
            assert weight is not None
            return SpanResult(values[:, :, :width], status[:, :width], weight[:, :width])
        return SpanResult(values[:, :, :width], status[r_core, :width])


# -- writing ------------------------------------------------------------------------------------


def output_profile(grid: Grid, count: int) -> dict[str, Any]:
    """rasterio creation options of a reconstruction on ``grid``: :data:`OUTPUT_PROFILE`, uint16."""
    from affine import Affine
    from rasterio.crs import CRS

    return dict(
        OUTPUT_PROFILE,
        width=grid.width,
        height=grid.height,
        count=count,
        dtype="uint16",
        nodata=0,
        crs=CRS.from_wkt(grid.crs),
        transform=Affine(*grid.transform),
    )


def status_profile(grid: Grid) -> dict[str, Any]:
    """Creation options of the status sidecar: one uint8 band, no nodata (0 is a class)."""
    return dict(output_profile(grid, 1), dtype="uint8", nodata=None, predictor=1)


def _to_dn(values: np.ndarray, status: np.ndarray) -> np.ndarray:
    dn = np.rint(values * np.float32(QUANTIFICATION))
    np.clip(dn, 1, 65535, out=dn)  # 0 is nodata: a valid dark pixel is written as 1
    out = dn.astype(np.uint16)
    out[:, status == PixelStatus.NODATA] = 0
    return out


class _Writer:
    """A thread that converts finished rows to uint16 and writes them in block-aligned bands."""

    def __init__(self, path: Path, status_path: Path | None, grid: Grid, bands: Sequence[str], tags: dict[str, str]):
        import rasterio

        profile = output_profile(grid, len(bands))
        self.height = grid.height
        self.block = 512
        self.dst = rasterio.open(path, "w", **profile)
        self.dst.update_tags(**tags)
        for i, b in enumerate(bands, 1):
            self.dst.set_band_description(i, b)
        self.sdst: Any = None
        if status_path is not None:
            sprof = status_profile(grid)
            self.sdst = rasterio.open(status_path, "w", **sprof)
            self.sdst.set_band_description(1, "status")
            self.sdst.update_tags(STATUS_CLASSES=", ".join(f"{s.value}={s.name.lower()}" for s in PixelStatus), **tags)
        self.counts = np.zeros(len(PixelStatus), np.int64)
        self.q: queue.Queue[Any] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.next_row = 0
        self.buffered = 0
        self.abort = threading.Event()
        self.worker = _Worker(self._run, "cloudclear-writer")

    def start(self) -> None:
        self.worker.start()

    def put(self, row0: int, values: np.ndarray, status: np.ndarray) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put((row0, values, status), timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if self.abort.is_set():
                    return
                if item is None:
                    self._flush(final=True)
                    return
                row0, values, status = item
                if row0 != self.next_row + self.buffered:
                    raise RuntimeError(f"rows out of order: got {row0}, expected {self.next_row + self.buffered}")
                self.counts += np.bincount(status.ravel(), minlength=len(PixelStatus))[: len(PixelStatus)]
                self.pending.append((_to_dn(values, status), status))
                self.buffered += status.shape[0]
                self._flush(final=False)
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread by put() / close()
            self.error = exc

    def _flush(self, final: bool) -> None:
        from rasterio.windows import Window

        if not self.pending:
            return
        if not final and self.buffered < self.block:
            return
        dn = np.concatenate([p[0] for p in self.pending], axis=1) if len(self.pending) > 1 else self.pending[0][0]
        st = np.concatenate([p[1] for p in self.pending], axis=0) if len(self.pending) > 1 else self.pending[0][1]
        n = st.shape[0] if final else (st.shape[0] // self.block) * self.block
        win = Window(0, self.next_row, dn.shape[2], n)
        self.dst.write(dn[:, :n], window=win)
        if self.sdst is not None:
            self.sdst.write(st[None, :n], window=win)
        self.next_row += n
        self.pending = [(dn[:, n:], st[n:])] if n < st.shape[0] else []
        self.buffered = st.shape[0] - n

    def finish(self) -> None:
        self.q.put(None)
        self.worker.thread.join()
        if self.error is not None:
            raise self.error
        if self.next_row != self.height:
            raise RuntimeError(f"wrote {self.next_row} of {self.height} rows")

    def close(self) -> None:
        """Stop the thread (dropping queued rows) and close the files; safe at any point."""
        self.abort.set()
        if self.worker.start_called:
            while True:  # wake the thread: make room in the queue for the stop marker
                try:
                    self.q.put_nowait(None)
                    break
                except queue.Full:
                    try:
                        self.q.get_nowait()
                    except queue.Empty:
                        pass
            self.worker.join(timeout=60)
        self.dst.close()
        if self.sdst is not None:
            self.sdst.close()


# -- driver -------------------------------------------------------------------------------------


def status_path_for(path: Path) -> Path:
    """The status sidecar of an output: ``NAME_status.tif`` beside ``NAME.tif``."""
    return path.with_name(f"{path.stem}_status{path.suffix or '.tif'}")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def _remove_stale_partials(path: Path) -> None:
    """Delete temporaries left by a killed run for this output (their process is gone)."""
    from cloudclear._tempfiles import remove_orphans

    pattern = re.compile(rf"^\.{re.escape(path.name)}(\.cog)?\.partial-(?P<pid>\d+)$")
    remove_orphans(path.parent, f".{path.name}*.partial-*", pattern)


def _check_output(path: Path, status: Path | None, overwrite: bool) -> None:
    for p in (path, status):
        if p is not None and p.exists() and not overwrite:
            raise OutputExistsError(f"{p}: exists; pass --overwrite to replace it")
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True)
        except OSError as exc:
            raise InferError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise InferError(f"{path}: output folder is not writable")


def _cog_copy(src: Path, dst: Path) -> None:
    from rasterio.shutil import copy

    copy(
        src,
        dst,
        driver="COG",
        compress="ZSTD",
        level=1,
        predictor="YES",
        blocksize=512,
        bigtiff="IF_SAFER",
        num_threads="ALL_CPUS",
        overview_resampling="average",
    )


class _Accumulator:
    """Blend-mode sums for the rows not yet final (fp32, as wide as the output)."""

    def __init__(self, bands: int, width: int):
        self.r0 = 0
        self.values = np.zeros((bands, 0, width), np.float32)
        self.weight = np.zeros((0, width), np.float32)
        self.status = np.zeros((0, width), np.uint8)

    def add(self, start: int, res: SpanResult) -> None:
        assert res.weight is not None
        h = res.status.shape[0]
        stop = start + h
        have = self.r0 + self.weight.shape[0]
        if stop > have:
            grow = stop - have
            self.values = np.concatenate(
                [self.values, np.zeros((self.values.shape[0], grow, self.values.shape[2]), np.float32)], 1
            )
            self.weight = np.concatenate([self.weight, np.zeros((grow, self.weight.shape[1]), np.float32)], 0)
            self.status = np.concatenate([self.status, np.zeros((grow, self.status.shape[1]), np.uint8)], 0)
        a = start - self.r0
        self.values[:, a : a + h] += res.values
        self.weight[a : a + h] += res.weight
        self.status[a : a + h] = res.status

    def pop(self, until: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        n = until - self.r0
        if n <= 0:
            return None
        w = self.weight[:n]
        vals = np.divide(self.values[:, :n], w, out=np.zeros_like(self.values[:, :n]), where=w > 0)
        st = self.status[:n].copy()
        r0 = self.r0
        self.values, self.weight, self.status = self.values[:, n:], self.weight[n:], self.status[n:]
        self.r0 = until
        return r0, vals, st


def run(
    inputs: InputSet,
    method: Method,
    dst_path: str | os.PathLike[str],
    options: InferOptions = InferOptions(),
    progress_desc: str = "",
) -> InferResult:
    """Reconstruct one date from chosen inputs and write it to ``dst_path``.

    The output is written to a hidden temporary file beside ``dst_path`` and renamed into place
    only when complete; any error or interruption removes it.

    Raises:
        OutputExistsError: the output exists and ``options.overwrite`` is False.
        InferError, InvalidRasterError: inputs that cannot be read or placed on the grid.
    """
    t0 = time.perf_counter()
    path = Path(dst_path).expanduser().resolve()
    spath = status_path_for(path) if options.status else None
    if options.bbox:
        inputs = dataclasses.replace(inputs, grid=inputs.grid.crop(options.bbox))
    _check_output(path, spath, options.overwrite)
    _remove_stale_partials(path)
    if spath is not None:
        _remove_stale_partials(spath)
    grid = inputs.grid
    slots = inputs.slots
    used = [(i, a) for i, (_, a) in enumerate(slots) if a is not None]
    tmp, stmp = _temp_name(path), (_temp_name(spath) if spath else None)
    cog_tmp = path.with_name(f".{path.name}.cog.partial-{os.getpid()}")
    sources: list[_Source] = []
    reader: _Prefetcher | None = None
    writer: _Writer | None = None
    bar: Any = None
    try:
        for _, acq in used:
            sources.append(_Source(acq, grid))
        bounds = _strip_bounds(sources, grid.height, options.strip_rows)
        spans, plan = method.row_spans(grid.height, grid.width, bounds)
        tags = {
            "DATETIME": inputs.target.strftime("%Y-%m-%dT%H:%M:%S"),
            "TILE_ID": inputs.tile,
            "CLOUDCLEAR_METHOD": Path(method.name).name,
            "CLOUDCLEAR_INPUTS": ",".join(acq.scene_id for _, acq in used),
            "CLOUDCLEAR_KEEP_OBSERVED": str(options.keep_observed).lower(),
            "QUANTIFICATION_VALUE": str(int(QUANTIFICATION)),
            "BOA_ADD_OFFSET": "0",
            "PROCESSING_LEVEL": "L2A-cloudclear",
        }
        out_bands = method.output_bands(inputs)
        keep_idx = [inputs.bands.index(b) for b in out_bands]
        writer = _Writer(tmp, stmp, grid, out_bands, tags)
        writer.start()
        reader = _Prefetcher(sources, bounds, options.ring)
        reader.start()
        buf = _RowBuffer(iter(reader), len(sources))
        if options.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=grid.height, unit="row", desc=progress_desc or inputs.target.date().isoformat(), leave=False
            )
        target_i = next((i for i, (s, a) in enumerate(slots) if s.role == "target" and s.sensor == "S2" and a), None)
        acc = _Accumulator(len(out_bands), grid.width) if method.blend else None
        for k, span in enumerate(spans):
            a, b = span.start, min(span.stop, grid.height)
            got = buf.get(a, b)
            strips: list[Strip | None] = [None] * len(slots)
            for (i, _), s in zip(used, got, strict=True):
                strips[i] = s
            res = method.run(inputs, strips, span, plan, options)
            if acc is not None:
                acc.add(a, res)
                nxt = spans[k + 1].start if k + 1 < len(spans) else grid.height
                popped = acc.pop(min(nxt, grid.height))
                if popped is None:
                    continue
                r0, vals, st = popped
            else:
                r0 = span.core_start
                r1 = min(span.core_stop, grid.height)
                vals, st = res.values[:, : r1 - r0], res.status[: r1 - r0]
            if options.keep_observed and target_i is not None and strips[target_i] is not None:
                tstrip = strips[target_i]
                tacq = slots[target_i][1]
                assert tstrip is not None and tacq is not None
                h = st.shape[0]
                obs = tstrip.clear[r0 - a : r0 - a + h]
                if obs.any():
                    refl = _reflectance(tstrip.rows(r0 - a, r0 - a + h), tacq, slice(None))[keep_idx]
                    vals = np.where(obs[None], refl, vals)
                    st = np.where(obs, PixelStatus.OBSERVED, st).astype(np.uint8)
            writer.put(r0, vals, st)
            if bar is not None:
                bar.update(st.shape[0])
        writer.finish()
        counts = writer.counts.copy()
        writer.close()
        writer = None
        if options.cog:
            _cog_copy(tmp, cog_tmp)
            os.replace(cog_tmp, tmp)
        if spath is not None and stmp is not None:
            os.replace(stmp, spath)
        os.replace(tmp, path)
    except BaseException:
        for p in (tmp, stmp, cog_tmp):
            if p is not None:
                Path(p).unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
            for p in (tmp, stmp):
                if p is not None:
                    Path(p).unlink(missing_ok=True)
        if reader is not None:
            reader.close()
        for src in sources:
            src.close()
    return InferResult(
        path=path,
        status_path=spath,
        date=inputs.target,
        tile=inputs.tile,
        method=method.name,
        inputs=tuple(a.to_dict() for a in inputs.acquisitions),
        notes=inputs.notes,
        observed=int(counts[PixelStatus.OBSERVED]),
        reconstructed=int(counts[PixelStatus.RECONSTRUCTED]),
        nodata=int(counts[PixelStatus.NODATA]),
        width=grid.width,
        height=grid.height,
        seconds=time.perf_counter() - t0,
        device=method.device,
    )


# -- entry points -------------------------------------------------------------------------------


def load_method(
    method: str,
    *,
    neighbours: int = 3,
    max_days: float | None = None,
    max_cloud: float | None = None,
    bands: Sequence[str] | None = None,
    device: str = "auto",
    window: int | None = None,
    batch: int = 8,
) -> Method:
    """``"gapfill"`` or the path of a ``.safetensors`` checkpoint, as a :class:`Method`."""
    if method == "gapfill":
        return GapfillMethod(
            neighbours,
            60.0 if max_days is None else max_days,
            95.0 if max_cloud is None else max_cloud,
            bands=bands,
        )
    from cloudclear.errors import SceneNotFoundError
    from cloudclear.nets.card import find_checkpoint

    if Path(method).suffix not in ("", ".safetensors"):
        raise InferError(f"--method {method!r}: use gapfill or a .safetensors checkpoint (or a model name)")
    try:
        p = find_checkpoint(method)
    except SceneNotFoundError as exc:
        if Path(method).suffix:
            raise  # a missing checkpoint file: its own message
        raise InferError(f"--method {method!r}: use gapfill or a .safetensors checkpoint ({exc})") from None
    if bands:
        raise InferError("--bands applies to gapfill; a network reads the bands its card names")
    return NetMethod(p, device=device, window=window, batch=batch, max_days=max_days, max_cloud=max_cloud)


@dataclass(frozen=True)
class InferManyResult:
    """The results of every date of one command."""

    results: tuple[InferResult, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"dates": [r.to_dict() for r in self.results]}


def infer(
    catalog: Any,
    dates: Sequence[str | datetime],
    method: Method,
    dst: str | os.PathLike[str],
    *,
    tile: str | None = None,
    options: InferOptions = InferOptions(),
    on_result: Callable[[InferResult], None] | None = None,
) -> InferManyResult:
    """Reconstruct one or more dates of a tile from a catalog.

    Args:
        catalog: an open :class:`cloudclear.catalog.Catalog` (or the path of one).
        dates: dates to reconstruct (``YYYY-MM-DD`` or ISO datetimes).
        method: from :func:`load_method`.
        dst: for one date, the output file; for several, a folder (files named
            ``S2_T{tile}_{YYYYMMDD}_{method}.tif``) or a path containing ``{date}``.
        tile: the S2 tile when the catalog holds several.
        options: see :class:`InferOptions`.
        on_result: called after each date (e.g. to print a line).

    Raises:
        CloudClearError: see :func:`choose_inputs` and :func:`run`. With several dates, a date
            whose inputs cannot be chosen stops the run before anything is written.
    """
    from cloudclear.catalog import Catalog
    from cloudclear.inference.select import choose_inputs, output_name

    if not isinstance(catalog, Catalog):
        catalog = Catalog.open(catalog)
    if not dates:
        raise InferError("no dates to reconstruct")
    # Choose every date's inputs first: a bad date fails before hours of work on the others.
    chosen = [
        choose_inputs(catalog, d, method.layout(), tile=tile, bands=method.bands(), s1_bands=method.s1_bands())
        for d in dates
    ]
    dst_text = str(dst)
    if (
        len(chosen) > 1
        and "{date}" not in dst_text
        and Path(dst_text).suffix.lower() in (".tif", ".tiff")
        and not Path(dst_text).is_dir()
    ):
        raise InferError(f"{dst_text}: {len(chosen)} dates need a folder or a path containing {{date}}")
    paths: list[Path] = []
    for inp in chosen:
        if "{date}" in dst_text:
            paths.append(Path(dst_text.replace("{date}", inp.target.strftime("%Y%m%d"))))
        elif len(chosen) > 1 or Path(dst_text).is_dir():
            paths.append(Path(dst_text) / output_name(inp.tile, inp.target, method.name))
        else:
            paths.append(Path(dst_text))
    if len(set(paths)) != len(paths):
        raise InferError(f"{dst_text}: several dates map to the same output file; use a folder or {{date}}")
    for p in paths:
        _check_output(p.expanduser().resolve(), status_path_for(p) if options.status else None, options.overwrite)
    results = []
    for i, (inp, p) in enumerate(zip(chosen, paths, strict=True)):
        desc = f"{inp.target.date().isoformat()} ({i + 1}/{len(chosen)})"
        r = run(inp, method, p, options, progress_desc=desc)
        results.append(r)
        if on_result is not None:
            on_result(r)
    return InferManyResult(tuple(results))
