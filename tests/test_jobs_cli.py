"""`cloudclear infer` over several tiles and dates: tasks, the run report, --keep-going, and a killed
run that the same command finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from test_jobs import BAD_DATE, DATES, GAPFILL, leftovers, make_catalog, outputs
from typer.testing import CliRunner

from cloudclear.catalog import Catalog
from cloudclear.cli import app
from cloudclear.inference.jobs import is_complete, plan_tasks, run_tasks
from cloudclear.inference.pipeline import InferOptions

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def infer(*args: object):
    return runner.invoke(app, ["infer", "-m", "gapfill", *(str(a) for a in args)])


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("jobs_cli"))


@pytest.fixture(scope="module")
def clean_outputs(catalog, tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clean")
    rep = run_tasks(
        catalog,
        plan_tasks(Catalog.open(catalog), DATES, "gapfill", folder),
        GAPFILL,
        InferOptions(),
        scheduler="serial",
    )
    assert rep.ok
    return outputs(folder)


def _dates(*dates: str) -> list[str]:
    return [a for d in dates for a in ("-d", d)]


def test_repeated_tile_runs_every_tile_and_writes_the_report(catalog, tmp_path):
    res = infer(
        "-c", catalog, *_dates(DATES[0]), "-t", "31UFQ", "-t", "T32TQM", "-o", tmp_path, "--scheduler", "serial"
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert [ln.split()[:3] for ln in lines[:2]] == [["done", "31UFQ", DATES[0]], ["done", "32TQM", DATES[0]]]
    assert lines[-2].startswith("2 done; report: ")
    assert lines[-1].startswith("2 tile-date(s), ")
    assert {p.name for p in tmp_path.glob("*.tif")} == {
        f"S2_T{t}_20210410_gapfill{s}.tif" for t in ("31UFQ", "32TQM") for s in ("", "_status")
    }
    report = json.loads((tmp_path / "cloudclear_run.json").read_text())
    assert report["ok"] and report["totals"]["tasks"] == 2 and report["scheduler"] == "serial"
    assert [(t["tile"], t["date"], t["status"]) for t in report["tasks"]] == [
        ("31UFQ", DATES[0], "done"),
        ("32TQM", DATES[0], "done"),
    ]
    assert report["tasks"][0]["result"]["pixels"]["reconstructed"] > 0


def test_no_tile_means_every_tile_into_a_folder_but_one_file_still_needs_a_tile(catalog, tmp_path):
    res = infer("-c", catalog, "-d", DATES[0], "-o", tmp_path / "x.tif")
    assert_one_line_error(res, "choose one with --tile")
    res = infer("-c", catalog, "-d", DATES[0], "-o", tmp_path / "all", "--scheduler", "serial", "--json")
    assert res.exit_code == 0, res.output
    assert [t["tile"] for t in json.loads(res.stdout)["tasks"]] == ["31UFQ", "32TQM"]


def test_one_tile_date_behaves_as_before(catalog, tmp_path):
    out = tmp_path / "one.tif"
    res = infer("-c", catalog, "-d", DATES[0], "-t", "31UFQ", "-t", "31UFQ", "-o", out)
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[-1].startswith("1 date(s), ")
    assert not (tmp_path / "cloudclear_run.json").exists()
    res = infer("-c", catalog, "-d", DATES[0], "-t", "31UFQ", "-o", out)
    assert_one_line_error(res, "exists; pass --overwrite")


def test_keep_going_reports_the_failure_in_one_line_and_does_the_rest(catalog, tmp_path):
    args = ["-c", catalog, *_dates(DATES[0], BAD_DATE, DATES[1]), "-t", "31UFQ", "--scheduler", "serial"]
    res = infer(*args, "-o", tmp_path, "--keep-going")
    assert res.exit_code == 1, res.output
    (err,) = res.stderr.strip().splitlines()
    assert err.startswith(f"cloudclear: error: 31UFQ {BAD_DATE}: ") and "no usable S2 scene" in err
    assert [ln.split()[0] for ln in res.stdout.splitlines()[:2]] == ["done", "done"]
    assert "2 done, 1 failed" in res.stdout
    report = json.loads((tmp_path / "cloudclear_run.json").read_text())
    assert [t["status"] for t in report["tasks"]] == ["done", "failed", "done"] and not report["ok"]

    # Without --keep-going a tile-date without inputs stops the run before anything is written.
    other = tmp_path / "stop"
    res = infer(*args, "-o", other)
    assert res.exit_code == 1, res.output
    (err,) = res.stderr.strip().splitlines()
    assert BAD_DATE in err and "no usable S2 scene" in err
    assert not other.exists() or not any(other.iterdir())


@pytest.mark.slow
def test_a_failure_on_the_cluster_stops_the_run(catalog, tmp_path):
    # One tile-date's output folder is a file: that task alone fails when it writes, on a worker.
    # (A folder shared by both tiles of a date would fail two tasks at once, and two workers may
    # both report before the run stops.)
    (tmp_path / f"31UFQ_{DATES[0].replace('-', '')}").write_text("a file where the output folder should be")
    out = str(tmp_path / "{tile}_{date}" / "S2.tif")
    report_path = tmp_path / "run.json"
    res = infer("-c", catalog, *_dates(*DATES), "-o", out, "--workers", "2", "--report", report_path)
    assert res.exit_code == 1, res.output
    (err,) = res.stderr.strip().splitlines()
    assert err.startswith("cloudclear: error: ") and DATES[0] in err
    report = json.loads(report_path.read_text())
    assert len(report["tasks"]) == 2 * len(DATES) and report["scheduler"] == "local" and report["workers"] == 2
    statuses = [t["status"] for t in report["tasks"]]
    assert statuses.count("failed") == 1 and set(statuses) <= {"done", "failed", "not run"}
    assert leftovers(tmp_path) == []


# A CLI whose tasks hold 1 s with every row in the temporaries, before the renames: a kill then
# leaves temporaries and missing outputs. Dask's spawned workers import this file too (as
# __mp_main__), so the hold applies in them.
SLOW_CLI = """
import os, sys, time
import cloudclear.inference.pipeline as pipeline

