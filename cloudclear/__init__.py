"""cloudclear: cloud removal for whole Sentinel-2 tiles, helped by Sentinel-1.

The package is importable without torch; heavy modules are imported by the functions that need
them. Public entry points live in their modules: :mod:`cloudclear.catalog` (scan, persist and
query scenes), :mod:`cloudclear.scenes` (what one raster is), :mod:`cloudclear.synth`
(realistic synthetic scenes with known truth).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
