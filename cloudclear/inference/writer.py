"""Writing one date's reconstruction: profiles, the writer thread, and the commit.

A :class:`Writer` thread converts finished rows to uint16 reflectance x 10000 (nodata 0) and writes
512-row bands of 512 x 512 tiles (ZSTD level 1, predictor 2, BIGTIFF=IF_SAFER) to temporaries; a
status sidecar (``NAME_status.tif``, nodata 0, tagged ``CLOUDCLEAR_ROLE=status``) records per pixel
:class:`~cloudclear.gapfill.PixelStatus`. :func:`output_files` hands out those
temporaries through :func:`cloudclear.outputs.atomic_outputs`, so the output and its sidecar
appear together, complete, or not at all; :func:`seal` checks every block of them (GDAL logs some
failed writes, a full disk among them, instead of raising) and makes the COG copies (of both
files). Every failure to write becomes an :class:`~cloudclear.errors.OutputError` naming the file
and the cause, raised in the thread that drives the run.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudclear.errors import CloudClearError, OutputError
from cloudclear.gapfill import PixelStatus
from cloudclear.gridio import Grid
from cloudclear.inference.reading import Worker
from cloudclear.outputs import (
    WriteFailures,
    atomic_outputs,
    check_geotiff_complete,
    output_error,
    partial_path,
    remove_path,
    remove_stale_partials,
)

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
#: The ``CLOUDCLEAR_ROLE`` tag of each file a run writes: what a file is, whatever its name
#: (``cloudclear score`` skips status sidecars by it).
ROLE_TAG = "CLOUDCLEAR_ROLE"
ROLE_OUTPUT = "reconstruction"
ROLE_STATUS = "status"


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
    """Creation options of the status sidecar: one uint8 band, nodata 0 (the class
    :attr:`~cloudclear.gapfill.PixelStatus.NODATA`: no input saw the pixel)."""
    return dict(output_profile(grid, 1), dtype="uint8", nodata=int(PixelStatus.NODATA), predictor=1)


def status_path_for(path: Path) -> Path:
    """The status sidecar of an output: ``NAME_status.tif`` beside ``NAME.tif``."""
    return path.with_name(f"{path.stem}_status{path.suffix or '.tif'}")


def to_dn(values: np.ndarray, status: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Reflectance as uint16 x 10000; 0 (nodata) where the status says so, >= 1 elsewhere.

    ``overwrite``: ``values`` (float32) may be used as the scratch space (no temporary array).
    """
    if overwrite and values.dtype == np.float32:
        dn = values
        dn *= np.float32(QUANTIFICATION)
    else:
        dn = values * np.float32(QUANTIFICATION)
    np.rint(dn, out=dn)
    np.clip(dn, 1, 65535, out=dn)  # 0 is nodata: a valid dark pixel is written as 1
    out = dn.astype(np.uint16)
    out[:, status == PixelStatus.NODATA] = 0
    return out


#: rasterio's loggers, through which GDAL reports errors it does not raise.
@dataclass(frozen=True)
class OutputTemps:
    """Where one run writes before its commit.

    Attributes:
        output: the temporary renamed onto the output.
        status: where the writer thread streams the status band: ``status_output`` itself, or for
            a COG a further temporary that :func:`seal` copies into ``status_output``; None
            without a sidecar.
        stream: where the writer thread streams the reconstruction: ``output`` itself, or for a COG
            a further temporary that :func:`seal` copies into ``output``.
        status_output: the temporary renamed onto the status sidecar, or None.
    """

    output: Path
    status: Path | None
    stream: Path
    status_output: Path | None = None


