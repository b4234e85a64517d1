"""`cloudclear infer --hide MASK`: a clear date reconstructed under another date's real clouds.

The mask's cloud and shadow pixels leave the date's own clear pixels for every method (gapfill
and networks), no step gets them back, the run records the mask and its pixel count, a mask on
another grid is placed with nearest neighbour, and a bad mask is one line naming it. The last
test is the README's main job on the shipped real crop (sample_tiles/32TPS).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import assert_one_line_error, gapfill_unless_named, write_raster
from typer.testing import CliRunner

from cloudclear.cli import app
from cloudclear.synth import generate_series

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "sample_tiles" / "32TPS"
SIZE = 64
DATE = "2021-05-01"  # the third of five clear dates 15 days apart
# The masks as decoded and no detector: the target is clear everywhere, so the pixels --hide
# takes out are exactly the mask's cloud and shadow (the clear policy has its own tests).
DECODED = "--as-decoded"


def cli(*args: object):
    return runner.invoke(app, gapfill_unless_named(args))


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("hide") / "T31UFQ"
    s = generate_series(root, height=SIZE, width=SIZE, n_dates=5, cloud_cover=[0] * 5, s1=False, seed=3)
    shutil.rmtree(root / "truth")
    return s


@pytest.fixture(scope="module")
def catalog(series, tmp_path_factory) -> Path:
    cat = tmp_path_factory.mktemp("hide_cat") / "cat.gpkg"
    res = cli("index", series.root, "-c", cat, "--no-detect", DECODED)
    assert res.exit_code == 0, res.output
    return cat


def _scl_codes() -> np.ndarray:
    """An SCL on the 64 px grid: a cloud block (9), a shadow band (3), a cirrus patch (10), and
    clear (4), unclassified (7), snow (11) and nodata (0) elsewhere."""
    scl = np.full((SIZE, SIZE), 4, np.uint8)
    scl[8:30, 10:40] = 9
    scl[34:38, 5:60] = 3
    scl[50:60, 50:60] = 10
    scl[0:4, :] = 0
    scl[60:, 0:20] = 7
    scl[60:, 20:30] = 11
    return scl


def _hidden(scl: np.ndarray) -> np.ndarray:
    return np.isin(scl, [3, 8, 9, 10])


@pytest.fixture(scope="module")
def hide_mask(series, tmp_path_factory) -> Path:
    with rasterio.open(series.masks[0]) as src:
        crs, t = src.crs, src.transform
    path = tmp_path_factory.mktemp("mask") / "other_date_SCL.tif"
    return write_raster(path, _scl_codes(), crs=str(crs), origin=(t.c, t.f), descriptions=["SCL"], nodata=0)


def _target(series) -> Path:
    return next(p for p, d in zip(series.s2, series.s2_dates, strict=True) if d.date().isoformat() == DATE)


def test_gapfill_reconstructs_exactly_the_hidden_pixels_and_records_them(series, catalog, hide_mask, tmp_path):
    out = tmp_path / "hidden.tif"
    res = cli("infer", "-c", catalog, "-d", DATE, "-o", out, "--hide", hide_mask, DECODED, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    hidden = _hidden(_scl_codes())
    n = int(hidden.sum())
    assert d["hide"] == {"path": str(hide_mask), "pixels": n, "clear_hidden": n}
    assert d["pixels"] == {"observed": SIZE * SIZE - n, "reconstructed": n, "nodata": 0}
    assert any(note.startswith(f"hide: {hide_mask}: {n} px") for note in d["notes"])
    status = read(tmp_path / "hidden_status.tif")[0]
    assert np.array_equal(status == 2, hidden) and np.array_equal(status == 1, ~hidden)
    with rasterio.open(out) as dst:
        tags = dst.tags()
        pred = dst.read()
    assert tags["CLOUDCLEAR_HIDE"] == str(hide_mask) and tags["CLOUDCLEAR_HIDE_PIXELS"] == str(n)
    target = read(_target(series))
    assert np.array_equal(pred[:, ~hidden], target[:, ~hidden])  # the rest is copied as observed
    assert not np.array_equal(pred[:, hidden], target[:, hidden])  # the hidden part is not

    # Per pixel, gapfill there is what it makes without the date at all (at the same time of day).
    ref = tmp_path / "excluded.tif"
    scene_id = next(i["scene_id"] for i in d["inputs"] if i["slot"] == "t")
    res = cli("infer", "-c", catalog, "-d", d["date"], "-o", ref, "--exclude", scene_id, DECODED)
    assert res.exit_code == 0, res.output
    assert np.array_equal(pred[:, hidden], read(ref)[:, hidden])

    # The text summary says it too.
    res = cli("infer", "-c", catalog, "-d", DATE, "-o", tmp_path / "t.tif", "--hide", hide_mask, DECODED)
    assert res.exit_code == 0, res.output
    pct = 100 * n / SIZE**2
    assert f"    note: hide: {hide_mask}: {n} px ({pct:.1f} %) cloud or shadow there, {n} px" in res.stdout


def test_without_hide_nothing_is_recorded(catalog, tmp_path):
    out = tmp_path / "plain.tif"
    res = cli("infer", "-c", catalog, "-d", DATE, "-o", out, DECODED, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["hide"] is None and d["pixels"]["reconstructed"] == 0
    with rasterio.open(out) as dst:
        assert "CLOUDCLEAR_HIDE" not in dst.tags()


def test_a_date_without_its_own_acquisition_has_nothing_to_hide(catalog, hide_mask, tmp_path):
    res = cli("infer", "-c", catalog, "-d", "2021-05-08", "-o", tmp_path / "m.tif", "--hide", hide_mask, DECODED)
    assert res.exit_code == 0, res.output
    n = int(_hidden(_scl_codes()).sum())
    assert f"hide: {hide_mask}: {n} px" in res.stdout and "no acquisition of its own, nothing to hide" in res.stdout


def _leak_check(series, hide_mask, tmp_path: Path, *method: object) -> np.ndarray:
    """Infer the date with --hide on the series, then on a copy whose target holds other values at
    the hidden pixels: the outputs must be equal (the hidden values reach no method)."""
    hidden = _hidden(_scl_codes())
    outs = []
    for k, changed in enumerate((False, True)):
        root = tmp_path / f"s{k}" / "T31UFQ"
        shutil.copytree(series.root, root)
        if changed:
            target = root / "S2" / _target(series).name
            with rasterio.open(target, "r+") as dst:
                data = dst.read()
                data[:, hidden] = 9999
                dst.write(data)
        cat = tmp_path / f"s{k}" / "cat.gpkg"
        assert cli("index", root, "-c", cat, "--no-detect", DECODED).exit_code == 0
        out = tmp_path / f"s{k}" / "out.tif"
        res = cli("infer", "-c", cat, "-d", DATE, "-o", out, "--hide", hide_mask, *method)
        assert res.exit_code == 0, res.output
        outs.append(read(out))
    assert np.array_equal(outs[0], outs[1])
    return outs[0]


def test_hidden_values_reach_no_step_of_the_default_policy(series, hide_mask, tmp_path):
    # The default clear policy (buffer, temporal test, masks' decision restored where nothing is
    # clear) runs here: none of it may give the hidden pixels back.
    _leak_check(series, hide_mask, tmp_path)


def _checkpoint(path: Path) -> Path:
    import torch

    from cloudclear.nets.card import ModelCard, Slot, build_net, save_checkpoint
    from cloudclear.nets.unet import receptive_radius

    bands = ("B02", "B03", "B04", "B08")
    card = ModelCard(
        architecture="unet",
        options={"width": 4, "depth": 2},
        bands=bands,
        slots=[
            Slot("t-1", "S2", "before", 1, bands),
            Slot("t", "S2", "target", 1, bands),
            Slot("t+1", "S2", "after", 1, bands),
        ],
        normalisation={"S2": {"mean": [0.05, 0.07, 0.06, 0.25], "std": [0.03, 0.03, 0.04, 0.08]}},
        receptive_radius=receptive_radius(2),
        align=4,
        window=64,
        fully_convolutional=True,
    )
    torch.manual_seed(0)
    return save_checkpoint(path, build_net(card), card)


def test_a_network_never_sees_the_hidden_pixels(series, hide_mask, tmp_path, one_torch_thread):
    ckpt = _checkpoint(tmp_path / "tiny.safetensors")
    pred = _leak_check(series, hide_mask, tmp_path, "-m", ckpt, "--device", "cpu", DECODED)
    status = read(tmp_path / "s0" / "out_status.tif")[0]
    hidden = _hidden(_scl_codes())
    assert np.array_equal(status == 2, hidden)
    target = read(_target(series))
    assert np.array_equal(pred[:, ~hidden], target[:, ~hidden])


def test_a_coarser_mask_on_another_origin_is_placed_with_nearest(series, catalog, tmp_path):
    # A 20 m SCL whose grid starts one 20 m pixel west and north of the tile's: each of its pixels
    # covers 2 x 2 output pixels, shifted by one of its own.
    with rasterio.open(series.masks[0]) as src:
        crs, t = src.crs, src.transform
    coarse = np.full((SIZE // 2 + 1, SIZE // 2 + 1), 4, np.uint8)
    coarse[5:10, 3:7] = 8
    path = write_raster(
        tmp_path / "coarse_SCL.tif", coarse, crs=str(crs), origin=(t.c - 20, t.f + 20), res=20.0,
        descriptions=["SCL"], nodata=0,
    )  # fmt: skip
    out = tmp_path / "c.tif"
    res = cli("infer", "-c", catalog, "-d", DATE, "-o", out, "--hide", path, DECODED, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    expected = np.zeros((SIZE, SIZE), bool)
    expected[2 * 4 : 2 * 9, 2 * 2 : 2 * 6] = True
    assert d["hide"]["pixels"] == int(expected.sum()) == 80
    assert np.array_equal(read(tmp_path / "c_status.tif")[0] == 2, expected)


def test_a_mask_covering_part_of_the_tile_hides_only_there(series, catalog, tmp_path):
    with rasterio.open(series.masks[0]) as src:
        crs, t = src.crs, src.transform
    part = np.full((16, 16), 9, np.uint8)
    path = write_raster(tmp_path / "part_SCL.tif", part, crs=str(crs), origin=(t.c + 480, t.f - 480),
                        descriptions=["SCL"], nodata=0)  # fmt: skip
    res = cli("infer", "-c", catalog, "-d", DATE, "-o", tmp_path / "p.tif", "--hide", path, DECODED, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dates"][0]["hide"]["pixels"] == 16 * 16


@pytest.mark.parametrize(
    "kind, needles",
    [
        ("missing", ["--hide mask not found"]),
        ("folder", ["is a folder"]),
        ("text", ["not a readable raster"]),
        ("not_a_mask", ["holds no cloud mask cloudclear recognises", "SCL"]),
        ("bad_values", ["--hide mask", "200"]),
        ("no_crs", ["has no CRS"]),
    ],
)
def test_a_bad_mask_is_one_line_naming_it_and_writes_nothing(series, catalog, tmp_path, kind, needles):
    bad = tmp_path / "bad_SCL.tif"
    if kind == "folder":
        bad.mkdir()
    elif kind == "text":
        bad.write_text("not a raster\n")
    elif kind == "not_a_mask":
        bad = tmp_path / "image.tif"
        write_raster(bad, np.full((4, 8, 8), 500, np.uint16), descriptions=["B02", "B03", "B04", "B08"])
    elif kind == "bad_values":
        with rasterio.open(series.masks[0]) as src:
            crs, t = src.crs, src.transform
        scl = _scl_codes()
        scl[40, 40] = 200
        write_raster(bad, scl, crs=str(crs), origin=(t.c, t.f), descriptions=["SCL"], nodata=0)
    elif kind == "no_crs":
        write_raster(bad, _scl_codes(), crs=None, descriptions=["SCL"])
    out = tmp_path / "out" / "o.tif"
    res = cli("infer", "-c", catalog, "-d", DATE, "-o", out, "--hide", bad, DECODED)
    assert_one_line_error(res, str(bad), *needles)
    assert not out.exists() and not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.slow
def test_readme_main_job_on_the_real_crop(tmp_path):
    # README.md's first command block, with gapfill named (the default method may change): the
    # clear 2022-06-15 reconstructed under 2022-06-17's real clouds, scored on those pixels.
    if not any(REAL.glob("*.tif")):
        pytest.skip("sample_tiles/32TPS not present")
    cat = tmp_path / "sample.gpkg"
    assert cli("index", REAL, "-c", cat).exit_code == 0
    mask = REAL / "S2_L2A_T32TPS_20220617_SCL.tif"
    ref = REAL / "S2_L2A_T32TPS_20220615.tif"
    out = tmp_path / "32TPS_20220615_hidden.tif"
    res = cli("infer", "-c", cat, "-d", "2022-06-15", "--hide", mask, "-o", out, "-m", "gapfill", "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["hide"]["pixels"] == 173_722 and d["hide"]["clear_hidden"] >= 173_700  # 66.3 % of 512 x 512
    res = cli("score", out, ref, "--mask", mask, "--ref-mask", REAL / "S2_L2A_T32TPS_20220615_SCL.tif", "--json")
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout)
    assert scores["psnr"] == pytest.approx(34.49, abs=0.01)


@pytest.mark.slow
def test_readme_main_job_with_the_default_method_beats_gapfill(tmp_path):
    # README.md's first command block as written (no --method: refine-small), on the same pixels
    # as gapfill's 34.49 dB / SSIM 0.951 / SAM 3.07 above.
    if not any(REAL.glob("*.tif")):
        pytest.skip("sample_tiles/32TPS not present")
    cat = tmp_path / "sample.gpkg"
    assert runner.invoke(app, ["index", str(REAL), "-c", str(cat)]).exit_code == 0
    mask = REAL / "S2_L2A_T32TPS_20220617_SCL.tif"
    out = tmp_path / "32TPS_20220615_hidden.tif"
    args = ["infer", "-c", cat, "-d", "2022-06-15", "--hide", mask, "-o", out, "--json"]
    res = runner.invoke(app, [str(a) for a in args])  # the default method, not gapfill_unless_named
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert Path(d["method"]).stem == "refine-small", d["method"]
    ref_mask = REAL / "S2_L2A_T32TPS_20220615_SCL.tif"
    res = cli("score", out, REAL / "S2_L2A_T32TPS_20220615.tif", "--mask", mask, "--ref-mask", ref_mask, "--json")
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout)
    assert scores["psnr"] == pytest.approx(34.71, abs=0.02)
    assert scores["psnr"] > 34.49 and scores["ssim"] > 0.951 and scores["sam"] < 3.07
