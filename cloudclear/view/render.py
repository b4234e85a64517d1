"""Images for ``cloudclear view``: a window of a scene, its mask, an output or its status, as PNG.

Every image is read at the size asked for, never a whole tile: scenes and masks through the one
scene reader (:class:`~cloudclear.scenes.SceneReader`) on a decimated grid covering the window
(it warps, bands bilinear, the mask nearest, GDAL picking overviews where the files have them);
outputs and status sidecars by a decimated rasterio window read. The catalog's clear policy
decides the mask (its buffer scaled to the decimated grid).
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudclear.gridio import Grid

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog
    from cloudclear.scenes import Scene

#: Reflectance shown as 0..255: the same linear stretch for every date.
STRETCH = (0.0, 0.3)
#: Bands by display choice: red, green, blue.
BANDS = {"rgb": ("B04", "B03", "B02"), "false": ("B08", "B04", "B03")}
#: RGBA of each mask class (MaskClass order: nodata, clear, cloud, thin cloud, shadow, snow).
MASK_COLOURS = np.array(
    [[0, 0, 0, 255], [0, 0, 0, 0], [255, 255, 255, 255], [170, 210, 255, 255], [70, 30, 90, 255], [0, 255, 255, 255]],
    np.uint8,
)
#: RGBA of each status value (nodata, observed, reconstructed).
STATUS_COLOURS = np.array([[0, 0, 0, 0], [40, 200, 60, 110], [255, 140, 0, 255]], np.uint8)
MAX_SIZE = 2048
DEFAULT_SIZE = 1024


def png(rgba: np.ndarray) -> bytes:
    """A (rows, cols, 4) uint8 array as PNG bytes (zlib, no filter)."""
    h, w, _ = rgba.shape
    raw = np.zeros((h, w * 4 + 1), np.uint8)
    raw[:, 1:] = rgba.reshape(h, w * 4)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    head = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def default_size(bounds: tuple[float, float, float, float], res: float) -> tuple[int, int]:
    """The window at its own resolution (``res``), shrunk to <= :data:`DEFAULT_SIZE` px on the
    long side, keeping the aspect."""
    w, h = bounds[2] - bounds[0], bounds[3] - bounds[1]
    k = min(1.0 / res if res > 0 else float("inf"), DEFAULT_SIZE / max(w, h))
    return max(1, min(MAX_SIZE, round(w * k))), max(1, min(MAX_SIZE, round(h * k)))


def window_grid(crs_wkt: str, bbox: tuple[float, float, float, float], width: int, height: int) -> Grid:
    left, bottom, right, top = bbox
    return Grid(crs_wkt, ((right - left) / width, 0.0, left, 0.0, -(top - bottom) / height, top), width, height)


def stretch(values: np.ndarray) -> np.ndarray:
    """(3, rows, cols) reflectance (NaN: no value) as RGBA, nodata transparent."""
    lo, hi = STRETCH
    ok = np.all(np.isfinite(values), axis=0)
    v = np.nan_to_num((values - lo) / (hi - lo), nan=0.0)
    out = np.zeros((*values.shape[1:], 4), np.uint8)
    out[..., :3] = np.moveaxis(np.clip(v * 255.0 + 0.5, 0, 255).astype(np.uint8), 0, -1)
    out[..., 3] = np.where(ok, 255, 0)
    return out


# ------------------------------------------------------------------- info
def scene_info(scene: Scene) -> dict[str, Any]:
    b = scene.bounds
    return {
        "crs": scene.crs.to_string(),
        "bounds": [b.left, b.bottom, b.right, b.top],
        "width": scene.width,
        "height": scene.height,
        "date": scene.datetime.date().isoformat(),
    }


def raster_info(path: str, date: str) -> dict[str, Any]:
    import rasterio

    with rasterio.open(path) as src:
        b = src.bounds
        crs = src.crs.to_string() if src.crs else ""
        return {
            "crs": crs,
            "bounds": [b.left, b.bottom, b.right, b.top],
            "width": src.width,
            "height": src.height,
            "date": date,
        }


# ----------------------------------------------------------------- scenes
def _policy_on(catalog: Catalog, grid: Grid, native_res: float) -> Any:
    """The catalog's clear policy, its buffer in pixels of the (decimated) grid read on."""
    policy = catalog.policy
    factor = grid.res / native_res if native_res > 0 else 1.0
    buffer = getattr(policy, "buffer_px", 0)
    if factor > 1.01 and buffer:
        policy = dataclasses.replace(policy, buffer_px=int(round(buffer / factor)))
    return policy


