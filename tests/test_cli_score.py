"""`cloudclear score` on the command line: forms, outputs, figures and one-line errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, fill_disk, read_only, write_raster
from typer.testing import CliRunner

from cloudclear.cli import app

runner = CliRunner()
BANDS = ["B02", "B03", "B04", "B08"]


def _smooth(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    noise = rng.normal(0, 1, shape)
    field = gaussian_filter(noise, (0, 3, 3))
    field = (field - field.min()) / (field.max() - field.min())
    return (500 + 3000 * field).astype(np.uint16)


@pytest.fixture
def trio(tmp_path, rng):
    """A reference, two predictions of it (good and poor) and an SCL mask with a cloud block."""
    ref = _smooth(rng, (4, 96, 120))
    good = np.clip(ref + rng.normal(0, 40, ref.shape), 1, 10000).astype(np.uint16)
    poor = np.clip(ref + rng.normal(0, 400, ref.shape), 1, 10000).astype(np.uint16)
    scl = np.full((96, 120), 4, np.uint8)
    scl[20:60, 30:90] = 9
    scl[60:70, 30:90] = 3
    paths = {
        "ref": write_raster(tmp_path / "truth_20210516.tif", ref, descriptions=BANDS, nodata=0),
        "good": write_raster(tmp_path / "pred" / "good_20210516.tif", good, descriptions=BANDS, nodata=0),
        "poor": write_raster(tmp_path / "pred" / "poor_20210516.tif", poor, descriptions=BANDS, nodata=0),
        "mask": write_raster(tmp_path / "S2_20210516_SCL.tif", scl, descriptions=["SCL"]),
    }
    return {k: str(v) for k, v in paths.items()}


def test_one_prediction_prints_bands_and_overall(trio):
    res = runner.invoke(app, ["score", trio["good"], trio["ref"], "--mask", trio["mask"]])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].endswith("good_20210516.tif") and lines[1].endswith("truth_20210516.tif")
    assert "cloudy" in lines[2] and "3,000 scored" in lines[2]  # 40 x 60 cloud + 10 x 60 shadow
    assert [ln.split()[0] for ln in lines[4:9]] == [*BANDS, "all"]
    assert "SAM" in lines[8]


def test_json_has_overall_keys_first_then_bands(trio):
    res = runner.invoke(app, ["score", trio["good"], trio["ref"], "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert list(data)[:6] == ["mae", "rmse", "psnr", "ssim", "sam", "bands"]
    assert list(data["bands"]) == BANDS
    assert data["pixels"] == "all" and data["n_pixels"] == 96 * 120
    assert 30 < data["psnr"] < 60 and 0.5 < data["ssim"] <= 1


def test_several_predictions_one_table_and_csv(trio):
    res = runner.invoke(app, ["score", "--ref", trio["ref"], trio["good"], trio["poor"]])
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith(("good_", "poor_"))]
    assert len(rows) == 2
    psnr = {r.split()[0]: float(r.split()[4]) for r in rows}
    assert psnr["good_20210516.tif"] > psnr["poor_20210516.tif"] + 10

    res = runner.invoke(app, ["score", "--ref", trio["ref"], str(Path(trio["good"]).parent / "*.tif"), "--csv"])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(table) == 2 * 5  # two predictions x (all + 4 bands)
    assert {r["band"] for r in table} == {"all", *BANDS}
    assert all(float(r["rmse"]) > 0 for r in table)


def test_sequence_pairs_by_order_and_combines(tmp_path, rng):
    refs, preds = [], []
    for day in ("20210501", "20210516"):
        ref = _smooth(rng, (4, 64, 64))
        refs.append(write_raster(tmp_path / "truth" / f"t_{day}.tif", ref, descriptions=BANDS, nodata=0))
        pred = np.clip(ref + rng.normal(0, 100, ref.shape), 1, 10000).astype(np.uint16)
        preds.append(write_raster(tmp_path / "pred" / f"p_{day}.tif", pred, descriptions=BANDS, nodata=0))
    args = ["score", "--ref", str(tmp_path / "truth" / "*.tif"), str(tmp_path / "pred" / "*.tif"), "--json"]
    res = runner.invoke(app, [*args, "--aggregate", "per-image"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [Path(r["ref"]).name for r in data["results"]] == ["t_20210501.tif", "t_20210516.tif"]
    mean_psnr = np.mean([r["psnr"] for r in data["results"]])
    assert data["combined"]["psnr"] == pytest.approx(mean_psnr, rel=1e-12)
    assert data["combined"]["n_images"] == 2

    # Paired by order, so files whose names carry different dates are refused.
    (tmp_path / "pred" / "p_20210516.tif").rename(tmp_path / "pred" / "p_20210520.tif")
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert "p_20210520.tif: dated 20210520 but paired by order with" in res.stderr


@pytest.mark.slow
def test_plot_writes_a_png(trio, tmp_path):
    png = tmp_path / "fig" / "scores.png"
    res = runner.invoke(
        app, ["score", "--ref", trio["ref"], trio["good"], trio["poor"], "--plot", str(png), "--input", trio["poor"]]
    )
    assert res.exit_code == 0, res.output
    from matplotlib.image import imread

    img = imread(png)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 600
    assert not list(png.parent.glob(".*tmp*"))  # no temporary left beside it


def _plot(trio, png, *more):
    return runner.invoke(app, ["score", "--ref", trio["ref"], trio["good"], "--plot", str(png), *more])


def test_plot_png_has_the_mode_of_any_file(trio, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        res = _plot(trio, tmp_path / "fig.png")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fig.png").stat().st_mode & 0o777 == 0o644


def test_plot_refuses_an_existing_png_without_overwrite(trio, tmp_path):
    png = tmp_path / "fig.png"
    png.write_bytes(b"an older figure")
    res = _plot(trio, png)
    assert_one_line_error(res, str(png), "exists", "--overwrite", stdout_empty=True)
    assert png.read_bytes() == b"an older figure"
    res = _plot(trio, png, "--overwrite")
    assert res.exit_code == 0, res.output
    assert png.read_bytes().startswith(b"\x89PNG")


def test_score_plot_refuses_an_existing_png_before_scoring(trio, tmp_path, monkeypatch):
    import cloudclear.metrics

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored although the PNG was going to be refused")

    monkeypatch.setattr(cloudclear.metrics, "score_many", no_scoring)
    png = tmp_path / "fig.png"
    png.write_bytes(b"an older figure")
    assert_one_line_error(_plot(trio, png), str(png), "exists", stdout_empty=True)
    assert png.read_bytes() == b"an older figure"


def test_plot_comparison_refuses_an_existing_png_before_reading(trio, tmp_path):
    from cloudclear.errors import OutputExistsError
    from cloudclear.metrics import Comparison, Pair, ScoreOptions
    from cloudclear.plots import plot_comparison

    png = tmp_path / "fig.png"
    png.write_bytes(b"old")
    # No views and pairs that do not exist: the refusal comes before any read.
    comparison = Comparison((), None, ScoreOptions())
    with pytest.raises(OutputExistsError, match="fig.png"):
        plot_comparison(png, comparison, [Pair("nowhere.tif", "nothing.tif")])
    assert png.read_bytes() == b"old"


def test_plot_into_a_read_only_folder_is_one_line(trio, tmp_path):
    folder = tmp_path / "figs"
    folder.mkdir()
    old = folder / "fig.png"
    old.write_bytes(b"an older figure")
    with read_only(folder):
        res = _plot(trio, folder / "new.png")
        assert_one_line_error(res, str(folder / "new.png"), "cannot write plot", stdout_empty=True)
        res = _plot(trio, old, "--overwrite")
        assert_one_line_error(res, str(old), "cannot write plot", stdout_empty=True)
    assert sorted(p.name for p in folder.iterdir()) == ["fig.png"]
    assert old.read_bytes() == b"an older figure"


@pytest.mark.slow
def test_plot_on_a_full_disk_is_one_line_and_leaves_nothing(trio, small_fs):
    vol = small_fs(1 << 20)
    png = vol / "fig.png"
    res = _plot(trio, png)
    assert res.exit_code == 0, res.output
    before = png.read_bytes()
    fill_disk(vol)
    for target, more in ((vol / "new.png", ()), (png, ("--overwrite",))):
        res = _plot(trio, target, *more)
        assert_one_line_error(res, str(target), "no space left on device", stdout_empty=True)
    assert sorted(p.name for p in vol.iterdir()) == [".filler", "fig.png"]
    assert png.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["a.tif", "b.tif", "c.tif"], 2, "--ref"),
        (["{good}", "{ref}", "--pixels", "sky"], 2, "unknown pixel set 'sky'"),
        (["{good}", "{ref}", "--pixels", "clear"], 1, "needs the input date's cloud mask"),
        (["{good}", "{ref}", "--json", "--csv"], 2, "choose one"),
        (["{good}", "{text}"], 1, "not a readable raster"),
        (["{good}", "{missing}"], 1, "reference not found"),
        (["{good}", "{three}"], 1, "--bands"),
        (["{good}", "{far}"], 1, "does not overlap"),
        (["{good}", "{empty}"], 1, "only nodata"),
        (["--ref", "{ref}", "nothing/*.tif"], 2, "no prediction matches"),
    ],
)
def test_bad_input_one_line_and_exit_code(trio, tmp_path, args, code, message):
    (tmp_path / "notes.tif").write_text("not a raster")
    three = write_raster(tmp_path / "three.tif", np.ones((3, 96, 120), np.uint16), descriptions=BANDS[:3])
    far = write_raster(
        tmp_path / "far.tif", np.ones((4, 96, 120), np.uint16), descriptions=BANDS, origin=(700000.0, 5700000.0)
    )
    empty = write_raster(tmp_path / "empty.tif", np.zeros((4, 96, 120), np.uint16), descriptions=BANDS, nodata=0)
    names = {
        **trio,
        "text": str(tmp_path / "notes.tif"),
        "missing": str(tmp_path / "absent.tif"),
        "three": str(three),
        "far": str(far),
        "empty": str(empty),
    }
    res = runner.invoke(app, ["score", *(a.format(**names) for a in args)])
    assert res.exit_code == code, res.output
    assert message in res.stderr
    if code == 1:
        assert_one_line_error(res, message)


def test_help_states_the_formulas():
    res = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "120"})
    assert res.exit_code == 0
    for formula in ("MAE  = mean |p - r|", "RMSE = sqrt(mean (p - r)^2)", "PSNR = 20 log10(peak / RMSE)", "arccos"):
        assert formula in res.stdout
