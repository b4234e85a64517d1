"""What ``cloudclear view`` shows: the catalogs and output folders it was given, by opaque ids.

The page never names a file: scenes are known by their ``scene_id``, outputs by a short hash of
their path, and every id maps to a path here, on the server. Output folders are scanned for infer
outputs (``CLOUDCLEAR_ROLE=reconstruction``) each time the state is asked for, so a new run's
output appears; a file whose real path leaves the roots (a symlink out) is not listed.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear.errors import CatalogError, CatalogNotFoundError

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog
    from cloudclear.scenes import Scene

#: The name a catalog takes inside a folder (``cloudclear index DIR`` without ``-c``).
CATALOG_NAME = "cloudclear.gpkg"
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")


@dataclass(frozen=True)
class Output:
    """One infer output found in an output folder."""

    id: str
    path: Path
    date: str
    place: str
    method: str
    status: Path | None
    hide: str | None
    truth: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.path.name,
            "date": self.date,
            "place": self.place,
            "method": self.method,
            "has_status": self.status is not None,
            "hidden": self.hide is not None,
            "has_reference": self.hide is not None or self.truth is not None,
        }


def output_id(path: Path) -> str:
    """The opaque id of an output: a short hash of its real path."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


def _inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real == r or real.is_relative_to(r) for r in roots)


def method_names() -> list[str]:
    """gapfill, then the checkpoints ``cloudclear models`` lists (by name)."""
    from cloudclear.nets.card import list_checkpoints

    names = ["gapfill"]
    for path, _ in list_checkpoints():
        if path.stem not in names:
            names.append(path.stem)
    return names


class ViewState:
    """The catalogs and output folders given to ``cloudclear view``.

    Args:
        paths: catalogs (``.gpkg``) and folders (their outputs, and the cloudclear catalogs in them).

    Raises:
        CatalogNotFoundError: a path does not exist, or is a file that is not a catalog.
        CatalogError: a catalog cannot be read.
    """

    def __init__(self, paths: list[str | os.PathLike[str]]):
        from cloudclear.catalog import Catalog

        self.catalogs: list[Catalog] = []
        self.output_dirs: list[Path] = []
        for raw in paths:
            p = Path(raw)
            if not p.exists():
                raise CatalogNotFoundError(f"{p}: no such catalog or output folder")
            if p.is_file():
                if p.suffix.lower() != ".gpkg":
                    raise CatalogNotFoundError(f"{p}: not a catalog (.gpkg) nor an output folder")
                self.catalogs.append(Catalog.open(p))
            else:
                # A folder: its catalogs (cloudclear.gpkg, or any .gpkg beside the outputs that is a
                # cloudclear catalog, as `out/sample.gpkg` after the README's main job) and its outputs.
                for gpkg in sorted(p.glob("*.gpkg")):
                    try:
                        self.catalogs.append(Catalog.open(gpkg))
                    except CatalogError:
                        if gpkg.name == CATALOG_NAME:
                            raise
                self.output_dirs.append(p.resolve())
        self.roots = [*self.output_dirs, *(c.path.resolve().parent for c in self.catalogs)]
        self.methods = method_names()
        self._lock = threading.Lock()
        self._outputs: dict[str, Output] = {}
        self._tags: dict[Path, tuple[float, dict[str, str] | None]] = {}

    # ----------------------------------------------------------------- scenes
    def scenes(self) -> list[tuple[Catalog, Scene]]:
        """Every S2 scene of every catalog, in date order."""
        found = [(c, s) for c in self.catalogs for s in c if s.sensor == "S2"]
        return sorted(found, key=lambda cs: cs[1].datetime)

    def scene(self, scene_id: str) -> tuple[Catalog, Scene] | None:
        for c, s in self.scenes():
            if s.scene_id == scene_id:
                return c, s
        return None

    def places(self) -> list[str]:
        return sorted({s.place for _, s in self.scenes()})

    def dates(self, place: str | None = None) -> set[str]:
        return {s.datetime.date().isoformat() for _, s in self.scenes() if place is None or s.place == place}

    # ---------------------------------------------------------------- outputs
    def _read_tags(self, path: Path) -> dict[str, str] | None:
        import rasterio

        mtime = path.stat().st_mtime
        cached = self._tags.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            with rasterio.open(path) as src:
                tags: dict[str, str] | None = dict(src.tags())
        except rasterio.errors.RasterioIOError:
            tags = None
        self._tags[path] = (mtime, tags)
        return tags

    def _truths(self) -> dict[tuple[str, str], Path]:
        """``*_truth.tif`` files under the output folders, by (tile, date)."""
        found: dict[tuple[str, str], Path] = {}
        for root in self.output_dirs:
            for p in sorted(root.rglob("*_truth.tif")):
                m = _DATE_IN_NAME.search(p.name)
                tile = re.search(r"T(\d{2}[A-Z]{3})", p.name)
                if m and tile and _inside(p, self.roots):
                    found[(tile.group(1), "-".join(m.groups()))] = p
        return found

    def outputs(self) -> list[Output]:
        """The infer outputs in the output folders now (rescanned on each call)."""
        from cloudclear.inference.writer import ROLE_OUTPUT, ROLE_TAG, status_path_for

        truths = self._truths()
        found: dict[str, Output] = {}
        with self._lock:
            for root in self.output_dirs:
                for p in sorted(root.glob("*.tif")):
                    if not p.is_file() or not _inside(p, self.output_dirs):
                        continue
                    tags = self._read_tags(p)
                    if not tags or tags.get(ROLE_TAG) != ROLE_OUTPUT:
                        continue
                    date = tags.get("DATETIME", "")[:10]
                    place = tags.get("TILE_ID", "")
                    status = status_path_for(p)
                    oid = output_id(p)
                    found[oid] = Output(
                        oid,
                        p,
                        date,
                        place,
                        tags.get("CLOUDCLEAR_METHOD", ""),
                        status if status.is_file() and _inside(status, self.output_dirs) else None,
                        tags.get("CLOUDCLEAR_HIDE"),
                        truths.get((place, date)),
                    )
            self._outputs = found
        return sorted(found.values(), key=lambda o: (o.date, o.path.name))

    def output(self, oid: str) -> Output | None:
        if oid not in self._outputs:
            self.outputs()
        return self._outputs.get(oid)

    def run_folder(self) -> Path:
        """Where a run from the page writes: the first output folder, else ``view_runs/`` beside
        the first catalog (then listed as an output folder)."""
        if self.output_dirs:
            return self.output_dirs[0]
        folder = (self.catalogs[0].path.resolve().parent / "view_runs").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        self.output_dirs.append(folder)
        self.roots.append(folder)
        return folder

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict[str, Any]:
        scenes = []
        for _, s in self.scenes():
            fp = s.footprint
            ring = [[round(x, 6), round(y, 6)] for x, y in fp.exterior.coords] if hasattr(fp, "exterior") else []
            scenes.append(
                {
                    "id": s.scene_id,
                    "date": s.datetime.date().isoformat(),
                    "datetime": s.datetime.isoformat(),
                    "place": s.place,
                    "cloud_pct": None if s.cloud_pct is None else float(s.cloud_pct),
                    "level": s.level,
                    "footprint": ring,
                    "bands": list(s.bands),
                    "has_mask": s.mask is not None,
                }
            )
        return {
            "scenes": scenes,
            "outputs": [o.to_dict() for o in self.outputs()],
            "methods": list(self.methods),
            "places": self.places(),
        }
