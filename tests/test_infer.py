"""Whole-tile inference: input choice, the streamed pipeline (gap filling and networks), the output files."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import UTM31, write_raster
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from torch import nn

from cloudclear import masks
from cloudclear.catalog import Catalog, build_index
from cloudclear.errors import GridError, InferError, InvalidRasterError, OutputExistsError
from cloudclear.gapfill import PixelStatus, gapfill
from cloudclear.inference import pipeline
from cloudclear.inference.pipeline import GapfillMethod, InferOptions, NetMethod, _Source, infer, status_path_for
from cloudclear.inference.select import Grid, choose_inputs, date_range, gapfill_layout, parse_when
from cloudclear.inference.tiling import pad_to
from cloudclear.inference.windows import WindowPlan
from cloudclear.nets.card import ModelCard, Slot, build_net, save_checkpoint
from cloudclear.nets.unet import receptive_radius
from cloudclear.synth import generate_series

BANDS = ("B02", "B03", "B04", "B08")
S1_BANDS = ("VV", "VH")
ORIGIN = (600000.0, 5700000.0)
T0 = datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc)
NORM = {
    "S2": {"mean": [0.05, 0.07, 0.06, 0.25], "std": [0.03, 0.03, 0.04, 0.08]},
    "S1": {"mean": [-11.0, -18.0], "std": [3.0, 3.0]},
}
OBSCURED_SCL = [0, 1, 3, 8, 9, 10]  # nodata, defective, shadow, cloud medium / high, cirrus


# -- helpers -------------------------------------------------------------------------------------


def _when(day: float) -> datetime:
    return T0 + timedelta(days=day)


def _write_s2(
    folder: Path, when: datetime, data, scl, *, tile="31UFQ", origin=ORIGIN, bands=BANDS, res=10.0, tags=None
):
    stamp = when.strftime("%Y%m%dT%H%M%S")
    p = write_raster(
        folder / f"S2_T{tile}_{stamp}.tif", data, origin=origin, res=res, descriptions=bands, nodata=0, tags=tags
    )
    if scl is not None:
        write_raster(
            folder / f"S2_T{tile}_{stamp}_SCL.tif", scl, origin=origin, res=res, descriptions=["SCL"], nodata=0
        )
    return p


def _write_s1(folder: Path, when: datetime, data, *, crs=UTM31, origin=ORIGIN, res=10.0, units="dB"):
    stamp = when.strftime("%Y%m%dT%H%M%S")
    return write_raster(
        folder / f"S1_T31UFQ_{stamp}.tif",
        data.astype(np.float32),
        crs=crs,
        origin=origin,
        res=res,
        descriptions=list(S1_BANDS),
        tags={"UNITS": units},
    )


def _cloudy_scene(rng, h, w, n_rects=5):
    """Random reflectance DN and an SCL band with cloud, shadow and cirrus rectangles."""
    data = rng.integers(300, 5000, (len(BANDS), h, w), dtype=np.uint16)
    scl = np.full((1, h, w), 4, np.uint8)
    for code in [9, 3, 10, 8, 9][:n_rects]:
        r0, c0 = rng.integers(0, h - 10), rng.integers(0, w - 10)
        dh, dw = rng.integers(10, h // 2), rng.integers(10, w // 2)
        scl[0, r0 : r0 + dh, c0 : c0 + dw] = code
    return data, scl


# These tests are about choosing inputs and the pipeline's arithmetic (strips, windows, gap filling,
# the output files), checked against the masks read directly (_clear_and_refl), not about the clear
# decision (tests/test_masks.py, test_temporal_test.py and the policy tests of test_cli_infer.py):
# they pin the decision of cloudclear before the clear policy. The catalog runs no detector and
# counts cloud % from the SCL as decoded (the cloud % the selection tests are written in), and the
# pipeline reads with AS_DECODED (InferOptions' default is masks.DEFAULT_POLICY).
AS_DECODED = masks.AS_DECODED


def _index(folder: Path, cat_path: Path | None = None) -> Catalog:
    cat_path = cat_path or folder / "cat.gpkg"
    return Catalog.open(build_index(folder, cat_path, detect=None, policy=AS_DECODED).catalog_path)


def _opts(**kw) -> InferOptions:
    """InferOptions with the masks as decoded (see AS_DECODED above)."""
    return InferOptions(clear=AS_DECODED, **kw)


def _checkpoint(path: Path, *, depth=2, width=4, window=128, fc=True, s1=True, seed=0) -> Path:
    slots = [
        Slot("t-1", "S2", "before", 1, BANDS),
        Slot("t", "S2", "target", 1, BANDS),
        Slot("t+1", "S2", "after", 1, BANDS),
    ]
    if s1:
        slots.append(Slot("s1@t", "S1", "target", 1, S1_BANDS))
    card = ModelCard(
        architecture="unet",
        options={"width": width, "depth": depth},
        bands=BANDS,
        slots=slots,
        normalisation=NORM if s1 else {"S2": NORM["S2"]},
        receptive_radius=receptive_radius(depth),
        align=2**depth,
        window=window,
        fully_convolutional=fc,
        s1_max_hours=200.0,
    )
    torch.manual_seed(seed)
    net = build_net(card)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # BatchNorm statistics that are not an identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return save_checkpoint(path, net, card)


class Recorder(nn.Module):
    """Wraps a network; remembers each batch it was given."""

    def __init__(self, inner: nn.Module, keep: bool = False):
        super().__init__()
        self.inner = inner
        self.keep = keep
        self.sizes: list[int] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if self.keep:
            self.inputs.append(x.clone())
        return self.inner(x, days)


def _read_all(acq, grid):
    src = _Source(acq, grid, AS_DECODED)  # as the pipeline reads with _opts()
    try:
        return src.read(0, grid.height)
    finally:
        src.close()


def _whole_pass(method: NetMethod, inputs):
    """One forward pass over the whole image (padded to the pooling grid like the pipeline), as DN,
    and the status the pipeline should give without keep_observed."""
    h, w = inputs.grid.height, inputs.grid.width
    a = method.card.align
    ph, pw = math.ceil(h / a) * a, math.ceil(w / a) * a
    parts = []
    seen = np.zeros((h, w), bool)
    for _, acq in inputs.slots:
        if acq is None:
            parts.append(None)
            continue
        s = _read_all(acq, inputs.grid)
        seen |= s.valid
        ok = s.clear if acq.sensor == "S2" else s.valid
        parts.append((pad_to(s.values, ph, pw)[None], pad_to(ok[None], ph, pw)))
    net = method.net.inner if isinstance(method.net, Recorder) else method.net
    with torch.inference_mode():
        x = method._inputs(inputs, parts, 1, ph, pw)
        y = net(x)
        y = method.feed.reflectance(y).numpy()[0, :, :h, :w]
    dn = np.clip(np.rint(y * 10000), 1, 65535)
    status = np.where(seen, PixelStatus.RECONSTRUCTED, PixelStatus.NODATA).astype(np.uint8)
    dn[:, status == PixelStatus.NODATA] = 0
    return dn, status


def _clear_and_refl(acq):
    """An S2 acquisition's reflectance (float32 like the pipeline) and clear mask, read directly."""
    paths = {p for p, _ in acq.sources}
    assert len(paths) == 1
    with rasterio.open(acq.sources[0][0]) as ds:
        dn = ds.read([b for _, b in acq.sources])
    refl = dn.astype(np.float32) * np.float32(acq.scale) + np.float32(acq.offset)
    valid = (dn != 0).all(axis=0)
    with rasterio.open(acq.mask.path) as ds:
        scl = ds.read(acq.mask.band)
    return dn, refl, valid & ~np.isin(scl, OBSCURED_SCL)


