"""STAC items and ItemCollections (Planetary Computer, Element84 earth-search v1): members, tags,
scale and offset, hrefs, Sentinel-1 items, and one scene per item."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import write_raster
from products_fixtures import write_item_collection, write_stac_item, write_stac_s1_item

from cloudclear.errors import InvalidRasterError, NotASceneError
from cloudclear.scenes import assemble, classify, reflectance_scale, stac
from cloudclear.scenes.products import product_kind

L2A_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def _members(product):
    return {m.descriptions[0]: m for m in product.members}


def test_earth_search_item_raster_bands_scale_and_offset(tmp_path):
    si = write_stac_item(tmp_path)
    assert stac.matches(si.path) and product_kind(si.path) == "STAC"
    [product] = stac.read(si.path)
    item_id = si.item["id"]
    assert product.kind == "STAC" and product.key == f"{si.path}#{item_id}" and product.metadata == (str(si.path),)
    members = _members(product)
    assert set(members) == {*L2A_BANDS, "SCL"}
    b02, b8a, scl = members["B02"], members["B8A"], members["SCL"]
    assert b02.path == str(tmp_path / item_id / "B02.tif")  # the COG, not the blue-jp2 duplicate
    assert b8a.path.endswith("B8A.tif") and b8a.resolution == 20.0  # nir08
    assert b02.scales == (0.0001,) and b02.offsets == (-0.1,) and b02.nodata == 0.0
    assert reflectance_scale(b02, 1) == (0.0001, -0.1)
    assert b02.tags == {
        "CLOUDCLEAR_PRODUCT": product.key,
        "DATETIME": "2023-01-05T10:44:34.024000+00:00",
        "PRODUCT": item_id,
        "SPACECRAFT": "Sentinel-2A",
        "PROCESSING_LEVEL": "L2A",
        "TILE_ID": "31UFQ",
        "PROCESSING_BASELINE": "05.09",
        "SUN_ZENITH": "72.25",
        "SUN_AZIMUTH": "162.5",
        "SCALE_SOURCE": "STAC raster:bands",
        "QUANTIFICATION_VALUE": "10000",
        "BOA_ADD_OFFSET": "-1000",
    }
    assert classify(scl).kind == "mask" and classify(scl).mask.convention == "SCL"
    assert "SCALE_SOURCE" not in scl.tags
    with rasterio.open(b02.path) as src:
        np.testing.assert_array_equal(src.read(1), si.pixels["blue"])


def test_item_members_make_one_scene_with_scl(tmp_path):
    si = write_stac_item(tmp_path)
    [product] = stac.read(si.path)
    scenes, skipped = assemble(product.members)
    assert not skipped
    [scene] = scenes
    assert scene.sensor == "S2" and scene.tile == "31UFQ" and scene.bands == L2A_BANDS
    assert scene.grid.resolution == 10.0
    assert scene.mask is not None and scene.mask.convention == "SCL"


def test_boa_offset_applied_means_no_offset(tmp_path):
    si = write_stac_item(tmp_path, boa_offset_applied=True)
    b04 = _members(stac.read(si.path)[0])["B04"]
    assert b04.offsets == (0.0,) and b04.tags["BOA_ADD_OFFSET"] == "0"
    assert "earthsearch:boa_offset_applied" in b04.tags["SCALE_SOURCE"]


def test_planetary_computer_item_offset_from_the_baseline(tmp_path):
    si = write_stac_item(tmp_path, style="planetary-computer")
    [product] = stac.read(si.path)
    members = _members(product)
    assert set(members) == {*L2A_BANDS, "SCL"}  # visual, WVP, safe-manifest left out
    b02 = members["B02"]
    assert b02.name == "T31UFQ_20230105T104434_B02_10m.tif"
    assert b02.scales == (0.0001,) and b02.offsets == (-0.1,)
    assert b02.tags["SCALE_SOURCE"] == "STAC s2:processing_baseline"
    assert b02.tags["SUN_ZENITH"] == "72.25" and b02.tags["TILE_ID"] == "31UFQ"
    [scene], skipped = assemble(product.members)
    assert not skipped and scene.bands == L2A_BANDS and scene.mask is not None


def test_baseline_before_04_has_no_offset_and_none_at_all_is_refused(tmp_path):
    old = write_stac_item(tmp_path / "old", style="planetary-computer", baseline="03.01", when="2021-06-01T10:30:21Z")
    b03 = _members(stac.read(old.path)[0])["B03"]
    assert b03.offsets == (0.0,) and b03.tags["BOA_ADD_OFFSET"] == "0"
    dated = write_stac_item(tmp_path / "dated", style="planetary-computer", baseline=None, when="2021-06-01T10:30:21Z")
    assert _members(stac.read(dated.path)[0])["B03"].tags["SCALE_SOURCE"].startswith("STAC datetime")
    new = write_stac_item(tmp_path / "new", style="planetary-computer", baseline=None)
    with pytest.raises(InvalidRasterError, match="no raster:bands scale/offset nor processing baseline") as exc:
        stac.read(new.path)
    assert "\n" not in str(exc.value) and new.item["id"] in str(exc.value)


@pytest.mark.parametrize("hrefs", ["absolute", "file"])
def test_absolute_and_file_hrefs(tmp_path, hrefs):
    si = write_stac_item(tmp_path, hrefs=hrefs)
    b02 = _members(stac.read(si.path)[0])["B02"]
    assert b02.path == str(tmp_path / si.item["id"] / "B02.tif") and b02.size > 0


def test_https_hrefs_are_not_opened_when_the_item_gives_the_grid(tmp_path):
    si = write_stac_item(tmp_path, hrefs="https")
    [product] = stac.read(si.path)
    b11 = _members(product)["B11"]
    assert b11.path.startswith("/vsicurl/https://sentinel-cogs.s3.us-west-2.amazonaws.com/") and b11.path.endswith(
        "/B11.tif"
    )
    assert (b11.width, b11.height, b11.resolution, b11.dtype) == (30, 30, 20.0, "uint16")
    assert b11.transform == (20.0, 0.0, 600000.0, 0.0, -20.0, 5700000.0)
    assert "32631" in (b11.crs or "") and (b11.size, b11.mtime_ns) == (0, 0)
    assert b11.scales == (0.0001,) and b11.offsets == (-0.1,) and b11.nodata == 0.0
    [scene], skipped = assemble(product.members)
    assert not skipped and scene.bands == L2A_BANDS


def test_gdal_paths_of_hrefs(tmp_path):
    assert stac.gdal_path("s3://sentinel-s2-l2a/tiles/31/U/FQ/B02.jp2", tmp_path) == (
        "/vsis3/sentinel-s2-l2a/tiles/31/U/FQ/B02.jp2"
    )
    assert stac.gdal_path("https://x.org/a.tif?sig=1", tmp_path) == "/vsicurl/https://x.org/a.tif?sig=1"
    assert stac.gdal_path("gs://b/a.tif", tmp_path) == "/vsigs/b/a.tif"
    assert stac.gdal_path("sub/a.tif", tmp_path) == str(tmp_path / "sub" / "a.tif")


def test_item_collection_one_product_per_item(tmp_path):
    a = write_stac_item(tmp_path, name="a.json", when="2023-01-05T10:44:34.024000Z")
    b = write_stac_item(tmp_path, name="b.json", when="2023-01-08T10:54:21.100000Z", satellite="B", seed=1)
    coll = write_item_collection(tmp_path / "search.json", [a, b])
    assert stac.matches(coll)
    products = stac.read(coll)
    assert [p.key for p in products] == [f"{coll}#{a.item['id']}", f"{coll}#{b.item['id']}"]
    members = [m for p in products for m in p.members]
    scenes, skipped = assemble(members)
    assert not skipped and len(scenes) == 2
    assert {s.datetime.date().isoformat() for s in scenes} == {"2023-01-05", "2023-01-08"}
    assert _members(products[1])["B02"].tags["SPACECRAFT"] == "Sentinel-2B"


def test_s1_rtc_item_is_one_scene_in_linear_power(tmp_path):
    si = write_stac_s1_item(tmp_path)
    [product] = stac.read(si.path)
    members = _members(product)
    assert set(members) == {"VV", "VH"}
    vv = members["VV"]
    assert vv.tags["UNITS"] == "linear" and vv.tags["PROCESSING_LEVEL"] == "RTC"
    assert vv.tags["SPACECRAFT"] == "Sentinel-1A" and vv.nodata == -32768.0
    [scene], skipped = assemble(product.members)
    assert not skipped and scene.sensor == "S1" and scene.units == "linear" and scene.bands == ("VV", "VH")


def test_s1_units_from_raster_bands_and_amplitude_refused(tmp_path):
    db = write_stac_s1_item(tmp_path / "db", collection="sentinel-1-grd", unit="dB")
    assert _members(stac.read(db.path)[0])["VH"].tags["UNITS"] == "dB"
    grd = write_stac_s1_item(tmp_path / "grd", collection="sentinel-1-grd", dtype="uint16")
    with pytest.raises(NotASceneError, match="uncalibrated amplitude .uint16., not backscatter"):
        stac.read(grd.path)


def test_what_is_no_stac_item(tmp_path):
    plain = tmp_path / "card.json"
    plain.write_text(json.dumps({"architecture": "unet", "bands": ["B02"]}))
    assert not stac.matches(plain)
    with pytest.raises(NotASceneError, match="not a STAC Item or ItemCollection"):
        stac.read(plain)
    si = write_stac_item(tmp_path)
    item = dict(si.item, properties={**si.item["properties"], "platform": "landsat-8", "constellation": None})
    item.update(id="LC08_L2SP_198024_20230105_02_T1", collection="landsat-c2-l2")
    other = tmp_path / "landsat.json"
    other.write_text(json.dumps(item))
    with pytest.raises(NotASceneError, match="STAC item of landsat-8; cloudclear reads Sentinel-2 and Sentinel-1"):
        stac.read(other)
    gone = json.loads(si.path.read_text())
    gone["assets"]["red"]["href"] = "missing/B04.tif"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(gone))
    with pytest.raises(
        InvalidRasterError, match=r"#S2A_31UFQ_20230105_0_L2A: asset red: .*missing/B04.tif does not exist"
    ):
        stac.read(broken)


def test_l1c_item_records_the_radiometric_offset(tmp_path):
    si = write_stac_item(tmp_path)
    item = json.loads(si.path.read_text())
    item["properties"]["s2:product_type"] = "S2MSI1C"
    item["collection"] = "sentinel-2-l1c"
    del item["assets"]["scl"]
    si.path.write_text(json.dumps(item))
    [product] = stac.read(si.path)
    b02 = _members(product)["B02"]
    assert b02.tags["PROCESSING_LEVEL"] == "L1C" and b02.tags["RADIO_ADD_OFFSET"] == "-1000"
    assert "BOA_ADD_OFFSET" not in b02.tags and "SCL" not in _members(product)


def test_stac_1_1_bands_with_raster_fields(tmp_path):
    si = write_stac_item(tmp_path)
    item = json.loads(si.path.read_text())
    for key, asset in item["assets"].items():
        if "raster:bands" in asset:
            rb = asset.pop("raster:bands")[0]
            eo = asset.pop("eo:bands", [{}])[0]
            band = {"name": eo.get("name", key), "eo:common_name": eo.get("common_name"), "nodata": rb["nodata"]}
            band.update({f"raster:{k}": rb[k] for k in ("scale", "offset") if k in rb})
            asset["bands"] = [band]
    item["stac_version"] = "1.1.0"
    si.path.write_text(json.dumps(item))
    b12 = _members(stac.read(si.path)[0])["B12"]
    assert b12.scales == (0.0001,) and b12.offsets == (-0.1,) and b12.tags["SCALE_SOURCE"] == "STAC raster:bands"


@pytest.mark.parametrize("style", ["earth-search", "planetary-computer"])
def test_scene_reader_applies_the_offset(tmp_path, style):
    from cloudclear.gridio import Grid
    from cloudclear.scenes import ReadSpec, SceneReader

    si = write_stac_item(tmp_path, style=style)
    [product] = stac.read(si.path)
    [scene], _ = assemble(product.members)
    infos = {m.path: m for m in product.members}
    spec = ReadSpec.from_files("S2", scene.band_sources, infos, mask=scene.mask)
    g = scene.grid
    reader = SceneReader(spec, Grid(g.crs or "", tuple(g.transform[:6]), g.width, g.height))  # type: ignore[arg-type]
    try:
        physical = reader.read(0, g.height).physical(nan_invalid=True)
    finally:
        reader.close()
    raw = si.pixels["red" if style == "earth-search" else "B04"]
    b04 = physical[scene.bands.index("B04")]
    assert np.isnan(b04[0]).all()  # DN 0: nodata
    np.testing.assert_allclose(b04[1:], (raw[1:].astype(np.float64) - 1000) / 10000.0, atol=1e-4)


def test_a_multi_band_asset_gives_its_bands_with_their_own_scaling(tmp_path):
    # openEO / ODC exports: one stack per item, its eo:bands naming each band; raster:bands per band.
    from cloudclear.catalog import Catalog, build_index
    from cloudclear.gridio import Grid
    from cloudclear.scenes import ReadSpec, SceneReader

    rng = np.random.default_rng(7)
    dn = rng.integers(1100, 6000, (4, 32, 32)).astype(np.uint16)
    stack = write_raster(tmp_path / "data" / "stack.tif", dn, nodata=0, crs="EPSG:32632", origin=(600000.0, 5200020.0))
    scl = write_raster(tmp_path / "data" / "scl.tif", np.full((32, 32), 4, np.uint8), crs="EPSG:32632",
                       origin=(600000.0, 5200020.0))  # fmt: skip
    offsets = [-0.1, -0.1, -0.1, -0.11]  # B08 with its own offset
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "stack-20220617", "geometry": None, "links": [],
        "properties": {"datetime": "2022-06-17T10:20:00Z", "platform": "sentinel-2a", "s2:mgrs_tile": "32TPS",
                       "s2:product_type": "S2MSI2A"},
        "assets": {
            "data": {"href": "data/stack.tif", "type": "image/tiff; application=geotiff", "roles": ["data"],
                     "eo:bands": [{"name": b} for b in ("B02", "B03", "B04", "B08")],
                     "raster:bands": [{"nodata": 0, "scale": 1e-4, "offset": o} for o in offsets]},
            "scl": {"href": "data/scl.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]},
        },
    }  # fmt: skip
    (tmp_path / "item.json").write_text(json.dumps(item))
    res = build_index(tmp_path, tmp_path / "c.gpkg", detect=None)
    assert not res.skipped and res.scenes == 1
    (scene,) = list(Catalog.open(res.catalog_path))
    assert scene.bands == ("B02", "B03", "B04", "B08") and scene.mask_source == "SCL"
    assert scene.scaling("B08") == pytest.approx((1e-4, -0.11)) and scene.scaling("B02") == pytest.approx((1e-4, -0.1))
    assert scene.files[0] == str(stack) and str(scl) in scene.files
    grid = Grid(scene.crs.to_wkt(), tuple(scene.transform)[:6], scene.width, scene.height)
    reader = SceneReader(ReadSpec.of(scene), grid)
    try:
        px = reader.read(0, scene.height)
    finally:
        reader.close()
    want = dn * 1e-4 + np.array(offsets)[:, None, None]
    assert np.abs(px.spec.physical(px.values) - want).max() * 10000 <= 1.0
