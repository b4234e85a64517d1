"""Errors and warnings raised by cloudclear, named by their cause.

Every error a user can cause derives from :class:`CloudClearError`; each subclass also derives
from the builtin exception it refines, so ``except FileNotFoundError`` keeps working. The CLI turns
a ``CloudClearError`` into one line on stderr and exit code 1.

Causes, by what was looked at:

- a scene or raster file: :class:`SceneNotFoundError`, :class:`InvalidRasterError`
  (:class:`MissingDateError`, :class:`NotASceneError`);
- grids that cannot be matched: :class:`GridError`;
- a catalog: :class:`CatalogError` (:class:`CatalogNotFoundError`, :class:`CatalogWriteError`,
  :class:`EmptyCatalogError`), a query: :class:`QueryError`;
- the inputs a date needs: :class:`NoInputsError`;
- layouts, samples, patch stores: :class:`LayoutError`, :class:`SampleError`, :class:`StoreError`
  (:class:`StoreNotFoundError`);
- checkpoints and networks: :class:`CheckpointError` (:class:`CheckpointNotFoundError`,
  :class:`NonFiniteOutputError`), training: :class:`TrainingDivergedError`;
- masks: :class:`MaskError`; scoring: :class:`ScoreError`; synthetic series: :class:`SynthError`;
- outputs: :class:`OutputError` (:class:`OutputExistsError`);
- a request that would exhaust memory: :class:`ResourceLimitError`.

The older command-named classes (``InferError``, ``ModelError``, ``DetectError``) remain as
aliases of the cause-named ones so that code catching them keeps working.
"""

from __future__ import annotations

import errno


class CloudClearError(Exception):
    """Root of every error cloudclear raises on purpose."""


# --- scenes and rasters -----------------------------------------------------------------------


class SceneNotFoundError(CloudClearError, FileNotFoundError):
    """A scene file or a folder that should hold scenes does not exist."""


class InvalidRasterError(CloudClearError, ValueError):
    """A file is not a readable raster, is truncated, or lacks what cloudclear needs."""


class MissingDateError(InvalidRasterError):
    """An acquisition date cannot be found in the file name or the tags."""


class NotASceneError(InvalidRasterError):
    """A readable raster that is not an acquisition (a truth file, an unrecognised product)."""


class GridError(CloudClearError, ValueError):
    """Two rasters' grids (CRS, transform, size) cannot be matched, or a window lies off the grid."""


# --- catalog ----------------------------------------------------------------------------------


class CatalogError(CloudClearError, ValueError):
    """A catalog file is unreadable, not a cloudclear catalog, or cannot be written."""


class CatalogNotFoundError(CatalogError, FileNotFoundError):
    """No catalog at the path given."""


class CatalogWriteError(CatalogError, PermissionError):
    """The catalog path cannot be written (read-only, not a catalog, disk full)."""


class EmptyCatalogError(CatalogError):
    """A scan found no usable scene; ``skipped`` holds the files looked at and why each failed."""

    def __init__(self, message: str, skipped: tuple = ()):
        super().__init__(message)
        self.skipped = skipped


class QueryError(CloudClearError, ValueError):
    """A query names a bounding box, date or range that makes no sense."""


class NoInputsError(CloudClearError, LookupError):
    """The catalog holds no usable inputs for what was asked: a tile or grid not in it, no scene
    near the date, bands that no scene has."""


# --- layouts, samples, stores ----------------------------------------------------------------


class LayoutError(CloudClearError, ValueError):
    """A layout file cannot be used: bad TOML, an unknown field, a value out of range. The message
    names the file, the slot and the field."""


class SampleError(CloudClearError, ValueError):
    """Sampling cannot produce a store: no location satisfies the layout, bad options."""


class StoreError(CloudClearError, ValueError):
    """A patch store is incomplete (an interrupted run) or not a cloudclear store."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No patch store at the path given."""


# --- checkpoints, networks, training ---------------------------------------------------------


class CheckpointError(CloudClearError, ValueError):
    """A checkpoint or its card cannot be used: unknown architecture, weights that do not match."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Neither a checkpoint file nor a known model name."""


class NonFiniteOutputError(CheckpointError, FloatingPointError):
    """A network produced NaN or infinite values (corrupt or diverged weights)."""


class TrainingDivergedError(CloudClearError, FloatingPointError):
    """Training produced a non-finite or exploding loss; no checkpoint is written for it."""


# --- masks, scores, synthetic series ---------------------------------------------------------


class MaskError(CloudClearError, ValueError):
    """A mask cannot be computed: bands the detector needs are missing, the reflectance scale is
    wrong, the scene is all nodata, or an optional detector package is not installed."""


class ScoreError(CloudClearError, ValueError):
    """A prediction and a reference cannot be compared: bands, grids or pixels do not match."""


class SynthError(CloudClearError, ValueError):
    """The arguments of :func:`cloudclear.synth.generate_series` describe no series that can be generated."""


# --- outputs and resources -------------------------------------------------------------------


class OutputError(CloudClearError, OSError):
    """An output cannot be written: the folder is read-only or missing, the disk is full, a write or
    close failed. Nothing is left under the output's name and an existing output is untouched."""


class OutputExistsError(OutputError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class ResourceLimitError(CloudClearError, ValueError):
    """A request would need more memory than any machine sensibly has (a declared raster size, a
    dilation radius, a network width or depth); refused before allocating."""


# --- command-named aliases kept for callers of earlier versions -------------------------------

InferError = NoInputsError
ModelError = CheckpointError
DetectError = MaskError
NotAScene = NotASceneError


def describe_os_error(exc: BaseException) -> str:
    """A short cause for an OS error: 'no space left on device', 'read-only file system', ...

    Follows ``__cause__`` / ``__context__``: GDAL raises "Write failed" with the real cause (a full
    disk) in the exception it chained.
    """
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        e = e.__cause__ or e.__context__
    causes = [_describe_one(x) for x in seen]
    for c in causes:
        if c in _KNOWN_CAUSES:
            return c
    return causes[0]


_KNOWN_CAUSES = (
    "no space left on device",
    "read-only file system",
    "permission denied",
    "disk quota exceeded",
    "input/output error",
    "no such folder",
)


def _describe_one(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        known = {
            errno.ENOSPC: "no space left on device",
            errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.ENOENT: "no such folder",
            errno.EDQUOT: "disk quota exceeded",
            errno.EIO: "input/output error",
        }
        if exc.errno in known:
            return known[exc.errno]
        return exc.strerror or str(exc)
    text = str(exc).strip()
    lowered = text.lower()
    # GDAL reports a full disk through CPLE_FileIO messages rather than errno
    if "no space" in lowered or "disk full" in lowered or "enospc" in lowered:
        return "no space left on device"
    if "read-only" in lowered:
        return "read-only file system"
    if "permission denied" in lowered:
        return "permission denied"
    return text.splitlines()[0] if text else type(exc).__name__


class CloudClearWarning(UserWarning):
    """Root of the warnings cloudclear emits."""
