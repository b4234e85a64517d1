"""``cloudclear sample`` reads B8A in place of B08 (and B08 in place of B8A) from scenes that lack the
band asked for, as ``infer`` does for a network's card, and says so in the store and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, write_raster
from typer.testing import CliRunner

from cloudclear import masks
from cloudclear.catalog import build_index
from cloudclear.cli import app
from cloudclear.errors import SampleError
from cloudclear.sampling import PatchStore, SampleOptions, sample

SIZE = 64
PATCH = 16
DATES = [f"202104{d:02d}" for d in range(1, 31, 3)]  # 10 dates, 3 days apart
#: Reflectance x 10000 of each band's file; a NIR band is told apart by its value.
LEVEL = {"B02": 500, "B03": 700, "B04": 600, "B05": 1500, "B08": 3000, "B8A": 3300}


def _series(root: Path, nir_of: list[str]) -> Path:
    """A 64 x 64 px series at one place, one date per entry of ``nir_of``: the bands B02, B03, B04
    and that NIR band, with an SCL that is clear except for a cloud block on every third date."""
    rng = np.random.default_rng(3)
    for k, (day, nir) in enumerate(zip(DATES, nir_of, strict=False)):
        names = ["B02", "B03", "B04", nir]
        data = np.stack([np.full((SIZE, SIZE), LEVEL[b], np.uint16) for b in names])
        data += rng.integers(0, 50, size=data.shape, dtype=np.uint16)
        stem = f"S2_T31UFQ_{day}T103000"
        write_raster(root / f"{stem}.tif", data, descriptions=names, nodata=0)
        scl = np.full((SIZE, SIZE), 4, np.uint8)
        if k % 3 == 1:
            scl[8 + k : 24 + k, 20:40] = 9
        write_raster(root / f"{stem}_SCL.tif", scl)
    return build_index(root, detect=None, policy=masks.AS_DECODED).catalog_path


def _options(**kw) -> SampleOptions:
    base = dict(patch_size=PATCH, stride=8, block=1, count=20, simulate=("t",), s1=False)
    return SampleOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def b8a_only(tmp_path_factory) -> Path:
    return _series(tmp_path_factory.mktemp("b8a") / "T31UFQ", ["B8A"] * len(DATES))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Every other date has B08, the others B8A (a catalog of two products)."""
    return _series(tmp_path_factory.mktemp("mixed") / "T31UFQ", ["B08", "B8A"] * (len(DATES) // 2))


def test_b8a_is_read_for_b08_and_recorded(b8a_only, tmp_path):
    res = sample(b8a_only, "gapfill-3", tmp_path / "s", _options(bands=("B02", "B03", "B04", "B08")))
    assert res.count > 0
    assert res.stand_ins == {"B08": "B8A"}
    assert any("B8A read in place of B08" in n and f"{len(DATES)} of {len(DATES)} S2 scenes" in n for n in res.notes)
    store = PatchStore(res.path)
    assert store.bands == ["B02", "B03", "B04", "B08"]
    assert store.manifest["stand_ins"] == {"B08": "B8A"}
    assert store.manifest["stand_ins_used"]["B08"] == {"scenes": len(DATES), "samples": res.count}
    meta = store.metadata()
    assert (meta["t_stand_ins"] == "B8A>B08").all()
    # The stored B08 is the B8A file's values (about 3300), not another band's.
    t = store.read(0)["t"].astype(np.float64)
    nir = t[3][t[3] > 0]
    assert 3300 <= nir.min() and nir.max() < 3350


def test_only_the_scenes_that_lack_the_band_use_the_stand_in(mixed, tmp_path):
    res = sample(mixed, "gapfill-3", tmp_path / "s", _options(bands=("B02", "B03", "B04", "B08")))
    used = PatchStore(res.path).manifest["stand_ins_used"]["B08"]
    assert used["scenes"] == len(DATES) // 2
    meta = PatchStore(res.path).metadata()
    # A slot whose scene has B08 reads B08: its column is empty; one with B8A says so.
    has_b08 = meta["t_scene"].map(lambda sid: any(d in sid for d in DATES[0::2]))
    assert (meta.loc[has_b08, "t_stand_ins"] == "").all()
    assert (meta.loc[~has_b08, "t_stand_ins"] == "B8A>B08").all()
    assert 0 < used["samples"] <= res.count


def test_b08_stands_in_for_b8a(mixed, tmp_path):
    res = sample(mixed, "gapfill-3", tmp_path / "s", _options(bands=("B02", "B03", "B04", "B8A")))
    assert res.stand_ins == {"B8A": "B08"}
    assert PatchStore(res.path).manifest["stand_ins_used"]["B8A"]["scenes"] == len(DATES) // 2


def test_no_stand_in_when_every_scene_has_the_band(mixed, tmp_path):
    res = sample(mixed, "gapfill-3", tmp_path / "s", _options(bands=("B02", "B03", "B04")))
    assert res.stand_ins == {}
    store = PatchStore(res.path)
    assert store.manifest["stand_ins"] == {}
    assert not [c for c in store.metadata().columns if c.endswith("_stand_ins")]
    assert not any("in place of" in n for n in res.notes)


def test_both_nir_bands_asked_for_reads_no_stand_in(mixed, tmp_path):
    # A scene with only one of them cannot give both: it is not used, and no sample has both.
    with pytest.raises(SampleError, match=r"none of the .* S2 scenes has the bands asked for \(B02,B08,B8A\)"):
        sample(mixed, "gapfill-3", tmp_path / "s", _options(bands=("B02", "B08", "B8A")))


def test_a_scene_lacking_the_band_and_its_stand_in_is_refused(b8a_only, tmp_path):
    with pytest.raises(SampleError, match=r"has the bands asked for \(B02,B03,B04,B05\).*they have B02,B03,B04,B8A"):
        sample(b8a_only, "gapfill-3", tmp_path / "s", _options(bands=("B02", "B03", "B04", "B05")))


def test_cli_says_it_once_and_refuses_in_one_line(b8a_only, tmp_path):
    runner = CliRunner()
    args = ["sample", "-c", str(b8a_only), "-l", "gapfill-3", "--simulate", "t", "--no-s1", "-p", str(PATCH)]
    args += ["--stride", "8", "--block", "1", "-n", "10"]
    res = runner.invoke(app, [*args, "--bands", "B02,B03,B04,B08", "-o", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("B8A read in place of B08") == 1
    assert json.loads((tmp_path / "s" / "store.json").read_text())["stand_ins"] == {"B08": "B8A"}
    bad = runner.invoke(app, [*args, "--bands", "B02,B03,B04,B05", "-o", str(tmp_path / "t")])
    assert_one_line_error(bad, "B02,B03,B04,B05", "they have B02,B03,B04,B8A")
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_greenearthnet_minicube_gives_b02_b03_b04_b08(shared_data, tmp_path):
    cube = shared_data / "greenearthnet_minicubes" / "34TET_47.37N_22.05E"
    if not cube.is_dir():
        pytest.skip(f"{cube} is not present")
    cat = build_index(cube, tmp_path / "tet.gpkg").catalog_path
    opts = SampleOptions(
        patch_size=32, stride=16, block=2, count=40, simulate=("t",), s1=False, bands=("B02", "B03", "B04", "B08")
    )
    res = sample(cat, "gapfill-3", tmp_path / "s", opts)
    assert res.count > 0
    store = PatchStore(res.path)
    assert store.bands == ["B02", "B03", "B04", "B08"]
    assert store.manifest["stand_ins"] == {"B08": "B8A"}
    assert store.manifest["stand_ins_used"]["B08"]["samples"] == res.count
    # Real NIR over cropland: brighter than red where the land is green.
    item = store.read(0)
    t = item["t"].astype(np.float64)
    assert np.median(t[3]) > np.median(t[2])
