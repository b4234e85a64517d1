"""Indexing generated series and the shipped sample tiles: what synth wrote, index must find."""

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


def test_sample_tiles_index(tmp_path):
    if not any(SAMPLE_TILES.rglob("*.tif")):
        pytest.skip("sample_tiles/ not generated")
    # As above: the shipped SCL's cloud % (clear and cloudy dates), not the default decision's.
    res = build_index(SAMPLE_TILES, tmp_path / "sample.gpkg", detect=None, policy=masks.AS_DECODED)
    s = Catalog.open(res.catalog_path).scenes
    s2 = s[s["sensor"] == "S2"]
    assert 10 <= len(s2) <= 12 and (s["sensor"] == "S1").sum() >= len(s2)
    assert set(s2["mask_source"]) == {"SCL"}
    assert (s2["cloud_pct"] == 0).sum() >= 2 and s2["cloud_pct"].max() > 90
    assert (s2["s1_gap_hours"] <= 6 * 24).all()
