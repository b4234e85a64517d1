"""Pixel statistics of a scene on its grid: nodata %, cloud %, and per-cell cloud and validity grids.

Read once per new or changed scene by :func:`cloudclear.catalog.build_index`, strip by strip so
memory stays bounded on full tiles. An index opens each file once: the pixels a file's statistics
will read are taken while it is open for its metadata (:class:`Preloaded`), where they are small
enough to keep; a larger file is opened again for its statistics, whose read then costs far more
than the open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, ResourceLimitError
from cloudclear.gridio import Grid, GridReader
from cloudclear.scenes import FileInfo, FileRole, SceneDraft
from cloudclear.scenes.reader import ReadSpec, SceneReader, mask_indexes

if TYPE_CHECKING:
    import numpy as np

#: Side of the square statistics cells, in pixels of the scene grid.
CELL = 64
#: Rows read at a time when computing statistics (a multiple of CELL): bounds memory on full tiles.
STRIP_ROWS = 8 * CELL
#: Cell value meaning "no valid pixel" in the per-cell grids.
NO_CELL = 255
#: Largest raster (pixels) whose statistics are computed: 65536 x 65536, six times a Sentinel-2
#: tile; a file declaring more is refused before anything is allocated (a corrupt or hostile header).
MAX_PIXELS = 1 << 32
#: Widest raster: a strip of STRIP_ROWS rows of it must stay well under a gigabyte.
MAX_WIDTH = 1 << 20


@dataclass(frozen=True)
class SceneStats:
    """Pixel statistics of one scene on its grid.

    Attributes:
        nodata_pct: % of pixels without data.
        cloud_pct: % of valid pixels that are cloud, thin cloud or cloud shadow; None without mask.
        cloud_cells: per CELL x CELL cell, cloud % (0-100), NO_CELL where unknown.
        valid_cells: per cell, % of pixels with data (0-100).
        removed_px: valid pixels the scene's mask calls clear that the clear policy counted as
            obscured (detector, unclassified, snow, buffer); None when the policy keeps the mask as
            decoded or without a mask.
        removed_by: ``removed_px`` per rule (see :attr:`~cloudclear.scenes.reader.Pixels.removed_by`).
    """

    nodata_pct: float
    cloud_pct: float | None
    cloud_cells: np.ndarray
    valid_cells: np.ndarray
    removed_px: int | None = None
    removed_by: dict[str, int] | None = None
    sample: ValueSample | None = None


@dataclass(frozen=True)
class ValueSample:
    """Raw values of the band the statistics read, on a regular subsample of the scene (at most
    :data:`SAMPLE_PIXELS`), for :mod:`cloudclear.catalog.values` to check the scene's scale.

    Attributes:
        band: the band's name.
        valid: values at pixels with data.
        clear: values at pixels the mask calls clear (every valid one without a mask).
    """

    band: str
    valid: np.ndarray
    clear: np.ndarray


#: Pixels of a scene whose raw values are kept to check its scale (a regular subsample).
SAMPLE_PIXELS = 250_000


def _cell_sums(arr: np.ndarray, cell: int) -> np.ndarray:
    import numpy as np

    h, w = arr.shape
    ph, pw = -h % cell, -w % cell
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw)))
    return arr.reshape(arr.shape[0] // cell, cell, arr.shape[1] // cell, cell).sum(axis=(1, 3))


def check_size(path: str, width: int, height: int) -> None:
    """Refuse a raster too large to have its statistics computed in bounded memory.

    Raises:
        ResourceLimitError: more than :data:`MAX_PIXELS` pixels or :data:`MAX_WIDTH` columns.
    """
    if width * height > MAX_PIXELS or width > MAX_WIDTH:
        raise ResourceLimitError(
            f"{path}: declares {width} x {height} pixels, more than cloudclear reads "
            f"({MAX_PIXELS} pixels, {MAX_WIDTH} columns at most); is the header corrupt?"
        )


def scene_stats(
    draft: SceneDraft,
    cell: int = CELL,
    policy: masks.ClearPolicy = masks.DEFAULT_POLICY,
    preloaded: Preloaded | None = None,
) -> SceneStats:
    """Read band 1 and the mask of a scene in strips and compute its statistics.

    The cloud % and cells count what ``policy`` calls obscured (the one decision of what is clear,
    :class:`~cloudclear.masks.ClearPolicy`, applied by the reader with its halo, so strips join
    exactly); the default policy counts the mask's classes as decoded.

    Only the first band (for validity) and the mask are read, strip by strip, through the one
    scene reader (:class:`~cloudclear.scenes.reader.SceneReader`), so memory stays bounded on
    full 10980 x 10980 tiles and the catalog's validity, cloud and clear pixels are those sampling
    and inference see. A mask on another grid (a 20 m SCL for a 10 m scene) is sampled at the
    scene's pixel centres (nearest neighbour).

    ``preloaded`` holds pixels taken when the files were opened for their metadata; the files it
    lacks are opened.

    Raises:
        InvalidRasterError: a file fails to decode (truncated, corrupt).
        ResourceLimitError: the scene or its mask declares more than :data:`MAX_PIXELS` pixels or
            :data:`MAX_WIDTH` columns (checked before anything is allocated).
    """
    import numpy as np

    info = draft.grid
    check_size(info.path, info.width, info.height)
    height, width = info.height, info.width
    # Validity comes from a band on the scene grid (the finest file), not e.g. a 60 m B01.
    # Blue first where the grid's file has it: its darkest clear pixels tell an offset (values.py).
    on_grid = [(b, (p, i)) for b, (p, i) in draft.band_sources.items() if p == info.path]
    name, (path, bidx) = next((bp for bp in on_grid if bp[0] in ("B02", "B03", "B04")), on_grid[0])
    spec = ReadSpec.from_files(
        draft.sensor, {name: (path, bidx)}, {path: info}, units=draft.units, mask=draft.mask, detected=draft.detected
    )
    grid = Grid(info.crs or "", tuple(info.transform[:6]), width, height)  # type: ignore[arg-type]
    ncy, ncx = -(-height // cell), -(-width // cell)
    valid_n = np.zeros((ncy, ncx), np.int64)
    known_n = np.zeros((ncy, ncx), np.int64)
    cloud_n = np.zeros((ncy, ncx), np.int64)
    removed = 0
    removed_by: dict[str, int] = {}
    reported = False  # the reader says what the policy removed (None when it keeps the mask as decoded)
    # Pixels per cell: full cells, smaller ones along the bottom and right edges.
    total_n = np.outer(
        np.minimum(cell, height - cell * np.arange(ncy)), np.minimum(cell, width - cell * np.arange(ncx))
    )
    strip = max(cell, STRIP_ROWS - STRIP_ROWS % cell)
    step = max(1, int((height * width / SAMPLE_PIXELS) ** 0.5))
    valid_parts: list[np.ndarray] = []
    clear_parts: list[np.ndarray] = []
    opener = preloaded.opener() if preloaded is not None else None
    try:
        reader = SceneReader(spec, grid, policy=policy, opener=opener, halo=True)
    except InvalidRasterError as exc:
        if opener is not None:
            opener.close()
        raise InvalidRasterError(f"{exc} (corrupt or truncated)") from None
    try:
        if reader.mask is not None and not isinstance(reader.mask, _HeldReader):  # held: small
            check_size(reader.mask.path, reader.mask.src.width, reader.mask.src.height)
        for r0 in range(0, height, strip):
            h = min(strip, height - r0)
            try:
                px = reader.read(r0, r0 + h)
            except InvalidRasterError as exc:
                raise InvalidRasterError(f"{exc} (corrupt or truncated)") from None
            # The subsample's rows continue across strips: row r0 + k is kept when k is on the step.
            first = -r0 % step
            sub = px.values[0, first::step, ::step]
            valid_parts.append(sub[px.valid[first::step, ::step]])
            clear_parts.append(sub[px.clear[first::step, ::step]])
            c0 = r0 // cell
            c1 = c0 + -(-h // cell)
            valid_n[c0:c1] += _cell_sums(px.valid, cell)
            if px.has_mask:
                known_n[c0:c1] += _cell_sums(px.known, cell)
                cloud_n[c0:c1] += _cell_sums(px.obscured, cell)
                if px.removed is not None:
                    reported = True
                    removed += int(px.removed.sum())
                for rule, n in (px.removed_by or {}).items():
                    removed_by[rule] = removed_by.get(rule, 0) + n
    finally:
        reader.close()
        if opener is not None:
            opener.close()

    total = int(total_n.sum())
    nodata_pct = 100.0 * (1.0 - valid_n.sum() / total)
    with np.errstate(invalid="ignore", divide="ignore"):
        valid_cells = np.round(100.0 * valid_n / total_n).astype(np.uint8)
        cloud_frac = np.where(known_n > 0, 100.0 * cloud_n / np.maximum(known_n, 1), NO_CELL)
    cloud_cells = np.round(cloud_frac).astype(np.uint8)
    removed_px = removed if reported and draft.mask is not None else None
    if draft.mask is None:
        cloud_pct = None
        cloud_cells[:] = NO_CELL
    else:
        known = int(known_n.sum())
        cloud_pct = 100.0 * cloud_n.sum() / known if known else None
    return SceneStats(
        float(nodata_pct),
        None if cloud_pct is None else float(cloud_pct),
        cloud_cells,
        valid_cells,
        removed_px,
        None if removed_px is None else removed_by,
        ValueSample(name, np.concatenate(valid_parts), np.concatenate(clear_parts)) if valid_parts else None,
    )


#: Largest band (bytes) an index keeps from a file's metadata open for its statistics (a 2048 x
#: 2048 float32 band); a larger file is opened again, its read costing far more than the open.
PRELOAD_BAND_BYTES = 16 << 20
#: Most bytes kept so at once (the index's GDAL block cache); files beyond it are opened again.
PRELOAD_BYTES = 256 << 20


def stats_bands(info: FileInfo, role: FileRole | None = None) -> tuple[int, ...]:
    """The 1-based bands of a file :func:`scene_stats` reads when the file is its scene's grid:
    the first blue, green or red band of an S2 file (else its first band), the first band of an
    S1 file, and the bands of the mask a file holds; none for a file that is no scene's.
    ``role`` is the file's :func:`~cloudclear.scenes.classify`, where known."""
    from cloudclear.scenes import classify
    from cloudclear.scenes.files import S1_BANDS, S2_BANDS

    if role is None:
        try:
            role = classify(info)
        except InvalidRasterError:
            return ()
    order = [b for b in (S2_BANDS if role.kind == "s2" else S1_BANDS) if b in role.bands]
    dark = [b for b in order if b in ("B02", "B03", "B04")]
    bands = [role.bands[b] for b in (dark or order)[:1]]
    if role.mask is not None and role.mask.path == info.path:
        bands += mask_indexes(role.mask)
    return tuple(dict.fromkeys(bands))


