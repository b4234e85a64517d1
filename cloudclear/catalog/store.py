"""The :class:`Catalog`: scene records in a GeoPackage, queried through an rtree over (lon, lat, time)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear import masks
from cloudclear.catalog.records import SceneRows
from cloudclear.errors import CatalogError, CatalogNotFoundError, CloudClearError, QueryError, describe_os_error
from cloudclear.scenes import FileInfo, Scene, Skipped, normalise_tile
from cloudclear.scenes.products import Product

#: How the ``files`` layer's ``info`` column starts for a product's row (its acquisitions as JSON).
PRODUCTS_KEY = '{"products"'

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np

log = logging.getLogger(__name__)
#: Default catalog file name, written inside the indexed directory.
DEFAULT_NAME = "cloudclear.gpkg"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: ``meta`` key of the clear policy a catalog's cloud % used; absent means the default policy
#: (catalogs written before the key existed, and default ones, stay as they were).
POLICY_KEY = "clear_policy"


def policy_text(policy: masks.ClearPolicy) -> str:
    """A clear policy as the JSON text catalogs (``meta``) and stores (``store.json``) record."""
    import dataclasses

    return json.dumps(dataclasses.asdict(policy), sort_keys=True)


def policy_of(record: str | dict[str, Any] | None) -> masks.ClearPolicy:
    """The clear policy recorded as :func:`policy_text` (or its parsed dict); None: the masks as
    decoded (:data:`~cloudclear.masks.AS_DECODED`, what catalogs made before the policy counted).

    Raises:
        CatalogError: the record is not a clear policy (unknown fields or values).
    """
    if record is None or record == "":
        return masks.AS_DECODED  # catalogs and stores made before the policy kept masks as decoded
    try:
        fields = json.loads(record) if isinstance(record, str) else dict(record)
        return masks.ClearPolicy(**fields)
    except (ValueError, TypeError, CloudClearError) as exc:
        raise CatalogError(f"recorded clear policy {record!r} is not valid: {exc}") from None


def read_catalog(path: Path) -> tuple[gpd.GeoDataFrame, dict[str, str]]:
    """The ``scenes`` records and the ``meta`` table of the catalog at ``path``.

    Raises:
        CatalogError: the file is not a cloudclear catalog or cannot be read.
    """
    import pandas as pd

    scenes, meta = _read(path, scenes=True)
    scenes["datetime"] = pd.to_datetime(scenes["datetime"], utc=True)
    return scenes, meta


def read_meta(path: Path) -> dict[str, str]:
    """The ``meta`` table of the catalog at ``path``, its records left unread (whether a file is
    a catalog, before an index rebuilds it).

    Raises:
        CatalogError: the file is not a cloudclear catalog or cannot be read.
    """
    return _read(path, scenes=False)[1]


def _read(path: Path, *, scenes: bool) -> tuple[Any, dict[str, str]]:
    import pyogrio

    try:
        layers = {name for name, _ in pyogrio.list_layers(path)}
        if not {"scenes", "meta"} <= layers:
            raise CatalogError(f"{path}: not a cloudclear catalog (layers: {', '.join(sorted(layers))})")
        frame = pyogrio.read_dataframe(path, layer="scenes") if scenes else None
        meta_df = pyogrio.read_dataframe(path, layer="meta", read_geometry=False)
    except CatalogError:
        raise
    except Exception as exc:  # noqa: BLE001 - GDAL raises several types for a bad file
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CatalogError(f"{path}: cannot read the catalog ({text})") from None
    return frame, dict(zip(meta_df["key"], meta_df["value"], strict=True))


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


class Catalog:
    """A persisted scene catalog: records in a GeoPackage, an rtree over (lon, lat, time).

    Open one with :meth:`Catalog.open`. :meth:`get`, :meth:`query`, indexing by position and
    iteration give :class:`~cloudclear.scenes.Scene` values in date order; :attr:`scenes` is the
    same records as a GeoDataFrame, for geopandas users (library code uses the Scene values).

    Attributes:
        path: the GeoPackage.
        scenes: the records as a GeoDataFrame (the storage columns), in date order.
        meta: the catalog's ``meta`` table (root, version, date pattern, generation, and the
            clear policy when it is not the default).
    """

    def __init__(self, path: Path, scenes: gpd.GeoDataFrame, meta: dict[str, str]):
        import numpy as np

        self.path = path
        self.scenes = scenes.sort_values(["datetime", "scene_id"]).reset_index(drop=True)
        self.meta = meta
        self._rtree: Any = None
        self._rows = SceneRows(self.scenes, path.parent)
        # Plain arrays for the query filters: pandas indexing costs more than the rtree itself.
        self._cloud = self.scenes["cloud_pct"].to_numpy(dtype="float64", na_value=np.nan)
        self._sensor = self.scenes["sensor"].to_numpy(dtype=object)
        self._place = np.array([p.upper() for p in self._rows.places()], dtype=object)
        self._geoms = np.asarray(self.scenes.geometry.array)
        self._ids = {sid: i for i, sid in enumerate(self.scenes["scene_id"])}

    @property
    def policy(self) -> masks.ClearPolicy:
        """The clear policy the catalog's cloud % and cells count (:data:`POLICY_KEY` of ``meta``)."""
        return policy_of(self.meta.get(POLICY_KEY))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Catalog:
        """Open a catalog written by :func:`build_index` (read-only storage is fine).

        Raises:
            CatalogNotFoundError: no file at ``path``.
            CatalogError: the file is not a cloudclear catalog.
        """
        path = Path(path).expanduser().resolve()
        if path.is_dir():
            path = path / DEFAULT_NAME
        if not path.exists():
            raise CatalogNotFoundError(f"{path}: no catalog here (run `cloudclear index DIR` first)")
        scenes, meta = read_catalog(path)
        return cls(path, scenes, meta)

    # -- scenes -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Scene]:
        return (self._rows.scene(i) for i in range(len(self._rows)))

    def __getitem__(self, index: int) -> Scene:
        """The scene at ``index`` (its :attr:`Scene.index`: position in date order, the rtree id)."""
        n = len(self._rows)
        if not -n <= index < n:
            raise IndexError(f"scene index {index} out of range ({n} scenes)")
        return self._rows.scene(index % n)

    def get(self, scene_id: str) -> Scene:
        """One scene by id.

        Raises:
            QueryError: no scene has that id.
        """
        i = self._ids.get(scene_id)
        if i is None:
            raise QueryError(f"{self.path}: no scene {scene_id!r}")
        return self._rows.scene(i)

    def places(self, sensor: str | None = None) -> list[str]:
        """The places (MGRS tile ids, or grid names for scenes without one) of the catalog's scenes,
        sorted; of one sensor's scenes with ``sensor``."""
        want = sensor.upper() if sensor else None
        return sorted({p for p, s in zip(self._rows.places(), self._sensor, strict=True) if want in (None, s)})

    def has_sensor(self, sensor: str) -> bool:
        """Whether any scene is of ``sensor`` ("S2", "S1")."""
        return bool((self._sensor == sensor.upper()).any())

    def cloud_cells(self, scene_id: str) -> np.ndarray:
        """Per-cell cloud % grid (CELL x CELL pixels; NO_CELL where unknown) of one scene."""
        return self.get(scene_id).cells.cloud

    # -- paths ----------------------------------------------------------------------------

    def resolve(self, rel_path: str) -> Path:
        """Absolute path of a path stored in the catalog (stored relative to the catalog)."""
        return Path(self._rows.resolve(rel_path))

    def file_cache(self) -> dict[str, tuple[int, int, FileInfo | None, str | None]]:
        """Absolute path -> (size, mtime_ns, FileInfo or None, error) from the last scan."""
        import pyogrio

        files = pyogrio.read_dataframe(self.path, layer="files", read_geometry=False)
        out = {}
        for row in files.itertuples(index=False):
            if row.info and row.info.startswith(PRODUCTS_KEY):
                continue
            p = str(self.resolve(row.path))
            info = FileInfo.from_dict({**json.loads(row.info), "path": p}) if row.info else None
            out[p] = (int(row.size), int(row.mtime_ns), info, row.error or None)
        return out

    def product_cache(self) -> dict[str, tuple[int, int, list[Product]]]:
        """Absolute path of a product (SAFE, THEIA, STAC) -> (size, mtime_ns, its acquisitions)
        from the last scan: an unchanged product is not read again."""
        import pyogrio

        from cloudclear.gdal import absolute_path

        files = pyogrio.read_dataframe(self.path, layer="files", read_geometry=False)
        out = {}
        base = self.path.parent
        for row in files.itertuples(index=False):
            if not (row.info and row.info.startswith(PRODUCTS_KEY)) or row.error:
                continue  # a product refused last time is read again (and refused again, or not)
            products = []
            for d in json.loads(row.info)["products"]:
                members = tuple(FileInfo.from_dict({**m, "path": absolute_path(m["path"], base)}) for m in d["members"])
                metadata = tuple(absolute_path(m, base) for m in d["metadata"])
                products.append(Product(d["kind"], absolute_path(d["path"], base), d["key"], members, metadata))
            out[absolute_path(row.path, base)] = (int(row.size), int(row.mtime_ns), products)
        return out

    def records_by_id(self) -> dict[str, Any]:
        """Scene id -> its stored record (a pandas row): for re-indexing, which compares storage."""
        return {row["scene_id"]: row for _, row in self.scenes.iterrows()}

    def skipped(self) -> list[Skipped]:
        """Files the last scan left out, with the reasons."""
        import pyogrio

        if "skipped" not in {n for n, _ in pyogrio.list_layers(self.path)}:
            return []
        df = pyogrio.read_dataframe(self.path, layer="skipped", read_geometry=False)
        return [Skipped(str(self.resolve(p)), r) for p, r in zip(df["path"], df["reason"], strict=True)]

    # -- rtree ----------------------------------------------------------------------------

    @property
    def _rtree_base(self) -> Path:
        return self.path.with_name(self.path.name + ".rtree")

    @staticmethod
    def _boxes(frame: gpd.GeoDataFrame) -> Any:
        b = frame.geometry.bounds.to_numpy()
        t = (frame["datetime"] - _EPOCH).dt.total_seconds().to_numpy()
        for i in range(len(frame)):
            yield i, (b[i, 0], b[i, 1], t[i], b[i, 2], b[i, 3], t[i]), None

    def build_rtree(self, persist: bool = False) -> Any:
        """Build the (lon, lat, time) rtree from the records; with persist, save it atomically.

        A failure to save it (read-only or full storage) is logged and the rtree stays in memory:
        it is derived from the records, never the only copy.
        """
        from rtree import index

        props = index.Property()
        props.dimension = 3
        if not persist:
            self._rtree = index.Index(self._boxes(self.scenes), properties=props)
            return self._rtree
        base = self._rtree_base
        tmp = base.with_name(f".{base.name}.tmp-{os.getpid()}")
        try:
            idx = index.Index(str(tmp), self._boxes(self.scenes), properties=props)
            idx.close()
            for ext in (".dat", ".idx"):
                os.replace(f"{tmp}{ext}", f"{base}{ext}")
            Path(f"{base}.json").write_text(
                json.dumps({"generation": self.meta.get("generation"), "count": len(self.scenes)})
            )
        except Exception as exc:  # noqa: BLE001 - rtree raises RTreeError for I/O failures
            log.warning("%s: cannot persist the rtree (%s); it is kept in memory", base, describe_os_error(exc))
        finally:
            for ext in (".dat", ".idx"):
                _unlink_quietly(Path(f"{tmp}{ext}"))
        self._rtree = None
        return self.rtree

    @property
    def rtree(self) -> Any:
        """The rtree over (lon, lat, time); loaded from disk when current, else built in memory."""
        if self._rtree is not None:
            return self._rtree
        from rtree import index

        base = self._rtree_base
        stamp = Path(f"{base}.json")
        try:
            ok = json.loads(stamp.read_text()) == {
                "generation": self.meta.get("generation"),
                "count": len(self.scenes),
            }
        except (OSError, ValueError):
            ok = False
        if ok and Path(f"{base}.idx").exists() and Path(f"{base}.dat").exists():
            props = index.Property()
            props.dimension = 3
            try:
                self._rtree = index.Index(str(base), properties=props)
                return self._rtree
            except Exception as exc:  # noqa: BLE001 - read-only storage: libspatialindex opens files rw
                log.debug("%s: cannot open the saved rtree (%s); building it in memory", base, exc)
        return self.build_rtree(persist=False)

    def ids_in(self, lonlat_box: Sequence[float], start: float, end: float) -> np.ndarray:
        """Positions (:attr:`Scene.index`) of the scenes whose lon/lat box meets ``lonlat_box`` and
        whose time lies in [start, end] (seconds since 1970), sorted."""
        import numpy as np

        x0, y0, x1, y1 = lonlat_box
        return np.sort(np.fromiter(self.rtree.intersection((x0, y0, start, x1, y1, end)), dtype=np.int64))

    # -- queries --------------------------------------------------------------------------

    def _positions(
        self,
        bbox: Sequence[float] | None,
        bbox_crs: str,
        start: datetime | str | None,
        end: datetime | str | None,
        cloud_min: float | None,
        cloud_max: float | None,
        sensor: str | None,
        tile: str | None,
        include_unmasked: bool,
    ) -> np.ndarray:
        import numpy as np
        import shapely

        t0 = parse_time(start, end_of_day=False) if start is not None else None
        t1 = parse_time(end, end_of_day=True) if end is not None else None
        if t0 is not None and t1 is not None and t1 < t0:
            raise QueryError(f"date range is inverted: {start} is after {end}")
        if cloud_min is not None and cloud_max is not None and cloud_max < cloud_min:
            raise QueryError(f"cloud range is inverted: {cloud_min} > {cloud_max}")
        geom = None
        if bbox is not None:
            geom = _bbox_to_lonlat(bbox, bbox_crs)
            box = geom.bounds
        else:
            box = (-1e9, -1e9, 1e9, 1e9)
        lo = (t0 - _EPOCH).total_seconds() if t0 else -1e18
        hi = (t1 - _EPOCH).total_seconds() if t1 else 1e18
        hits = self.ids_in(box, lo, hi)
        keep = np.ones(len(hits), bool)
        if sensor:
            keep &= self._sensor[hits] == sensor.upper()
        if tile:
            keep &= self._place[hits] == (normalise_tile(tile) or "").upper()
        if cloud_min is not None or cloud_max is not None:
            c = self._cloud[hits]
            in_range = np.ones(len(hits), bool)
            if cloud_min is not None:
                in_range &= c >= cloud_min
            if cloud_max is not None:
                in_range &= c <= cloud_max
            keep &= in_range | (np.isnan(c) if include_unmasked else False)
        hits = hits[keep]
        if geom is not None and len(hits):
            hits = hits[shapely.intersects(self._geoms[hits], geom)]
        return hits

    def query(
        self,
        bbox: Sequence[float] | None = None,
        *,
        bbox_crs: str = "EPSG:4326",
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        cloud_min: float | None = None,
        cloud_max: float | None = None,
        sensor: str | None = None,
        tile: str | None = None,
        include_unmasked: bool = True,
    ) -> list[Scene]:
        """Scenes intersecting a box, within a date range and a cloud-cover range.

        Args:
            bbox: (minx, miny, maxx, maxy) in ``bbox_crs``; None for everywhere.
            bbox_crs: CRS of ``bbox`` (anything pyproj accepts).
            start: first datetime (inclusive); a date string "YYYY-MM-DD" means its midnight UTC.
            end: last datetime (inclusive); a bare date includes that whole day.
            cloud_min: lowest cloud % (inclusive).
            cloud_max: highest cloud % (inclusive).
            sensor: "S2" or "S1".
            tile: an MGRS tile id ("31UFQ" or "T31UFQ"), or the grid name the catalog reports for
                scenes without a tile id (:attr:`Scene.place`).
            include_unmasked: with a cloud range, keep scenes whose cloud % is unknown (no mask).

        Returns:
            The matching scenes in date order.

        Raises:
            QueryError: an inverted range or a bad box.
        """
        hits = self._positions(bbox, bbox_crs, start, end, cloud_min, cloud_max, sensor, tile, include_unmasked)
        return [self._rows.scene(int(i)) for i in hits]

    def query_frame(
        self,
        bbox: Sequence[float] | None = None,
        *,
        bbox_crs: str = "EPSG:4326",
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        cloud_min: float | None = None,
        cloud_max: float | None = None,
        sensor: str | None = None,
        tile: str | None = None,
        include_unmasked: bool = True,
    ) -> gpd.GeoDataFrame:
        """:meth:`query`, returning the matching records as a GeoDataFrame (the storage columns,
        plus ``place``), for geopandas users and tabular output."""
        hits = self._positions(bbox, bbox_crs, start, end, cloud_min, cloud_max, sensor, tile, include_unmasked)
        out = self.scenes.iloc[hits].copy()
        out["place"] = [self._rows.places()[int(i)] for i in hits]
        return out

    def summary(self) -> dict[str, Any]:
        """Scenes per sensor and place (tile, or grid name), date range, and the cloud-cover
        distribution of S2."""
        import numpy as np

        df = self.scenes
        per = Counter(zip(df["sensor"], self._rows.places(), strict=True))
        # Two datasets over one tile on different grids stay two grids (infer --grid picks one).
        grid_of = zip(
            df["crs"], df["left"].round(3), df["top"].round(3), df["res_x"], df["width"], df["height"], strict=True
        )
        grids: dict[tuple[str, str], set[Any]] = {}
        for key, g in zip(zip(df["sensor"], self._rows.places(), strict=True), grid_of, strict=True):
            grids.setdefault(key, set()).add(g)
        s2 = df[df["sensor"] == "S2"]
        cloud = s2["cloud_pct"]
        bins = [
            ("0%", 0, 0),
            ("0-10%", 0, 10),
            ("10-50%", 10, 50),
            ("50-90%", 50, 90),
            ("90-100%", 90, 100),
        ]
        dist: dict[str, int] = {}
        for label, a, b in bins:
            if a == b:
                dist[label] = int((cloud == 0).sum())
            else:
                dist[label] = int(((cloud > a) & (cloud <= b)).sum())
        dist["no mask"] = int(cloud.isna().sum())
        gaps = s2["s1_gap_hours"].dropna()
        return {
            "scenes": int(len(df)),
            "by_sensor": {k: int(v) for k, v in Counter(df["sensor"]).items()},
            "by_sensor_tile": [
                {"sensor": s, "tile": t, "scenes": int(n), "grids": len(grids[(s, t)])}
                for (s, t), n in sorted(per.items())
            ],
            "first": df["datetime"].min().isoformat() if len(df) else None,
            "last": df["datetime"].max().isoformat() if len(df) else None,
            "s2_cloud_distribution": dist,
            "s2_with_s1": int(len(gaps)),
            "s1_gap_hours_median": float(np.median(gaps)) if len(gaps) else None,
        }


