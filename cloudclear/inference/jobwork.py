"""The worker side of :mod:`.jobs`: what a task is, and running one in a worker process.

Everything here is small and picklable (a :class:`Task`, a :class:`MethodSpec`, the options); a
worker process loads the method and opens the catalog once and keeps them for its next tasks.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear.errors import CloudClearError
from cloudclear.gdal import gdal_env
from cloudclear.inference.methods import Method, load_method
from cloudclear.inference.pipeline import InferOptions, choose, run
from cloudclear.inference.writer import ROLE_STATUS, ROLE_TAG, status_path_for

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog


@dataclass(frozen=True)
class Task:
    """One tile-date: the place (tile or grid name), the date as given, the output file (absolute)
    and the ``--grid`` choice, if any."""

    tile: str
    date: str
    path: str
    grid: str | None = None

    @property
    def label(self) -> str:
        return f"{self.tile} {self.date}"


@dataclass(frozen=True)
class MethodSpec:
    """A method by name and the keyword arguments of :func:`.methods.load_method`: what a worker
    needs to load it itself."""

    method: str
    neighbours: int = 3
    max_days: float | None = None
    max_cloud: float | None = None
    bands: tuple[str, ...] | None = None
    device: str = "auto"
    window: int | None = None
    batch: int = 8
    window_memory: int | None = None

    @property
    def is_network(self) -> bool:
        return self.method != "gapfill"

    def load(self) -> Method:
        return load_method(
            self.method,
            neighbours=self.neighbours,
            max_days=self.max_days,
            max_cloud=self.max_cloud,
            bands=list(self.bands) if self.bands else None,
            device=self.device,
            window=self.window,
            batch=self.batch,
            window_memory=self.window_memory,
        )


# One per worker process: the methods loaded and the catalogs opened (by path and mtime).
_methods: dict[MethodSpec, Method] = {}
_catalogs: dict[tuple[str, int], Catalog] = {}
_lock = threading.Lock()


def cached_method(spec: MethodSpec) -> Method:
    """The method of ``spec``, loaded once per process (a worker's tasks, the runner's check)."""
    with _lock:
        if spec not in _methods:
            _pick_gpu()
            _methods[spec] = spec.load()
        return _methods[spec]


def _catalog(path: str) -> Catalog:
    from cloudclear.catalog import Catalog

    key = (path, Path(path).stat().st_mtime_ns if Path(path).exists() else 0)
    with _lock:
        if key not in _catalogs:
            _catalogs[key] = Catalog.open(path)
        return _catalogs[key]


def _worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _pick_gpu() -> None:
    """On a local cluster's numbered worker of a machine with several GPUs, use GPU number
    (worker name modulo GPUs); external workers choose theirs with CUDA_VISIBLE_DEVICES."""
    worker = _worker()
    if worker is None or "CUDA_VISIBLE_DEVICES" in os.environ or not isinstance(worker.name, int):
        return
    try:
        import torch

        if torch.cuda.device_count() > 1:
            torch.cuda.set_device(worker.name % torch.cuda.device_count())
    except Exception:  # noqa: BLE001, S110 - no torch or no CUDA: nothing to choose
        pass


def _drop_orphan_status(path: Path, options: InferOptions) -> None:
    """A run killed between the renames of the sidecar and the image leaves a sidecar alone (it is
    renamed first): remove it, so the redone task does not refuse it as an existing output."""
    spath = status_path_for(path)
    if not options.status or path.exists() or not spath.is_file():
        return
    import rasterio

    try:
        with rasterio.open(spath) as ds:
            orphan = ds.tags().get(ROLE_TAG) == ROLE_STATUS
    except Exception:  # noqa: BLE001 - not ours: leave it, the run refuses it by name
        return
    if orphan:
        spath.unlink(missing_ok=True)


def run_task(catalog_path: str, task: Task, spec: MethodSpec, options: InferOptions) -> dict[str, Any]:
    """Choose one tile-date's inputs and write its output; returns a small dict (status, error,
    seconds, worker, and the run's :meth:`~.pipeline.InferResult.to_dict`). A
    :class:`~cloudclear.errors.CloudClearError` is the task's failure, returned as its one line;
    anything else is raised (the scheduler reports it)."""
    t0 = time.perf_counter()
    worker = _worker()
    where = worker.address if worker is not None else f"pid {os.getpid()}"
    try:
        method = cached_method(spec)
        catalog = _catalog(catalog_path)
        with gdal_env("infer"):
            inputs = choose(catalog, task.date, method, tile=task.tile, options=options, grid=task.grid)
        _drop_orphan_status(Path(task.path), options)
        result = run(inputs, method, task.path, options)
    except CloudClearError as exc:
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {"status": "failed", "error": error, "seconds": time.perf_counter() - t0, "worker": where}
    return {"status": "done", "seconds": time.perf_counter() - t0, "worker": where, "result": result.to_dict()}
