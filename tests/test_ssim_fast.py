"""SSIM's float32 tiles (cloudclear.metrics.maths.ssim_sums) against scikit-image in float64.

The fast SSIM convolves float32 values centred on a level per tile. These tests hold it to 1e-6
of scikit-image's float64 figure where plain float32 is not that close (a large level and a small
variance: var = E[x^2] - E[x]^2 then cancels), on tiles cut at every edge, sparse selections,
both windows, and raw DN read through a scale, an offset and clipping. Every test runs on both
paths: the compiled kernel (cloudclear.metrics.native, skipped where it is not built) and the
numpy / torch tiles it replaces there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, minimum_filter
from skimage.metrics import structural_similarity

from cloudclear.metrics import native
from cloudclear.metrics.conventions import SSIM_WINDOWS
from cloudclear.metrics.maths import Reflectance, block_sums, ssim_sums


@pytest.fixture(autouse=True, params=["native", "numpy-torch"])
def ssim_path(request, monkeypatch):
    """Each test once through the compiled kernel and once through the numpy / torch tiles."""
    native.library.cache_clear()
    if request.param == "native":
        if not native.available():
            pytest.skip("SSIM's compiled kernel is not built here (no C compiler at install)")
    else:
        monkeypatch.setenv("CLOUDCLEAR_NATIVE", "0")
        native.library.cache_clear()
    yield request.param
    native.library.cache_clear()


SK = {
    "gaussian": dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
    "uniform": {},  # scikit-image's default: 7 x 7 uniform, sample covariance
}


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], level: float, spread: float) -> np.ndarray:
    f = gaussian_filter(rng.normal(size=shape), 2.0, axes=(-2, -1))
    return level + f / f.std() * spread


def _sk_map(x: np.ndarray, y: np.ndarray, window: str, peak: float) -> np.ndarray:
    """scikit-image's SSIM map per band (float64 in, float64 out), the window radius cropped."""
    pad = SSIM_WINDOWS[window].radius
    maps = [structural_similarity(a, b, data_range=peak, full=True, **SK[window])[1] for a, b in zip(x, y, strict=True)]
    return np.stack(maps)[:, pad:-pad, pad:-pad]


def _inner(shape: tuple[int, int], pad: int) -> tuple[slice, slice]:
    return slice(pad, shape[0] - pad), slice(pad, shape[1] - pad)


def _naive_float32_map(x: np.ndarray, y: np.ndarray, window: str, peak: float) -> np.ndarray:
    """The SSIM map with plain float32 local means (float32 sums of the raw values, no centring)."""
    win = SSIM_WINDOWS[window]
    k, r = np.asarray(win.kernel, np.float32), win.radius
    cov_norm = np.float32(len(k) ** 2 / (len(k) ** 2 - 1.0) if win.sample_covariance else 1.0)

    def mean(a: np.ndarray) -> np.ndarray:
        h, w = a.shape
        v = sum(k[i] * a[i : h - 2 * r + i] for i in range(len(k)))
        return sum(k[j] * v[:, j : w - 2 * r + j] for j in range(len(k)))

    x, y = x.astype(np.float32), y.astype(np.float32)
    ux, uy, sxx, syy, sxy = mean(x), mean(y), mean(x * x), mean(y * y), mean(x * y)
    c1, c2 = np.float32((0.01 * peak) ** 2), np.float32((0.03 * peak) ** 2)
    num = (2 * ux * uy + c1) * (2 * cov_norm * (sxy - ux * uy) + c2)
    return num / ((ux * ux + uy * uy + c1) * (cov_norm * (sxx - ux * ux + syy - uy * uy) + c2))


@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_large_level_within_1e6_per_pixel_where_plain_float32_is_not(rng, window):
    # Reflectance near 0.9: the variances (1e-4) are differences of squares near 0.81, which
    # float32 sums hold to about 1e-7 only. Every single pixel's SSIM must stay within 1e-6.
    x = _smooth(rng, (1, 120, 200), 0.9, 0.02)
    y = x + rng.normal(0, 0.01, size=x.shape)
    win = SSIM_WINDOWS[window]
    shape = (120 - 2 * win.radius, 200 - 2 * win.radius)
    core = _inner((120, 200), win.radius)
    want = _sk_map(x, y, window, 1.0)[0]
    pixels = [
        (int(i), int(j)) for i, j in zip(rng.integers(0, shape[0], 30), rng.integers(0, shape[1], 30), strict=True)
    ]
    for i, j in pixels:
        one = np.zeros(shape, bool)
        one[i, j] = True
        assert ssim_sums(x, y, core, one, win, 1.0)[0] == pytest.approx(want[i, j], abs=1e-6), (i, j)
    every = np.ones(shape, bool)
    assert ssim_sums(x, y, core, every, win, 1.0)[0] / every.sum() == pytest.approx(want.mean(), abs=1e-8)

    # The same pixels with plain float32 local means: not within 1e-6 (the test can fail).
    naive = _naive_float32_map(x[0], y[0], window, 1.0)
    assert max(abs(float(naive[i, j]) - want[i, j]) for i, j in pixels) > 1e-6


@pytest.mark.parametrize("window", ["gaussian", "uniform"])
@pytest.mark.parametrize("shape", [(203, 157), (70, 600), (21, 30), (140, 1030)])
@pytest.mark.parametrize("fill", [1.0, 0.3, 0.002])
def test_any_selection_on_any_shape_matches_skimage(rng, window, shape, fill):
    # Shapes around the tile size (64 x 256) and smaller: tiles moved in from every edge, and
    # selections from everything to a few scattered pixels (whole tiles skipped).
    x = _smooth(rng, (3, *shape), 0.3, 0.08)
    y = np.clip(x + rng.normal(0, 0.03, size=x.shape), 0, 1)
    win = SSIM_WINDOWS[window]
    core = _inner(shape, win.radius)
    ref = _sk_map(x, y, window, 1.0)
    sel = rng.random(ref.shape[1:]) < fill
    got = ssim_sums(x, y, core, sel, win, 1.0)
    want = ref[:, sel].sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(int(sel.sum()), 1))


