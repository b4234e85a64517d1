"""One ground, one grid: a tile whose S2 scenes lie on two grids is never merged silently."""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA, assert_one_line_error, gapfill_unless_named, write_raster
from typer.testing import CliRunner

from cloudclear import masks
from cloudclear.catalog import Catalog, build_index
from cloudclear.cli import app
from cloudclear.errors import NoInputsError
from cloudclear.inference.select import choose_inputs, gapfill_layout
from cloudclear.sampling.candidates import s2_groups

runner = CliRunner()
BANDS = ("B02", "B03", "B04", "B08")
T0 = datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc)
# Two datasets over tile 31UFQ: one on a 10 m grid, one on a 20 m grid shifted off it.
GRID_A = dict(origin=(600000.0, 5700000.0), res=10.0, size=64)
GRID_B = dict(origin=(600090.0, 5699950.0), res=20.0, size=30)
NAME_A = "G32631_600000_5700000_10m_64x64"
NAME_B = "G32631_600090_5699950_20m_30x30"


def _scene(folder: Path, day: int, grid: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = grid["size"]
    when = (T0 + timedelta(days=day)).strftime("%Y%m%dT%H%M%S")
    data = rng.integers(300, 4000, (len(BANDS), n, n), dtype=np.uint16)
    scl = np.full((1, n, n), 4, np.uint8)
    scl[0, n // 4 : n // 2, n // 4 : n // 2] = 9
    kw = dict(origin=grid["origin"], res=grid["res"], nodata=0)
    write_raster(folder / f"S2_T31UFQ_{when}.tif", data, descriptions=BANDS, **kw)
    write_raster(folder / f"S2_T31UFQ_{when}_SCL.tif", scl, descriptions=["SCL"], **kw)


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_grids")
    for i, day in enumerate((0, 10, 20)):
        _scene(root / "dataset_a", day, GRID_A, i)
    for i, day in enumerate((5, 15)):
        _scene(root / "dataset_b", day, GRID_B, 10 + i)
    res = build_index(root, root / "cat.gpkg", detect=None, policy=masks.AS_DECODED)
    return res.catalog_path


def _day(day: int) -> str:
    return (T0 + timedelta(days=day)).date().isoformat()


def infer(*args: object):
    return runner.invoke(app, gapfill_unless_named(["infer", *args]))


def test_a_tile_on_two_grids_is_refused_naming_both(two_grids, tmp_path):
    res = infer("-c", two_grids, "-d", _day(10), "-o", tmp_path / "out.tif")

    line = assert_one_line_error(
        res, "31UFQ", f"{NAME_A} (3 scenes)", f"{NAME_B} (2 scenes)", "--grid NAME", "--grid FILE"
    )
    assert "2 grids" in line
    assert not (tmp_path / "out.tif").exists()


def test_a_grid_name_reads_only_the_scenes_on_it(two_grids, tmp_path):
    cat = Catalog.open(two_grids)
    inp = choose_inputs(cat, _day(10), gapfill_layout(3), grid=NAME_B.lower())
    assert {a.scene_id for a in inp.acquisitions} == {s.scene_id for s in cat if s.bounds.left == 600090.0}
    assert inp.on_grid == NAME_B and (inp.grid.width, inp.grid.height) == (30, 30)

    out = tmp_path / "b.tif"
    res = infer("-c", two_grids, "-d", _day(15), "-o", out, "--grid", NAME_B)
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (30, 30)
        assert tuple(ds.transform)[:6] == (20.0, 0.0, 600090.0, 0.0, -20.0, 5699950.0)
        used = ds.tags()["CLOUDCLEAR_INPUTS"].split(",")
    assert len(used) == 2 and all("20210506" in u or "20210516" in u for u in used)


def test_an_unknown_grid_name_lists_the_grids(two_grids, tmp_path):
    res = infer("-c", two_grids, "-d", _day(10), "-o", tmp_path / "out.tif", "--grid", "G32631_1_2_10m_3x3")
    assert_one_line_error(res, "G32631_1_2_10m_3x3", NAME_A, NAME_B)


def test_a_grid_file_gives_the_output_its_grid_and_warps_every_scene_onto_it(two_grids, tmp_path):
    # A 15 m grid in the neighbouring UTM zone over the middle of both datasets.
    ref = write_raster(
        tmp_path / "ref.tif", np.zeros((1, 24, 28), np.uint8), crs="EPSG:32632", origin=(183200.0, 5708700.0), res=15.0
    )
    with rasterio.open(ref) as r:
        want = (r.crs, tuple(r.transform), r.width, r.height)
    cat = Catalog.open(two_grids)
    inp = choose_inputs(cat, _day(10), gapfill_layout(3), grid=ref)
    assert len(inp.acquisitions) == 5  # both datasets
    assert inp.on_grid is None and inp.grid_from_file

    out = tmp_path / "out.tif"
    res = infer("-c", two_grids, "-d", _day(10), "-o", out, "--grid", ref)

    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert (ds.crs, tuple(ds.transform), ds.width, ds.height) == want
        assert len(ds.tags()["CLOUDCLEAR_INPUTS"].split(",")) == 5
        assert (ds.read(1) > 0).mean() > 0.9


def test_a_grid_file_no_scene_covers_is_refused(two_grids, tmp_path):
    ref = write_raster(tmp_path / "far.tif", np.zeros((1, 8, 8), np.uint8), origin=(200000.0, 5000000.0))
    with pytest.raises(NoInputsError, match="no S2 scene .*covers this grid"):
        choose_inputs(Catalog.open(two_grids), _day(10), gapfill_layout(3), grid=ref)


def test_sampling_draws_per_grid(two_grids):
    groups, bands = s2_groups(Catalog.open(two_grids), None)
    assert sorted(len(g.scenes) for g in groups) == [2, 3]
    assert {(g.grid.width, g.grid.res) for g in groups} == {(64, 10.0), (30, 20.0)}
    assert bands == list(BANDS)


def test_greenearthnet_and_leaf_share_34vcl_on_two_grids(tmp_path):
    roots = [SHARED_DATA / "greenearthnet_minicubes" / "34VCL_59.04N_17.96E", SHARED_DATA / "leaf_gee_s2sr_34VCL"]
    if not all(r.is_dir() for r in roots):
        pytest.skip("../shared/data is not present")
    data = tmp_path / "data"
    for r in roots:
        shutil.copytree(r, data / r.name)
    cat = build_index(data, tmp_path / "cat.gpkg", detect=None).catalog_path
    res = infer("-c", cat, "-d", "2021-06-02", "-o", tmp_path / "out.tif")
    line = assert_one_line_error(res, "34VCL", "G4326_", "G32634_", "--grid")
    (leaf_grid,) = re.findall(r"G32634_\S+", line)
    res = infer("-c", cat, "-d", "2021-06-02", "-o", tmp_path / "leaf.tif", "--grid", leaf_grid)
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "leaf.tif") as ds:
        assert ds.crs.to_epsg() == 32634 and (ds.width, ds.height) == (133, 146)
