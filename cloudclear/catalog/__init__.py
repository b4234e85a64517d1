"""The scene catalog: scan a directory, persist scene records, query them through an R-tree.

The records are the data: one GeoPackage (``scenes`` layer with footprints in EPSG:4326, plus the
``files`` and ``meta`` tables) that geopandas and QGIS open. The rtree index over
(lon, lat, time) is derived from the records, persisted beside them for speed and rebuilt (in
memory where the storage is read-only) when it is missing or stale; it is never the only copy.
Re-indexing reopens only new or changed files and recomputes statistics only for scenes whose files
changed. Every write goes to a temporary file that replaces the catalog in one rename
(:mod:`cloudclear.outputs`), so an interrupted or failed run leaves the previous catalog intact.

- :mod:`~cloudclear.catalog.stats`: a scene's pixel statistics (nodata, cloud, per-cell grids);
- :mod:`~cloudclear.catalog.records`: the storage encoding, records <-> :class:`~cloudclear.scenes.Scene`;
- :mod:`~cloudclear.catalog.build`: :func:`build_index` (scan, statistics, write);
- :mod:`~cloudclear.catalog.store`: :class:`Catalog` (open, get, query, rtree).

Outside this package, scenes travel as :class:`~cloudclear.scenes.Scene` values.
"""

from cloudclear.catalog.build import IndexResult, build_index, masks_folder, write_catalog
from cloudclear.catalog.records import crs_label, decode_cells
from cloudclear.catalog.stats import CELL, MAX_PIXELS, NO_CELL, STRIP_ROWS, SceneStats, scene_stats
from cloudclear.catalog.store import (
    DEFAULT_NAME,
    POLICY_KEY,
    Catalog,
    parse_time,
    policy_of,
    policy_text,
    read_catalog,
)
from cloudclear.scenes import Scene

__all__ = [
    "CELL",
    "DEFAULT_NAME",
    "MAX_PIXELS",
    "NO_CELL",
    "POLICY_KEY",
    "STRIP_ROWS",
    "Catalog",
    "IndexResult",
    "Scene",
    "SceneStats",
    "build_index",
    "crs_label",
    "decode_cells",
    "masks_folder",
    "parse_time",
    "policy_of",
    "policy_text",
    "read_catalog",
    "scene_stats",
    "write_catalog",
]
