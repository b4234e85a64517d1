"""Reconstruction methods: what turns the strips of one date's inputs into reflectance.

- :class:`GapfillMethod`: per-pixel linear interpolation in time (no training), on column chunks
  in a thread pool.
- :class:`NetMethod`: a network from a checkpoint, run window by window through the shared window
  loop (:func:`cloudclear.inference.tiling.predict_row`), on the GPU with bf16 autocast when there
  is one.

:func:`load_method` makes either from a ``--method`` value. The pipeline
(:mod:`cloudclear.inference.pipeline`) asks a method for its input layout, the row spans it
computes, and one :class:`SpanResult` per span.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudclear.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    NoInputsError,
    NonFiniteOutputError,
    ResourceLimitError,
)
from cloudclear.gapfill import PixelStatus, gapfill_raw
from cloudclear.inference.reading import Strip, reflectance
from cloudclear.inference.select import InputRequest, InputSet, gapfill_layout
from cloudclear.inference.tiling import pad_to, predict_row
from cloudclear.inference.windows import Span, WindowPlan, budget_window, window_bytes
from cloudclear.inference.writer import to_dn

if TYPE_CHECKING:
    from cloudclear.inference.pipeline import InferOptions


@dataclass
class SpanResult:
    """A method's output for one row span: reflectance, status, and (blend mode) weights."""

    # (bands, rows, cols) float32 reflectance (or weighted sums when blending), or uint16 DN as
    # writer.to_dn makes them (gapfill: converted chunk by chunk while in cache)
    values: np.ndarray
    status: np.ndarray  # (rows, cols) uint8 PixelStatus
    weight: np.ndarray | None = None  # (rows, cols) summed blend weights


class Method:
    """What the pipeline needs from a reconstruction method."""

    name: str = ""
    device: str = "cpu"
    blend: bool = False
    #: The method's output already holds the target's clear pixels as they are (with
    #: ``InferOptions.keep_observed``), and their status OBSERVED: the pipeline need not copy them.
    keeps_observed: bool = False

    def layout(self) -> InputRequest:
        """The acquisitions the method reads around a date."""
        raise NotImplementedError

    def row_spans(
        self, height: int, width: int, strips: Sequence[tuple[int, int]]
    ) -> tuple[list[Span], WindowPlan | None]:
        """Row spans to compute, in order (each a window row: rows to read, core rows kept)."""
        raise NotImplementedError

    def run(
        self, inputs: InputSet, strips: list[Strip | None], span: Span, plan: Any, opts: InferOptions
    ) -> SpanResult:
        """Reconstruct one row span from the strips of every slot (None for an empty slot)."""
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


class GapfillMethod(Method):
    """Per-pixel linear interpolation in time between the nearest clear dates (no training).

    Args:
        neighbours: acquisitions looked for on each side of the date.
        max_days: how far from the date to look.
        max_cloud: neighbour scenes above this cloud % are skipped.
        bands: S2 bands to fill (default: the nearest scene's).
        chunk_cols: columns per work item of the thread pool...
        chunk_rows: ... and rows: a block whose arrays stay in the CPU's cache (64 x 1024 px,
            4 bands of float32: 1 MiB) runs faster than whole strips.
    """

    name = "gapfill"
    keeps_observed = True

    def __init__(
        self,
        neighbours: int = 3,
        max_days: float = 60.0,
        max_cloud: float = 95.0,
        bands: Sequence[str] | None = None,
        chunk_cols: int = 1024,
        chunk_rows: int = 64,
    ):
        if neighbours < 1:
            raise NoInputsError(f"gapfill needs at least 1 neighbour on each side, not {neighbours}")
        self._layout = gapfill_layout(neighbours, max_days, max_cloud)
        self._bands = bands
        self.chunk_cols = chunk_cols
        self.chunk_rows = chunk_rows

    def layout(self) -> InputRequest:
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
        keep = next((k for k, (a, _) in enumerate(used) if a.role == "target"), None) if opts.keep_observed else None
        h = span.core_stop - span.core_start
        width = inputs.grid.width
        # Written as uint16 DN here, chunk by chunk while the chunk is in cache (the writer takes it as is).
        out = np.zeros((len(inputs.bands), h, width), np.uint16)
        status = np.zeros((h, width), np.uint8)
        linear = any(a.units.lower() == "linear" for a, _ in used)

        def work(block: tuple[int, int]) -> None:
            r0, c0 = block
            rows, cols = slice(r0, min(r0 + self.chunk_rows, h)), slice(c0, min(c0 + self.chunk_cols, width))
            part = [(a, s.rows(rows.start, rows.stop)) for a, s in used]
            clear = [s.clear[:, cols] for _, s in part]
            if linear:  # dB is not raw * scale + offset: convert every input first
                converted = [reflectance(s, a, cols) for a, s in part]
                values, st = gapfill_raw(converted, clear, times, 0.0, keep=keep)
            else:
                raw = [s.values[:, :, cols] for _, s in part]
                scales = [a.scale for a, _ in part]
                offsets = [a.offset for a, _ in part]
                values, st = gapfill_raw(raw, clear, times, 0.0, scales, offsets, keep=keep)
            out[:, rows, cols], status[rows, cols] = to_dn(values, st, overwrite=True), st

        if used:
            blocks = [(r, c) for r in range(0, h, self.chunk_rows) for c in range(0, width, self.chunk_cols)]
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                list(pool.map(work, blocks))
        return SpanResult(out, status)