@contextlib.contextmanager
def output_files(path: Path, status_path: Path | None, *, overwrite: bool, cog: bool) -> Iterator[OutputTemps]:
    """Temporaries for an output and its status sidecar that appear together when the block ends
    without an exception, and are removed (targets untouched) when it raises.

    Raises:
        OutputExistsError: a target exists and ``overwrite`` is false.
        OutputError: a file cannot be written (the cause named), including at the final rename.
    """
    # The sidecar is renamed first, so an image under its final name always has its status beside it.
    targets = ([status_path] if status_path is not None else []) + [path]
    # a COG cannot be streamed: each file is streamed to a further temporary, then copied
    streams = [p.with_name(f"{p.stem}.stream{p.suffix or '.tif'}") for p in targets]
    for stream_target in streams:
        remove_stale_partials(stream_target)  # a killed COG run's streamed files
    with atomic_outputs(targets, overwrite=overwrite, what="output") as tmps:
        made = [partial_path(p) for p in streams] if cog else list(tmps)
        status_out = tmps[0] if status_path is not None else None
        try:
            yield OutputTemps(
                tmps[-1], made[0] if status_path is not None else None, made[-1], status_output=status_out
            )
        finally:
            if cog:
                for p in made:
                    remove_path(p)


def _cog_copy(src: Path, dst: Path, resampling: str = "average", predictor: str = "YES") -> None:
    from rasterio.shutil import copy

    copy(
        src,
        dst,
        driver="COG",
        compress="ZSTD",
        level=1,
        predictor=predictor,
        blocksize=512,
        bigtiff="IF_SAFER",
        num_threads="ALL_CPUS",
        overview_resampling=resampling,
    )


def _check_complete(tmp: Path, name: Path, failures: WriteFailures) -> None:
    try:
        check_geotiff_complete(tmp, name)
    except OutputError:
        failures.check(name)  # the cause GDAL logged, when it did
        try:
            full = shutil.disk_usage(tmp.parent).free < _NEARLY_FULL
        except OSError:
            full = False
        if full:
            raise OutputError(f"{name}: cannot write output (no space left on device)") from None
        raise


_NEARLY_FULL = 1 << 20


def seal(temps: OutputTemps, path: Path, status_path: Path | None, failures: WriteFailures) -> None:
    """Check the closed temporaries block by block and make the COG copies; call before the commit.

    Raises:
        OutputError: a write failed (GDAL logged it), a block is missing or a copy failed,
            naming the final file and the cause.
    """
    failures.check(path)
    _check_complete(temps.stream, path, failures)
    if temps.status is not None and status_path is not None:
        _check_complete(temps.status, status_path, failures)
    copies = [(temps.stream, temps.output, path, "average", "YES")]
    if temps.status is not None and temps.status_output is not None and status_path is not None:
        # classes, not values: an overview pixel is the most common class below it
        copies.append((temps.status, temps.status_output, status_path, "mode", "NO"))
    for src, dst, name, resampling, predictor in copies:
        if src == dst:
            continue
        try:
            _cog_copy(src, dst, resampling, predictor)
        except CloudClearError:
            raise
        except Exception as exc:  # noqa: BLE001 - GDAL raises several types for a failed write
            failures.check(name)
            raise output_error(name, exc) from exc
        failures.check(name)
        _check_complete(dst, name, failures)


