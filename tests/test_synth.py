"""Tests of the synthetic S2 / S1 series generator (cloudclear.synth)."""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cloudclear.errors import CloudClearError
from cloudclear.synth import (
    SCL_CLASSES,
    SynthError,
    SynthSeries,
    _layout,
    generate_series,
)

COVER = (0.0, 0.3, 0.6, 1.0, 0.15, 0.0)
ARGS = {
    "height": 160,
    "width": 192,  # not square, so that a swapped axis shows
    "n_dates": 6,
    "start": "2021-05-20",
    "interval_days": 10,
    "cloud_cover": COVER,
    "seed": 3,
}
CLEAR = (4, 5, 6)
CLOUD = (8, 9, 10)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def all_files(series: SynthSeries) -> list[Path]:
    return [*series.s2, *series.masks, *series.truth, *series.s1]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SynthSeries:
    return generate_series(tmp_path_factory.mktemp("synth"), **ARGS)


def reflectance(path: Path) -> dict[str, np.ndarray]:
    with rasterio.open(path) as ds:
        return {ds.descriptions[i]: ds.read(i + 1) / 10000.0 for i in range(ds.count)}


def ndvi(bands: dict[str, np.ndarray]) -> np.ndarray:
    return (bands["B08"] - bands["B04"]) / (bands["B08"] + bands["B04"])


def test_files_names_and_dates(series: SynthSeries) -> None:
    root = series.root
    assert series.tile == "31UFQ" and series.crs == "EPSG:32631"
    assert (series.height, series.width) == (160, 192)
    assert len(series.s2) == len(series.masks) == len(series.truth) == 6
    assert sorted(p.name for p in (root / "S2").iterdir()) == sorted(
        [p.name for p in series.s2] + [p.name for p in series.masks]
    )
    assert not list(root.rglob("*.tmp"))
    for t, s2, mask, truth in zip(series.s2_dates, series.s2, series.masks, series.truth, strict=True):
        stamp = t.strftime("%Y%m%dT%H%M%S")
        assert s2 == root / "S2" / f"S2_T31UFQ_{stamp}.tif"
        assert mask == root / "S2" / f"S2_T31UFQ_{stamp}_SCL.tif"
        assert truth == root / "truth" / f"S2_T31UFQ_{stamp}_truth.tif"
        assert t.tzinfo == timezone.utc and (t.hour, t.minute) == (10, 30)
    for t, s1 in zip(series.s1_dates, series.s1, strict=True):
        assert s1 == root / "S1" / f"S1_T31UFQ_{t:%Y%m%dT%H%M%S}.tif"
        assert t.tzinfo == timezone.utc and t.hour == 17
    assert list(series.s2_dates) == sorted(series.s2_dates)
    assert list(series.s1_dates) == sorted(series.s1_dates)
    # the 5-day S2 grid at the requested 10-day spacing
    days = [t.date() for t in series.s2_dates]
    assert {(b - a).days for a, b in zip(days[:-1], days[1:], strict=True)} == {10}
    assert series.s2_dates[0].date().isoformat() >= "2021-05-20"


def test_s1_near_every_s2_date(series: SynthSeries) -> None:
    assert len(series.s1) >= 1
    for t in series.s2_dates:
        gap = min(abs(s - t) for s in series.s1_dates)
        assert gap <= timedelta(days=6)
    s1 = series.s1_dates
    steps = {(b - a).days for a, b in zip(s1[:-1], s1[1:], strict=True)}
    assert steps <= {6, 12}


def test_georeferencing_and_profiles(series: SynthSeries) -> None:
    for path, dtype, count, names in (
        (series.s2[0], "uint16", 4, ("B02", "B03", "B04", "B08")),
        (series.truth[0], "uint16", 4, ("B02", "B03", "B04", "B08")),
        (series.masks[0], "uint8", 1, ("SCL",)),
        (series.s1[0], "float32", 2, ("VV", "VH")),
    ):
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 32631
            assert ds.res == (10.0, 10.0)
            assert (ds.transform.c, ds.transform.f) == (600_000.0, 5_500_000.0)
            assert (ds.height, ds.width) == (160, 192)
            assert ds.dtypes == (dtype,) * count
            assert ds.descriptions == names
            assert ds.compression.name.lower() == "deflate"
            if dtype == "float32":
                assert math.isnan(ds.nodata)
            else:
                assert ds.nodata == 0
            # small rasters are striped, not tiled
            assert ds.block_shapes[0][1] == 192


