"""The series product: infer's per-date outputs as a Zarr store per place and a STAC catalog."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from conftest import UTM31, write_raster
from rasterio.crs import CRS

from cloudclear.errors import (
    GridError,
    InvalidRasterError,
    MissingDateError,
    NoInputsError,
    OutputError,
    OutputExistsError,
    SceneNotFoundError,
)
from cloudclear.gapfill import PixelStatus
from cloudclear.gridio import Grid
from cloudclear.inference.series import STATUS_UNKNOWN, write_series
from cloudclear.inference.writer import ROLE_OUTPUT, ROLE_STATUS, ROLE_TAG, output_profile, status_profile

BANDS = ("B02", "B03", "B04", "B08")
ORIGIN = (600000.0, 5700000.0)
H, W = 70, 90  # not a multiple of the 32 px chunks the tests ask for: edge chunks are partial
CHUNK = 32
DATES = [datetime(2021, 4, 1, 10, 30), datetime(2021, 4, 16, 10, 30), datetime(2021, 5, 1, 10, 30)]


def _write_output(
    folder: Path,
    when: datetime,
    rng: np.random.Generator,
    *,
    tile: str | None = "31UFQ",
    origin=ORIGIN,
    bands=BANDS,
    status: bool = True,
    method: str = "gapfill",
    size=(H, W),
    name: str | None = None,
) -> Path:
    """An output as infer writes it: the writer's profile and tags, a status sidecar, nodata 0 in
    a corner and a stripe."""
    h, w = size
    grid = Grid(CRS.from_string(UTM31).to_wkt(), (10.0, 0.0, origin[0], 0.0, -10.0, origin[1]), w, h)
    dn = rng.integers(1, 9000, (len(bands), h, w), dtype=np.uint16)
    st = rng.integers(1, 3, (h, w), dtype=np.uint8)
    st[:5, :7] = PixelStatus.NODATA
    st[:, -3:] = PixelStatus.NODATA
    dn[:, st == PixelStatus.NODATA] = 0
    tags = {"DATETIME": when.strftime("%Y-%m-%dT%H:%M:%S"), "CLOUDCLEAR_METHOD": method, "PROCESSING_LEVEL": "L2A"}
    if tile:
        tags["TILE_ID"] = tile
    label = f"T{tile}" if tile else "grid"
    path = folder / (name or f"S2_{label}_{when:%Y%m%d}_{method}.tif")
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **output_profile(grid, len(bands))) as ds:
        ds.write(dn)
        ds.update_tags(**tags, **{ROLE_TAG: ROLE_OUTPUT})
        for i, b in enumerate(bands, 1):
            ds.set_band_description(i, b)
    if status:
        with rasterio.open(path.with_name(f"{path.stem}_status.tif"), "w", **status_profile(grid)) as ds:
            ds.write(st[None])
            ds.update_tags(**tags, **{ROLE_TAG: ROLE_STATUS})
    return path


@pytest.fixture
def outputs(tmp_path, rng) -> list[Path]:
    return [_write_output(tmp_path / "out", d, rng) for d in DATES]


def _read(path: Path, band: int | None = None) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# -- Zarr ------------------------------------------------------------------------------------------


def test_zarr_opens_lazily_in_one_line_and_equals_the_geotiffs(outputs, tmp_path):
    res = write_series(outputs, tmp_path / "series", ["zarr"], chunk=CHUNK)
    store = tmp_path / "series" / "S2_T31UFQ_series.zarr"
    assert res.catalog is None and [p.zarr for p in res.places] == [store]

    ds = xr.open_zarr(store)

    import dask.array

    assert isinstance(ds.reflectance.data, dask.array.Array) and isinstance(ds.status.data, dask.array.Array)
    assert ds.reflectance.dims == ("time", "band", "y", "x") and ds.status.dims == ("time", "y", "x")
    assert ds.reflectance.data.chunksize == (1, 1, CHUNK, CHUNK)
    assert list(ds.time.values) == [np.datetime64(d) for d in DATES]
    assert list(ds.band.values) == list(BANDS)
    assert list(ds.method.values) == ["gapfill"] * 3 and list(ds.source.values) == [p.name for p in outputs]
    assert ds.status.dtype == np.uint8
    for t, p in enumerate(outputs):
        dn = _read(p)
        want = np.where(dn == 0, np.nan, dn * 1e-4)
        np.testing.assert_allclose(ds.reflectance.isel(time=t).values, want, rtol=1e-6)
        np.testing.assert_array_equal(ds.status.isel(time=t).values, _read(p.with_name(f"{p.stem}_status.tif"), 1))
    # on disk: the DN themselves, with the CF encoding that decodes them
    raw = xr.open_zarr(store, mask_and_scale=False)
    assert raw.reflectance.dtype == np.uint16
    np.testing.assert_array_equal(raw.reflectance.values, np.stack([_read(p) for p in outputs]))
    enc = ds.reflectance.encoding
    assert enc["scale_factor"] == 1e-4 and enc["_FillValue"] == 0 and enc["dtype"] == np.uint16


def test_zarr_grid_round_trips_through_spatial_ref(outputs, tmp_path):
    write_series(outputs, tmp_path, ["zarr"], chunk=CHUNK)
    ds = xr.open_zarr(tmp_path / "S2_T31UFQ_series.zarr")
    with rasterio.open(outputs[0]) as src:
        crs, transform = src.crs, src.transform
    sr = ds.spatial_ref.attrs
    assert CRS.from_wkt(sr["crs_wkt"]) == crs and CRS.from_wkt(sr["spatial_ref"]) == crs
    assert Affine.from_gdal(*map(float, sr["GeoTransform"].split())) == transform
    assert ds.reflectance.attrs["grid_mapping"] == "spatial_ref" == ds.status.attrs["grid_mapping"]
    assert sr["grid_mapping_name"] == "transverse_mercator"
    # pixel centres
    assert ds.x.values[0] == ORIGIN[0] + 5 and ds.y.values[0] == ORIGIN[1] - 5
    assert ds.sizes["x"] == W and ds.x.values[-1] == ORIGIN[0] + 10 * W - 5


def test_rioxarray_reads_the_crs_and_transform(outputs, tmp_path):
    rioxarray = pytest.importorskip("rioxarray")
    write_series(outputs, tmp_path, ["zarr"], chunk=CHUNK)
    ds = xr.open_zarr(tmp_path / "S2_T31UFQ_series.zarr")
    assert rioxarray is not None
    with rasterio.open(outputs[0]) as src:
        assert ds.rio.crs == src.crs and ds.reflectance.rio.crs == src.crs
        assert ds.reflectance.rio.transform() == src.transform


def test_a_missing_sidecar_is_status_unknown_where_there_is_data(outputs, tmp_path):
    side = outputs[1].with_name(f"{outputs[1].stem}_status.tif")
    side.unlink()
    res = write_series(outputs, tmp_path / "series", chunk=CHUNK)
    ds = xr.open_zarr(res.places[0].zarr)
    dn = _read(outputs[1])
    want = np.where(dn.any(axis=0), STATUS_UNKNOWN, 0)
    np.testing.assert_array_equal(ds.status.isel(time=1).values, want)
    assert list(ds.status.attrs["flag_values"]) == [0, 1, 2, 255]
    assert ds.status.attrs["flag_meanings"] == "nodata observed reconstructed unknown"
    items = sorted((res.places[0].collection.parent / "items").glob("*.json"))
    assets = [set(json.loads(p.read_text())["assets"]) for p in items]
    assert assets == [{"data", "status"}, {"data"}, {"data", "status"}]


def test_rerun_gives_the_same_bytes_and_leaves_no_temporaries(outputs, tmp_path):
    dst = tmp_path / "series"
    write_series(outputs, dst, chunk=CHUNK)
    first = _tree(dst)
    assert any(k.startswith("S2_T31UFQ_series.zarr/") for k in first)
    write_series(list(reversed(outputs)), dst, chunk=CHUNK, progress=True)
    assert _tree(dst) == first
    assert not [p for p in dst.rglob(".*") if "partial" in p.name or ".old-" in p.name]


def test_rerun_with_fewer_dates_replaces_the_store_whole(outputs, tmp_path):
    write_series(outputs, tmp_path, chunk=CHUNK)
    write_series(outputs[:2], tmp_path, chunk=CHUNK)
    assert xr.open_zarr(tmp_path / "S2_T31UFQ_series.zarr").sizes["time"] == 2
    assert len(list((tmp_path / "S2_T31UFQ_series" / "items").glob("*.json"))) == 2


def test_a_stale_temporary_of_a_dead_run_is_removed(outputs, tmp_path):
    stale = tmp_path / ".S2_T31UFQ_series.partial-999999999.zarr"
    (stale / "reflectance").mkdir(parents=True)
    write_series(outputs, tmp_path, ["zarr"], chunk=CHUNK)
    assert not stale.exists()


def test_places_make_one_store_and_collection_each(tmp_path, rng):
    a = [_write_output(tmp_path / "out", d, rng) for d in DATES[:2]]
    b = [_write_output(tmp_path / "out", d, rng, tile=None, origin=(700000.0, 5600000.0)) for d in DATES]
    res = write_series(a + b, tmp_path / "series", chunk=CHUNK)
    grid = "G32631_700000_5600000_10m_90x70"
    assert [p.place for p in res.places] == ["31UFQ", grid]
    assert [xr.open_zarr(p.zarr).sizes["time"] for p in res.places] == [2, 3]
    assert res.places[1].zarr.name == f"S2_{grid}_series.zarr"
    catalog = json.loads(res.catalog.read_text())
    children = [link["href"] for link in catalog["links"] if link["rel"] == "child"]
    assert children == [f"./S2_{grid}_series/collection.json", "./S2_T31UFQ_series/collection.json"]
    item = json.loads(next((res.places[1].collection.parent / "items").glob("*.json")).read_text())
    assert "s2:mgrs_tile" not in item["properties"] and item["properties"]["cloudclear:place"] == grid
    # a later run for one place keeps the other's collection in the catalog
    write_series(a, tmp_path / "series", ["stac"])
    again = json.loads(res.catalog.read_text())
    assert [link["href"] for link in again["links"] if link["rel"] == "child"] == children


# -- STAC ------------------------------------------------------------------------------------------


def test_stac_items_describe_each_output(outputs, tmp_path):
    res = write_series(outputs, tmp_path / "series", ["stac"])
    dst = tmp_path / "series"
    assert res.catalog == dst / "catalog.json" and res.places[0].zarr is None
    collection_path = dst / "S2_T31UFQ_series" / "collection.json"
    assert res.places[0].collection == collection_path
    catalog = json.loads(res.catalog.read_text())
    assert catalog["type"] == "Catalog" and catalog["stac_version"] == "1.0.0"
    coll = json.loads(collection_path.read_text())
    assert coll["type"] == "Collection" and coll["extent"]["temporal"]["interval"] == [
        ["2021-04-01T10:30:00Z", "2021-05-01T10:30:00Z"]
    ]
    items = [
        json.loads((collection_path.parent / link["href"]).read_text())
        for link in coll["links"]
        if link["rel"] == "item"
    ]
    assert [i["id"] for i in items] == [p.stem for p in outputs]
    with rasterio.open(outputs[0]) as src:
        transform, bounds = src.transform, src.bounds
        from rasterio.warp import transform_bounds

        lonlat = transform_bounds(src.crs, "EPSG:4326", *bounds)
    for item, path, when in zip(items, outputs, DATES, strict=True):
        p = item["properties"]
        assert p["datetime"] == when.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert p["proj:epsg"] == 32631 and p["proj:shape"] == [H, W] and p["proj:transform"] == list(transform)[:6]
        assert p["s2:mgrs_tile"] == "31UFQ" and p["cloudclear:method"] == "gapfill" and p["processing:level"] == "L2A"
        np.testing.assert_allclose(item["bbox"], lonlat, atol=1e-6)
        assert coll["extent"]["spatial"]["bbox"][0] == item["bbox"]
        data, status = item["assets"]["data"], item["assets"]["status"]
        assert (dst / "S2_T31UFQ_series" / "items" / data["href"]).resolve() == path.resolve()
        assert (dst / "S2_T31UFQ_series" / "items" / status["href"]).resolve() == path.with_name(
            f"{path.stem}_status.tif"
        ).resolve()
        assert data["type"] == "image/tiff; application=geotiff" and data["roles"] == ["data"]
        assert [b["name"] for b in data["eo:bands"]] == list(BANDS)
        assert [b["common_name"] for b in data["eo:bands"]] == ["blue", "green", "red", "nir"]
        assert all(
            rb == {"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": 0, "spatial_resolution": 10.0}
            for rb in data["raster:bands"]
        )
        classes = status["classification:classes"]
        assert [(c["value"], c["name"]) for c in classes] == [(0, "nodata"), (1, "observed"), (2, "reconstructed")]


def test_stac_is_read_back_by_pystac(outputs, tmp_path):
    pystac = pytest.importorskip("pystac")
    if not hasattr(pystac, "Catalog"):
        pytest.skip("pystac without its core")
    res = write_series(outputs, tmp_path / "series", ["stac"])
    cat = pystac.Catalog.from_file(str(res.catalog))
    items = sorted(cat.get_items(recursive=True), key=lambda i: i.datetime)
    assert [i.datetime for i in items] == [d.replace(tzinfo=timezone.utc) for d in DATES]
    (coll,) = list(cat.get_children())
    assert isinstance(coll, pystac.Collection) and coll.id == "S2_T31UFQ_series"
    assert coll.extent.temporal.intervals[0][0] == DATES[0].replace(tzinfo=timezone.utc)
    for item, path in zip(items, outputs, strict=True):
        assert Path(item.assets["data"].get_absolute_href()).resolve() == path.resolve()
        assert item.assets["status"].roles == ["metadata"]
        from pystac.extensions.eo import EOExtension
        from pystac.extensions.projection import ProjectionExtension
        from pystac.extensions.raster import RasterExtension

        assert [b.name for b in EOExtension.ext(item.assets["data"]).bands] == list(BANDS)
        assert ProjectionExtension.ext(item).epsg == 32631
        assert [b.scale for b in RasterExtension.ext(item.assets["data"]).bands] == [1e-4] * 4


def test_odc_stac_loads_the_catalog_as_a_series(outputs, tmp_path):
    pystac = pytest.importorskip("pystac")
    odc_stac = pytest.importorskip("odc.stac")
    res = write_series(outputs, tmp_path / "series", ["stac"])
    items = list(pystac.Catalog.from_file(str(res.catalog)).get_items(recursive=True))
    ds = odc_stac.load(items, chunks={})
    assert set(ds.data_vars) == {*BANDS, "status"} and list(ds.time.values) == [np.datetime64(d) for d in DATES]
    for t, p in enumerate(outputs):
        dn = _read(p)
        for i, b in enumerate(BANDS):
            np.testing.assert_array_equal(ds[b].isel(time=t).values, dn[i])


def test_stac_items_are_read_back_by_cloudclears_own_reader(outputs, tmp_path):
    from cloudclear.scenes import stac

    res = write_series(outputs, tmp_path / "series", ["stac"])
    for path, when in zip(outputs, DATES, strict=True):
        item_path = res.places[0].collection.parent / "items" / f"{path.stem}.json"
        assert stac.matches(item_path)
        (product,) = stac.read(item_path)
        (member,) = product.members  # the data asset; the status asset is no band
        assert Path(member.path).resolve() == path.resolve()
        assert member.descriptions == BANDS
        assert member.tags["TILE_ID"] == "31UFQ" and member.tags["PROCESSING_LEVEL"] == "L2A"
        assert member.tags["DATETIME"] == when.replace(tzinfo=timezone.utc).isoformat()
        assert member.scales == (1e-4,) * 4 and member.offsets == (0.0,) * 4


def test_a_cog_output_is_typed_cloud_optimized(tmp_path, rng):
    from rasterio.shutil import copy

    plain = _write_output(tmp_path / "plain", DATES[0], rng)
    cog = tmp_path / "out" / plain.name
    cog.parent.mkdir()
    copy(plain, cog, driver="COG")
    res = write_series([cog], tmp_path / "series", ["stac"])
    item = json.loads(next((res.places[0].collection.parent / "items").glob("*.json")).read_text())
    assert item["assets"]["data"]["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert "status" not in item["assets"]


# -- refusals --------------------------------------------------------------------------------------


def test_a_glob_of_the_output_folder_skips_the_sidecars(outputs, tmp_path):
    res = write_series(sorted((tmp_path / "out").glob("*.tif")), tmp_path / "series", ["stac"])
    assert [o.path for o in res.places[0].outputs] == outputs


def test_refusals_are_one_line_naming_the_file(outputs, tmp_path, rng):
    dst = tmp_path / "series"
    side = outputs[0].with_name(f"{outputs[0].stem}_status.tif")
    with pytest.raises(InvalidRasterError, match="status sidecar") as e:
        write_series([side], dst)
    assert str(side) in _one_line(e)
    plain = write_raster(tmp_path / "scene.tif", rng.integers(1, 100, (4, 8, 8), dtype=np.uint16), nodata=0)
    with pytest.raises(InvalidRasterError, match="not a cloudclear reconstruction") as e:
        write_series([outputs[0], plain], dst)
    assert str(plain) in _one_line(e)
    moved = _write_output(tmp_path / "moved", DATES[2].replace(day=20), rng, origin=(600010.0, 5700000.0))
    with pytest.raises(GridError, match="another grid") as e:
        write_series([*outputs, moved], dst)
    assert str(moved) in _one_line(e)
    fewer = _write_output(tmp_path / "fewer", DATES[2].replace(day=21), rng, bands=BANDS[:3])
    with pytest.raises(InvalidRasterError, match="bands B02,B03,B04 differ") as e:
        write_series([*outputs, fewer], dst)
    twice = _write_output(tmp_path / "twice", DATES[1], rng, method="refine-small")
    with pytest.raises(InvalidRasterError, match="one output per date") as e:
        write_series([*outputs, twice], dst)
    assert str(twice) in _one_line(e)
    with pytest.raises(SceneNotFoundError, match="no such output"):
        write_series([tmp_path / "nothing.tif"], dst)
    with pytest.raises(NoInputsError):
        write_series([], dst)
    with pytest.raises(OutputError, match="choose from stac, zarr"):
        write_series(outputs, dst, ["vrt"])
    assert not dst.exists()  # every refusal came before anything was written


def test_an_output_without_a_date_is_refused(tmp_path, rng):
    p = _write_output(tmp_path / "out", DATES[0], rng)
    with rasterio.open(p, "r+") as ds:
        ds.update_tags(DATETIME="")
    with pytest.raises(MissingDateError, match="no DATETIME"):
        write_series([p], tmp_path / "series")


def test_a_sidecar_on_another_grid_is_refused(tmp_path, rng):
    p = _write_output(tmp_path / "out", DATES[0], rng)
    other = _write_output(tmp_path / "other", DATES[0], rng, size=(H, W + 1))
    other.with_name(f"{other.stem}_status.tif").replace(p.with_name(f"{p.stem}_status.tif"))
    with pytest.raises(GridError, match="status sidecar"):
        write_series([p], tmp_path / "series")


def test_targets_not_written_by_cloudclear_are_left_alone(outputs, tmp_path):
    dst = tmp_path / "series"
    foreign = dst / "S2_T31UFQ_series.zarr"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a Zarr store cloudclear wrote"):
        write_series(outputs, dst, ["zarr"])
    assert (foreign / "mine.txt").read_text() == "keep me"
    (dst / "catalog.json").write_text('{"type": "Catalog", "id": "theirs"}')
    with pytest.raises(OutputExistsError, match="not a STAC catalog cloudclear wrote"):
        write_series(outputs, dst, ["stac"])
    assert json.loads((dst / "catalog.json").read_text())["id"] == "theirs"


# -- from infer ------------------------------------------------------------------------------------


def test_series_of_infer_outputs(tmp_path):
    from cloudclear import masks
    from cloudclear.catalog import Catalog, build_index
    from cloudclear.inference.pipeline import GapfillMethod, InferOptions, infer
    from cloudclear.synth import generate_series

    synth = generate_series(tmp_path / "data", height=64, width=64, n_dates=4, interval_days=10, s1=False, seed=3)
    cat = Catalog.open(build_index(tmp_path / "data", tmp_path / "cat.gpkg", detect=None).catalog_path)
    days = [d.strftime("%Y-%m-%d") for d in synth.s2_dates[1:4]]
    run = infer(cat, days, GapfillMethod(neighbours=1), tmp_path / "out", options=InferOptions(clear=masks.AS_DECODED))
    outs = [r.path for r in run.results]
    res = write_series(outs, tmp_path / "out")
    ds = xr.open_zarr(tmp_path / "out" / "S2_T31UFQ_series.zarr")
    assert [str(t)[:10] for t in ds.time.values] == days
    for t, r in enumerate(run.results):
        dn = _read(r.path)
        np.testing.assert_allclose(ds.reflectance.isel(time=t).values, np.where(dn == 0, np.nan, dn * 1e-4), rtol=1e-6)
        np.testing.assert_array_equal(ds.status.isel(time=t).values, _read(r.status_path, 1))
    assert len(list(res.places[0].collection.parent.glob("items/*.json"))) == 3


def test_memory_follows_a_strip_not_the_tile(tmp_path, rng):
    import tracemalloc

    size = (1024, 1024)
    p = _write_output(tmp_path / "out", DATES[0], rng, size=size)
    tile_bytes = len(BANDS) * size[0] * size[1] * 2
    # Imports and first-use caches (xarray, zarr, dask, codecs) are not the series' memory: warm
    # them up on a small output first, whatever ran before this test.
    small = _write_output(tmp_path / "warm", DATES[0], rng, size=(64, 64))
    write_series([small], tmp_path / "warm_series", ["zarr"], chunk=128)
    tracemalloc.start()
    try:
        write_series([p], tmp_path / "series", ["zarr"], chunk=128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < tile_bytes / 3, (peak, tile_bytes)
