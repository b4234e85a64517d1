"""A Sentinel-2 scene's values are checked, never guessed (issue 18, point 2): float reflectance 0..1,
float DN, integers x 10000, the +1000 DN offset of processing baseline 04.00 stated once or per band,
each recorded in the catalog (``scale``, ``offset``, ``scale_source``, ``band_scales``), honoured by
``infer``, ``sample`` and ``score``; values that fit no encoding refused with one line naming the file.

Every series here is the same reflectance (0.02 .. 0.4, a cloud block on the target date marked in an
SCL sidecar) written in another encoding, so each encoding's output is compared with the plain
uint16 DN x 10000 one.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_raster
from typer.testing import CliRunner

from cloudclear.catalog import Catalog, build_index
from cloudclear.cli import app

runner = CliRunner()
BANDS = ("B02", "B03", "B04", "B08")
SIZE = 96
N_DATES = 4
#: The target date (a cloud block at rows 20:50, columns 30:70) is the third.
TARGET = 2
CLOUD = (slice(20, 50), slice(30, 70))
#: A lake: the darkest pixels (reflectance 0.02 .. 0.03), which tell harmonised values from the offset.
LAKE = (slice(70, 90), slice(5, 40))
#: Sensed after 2022-01-25: processing baseline 04.00 adds 1000 DN (BOA_ADD_OFFSET -1000).
START_2022 = datetime(2022, 6, 1, 10, 30, 21, tzinfo=timezone.utc)
START_2021 = datetime(2021, 6, 1, 10, 30, 21, tzinfo=timezone.utc)
DECODED_INDEX = ("--no-detect", "--as-decoded")


def _dates(start: datetime) -> list[datetime]:
    return [start + timedelta(days=10 * k) for k in range(N_DATES)]


def _day(start: datetime) -> str:
    return f"{_dates(start)[TARGET]:%Y-%m-%d}"


def _truth_dn() -> list[np.ndarray]:
    """Reflectance x 10000 of every date (uint16, 200 .. 4000), the cloud block bright (8000) on the
    target date: smooth fields skewed dark, a lake, a little change from date to date."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(18)
    base = gaussian_filter(rng.normal(0, 1, (len(BANDS), SIZE, SIZE)), (0, 4, 4))
    out = []
    for _ in range(N_DATES):
        field = base + 0.05 * gaussian_filter(rng.normal(0, 1, base.shape), (0, 2, 2))
        lo = field.min(axis=(1, 2), keepdims=True)
        hi = field.max(axis=(1, 2), keepdims=True)
        refl = 0.03 + 0.37 * ((field - lo) / (hi - lo)) ** 1.5
        refl[:, LAKE[0], LAKE[1]] = 0.02 + 0.01 * (field[:, LAKE[0], LAKE[1]] > 0)  # dark in every band
        out.append(np.round(refl * 10000).astype(np.uint16))
    return out


#: What the ground reflects (x 10000) on every date, and what the series holds: the same with the
#: cloud block of the target date bright (8000).
GROUND = _truth_dn()
TRUTH = [g.copy() for g in GROUND]
TRUTH[TARGET][:, CLOUD[0], CLOUD[1]] = 8000


def _scl(k: int) -> np.ndarray:
    scl = np.full((1, SIZE, SIZE), 4, np.uint8)
    if k == TARGET:
        scl[0, CLOUD[0], CLOUD[1]] = 9
    return scl


