"""The command line: exit codes, one-line errors, outputs that reopen."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_one_line_error, write_raster
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


def test_index_prints_summary_and_refuses_wrong_inputs(scenes_dir):
    # A .tif that is no raster and an undated S2 are wrong inputs: one line each, exit 1, and the
    # catalog of the other scenes is written all the same.
    res = runner.invoke(app, ["index", str(scenes_dir)])
    assert res.exit_code == 1, res.output
    assert "4 scenes from 9 raster files" in res.stdout
    assert "S2  tile 31UFQ       3 scenes" in res.stdout
    assert "README.tif: not a readable raster" in res.stderr
    assert "undated_s2.tif: no acquisition date" in res.stderr
    assert "2 input(s) refused" in res.stderr
    cat = Catalog.open(scenes_dir / "cloudclear.gpkg")
    assert len(cat.scenes) == 4


def test_index_exits_0_when_nothing_is_refused(scenes_dir):
    (scenes_dir / "README.tif").unlink()
    (scenes_dir / "undated_s2.tif").unlink()
    res = runner.invoke(app, ["index", str(scenes_dir)])
    assert res.exit_code == 0, res.output
    assert "refused" not in res.output


def test_index_json(scenes_dir, tmp_path):
    out = tmp_path / "x" / "cat.gpkg"
    res = runner.invoke(app, ["index", str(scenes_dir), "--catalog", str(out), "--json"])
    assert res.exit_code == 1  # two inputs refused (README.tif, undated_s2.tif)
    data = json.loads(res.stdout)
    assert data["scenes"] == 4 and data["summary"]["s2_cloud_distribution"]["0%"] == 1
    assert {s["path"].rsplit("/", 1)[1] for s in data["skipped"]} == {
        "README.tif",
        "undated_s2.tif",
    }
    assert out.exists()


def test_query_table_and_json(scenes_dir):
    # About query's filters: the cloud % are the SCL's as decoded (50 % is 64 of 128 rows; the
    # default policy's 3 px buffer would add 3 rows), so index keeps the masks as decoded.
    assert runner.invoke(app, ["index", str(scenes_dir), "--as-decoded", "--no-detect"]).exit_code == 1  # 2 refused
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
    assert runner.invoke(app, ["index", str(scenes_dir)]).exit_code == 1  # 2 refused, catalog written
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


# -- the CLI package: help, one place for errors, registry choices, quiet ---------------------------

COMMANDS = [
    ["index"],
    ["query"],
    ["synth"],
    ["score"],
    ["infer"],
    ["mask"],
    ["layouts"],
    ["layouts", "show"],
    ["sample"],
    ["train"],
    ["evaluate"],
    ["models"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command):
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert res.stdout.lstrip().startswith(f"Usage: cloudclear {' '.join(command)} ")
    assert "{" + "detectors}" not in res.stdout and "{" + "layouts}" not in res.stdout  # registry names filled in


def test_help_lists_the_registry_names():
    from cloudclear.detect.pixels import DETECTORS
    from cloudclear.layouts import PRESETS
    from cloudclear.nets import ARCHITECTURES, SIZES

    for command, names in (
        (["mask"], DETECTORS),
        (["index"], DETECTORS),
        (["sample"], PRESETS),
        (["layouts", "show"], PRESETS),
        (["train"], {**ARCHITECTURES, **SIZES}),
    ):
        res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
        assert res.exit_code == 0, res.output
        assert all(n in res.stdout for n in names), (command, res.stdout)


def _raise(exc):
    def call(*args, **kwargs):
        raise exc

    return call


def test_a_library_error_is_one_line(monkeypatch):
    from cloudclear.errors import CheckpointError, LayoutError

    monkeypatch.setattr("cloudclear.layouts.load_layout", _raise(LayoutError("x.toml: something is wrong")))
    res = runner.invoke(app, ["layouts", "show", "OS2"])
    assert_one_line_error(res, "cloudclear: error: x.toml: something is wrong", stdout_empty=True)
    monkeypatch.setattr("cloudclear.nets.card.list_checkpoints", _raise(CheckpointError("m.json: not a card")))
    res = runner.invoke(app, ["models"])
    assert_one_line_error(res, "cloudclear: error: m.json: not a card", stdout_empty=True)


def test_out_of_memory_is_one_line(monkeypatch):
    monkeypatch.setattr("cloudclear.layouts.load_layout", _raise(MemoryError("Unable to allocate 74.5 GiB")))
    res = runner.invoke(app, ["layouts", "show", "OS2"])
    assert_one_line_error(res, "cloudclear: error: out of memory: Unable to allocate 74.5 GiB")
    monkeypatch.setattr("cloudclear.layouts.load_layout", _raise(MemoryError()))
    assert_one_line_error(runner.invoke(app, ["layouts", "show", "OS2"]), "out of memory")


def _script() -> str:
    import shutil
    from pathlib import Path

    found = Path(sys.executable).with_name("cloudclear")
    return str(found) if found.exists() else (shutil.which("cloudclear") or pytest.skip("no cloudclear script"))


def test_the_installed_script_prints_one_line_and_exits_1():
    res = subprocess.run([_script(), "layouts", "show", "nope"], capture_output=True, text=True)
    assert res.returncode == 1, res
    assert res.stderr.startswith("cloudclear: error: nope: no such layout file")
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""


# A library call that fails the way a full disk does: GDAL logs its own records through the
# rasterio loggers, then the library raises the error the CLI prints.
_GDAL_NOISE = """
import logging, sys
import cloudclear.layouts
from cloudclear.cli import main
from cloudclear.errors import OutputError

