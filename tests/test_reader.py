"""The one scene reader (cloudclear.scenes.reader) on generated scenes, and the callers agreeing with it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
from conftest import write_raster

from cloudclear import masks
from cloudclear.acquisitions import acquisition, grid_of
from cloudclear.catalog import Catalog, build_index
from cloudclear.gridio import Grid
from cloudclear.inference.reading import Source, reflectance
from cloudclear.masks import MaskClass
from cloudclear.scenes.reader import BandRead, ReadSpec, SceneReader, to_physical

BANDS = ["B02", "B03", "B04", "B08"]
ORIGIN = (600000.0, 5700000.0)
SIZE = 64
WHEN = datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc)


def _s2(folder, *, scl_res: float = 20.0):
    """A uint16 S2 scene (a ramp of 4 DN per column, one nodata corner) with a BOA offset, its SCL
    at ``scl_res`` metres (clouds top-left, shadow, snow, nodata), and a linear S1 (VV, VH)."""
    cols = np.arange(SIZE, dtype=np.uint16)
    data = np.stack([np.broadcast_to(1000 + 4 * cols + 100 * b, (SIZE, SIZE)) for b in range(4)]).copy()
    data[:, :8, :8] = 0  # nodata corner
    data[2, 40:44, 40:44] = 0  # one band missing: the pixel is invalid
    write_raster(
        folder / "S2_T31UFQ_20210501T103000.tif",
        data,
        origin=ORIGIN,
        descriptions=BANDS,
        nodata=0,
        tags={"QUANTIFICATION_VALUE": "10000", "BOA_ADD_OFFSET": "-1000"},
    )
    n = int(SIZE * 10 / scl_res)
    scl = np.full((n, n), 4, np.uint8)
    scl[: n // 4, : n // 2] = 9  # cloud
    scl[n // 2 : n // 2 + 2, :] = 3  # shadow
    scl[-2:, -4:] = 11  # snow: clear
    scl[-1, :2] = 0  # mask nodata
    write_raster(folder / "S2_T31UFQ_20210501T103000_SCL.tif", scl, origin=ORIGIN, res=scl_res, descriptions=["SCL"])
    lin = np.full((2, SIZE, SIZE), 0.05, np.float32)
    lin[1] = 0.01
    lin[:, :, :4] = np.nan
    lin[0, 10, 10] = 0.0  # floored at 1e-6 before the log
    write_raster(
        folder / "S1_T31UFQ_20210501T172944.tif",
        lin,
        origin=ORIGIN,
        descriptions=["VV", "VH"],
        tags={"UNITS": "linear"},
        nodata=float("nan"),
    )
    return data, scl


def _scenes(tmp_path, *, policy: masks.ClearPolicy = masks.AS_DECODED, detect: str | None = None, **kw):
    """The catalogued scenes. By default indexed without a detector and with the mask as decoded:
    most tests here are about reading bands and masks on grids, not about the clear decision."""
    data, scl = _s2(tmp_path / "data", **kw)
    cat = Catalog.open(build_index(tmp_path / "data", tmp_path / "c.gpkg", detect=detect, policy=policy).catalog_path)
    s2 = next(s for s in cat if s.sensor == "S2")
    s1 = next(s for s in cat if s.sensor == "S1")
    return cat, s2, s1, data, scl


def _read_all(spec: ReadSpec, grid: Grid, policy: masks.ClearPolicy = masks.AS_DECODED):
    """Every pixel of ``spec`` on ``grid``; by default the mask as decoded (see :func:`_scenes`)."""
    reader = SceneReader(spec, grid, policy=policy)
    try:
        return reader.read(0, grid.height)
    finally:
        reader.close()


def _scl_on_10m(scl: np.ndarray) -> np.ndarray:
    k = SIZE // scl.shape[0]
    return masks.decode(np.repeat(np.repeat(scl, k, axis=0), k, axis=1), "SCL", None)


@pytest.mark.parametrize("scl_res", [10.0, 20.0])
def test_reader_on_the_scene_grid(tmp_path, scl_res):
    cat, s2, _, data, scl = _scenes(tmp_path, scl_res=scl_res)
    grid = grid_of(s2)
    px = _read_all(ReadSpec.of(s2, BANDS), grid)
    assert (s2.scale, s2.offset) == (pytest.approx(1e-4), pytest.approx(-0.1))
    np.testing.assert_array_equal(px.values, data)
    expected_refl = data.astype(np.float32) * np.float32(1e-4) + np.float32(-0.1)
    np.testing.assert_array_equal(px.physical(), expected_refl)
    np.testing.assert_array_equal(px.band_valid, data != 0)
    valid = (data != 0).all(axis=0)
    np.testing.assert_array_equal(px.valid, valid)
    cls = _scl_on_10m(scl)
    cls[~valid] = MaskClass.NODATA
    np.testing.assert_array_equal(px.classes, cls)
    np.testing.assert_array_equal(px.clear, valid & np.isin(cls, masks.CLEAR_CLASSES))
    assert px.clear[-1, -1] and not px.clear[0, 20] and not px.clear[0, 0]  # snow, cloud, nodata
    np.testing.assert_array_equal(px.obscured, np.isin(cls, masks.OBSCURED))
    known = cls != MaskClass.NODATA
    assert px.cloud_pct == pytest.approx(100.0 * np.isin(cls, masks.OBSCURED).sum() / known.sum())
    # A window is the same pixels.
    reader = SceneReader(ReadSpec.of(s2, ["B08", "B02"]), grid, policy=masks.AS_DECODED)
    try:
        win = reader.read_window(10, 30, 5, 50)
        np.testing.assert_array_equal(win.values, data[[3, 0], 10:30, 5:50])
        np.testing.assert_array_equal(win.classes, px.classes[10:30, 5:50])
        np.testing.assert_array_equal(reader.read_mask(10, 30, 5, 50), _scl_on_10m(scl)[10:30, 5:50])
    finally:
        reader.close()


def test_reader_without_mask_calls_every_valid_pixel_clear(tmp_path):
    _, s2, _, data, _ = _scenes(tmp_path)
    px = _read_all(ReadSpec.of(s2, BANDS, mask=False), grid_of(s2))
    valid = (data != 0).all(axis=0)
    assert not px.has_mask and px.cloud_pct is None
    np.testing.assert_array_equal(px.clear, valid)
    np.testing.assert_array_equal(px.known, valid)


def test_reader_warps_onto_another_grid(tmp_path):
    _, s2, _, data, scl = _scenes(tmp_path, scl_res=10.0)
    # A quarter pixel east: bilinear adds one quarter of the 4 DN step, nearest keeps the column.
    a, _, c, _, e, f = tuple(s2.transform)[:6]
    grid = Grid(grid_of(s2).crs, (a, 0.0, c + 2.5, 0.0, e, f), SIZE - 1, SIZE)
    px = _read_all(ReadSpec.of(s2, BANDS), grid)
    inner = (slice(12, 36), slice(12, 36))  # away from the nodata pixels and the edges
    np.testing.assert_array_equal(px.values[0][inner], data[0][inner] + 1)
    valid = (data[:, :, : SIZE - 1] != 0).all(axis=0)
    assert px.valid[inner].all() and not px.valid[:6, :6].any()
    cls = _scl_on_10m(scl)[:, : SIZE - 1]
    np.testing.assert_array_equal(px.classes[valid], cls[valid])
    np.testing.assert_array_equal(px.clear, px.valid & np.isin(px.classes, masks.CLEAR_CLASSES))


def test_warped_mask_is_nodata_where_it_does_not_reach(tmp_path):
    """A cloud mask where 0 means clear, smaller than the grid: beyond it, nothing is known."""
    _, s2, _, _, _ = _scenes(tmp_path)
    clm = write_raster(tmp_path / "clm.tif", np.zeros((1, 16, 16), np.uint8), origin=ORIGIN, res=20.0)
    spec = ReadSpec(
        "S2",
        ("B02",),
        (BandRead(s2.sources["B02"].path, 1, nodata=0.0),),
        mask=masks.MaskBand(str(clm), 1, "CLM"),
    )
    px = _read_all(spec, grid_of(s2))
    assert (px.classes[:32, :32][px.valid[:32, :32]] == MaskClass.CLEAR).all()
    assert (px.classes[32:] == MaskClass.NODATA).all() and (px.classes[:, 32:] == MaskClass.NODATA).all()
    assert not px.clear[32:].any()


def test_s1_linear_is_read_in_db(tmp_path):
    _, _, s1, _, _ = _scenes(tmp_path)
    assert s1.units == "linear"
    px = _read_all(ReadSpec.of(s1, ["VV", "VH"]), grid_of(s1))
    db = px.physical(nan_invalid=True)
    assert np.isnan(db[:, :, :4]).all()
    np.testing.assert_allclose(db[0, 20, 20], 10 * np.log10(0.05), rtol=1e-6)
    np.testing.assert_allclose(db[1, 20, 20], -20.0, rtol=1e-6)
    assert db[0, 10, 10] == pytest.approx(-60.0)
    assert not px.band_valid[:, :, :4].any() and px.band_valid[:, :, 4:].all()


def test_to_physical_is_dn_times_scale_plus_offset():
    dn = np.array([[0, 1, 10000]], np.uint16)
    np.testing.assert_array_equal(
        to_physical(dn, 1e-4, -0.1), dn.astype(np.float32) * np.float32(1e-4) + np.float32(-0.1)
    )
    assert to_physical(dn, 1.0, 0.0).dtype == np.float32
    np.testing.assert_allclose(to_physical(np.array([0.1, 1.0, 0.0]), 1.0, 0.0, "linear"), [-10.0, 0.0, -60.0])


def test_per_band_scales():
    spec = ReadSpec("S2", ("a", "b"), (BandRead("x", 1, 1e-4, 0.0), BandRead("y", 1, 1e-3, -0.1)))
    out = spec.physical(np.full((2, 2, 2), 1000, np.uint16))
    np.testing.assert_allclose(out[0], 0.1, rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.9, rtol=1e-6)


# Under the mask as decoded, under the default decision (the scene's own SCL, a 3 px buffer: index
# runs no detector on a scene with a mask) and with source "combined" (the SCL and the built-in
# detector's mask that index then writes for it).
COMBINED = replace(masks.DEFAULT_POLICY, source="combined")
POLICIES = pytest.mark.parametrize(
    ("policy", "detect"),
    [(masks.AS_DECODED, None), (masks.DEFAULT_POLICY, "builtin"), (COMBINED, "builtin")],
    ids=["as-decoded", "default", "combined"],
)


@POLICIES
@pytest.mark.parametrize("scl_res", [10.0, 20.0])
def test_catalog_statistics_are_the_readers(tmp_path, scl_res, policy, detect):
    _, s2, _, _, _ = _scenes(tmp_path, scl_res=scl_res, policy=policy, detect=detect)
    # the detector's mask is made and recorded only where the policy reads it
    assert (s2.detected is not None) == (policy.source == "combined")
    px = _read_all(ReadSpec.of(s2, [s2.bands[0]]), grid_of(s2), policy)
    assert s2.cloud_pct == pytest.approx(px.cloud_pct, abs=1e-4)
    assert s2.nodata_pct == pytest.approx(100.0 * (1.0 - px.valid.mean()), abs=1e-4)


@POLICIES
def test_inference_source_is_the_reader(tmp_path, policy, detect):
    _, s2, _, _, _ = _scenes(tmp_path, policy=policy, detect=detect)
    acq = acquisition(s2, "t", "target", WHEN, BANDS)
    grid = grid_of(s2)
    px = _read_all(ReadSpec.of(s2, BANDS), grid, policy)
    src = Source(acq, grid, policy)
    try:
        strip = src.read(0, grid.height)
    finally:
        src.close()
    np.testing.assert_array_equal(strip.values, px.values)
    np.testing.assert_array_equal(strip.valid, px.valid)
    np.testing.assert_array_equal(strip.clear, px.clear)
    np.testing.assert_array_equal(reflectance(strip, acq, slice(3, 20)), px.physical(slice(3, 20)))