def test_tags(series: SynthSeries) -> None:
    with rasterio.open(series.s2[1]) as ds:
        tags = ds.tags()
    t = series.s2_dates[1]
    assert tags["DATETIME"] == t.strftime("%Y-%m-%dT%H:%M:%S")
    assert tags["TIFFTAG_DATETIME"] == t.strftime("%Y:%m:%d %H:%M:%S")
    assert tags["TILE_ID"] == "31UFQ"
    assert tags["SPACECRAFT"] == "Sentinel-2 (synthetic)"
    assert tags["PROCESSING_LEVEL"] == "L2A"
    assert tags["QUANTIFICATION_VALUE"] == "10000"
    assert tags["BOA_ADD_OFFSET"] == "0"
    assert tags["CLOUDCLEAR_SYNTH"] == "1"
    assert float(tags["CLOUDY_PIXEL_PERCENTAGE"]) == pytest.approx(series.cloud_pct[1], abs=1e-3)
    with rasterio.open(series.truth[1]) as ds:
        truth_tags = ds.tags()
    assert truth_tags["CLOUDCLEAR_ROLE"] == "truth"
    assert truth_tags["DATETIME"] == tags["DATETIME"]
    with rasterio.open(series.masks[1]) as ds:
        mask_tags = ds.tags()
    assert mask_tags["DATETIME"] == tags["DATETIME"]
    assert "3=CLOUD_SHADOWS" in mask_tags["CLASSES"] and "10=THIN_CIRRUS" in mask_tags["CLASSES"]
    with rasterio.open(series.s1[0]) as ds:
        s1_tags = ds.tags()
    assert s1_tags["UNITS"] == "dB"
    assert s1_tags["POLARISATIONS"] == "VV,VH"
    assert s1_tags["ORBIT_DIRECTION"] == "ASCENDING"
    assert s1_tags["SPACECRAFT"] == "Sentinel-1 (synthetic)"
    assert s1_tags["DATETIME"] == series.s1_dates[0].strftime("%Y-%m-%dT%H:%M:%S")
    assert s1_tags["TILE_ID"] == "31UFQ"


def test_same_seed_same_bytes_other_seed_other_pixels(series: SynthSeries, tmp_path: Path) -> None:
    again = generate_series(tmp_path / "again", **ARGS)
    for a, b in zip(all_files(series), all_files(again), strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), a.name
    other = generate_series(tmp_path / "other", **{**ARGS, "seed": 4})
    assert not np.array_equal(read(series.truth[0]), read(other.truth[0]))
    assert not np.array_equal(read(series.s1[0]), read(other.s1[0]))


@pytest.mark.slow
def test_strips_equal_whole(series: SynthSeries, tmp_path: Path) -> None:
    # the fixture renders 160 rows as one strip; 37 does not divide it, 16 is below a chunk
    for rows in (37, 16):
        striped = generate_series(tmp_path / str(rows), **ARGS, _strip_rows=rows)
        for a, b in zip(all_files(series), all_files(striped), strict=True):
            np.testing.assert_array_equal(read(a), read(b), err_msg=f"{a.name} rows={rows}")


def test_valid_pixels_never_nodata(series: SynthSeries) -> None:
    for path in [*series.s2, *series.truth, *series.masks]:
        assert read(path).min() >= 1
    for path in series.s1:
        assert np.isfinite(read(path)).all()


