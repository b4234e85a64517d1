"""Many tiles and dates as tasks on Dask distributed: plan, skip what is done, run, report.

A *task* is one tile-date: a place of the catalog, a target date and the output file it writes.
:func:`plan_tasks` lists them; :func:`run_tasks` runs them in-process (``scheduler="serial"``), on
a :class:`distributed.LocalCluster` started for the run (``"local"``), or on an existing cluster
(a scheduler address). Each task reads its inputs by path, chooses them as :func:`.pipeline.infer`
does and writes its own output through :func:`.pipeline.run`; what comes back through the
scheduler is a small dict, never arrays. Each worker process loads the method and opens the
catalog once (:mod:`.jobwork`).

Runs are idempotent: an output that is complete and valid (it opens, its tags say it is a
reconstruction by the same method, its status sidecar is there when one is asked for) is skipped
unless ``overwrite``; everything else is redone. Outputs appear under their final names only when
complete (:func:`cloudclear.outputs.atomic_outputs`), so a killed worker or a killed run leaves at
most hidden temporaries named after a dead process, which the rerun removes.

GPU workers: a network's tasks ask for one ``GPU`` resource each when the cluster's workers
advertise one; start them with ``dask worker ADDRESS --resources GPU=1`` (one per GPU, with
``CUDA_VISIBLE_DEVICES`` set). A local cluster gives each worker ``GPU=1`` when there are as many
GPUs as workers. Workers of an external cluster should run without Dask's ``MALLOC_TRIM_THRESHOLD_``
(a task runs 2-2.5x slower with it): ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_:
null`` in their Dask configuration, as a local cluster started here does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear._tempfiles import remove_orphans
from cloudclear.errors import NoInputsError, OutputError
from cloudclear.inference.jobwork import MethodSpec, Task, run_task
from cloudclear.inference.pipeline import InferOptions
from cloudclear.inference.select import match_place, output_name, parse_when, place_scope
from cloudclear.inference.writer import ROLE_OUTPUT, ROLE_STATUS, ROLE_TAG, status_path_for
from cloudclear.outputs import atomic_output

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog

__all__ = ["MethodSpec", "RunReport", "Task", "TaskResult", "is_complete", "plan_tasks", "run_tasks"]

log = logging.getLogger(__name__)

DONE, SKIPPED, FAILED, NOT_RUN = "done", "skipped", "failed", "not run"
#: The Dask setting that makes workers start with MALLOC_TRIM_THRESHOLD_ (None: leave it unset).
NO_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
#: Placeholders a destination may hold.
PLACEHOLDERS = ("{date}", "{tile}")


# -- planning ------------------------------------------------------------------------------------


def plan_tasks(
    catalog: Catalog,
    dates: Sequence[str | datetime],
    method_name: str,
    dst: str | os.PathLike[str],
    tiles: Sequence[str] | None = None,
    grid: str | os.PathLike[str] | None = None,
) -> list[Task]:
    """Every tile-date to reconstruct, with its output path, tile by tile in date order.

    Args:
        catalog: the open catalog.
        dates: ``YYYY-MM-DD`` or ISO datetimes.
        method_name: ``gapfill`` or a checkpoint (its stem names the files).
        dst: with several tiles or dates, a folder (files ``S2_T{tile}_{YYYYMMDD}_{method}.tif``) or
            a path containing ``{date}`` and/or ``{tile}``; with one tile and one date, a file may
            be named.
        tiles: tiles or grid names; None: every S2 place of the catalog (with ``grid``, the place
            that grid lies on).
        grid: the output grid name or raster file (see :func:`.select.choose_inputs`).

    Raises:
        NoInputsError: no dates, a tile not in the catalog, a catalog without S2.
        OutputError: several tasks and one file named, or two tasks mapping to one file.
    """
    if not dates:
        raise NoInputsError("no dates to reconstruct")
    places = catalog.places("S2")
    if not places:
        raise NoInputsError(f"{catalog.path}: no S2 scenes; nothing to reconstruct")
    if tiles:
        chosen = list(dict.fromkeys(match_place(catalog, places, t) for t in tiles))
    elif grid is not None:
        chosen = [place_scope(catalog, None, grid).tile]
    else:
        chosen = places
    when = [parse_when(d)[0] for d in dates]
    text = str(dst)
    n = len(chosen) * len(dates)
    templated = any(p in text for p in PLACEHOLDERS)
    if n > 1 and not templated and Path(text).suffix.lower() in (".tif", ".tiff") and not Path(text).is_dir():
        what = f"{len(dates)} dates" if len(chosen) == 1 else f"{n} tile-dates"
        raise OutputError(f"{text}: {what} need a folder or a path containing {{date}} / {{tile}}")
    tasks = []
    for tile in chosen:
        for d, w in zip(dates, when, strict=True):
            if templated:
                path = Path(text.replace("{date}", w.strftime("%Y%m%d")).replace("{tile}", tile))
            elif n > 1 or Path(text).is_dir():
                path = Path(text) / output_name(tile, w, method_name)
            else:
                path = Path(text)
            stamp = d if isinstance(d, str) else d.isoformat()
            tasks.append(Task(tile, stamp, str(path.expanduser().resolve()), None if grid is None else str(grid)))
    if len({t.path for t in tasks}) != len(tasks):
        raise OutputError(f"{text}: several dates map to the same output file; use a folder or {{date}} / {{tile}}")
    return tasks


# -- what is done already ----------------------------------------------------------------------------


def is_complete(path: str | os.PathLike[str], method_name: str, status: bool) -> bool:
    """Whether ``path`` is a complete output of ``method_name``: it opens, its tags say it is a
    reconstruction by that method, and (with ``status``) its status sidecar is there and opens."""
    import rasterio

    from cloudclear.gdal import gdal_env

    p = Path(path)
    if not p.is_file():
        return False
    try:
        with gdal_env("infer"), rasterio.open(p) as ds:
            tags = ds.tags()
            if tags.get(ROLE_TAG) != ROLE_OUTPUT or tags.get("CLOUDCLEAR_METHOD") != Path(method_name).name:
                return False
        if status:
            with gdal_env("infer"), rasterio.open(status_path_for(p)) as ds:
                return ds.tags().get(ROLE_TAG) == ROLE_STATUS
    except Exception:  # noqa: BLE001 - anything that does not open is not complete
        return False
    return True


#: Any temporary of :func:`cloudclear.outputs.partial_path` (and the files a writer keeps beside it).
_PARTIAL = re.compile(r"^\..+\.partial-(?P<pid>\d+)(\.[A-Za-z0-9]+)?(-journal|-wal|-shm|\.aux\.xml)?$")


def _clean_stale(folders: set[Path]) -> None:
    """Remove the temporaries that dead processes (a killed run, a killed worker) left in the
    output folders: one listing per folder, however many outputs it holds."""
    for folder in folders:
        if folder.is_dir():
            remove_orphans(folder, ".*.partial-*", _PARTIAL)


# -- results and report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome: ``status`` is done, skipped, failed or not run."""

    task: Task
    status: str
    error: str | None = None
    seconds: float = 0.0
    worker: str | None = None
    result: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile": self.task.tile,
            "date": self.task.date,
            "path": self.task.path,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "worker": self.worker,
            "result": self.result,
        }


