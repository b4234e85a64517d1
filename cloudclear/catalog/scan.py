"""What a catalog scan finds: loose rasters and products (SAFE, THEIA, STAC), and reading products.

A product's folder is not searched for loose rasters (a SAFE's JP2s are the product's, read with
its metadata: :mod:`cloudclear.scenes.products`); an unchanged product (same size and time, over
its folder's files) is taken from the previous catalog's ``files`` layer, not read again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear.errors import InvalidRasterError
from cloudclear.scenes import RASTER_SUFFIXES, Skipped

if TYPE_CHECKING:
    from cloudclear.catalog.store import Catalog
    from cloudclear.scenes.products import Product


def iter_rasters(
    root: Path, exclude: set[Path], exclude_dirs: frozenset[Path] | set[Path] = frozenset()
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Loose raster files under ``root``, and the products (path, kind) whose folders are not
    searched for loose rasters (a SAFE's JP2s are the product's, read with its metadata)."""
    from cloudclear.scenes.products import product_kind

    rasters: list[Path] = []
    products: list[tuple[Path, str]] = []
    kind = product_kind(root)
    if kind is not None:
        return rasters, [(root, kind)]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".") or here / d in exclude_dirs:
                continue
            kind = product_kind(here / d)
            if kind is None:
                keep.append(d)
            else:
                products.append((here / d, kind))
        dirnames[:] = keep
        for name in sorted(filenames):
            p = here / name
            if name.startswith(".") or p in exclude:
                continue
            low = name.lower()
            if low.endswith(RASTER_SUFFIXES):
                rasters.append(p)
            elif low.endswith(PRODUCT_SUFFIXES):
                kind = product_kind(p)
                if kind is not None:
                    products.append((p, kind))
    return rasters, products


#: File name extensions that may hold a product (a zipped SAFE, a STAC item).
PRODUCT_SUFFIXES = (".zip", ".json", ".geojson")


def _container_stat(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) telling whether a product changed: the file's, or over a folder's files."""
    if not path.is_dir():
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    size = mtime = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


def read_products(
    products: list[tuple[Path, str]], previous: Catalog | None, progress: bool
) -> tuple[list[Any], list[Skipped], list[dict[str, Any]], int, set[str]]:
    """The acquisitions of every product (reused from the previous catalog when unchanged; a
    product refused before is read again).

    Returns the products read, the refused ones, their rows for the catalog's ``files`` layer, how
    many were read this run, and the local files a refused STAC item points at (not loose rasters).
    """
    from tqdm import tqdm

    from cloudclear.scenes.products import read_product

    cache = previous.product_cache() if previous else {}
    found: list[Any] = []
    refused: list[Skipped] = []
    rows: list[dict[str, Any]] = []
    claimed: set[str] = set()
    opened = 0
    for path, kind in tqdm(products, desc="products", unit="product", disable=not progress, leave=False):
        size, mtime = _container_stat(path)
        hit = cache.get(str(path))
        error = None
        if hit and hit[0] == size and hit[1] == mtime:
            acquisitions = hit[2]
        else:
            opened += 1
            try:
                acquisitions = read_product(path, kind)
            except InvalidRasterError as exc:
                acquisitions, error = [], str(exc)
                refused.append(Skipped(str(path), error, refused=True))
                if kind == "STAC":  # its COGs are not loose rasters: the item was refused, once
                    from cloudclear.scenes.stac import local_assets

                    claimed |= local_assets(path)
        found.extend(acquisitions)
        rows.append({"path": str(path), "size": size, "mtime_ns": mtime, "products": acquisitions, "error": error})
    return found, refused, rows, opened, claimed


def product_json(product: Product, rel: Any) -> dict[str, Any]:
    """A product as the ``files`` layer stores it (paths made relative by ``rel``)."""
    return {
        "kind": product.kind,
        "path": rel(product.path),
        "key": product.key,
        "metadata": [rel(m) for m in product.metadata],
        "members": [m.to_dict() | {"path": rel(m.path)} for m in product.members],
    }