def scene_image(
    catalog: Catalog, scene: Scene, kind: str, bbox: tuple[float, float, float, float], w: int, h: int, bands: str
) -> np.ndarray:
    """RGBA of a scene (``kind`` = "scene") or its clear decision ("mask") in ``bbox`` at w x h.

    Raises:
        GridError: a band the choice needs is not in the scene.
    """
    from cloudclear.errors import GridError
    from cloudclear.scenes import ReadSpec, SceneReader

    grid = window_grid(scene.crs.to_wkt(), bbox, w, h)
    policy = _policy_on(catalog, grid, scene.res[0])
    if kind == "mask":
        spec = ReadSpec.of(scene, [scene.bands[0]])
        reader = SceneReader(spec, grid, policy=policy)
        try:
            classes = reader.read(0, h).classes
        finally:
            reader.close()
        return MASK_COLOURS[np.clip(classes, 0, len(MASK_COLOURS) - 1)]
    names = BANDS[bands]
    missing = [b for b in names if b not in scene.bands]
    if missing:
        raise GridError(f"scene {scene.scene_id} has no {', '.join(missing)} for bands={bands}")
    spec = ReadSpec.of(scene, list(names), mask=False)
    reader = SceneReader(spec, grid)
    try:
        values = reader.read(0, h).physical(nan_invalid=True)
    finally:
        reader.close()
    return stretch(values)


# ---------------------------------------------------------------- outputs
def _read_window(
    path: str, bbox: tuple[float, float, float, float], w: int, h: int, indexes: list[int] | None
) -> tuple[np.ndarray, Any]:
    """A decimated read of ``bbox`` at w x h (nearest; outside the file: 0)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    with rasterio.open(path) as src:
        win = from_bounds(*bbox, transform=src.transform)
        data = src.read(
            indexes,
            window=win,
            out_shape=(len(indexes or src.indexes), h, w),
            boundless=True,
            fill_value=0,
            resampling=Resampling.nearest,
        )
        return data, src


def output_image(path: str, bbox: tuple[float, float, float, float], w: int, h: int, bands: str) -> np.ndarray:
    """RGBA of an infer output (uint16 reflectance x 10000, 0 nodata) in ``bbox`` at w x h."""
    import rasterio

    from cloudclear.errors import GridError

    with rasterio.open(path) as src:
        names = [d or "" for d in src.descriptions]
        scale = float(src.tags().get("QUANTIFICATION_VALUE", 10000) or 10000)
    want = BANDS[bands]
    if not all(b in names for b in want):
        raise GridError(
            f"{path.rsplit('/', 1)[-1]} has no {', '.join(b for b in want if b not in names)} for bands={bands}"
        )
    data, _ = _read_window(path, bbox, w, h, [names.index(b) + 1 for b in want])
    values = data.astype(np.float32) / scale
    values[:, np.any(data == 0, axis=0)] = np.nan
    return stretch(values)


def status_image(path: str, bbox: tuple[float, float, float, float], w: int, h: int) -> np.ndarray:
    """RGBA of a status sidecar: observed transparent green, reconstructed orange, nodata transparent."""
    data, _ = _read_window(path, bbox, w, h, [1])
    return STATUS_COLOURS[np.clip(data[0], 0, len(STATUS_COLOURS) - 1)]
