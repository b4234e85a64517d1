"""A raster grid (CRS, transform, size) and reading any file's bands in row ranges on it.

The file-level reader under every pixel read: the scene reader
(:mod:`cloudclear.scenes.reader`, used by the catalog, detection, sampling and inference) reads
scenes whose bands come at several resolutions (a 10 m stack with 20 m SWIR files, a 20 m SCL)
strip by strip or window by window on one grid through it, and scoring reads predictions,
references and masks through it. Every warped view (WarpedVRT) is made here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.coords import BoundingBox

from cloudclear.errors import GridError, InvalidRasterError, SceneNotFoundError


def missing_file(path: str, catalog_path: str | os.PathLike[str] | None = None) -> SceneNotFoundError:
    """The error for a scene file a catalog lists but the disk no longer holds."""
    where = f" in {catalog_path}" if catalog_path else ""
    return SceneNotFoundError(f"{path}: no such file (indexed{where}; re-run `cloudclear index`)")


@dataclass(frozen=True)
class Grid:
    """The output grid: CRS (WKT), affine transform coefficients, size."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def res(self) -> float:
        return abs(self.transform[0])

    def bounds(self) -> BoundingBox:
        """The grid's extent in its CRS (rasterio's ``BoundingBox``: left, bottom, right, top)."""
        a, _, c, _, e, f = self.transform
        return BoundingBox(c, f + e * self.height, c + a * self.width, f)

    def pad(self, top: int, left: int, bottom: int, right: int) -> Grid:
        """The grid grown by whole pixels on each side (same CRS and resolution)."""
        a, b, c, d, e, f = self.transform
        return Grid(
            self.crs, (a, b, c - left * a, d, e, f - top * e), self.width + left + right, self.height + top + bottom
        )

    def crop(self, bbox: Sequence[float]) -> Grid:
        """The sub-grid covering ``bbox`` (minx, miny, maxx, maxy in the grid's CRS), snapped outward.

        Raises:
            GridError: ``bbox`` does not overlap the grid.
        """
        a, _, c, _, e, f = self.transform
        x0, y0, x1, y1 = bbox
        c0 = max(math.floor((x0 - c) / a + 1e-9), 0)
        c1 = min(math.ceil((x1 - c) / a - 1e-9), self.width)
        r0 = max(math.floor((y1 - f) / e + 1e-9), 0)
        r1 = min(math.ceil((y0 - f) / e - 1e-9), self.height)
        if c1 <= c0 or r1 <= r0:
            gb = ", ".join(f"{v:.1f}" for v in self.bounds())
            raise GridError(f"bbox {tuple(bbox)} does not overlap the tile (bounds {gb})")
        return Grid(self.crs, (a, 0.0, c + a * c0, 0.0, e, f + e * r0), c1 - c0, r1 - r0)


