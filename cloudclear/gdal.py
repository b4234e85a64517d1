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

    settings: dict[str, Any] = dict(options)
    if "GDAL_CACHEMAX" not in os.environ:
        settings["GDAL_CACHEMAX"] = CACHE_MB[operation] * 1024 * 1024
    return rasterio.Env(**settings)