def fail(*args, **kwargs):
    logging.getLogger("rasterio._io").error("_tiffWriteProc: No space left on device")
    logging.getLogger("rasterio._env").error("TIFFAppendToStrip:Write error at scanline 3")
    raise OutputError("out.tif: cannot write output (no space left on device)")

cloudclear.layouts.load_layout = fail
sys.argv = ["cloudclear", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_gdal_log_records_are_quiet_unless_verbose(verbose):
    args = ["-v"] if verbose else []
    res = subprocess.run(
        [sys.executable, "-c", _GDAL_NOISE, *args, "layouts", "show", "OS2"], capture_output=True, text=True
    )
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == "cloudclear: error: out.tif: cannot write output (no space left on device)"
    assert "Traceback" not in res.stderr
    if verbose:
        assert any("No space left on device" in line for line in lines[:-1]), lines
    else:
        assert len(lines) == 1, lines


@pytest.mark.parametrize(
    ("args", "registry", "value"),
    [
        (["train", "-s", "store", "-o", "x.safetensors", "--net", "resnet"], "architectures", "resnet"),
        (["train", "-s", "store", "-o", "x.safetensors", "--size", "huge"], "sizes", "huge"),
        (["train", "-s", "store", "-o", "x.safetensors", "--loss-pixels", "sky"], "loss_pixels", "sky"),
        (["mask", "scene.tif", "--detector", "fmask"], "detectors", "fmask"),
        (["index", "folder", "--detect", "fmask"], "detectors", "fmask"),
        (["evaluate", "-s", "store", "-m", "gapfill", "--split", "dev"], "splits", "dev"),
    ],
    ids=["net", "size", "loss-pixels", "detector", "detect", "split"],
)
def test_an_unknown_registry_name_exits_2_listing_the_choices(tmp_path, monkeypatch, args, registry, value):
    from cloudclear.cli.options import names

    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.stderr.replace("│", " ").split())  # the usage box may wrap
    valid = names(registry) + (["all"] if registry == "splits" else [])
    assert f"{value!r}: choose one of {', '.join(valid)}" in text
    assert list(tmp_path.iterdir()) == []


def test_help_imports_no_heavy_module():
    code = (
        "import sys\n"
        "from cloudclear.cli import main\n"
        "sys.argv = ['cloudclear', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'rasterio', 'geopandas', 'numpy', 'pandas', 'matplotlib'}\n"
        "print(sorted(heavy & set(sys.modules)), file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: cloudclear" in res.stdout
    assert res.stderr.strip() == "[]"


def test_quiet_silences_the_skipped_files_not_the_refused_ones(scenes_dir):
    (scenes_dir / "README.tif").unlink()
    (scenes_dir / "undated_s2.tif").unlink()
    write_raster(scenes_dir / "dem.tif", np.full((64, 64), 250.0, np.float32))  # no scene: skipped
    res = runner.invoke(app, ["-q", "index", str(scenes_dir)])
    assert res.exit_code == 0, res.output
    assert "4 scenes from 8 raster files" in res.stdout  # 3 S2 + their masks, 1 S1, the DEM
    assert res.stderr == ""
    res = runner.invoke(app, ["index", str(scenes_dir)])  # -q does not stick to the next run
    assert "dem.tif: not recognised" in res.stderr
    (scenes_dir / "README.tif").write_text("not a raster")
    res = runner.invoke(app, ["-q", "index", str(scenes_dir)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith(str(scenes_dir / "README.tif") + ": not a readable raster")
    assert "dem.tif" not in res.stderr and len(lines) == 2  # the refused line, then the count
