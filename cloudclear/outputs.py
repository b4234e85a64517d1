"""The one way cloudclear writes a file or folder: a temporary beside the target, every write and
close checked, fsync, rename.

Every GeoTIFF, PNG, catalog, checkpoint and patch store the tool writes goes through
:func:`atomic_output` (one target) or :func:`atomic_outputs` (several targets that appear together,
such as an output GeoTIFF and its status sidecar)::

    with atomic_output(dst, overwrite=False) as tmp:
        write_something(tmp)          # any exception: tmp removed, dst untouched

On success the temporary is flushed to disk and renamed onto the target, so the target is either
the complete new file or, after any failure (disk full, read-only folder, a crash, SIGKILL), what
was there before. A failure caused by the file system becomes :class:`~cloudclear.errors.OutputError`
naming the target and the cause in one line.

Temporaries are hidden names carrying the writer's PID (``.NAME.partial-PID``); a later run for the
same target deletes those of processes that no longer exist.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from cloudclear._tempfiles import remove_orphans
from cloudclear.errors import CloudClearError, OutputError, OutputExistsError, describe_os_error

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)(?P<suffix>\.[A-Za-z0-9]+)?$")


def partial_path(dst: str | os.PathLike[str]) -> Path:
    """The temporary name :func:`atomic_output` writes ``dst`` under (same folder, same suffix).

    The suffix is kept because GDAL and matplotlib choose a format by it.
    """
    dst = Path(dst)
    return dst.parent / f".{dst.stem}.partial-{os.getpid()}{dst.suffix}"


def remove_stale_partials(dst: str | os.PathLike[str]) -> None:
    """Delete temporaries of ``dst`` left by processes that no longer exist, and the files their
    writers keep beside them (SQLite's ``-journal`` / ``-wal`` / ``-shm`` of a GeoPackage killed
    mid-write, GDAL's ``.aux.xml``)."""
    dst = Path(dst)
    if dst.parent.is_dir():
        pattern = re.compile(
            rf"^\.{re.escape(dst.stem)}\.partial-(?P<pid>\d+){re.escape(dst.suffix)}(-journal|-wal|-shm|\.aux\.xml)?$"
        )
        remove_orphans(dst.parent, f".{glob_escape(dst.stem)}.partial-*", pattern)


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def check_target(dst: str | os.PathLike[str], overwrite: bool, what: str = "output") -> Path:
    """Refuse a target that exists (unless ``overwrite``) or whose folder cannot hold it.

    Raises:
        OutputExistsError: ``dst`` exists and ``overwrite`` is false.
        OutputError: the folder does not exist or is not writable, or ``dst`` is a folder where a
            file is expected (or the other way round).
    """
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{dst}: {what} exists; pass --overwrite to replace it")
    parent = dst.parent
    if not parent.is_dir():
        raise OutputError(f"{dst}: cannot write {what} (no such folder: {parent})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{dst}: cannot write {what} (folder {parent} is not writable)")
    return dst


def _fsync_path(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_file(child)
        _fsync_dir(path)
    else:
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename is still atomic
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path) -> None:
    """Give files the mode a plain ``open()`` would (temporaries from mkstemp are 0600)."""
    mode = (0o777 if path.is_dir() else 0o666) & ~_umask()
    with contextlib.suppress(OSError):
        os.chmod(path, mode)


def remove_path(path: Path) -> None:
    """Delete a file or folder if it exists, ignoring errors (clean-up after a failure)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def output_error(dst: str | os.PathLike[str], exc: BaseException, what: str = "output") -> OutputError:
    """An :class:`OutputError` naming ``dst`` and the cause of ``exc`` in one line.

    GDAL reports a full disk as "Write failed" with the errno only in its log; where the cause is
    not an errno, a folder with (almost) no free space is named as the cause. Call this before
    removing the temporaries, while they still fill the disk.
    """
    cause = describe_os_error(exc)
    if cause not in _KNOWN:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(Path(dst).parent).free < _NEARLY_FULL:
                cause = "no space left on device"
    return OutputError(f"{dst}: cannot write {what} ({cause})")


_KNOWN = ("no space left on device", "read-only file system", "permission denied", "disk quota exceeded")
_NEARLY_FULL = 1 << 20


def _is_io_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and not isinstance(exc, CloudClearError):
        return True
    # rasterio's errors (RasterioIOError, CPLE_FileIOError, ...) do not all derive from OSError
    module = type(exc).__module__ or ""
    if module.startswith("rasterio") or module.startswith("pyogrio") or module.startswith("fiona"):
        return True
    if isinstance(exc, RuntimeError) and ("write" in str(exc).lower() or "space" in str(exc).lower()):
        return True  # torch / safetensors report a failed write as RuntimeError
    return False


@contextlib.contextmanager
def atomic_outputs(
    targets: Sequence[str | os.PathLike[str]], overwrite: bool = False, what: str = "output"
) -> Iterator[list[Path]]:
    """Write several targets that appear together, or not at all.

    Yields one temporary path per target (same folder, same suffix). When the block ends without an
    exception, each temporary is flushed to disk and renamed onto its target, in order; a folder
    target replaces an existing folder only after the new one is complete. On any exception every
    temporary is removed and the targets are untouched; file-system failures are raised as
    :class:`OutputError` naming the target, other exceptions pass through unchanged.

    Args:
        targets: final paths (files or folders).
        overwrite: replace existing targets; without it an existing target is an
            :class:`OutputExistsError` before anything is written.
        what: what the targets are, for messages ("output", "catalog", "checkpoint", ...).
    """
    dsts = [Path(t) for t in targets]
    for dst in dsts:
        check_target(dst, overwrite, what)
        remove_stale_partials(dst)
    tmps = [partial_path(dst) for dst in dsts]
    for tmp in tmps:
        remove_path(tmp)
    current = dsts[0] if dsts else Path(".")
    try:
        yield tmps
        for dst, tmp in zip(dsts, tmps, strict=True):
            current = dst
            if not tmp.exists():
                raise OutputError(f"{dst}: cannot write {what} (the writer produced nothing)")
            _fsync_path(tmp)
            _publish_mode(tmp)
        for dst, tmp in zip(dsts, tmps, strict=True):
            current = dst
            _replace(tmp, dst)
            _fsync_dir(dst.parent)
    except BaseException as exc:
        error = output_error(current, exc, what) if _is_io_failure(exc) else None
        for tmp in tmps:
            remove_path(tmp)
        if error is not None:
            raise error from exc
        raise


def _replace(tmp: Path, dst: Path) -> None:
    if tmp.is_dir() and dst.exists() and not dst.is_symlink():
        # os.replace cannot put a folder over a non-empty one: move the old one aside first, so the
        # target is never missing for longer than two renames and never half-written
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        remove_path(old)
        os.replace(dst, old)
        try:
            os.replace(tmp, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        remove_path(old)
    else:
        os.replace(tmp, dst)


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike[str], overwrite: bool = False, what: str = "output") -> Iterator[Path]:
    """Write one file or folder atomically; see :func:`atomic_outputs`.

    Example::

        with atomic_output("out/quicklook.png", overwrite=True, what="plot") as tmp:
            fig.savefig(tmp)
    """
    with atomic_outputs([dst], overwrite=overwrite, what=what) as tmps:
        yield tmps[0]


def check_geotiff_complete(path: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None) -> None:
    """Check that every tile or strip of every band of a GeoTIFF was written.

    GDAL reports some write failures (a full disk among them) as logged errors rather than
    exceptions, leaving blocks with no data in the file; such a file opens and reads as zeros.
    This reads the TIFF block tables (no pixels) and raises :class:`OutputError` naming ``dst``
    (or ``path``) when a block is missing or lies past the end of the file.
    """
    import rasterio

    size = os.path.getsize(path)
    name = dst if dst is not None else path
    try:
        with rasterio.open(path) as ds:
            bh, bw = ds.block_shapes[0]
            rows = (ds.height + bh - 1) // bh
            cols = (ds.width + bw - 1) // bw
            for b in range(1, ds.count + 1) if ds.interleaving is not None and ds.interleaving.name == "BAND" else [1]:
                for r in range(rows):
                    for c in range(cols):
                        off = ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=b)
                        cnt = ds.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=b)
                        if not off or not cnt or int(off) == 0 or int(off) + int(cnt) > size:
                            raise OutputError(f"{name}: cannot write output (block {r},{c} of band {b} is missing)")
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read it back means it is not complete
        raise output_error(name, exc) from exc


_GDAL_LOGGERS = ("rasterio._env", "rasterio._io", "rasterio._err")
_WRITE_FAILURE = re.compile(
    r"no space|disk full|quota|write error|write failed|failed to write|cannot write|error.{0,40}while writing"
    r"|_tiffWriteProc|TIFFAppendToStrip|TIFFFlush|TIFFWrite",
    re.IGNORECASE,
)


class WriteFailures(logging.Filter):
    """Write failures that GDAL logs instead of raising (libtiff's "No space left on device"),
    collected while installed and kept off stderr; :meth:`check` turns them into an
    :class:`~cloudclear.errors.OutputError`.

    Use as a context manager around the writing; other log records pass unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.levels: dict[str, int] = {}
        self.saved: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # rasterio logs GDAL failures at WARNING / ERROR, or at INFO ("GDAL signalled an error")
        # when it means to raise them, which it does not always do for a failed block write.
        message = record.getMessage()
        if (record.levelno >= logging.WARNING or message.startswith("GDAL signalled")) and _WRITE_FAILURE.search(
            message
        ):
            self.messages.append(message)
            return False
        return record.levelno >= self.levels.get(record.name, logging.NOTSET)

    def check(self, name: Path) -> None:
        """Raise an :class:`OutputError` naming ``name`` and the first failure's cause, if any."""
        if self.messages:
            raise output_error(name, RuntimeError(self.messages[0]))

    def __enter__(self) -> WriteFailures:
        # The INFO records must be made to be seen: lower the loggers' level for the duration,
        # and let through only what their own level would have let through.
        for name in _GDAL_LOGGERS:
            logger = logging.getLogger(name)
            self.levels[name] = logger.getEffectiveLevel()
            self.saved[name] = logger.level
            if not logger.isEnabledFor(logging.INFO):
                logger.setLevel(logging.INFO)
            logger.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in _GDAL_LOGGERS:
            logger = logging.getLogger(name)
            logger.removeFilter(self)
            logger.setLevel(self.saved[name])