def test_clear_pixels_equal_truth_cloudy_pixels_differ(series: SynthSeries) -> None:
    for s2, truth, mask in zip(series.s2, series.truth, series.masks, strict=True):
        img, ref, scl = read(s2), read(truth), read(mask)[0]
        clear = np.isin(scl, CLEAR)
        np.testing.assert_array_equal(img[:, clear], ref[:, clear])
        cloud = np.isin(scl, CLOUD)
        if cloud.any():
            differs = (img != ref).any(axis=0)
            assert differs[cloud].mean() > 0.99
            # clouds brighten the blue band, thick ones (SCL 9) to near white
            brighter = img[0].astype(np.int32) - ref[0]
            assert np.median(brighter[cloud]) > 100
            assert np.median(brighter[scl == 9]) > 2500


def test_mask_classes(series: SynthSeries) -> None:
    seen: set[int] = set()
    for mask in series.masks:
        values = set(np.unique(read(mask)).tolist())
        assert values <= set(SCL_CLASSES) - {0, 1, 2, 7, 11}
        seen |= values
    assert seen == {3, 4, 5, 6, 8, 9, 10}
    clear_dates = [m for m, c in zip(series.masks, COVER, strict=True) if c == 0]
    for mask in clear_dates:
        assert set(np.unique(read(mask)).tolist()) <= set(CLEAR)
    overcast = read(series.masks[COVER.index(1.0)])
    assert np.isin(overcast, (8, 9)).all()


def test_cloud_pct_matches_mask_and_target(series: SynthSeries) -> None:
    for mask, pct, target in zip(series.masks, series.cloud_pct, COVER, strict=True):
        scl = read(mask)[0]
        assert pct == pytest.approx(100.0 * np.isin(scl, (3, 8, 9, 10)).mean(), abs=1e-9)
        assert pct == pytest.approx(100.0 * target, abs=1.0)


def test_shadows_darken_the_surface(series: SynthSeries) -> None:
    ratios = []
    for s2, truth, mask in zip(series.s2, series.truth, series.masks, strict=True):
        scl = read(mask)[0]
        shadow = scl == 3
        if not shadow.any():
            continue
        img, ref = read(s2).astype(np.float64), read(truth).astype(np.float64)
        nir = img[3][shadow] / ref[3][shadow]
        assert (img[:, shadow] <= ref[:, shadow]).all()
        assert np.mean(nir < 0.999) > 0.95
        ratios.append(nir)
    ratios_all = np.concatenate(ratios)
    # a full shadow removes 40-70 % of the light; edges are lighter
    assert 0.25 <= ratios_all.min() <= 0.65
    assert np.median(ratios_all) < 0.85


def test_shadows_lie_away_from_the_sun(tmp_path: Path) -> None:
    # with the sun in the south-east (azimuth 150), shadows fall north-west of their clouds
    s = generate_series(tmp_path, height=256, width=256, n_dates=1, cloud_cover=(0.3,), s1=False, seed=11)
    scl = read(s.masks[0])[0]
    rows, cols = np.indices(scl.shape)
    cloud, shadow = np.isin(scl, (8, 9)), scl == 3
    assert shadow.any() and cloud.any()
    assert rows[shadow].mean() < rows[cloud].mean()
    assert cols[shadow].mean() < cols[cloud].mean()


def test_spectra_are_plausible(series: SynthSeries) -> None:
    # last date: 2021-07-09, clear, crops near peak
    bands = reflectance(series.truth[-1])
    scl = read(series.masks[-1])[0]
    veg, water = scl == 4, scl == 6
    assert veg.mean() > 0.3 and water.any()
    v = ndvi(bands)
    assert np.median(v[veg]) > 0.5
    assert np.percentile(v, 95) > 0.75
    assert np.median(v[water]) < 0.0
    assert 0.01 < np.median(bands["B04"][v > 0.8]) < 0.07
    assert 0.28 < np.median(bands["B08"][v > 0.8]) < 0.5
    assert np.median(bands["B08"][water]) < 0.04
    # no cloud in the truth: the blue band stays dark everywhere
    assert (bands["B02"] < 0.3).all()


