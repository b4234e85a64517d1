"""Opening the rasters of a pair, pairing their bands, finding their common grid, and reading strips
of it.

The common grid is the part of the reference's pixel grid that the prediction covers. Every file
(prediction, reference, masks, the cloudy input) is read on it through
:class:`cloudclear.gridio.GridReader`, the reader inference and detection use: directly when the
file lies on the grid, warped onto it otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, ScoreError
from cloudclear.gridio import Grid, GridReader
from cloudclear.scenes import FileInfo, classify, normalise_band, read_file_info

if TYPE_CHECKING:
    from rasterio.io import DatasetReader


def open_info(path: str | os.PathLike[str], what: str) -> FileInfo:
    """Read a raster's metadata, naming it as ``what`` ("prediction", "mask"...) in errors.

    Raises:
        ScoreError: the path does not exist or is a folder.
        InvalidRasterError: the file is not a readable raster, or has no CRS.
    """
    p = Path(path)
    if not p.exists():
        raise ScoreError(f"{p}: {what} not found")
    if p.is_dir():
        raise ScoreError(f"{p}: {what} is a folder, not a raster")
    info = read_file_info(p)
    if info.crs is None:
        raise InvalidRasterError(f"{p}: {what} has no CRS; cannot place it against the other raster")
    return info


def _band_names(info: FileInfo) -> list[str | None]:
    return [normalise_band(d) or (d or None) for d in info.descriptions]


def match_bands(pred: FileInfo, ref: FileInfo, bands: Sequence[str] | None) -> tuple[list[int], list[int], list[str]]:
    """Pair the prediction's bands with the reference's.

    Returns:
        1-based band indexes in the prediction and the reference, and the band labels.

    Raises:
        ScoreError: band counts or names differ and ``bands`` does not say which to compare.
    """
    pn, rn = _band_names(pred), _band_names(ref)
    named = all(pn) and all(rn)
    if bands:
        pi, ri, labels = [], [], []
        for token in bands:
            token = token.strip()
            if token.isdigit():
                idx = int(token)
                for info in (pred, ref):
                    if not 1 <= idx <= info.count:
                        raise ScoreError(f"{info.path}: no band {idx} (it has {info.count})")
                pi.append(idx)
                ri.append(idx)
                labels.append(rn[idx - 1] or f"band {idx}")
                continue
            name = normalise_band(token) or token
            for info, names, out in ((pred, pn, pi), (ref, rn, ri)):
                if name not in names:
                    have = ", ".join(n or "?" for n in names)
                    raise ScoreError(f"{info.path}: no band {name} (it has {have})")
                out.append(names.index(name) + 1)
            labels.append(name)
        return pi, ri, labels
    if named and set(pn) == set(rn) and len(pn) == len(rn):
        return [pn.index(n) + 1 for n in rn], list(range(1, ref.count + 1)), [str(n) for n in rn]
    if named and pred.count == ref.count:
        raise ScoreError(
            f"{pred.path}: bands {', '.join(map(str, pn))} differ from the reference's "
            f"({', '.join(map(str, rn))}); choose common bands with --bands"
        )
    if pred.count != ref.count:
        common = [n for n in pn if n and n in rn]
        hint = f" (e.g. --bands {','.join(map(str, common))})" if common else ""
        raise ScoreError(
            f"{pred.path}: {pred.count} band(s) but the reference {Path(ref.path).name} has {ref.count}; "
            f"choose the bands to compare with --bands{hint}"
        )
    same = list(range(1, ref.count + 1))
    return same, same, [rn[i - 1] or (pn[i - 1] or f"band {i}") for i in same]


def _same_crs(a: str, b: str) -> bool:
    from rasterio.crs import CRS

    return bool(CRS.from_wkt(a) == CRS.from_wkt(b))


def _offset_on(ref: FileInfo, other: FileInfo) -> tuple[int, int] | None:
    """(col, row) of ``other``'s origin in ``ref``'s pixel grid when the grids coincide, else None."""
    ra, rb, rc, rd, re_, rf = ref.transform
    oa, ob, oc, od, oe, of = other.transform
    if rb or rd or ob or od:
        return None
    if not (math.isclose(ra, oa, rel_tol=1e-9) and math.isclose(re_, oe, rel_tol=1e-9)):
        return None
    col, row = (oc - rc) / ra, (of - rf) / re_
    if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
        return None
    return round(col), round(row)


def align(pred: FileInfo, ref: FileInfo, reproject: bool) -> tuple[Grid, bool]:
    """The common grid (the part of the reference's pixel grid the prediction covers), and whether
    the prediction must be warped onto it.

    Raises:
        ScoreError: the grids differ and ``reproject`` is false, or the rasters do not overlap.
    """
    assert pred.crs is not None and ref.crs is not None
    same_crs = _same_crs(pred.crs, ref.crs)
    offset = _offset_on(ref, pred) if same_crs else None
    if offset is None:
        if not reproject:
            from rasterio.crs import CRS

            if not same_crs:
                why = "a different CRS"
            elif not (
                math.isclose(pred.transform[0], ref.transform[0], rel_tol=1e-9)
                and math.isclose(pred.transform[4], ref.transform[4], rel_tol=1e-9)
            ):
                unit = "deg" if CRS.from_wkt(ref.crs).is_geographic else "m"
                res = f"{abs(pred.transform[0]):g} {unit} vs {abs(ref.transform[0]):g} {unit}"
                why = f"a different resolution ({res})"
            else:
                why = "a grid shifted by a fraction of a pixel"
            raise ScoreError(
                f"{pred.path}: {why} from the reference {Path(ref.path).name}; "
                "pass --reproject to warp the prediction onto the reference grid"
            )
        from rasterio.warp import transform_bounds

        left, bottom, right, top = transform_bounds(pred.crs, ref.crs, *pred.bounds)
        a, _, c, _, e, f = ref.transform[:6]
        c0, c1 = sorted(((left - c) / a, (right - c) / a))
        r0, r1 = sorted(((top - f) / e, (bottom - f) / e))
        col0, row0 = max(0, math.floor(c0)), max(0, math.floor(r0))
        col1, row1 = min(ref.width, math.ceil(c1)), min(ref.height, math.ceil(r1))
        warped = True
    else:
        col, row = offset
        col0, row0 = max(0, col), max(0, row)
        col1, row1 = min(ref.width, col + pred.width), min(ref.height, row + pred.height)
        warped = False
    if col1 <= col0 or row1 <= row0:
        raise ScoreError(f"{pred.path}: does not overlap the reference {Path(ref.path).name}")
    a, b, c, d, e, f = ref.transform[:6]
    origin = (a, b, c + a * col0 + b * row0, d, e, f + d * col0 + e * row0)
    return Grid(ref.crs, origin, col1 - col0, row1 - row0), warped


def mask_band_of(info: FileInfo, convention: str | None) -> masks.MaskBand:
    """The band of a mask file to read and its convention (given, or recognised from the file).

    Raises:
        ScoreError: the convention is unknown, or not given and not recognisable.
    """
    if convention:
        if convention not in masks.CONVENTIONS:
            raise ScoreError(f"unknown mask convention {convention!r}; choose {', '.join(masks.CONVENTIONS)}")
        return masks.MaskBand(info.path, 1, convention)
    try:
        role = classify(info)
    except InvalidRasterError:
        role = None
    if role is None or role.mask is None:
        raise ScoreError(
            f"{info.path}: cannot tell which mask convention this file uses; "
            f"name it with --mask-convention ({', '.join(masks.CONVENTIONS)})"
        )
    return role.mask


class StripReader(GridReader):
    """Strips of rows of the common grid from one raster, through :class:`~cloudclear.gridio.GridReader`.

    Where the file must be warped, scoring warps to float32 with NaN as nodata (instead of the
    file's type and nodata), so that resampled values keep their precision and validity survives
    resampling, at the whole raster's resampling scale so that strip reads equal one whole read
    (``GridReader(float_nan=True)``).

    Args:
        info: the file.
        grid: the common grid.
        bands: 1-based bands to read.
        resampling: a rasterio Resampling name, used only when the file is not on ``grid``.
        nodata: the value to treat as nodata (the file's, or the user's override).
    """

    def __init__(
        self, info: FileInfo, grid: Grid, bands: Sequence[int], *, resampling: str, nodata: float | None
    ) -> None:
        super().__init__(info.path, list(bands), grid, resampling, nodata, float_nan=True)
        self.info = info
        self.bands = list(bands)
        self.grid = grid
        self.nodata = float("nan") if self.vrt is not None else nodata

    @property
    def warped(self) -> bool:
        """Whether the file is read through a warped view."""
        return self.vrt is not None

    def rows(self, row: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [row, row + height) of the common grid, shape (bands, height, width); into ``out``
        when given (:meth:`~cloudclear.gridio.GridReader.read`)."""
        return self.read(row, row + height, out)

    def valid_rows(self, row: int, height: int) -> np.ndarray:
        """GDAL's mask of the first band for the same rows: False where the file masks the pixel."""
        from rasterio.windows import Window

        ds: DatasetReader = self.vrt or self.src
        win = Window(self.col_off, self.row_off + row, self.width, height)
        try:
            return ds.read_masks(self.bands[0], window=win) > 0
        except Exception as exc:  # noqa: BLE001 - GDAL raises several types for a corrupt block
            raise InvalidRasterError(f"{self.path}: cannot read rows {row}..{row + height} ({exc})") from None


def nodata_of(info: FileInfo, override: float | None) -> float | None:
    """The user's nodata value if given, else the file's."""
    if override is not None:
        return override
    return info.nodata


def valid(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """A pixel is valid unless every band holds nodata or any band is NaN (rasterio's dataset mask)."""
    if raw.dtype.kind == "f":
        ok = ~np.isnan(raw).any(axis=0)
    else:
        ok = np.ones(raw.shape[1:], dtype=bool)
    if nodata is not None and not math.isnan(nodata):
        if raw.dtype.kind in "iu":
            if not (float(nodata).is_integer() and np.iinfo(raw.dtype).min <= nodata <= np.iinfo(raw.dtype).max):
                return ok  # no value of the type equals it
            nodata = raw.dtype.type(nodata)  # compared in the raw type, not as float64 copies
        # Band by band into one scratch array: not a (bands, rows, cols) temporary.
        some = raw[0] != nodata
        scratch = np.empty_like(some)
        for band in raw[1:]:
            some |= np.not_equal(band, nodata, out=scratch)
        ok &= some
    return ok
