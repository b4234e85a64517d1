"""The catalog: statistics, persistence, incremental re-indexing, atomic writes, queries."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from conftest import write_raster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudclear import catalog as catalog_mod
from cloudclear.catalog import Catalog, build_index
from cloudclear.errors import CatalogWriteError, EmptyCatalogError, QueryError, SceneNotFoundError

BANDS = ["B02", "B03", "B04", "B08"]


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
    res = build_index(tmp_path)
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
    build_index(d)
    assert Catalog.open(d).scenes.iloc[0]["cloud_pct"] == pytest.approx(25.0)


def test_no_mask_is_marked(tmp_path):
    write_raster(tmp_path / "S2_20210101.tif", np.ones((4, 64, 64), np.uint16), descriptions=BANDS)
    row = Catalog.open(build_index(tmp_path).catalog_path).scenes.iloc[0]
    assert row["mask_source"] == "no mask" and np.isnan(row["cloud_pct"])
    assert build_index(tmp_path).summary["s2_cloud_distribution"]["no mask"] == 1


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
    assert Catalog.open(tmp_path).query(start=stamp[:8]).iloc[0]["cloud_pct"] == pytest.approx(100.0)


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
    got = sorted(grid_catalog.query(bbox, start=start, end=end, cloud_max=cmax)["scene_id"])
    assert got == _brute(grid_catalog.scenes, bbox, start, end, cmax)


def test_query_in_native_crs_and_by_tile_and_sensor(grid_catalog):
    box_utm = (500000.0, 5599000.0, 500100.0, 5600000.0)
    hits = grid_catalog.query(box_utm, bbox_crs="EPSG:32631")
    assert len(hits) == 11 and set(hits["sensor"]) == {"S1", "S2"}
    assert len(grid_catalog.query(box_utm, bbox_crs="EPSG:32631", sensor="s1")) == 1
    assert len(grid_catalog.query(tile="T31UFQ")) == 44
    assert len(grid_catalog.query(tile="32UPU")) == 0


def test_cell_constant_matches_module():
    assert catalog_mod.CELL == 64 and catalog_mod.STRIP_ROWS % catalog_mod.CELL == 0


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
    for delay in (0.8, 1.2, 1.6):
        proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(Catalog.open(cat).scenes) in (1, 60)  # the old catalog or the new one, never half
    res = build_index(d, cat)  # a later run finishes and sweeps the dead run's temporary files
    assert res.scenes == 60
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_all_nodata_scene_is_catalogued_as_such(tmp_path):
    _scene(tmp_path, 0, cloud_rows=0, nodata_cols=128)
    row = Catalog.open(build_index(tmp_path).catalog_path).scenes.iloc[0]
    assert row["nodata_pct"] == 100.0 and np.isnan(row["cloud_pct"])
    cells = Catalog.open(tmp_path).cloud_cells(row["scene_id"])
    assert (cells == 255).all()