def parse_time(value: datetime | str, end_of_day: bool, error: type[CloudClearError] = QueryError) -> datetime:
    """A datetime or a date string as an aware datetime; a bare date's end of day with ``end_of_day``."""
    from datetime import timedelta

    from cloudclear.scenes import parse_datetime

    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        dt = parse_datetime(value)
    except ValueError:
        raise error(f"cannot read {value!r} as a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)") from None
    if end_of_day and len(value.strip()) <= 10:
        dt = dt + timedelta(days=1) - timedelta(microseconds=1)
    return dt


def _bbox_to_lonlat(bbox: Sequence[float], crs: str) -> Any:
    import shapely
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    if len(bbox) != 4:
        raise QueryError(f"bounding box needs 4 numbers minx,miny,maxx,maxy, got {len(bbox)}")
    x0, y0, x1, y1 = map(float, bbox)
    if x1 < x0 or y1 < y0:
        raise QueryError(f"bounding box {bbox} has min > max")
    box = shapely.box(x0, y0, x1, y1)
    if crs.upper() in ("EPSG:4326", "WGS84", "OGC:CRS84"):
        return box
    try:
        src = CRS.from_user_input(crs)
    except CRSError:
        raise QueryError(f"unknown CRS {crs!r}") from None
    if src.equals(CRS.from_epsg(4326)):
        return box
    ring = shapely.segmentize(box, max(x1 - x0, y1 - y0) / 20 or 1.0)
    xy = shapely.get_coordinates(ring)
    lon, lat = Transformer.from_crs(src, "EPSG:4326", always_xy=True).transform(xy[:, 0], xy[:, 1])
    return shapely.Polygon(list(zip(lon, lat, strict=True)))