class Writer:
    """A thread that converts finished rows to uint16 and writes them in block-aligned bands.

    Rows are handed over in order with :meth:`put`; :meth:`finish` waits for the last write and
    closes the files. A failure in the thread is raised in the caller's thread by the next
    :meth:`put` or by :meth:`finish`, as an :class:`~cloudclear.errors.OutputError` when writing
    failed.

    Args:
        path: where to write the reconstruction (a temporary).
        status_path: where to write the status band, or None.
        grid: the output grid.
        bands: band descriptions.
        tags: dataset tags of both files.
        names: the final names of the two files, for messages.
        failures: collects the write failures GDAL logs; checked after every write.
    """

    def __init__(
        self,
        path: Path,
        status_path: Path | None,
        grid: Grid,
        bands: Sequence[str],
        tags: dict[str, str],
        names: tuple[Path, Path | None],
        failures: WriteFailures,
    ):
        import rasterio

        self.names = names
        self.failures = failures
        self.height = grid.height
        self.block = 512
        self.dst: Any = None
        self.sdst: Any = None
        try:
            self.dst = rasterio.open(path, "w", **output_profile(grid, len(bands)))
            self.dst.update_tags(**{**tags, ROLE_TAG: ROLE_OUTPUT})
            for i, b in enumerate(bands, 1):
                self.dst.set_band_description(i, b)
        except Exception as exc:  # noqa: BLE001 - rasterio raises several types for a failed create
            self._close_files(check=False)
            raise output_error(names[0], exc) from exc
        if status_path is not None:
            try:
                self.sdst = rasterio.open(status_path, "w", **status_profile(grid))
                self.sdst.set_band_description(1, "status")
                classes = ", ".join(f"{s.value}={s.name.lower()}" for s in PixelStatus)
                self.sdst.update_tags(**{**tags, "STATUS_CLASSES": classes, ROLE_TAG: ROLE_STATUS})
            except Exception as exc:  # noqa: BLE001
                self._close_files(check=False)
                raise output_error(names[1] or status_path, exc) from exc
        self.counts = np.zeros(len(PixelStatus), np.int64)
        self.q: queue.Queue[Any] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.next_row = 0
        self.buffered = 0
        self.abort = threading.Event()
        self.worker = Worker(self._run, "cloudclear-writer")

    def start(self) -> None:
        """Start the thread."""
        self.worker.start()

    def put(self, row0: int, values: np.ndarray, status: np.ndarray) -> None:
        """Queue rows ``row0..`` (float reflectance, or uint16 DN as :func:`to_dn` makes them, and
        status); raises the thread's failure, if any."""
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
                # one compare per class: bincount would first widen every pixel to int64
                self.counts += [np.count_nonzero(status == k) for k in range(len(PixelStatus))]
                dn = values if values.dtype == np.uint16 else to_dn(values, status)  # a method may give DN
                self.pending.append((dn, status))
                self.buffered += status.shape[0]
                self._flush(final=False)
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread by put() / finish()
            self.error = exc
            # Nothing reads the queue any more: drop what is there so a waiting put() sees the error.
            with contextlib.suppress(queue.Empty):
                while True:
                    self.q.get_nowait()

    def _write(self, ds: Any, name: Path, data: np.ndarray, window: Any) -> None:
        try:
            ds.write(data, window=window)
        except Exception as exc:  # noqa: BLE001 - rasterio raises several types for a failed write
            raise output_error(name, exc) from exc

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
        self._write(self.dst, self.names[0], dn[:, :n], win)
        if self.sdst is not None:
            self._write(self.sdst, self.names[1] or self.names[0], st[None, :n], win)
        self.failures.check(self.names[0])  # stop at the first failed write, not hours later
        self.next_row += n
        self.pending = [(dn[:, n:], st[n:])] if n < st.shape[0] else []
        self.buffered = st.shape[0] - n

    def finish(self) -> None:
        """Write the last rows, stop the thread and close the files, raising any failure."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.worker.thread.join()
        if self.error is not None:
            raise self.error
        if self.next_row != self.height:
            raise RuntimeError(f"wrote {self.next_row} of {self.height} rows")
        self._close_files(check=True)

    def _close_files(self, check: bool) -> None:
        for ds, name in ((self.dst, self.names[0]), (self.sdst, self.names[1] or self.names[0])):
            if ds is None or ds.closed:
                continue
            try:
                ds.close()  # flushes GDAL's block cache: a full disk may show here first
            except Exception as exc:  # noqa: BLE001
                if check:
                    raise output_error(name, exc) from exc
            if check:
                self.failures.check(name)

    def close(self) -> None:
        """Stop the thread (dropping queued rows) and close the files; safe at any point."""
        self.abort.set()
        if self.worker.start_called:
            while True:  # wake the thread: make room in the queue for the stop marker
                try:
                    self.q.put_nowait(None)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self.q.get_nowait()
            self.worker.join(timeout=60)
        self._close_files(check=False)
