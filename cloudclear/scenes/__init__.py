"""Scenes: what one raster file is, how files make acquisitions, and the :class:`Scene` value.

A *scene* is one acquisition: a Sentinel-2 image (one multi-band file, several files at different
resolutions, or ESA-style one file per band) with its cloud mask, or a Sentinel-1 VV/VH image.

- :mod:`cloudclear.scenes.files` reads a file's metadata (:func:`read_file_info`) and decides what
  it holds (:func:`classify`);
- :mod:`cloudclear.scenes.drafts` finds dates and tiles and groups files into :class:`SceneDraft`
  records (:func:`assemble`);
- :mod:`cloudclear.scenes.scene` defines :class:`Scene`, the value the catalog returns once the
  scene's pixel statistics are known, and the names of places (MGRS tiles, or grids);
- :mod:`cloudclear.scenes.reader` is the one scene reader every later stage uses (catalog
  statistics, detection, sampling, inference): a scene's bands and mask on a grid as raw values,
  per-band validity, decoded classes, the clear decision and physical units
  (:class:`SceneReader`, :class:`ReadSpec`, :class:`Pixels`, :func:`to_physical`).
"""

from cloudclear.errors import NotASceneError
from cloudclear.scenes.drafts import (
    DEFAULT_DATE_PATTERN,
    DateFound,
    SceneDraft,
    Skipped,
    assemble,
    find_datetime,
    find_tile,
    parse_datetime,
    scene_ids,
)
from cloudclear.scenes.files import (
    RASTER_SUFFIXES,
    S1_BANDS,
    S2_BANDS,
    S2_BANDS_BY_COUNT,
    FileInfo,
    FileRole,
    classify,
    normalise_band,
    read_file_info,
    reflectance_scale,
    valid_pixels,
)
from cloudclear.scenes.reader import Pixels, ReadSpec, SceneReader, to_physical
from cloudclear.scenes.scene import (
    BandSource,
    CellGrids,
    Scene,
    grid_name,
    is_mgrs,
    normalise_tile,
    place_label,
)

__all__ = [
    "DEFAULT_DATE_PATTERN",
    "RASTER_SUFFIXES",
    "S1_BANDS",
    "S2_BANDS",
    "S2_BANDS_BY_COUNT",
    "BandSource",
    "CellGrids",
    "DateFound",
    "FileInfo",
    "FileRole",
    "NotASceneError",
    "Pixels",
    "ReadSpec",
    "Scene",
    "SceneDraft",
    "SceneReader",
    "Skipped",
    "assemble",
    "classify",
    "find_datetime",
    "find_tile",
    "grid_name",
    "is_mgrs",
    "normalise_band",
    "normalise_tile",
    "parse_datetime",
    "place_label",
    "read_file_info",
    "reflectance_scale",
    "scene_ids",
    "to_physical",
    "valid_pixels",
]
