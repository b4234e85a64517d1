"""SSIM's compiled tile kernel (cloudclear.metrics.native): the raster types it reads, what it
leaves to the numpy / torch tiles, equal images, threads. Its agreement with scikit-image on
every window, shape and selection is in tests/test_ssim_fast.py (run on both paths)."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from cloudclear.metrics import native
from cloudclear.metrics.conventions import SSIM_WINDOWS
from cloudclear.metrics.maths import Reflectance, ssim_sums

WIN = SSIM_WINDOWS["gaussian"]
SK = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def test_the_kernel_is_built_where_ci_asks_for_it():
    # .ci/run installs a C compiler and sets this: a build that silently fell back would pass
    # every other test through the slower path.
    if os.environ.get("CLOUDCLEAR_REQUIRE_NATIVE") != "1":
        pytest.skip("CLOUDCLEAR_REQUIRE_NATIVE is not set")
    assert native.available(), "cloudclear/metrics/_ssim.c was not built at install"


needs_kernel = pytest.mark.skipif(not native.available(), reason="SSIM's compiled kernel is not built here")


def _dn(rng: np.random.Generator, shape: tuple[int, ...], level: float, spread: float) -> np.ndarray:
    f = gaussian_filter(rng.normal(size=shape), 2.0, axes=(-2, -1))
    return level + f / f.std() * spread


def _want(x: np.ndarray, y: np.ndarray, sel: np.ndarray, peak: float) -> np.ndarray:
    r = WIN.radius
    maps = [
        structural_similarity(a, b, data_range=peak, full=True, **SK)[1][r:-r, r:-r] for a, b in zip(x, y, strict=True)
    ]
    return np.array([m[sel].sum() for m in maps])


def _core(shape: tuple[int, ...]) -> tuple[slice, slice]:
    r = WIN.radius
    return slice(r, shape[-2] - r), slice(r, shape[-1] - r)


@needs_kernel
@pytest.mark.parametrize(
    "dtype, scale, offset, level, spread",
    [
        (np.uint8, 1 / 255, 0.0, 120, 40),
        (np.uint16, 1e-4, -0.1, 3000, 900),  # L2A baseline 04.00: DN / 10000 - 0.1
        (np.int16, 1e-4, 0.0, 200, 900),  # negative values
        (np.uint32, 1e-4, 0.0, 3000, 900),
        (np.int32, 1e-4, 0.0, 3000, 900),
        (np.float32, 1.0, 0.0, 0.3, 0.1),
        (np.float64, 1.0, 0.0, 0.3, 0.1),
    ],
)
def test_every_raster_type_it_reads_matches_skimage(rng, dtype, scale, offset, level, spread):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    dn = _dn(rng, (2, 90, 300), level, spread)
    dn_y = dn + rng.normal(0, spread / 3, size=dn.shape)
    if info is not None:
        dn, dn_y = (np.clip(np.rint(a), info.min, info.max).astype(dtype) for a in (dn, dn_y))
    else:
        dn, dn_y = dn.astype(dtype), dn_y.astype(dtype)
    assert native.readable(dn)
    refl = Reflectance((scale,) * 2, (offset,) * 2, clip=True, peak=1.0)
    sel = rng.random((80, 290)) < 0.5
    got = ssim_sums(dn, dn_y, _core(dn.shape), sel, WIN, 1.0, refl, refl)
    want = _want(refl(dn), refl(dn_y), sel, 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * int(sel.sum()))


@needs_kernel
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_equal_images_score_one_to_the_bit(rng, dtype):
    # 2 cov + C2 and var x + var y + C2 are computed from identical numbers, and the luminance
    # term is 1 - 0 / (...): SSIM is exactly 1, whatever the level and the clipping.
    dn = _dn(rng, (3, 80, 200), 3000, 1500).clip(0, 12000).astype(np.uint16).astype(dtype)
    refl = Reflectance((1e-4,) * 3, (0.0,) * 3, clip=True, peak=1.0)
    sel = np.ones((70, 190), bool)
    got = ssim_sums(dn, dn.copy(), _core(dn.shape), sel, WIN, 1.0, refl, refl)
    assert got.tolist() == [float(sel.sum())] * 3


def test_what_it_cannot_read_goes_to_the_numpy_torch_tiles(rng):
    # int8, float16, big-endian values and a view with strided columns: readable() says no, and
    # ssim_sums scores them through the numpy / torch tiles, still equal to scikit-image.
    x = _dn(rng, (1, 60, 200), 0.3, 0.08)
    y = x + rng.normal(0, 0.02, size=x.shape)
    sel = rng.random((50, 190)) < 0.5
    want = _want(x, y, sel, 1.0)
    wide = np.zeros((1, 60, 400))
    wide[:, :, ::2] = x
    for a in (x.astype(">f8"), wide[:, :, ::2], x.astype(np.float16)):
        assert not native.readable(a)
        got = ssim_sums(a, y, _core(x.shape), sel, WIN, 1.0)
        tol = 1e-3 if a.dtype == np.float16 else 1e-6  # float16 holds the values to 5e-4 only
        np.testing.assert_allclose(got, want if a.dtype != np.float16 else _want(a.astype(float), y, sel, 1.0),
                                   rtol=0, atol=tol * int(sel.sum()))  # fmt: skip
    assert not native.readable(np.zeros((1, 4, 4), np.int8))


@needs_kernel
def test_a_tile_without_its_halo_is_refused(rng):
    x = rng.random((1, 30, 40))
    with pytest.raises(ValueError, match="halo"):
        native.ssim_tile(x, x, np.ones((30, 40), bool), WIN, 1.0, Reflectance(), Reflectance(), np.zeros(1))


@needs_kernel
def test_threads_scoring_at_once_get_the_same_sums(rng):
    # Each thread has its own scratch rows (cloudclear.metrics.scratch): sums do not depend on who ran when.
    dn = _dn(rng, (4, 200, 700), 3000, 800).clip(0, 65535).astype(np.uint16)
    dn_y = (dn + rng.normal(0, 200, size=dn.shape)).clip(0, 65535).astype(np.uint16)
    refl = Reflectance((1e-4,) * 4, (0.0,) * 4, clip=True, peak=1.0)
    sel = rng.random((190, 690)) < 0.4
    once = ssim_sums(dn, dn_y, _core(dn.shape), sel, WIN, 1.0, refl, refl)
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: ssim_sums(dn, dn_y, _core(dn.shape), sel, WIN, 1.0, refl, refl), range(8)))
    for r in runs:
        assert r.tolist() == once.tolist()


SAMPLE = Path(__file__).resolve().parents[1] / "sample_tiles" / "32TPS"


@pytest.mark.parametrize("path", ["native", "numpy-torch"])
def test_real_bolzano_pair_against_skimage(monkeypatch, path):
    # Two real L2A dates of the shipped sample (2 and 5 June 2022): bright cloud beside dark,
    # flat ground, where a variance is a difference of squares near 0.04 and C2 is 9e-4. The
    # compiled kernel is float64 and equals scikit-image per pixel; the float32 tiles, centred on
    # one level per 64 x 512 tile, keep the band means within 1e-6 but not every pixel.
    rasterio = pytest.importorskip("rasterio")
    native.library.cache_clear()
    if path == "native" and not native.available():
        pytest.skip("SSIM's compiled kernel is not built here")
    if path != "native":
        monkeypatch.setenv("CLOUDCLEAR_NATIVE", "0")
        native.library.cache_clear()
    try:
        dn = []
        for day in ("20220602", "20220605"):
            with rasterio.open(SAMPLE / f"S2_L2A_T32TPS_{day}.tif") as src:
                dn.append(src.read())  # 512 x 512 px, 4 bands
        refl = Reflectance((1e-4,) * len(dn[0]), (0.0,) * len(dn[0]), clip=True, peak=1.0)
        x, y = refl(dn[0]), refl(dn[1])
        sel = np.ones((502, 502), bool)
        want = np.array(
            [
                structural_similarity(a, b, data_range=1.0, full=True, **SK)[1][5:-5, 5:-5]
                for a, b in zip(x, y, strict=True)
            ]
        )
        got = ssim_sums(dn[0], dn[1], _core(dn[0].shape), sel, WIN, 1.0, refl, refl)
        np.testing.assert_allclose(
            got / sel.sum(), want.mean(axis=(1, 2)), rtol=0, atol=1e-12 if path == "native" else 1e-6
        )
        if path == "native":
            rng = np.random.default_rng(3)
            for i, j in zip(rng.integers(0, 502, 60), rng.integers(0, 502, 60), strict=True):
                one = np.zeros_like(sel)
                one[i, j] = True
                got = ssim_sums(dn[0], dn[1], _core(dn[0].shape), one, WIN, 1.0, refl, refl)
                np.testing.assert_allclose(got, want[:, i, j], rtol=0, atol=1e-9)
    finally:
        native.library.cache_clear()


@needs_kernel
def test_a_kernel_built_from_another_version_is_not_used(monkeypatch):
    # An editable install keeps the library it built until it is reinstalled: after a pull that
    # changed _ssim.c its arguments may no longer match, so it is left alone, with a warning.
    monkeypatch.setattr(native, "VERSION", native.VERSION + 1)
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="out of date .* Reinstall"):
            assert native.library() is None
        assert not native.available()
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
    assert native.available()


def _pair(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    from conftest import write_raster

    dn = _dn(rng, (2, 300, 300), 3000, 800).clip(1, 12000).astype(np.uint16)
    dn_y = (dn + rng.normal(0, 200, size=dn.shape)).clip(1, 12000).astype(np.uint16)
    return write_raster(tmp_path / "pred.tif", dn), write_raster(tmp_path / "ref.tif", dn_y)


@needs_kernel
def test_a_score_the_kernel_serves_never_loads_torch(tmp_path, rng):
    import subprocess

    pred, ref = _pair(tmp_path, rng)
    code = (
        "import sys; from cloudclear.metrics import score; "
        f"s = score({str(pred)!r}, {str(ref)!r}); print(s.ssim > 0.5, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "False"]


def test_without_the_kernel_each_chunk_thread_runs_torch_on_one_thread(tmp_path, rng, monkeypatch):
    # The strip scorer's chunk threads run torch alone (set at their first tile, per thread); the
    # caller's torch keeps its own setting.
    import threading

    import torch

    from cloudclear.metrics import score

    pred, ref = _pair(tmp_path, rng)
    monkeypatch.setenv("CLOUDCLEAR_NATIVE", "0")
    native.library.cache_clear()
    calls: list[tuple[str, int]] = []
    real = torch.set_num_threads
    monkeypatch.setattr(
        torch, "set_num_threads", lambda n: (calls.append((threading.current_thread().name, n)), real(n))
    )
    before = torch.get_num_threads()
    try:
        assert score(pred, ref).ssim > 0.5
    finally:
        native.library.cache_clear()
    assert calls and all(n == 1 and name != threading.current_thread().name for name, n in calls), calls
    assert torch.get_num_threads() == before