def write_series(
    folder: Path,
    encode=lambda dn: dn,
    *,
    start: datetime = START_2022,
    tags: dict[str, str] | None = None,
    band_tags: dict[int, dict[str, str]] | None = None,
    nodata: float | None = 0,
    level: str = "L2A",
) -> Path:
    """The series written as ``encode(dn)`` (uint16 DN x 10000 by default), with dataset ``tags``
    and per-band ``band_tags`` (``{bidx: {key: value}}``), each date with its SCL."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, when in enumerate(_dates(start)):
        stamp = f"{when:%Y%m%dT%H%M%S}"
        path = write_raster(
            folder / f"S2_T31UFQ_{stamp}.tif",
            encode(TRUTH[k]),
            descriptions=BANDS,
            nodata=nodata,
            tags={"PROCESSING_LEVEL": level, **(tags or {})},
        )
        if band_tags:
            with rasterio.open(path, "r+") as dst:
                for bidx, bt in band_tags.items():
                    dst.update_tags(bidx, **bt)
        write_raster(folder / f"S2_T31UFQ_{stamp}_SCL.tif", _scl(k), descriptions=["SCL"], nodata=0)
    return folder


def index(folder: Path, *extra: str, code: int = 0):
    cat = folder.parent / f"{folder.name}.gpkg"
    res = runner.invoke(app, ["index", str(folder), "-c", str(cat), *DECODED_INDEX, *extra])
    assert res.exit_code == code, res.output
    return cat, res


def infer(cat: Path, day: str, out: Path) -> np.ndarray:
    res = runner.invoke(app, ["infer", "-c", str(cat), "-d", day, "-o", str(out), "-m", "gapfill", "--as-decoded"])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src:
        return src.read()


def scenes(cat: Path):
    return Catalog.open(cat).scenes.sort_values("datetime")


def band_scales(row) -> dict[str, list[float]]:
    return json.loads(row["band_scales"])


def refused_lines(res, path_part: str) -> list[str]:
    """stderr lines that name ``path_part``; the CLI's closing line counts the refused inputs."""
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("1 input(s) refused"), res.stderr
    assert "Traceback" not in res.output
    return [ln for ln in lines if path_part in ln]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The plain series (uint16 DN x 10000, harmonised, 2022) indexed, and its gap-filled target."""
    root = tmp_path_factory.mktemp("plain")
    folder = write_series(root / "plain")
    cat, res = index(folder)
    out = infer(cat, _day(START_2022), root / "out.tif")
    return {"folder": folder, "catalog": cat, "out": out, "path": root / "out.tif", "index": res}


def assert_same_output(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max() <= 1


# -- 1. float reflectance 0..1 --------------------------------------------------------------------


def test_plain_series_is_read_as_dn_over_10000_and_gapfill_gives_the_truth(reference):
    rows = scenes(reference["catalog"])
    assert len(rows) == N_DATES
    assert rows["scale"].tolist() == pytest.approx([1e-4] * N_DATES)
    assert rows["offset"].tolist() == [0.0] * N_DATES
    # sensed in 2022 with no offset stated: its darkest pixels say harmonised (no +1000 DN)
    assert all("harmonised" in s for s in rows["scale_source"]), rows["scale_source"].tolist()
    out = reference["out"]
    clear = np.ones((SIZE, SIZE), bool)
    clear[CLOUD] = False
    # observed pixels copied, the cloud block filled from the neighbours (reflectance 0.02 .. 0.4)
    np.testing.assert_array_equal(out[:, clear], TRUTH[TARGET][:, clear])
    assert 200 <= out[:, ~clear].min() and out[:, ~clear].max() <= 4000


def test_float_reflectance_0_1_is_not_divided_by_10000_again(reference, tmp_path):
    folder = write_series(tmp_path / "float01", lambda dn: (dn / 10000.0).astype(np.float32))
    cat, _ = index(folder)
    rows = scenes(cat)
    assert rows["scale"].tolist() == [1.0] * N_DATES and rows["offset"].tolist() == [0.0] * N_DATES
    assert all(s.startswith("data: float reflectance 0..1") for s in rows["scale_source"]), rows["scale_source"]
    assert all(band_scales(r) == {b: [1.0, 0.0] for b in BANDS} for _, r in rows.iterrows())
    out = infer(cat, _day(START_2022), tmp_path / "out.tif")
    # before the fix: DN 1 everywhere (a black image, exit 0)
    clear = _scl(TARGET)[0] == 4
    assert np.median(out[:, clear]) == pytest.approx(np.median(TRUTH[TARGET][:, clear]), abs=1)
    assert 300 <= np.median(out) <= 4000
    assert_same_output(out, reference["out"])


def test_float_reflectance_0_1_is_sampled_as_reflectance(reference, tmp_path):
    from cloudclear.sampling import PatchStore

    folder = write_series(tmp_path / "float01", lambda dn: (dn / 10000.0).astype(np.float32))
    cat, _ = index(folder)
    stores = {}
    for name, catalog in (("float", cat), ("plain", reference["catalog"])):
        out = tmp_path / f"patches_{name}"
        args = ["sample", "-c", str(catalog), "-l", "single-date", "--no-s1", "-p", "64", "-n", "4", "--block", "1"]
        res = runner.invoke(app, [*args, "--seed", "0", "-o", str(out)])
        assert res.exit_code == 0, res.output
        stores[name] = PatchStore(out)
    assert len(stores["float"]) == len(stores["plain"]) > 0
    for i in range(len(stores["plain"])):
        a, b = stores["float"].read(i), stores["plain"].read(i)
        assert a.keys() == b.keys()
        for key in a:
            x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
            assert x.shape == y.shape, key
            np.testing.assert_allclose(x, y, atol=1.0, err_msg=key)
    # stored as DN x 10000 (uint16), as the plain series: not reflectance / 10000 (DN 0 or 1)
    s2 = [v for v in stores["float"].read(0).values() if v.dtype == np.uint16]
    assert s2 and all(300 <= np.median(v[v > 0]) <= 4000 for v in s2), [np.median(v) for v in s2]


# -- 2. float DN, floats that fit nothing -----------------------------------------------------------


def test_float_dn_is_scaled_by_1e_4(reference, tmp_path):
    folder = write_series(tmp_path / "floatdn", lambda dn: dn.astype(np.float32))
    cat, _ = index(folder)
    rows = scenes(cat)
    assert rows["scale"].tolist() == pytest.approx([1e-4] * N_DATES)
    assert all(s.startswith("data: float DN x 10000") for s in rows["scale_source"]), rows["scale_source"]
    assert_same_output(infer(cat, _day(START_2022), tmp_path / "out.tif"), reference["out"])


def test_floats_that_fit_no_encoding_are_refused_and_the_rest_catalogued(tmp_path):
    folder = write_series(tmp_path / "mixed")
    odd = folder / f"S2_T31UFQ_{_dates(START_2022)[-1]:%Y%m%dT%H%M%S}.tif"
    # median 5, 99th percentile about 50: neither reflectance 0..1 nor DN x 10000
    rng = np.random.default_rng(1)
    values = np.where(rng.random((len(BANDS), SIZE, SIZE)) < 0.05, 50.0, 5.0).astype(np.float32)
    values[:, :5] = 60.0
    write_raster(odd, values, descriptions=BANDS, nodata=0, tags={"PROCESSING_LEVEL": "L2A"})
    cat, res = index(folder, code=1)
    lines = refused_lines(res, odd.name)
    assert len(lines) == 1, res.stderr
    assert "fit neither reflectance 0..1 nor DN x 10000" in lines[0] and "median 5" in lines[0], lines[0]
    rows = scenes(cat)
    assert len(rows) == N_DATES - 1
    assert odd.name not in " ".join(rows["files"])


def _zero_filled(encode):
    """``encode`` with the left 60 columns 0 and no nodata declared: the empty part of a tile as
    xarray and GDAL exports write it (more than half of the pixels)."""

    def fill(dn: np.ndarray) -> np.ndarray:
        out = np.array(encode(dn))  # a copy: TRUTH is shared
        out[:, :, :60] = 0
        return out

    return fill


@pytest.mark.parametrize(
    ("case", "encode", "scale", "source"),
    [
        ("float01", lambda dn: (dn / 10000.0).astype(np.float32), 1.0, "data: float reflectance 0..1"),
        ("floatdn", lambda dn: dn.astype(np.float32), 1e-4, "data: float DN x 10000"),
    ],
)
def test_float_tile_more_than_half_empty_is_decided_on_its_data(tmp_path, case, encode, scale, source):
    # before: a median of 0 (the empty part) refused float DN as fitting neither encoding
    folder = write_series(tmp_path / case, _zero_filled(encode), nodata=None)
    cat, _ = index(folder)
    rows = scenes(cat)
    assert rows["scale"].tolist() == pytest.approx([scale] * N_DATES)
    for s in rows["scale_source"]:
        assert s.startswith(source) and "median reflectance 0.000" not in s, s


def test_float_tile_more_than_half_empty_gives_nodata_where_empty(tmp_path):
    # 0 is optical nodata in float bands too (DESIGN.md 3): the empty part stays nodata, not DN 1.
    plain = write_series(tmp_path / "plain", _zero_filled(lambda dn: dn), nodata=0)
    floats = write_series(tmp_path / "float", _zero_filled(lambda dn: dn.astype(np.float32)), nodata=None)
    plain_cat, float_cat = index(plain)[0], index(floats)[0]
    assert scenes(plain_cat)["nodata_pct"].tolist() == [62.5] * N_DATES
    assert scenes(float_cat)["nodata_pct"].tolist() == [62.5] * N_DATES
    want = infer(plain_cat, _day(START_2022), tmp_path / "plain.tif")
    got = infer(float_cat, _day(START_2022), tmp_path / "float.tif")
    assert (want[:, :, :60] == 0).all() and (want[:, :, 60:] > 0).all()
    np.testing.assert_array_equal(got[:, :, :60], 0)  # nodata, not reflectance 0 (DN 1)
    assert_same_output(got, want)


# -- 3. values that do not fit the stated or assumed scale ---------------------------------------


@pytest.mark.parametrize(
    ("case", "encode", "tags", "needle"),
    [
        ("mask_0_1", lambda dn: (dn > 2000).astype(np.uint16), {}, "10000 times too small"),
        (
            "reflectance_stated_x10000",
            lambda dn: (dn / 10000.0).astype(np.float32),
            {"QUANTIFICATION_VALUE": "10000"},
            "10000 times too small",
        ),
        ("dn_stated_as_reflectance", lambda dn: dn, {"QUANTIFICATION_VALUE": "1"}, "too large"),
        ("dn_x_150000", lambda dn: np.minimum(dn.astype(np.uint32) * 15, 65535).astype(np.uint16), {}, "too large"),
    ],
)
def test_values_that_do_not_fit_the_scale_are_refused(tmp_path, case, encode, tags, needle):
    folder = write_series(tmp_path / "good")
    bad = write_series(tmp_path / "bad", encode, start=START_2021, tags=tags)
    for p in bad.iterdir():
        p.rename(folder / p.name)
    cat, res = index(folder, code=1)
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{N_DATES} input(s) refused"), res.stderr
    refused = [ln for ln in lines[:-1] if "2021" in ln]
    assert len(refused) == N_DATES, res.stderr
    assert all(needle in ln for ln in refused), refused
    assert all(ln.startswith(str(folder / "S2_T31UFQ_2021")) for ln in refused), refused
    rows = scenes(cat)
    assert len(rows) == N_DATES and all(d.year == 2022 for d in rows["datetime"])


# -- 4. the +1000 DN offset of processing baseline 04.00 -------------------------------------------


def _plus(n: int):
    return lambda dn: (dn.astype(np.int32) + n).astype(np.uint16)


def _per_band_plus(adds: dict[str, int]):
    def encode(dn: np.ndarray) -> np.ndarray:
        out = dn.astype(np.int32)
        for i, b in enumerate(BANDS):
            out[i] += adds[b]
        return out.astype(np.uint16)

    return encode


def test_offset_present_but_not_stated_is_refused_with_how_to_state_it(tmp_path):
    folder = write_series(tmp_path / "pb04", _plus(1000))
    cat, res = index(folder, code=1)
    lines = res.stderr.strip().splitlines()
    # every scene refused: nothing left to catalogue, said on the last line
    assert lines[-1].startswith("cloudclear: error: ") and "no usable S2 or S1 scene" in lines[-1], res.stderr
    assert len(lines) == N_DATES + 1, res.stderr
    for ln in lines[:-1]:
        assert ln.startswith(str(folder / "S2_T31UFQ_2022")), ln
        assert "gdal_edit.py -mo BOA_ADD_OFFSET=-1000" in ln and "sensed 2022-0" in ln, ln
    assert not cat.exists() or len(Catalog.open(cat).scenes) == 0


@pytest.mark.parametrize(
    ("case", "adds", "tags", "band_tags"),
    [
        ("dataset_tag", dict.fromkeys(BANDS, 1000), {"BOA_ADD_OFFSET": "-1000"}, None),
        ("band_tags", dict.fromkeys(BANDS, 1000), None, {i: {"BOA_ADD_OFFSET": "-1000"} for i in range(1, 5)}),
        (
            "band_tags_differ",
            {"B02": 1000, "B03": 1000, "B04": 1000, "B08": 1100},
            None,
            {i: {"BOA_ADD_OFFSET": "-1100" if b == "B08" else "-1000"} for i, b in enumerate(BANDS, 1)},
        ),
    ],
)
def test_stated_offset_is_accepted_and_reaches_inference(reference, tmp_path, case, adds, tags, band_tags):
    folder = write_series(tmp_path / case, _per_band_plus(adds), tags=tags, band_tags=band_tags)
    cat, res = index(folder)
    assert res.stderr.strip() == "", res.stderr
    rows = scenes(cat)
    assert len(rows) == N_DATES
    assert rows["offset"].tolist() == pytest.approx([-0.1] * N_DATES)  # the first band's
    want = {b: [pytest.approx(1e-4), pytest.approx(-adds[b] / 10000)] for b in BANDS}
    assert all(band_scales(r) == want for _, r in rows.iterrows())
    assert all(("band tags" if band_tags else "tags") in s for s in rows["scale_source"]), rows["scale_source"]
    assert_same_output(infer(cat, _day(START_2022), tmp_path / "out.tif"), reference["out"])


def test_offset_stated_as_gdal_band_scale_and_offset(reference, tmp_path):
    folder = write_series(tmp_path / "gdal", _plus(1000))
    for path in folder.glob("S2_*[0-9].tif"):
        with rasterio.open(path, "r+") as dst:
            dst.scales = [1e-4] * len(BANDS)
            dst.offsets = [-0.1] * len(BANDS)
    cat, _ = index(folder)
    rows = scenes(cat)
    assert rows["offset"].tolist() == pytest.approx([-0.1] * N_DATES)
    assert all(s.startswith("band scale/offset") for s in rows["scale_source"]), rows["scale_source"]
    assert_same_output(infer(cat, _day(START_2022), tmp_path / "out.tif"), reference["out"])


def test_refused_series_is_accepted_once_the_offset_is_stated_as_the_line_says(reference, tmp_path):
    folder = write_series(tmp_path / "pb04", _plus(1000))
    index(folder, code=1)
    for path in folder.glob("S2_*[0-9].tif"):  # gdal_edit.py -mo BOA_ADD_OFFSET=-1000
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(BOA_ADD_OFFSET="-1000")
    cat, res = index(folder)
    assert res.stderr.strip() == "", res.stderr
    assert scenes(cat)["offset"].tolist() == pytest.approx([-0.1] * N_DATES)
    assert_same_output(infer(cat, _day(START_2022), tmp_path / "out.tif"), reference["out"])


@pytest.mark.parametrize(
    ("case", "encode", "tags", "scale", "offset"),
    [
        ("float01", lambda dn: (dn / 10000.0).astype(np.float32), {}, 1.0, 0.0),
        ("offset_stated", _plus(1000), {"BOA_ADD_OFFSET": "-1000"}, 1e-4, -0.1),
    ],
)
def test_esa_style_band_files_are_calibrated_as_one_scene(reference, tmp_path, case, encode, tags, scale, offset):
    folder = tmp_path / case
    for k, when in enumerate(_dates(START_2022)):
        stamp = f"{when:%Y%m%dT%H%M%S}"
        data = encode(TRUTH[k])
        for i, band in enumerate(BANDS):
            path = folder / f"T31UFQ_{stamp}_{band}.tif"
            write_raster(path, data[i], descriptions=[band], nodata=0, tags={"PROCESSING_LEVEL": "L2A", **tags})
        write_raster(folder / f"T31UFQ_{stamp}_SCL.tif", _scl(k), descriptions=["SCL"], nodata=0)
    cat, _ = index(folder)
    rows = scenes(cat)
    assert len(rows) == N_DATES
    want = {b: [pytest.approx(scale), pytest.approx(offset)] for b in BANDS}
    assert all(band_scales(r) == want for _, r in rows.iterrows())
    assert_same_output(infer(cat, _day(START_2022), tmp_path / "out.tif"), reference["out"])


def test_harmonised_2022_series_is_accepted_and_a_2021_series_is_not_checked(reference, tmp_path):
    # harmonised (no offset in the DN): accepted, the catalog says why
    sources = scenes(reference["catalog"])["scale_source"].tolist()
    assert all(s.startswith("assumed: DN / 10000") and "harmonised" in s for s in sources), sources
    # before 2022-01-25 no product has the offset: +1000 DN is not looked for (and not found)
    folder = write_series(tmp_path / "y2021", _plus(1000), start=START_2021)
    cat, _ = index(folder)
    rows = scenes(cat)
    assert len(rows) == N_DATES and rows["offset"].tolist() == [0.0] * N_DATES
    assert not any("offset" in s or "harmonised" in s for s in rows["scale_source"]), rows["scale_source"]


def test_bright_harmonised_2022_series_is_refused_unless_the_offset_0_is_stated(tmp_path):
    # no dark pixel (a desert, a city): +900 DN harmonised looks like the offset; the line says
    # how to state either
    folder = write_series(tmp_path / "bright", _plus(900))
    _, res = index(folder, code=1)
    lines = res.stderr.strip().splitlines()[:-1]
    assert len(lines) == N_DATES and all(
        "BOA_ADD_OFFSET=-1000, or =0 if the values are harmonised" in ln for ln in lines
    )
    stated = write_series(tmp_path / "stated", _plus(900), tags={"BOA_ADD_OFFSET": "0"})
    cat, _ = index(stated)
    rows = scenes(cat)
    assert rows["offset"].tolist() == [0.0] * N_DATES and rows["scale"].tolist() == pytest.approx([1e-4] * N_DATES)
    assert all(s.startswith("tags") and "offset" not in s for s in rows["scale_source"]), rows["scale_source"]


@pytest.mark.parametrize("level", ["Level-2A", "S2MSI2A"])
def test_level_as_gdal_exports_and_product_types_write_it_decides_the_offset(tmp_path, level):
    # GDAL's SENTINEL2 driver (and so gdal_translate exports of a SAFE) writes PROCESSING_LEVEL=Level-2A;
    # read as no level, +1000 DN fell between the L1C bounds and was taken as no offset
    folder = write_series(tmp_path / "export", _plus(1000), level=level)
    _, res = index(folder, code=1)
    assert "gdal_edit.py -mo BOA_ADD_OFFSET=-1000" in res.stderr, res.stderr
    stated = write_series(tmp_path / "stated", _plus(1000), level=level, tags={"BOA_ADD_OFFSET": "-1000"})
    cat, _ = index(stated)
    assert scenes(cat)["level"].tolist() == ["L2A"] * N_DATES


def test_offset_undecided_for_an_unknown_level_is_taken_as_none_with_a_warning(tmp_path, caplog):
    from cloudclear import masks

    # no PROCESSING_LEVEL, no level in the names: the L1C bounds, between which +1000 DN is undecided
    folder = write_series(tmp_path / "nolevel", _plus(1000), level="")
    with caplog.at_level("WARNING", logger="cloudclear.catalog.values"):
        result = build_index(folder, tmp_path / "c.gpkg", detect=None, policy=masks.AS_DECODED)
    assert result.scenes == N_DATES and result.refused == ()
    rows = scenes(tmp_path / "c.gpkg")
    assert all("offset inconclusive" in s for s in rows["scale_source"]), rows["scale_source"]
    warned = [r.getMessage() for r in caplog.records if r.name == "cloudclear.catalog.values"]
    assert len(warned) == N_DATES, warned
    assert all("processing level unknown" in w and "BOA_ADD_OFFSET=-1000" in w for w in warned), warned
    assert sorted(w.split(": ")[0] for w in warned) == sorted(str(p) for p in folder.glob("S2_*[0-9].tif"))


# -- 5. score honours per-band offsets --------------------------------------------------------------


def test_score_of_the_per_band_offset_case_equals_the_offset_free_case(reference, tmp_path):
    adds = {"B02": 1000, "B03": 1000, "B04": 1000, "B08": 1100}
    band_tags = {i: {"BOA_ADD_OFFSET": str(-adds[b])} for i, b in enumerate(BANDS, 1)}
    folder = write_series(tmp_path / "pb04", _per_band_plus(adds), band_tags=band_tags)
    cat, _ = index(folder)
    infer(cat, _day(START_2022), tmp_path / "out.tif")
    truth = write_raster(tmp_path / "truth.tif", GROUND[TARGET], descriptions=BANDS, nodata=0)
    # the reference itself stored with per-band offsets reads as the plain one
    shifted = write_raster(
        tmp_path / "truth_pb04.tif", _per_band_plus(adds)(GROUND[TARGET]), descriptions=BANDS, nodata=0
    )
    with rasterio.open(shifted, "r+") as dst:
        for bidx, bt in band_tags.items():
            dst.update_tags(bidx, **bt)

    def score(pred: Path, ref: Path) -> dict:
        res = runner.invoke(app, ["score", str(pred), str(ref), "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    base = score(reference["path"], truth)
    assert 30 < base["psnr"] < 80, base
    for pred, ref in ((tmp_path / "out.tif", truth), (reference["path"], shifted), (tmp_path / "out.tif", shifted)):
        got = score(pred, ref)
        for key in ("mae", "rmse", "psnr", "ssim", "sam"):
            assert got[key] == pytest.approx(base[key], rel=1e-3, abs=1e-6), (pred.name, ref.name, key)


# -- 6. re-indexing ---------------------------------------------------------------------------------


def test_reindexing_reuses_the_calibration_and_an_old_row_is_recomputed(tmp_path):
    from cloudclear import masks

    folder = write_series(tmp_path / "float01", lambda dn: (dn / 10000.0).astype(np.float32))
    cat = tmp_path / "cat.gpkg"
    first = build_index(folder, cat, detect=None, policy=masks.AS_DECODED)
    assert (first.scenes, first.scenes_computed, first.refused) == (N_DATES, N_DATES, ())
    before = scenes(cat)[["scene_id", "scale", "scale_source", "band_scales"]].reset_index(drop=True)
    again = build_index(folder, cat, detect=None, policy=masks.AS_DECODED)
    assert (again.scenes_reused, again.scenes_computed, again.files_opened) == (N_DATES, 0, 0)
    after = scenes(cat)[["scene_id", "scale", "scale_source", "band_scales"]].reset_index(drop=True)
    assert after.equals(before), (before, after)

    day = _day(START_2022)
    want = infer(cat, day, tmp_path / "new.tif")

    # a catalog written before per-band scaling: no band_scales or scale_source column; read as
    # it is (its scale and offset columns), then recomputed by index
    with sqlite3.connect(cat) as db:
        db.execute("ALTER TABLE scenes DROP COLUMN band_scales")
        db.execute("ALTER TABLE scenes DROP COLUMN scale_source")
    assert not {"band_scales", "scale_source"} & set(Catalog.open(cat).scenes.columns)
    assert {(s.scale, s.offset, s.scale_source) for s in Catalog.open(cat)} == {(1.0, 0.0, "")}
    np.testing.assert_array_equal(infer(cat, day, tmp_path / "old.tif"), want)
    old = build_index(folder, cat, detect=None, policy=masks.AS_DECODED)
    assert (old.scenes_reused, old.scenes_computed) == (0, N_DATES)
    assert scenes(cat)[["scene_id", "scale", "scale_source", "band_scales"]].reset_index(drop=True).equals(before)
