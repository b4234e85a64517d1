"""Issue 18, end to end: what users download (SAFE folders and zips, THEIA, STAC items, GeoTIFFs,
float reflectance) indexed together, read back to the DN, reconstructed like the equivalent plain
GeoTIFF stack; and every wrong input refused with one line and a non-zero exit.

The products are written by tests/products_fixtures.py (real file and folder names, the metadata
fields the ESA, THEIA and STAC specifications name, JPEG 2000 through GDAL's OpenJPEG driver).
The *plain twin* of a product series is written here from what the fixture wrote (its arrays and
the scale and offset it stated), never from what cloudclear read: float32 reflectance stacks with
the same mask as a sidecar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_raster
from products_fixtures import write_safe, write_stac_item, write_theia
from typer.testing import CliRunner

from cloudclear.catalog import Catalog
from cloudclear.cli import app
from cloudclear.gridio import Grid
from cloudclear.scenes import ReadSpec, SceneReader

runner = CliRunner()
BANDS = ("B02", "B03", "B04", "B08")
S2_STAC_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}


# --- product series and their plain twins ----------------------------------------------------------


def _safe_series(folder: Path, *, zipped: bool = False) -> list[dict]:
    out = []
    for k, day in enumerate((12, 17, 22)):
        stamp = f"202206{day}T101611"
        sp = write_safe(
            folder,
            datatake=stamp,
            sensing_time=f"2022-06-{day}T10:16:08.862Z",
            generation=f"202206{day}T162102",
            zipped=zipped,
            seed=k,
            offsets={"B08": -1100},  # per band: B08's offset differs from the others
        )
        refl = {
            b: _reflectance(sp.pixels[sp.band_file(b)], 1 / sp.quantification, sp.offsets[b] / sp.quantification)
            for b in BANDS
        }
        out.append(
            {
                "when": f"2022-06-{day}T10:16:08",
                "tile": sp.tile,
                "crs": "EPSG:32632",
                "origin": (600000.0, 5200020.0),
                "res": 10.0,
                "refl": refl,
                "mask": (sp.pixels[sp.band_file("SCL")], 20.0, "SCL"),
                "level": "L2A",
            }
        )
    return out


def _theia_series(folder: Path) -> list[dict]:
    out = []
    for k, day in enumerate(("02", "07", "12")):
        tp = write_theia(folder, acquisition=f"2018-08-{day}T10:57:10.459Z", seed=k, masks=("CLM_R1", "MG2_R1"))
        refl = {b: _reflectance(tp.pixels[tp.file(f"FRE_{b[0]}{int(b[1:])}")], 1e-4, 0.0, nodata=-10000) for b in BANDS}
        out.append(
            {
                "when": f"2018-08-{day}T10:57:10",
                "tile": "31TCJ",
                "crs": "EPSG:32631",
                "origin": (300000.0, 4900020.0),
                "res": 10.0,
                "refl": refl,
                "mask": (tp.pixels[tp.file("CLM_R1")], 10.0, "CLM_R1"),
                "level": "L2A",
            }
        )
    return out


def _stac_series(folder: Path, style: str) -> list[dict]:
    out = []
    for k, day in enumerate(("01", "05", "09")):
        si = write_stac_item(
            folder, style=style, when=f"2023-01-{day}T10:44:34.024000Z", seed=k, name=f"item_{day}.json", size=60
        )
        keys = S2_STAC_KEYS if style == "earth-search" else {b: b for b in BANDS}
        # earth-search: raster:bands scale 1e-4, offset -0.1; Planetary Computer: baseline 05.09 -> -1000 DN
        refl = {b: _reflectance(si.pixels[keys[b]], 1e-4, -0.1) for b in BANDS}
        scl = si.pixels["scl" if style == "earth-search" else "SCL"]
        out.append(
            {
                "when": f"2023-01-{day}T10:44:34",
                "tile": "31UFQ",
                "crs": "EPSG:32631",
                "origin": (600000.0, 5700000.0),
                "res": 10.0,
                "refl": refl,
                "mask": (scl, 20.0, "SCL"),
                "level": "L2A",
            }
        )
    return out


def _reflectance(raw: np.ndarray, scale: float, offset: float, nodata: float = 0) -> np.ndarray:
    out = raw.astype(np.float64) * scale + offset
    out[raw == nodata] = np.nan
    return out.astype(np.float32)


def _write_twin(folder: Path, series: list[dict]) -> None:
    """The plain GeoTIFF twin: per date a float32 reflectance stack (NaN nodata) and its mask."""
    for s in series:
        stamp = s["when"].replace("-", "").replace(":", "")
        stem = f"S2_{s['level']}_T{s['tile']}_{stamp}"
        data = np.stack([s["refl"][b] for b in BANDS])
        # 0 is optical nodata in float files too: a pixel of reflectance exactly 0 (DN 1000 with the
        # -1000 offset) is written 0.1 DN above it, within the 1 DN the comparison allows.
        data[data == 0] = 1e-5
        kw = {"crs": s["crs"], "origin": s["origin"]}
        write_raster(folder / f"{stem}.tif", data, descriptions=BANDS, nodata=float("nan"), res=s["res"], **kw)
        mask, res, token = s["mask"]
        write_raster(folder / f"{stem}_{token}.tif", mask, res=res, **kw)


def _index(folder: Path, cat: Path) -> object:
    res = runner.invoke(app, ["index", str(folder), "--catalog", str(cat), "--no-detect", "--as-decoded"])
    assert res.exit_code == 0, res.output
    return res


def _infer(cat: Path, when: str, out: Path) -> np.ndarray:
    args = ["infer", "-c", str(cat), "-d", when, "-o", str(out), "--method", "gapfill", "--as-decoded"]
    res = runner.invoke(app, [*args, "--bands", ",".join(BANDS)])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src:
        return src.read()


SERIES = {
    "safe": lambda d: _safe_series(d),
    "safe-zip": lambda d: _safe_series(d, zipped=True),
    "theia": _theia_series,
    "stac-earth-search": lambda d: _stac_series(d, "earth-search"),
    "stac-planetary-computer": lambda d: _stac_series(d, "planetary-computer"),
}


@pytest.mark.parametrize("kind", list(SERIES))
def test_infer_on_a_product_series_equals_infer_on_the_plain_stack(tmp_path, kind):
    series = SERIES[kind](tmp_path / "products")
    _write_twin(tmp_path / "plain", series)
    _index(tmp_path / "products", tmp_path / "p.gpkg")
    _index(tmp_path / "plain", tmp_path / "t.gpkg")
    when = series[1]["when"][:10]
    got = _infer(tmp_path / "p.gpkg", when, tmp_path / "p.tif")
    want = _infer(tmp_path / "t.gpkg", when, tmp_path / "t.tif")
    assert got.shape == want.shape == (4, *series[0]["refl"]["B02"].shape)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert (got > 0).mean() > 0.5  # not an empty image: reconstructed reflectance, not nodata
    with rasterio.open(tmp_path / "p_status.tif") as a, rasterio.open(tmp_path / "t_status.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.tags()["PROCESSING_LEVEL"] == "L2A"


# --- one folder mixing every format -------------------------------------------------------------------


def _mixed_folder(root: Path) -> dict[str, dict]:
    """One acquisition per format, each at its own date, in one folder; the expected reflectance."""
    expected: dict[str, dict] = {}
    (s_safe,) = _safe_series_one(root, "20220617", 0, zipped=False)
    expected["S2_32TPS_20220617"] = s_safe
    (s_zip,) = _safe_series_one(root, "20220622", 1, zipped=True)
    expected["S2_32TPS_20220622"] = s_zip
    tp = write_theia(root / "theia", acquisition="2018-08-02T10:57:10.459Z")
    expected["S2_31TCJ_20180802"] = {
        "refl": {
            b: _reflectance(tp.pixels[tp.file(f"FRE_{b[0]}{int(b[1:])}")], 1e-4, 0.0, nodata=-10000) for b in BANDS
        }
    }
    es = write_stac_item(root / "stac", style="earth-search", when="2023-01-05T10:44:34.024000Z", name="es.json")
    expected["S2_31UFQ_20230105"] = {"refl": {b: _reflectance(es.pixels[S2_STAC_KEYS[b]], 1e-4, -0.1) for b in BANDS}}
    pc = write_stac_item(root / "stac", style="planetary-computer", when="2023-01-10T10:44:34.024000Z", name="pc.json")
    expected["S2_31UFQ_20230110"] = {"refl": {b: _reflectance(pc.pixels[b], 1e-4, -0.1) for b in BANDS}}
    rng = np.random.default_rng(5)
    dn = rng.integers(200, 5000, (4, 64, 64)).astype(np.uint16)
    write_raster(root / "tif" / "S2_L2A_T31UFQ_20210501T103000.tif", dn, descriptions=BANDS, nodata=0)
    expected["S2_31UFQ_20210501"] = {"refl": {b: dn[i] * np.float32(1e-4) for i, b in enumerate(BANDS)}}
    fl = (rng.integers(200, 5000, (4, 64, 64)) / 10000).astype(np.float32)
    write_raster(root / "tif" / "S2_L2A_T31UFQ_20210506T103000.tif", fl, descriptions=BANDS)
    expected["S2_31UFQ_20210506"] = {"refl": {b: fl[i] for i, b in enumerate(BANDS)}}
    return expected


def _safe_series_one(root: Path, day: str, seed: int, *, zipped: bool) -> list[dict]:
    sp = write_safe(
        root / "safe",
        datatake=f"{day}T101611",
        sensing_time=f"{day[:4]}-{day[4:6]}-{day[6:]}T10:16:08.862Z",
        generation=f"{day}T162102",
        zipped=zipped,
        seed=seed,
    )
    return [{"refl": {b: _reflectance(sp.pixels[sp.band_file(b)], 1e-4, -0.1) for b in BANDS}}]


def test_index_a_folder_mixing_every_format_gives_one_scene_per_acquisition(tmp_path):
    expected = _mixed_folder(tmp_path / "in")
    res = runner.invoke(app, ["index", str(tmp_path / "in"), "--catalog", str(tmp_path / "c.gpkg"), "--no-detect"])
    assert res.exit_code == 0, res.output
    assert "refused" not in res.output and "skipped" not in res.stderr, res.output
    cat = Catalog.open(tmp_path / "c.gpkg")
    by_day = {s.scene_id[:17]: s for s in cat if s.sensor == "S2"}
    assert sorted(by_day) == sorted(expected) and len(cat) == len(expected)
    for key, scene in by_day.items():
        assert scene.scale_source, key
        grid = Grid(scene.crs.to_wkt(), tuple(scene.transform)[:6], scene.width, scene.height)
        reader = SceneReader(ReadSpec.of(scene, BANDS), grid)
        try:
            px = reader.read(0, scene.height)
        finally:
            reader.close()
        got = px.spec.physical(px.values)
        for i, b in enumerate(BANDS):
            want = expected[key]["refl"][b]
            ok = np.isfinite(want)
            assert (px.band_valid[i] == ok).all(), (key, b)
            # within 1 DN of the arrays written (reflectance x 10000)
            assert np.abs(got[i][ok] - want[ok]).max() * 10000 <= 1.0 + 1e-3, (key, b)
    levels = {k: s.level for k, s in by_day.items()}
    assert levels["S2_32TPS_20220617"] == "L2A" and levels["S2_31TCJ_20180802"] == "L2A"
    assert by_day["S2_31UFQ_20210506"].scale == 1.0  # float reflectance 0..1, not divided again
    assert "MTD_MSIL2A.xml" in by_day["S2_32TPS_20220622"].scale_source  # the zip's metadata


# --- wrong inputs: one line each, non-zero exit, the rest catalogued --------------------------------------


def _good(folder: Path) -> None:
    dn = np.random.default_rng(0).integers(200, 5000, (4, 64, 64)).astype(np.uint16)
    write_raster(folder / "S2_L2A_T31UFQ_20210501T103000.tif", dn, descriptions=BANDS, nodata=0)


def _broken_safe(folder: Path) -> Path:
    sp = write_safe(folder)
    xml = sp.path / "MTD_MSIL2A.xml"
    xml.write_text(xml.read_text().replace("BOA_QUANTIFICATION_VALUE", "NOT_A_FIELD"))
    return sp.path


def _truncated_zip(folder: Path) -> Path:
    sp = write_safe(folder, zipped=True)
    data = sp.path.read_bytes()
    sp.path.write_bytes(data[: len(data) // 2])
    return sp.path


def _theia_missing_band(folder: Path) -> Path:
    return write_theia(folder, unlisted=("FRE_B12",), kinds=("FRE",)).path


def _float_of_no_known_scale(folder: Path) -> Path:
    data = np.random.default_rng(1).uniform(0.5, 9, (4, 64, 64)).astype(np.float32)  # neither 0..1 nor DN
    return write_raster(folder / "S2_L2A_T31UFQ_20210506T103000.tif", data, descriptions=BANDS)


def _offset_not_stated(folder: Path) -> Path:
    dn = np.random.default_rng(2).integers(1100, 5000, (4, 64, 64)).astype(np.uint16)  # +1000 DN, 2022
    return write_raster(folder / "S2_L2A_T31UFQ_20220601T103000.tif", dn, descriptions=BANDS, nodata=0)


def _undated(folder: Path) -> Path:
    dn = np.random.default_rng(3).integers(200, 5000, (4, 64, 64)).astype(np.uint16)
    return write_raster(folder / "S2_L2A_T31UFQ_scene.tif", dn, descriptions=BANDS, nodata=0)


def _stac_asset_missing(folder: Path) -> Path:
    si = write_stac_item(folder, style="earth-search", name="item.json")
    next(p for p in si.path.parent.rglob("B04.tif")).unlink()
    return si.path


WRONG = {
    "safe-missing-field": (_broken_safe, "BOA_QUANTIFICATION_VALUE"),
    "safe-zip-truncated": (_truncated_zip, "zip"),
    "theia-band-missing": (_theia_missing_band, "B12"),
    "stac-asset-missing": (_stac_asset_missing, "B04"),
    "float-of-no-known-scale": (_float_of_no_known_scale, "fit neither reflectance 0..1 nor DN x 10000"),
    "offset-not-stated": (_offset_not_stated, "BOA_ADD_OFFSET=-1000"),
    "undated": (_undated, "no acquisition date"),
}


@pytest.mark.parametrize("kind", list(WRONG))
def test_every_wrong_input_gets_one_line_and_a_non_zero_exit(tmp_path, kind):
    make, words = WRONG[kind]
    folder = tmp_path / "in"
    _good(folder)
    bad = make(folder)
    res = runner.invoke(app, ["index", str(folder), "--catalog", str(tmp_path / "c.gpkg"), "--no-detect"])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if "refused" not in ln]
    assert len(lines) == 1 and lines[0].startswith(str(bad)) and words in lines[0], res.stderr
    cat = Catalog.open(tmp_path / "c.gpkg")
    assert [s.scene_id for s in cat] == ["S2_31UFQ_20210501T103000"]  # the good scene is catalogued


def test_the_detector_reads_a_product_with_its_own_scale_and_sun(tmp_path):
    # An L1C SAFE of baseline 04.00 (RADIO_ADD_OFFSET -1000) without MSK_CLASSI: the detector runs
    # on it with the product's scale and offset and MTD_TL.xml's sun angles, not a file's own tags.
    sp = write_safe(tmp_path / "in", level="L1C", sun=(33.5, 151.25))
    (Path(sp.path) / sp.band_file("MSK_CLASSI")).unlink()
    xml = Path(sp.path) / "MTD_MSIL1C.xml"
    xml.write_text(xml.read_text().replace(f"{sp.band_file('MSK_CLASSI')[:-4]}", "REMOVED"))
    res = runner.invoke(app, ["index", str(tmp_path / "in"), "--catalog", str(tmp_path / "c.gpkg")])
    assert res.exit_code == 0, res.output
    (scene,) = list(Catalog.open(tmp_path / "c.gpkg"))
    assert scene.mask_source == "SCL" and scene.mask is not None  # the detector's
    assert scene.scaling("B02") == pytest.approx((1e-4, -0.1))
    with rasterio.open(scene.mask.path) as src:
        tags = src.tags()
    assert tags["SUN_ANGLES_SOURCE"] == "tag:SUN_ZENITH"
    assert float(tags["SUN_ZENITH"]) == pytest.approx(33.5) and float(tags["SUN_AZIMUTH"]) == pytest.approx(151.25)


def test_an_l1c_safe_takes_msk_classi_as_its_mask(tmp_path):
    # Baseline 04.00 L1C: MSK_CLASSI_B00.jp2, 3 bands at 60 m (opaque clouds, cirrus, snow), read
    # packed as bits: opaque is cloud, cirrus thin cloud, snow clear.
    sp = write_safe(tmp_path / "in", level="L1C", seed=3)
    classi = sp.pixels[sp.band_file("MSK_CLASSI")]
    args = ["index", str(tmp_path / "in"), "--catalog", str(tmp_path / "c.gpkg"), "--no-detect", "--as-decoded"]
    assert runner.invoke(app, args).exit_code == 0
    (scene,) = list(Catalog.open(tmp_path / "c.gpkg"))
    assert scene.mask_source == "CLASSI" and scene.level == "L1C"
    want = 100 * ((classi[0] != 0) | (classi[1] != 0)).mean()
    assert scene.cloud_pct == pytest.approx(want, abs=1e-6)


def test_one_product_file_can_be_indexed_on_its_own(tmp_path):
    sp = write_safe(tmp_path, zipped=True)
    res = runner.invoke(app, ["index", str(sp.path), "--no-detect"])
    assert res.exit_code == 0, res.output
    (scene,) = list(Catalog.open(tmp_path / "cloudclear.gpkg"))  # beside the zip
    assert scene.tile == "32TPS" and len(scene.bands) == 12
    other = write_raster(tmp_path / "notes.tif", np.zeros((8, 8), np.uint8))
    res = runner.invoke(app, ["index", str(other)])
    assert res.exit_code == 1 and "not a folder, a SAFE .zip or a STAC item" in res.stderr
