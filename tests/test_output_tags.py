"""What `infer` says about its outputs (the inputs' level, the method, each file's role), the status
sidecar (nodata, COG), and `score` globs that match both an output and its sidecar."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from conftest import write_raster
from typer.testing import CliRunner

from cloudclear.cli import app

runner = CliRunner()
DATE = "2021-04-21"


def _series(root: Path, level: str) -> Path:
    from cloudclear.synth import generate_series

    generate_series(root, height=96, width=96, n_dates=4, interval_days=10, start="2021-04-01", s1=False, seed=3)
    if level != "L2A":  # synth writes L2A; the same values said to be top of atmosphere
        for path in (root / "S2").glob("*.tif"):
            with rasterio.open(path, "r+") as dst:
                dst.update_tags(PROCESSING_LEVEL=level)
    return root


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for level in ("L2A", "L1C"):
        root = _series(tmp_path_factory.mktemp(level) / "T31UFQ", level)
        cat = root.parent / "cat.gpkg"
        res = runner.invoke(app, ["index", str(root), "-c", str(cat), "--no-detect", "--as-decoded"])
        assert res.exit_code == 0, res.output
        out[level] = cat
    return out


def _infer(catalog: Path, out: Path, *extra: str):
    res = runner.invoke(app, ["infer", "-c", str(catalog), "-d", DATE, "-o", str(out), "-m", "gapfill", *extra])
    assert res.exit_code == 0, res.output
    return res


def _levels_reach_the_pipeline() -> bool:
    """Whether an Acquisition carries its scene's processing level (``acquisitions.py``)."""
    from cloudclear.acquisitions import Acquisition

    return "level" in {f.name for f in dataclasses.fields(Acquisition)}


@pytest.mark.parametrize("level", ["L2A", "L1C"])
def test_tags_say_the_inputs_level_and_the_method(catalogs, tmp_path, level):
    out = tmp_path / "x.tif"
    _infer(catalogs[level], out)
    with rasterio.open(out) as src:
        tags = src.tags()
    assert tags["CLOUDCLEAR_METHOD"] == "gapfill"
    assert tags["CLOUDCLEAR_ROLE"] == "reconstruction"
    assert tags["PROCESSING_LEVEL"] != "L2A-cloudclear"
    assert tags["PROCESSING_LEVEL"] == tags["CLOUDCLEAR_INPUT_LEVEL"]
    expected = level if _levels_reach_the_pipeline() else "unknown"
    assert tags["PROCESSING_LEVEL"] == expected
    offset = "RADIO_ADD_OFFSET" if expected == "L1C" else "BOA_ADD_OFFSET"
    assert tags[offset] == "0" and tags["QUANTIFICATION_VALUE"] == "10000"


def test_input_level_of_mixed_and_unknown_inputs():
    from cloudclear.inference.pipeline import input_level

    def inputs(*levels):
        acqs = [SimpleNamespace(sensor="S2", level=lv) for lv in levels] + [SimpleNamespace(sensor="S1", level="GRD")]
        return SimpleNamespace(acquisitions=acqs)

    assert input_level(inputs("L1C", "L1C")) == "L1C"
    assert input_level(inputs("L2A", "L2A", "")) == "L2A"
    assert input_level(inputs("L1C", "L2A")) == "mixed"
    assert input_level(inputs("", "")) == "unknown"
    assert input_level(SimpleNamespace(acquisitions=[SimpleNamespace(sensor="S2")])) == "unknown"


def test_status_sidecar_has_nodata_0_and_its_role(catalogs, tmp_path):
    out = tmp_path / "x.tif"
    _infer(catalogs["L2A"], out)
    with rasterio.open(tmp_path / "x_status.tif") as src:
        assert (src.count, src.dtypes[0], src.nodata) == (1, "uint8", 0)
        tags = src.tags()
        assert tags["CLOUDCLEAR_ROLE"] == "status" and tags["CLOUDCLEAR_METHOD"] == "gapfill"
        assert "0=nodata" in tags["STATUS_CLASSES"]
        assert set(np.unique(src.read(1)).tolist()) <= {0, 1, 2}


