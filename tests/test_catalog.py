"""The catalog: statistics, persistence, incremental re-indexing, atomic writes, queries."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from conftest import assert_one_line_error, fill_disk, read_only, write_raster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cloudclear import catalog as catalog_mod
from cloudclear import masks
from cloudclear.catalog import Catalog, Scene, build_index
from cloudclear.cli import app
from cloudclear.errors import CatalogWriteError, EmptyCatalogError, QueryError, SceneNotFoundError

BANDS = ["B02", "B03", "B04", "B08"]
runner = CliRunner()
# The exact statistics below are the SCL's as decoded (its cloud rows, nothing else): index runs
# no detector and keeps the mask as decoded (the default grows cloud by a 3 px buffer; the clear
# policy's statistics are tested in test_clear_policy.py and test_policy_everywhere.py).
AS_DECODED = {"detect": None, "policy": masks.AS_DECODED}


def _scene(folder, day: int, cloud_rows: int, *, origin=(600000.0, 5700000.0), size=128, nodata_cols=0):
    """A 4-band S2 scene with an SCL sidecar: top ``cloud_rows`` cloudy, left columns nodata."""
    stamp = (datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc) + timedelta(days=day)).strftime("%Y%m%dT%H%M%S")
    data = np.full((4, size, size), 1200, np.uint16)
    scl = np.full((1, size, size), 4, np.uint8)
    scl[:, :cloud_rows] = 9
    if nodata_cols:
        data[:, :, :nodata_cols] = 0
        scl[:, :, :nodata_cols] = 0
    write_raster(folder / f"S2_T31UFQ_{stamp}.tif", data, origin=origin, descriptions=BANDS, nodata=0)
    write_raster(folder / f"S2_T31UFQ_{stamp}_SCL.tif", scl, origin=origin, descriptions=["SCL"], nodata=0)
    return stamp


def _s1(folder, when: datetime, origin=(600000.0, 5700000.0), size=128):
    stamp = when.strftime("%Y%m%dT%H%M%S")
    data = np.full((2, size, size), -12.0, np.float32)
    write_raster(
        folder / f"S1_T31UFQ_{stamp}.tif",
        data,
        origin=origin,
        descriptions=["VV", "VH"],
        tags={"UNITS": "dB"},
    )


def test_stats_exact_cloud_nodata_and_cells(tmp_path):
    _scene(tmp_path, 0, cloud_rows=32, nodata_cols=64)
    res = build_index(tmp_path, **AS_DECODED)
    row = Catalog.open(res.catalog_path).scenes.iloc[0]
    assert row["nodata_pct"] == pytest.approx(50.0)
    assert row["cloud_pct"] == pytest.approx(25.0)  # 32 of 128 valid rows
    cat = Catalog.open(tmp_path)
    cells = cat.cloud_cells(row["scene_id"])
    assert cells.shape == (2, 2)
    assert cells[0, 0] == 255  # no valid pixel in that cell
    assert cells[0, 1] == 50 and cells[1, 1] == 0
    assert row["mask_source"] == "SCL" and row["tile"] == "31UFQ" and row["crs"] == "EPSG:32631"
    assert row.geometry.bounds[0] == pytest.approx(4.42, abs=0.05)  # lon of x=600000 in zone 31 at 51.4N


def test_mask_on_coarser_grid_is_sampled_per_pixel(tmp_path):
    d = tmp_path / "p"
    data = np.full((4, 64, 64), 900, np.uint16)
    write_raster(d / "S2_10m_20180101T105000.tif", data, descriptions=BANDS, nodata=0)
    scl = np.full((1, 32, 32), 4, np.uint8)
    scl[:, :, :8] = 8  # left quarter cloudy at 20 m
    write_raster(d / "SCL_20180101T105000.tif", scl, res=20, descriptions=["SCL"], nodata=0)
    build_index(d, **AS_DECODED)
    assert Catalog.open(d).scenes.iloc[0]["cloud_pct"] == pytest.approx(25.0)


def test_no_mask_is_marked(tmp_path):
    write_raster(tmp_path / "S2_20210101.tif", np.full((4, 64, 64), 1200, np.uint16), descriptions=BANDS)
    row = Catalog.open(build_index(tmp_path, detect=None).catalog_path).scenes.iloc[0]
    assert row["mask_source"] == "no mask" and np.isnan(row["cloud_pct"])
    assert build_index(tmp_path, detect=None).summary["s2_cloud_distribution"]["no mask"] == 1


def test_nearest_s1_and_gap(tmp_path):
    _scene(tmp_path, 0, 0)
    t = datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc)
    _s1(tmp_path, t + timedelta(hours=31))
    _s1(tmp_path, t - timedelta(hours=50))
    _s1(tmp_path, t + timedelta(hours=2), origin=(700000.0, 5800000.0))  # closer in time, elsewhere
    scenes = Catalog.open(build_index(tmp_path).catalog_path).scenes
    s2 = scenes[scenes.sensor == "S2"].iloc[0]
    assert s2["s1_gap_hours"] == pytest.approx(31.0)
    assert s2["nearest_s1"].startswith("S1_31UFQ_20210502T173000")


def test_reindex_reads_only_new_or_changed(tmp_path):
    for day in range(3):
        _scene(tmp_path, day * 5, cloud_rows=10)
    first = build_index(tmp_path)
    assert (first.files_opened, first.scenes_computed) == (6, 3)
    second = build_index(tmp_path)
    assert (second.files_opened, second.scenes_computed, second.scenes_reused) == (0, 0, 3)
    stamp = _scene(tmp_path, 20, cloud_rows=64)
    third = build_index(tmp_path)
    assert (third.files_opened, third.scenes_computed, third.scenes_reused) == (2, 1, 3)
    mask = next(tmp_path.glob(f"*{stamp}_SCL.tif"))
    scl = np.full((1, 128, 128), 9, np.uint8)
    write_raster(mask, scl, descriptions=["SCL"], nodata=0)
    os.utime(mask, ns=(1, 10**18))
    fourth = build_index(tmp_path)
    assert (fourth.files_opened, fourth.scenes_computed) == (1, 1)
    assert Catalog.open(tmp_path).query(start=stamp[:8])[0].cloud_pct == pytest.approx(100.0)


def test_interrupted_write_leaves_previous_catalog(tmp_path, monkeypatch):
    _scene(tmp_path, 0, 0)
    path = build_index(tmp_path).catalog_path
    before = path.read_bytes()
    _scene(tmp_path, 5, 0)
    real = pyogrio.write_dataframe
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if killed while the second layer was being written
        return real(*args, **kwargs)

    monkeypatch.setattr(pyogrio, "write_dataframe", dying)
    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert len(Catalog.open(path).scenes) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_catalog_not_writable(tmp_path):
    _scene(tmp_path, 0, 0)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root writes anywhere on disk, but nobody can create files in /proc
    target = locked / "cat.gpkg" if not os.access(locked, os.W_OK) else __import__("pathlib").Path("/proc/cat.gpkg")
    try:
        with pytest.raises(CatalogWriteError, match="not writable"):
            build_index(tmp_path, target)
    finally:
        locked.chmod(0o700)
    assert not (tmp_path / "cloudclear.gpkg").exists()


def test_catalog_path_under_a_file_is_refused(tmp_path):
    _scene(tmp_path, 0, 0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CatalogWriteError, match="afile"):
        build_index(tmp_path, tmp_path / "afile" / "cat.gpkg")


def test_empty_and_missing_directories(tmp_path):
    with pytest.raises(EmptyCatalogError, match="no usable"):
        build_index(tmp_path)
    assert not (tmp_path / "cloudclear.gpkg").exists()
    with pytest.raises(SceneNotFoundError):
        build_index(tmp_path / "nope")


def test_empty_rescan_keeps_previous_catalog(tmp_path):
    d = tmp_path / "data"
    stamp = _scene(d, 0, 0)
    cat = tmp_path / "cat.gpkg"
    build_index(d, cat)
    for p in d.glob(f"*{stamp}*"):
        p.unlink()
    with pytest.raises(EmptyCatalogError):
        build_index(d, cat)
    assert len(Catalog.open(cat).scenes) == 1


def test_corrupt_pixels_skip_the_scene_not_the_run(tmp_path):
    _scene(tmp_path, 0, 0)
    victim = write_raster(
        tmp_path / "S2_T31UFQ_20210601T103000.tif",
        np.random.default_rng(3).integers(1, 9999, (4, 128, 128), dtype=np.uint16),
        descriptions=BANDS,
        compress="deflate",
        nodata=0,
    )
    raw = bytearray(victim.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 4000] = b"\x00\xff" * 2000  # scramble compressed tile data, keep the header
    victim.write_bytes(bytes(raw))
    res = build_index(tmp_path)
    assert res.scenes == 1
    reasons = [s.reason for s in res.skipped if s.path == str(victim)]
    assert reasons and "corrupt" in reasons[0]


def test_stale_rtree_is_rebuilt(tmp_path):
    for day in range(4):
        _scene(tmp_path, day, 0)
    path = build_index(tmp_path).catalog_path
    for ext in (".idx", ".dat", ".json"):
        os.remove(f"{path}.rtree{ext}")
    assert len(Catalog.open(path).query(start="2021-05-02")) == 3


def test_query_errors(tmp_path):
    _scene(tmp_path, 0, 0)
    cat = Catalog.open(build_index(tmp_path).catalog_path)
    with pytest.raises(QueryError, match="inverted"):
        cat.query(start="2021-06-01", end="2021-05-01")
    with pytest.raises(QueryError, match="4 numbers"):
        cat.query([1, 2, 3])
    with pytest.raises(QueryError, match="cannot read"):
        cat.query(start="yesterday")
    with pytest.raises(QueryError, match="unknown CRS"):
        cat.query([0, 0, 1, 1], bbox_crs="EPSG:99999999")


def test_open_rejects_other_files(tmp_path):
    f = tmp_path / "other.gpkg"
    gpd.GeoDataFrame({"a": [1]}, geometry=gpd.points_from_xy([0], [0]), crs=4326).to_file(f, layer="x")
    with pytest.raises(Exception, match="not a cloudclear catalog"):
        Catalog.open(f)


@pytest.fixture(scope="module")
def grid_catalog(tmp_path_factory):
    """40 scenes at 4 places, 10 dates each, varied cloud, plus S1."""
    d = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(1)
    for place in range(4):
        origin = (500000.0 + place * 30000, 5600000.0 + (place % 2) * 50000)
        for k in range(10):
            _scene(
                d / f"p{place}",
                k * 7 + place,
                cloud_rows=int(rng.integers(0, 129)),
                origin=origin,
                size=64,
            )
        _s1(
            d / f"p{place}",
            datetime(2021, 5, 3, 17, 30, tzinfo=timezone.utc),
            origin=origin,
            size=64,
        )
    build_index(d)
    return Catalog.open(d)


def _brute(scenes, bbox, start, end, cmax):
    import shapely

    sel = scenes
    if bbox is not None:
        sel = sel[sel.geometry.intersects(shapely.box(*bbox))]
    if start is not None:
        sel = sel[sel["datetime"] >= start]
    if end is not None:
        sel = sel[sel["datetime"] <= end]
    if cmax is not None:
        sel = sel[(sel["cloud_pct"] <= cmax) | sel["cloud_pct"].isna()]
    return sorted(sel["scene_id"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lon=st.floats(1.5, 4.5),
    lat=st.floats(50.5, 51.5),
    span=st.floats(0.01, 1.5),
    d0=st.integers(0, 80),
    ndays=st.integers(0, 60),
    cmax=st.one_of(st.none(), st.floats(0, 100)),
    use_box=st.booleans(),
)
def test_query_matches_brute_force(grid_catalog, lon, lat, span, d0, ndays, cmax, use_box):
    base = datetime(2021, 4, 25, tzinfo=timezone.utc)
    start, end = base + timedelta(days=d0), base + timedelta(days=d0 + ndays)
    bbox = (lon, lat, lon + span, lat + span) if use_box else None
    got = sorted(s.scene_id for s in grid_catalog.query(bbox, start=start, end=end, cloud_max=cmax))
    assert got == _brute(grid_catalog.scenes, bbox, start, end, cmax)


def test_query_in_native_crs_and_by_tile_and_sensor(grid_catalog):
    box_utm = (500000.0, 5599000.0, 500100.0, 5600000.0)
    hits = grid_catalog.query(box_utm, bbox_crs="EPSG:32631")
    assert len(hits) == 11 and {s.sensor for s in hits} == {"S1", "S2"}
    assert len(grid_catalog.query(box_utm, bbox_crs="EPSG:32631", sensor="s1")) == 1
    assert len(grid_catalog.query(tile="T31UFQ")) == 44
    assert len(grid_catalog.query(tile="32UPU")) == 0


def test_cell_constant_matches_module():
    assert catalog_mod.CELL == 64 and catalog_mod.STRIP_ROWS % catalog_mod.CELL == 0


@pytest.mark.slow
def test_sigkill_mid_run_leaves_a_catalog_that_opens(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    d = tmp_path / "d"
    _scene(d, 0, 0)
    cat = tmp_path / "cat.gpkg"
    build_index(d, cat)
    for day in range(1, 60):
        _scene(d, day, day % 128)
    code = f"from cloudclear.catalog import build_index; build_index({str(d)!r}, {str(cat)!r})"

    def temporaries() -> list[str]:
        return [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".tmp-" in p.name]

    # Killed while it writes: synchronised on the temporary catalog appearing, not on a delay.
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while not temporaries():
        if proc.poll() is not None:
            pytest.fail("the index finished before its temporary catalog was seen")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no temporary catalog after 120 s")
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the old catalog untouched (and the dead run's temporary left behind), or, if the kill landed
    # after the rename, the new one whole; never half of it
    n = len(Catalog.open(cat).scenes)
    assert n in (1, 60)
    assert n == 60 or temporaries()
    res = build_index(d, cat)  # a later run finishes and sweeps the dead run's temporary files
    assert res.scenes == 60
    assert not temporaries()


def test_all_nodata_scene_is_catalogued_as_such(tmp_path):
    _scene(tmp_path, 0, cloud_rows=0, nodata_cols=128)
    row = Catalog.open(build_index(tmp_path).catalog_path).scenes.iloc[0]
    assert row["nodata_pct"] == 100.0 and np.isnan(row["cloud_pct"])
    cells = Catalog.open(tmp_path).cloud_cells(row["scene_id"])
    assert (cells == 255).all()


# ---------------------------------------------------------------------------------------------
# Scene values


def test_scene_values_from_get_query_and_iteration(tmp_path):
    import dataclasses

    from affine import Affine
    from rasterio.coords import BoundingBox
    from rasterio.crs import CRS

    stamp = _scene(tmp_path, 0, cloud_rows=32)
    _s1(tmp_path, datetime(2021, 5, 1, 17, 0, tzinfo=timezone.utc))
    cat = Catalog.open(build_index(tmp_path, **AS_DECODED).catalog_path)
    scenes = list(cat)
    assert len(cat) == 2 and [s.index for s in scenes] == [0, 1]
    assert all(isinstance(s, Scene) for s in scenes)
    s2 = cat.query(sensor="S2")[0]
    s1 = cat.query(sensor="S1")[0]
    assert cat.get(s2.scene_id) is s2 and cat[s2.index] is s2
    assert (s2.sensor, s2.tile, s2.place, s2.level) == ("S2", "31UFQ", "31UFQ", "")
    assert s2.datetime == datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc)
    assert s2.bands == tuple(BANDS) and s2.band_source == "descriptions"
    assert s2.sources["B04"] == (str(tmp_path / f"S2_T31UFQ_{stamp}.tif"), 3)
    assert s2.crs == CRS.from_epsg(32631) and s2.epsg == 32631 and s2.crs_name == "EPSG:32631"
    assert s2.transform == Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0)
    assert s2.bounds == BoundingBox(600000.0, 5698720.0, 601280.0, 5700000.0)
    assert (s2.width, s2.height, s2.res) == (128, 128, (10.0, 10.0))
    assert s2.mask is not None and s2.mask.convention == "SCL" and s2.mask.path.endswith("_SCL.tif")
    assert s2.cloud_pct == pytest.approx(25.0) and s2.nodata_pct == 0.0 and s2.has_mask
    assert (s2.scale, s2.offset, s2.units, s2.nodata) == (pytest.approx(1e-4), 0.0, "reflectance", 0.0)
    assert s2.cells.size == 64 and s2.cells.cloud.shape == (2, 2)
    assert (s2.cells.cloud == cat.cloud_cells(s2.scene_id)).all() and (s2.cells.valid == 100).all()
    assert s2.nearest_s1 == s1.scene_id and s2.s1_gap_hours == pytest.approx(6.5)
    assert len(s2.files) == 2 and all(os.path.isabs(f) for f in s2.files)
    assert s2.footprint.contains(s2.footprint.centroid) and s2.to_dict()["scene_id"] == s2.scene_id
    assert s1.units == "dB" and s1.mask is None and s1.cloud_pct is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s2.tile = "32UPU"  # type: ignore[misc]
    with pytest.raises(QueryError, match="nope"):
        cat.get("nope")


def _untiled(folder, days=(0, 5, 10)):
    """S2 composites whose names and tags give no tile id (dates from the name and a DATETIME tag)."""
    for day in days:
        when = datetime(2021, 5, 1, tzinfo=timezone.utc) + timedelta(days=day)
        data = np.full((4, 128, 128), 1200 + day, np.uint16)
        scl = np.full((1, 128, 128), 4, np.uint8)
        if day == 5:
            scl[:, :40] = 9
        name = f"S2_L2A_{when:%Y%m%d}_monthly_composite"
        tags = {"DATETIME": f"{when:%Y:%m:%d} 10:30:00"}
        write_raster(folder / f"{name}.tif", data, descriptions=BANDS, nodata=0, tags=tags)
        write_raster(folder / f"{name}_SCL.tif", scl, descriptions=["SCL"], nodata=0)


GRID = "G32631_600000_5700000_10m_128x128"


def test_scenes_without_a_tile_belong_to_their_grid(tmp_path):
    _untiled(tmp_path)
    res = build_index(tmp_path)
    assert res.summary["by_sensor_tile"] == [{"sensor": "S2", "tile": GRID, "scenes": 3, "grids": 1}]
    cat = Catalog.open(res.catalog_path)
    assert cat.places() == [GRID] and {s.place for s in cat} == {GRID} and {s.tile for s in cat} == {None}
    assert len(cat.query(tile=GRID)) == 3 and len(cat.query(tile="31UFQ")) == 0
    assert list(cat.query_frame(tile=GRID)["place"]) == [GRID] * 3


def test_infer_and_sample_on_a_folder_without_tile_ids(tmp_path):
    from cloudclear.sampling import PatchStore

    d = tmp_path / "d"
    _untiled(d)
    assert runner.invoke(app, ["index", str(d)]).exit_code == 0
    out = tmp_path / "out.tif"
    res = runner.invoke(app, ["infer", "-c", str(d), "--date", "2021-05-06", "--method", "gapfill", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()
    folder = tmp_path / "outs"
    folder.mkdir()
    res = runner.invoke(
        app, ["infer", "-c", str(d), "--date", "2021-05-06", "-m", "gapfill", "--tile", GRID, "-o", str(folder)]
    )
    assert res.exit_code == 0, res.output
    assert (folder / f"S2_{GRID}_20210506_gapfill.tif").exists()
    store = tmp_path / "store"
    res = runner.invoke(
        app,
        ["sample", "-c", str(d), "-l", "single-date", "--no-s1", "--tile", GRID, "-o", str(store)]
        + ["--patch-size", "32", "--count", "4"],
    )
    assert res.exit_code == 0, res.output
    assert len(PatchStore(store)) >= 1


# ---------------------------------------------------------------------------------------------
# Honest failures


def test_index_refuses_to_replace_a_file_that_is_not_a_catalog(tmp_path):
    d = tmp_path / "d"
    _scene(d, 0, 0)
    other = write_raster(tmp_path / "some.tif", np.ones((1, 16, 16), np.uint8))
    before = other.read_bytes()
    for extra in ([], ["--rebuild"]):
        res = runner.invoke(app, ["index", str(d), "-c", str(other), *extra])
        assert_one_line_error(res, str(other), "not a cloudclear catalog")
        assert other.read_bytes() == before
    with pytest.raises(CatalogWriteError, match="refusing to replace it"):
        build_index(d, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "some.tif"]


def test_catalog_on_read_only_storage_opens_queries_and_infers(tmp_path):
    d = tmp_path / "d"
    for day in (0, 5, 10):
        _scene(d, day, 40 if day == 5 else 0)
    cat_path = build_index(d).catalog_path
    assert cat_path.with_name(cat_path.name + ".rtree.idx").exists()
    out = tmp_path / "out.tif"
    with read_only(d):
        cat = Catalog.open(d)
        assert len(cat.query(start="2021-05-02")) == 2
        res = runner.invoke(app, ["query", str(d)])
        assert res.exit_code == 0, res.output
        assert "3 scene(s)" in res.stdout
        res = runner.invoke(app, ["infer", "-c", str(d), "--date", "2021-05-06", "-m", "gapfill", "-o", str(out)])
        assert res.exit_code == 0, res.output
    assert out.exists()


def test_rtree_that_cannot_be_saved_is_kept_in_memory(tmp_path, caplog):
    _scene(tmp_path, 0, 0)
    cat = Catalog.open(build_index(tmp_path).catalog_path)
    for ext in (".idx", ".dat", ".json"):
        Path(f"{cat.path}.rtree{ext}").unlink()
    with read_only(tmp_path):
        cat = Catalog.open(tmp_path)
        cat.build_rtree(persist=True)
        assert len(cat.query()) == 1
    assert "cannot persist the rtree" in caplog.text
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or "rtree" in p.name]


@pytest.mark.parametrize("detect", [False, True])
def test_index_on_a_full_disk_leaves_the_catalog_untouched(tmp_path, small_fs, detect):
    """--no-detect: writing the catalog fails; --mask-source combined (the detector runs on scenes
    with a mask too): writing the first detector mask (in CATALOG_masks/, before the catalog)
    fails, and the error names that file."""
    d = tmp_path / "d"
    _scene(d, 0, 0)
    vol = small_fs(1 << 20)
    cat = vol / "cat.gpkg"
    extra = ["--mask-source", "combined"] if detect else ["--no-detect"]
    assert runner.invoke(app, ["index", str(d), "-c", str(cat), *extra]).exit_code == 0
    before = cat.read_bytes()
    mask_dir = vol / "cat_masks"
    masks_before = sorted(p.name for p in mask_dir.iterdir()) if detect else []
    assert mask_dir.is_dir() == detect and len(masks_before) == int(detect)
    for day in range(1, 4):
        _scene(d, day, day)
    fill_disk(vol)
    res = runner.invoke(app, ["index", str(d), "-c", str(cat), *extra])
    assert_one_line_error(
        res, str(mask_dir / "S2_31UFQ_20210502T103000_SCL.tif") if detect else str(cat), "no space left on device"
    )
    assert cat.read_bytes() == before
    assert sorted(p.name for p in vol.iterdir() if "partial" in p.name or ".tmp-" in p.name) == []
    if detect:
        assert sorted(p.name for p in mask_dir.iterdir()) == masks_before  # nothing half-written
    assert len(Catalog.open(cat)) == 1


def test_raster_declaring_an_absurd_size_is_refused_before_reading(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    from cloudclear.catalog import scene_stats
    from cloudclear.errors import ResourceLimitError
    from cloudclear.scenes import assemble, read_file_info

    path = tmp_path / "S2_T31UFQ_20210601.tif"
    # Sparse: no block is written, so the file stays small while declaring 200000 x 200000 px.
    with rasterio.open(
        path, "w", driver="GTiff", width=200_000, height=200_000, count=1, dtype="uint16", crs="EPSG:32631",
        transform=from_origin(600000, 5700000, 10, 10), tiled=True, blockxsize=1024, blockysize=1024,
        sparse_ok=True, bigtiff="YES", nodata=0,
    ) as dst:  # fmt: skip
        dst.set_band_description(1, "B04")
    assert path.stat().st_size < 2_000_000
    drafts, _ = assemble([read_file_info(path)])
    with pytest.raises(ResourceLimitError, match=r"S2_T31UFQ_20210601\.tif: declares 200000 x 200000"):
        scene_stats(drafts[0])
    res = runner.invoke(app, ["index", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "200000 x 200000" in res.stderr and "no usable" in res.stderr


def test_a_file_deleted_after_indexing_is_named(tmp_path):
    d = tmp_path / "d"
    stamps = [_scene(d, day, 40 if day == 5 else 0) for day in (0, 5, 10)]
    cat = build_index(d).catalog_path
    gone = d / f"S2_T31UFQ_{stamps[2]}.tif"
    gone.unlink()
    res = runner.invoke(
        app, ["infer", "-c", str(d), "--date", "2021-05-06", "-m", "gapfill", "-o", str(tmp_path / "o.tif")]
    )
    assert_one_line_error(res, str(gone), "no such file", str(cat), "cloudclear index")
