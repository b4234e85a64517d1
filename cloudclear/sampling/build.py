"""``cloudclear sample``: catalog x layout -> a patch store.

The steps: group the catalog's S2 scenes by grid and lay patch locations over each grid; for every
reference scene and location, find from the per-cell cloud grids and the rtree whether every slot
has a candidate; split locations by blocks; draw (reference, location) pairs in the strategy's
order; read each drawn sample's patches, check the exact cloud cover and validity, paste real masks
on simulated slots, compress (:mod:`cloudclear.sampling.patches`), and append to the store. Reading
runs in a few threads (GDAL and zlib release the GIL); samples are committed in draw order, so the
same seed gives the same store. The store is written beside its final name and renamed when
complete (:func:`cloudclear.outputs.atomic_output`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudclear import __version__, masks
from cloudclear._tempfiles import remove_orphans
from cloudclear.catalog import crs_label, parse_time
from cloudclear.errors import (
    LayoutError,
    OutputExistsError,
    SampleError,
)
from cloudclear.gdal import gdal_env
from cloudclear.layouts import Layout, load_layout
from cloudclear.outputs import atomic_output
from cloudclear.sampling import candidates as cand_mod
from cloudclear.sampling.candidates import Candidates, Group
from cloudclear.sampling.draw import SEASONS, Splits, assign_splits, draw_order, season_of
from cloudclear.sampling.patches import SampleReader, safe_build
from cloudclear.sampling.store import SPLITS, ArraySpec, StoreWriter

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog

log = logging.getLogger(__name__)

#: Samples read ahead and committed together; fixed so the store does not depend on the thread count.
BATCH = 16
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")


@dataclass(frozen=True)
class SampleOptions:
    """How to sample.

    Attributes:
        patch_size: patch side in pixels of the S2 grid.
        count: samples to write (fewer when fewer satisfy the layout; the result says so).
        stride: step between patch origins; default ``patch_size`` (patches of one grid never overlap).
        fractions: train / val / test shares.
        block: split block side in patches.
        block_days: also split by periods of this many days (None: by place only).
        per_location: at most this many samples per patch location (None: no limit).
        seasonal: equal draws per season of the reference date.
        simulate: S2 slots whose gaps are simulated (``"all"`` for every S2 slot).
        s1: False drops every S1 requirement of the layout (optical only).
        s1_max_gap: replaces the largest S1-S2 gap (hours) of every slot that carries S1.
        bands: S2 bands; None for those every scene has.
        s1_bands: S1 bands.
        tile: sample only this MGRS tile.
        start, end: reference dates in this range (YYYY-MM-DD or ISO).
        seed: random seed; the same seed gives the same store.
        dem: DEM raster for a DEM slot.
        workers: reading threads.
        compression: zlib level 1-9.
        overwrite: replace an existing store.
        progress: show a progress bar on stderr.
        policy: what counts as clear (:class:`~cloudclear.masks.ClearPolicy`): a slot's cloud %,
            the clearness of a simulated slot's truth, the stored mask classes and the pasted gaps
            all go through it. With its temporal test, each S2 slot's patch is compared with the
            grid's other scenes within ``temporal_days`` of it (the nearest
            :data:`~cloudclear.sampling.patches.TEMPORAL_NEIGHBOURS`); what the test flags counts
            as cloud or shadow (``SLOT_temporal_removed_px`` in the samples table). None: the
            policy the catalog's cloud % used (its ``meta``).
    """

    patch_size: int = 256
    count: int = 1000
    stride: int | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    block: int = 4
    block_days: float | None = None
    per_location: int | None = None
    seasonal: bool = False
    simulate: tuple[str, ...] = ()
    s1: bool = True
    s1_max_gap: float | None = None
    bands: tuple[str, ...] | None = None
    s1_bands: tuple[str, ...] = ("VV", "VH")
    tile: str | None = None
    start: str | None = None
    end: str | None = None
    seed: int = 0
    dem: str | None = None
    workers: int = 2
    compression: int = 1
    overwrite: bool = False
    progress: bool = False
    policy: masks.ClearPolicy | None = None


@dataclass(frozen=True)
class SampleResult:
    """What :func:`sample` wrote.

    Attributes:
        path: the store folder.
        layout: layout name.
        count: samples written.
        requested: samples asked for.
        by_split: samples per split.
        by_season: samples per season of the reference date.
        candidates: (reference, location) pairs that satisfy the layout per the cell statistics.
        locations: patch locations on the grids.
        rejected: pairs tried and not used, by reason.
        bytes: store size on disk.
        seconds: wall time.
        notes: things the user should know (fewer samples than asked, a split left empty, a
            band read in place of another...).
        stand_ins: band asked for -> the band read in its place from the scenes that lack it
            (B8A for B08: :data:`~cloudclear.sampling.candidates.STAND_INS`); empty when none was.
    """

    path: Path
    layout: str
    count: int
    requested: int
    by_split: dict[str, int]
    by_season: dict[str, int]
    candidates: int
    locations: int
    rejected: dict[str, int]
    bytes: int
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    stand_ins: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "layout": self.layout,
            "count": self.count,
            "requested": self.requested,
            "by_split": self.by_split,
            "by_season": self.by_season,
            "candidates": self.candidates,
            "locations": self.locations,
            "rejected": self.rejected,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "stand_ins": dict(self.stand_ins),
        }


def array_specs(layout: Layout, bands: Sequence[str], s1_bands: Sequence[str], patch: int) -> list[ArraySpec]:
    """The arrays each sample of ``layout`` holds, in the order they are stored."""
    p = (patch, patch)
    out = []
    for s in layout.slots:
        if s.sensor == "DEM":
            out.append(ArraySpec(s.name, s.name, "DEM", "uint16", (1, *p)))
        elif s.sensor == "S1":
            out.append(ArraySpec(s.name, s.name, "S1", "uint16", (len(s1_bands), *p)))
        else:
            out.append(ArraySpec(s.name, s.name, "S2", "uint16", (len(bands), *p)))
            out.append(ArraySpec(f"{s.name}.mask", s.name, "mask", "uint8", p))
            if s.simulated:
                out.append(ArraySpec(f"{s.name}.gap", s.name, "gap", "uint8", p))
            if s.s1_max_gap is not None:
                out.append(ArraySpec(f"{s.name}.s1", s.name, "S1", "uint16", (len(s1_bands), *p)))
    return out


# ---------------------------------------------------------------------------------------------
# The command


def _check(opts: SampleOptions) -> None:
    if opts.patch_size < 8:
        raise SampleError(f"patch size must be >= 8 px, not {opts.patch_size}")
    if opts.count < 1:
        raise SampleError(f"count must be >= 1, not {opts.count}")
    if opts.stride is not None and opts.stride < 1:
        raise SampleError(f"stride must be >= 1 px, not {opts.stride}")
    if opts.block < 1:
        raise SampleError(f"block must be >= 1 patch, not {opts.block}")
    if len(opts.fractions) != 3 or min(opts.fractions) < 0 or sum(opts.fractions) <= 0 or opts.fractions[0] <= 0:
        raise SampleError(f"split fractions must be 3 numbers >= 0 with train > 0, not {opts.fractions}")
    if opts.per_location is not None and opts.per_location < 1:
        raise SampleError(f"per-location limit must be >= 1, not {opts.per_location}")
    if opts.block_days is not None and opts.block_days <= 0:
        raise SampleError(f"date blocks must be > 0 days, not {opts.block_days}")
    if not 1 <= opts.compression <= 9:
        raise SampleError(f"compression level must be 1-9, not {opts.compression}")


def sample(
    catalog: Catalog | str | os.PathLike[str],
    layout: Layout | str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: SampleOptions | None = None,
) -> SampleResult:
    """Draw samples of ``layout`` from ``catalog`` and write a patch store at ``out``.

    Args:
        catalog: an open :class:`cloudclear.catalog.Catalog` or its path.
        layout: a :class:`Layout`, a preset name or a layout TOML file.
        out: the store folder to write.
        options: see :class:`SampleOptions`.

    Raises:
        SampleError: no sample satisfies the layout (the message names the slot that found no
            candidate and why), bad options.
        LayoutError: a bad layout or simulated slot name.
        OutputExistsError: ``out`` exists and ``overwrite`` is off.
        OutputError: the store cannot be written (disk full, read-only folder); nothing is left
            under its name and an existing store is untouched.
        SceneNotFoundError: a scene file the catalog lists was deleted after indexing.
        StoreNotFoundError, CatalogNotFoundError: no catalog at ``catalog``.
    """
    with gdal_env("sample"):
        return _sample(catalog, layout, out, options)


def _sample(
    catalog: Catalog | str | os.PathLike[str],
    layout: Layout | str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: SampleOptions | None = None,
) -> SampleResult:
    from cloudclear.catalog import Catalog

    t0 = time.perf_counter()
    opts = options or SampleOptions()
    _check(opts)
    cat = catalog if isinstance(catalog, Catalog) else Catalog.open(catalog)
    lay = layout if isinstance(layout, Layout) else load_layout(str(layout))
    if opts.simulate:
        lay = lay.simulate(opts.simulate)
    if not opts.s1:
        lay = lay.without_s1()
    elif opts.s1_max_gap is not None:
        lay = lay.with_s1_gap(opts.s1_max_gap)
    out_path = Path(out).expanduser().resolve()
    if out_path.exists() and not opts.overwrite:
        raise OutputExistsError(f"{out_path}: exists; pass --overwrite to replace it")
    if out_path.exists() and not out_path.is_dir():
        raise OutputExistsError(f"{out_path}: exists and is a file, not a patch store; refusing to replace it")
    if out_path.exists() and not (out_path / "store.json").exists() and any(out_path.iterdir()):
        raise OutputExistsError(f"{out_path}: exists and is not a patch store; refusing to replace it")
    if any(s.sensor == "DEM" for s in lay.slots) and not opts.dem:
        dem_slot = next(s.name for s in lay.slots if s.sensor == "DEM")
        raise LayoutError(f"{lay.source}: slot {dem_slot!r} is a DEM slot; give the DEM raster with --dem FILE")
    if opts.dem and not Path(opts.dem).is_file():
        raise SampleError(f"{opts.dem}: no such DEM file")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(out_path.parent, f".{out_path.name}.partial-*", _PARTIAL)

    patch = opts.patch_size
    stride = opts.stride or patch
    start = parse_time(opts.start, end_of_day=False, error=SampleError) if opts.start else None
    end = parse_time(opts.end, end_of_day=True, error=SampleError) if opts.end else None
    groups, bands = cand_mod.s2_groups(cat, list(opts.bands) if opts.bands else None, opts.tile, start, end)
    max_gap = max(
        [s.s1_max_gap or 0.0 for s in lay.s2_slots]
        + [max(map(abs, s.window)) for s in lay.slots if s.sensor == "S1" and s.window]
        + [0.0]
    )
    cands: list[Candidates] = []
    for g in groups:
        cand_mod.locate(g, patch, stride)
        cand_mod.attach_s1(g, cat, max_gap)
        refs = np.ones(len(g.scenes), bool)
        if start is not None:
            refs &= g.times >= cand_mod.epoch_seconds(start)
        if end is not None:
            refs &= g.times <= cand_mod.epoch_seconds(end)
        cands.append(cand_mod.candidates(cat, g, lay, refs))
    n_feasible = int(sum(c.feasible.sum() for c in cands))
    n_loc = sum(c.group.n_locations for c in cands)
    if n_feasible == 0:
        raise SampleError(f"layout {lay.name} on {cat.path}: {cand_mod.explain(cands, lay, patch, cat, bands)}")
    splits = assign_splits(cands, patch, opts.block, opts.fractions, opts.seed, opts.block_days)
    order = draw_order(cands, splits, opts.seed, opts.seasonal)
    if not order:
        raise SampleError(
            f"layout {lay.name} on {cat.path}: every candidate patch straddles two split blocks; "
            f"use a larger --block or a --stride that divides the block"
        )

    specs = array_specs(lay, bands, opts.s1_bands, patch)
    policy = cat.policy if opts.policy is None else opts.policy
    ctx = SampleReader(cat, lay, cands, splits, opts, bands, policy)
    # The store is written beside its final name and renamed when complete: a failure (disk
    # full, an unreadable scene, Ctrl-C) leaves no partial store and an existing one untouched.
    with atomic_output(out_path, overwrite=True, what="patch store") as tmp:
        writer = StoreWriter(tmp, specs)
        rows: list[dict[str, Any]] = []
        geoms: list[Any] = []
        rejected: Counter[str] = Counter()
        per_loc: Counter[tuple[Any, ...]] = Counter()
        by_split: Counter[str] = Counter()
        by_season: Counter[str] = Counter()
        bar = None
        if opts.progress:
            from tqdm import tqdm

            bar = tqdm(total=opts.count, unit="patch", desc=f"sample {lay.name}", leave=False)
        pool = ThreadPoolExecutor(max_workers=max(1, opts.workers), thread_name_prefix="cloudclear-sample")
        try:
            pos = 0
            seq = 0
            while len(writer) < opts.count and pos < len(order):
                batch: list[tuple[int, int, int, int, int]] = []
                pending: Counter[tuple[Any, ...]] = Counter()
                while pos < len(order) and len(batch) < BATCH:
                    gi, r, loc, sp = order[pos]
                    pos += 1
                    if (
                        opts.per_location is not None
                        and per_loc[ctx.place(gi, loc)] + pending[ctx.place(gi, loc)] >= opts.per_location
                    ):
                        continue
                    if not _inside_unit(ctx, gi, r, loc, sp):
                        rejected["acquisitions reach another split's dates"] += 1
                        continue
                    pending[ctx.place(gi, loc)] += 1
                    batch.append((seq, gi, r, loc, sp))
                    seq += 1
                results = list(pool.map(safe_build(ctx), batch))
                for task, res in zip(batch, results, strict=True):
                    if len(writer) >= opts.count:
                        break
                    _, gi, r, loc, sp = task
                    if isinstance(res, str):
                        rejected[res] += 1
                        continue
                    if opts.per_location is not None and per_loc[ctx.place(gi, loc)] >= opts.per_location:
                        continue
                    blobs, hours, meta = res
                    writer.append(blobs, sp, hours)
                    per_loc[ctx.place(gi, loc)] += 1
                    g = ctx.cands[gi].group
                    season = SEASONS[int(season_of(np.array([g.times[r]]))[0])]
                    by_split[SPLITS[sp]] += 1
                    by_season[season] += 1
                    rows.append(_row(len(rows), g, r, loc, sp, season, meta, patch))
                    geoms.append(g.lonlat[loc])
                    if bar is not None:
                        bar.update(1)
            if len(writer) == 0:
                top = ", ".join(f"{k} ({v})" for k, v in rejected.most_common(3))
                raise SampleError(
                    f"layout {lay.name} on {cat.path}: {n_feasible} candidate patches, "
                    f"none passed the exact checks: {top}"
                )
            notes = _policy_notes(policy, cat.policy, rows)
            stand_ins = _stand_ins(cand_mod.stand_ins_of(groups, bands), rows, sum(len(g.scenes) for g in groups))
            notes += [u["note"] for u in stand_ins.values()]
            if len(writer) < opts.count:
                notes.append(f"{len(writer)} of the {opts.count} samples asked for satisfy the layout")
            for k, name in enumerate(SPLITS):
                if opts.fractions[k] > 0 and not by_split[name]:
                    if splits.candidates and splits.candidates[k] == 0:
                        notes.append(f"split {name} is empty: no block holds a candidate for it; use a smaller --block")
                    else:
                        notes.append(f"split {name} is empty: its candidates were not reached; raise --count")
            manifest = _manifest(lay, bands, opts, cat, len(writer), dict(by_split), splits, policy)
            # "stand_ins" as a network card has it (band -> the band read in its place); the counts apart.
            manifest["stand_ins"] = {b: u["band"] for b, u in stand_ins.items()}
            manifest["stand_ins_used"] = {b: {k: u[k] for k in ("scenes", "samples")} for b, u in stand_ins.items()}
            import geopandas as gpd

            frame = gpd.GeoDataFrame(rows, geometry=geoms, crs="EPSG:4326")
            writer.commit(manifest, frame)
        except BaseException:
            writer.abort()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            ctx.close()
            if bar is not None:
                bar.close()
    size = sum(p.stat().st_size for p in out_path.iterdir())
    return SampleResult(
        path=out_path,
        layout=lay.name,
        count=len(rows),
        requested=opts.count,
        by_split={k: by_split.get(k, 0) for k in SPLITS},
        by_season={k: by_season[k] for k in SEASONS if by_season[k]},
        candidates=n_feasible,
        locations=n_loc,
        rejected=dict(rejected),
        bytes=size,
        seconds=time.perf_counter() - t0,
        notes=tuple(notes),
        stand_ins={b: u["band"] for b, u in stand_ins.items()},
    )


#: Suffix of the samples-table columns holding, per S2 slot, the pixels the clear policy removed
#: beyond the mask in the slot's patch (written where the policy changes the mask's classes).
REMOVED_SUFFIX = "_policy_removed_px"
#: Suffix of the columns holding, per S2 slot, the pixels the policy's temporal test removed
#: beyond those (written where the policy has the temporal test).
TEMPORAL_SUFFIX = "_temporal_removed_px"


def _policy_notes(
    policy: masks.ClearPolicy, catalog_policy: masks.ClearPolicy, rows: list[dict[str, Any]]
) -> list[str]:
    """The note lines that say what the clear policy did (none when it keeps the masks as decoded)."""
    notes = []
    if not policy.changes_nothing:
        temporal = _total(rows, TEMPORAL_SUFFIX)
        line = f"clear policy ({policy.describe()}): {_total(rows, REMOVED_SUFFIX) + temporal} px the masks call clear"
        line += " counted as obscured in the stored S2 patches"
        if policy.temporal:
            line += f", {temporal} px of them by the temporal test"
        notes.append(line)
    if policy != catalog_policy:
        notes.append(
            f"the catalog's cloud cells count another clear policy ({catalog_policy.describe()}): candidates "
            f"were chosen by them, each patch checked with this one; re-index with the same options to match"
        )
    return notes


def _stand_ins(used: dict[str, tuple[str, int]], rows: list[dict[str, Any]], n_scenes: int) -> dict[str, Any]:
    """Per band read through a stand-in: the band, the scenes and samples read so, and a note."""
    out: dict[str, Any] = {}
    for b, (r, scenes) in used.items():
        tag = f"{r}>{b}"
        n = sum(any(tag in str(v).split(",") for k, v in row.items() if k.endswith("_stand_ins")) for row in rows)
        out[b] = {
            "band": r,
            "scenes": scenes,
            "samples": n,
            "note": f"{r} read in place of {b} from the {scenes} of {n_scenes} S2 scenes that lack {b} "
            f"(in {n} of the {len(rows)} samples)",
        }
    return out


def _total(rows: list[dict[str, Any]], suffix: str) -> int:
    """The sum of the samples table's columns ending in ``suffix`` (every slot, every sample)."""
    return sum(int(v) for r in rows for k, v in r.items() if k.endswith(suffix) and v is not None)