def test_with_cog_the_sidecar_is_a_cog_too(catalogs, tmp_path):
    out = tmp_path / "c.tif"
    _infer(catalogs["L2A"], out, "--cog")
    plain = tmp_path / "p.tif"
    _infer(catalogs["L2A"], plain)
    for path in (out, tmp_path / "c_status.tif"):
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", path
    with rasterio.open(tmp_path / "c_status.tif") as cog, rasterio.open(tmp_path / "p_status.tif") as ref:
        assert cog.nodata == 0 and cog.tags()["CLOUDCLEAR_ROLE"] == "status"
        assert np.array_equal(cog.read(), ref.read())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "c_status.tif", "p.tif", "p_status.tif"]


def test_score_glob_leaves_out_status_sidecars(catalogs, tmp_path):
    folder = tmp_path / "out"
    _infer(catalogs["L2A"], folder / "a.tif")
    # a sidecar written before the role tag: found by its name beside its image
    with rasterio.open(folder / "a_status.tif") as src:
        old = src.read()
        grid = dict(crs=src.crs.to_string(), origin=(src.transform.c, src.transform.f), res=src.transform.a)
    bands = ["B02", "B03", "B04", "B08"]
    write_raster(folder / "b.tif", np.full((4, 96, 96), 500, np.uint16), descriptions=bands, nodata=0, **grid)
    write_raster(folder / "b_status.tif", old, **grid)
    truth = next((catalogs["L2A"].parent / "T31UFQ" / "truth").glob("*20210421*"))
    res = runner.invoke(app, ["score", "--ref", str(truth), str(folder / "*.tif"), "--json"])
    assert res.exit_code == 0, res.output
    scored = [row["pred"] for row in json.loads(res.stdout)["results"]]
    assert [Path(p).name for p in scored] == ["a.tif", "b.tif"]
    assert "left out 2 status sidecar(s)" in res.stderr
    quiet = runner.invoke(app, ["-q", "score", "--ref", str(truth), str(folder / "*.tif"), "--json"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    # named one by one, a sidecar is scored as asked (and refused for its single band)
    only = runner.invoke(app, ["score", "--ref", str(truth), str(folder / "*_status.tif")])
    assert only.exit_code == 2 and "matches only status sidecars" in only.stderr


def test_is_status_sidecar(tmp_path):
    from cloudclear.metrics import is_status_sidecar

    data = np.zeros((1, 8, 8), np.uint8)
    write_raster(tmp_path / "x_status.tif", data, tags={"CLOUDCLEAR_ROLE": "status"})
    write_raster(tmp_path / "y_status.tif", data, tags={"STATUS_CLASSES": "0=nodata"})
    write_raster(tmp_path / "z_status.tif", data)  # no image beside it, no tag: an image of its own
    write_raster(tmp_path / "w.tif", data, tags={"CLOUDCLEAR_ROLE": "status"})
    write_raster(tmp_path / "v_status.tif", data, tags={"CLOUDCLEAR_ROLE": "reconstruction"})
    (tmp_path / "broken_status.tif").write_text("not a raster")
    (tmp_path / "broken.tif").write_text("not a raster")
    found = {p.name for p in tmp_path.iterdir() if is_status_sidecar(p)}
    assert found == {"x_status.tif", "y_status.tif", "w.tif", "broken_status.tif"}


def test_the_writer_and_the_scorer_agree_on_the_role_tag():
    from cloudclear.inference import writer
    from cloudclear.metrics import pairs

    assert (writer.ROLE_TAG, writer.ROLE_STATUS) == (pairs.ROLE_TAG, pairs.STATUS_ROLE)


def test_quiet_holds_when_logging_was_set_up_before():
    """-q silences warnings (a list of scenes without a mask, say) even where something configured
    the root logger first, which makes logging.basicConfig a no-op."""
    import logging

    from cloudclear.cli.options import set_verbosity

    root = logging.getLogger()
    handler = logging.NullHandler()
    before = root.level
    root.addHandler(handler)
    try:
        set_verbosity(0, True)
        assert not logging.getLogger("cloudclear.catalog.build").isEnabledFor(logging.WARNING)
        set_verbosity(0, False)
        assert logging.getLogger("cloudclear.catalog.build").isEnabledFor(logging.WARNING)
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