def test_crops_have_phenology(tmp_path: Path) -> None:
    s = generate_series(
        tmp_path,
        height=96,
        width=96,
        n_dates=8,
        start="2021-03-01",
        interval_days=30,
        cloud_cover=(0.0,) * 8,
        s1=False,
        seed=5,
    )
    stack = np.stack([ndvi(reflectance(p)) for p in s.truth])  # (date, row, col)
    peak = stack.argmax(axis=0)
    # different parcels peak in different months, and NDVI rises and falls
    assert len(np.unique(peak)) >= 3
    assert (stack.max(axis=0) - stack.min(axis=0)).mean() > 0.3


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose four neighbours are in it too."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def test_s1_backscatter_follows_land_cover(series: SynthSeries) -> None:
    scl = read(series.masks[-1])[0]
    water = interior(scl == 6)
    town = _layout(ARGS["height"], ARGS["width"], ARGS["seed"])[0][0]
    rows, cols = np.indices(scl.shape)
    urban = np.hypot(rows + 0.5 - town.cy, cols + 0.5 - town.cx) < 0.4 * town.radius
    urban &= ~water
    for path in series.s1:
        vv, vh = read(path)
        assert np.median(vv[water]) < -15.0
        assert np.median(vv[urban]) > -6.0
        assert np.median(vv[water]) < np.median(vv[urban]) - 10
        assert np.median(vh) < np.median(vv) - 3  # cross-pol is weaker
        assert -30.0 < np.median(vv) < 0.0


def test_s1_speckle_is_multiplicative(series: SynthSeries) -> None:
    vv = read(series.s1[0])[0].astype(np.float64)
    lin = 10 ** (vv / 10)
    # a homogeneous area: the interior of the lake
    lake = _layout(ARGS["height"], ARGS["width"], ARGS["seed"])[1][0]
    rows, cols = np.indices(vv.shape)
    inside = np.hypot(rows + 0.5 - lake.cy, cols + 0.5 - lake.cx) < 0.3 * lake.radius
    assert inside.sum() > 20
    enl = lin[inside].mean() ** 2 / lin[inside].var()
    assert 2.0 < enl < 9.0  # ~4.4 looks, estimated from a few dozen correlated pixels


def test_default_cover_schedule(tmp_path: Path) -> None:
    s = generate_series(tmp_path, height=48, width=48, n_dates=10, s1=False, seed=9)
    pct = np.array(s.cloud_pct)
    assert (pct == 0.0).sum() >= 2
    assert (pct == 100.0).sum() >= 1
    between = pct[(pct > 0) & (pct < 100)]
    assert len(between) >= 5
    assert between.max() - between.min() > 50


def test_more_bands(tmp_path: Path) -> None:
    bands = ("B02", "B05", "B8A", "B11", "B12")
    s = generate_series(tmp_path, height=64, width=64, n_dates=1, cloud_cover=(0.0,), bands=bands, s1=False)
    with rasterio.open(s.s2[0]) as ds:
        assert ds.descriptions == bands
        assert ds.count == 5
    r = reflectance(s.truth[0])
    veg = (r["B8A"] - r["B05"]) / (r["B8A"] + r["B05"]) > 0.5
    assert veg.any()
    assert np.median(r["B11"][veg]) < np.median(r["B8A"][veg])
    assert np.median(r["B12"][veg]) < np.median(r["B11"][veg])


def test_tiles_choose_the_utm_zone(tmp_path: Path) -> None:
    s = generate_series(tmp_path, height=32, width=32, n_dates=1, tile="19HCC", s1=False)
    assert s.crs == "EPSG:32719"  # band H is south of the equator
    with rasterio.open(s.s2[0]) as ds:
        assert ds.crs.to_epsg() == 32719
        assert 100_000 <= ds.transform.c <= 900_000
        assert 1_000_000 <= ds.transform.f <= 10_000_000
    assert re.fullmatch(r"S2_T19HCC_\d{8}T\d{6}\.tif", s.s2[0].name)


def test_replaces_existing_output(tmp_path: Path) -> None:
    args = {"height": 32, "width": 32, "n_dates": 2, "cloud_cover": (0.2, 0.0)}
    first = generate_series(tmp_path, **args, seed=1)
    before = read(first.truth[0])
    second = generate_series(tmp_path, **args, seed=2)
    assert first.s2 == second.s2
    assert not np.array_equal(before, read(second.truth[0]))
    assert not list(tmp_path.rglob("*.tmp"))