def _expected_gapfill(inputs, keep_observed: bool):
    used = sorted(
        (a for a in inputs.acquisitions if keep_observed or a.role != "target"),
        key=lambda a: a.days,
    )
    stack, clear = [], []
    for a in used:
        _, refl, ok = _clear_and_refl(a)
        stack.append(refl)
        clear.append(ok)
    values, status = gapfill(np.stack(stack), np.stack(clear), [a.days for a in used], 0.0)
    dn = np.clip(np.rint(values * 10000), 1, 65535).astype(np.uint16)
    dn[:, status == PixelStatus.NODATA] = 0
    return dn, status


def _read(path: Path):
    with rasterio.open(path) as ds:
        return ds.read()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


# -- a small cloudy series on 64 px blocks (strips of 64 rows are possible) ------------------------

GAP_H, GAP_W = 150, 170
GAP_DAYS = (0, 10, 20, 30, 40)
GAP_TARGET = "2021-05-21"  # day 20


@pytest.fixture(scope="module")
def gap_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gap")
    rng = np.random.default_rng(42)
    for day in GAP_DAYS:
        data, scl = _cloudy_scene(rng, GAP_H, GAP_W)
        scl[0, :8, :8] = 9  # one corner is never seen: nodata in every output
        if day == 10:  # a nodata stripe on the left
            data[:, :, :15] = 0
            scl[:, :, :15] = 0
        if day == 30:  # and one at the bottom
            data[:, -12:] = 0
            scl[:, -12:] = 0
        _write_s2(folder, _when(day), data, scl)
    return _index(folder)


def _gap_inputs(cat, when=GAP_TARGET, neighbours=2):
    m = GapfillMethod(neighbours=neighbours)
    return m, choose_inputs(cat, when, m.layout(), bands=m.bands())


# -- seam-freeness through the whole pipeline ------------------------------------------------------


@pytest.fixture(scope="module")
def series700(tmp_path_factory):
    root = tmp_path_factory.mktemp("s700")
    s = generate_series(
        root / "data",
        height=700,
        width=900,
        n_dates=3,
        interval_days=10,
        start="2021-05-01",
        seed=5,
        cloud_cover=[0.3, 0.5, 0.3],
        s1=True,
    )
    cat = _index(root / "data", root / "cat.gpkg")
    return s, cat, root


@pytest.mark.slow
@pytest.mark.parametrize(
    "fc, strip_rows",
    [(True, 64), (True, 1024), (False, 512)],
    ids=["margin-crop-strips-512", "margin-crop-one-strip", "blend"],
)
def test_pipeline_equals_one_whole_image_pass(series700, tmp_path, fc, strip_rows):
    s, cat, root = series700
    # 42 windows of 192 px (cores of 136 px), batches of 3; the same weights in both modes
    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, width=4, window=192, fc=fc)
    m = NetMethod(ckpt, device="cpu", batch=3, window=192)  # the card's, not the budget's
    m.net = Recorder(m.net)
    inp = choose_inputs(cat, s.s2_dates[1], m.layout(), bands=m.bands(), s1_bands=m.s1_bands())
    assert [a is not None for _, a in inp.slots] == [True, True, True, True]
    assert inp.get("s1@t").sensor == "S1"
    out = tmp_path / "out.tif"
    res = pipeline.run(inp, m, out, _opts(keep_observed=False, status=False, strip_rows=strip_rows))
    plan = WindowPlan.build(700, 900, window=192, radius=receptive_radius(2), align=4)
    assert len(plan.windows()) == sum(m.net.sizes) >= 40  # every window ran, none twice
    assert max(m.net.sizes) == 3
    cache = root / "whole.npy"  # the whole pass does not depend on the mode: compute it once
    if not cache.exists():
        np.save(cache, _whole_pass(m, inp)[0])
    want = np.load(cache)
    got = _read(out).astype(np.float64)
    assert got.shape == (4, 700, 900)
    diff = np.abs(got - want)
    assert diff.max() <= 1, (diff.max(), np.argwhere(diff > 1)[:5])
    assert res.reconstructed == 700 * 900 and res.observed == 0 and res.nodata == 0
    assert res.status_path is None and not status_path_for(out).exists()


@pytest.mark.parametrize(
    "fc, keep_observed, strip_rows",
    [(True, False, 64), (True, True, 64), (True, False, 100), (True, True, 100), (False, True, 64)],
)
@pytest.mark.slow
def test_network_on_small_strips_equals_whole_pass(gap_series, tmp_path, fc, keep_observed, strip_rows):
    """Blocks of 64 rows: windows of 96 rows straddle several strips; the S1 slot stays empty."""
    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, width=4, window=96, s1=True, seed=1, fc=fc)
    m = NetMethod(ckpt, device="cpu", batch=4, window=96)
    inp = choose_inputs(gap_series, GAP_TARGET, m.layout(), bands=m.bands(), s1_bands=m.s1_bands())
    assert inp.get("s1@t") is None and any("s1@t" in n for n in inp.notes)
    out = tmp_path / "out.tif"
    res = pipeline.run(inp, m, out, _opts(keep_observed=keep_observed, strip_rows=strip_rows))
    want, want_status = _whole_pass(m, inp)
    if keep_observed:
        dn, _, clear = _clear_and_refl(inp.get("t"))
        want = np.where(clear[None], dn, want)
        want_status = np.where(clear, PixelStatus.OBSERVED, want_status)
    got, status = _read(out), _read(status_path_for(out))[0]
    assert np.abs(got.astype(np.float64) - want).max() <= 1
    np.testing.assert_array_equal(status, want_status)
    assert res.observed == int((status == PixelStatus.OBSERVED).sum())
    assert (res.observed > 0) == keep_observed


