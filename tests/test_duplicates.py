"""One acquisition, one scene: duplicates across naming styles, extents and CRSs."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from conftest import write_raster
from rasterio.warp import Resampling, calculate_default_transform, reproject

from cloudclear import masks
from cloudclear.acquisitions import dedupe
from cloudclear.catalog import Catalog, build_index
from cloudclear.scenes import assemble, read_file_info
from cloudclear.scenes.duplicates import drop_duplicates, has_time_of_day

BANDS = ("B02", "B03", "B04", "B08")
ORIGIN = (600000.0, 5700000.0)


def _data(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(300, 4000, (len(BANDS), size, size), dtype=np.uint16)


def _stack(path: Path, data: np.ndarray, **kw) -> Path:
    return write_raster(path, data, descriptions=BANDS, nodata=0, **kw)


def _esa_bands(folder: Path, stamp: str, data: np.ndarray, tile: str = "31UFQ", **kw) -> list[Path]:
    """ESA one-file-per-band naming: T31UFQ_20200101T103421_B02.tif ..."""
    return [
        write_raster(folder / f"T{tile}_{stamp}_{band}.tif", data[i], nodata=0, **kw) for i, band in enumerate(BANDS)
    ]


def _drafts(root: Path):
    infos = [read_file_info(p) for p in sorted(root.rglob("*.tif"))]
    drafts, skipped = assemble(infos)
    assert not skipped, skipped
    return drafts


def test_a_stack_with_a_date_only_name_and_the_esa_band_files_are_one_scene(tmp_path):
    data = _data()
    _stack(tmp_path / "stack" / "S2_20200101.tif", data)
    _esa_bands(tmp_path / "esa", "20200101T103421", data)
    drafts = _drafts(tmp_path)
    assert len(drafts) == 2  # assemble groups by folder and time: two scenes

    kept, dropped = drop_duplicates(drafts)

    assert len(kept) == 1
    assert kept[0].grid.path.endswith("T31UFQ_20200101T103421_B02.tif")  # the one with a time of day
    assert kept[0].datetime.hour == 10
    (skip,) = dropped
    stack = str(tmp_path / "stack" / "S2_20200101.tif")
    assert skip.path == stack
    assert skip.reason == f"{stack}: duplicate of {kept[0].grid.path} (S2, same day, 100 % same ground)"


def test_the_copy_with_a_mask_wins_over_the_one_with_a_time(tmp_path):
    data = _data()
    _stack(tmp_path / "a" / "S2_20200101.tif", data)
    write_raster(tmp_path / "a" / "S2_20200101_SCL.tif", np.full((64, 64), 4, np.uint8), descriptions=["SCL"])
    _esa_bands(tmp_path / "b", "20200101T103421", data)

    kept, dropped = drop_duplicates(_drafts(tmp_path))

    assert [k.grid.name for k in kept] == ["S2_20200101.tif"]
    assert kept[0].mask is not None
    assert len(dropped) == 1 and "T31UFQ_20200101T103421_B02.tif: duplicate of" in dropped[0].reason


def test_two_patches_of_one_tile_on_one_date_are_two_scenes(tmp_path):
    data = _data()
    _esa_bands(tmp_path / "p1", "20200101T103421", data, origin=ORIGIN)
    _esa_bands(tmp_path / "p2", "20200101T103421", data, origin=(ORIGIN[0] + 640.0, ORIGIN[1]))
    # A crop of another extent (a quarter of the first patch) is another product, kept too.
    _stack(tmp_path / "crop" / "S2_20200101T103421.tif", data[:, :32, :32])

    kept, dropped = drop_duplicates(_drafts(tmp_path))

    assert len(kept) == 3 and dropped == []


def test_the_same_ground_in_two_utm_zones_is_one_scene(tmp_path):
    data = _data(size=96)
    tags = {"DATETIME": "2020:01:01 10:34:21"}
    src_path = _stack(tmp_path / "z31" / "S2_T31UFQ_20200101.tif", data, tags=tags)
    # The same acquisition reprojected to the neighbouring zone (a user's own processing chain).
    with rasterio.open(src_path) as src:
        dst_crs = "EPSG:32632"
        transform, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
        out = np.zeros((len(BANDS), h, w), np.uint16)
        for i in range(len(BANDS)):
            reproject(
                data[i],
                out[i],
                src_transform=src.transform,
                src_crs=src.crs,
                dst_transform=transform,
                dst_crs=dst_crs,
                resampling=Resampling.nearest,
                src_nodata=0,
                dst_nodata=0,
            )
    dst = tmp_path / "z32" / "S2_T31UFQ_20200101T103421.tif"
    dst.parent.mkdir()
    profile = dict(driver="GTiff", width=w, height=h, count=len(BANDS), dtype="uint16", crs=dst_crs, nodata=0)
    with rasterio.open(dst, "w", transform=transform, **profile) as out_ds:
        out_ds.write(out)
        for i, b in enumerate(BANDS, 1):
            out_ds.set_band_description(i, b)

    drafts = _drafts(tmp_path)
    assert len(drafts) == 2 and len({d.grid.crs for d in drafts}) == 2

    kept, dropped = drop_duplicates(drafts)

    assert len(kept) == 1
    (skip,) = dropped
    assert "(S2, same time, " in skip.reason and "% same ground)" in skip.reason
    pct = int(skip.reason.rsplit("(", 1)[1].split(", ")[2].split(" ")[0])
    assert 80 <= pct < 100


def test_two_passes_of_one_day_are_two_acquisitions(tmp_path):
    """Adjacent orbits see a place twice in a day, far more than 10 minutes apart."""
    _esa_bands(tmp_path / "a", "20200101T103421", _data(1))
    _esa_bands(tmp_path / "b", "20200101T121421", _data(2))
    _esa_bands(tmp_path / "c", "20200101T104021", _data(3))  # 6 minutes after a: the same one

    kept, dropped = drop_duplicates(_drafts(tmp_path))

    assert sorted(k.datetime.strftime("%H%M") for k in kept) == ["1034", "1214"]
    assert len(dropped) == 1 and "(S2, same time, 100 % same ground)" in dropped[0].reason


def test_a_product_wins_when_everything_else_ties_and_the_choice_is_deterministic(tmp_path):
    data = _data()
    tags = {"DATETIME": "2020:01:01 10:34:21"}
    _stack(tmp_path / "a_loose" / "S2_20200101.tif", data, tags=tags)
    _stack(tmp_path / "b_product" / "S2_20200101.tif", data, tags={**tags, "CLOUDCLEAR_PRODUCT": "SAFE"})
    drafts = _drafts(tmp_path)
    product = next(d for d in drafts if "b_product" in d.grid.path)
    # read_file_info may keep only the tags it knows: set the product tag as a product reader would.
    tagged = dataclasses.replace(product.grid, tags={**product.grid.tags, "CLOUDCLEAR_PRODUCT": "SAFE"})
    drafts = [dataclasses.replace(d, grid=tagged) if d is product else d for d in drafts]

    first, _ = drop_duplicates(drafts)
    second, _ = drop_duplicates(list(reversed(drafts)))

    assert [k.grid.path for k in first] == [k.grid.path for k in second]
    assert "b_product" in first[0].grid.path


def test_midnight_is_a_date_without_a_time(tmp_path):
    _stack(tmp_path / "S2_20200101.tif", _data(), tags={"ACQUISITION_DATETIME": "2020-01-01T00:00:00Z"})
    (draft,) = _drafts(tmp_path)
    assert "tag:" in draft.datetime_source
    assert not has_time_of_day(draft.datetime)
    assert has_time_of_day(draft.datetime + timedelta(hours=10, minutes=34))


@pytest.fixture
def one_scene_catalog(tmp_path) -> Catalog:
    data = _data()
    _stack(tmp_path / "S2_T31UFQ_20200101T103421.tif", data)
    res = build_index(tmp_path, tmp_path / "cat.gpkg", detect=None, policy=masks.AS_DECODED)
    return Catalog.open(res.catalog_path)


def test_dedupe_at_selection_applies_the_same_rule(one_scene_catalog):
    """Catalogs indexed before duplicates were dropped: the same acquisition indexed twice (one copy
    without a time of day, one on a crop of 90 % of its ground) fills one slot, not two."""
    (scene,) = list(one_scene_catalog)
    midnight = scene.datetime.replace(hour=0, minute=0, second=0)
    date_only = dataclasses.replace(
        scene, scene_id="S2_31UFQ_20200101T000000", datetime=midnight, datetime_source="name"
    )
    other_pass = dataclasses.replace(
        scene, scene_id="S2_31UFQ_20200101T121421", datetime=scene.datetime + timedelta(hours=1, minutes=40)
    )
    minx, miny, maxx, maxy = scene.footprint.bounds
    west_half = shapely.box(minx, miny, (minx + maxx) / 2, maxy)
    half = dataclasses.replace(
        scene, scene_id="S2_31UFQ_20200101T103421_half", footprint=scene.footprint.intersection(west_half)
    )

    kept = dedupe([date_only, scene, other_pass, half])

    assert [s.scene_id for s in kept] == [scene.scene_id, half.scene_id, other_pass.scene_id]


def _drop_duplicates_reference(drafts):
    """drop_duplicates as it was before its bounding-box test: every pair of one sensor and day
    compared by the intersection over union of their footprints."""
    from cloudclear.scenes import Skipped
    from cloudclear.scenes.duplicates import MIN_SAME_GROUND, _preference, footprint, ground_overlap, same_time

    order = sorted(range(len(drafts)), key=lambda i: _preference(drafts[i]))
    shapes = [footprint(d.grid) for d in drafts]
    timed = [has_time_of_day(d.datetime) for d in drafts]
    kept, skipped = [], []
    for i in order:
        d = drafts[i]
        dup = next(
            (
                (k, iou)
                for k in kept
                if drafts[k].sensor == d.sensor
                and same_time(d.datetime, timed[i], drafts[k].datetime, timed[k])
                and (iou := ground_overlap(shapes[i], shapes[k])) >= MIN_SAME_GROUND
            ),
            None,
        )
        if dup is None:
            kept.append(i)
            continue
        k, iou = dup
        when = "same time" if timed[i] and timed[k] else "same day"
        msg = f"{d.grid.path}: duplicate of {drafts[k].grid.path} ({d.sensor}, {when}, {100 * iou:.0f} % same ground)"
        skipped.append(Skipped(d.grid.path, msg))
    return [drafts[i] for i in sorted(kept)], sorted(skipped, key=lambda s: s.path)


def test_drop_duplicates_equals_comparing_every_pair(tmp_path):
    """Many scenes of one day at places apart, touching, shifted by a few pixels and repeated:
    the bounding-box test leaves every decision and message as comparing every pair gives."""
    _stack(tmp_path / "S2_T31UFQ_20200101T103421.tif", _data(size=16))
    (base,) = _drafts(tmp_path)
    rng = np.random.default_rng(7)
    drafts = []
    for n in range(120):
        col, row = int(rng.integers(0, 6)), int(rng.integers(0, 3))
        shift = float(rng.choice([0.0, 10.0, 40.0, 160.0]))  # 160 m: the whole width, edges touch
        x, y = ORIGIN[0] + col * 160.0 + shift, ORIGIN[1] - row * 160.0
        grid = dataclasses.replace(
            base.grid, path=str(tmp_path / f"f{n:03d}.tif"), transform=(10.0, 0.0, x, 0.0, -10.0, y)
        )
        when = base.datetime + timedelta(minutes=int(rng.choice([0, 5, 30, 60 * 24])))
        drafts.append(dataclasses.replace(base, grid=grid, datetime=when))
    got, got_skipped = drop_duplicates(drafts)
    ref, ref_skipped = _drop_duplicates_reference(drafts)
    assert [d.grid.path for d in got] == [d.grid.path for d in ref]
    assert got_skipped == ref_skipped
    assert 10 < len(got_skipped) < 110  # both kinds of decision were taken
