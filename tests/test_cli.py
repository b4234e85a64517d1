"""The command line: exit codes, one-line errors, outputs that reopen."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_raster
from test_catalog import _s1, _scene
from typer.testing import CliRunner

from cloudclear import __version__
from cloudclear.catalog import Catalog
from cloudclear.cli import app

runner = CliRunner()


def test_version_and_help():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"cloudclear {__version__}"
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "index" in res.stdout and "query" in res.stdout


def test_startup_imports_no_heavy_module():
    code = "import sys, cloudclear.cli; print(sorted({'torch', 'rasterio', 'geopandas', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture
def scenes_dir(tmp_path):
    from datetime import datetime, timezone

    d = tmp_path / "scenes"
    for day, rows in ((0, 0), (5, 64), (10, 128)):
        _scene(d, day, cloud_rows=rows)
    _s1(d, datetime(2021, 5, 2, 17, 30, tzinfo=timezone.utc))
    (d / "README.tif").write_text("not a raster")
    write_raster(
        d / "undated_s2.tif",
        np.ones((4, 64, 64), np.uint16),
        descriptions=["B02", "B03", "B04", "B08"],
    )
    return d


def test_index_prints_summary_and_skips(scenes_dir):
    res = runner.invoke(app, ["index", str(scenes_dir)])
    assert res.exit_code == 0, res.output
    assert "4 scenes from 9 raster files" in res.stdout
    assert "S2  tile 31UFQ       3 scenes" in res.stdout
    assert "README.tif: not a readable raster" in res.stderr
    assert "undated_s2.tif: no acquisition date" in res.stderr
    cat = Catalog.open(scenes_dir / "cloudclear.gpkg")
    assert len(cat.scenes) == 4


def test_index_json(scenes_dir, tmp_path):
    out = tmp_path / "x" / "cat.gpkg"
    res = runner.invoke(app, ["index", str(scenes_dir), "--catalog", str(out), "--json"])
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["scenes"] == 4 and data["summary"]["s2_cloud_distribution"]["0%"] == 1
    assert {s["path"].rsplit("/", 1)[1] for s in data["skipped"]} == {
        "README.tif",
        "undated_s2.tif",
    }
    assert out.exists()


def test_query_table_and_json(scenes_dir):
    assert runner.invoke(app, ["index", str(scenes_dir)]).exit_code == 0
    res = runner.invoke(app, ["query", str(scenes_dir), "--cloud", ":60", "--sensor", "S2"])
    assert res.exit_code == 0 and res.stdout.strip().endswith("2 scene(s) (S2: 2)")
    res = runner.invoke(app, ["query", str(scenes_dir / "cloudclear.gpkg"), "--start", "2021-05-06", "--json"])
    records = json.loads(res.stdout)
    assert [r["cloud_pct"] for r in records] == [50.0, 100.0]
    res = runner.invoke(app, ["query", str(scenes_dir), "--bbox", "4.3,51.3,4.5,51.5", "--json"])
    assert len(json.loads(res.stdout)) == 4
    res = runner.invoke(app, ["query", str(scenes_dir), "--bbox", "10,10,11,11", "--json"])
    assert json.loads(res.stdout) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["query", "{d}", "--bbox", "1,2,3"], 2, "expected 4 numbers"),
        (["query", "{d}", "--cloud", "lots"], 2, "expected MIN:MAX"),
        (
            ["query", "{d}", "--start", "2021-06-01", "--end", "2021-05-01"],
            1,
            "date range is inverted",
        ),
        (["query", "{d}/nothing.gpkg"], 1, "no catalog here"),
    ],
)
def test_query_bad_input(scenes_dir, args, code, message):
    assert runner.invoke(app, ["index", str(scenes_dir)]).exit_code == 0
    res = runner.invoke(app, [a.format(d=scenes_dir) for a in args])
    assert res.exit_code == code
    assert message in res.stderr


def test_index_bad_input_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["index", str(empty)])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].startswith(f"cloudclear: error: {empty}: no usable")
    res = runner.invoke(app, ["index", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "no such directory" in res.stderr
    assert "Traceback" not in res.output


def test_index_only_bad_files_lists_them_and_fails(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.tif").write_bytes(b"II*\x00garbage")
    write_raster(
        d / "S2_20210101.tif",
        np.ones((4, 64, 64), np.uint16),
        crs=None,
        descriptions=["B02", "B03", "B04", "B08"],
    )
    res = runner.invoke(app, ["index", str(d)])
    assert res.exit_code == 1
    assert "a.tif: not a readable raster" in res.stderr and "S2_20210101.tif: raster has no CRS" in res.stderr
    assert not (d / "cloudclear.gpkg").exists()
