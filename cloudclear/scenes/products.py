"""Products: what users download as one acquisition, read into the :class:`FileInfo` of its rasters.

A *product* is a container whose layout and metadata say what its rasters are: an ESA SAFE (a
folder or a ``.zip``: :mod:`cloudclear.scenes.safe`), a THEIA/MAJA L2A folder
(:mod:`cloudclear.scenes.theia`) or a STAC item (a JSON file, or a JSON item collection:
:mod:`cloudclear.scenes.stac`). A reader turns each acquisition in it into one :class:`Product`:
the :class:`FileInfo` of every raster the scene uses (band files and masks; paths GDAL opens, e.g.
``/vsizip//data/S2A_....zip/S2A_....SAFE/GRANULE/.../B02_10m.jp2``), with what the metadata says
written onto them as the tags the rest of the scene code reads:

========================  ========================================================================
``CLOUDCLEAR_PRODUCT``    the acquisition's key (``container#granule`` or ``container#item``): every
                          member with the same key makes one scene, whatever folder it lies in
``DATETIME``              the sensing time (ISO 8601, UTC)
``TILE_ID``               the MGRS tile
``PROCESSING_LEVEL``      L1C, L2A (S2), GRD / RTC (S1)
``PROCESSING_BASELINE``   e.g. 04.00
``QUANTIFICATION_VALUE``  the product's DN per reflectance unit (10000)
``BOA_ADD_OFFSET`` /      the band's offset in DN (-1000 from baseline 04.00); the band's GDAL
``RADIO_ADD_OFFSET``      scale and offset (``FileInfo.scales`` / ``offsets``) hold the result,
                          ``1 / QUANTIFICATION_VALUE`` and ``offset / QUANTIFICATION_VALUE``
``SCALE_SOURCE``          where scale and offset were read (``MTD_MSIL2A.xml``, ``STAC raster:bands``)
``SUN_ZENITH`` /          mean sun angles in degrees (``MTD_TL.xml``, THEIA metadata, STAC ``view:``)
``SUN_AZIMUTH``
``SPACECRAFT``            Sentinel-2A, ...
``UNITS``                 S1: ``linear`` or ``dB``
========================  ========================================================================

and the band name (``B02``, ``VV``) or mask convention (``SCL``, ``CLDPRB``, ``MAJA``, ...) as each
member's band description, so :func:`~cloudclear.scenes.classify` needs no file-name rule.

The catalog's scan (:func:`find_products`) asks every reader in :data:`PRODUCT_READERS` whether a
path is its product; a product folder is not searched for loose rasters.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cloudclear.scenes.files import FileInfo


@dataclass(frozen=True)
class Product:
    """One acquisition read from a product.

    Attributes:
        kind: the reader's name ("SAFE", "THEIA", "STAC").
        path: the container on disk: the SAFE or THEIA folder, the ``.zip``, the JSON file.
        key: unique id of the acquisition (the ``CLOUDCLEAR_PRODUCT`` tag of its members).
        members: the FileInfo of every raster the scene uses, tags written as the module says.
        metadata: the files whose content was read (XML, JSON), for change detection.
    """

    kind: str
    path: str
    key: str
    members: tuple[FileInfo, ...]
    metadata: tuple[str, ...] = ()


class ProductReader(NamedTuple):
    """A product format: ``matches(path)`` says cheaply whether a path is one (a folder, a file),
    ``read(path)`` returns its acquisitions.

    ``read`` raises :class:`~cloudclear.errors.InvalidRasterError` (or a subclass) with one line
    naming the product and what is wrong (missing metadata field, band file listed but absent).
    """

    matches: Callable[[Path], bool]
    read: Callable[[Path], list[Product]]


def _lazy(module: str) -> ProductReader:
    def matches(path: Path) -> bool:
        mod = importlib.import_module(module)
        return bool(mod.matches(path))

    def read(path: Path) -> list[Product]:
        mod = importlib.import_module(module)
        return list(mod.read(path))

    return ProductReader(matches, read)


#: Product formats, name -> reader (each module defines ``matches`` and ``read``).
PRODUCT_READERS: dict[str, ProductReader] = {
    "SAFE": _lazy("cloudclear.scenes.safe"),
    "THEIA": _lazy("cloudclear.scenes.theia"),
    "STAC": _lazy("cloudclear.scenes.stac"),
}


def product_kind(path: str | os.PathLike[str]) -> str | None:
    """The product format ``path`` is (a key of :data:`PRODUCT_READERS`), or None."""
    p = Path(path)
    for kind, reader in PRODUCT_READERS.items():
        if reader.matches(p):
            return kind
    return None


def read_product(path: str | os.PathLike[str], kind: str | None = None) -> list[Product]:
    """The acquisitions of the product at ``path``.

    Raises:
        NotASceneError: ``path`` is no product cloudclear reads.
        InvalidRasterError: the product is broken (the message names it and what is wrong).
    """
    from cloudclear.errors import NotASceneError

    kind = kind or product_kind(path)
    if kind is None:
        raise NotASceneError(f"{path}: not a SAFE, THEIA or STAC product")
    return PRODUCT_READERS[kind].read(Path(path))
