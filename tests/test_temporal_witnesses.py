"""infer's temporal test reads scenes beyond the method's inputs ("witnesses"), and a pixel an S1
input sees is never given back to the masks' decision (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import gapfill_unless_named
from typer.testing import CliRunner

from cloudclear.cli import app
from cloudclear.inference import select
from cloudclear.synth import generate_series

runner = CliRunner()
PATCH = (slice(20, 36), slice(20, 36))


def _run(*args: str) -> dict:
    res = runner.invoke(app, gapfill_unless_named(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout) if "--json" in args else {}


def _status(path: Path) -> np.ndarray:
    with rasterio.open(path.with_name(path.stem + "_status.tif")) as src:
        return src.read(1)


@pytest.fixture()
def hazy_series(tmp_path):
    """Five clear dates 15 days apart; 2021-05-01 has a haze patch its SCL calls clear, and
    2021-05-16 a cloud over the same patch: among gapfill's inputs with one neighbour a side, only
    2021-04-16 is clear there, too few for the temporal test without the dates around them."""
    series = generate_series(tmp_path / "T31UFQ", height=64, width=64, n_dates=5, cloud_cover=[0] * 5, s1=False)
    with rasterio.open(series.s2[2], "r+") as dst:
        data = dst.read()
        data[(slice(None), *PATCH)] += np.array([800, 700, 600, 400], np.uint16)[:, None, None]
        dst.write(data)
    with rasterio.open(series.masks[3], "r+") as dst:
        scl = dst.read(1)
        scl[PATCH] = 9
        dst.write(scl, 1)
    cat = tmp_path / "cat.gpkg"
    _run("index", tmp_path / "T31UFQ", "-c", cat, "--no-detect")
    return series, cat


def test_witnesses_let_the_temporal_test_see_a_haze_the_inputs_alone_cannot(hazy_series, tmp_path, monkeypatch):
    _, cat = hazy_series
    args = ["--neighbours", "1", "--as-decoded", "--temporal", "--temporal-days", "35", "--json"]
    out = tmp_path / "with.tif"
    d = _run("infer", "-c", cat, "-d", "2021-05-01", "-o", out, *args)["dates"][0]
    with rasterio.open(out) as src:
        tags = src.tags()
    inputs = tags["CLOUDCLEAR_INPUTS"].split(",")
    witnesses = tags["CLOUDCLEAR_TEMPORAL_WITNESSES"].split(",")
    # 2021-04-01 and 2021-05-31: within 35 days of the inputs, not inputs themselves.
    assert sorted(w.split("_")[2][:8] for w in witnesses) == ["20210401", "20210531"]
    assert not set(witnesses) & set(inputs)
    assert any("also compared 2 more scene(s) within 35 d" in n for n in d["notes"])
    assert (_status(out)[PATCH] == 2).all()  # the haze is reconstructed, not kept as observed
    # Without the witnesses the test has one other clear date at the patch and keeps the haze.
    monkeypatch.setattr(select, "MAX_WITNESSES", 0)
    alone = tmp_path / "alone.tif"
    d = _run("infer", "-c", cat, "-d", "2021-05-01", "-o", alone, *args)["dates"][0]
    assert (_status(alone)[PATCH] == 1).all()
    assert not any("more scene(s)" in n for n in d["notes"])
    with rasterio.open(alone) as src:
        assert "CLOUDCLEAR_TEMPORAL_WITNESSES" not in src.tags()


def test_witnesses_never_feed_the_method_and_counts_add_up(hazy_series, tmp_path):
    series, cat = hazy_series
    out = tmp_path / "o.tif"
    d = _run("infer", "-c", cat, "-d", "2021-05-01", "-o", out, "--neighbours", "1", "--temporal-days", "35", "--json")
    cp = d["dates"][0]["clear_policy"]
    assert set(cp["removed"]) <= {"t-1", "t", "t+1"}  # the three inputs only
    assert sum(cp["removed_by_rule"].values()) == sum(cp["removed"].values())
    assert cp["removed_by_rule"]["temporal"] > 0 and cp["removed_by_rule"]["buffer"] > 0
    # No temporal test: no witness is read.
    plain = tmp_path / "plain.tif"
    _run("infer", "-c", cat, "-d", "2021-05-01", "-o", plain, "--neighbours", "1", "--no-temporal")
    with rasterio.open(plain) as src:
        assert "CLOUDCLEAR_TEMPORAL_WITNESSES" not in src.tags()


def test_restore_keeps_the_policy_where_an_s1_input_sees_the_pixel():
    """restore_mask_clear gives the masks' decision back only where no S1 input has a value: a
    method that reads S1 reconstructs the other pixels from it."""
    from types import SimpleNamespace

    from conftest import FakeSource

    from cloudclear.inference.reading import Strip, restore_mask_clear

    shape = (1, 4)
    clear = np.zeros(shape, bool)  # the policy left no S2 input clear...
    mask_clear = np.ones(shape, bool)  # ...where the masks alone called every pixel clear
    s2 = FakeSource(acq=SimpleNamespace(sensor="S2"), removed=4, given_back=0, witness=False)
    s1 = FakeSource(acq=SimpleNamespace(sensor="S1"), removed=0, given_back=0, witness=False)
    st2 = Strip(np.zeros((1, *shape)), np.ones(shape, bool), clear, None, mask_clear)
    s1_valid = np.array([[True, True, False, False]])
    st1 = Strip(np.zeros((2, *shape)), s1_valid, s1_valid.copy(), None, None)
    assert restore_mask_clear([s2, s1], [st2, st1]) == 2
    assert st2.clear.tolist() == [[False, False, True, True]]
    assert s2.removed == 2 and s2.given_back == 2
    # Without S1, every pixel comes back.
    st2 = Strip(np.zeros((1, *shape)), np.ones(shape, bool), np.zeros(shape, bool), None, mask_clear)
    s2.removed, s2.given_back = 4, 0
    assert restore_mask_clear([s2], [st2]) == 4
