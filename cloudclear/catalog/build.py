"""Scan a directory and write (or update) its catalog: :func:`build_index`."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear import __version__, masks
from cloudclear.catalog.reading import default_jobs, forked_map, read_files
from cloudclear.catalog.records import (
    DETECTED_COLUMN,
    calibration_from_row,
    link_nearest_s1,
    make_frame,
    record,
    signature,
    stats_from_row,
)
from cloudclear.catalog.scan import iter_rasters, product_json, read_products
from cloudclear.catalog.stats import Preloaded, SceneStats, scene_stats
from cloudclear.catalog.store import DEFAULT_NAME, POLICY_KEY, Catalog, policy_text, read_catalog, read_meta
from cloudclear.catalog.values import Calibration, calibrate
from cloudclear.detect.spatial import SpatialOptions
from cloudclear.errors import (
    CatalogError,
    CatalogWriteError,
    EmptyCatalogError,
    GridError,
    InvalidRasterError,
    MaskError,
    OutputError,
    QueryError,
    ResourceLimitError,
    SceneNotFoundError,
)
from cloudclear.gdal import gdal_env, path_stat
from cloudclear.outputs import atomic_output
from cloudclear.scenes import FileInfo, SceneDraft, Skipped, assemble, scene_ids
from cloudclear.scenes.duplicates import drop_duplicates

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexResult:
    """What :func:`build_index` did.

    Attributes:
        catalog_path: the GeoPackage written.
        scenes: scene count in the catalog.
        files_seen: raster files found under the root.
        files_opened: files whose metadata was read this run (new or changed).
        scenes_computed: scenes whose pixel statistics were computed this run.
        scenes_reused: scenes carried over unchanged from the previous catalog.
        skipped: files left out, with reasons.
        seconds: wall time.
        summary: counts by sensor and tile, dates, cloud distribution.
        masks_detected: S2 scenes whose mask was computed (or reused) by a detector, with or
            without a mask of their own.
        policy: the clear policy the cloud % counts.
        removed: per S2 scene with a mask, valid pixels the mask calls clear that the policy
            counted as obscured (empty when the policy keeps the masks as decoded).
        removed_by: the same over every scene, per rule ("detector", "unclassified", "snow",
            "buffer"; each pixel counted once, under the first rule that removed it).
        recomputed_policy: every scene was recomputed because the previous catalog used another
            policy.
        products_seen: products (SAFE, THEIA, STAC) found under the root.
        products_read: products whose metadata was read this run (new, changed or refused before).
    """

    catalog_path: Path
    scenes: int
    files_seen: int
    files_opened: int
    scenes_computed: int
    scenes_reused: int
    skipped: tuple[Skipped, ...]
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    masks_detected: int = 0
    policy: masks.ClearPolicy = masks.DEFAULT_POLICY
    removed: dict[str, int] = field(default_factory=dict)
    recomputed_policy: bool = False
    removed_by: dict[str, int] = field(default_factory=dict)
    products_seen: int = 0
    products_read: int = 0

    @property
    def refused(self) -> tuple[Skipped, ...]:
        """The inputs refused as wrong (unreadable, undated, values that fit no scale, broken
        products), a subset of ``skipped``."""
        return tuple(s for s in self.skipped if s.refused)

    @property
    def removed_total(self) -> int:
        """Pixels the policy removed beyond the masks, over every scene."""
        return sum(self.removed.values())

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return {
            "catalog": str(self.catalog_path),
            "scenes": self.scenes,
            "files_seen": self.files_seen,
            "files_opened": self.files_opened,
            "products_seen": self.products_seen,
            "products_read": self.products_read,
            "scenes_computed": self.scenes_computed,
            "scenes_reused": self.scenes_reused,
            "masks_detected": self.masks_detected,
            "seconds": round(self.seconds, 3),
            "skipped": [{"path": s.path, "reason": s.reason, "refused": s.refused} for s in self.skipped],
            "summary": self.summary,
            "clear_policy": dataclasses.asdict(self.policy),
            "policy_removed_px": {"total": self.removed_total, "by_rule": self.removed_by, "scenes": self.removed},
            "recomputed_for_policy": self.recomputed_policy,
        }


def _check_writable(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise CatalogWriteError(f"{path}: cannot create the catalog folder ({exc.strerror})") from None
    probe = parent / f".{path.name}.probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CatalogWriteError(f"{path}: catalog folder is not writable ({exc.strerror})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise CatalogWriteError(f"{path}: catalog file is not writable")


def _remove_stale_temporaries(cat_path: Path) -> None:
    """Delete temporary files left by an index run that was killed (its process is gone)."""
    import re

    from cloudclear._tempfiles import remove_orphans

    pattern = re.compile(rf"^\.{re.escape(cat_path.name)}(\.rtree)?\.tmp-(?P<pid>\d+)")
    remove_orphans(cat_path.parent, f".{cat_path.name}*.tmp-*", pattern)


def build_index(
    root: str | os.PathLike[str],
    catalog_path: str | os.PathLike[str] | None = None,
    *,
    date_pattern: str | None = None,
    rebuild: bool = False,
    progress: bool = False,
    detect: str | None = "builtin",
    policy: masks.ClearPolicy = masks.DEFAULT_POLICY,
    jobs: int | None = None,
) -> IndexResult:
    """Scan a directory for S2, S1 and mask rasters and write (or update) its catalog.

    Args:
        root: the directory to scan, recursively, or one product file (a SAFE ``.zip``, a STAC
            item); the default catalog then goes beside it.
        catalog_path: the GeoPackage to write; default ``ROOT/cloudclear.gpkg``.
        date_pattern: regex for dates in file names, with named group ``date`` (YYYYMMDD) and
            optional ``time`` (HHMMSS), or ``datetime``; default matches YYYYMMDD[THHMMSS].
        rebuild: ignore the previous catalog and reopen every file.
        progress: show progress bars on stderr.
        detect: a detector (:data:`cloudclear.detect.DETECTORS`; default the built-in one, None
            for none) run on every S2 scene without a mask that has the bands it needs (its mask
            becomes the detector's), and on the scenes with one too when the policy's ``source``
            reads the detector's ("combined", "detector"). Masks go to ``CATALOG_masks/`` beside the
            catalog as SCL GeoTIFFs (no dilation: the policy's buffer grows every mask alike) and
            are reused by later runs (with or without ``detect``) while the scene is unchanged.
        policy: what counts as clear (:class:`~cloudclear.masks.ClearPolicy`) in the cloud % and
            cells; recorded in the ``meta`` table. The temporal test compares dates and does not
            apply to one scene's cloud %. A previous catalog made with another policy has the
            statistics of every scene recomputed, never mixed.
        jobs: processes that open the files (:func:`~cloudclear.catalog.reading.read_files`);
            default :func:`~cloudclear.catalog.reading.default_jobs` (the CPUs, at most 8). The
            catalog is the same whatever it is. Workers are forked: a program whose other threads
            use GDAL while it indexes should pass 1 (a lock such a thread held at the fork would
            never be released in the worker).

    Returns:
        An :class:`IndexResult`.

    Raises:
        SceneNotFoundError: root does not exist, or is neither a directory nor a product file.
        CatalogWriteError: the catalog cannot be written (read-only folder, disk full: the
            previous catalog is left as it was), or ``catalog_path`` holds a file that is not a
            cloudclear catalog (never replaced).
        EmptyCatalogError: no usable scene was found (the previous catalog is left as it was).
        QueryError: ``date_pattern`` is not a regular expression.

    A scene whose statistics cannot be computed (a corrupt file, or one declaring more pixels
    than :data:`~cloudclear.catalog.stats.MAX_PIXELS`) is skipped with the reason.
    """
    import re

    t0 = time.perf_counter()
    root = Path(root).expanduser().resolve()
    from cloudclear.scenes.products import product_kind

    # A product file (a SAFE .zip, a STAC item) may be indexed on its own; its catalog goes beside it.
    single = root.is_file() and product_kind(root) is not None
    if not root.is_dir() and not single:
        what = "no such directory" if not root.exists() else "not a folder, a SAFE .zip or a STAC item"
        raise SceneNotFoundError(f"{root}: {what}")
    folder = root.parent if single else root
    cat_path = Path(catalog_path).expanduser().resolve() if catalog_path else folder / DEFAULT_NAME
    if date_pattern:
        try:
            re.compile(date_pattern)
        except re.error as exc:
            raise QueryError(f"date pattern {date_pattern!r} is not a valid regular expression: {exc}") from None
    _check_writable(cat_path)
    _remove_stale_temporaries(cat_path)

    previous = _previous(cat_path, rebuild)
    if detect is not None:
        from cloudclear.detect.pixels import get_detector

        get_detector(detect)  # a wrong name or a missing package fails before the scan
    # GDAL lists a file's folder on every open to find sidecars: quadratic in big folders.
    with gdal_env("index", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        return _build(root, cat_path, previous, date_pattern, progress, t0, detect, policy, jobs or default_jobs())


def _previous(cat_path: Path, rebuild: bool) -> Catalog | None:
    """The catalog already at ``cat_path`` (None without one, or with ``rebuild``).

    Raises:
        CatalogWriteError: a file that is not a cloudclear catalog is there; it is never replaced.
    """
    if not cat_path.exists():
        return None
    if cat_path.is_dir():
        raise CatalogWriteError(f"{cat_path}: is a folder, not a catalog file; choose another --catalog path")
    try:
        if rebuild:  # only whether it is a catalog, which a rebuild replaces
            read_meta(cat_path)
            return None
        scenes, meta = read_catalog(cat_path)
    except CatalogError:
        raise CatalogWriteError(
            f"{cat_path}: exists and is not a cloudclear catalog; refusing to replace it "
            f"(choose another --catalog path, or delete the file)"
        ) from None
    return Catalog(cat_path, scenes, meta)


#: How ``index`` runs a detector: no dilation (the clear policy's buffer grows every mask alike).
INDEX_SPATIAL = SpatialOptions(cloud_dilation=0, shadow_dilation=0)


def _stored_path(row: Any, column: str) -> str | None:
    """A path a stored record holds in ``column``: None when empty (None, NaN, "") or when the
    column is absent (``detected_file`` in catalogs made before it)."""
    value = row.get(column) if hasattr(row, "get") else None
    return None if value is None or value != value or value == "" else str(value)


def masks_folder(cat_path: Path) -> Path:
    """Where ``index --detect`` writes the masks it computes: ``CATALOG_masks/`` beside the catalog."""
    return cat_path.parent / f"{cat_path.stem}_masks"


def _detected_mask(
    draft: SceneDraft,
    scene_id: str,
    folder: Path,
    detect: str | None,
    progress: bool,
    infos: dict[str, FileInfo] | None = None,
) -> tuple[masks.MaskBand | None, str | None, bool]:
    """The detected mask of an S2 scene: reused if current, computed if ``detect``.

    Returns the mask (or None), why detection failed (or None), and whether it was computed now.
    """
    import rasterio

    from cloudclear.detect.scene import MaskOptions, mask_draft, mask_name
    from cloudclear.errors import MaskError

    dst = folder / mask_name(scene_id)
    if dst.exists():
        newest = max(path_stat(p)[1] for p in draft.files)
        with rasterio.open(dst) as src:
            tags = src.tags()
        made_by = tags.get("CLOUDCLEAR_DETECTOR")
        try:
            made_with = json.loads(tags.get("CLOUDCLEAR_OPTIONS", "{}"))
        except ValueError:
            made_with = {}
        same_options = (made_with.get("cloud_dilation"), made_with.get("shadow_dilation")) == (
            INDEX_SPATIAL.cloud_dilation,
            INDEX_SPATIAL.shadow_dilation,
        )
        if dst.stat().st_mtime_ns >= newest and (detect is None or (made_by == detect and same_options)):
            return masks.MaskBand(str(dst), 1, "SCL"), None, False
    if detect is None:
        return None, None, False
    options = MaskOptions(detector=detect, spatial=INDEX_SPATIAL, overwrite=True, progress=progress)
    try:
        mask_draft(draft, scene_id, dst, options, infos)
    except (MaskError, InvalidRasterError) as exc:
        return None, str(exc), False
    return masks.MaskBand(str(dst), 1, "SCL"), None, True


#: A scene's record, the pixels the policy removed, and those by rule (:func:`_build`).
_Outcome = tuple[dict[str, Any], int | None, dict[str, int] | None]


def _build(
    root: Path,
    cat_path: Path,
    previous: Catalog | None,
    date_pattern: str | None,
    progress: bool,
    t0: float,
    detect: str | None = None,
    policy: masks.ClearPolicy = masks.DEFAULT_POLICY,
    jobs: int = 1,
) -> IndexResult:
    from dataclasses import replace

    from tqdm import tqdm

    mask_dir = masks_folder(cat_path)
    paths, product_paths = iter_rasters(root, {cat_path}, {mask_dir})
    products, refused_products, product_rows, products_opened, claimed = read_products(
        product_paths, previous, progress
    )
    # A STAC item's COGs may lie in the scanned folder: they are the item's, not loose files.
    claimed |= {m.path for prod in products for m in prod.members}
    paths = [p for p in paths if str(p) not in claimed]
    cache = previous.file_cache() if previous else {}
    # Each file is opened once: the pixels its statistics read are taken with its metadata.
    preloaded = Preloaded()
    reads = read_files(paths, cache, preloaded, jobs=jobs, progress=progress)
    infos = {r.path: r.info for r in reads if r.info is not None}
    errors = [Skipped(r.path, r.error or f"{r.path}: unreadable", refused=True) for r in reads if r.info is None]
    file_rows: list[dict[str, Any]] = [
        {"path": r.path, "size": r.size, "mtime_ns": r.mtime_ns, "info": r.info, "error": r.error} for r in reads
    ]
    opened = sum(r.opened for r in reads)

    for prod in products:
        infos.update({m.path: m for m in prod.members})
    drafts, skipped = assemble(infos.values(), date_pattern)
    # One acquisition, one scene, whatever the naming: a stack beside its band files, a SAFE and
    # its GeoTIFF export, a copy without the time of day.
    drafts, duplicates = drop_duplicates(drafts)
    skipped = refused_products + errors + skipped + duplicates

    # Statistics counted under another policy are never reused: every scene is recomputed.
    other_policy = previous is not None and previous.policy != policy
    old_rows = previous.records_by_id() if previous and not other_policy else {}
    rel = _relativiser(cat_path.parent)
    ids = scene_ids(drafts)
    detected = 0
    # First, here: each scene's detected mask (detectors may start threads, which a forked worker
    # would not have) and whether its stored statistics still hold.
    plans: list[tuple[str, SceneDraft, Any, Calibration | None]] = []
    count: list[int] = []  # the plans whose statistics are counted again
    for scene_id, draft in tqdm(
        list(zip(ids, drafts, strict=True)), desc="scenes", unit="scene", disable=not progress, leave=False
    ):
        old = old_rows.get(scene_id)
        fresh = False
        # The detector's mask of a scene with its own is read only by the "combined" and "detector"
        # sources; a scene without a mask always takes it as its mask.
        wanted = draft.mask is None or policy.source != "mask"
        if draft.sensor == "S2" and wanted and (detect or mask_dir.is_dir()):
            found, why, fresh = _detected_mask(draft, scene_id, mask_dir, detect, progress, infos)
            if why:
                # A scene with its own mask is still decided by it: say so quietly.
                (log.warning if draft.mask is None else log.info)("no mask detected for %s: %s", scene_id, why)
            if found is not None:
                if draft.mask is None:
                    draft = replace(draft, mask=found, mask_files=(found.path,))
                else:
                    draft = replace(draft, detected=found)
                detected += 1
        # draft.files lists the mask file too, so the signature also tells a changed mask; a
        # detected mask is not among the files, so its path is compared as well.
        same_mask = (
            old is not None
            and _stored_path(old, "mask_file") == (rel(draft.mask.path) if draft.mask else None)
            and _stored_path(old, DETECTED_COLUMN) == (rel(draft.detected.path) if draft.detected else None)
        )
        calibration = calibration_from_row(old, draft) if old is not None and draft.sensor == "S2" else None
        same_files = old is not None and old["signature"] == signature(draft.files, infos)
        if not (same_files and same_mask and not fresh and (draft.sensor != "S2" or calibration is not None)):
            count.append(len(plans))
        plans.append((scene_id, draft, old, calibration))

    def outcome(scene_id: str, draft: SceneDraft, stats: SceneStats, calibration: Calibration | None) -> _Outcome:
        """A scene's record, and the pixels the policy removed (in all, by rule)."""
        return record(scene_id, draft, stats, infos, rel, calibration), stats.removed_px, stats.removed_by

    def counted(k: int) -> _Outcome | str:
        """Plan ``k``'s statistics counted from its pixels: its record and what the policy
        removed, or why it cannot be counted (in a worker process where there are many)."""
        scene_id, draft, _, _ = plans[k]
        try:
            stats = scene_stats(draft, policy=policy, preloaded=preloaded)
            calibration = calibrate(draft, infos, stats.sample) if draft.sensor == "S2" else None
        except (InvalidRasterError, ResourceLimitError, MaskError, GridError) as exc:
            return str(exc)
        finally:
            preloaded.drop(draft.files)
        return outcome(scene_id, draft, stats, calibration)

    # Then the statistics, in processes forked now (they inherit the pixels preloaded).
    bar = tqdm(
        forked_map(counted, count, jobs), "statistics", len(count), unit="scene", disable=not progress, leave=False
    )
    results = dict(zip(count, bar, strict=True))
    preloaded.drop(list(infos))
    records = []
    removed: dict[str, int] = {}
    removed_by: dict[str, int] = {}
    for k, (scene_id, draft, old, calibration) in enumerate(plans):
        if k in results:
            got = results[k]
            if isinstance(got, str):
                skipped.extend(Skipped(p, got, refused=True) for p in draft.files[:1])
                continue
            row, removed_px, by_rule = got
        else:
            row, removed_px, by_rule = outcome(scene_id, draft, stats_from_row(old), calibration)
        if removed_px is not None:
            removed[scene_id] = removed_px
        for rule, n in (by_rule or {}).items():
            removed_by[rule] = removed_by.get(rule, 0) + n
        records.append(row)
    computed = sum(not isinstance(results[k], str) for k in count)
    reused = len(plans) - len(count)

    if not records:
        raise EmptyCatalogError(
            f"{root}: no usable S2 or S1 scene found ({len(paths)} raster file(s) looked at, {len(skipped)} skipped)",
            tuple(skipped),
        )
    frame = make_frame(records)
    link_nearest_s1(frame)
    meta = {
        "root": rel(str(root)),
        "version": __version__,
        "date_pattern": date_pattern or "",
        "generation": uuid.uuid4().hex,
    }
    meta[POLICY_KEY] = policy_text(policy)
    write_catalog(cat_path, frame, file_rows, skipped, meta, rel, product_rows)
    catalog = Catalog(cat_path, frame, meta)
    catalog.build_rtree(persist=True)
    return IndexResult(
        catalog_path=cat_path,
        scenes=len(frame),
        files_seen=len(paths),
        files_opened=opened,
        scenes_computed=computed,
        scenes_reused=reused,
        skipped=tuple(skipped),
        seconds=time.perf_counter() - t0,
        summary=catalog.summary(),
        masks_detected=detected,
        policy=policy,
        removed=removed,
        recomputed_policy=other_policy,
        removed_by=removed_by,
        products_seen=len(product_paths),
        products_read=products_opened,
    )


def _relativiser(base: Path) -> Any:
    import functools

    from cloudclear.gdal import relative_path

    # A scene's paths recur in several columns (band files, files, mask): each is made relative once.
    @functools.lru_cache(maxsize=4096)
    def rel(p: str) -> str:
        return relative_path(p, base)

    return rel


def write_catalog(
    path: Path,
    frame: gpd.GeoDataFrame,
    file_rows: list[dict[str, Any]],
    skipped: Sequence[Skipped],
    meta: dict[str, str],
    rel: Any,
    product_rows: Sequence[dict[str, Any]] = (),
) -> None:
    """Write the catalog to a temporary GeoPackage and rename it over ``path`` (atomic).

    Raises:
        CatalogWriteError: the catalog cannot be written (read-only folder, disk full); the
            temporary is removed and a catalog already at ``path`` is untouched.
    """
    import pandas as pd
    import pyogrio

    files = pd.DataFrame(
        [
            {
                "path": rel(r["path"]),
                "size": r["size"],
                "mtime_ns": r["mtime_ns"],
                "info": json.dumps(r["info"].to_dict()) if r["info"] else "",
                "error": r["error"] or "",
            }
            for r in file_rows
        ]
        + [
            {
                "path": rel(r["path"]),
                "size": r["size"],
                "mtime_ns": r["mtime_ns"],
                "info": json.dumps({"products": [product_json(p, rel) for p in r["products"]]}),
                "error": r["error"] or "",
            }
            for r in product_rows
        ]
    )
    skip = pd.DataFrame(
        [{"path": rel(s.path), "reason": s.reason, "refused": int(s.refused)} for s in skipped],
        columns=["path", "reason", "refused"],
    )
    try:
        with atomic_output(path, overwrite=True, what="catalog") as tmp:
            pyogrio.write_dataframe(frame, tmp, layer="scenes", driver="GPKG")
            pyogrio.write_dataframe(files, tmp, layer="files", driver="GPKG")
            if not skip.empty:
                pyogrio.write_dataframe(skip, tmp, layer="skipped", driver="GPKG")
            pyogrio.write_dataframe(
                pd.DataFrame({"key": list(meta), "value": list(meta.values())}),
                tmp,
                layer="meta",
                driver="GPKG",
            )
    except OutputError as exc:
        raise CatalogWriteError(str(exc)) from exc
