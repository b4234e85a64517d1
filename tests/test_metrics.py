"""Scoring a prediction against a reference (cloudclear.metrics).

Every figure is checked against an independent computation: scikit-image's
``structural_similarity`` / ``peak_signal_noise_ratio`` / ``mean_squared_error`` and plain numpy,
on exactly the pixel set the metric is documented to use (pixels valid in both rasters and in the
chosen mask class; for SSIM, those of them whose whole window lies inside the image and holds
valid pixels only, which is scikit-image's border crop).
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_raster
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter, minimum_filter
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, ScoreError
from cloudclear.metrics import (
    AGGREGATIONS,
    PIXEL_SETS,
    SSIM_WINDOWS,
    Pair,
    ScoreOptions,
    quicklook,
    score,
    score_many,
)
from cloudclear.synth import generate_series

BANDS = ["B02", "B03", "B04", "B08"]
SK_SSIM = {
    "gaussian": dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
    "uniform": {},  # scikit-image's default: 7 x 7 uniform, sample covariance
}
PAD = {"gaussian": 5, "uniform": 3}
# Sen2Cor SCL codes per pixel set (what the input date's mask says)
SCL_SETS = {
    "cloudy": (3, 8, 9, 10),
    "clear": (2, 4, 5, 6, 7, 11),
    "occluded": (0, 1, 3, 8, 9, 10),
    "all": tuple(range(256)),
}
SCL_CLEAR = (2, 4, 5, 6, 7, 11)


# ---------------------------------------------------------------------------------------------
# Independent reference computations


def _field(rng: np.random.Generator, bands: int, height: int, width: int, sigma: float = 3.0) -> np.ndarray:
    """Smooth random reflectance (gaussian-filtered noise), around 0.25."""
    f = np.stack([gaussian_filter(rng.normal(size=(height, width)), sigma) for _ in range(bands)])
    return 0.25 + f / f.std() * 0.08


def _dn(refl: np.ndarray) -> np.ndarray:
    """Reflectance -> uint16 DN x 10000 (at least 1, so that 0 stays free for nodata)."""
    return np.clip(np.round(refl * 10000), 1, 12000).astype(np.uint16)


def _refl(dn: np.ndarray) -> np.ndarray:
    return np.clip(dn.astype(np.float64) / 10000, 0.0, 1.0)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance of a nodata-0 file and its validity (not every band 0)."""
    with rasterio.open(path) as src:
        raw = src.read()
    return _refl(raw), ~(raw == 0).all(axis=0)


def _ssim_pixels(valid: np.ndarray, pad: int) -> np.ndarray:
    """Pixels whose whole (2 pad + 1)^2 window lies inside the image and holds valid pixels only."""
    h, w = valid.shape
    ok = minimum_filter(valid.astype(np.uint8), size=2 * pad + 1, mode="constant", cval=0) > 0
    ok[:pad] = False
    ok[max(h - pad, 0) :] = False
    ok[:, :pad] = False
    ok[:, max(w - pad, 0) :] = False
    return ok


def _expected(
    p: np.ndarray,
    r: np.ndarray,
    valid: np.ndarray,
    *,
    window: str = "gaussian",
    sel: np.ndarray | None = None,
    sam_units: str = "deg",
) -> dict:
    """MAE, RMSE, PSNR, SSIM and SAM (overall and per band) of reflectance ``p`` against ``r``.

    Args:
        p: prediction reflectance, (bands, rows, cols).
        r: reference reflectance, same shape.
        valid: pixels valid in both rasters.
        window: SSIM window ("gaussian" or "uniform").
        sel: the pixel set to score (intersected with ``valid``); None: every valid pixel.
        sam_units: "deg" or "rad".
    """
    sel = valid if sel is None else sel & valid
    kw = SK_SSIM[window]
    ok = sel & _ssim_pixels(valid, PAD[window])
    if not ok.any():  # too small, or every window touches nodata: no SSIM
        ssim_b, ssim = [math.nan] * len(p), math.nan
    elif valid.all() and sel.all():  # plain scikit-image, no pixel selection at all
        ssim_b = [structural_similarity(r[b], p[b], data_range=1.0, **kw) for b in range(len(p))]
        ssim = structural_similarity(r, p, channel_axis=0, data_range=1.0, **kw)
    else:  # scikit-image's full SSIM map, averaged over the selected pixels
        _, smap = structural_similarity(r, p, channel_axis=0, data_range=1.0, full=True, **kw)
        ssim_b = [float(smap[b][ok].mean()) for b in range(len(p))]
        ssim = float(smap[:, ok].mean())
    pv, rv = p[:, sel], r[:, sel]
    norm = np.linalg.norm(pv, axis=0) * np.linalg.norm(rv, axis=0)
    keep = norm > 0
    angles = np.arccos(np.clip((pv * rv).sum(axis=0)[keep] / norm[keep], -1.0, 1.0))
    sam = float(angles.mean())
    return {
        "n": int(sel.sum()),
        "n_ssim": int(ok.sum()),
        "n_sam": int(keep.sum()),
        "mae": float(np.abs(pv - rv).mean()),
        "rmse": math.sqrt(mean_squared_error(rv, pv)),
        "psnr": peak_signal_noise_ratio(rv, pv, data_range=1.0),
        "ssim": ssim,
        "sam": math.degrees(sam) if sam_units == "deg" else sam,
        "bands": [
            {
                "mae": float(np.abs(pv[b] - rv[b]).mean()),
                "rmse": math.sqrt(mean_squared_error(rv[b], pv[b])),
                "psnr": peak_signal_noise_ratio(rv[b], pv[b], data_range=1.0),
                "ssim": ssim_b[b],
            }
            for b in range(len(p))
        ],
    }


# SSIM's local means are float32 sums of centred values (tiles placed by the strips): within
# 1e-6 of scikit-image's float64 figure, the agreement the scorer promises (tests/test_ssim_fast.py).
SSIM_ABS = 1e-6


