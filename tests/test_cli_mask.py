"""`cloudclear mask` and `cloudclear index --detect` on the command line: outputs, options, one-line errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import assert_one_line_error, fill_disk, read_only, write_raster
from typer.testing import CliRunner

from cloudclear.catalog import Catalog
from cloudclear.cli import app
from cloudclear.synth import generate_series

runner = CliRunner()
B6 = ("B02", "B03", "B04", "B08", "B11", "B12")
SCL_CODES = {0, 3, 4, 5, 6, 8, 9, 10, 11}
FIRST = "S2_31UFQ_20210401T103029"
SECOND = "S2_31UFQ_20210416T103021"


def mask(*args: object):
    return runner.invoke(app, ["mask", *(str(a) for a in args)])


def index(*args: object):
    return runner.invoke(app, ["index", *(str(a) for a in args)])


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Two generated 256 x 256 dates (seed 0, 30 % and 40 % cover, sun at 150 deg) with B11 and B12."""
    return generate_series(
        tmp_path_factory.mktemp("gen"),
        height=256,
        width=256,
        n_dates=2,
        bands=B6,
        s1=False,
        seed=0,
        cloud_cover=[0.3, 0.4],
    )


@pytest.fixture
def scene(series, tmp_path) -> Path:
    """The first date, alone in a folder (no SCL sidecar)."""
    folder = tmp_path / "S2"
    folder.mkdir()
    return Path(shutil.copy(series.s2[0], folder))


