"""`cloudclear sample` on the real series in ../shared/data (each test skips when its set is absent).

Each catalog is indexed once per module into a temporary folder. Every store is checked against
its layout and the catalog it came from: split counts (printed or returned) equal split.npy, slot
hours lie in the windows, cloud % recomputed from the stored mask (and pasted gap) lies in the slot's
range, each pasted gap is the real mask of another scene of the same catalog, S1 lies within the
slot's gap, footprints of different splits never overlap, and PatchDataset reads item 0. Run with
``-s`` to see the counts per split.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import SHARED_DATA, assert_one_line_error
from typer.testing import CliRunner

from cloudclear import masks
from cloudclear.catalog import Catalog, build_index
from cloudclear.cli import app
from cloudclear.layouts import PRESETS, parse_layout
from cloudclear.sampling import PatchDataset, PatchStore, SampleOptions, sample

runner = CliRunner()
SPLITS = ("train", "val", "test")
COUNTS = re.compile(r"^\s+train (\d+), val (\d+), test (\d+)$", re.M)
GREEN = "greenearthnet_minicubes"
CEREAL = "worldcereal_patches"
SLOVENIA = "eolearn_slovenia_s2"


def _catalog(tmp_path_factory, name: str) -> Path:
    src = SHARED_DATA / name
    if not src.is_dir():
        pytest.skip(f"{src} is not present")
    cat = tmp_path_factory.mktemp(name) / "cat.gpkg"
    # About sampling geometry (slots, windows, splits, pasted gaps), not the clear decision: no
    # detector and the masks as decoded, so that a pasted gap is exactly another scene's mask file
    # (the default policy would combine the detector's and grow a buffer); sample follows the
    # catalog's policy.
    build_index(src, cat, detect=None, policy=masks.AS_DECODED)
    return cat


@pytest.fixture(scope="module")
def green(tmp_path_factory) -> Path:
    return _catalog(tmp_path_factory, GREEN)


@pytest.fixture(scope="module")
def cereal(tmp_path_factory) -> Path:
    return _catalog(tmp_path_factory, CEREAL)


@pytest.fixture(scope="module")
def slovenia(tmp_path_factory) -> Path:
    return _catalog(tmp_path_factory, SLOVENIA)


def run(*args: object):
    return runner.invoke(app, ["sample", *(str(a) for a in args)])


def sample_cli(catalog: Path, out: Path, *args: object) -> dict[str, int]:
    """Run `cloudclear sample`, return the printed per-split counts."""
    res = run("-c", catalog, "-o", out, *args)
    assert res.exit_code == 0, res.output
    found = COUNTS.findall(res.stdout)
    assert len(found) == 1, res.stdout
    return dict(zip(SPLITS, map(int, found[0]), strict=True))


def cloud_pct(mask: np.ndarray, gap: np.ndarray | None = None) -> float:
    known = mask != masks.MaskClass.NODATA
    obscured = np.isin(mask, masks.OBSCURED)
    if gap is not None:
        obscured |= gap.astype(bool)
    return 100.0 * float((obscured & known).sum()) / float(known.sum())


def real_mask(cat: Catalog, scenes: pd.DataFrame, scene_id: str, r: int, c: int, size: int) -> np.ndarray:
    """Obscured pixels of a scene's own mask file at a patch of its S2 grid (independent of sampling)."""
    row = scenes.loc[scene_id]
    with rasterio.open(cat.resolve(row["mask_file"])) as src:
        band = int(row["mask_band"])
        raw, nodata = src.read(band), src.nodatavals[band - 1]
    fy, fx = int(row["height"]) // raw.shape[0], int(row["width"]) // raw.shape[1]
    assert (raw.shape[0] * fy, raw.shape[1] * fx) == (int(row["height"]), int(row["width"]))
    raw = np.repeat(np.repeat(raw, fy, axis=0), fx, axis=1)  # a coarser SCL, nearest on the S2 grid
    cls = masks.decode(raw[r : r + size, c : c + size], str(row["mask_source"]), nodata)
    return np.isin(cls, masks.OBSCURED)