def default_window_memory(device: str) -> int:
    """The memory budget of a batch of windows on ``device``, in bytes, when none is given.

    CUDA: half the device memory free when the method is loaded (the rest for the allocator's
    cache, cuDNN workspaces and other processes). CPU: an eighth of the physical memory, at most
    2 GiB (several workers of a local cluster each run a method; the strips read and the output
    written take memory too).
    """
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free // 2)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 2**30
    return int(min(2 * 2**30, ram // 8))


class NetMethod(Method):
    """A network from a checkpoint, run window by window.

    Window size: a fully convolutional network (margin crop) runs the window that fits
    ``window_memory`` and computes the fewest pixels, never smaller than the card's
    (:func:`cloudclear.inference.windows.budget_window`), sized per image; its memory per pixel is
    measured once, on the first image (:func:`cloudclear.nets.feed.forward_bytes_per_pixel`). The
    window comes first: the batch is then as many windows, up to ``batch``, as the budget still
    holds (at least one). Any such window gives the same values as the card's (the margin covers
    the receptive field on the same pooling grid). A network with per-window context (blend) keeps
    the card's window, the size it was trained on, and ``batch``. ``window`` forces a side (and
    ``batch``) for either.

    Batch inputs are copied into arrays kept per thread and reused from batch to batch and row to
    row (pinned host memory on CUDA), not stacked anew for every batch.

    Args:
        path: the ``.safetensors`` checkpoint (its card says how to feed it).
        device: ``auto``, ``cpu`` or ``cuda``.
        window: force this window side (default: sized by ``window_memory``; blend: the card's).
        batch: windows per forward pass (at most, when the budget sizes the window).
        max_days: override the card's S2 search window.
        max_cloud: override the card's cloud limit.
        net: the network, when already loaded (with ``card``).
        card: its model card.
        window_memory: bytes a batch of windows may take (default: :func:`default_window_memory`).

    Raises:
        ResourceLimitError: ``device="cuda"`` without a CUDA device.
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
        window_memory: int | None = None,
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
            raise ResourceLimitError("--device cuda: no CUDA device is available")
        self.device = device
        self.torch_device = torch.device(device)
        self.net = net.to(self.torch_device).eval()
        if device == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.blend = not card.fully_convolutional
        self.window = window  # forced side; None: sized per image (margin crop) or the card's (blend)
        self.batch = max(1, batch)
        self.window_memory = default_window_memory(device) if window_memory is None else int(window_memory)
        self._bpp: float | None = None
        self._local = threading.local()  # per thread: the reused batch buffers
        slots = tuple(card.slots)
        self._layout = InputRequest(
            slots,
            max_days=card.max_days if max_days is None else max_days,
            max_cloud=card.max_cloud if max_cloud is None else max_cloud,
            s1_max_hours=card.s1_max_hours,
            stand_ins=tuple(card.stand_ins.items()),
        )
        from cloudclear.nets.feed import Feed

        self.feed = Feed(card, self.torch_device)
        self.frame = card.output_frame()

    def _days(self, inputs: InputSet) -> Any:
        """(1, S2 slots) offsets in days of each S2 slot's acquisition from the date (0 if empty)."""
        return self.feed.days(
            [acq.days if acq is not None else None for slot, acq in inputs.slots if slot.sensor == "S2"]
        )

    def layout(self) -> InputRequest:
        return self._layout

    def bands(self) -> Sequence[str] | None:
        return next(s.bands for s in self.card.slots if s.sensor == "S2")

    def s1_bands(self) -> Sequence[str]:
        return next((s.bands for s in self.card.slots if s.sensor == "S1"), ("VV", "VH"))

    def output_bands(self, inputs: InputSet) -> list[str]:
        # Named as read: a B08 stand-in for B8A is written (and scored) as B08.
        read = dict(zip(self.bands() or (), inputs.bands, strict=False))
        return [read.get(b, b) for b in self.card.bands]

    def bytes_per_pixel(self) -> float:
        """The network's memory per window pixel (batch 1), measured once on a small window."""
        if self._bpp is None:
            from cloudclear.nets.feed import forward_bytes_per_pixel

            side = 8 * self.card.align  # every activation scales with the pixels: any side will do
            self._bpp = forward_bytes_per_pixel(self.net, self.feed, side, side)
        return self._bpp

    def _row_bytes_per_pixel(self) -> float:
        """Host bytes per pixel of a window row: every slot's bands (4 bytes at most) and masks,
        padded copies of them, and the predictions (float32) with their status."""
        slots = sum(4 * len(s.bands) + 2 for s in self.card.slots)
        return 2 * slots + 4 * len(self.card.bands) + 1

    def _sized(self) -> bool:
        return self.window is None and not self.blend

    def window_for(self, height: int, width: int) -> int:
        """The window side for an image of ``height`` x ``width`` (see the class docstring).

        Raises:
            CheckpointError: the window leaves no core after the margins.
        """
        card = self.card
        if not self._sized():
            return self.window or card.window
        try:
            return budget_window(
                height,
                width,
                budget=self.window_memory,
                bytes_per_pixel=self.bytes_per_pixel(),
                batch=1,
                minimum=card.window,
                radius=card.receptive_radius,
                align=card.align,
                row_bytes_per_pixel=self._row_bytes_per_pixel(),
            )
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None

    def batch_for(self, plan: WindowPlan) -> int:
        """Windows per forward pass for ``plan``: ``batch``, or when the budget sizes the window, as
        many (at least 1, at most ``batch``) as it holds."""
        if not self._sized():
            return self.batch
        bpp, row = self.bytes_per_pixel(), self._row_bytes_per_pixel()
        most = min(self.batch, len(plan.spans(plan.padded_width)))  # a batch never spans two rows
        n = 1
        while n < most and window_bytes(plan, n + 1, bpp, row) <= self.window_memory:
            n += 1
        return n

    def row_spans(
        self, height: int, width: int, strips: Sequence[tuple[int, int]]
    ) -> tuple[list[Span], WindowPlan | None]:
        window = self.window_for(height, width)
        try:
            plan = WindowPlan.build(
                height, width, window=window, radius=self.card.receptive_radius, align=self.card.align
            )
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        return plan.spans(plan.padded_height), plan

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A host array of ``shape`` and ``dtype`` kept for this thread under ``key`` and reused
        while they stay the same (pinned memory on CUDA, so copies to the device are asynchronous;
        a batch's copy is done before the next batch refills it, as each batch ends by copying its
        output back)."""
        bufs: dict[str, np.ndarray] = self._local.__dict__.setdefault("buffers", {})
        dtype = np.dtype(dtype)
        buf = bufs.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            if self.device == "cuda":
                import torch

                raw = torch.empty(int(np.prod(shape)) * dtype.itemsize, dtype=torch.uint8, pin_memory=True)
                buf = raw.numpy().view(dtype).reshape(shape)
            else:
                buf = np.empty(shape, dtype)
            bufs[key] = buf
        return buf

    def _inputs(
        self, inputs: InputSet, parts: list[tuple[np.ndarray, np.ndarray] | None], n: int, h: int, w: int
    ) -> Any:
        """The network input on the device, through the one feed (:class:`cloudclear.nets.feed.Feed`):
        per slot, ``parts`` holds the raw values (n, bands, h, w) and where the slot saw the surface."""
        from cloudclear.nets.feed import SlotPixels

        feed = self.feed
        return feed.input(
            [
                None
                if acq is None or part is None
                else SlotPixels(
                    feed.tensor(part[0]),
                    feed.tensor(part[1]),
                    acq.scale,
                    acq.offset,
                    linear=acq.sensor == "S1" and acq.units == "linear",
                )
                for (_, acq), part in zip(inputs.slots, parts, strict=True)
            ],
            n,
            h,
            w,
        )

    def _predict(
        self,
        inputs: InputSet,
        parts: list[tuple[np.ndarray, np.ndarray] | None],
        n: int,
        h: int,
        w: int,
        days_row: Any,
    ) -> np.ndarray:
        """The network on one batch of windows: (n, output bands, h, w) reflectance, float32.

        Raises:
            NonFiniteOutputError: the network produced NaN or infinite values.
        """
        import torch

        with torch.inference_mode():
            x = self._inputs(inputs, parts, n, h, w)
            days = days_row.expand(n, -1)
            if self.device == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = self.net(x, days)
            else:
                y = self.net(x, days)
            y = self.feed.reflectance(y, frame=self.frame)
            finite = torch.isfinite(y).all()  # one reduction per batch; synchronised by the copy below
            out = y.cpu().numpy()
        if not bool(finite):
            raise NonFiniteOutputError(
                f"{self.name}: the network produced NaN or infinite values; its weights are corrupt or "
                "diverged (nothing was written)"
            )
        return out

    def run(
        self, inputs: InputSet, strips: list[Strip | None], span: Span, plan: Any, opts: InferOptions
    ) -> SpanResult:
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
        # Windows whose inputs are all nodata never reach the network.
        todo = [c for c in plan.spans(pw) if any(p is not None and p.valid[:, c.start : c.stop].any() for p in padded)]
        days_row = self._days(inputs)
        status_any = np.zeros((rows, pw), bool)
        for p in padded:
            if p is not None:
                status_any |= p.valid

        batch = self.batch_for(plan)
        cols = min(plan.window, pw)

        def predict(group: Sequence[Span]) -> np.ndarray:
            n = len(group)
            parts: list[tuple[np.ndarray, np.ndarray] | None] = []
            for k, ((_, acq), p) in enumerate(zip(inputs.slots, padded, strict=True)):
                if p is None or acq is None:
                    parts.append(None)
                    continue
                ok = p.clear if acq.sensor == "S2" else p.valid
                vals = self._buffer(f"v{k}", (batch, p.values.shape[0], rows, cols), p.values.dtype)
                seen = self._buffer(f"m{k}", (batch, rows, cols), np.bool_)
                for j, c in enumerate(group):
                    np.copyto(vals[j], p.values[:, :, c.start : c.stop])
                    np.copyto(seen[j], ok[:, c.start : c.stop])
                parts.append((vals[:n], seen[:n]))
            return self._predict(inputs, parts, n, rows, group[0].length, days_row)

        pred = predict_row(span, plan, predict, len(self.card.bands), blend=self.blend, batch=batch, columns=todo)
        width = inputs.grid.width
        status = np.where(status_any, PixelStatus.RECONSTRUCTED, PixelStatus.NODATA).astype(np.uint8)
        if pred.weight is not None:
            return SpanResult(pred.values[:, :, :width], status[:, :width], pred.weight[:, :width])
        r_core = slice(span.core_start - span.start, span.core_stop - span.start)
        return SpanResult(pred.values[:, :, :width], status[r_core, :width])


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
    window_memory: int | None = None,
) -> Method:
    """``"gapfill"``, a model name or the path of a ``.safetensors`` checkpoint, as a :class:`Method`.

    ``window``, ``batch`` and ``window_memory`` (bytes) size a network's windows (:class:`NetMethod`).

    Raises:
        CheckpointError: not gapfill nor a checkpoint, or ``bands`` given for a network.
        CheckpointNotFoundError: the checkpoint file does not exist.
    """
    if method == "gapfill":
        return GapfillMethod(
            neighbours,
            60.0 if max_days is None else max_days,
            95.0 if max_cloud is None else max_cloud,
            bands=bands,
        )
    from cloudclear.nets.card import find_checkpoint

    if Path(method).suffix not in ("", ".safetensors"):
        raise CheckpointError(f"--method {method!r}: use gapfill or a .safetensors checkpoint (or a model name)")
    try:
        p = find_checkpoint(method)
    except CheckpointNotFoundError as exc:
        if Path(method).suffix:
            raise  # a missing checkpoint file: its own message
        raise CheckpointError(f"--method {method!r}: use gapfill or a .safetensors checkpoint ({exc})") from None
    if bands:
        raise CheckpointError("--bands applies to gapfill; a network reads the bands its card names")
    return NetMethod(
        p,
        device=device,
        window=window,
        batch=batch,
        max_days=max_days,
        max_cloud=max_cloud,
        window_memory=window_memory,
    )