_seal = pipeline.seal


def slow_seal(*args, **kwargs):
    time.sleep(float(os.environ.get("HOLD_S", "0")))
    return _seal(*args, **kwargs)


pipeline.seal = slow_seal
if __name__ == "__main__":
    from cloudclear.cli import app

    app(sys.argv[1:], prog_name="cloudclear")
"""


@pytest.mark.slow
def test_a_killed_run_is_finished_by_the_same_command(catalog, clean_outputs, tmp_path):
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "infer", "-c", str(catalog), *_dates(*DATES), "-m", "gapfill"]
    cmd += ["-o", str(out), "--workers", "2"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, "HOLD_S": "1"}, start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith("_gapfill.tif") for p in out.glob("S2_*")):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no output appeared: {proc.communicate()}")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its scheduler and its workers
    proc.communicate(timeout=60)
    tasks = plan_tasks(Catalog.open(catalog), DATES, "gapfill", out)
    complete = {t.path for t in tasks if is_complete(t.path, "gapfill", True)}
    assert 1 <= len(complete) < len(tasks)

    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HOLD_S": "0"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [ln.split() for ln in res.stdout.splitlines() if ln.startswith(("skipped", "done"))]
    skipped = {str(out / Path(ln[3]).name) for ln in lines if ln[0] == "skipped"}
    assert skipped == complete
    assert sum(ln[0] == "done" for ln in lines) == len(tasks) - len(complete)
    assert outputs(out) == clean_outputs
    assert leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted([*clean_outputs, "cloudclear_run.json"])


@pytest.mark.slow
def test_sigterm_stops_the_run_and_its_workers(catalog, tmp_path):
    import psutil

    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "infer", "-c", str(catalog), *_dates(*DATES), "-m", "gapfill"]
    proc = subprocess.Popen(
        [*cmd, "-o", str(out), "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, "HOLD_S": "2"},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not leftovers(out):  # a task is writing
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the local cluster's workers
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("cloudclear: error: interrupted; no partial output was left")
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive
    # Only complete outputs under final names (the workers' temporaries may stay: the rerun removes them).
    assert all(is_complete(p, "gapfill", True) for p in out.glob("S2_*_gapfill.tif"))


@pytest.mark.slow
def test_every_tile_on_a_local_cluster_by_default_then_the_series_opens_in_one_line(catalog, tmp_path):
    # The "done when": a date range over every tile of the catalog, no --tile, no
    # --scheduler: a local Dask cluster; then the series opens lazily with xarray in one line.
    import numpy as np
    import rasterio
    import xarray as xr

    out = tmp_path / "series"
    res = infer("-c", catalog, "-d", "2021-04-06..2021-05-06", "--every", "10", "-o", out, "--series", "stac,zarr")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "cloudclear_run.json").read_text())
    assert report["scheduler"] == "local" and len(report["tasks"]) == 8  # 2 tiles x 4 dates
    for tile in ("31UFQ", "32TQM"):
        ds = xr.open_zarr(out / f"S2_T{tile}_series.zarr")
        assert ds.reflectance.dims == ("time", "band", "y", "x") and ds.sizes["time"] == 4
        first = sorted(out.glob(f"S2_T{tile}_20210406_gapfill.tif"))[0]
        with rasterio.open(first) as src:
            dn = src.read().astype("float64")
        got = ds.reflectance.isel(time=0).values
        np.testing.assert_allclose(got[dn > 0], dn[dn > 0] * 1e-4, rtol=0, atol=1e-9)
        assert np.isnan(got[dn == 0]).all()
    assert (out / "catalog.json").is_file()
    # Rerun: every tile-date complete, nothing redone; the series is written again the same.
    before = {p.name: p.read_bytes() for p in (out / "S2_T31UFQ_series").rglob("*.json")}
    res = infer("-c", catalog, "-d", "2021-04-06..2021-05-06", "--every", "10", "-o", out, "--series", "stac")
    assert res.exit_code == 0, res.output
    assert sum(ln.startswith("skipped ") for ln in res.stdout.splitlines()) == 8
    assert {p.name: p.read_bytes() for p in (out / "S2_T31UFQ_series").rglob("*.json")} == before


def test_series_kinds_are_checked_before_any_work(catalog, tmp_path):
    res = infer("-c", catalog, "-d", DATES[0], "-t", "31UFQ", "-o", tmp_path / "x.tif", "--series", "vrt")
    assert res.exit_code == 2 and "--series: vrt: choose from stac, zarr" in res.output
    assert not (tmp_path / "x.tif").exists()
