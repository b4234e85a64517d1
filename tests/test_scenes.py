"""Recognising files: band names, dates, tiles, roles, integrity."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from conftest import write_raster

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, MissingDateError
from cloudclear.scenes import (
    NotASceneError,
    assemble,
    classify,
    find_datetime,
    find_tile,
    normalise_band,
    parse_datetime,
    read_file_info,
    scene_ids,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B2", "B02"),
        ("b8a", "B8A"),
        ("B12", "B12"),
        ("VV_dB", "VV"),
        ("vh", "VH"),
        ("NDVI", None),
        ("", None),
    ],
)
def test_normalise_band(text, expected):
    assert normalise_band(text) == expected


@pytest.mark.parametrize(
    "text",
    ["20170216T102101", "2017-02-16T10:21:01", "2017:02:16 10:21:01", "2017-02-16T10:21:01Z"],
)
def test_parse_datetime_forms(text):
    assert parse_datetime(text) == datetime(2017, 2, 16, 10, 21, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("20170216", "2017-02-16T00:00:00+00:00"),
        (" 2017:02:16 ", "2017-02-16T00:00:00+00:00"),
        ("2017-02-16 10:21:01", "2017-02-16T10:21:01+00:00"),
        ("20170216 102101", "2017-02-16T10:21:01+00:00"),
        ("2017-02-16T102101", "2017-02-16T10:21:01+00:00"),
        ("20170216T10:21:01", "2017-02-16T10:21:01+00:00"),
        ("20170216T102101Z", "2017-02-16T10:21:01+00:00"),
        ("2021-06-10T10:30:21.024Z", "2021-06-10T10:30:21.024000+00:00"),
        ("20210610T1030", "2021-06-10T10:03:00+00:00"),  # strptime reads one-digit fields: kept as it was
        ("2017-02-30", None),
        ("20171316", None),
        ("2017-0216", None),
        ("2017-02-16T25:00:00", None),
    ],
)
def test_parse_datetime_fast_forms_equal_the_general_parser(text, iso):
    """The plain forms skip strptime; these values are what the general parser gave before."""
    if iso is None:
        with pytest.raises(ValueError):
            parse_datetime(text)
    else:
        assert parse_datetime(text).isoformat() == iso


def test_parse_datetime_converts_offsets_to_utc():
    assert parse_datetime("2017-02-16T12:21:01+02:00") == datetime(2017, 2, 16, 10, 21, 1, tzinfo=timezone.utc)


def _info(tmp_path, name, data=None, **kw):
    if data is None:
        data = np.ones((4, 64, 64), np.uint16)
    return read_file_info(write_raster(tmp_path / name, data, **kw))


def test_date_from_name_then_tag_time(tmp_path):
    info = _info(tmp_path, "S2_20210513.tif", tags={"TIFFTAG_DATETIME": "2021:05:13 10:10:21"})
    found = find_datetime(info)
    assert found.value == datetime(2021, 5, 13, 10, 10, 21, tzinfo=timezone.utc)
    assert found.source == "name+tag:TIFFTAG_DATETIME"


def test_date_name_wins_over_other_day_tag(tmp_path):
    info = _info(tmp_path, "S2_20210513.tif", tags={"DATETIME": "2024-01-01T00:00:00"})
    assert find_datetime(info).value.date().isoformat() == "2021-05-13"


def test_date_from_tag_only(tmp_path):
    info = _info(tmp_path, "scene.tif", tags={"DATETIME": "2015-07-11T10:00:08"})
    assert find_datetime(info).source == "tag:DATETIME"


def test_custom_date_pattern_with_day_month_year_groups(tmp_path):
    info = _info(tmp_path, "img_d13-05-2021.tif")
    with pytest.raises(MissingDateError):
        find_datetime(info)
    found = find_datetime(info, r"d(?P<day>\d{2})-(?P<month>\d{2})-(?P<year>\d{4})")
    assert found.value == datetime(2021, 5, 13, tzinfo=timezone.utc)


def test_custom_date_pattern_with_date_group(tmp_path):
    info = _info(tmp_path, "acq-2021-05-13_x.tif")
    assert find_datetime(info, r"acq-(?P<date>\d{4}-\d{2}-\d{2})").value.day == 13


def test_missing_date_names_the_file(tmp_path):
    info = _info(tmp_path, "ROIs1868_summer_s2_cloudy_19_p30.tif")
    with pytest.raises(MissingDateError, match="ROIs1868_summer_s2_cloudy_19_p30.tif: no acquisition date"):
        find_datetime(info)


@pytest.mark.parametrize(
    ("name", "tile"),
    [
        ("T33UUU_20170216T102101_B04.tif", "33UUU"),
        ("S2_L1C_T33UUU_20170216T102101_bands_10m.tif", "33UUU"),
        ("S2_20210513.tif", None),
        ("00002806639B424A_31UDS.tif", "31UDS"),
    ],
)
def test_find_tile_from_name(tmp_path, name, tile):
    assert find_tile(_info(tmp_path, name)) == tile


def test_find_tile_from_parent_folder(tmp_path):
    info = _info(tmp_path / "34VCL_59.04N_17.96E", "S2_20210513.tif")
    assert find_tile(info) == "34VCL"


def test_classify_multiband_s2(tmp_path):
    role = classify(_info(tmp_path, "x.tif", descriptions=["B2", "B3", "B4", "B8"]))
    assert role.kind == "s2" and role.bands == {"B02": 1, "B03": 2, "B04": 3, "B08": 4}


def test_classify_s2_with_mask_band(tmp_path):
    data = np.ones((3, 64, 64), np.uint16)
    role = classify(_info(tmp_path, "x.tif", data, descriptions=["B04", "B08", "SCL"]))
    assert role.kind == "s2" and role.mask == masks.MaskBand(role.mask.path, 3, "SCL")


def test_classify_esa_band_file(tmp_path):
    role = classify(_info(tmp_path, "T33UUU_20170216T102101_B8A.tif", np.ones((1, 64, 64), np.uint16)))
    assert role.kind == "s2" and role.bands == {"B8A": 1} and role.band_source == "name"


def test_classify_s1_by_description_and_units(tmp_path):
    data = np.full((2, 64, 64), -12.0, np.float32)
    role = classify(_info(tmp_path, "a.tif", data, descriptions=["VV_dB", "VH_dB"]))
    assert role.kind == "s1" and role.bands == {"VV": 1, "VH": 2} and role.units == "dB"


def test_classify_s1_units_from_pixels(tmp_path):
    lin = classify(_info(tmp_path, "S1_a.tif", np.full((2, 64, 64), 0.05, np.float32)))
    db = classify(_info(tmp_path, "S1_b.tif", np.full((2, 64, 64), -15.0, np.float32)))
    assert (lin.kind, lin.units, db.units) == ("s1", "linear", "dB")


def test_classify_mask_by_token_and_description(tmp_path):
    clm = classify(_info(tmp_path, "S2_20150711_CLM.tif", np.zeros((1, 64, 64), np.uint8)))
    assert clm.kind == "mask" and clm.mask.convention == "CLM"
    two = np.zeros((2, 64, 64), np.uint8)
    both = classify(_info(tmp_path, "MASK_20210403.tif", two, descriptions=["MSK_CLDPRB(0-100)", "SCL"]))
    assert both.mask.convention == "SCL" and both.mask.band == 2


def test_classify_count_fallback_for_unlabelled_s2(tmp_path):
    role = classify(_info(tmp_path, "p_s2_cloudy.tif", np.ones((13, 64, 64), np.uint16)))
    assert role.band_source == "count" and list(role.bands)[0] == "B01" and len(role.bands) == 13


@pytest.mark.parametrize(
    ("name", "data", "kw", "reason"),
    [
        ("DEM.tif", np.ones((1, 64, 64), np.float32), {}, "not recognised"),
        (
            "x_truth.tif",
            np.ones((4, 64, 64), np.uint16),
            {"descriptions": ["B02", "B03", "B04", "B08"]},
            "truth",
        ),
    ],
)
def test_classify_rejects_with_reason(tmp_path, name, data, kw, reason):
    with pytest.raises(NotASceneError, match=reason):
        classify(_info(tmp_path, name, data, **kw))


def test_non_raster_with_tif_name(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("hello, I am not a GeoTIFF")
    with pytest.raises(InvalidRasterError, match="notes.tif: not a readable raster"):
        read_file_info(bad)


def test_truncated_geotiff_detected_from_block_offsets(tmp_path, rng):
    path = write_raster(tmp_path / "S2_20210101.tif", rng.integers(1, 9999, (4, 256, 256), dtype=np.uint16))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InvalidRasterError, match="truncated"):
        read_file_info(path)


def test_assemble_groups_resolutions_and_pairs_masks(tmp_path, rng):
    d = tmp_path / "p_31UDS"
    infos = [
        read_file_info(
            write_raster(
                d / "S2_10m_20180101T105000.tif",
                s2_4(rng, 64),
                descriptions=["B02", "B03", "B04", "B08"],
            )
        ),
        read_file_info(
            write_raster(
                d / "S2_20m_20180101T105000.tif",
                s2_4(rng, 32, 6),
                res=20,
                descriptions=["B05", "B06", "B07", "B8A", "B11", "B12"],
            )
        ),
        read_file_info(
            write_raster(
                d / "SCL_20180101T105000.tif",
                np.full((1, 32, 32), 4, np.uint8),
                res=20,
                descriptions=["SCL"],
            )
        ),
        read_file_info(
            write_raster(
                d / "SCL_20180102T105000.tif",
                np.full((1, 32, 32), 4, np.uint8),
                res=20,
                descriptions=["SCL"],
            )
        ),
    ]
    scenes, skipped = assemble(infos)
    assert len(scenes) == 1
    s = scenes[0]
    assert s.bands == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    assert s.grid.resolution == 10 and s.tile == "31UDS" and s.mask.convention == "SCL"
    assert [k.path.split("/")[-1] for k in skipped] == ["SCL_20180102T105000.tif"]
    assert "no S2 scene of the same date" in skipped[0].reason


def test_assemble_skips_raster_without_crs(tmp_path):
    info = read_file_info(
        write_raster(
            tmp_path / "S2_20210101.tif",
            np.ones((4, 64, 64), np.uint16),
            crs=None,
            descriptions=["B02", "B03", "B04", "B08"],
        )
    )
    scenes, skipped = assemble([info])
    assert scenes == [] and "has no CRS" in skipped[0].reason


def s2_4(rng, size, bands=4):
    return rng.integers(1, 5000, (bands, size, size), dtype=np.uint16)


def test_scene_ids_are_short_and_unique(tmp_path, rng):
    bands = ["B02", "B03", "B04", "B08"]
    paths = [
        tmp_path / "a_31UDS" / "S2_10m_20180101T105000.tif",
        tmp_path / "b_31UDS" / "S2_10m_20180101T105000.tif",  # same tile and date, other patch
        tmp_path / "c" / "S2_T31UFQ_20180101T105000.tif",
        tmp_path / "c" / "S2_T31UFQ_20180101T105000_copy.tif",  # same acquisition, same bands
    ]
    infos = [read_file_info(write_raster(p, s2_4(rng, 64), descriptions=bands)) for p in paths]
    scenes, skipped = assemble(infos)
    ids = dict(zip((s.grid.path for s in scenes), scene_ids(scenes), strict=True))
    assert ids == {
        str(paths[0]): "S2_31UDS_20180101T105000_a_31UDS",
        str(paths[1]): "S2_31UDS_20180101T105000_b_31UDS",
        str(paths[2]): "S2_31UFQ_20180101T105000",
    }
    # a second file of the same acquisition that adds no band is reported, not merged silently
    assert [(k.path, "duplicate of" in k.reason) for k in skipped] == [(str(paths[3]), True)]


def test_grid_names_tell_apart_lon_lat_grids_and_never_use_an_exponent():
    from cloudclear.scenes import grid_name

    px = 8.983153e-05
    a = grid_name("EPSG:4326", (px, 0, 17.93712345, 0, -px, 59.0523456), 128, 128)
    b = grid_name("EPSG:4326", (px, 0, 17.93718345, 0, -px, 59.0523456), 128, 128)  # 0.6 px east
    assert a == "G4326_17p9371235_59p0523456_0p00008983153deg_128x128" and a != b
    assert grid_name("EPSG:32633", (9.995, 0, 465181.0, 0, -9.997, 5080250.5), 100, 101) == (
        "G32633_465181_5080250p5_9p995x9p997m_100x101"
    )
    assert (
        grid_name("EPSG:32632", (10, 0, 699960, 0, -10, 4600020), 1000, 1000) == "G32632_699960_4600020_10m_1000x1000"
    )
