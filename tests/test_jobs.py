"""Tile-dates as tasks (cloudclear.inference.jobs): planning, skipping what is complete, failures,
and the same outputs on a Dask LocalCluster as in one process, even when a worker is killed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import rasterio

from cloudclear.catalog import Catalog, build_index
from cloudclear.errors import NoInputsError, OutputError
from cloudclear.inference.jobs import MethodSpec, Task, is_complete, plan_tasks, run_tasks
from cloudclear.inference.pipeline import InferOptions
from cloudclear.synth import generate_series

TILES = ("31UFQ", "32TQM")
DATES = ["2021-04-10", "2021-04-20", "2021-05-01"]
BAD_DATE = "2023-01-01"  # no S2 scene within 60 days: the task fails with one line
GAPFILL = MethodSpec("gapfill")


def make_catalog(root: Path) -> Path:
    """Two 64 x 64 px tiles, four S2 dates each (2021-04-01 .. 05-16), no S1; the catalog's path."""
    for i, tile in enumerate(TILES):
        generate_series(root / f"T{tile}", height=64, width=64, n_dates=4, tile=tile, seed=i, s1=False)
    return build_index(root, root / "cat.gpkg", detect=None).catalog_path


def outputs(folder: Path) -> dict[str, bytes]:
    """Every GeoTIFF of a folder (outputs and status sidecars) by name, as bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tif"))}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name or ".stream" in p.name)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("jobs"))


@pytest.fixture(scope="module")
def serial_outputs(catalog, tmp_path_factory) -> dict[str, bytes]:
    """The reference: every tile-date run one after the other in this process."""
    folder = tmp_path_factory.mktemp("serial")
    tasks = plan_tasks(Catalog.open(catalog), DATES, "gapfill", folder)
    rep = run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler="serial")
    assert rep.ok and rep.count("done") == 6
    return outputs(folder)


# -- planning ----------------------------------------------------------------------------------------


def test_plan_every_tile_and_date_into_a_folder(catalog, tmp_path):
    tasks = plan_tasks(Catalog.open(catalog), DATES, "gapfill", tmp_path)
    assert [(t.tile, t.date) for t in tasks] == [(tile, d) for tile in TILES for d in DATES]
    assert Path(tasks[0].path) == tmp_path / "S2_T31UFQ_20210410_gapfill.tif"
    assert len({t.path for t in tasks}) == 6


def test_plan_names_tiles_and_placeholders(catalog, tmp_path):
    cat = Catalog.open(catalog)
    tasks = plan_tasks(cat, DATES[:1], "m.safetensors", tmp_path / "{tile}_{date}.tif", tiles=["T32TQM", "32TQM"])
    assert [(t.tile, Path(t.path).name) for t in tasks] == [("32TQM", "32TQM_20210410.tif")]
    one = plan_tasks(cat, DATES[:1], "gapfill", tmp_path / "one.tif", tiles=["31UFQ"])
    assert [Path(t.path) for t in one] == [tmp_path / "one.tif"]


def test_plan_refuses_what_cannot_be_written(catalog, tmp_path):
    cat = Catalog.open(catalog)
    with pytest.raises(OutputError, match="6 tile-dates need a folder or a path containing"):
        plan_tasks(cat, DATES, "gapfill", tmp_path / "x.tif")
    with pytest.raises(OutputError, match="several dates map to the same output file"):
        plan_tasks(cat, DATES, "gapfill", tmp_path / "{date}.tif")  # both tiles on one name
    with pytest.raises(NoInputsError, match="no S2 scenes of tile 33XYZ"):
        plan_tasks(cat, DATES, "gapfill", tmp_path, tiles=["33XYZ"])
    with pytest.raises(NoInputsError, match="no dates"):
        plan_tasks(cat, [], "gapfill", tmp_path)


# -- in one process: skip, redo, fail ------------------------------------------------------------


def test_rerun_skips_complete_outputs_and_redoes_the_rest(catalog, serial_outputs, tmp_path):
    cat = Catalog.open(catalog)
    tasks = plan_tasks(cat, DATES, "gapfill", tmp_path)
    first = run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler="serial", report=tmp_path / "r.json")
    assert first.ok and outputs(tmp_path) == serial_outputs
    assert all(is_complete(t.path, "gapfill", True) for t in tasks)

    # What a killed run leaves: one output missing, one sidecar alone (killed between the renames),
    # a temporary of a dead process; and a file that is no output of gapfill.
    gone, orphan, foreign = (Path(tasks[i].path) for i in (0, 1, 2))
    gone.unlink()
    orphan.unlink()
    dead = tmp_path / f".{gone.stem}.partial-999999999{gone.suffix}"
    dead.write_bytes(b"half")
    foreign.write_bytes(b"someone else's")
    rep = run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler="serial", keep_going=True)
    assert [r.status for r in rep.tasks] == ["done", "done", "failed", "skipped", "skipped", "skipped"]
    assert rep.tasks[2].error == f"{foreign}: exists; pass --overwrite to replace it"
    assert not rep.ok and leftovers(tmp_path) == []
    assert outputs(tmp_path) == serial_outputs | {foreign.name: b"someone else's"}

    # With overwrite nothing is skipped, and the foreign file is replaced.
    rep = run_tasks(catalog, tasks, GAPFILL, InferOptions(overwrite=True), scheduler="serial")
    assert rep.ok and rep.count("done") == 6 and outputs(tmp_path) == serial_outputs
    # Another method's output is not this method's, an output without its asked-for sidecar is
    # not complete.
    assert not is_complete(tasks[0].path, "other.safetensors", True)
    Path(tasks[0].path).with_name(Path(tasks[0].path).stem + "_status.tif").unlink()
    assert not is_complete(tasks[0].path, "gapfill", True) and is_complete(tasks[0].path, "gapfill", False)


def test_a_tile_date_without_inputs_stops_the_run_before_anything_is_written(catalog, tmp_path):
    cat = Catalog.open(catalog)
    tasks = plan_tasks(cat, [DATES[0], BAD_DATE, DATES[1]], "gapfill", tmp_path, tiles=["31UFQ"])
    with pytest.raises(NoInputsError, match=f"31UFQ {BAD_DATE}: .*no usable S2 scene of tile 31UFQ within 60 days"):
        run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler="serial", report=tmp_path / "r.json")
    assert outputs(tmp_path) == {} and not (tmp_path / "r.json").exists()  # chosen first, as infer does

    rep = run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler="serial", keep_going=True)
    assert [r.status for r in rep.tasks] == ["done", "failed", "done"] and not rep.ok
    assert "no usable S2 scene of tile 31UFQ within 60 days of 2023-01-01" in rep.tasks[1].error
    assert "\n" not in rep.tasks[1].error


def runtime_failure(tmp_path: Path, date: str) -> str:
    """An output template whose ``date`` folder is a file: that task fails when it writes (its
    inputs are fine, so only running it tells)."""
    (tmp_path / date.replace("-", "")).write_text("a file where the output folder should be")
    return str(tmp_path / "{date}" / "out.tif")


def test_first_failure_stops_the_run_unless_keep_going(catalog, tmp_path):
    cat = Catalog.open(catalog)
    dst = runtime_failure(tmp_path, DATES[1])
    tasks = plan_tasks(cat, DATES, "gapfill", dst, tiles=["31UFQ"])
    rep = run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler="serial", report=tmp_path / "r.json")
    assert [r.status for r in rep.tasks] == ["done", "failed", "not run"]
    assert "\n" not in rep.tasks[1].error and not rep.ok
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["totals"] == {"done": 1, "skipped": 0, "failed": 1, "not run": 1, "tasks": 3}
    assert [t["status"] for t in written["tasks"]] == ["done", "failed", "not run"]
    assert not Path(tasks[2].path).exists()

    rep = run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler="serial", keep_going=True)
    assert [r.status for r in rep.tasks] == ["skipped", "failed", "done"]


# -- on a Dask cluster ---------------------------------------------------------------------------


@pytest.mark.slow
def test_local_cluster_outputs_equal_the_serial_run_byte_for_byte(catalog, serial_outputs, tmp_path):
    tasks = plan_tasks(Catalog.open(catalog), DATES, "gapfill", tmp_path)
    rep = run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler="local", workers=2, progress=True)
    assert rep.ok and rep.count("done") == 6 and rep.workers == 2 and rep.scheduler == "local"
    assert outputs(tmp_path) == serial_outputs
    assert all(r.worker and r.worker.startswith("tcp://") for r in rep.tasks)
    assert all(r.result is not None and r.result["path"] == r.task.path for r in rep.tasks)


class KillOnce:
    """A worker plugin that SIGKILLs its own process the first time a task starts executing on any
    worker (the marker file makes it once)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing":
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_killed_mid_task_and_the_run_still_completes(catalog, serial_outputs, tmp_path):
    import cloudpickle
    from distributed import Client, LocalCluster, WorkerPlugin

    plugin_type = type("KillOncePlugin", (KillOnce, WorkerPlugin), {})
    cloudpickle.register_pickle_by_value(__import__(__name__))
    marker = tmp_path / "killed"
    out = tmp_path / "out"
    tasks = plan_tasks(Catalog.open(catalog), DATES, "gapfill", out)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(plugin_type(str(marker)))
        rep = run_tasks(catalog, tasks, GAPFILL, InferOptions(), scheduler=cluster.scheduler_address)
    assert marker.exists()  # a worker was killed
    assert rep.ok and rep.count("done") == 6, rep.to_dict()
    assert outputs(out) == serial_outputs
    assert leftovers(out) == []
    for t in tasks:
        with rasterio.open(t.path) as ds:
            assert ds.tags()["CLOUDCLEAR_ROLE"] == "reconstruction"


def test_task_and_spec_are_small_and_picklable():
    import pickle

    t = Task("31UFQ", "2021-04-10", "/x/y.tif")
    spec = MethodSpec("gapfill", neighbours=2, bands=("B02",))
    assert pickle.loads(pickle.dumps((t, spec))) == (t, spec)
    assert not spec.is_network and MethodSpec("m.safetensors").is_network