class Preloaded:
    """Pixels of the bands each file's statistics will read (:func:`stats_bands`), taken while
    the file is open for its metadata, so that an index opens each file once.

    :meth:`take` is the ``then`` of :func:`~cloudclear.scenes.read_file_info`; :meth:`opener`
    serves a scene's reads from what was taken and opens the files it lacks.

    Args:
        budget: most bytes kept at once (:data:`PRELOAD_BYTES`).
    """

    def __init__(self, budget: int = PRELOAD_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self._held: dict[str, tuple[FileInfo, dict[int, np.ndarray], tuple[Any, ...]]] = {}

    def take(self, src: Any, info: FileInfo, role: FileRole | None = None) -> FileInfo:
        """Keep the bands of the open file ``src`` that its statistics read, when small enough;
        returns ``info``. A band that fails to read is left to the statistics, which say so.
        ``role`` is the file's :func:`~cloudclear.scenes.classify`, where known."""
        import numpy as np

        bands = stats_bands(info, role)
        if not bands or len(set(src.dtypes)) != 1:
            return info
        band_bytes = info.width * info.height * np.dtype(info.dtype).itemsize
        if band_bytes > PRELOAD_BAND_BYTES or self.used + band_bytes * len(bands) > self.budget:
            return info
        try:
            data = {b: src.read(b) for b in bands}
        except Exception:  # noqa: BLE001 - GDAL raises several types for a corrupt block
            return info
        self.keep(info, data, tuple(src.nodatavals))
        return info

    def keep(self, info: FileInfo, data: dict[int, np.ndarray], nodatavals: tuple[Any, ...]) -> bool:
        """Hold ``data`` (band index -> pixels) read from the file ``info`` where the budget allows;
        returns whether it does."""
        nbytes = sum(a.nbytes for a in data.values())
        if self.used + nbytes > self.budget:
            return False
        self._held[info.path] = (info, data, nodatavals)
        self.used += nbytes
        return True

    def give(self, path: str) -> tuple[dict[int, np.ndarray], tuple[Any, ...]] | None:
        """Hand over (and forget) the pixels held of ``path``: ``(data, nodatavals)`` for
        :meth:`keep` elsewhere, or None."""
        held = self._held.pop(path, None)
        if held is None:
            return None
        self.used -= sum(a.nbytes for a in held[1].values())
        return held[1], held[2]

    def drop(self, paths: Any) -> None:
        """Forget the pixels of ``paths`` (their scene's statistics are computed)."""
        for p in paths:
            self.give(p)

    def _serves(self, path: str, indexes: tuple[int, ...], grid: Grid) -> bool:
        held = self._held.get(path)
        if held is None:
            return False
        return _on_grid(held[0], grid) and all(i in held[1] for i in indexes)

    def opener(self) -> _HeldOpener:
        """The opener of one scene's reads (its files it holds, else from disk)."""
        return _HeldOpener(self)

    def room(self, path: str, grid: Grid, halo: int) -> tuple[int, int, int, int] | None:
        """What the file ``path`` holds beyond ``grid`` (see :class:`~cloudclear.scenes.reader.Opener`),
        where the metadata taken tell it: nothing for a file on the grid, ``halo`` on every side
        for one of another resolution (always warped); else None."""
        held = self._held.get(path)
        if held is None:
            return None
        info = held[0]
        if _on_grid(info, grid):
            return (0, 0, 0, 0)
        a, b, _, d, e, _ = info.transform[:6]
        # Far beyond the scene reader's tolerance for "the same resolution" (1e-6 of a pixel).
        other = abs(a - grid.transform[0]) > 1e-3 * grid.res or abs(e - grid.transform[4]) > 1e-3 * grid.res
        return (halo, halo, halo, halo) if other or b or d else None


def _on_grid(info: FileInfo, grid: Grid) -> bool:
    """Whether the file lies exactly on ``grid`` (same CRS, transform and size)."""
    same_place = (info.crs or "") == grid.crs and tuple(info.transform[:6]) == tuple(grid.transform)
    return same_place and (info.width, info.height) == (grid.width, grid.height)


class _HeldOpener:
    """Opens one scene's files for :class:`~cloudclear.scenes.reader.SceneReader`: from the
    pixels :class:`Preloaded` holds where it holds them on the grid, else from the file."""

    def __init__(self, preloaded: Preloaded) -> None:
        self.preloaded = preloaded
        self.opened: list[GridReader] = []

    def room(self, path: str, grid: Grid, halo: int) -> tuple[int, int, int, int] | None:
        """See :meth:`Preloaded.room`."""
        return self.preloaded.room(path, grid, halo)

    def __call__(
        self, path: str, indexes: tuple[int, ...], grid: Grid, resampling: str, nodata: float | None, *, coverage: bool
    ) -> GridReader:
        import numpy as np

        if self.preloaded._serves(path, indexes, grid):
            _, data, nodatavals = self.preloaded._held[path]
            return _HeldReader(path, np.stack([data[i] for i in indexes]), nodatavals)
        rd = GridReader(path, list(indexes), grid, resampling, nodata, coverage=coverage)
        self.opened.append(rd)
        return rd

    def close(self) -> None:
        """Close the files opened."""
        for rd in self.opened:
            rd.close()
        self.opened.clear()


class _HeldReader(GridReader):
    """A :class:`~cloudclear.gridio.GridReader` over pixels already read, the file lying on the grid."""

    def __init__(self, path: str, data: np.ndarray, nodatavals: tuple[Any, ...]) -> None:
        self.path = path
        self.data = data
        self.nodatavals = nodatavals
        self.vrt = None
        self.alpha = None
        self.row_off = self.col_off = 0
        self.block_rows = data.shape[1]
        self.width = data.shape[2]

    def read(self, r0: int, r1: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return self.data[:, r0:r1].copy()
        out[...] = self.data[:, r0:r1]
        return out

    def read_window(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return self.data[:, r0:r1, c0:c1].copy()

    def covered(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        return None

    def close(self) -> None:
        return None