def check_store(store: Path, catalog: Path, counts: dict[str, int], label: str) -> PatchStore:
    ps = PatchStore(store)
    split = np.load(store / "split.npy")
    stored = {name: int((split == k).sum()) for k, name in enumerate(SPLITS)}
    print(f"{label}: {len(ps)} samples: " + ", ".join(f"{k} {v}" for k, v in stored.items()))
    assert len(ps) > 0
    assert counts == stored == ps.manifest["splits"]
    meta = ps.metadata()
    assert meta["split"].tolist() == [SPLITS[k] for k in split]
    lay = ps.layout
    size = int(ps.manifest["patch_size"])
    hours = np.load(store / "hours.npy")
    cat = Catalog.open(catalog)
    scenes = cat.scenes.set_index("scene_id")
    s2_ids = set(scenes.index[scenes["sensor"] == "S2"])
    s1_ids = set(scenes.index[scenes["sensor"] == "S1"])
    for i in range(len(ps)):
        arrays = ps.read(i)
        row = meta.iloc[i]
        for n, s in enumerate(lay.slots):
            assert s.window[0] - 1e-3 <= hours[i, n] <= s.window[1] + 1e-3, (label, s.name, hours[i, n])
            scene = row[f"{s.name}_scene"]
            assert scene in s2_ids and (scenes.at[scene, "tile"] or "") == (row["tile"] or ""), (label, s.name, scene)
            mask = arrays[f"{s.name}.mask"]
            if s.simulated:
                gap = arrays[f"{s.name}.gap"].astype(bool)
                assert cloud_pct(mask) <= s.truth_cloud + 1e-6, (label, s.name)
                cover = cloud_pct(mask, gap)
                source, at = row[f"{s.name}_gap_source"].split("@")
                r, c = (int(v) for v in at.split(","))
                assert source in s2_ids, (label, source)
                assert (source, r, c) != (scene, row["row"], row["col"])  # another date or place
                np.testing.assert_array_equal(gap, real_mask(cat, scenes, source, r, c, size), err_msg=label)
            else:
                cover = cloud_pct(mask)
            assert s.cloud[0] - 1e-6 <= cover <= s.cloud[1] + 1e-6, (label, s.name, cover)
            assert row[f"{s.name}_cloud_pct"] == pytest.approx(cover, abs=1e-3)
            if s.s1_max_gap is not None:
                s1 = row[f"{s.name}_s1_scene"]
                assert s1 in s1_ids, (label, s1)
                gap_h = (scenes.at[s1, "datetime"] - scenes.at[scene, "datetime"]).total_seconds() / 3600
                assert row[f"{s.name}_s1_gap_h"] == pytest.approx(gap_h, abs=1e-2)
                assert abs(gap_h) <= s.s1_max_gap + 1e-6
                assert (arrays[f"{s.name}.s1"] > 0).all(axis=0).mean() >= 0.99
    geoms = meta.geometry.to_numpy()
    for a in range(len(meta)):
        for b in range(a + 1, len(meta)):
            if split[a] != split[b]:
                assert geoms[a].intersection(geoms[b]).area < 1e-12, (label, a, b)
    item, raw = PatchDataset(store, split=None)[0], ps.read(0)
    for t in lay.targets:
        assert item[f"{t}.truth"].shape == (len(ps.bands), size, size)
        mask = raw[f"{t}.mask"]
        clear = (mask != masks.MaskClass.NODATA) & ~np.isin(mask, masks.OBSCURED)
        np.testing.assert_array_equal(item[f"{t}.truth.valid"], clear)
        np.testing.assert_allclose(item[f"{t}.truth"], raw[t] * np.float32(1e-4), rtol=1e-6)
    return ps


# -- greenearthnet minicubes (two sites, EPSG:4326, learned masks, no S1) ------------------------


def test_green_os2_simulated(green, tmp_path):
    out = tmp_path / "os2"
    counts = sample_cli(green, out, "-l", "OS2", "--simulate", "t", "--no-s1", "-p", 64, "--block", 1, "-n", 40)
    ps = check_store(out, green, counts, f"{GREEN} OS2 --simulate t")
    assert [s.name for s in ps.layout.slots] == ["t-1", "t", "t+1"]
    assert not [s.name for s in ps.specs if s.name.endswith(".s1")]
    assert set(ps.metadata()["tile"]) == {"34TET", "34VCL"}


def test_green_single_date_simulated(green, tmp_path):
    out = tmp_path / "sd"
    counts = sample_cli(green, out, "-l", "single-date", "--simulate", "t", "--no-s1", "-p", 64, "--block", 1, "-n", 40)
    ps = check_store(out, green, counts, f"{GREEN} single-date --simulate t")
    assert [s.name for s in ps.specs] == ["t", "t.mask", "t.gap"]


@pytest.mark.slow
def test_green_sequence_all_simulated(green, tmp_path):
    out = tmp_path / "seq"
    counts = sample_cli(green, out, "-l", "sequence", "--simulate", "all", "-p", 64, "--block", 1, "-n", 40)
    ps = check_store(out, green, counts, f"{GREEN} sequence --simulate all")
    assert all(s.simulated for s in ps.layout.slots) and len(ps.layout.targets) == 6
    assert (np.diff(np.load(out / "hours.npy"), axis=1) > 0).all()


# -- worldcereal patches (three sites, S2 at 10 + 20 m, SCL, S1 in dB) ----------------------------


