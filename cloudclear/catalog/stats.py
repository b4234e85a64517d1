"""Pixel statistics of a scene on its grid: nodata %, cloud %, and per-cell cloud and validity grids.

Read once per new or changed scene by :func:`cloudclear.catalog.build_index`, strip by strip so
memory stays bounded on full tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudclear import masks
from cloudclear.errors import InvalidRasterError, ResourceLimitError
from cloudclear.gridio import Grid
from cloudclear.scenes import SceneDraft
from cloudclear.scenes.reader import ReadSpec, SceneReader

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


def scene_stats(draft: SceneDraft, cell: int = CELL, policy: masks.ClearPolicy = masks.DEFAULT_POLICY) -> SceneStats:
    """Read band 1 and the mask of a scene in strips and compute its statistics.

    The cloud % and cells count what ``policy`` calls obscured (the one decision of what is clear,
    :class:`~cloudclear.masks.ClearPolicy`, applied by the reader with its halo, so strips join
    exactly); the default policy counts the mask's classes as decoded.

    Only the first band (for validity) and the mask are read, strip by strip, through the one
    scene reader (:class:`~cloudclear.scenes.reader.SceneReader`), so memory stays bounded on
    full 10980 x 10980 tiles and the catalog's validity, cloud and clear pixels are those sampling
    and inference see. A mask on another grid (a 20 m SCL for a 10 m scene) is sampled at the
    scene's pixel centres (nearest neighbour).

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
    try:
        reader = SceneReader(spec, grid, policy=policy)
    except InvalidRasterError as exc:
        raise InvalidRasterError(f"{exc} (corrupt or truncated)") from None
    try:
        if reader.mask is not None:
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