@pytest.mark.parametrize("fc", [True, False], ids=["margin-crop", "blend"])
def test_predict_array_is_the_pipelines_window_loop_bit_for_bit(gap_series, tmp_path, fc):
    """The pipeline streams strips through tiling.predict_row; predict_array runs the same loop
    over the whole input in memory: the same windows, batches and sums, so the same bits."""
    from cloudclear.inference.tiling import predict_array

    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, width=4, window=96, s1=True, seed=1, fc=fc)
    m = NetMethod(ckpt, device="cpu", batch=3, window=96)
    inp = choose_inputs(gap_series, GAP_TARGET, m.layout(), bands=m.bands(), s1_bands=m.s1_bands())
    out = tmp_path / "out.tif"
    pipeline.run(inp, m, out, _opts(keep_observed=False, status=False, strip_rows=64))

    h, w = inp.grid.height, inp.grid.width
    parts = []
    for _, acq in inp.slots:
        if acq is None:
            parts.append(None)
            continue
        s = _read_all(acq, inp.grid)
        parts.append((s.values[None], (s.clear if acq.sensor == "S2" else s.valid)[None]))
    n_out = len(m.card.bands)
    days = m._days(inp)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = m.net(torch.from_numpy(batch), days.expand(len(batch), -1))
            return m.feed.reflectance(y, frame=0).numpy()

    with torch.inference_mode():
        x = m._inputs(inp, parts, 1, h, w)[0].numpy()
    plan = WindowPlan.build(h, w, window=96, radius=m.card.receptive_radius, align=m.card.align)
    pred = predict_array(x, predict, plan, blend=not fc, batch=3, out_channels=n_out)
    np.testing.assert_array_equal(_read(out), np.clip(np.rint(pred * 10000), 1, 65535).astype(np.uint16))


# -- S1 on another grid ---------------------------------------------------------------------------


def _s1_ramp(x, y, x0, y0):
    vv = -15.0 + 0.002 * (x - x0) - 0.001 * (y - y0)
    return np.stack([vv, vv - 7.0])


@pytest.mark.parametrize("kind", ["20m-shifted", "other-utm-zone", "linear-units"])
def test_s1_on_another_grid_reaches_the_net_warped_bilinear(tmp_path, kind):
    h, w = 102, 138  # padded to 104 x 140: one window
    rng = np.random.default_rng(7)
    for day in (0, 10, 20):
        data, scl = _cloudy_scene(rng, h, w, n_rects=2)
        _write_s2(tmp_path, _when(day), data, scl)
    x0, y0 = ORIGIN
    if kind != "other-utm-zone":
        crs, res = UTM31, 20.0
        ox, oy = x0 - 213.7, y0 + 107.3  # not on the S2 pixel grid
    else:
        crs, res = "EPSG:32632", 10.0
        b = transform_bounds(UTM31, crs, x0, y0 - 10 * h, x0 + 10 * w, y0)
        ox, oy = math.floor(b[0]) - 123.3, math.ceil(b[3]) + 77.7
    n_rows = n_cols = int(2 * max(h, w) * 10 / res) + 40
    cols, rows = np.meshgrid(np.arange(n_cols) + 0.5, np.arange(n_rows) + 0.5)
    s1 = _s1_ramp(ox + cols * res, oy - rows * res, ox, oy)
    units = "dB"
    if kind == "linear-units":  # power, converted to dB for the net after resampling
        s1, units = 10 ** (s1 / 10), "linear"
    s1_path = _write_s1(tmp_path, _when(10) + timedelta(hours=7), s1, crs=crs, origin=(ox, oy), res=res, units=units)
    cat = _index(tmp_path)

    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, window=160)
    m = NetMethod(ckpt, device="cpu", window=160)  # the card's (no memory probe through the recorder)
    m.net = Recorder(m.net, keep=True)
    inp = choose_inputs(cat, "2021-05-11", m.layout(), bands=m.bands(), s1_bands=m.s1_bands())
    assert inp.get("s1@t") is not None and inp.get("s1@t").sources[0][0] == str(s1_path)
    res_ = pipeline.run(inp, m, tmp_path / "out.tif", _opts(keep_observed=False))
    assert res_.reconstructed == h * w
    assert m.net.sizes == [1]
    x = m.net.inputs[0][0].numpy()
    assert x.shape == (3 * 5 + 3, 104, 140)
    mean = np.array(NORM["S1"]["mean"], np.float32)[:, None, None]
    std = np.array(NORM["S1"]["std"], np.float32)[:, None, None]
    seen = x[-1, :h, :w]
    assert (seen == 1).all()
    fed = x[-3:-1, :h, :w] * std + mean

    g = inp.grid
    with (
        rasterio.open(s1_path) as src,
        WarpedVRT(
            src,
            crs=CRS.from_wkt(g.crs),
            transform=rasterio.Affine(*g.transform),
            width=g.width,
            height=g.height,
            resampling=Resampling.bilinear,
        ) as vrt,
    ):
        ref = vrt.read()
    assert inp.get("s1@t").units == units
    if units == "linear":
        ref = 10 * np.log10(ref)
    np.testing.assert_allclose(fed, ref, rtol=0, atol=1e-4)
    # and bilinear resampling of a linear ramp is the ramp at the S2 pixel centres
    cx, cy = np.meshgrid(x0 + 10 * (np.arange(w) + 0.5), y0 - 10 * (np.arange(h) + 0.5))
    if crs != UTM31:
        tx, ty = warp_transform(UTM31, crs, cx.ravel(), cy.ravel())
        cx, cy = np.reshape(tx, cx.shape), np.reshape(ty, cy.shape)
    # (GDAL's approximate transformer, and the log of interpolated power, cost up to a few thousandths)
    tol = 1e-3 if kind == "20m-shifted" else 0.01
    np.testing.assert_allclose(fed, _s1_ramp(cx, cy, ox, oy), rtol=0, atol=tol)


# -- gap filling through the pipeline ----------------------------------------------------------------


