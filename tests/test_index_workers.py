"""The index's worker processes: the same catalog whatever the number of workers, errors and
skipped files included, and the fork map they run on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import catalog_layers, write_raster
from typer.testing import CliRunner

from cloudclear.catalog import build_index, reading
from cloudclear.catalog.stats import Preloaded
from cloudclear.cli import app
from cloudclear.synth import generate_series

pytestmark = pytest.mark.skipif(not reading._forks(), reason="worker processes need fork (Linux)")

BANDS = ["B02", "B03", "B04", "B08"]


def _folder(root: Path) -> None:
    """Two series (S2 with SCL, S1, truth), a float S2 file, a scene with corrupt pixels (skipped
    by its statistics), a truncated file (no raster) and a file that is no scene."""
    generate_series(root / "a", height=48, width=64, n_dates=4, interval_days=10, seed=1)
    generate_series(root / "b", height=48, width=64, n_dates=3, interval_days=7, seed=2, tile="32ULC")
    rng = np.random.default_rng(0)
    refl = rng.uniform(0.02, 0.4, (4, 32, 32)).astype(np.float32)
    write_raster(root / "float" / "S2_T31UFQ_20210610T103021.tif", refl, descriptions=BANDS)
    victim = write_raster(
        root / "bad" / "S2_T31UFQ_20210601T103000.tif",
        rng.integers(1, 9999, (4, 128, 128), dtype=np.uint16),
        descriptions=BANDS,
        compress="deflate",
        nodata=0,
    )
    raw = bytearray(victim.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 4000] = b"\x00\xff" * 2000  # scrambled tile data, the header intact
    victim.write_bytes(bytes(raw))
    (root / "bad" / "S2_T31UFQ_20210602T103000.tif").write_bytes(b"II*\x00" + b"\x00" * 50)
    write_raster(root / "notes.tif", np.ones((1, 8, 8), np.float32))


@pytest.mark.parametrize("rebuild", [False, True], ids=["fresh", "rebuild"])
def test_workers_write_the_catalog_one_process_writes(tmp_path, monkeypatch, rebuild):
    _folder(tmp_path / "d")
    monkeypatch.setattr(reading, "PARALLEL_MIN_ITEMS", 2)  # a few files are enough to fork here
    one = build_index(tmp_path / "d", tmp_path / "one.gpkg", detect=None, jobs=1)
    assert reading.runs_forked(len(list((tmp_path / "d").rglob("*.tif"))), 2)
    two = build_index(tmp_path / "d", tmp_path / "two.gpkg", detect=None, jobs=2)
    if rebuild:  # over a catalog already there: every file opened again
        two = build_index(tmp_path / "d", tmp_path / "two.gpkg", detect=None, jobs=2, rebuild=True)
    assert (two.scenes, two.files_opened, two.scenes_computed) == (one.scenes, one.files_opened, one.scenes_computed)
    assert sorted(map(tuple, [(s.path, s.reason) for s in two.skipped])) == sorted(
        (s.path, s.reason) for s in one.skipped
    )
    reasons = " | ".join(s.reason for s in two.skipped)
    assert "corrupt" in reasons and "not a readable raster" in reasons and "not recognised" in reasons
    a, b = catalog_layers(tmp_path / "one.gpkg"), catalog_layers(tmp_path / "two.gpkg")
    assert set(a) == set(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)
    # A warm re-index with workers opens nothing.
    warm = build_index(tmp_path / "d", tmp_path / "two.gpkg", detect=None, jobs=2)
    assert warm.files_opened == 0 and warm.scenes_reused == warm.scenes


def test_forked_map_keeps_order_and_runs_closures_in_workers(monkeypatch):
    monkeypatch.setattr(reading, "PARALLEL_MIN_ITEMS", 2)
    here = os.getpid()
    table = {k: k * k for k in range(50)}  # what a closure sees, inherited (never pickled)

    def task(k: int) -> tuple[int, int, bool]:
        return table[k], os.getpid(), reading.forked()

    got = list(reading.forked_map(task, list(range(50)), 2))
    assert [g[0] for g in got] == [k * k for k in range(50)]
    assert all(pid != here and in_worker for _, pid, in_worker in got)
    assert not reading.forked() and reading._TASK is None
    # Too few items, or one job: here, in this process.
    assert {pid for _, pid, _ in reading.forked_map(task, [1], 2)} == {here}
    assert {pid for _, pid, _ in reading.forked_map(task, list(range(50)), 1)} == {here}


def test_forked_map_raises_a_workers_error_here(monkeypatch):
    monkeypatch.setattr(reading, "PARALLEL_MIN_ITEMS", 2)

    def task(k: int) -> int:
        if k == 7:
            raise ValueError(f"item {k} is bad")
        return k

    with pytest.raises(ValueError, match="item 7 is bad"):
        list(reading.forked_map(task, list(range(20)), 2))
    assert reading._TASK is None


def test_preloaded_keep_and_give_respect_the_budget():
    pre = Preloaded(budget=100)
    info = type("Info", (), {"path": "/x.tif"})()
    assert pre.keep(info, {1: np.zeros(10, np.uint8)}, (None,))  # type: ignore[arg-type]
    other = type("Info", (), {"path": "/y.tif"})()
    assert not pre.keep(other, {1: np.zeros(91, np.uint8)}, (None,))  # type: ignore[arg-type]
    assert pre.used == 10
    data, nodata = pre.give("/x.tif") or ({}, ())
    assert data[1].size == 10 and nodata == (None,) and pre.used == 0 and pre.give("/x.tif") is None


def test_cli_workers_must_be_positive(tmp_path):
    res = CliRunner().invoke(app, ["index", str(tmp_path), "--workers", "0"])
    assert res.exit_code == 2 and "--workers" in res.output