def _close(k: str, rel: float, **kw) -> dict:
    """pytest.approx's tolerances for figure ``k``: SSIM absolute, the others relative."""
    return {"abs": SSIM_ABS, **kw} if k == "ssim" else {"rel": rel, **kw}


def _assert_figures(s, exp: dict, rel: float = 1e-6) -> None:
    assert (s.n_pixels, s.n_ssim, s.n_sam) == (exp["n"], exp["n_ssim"], exp["n_sam"])
    for k in ("mae", "rmse", "psnr", "ssim", "sam"):
        assert getattr(s, k) == pytest.approx(exp[k], **_close(k, rel, nan_ok=True)), k
    assert len(s.bands) == len(exp["bands"])
    for band, want in zip(s.bands, exp["bands"], strict=True):
        for k in ("mae", "rmse", "psnr", "ssim"):
            assert getattr(band, k) == pytest.approx(want[k], **_close(k, rel, nan_ok=True)), (band.band, k)


def _assert_same(a, b, rel: float = 1e-12) -> None:
    """Two scores give the same figures (overall and per band) on the same pixels."""
    assert (a.n_pixels, a.n_ssim, a.n_sam) == (b.n_pixels, b.n_ssim, b.n_sam)
    for k in ("mae", "rmse", "psnr", "ssim", "sam"):
        assert getattr(a, k) == pytest.approx(getattr(b, k), **_close(k, rel)), k
    for x, y in zip(a.bands, b.bands, strict=True):
        assert x.band == y.band
        for k in ("mae", "rmse", "psnr", "ssim"):
            assert getattr(x, k) == pytest.approx(getattr(y, k), **_close(k, rel)), (x.band, k)


def _pair(tmp_path: Path, rng: np.random.Generator, height: int = 64, width: int = 80, noise: float = 0.02):
    """A smooth reference and a noisy prediction of it: (pred path, ref path, pred DN, ref DN)."""
    ref = _dn(_field(rng, 4, height, width))
    pred = _dn(_refl(ref) + rng.normal(0, noise, size=ref.shape))
    rp = write_raster(tmp_path / "ref.tif", ref, descriptions=BANDS)
    pp = write_raster(tmp_path / "pred.tif", pred, descriptions=BANDS)
    return pp, rp, pred, ref


# ---------------------------------------------------------------------------------------------
# 1. Agreement with independent implementations