def test_gapfill_through_the_pipeline_equals_gapfill_on_whole_arrays(gap_series, tmp_path):
    m, inp = _gap_inputs(gap_series)
    assert [s.name for s, _ in inp.slots] == ["t-2", "t-1", "t", "t+1", "t+2"]
    assert all(a is not None for _, a in inp.slots)
    want, want_status = _expected_gapfill(inp, keep_observed=True)
    assert (want_status == PixelStatus.NODATA).any() and (want_status == PixelStatus.OBSERVED).any()
    outputs = []
    for strip in (37, 100, 512):
        out = tmp_path / f"s{strip}" / "out.tif"
        res = pipeline.run(inp, m, out, _opts(strip_rows=strip))
        got, status = _read(out), _read(status_path_for(out))[0]
        np.testing.assert_array_equal(status, want_status)
        np.testing.assert_array_equal(got, want)
        assert res.nodata == int((want_status == 0).sum()) and res.observed == int((want_status == 1).sum())
        assert res.reconstructed == int((want_status == 2).sum())
        outputs.append((_sha(out), _sha(status_path_for(out))))
    assert outputs[0] == outputs[1] == outputs[2]  # byte-identical whatever the strip height


def test_keep_observed_copies_clear_target_pixels_exactly(gap_series, tmp_path):
    m, inp = _gap_inputs(gap_series)
    out = tmp_path / "out.tif"
    res = pipeline.run(inp, m, out, _opts(keep_observed=True, strip_rows=64))
    dn, _, clear = _clear_and_refl(inp.get("t"))
    assert inp.get("t").scale == pytest.approx(1e-4) and inp.get("t").offset == 0.0
    got, status = _read(out), _read(status_path_for(out))[0]
    np.testing.assert_array_equal(got[:, clear], dn[:, clear])
    np.testing.assert_array_equal(status == PixelStatus.OBSERVED, clear)
    assert res.observed == int(clear.sum()) > 0
    with rasterio.open(out) as ds:
        assert ds.tags()["CLOUDCLEAR_KEEP_OBSERVED"] == "true"


def test_default_options_decide_with_the_default_clear_policy(gap_series, tmp_path):
    """The one test here on the default decision: InferOptions() reads with masks.DEFAULT_POLICY,
    whose 3 px buffer removes the ring of every cloud rectangle from the pixels the SCL calls clear."""
    assert InferOptions().clear == masks.DEFAULT_POLICY
    m, inp = _gap_inputs(gap_series)
    decoded = pipeline.run(inp, m, tmp_path / "decoded.tif", _opts())
    res = pipeline.run(inp, m, tmp_path / "default.tif", InferOptions())
    _, _, clear = _clear_and_refl(inp.get("t"))
    assert decoded.observed == int(clear.sum())
    assert 0 < res.observed < decoded.observed
    observed = _read(res.status_path)[0] == PixelStatus.OBSERVED
    assert (observed <= clear).all()
    with rasterio.open(res.path) as ds:
        assert ds.tags()["CLOUDCLEAR_CLEAR_POLICY"] == masks.DEFAULT_POLICY.describe()
    with rasterio.open(decoded.path) as ds:
        assert ds.tags()["CLOUDCLEAR_CLEAR_POLICY"] == AS_DECODED.describe()


def test_boa_offset_of_newer_baselines_is_applied(tmp_path):
    """Processing baseline 04.00 stores DN = 10000 * reflectance + 1000 (BOA_ADD_OFFSET -1000)."""
    rng = np.random.default_rng(5)
    for day in (0, 10, 20):
        data, scl = _cloudy_scene(rng, 80, 90, n_rects=2)
        tags = {"BOA_ADD_OFFSET": "-1000", "QUANTIFICATION_VALUE": "10000"} if day == 10 else None
        data[0, :4, :4] = 1000  # reflectance 0: written as 1, not as nodata
        scl[0, :4, :4] = 4
        _write_s2(tmp_path, _when(day), data, scl, tags=tags)
    cat = _index(tmp_path)
    m, inp = _gap_inputs(cat, when="2021-05-11", neighbours=1)
    t = inp.get("t")
    assert (t.scale, t.offset) == (pytest.approx(1e-4), pytest.approx(-0.1))
    res = pipeline.run(inp, m, tmp_path / "out.tif", _opts())
    dn, _, clear = _clear_and_refl(t)
    got = _read(res.path)
    np.testing.assert_array_equal(got[:, clear], np.clip(dn[:, clear].astype(np.int64) - 1000, 1, None))
    assert (got[0, :4, :4] == 1).all()
    want, want_status = _expected_gapfill(inp, keep_observed=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_read(res.status_path)[0], want_status)


def test_gapfill_without_keep_observed_ignores_the_target_date(gap_series, tmp_path):
    m, inp = _gap_inputs(gap_series)
    out = tmp_path / "out.tif"
    res = pipeline.run(inp, m, out, _opts(keep_observed=False, strip_rows=64))
    got, status = _read(out), _read(status_path_for(out))[0]
    assert res.observed == 0 and not (status == PixelStatus.OBSERVED).any()
    want, want_status = _expected_gapfill(inp, keep_observed=False)
    np.testing.assert_array_equal(status, want_status)
    np.testing.assert_array_equal(got, want)
    # the target's own pixels are not copied: where its neighbours differ, the output does too
    dn, _, clear = _clear_and_refl(inp.get("t"))
    assert (got[:, clear] != dn[:, clear]).any()


def test_date_without_an_acquisition_interpolates_its_neighbours(gap_series, tmp_path):
    m, inp = _gap_inputs(gap_series, when="2021-05-26")  # between day 20 and day 30
    assert inp.get("t") is None and inp.target == datetime(2021, 5, 26, tzinfo=timezone.utc)
    assert any(re.search(r"slot.*\bt\b", n) for n in inp.notes)
    out = tmp_path / "out.tif"
    res = pipeline.run(inp, m, out, _opts(keep_observed=True))
    got, status = _read(out).astype(np.float64), _read(status_path_for(out))[0]
    assert res.observed == 0 and not (status == PixelStatus.OBSERVED).any()
    before, after = inp.get("t-1"), inp.get("t+1")
    assert before.datetime == _when(20) and after.datetime == _when(30)
    dn_b, _, clear_b = _clear_and_refl(before)
    dn_a, _, clear_a = _clear_and_refl(after)
    both = clear_b & clear_a
    assert both.sum() > 1000
    frac = -before.days / (after.days - before.days)
    assert 0 < frac < 1
    lerp = dn_b + (dn_a.astype(np.float64) - dn_b) * frac
    assert np.abs(got[:, both] - lerp[:, both]).max() <= 1
    lo, hi = np.minimum(dn_a, dn_b), np.maximum(dn_a, dn_b)
    assert ((got[:, both] >= lo[:, both] - 1) & (got[:, both] <= hi[:, both] + 1)).all()
    with rasterio.open(out) as ds:
        assert ds.tags()["DATETIME"] == "2021-05-26T00:00:00"


