"""A cold index opens each raster file once: the pixels a scene's statistics read are taken while
the file is open for its metadata (:class:`cloudclear.catalog.stats.Preloaded`), and give the
same catalog as reading the files again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import catalog_layers, count_opens, write_raster

from cloudclear import masks
from cloudclear.catalog import build as build_mod
from cloudclear.catalog import build_index
from cloudclear.catalog.stats import Preloaded, stats_bands
from cloudclear.scenes import read_file_info
from cloudclear.synth import generate_series

BANDS = ["B02", "B03", "B04", "B08"]


def _folder(root: Path) -> list[Path]:
    """A synthetic series (S2 stacks with SCL sidecars, S1, truth files that are no scene), a float
    reflectance S2 file whose scale its data tell, and a scene whose SCL lies on a coarser grid;
    the raster files to index."""
    generate_series(root / "series", height=64, width=96, n_dates=3, interval_days=10, seed=3)
    rng = np.random.default_rng(0)
    refl = rng.uniform(0.02, 0.4, (4, 64, 64)).astype(np.float32)
    write_raster(root / "float" / "S2_T31UFQ_20210610T103021.tif", refl, descriptions=BANDS)
    data = rng.integers(300, 3000, (4, 64, 64)).astype(np.uint16)
    write_raster(root / "coarse" / "S2_T31UFQ_20210620T103021.tif", data, descriptions=BANDS, nodata=0)
    scl = np.full((1, 32, 32), 4, np.uint8)
    scl[:, :, :8] = 9
    write_raster(root / "coarse" / "S2_T31UFQ_20210620T103021_SCL.tif", scl, res=20, descriptions=["SCL"], nodata=0)
    return sorted(root.rglob("*.tif"))


@pytest.mark.parametrize("policy", [masks.DEFAULT_POLICY, masks.AS_DECODED], ids=["default", "as-decoded"])
def test_cold_index_opens_each_file_once(tmp_path, monkeypatch, policy):
    files = _folder(tmp_path / "d")
    coarse_scl = next(p for p in files if p.parent.name == "coarse" and p.stem.endswith("_SCL"))
    counts = count_opens(monkeypatch)
    res = build_index(tmp_path / "d", tmp_path / "c.gpkg", detect=None, policy=policy)
    assert res.files_opened == len(files) and res.scenes_computed == res.scenes
    opened = {Path(p): n for p, n in counts.items() if Path(p) in set(files)}
    assert set(opened) == set(files)
    # One open per file, metadata and statistics together; a mask off its scene's grid is
    # warped from the file, so it alone is opened again: once, under a buffer too (on the grid
    # grown by the halo at once), its scene's bands not at all (worldcereal's patches).
    assert opened.pop(coarse_scl) == 2
    assert set(opened.values()) == {1}
    counts.clear()
    warm = build_index(tmp_path / "d", tmp_path / "c.gpkg", detect=None, policy=policy)
    assert warm.files_opened == 0 and not set(counts) & {str(p) for p in files}


@pytest.mark.parametrize("policy", [masks.DEFAULT_POLICY, masks.AS_DECODED], ids=["default", "as-decoded"])
def test_preloaded_statistics_equal_reading_the_files_again(tmp_path, monkeypatch, policy):
    _folder(tmp_path / "d")
    build_index(tmp_path / "d", tmp_path / "one.gpkg", detect=None, policy=policy)
    # The reference: nothing kept, every scene's files opened again by the scene reader.
    monkeypatch.setattr(build_mod, "Preloaded", lambda: Preloaded(budget=0))
    counts = count_opens(monkeypatch)
    build_index(tmp_path / "d", tmp_path / "two.gpkg", detect=None, policy=policy)
    # The reference did read every scene's files again (truth files are no scene's).
    assert min(n for p, n in counts.items() if "truth" not in Path(p).parts) >= 2
    one, two = catalog_layers(tmp_path / "one.gpkg"), catalog_layers(tmp_path / "two.gpkg")
    assert set(one) == set(two)
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name], check_exact=True)
    scenes = one["scenes"]
    assert scenes["cloud_pct"].notna().sum() == 3 + 1 and (scenes["nodata_pct"] < 100).all()


def test_stats_bands_are_those_the_statistics_read(tmp_path):
    stack = write_raster(tmp_path / "S2_T31UFQ_20210610T103021.tif", np.ones((4, 8, 8), np.uint16), descriptions=BANDS)
    scl = write_raster(
        tmp_path / "S2_T31UFQ_20210610T103021_SCL.tif", np.ones((1, 8, 8), np.uint8), descriptions=["SCL"]
    )
    no_blue = write_raster(
        tmp_path / "S2_T31UFQ_20210611T103021.tif", np.ones((2, 8, 8), np.uint16), descriptions=["B08", "B11"]
    )
    s1 = write_raster(
        tmp_path / "S1_T31UFQ_20210610T172944.tif", np.ones((2, 8, 8), np.float32), descriptions=["VH", "VV"]
    )
    other = write_raster(tmp_path / "notes.tif", np.ones((1, 8, 8), np.float32))
    assert stats_bands(read_file_info(stack)) == (1,)
    assert stats_bands(read_file_info(scl)) == (1,)
    assert stats_bands(read_file_info(no_blue)) == (1,)
    assert stats_bands(read_file_info(s1)) == (2,)  # VV, first of the S1 bands
    assert stats_bands(read_file_info(other)) == ()


def test_preload_keeps_within_its_budget(tmp_path):
    paths = [
        write_raster(
            tmp_path / f"S2_T31UFQ_202106{d:02d}T103021.tif", np.ones((4, 64, 64), np.uint16), descriptions=BANDS
        )
        for d in (1, 2, 3)
    ]
    held = Preloaded(budget=2 * 64 * 64 * 2)
    for p in paths:
        read_file_info(p, then=held.take)
    assert held.used == 2 * 64 * 64 * 2  # the third file is left to be opened again
    held.drop([str(p) for p in paths])
    assert held.used == 0
