"""The first pass of an index: every new or changed file's metadata, with the pixels its statistics
will read (:func:`read_files`), in worker processes where there are many files; and the fork map
(:func:`forked_map`) that pass and the scenes' statistics run on.

Opening a small file is CPU work (GDAL parses its header, rasterio wraps it), not waiting on a disk,
so an index of thousands of files is bound by one core. Where the platform forks (Linux), files are
read by ``jobs`` processes forked from this one: they inherit its imports and its GDAL settings, so a
worker starts in milliseconds. What they return is merged in the files' order, so the catalog is the
same whatever ``jobs`` is.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cloudclear.catalog.stats import PRELOAD_BYTES, Preloaded
from cloudclear.catalog.values import float_scale
from cloudclear.errors import InvalidRasterError
from cloudclear.scenes import FileInfo, classify, read_file_info

#: Fewer items than this (files to open, scenes to count) are done in this process: forking
#: workers would cost more than it saves.
PARALLEL_MIN_ITEMS = 64
#: Most worker processes by default (an index of small files scales to about this many cores).
MAX_DEFAULT_JOBS = 8


@dataclass(frozen=True)
class FileRead:
    """One file of the first pass.

    Attributes:
        path: the file (absolute, as scanned).
        size, mtime_ns: its ``stat`` (what a later index compares).
        info: its metadata; None when it is no readable raster.
        error: why not (one line naming the file); None when read.
        opened: whether it was opened this time (False: taken from the previous catalog).
    """

    path: str
    size: int
    mtime_ns: int
    info: FileInfo | None
    error: str | None
    opened: bool


def default_jobs() -> int:
    """The worker processes an index uses by default: the CPUs this process may run on, at most
    :data:`MAX_DEFAULT_JOBS`; 1 where the platform does not fork (files read in this process)."""
    if not _forks():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_JOBS))


def _forks() -> bool:
    import multiprocessing

    # macOS offers fork, but frameworks GDAL may load there are not safe across it.
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def take_pixels(preloaded: Preloaded, src: Any, info: FileInfo) -> FileInfo:
    """What an index does with each file while it is open: its float scale from its data, and the
    pixels its statistics will read kept in ``preloaded`` (the ``then`` of
    :func:`~cloudclear.scenes.read_file_info`)."""
    try:
        role = classify(info)
    except InvalidRasterError:
        role = None  # no scene's: float_scale and the statistics leave it alone
    info = float_scale(info, src, role)
    return preloaded.take(src, info, role) if role is not None else info


def _read_one(path: Path, preloaded: Preloaded) -> tuple[FileInfo | None, str | None]:
    try:
        return read_file_info(path, then=lambda src, info: take_pixels(preloaded, src, info)), None
    except InvalidRasterError as exc:
        return None, str(exc)


def read_files(
    paths: Sequence[Path],
    cache: dict[str, Any],
    preloaded: Preloaded,
    *,
    jobs: int = 1,
    progress: bool = False,
) -> list[FileRead]:
    """Read every file's metadata (from ``cache`` where its size and time are unchanged), keeping
    in ``preloaded`` the pixels of the files opened that its statistics will read.

    Args:
        paths: the raster files, in the order the catalog lists them.
        cache: path -> (size, mtime_ns, info, error) from the previous catalog.
        preloaded: where the pixels go (within its budget; a file beyond it is opened again by
            its statistics).
        jobs: worker processes (see :func:`forked_map`).
        progress: a progress bar on stderr.

    Returns:
        One :class:`FileRead` per path, in order.
    """
    from tqdm import tqdm

    stats = [p.stat() for p in paths]
    todo = [
        i
        for i, (p, st) in enumerate(zip(paths, stats, strict=True))
        if not ((hit := cache.get(str(p))) and hit[0] == st.st_size and hit[1] == st.st_mtime_ns)
    ]

    def read(i: int) -> tuple[FileInfo | None, str | None, _Held | None]:
        # In a worker the pixels travel back with the metadata; here they stay where they are.
        mine = Preloaded(budget=PRELOAD_BYTES // 8) if forked() else preloaded
        info, error = _read_one(paths[i], mine)
        return info, error, mine.give(info.path) if info is not None and mine is not preloaded else None

    done: dict[int, tuple[FileInfo | None, str | None]] = {}
    with tqdm(total=len(paths), desc="metadata", unit="file", disable=not progress, leave=False) as bar:
        bar.update(len(paths) - len(todo))
        for i, (info, error, held) in zip(todo, forked_map(read, todo, jobs), strict=True):
            if info is not None and held is not None:
                preloaded.keep(info, *held)
            done[i] = info, error
            bar.update()
    out = []
    for i, (p, st) in enumerate(zip(paths, stats, strict=True)):
        info, error = done[i] if i in done else cache[str(p)][2:4]
        out.append(FileRead(str(p), st.st_size, st.st_mtime_ns, info, error, i in done))
    return out


_Held = tuple[dict[int, Any], tuple[Any, ...]]
_T = TypeVar("_T")
_R = TypeVar("_R")
#: The function :func:`forked_map` runs, as its workers inherit it (a closure needs no pickling).
_TASK: Callable[[Any], Any] | None = None
#: Whether this process is one of :func:`forked_map`'s workers.
_IN_WORKER = False


def forked() -> bool:
    """Whether this process is a worker of :func:`forked_map`."""
    return _IN_WORKER


def runs_forked(n: int, jobs: int) -> bool:
    """Whether :func:`forked_map` runs ``n`` items in worker processes."""
    return jobs > 1 and n >= PARALLEL_MIN_ITEMS and _forks()


def forked_map(fn: Callable[[_T], _R], items: Sequence[_T], jobs: int) -> Iterator[_R]:
    """``map(fn, items)``, in ``jobs`` processes forked from this one where :func:`runs_forked`,
    else here; results come in the order of ``items``.

    The workers inherit ``fn`` (which may be a closure over this process's state) and everything
    imported; only the items and the results are pickled. ``fn`` must not rely on threads or on
    OpenMP runtimes this process started (a forked child has none of its threads): the index runs
    GDAL's reading and numpy's statistics there, and its detectors here. An exception ``fn`` raises
    in a worker is raised here.
    """
    if not runs_forked(len(items), jobs):
        yield from map(fn, items)
        return
    import multiprocessing

    global _TASK
    # Small chunks spread the work evenly, and a worker holds little at once.
    size = max(4, min(64, len(items) // (jobs * 8)))
    chunks = [items[k : k + size] for k in range(0, len(items), size)]
    _TASK = fn
    # What exists now is the workers' to read, not to collect: frozen, a worker's collections skip
    # it, so they do not write into (and copy) every page of it.
    gc.freeze()
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(chunks)), initializer=_start_worker) as pool:
            for part in pool.imap(_run_chunk, chunks):
                yield from part
    finally:
        _TASK = None
        gc.unfreeze()


def _start_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True
    # GDAL's decoding threads (GDAL_NUM_THREADS) live in a pool this process may have started:
    # a forked child has none of its threads, and waiting on them would hang.
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_NUM_THREADS", "1")


def _run_chunk(items: Sequence[Any]) -> list[Any]:
    assert _TASK is not None
    return [_TASK(x) for x in items]