def test_without_s1(tmp_path: Path) -> None:
    s = generate_series(tmp_path, height=32, width=32, n_dates=2, s1=False)
    assert s.s1 == () and s.s1_dates == ()
    assert not (tmp_path / "S1").exists()


def test_progress_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_series(tmp_path, height=32, width=32, n_dates=1, s1=False, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "synth" in err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cloud_cover": (0.1, 0.2)}, "cloud_cover has 2 values for 3 dates"),
        ({"cloud_cover": (0.1, 0.2, 1.5)}, "fractions in 0..1"),
        ({"bands": ("B02", "B99")}, "bands"),
        ({"bands": ("B02", "B02")}, "distinct"),
        ({"tile": "31UJQ"}, "column letter"),
        ({"tile": "hello"}, "not an MGRS tile id"),
        ({"height": 8}, "height must be an integer >= 16"),
        ({"n_dates": 0}, "n_dates"),
        ({"seed": -1}, "seed"),
        ({"start": "April"}, "start"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"height": 32, "width": 32, "n_dates": 3, **kwargs}
    with pytest.raises(SynthError, match=match) as info:
        generate_series(tmp_path, **args)
    assert isinstance(info.value, CloudClearError) and isinstance(info.value, ValueError)
    assert not list(tmp_path.rglob("*.tif"))


@pytest.mark.slow
def test_tiled_rasters_are_deterministic_and_stripwise(tmp_path: Path) -> None:
    # >= 512 px: 512 x 512 tiles, several strips, partial edge blocks, threaded compression
    args = {"height": 576, "width": 640, "n_dates": 1, "cloud_cover": (0.5,), "seed": 8}
    a = generate_series(tmp_path / "a", **args)
    b = generate_series(tmp_path / "b", **args)
    c = generate_series(tmp_path / "c", **args, _strip_rows=200)
    with rasterio.open(a.s2[0]) as ds:
        assert ds.block_shapes[0] == (512, 512)
    for fa, fb, fc in zip(all_files(a), all_files(b), all_files(c), strict=True):
        assert fa.read_bytes() == fb.read_bytes(), fa.name
        np.testing.assert_array_equal(read(fa), read(fc), err_msg=fa.name)


def _synth_cli(out: Path, *more: str):
    from typer.testing import CliRunner

    from cloudclear.cli import app

    return CliRunner().invoke(app, ["synth", str(out), "--size", "32", "--dates", "2", *more])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_read_only_folder_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    from conftest import assert_one_line_error, read_only

    out = tmp_path / "series"
    out.mkdir()
    with read_only(out):
        res = _synth_cli(out)
    assert_one_line_error(res, str(out), "read-only file system" if os.geteuid() == 0 else "permission denied")
    assert list(out.iterdir()) == []


def test_cli_read_only_files_are_kept_when_a_rerun_cannot_write(tmp_path: Path) -> None:
    from conftest import assert_one_line_error, read_only

    out = tmp_path / "series"
    assert _synth_cli(out).exit_code == 0
    before = _snapshot(out)
    with read_only(out / "S2"):
        res = _synth_cli(out, "--seed", "3")
    assert_one_line_error(res, str(out / "S2"))
    assert _snapshot(out) == before  # truth/ and S1/ were writable, but nothing is replaced alone


def test_cli_full_disk_is_one_line_and_leaves_no_partial_file(small_fs) -> None:
    from conftest import assert_one_line_error, fill_disk

    vol = small_fs(1 << 20)
    out = vol / "series"
    assert _synth_cli(out).exit_code == 0
    before = _snapshot(out)
    fill_disk(vol)
    res = _synth_cli(out, "--seed", "3")
    assert_one_line_error(res, str(out), "no space left on device")
    assert _snapshot(out) == before
    res = _synth_cli(vol / "other")
    assert_one_line_error(res, str(vol / "other"), "no space left on device")
    assert sorted(p.name for p in vol.iterdir()) == [".filler", "series"]