def _inside_unit(ctx: SampleReader, gi: int, r: int, loc: int, sp: int) -> bool:
    """With date blocks: every acquisition the sample may use lies in a unit of the same split."""
    if ctx.splits.block_days is None:
        return True
    c = ctx.cands[gi]
    g = c.group
    times = [float(g.times[r])]
    for s in ctx.layout.s2_slots:
        if s.name == ctx.layout.reference:
            continue
        if s.nth is not None:
            j = int(c.nth[s.name][r, loc])
            times.append(float(g.times[j]))
        else:
            m = c.members[s.name][r]
            m = m[c.ok[s.name][m, loc]] if len(m) else m
            times += [float(t) for t in g.times[m]]
    return all(ctx.splits.split_of(gi, loc, t) == sp for t in times)


def _row(i: int, g: Group, r: int, loc: int, sp: int, season: str, meta: dict[str, Any], patch: int) -> dict[str, Any]:
    a, _, c, _, e, f = g.grid.transform
    r0, c0 = int(g.r0[loc]), int(g.c0[loc])
    crs, _ = crs_label(g.grid.crs)
    return {
        "sample_id": i,
        "split": SPLITS[sp],
        "season": season,
        "tile": g.tile,
        "crs": crs,
        "row": r0,
        "col": c0,
        "left": c + a * c0,
        "top": f + e * r0,
        "right": c + a * (c0 + patch),
        "bottom": f + e * (r0 + patch),
        "datetime": datetime.fromtimestamp(float(g.times[r]), timezone.utc).isoformat(),
        **meta,
    }