@pytest.fixture
def scenes(series, tmp_path) -> Path:
    """Both dates, without their masks, in one folder."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    for p in series.s2:
        shutil.copy(p, folder)
    return folder


# -- cloudclear mask -----------------------------------------------------------------------------


def test_mask_to_a_file(scene, tmp_path):
    out = tmp_path / "out.tif"
    res = mask(scene, "-o", out)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{out}: cloud ") and "(256 x 256, " in lines[0]
    assert lines[1] == (
        "    sun: zenith 49.1, azimuth 150.0 (tag:MEAN_SUN_ZENITH_ANGLE); "
        "shadow direction from sun (tag:MEAN_SUN_ZENITH_ANGLE)"
    )
    with rasterio.open(out) as dst, rasterio.open(scene) as src:
        assert (dst.crs, dst.transform, dst.shape, dst.dtypes) == (src.crs, src.transform, src.shape, ("uint8",))
        assert dst.descriptions == ("SCL",)
        scl = dst.read(1)
    codes = set(np.unique(scl).tolist())
    assert codes <= SCL_CODES and {3, 4, 8, 9} <= codes
    cloud = 100 * np.isin(scl, (8, 9, 10)).mean()
    assert f"cloud {cloud:.1f} %, shadow {100 * (scl == 3).mean():.1f} %" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S2", "out.tif"]  # no partial left


def test_mask_default_output_is_beside_the_scene(scene):
    res = mask(scene)
    assert res.exit_code == 0, res.output
    out = scene.parent / f"{FIRST}_SCL.tif"
    assert res.stdout.startswith(f"{out}: cloud ")
    assert sorted(p.name for p in scene.parent.iterdir()) == sorted([scene.name, out.name])
    assert set(np.unique(read(out))) <= SCL_CODES


def test_mask_into_a_folder(scenes, tmp_path):
    out = tmp_path / "masks"  # created
    res = mask(scenes, "-o", out)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [f"{FIRST}_SCL.tif", f"{SECOND}_SCL.tif"]
    assert [ln.split(":")[0] for ln in res.stdout.splitlines()[::2]] == [
        str(out / f"{FIRST}_SCL.tif"),
        str(out / f"{SECOND}_SCL.tif"),
    ]
    # One file for two scenes cannot be.
    res = mask(scenes, "-o", tmp_path / "one.tif")
    assert_one_line_error(res, "one.tif: 2 scenes found; give a folder for --out")
    assert not (tmp_path / "one.tif").exists()


def test_overwrite_refused_then_allowed(scene, tmp_path):
    out = tmp_path / "m.tif"
    assert mask(scene, "-o", out).exit_code == 0
    before = out.read_bytes()
    mtime = out.stat().st_mtime_ns
    res = mask(scene, "-o", out, "--dilate-cloud", "0")
    assert_one_line_error(res, f"{out}: exists; pass --overwrite to replace it")
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    res = mask(scene, "-o", out, "--dilate-cloud", "0", "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (read(out) == 8).any() and out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S2", "m.tif"]


def test_json(scene, tmp_path):
    out = tmp_path / "m.tif"
    res = mask(scene, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["path"] == str(out) and row["scene"] == FIRST and row["source"] == str(scene)
    assert row["detector"] == "builtin" and (row["width"], row["height"]) == (256, 256)
    assert row["sun"] == {"zenith": 49.07, "azimuth": 150.0, "source": "tag:MEAN_SUN_ZENITH_ANGLE"}
    assert row["shadow_source"] == "sun (tag:MEAN_SUN_ZENITH_ANGLE)"
    scl = read(out)
    assert row["cloud_pct"] == pytest.approx(100 * np.isin(scl, (8, 9, 10)).mean())
    assert row["shadow_pct"] == pytest.approx(100 * (scl == 3).mean())
    assert row["snow_pct"] == 0.0 and row["nodata_pct"] == 0.0 and row["seconds"] > 0


def test_sun_parameters(scene, tmp_path):
    out = tmp_path / "m.tif"
    res = mask(scene, "-o", out, "--sun", "40,150", "--json")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["sun"] == {"zenith": 40.0, "azimuth": 150.0, "source": "parameters"}
    assert row["shadow_source"] == "sun (parameters)"
    with rasterio.open(out) as dst:
        tags = dst.tags()
    assert (tags["SUN_ZENITH"], tags["SUN_AZIMUTH"], tags["SUN_ANGLES_SOURCE"]) == ("40.000", "150.000", "parameters")


@pytest.mark.parametrize(
    ("value", "message"),
    [("40", "--sun takes 2 comma-separated numbers"), ("40,x", "comma-separated"), ("95,150", "not in [0, 90)")],
)
def test_bad_sun_exits_2(scene, tmp_path, value, message):
    res = mask(scene, "-o", tmp_path / "m.tif", "--sun", value)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.stderr.split())  # the usage box may wrap it
    assert not (tmp_path / "m.tif").exists()


def test_no_shadows_and_no_cloud_dilation(scene, tmp_path):
    res = mask(scene, "-o", tmp_path / "default.tif")
    assert res.exit_code == 0, res.output
    res = mask(scene, "-o", tmp_path / "plain.tif", "--no-shadows", "--dilate-cloud", "0", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["shadow_source"] == "no shadows sought"
    default, plain = read(tmp_path / "default.tif"), read(tmp_path / "plain.tif")
    assert (default == 3).sum() > 1000 and (default == 8).sum() > 1000
    assert not (plain == 3).any() and not (plain == 8).any()
    assert np.array_equal(plain == 9, default == 9)  # the cloud core does not change


def test_dilate_cloud_0_keeps_shadows(scene, tmp_path):
    res = mask(scene, "-o", tmp_path / "m.tif", "--dilate-cloud", "0")
    assert res.exit_code == 0, res.output
    scl = read(tmp_path / "m.tif")
    assert not (scl == 8).any() and (scl == 9).any() and (scl == 3).any()


def test_negative_dilation_exits_2(scene, tmp_path):
    res = mask(scene, "-o", tmp_path / "m.tif", "--dilate-cloud", "-1")
    assert res.exit_code == 2 and not (tmp_path / "m.tif").exists()


def test_bad_detector_exits_2_listing_the_choices(scene, tmp_path):
    res = mask(scene, "-o", tmp_path / "m.tif", "--detector", "fmask")
    assert res.exit_code == 2, res.output
    assert "'fmask': choose one of builtin, s2cloudless" in res.stderr
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize(
    ("option", "radius", "message"),
    [
        ("--dilate-cloud", 100000, "--dilate-cloud 100000: a cloud dilation radius above the limit of 1000 px"),
        ("--dilate-shadow", 1001, "--dilate-shadow 1001: a shadow dilation radius above the limit of 1000 px"),
        ("--dilate-cloud", 300, "--dilate-cloud 300: a cloud dilation radius larger than the scene itself (256 x 256"),
    ],
)
def test_a_dilation_too_large_is_refused_before_reading(scene, tmp_path, option, radius, message):
    res = mask(scene, "-o", tmp_path / "m.tif", option, radius)
    assert_one_line_error(res, message, stdout_empty=True)
    assert not (tmp_path / "m.tif").exists()


def test_a_large_dilation_within_the_limit_grows_clouds_over_the_scene(scene, tmp_path):
    res = mask(scene, "-o", tmp_path / "m.tif", "--dilate-cloud", "256", "--no-shadows")
    assert res.exit_code == 0, res.output
    scl = read(tmp_path / "m.tif")
    assert set(np.unique(scl).tolist()) <= {8, 9, 10}  # every valid pixel lies within 256 px of a cloud


def test_read_only_output_folder_is_one_line_and_keeps_the_old_mask(scene, tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    old = out / "m.tif"
    old.write_bytes(b"an older mask")
    with read_only(out):
        res = mask(scene, "-o", out / "new.tif")
        assert_one_line_error(res, str(out / "new.tif"), "cannot write mask", stdout_empty=True)
        res = mask(scene, "-o", old, "--overwrite")
        assert_one_line_error(res, str(old), "cannot write mask", stdout_empty=True)
    assert sorted(p.name for p in out.iterdir()) == ["m.tif"]
    assert old.read_bytes() == b"an older mask"


def test_full_disk_is_one_line_and_keeps_the_old_mask(scene, small_fs):
    vol = small_fs(1 << 20)
    old = vol / "m.tif"
    assert mask(scene, "-o", old).exit_code == 0
    before = old.read_bytes()
    fill_disk(vol)
    res = mask(scene, "-o", old, "--overwrite", "--dilate-cloud", "5")
    assert_one_line_error(res, str(old), "no space left on device", stdout_empty=True)
    assert sorted(p.name for p in vol.iterdir()) == [".filler", "m.tif"]
    assert old.read_bytes() == before


def test_full_disk_in_a_real_process_prints_only_our_line(scene, small_fs):
    """CliRunner cannot see what libtiff prints below Python; a real process can."""
    import subprocess
    import sys

    vol = small_fs(1 << 20)
    fill_disk(vol)
    out = vol / "m.tif"
    done = subprocess.run(
        [sys.executable, "-m", "cloudclear.cli", "mask", str(scene), "-o", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"cloudclear: error: {out}: cannot write output (no space left on device)"]
    assert sorted(p.name for p in vol.iterdir()) == [".filler"]


BANDS = ["B02", "B03", "B04", "B08"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing bands", "the builtin detector needs B02, B03, B04, B08; missing B08 (or B8A)"),
        ("wrong scale", "band B02 reflectance looks 10000 times too small"),
        ("all nodata", "every pixel is nodata; nothing to mask"),
        ("missing path", "no such file or directory"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path, case, message):
    rng = np.random.default_rng(0)
    path = tmp_path / "in" / "S2_T31UFQ_20210516T103021.tif"
    if case == "missing bands":
        write_raster(path, rng.integers(300, 3000, (3, 64, 64), dtype=np.uint16), descriptions=BANDS[:3])
    elif case == "wrong scale":
        write_raster(path, rng.uniform(0.02, 0.3, (4, 64, 64)).astype(np.float32), descriptions=BANDS)
    elif case == "all nodata":
        write_raster(path, np.zeros((4, 64, 64), np.uint16), descriptions=BANDS)
    res = mask(path)
    assert_one_line_error(res, f"cloudclear: error: {path}: ", message)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ([] if case == "missing path" else sorted(["in", path.name]))


def test_s2cloudless_on_a_four_band_scene_names_the_missing_bands(scene):
    pytest.importorskip("s2cloudless")
    res = mask(scene, "--detector", "s2cloudless")
    assert_one_line_error(res, f"{scene}: the s2cloudless detector needs", "missing B01, B05, B8A, B09, B10")


# -- cloudclear index --detect -------------------------------------------------------------------


def _rows(catalog: Path) -> dict[str, dict]:
    """Scene id -> the catalog columns about its mask (cloud_pct None where unknown)."""
    keys = ("mask_source", "mask_file", "mask_band", "cloud_pct", "cloud_cells")
    out = {}
    for r in Catalog.open(catalog).scenes.to_dict("records"):
        out[r["scene_id"]] = {k: (None if k == "cloud_pct" and pd.isna(r[k]) else r[k]) for k in keys}
    return out


def _obscured_pct(path: Path) -> float:
    scl = read(path)
    return float(100 * np.isin(scl, (3, 8, 9, 10)).sum() / (scl != 0).sum())


def test_index_detect_writes_masks_and_reuses_them(scenes):
    # About writing and reusing detector masks, not the clear decision: --as-decoded keeps the
    # cloud % that of the detector's mask as written (the default policy adds a buffer).
    res = index(scenes, "--detect", "builtin", "--as-decoded")
    assert res.exit_code == 0, res.output
    assert "  detector masks: 2 scene(s), in cloudclear_masks/" in res.stdout.splitlines()
    folder = scenes / "cloudclear_masks"
    files = sorted(folder.glob("*_SCL.tif"))
    assert [p.name for p in files] == [f"{FIRST}_SCL.tif", f"{SECOND}_SCL.tif"]
    rows = _rows(scenes / "cloudclear.gpkg")
    for sid, path in zip((FIRST, SECOND), files, strict=True):
        assert rows[sid]["mask_source"] == "SCL" and rows[sid]["mask_file"] == f"cloudclear_masks/{path.name}"
        assert rows[sid]["cloud_pct"] == pytest.approx(_obscured_pct(path), abs=1e-3)
        with rasterio.open(path) as src:
            assert src.tags()["CLOUDCLEAR_DETECTOR"] == "builtin"
    assert rows[FIRST]["cloud_pct"] > 10 and rows[SECOND]["cloud_pct"] > rows[FIRST]["cloud_pct"]
    mtimes = [p.stat().st_mtime_ns for p in files]

    # Again with --detect: the masks are reused, not recomputed; the mask folder is not scanned.
    res = index(scenes, "--detect", "builtin", "--as-decoded", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["masks_detected"], out["scenes_reused"], out["scenes_computed"]) == (2, 2, 0)
    assert out["skipped"] == [] and out["files_seen"] == 2
    assert [p.stat().st_mtime_ns for p in files] == mtimes

    # The default (the built-in detector) reuses them too.
    res = index(scenes, "--as-decoded", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["masks_detected"], out["scenes_reused"], out["scenes_computed"]) == (2, 2, 0)
    assert _rows(scenes / "cloudclear.gpkg") == rows
    assert [p.stat().st_mtime_ns for p in files] == mtimes

    # With --no-detect: the detected masks are kept.
    res = index(scenes, "--no-detect", "--as-decoded", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["masks_detected"] == 2
    assert _rows(scenes / "cloudclear.gpkg") == rows
    assert [p.stat().st_mtime_ns for p in files] == mtimes


def test_index_detect_redoes_the_mask_of_a_changed_scene(scenes):
    # About when a detector mask is stale, not the clear decision: --as-decoded throughout.
    assert index(scenes, "--detect", "builtin", "--as-decoded").exit_code == 0
    mask_path = scenes / "cloudclear_masks" / f"{FIRST}_SCL.tif"
    # The scene changes after its mask was made (back-dating the mask keeps the clock out of it).
    scene = next(scenes.glob("*20210401*.tif"))
    with rasterio.open(scene, "r+") as dst:
        dst.update_tags(NOTE="reprocessed")
    earlier = scene.stat().st_mtime_ns - 3600 * 10**9
    os.utime(mask_path, ns=(earlier, earlier))

    # Without a detector (--no-detect) a mask older than its scene is not used.
    res = index(scenes, "--no-detect", "--as-decoded", "--json")
    assert res.exit_code == 0, res.output
    rows = _rows(scenes / "cloudclear.gpkg")
    assert rows[FIRST]["mask_source"] == "no mask" and rows[FIRST]["cloud_pct"] is None
    assert rows[SECOND]["mask_source"] == "SCL"
    # With the detector (the default) it is computed again.
    res = index(scenes, "--as-decoded", "--json")
    assert res.exit_code == 0, res.output
    assert mask_path.stat().st_mtime_ns >= scene.stat().st_mtime_ns
    assert _rows(scenes / "cloudclear.gpkg")[FIRST]["cloud_pct"] == pytest.approx(_obscured_pct(mask_path), abs=1e-3)


def test_index_detect_leaves_a_scene_it_cannot_mask_unmasked(scenes, caplog):
    rng = np.random.default_rng(0)
    write_raster(
        scenes / "S2_T31UFQ_20210501T103029.tif",
        rng.integers(300, 3000, (3, 64, 64), dtype=np.uint16),
        origin=(600000.0, 5800000.0),
        descriptions=BANDS[:3],
    )
    with caplog.at_level(logging.WARNING, logger="cloudclear.catalog"):
        res = index(scenes, "--detect", "builtin", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["masks_detected"] == 2
    rows = _rows(scenes / "cloudclear.gpkg")
    bad = rows["S2_31UFQ_20210501T103029"]
    assert bad["mask_source"] == "no mask" and bad["cloud_pct"] is None
    assert "no mask detected for S2_31UFQ_20210501T103029" in caplog.text and "missing B08" in caplog.text
    assert sorted(p.name for p in (scenes / "cloudclear_masks").iterdir()) == [f"{FIRST}_SCL.tif", f"{SECOND}_SCL.tif"]


def test_index_no_detect_writes_no_masks_and_the_default_does(scenes):
    res = index(scenes, "--no-detect", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["masks_detected"] == 0
    assert not (scenes / "cloudclear_masks").exists()
    assert all(r["cloud_pct"] is None for r in _rows(scenes / "cloudclear.gpkg").values())
    # The default runs the built-in detector on every S2 scene.
    res = index(scenes, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["masks_detected"] == 2
    assert sorted(p.name for p in (scenes / "cloudclear_masks").iterdir()) == [f"{FIRST}_SCL.tif", f"{SECOND}_SCL.tif"]
    assert all(r["cloud_pct"] is not None for r in _rows(scenes / "cloudclear.gpkg").values())


def test_index_detect_keeps_a_scene_s_own_mask(series, tmp_path):
    folder = tmp_path / "with_scl"
    folder.mkdir()
    shutil.copy(series.s2[0], folder)
    shutil.copy(series.masks[0], folder)
    # As decoded (source "mask"), the scene keeps its own mask and the detector does not run on it
    # (it runs on a masked scene only where the policy reads its mask): the cloud % is the scene's
    # own mask's alone.
    res = index(folder, "--detect", "builtin", "--as-decoded", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["masks_detected"] == 0
    detected = folder / "cloudclear_masks" / f"{FIRST}_SCL.tif"
    assert not detected.exists()
    row = _rows(folder / "cloudclear.gpkg")[FIRST]
    assert row["mask_source"] == "SCL" and row["mask_file"] == series.masks[0].name
    assert Catalog.open(folder / "cloudclear.gpkg").scenes.set_index("scene_id").loc[FIRST]["detected_file"] is None
    assert row["cloud_pct"] == pytest.approx(series.cloud_pct[0], abs=1e-3)

    # --mask-source combined (no buffer to keep the figure exact): the scene keeps its own mask, the
    # detector's is recorded beside it, and a pixel either mask calls cloud or shadow is obscured,
    # over the pixels the scene's own mask knows.
    res = index(folder, "--mask-source", "combined", "--buffer", "0", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["masks_detected"] == 1
    assert sorted(p.name for p in detected.parent.iterdir()) == [detected.name]
    stored = Catalog.open(folder / "cloudclear.gpkg").scenes.set_index("scene_id").loc[FIRST]
    assert stored["mask_source"] == "SCL" and stored["detected_file"] == f"cloudclear_masks/{detected.name}"
    own, det = read(series.masks[0]), read(detected)
    obscured = (np.isin(own, (3, 8, 9, 10)) | (np.isin(det, (3, 8, 9, 10)) & (own != 0))).sum()
    combined = float(100 * obscured / (own != 0).sum())
    assert combined > series.cloud_pct[0]  # the detector adds pixels the scene's mask calls clear
    row = _rows(folder / "cloudclear.gpkg")[FIRST]
    assert row["mask_file"] == series.masks[0].name
    assert row["cloud_pct"] == pytest.approx(combined, abs=1e-3)


def test_index_bad_detector_exits_2(scenes):
    res = index(scenes, "--detect", "fmask")
    assert res.exit_code == 2, res.output
    assert "builtin, s2cloudless" in res.stderr


# Top-of-atmosphere reflectances of the 13 L1C bands.
L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
TOA_VEGETATION = (0.12, 0.09, 0.08, 0.05, 0.09, 0.2, 0.25, 0.28, 0.29, 0.09, 0.0015, 0.15, 0.07)
TOA_CLOUD = (0.45, 0.43, 0.42, 0.42, 0.44, 0.46, 0.47, 0.48, 0.48, 0.2, 0.04, 0.35, 0.25)


def test_index_detect_with_another_detector_updates_cloud_pct(tmp_path):
    pytest.importorskip("s2cloudless")
    yy, xx = np.mgrid[:96, :96]
    disk = (yy - 40) ** 2 + (xx - 50) ** 2 <= 15**2
    rng = np.random.default_rng(0)
    toa = np.stack(
        [np.where(disk, TOA_CLOUD[k], TOA_VEGETATION[k]) * rng.normal(1.0, 0.03, disk.shape) for k in range(13)]
    )
    write_raster(tmp_path / "S2_T31UFQ_20210516T103021.tif", (toa * 10000).astype(np.uint16), descriptions=L1C)
    mask_path = tmp_path / "cloudclear_masks" / "S2_31UFQ_20210516T103021_SCL.tif"
    # About which detector made the mask, not the clear decision: --as-decoded keeps the cloud %
    # that of the mask written (the default policy adds a buffer).
    for detector in ("builtin", "s2cloudless"):
        res = index(tmp_path, "--detect", detector, "--as-decoded")
        assert res.exit_code == 0, res.output
        with rasterio.open(mask_path) as src:
            assert src.tags()["CLOUDCLEAR_DETECTOR"] == detector
        row = _rows(tmp_path / "cloudclear.gpkg")["S2_31UFQ_20210516T103021"]
        assert row["cloud_pct"] == pytest.approx(_obscured_pct(mask_path), abs=1e-3), detector
