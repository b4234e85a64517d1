"""GDAL settings applied by the library for the duration of one operation (never through
``os.environ``, which would leak into the caller's process).

Every block cloudclear reads is read once (strips, patches), so GDAL's default block cache (5 % of
RAM) only holds memory; each operation states the cache it needs. A user's own ``GDAL_CACHEMAX``
(environment variable) wins.
"""

from __future__ import annotations

import os
from typing import Any

#: Block cache per operation, in MiB: a strip of a 13-band tile for scoring and inference, less for
#: sampling, masking and synthetic series, which read or write small windows.
CACHE_MB = {"score": 512, "infer": 512, "sample": 256, "mask": 256, "index": 256, "synth": 256}


def gdal_env(operation: str, **options: Any) -> Any:
    """A ``rasterio.Env`` with the block cache stated for ``operation`` (a key of :data:`CACHE_MB`)
    and any further GDAL options; use as ``with gdal_env("infer"): ...``."""
    import rasterio

    quiet_libtiff()
    settings: dict[str, Any] = dict(options)
    if "GDAL_CACHEMAX" not in os.environ:
        settings["GDAL_CACHEMAX"] = CACHE_MB[operation] * 1024 * 1024
    return rasterio.Env(**settings)


_LIBTIFF_QUIET = False


def quiet_libtiff() -> None:
    """Stop libtiff printing errors that have no file handle straight to stderr.

    On a full disk GDAL's TIFF I/O layer reports ``_tiffWriteProc: No space left on device.`` through
    libtiff's process-wide handler, which prints below Python (no logging, no redirection), several
    times per failed write. The same failure reaches cloudclear as an exception and becomes one
    line naming the file; these extra lines only bury it. Errors GDAL routes per file are unaffected.
    A no-op where the libtiff GDAL uses cannot be found.
    """
    global _LIBTIFF_QUIET
    if _LIBTIFF_QUIET:
        return
    _LIBTIFF_QUIET = True
    import ctypes

    import rasterio  # noqa: F401 - loads GDAL and the libtiff it links

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libtiff" in line}
    except OSError:
        return
    for path in sorted(p for p in paths if p.startswith("/")):
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler(None)
        except (OSError, AttributeError):
            continue