@pytest.mark.parametrize(
    ("shape", "block_rows", "window", "holes", "sam_units"),
    [
        ((203, 157), 7, "gaussian", False, "deg"),
        ((203, 157), 37, "uniform", False, "rad"),
        ((203, 157), 512, "gaussian", True, "deg"),
        ((61, 203), 7, "uniform", True, "deg"),
        ((61, 203), 1, "gaussian", True, "rad"),
    ],
)
def test_figures_match_skimage_and_numpy_on_smooth_fields(tmp_path, rng, shape, block_rows, window, holes, sam_units):
    h, w = shape
    ref = _dn(_field(rng, 4, h, w))
    pred = _dn(_refl(ref) + rng.normal(0, 0.02, size=ref.shape))
    pred[:, 20:23, 30:34] = 12000  # saturated: clipped to 1.0 before scoring
    if holes:  # nodata in either raster; windows touching it leave SSIM
        ref[:, rng.random((h, w)) < 0.01] = 0
        pred[:, rng.random((h, w)) < 0.01] = 0
        pred[:, 40:45, 10:60] = 0
    rp = write_raster(tmp_path / "ref.tif", ref, descriptions=BANDS, nodata=0 if holes else None)
    pp = write_raster(tmp_path / "pred.tif", pred, descriptions=BANDS, nodata=0 if holes else None)
    opts = ScoreOptions(block_rows=block_rows, ssim_window=window, sam_units=sam_units)
    s = score(pp, rp, options=opts)
    valid = ~(ref == 0).all(axis=0) & ~(pred == 0).all(axis=0)
    assert holes == (not valid.all())
    _assert_figures(s, _expected(_refl(pred), _refl(ref), valid, window=window, sam_units=sam_units))
    assert s.sam_units == sam_units and [b.band for b in s.bands] == BANDS


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three synthetic dates: partly cloudy, clear, overcast."""
    return generate_series(
        tmp_path_factory.mktemp("series"),
        height=96,
        width=96,
        n_dates=3,
        cloud_cover=[0.4, 0.0, 1.0],
        s1=False,
        seed=3,
    )


@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_synthetic_cloudy_date_vs_truth_matches_independent_figures(series, window):
    p, pvalid = _read(series.s2[0])
    r, rvalid = _read(series.truth[0])
    with rasterio.open(series.masks[0]) as src:
        scl = src.read(1)
    cloudy = np.isin(scl, SCL_SETS["cloudy"])
    assert 0.2 < cloudy.mean() < 0.8
    opts = ScoreOptions(ssim_window=window, block_rows=17)
    whole = score(series.s2[0], series.truth[0], options=opts)
    _assert_figures(whole, _expected(p, r, pvalid & rvalid, window=window))
    masked = score(series.s2[0], series.truth[0], mask=series.masks[0], options=opts)
    assert masked.pixels == "cloudy" and masked.mask == str(series.masks[0])
    _assert_figures(masked, _expected(p, r, pvalid & rvalid, window=window, sel=cloudy))
    assert masked.mae > whole.mae  # clouds are where the input differs from the truth


def test_synthetic_clear_date_equals_its_truth(series):
    s = score(series.s2[1], series.truth[1])
    assert s.rmse == 0 and s.psnr == math.inf and s.ssim == pytest.approx(1.0, abs=1e-12)


REAL_PAIRS = [
    # 13-band cloud-free composites (EPSG:32633, ~10 m, 11.7 % nodata): one method against another
    ("eolearn_slovenia_s2/composite_HOT_bands.tif", "eolearn_slovenia_s2/composite_BLUE_bands.tif", None),
    ("eolearn_slovenia_s2/composite_NDWI_bands.tif", "eolearn_slovenia_s2/composite_NDVI_bands.tif", None),
    # two clear dates of a 4-band L2A minicube (EPSG:4326 grid)
    (
        "greenearthnet_minicubes/34TET_47.37N_22.05E/S2_20210327.tif",
        "greenearthnet_minicubes/34TET_47.37N_22.05E/S2_20210312.tif",
        None,
    ),
    # a 27 % cloudy date against a clear one, scored on the pixels its real SCL calls cloudy
    (
        "greenearthnet_minicubes/34TET_47.37N_22.05E/S2_20210421.tif",
        "greenearthnet_minicubes/34TET_47.37N_22.05E/S2_20210426.tif",
        "greenearthnet_minicubes/34TET_47.37N_22.05E/MASK_20210421.tif",
    ),
    # 12 bands B1..B12 (no B10) at 20 m UTM
    ("leaf_gee_s2sr_34VCL/S2_20210418.tif", "leaf_gee_s2sr_34VCL/S2_20210403.tif", None),
]


@pytest.mark.parametrize(("pred", "ref", "mask"), REAL_PAIRS, ids=lambda v: Path(v).name if v else "")
@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_real_pairs_match_independent_figures(shared_data, tmp_path, pred, ref, mask, window):
    p, pvalid = _read(shared_data / pred)
    r, rvalid = _read(shared_data / ref)
    sel = None
    opts = ScoreOptions(ssim_window=window, block_rows=23)
    if mask:
        # The MASK file holds the learned mask (band 1, "dlmask") and Sen2Cor's SCL (band 2). Scored
        # with the whole file, the preferred mask decides (masks.PREFERENCE: DLMASK before SCL):
        # its cloud (1) and shadow (2) are the cloudy pixels.
        assert masks.rank("DLMASK") < masks.rank("SCL")
        with rasterio.open(shared_data / mask) as src:
            profile = src.profile | {"count": 1}
            assert src.descriptions[0].startswith("dlmask")
            learned = np.isin(src.read(1), (1, 2))
            scl_band = src.descriptions.index("SCL") + 1
            scl = src.read(scl_band)
        assert learned.mean() > 0.2
        s = score(shared_data / pred, shared_data / ref, mask=shared_data / mask, options=opts)
        exp = _expected(p, r, pvalid & rvalid, window=window, sel=learned)
        _assert_figures(s, exp)
        assert s.n_pixels == learned.sum()
        # About the metrics, not which mask decides: the SCL band alone, in a file of its own, gives
        # the figures on the pixels the real SCL calls cloudy.
        sel = np.isin(scl, SCL_SETS["cloudy"])
        assert sel.mean() > 0.2
        scl_path = tmp_path / "MASK_SCL.tif"
        with rasterio.open(scl_path, "w", **profile) as dst:
            dst.write(scl, 1)
            dst.set_band_description(1, "SCL")
        mask_path: Path | None = scl_path
    else:
        mask_path = None
    s = score(shared_data / pred, shared_data / ref, mask=mask_path, options=opts)
    exp = _expected(p, r, pvalid & rvalid, window=window, sel=sel)
    assert exp["n_ssim"] > 1000
    _assert_figures(s, exp)
    if "eolearn" in pred:  # the composites' nodata border is left out
        assert s.n_pixels < 0.9 * p[0].size
    else:
        assert s.n_pixels == (sel.sum() if mask else p[0].size)


# ---------------------------------------------------------------------------------------------
# 2. Masks


@pytest.fixture
def masked_pair(tmp_path, rng):
    """A 64 x 80 pair, a random SCL mask at 20 m and the same mask at 10 m."""
    pp, rp, pred, ref = _pair(tmp_path, rng)
    scl20 = rng.choice(np.array([0, 3, 4, 5, 8, 9, 10, 11], dtype=np.uint8), size=(32, 40))
    scl10 = np.repeat(np.repeat(scl20, 2, axis=0), 2, axis=1)
    m10 = write_raster(tmp_path / "m10_SCL.tif", scl10, descriptions=["SCL"])
    m20 = write_raster(tmp_path / "m20_SCL.tif", scl20, res=20.0, descriptions=["SCL"])
    return pp, rp, _refl(pred), _refl(ref), scl10, {"10m": m10, "20m": m20}


@pytest.mark.parametrize("mask_res", ["10m", "20m"])
@pytest.mark.parametrize("pixels", ["cloudy", "clear", "occluded", "all"])
def test_pixel_set_scores_exactly_the_mask_classes(masked_pair, pixels, mask_res):
    pp, rp, p, r, scl10, mask_files = masked_pair
    sel = np.isin(scl10, SCL_SETS[pixels])
    assert 0 < sel.sum() < sel.size or pixels == "all"
    s = score(pp, rp, mask=mask_files[mask_res], options=ScoreOptions(pixels=pixels, block_rows=13))
    assert s.pixels == pixels
    _assert_figures(s, _expected(p, r, np.ones(scl10.shape, bool), sel=sel))


def test_auto_pixels_are_cloudy_with_a_mask_and_all_without(masked_pair):
    pp, rp, p, r, scl10, mask_files = masked_pair
    valid = np.ones(scl10.shape, bool)
    with_mask = score(pp, rp, mask=mask_files["10m"])
    assert with_mask.pixels == "cloudy"
    _assert_figures(with_mask, _expected(p, r, valid, sel=np.isin(scl10, SCL_SETS["cloudy"])))
    without = score(pp, rp)
    assert without.pixels == "all" and without.mask is None
    _assert_figures(without, _expected(p, r, valid))


@pytest.mark.parametrize("mask_kind", ["10m", "20m", "sub-window"])
def test_masks_follow_a_sub_window_prediction(masked_pair, tmp_path, mask_kind):
    pp, rp, p, r, scl10, mask_files = masked_pair
    with rasterio.open(pp) as src:
        pred = src.read()
    origin = (600070.0, 5699900.0)  # rows 10..49, cols 7..69 of the reference (not on the 20 m grid)
    sub = write_raster(tmp_path / "sub.tif", pred[:, 10:50, 7:70], origin=origin, descriptions=BANDS)
    if mask_kind == "sub-window":
        mask = write_raster(tmp_path / "sub_SCL.tif", scl10[10:50, 7:70], origin=origin, descriptions=["SCL"])
    else:
        mask = mask_files[mask_kind]
    ps, rs, ss = p[:, 10:50, 7:70], r[:, 10:50, 7:70], scl10[10:50, 7:70]
    for pixels in ("cloudy", "clear", "occluded"):
        s = score(sub, rp, mask=mask, options=ScoreOptions(pixels=pixels, block_rows=7))
        _assert_figures(s, _expected(ps, rs, np.ones(ss.shape, bool), sel=np.isin(ss, SCL_SETS[pixels])))


def test_pixel_sets_other_than_all_need_a_mask(masked_pair):
    pp, rp, *_ = masked_pair
    with pytest.raises(ScoreError, match="--mask"):
        score(pp, rp, options=ScoreOptions(pixels="clear"))


def test_ref_mask_drops_pixels_the_reference_mask_does_not_call_clear(masked_pair, rng, tmp_path):
    pp, rp, p, r, scl10, mask_files = masked_pair
    ref_scl = rng.choice(np.array([0, 3, 4, 5, 9], dtype=np.uint8), size=scl10.shape)
    rm = write_raster(tmp_path / "ref_SCL.tif", ref_scl, descriptions=["SCL"])
    ref_clear = np.isin(ref_scl, SCL_CLEAR)
    valid = np.ones(scl10.shape, bool)
    s = score(pp, rp, ref_mask=rm, options=ScoreOptions(block_rows=11))
    assert s.pixels == "all"
    _assert_figures(s, _expected(p, r, valid, sel=ref_clear))
    s = score(pp, rp, mask=mask_files["20m"], ref_mask=rm)
    _assert_figures(s, _expected(p, r, valid, sel=ref_clear & np.isin(scl10, SCL_SETS["cloudy"])))


@pytest.mark.parametrize("res", [10.0, 20.0])
def test_pixels_outside_a_partial_mask_are_occluded_not_clear(tmp_path, rng, res):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    step = int(res // 10)
    clm = (rng.random((32 // step, 80 // step)) < 0.3).astype(np.uint8)  # CLM: 0 clear, 1 cloud; top half only
    clm10 = np.repeat(np.repeat(clm, step, axis=0), step, axis=1)
    inside = np.zeros(pred.shape[1:], bool)
    inside[:32] = True
    full = np.zeros(pred.shape[1:], np.uint8)
    full[:32] = clm10
    m = write_raster(tmp_path / "half_CLM.tif", clm, res=res, descriptions=["CLM"])
    p, r, valid = _refl(pred), _refl(ref), np.ones(pred.shape[1:], bool)
    want = {"clear": inside & (full == 0), "cloudy": inside & (full == 1), "occluded": ~inside | (full == 1)}
    for pixels, sel in want.items():
        s = score(pp, rp, mask=m, options=ScoreOptions(pixels=pixels, block_rows=10))
        _assert_figures(s, _expected(p, r, valid, sel=sel))


def test_a_mask_of_unknown_convention_needs_mask_convention(tmp_path, rng):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    clm = (rng.random(pred.shape[1:]) < 0.3).astype(np.uint8)
    m = write_raster(tmp_path / "anonymous.tif", clm)
    with pytest.raises(ScoreError, match="--mask-convention") as exc:
        score(pp, rp, mask=m)
    assert "anonymous.tif" in str(exc.value)
    s = score(pp, rp, mask=m, mask_convention="CLM")
    assert s.pixels == "cloudy"
    _assert_figures(s, _expected(_refl(pred), _refl(ref), np.ones(clm.shape, bool), sel=clm == 1))


def test_registries_name_the_documented_choices():
    assert {"all", "cloudy", "clear", "occluded", "observed"} <= set(PIXEL_SETS)
    assert set(AGGREGATIONS) == {"pooled", "per-image"}
    assert SSIM_WINDOWS["gaussian"].radius == 5 and SSIM_WINDOWS["uniform"].radius == 3
    assert sum(SSIM_WINDOWS["gaussian"].kernel) == pytest.approx(1.0)
    for bad in (dict(pixels="cloudless"), dict(aggregate="mean"), dict(sam_units="grad"), dict(ssim_window="box")):
        with pytest.raises(ScoreError, match="unknown"):
            ScoreOptions(**bad)


# ---------------------------------------------------------------------------------------------
# 3. Aggregation


def test_sequence_pooled_is_the_concatenation_and_per_image_the_mean(tmp_path, rng):
    a = _pair(tmp_path / "a", rng, 64, 80, noise=0.02)
    b = _pair(tmp_path / "b", rng, 40, 56, noise=0.06)
    pairs = [Pair(str(a[0]), str(a[1])), Pair(str(b[0]), str(b[1]))]
    pooled = score_many(pairs, ScoreOptions(aggregate="pooled"))
    assert len(pooled.results) == 2 and pooled.combined is not None
    c = pooled.combined
    assert c.n_images == 2 and c.n_pixels == 64 * 80 + 40 * 56
    pa, ra, pb, rb = _refl(a[2]), _refl(a[3]), _refl(b[2]), _refl(b[3])
    p = np.concatenate([pa.reshape(4, -1), pb.reshape(4, -1)], axis=1)
    r = np.concatenate([ra.reshape(4, -1), rb.reshape(4, -1)], axis=1)
    assert c.mae == pytest.approx(np.abs(p - r).mean(), rel=1e-9)
    assert c.rmse == pytest.approx(math.sqrt(mean_squared_error(r, p)), rel=1e-9)
    assert c.psnr == pytest.approx(peak_signal_noise_ratio(r, p, data_range=1.0), rel=1e-9)
    for i, band in enumerate(c.bands):
        assert band.mae == pytest.approx(np.abs(p[i] - r[i]).mean(), rel=1e-9)
        assert band.rmse == pytest.approx(math.sqrt(mean_squared_error(r[i], p[i])), rel=1e-9)
    # pooled SSIM: one mean over both images' SSIM pixels
    ea, eb = _expected(pa, ra, np.ones(pa.shape[1:], bool)), _expected(pb, rb, np.ones(pb.shape[1:], bool))
    n1, n2 = ea["n_ssim"], eb["n_ssim"]
    assert c.ssim == pytest.approx((ea["ssim"] * n1 + eb["ssim"] * n2) / (n1 + n2), rel=1e-6)
    # pooled is not per-image here: the images differ in size and error
    assert c.mae != pytest.approx(np.mean([x.mae for x in pooled.results]), rel=1e-3)

    per = score_many(pairs, ScoreOptions(aggregate="per-image"))
    assert [x.mae for x in per.results] == [x.mae for x in pooled.results]
    m = per.combined
    assert m is not None and m.n_images == 2 and m.aggregate == "per-image"
    for k in ("mae", "rmse", "psnr", "ssim", "sam"):
        assert getattr(m, k) == pytest.approx(np.mean([getattr(x, k) for x in per.results]), rel=1e-12), k
    for i, band in enumerate(m.bands):
        for k in ("mae", "rmse", "psnr", "ssim"):
            assert getattr(band, k) == pytest.approx(np.mean([getattr(x.bands[i], k) for x in per.results]), rel=1e-12)


def test_one_reference_two_predictions_is_a_comparison_without_combination(tmp_path, rng):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    other = write_raster(tmp_path / "other.tif", _dn(_refl(ref) + 0.01), descriptions=BANDS)
    c = score_many([Pair(str(pp), str(rp)), Pair(str(other), str(rp))])
    assert c.combined is None and [x.pred for x in c.results] == [str(pp), str(other)]
    assert c.results[1].mae == pytest.approx(0.01, abs=1e-4)
    assert c.results[0].mae == pytest.approx(np.abs(_refl(pred) - _refl(ref)).mean(), rel=1e-9)


def test_sequence_of_synthetic_dates_per_image_skips_a_date_without_cloud(series):
    pairs = [Pair(str(p), str(t), str(m)) for p, t, m in zip(series.s2, series.truth, series.masks, strict=True)]
    per = score_many(pairs, ScoreOptions(aggregate="per-image"))
    assert [x.pixels for x in per.results] == ["cloudy"] * 3 and per.results[1].n_pixels == 0
    assert math.isnan(per.results[1].mae)
    m = per.combined
    assert m is not None and m.n_pixels == per.results[0].n_pixels + per.results[2].n_pixels
    assert m.n_images == 2  # the date without cloud is left out
    for k in ("mae", "rmse", "psnr", "ssim", "sam"):
        assert getattr(m, k) == pytest.approx((getattr(per.results[0], k) + getattr(per.results[2], k)) / 2), k
    pooled = score_many(pairs, ScoreOptions(aggregate="pooled")).combined
    diffs = []
    for i in (0, 2):
        p, _ = _read(series.s2[i])
        r, _ = _read(series.truth[i])
        with rasterio.open(series.masks[i]) as src:
            cloudy = np.isin(src.read(1), SCL_SETS["cloudy"])
        diffs.append((p - r)[:, cloudy])
    d = np.concatenate(diffs, axis=1)
    assert pooled.n_pixels == d.shape[1] and pooled.n_images == 2
    assert pooled.mae == pytest.approx(np.abs(d).mean(), rel=1e-9)
    assert pooled.rmse == pytest.approx(math.sqrt((d**2).mean()), rel=1e-9)


def test_score_many_refuses_nothing():
    with pytest.raises(ScoreError, match="nothing to score"):
        score_many([])


# ---------------------------------------------------------------------------------------------
# 4. Grids


def test_sub_window_prediction_is_scored_on_the_overlap(tmp_path, rng):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    p, r = _refl(pred), _refl(ref)
    # inside the reference: rows 10..49, cols 7..69
    sub = write_raster(tmp_path / "sub.tif", pred[:, 10:50, 7:70], origin=(600070.0, 5699900.0), descriptions=BANDS)
    s = score(sub, rp, options=ScoreOptions(block_rows=9))
    ps, rs = p[:, 10:50, 7:70], r[:, 10:50, 7:70]
    _assert_figures(s, _expected(ps, rs, np.ones(ps.shape[1:], bool)))
    # sticking out of the reference: 3 columns left and 2 rows above it
    out = write_raster(tmp_path / "out.tif", pred, origin=(599970.0, 5700020.0), descriptions=BANDS)
    s = score(out, rp)
    ps, rs = p[:, 2:, 3:], r[:, :-2, :-3]
    _assert_figures(s, _expected(ps, rs, np.ones(ps.shape[1:], bool)))


def test_other_crs_is_refused_without_reproject(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    other = write_raster(tmp_path / "utm32.tif", pred, crs="EPSG:32632", descriptions=BANDS)
    with pytest.raises(ScoreError, match="CRS") as exc:
        score(other, rp)
    assert "--reproject" in str(exc.value) and "utm32.tif" in str(exc.value)


def test_other_resolution_is_refused_without_reproject(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    coarse = write_raster(tmp_path / "coarse.tif", pred[:, ::2, ::2], res=20.0, descriptions=BANDS)
    with pytest.raises(ScoreError, match="resolution") as exc:
        score(coarse, rp)
    assert "--reproject" in str(exc.value) and "coarse.tif" in str(exc.value)


def test_grid_shifted_by_a_fraction_of_a_pixel_is_refused(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    half = write_raster(tmp_path / "half.tif", pred, origin=(600005.0, 5700000.0), descriptions=BANDS)
    with pytest.raises(ScoreError, match="fraction of a pixel"):
        score(half, rp)


def test_reproject_scores_a_20m_prediction_of_a_10m_reference_sanely(tmp_path, rng):
    ref = _dn(_field(rng, 4, 64, 80, sigma=4.0))
    low = ref.reshape(4, 32, 2, 40, 2).mean(axis=(2, 4)).round().astype(np.uint16)
    rp = write_raster(tmp_path / "ref.tif", ref, descriptions=BANDS)
    lp = write_raster(tmp_path / "low.tif", low, res=20.0, descriptions=BANDS)
    scores = [score(lp, rp, options=ScoreOptions(reproject=True, block_rows=b)) for b in (5, 512)]
    s = scores[0]
    assert math.isfinite(s.psnr) and s.psnr > 20 and s.ssim > 0.8 and s.n_pixels == 64 * 80
    assert scores[1].mae == pytest.approx(s.mae, rel=1e-12) and scores[1].ssim == pytest.approx(s.ssim, abs=SSIM_ABS)


def _warped_copy(tmp_path: Path, rp: Path, crs: str) -> Path:
    """The reference warped (bilinear) into another CRS, nodata 0 outside its footprint."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(rp) as src:
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        out = np.zeros((src.count, height, width), np.uint16)
        reproject(
            src.read(),
            out,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=crs,
            resampling=Resampling.bilinear,
            dst_nodata=0,
        )
        profile = dict(src.profile, crs=crs, transform=transform, width=width, height=height, nodata=0)
    path = tmp_path / "warped.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out)
        for i, name in enumerate(BANDS, 1):
            dst.set_band_description(i, name)
    return path


