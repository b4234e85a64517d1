"""`cloudclear.sampling`: stores built from small generated series satisfy their layouts.

A 256 x 256 px series of 12 S2 dates 5 days apart (with S1 every 12 days) is generated and indexed
once per module; a few stores (OS2 and single-date with a simulated reference, sequence, and a
custom layout with real gaps) are built once from it and checked sample by sample against the
layout, the source files and the catalog.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from conftest import write_raster

from cloudclear import masks
from cloudclear.catalog import Catalog, build_index
from cloudclear.errors import LayoutError, OutputExistsError, SampleError, StoreError
from cloudclear.layouts import Layout, load_layout, parse_layout
from cloudclear.sampling import PatchDataset, PatchStore, SampleOptions, sample
from cloudclear.sampling import build as build_mod
from cloudclear.sampling.draw import SEASONS
from cloudclear.sampling.store import decode_values
from cloudclear.synth import generate_series

PATCH = 64
# The generator's S1 lies on a 12-day grid: within 6 days (144 h) of each S2, rarely within 72 h.
S1_GAP = 150.0
STORE_FILES = ("patches.bin", "index.npy", "split.npy", "hours.npy")

# A layout with real gaps whose cloud ranges the series satisfies (23 samples or so), with an S1
# slot, a "clearest" and a "random" pick and a target other than the reference.
REAL = {
    "name": "REAL",
    "reference": "t",
    "target": "target",
    "slots": [
        {"name": "t-1", "sensor": "S2", "window": [-360, -96], "cloud": [0, 50], "pick": "clearest", "s1_max_gap": 150},
        {"name": "t", "sensor": "S2", "cloud": [10, 90], "s1_max_gap": 150},
        {"name": "target", "sensor": "S2", "window": [-240, 240], "cloud": [0, 5]},
        {"name": "t+1", "sensor": "S2", "window": [96, 480], "cloud": [20, 100], "pick": "random"},
        {"name": "s1", "sensor": "S1", "window": [-150, 150]},
    ],
}
# One S2 slot and nothing else: every (date, location) is a candidate.
ONE = {"name": "one", "reference": "t", "target": "t", "slots": [{"name": "t", "sensor": "S2"}]}
ONE_NEXT = {
    "name": "one-next",
    "reference": "t",
    "target": "t",
    "slots": [{"name": "t", "sensor": "S2"}, {"name": "t+1", "sensor": "S2", "window": [96, 168]}],
}


# ---------------------------------------------------------------------------------------------
# Data


class Series:
    """A series generated under ``root`` (with ``kw``; none: already there) and its catalog."""

    def __init__(self, root: Path, **kw):
        self.synth = generate_series(root, **kw) if kw else None
        # These tests are about sampling (layouts, geometry, splits, the store), checked against
        # the masks as the files decode them: the catalog (and so `sample`, which takes the
        # catalog's policy) keeps the masks as decoded and runs no detector. The default clear
        # policy in `sample` is tested in test_sample_temporal.py and test_policy_everywhere.py.
        self.catalog_path = build_index(root, detect=None, policy=masks.AS_DECODED).catalog_path
        self.catalog = Catalog.open(self.catalog_path)
        scenes = self.catalog.scenes
        self.rows = {str(r["scene_id"]): r for _, r in scenes.iterrows()}
        s2 = scenes[scenes["sensor"] == "S2"].sort_values("datetime")
        self.s2_order = [str(x) for x in s2["scene_id"]]
        self.s2_times = {sid: self.rows[sid]["datetime"].timestamp() for sid in self.s2_order}
        self.cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Series:
    s = Series(
        tmp_path_factory.mktemp("sampling") / "T31UFQ", height=256, width=256, n_dates=12, interval_days=5, seed=1
    )
    s2 = s.catalog.scenes[s.catalog.scenes["sensor"] == "S2"]
    assert len(s2) == 12 and (s.catalog.scenes["sensor"] == "S1").sum() >= 5
    assert (s2["s1_gap_hours"] <= S1_GAP).all()  # every S2 date can pair with an S1 scene
    return s


@pytest.fixture(scope="module")
def stores(series, tmp_path_factory):
    """Stores built lazily, once per module, by name."""
    root = tmp_path_factory.mktemp("stores")
    specs = {
        "OS2": ("OS2", {"simulate": ("t",), "count": 30}),
        "single-date": ("single-date", {"simulate": ("t",), "count": 30}),
        "sequence": ("sequence", {"count": 40}),
        "REAL": (parse_layout(REAL, "REAL"), {"count": 40}),
    }
    built: dict[str, tuple] = {}

    def get(name: str):
        if name not in built:
            layout, kw = specs[name]
            opts = SampleOptions(patch_size=PATCH, block=1, s1_max_gap=S1_GAP, seed=0, **kw)
            result = sample(series.catalog_path, layout, root / name, opts)
            built[name] = (result, opts)
        return built[name]

    return get


def read_scene(series: Series, scene: str, bands: list[str], row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
    """The S2 DN values (bands, P, P) and the decoded mask (P, P) of a catalog scene at a window,
    read with rasterio from the files the catalog names (whole files, cached per series)."""
    key = (scene, tuple(bands))
    if key not in series.cache:
        rec = series.rows[scene]
        files = json.loads(rec["band_files"])
        values = []
        for b in bands:
            rel, idx = files[b]
            with rasterio.open(series.catalog.resolve(rel)) as ds:
                values.append(ds.read(int(idx)))
        with rasterio.open(series.catalog.resolve(rec["mask_file"])) as ds:
            band = int(rec["mask_band"])
            cls = masks.decode(ds.read(band), str(rec["mask_source"]), ds.nodatavals[band - 1])
        series.cache[key] = (np.stack(values), cls)
    values, cls = series.cache[key]
    win = np.s_[row : row + PATCH, col : col + PATCH]
    return values[(slice(None), *win)], cls[win]


def cloud_pct(mask: np.ndarray, gap: np.ndarray | None = None) -> float:
    known = mask != masks.MaskClass.NODATA
    obscured = np.isin(mask, masks.OBSCURED)
    if gap is not None:
        obscured |= gap.astype(bool)
    return 100.0 * float((obscured & known).sum()) / max(int(known.sum()), 1)


def stamp(text: str) -> float:
    return datetime.fromisoformat(str(text)).timestamp()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# ---------------------------------------------------------------------------------------------
# 1. Every sample satisfies its layout


@pytest.mark.parametrize("name", ["OS2", "single-date", "sequence", "REAL"])
@pytest.mark.slow
def test_every_sample_satisfies_its_layout(series, stores, name):
    result, opts = stores(name)
    store = PatchStore(result.path)
    layout = store.layout
    meta = store.metadata()
    hours = np.load(result.path / "hours.npy")
    n = len(store)
    assert n == result.count == len(meta) >= 10
    assert meta["sample_id"].tolist() == list(range(n))
    assert hours.shape == (n, len(layout.slots))
    if name == "OS2":  # the simulated reference becomes the target; the separate target slot goes
        assert layout.target == "t" and "target" not in [s.name for s in layout.slots]
        assert layout.slot("t").simulated and not layout.slot("t-1").simulated
    s1_gaps = []
    for i in range(n):
        row = meta.iloc[i]
        arrays = store.read(i)
        t_ref = stamp(row["datetime"])
        assert row[f"{layout.reference}_hours"] == 0 and row[f"{layout.reference}_datetime"] == row["datetime"]
        for k, slot in enumerate(layout.slots):
            h = float(row[f"{slot.name}_hours"])
            assert hours[i, k] == pytest.approx(h, abs=2e-3), (i, slot.name)
            lo, hi = slot.window
            assert lo - 1e-6 <= h <= hi + 1e-6, (i, slot.name, h)
            scene = str(row[f"{slot.name}_scene"])
            rec = series.rows[scene]
            assert rec["sensor"] == slot.sensor
            assert (rec["datetime"].timestamp() - t_ref) / 3600.0 == pytest.approx(h, abs=2e-3)
            if slot.sensor == "S1":
                s1 = arrays[slot.name]
                assert s1.dtype == np.uint16 and (s1 != 0).all(axis=0).mean() >= 0.99
                continue
            assert row[f"{slot.name}_datetime"] == rec["datetime"].isoformat()
            values, cls = arrays[slot.name], arrays[f"{slot.name}.mask"]
            assert (values != 0).all(), (i, slot.name)  # S2 patches have no nodata
            gap = arrays.get(f"{slot.name}.gap")
            assert (gap is not None) == slot.simulated
            pct = cloud_pct(cls, gap)
            assert float(row[f"{slot.name}_cloud_pct"]) == pytest.approx(pct, abs=1e-3), (i, slot.name)
            assert slot.cloud[0] - 1e-6 <= pct <= slot.cloud[1] + 1e-6, (i, slot.name, pct)
            if slot.simulated:
                assert cloud_pct(cls) <= slot.truth_cloud + 1e-6
            # the stored values and mask are the scene's at this window
            src, src_cls = read_scene(series, scene, store.bands, int(row["row"]), int(row["col"]))
            np.testing.assert_array_equal(values, src)
            np.testing.assert_array_equal(cls, src_cls)
            if slot.s1_max_gap is not None:
                gap_h = float(row[f"{slot.name}_s1_gap_h"])
                assert abs(gap_h) <= slot.s1_max_gap + 1e-6
                s1_rec = series.rows[str(row[f"{slot.name}_s1_scene"])]
                assert s1_rec["sensor"] == "S1"
                assert (s1_rec["datetime"] - rec["datetime"]).total_seconds() / 3600 == pytest.approx(gap_h, abs=2e-3)
                s1 = arrays[f"{slot.name}.s1"]
                assert s1.shape == (2, PATCH, PATCH) and (s1 != 0).all(axis=0).mean() >= 0.99
                s1_gaps.append(abs(gap_h))
            else:
                assert f"{slot.name}.s1" not in arrays
        s2_scenes = [str(row[f"{s.name}_scene"]) for s in layout.s2_slots]
        assert len(set(s2_scenes)) == len(s2_scenes), (i, s2_scenes)  # distinct acquisitions
        if name == "sequence":  # t1..t5 are the next five acquisitions, in time order
            first = series.s2_order.index(str(row["t0_scene"]))
            for s in layout.s2_slots:
                assert series.s2_order.index(str(row[f"{s.name}_scene"])) == first + (s.nth or 0)
            assert np.all(np.diff(hours[i]) > 0)
    item = PatchDataset(store, None)[0]
    assert {k[: -len(".truth")] for k in item if k.endswith(".truth")} == set(layout.targets)
    if name == "sequence":
        assert layout.targets == tuple(f"t{k}" for k in range(6))
    if name in ("OS2", "REAL"):
        assert max(s1_gaps) > 72  # the widened S1 gap is used: the 72 h preset would not hold here


def test_real_layout_picks_and_hides_real_clouds(series, stores):
    """'clearest' takes the clearest acquisition in the window, 'nearest' the nearest one that fits;
    real clouds are hidden from the input and only the target has a truth."""
    result, _ = stores("REAL")
    store = PatchStore(result.path)
    meta = store.metadata()
    bands = store.bands
    clearest_gain = 0
    for _, row in meta.iterrows():
        r, c, t_ref = int(row["row"]), int(row["col"]), stamp(row["datetime"])

        def exact(sid: str, r: int = r, c: int = c) -> float:
            return cloud_pct(read_scene(series, sid, bands, r, c)[1])

        def in_window(lo: float, hi: float, t_ref: float = t_ref) -> list[str]:
            return [s for s, t in series.s2_times.items() if lo - 1e-6 <= (t - t_ref) / 3600 <= hi + 1e-6]

        # t-1 (clearest, cloud <= 50 %): none of its window is clearer, up to the cells' 1 % rounding
        fits = [exact(s) for s in in_window(-360, -96) if exact(s) <= 50]
        assert float(row["t-1_cloud_pct"]) <= min(fits) + 1.0
        clearest_gain += len(fits) > 1 and max(fits) > float(row["t-1_cloud_pct"]) + 1
        # target (nearest, cloud <= 5 %, not an acquisition another slot took before it)
        taken = {str(row["t-1_scene"]), str(row["t_scene"])}
        near = [
            abs(series.s2_times[s] - t_ref) / 3600 for s in in_window(-240, 240) if s not in taken and exact(s) <= 5
        ]
        assert abs(float(row["target_hours"])) == pytest.approx(min(near), abs=2e-3)
    assert clearest_gain > 0  # some windows held a cloudier candidate that was passed over
    assert "t_gap_source" not in meta.columns and "t.gap" not in [s.name for s in store.specs]
    ds = PatchDataset(result.path, None)
    for k in range(len(ds)):
        item, raw = ds[k], store.read(k)
        assert "target.truth" in item and "t.truth" not in item and "t-1.truth" not in item
        cloudy = np.isin(raw["t.mask"], masks.OBSCURED)
        assert cloudy.any()  # t holds 10-90 % cloud: real gaps, hidden from the input
        np.testing.assert_array_equal(item["t.valid"], ~cloudy)
        assert (item["t"][:, cloudy] == 0).all()
        np.testing.assert_array_equal(item["target.truth.valid"], ~np.isin(raw["target.mask"], masks.OBSCURED))
        np.testing.assert_array_equal(item["s1"], decode_values(raw["s1"], "S1")[0])
        assert item["s1.valid"].mean() >= 0.99


# ---------------------------------------------------------------------------------------------
# 2. Splits


def _footprints_by_split(meta) -> int:
    """Asserts footprints of different splits never overlap; returns overlapping same-split pairs."""
    geoms = np.asarray(meta.geometry.values, dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    splits = meta["split"].to_numpy()
    same_overlap = 0
    for a, b in zip(left, right, strict=True):
        if a >= b:
            continue
        area = shapely.area(shapely.intersection(geoms[a], geoms[b]))
        if splits[a] != splits[b]:
            assert area <= 1e-12 * shapely.area(geoms[a]), (meta.iloc[a].to_dict(), meta.iloc[b].to_dict())
        elif area > 0.1 * shapely.area(geoms[a]):
            same_overlap += 1
    return same_overlap


@pytest.mark.slow
def test_splits_never_overlap_on_the_ground(series, tmp_path):
    # stride half a patch: neighbouring patches overlap, so only blocks keep the splits apart
    opts = SampleOptions(patch_size=PATCH, stride=32, block=2, count=400, s1=False, seed=3)
    result = sample(series.catalog_path, parse_layout(ONE, "ONE"), tmp_path / "st", opts)
    meta = PatchStore(result.path).metadata()
    assert set(meta["split"]) == {"train", "val", "test"}
    bpx = 2 * PATCH
    assert (meta["row"] // bpx == (meta["row"] + PATCH - 1) // bpx).all()  # no patch straddles blocks
    assert (meta["col"] // bpx == (meta["col"] + PATCH - 1) // bpx).all()
    assert _footprints_by_split(meta) > 0  # overlapping patches exist, all within one split
    np.testing.assert_array_equal(np.load(result.path / "split.npy"), meta["split"].map(["train", "val", "test"].index))


def test_os2_splits_never_overlap(stores):
    result, _ = stores("OS2")
    meta = PatchStore(result.path).metadata()
    _footprints_by_split(meta)
    by_place = meta.groupby(["tile", "row", "col"])["split"].nunique()
    assert (by_place == 1).all()


def test_block_days_split_each_place_and_period_once(series, tmp_path):
    days = 20.0
    opts = SampleOptions(patch_size=PATCH, block=1, block_days=days, count=400, s1=False, seed=4)
    result = sample(series.catalog_path, parse_layout(ONE_NEXT, "ONE_NEXT"), tmp_path / "st", opts)
    meta = PatchStore(result.path).metadata()
    assert result.count == len(meta) > 20
    unit_split: dict[tuple, str] = {}
    for _, row in meta.iterrows():
        for slot in ("t", "t+1"):  # every acquisition a sample uses lies in a unit of its split
            unit = (row["tile"], row["row"], row["col"], int(np.floor(stamp(row[f"{slot}_datetime"]) / (days * 86400))))
            assert unit_split.setdefault(unit, row["split"]) == row["split"], (unit, row["sample_id"])
    # with periods, one place can hold different splits at different times
    assert (meta.groupby(["row", "col"])["split"].nunique() > 1).any()


@pytest.fixture(scope="module")
def grids(tmp_path_factory) -> Series:
    """Three grids in one catalog: A (31UFQ, 256 px, April) and B (31UFQ, 192 px, June) share their
    origin, so they overlap on the ground; C (31UGQ, 128 px) is another tile acquired with A."""
    root = tmp_path_factory.mktemp("grids")
    generate_series(root / "A", height=256, width=256, n_dates=3, interval_days=5, s1=False, seed=1)
    generate_series(root / "B", height=192, width=192, n_dates=3, start="2021-06-01", s1=False, seed=2)
    generate_series(root / "C", height=128, width=128, n_dates=3, interval_days=5, tile="31UGQ", s1=False, seed=3)
    s = Series(root)
    s2 = s.catalog.scenes[s.catalog.scenes["sensor"] == "S2"]
    by_tile = {t: sorted(s2[s2["tile"] == t]["datetime"]) for t in ("31UFQ", "31UGQ")}
    assert len(s2) == 9 and by_tile["31UGQ"] == by_tile["31UFQ"][:3]  # C shares A's acquisition times
    return s


@pytest.mark.slow
def test_splits_merge_blocks_of_overlapping_grids(grids, tmp_path):
    for seed in (0, 1):
        opts = SampleOptions(patch_size=PATCH, block=1, count=200, s1=False, seed=seed)
        result = sample(grids.catalog_path, parse_layout(ONE, "ONE"), tmp_path / f"st{seed}", opts)
        meta = PatchStore(result.path).metadata()
        months = meta["datetime"].str[5:7]
        assert {"04", "06"} <= set(months)  # both grids of 31UFQ are sampled
        a, b = meta[months == "04"], meta[months == "06"]
        # the same ground patch on both grids (same origin) is in one split
        both = a.merge(b, on=["tile", "row", "col"], suffixes=("_a", "_b"))
        assert len(both) > 0 and (both["split_a"] == both["split_b"]).all()
        _footprints_by_split(meta)


def test_every_tile_of_a_datatake_is_sampled(grids, tmp_path):
    opts = SampleOptions(patch_size=PATCH, block=1, count=500, s1=False)
    result = sample(grids.catalog_path, parse_layout(ONE, "ONE"), tmp_path / "st", opts)
    meta = PatchStore(result.path).metadata()
    assert set(meta["tile"]) == {"31UFQ", "31UGQ"}


def test_per_location_counts_the_ground_patch_across_grids(grids, tmp_path):
    opts = SampleOptions(patch_size=PATCH, block=1, count=500, s1=False, per_location=1)
    result = sample(grids.catalog_path, parse_layout(ONE, "ONE"), tmp_path / "st", opts)
    per_place = PatchStore(result.path).metadata().groupby(["tile", "row", "col"]).size()
    assert per_place.max() == 1


# ---------------------------------------------------------------------------------------------
# 3. Gap simulation


@pytest.mark.parametrize("name", ["OS2", "single-date"])
def test_simulated_gaps_keep_truth_and_masks_consistent(series, stores, name):
    result, _ = stores(name)
    store = PatchStore(result.path)
    layout = store.layout
    slot = layout.slot("t")
    assert slot.simulated and layout.targets == ("t",) and slot.cloud[0] >= 1
    meta = store.metadata()
    for i in range(len(store)):
        row = meta.iloc[i]
        raw = store.read(i)
        r, c = int(row["row"]), int(row["col"])
        truth, own = read_scene(series, str(row["t_scene"]), store.bands, r, c)
        np.testing.assert_array_equal(raw["t"], truth)  # stored values are the scene's, unmasked
        assert not np.isin(raw["t.mask"], masks.OBSCURED).any()  # truth_cloud 0: a clear acquisition
        gap = raw["t.gap"].astype(bool)
        assert gap.any()
        assert float(row["t_gap_pct"]) == pytest.approx(100.0 * gap.mean(), abs=1e-3)
        assert float(row["t_cloud_pct"]) == pytest.approx(100.0 * gap.mean(), abs=1e-3)
        source, _, where = str(row["t_gap_source"]).partition("@")
        sr, sc = (int(v) for v in where.split(","))
        assert (source, sr, sc) != (str(row["t_scene"]), r, c)
        _, src_cls = read_scene(series, source, store.bands[:1], sr, sc)
        np.testing.assert_array_equal(gap, np.isin(src_cls, masks.OBSCURED))  # the real mask pasted
    ds = PatchDataset(result.path, split=None)
    assert len(ds) == len(store)
    hidden = 0
    for k in range(len(ds)):
        item = ds[k]
        raw = store.read(item["index"])
        gap = raw["t.gap"].astype(bool)
        truth, truth_valid = decode_values(raw["t"], "S2")
        np.testing.assert_array_equal(item["t.truth"], truth)
        np.testing.assert_array_equal(item["t.truth.valid"], truth_valid)
        np.testing.assert_array_equal(item["t.gap"], gap)
        assert not item["t.valid"][gap].any() and (item["t"][:, gap] == 0).all()
        np.testing.assert_array_equal(item["t.valid"], ~gap)
        np.testing.assert_array_equal(item["t"][:, ~gap], truth[:, ~gap])
        hidden += int(gap.sum())
    assert hidden > 0


# ---------------------------------------------------------------------------------------------
# 4. DataLoader and pickling


def test_dataloader_with_two_workers_reads_the_split(stores):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    result, _ = stores("OS2")
    store = PatchStore(result.path)
    ds = PatchDataset(result.path, "train")
    assert len(ds) == result.by_split["train"] >= 8
    seen = []
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    for b, batch in enumerate(loader):
        size = len(batch["index"])
        assert 1 <= size <= 4
        for slot in ("t-1", "t", "t+1"):
            assert batch[slot].shape == (size, 4, PATCH, PATCH) and batch[slot].dtype == torch.float32
            assert batch[f"{slot}.valid"].shape == (size, PATCH, PATCH) and batch[f"{slot}.valid"].dtype == torch.bool
            assert batch[f"{slot}.s1"].shape == (size, 2, PATCH, PATCH) and batch[f"{slot}.s1"].dtype == torch.float32
            assert batch[f"{slot}.hours"].dtype == torch.float32
        assert batch["t.truth"].shape == (size, 4, PATCH, PATCH) and batch["t.gap"].dtype == torch.bool
        assert "t-1.truth" not in batch
        if b == 0:
            np.testing.assert_array_equal(batch["t"].numpy(), np.stack([ds[k]["t"] for k in range(size)]))
        seen += batch["index"].tolist()
    assert sorted(seen) == store.indices("train").tolist()


def test_dataset_pickles_and_reads_after_unpickling(stores):
    result, _ = stores("OS2")
    ds = PatchDataset(result.path, "val")
    first = ds[0]  # opens the data file in this process
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy) == len(ds) and copy.store._fd is None
    again = copy[0]
    assert again.keys() == first.keys()
    for key, value in first.items():
        np.testing.assert_array_equal(again[key], value)


# ---------------------------------------------------------------------------------------------
# 5. Determinism


@pytest.mark.slow
def test_same_seed_same_store_whatever_the_threads(series, stores, tmp_path):
    result, opts = stores("OS2")
    base = {f: (result.path / f).read_bytes() for f in STORE_FILES}
    table = PatchStore(result.path).metadata()
    for workers in (1, 3):
        other = sample(
            series.catalog_path, "OS2", tmp_path / f"w{workers}", SampleOptions(**{**vars(opts), "workers": workers})
        )
        for f in STORE_FILES:
            assert (other.path / f).read_bytes() == base[f], (workers, f)
        pd.testing.assert_frame_equal(PatchStore(other.path).metadata(), table)
        assert (other.path / "samples.gpkg").read_bytes() == (result.path / "samples.gpkg").read_bytes()
    reseeded = sample(series.catalog_path, "OS2", tmp_path / "seed9", SampleOptions(**{**vars(opts), "seed": 9}))
    assert (reseeded.path / "patches.bin").read_bytes() != base["patches.bin"]
    new = PatchStore(reseeded.path).metadata()
    assert not (len(new) == len(table) and new.drop(columns="geometry").equals(table.drop(columns="geometry")))


# ---------------------------------------------------------------------------------------------
# 6. Interrupted and refused runs


def _interrupt_after(monkeypatch, n: int) -> dict[str, int]:
    calls = {"n": 0}
    append = build_mod.StoreWriter.append

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise KeyboardInterrupt
        return append(self, *args, **kwargs)

    monkeypatch.setattr(build_mod.StoreWriter, "append", flaky)
    return calls


def _quick(**kw) -> SampleOptions:
    return SampleOptions(**{"patch_size": PATCH, "block": 1, "count": 12, "s1": False, "seed": 0, **kw})


def test_interrupted_run_leaves_no_store(series, tmp_path, monkeypatch):
    out = tmp_path / "st"
    calls = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick())
    assert calls["n"] == 4
    assert not out.exists()
    assert leftovers(out) == []


def test_stale_partial_folder_is_removed_by_the_next_run(series, tmp_path):
    out = tmp_path / "st"
    stale = tmp_path / ".st.partial-99999999"
    stale.mkdir()
    (stale / "patches.bin").write_bytes(b"\0" * 100)
    try:
        os.kill(99999999, 0)
        pytest.skip("pid 99999999 is alive here")
    except ProcessLookupError:
        pass
    with pytest.raises(StoreError, match="interrupted"):
        PatchStore(stale)
    live = tmp_path / f".st.partial-{os.getppid()}"  # another running process's folder stays
    live.mkdir()
    result = sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick())
    assert result.count == 12 and PatchStore(out).manifest["complete"] is True
    assert not stale.exists() and live.exists()
    assert leftovers(out) == [live.name]


def test_failed_overwrite_leaves_the_existing_store_untouched(series, tmp_path, monkeypatch):
    out = tmp_path / "st"
    sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick())
    before = snapshot(out)
    with pytest.raises(OutputExistsError, match="overwrite"):
        sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick(seed=1))
    with pytest.raises(SampleError, match="patch"):
        sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick(patch_size=512, overwrite=True))
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick(seed=1, overwrite=True))
    assert snapshot(out) == before
    assert leftovers(out) == []
    monkeypatch.undo()
    sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick(seed=1, count=5, overwrite=True))
    assert PatchStore(out).manifest["count"] == 5 and leftovers(out) == []


def test_overwrite_refuses_a_folder_that_is_not_a_store(series, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a patch store"):
        sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick(overwrite=True))
    assert (out / "notes.txt").read_text() == "keep me" and leftovers(out) == []


def test_overwrite_refuses_a_file(series, tmp_path):
    out = tmp_path / "afile"
    out.write_text("keep me")
    with pytest.raises(OutputExistsError, match="is a file, not a patch store"):
        sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick(overwrite=True))
    assert out.read_text() == "keep me" and leftovers(out) == []


def test_empty_split_notes_say_why(series, tmp_path):
    few = sample(series.catalog_path, parse_layout(ONE, "ONE"), tmp_path / "few", _quick(count=1))
    assert few.count == 1 and sum(v == 0 for v in few.by_split.values()) == 2
    assert sum("its candidates were not reached; raise --count" in n for n in few.notes) == 2
    # one 256 px block holds the whole grid: only one split can have candidates
    one_block = sample(series.catalog_path, parse_layout(ONE, "ONE"), tmp_path / "block", _quick(count=20, block=4))
    empty = [k for k, v in one_block.by_split.items() if v == 0]
    assert len(empty) == 2 and one_block.by_split["train"] == 20
    for name in empty:
        assert f"split {name} is empty: no block holds a candidate for it; use a smaller --block" in one_block.notes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patch_size": 4}, "patch size must be >= 8"),
        ({"count": 0}, "count must be >= 1"),
        ({"stride": 0}, "stride must be >= 1"),
        ({"block": 0}, "block must be >= 1"),
        ({"fractions": (0.0, 0.5, 0.5)}, "split fractions"),
        ({"per_location": 0}, "per-location limit"),
        ({"block_days": 0.0}, "date blocks must be > 0"),
        ({"compression": 10}, "compression level"),
        ({"start": "someday"}, "cannot read 'someday' as a date"),
        ({"tile": "T30TXM"}, "no S2 scene of tile 30TXM"),
        ({"start": "2030-01-01"}, "no S2 scene between"),
    ],
)
def test_bad_options_are_refused(series, tmp_path, change, message):
    out = tmp_path / "st"
    with pytest.raises(SampleError, match=message):
        sample(series.catalog_path, parse_layout(ONE, "ONE"), out, _quick(**change))
    assert not out.exists() and leftovers(out) == []


def test_store_without_manifest_is_refused(stores, tmp_path):
    result, _ = stores("sequence")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in STORE_FILES:
        (broken / f).write_bytes((result.path / f).read_bytes())
    with pytest.raises(StoreError, match="interrupted"):
        PatchStore(broken)
    with pytest.raises(StoreError, match="interrupted"):
        PatchDataset(broken)


# ---------------------------------------------------------------------------------------------
# 7. Layouts nothing satisfies


@pytest.fixture(scope="module")
def overcast(tmp_path_factory) -> Series:
    """Two clear dates, then six overcast ones; no S1."""
    root = tmp_path_factory.mktemp("overcast") / "T31UFQ"
    cover = [0, 0, 1, 1, 1, 1, 1, 1]
    return Series(root, height=128, width=128, n_dates=8, interval_days=5, cloud_cover=cover, s1=False, seed=2)


def test_unsatisfiable_slot_is_named_with_its_reason(overcast, tmp_path):
    assert overcast.synth.cloud_pct[:2] == (0.0, 0.0) and min(overcast.synth.cloud_pct[2:]) == 100.0
    layout = parse_layout(
        {
            "name": "clear-next",
            "reference": "t",
            "target": "t",
            "slots": [
                {"name": "t", "sensor": "S2"},
                {"name": "t+1", "sensor": "S2", "window": [240, 720], "cloud": [0, 0]},
            ],
        },
        "clear-next",
    )
    out = tmp_path / "st"
    with pytest.raises(SampleError) as err:
        sample(overcast.catalog_path, layout, out, SampleOptions(patch_size=PATCH, block=1, count=5))
    msg = str(err.value)
    assert "slot t+1: 0 scenes with cloud <= 0 %" in msg and "[240 h, 720 h]" in msg
    assert "clear-next" in msg
    assert not out.exists() and leftovers(out) == []


def test_unsatisfiable_reference_is_named(overcast, tmp_path):
    layout = parse_layout(
        {"name": "half", "reference": "t", "target": "t", "slots": [{"name": "t", "sensor": "S2", "cloud": [20, 80]}]}
    )
    with pytest.raises(SampleError, match=r"slot t \(reference\): 0 scenes with cloud in \[20, 80\] %"):
        sample(overcast.catalog_path, layout, tmp_path / "st", SampleOptions(patch_size=PATCH, block=1, count=5))


def test_unsatisfiable_nth_slot_says_how_many_follow(overcast, tmp_path):
    layout = parse_layout(
        {
            "name": "seq3",
            "reference": "t0",
            "slots": [
                {"name": "t0", "sensor": "S2"},
                {"name": "t1", "sensor": "S2", "nth": 1, "window": [0, 240]},
                {"name": "t3", "sensor": "S2", "nth": 3, "window": [0, 240]},
            ],
        }
    )
    with pytest.raises(SampleError) as err:
        sample(overcast.catalog_path, layout, tmp_path / "st", SampleOptions(patch_size=PATCH, block=1, count=5))
    msg = str(err.value)
    assert "slot t3: 0 scenes with data at the patch as the 3rd acquisition after the reference in [0 h, 240 h]" in msg
    assert "at most 2 acquisitions with data at the patch follow a reference within the window" in msg


def test_patch_larger_than_the_grid(overcast, tmp_path):
    with pytest.raises(SampleError, match=r"no 256 px patch fits.*128 x 128.*--patch-size"):
        sample(overcast.catalog_path, parse_layout(ONE, "ONE"), tmp_path / "st", SampleOptions(patch_size=256))


def test_s1_layout_without_s1_in_the_catalog(overcast, tmp_path):
    with pytest.raises(SampleError, match=r"no S1 scene.*--no-s1"):
        sample(overcast.catalog_path, "OS2", tmp_path / "st", SampleOptions(patch_size=PATCH, block=1, count=5))
    # optical only, the same preset can be sampled (t is cloudy, the target the clear date nearby)
    res = sample(
        overcast.catalog_path,
        "single-date",
        tmp_path / "st",
        SampleOptions(patch_size=PATCH, block=1, count=5, s1=False),
    )
    assert res.count >= 1 and not any(s.endswith(".s1") for s in (a.name for a in PatchStore(res.path).specs))


# ---------------------------------------------------------------------------------------------
# 8. Strategies


@pytest.mark.slow
def test_per_location_caps_samples_per_place(series, tmp_path):
    unlimited = sample(
        series.catalog_path, "sequence", tmp_path / "all", SampleOptions(patch_size=PATCH, block=1, count=500)
    )
    per_place = PatchStore(unlimited.path).metadata().groupby(["tile", "row", "col"]).size()
    assert per_place.max() > 2  # without a cap a place gives several samples
    # count above the candidates: fewer samples and a note
    assert unlimited.count < unlimited.requested == 500 and unlimited.count <= unlimited.candidates
    assert any(f"{unlimited.count} of the 500 samples" in note for note in unlimited.notes)
    capped = sample(
        series.catalog_path,
        "sequence",
        tmp_path / "k2",
        SampleOptions(patch_size=PATCH, block=1, count=500, per_location=2),
    )
    per_place = PatchStore(capped.path).metadata().groupby(["tile", "row", "col"]).size()
    assert per_place.max() == 2
    assert capped.count == int(per_place.sum()) == 2 * capped.locations  # every place has >= 2 candidates
    assert any("of the 500 samples" in note for note in capped.notes)


@pytest.fixture(scope="module")
def year(tmp_path_factory) -> Series:
    root = tmp_path_factory.mktemp("year") / "T31UFQ"
    return Series(root, height=128, width=128, n_dates=24, interval_days=15, start="2021-01-01", s1=False, seed=3)


@pytest.mark.parametrize("count", [10, 30])
@pytest.mark.slow
def test_seasonal_draws_equal_counts_per_season(year, tmp_path, count):
    months = [d.month for d in year.synth.s2_dates]
    per_season = Counter(SEASONS[(m % 12) // 3] for m in months)
    locations = (128 // PATCH) ** 2
    assert set(per_season) == set(SEASONS) and min(per_season.values()) * locations >= count / 4
    opts = SampleOptions(patch_size=PATCH, block=1, count=count, seasonal=True, s1=False, seed=5)
    result = sample(year.catalog_path, parse_layout(ONE, "ONE"), tmp_path / "st", opts)
    assert result.count == count
    meta = PatchStore(result.path).metadata()
    seasons = Counter(meta["season"])
    assert seasons == Counter(result.by_season) and set(seasons) == set(SEASONS)
    assert max(seasons.values()) - min(seasons.values()) <= 1
    # the season column is the reference date's meteorological season
    for _, row in meta.iterrows():
        assert row["season"] == SEASONS[(datetime.fromisoformat(row["datetime"]).month % 12) // 3]


def test_bands_dates_and_dem(series, tmp_path):
    with rasterio.open(series.synth.s2[0]) as ds:
        origin = (ds.transform.c, ds.transform.f)
    dem = (100 + np.arange(256)[:, None] * 0.5 + np.arange(256)[None, :] * 0.25).astype(np.float32)
    dem_path = write_raster(tmp_path / "dem.tif", dem, crs="EPSG:32631", origin=origin, nodata=-9999)
    layout = parse_layout(
        {
            "name": "dem",
            "reference": "t",
            "target": "t",
            "slots": [{"name": "t", "sensor": "S2"}, {"name": "elev", "sensor": "DEM"}],
        }
    )
    opts = _quick(count=500, bands=("B08", "B04"), start="2021-04-16", end="2021-05-11", dem=str(dem_path))
    result = sample(series.catalog_path, layout, tmp_path / "st", opts)
    # references in [start, end], the end day included; every candidate taken
    wanted = sorted(
        d.isoformat() for d in series.synth.s2_dates if "2021-04-16" <= d.date().isoformat() <= "2021-05-11"
    )
    store = PatchStore(result.path)
    meta = store.metadata()
    assert sorted(set(meta["datetime"])) == wanted and result.count == len(wanted) * 16
    assert store.bands == ["B08", "B04"]
    ds = PatchDataset(store, None)
    for k in (0, len(ds) - 1):
        item = ds[k]
        row = meta.iloc[item["index"]]
        r, c = int(row["row"]), int(row["col"])
        src, _ = read_scene(series, str(row["t_scene"]), ["B08", "B04"], r, c)
        np.testing.assert_allclose(item["t.truth"], src * np.float32(1e-4), rtol=1e-6)
        assert item["elev"].shape == (1, PATCH, PATCH) and item["elev.valid"].all()
        np.testing.assert_allclose(item["elev"][0], dem[r : r + PATCH, c : c + PATCH], atol=0.1 + 1e-4)
    with pytest.raises(LayoutError, match="--dem"):
        sample(series.catalog_path, layout, tmp_path / "nodem", _quick())


# ---------------------------------------------------------------------------------------------
# 9. Store format


def test_store_format(stores):
    import geopandas as gpd

    result, opts = stores("OS2")
    path = result.path
    manifest = json.loads((path / "store.json").read_text())
    for key in (
        "format",
        "complete",
        "count",
        "layout",
        "layout_toml",
        "patch_size",
        "bands",
        "s1_bands",
        "encodings",
        "compression",
        "splits",
        "options",
        "catalog",
        "arrays",
    ):
        assert key in manifest, key
    assert manifest["format"] == "cloudclear-patches/1" and manifest["complete"] is True
    assert manifest["count"] == result.count and manifest["patch_size"] == PATCH
    assert manifest["bands"] == ["B02", "B03", "B04", "B08"] and manifest["s1_bands"] == ["VV", "VH"]
    assert manifest["options"]["simulate"] == ["t"] and manifest["options"]["s1_max_gap"] == S1_GAP
    store = PatchStore(path)
    # the layout stored is the one sampled: OS2 with t simulated and the S1 gap widened
    expected = load_layout("OS2").simulate(["t"]).with_s1_gap(S1_GAP)
    assert isinstance(store.layout, Layout)
    assert store.layout.to_dict() == expected.to_dict()
    toml = path.parent / "layout.toml"
    toml.write_text(manifest["layout_toml"])
    assert load_layout(toml).to_dict() == expected.to_dict()

    n = len(store)
    assert [a["name"] for a in manifest["arrays"]] == [
        "t-1", "t-1.mask", "t-1.s1", "t", "t.mask", "t.gap", "t.s1", "t+1", "t+1.mask", "t+1.s1",
    ]  # fmt: skip
    index = np.load(path / "index.npy")
    assert index.dtype == np.int64 and index.shape == (n, len(manifest["arrays"]), 2)
    flat = index.reshape(-1, 2)
    assert flat[0, 0] == 0 and np.array_equal(flat[1:, 0], flat[:-1, 0] + flat[:-1, 1])  # contiguous
    size = (path / "patches.bin").stat().st_size
    assert size == int(flat[-1].sum())
    split = np.load(path / "split.npy")
    assert split.dtype == np.uint8 and Counter(split.tolist()) == {
        k: v for k, v in enumerate(manifest["splits"].values()) if v
    }
    raw = 0
    for i in range(n):
        arrays = store.read(i)
        for spec in store.specs:
            a = arrays[spec.name]
            assert a.shape == spec.shape and a.dtype == np.dtype(spec.dtype)
            assert a.dtype == (np.uint8 if spec.kind in ("mask", "gap") else np.uint16)
            raw += a.nbytes
    assert size < 0.8 * raw  # compressed
    meta = gpd.read_file(path / "samples.gpkg", layer="samples")
    assert meta.crs.to_epsg() == 4326 and len(meta) == n
    assert meta["sample_id"].tolist() == list(range(n))
    assert meta["split"].tolist() == [["train", "val", "test"][s] for s in split]
    for col in ("tile", "crs", "row", "col", "left", "top", "right", "bottom", "datetime", "season"):
        assert meta[col].notna().all(), col
    assert set(meta["crs"]) == {"EPSG:32631"}
    assert ((meta["right"] - meta["left"]) == PATCH * 10).all() and ((meta["top"] - meta["bottom"]) == PATCH * 10).all()
    # footprints are the patches' UTM rectangles in lon/lat
    from pyproj import Transformer

    to_ll = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    for _, row in meta.iterrows():
        lon, lat = to_ll.transform((row["left"] + row["right"]) / 2, (row["top"] + row["bottom"]) / 2)
        assert row.geometry.centroid.distance(shapely.Point(lon, lat)) < 1e-5


def test_stored_patches_are_the_scene_readers(series, stores):
    """Sampling reads through the one scene reader: stored values, classes and cloud cover are its."""
    from cloudclear.acquisitions import grid_of
    from cloudclear.catalog.store import policy_of
    from cloudclear.scenes.reader import ReadSpec, SceneReader

    result, _ = stores("OS2")
    store = PatchStore(result.path)
    meta = store.metadata()
    policy = policy_of(store.manifest["clear_policy"])
    assert policy == series.catalog.policy == masks.AS_DECODED
    for i in range(min(len(store), 8)):
        row = meta.iloc[i]
        arrays = store.read(i)
        r, c = int(row["row"]), int(row["col"])
        for slot in store.layout.s2_slots:
            scene = series.catalog.get(str(row[f"{slot.name}_scene"]))
            # read with the store's policy (the catalog's, AS_DECODED: see Series)
            reader = SceneReader(ReadSpec.of(scene, store.bands), grid_of(scene), policy=policy)
            try:
                px = reader.read_window(r, r + PATCH, c, c + PATCH)
            finally:
                reader.close()
            np.testing.assert_array_equal(arrays[slot.name], px.values)
            np.testing.assert_array_equal(arrays[f"{slot.name}.mask"], px.classes)
            if not slot.simulated:
                assert float(row[f"{slot.name}_cloud_pct"]) == pytest.approx(px.cloud_pct, abs=1e-3)