@dataclass(frozen=True)
class RunReport:
    """Every task's outcome, in plan order, and how the run went."""

    tasks: tuple[TaskResult, ...]
    scheduler: str
    workers: int
    seconds: float
    startup_seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.tasks)

    @property
    def ok(self) -> bool:
        """Every task done or skipped."""
        return all(r.status in (DONE, SKIPPED) for r in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "scheduler": self.scheduler,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "startup_seconds": round(self.startup_seconds, 3),
            "totals": {s: self.count(s) for s in (DONE, SKIPPED, FAILED, NOT_RUN)} | {"tasks": len(self.tasks)},
            "tasks": [r.to_dict() for r in self.tasks],
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (atomically, replacing an older one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, overwrite=True, what="run report") as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _from_dict(task: Task, out: dict[str, Any]) -> TaskResult:
    return TaskResult(
        task, out["status"], out.get("error"), out.get("seconds", 0.0), out.get("worker"), out.get("result")
    )


# -- running -----------------------------------------------------------------------------------------


def default_workers(n_tasks: int, spec: MethodSpec) -> int:
    """Workers of a local cluster: one per core (one thread each), one per GPU for a network on a
    GPU machine, never more than the tasks."""
    n = os.cpu_count() or 1
    gpus = _gpu_count() if spec.is_network and spec.device != "cpu" else 0
    if gpus:
        n = gpus
    return max(1, min(n, n_tasks))


def _gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no torch, no CUDA: no GPU
        return 0


def run_tasks(
    catalog: Catalog | str | os.PathLike[str],
    tasks: Sequence[Task],
    method_spec: MethodSpec,
    options: InferOptions,
    *,
    scheduler: str = "local",
    workers: int | None = None,
    keep_going: bool = False,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
) -> RunReport:
    """Run ``tasks``: skip the complete outputs, run the rest, report every task.

    Args:
        catalog: the open catalog, or its file (each worker opens the file).
        tasks: from :func:`plan_tasks`.
        method_spec: the method and its options; each worker loads it once.
        options: as for :func:`.pipeline.run` (its progress bar is off inside tasks).
        scheduler: ``serial`` (in this process), ``local`` (a LocalCluster of ``workers`` processes,
            one thread each) or the address of a running scheduler.
        workers: workers of a local cluster (default: :func:`default_workers`).
        keep_going: run every task whatever fails; otherwise the first failure cancels the tasks
            not started yet (reported "not run").
        progress: a progress bar over tasks on stderr.
        report: write the report as JSON there.
        on_result: called with each task's result as it comes (skipped ones first).
    """
    from cloudclear.catalog import Catalog

    t0 = time.perf_counter()
    if not isinstance(catalog, Catalog):
        catalog = Catalog.open(catalog)
    catalog_path = catalog.path
    results: dict[int, TaskResult] = {}
    todo: list[int] = []
    _clean_stale({Path(t.path).parent for t in tasks})
    for i, task in enumerate(tasks):
        path = Path(task.path)
        if not options.overwrite and is_complete(path, method_spec.method, options.status):
            results[i] = TaskResult(task, SKIPPED)
            if on_result is not None:
                on_result(results[i])
        else:
            todo.append(i)
    # Every task's inputs are chosen here first (the catalog only, no pixels): a tile-date without
    # inputs fails before hours of work on the others, as a single infer run does; with
    # keep_going it is reported failed and the others run.
    unusable = _check_inputs(catalog, tasks, todo, check_spec(method_spec, scheduler), options)
    if not options.overwrite:  # a file under a final name that is no complete output is not replaced
        for i in todo:
            if i not in unusable and Path(tasks[i].path).exists():
                unusable[i] = f"{tasks[i].path}: exists; pass --overwrite to replace it"
    if unusable and not keep_going:
        i, message = next(iter(unusable.items()))
        raise NoInputsError(f"{tasks[i].tile} {tasks[i].date}: {message}")
    for i, message in unusable.items():
        results[i] = TaskResult(tasks[i], FAILED, error=message)
        if on_result is not None:
            on_result(results[i])
    todo = [i for i in todo if i not in unusable]
    task_options = dataclasses.replace(options, progress=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), initial=len(results), unit="task", file=sys.stderr, desc="tile-dates")

    def record(i: int, res: TaskResult) -> None:
        results[i] = res
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(res)

    n_workers, startup = 1, 0.0
    try:
        if scheduler == "serial" or not todo:
            scheduler = "serial"
            for i in todo:
                res = _from_dict(tasks[i], run_task(str(catalog_path), tasks[i], method_spec, task_options))
                record(i, res)
                if res.status == FAILED and not keep_going:
                    break
        else:
            n_workers, startup = _run_distributed(
                str(catalog_path), tasks, todo, method_spec, task_options, scheduler, workers, keep_going, record
            )
    finally:
        if bar is not None:
            bar.close()
    out = RunReport(
        tuple(results.get(i, TaskResult(t, NOT_RUN)) for i, t in enumerate(tasks)),
        scheduler,
        n_workers,
        time.perf_counter() - t0,
        startup,
    )
    if report is not None:
        out.write(report)
    return out