# -- windows that see nothing are skipped ------------------------------------------------------------


@pytest.mark.slow
def test_all_nodata_windows_never_reach_the_network(tmp_path):
    h, w = 128, 256
    rng = np.random.default_rng(3)
    for day in (0, 10, 20):
        data, scl = _cloudy_scene(rng, h, w, n_rects=2)
        data[:, :, : w // 2] = 0
        scl[:, :, : w // 2] = 0
        _write_s2(tmp_path, _when(day), data, scl)
    cat = _index(tmp_path)
    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, window=96, s1=False)
    m = NetMethod(ckpt, device="cpu", batch=2, window=96)
    m.net = Recorder(m.net)
    inp = choose_inputs(cat, "2021-05-11", m.layout(), bands=m.bands())
    out = tmp_path / "out.tif"
    res = pipeline.run(inp, m, out, _opts(keep_observed=False))
    plan = WindowPlan.build(h, w, window=96, radius=receptive_radius(2), align=4)
    rows, cols = plan.spans(plan.padded_height), plan.spans(plan.padded_width)
    seeing = [c for c in cols if c.stop > w // 2]
    assert sum(m.net.sizes) == len(rows) * len(seeing) < len(plan.windows())
    got, status = _read(out), _read(status_path_for(out))[0]
    assert (got[:, :, : w // 2] == 0).all() and (status[:, : w // 2] == PixelStatus.NODATA).all()
    assert (got[:, :, w // 2 :] > 0).all() and (status[:, w // 2 :] == PixelStatus.RECONSTRUCTED).all()
    assert res.nodata == h * w // 2
    want, _ = _whole_pass(m, inp)
    assert np.abs(got[:, :, w // 2 :].astype(np.float64) - want[:, :, w // 2 :]).max() <= 1


@pytest.mark.slow
def test_method_window_sets_the_network_window(gap_series, tmp_path):
    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, window=256, s1=False)
    m = NetMethod(ckpt, device="cpu", batch=1, window=96)
    m.net = Recorder(m.net)
    inp = choose_inputs(gap_series, GAP_TARGET, m.layout(), bands=m.bands())
    pipeline.run(inp, m, tmp_path / "out.tif", _opts(status=False))
    plan = WindowPlan.build(GAP_H, GAP_W, window=96, radius=receptive_radius(2), align=4)
    assert sum(m.net.sizes) == len(plan.windows())


# -- the output files --------------------------------------------------------------------------------


def test_output_profile_and_status_sidecar(gap_series, tmp_path):
    m, inp = _gap_inputs(gap_series)
    out = tmp_path / "out.tif"
    res = pipeline.run(inp, m, out, _opts())
    assert res.path == out and res.status_path == tmp_path / "out_status.tif"
    assert (res.width, res.height, res.tile, res.method) == (GAP_W, GAP_H, "31UFQ", "gapfill")
    t = inp.get("t")
    with rasterio.open(t.sources[0][0]) as src:
        crs, transform = src.crs, src.transform
    with rasterio.open(out) as ds:
        p = ds.profile
        assert ds.driver == "GTiff" and p["tiled"] and (p["blockxsize"], p["blockysize"]) == (512, 512)
        assert ds.dtypes == ("uint16",) * 4 and ds.nodata == 0
        assert ds.compression.name == "zstd"
        assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert ds.crs == crs and ds.transform == transform
        assert ds.descriptions == BANDS
        tags = ds.tags()
        assert tags["DATETIME"] == t.datetime.strftime("%Y-%m-%dT%H:%M:%S") == "2021-05-21T10:30:00"
        assert tags["TILE_ID"] == "31UFQ" and tags["CLOUDCLEAR_METHOD"] == "gapfill"
        assert tags["QUANTIFICATION_VALUE"] == "10000"
        assert tags["CLOUDCLEAR_INPUTS"].split(",") == [a.scene_id for a in inp.acquisitions]
    with rasterio.open(res.status_path) as ds:
        assert ds.count == 1 and ds.dtypes == ("uint8",)
        assert ds.crs == crs and ds.transform == transform
        assert ds.tags()["STATUS_CLASSES"] == "0=nodata, 1=observed, 2=reconstructed"
        counts = np.bincount(ds.read(1).ravel(), minlength=3)
    assert list(counts) == [res.nodata, res.observed, res.reconstructed]
    assert sum(counts) == GAP_H * GAP_W
    assert _leftovers(tmp_path) == []


def test_cog_output(tmp_path):
    h, w = 600, 640  # larger than one 512 px block: the COG has overviews
    rng = np.random.default_rng(11)
    for day in (0, 10, 20):
        data, scl = _cloudy_scene(rng, h, w, n_rects=3)
        _write_s2(tmp_path / "data", _when(day), data, scl)
    cat = _index(tmp_path / "data")
    m, inp = _gap_inputs(cat, when="2021-05-11", neighbours=1)
    plain = pipeline.run(inp, m, tmp_path / "plain.tif", _opts(strip_rows=256))
    cog = pipeline.run(inp, m, tmp_path / "cog.tif", _opts(strip_rows=256, cog=True))
    with rasterio.open(cog.path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION") == "ZSTD"
        assert ds.overviews(1) and ds.overviews(1)[0] == 2
        assert ds.descriptions == BANDS and ds.tags()["TILE_ID"] == "31UFQ" and ds.nodata == 0
        data = ds.read()
    with rasterio.open(plain.path) as ds:
        assert "LAYOUT" not in ds.tags(ns="IMAGE_STRUCTURE")
        np.testing.assert_array_equal(data, ds.read())
    np.testing.assert_array_equal(_read(cog.status_path), _read(plain.status_path))
    assert _leftovers(tmp_path) == []


# snapped outward to columns 12..89 and rows 33..99: 77 x 66 pixels, off the pooling grid of a network
BBOX = (ORIGIN[0] + 123.4, ORIGIN[1] - 987.6, ORIGIN[0] + 881.1, ORIGIN[1] - 333.3)


def test_bbox_is_snapped_outward_and_must_overlap(gap_series, tmp_path):
    m, inp = _gap_inputs(gap_series)
    g = inp.grid.crop(BBOX)
    assert (g.width, g.height) == (77, 66)
    assert g.transform == (10.0, 0.0, ORIGIN[0] + 120.0, 0.0, -10.0, ORIGIN[1] - 330.0)
    with pytest.raises(GridError, match=r"does not overlap the tile"):
        pipeline.run(inp, m, tmp_path / "none.tif", _opts(bbox=(0.0, 0.0, 10.0, 10.0)))
    assert list(tmp_path.iterdir()) == []


def test_bbox_writes_only_the_sub_grid(gap_series, tmp_path):
    m, inp = _gap_inputs(gap_series)
    full = pipeline.run(inp, m, tmp_path / "full.tif", _opts())
    part = pipeline.run(inp, m, tmp_path / "part.tif", _opts(bbox=BBOX, strip_rows=37))
    assert (part.width, part.height) == (77, 66)
    with rasterio.open(part.path) as ds:
        assert (ds.width, ds.height) == (77, 66)
        assert ds.transform == rasterio.Affine(10.0, 0.0, ORIGIN[0] + 120.0, 0.0, -10.0, ORIGIN[1] - 330.0)
        got = ds.read()
    np.testing.assert_array_equal(got, _read(full.path)[:, 33:99, 12:89])
    np.testing.assert_array_equal(_read(part.status_path), _read(full.status_path)[:, 33:99, 12:89])


def test_network_with_a_bbox_equals_a_whole_pass_over_the_sub_grid(gap_series, tmp_path):
    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, window=96, s1=False)
    m = NetMethod(ckpt, device="cpu")
    inp = choose_inputs(gap_series, GAP_TARGET, m.layout(), bands=m.bands())
    part = pipeline.run(inp, m, tmp_path / "part.tif", _opts(bbox=BBOX, keep_observed=False))
    assert (part.width, part.height) == (77, 66)
    want, want_status = _whole_pass(m, dataclasses.replace(inp, grid=inp.grid.crop(BBOX)))
    assert np.abs(_read(part.path).astype(np.float64) - want).max() <= 1
    np.testing.assert_array_equal(_read(part.status_path)[0], want_status)


@settings(max_examples=80, deadline=None)
@given(
    st.floats(-50, 250),
    st.floats(-50, 250),
    st.floats(0.01, 200),
    st.floats(0.01, 200),
)
def test_grid_crop_is_the_smallest_pixel_aligned_cover(c0, r0, dc, dr):
    g = Grid(UTM31, (10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0), 170, 150)
    bbox = (600000.0 + 10 * c0, 5700000.0 - 10 * (r0 + dr), 600000.0 + 10 * (c0 + dc), 5700000.0 - 10 * r0)
    inter_c = (max(c0, 0), min(c0 + dc, 170))
    inter_r = (max(r0, 0), min(r0 + dr, 150))
    if inter_c[1] - inter_c[0] < 1e-6 or inter_r[1] - inter_r[0] < 1e-6:
        return  # no overlap, or one that floating point cannot place
    sub = g.crop(bbox)
    col0 = (sub.transform[2] - 600000.0) / 10
    row0 = (5700000.0 - sub.transform[5]) / 10
    assert col0 == int(col0) and row0 == int(row0)  # on the parent's pixel grid
    assert 0 <= col0 and col0 + sub.width <= 170 and 0 <= row0 and row0 + sub.height <= 150
    assert col0 <= inter_c[0] + 1e-6 and col0 + sub.width >= inter_c[1] - 1e-6  # covers the overlap
    assert row0 <= inter_r[0] + 1e-6 and row0 + sub.height >= inter_r[1] - 1e-6
    assert col0 > inter_c[0] - 1 and col0 + sub.width < inter_c[1] + 1  # by less than a pixel each side
    assert row0 > inter_r[0] - 1 and row0 + sub.height < inter_r[1] + 1


# -- atomicity ---------------------------------------------------------------------------------------


class _FailingGapfill(GapfillMethod):
    def __init__(self) -> None:
        super().__init__(neighbours=2)
        self.calls = 0

    def run(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom on the second span")
        return super().run(*args, **kwargs)


def test_failure_midway_leaves_nothing_behind(gap_series, tmp_path):
    _, inp = _gap_inputs(gap_series)
    m = _FailingGapfill()
    out = tmp_path / "out.tif"
    with pytest.raises(RuntimeError, match="boom on the second span"):
        pipeline.run(inp, m, out, _opts(strip_rows=64))
    assert m.calls == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a failed overwrite leaves the previous output as it was
    good = pipeline.run(inp, GapfillMethod(neighbours=2), out, _opts())
    before = (_sha(out), _sha(good.status_path))
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.run(inp, _FailingGapfill(), out, _opts(strip_rows=64, overwrite=True, cog=True))
    assert (_sha(out), _sha(good.status_path)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "out_status.tif"]


def test_unreadable_block_midway_raises_and_leaves_nothing(tmp_path):
    rng = np.random.default_rng(8)
    for day in (0, 10, 20):
        data, scl = _cloudy_scene(rng, 300, 170, n_rects=2)
        _write_s2(tmp_path / "data", _when(day), data, scl)
    # the day-20 scene again, deflate-compressed, then some of its later blocks overwritten
    victim = write_raster(
        tmp_path / "data" / f"S2_T31UFQ_{_when(20):%Y%m%dT%H%M%S}.tif",
        data,
        descriptions=BANDS,
        nodata=0,
        compress="deflate",
    )
    cat = _index(tmp_path / "data")
    raw = bytearray(victim.read_bytes())
    a, b = int(len(raw) * 0.6), int(len(raw) * 0.7)
    raw[a:b] = bytes(b - a)
    victim.write_bytes(bytes(raw))
    m, inp = _gap_inputs(cat, when="2021-05-11", neighbours=1)
    out = tmp_path / "out" / "o.tif"
    with pytest.raises(InvalidRasterError, match=rf"{victim.name}: cannot read rows \d+\.\.\d+"):
        pipeline.run(inp, m, out, _opts(strip_rows=64))
    assert list(out.parent.iterdir()) == []


def test_existing_output_is_refused_before_reading_anything(gap_series, tmp_path, monkeypatch):
    m, inp = _gap_inputs(gap_series)

    def no_reading(*args, **kwargs):
        raise AssertionError("read an input before checking the output")

    monkeypatch.setattr(pipeline, "Source", no_reading)
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match=r"out\.tif: exists; pass --overwrite"):
        pipeline.run(inp, m, out, _opts())
    assert out.read_bytes() == b"precious"
    out.unlink()
    status_path_for(out).write_bytes(b"precious too")
    with pytest.raises(OutputExistsError, match=r"out_status\.tif: exists"):
        pipeline.run(inp, m, out, _opts())
    assert status_path_for(out).read_bytes() == b"precious too"


def test_a_failed_write_in_the_writer_thread_reaches_the_caller(gap_series, tmp_path, monkeypatch):
    import errno

    from cloudclear.errors import OutputError
    from cloudclear.inference import writer

    _, inp = _gap_inputs(gap_series)
    out = tmp_path / "out.tif"
    good = pipeline.run(inp, GapfillMethod(neighbours=2), out, _opts(strip_rows=64))
    before = (_sha(out), _sha(good.status_path))
    write = writer.Writer._write
    calls = []

    def full_on_the_second_write(self, ds, name, data, window):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, ds, name, data, window)

    monkeypatch.setattr(writer.Writer, "_write", full_on_the_second_write)
    with pytest.raises(OutputError, match=r"out(_status)?\.tif: cannot write output \(no space left on device\)"):
        pipeline.run(inp, GapfillMethod(neighbours=2), out, _opts(strip_rows=64, overwrite=True))
    assert len(calls) == 2
    assert (_sha(out), _sha(good.status_path)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "out_status.tif"]


def test_non_finite_network_output_is_an_error_and_writes_nothing(gap_series, tmp_path):
    from cloudclear.errors import NonFiniteOutputError

    ckpt = _checkpoint(tmp_path / "m.safetensors", depth=2, window=96, s1=False)
    m = NetMethod(ckpt, device="cpu")
    with torch.no_grad():
        next(p for p in m.net.parameters() if p.dim() == 4).fill_(float("inf"))
    inp = choose_inputs(gap_series, GAP_TARGET, m.layout(), bands=m.bands())
    out = tmp_path / "out" / "o.tif"
    with pytest.raises(NonFiniteOutputError, match=rf"{re.escape(str(ckpt))}: the network produced NaN or infinite"):
        pipeline.run(inp, m, out, _opts())
    assert list(out.parent.iterdir()) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_partials_of_dead_runs_are_removed(gap_series, tmp_path):
    m, inp = _gap_inputs(gap_series)
    dead = _dead_pid()
    stale = [f".out.partial-{dead}.tif", f".out_status.partial-{dead}.tif", f".out.stream.partial-{dead}.tif"]
    alive = [f".out.partial-{os.getppid()}.tif", f".other.partial-{dead}.tif"]
    for name in stale + alive:
        (tmp_path / name).write_bytes(b"x")
    pipeline.run(inp, m, tmp_path / "out.tif", _opts())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(alive + ["out.tif", "out_status.tif"])


# -- infer(): several dates ----------------------------------------------------------------------------


def test_infer_several_dates_into_a_folder(gap_series, tmp_path):
    results = infer(gap_series, ["2021-05-11", "2021-05-26"], GapfillMethod(neighbours=1), tmp_path, options=_opts())
    names = [r.path.name for r in results.results]
    assert names == ["S2_T31UFQ_20210511_gapfill.tif", "S2_T31UFQ_20210526_gapfill.tif"]
    assert all(r.path.exists() and r.status_path.exists() for r in results.results)
    templ = infer(gap_series, ["2021-05-11"], GapfillMethod(neighbours=1), tmp_path / "x_{date}.tif", options=_opts())
    assert templ.results[0].path == (tmp_path / "x_20210511.tif").resolve()
    with pytest.raises(OutputExistsError):
        infer(gap_series, ["2021-05-26", "2021-05-11"], GapfillMethod(neighbours=1), tmp_path, options=_opts())
    # a date that cannot be served stops the run before anything is written
    with pytest.raises(InferError, match=r"--max-days"):
        infer(gap_series, ["2021-06-01", "2022-01-01"], GapfillMethod(neighbours=1), tmp_path / "more", options=_opts())
    assert not (tmp_path / "more").exists()


# -- choosing inputs ---------------------------------------------------------------------------------

SIZE = 40  # 1600 px: cloud % in steps of 2.5 by whole rows


def _scene(folder, when, cloud_pct: float, *, tile="31UFQ", bands=BANDS, origin=ORIGIN):
    data = np.full((len(bands), SIZE, SIZE), 1000, np.uint16)
    scl = np.full((1, SIZE, SIZE), 4, np.uint8)
    scl[0, : round(cloud_pct / 100 * SIZE)] = 9
    return _write_s2(folder, when, data, scl, tile=tile, bands=bands, origin=origin)


def test_neighbours_nearest_first_then_least_cloudy(tmp_path):
    target = _when(10)
    _scene(tmp_path, target, 30)
    _scene(tmp_path, _when(5), 50)  # exactly 5 days before
    _scene(tmp_path, _when(5) - timedelta(hours=2.5), 10)  # 5.1 days: as near in days, less cloudy
    _scene(tmp_path, _when(2), 0)
    _scene(tmp_path, _when(13), 90)  # nearest after, but above max_cloud
    _scene(tmp_path, _when(14), 60)
    _scene(tmp_path, _when(15), 0)
    cat = _index(tmp_path)
    layout = gapfill_layout(neighbours=3, max_days=30, max_cloud=85)
    inp = choose_inputs(cat, "2021-05-11", layout)
    got = {s.name: (a.datetime, a.cloud_pct) if a else None for s, a in inp.slots}
    assert got["t"] == (target, 30.0)
    assert got["t-1"] == (_when(5) - timedelta(hours=2.5), 10.0)
    assert got["t-2"] == (_when(5), 50.0)
    assert got["t-3"] == (_when(2), 0.0)
    assert got["t+1"] == (_when(14), 60.0)
    assert got["t+2"] == (_when(15), 0.0)
    assert got["t+3"] is None and any("t+3" in n for n in inp.notes)
    assert inp.get("t-1").days == pytest.approx(-(5 + 2.5 / 24))
    assert inp.bands == BANDS and inp.tile == "31UFQ"
    # a cloudy target is still the target: max_cloud applies to neighbours only
    inp = choose_inputs(cat, "2021-05-14", layout)
    assert inp.get("t").cloud_pct == 90.0


def test_a_datetime_target_matches_an_acquisition_within_an_hour(tmp_path):
    for day in (0, 10, 20):
        _scene(tmp_path, _when(day), 0)
    cat = _index(tmp_path)
    layout = gapfill_layout(1)
    inp = choose_inputs(cat, "2021-05-11T10:00:00Z", layout)  # 30 min before the 10:30 acquisition
    assert inp.get("t").datetime == _when(10) and inp.target == _when(10)
    assert inp.get("t-1").days == pytest.approx(-10.0) and inp.get("t+1").days == pytest.approx(10.0)
    inp = choose_inputs(cat, "2021-05-11T08:00:00Z", layout)  # 2.5 h before: no target acquisition
    assert inp.get("t") is None and inp.target == datetime(2021, 5, 11, 8, tzinfo=timezone.utc)
    assert inp.get("t+1").datetime == _when(10) and inp.get("t+1").days == pytest.approx(2.5 / 24)


def test_the_same_acquisition_indexed_twice_counts_once(tmp_path):
    _scene(tmp_path, _when(10), 20)
    _scene(tmp_path, _when(0), 0)
    # the day-0 scene again, as ESA per-band files in another folder (no mask)
    stamp = _when(0).strftime("%Y%m%dT%H%M%S")
    for b in BANDS:
        write_raster(tmp_path / "bands" / f"T31UFQ_{stamp}_{b}.tif", np.full((SIZE, SIZE), 1000, np.uint16), nodata=0)
    cat = _index(tmp_path)
    s2 = cat.scenes[cat.scenes["sensor"] == "S2"]
    # index keeps one: the record with a mask (the per-band copy is skipped as its duplicate)
    assert (s2["datetime"] == _when(0)).sum() == 1
    assert any("duplicate of" in s.reason and "bands" in s.path for s in cat.skipped())
    inp = choose_inputs(cat, "2021-05-11", gapfill_layout(neighbours=2, max_days=30))
    assert inp.get("t-1") is not None and inp.get("t-2") is None
    assert inp.get("t-1").mask is not None  # the record with a mask is preferred
    ids = [a.scene_id for a in inp.acquisitions]
    assert len(ids) == len(set(ids)) == 2


def test_tile_must_be_named_when_the_catalog_has_several(tmp_path):
    _scene(tmp_path, _when(0), 0, tile="31UFQ")
    _scene(tmp_path, _when(5), 0, tile="31UFQ")
    _scene(tmp_path, _when(0), 0, tile="32ULU", origin=(300000.0, 5700000.0))
    cat = _index(tmp_path)
    layout = gapfill_layout(1)
    with pytest.raises(InferError, match=r"holds S2 tiles 31UFQ, 32ULU; choose one with --tile"):
        choose_inputs(cat, "2021-05-03", layout)
    with pytest.raises(InferError, match=r"no S2 scenes of tile 33UUU \(tiles: 31UFQ, 32ULU\)"):
        choose_inputs(cat, "2021-05-03", layout, tile="33UUU")
    for name in ("31UFQ", "T31UFQ", "t31ufq"):
        assert choose_inputs(cat, "2021-05-03", layout, tile=name).tile == "31UFQ"


def test_no_neighbours_within_max_days(tmp_path):
    _scene(tmp_path, _when(0), 10)
    cat = _index(tmp_path)
    with pytest.raises(InferError, match=r"within 30 days of 2021-07-01 .*widen --max-days"):
        choose_inputs(cat, "2021-07-01", gapfill_layout(2, max_days=30))
    # too cloudy is reported the same way
    _scene(tmp_path, _when(3), 100)
    cat = _index(tmp_path)
    with pytest.raises(InferError, match=r"--max-days or --max-cloud"):
        choose_inputs(cat, "2021-05-03", gapfill_layout(1, max_days=1, max_cloud=50))


def test_neighbour_lacking_a_band_is_named(tmp_path):
    _scene(tmp_path, _when(10), 0)
    poor = _scene(tmp_path, _when(5), 0, bands=("B02", "B03", "B04"))
    cat = _index(tmp_path)
    with pytest.raises(InferError, match=rf"{poor.name}: scene .* has bands B02,B03,B04 but B08 is needed"):
        choose_inputs(cat, "2021-05-11", gapfill_layout(1))
    # asking only for bands every scene has works
    inp = choose_inputs(cat, "2021-05-11", gapfill_layout(1), bands=["B02", "B04"])
    assert inp.get("t-1").bands == ("B02", "B04") and inp.get("t-1").sources[1][1] == 3


# -- dates -------------------------------------------------------------------------------------------


def test_date_range_and_parse_when():
    utc = timezone.utc
    assert date_range("2021-05-01", "2021-05-11", 5) == [datetime(2021, 5, d, tzinfo=utc) for d in (1, 6, 11)]
    assert date_range("2021-05-01", "2021-05-10", 5) == [datetime(2021, 5, d, tzinfo=utc) for d in (1, 6)]
    assert date_range("2021-05-01", "2021-05-01", 1) == [datetime(2021, 5, 1, tzinfo=utc)]
    with pytest.raises(InferError, match=r"date range is inverted: 2021-05-02 is after 2021-05-01"):
        date_range("2021-05-02", "2021-05-01", 1)
    with pytest.raises(InferError, match=r"date step must be >= 1 day, not 0"):
        date_range("2021-05-01", "2021-05-02", 0)
    assert parse_when("2021-05-01") == (datetime(2021, 5, 1, tzinfo=utc), True)
    assert parse_when(" 2021-05-01T10:30:00Z ") == (datetime(2021, 5, 1, 10, 30, tzinfo=utc), False)
    assert parse_when("2021-05-01T10:30:00") == (datetime(2021, 5, 1, 10, 30, tzinfo=utc), False)
    assert parse_when(datetime(2021, 5, 1, 10, 30)) == (datetime(2021, 5, 1, 10, 30, tzinfo=utc), False)
    with pytest.raises(InferError, match=r"date '2021-13-01' is not YYYY-MM-DD or an ISO datetime"):
        parse_when("2021-13-01")
    with pytest.raises(InferError, match=r"is not YYYY-MM-DD"):
        parse_when("yesterday")


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 800), st.integers(0, 400), st.integers(1, 40))
def test_date_range_is_a_regular_inclusive_grid(start_off, length, step):
    a = datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(days=start_off)
    b = a + timedelta(days=length)
    got = date_range(a.date().isoformat(), b.date().isoformat(), step)
    assert len(got) == length // step + 1
    assert got[0] == a and got[-1] <= b and b - got[-1] < timedelta(days=step)
    assert all(y - x == timedelta(days=step) for x, y in zip(got[:-1], got[1:], strict=True))


def test_parse_when_converts_offsets_to_utc():
    dt, date_only = parse_when("2021-05-01T12:00:00+02:00")
    assert not date_only and dt == datetime(2021, 5, 1, 10, tzinfo=timezone.utc)
    assert dt.utcoffset() == timedelta(0) and dt.hour == 10
