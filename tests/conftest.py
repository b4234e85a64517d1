"""Shared fixtures: small GeoTIFFs with real UTM CRSs written on the fly."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UTM31 = "EPSG:32631"


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM31,
    origin: tuple[float, float] = (600000.0, 5700000.0),
    res: float = 10.0,
    descriptions: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    nodata: float | None = None,
    driver: str = "GTiff",
    compress: str | None = None,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a raster and return its path."""
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver=driver,
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=from_origin(origin[0], origin[1], res, res) if crs else None,
        nodata=nodata,
    )
    if driver == "GTiff" and data.shape[1] >= 64 and data.shape[2] >= 64:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    if compress:
        profile["compress"] = compress
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # crs=None is asked for
        dst = rasterio.open(path, "w", **profile)
    with dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
    return path


def s2_data(rng: np.random.Generator, bands: int = 4, size: int = 128) -> np.ndarray:
    return rng.integers(200, 4000, size=(bands, size, size), dtype=np.uint16)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: thread hand-offs cost more than the convolutions, and on a busy 2-core
    machine a second torch thread makes each step many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