def check_spec(spec: MethodSpec, scheduler: str) -> MethodSpec:
    """The method this process loads to check the tasks' inputs: the tasks' own when they run here
    (loaded once, :func:`.jobwork.cached_method`); on a cluster the workers load it, and here a
    network is loaded on the CPU only (no GPU memory held beside the workers)."""
    return spec if scheduler == "serial" or not spec.is_network else dataclasses.replace(spec, device="cpu")


def _check_inputs(
    catalog: Catalog, tasks: Sequence[Task], todo: Sequence[int], spec: MethodSpec, options: InferOptions
) -> dict[int, str]:
    """Task index -> why its inputs cannot be chosen, for the tasks in ``todo``."""
    from cloudclear.errors import CloudClearError
    from cloudclear.inference.jobwork import cached_method
    from cloudclear.inference.pipeline import choose

    if not todo:
        return {}
    method = cached_method(spec)
    out = {}
    for i in todo:
        try:
            choose(catalog, tasks[i].date, method, tile=tasks[i].tile, options=options, grid=tasks[i].grid)
        except CloudClearError as exc:
            out[i] = str(exc)
    return out


def _run_distributed(
    catalog_path: str,
    tasks: Sequence[Task],
    todo: list[int],
    spec: MethodSpec,
    options: InferOptions,
    scheduler: str,
    workers: int | None,
    keep_going: bool,
    record: Callable[[int, TaskResult], None],
) -> tuple[int, float]:
    """Submit ``todo`` to a cluster (started here for ``local``) and record results as they come;
    returns the number of workers and the seconds it took to get a cluster. The cluster and the
    client started here are closed, whatever happens (Ctrl-C included)."""
    import dask
    from distributed import Client, LocalCluster, as_completed

    t0 = time.perf_counter()
    cluster = client = None
    quiet = _Quiet()
    # A local cluster's nannies set their workers' variables in this process's environment too.
    touched = [*dask.config.get("distributed.nanny.pre-spawn-environ"), "PYTHONHASHSEED"]
    environ = {k: os.environ.get(k) for k in touched}
    try:
        if scheduler == "local":
            n = workers or default_workers(len(todo), spec)
            gpu = spec.is_network and spec.device != "cpu" and _gpu_count() >= n
            # Dask sets MALLOC_TRIM_THRESHOLD_ in its workers, which turns off glibc's dynamic mmap
            # threshold: every large array is then a fresh mmap, and a task runs 2-2.5x slower.
            with dask.config.set({NO_TRIM: None}):
                cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    resources={"GPU": 1} if gpu else None,
                    silence_logs=logging.ERROR,
                )
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout="30s")
        infos = client.scheduler_info().get("workers", {})
        startup = time.perf_counter() - t0
        kw: dict[str, Any] = {"retries": 2, "pure": False}
        if spec.is_network and spec.device != "cpu" and any(w.get("resources", {}).get("GPU") for w in infos.values()):
            kw["resources"] = {"GPU": 1}
        futures = {client.submit(run_task, catalog_path, tasks[i], spec, options, **kw): i for i in todo}
        for fut in as_completed(list(futures)):
            i = futures[fut]
            if fut.cancelled():
                continue
            try:
                res = _from_dict(tasks[i], fut.result())
            except CancelledError:
                continue  # cancelled after the first failure: "not run"
            except Exception as exc:  # noqa: BLE001 - a worker lost too often, an unexpected bug
                res = TaskResult(tasks[i], FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0])
            record(i, res)  # after a stop too: what ran to its end is reported as it ended
            if res.status == FAILED and not keep_going:
                client.cancel([f for f in futures if not f.done()])
        return max(len(infos), 1), startup
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        quiet.restore()
        for k, v in environ.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Quiet:
    """Dask's loggers at ERROR while a run holds a cluster: its INFO lines (workers starting and
    leaving) are not the run's output; a worker lost shows in the task's result."""

    def __init__(self) -> None:
        self.levels = {}
        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker"):
            logger = logging.getLogger(name)
            self.levels[name] = logger.level
            logger.setLevel(logging.ERROR)

    def restore(self) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