def test_reproject_scores_a_prediction_in_another_crs_sanely(tmp_path, rng):
    _, rp, _, _ = _pair(tmp_path, rng)
    warped = _warped_copy(tmp_path, rp, "EPSG:32632")
    s = score(warped, rp, options=ScoreOptions(reproject=True))
    assert s.n_pixels > 0.9 * 64 * 80
    assert math.isfinite(s.psnr) and s.psnr > 35 and s.ssim > 0.95 and s.sam < 2


def test_reprojected_figures_do_not_depend_on_block_rows(tmp_path, rng):
    _, rp, _, _ = _pair(tmp_path, rng)
    warped = _warped_copy(tmp_path, rp, "EPSG:32632")
    a, b = (score(warped, rp, options=ScoreOptions(reproject=True, block_rows=n)) for n in (7, 512))
    assert (a.n_pixels, a.n_ssim) == (b.n_pixels, b.n_ssim)
    assert a.mae == pytest.approx(b.mae, rel=1e-9)
    assert a.ssim == pytest.approx(b.ssim, abs=SSIM_ABS)


# ---------------------------------------------------------------------------------------------
# 5. Bad input


def test_different_band_counts_ask_for_bands(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    three = write_raster(tmp_path / "three.tif", pred[:3], descriptions=BANDS[:3])
    with pytest.raises(ScoreError, match="--bands") as exc:
        score(three, rp)
    assert "three.tif" in str(exc.value)


def test_bands_are_selected_by_name_or_1_based_index(tmp_path, rng):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    p, r = _refl(pred), _refl(ref)
    three = write_raster(tmp_path / "three.tif", pred[:3], descriptions=BANDS[:3])
    s = score(three, rp, options=ScoreOptions(bands=("B03", "b2")))
    assert [b.band for b in s.bands] == ["B03", "B02"]
    valid = np.ones(p.shape[1:], bool)
    _assert_figures(s, _expected(p[[1, 0]], r[[1, 0]], valid))
    s = score(pp, rp, options=ScoreOptions(bands=("3", "1")))
    assert [b.band for b in s.bands] == ["B04", "B02"]
    _assert_figures(s, _expected(p[[2, 0]], r[[2, 0]], valid))


def test_bands_are_paired_by_name_when_their_order_differs(tmp_path, rng):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    order = [2, 0, 3, 1]
    shuffled = write_raster(tmp_path / "shuffled.tif", pred[order], descriptions=[BANDS[i] for i in order])
    s = score(shuffled, rp)
    assert [b.band for b in s.bands] == BANDS
    _assert_same(s, score(pp, rp))


def test_missing_band_name_is_an_error_naming_the_file(tmp_path, rng):
    pp, rp, *_ = _pair(tmp_path, rng)
    with pytest.raises(ScoreError, match="no band B05") as exc:
        score(pp, rp, options=ScoreOptions(bands=("B02", "B05")))
    assert "pred.tif" in str(exc.value)
    with pytest.raises(ScoreError, match="no band 7"):
        score(pp, rp, options=ScoreOptions(bands=("7",)))


def test_reference_naming_other_bands_is_refused(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    other = write_raster(tmp_path / "other.tif", pred, descriptions=["B02", "B03", "B04", "B8A"])
    with pytest.raises(ScoreError, match="differ") as exc:
        score(other, rp)
    assert "other.tif" in str(exc.value) and "--bands" in str(exc.value)
    with pytest.raises(ScoreError, match="differ") as exc:
        score(pp, other)
    assert "pred.tif" in str(exc.value)


def test_no_overlap_is_an_error_naming_the_file(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    far = write_raster(tmp_path / "far.tif", pred, origin=(700000.0, 5700000.0), descriptions=BANDS)
    with pytest.raises(ScoreError, match="does not overlap") as exc:
        score(far, rp)
    assert "far.tif" in str(exc.value)


def test_all_nodata_reference_is_an_error_naming_it(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    empty = write_raster(tmp_path / "empty.tif", np.zeros_like(pred), descriptions=BANDS, nodata=0)
    with pytest.raises(ScoreError, match="only nodata") as exc:
        score(pp, empty)
    assert "empty.tif" in str(exc.value)


def test_all_nodata_prediction_is_an_error_naming_it(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    empty = write_raster(tmp_path / "blank.tif", np.zeros_like(pred), descriptions=BANDS, nodata=0)
    with pytest.raises(ScoreError, match="no pixel is valid") as exc:
        score(empty, rp)
    assert "blank.tif" in str(exc.value)


def test_an_empty_pixel_set_gives_null_figures_not_an_error(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    clear = write_raster(tmp_path / "clear_SCL.tif", np.full(pred.shape[1:], 4, np.uint8), descriptions=["SCL"])
    s = score(pp, rp, mask=clear)
    assert s.pixels == "cloudy" and s.n_pixels == 0 and s.n_ssim == 0
    d = s.to_dict()
    assert [d[k] for k in ("mae", "rmse", "psnr", "ssim", "sam")] == [None] * 5


def test_non_raster_is_an_invalid_raster_error(tmp_path, rng):
    pp, rp, *_ = _pair(tmp_path, rng)
    text = tmp_path / "x.tif"
    text.write_text("not a raster\n")
    for args in ((text, rp), (pp, text)):
        with pytest.raises(InvalidRasterError, match="x.tif"):
            score(*args)


def test_missing_file_is_an_error_naming_it(tmp_path, rng):
    pp, rp, *_ = _pair(tmp_path, rng)
    with pytest.raises(ScoreError, match="nowhere.tif.*not found"):
        score(tmp_path / "nowhere.tif", rp)
    with pytest.raises(ScoreError, match="gone.tif.*not found"):
        score(pp, tmp_path / "gone.tif")
    with pytest.raises(ScoreError, match="gone_SCL.tif.*not found"):
        score(pp, rp, mask=tmp_path / "gone_SCL.tif")


def test_nodata_is_every_band_nodata_or_any_band_nan(tmp_path, rng):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    holed = pred.copy()
    holed[0, 5, 5] = 0  # one band only: still a pixel
    holed[:, 6, 6] = 0  # every band: nodata
    hp = write_raster(tmp_path / "holed.tif", holed, descriptions=BANDS, nodata=0)
    s = score(hp, rp)
    valid = np.ones(pred.shape[1:], bool)
    valid[6, 6] = False
    _assert_figures(s, _expected(_refl(holed), _refl(ref), valid))
    flt = pred.astype(np.float32)
    flt[2, 9, 9] = np.nan  # one band NaN: nodata
    fp = write_raster(tmp_path / "float.tif", flt, descriptions=BANDS, nodata=float("nan"))
    valid = np.ones(pred.shape[1:], bool)
    valid[9, 9] = False
    _assert_figures(score(fp, rp), _expected(_refl(pred), _refl(ref), valid))


def test_pixels_with_a_zero_spectrum_are_left_out_of_sam_only(tmp_path, rng):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    dark = pred.copy()
    dark[:, 30:33, 40:42] = 0  # no nodata declared: valid pixels whose spectrum is all zero
    dp = write_raster(tmp_path / "dark.tif", dark, descriptions=BANDS)
    s = score(dp, rp)
    assert (s.n_pixels, s.n_sam) == (64 * 80, 64 * 80 - 6) and math.isfinite(s.sam)
    _assert_figures(s, _expected(_refl(dark), _refl(ref), np.ones(pred.shape[1:], bool)))


# ---------------------------------------------------------------------------------------------
# 6. Identical images and output forms


def test_identical_images_are_perfect(tmp_path, rng):
    _, rp, _, ref = _pair(tmp_path, rng)
    s = score(rp, rp, options=ScoreOptions(block_rows=10))
    assert s.mae == 0 and s.rmse == 0 and s.psnr == math.inf and s.sam == 0
    assert s.ssim == pytest.approx(1.0, abs=1e-12)
    for b in s.bands:
        assert b.mae == 0 and b.rmse == 0 and b.psnr == math.inf and b.ssim == pytest.approx(1.0, abs=1e-12)


def test_scoring_reads_under_the_score_block_cache(tmp_path, rng, monkeypatch):
    # The library states GDAL's cache itself (cloudclear.gdal), not the CLI through os.environ.
    from cloudclear.gdal import CACHE_MB
    from cloudclear.metrics.reading import StripReader

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    seen = []
    rows = StripReader.rows

    def spy(self, row, height):
        seen.append(rasterio.env.get_gdal_config("GDAL_CACHEMAX"))
        return rows(self, row, height)

    monkeypatch.setattr(StripReader, "rows", spy)
    pp, rp, _, _ = _pair(tmp_path, rng)
    score(pp, rp)
    quicklook(Pair(pp, rp), max_size=16)
    assert seen and set(seen) == {CACHE_MB["score"] * 1024 * 1024}


def test_to_dict_puts_the_overall_figures_first_and_writes_inf_as_none(tmp_path, rng):
    _, rp, _, _ = _pair(tmp_path, rng)
    d = score(rp, rp).to_dict()
    assert list(d)[:5] == ["mae", "rmse", "psnr", "ssim", "sam"]
    assert d["psnr"] is None and d["rmse"] == 0 and d["ssim"] == pytest.approx(1.0)
    assert list(d["bands"]) == BANDS and all(b["psnr"] is None for b in d["bands"].values())


def test_to_csv_has_a_header_an_all_row_and_a_row_per_band(tmp_path, rng):
    _, rp, pred, _ = _pair(tmp_path, rng)
    pp = write_raster(tmp_path / "pred,v2.tif", pred, descriptions=BANDS)  # a comma: quoted
    c = score_many([Pair(str(pp), str(rp))])
    rows = list(csv.DictReader(io.StringIO(c.to_csv())))
    s = c.results[0]
    assert [r["band"] for r in rows] == ["all", *BANDS]
    assert {r["pred"] for r in rows} == {str(pp)} and {r["ref"] for r in rows} == {str(rp)}
    assert float(rows[0]["mae"]) == pytest.approx(s.mae, rel=1e-7)
    assert float(rows[0]["sam"]) == pytest.approx(s.sam, rel=1e-7) and rows[0]["sam_units"] == "deg"
    for row, band in zip(rows[1:], s.bands, strict=True):
        assert float(row["rmse"]) == pytest.approx(band.rmse, rel=1e-7)
        assert float(row["ssim"]) == pytest.approx(band.ssim, rel=1e-7)
        assert int(row["n_pixels"]) == s.n_pixels


# ---------------------------------------------------------------------------------------------
# 7. Scale handling


def _with_scales(path: Path, data: np.ndarray, scale: float, offset: float = 0.0) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs="EPSG:32631",
        transform=from_origin(600000.0, 5700000.0, 10.0, 10.0),
    ) as dst:
        dst.write(data)
        dst.scales = (scale,) * data.shape[0]
        dst.offsets = (offset,) * data.shape[0]
        for i, name in enumerate(BANDS, 1):
            dst.set_band_description(i, name)
    return path


def test_gdal_scale_metadata_scores_like_the_x10000_file(tmp_path, rng):
    pp, rp, pred, _ = _pair(tmp_path, rng)
    base = score(pp, rp)
    same = _with_scales(tmp_path / "scaled.tif", pred, 0.0001)
    _assert_same(score(same, rp), base)
    # DN x 5000 with scale 0.0002 is the same reflectance as the even DN x 10000
    even = pred // 2 * 2
    half = _with_scales(tmp_path / "half.tif", (even // 2).astype(np.uint16), 0.0002)
    ep = write_raster(tmp_path / "even.tif", even, descriptions=BANDS)
    _assert_same(score(half, rp), score(ep, rp))
    # a GDAL offset is added: reflectance = DN * scale + offset
    shifted = _with_scales(tmp_path / "offset.tif", (pred.astype(np.uint32) + 500).astype(np.uint16), 0.0001, -0.05)
    _assert_same(score(shifted, rp), base, rel=1e-9)


def test_boa_add_offset_is_subtracted_from_the_reference(tmp_path, rng):
    pp, rp, pred, ref = _pair(tmp_path, rng)
    tags = {"BOA_ADD_OFFSET": "-1000", "QUANTIFICATION_VALUE": "10000"}
    shifted = write_raster(tmp_path / "ref_pb04.tif", ref + 1000, descriptions=BANDS, tags=tags)
    s = score(rp, shifted)
    assert s.rmse < 1e-12 and s.ssim == pytest.approx(1.0, abs=1e-9)
    _assert_same(score(pp, shifted), score(pp, rp), rel=1e-9)
    # without the tags the same file reads 0.1 brighter
    plain = write_raster(tmp_path / "ref_plain.tif", ref + 1000, descriptions=BANDS)
    assert score(rp, plain).mae == pytest.approx(0.1, rel=1e-9)


def test_dn_units_with_scale_1_and_peak_10000(tmp_path, rng):
    pp, rp, *_ = _pair(tmp_path, rng)
    refl, dn = score(pp, rp), score(pp, rp, options=ScoreOptions(scale=1, peak=10000))
    assert dn.mae == pytest.approx(refl.mae * 10000, rel=1e-9)
    assert dn.rmse == pytest.approx(refl.rmse * 10000, rel=1e-9)
    for k in ("psnr", "ssim", "sam"):  # scale-free figures
        assert getattr(dn, k) == pytest.approx(getattr(refl, k), **_close(k, 1e-9)), k


# ---------------------------------------------------------------------------------------------
# 8. Properties


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    block_rows=st.integers(1, 45),
    window=st.sampled_from(["gaussian", "uniform"]),
    hole_fraction=st.sampled_from([0.0, 0.02, 0.1]),
    seed=st.integers(0, 2**32 - 1),
)
def test_blockwise_figures_equal_whole_image_figures(height, width, block_rows, window, hole_fraction, seed):
    rng = np.random.default_rng(seed)
    ref = rng.integers(1, 11000, size=(2, height, width)).astype(np.uint16)
    pred = rng.integers(1, 11000, size=(2, height, width)).astype(np.uint16)
    holes = rng.random((height, width)) < hole_fraction
    holes[0, 0] = False
    ref[:, holes] = 0
    with tempfile.TemporaryDirectory() as tmp:
        rp = write_raster(Path(tmp) / "ref.tif", ref, descriptions=BANDS[:2], nodata=0)
        pp = write_raster(Path(tmp) / "pred.tif", pred, descriptions=BANDS[:2])
        strips = score(pp, rp, options=ScoreOptions(block_rows=block_rows, ssim_window=window))
        whole = score(pp, rp, options=ScoreOptions(block_rows=height, ssim_window=window))
    assert (strips.n_pixels, strips.n_ssim, strips.n_sam) == (whole.n_pixels, whole.n_ssim, whole.n_sam)
    for k in ("mae", "rmse", "ssim", "sam"):
        tol = {"abs": SSIM_ABS} if k == "ssim" else {"rel": 1e-12, "abs": 1e-15}
        assert getattr(strips, k) == pytest.approx(getattr(whole, k), nan_ok=True, **tol), k
    _assert_figures(strips, _expected(_refl(pred), _refl(ref), ~holes, window=window), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Views for figures


@pytest.mark.parametrize("block_rows", [5, 37, 512])
def test_views_kept_while_scoring_equal_a_separate_decimated_read(tmp_path, rng, block_rows):
    pp, rp, pred, ref = _pair(tmp_path, rng, 70, 90)
    scl = np.full((70, 90), 4, np.uint8)
    scl[10:30, 20:60] = 9
    mp = write_raster(tmp_path / "m_SCL.tif", scl, descriptions=["SCL"])
    opts = ScoreOptions(block_rows=block_rows)
    kept = score_many([Pair(str(pp), str(rp), str(mp))], opts, views=32).views
    assert len(kept) == 1
    alone = quicklook(Pair(str(pp), str(rp), str(mp)), opts, max_size=32)
    factor = 3  # ceil(90 / 32)
    assert kept[0].pred.shape == alone.pred.shape == (4, 24, 30)
    np.testing.assert_array_equal(kept[0].pred, alone.pred)
    np.testing.assert_array_equal(kept[0].selected, alone.selected)
    np.testing.assert_allclose(alone.ref, _refl(ref)[:, ::factor, ::factor], rtol=1e-6)
    np.testing.assert_array_equal(alone.selected, (scl == 9)[::factor, ::factor])
    assert alone.rgb == (2, 1, 0)  # B04, B03, B02
