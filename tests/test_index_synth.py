"""Indexing generated series and the shipped sample tiles: what synth wrote, index must find; the
real crop in sample_tiles/32TPS as its README describes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudclear import masks
from cloudclear.catalog import Catalog, build_index
from cloudclear.synth import generate_series

SAMPLE_TILES = Path(__file__).resolve().parents[1] / "sample_tiles"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate_series(root / "T31UFQ", height=96, width=128, n_dates=6, interval_days=15, seed=7)


def test_index_finds_every_generated_scene(series, tmp_path):
    # About index finding what synth wrote: no detector and the masks as decoded, so the cloud %
    # is the SCL sidecar's (the default policy adds the detector's mask and a buffer).
    res = build_index(series.root, tmp_path / "c.gpkg", detect=None, policy=masks.AS_DECODED)
    s = Catalog.open(res.catalog_path).scenes
    s2, s1 = s[s["sensor"] == "S2"], s[s["sensor"] == "S1"]
    assert list(s2["datetime"].dt.to_pydatetime()) == list(series.s2_dates)
    assert list(s1["datetime"].dt.to_pydatetime()) == list(series.s1_dates)
    assert set(s2["mask_source"]) == {"SCL"} and set(s["tile"]) == {"31UFQ"}
    assert set(s["crs"]) == {series.crs}
    assert (s2["width"] == 128).all() and (s2["height"] == 96).all()
    # cloud % from the SCL sidecar is the generator's own figure
    assert s2["cloud_pct"].tolist() == pytest.approx(list(series.cloud_pct), abs=1e-3)
    # truth files are reported, not indexed as acquisitions
    truth = [k for k in res.skipped if "truth" in k.reason]
    assert len(truth) == len(series.truth) == len(res.skipped)
    # the generator promises an S1 within 6 days of each S2
    assert s2["nearest_s1"].notna().all() and (s2["s1_gap_hours"] <= 6 * 24).all()


def test_shipped_sample_tiles_index(tmp_path):
    # sample_tiles/32TPS: the real Bolzano crop (bench/make_sample_tiles.py). As above, the
    # shipped SCL's cloud % (sample_tiles/README.md's table), not the default decision's.
    if not any(SAMPLE_TILES.rglob("*.tif")):
        pytest.skip("sample_tiles/ not present")
    res = build_index(SAMPLE_TILES, tmp_path / "sample.gpkg", detect=None, policy=masks.AS_DECODED)
    s = Catalog.open(res.catalog_path).scenes
    s2 = s[s["sensor"] == "S2"].sort_values("datetime")
    assert len(s2) == 12 and (s["sensor"] == "S1").sum() == 0 and not res.skipped
    assert set(s2["mask_source"]) == {"SCL"} and set(s2["tile"]) == {"32TPS"}
    assert (s2["width"] == 512).all() and (s2["height"] == 512).all()
    days = [d.strftime("%m-%d") for d in s2["datetime"].dt.to_pydatetime()]
    assert days == ["06-02", "06-05", "06-07", "06-10", "06-12", "06-15", "06-17", "06-20", "06-22", "06-25",
                    "06-27", "06-30"]  # fmt: skip
    cloud = dict(zip(days, s2["cloud_pct"], strict=True))
    nodata = dict(zip(days, s2["nodata_pct"], strict=True))
    # The catalog's cloud % is over the pixels with data in every band: 06-17's B02 has none on
    # 20.7 % of the crop (under its cirrus), so 62.19 there where the SCL alone says 66.27.
    assert cloud["06-17"] == pytest.approx(62.19, abs=0.01) and nodata["06-17"] == pytest.approx(20.66, abs=0.01)
    assert cloud["06-02"] == pytest.approx(59.66, abs=0.01)
    assert cloud["06-15"] == 0 and [d for d, c in cloud.items() if c == 100] == ["06-05", "06-07", "06-22"]