def test_core_with_a_halo_on_one_side_only(rng):
    # As the strip scorer passes it at the image top: no rows above the core, so the core's first
    # rows are not selected; selected pixels further down still have their window.
    win = SSIM_WINDOWS["gaussian"]
    x = _smooth(rng, (2, 90, 280), 0.2, 0.05)
    y = x + rng.normal(0, 0.01, size=x.shape)
    ref = _sk_map(x, y, "gaussian", 1.0)  # map of rows / cols [5, -5)
    core = (slice(0, 85), slice(0, 275))  # rows [0, 85): no halo above or left
    sel = np.zeros((85, 275), bool)
    sel[5:, 5:] = rng.random((80, 270)) < 0.5
    got = ssim_sums(x, y, core, sel, win, 1.0)
    want = ref[:, sel[5:, 5:]].sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * int(sel.sum()))


@pytest.mark.parametrize("peak", [1.0, 10000.0])
def test_raw_dn_through_scale_offset_and_clipping(rng, peak):
    # uint16 DN (some saturated) read as DN * scale + offset, clipped to [0, peak], as the strip
    # scorer passes them: SSIM and the plain sums equal the float64 figures of the same reflectance.
    scale = (1e-4, 1e-4, 2e-4) if peak == 1.0 else (1.0, 1.0, 2.0)
    offset = (0.0, -0.1, 0.0) if peak == 1.0 else (0.0, -1000.0, 0.0)
    dn = np.clip(_smooth(rng, (3, 150, 400), 3000, 800), 1, 12000).astype(np.uint16)
    dn_y = np.clip(dn + rng.normal(0, 300, size=dn.shape), 1, 12000).astype(np.uint16)
    dn[:, 40:50, 60:90] = 12000  # clipped to the peak (band 3 too: 12000 * 2e-4 > 1)
    refl = Reflectance(scale, offset, clip=True, peak=peak)
    x, y = refl(dn), refl(dn_y)
    per_band = np.array(scale).reshape(3, 1, 1)
    np.testing.assert_array_equal(x, np.clip(dn * per_band + np.array(offset).reshape(3, 1, 1), 0, peak))

    win = SSIM_WINDOWS["gaussian"]
    core = _inner(dn.shape[1:], win.radius)
    sel = rng.random((140, 390)) < 0.6
    got = ssim_sums(dn, dn_y, core, sel, win, peak, refl, refl)
    want = _sk_map(x, y, "gaussian", peak)[:, sel].sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * int(sel.sum()))

    # The plain figures come from the float64 reflectance of the selected pixels, as before.
    per, sam, n_ok = block_sums(dn, dn_y, core, sel, sel, win, peak, refl, refl)
    xs, ys = x[:, core[0], core[1]][:, sel], y[:, core[0], core[1]][:, sel]
    for i, (ae, se, sp, sr, ss) in enumerate(per):
        d = xs[i] - ys[i]
        assert (ae, sp, sr) == (np.abs(d).sum(), xs[i].sum(), ys[i].sum())
        assert se == pytest.approx(np.dot(d, d), rel=1e-12)
        assert ss == pytest.approx(want[i], abs=1e-6 * int(sel.sum()))
    cos = (xs * ys).sum(axis=0) / np.sqrt((xs * xs).sum(axis=0) * (ys * ys).sum(axis=0))
    assert n_ok == sel.sum()
    assert sam == pytest.approx(np.arccos(np.clip(cos, -1, 1)).sum(), rel=1e-12)


def test_centred_values_are_the_reflectance_minus_a_level(rng):
    dn = rng.integers(0, 14000, size=(4, 200, 320)).astype(np.uint16)
    refl = Reflectance((1e-4,) * 4, (0.0, -0.1, 0.0, 0.05), clip=True, peak=1.0)
    planes = torch.empty(8, 200, 320)  # the tiles pass one raster's planes of a larger tensor
    assert refl.clips(dn)
    wide = np.zeros((4, 200, 640), np.uint16)
    wide[:, :, ::2] = dn
    level = refl.centred(wide[:, :, ::2], planes[4:])  # a strided view of the raw values, as tiles pass it
    want = refl(dn) - level[:, None, None]
    np.testing.assert_allclose(planes[4:].numpy(), want, rtol=0, atol=3e-7)  # float32 rounding of values up to 1.4
    assert np.abs(want.mean(axis=(1, 2))).max() < 0.05  # a level near the values


def test_pixels_whose_window_meets_nodata_never_count(rng):
    # The caller leaves such pixels out of ssim_sel; the tile still reads them as halo, so a
    # NaN there must not leak into a selected pixel's figure.
    win = SSIM_WINDOWS["gaussian"]
    x = _smooth(rng, (1, 80, 300), 0.3, 0.05)
    y = x + rng.normal(0, 0.01, size=x.shape)
    valid = np.ones(x.shape[1:], bool)
    valid[30:33, 100:140] = False
    x[:, ~valid] = np.nan
    ok = minimum_filter(valid.view(np.uint8), size=11, mode="constant", cval=0)[5:-5, 5:-5] > 0
    got = ssim_sums(x, y, _inner(x.shape[1:], 5), ok, win, 1.0)
    assert np.isfinite(got).all()
    x0 = np.where(valid, x, 0.3)
    want = _sk_map(x0, y, "gaussian", 1.0)[:, ok].sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * int(ok.sum()))