def _manifest(
    lay: Layout,
    bands: list[str],
    opts: SampleOptions,
    cat: Catalog,
    n: int,
    by_split: dict[str, int],
    splits: Splits,
    policy: masks.ClearPolicy,
) -> dict[str, Any]:
    import dataclasses

    from cloudclear.sampling.store import ENCODINGS

    return {
        "count": n,
        "layout": lay.to_dict(),
        "layout_toml": lay.to_toml(),
        "patch_size": opts.patch_size,
        "bands": bands,
        "s1_bands": list(opts.s1_bands),
        "encodings": ENCODINGS,
        "compression": f"byte-shuffle + zlib level {opts.compression}",
        "splits": {k: by_split.get(k, 0) for k in SPLITS},
        "options": {
            "stride": opts.stride or opts.patch_size,
            "fractions": list(opts.fractions),
            "block": opts.block,
            "block_days": opts.block_days,
            "per_location": opts.per_location,
            "seasonal": opts.seasonal,
            "simulate": list(opts.simulate),
            "s1": opts.s1,
            "s1_max_gap": opts.s1_max_gap,
            "tile": opts.tile,
            "start": opts.start,
            "end": opts.end,
            "seed": opts.seed,
            "dem": opts.dem,
        },
        "catalog": str(cat.path),
        "catalog_generation": cat.meta.get("generation"),
        "clear_policy": dataclasses.asdict(policy),
        "cloudclear": __version__,
    }
