"""THEIA / MAJA L2A products (folders and .zip): members, tags, scale, nodata, masks, one scene."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from products_fixtures import write_theia

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, NotASceneError
from cloudclear.gdal import archive_member
from cloudclear.scenes import assemble, classify, reflectance_scale, theia
from cloudclear.scenes.products import product_kind

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _by_description(product):
    return {m.descriptions[0]: m for m in product.members}


def test_folder_is_one_product_of_fre_bands_and_the_cloud_mask(tmp_path):
    tp = write_theia(tmp_path)
    assert theia.matches(tp.path) and not theia.matches(tmp_path) and product_kind(tp.path) == "THEIA"
    [product] = theia.read(tp.path)
    assert product.kind == "THEIA" and product.key == f"{tp.path}#{tp.identifier}"
    assert product.metadata == (str(tp.path / f"{tp.identifier}_MTD_ALL.xml"),)
    members = _by_description(product)
    assert set(members) == {*BANDS, "MAJA"}
    b02, b11, clm = members["B02"], members["B11"], members["MAJA"]
    assert b02.name == f"{tp.identifier}_FRE_B2.tif" and b11.name == f"{tp.identifier}_FRE_B11.tif"
    assert clm.name == f"{tp.identifier}_CLM_R1.tif"  # the 10 m cloud mask
    assert (b02.resolution, b11.resolution) == (10.0, 20.0)
    assert b02.tags == {
        "CLOUDCLEAR_PRODUCT": product.key,
        "DATETIME": "2018-08-07T10:57:10.459000+00:00",
        "TILE_ID": "31TCJ",
        "PROCESSING_LEVEL": "L2A",
        "QUANTIFICATION_VALUE": "10000",
        "SCALE_SOURCE": "MTD_ALL.xml",
        "SPACECRAFT": "Sentinel-2A",
        "PRODUCT": tp.identifier,
        "SUN_ZENITH": "32.26",
        "SUN_AZIMUTH": "150.87",
    }
    assert b02.scales == (1e-4,) and b02.offsets == (0.0,) and b02.nodata == -10000.0
    assert reflectance_scale(b02, 1) == (1e-4, 0.0)
    assert "SCALE_SOURCE" not in clm.tags and clm.tags["CLOUDCLEAR_PRODUCT"] == product.key
    with rasterio.open(b02.path) as src:
        assert src.nodata is None  # the file does not say it: the metadata's SPECIAL_VALUE does
        np.testing.assert_array_equal(src.read(1), tp.pixels[tp.file("FRE_B2")])


def test_members_make_one_scene_with_its_mask(tmp_path):
    tp = write_theia(tmp_path)
    [product] = theia.read(tp.path)
    assert classify(_by_description(product)["MAJA"]).kind == "mask"
    scenes, skipped = assemble(product.members)
    assert not skipped
    [scene] = scenes
    assert scene.sensor == "S2" and scene.tile == "31TCJ" and scene.bands == BANDS
    assert scene.datetime.isoformat() == "2018-08-07T10:57:10.459000+00:00"
    assert scene.grid.resolution == 10.0 and scene.band_source == "descriptions"
    assert scene.mask is not None and scene.mask.convention == "MAJA"
    assert scene.mask.path.endswith("_CLM_R1.tif")


def test_sre_when_no_fre_and_declared_nodata_kept(tmp_path):
    tp = write_theia(tmp_path, kinds=("SRE",), declare_nodata=True, quantification=1000)
    [product] = theia.read(tp.path)
    b04 = _by_description(product)["B04"]
    assert b04.name.endswith("_SRE_B4.tif") and b04.nodata == -10000.0
    assert b04.scales == (1e-3,) and b04.tags["QUANTIFICATION_VALUE"] == "1000"


def test_mg2_is_the_mask_without_clm(tmp_path):
    tp = write_theia(tmp_path, masks=("MG2_R1", "MG2_R2", "EDG_R1"))
    [product] = theia.read(tp.path)
    mask = _by_description(product)["MG2"]
    assert mask.name.endswith("_MG2_R1.tif")
    [scene], _ = assemble(product.members)
    assert scene.mask is not None and scene.mask.convention == "MG2"


def test_no_mask_file_no_mask(tmp_path):
    tp = write_theia(tmp_path, masks=("EDG_R1",))
    [product] = theia.read(tp.path)
    assert set(_by_description(product)) == set(BANDS)


def test_zipped_product_is_read_through_vsizip(tmp_path):
    tp = write_theia(tmp_path, zipped=True)
    assert tp.path.suffix == ".zip" and theia.matches(tp.path) and product_kind(tp.path) == "THEIA"
    [product] = theia.read(tp.path)
    members = _by_description(product)
    b08 = members["B08"]
    assert b08.path == archive_member(tp.path, f"{tp.identifier}/{tp.identifier}_FRE_B8.tif")
    assert b08.size == tp.path.stat().st_size  # change detection: the archive's
    with rasterio.open(b08.path) as src:
        np.testing.assert_array_equal(src.read(1), tp.pixels[tp.file("FRE_B8")])
    scenes, skipped = assemble(product.members)
    assert len(scenes) == 1 and not skipped and scenes[0].mask is not None


def test_a_zip_without_metadata_is_no_theia_product(tmp_path):
    import zipfile

    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("x/readme.txt", "hello")
    assert not theia.matches(z)
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    assert not theia.matches(tmp_path / "broken.zip")


def test_band_listed_but_absent_is_one_line(tmp_path):
    tp = write_theia(tmp_path, kinds=("FRE",), unlisted=("FRE_B12",))
    with pytest.raises(InvalidRasterError, match=r"lists .*_FRE_B12\.tif \(B12\) but the file is absent") as exc:
        theia.read(tp.path)
    assert "\n" not in str(exc.value) and str(tp.path) in str(exc.value)


def test_other_missions_and_missing_fields_are_refused(tmp_path):
    tp = write_theia(tmp_path / "l8", platform="LANDSAT8")
    with pytest.raises(NotASceneError, match="THEIA product of LANDSAT8; cloudclear reads Sentinel-2 only"):
        theia.read(tp.path)
    tp = write_theia(tmp_path / "s2")
    mtd = tp.path / f"{tp.identifier}_MTD_ALL.xml"
    mtd.write_text(mtd.read_text().replace("<ACQUISITION_DATE>2018-08-07T10:57:10.459Z</ACQUISITION_DATE>", ""))
    with pytest.raises(InvalidRasterError, match="no Product_Characteristics/ACQUISITION_DATE in the metadata"):
        theia.read(tp.path)
    mtd.write_text("<Other/>")
    with pytest.raises(NotASceneError, match="not Muscate_Metadata_Document"):
        theia.read(tp.path)


def test_maja_clm_bits_follow_the_theia_format():
    # bit 0 any cloud or shadow, 1 all clouds but the thinnest, 2 mono-temporal, 3 multi-temporal,
    # 4 thinnest clouds, 5 shadow of a cloud in the image, 6 of a cloud outside, 7 high cloud (1.38 um)
    values = np.array([0, 1 | 2, 1 | 2 | 4, 1 | 2 | 8, 16, 1 | 32, 1 | 64, 128, 1 | 2 | 32], np.uint8)
    c = masks.MaskClass
    expected = [c.CLEAR, c.CLOUD, c.CLOUD, c.CLOUD, c.THIN_CLOUD, c.SHADOW, c.SHADOW, c.THIN_CLOUD, c.CLOUD]
    np.testing.assert_array_equal(masks.decode(values, "MAJA"), expected)


def test_mg2_bits_follow_the_theia_format():
    # bit 0 water, 1 cloud, 2 snow, 3 cloud shadow, 4 topographic shadow, 5 hidden, 6-7 low sun
    values = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 2 | 8, 4 | 8], np.uint8)
    c = masks.MaskClass
    expected = [c.CLEAR, c.CLEAR, c.CLOUD, c.SNOW, c.SHADOW, c.CLEAR, c.NODATA, c.CLEAR, c.CLEAR, c.CLOUD, c.SHADOW]
    np.testing.assert_array_equal(masks.decode(values, "MG2"), expected)
    assert masks.convention_of("MG2") == "MG2" and masks.convention_of("MAJA") == "MAJA"
    assert masks.convention_of_tokens({"SENTINEL2A", "MG2", "R1"}) == "MG2"
    with pytest.raises(masks.MaskError, match="unknown MG2 value"):
        masks.decode(np.array([300], np.int16), "MG2")


def test_scene_reader_gives_reflectance_with_theia_nodata(tmp_path):
    from cloudclear.gridio import Grid
    from cloudclear.scenes import ReadSpec, SceneReader

    tp = write_theia(tmp_path, kinds=("FRE",))
    [product] = theia.read(tp.path)
    [scene], _ = assemble(product.members)
    infos = {m.path: m for m in product.members}
    spec = ReadSpec.from_files("S2", scene.band_sources, infos, mask=scene.mask)
    g = scene.grid
    reader = SceneReader(spec, Grid(g.crs or "", tuple(g.transform[:6]), g.width, g.height))  # type: ignore[arg-type]
    try:
        pixels = reader.read(0, g.height)
    finally:
        reader.close()
    raw = tp.pixels[tp.file("FRE_B4")]
    i = scene.bands.index("B04")
    physical = pixels.physical(nan_invalid=True)[i]
    assert np.isnan(physical[:4]).all()  # -10000: outside the swath
    np.testing.assert_allclose(physical[4:], raw[4:] / 10000.0, atol=1e-4)  # within 1 DN