@pytest.mark.slow
def test_cereal_os2_simulated_with_s1(cereal, tmp_path):
    out = tmp_path / "os2"
    counts = sample_cli(cereal, out, "-l", "OS2", "--simulate", "t", "-p", 32, "--block", 1, "-n", 40)
    ps = check_store(out, cereal, counts, f"{CEREAL} OS2 --simulate t (S1)")
    assert [s.name for s in ps.specs if s.name.endswith(".s1")] == ["t-1.s1", "t.s1", "t+1.s1"]
    assert all(s.s1_max_gap == 72 for s in ps.layout.slots)
    meta = ps.metadata()
    for slot in ("t-1", "t", "t+1"):
        assert meta[f"{slot}_s1_gap_h"].abs().max() <= 72
    item = PatchDataset(out, split=None)[0]
    assert item["t.s1"].shape == (2, 32, 32) and item["t.s1.valid"].mean() >= 0.99
    assert -40 < float(np.median(item["t.s1"][0])) < 10  # VV in dB


@pytest.mark.slow
def test_cereal_single_date(cereal, tmp_path):
    out = tmp_path / "sd"
    counts = sample_cli(cereal, out, "-l", "single-date", "-p", 32, "--block", 1, "-n", 40)
    ps = check_store(out, cereal, counts, f"{CEREAL} single-date")
    assert [s.name for s in ps.layout.slots] == ["t", "target"]
    assert ps.metadata()["t_s1_gap_h"].abs().max() <= 72


@pytest.mark.slow
def test_cereal_sequence(cereal, tmp_path):
    out = tmp_path / "seq"
    counts = sample_cli(cereal, out, "-l", "sequence", "-p", 32, "--block", 1, "-n", 40)
    ps = check_store(out, cereal, counts, f"{CEREAL} sequence")
    assert ps.layout.target is None and ps.layout.targets == ("t0", "t1", "t2", "t3", "t4", "t5")
    hours = np.load(out / "hours.npy")
    assert (np.diff(hours, axis=1) > 0).all() and hours[:, -1].max() <= 90 * 24


# -- eo-learn Slovenia (one 100 x 101 px place, 10 dates, CLM masks, no S1) ----------------------


def test_slovenia_sequence_preset_fails_naming_t5(slovenia, tmp_path):
    res = run("-c", slovenia, "-o", tmp_path / "x", "-l", "sequence", "-p", 32, "--block", 1, "-n", 20)
    assert_one_line_error(res, "slot t5:", "5th acquisition after")
    print(f"{SLOVENIA} sequence: {res.stderr.strip()}")
    assert not (tmp_path / "x").exists()


def test_slovenia_four_slot_sequence(slovenia, tmp_path):
    data = PRESETS["sequence"].to_dict()
    data["name"] = "sequence4"
    data["slots"] = data["slots"][:4]
    lay = parse_layout(data, "sequence4")
    out = tmp_path / "seq4"
    result = sample(slovenia, lay, out, SampleOptions(patch_size=32, count=40, block=1))
    assert result.count == len(PatchStore(out))
    ps = check_store(out, slovenia, result.by_split, f"{SLOVENIA} sequence4")
    assert [s.name for s in ps.layout.slots] == ["t0", "t1", "t2", "t3"]
    # summer 2015 has no nodata: t1..t3 are exactly the next three acquisitions of the catalog
    order = Catalog.open(slovenia).scenes.sort_values("datetime")["scene_id"].tolist()
    for _, row in ps.metadata().iterrows():
        k = order.index(row["t0_scene"])
        assert [row[f"t{j}_scene"] for j in range(4)] == order[k : k + 4]


def test_slovenia_os2_fails_naming_slots(slovenia, tmp_path):
    res = run("-c", slovenia, "-o", tmp_path / "x", "-l", "OS2", "--no-s1", "--simulate", "t", "-p", 32, "-n", 20)
    assert_one_line_error(res)
    msg = res.stderr
    print(f"{SLOVENIA} OS2 --simulate t: {msg.strip()}")
    assert "layout OS2" in msg and all(f"{s} " in msg for s in ("t-1", "t+1"))
    assert "target" not in msg  # the simulated reference replaced the target slot
    assert not (tmp_path / "x").exists()


def test_store_json_records_the_real_catalog(green, tmp_path):
    out = tmp_path / "j"
    res = run("-c", green, "-o", out, "-l", "single-date", "--simulate", "t", "--no-s1", "-p", 64, "--block", 1,
              "-n", 10, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    ps = check_store(out, green, d["by_split"], f"{GREEN} single-date --json")
    assert d["count"] == len(ps) == 10
    assert Path(ps.manifest["catalog"]) == green.resolve()
