"""`sample` applies the clear policy's temporal test: a hazy date its mask calls clear is no clear target.

A 128 x 128 px series of five S2 dates 5 days apart is written as GeoTIFFs (bands + Sen2Cor SCL,
every pixel "vegetation"); the middle date has haze over its left columns (blue + 0.08) that its
SCL calls clear. Stores of 32 px patches are sampled with and without the temporal test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import write_raster

from cloudclear import masks
from cloudclear.catalog import build_index
from cloudclear.layouts import parse_layout
from cloudclear.sampling import PatchStore, SampleOptions, sample
from cloudclear.sampling import build as build_mod

SIZE = 128
PATCH = 32
DATES = ("20210401", "20210406", "20210411", "20210416", "20210421")
HAZY = 2  # the middle date
HAZE_COLS = 48  # haze over columns 0..47: patches at columns 0 and 32 are hazy, 64 and 96 are not
# The tile's grid (31UFQ): a real UTM origin, as the catalog places tiles by name.
ORIGIN = (600000.0, 5600040.0)

#: One S2 slot whose patch must be clear (a training target): every (date, place) a candidate.
CLEAR = {"name": "clear", "reference": "t", "target": "t", "slots": [{"name": "t", "sensor": "S2", "cloud": [0, 0]}]}
#: The same with any cloud cover: every patch is kept, its obscured pixels in its mask.
ANY = {"name": "any", "reference": "t", "target": "t", "slots": [{"name": "t", "sensor": "S2", "cloud": [0, 100]}]}

NO_TEMPORAL = dataclasses.replace(masks.DEFAULT_POLICY, temporal=False)
TEMPORAL = dataclasses.replace(masks.DEFAULT_POLICY, temporal=True, temporal_days=20)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("temporal") / "T31UFQ"
    rng = np.random.default_rng(5)
    for i, day in enumerate(DATES):
        blue = 0.04 + rng.normal(0, 0.002, (SIZE, SIZE))
        green, red = blue + 0.02, blue + 0.01
        nir = 0.30 + rng.normal(0, 0.01, (SIZE, SIZE))
        if i == HAZY:
            blue[:, :HAZE_COLS] += 0.08
            green[:, :HAZE_COLS] += 0.07
            red[:, :HAZE_COLS] += 0.06
        data = (np.stack([blue, green, red, nir]) * 10000).round().astype(np.uint16)
        stem = f"S2_T31UFQ_{day}T103021"
        write_raster(
            root / "S2" / f"{stem}.tif", data, origin=ORIGIN, descriptions=("B02", "B03", "B04", "B08"), nodata=0
        )
        scl = np.full((SIZE, SIZE), 4, np.uint8)  # vegetation: clear everywhere, the haze too
        write_raster(root / "S2" / f"{stem}_SCL.tif", scl, origin=ORIGIN)
    # No detector: only the temporal test can see the haze.
    return build_index(root, detect=None, policy=NO_TEMPORAL).catalog_path


def _sample(catalog: Path, out: Path, layout: dict, policy: masks.ClearPolicy):
    opts = SampleOptions(
        patch_size=PATCH, count=200, block=1, s1=False, seed=0, fractions=(1.0, 0.0, 0.0), policy=policy
    )
    result = sample(catalog, parse_layout(layout, layout["name"]), out, opts)
    return result, PatchStore(out)


def _hazy_patch(row) -> bool:
    return str(row["t_scene"]).endswith(f"_{DATES[HAZY]}T103021")


def test_hazy_date_is_no_clear_target(catalog, tmp_path):
    _, plain = _sample(catalog, tmp_path / "plain", CLEAR, NO_TEMPORAL)
    meta = plain.metadata()
    assert len(meta) == len(DATES) * (SIZE // PATCH) ** 2  # the mask alone: every patch is clear
    assert not any(c.endswith(build_mod.TEMPORAL_SUFFIX) for c in meta.columns)

    result, store = _sample(catalog, tmp_path / "temporal", CLEAR, TEMPORAL)
    meta = store.metadata()
    hazy = meta[[_hazy_patch(r) for _, r in meta.iterrows()]]
    # The hazy date gives targets only where it has no haze (nor haze within the buffer).
    assert len(hazy) == (SIZE // PATCH) * 2 and (hazy["col"] >= 64).all()
    assert len(meta) == len(DATES) * (SIZE // PATCH) ** 2 - (SIZE // PATCH) * 2
    assert (meta["t" + build_mod.TEMPORAL_SUFFIX] == 0).all()  # the targets kept are clear
    for i in range(len(store)):
        assert not masks.is_obscured(store.read(i)["t.mask"]).any()
    rejected = sum(v for k, v in result.rejected.items() if "exact cloud" in k)
    assert rejected == (SIZE // PATCH) * 2
    assert any("by the temporal test" in n for n in result.notes)


def test_hazy_pixels_count_as_obscured_and_are_reported(catalog, tmp_path):
    result, store = _sample(catalog, tmp_path / "any", ANY, TEMPORAL)
    meta = store.metadata()
    column = "t" + build_mod.TEMPORAL_SUFFIX
    total = 0
    for i in range(len(store)):
        row = meta.iloc[i]
        mask = store.read(i)["t.mask"]
        obscured = masks.is_obscured(mask)
        c0 = int(row["col"])
        if _hazy_patch(row):
            # The haze (grown by the 3 px buffer) is cloud in the stored mask, and counted.
            cols = np.arange(c0, c0 + PATCH)
            want = np.broadcast_to(cols < HAZE_COLS + TEMPORAL.buffer_px, (PATCH, PATCH))
            assert np.array_equal(obscured, want), (row["row"], c0)
            assert (mask[want] == masks.MaskClass.CLOUD).all()
            assert int(row[column]) == int(want.sum())
            assert row["t_cloud_pct"] == pytest.approx(100.0 * want.mean(), abs=1e-3)
        else:
            assert not obscured.any() and int(row[column]) == 0
        total += int(row[column])
    assert total == (SIZE // PATCH) * PATCH * (HAZE_COLS + TEMPORAL.buffer_px)
    (note,) = [n for n in result.notes if n.startswith("clear policy (")]
    assert f"{total} px of them by the temporal test" in note


def test_the_window_limits_the_dates_compared(catalog, tmp_path):
    # Within 3 days of each date there is no other date: the test has nothing to compare with.
    narrow = dataclasses.replace(TEMPORAL, temporal_days=3)
    _, store = _sample(catalog, tmp_path / "narrow", ANY, narrow)
    meta = store.metadata()
    assert (meta["t" + build_mod.TEMPORAL_SUFFIX] == 0).all()
    # Within 5 days the middle date has two other dates: enough.
    near = dataclasses.replace(TEMPORAL, temporal_days=5)
    _, store = _sample(catalog, tmp_path / "near", ANY, near)
    assert store.metadata()["t" + build_mod.TEMPORAL_SUFFIX].sum() > 0
