"""Errors and warnings raised by cloudclear.

Every error a user can cause derives from :class:`CloudClearError`; each subclass also derives
from the builtin exception it refines, so ``except FileNotFoundError`` keeps working. The CLI turns
a ``CloudClearError`` into one line on stderr and exit code 1.
"""

from __future__ import annotations


class CloudClearError(Exception):
    """Root of every error cloudclear raises on purpose."""


class SceneNotFoundError(CloudClearError, FileNotFoundError):
    """A path that should hold scenes or a catalog does not exist."""


class InvalidRasterError(CloudClearError, ValueError):
    """A file is not a readable raster, is truncated, or lacks what cloudclear needs."""


class MissingDateError(InvalidRasterError):
    """An acquisition date cannot be found in the file name or the tags."""


class EmptyCatalogError(CloudClearError, ValueError):
    """A scan found no usable scene; ``skipped`` holds the files looked at and why each failed."""

    def __init__(self, message: str, skipped: tuple = ()):
        super().__init__(message)
        self.skipped = skipped


class CatalogError(CloudClearError, ValueError):
    """A catalog file is missing, unreadable or cannot be written."""


class CatalogWriteError(CatalogError, PermissionError):
    """The catalog path cannot be written."""


class QueryError(CloudClearError, ValueError):
    """A query names a bounding box, date or range that makes no sense."""


class SynthError(CloudClearError, ValueError):
    """The arguments of :func:`cloudclear.synth.generate_series` describe no series that can be generated."""


class ScoreError(CloudClearError, ValueError):
    """A prediction and a reference cannot be compared: bands, grids or pixels do not match."""


class ModelError(CloudClearError, ValueError):
    """A checkpoint or its card cannot be used: unknown architecture, weights that do not match."""


class InferError(CloudClearError, ValueError):
    """Inference cannot run: no usable inputs for the date, a tile not in the catalog, bad bands."""


class OutputExistsError(CloudClearError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class CloudClearWarning(UserWarning):
    """Root of the warnings cloudclear emits."""


class DetectError(CloudClearError, ValueError):
    """A mask cannot be computed: bands the detector needs are missing, the reflectance scale is
    wrong, the scene is all nodata, or an optional detector package is not installed."""


class LayoutError(CloudClearError, ValueError):
    """A layout file cannot be used: bad TOML, an unknown field, a value out of range. The message
    names the file, the slot and the field."""


class SampleError(CloudClearError, ValueError):
    """Sampling cannot produce a store: no location satisfies the layout, bad options."""


class StoreError(CloudClearError, ValueError):
    """A patch store is missing, incomplete (an interrupted run) or not a cloudclear store."""
