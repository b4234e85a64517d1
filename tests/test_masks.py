"""Mask conventions: decoding every known mask to MaskClass, recognising them, and the catalog using them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_raster

from cloudclear import masks
from cloudclear.catalog import Catalog, build_index
from cloudclear.errors import MaskError
from cloudclear.masks import MaskClass

N, C, CL, TH, SH, SN = (
    MaskClass.NODATA,
    MaskClass.CLEAR,
    MaskClass.CLOUD,
    MaskClass.THIN_CLOUD,
    MaskClass.SHADOW,
    MaskClass.SNOW,
)
BANDS = ["B02", "B03", "B04", "B08"]
DLMASK_DESC = "dlmask(0 clear,1 cloud,2 shadow,3 snow,4 masked;255 nodata)"


def decoded(values, convention: str, nodata: float | None = None, dtype=np.uint8) -> list[int]:
    return masks.decode(np.asarray(values, dtype=dtype), convention, nodata).tolist()


# -- decoding ------------------------------------------------------------------------------------


def test_scl_every_code():
    codes = list(range(12))
    expected = [N, N, C, SH, C, C, C, C, CL, CL, TH, SN]
    assert decoded(codes, "SCL") == expected
    # Codes beyond the table are refused, not read as nodata (tests/test_mask_bad_input.py).
    with pytest.raises(MaskError, match=r"unknown SCL class value\(s\) 12, 200, 255 \(SCL codes are 0-11\)"):
        decoded([4, 12, 200, 255], "SCL")


def test_scl_declared_nodata_wins_over_a_class():
    # A product that flags nodata with a class code (here 4, vegetation) is nodata there.
    assert decoded([4, 9, 0], "SCL", nodata=4) == [N, CL, N]


def test_decode_keeps_shape_and_returns_uint8():
    out = masks.decode(np.full((3, 5), 9, np.uint16), "SCL")
    assert out.shape == (3, 5) and out.dtype == np.uint8 and (out == CL).all()


def test_clm_binary_mask():
    # s2cloudless CLM: 0 clear, 1 cloud; anything else (255 here) is no observation.
    assert decoded([0, 1, 2, 254, 255], "CLM") == [C, CL, N, N, N]
    assert decoded([0, 1, 255], "CLM", nodata=0) == [N, CL, N]


def test_clp_probability_times_255_cut_at_0_4():
    # 0.4 * 255 = 102: 101 is below the threshold, 102 at it.
    assert decoded([0, 101, 102, 255], "CLP") == [C, C, CL, CL]
    assert decoded([0, 101, 102, 300], "CLP", dtype=np.uint16) == [C, C, CL, N]
    assert decoded([0, 200], "CLP", nodata=200) == [C, N]


def test_cldprb_percent_cut_at_40():
    assert decoded([0, 39, 40, 100, 101, 255], "CLDPRB") == [C, C, CL, CL, N, N]
    assert decoded([0, 40], "CLDPRB", nodata=0) == [N, CL]


@pytest.mark.parametrize(
    ("value", "cls"),
    [
        (0, C),
        (0b0000_0001, C),  # bit 0 only (the "any" summary bit) says nothing by itself
        (0b0000_0010, CL),  # bit 1: all clouds except the thinnest
        (0b0000_0100, CL),  # bit 2: mono-temporal cloud test
        (0b0000_1000, CL),  # bit 3: multi-temporal cloud test
        (0b0001_0000, TH),  # bit 4: the thinnest clouds
        (0b1000_0000, TH),  # bit 7: high clouds at 1.38 um
        (0b0010_0000, SH),  # bit 5: shadow of a cloud in the image
        (0b0100_0000, SH),  # bit 6: shadow of a cloud outside the image
        (0b0010_0011, CL),  # cloud and shadow: cloud wins
        (0b1010_0000, TH),  # thin cloud and shadow: thin cloud wins
        (0b1000_0010, CL),  # cloud and thin cloud: cloud wins
        (0b0110_0001, SH),
    ],
)
def test_maja_bits(value, cls):
    assert decoded([value], "MAJA") == [cls]


def test_maja_nodata():
    assert decoded([0, 2, 255], "MAJA", nodata=255) == [C, CL, N]


def test_fmask_codes():
    assert decoded([0, 1, 2, 3, 4, 255], "FMASK") == [C, C, SH, SN, CL, N]
    with pytest.raises(MaskError, match=r"unknown FMASK class value\(s\) 5, 254 "):
        decoded([0, 5, 254], "FMASK")
    assert decoded([0, 4, 255], "FMASK", nodata=255) == [C, CL, N]


def test_dlmask_codes():
    # 4 is "masked by the cube builder": nodata, like 255.
    assert decoded([0, 1, 2, 3, 4, 255], "DLMASK") == [C, CL, SH, SN, N, N]
    with pytest.raises(MaskError, match=r"unknown DLMASK class value\(s\) 5 "):
        decoded([0, 5], "DLMASK")


def test_table_decoders_refuse_out_of_range_values():
    data = np.array([-1, 0, 4, 256, 1000], np.int16)
    for convention in ("FMASK", "SCL"):
        with pytest.raises(MaskError, match=rf"unknown {convention} class value\(s\) -1, 256, 1000 \("):
            masks.decode(data, convention)
    # a negative declared nodata (int16 products) is honoured too
    assert masks.decode(np.array([-9999, 1], np.int16), "DLMASK", -9999).tolist() == [N, CL]


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_float_mask_with_nan_nodata_decodes_nan_as_nodata():
    data = np.array([np.nan, 1.0], np.float32)
    got = {conv: masks.decode(data, conv, float("nan")).tolist()[0] for conv in masks.CONVENTIONS}
    assert got == dict.fromkeys(masks.CONVENTIONS, N)


def test_decode_unknown_convention_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown mask convention 'QA60'; known: SCL, MAJA, FMASK, DLMASK, CLM"):
        masks.decode(np.zeros(2, np.uint8), "QA60")


def test_obscured_classes():
    assert set(masks.OBSCURED) == {CL, TH, SH}
    assert SN not in masks.OBSCURED and C not in masks.OBSCURED


def test_every_scl_code_has_a_name_and_a_colour():
    assert set(masks.SCL_NAMES) == set(masks.SCL_COLOURS) == set(range(12))
    assert masks.SCL_NAMES[3] == "CLOUD_SHADOWS" and masks.SCL_NAMES[9] == "CLOUD_HIGH_PROBABILITY"
    assert masks.SCL_COLOURS[0][3] == 0  # nodata is transparent


# -- recognising a convention --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "convention"),
    [
        ("SCL", "SCL"),
        ("scl", "SCL"),
        (" SCL ", "SCL"),
        ("Scene classification", "SCL"),
        ("MSK_CLDPRB(0-100)", "CLDPRB"),
        ("CLDPRB", "CLDPRB"),
        ("cloud probability (0-100)", "CLDPRB"),
        (DLMASK_DESC, "DLMASK"),
        ("dlmask(0 clear,...)", "DLMASK"),
        ("Fmask", "FMASK"),
        ("FMASK4", "FMASK"),
        ("THEIA_CLM", "MAJA"),
        ("MAJA cloud mask", "MAJA"),
        ("CLM", "CLM"),
        ("cloud_mask", "CLM"),
        ("CLP", "CLP"),
        ("cloud_prob", "CLP"),
        ("B04", None),
        ("mask", None),
        ("QA60", None),
        ("", None),
    ],
)
def test_convention_of(name, convention):
    assert masks.convention_of(name) == convention


def _tokens(stem: str) -> set[str]:
    return {t.upper() for t in stem.replace("-", "_").replace(".", "_").split("_") if t}


@pytest.mark.parametrize(
    ("stem", "convention"),
    [
        ("SENTINEL2A_20180101-105435-123_L2A_T31TCJ_C_V2-2_CLM_R1", "MAJA"),
        ("SENTINEL2B_20180101-105435-123_L2A_T31TCJ_C_V2-2_CLM_R2", "MAJA"),
        ("SENTINEL2A_20180101-105435-123_L2A_T31TCJ_C_V2-2_CLM", "MAJA"),  # product name alone
        ("clm_r1", "MAJA"),  # resolution suffix alone
        ("S2_L1C_20150711T100008_CLM", "CLM"),  # s2cloudless
        ("S2_L1C_20150711T100008_CLP", "CLP"),
        ("S2_T31UFQ_20210516T103021_SCL", "SCL"),
        ("S2_T31UFQ_20210516T103021_Fmask4", "FMASK"),
        ("S2_SCL_CLM", "SCL"),  # several: the best ranked
        ("S2_CLP_CLDPRB", "CLDPRB"),
        ("S2_T31UFQ_20210516T103021", None),
    ],
)
def test_convention_of_tokens(stem, convention):
    assert masks.convention_of_tokens(_tokens(stem)) == convention


def test_rank_prefers_multi_temporal_and_learned_masks_then_masks_that_mark_shadows():
    order = ["MAJA", "MG2", "DLMASK", "FMASK", "SCL", "CLM", "CLDPRB", "CLASSI", "CLP"]
    assert list(masks.PREFERENCE) == order
    assert sorted(masks.CONVENTIONS, key=masks.rank) == order
    assert masks.rank("unknown") > masks.rank("CLP")


# -- the catalog uses them -----------------------------------------------------------------------


def _scene(path, size=64, *, origin=(600000.0, 5700000.0), crs="EPSG:32631", nodata_rows=0):
    data = np.full((4, size, size), 1500, np.uint16)
    data[:, :nodata_rows] = 0
    return write_raster(path, data, crs=crs, origin=origin, descriptions=BANDS, nodata=0)


def _only_row(folder):
    # The scene's own mask as decoded: these tests are about decoding (the detector would also
    # call the flat synthetic scene's pixels clear or not; the policy is tested elsewhere).
    res = build_index(folder, detect=None, policy=masks.AS_DECODED)
    assert res.scenes == 1, res.skipped
    return Catalog.open(res.catalog_path).scenes.iloc[0]


def test_catalog_reads_an_fmask_sidecar(tmp_path):
    # 64 x 64; 4 scene rows nodata; Fmask: 300 cloud, 200 shadow, 100 snow, 150 water, 64 nodata.
    _scene(tmp_path / "S2_T31UFQ_20210516T103021.tif", nodata_rows=4)
    fm = np.zeros((64, 64), np.uint8)
    fm[:4] = 4  # cloud under the scene's nodata rows: not counted
    flat = fm[4:].reshape(-1)  # 3840 pixels where the scene has data
    flat[:300] = 4
    flat[300:500] = 2
    flat[500:600] = 3
    flat[600:750] = 1
    flat[750:814] = 255
    write_raster(tmp_path / "S2_T31UFQ_20210516T103021_Fmask4.tif", fm, nodata=255)
    row = _only_row(tmp_path)
    assert row["mask_source"] == "FMASK"
    assert row["mask_file"] == "S2_T31UFQ_20210516T103021_Fmask4.tif"
    known = 3840 - 64
    assert row["cloud_pct"] == pytest.approx(100 * (300 + 200) / known, abs=1e-4)
    assert row["nodata_pct"] == pytest.approx(100 * 4 / 64)


def test_catalog_reads_a_maja_clm_r1_sidecar(tmp_path):
    # A MAJA product (THEIA naming, 31TCJ in UTM 31N), the date in the name without a time.
    folder = tmp_path / "SENTINEL2A_20180101-105435-123_L2A_T31TCJ_C_V2-2"
    stem = "SENTINEL2A_20180101-105435-123_L2A_T31TCJ_C_V2-2"
    origin = (300000.0, 4800000.0)
    _scene(folder / f"{stem}_FRE.tif", origin=origin)
    clm = np.zeros((64, 64), np.uint8)
    flat = clm.reshape(-1)
    flat[:400] = 0b0000_0011  # cloud (bits 0, 1)
    flat[400:500] = 0b0001_0001  # thin cloud (bit 4)
    flat[500:550] = 0b1000_0000  # high cloud at 1.38 um (bit 7): thin
    flat[550:700] = 0b0010_0001  # shadow (bit 5)
    flat[700:760] = 0b0100_0000  # shadow of a cloud outside the image (bit 6)
    write_raster(folder / f"{stem}_CLM_R1.tif", clm, origin=origin)
    row = _only_row(tmp_path)
    assert row["mask_source"] == "MAJA" and row["mask_file"].endswith("_CLM_R1.tif")
    assert row["tile"] == "31TCJ" and row["crs"] == "EPSG:32631"
    assert row["cloud_pct"] == pytest.approx(100 * 760 / 4096, abs=1e-4)


def test_catalog_prefers_the_learned_dlmask_in_a_two_band_dlmask_and_scl_file(tmp_path):
    # GreenEarthNet layout: S2_YYYYMMDD.tif + MASK_YYYYMMDD.tif (band 1 dlmask, band 2 SCL), here
    # on the true UTM grid of 34VCL. The two bands disagree so the count tells which one was used.
    origin = (400000.0, 6550000.0)
    folder = tmp_path / "34VCL"
    _scene(folder / "S2_20210513.tif", crs="EPSG:32634", origin=origin)
    dl = np.zeros((64, 64), np.uint8)
    dl[:32] = 1  # dlmask: half cloud
    scl = np.full((64, 64), 4, np.uint8)
    scl[:8] = 9  # SCL: 512 cloud, 128 shadow, 64 thin cirrus, 64 snow, 64 nodata
    scl[8:10] = 3
    scl[10] = 10
    scl[11] = 11
    scl[12] = 0
    write_raster(
        folder / "MASK_20210513.tif",
        np.stack([dl, scl]),
        crs="EPSG:32634",
        origin=origin,
        descriptions=[DLMASK_DESC, "SCL"],
    )
    row = _only_row(tmp_path)
    assert (row["mask_source"], row["mask_band"]) == ("DLMASK", 1)
    assert row["tile"] == "34VCL" and row["crs"] == "EPSG:32634"
    assert row["cloud_pct"] == pytest.approx(50.0, abs=1e-4)


def test_catalog_reads_a_dlmask_with_its_nodata_codes(tmp_path):
    origin = (400000.0, 6550000.0)
    _scene(tmp_path / "S2_20210513.tif", crs="EPSG:32634", origin=origin)
    dl = np.zeros((64, 64), np.uint8)
    flat = dl.reshape(-1)
    flat[:600] = 1  # cloud
    flat[600:800] = 2  # shadow
    flat[800:900] = 3  # snow: known, not obscured
    flat[900:1100] = 4  # masked by the cube builder
    flat[1100:1200] = 255  # nodata
    write_raster(tmp_path / "MASK_20210513.tif", dl, crs="EPSG:32634", origin=origin, descriptions=[DLMASK_DESC])
    row = _only_row(tmp_path)
    assert (row["mask_source"], row["mask_band"]) == ("DLMASK", 1)
    assert row["cloud_pct"] == pytest.approx(100 * 800 / (4096 - 300), abs=1e-4)


def test_catalog_picks_the_best_of_several_sidecars(tmp_path):
    # An s2cloudless CLM (all cloud) and an Fmask (a quarter cloud) for one scene: Fmask ranks first.
    _scene(tmp_path / "S2_T31UFQ_20210516T103021.tif")
    write_raster(tmp_path / "S2_T31UFQ_20210516T103021_CLM.tif", np.ones((64, 64), np.uint8))
    fm = np.zeros((64, 64), np.uint8)
    fm[:16] = 4
    write_raster(tmp_path / "S2_T31UFQ_20210516T103021_Fmask.tif", fm)
    row = _only_row(tmp_path)
    assert row["mask_source"] == "FMASK"
    assert row["cloud_pct"] == pytest.approx(25.0)