def _bounds(src: Any) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a north-up file, from its transform."""
    a, _, c, _, e, f = tuple(src.transform)[:6]
    xs, ys = (c, c + a * src.width), (f, f + e * src.height)
    return (min(xs), min(ys), max(xs), max(ys))


def _same(a: float, b: float, res: float) -> bool:
    return abs(a - b) <= 1e-6 * max(res, 1.0)


class GridReader:
    """Bands of one file read in row ranges on a given grid (directly when aligned, else through a WarpedVRT).

    Args:
        path: the raster.
        indexes: 1-based bands to read.
        grid: the grid rows are read on.
        resampling: a rasterio Resampling name, used only when the file is not on ``grid``.
        nodata: nodata value the warped view declares.
        coverage: when the file must be warped, also keep where it covers the grid (an alpha
            band), for :meth:`covered`; without it a warped view fills the rest with ``nodata``
            (or 0), which a mask convention may read as a class.
        float_nan: when the file must be warped, warp to float32 with NaN as nodata (``nodata``
            then names the source's nodata), so resampled values keep their precision and
            validity survives resampling; and fix the resampling scale to the whole raster's
            ratio, because GDAL derives it from each requested window unless told, and strip reads
            must equal one whole read (scoring).

    Raises:
        SceneNotFoundError: the file does not exist (deleted since it was indexed).
        InvalidRasterError: the file cannot be opened, lacks a band, or has no CRS when it must be warped.
    """

    def __init__(
        self,
        path: str,
        indexes: list[int],
        grid: Grid,
        resampling: str,
        nodata: float | None,
        *,
        coverage: bool = False,
        float_nan: bool = False,
    ):
        import rasterio

        self.path = path
        self.indexes = indexes
        try:
            self.src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            if "://" not in str(path) and not str(path).startswith("/vsi") and not os.path.exists(path):
                raise missing_file(path) from None
            raise InvalidRasterError(f"{path}: cannot open ({exc})") from None
        self.vrt: Any = None
        self.alpha: int | None = None
        self.row_off = self.col_off = 0
        try:
            self._place(grid, resampling, nodata, coverage, float_nan)
        except BaseException:
            self.src.close()
            raise
        self.block_rows = self.src.block_shapes[0][0] if not self.vrt else 0
        self.width = grid.width
        self.nodatavals = self.src.nodatavals

    def _place(self, grid: Grid, resampling: str, nodata: float | None, coverage: bool, float_nan: bool) -> None:
        """Read directly when the file lies on ``grid``, else open a warped view of it on ``grid``."""
        from rasterio.crs import CRS
        from rasterio.enums import Resampling

        src, path, indexes = self.src, self.path, self.indexes
        if max(indexes) > src.count:
            raise InvalidRasterError(f"{path}: has {src.count} bands, band {max(indexes)} was indexed")
        a, _, c, _, e, f = grid.transform
        t = src.transform
        aligned = False
        # A file without a CRS lies on a grid without one when their transforms agree (a scene
        # read on its own grid while indexing).
        same_crs = src.crs is None and not grid.crs
        if src.crs is not None and grid.crs:
            same_crs = CRS.from_user_input(grid.crs) == src.crs
        if same_crs and t.b == 0 and t.d == 0:
            if _same(t.a, a, grid.res) and _same(t.e, e, grid.res):
                dc, dr = (c - t.c) / a, (f - t.f) / e
                if abs(dc - round(dc)) < 1e-6 and abs(dr - round(dr)) < 1e-6:
                    dc, dr = round(dc), round(dr)
                    aligned = dc >= 0 and dr >= 0 and dc + grid.width <= src.width and dr + grid.height <= src.height
                    self.row_off, self.col_off = dr, dc
        if not aligned:
            from affine import Affine
            from rasterio.vrt import WarpedVRT

            if src.crs is None:
                raise InvalidRasterError(f"{path}: has no CRS, cannot be placed on the output grid")
            self.row_off = self.col_off = 0
            kwargs: dict[str, Any] = {}
            if float_nan:
                from rasterio.warp import transform_bounds

                left, bottom, right, top = transform_bounds(src.crs, CRS.from_user_input(grid.crs), *_bounds(src))
                kwargs.update(
                    dtype="float32",
                    nodata=float("nan"),
                    src_nodata=nodata,
                    XSCALE=f"{(right - left) / abs(a) / src.width:.12g}",
                    YSCALE=f"{(top - bottom) / abs(e) / src.height:.12g}",
                )
            elif nodata is not None:
                kwargs["nodata"] = nodata
            if coverage:
                kwargs["add_alpha"] = True
                self.alpha = src.count + 1
            self.vrt = WarpedVRT(
                src,
                crs=CRS.from_user_input(grid.crs),
                transform=Affine(*grid.transform),
                width=grid.width,
                height=grid.height,
                resampling=Resampling[resampling],
                **kwargs,
            )

    def read(self, r0: int, r1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``r0..r1`` of the grid, shape (bands, rows, width), the file's dtype; into ``out``
        (of that shape and type, possibly a strided view) when given, which is returned."""
        from rasterio.windows import Window

        ds = self.vrt or self.src
        win = Window(self.col_off, self.row_off + r0, self.width, r1 - r0)
        try:
            return ds.read(self.indexes, window=win, out=out)
        except Exception as exc:  # noqa: BLE001 - GDAL raises several types for a corrupt block
            raise InvalidRasterError(f"{self.path}: cannot read rows {r0}..{r1} ({exc})") from None

    def read_window(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``r0..r1`` and columns ``c0..c1`` of the grid, shape (bands, rows, cols)."""
        from rasterio.windows import Window

        ds = self.vrt or self.src
        win = Window(self.col_off + c0, self.row_off + r0, c1 - c0, r1 - r0)
        try:
            return ds.read(self.indexes, window=win)
        except Exception as exc:  # noqa: BLE001 - GDAL raises several types for a corrupt block
            raise InvalidRasterError(
                f"{self.path}: cannot read window rows {r0}..{r1}, cols {c0}..{c1} ({exc})"
            ) from None

    def covered(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        """Where the file covers rows ``r0..r1``, columns ``c0..c1`` of the grid; None when it covers
        all of the grid (read directly) or coverage was not asked for."""
        from rasterio.windows import Window

        if self.alpha is None:
            return None
        win = Window(c0, r0, c1 - c0, r1 - r0)
        try:
            return np.asarray(self.vrt.read(self.alpha, window=win) > 0)
        except Exception as exc:  # noqa: BLE001 - GDAL raises several types for a corrupt block
            raise InvalidRasterError(
                f"{self.path}: cannot read window rows {r0}..{r1}, cols {c0}..{c1} ({exc})"
            ) from None

    def close(self) -> None:
        """Close the file (and its warped view)."""
        if self.vrt is not None:
            self.vrt.close()
        self.src.close()
