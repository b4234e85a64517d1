"""``cloudclear sample``: catalog x layout -> a patch store.

The steps: group the catalog's S2 scenes by grid and lay patch locations over each grid; for every
reference scene and location, find from the per-cell cloud grids and the rtree whether every slot
has a candidate; split locations by blocks; draw (reference, location) pairs in the strategy's
order; read each drawn sample's patches, check the exact cloud cover and validity, paste real masks
on simulated slots, compress, and append to the store. Reading runs in a few threads (GDAL and zlib
release the GIL); samples are committed in draw order, so the same seed gives the same store.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cloudclear import __version__, masks
from cloudclear._tempfiles import remove_orphans
from cloudclear.acquisitions import cloud_of, number
from cloudclear.catalog import crs_label, parse_time
from cloudclear.errors import InvalidRasterError, LayoutError, OutputExistsError, SampleError
from cloudclear.gridio import Grid, GridReader
from cloudclear.layouts import Layout, LayoutSlot, load_layout
from cloudclear.sampling import candidates as cand_mod
from cloudclear.sampling.candidates import Candidates, Group
from cloudclear.sampling.draw import SEASONS, Splits, assign_splits, draw_order, season_of
from cloudclear.sampling.store import SPLITS, ArraySpec, StoreWriter, encode_values, pack
from cloudclear.scenes import valid_pixels

log = logging.getLogger(__name__)

#: Samples read ahead and committed together; fixed so the store does not depend on the thread count.
BATCH = 16
#: Candidate acquisitions tried per slot before a sample is given up.
TRIES = 6
#: Masks drawn per simulated slot before a sample is given up.
PASTE_TRIES = 20


def _cached_files() -> int:
    """Open files kept per reading thread: a long series revisits the same few hundred files, and
    opening one costs about 1 ms; bounded by a quarter of the process's file limit."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 16
    except (ImportError, ValueError, OSError):
        soft = 1024
    return int(max(16, min(512, soft // 16)))


CACHED_FILES = _cached_files()
#: Least share of valid S1 / DEM pixels in a patch.
MIN_VALID = 0.99
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
        notes: things the user should know (fewer samples than asked, a split left empty...).
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
        }


# ---------------------------------------------------------------------------------------------
# Reading patches


class _Readers(threading.local):
    """Per-thread open files (GDAL handles are not shared between threads), most recent kept."""

    def __init__(self) -> None:
        self.cache: dict[tuple[Any, ...], GridReader] = {}

    def get(self, path: str, indexes: tuple[int, ...], grid: Grid, resampling: str, nodata: float | None) -> GridReader:
        key = (path, indexes, grid, resampling, nodata)
        r = self.cache.pop(key, None)
        if r is None:
            r = GridReader(path, list(indexes), grid, resampling, nodata)
            while len(self.cache) >= CACHED_FILES:
                self.cache.pop(next(iter(self.cache))).close()
        self.cache[key] = r
        return r

    def close(self) -> None:
        for r in self.cache.values():
            r.close()
        self.cache.clear()


@dataclass
class _S2Patch:
    values: np.ndarray  # (bands, P, P) float32 reflectance
    valid: np.ndarray  # (P, P) bool
    cls: np.ndarray  # (P, P) uint8 MaskClass
    cloud: float | None  # % obscured among known pixels


class _Context:
    """What the reading threads share (read-only): catalog, layout, groups, candidates, splits."""

    def __init__(
        self,
        catalog: Any,
        layout: Layout,
        cands: list[Candidates],
        splits: Splits,
        opts: SampleOptions,
        bands: list[str],
    ):
        self.catalog = catalog
        self.layout = layout
        self.cands = {c.group.index: c for c in cands}
        self.splits = splits
        self.opts = opts
        self.bands = bands
        self.patch = opts.patch_size
        self.readers: list[_Readers] = []
        self.local = threading.local()
        self.pools = {s.name: self._pool(s) for s in layout.s2_slots if s.simulated}
        self._paths: dict[str, str] = {}

    def resolve(self, rel: str) -> str:
        """A catalog path made absolute, memoised (Path.resolve stats every component)."""
        out = self._paths.get(rel)
        if out is None:
            out = self._paths[rel] = str(self.catalog.resolve(rel))
        return out

    def place(self, gi: int, loc: int) -> tuple[Any, ...]:
        """A patch's ground location: CRS and origin (grids of one place share it), for --per-location."""
        g = self.cands[gi].group
        a, _, c, _, e, f = g.grid.transform
        x, y = c + a * float(g.c0[loc]), f + e * float(g.r0[loc])
        return (g.grid.crs, round(x, 1), round(y, 1), round(a * self.patch, 1))

    def reader(self) -> _Readers:
        r = getattr(self.local, "r", None)
        if r is None:
            r = self.local.r = _Readers()
            self.readers.append(r)
        return r

    def close(self) -> None:
        for r in self.readers:
            r.close()

    # -- candidate masks to paste -----------------------------------------------------------

    def _pool(self, slot: LayoutSlot) -> dict[int, np.ndarray]:
        """Per split, (group, scene, location) rows whose mask could give the slot's cover when pasted."""
        lo_need = max(0.0, slot.cloud[0] - slot.truth_cloud)
        hi_need = slot.cloud[1]
        per_split: dict[int, list[np.ndarray]] = {}
        for c in self.cands.values():
            g = c.group
            has_mask = ~np.isnan(g.cloud_lo)
            ok = g.valid & has_mask & (g.cloud_hi >= lo_need - 1e-6) & (g.cloud_lo <= hi_need + 1e-6)
            js, locs = np.nonzero(ok)
            if not len(js):
                continue
            split_of = self.splits.split_of
            sp = np.array([split_of(g.index, int(q), float(g.times[j])) for j, q in zip(js, locs, strict=True)])
            for k in np.unique(sp[sp >= 0]):
                sel = sp == k
                rows = np.stack([np.full(int(sel.sum()), g.index), js[sel], locs[sel]], axis=1)
                per_split.setdefault(int(k), []).append(rows)
        return {k: np.concatenate(v) for k, v in per_split.items()}

    # -- reading ----------------------------------------------------------------------------

    def _read_bands(
        self, g: Group, row: Any, names: Sequence[str], loc: int, nodata: float | None
    ) -> np.ndarray | None:
        """Bands of a record at a location on the group's grid, one read per file (the file's
        dtype); None when the record lacks one of them."""
        band_files = json.loads(row["band_files"])
        if any(b not in band_files for b in names):
            return None
        r0, c0 = int(g.r0[loc]), int(g.c0[loc])
        by_file: dict[str, list[tuple[int, int]]] = {}
        for pos, b in enumerate(names):
            rel, bidx = band_files[b]
            by_file.setdefault(self.resolve(rel), []).append((pos, int(bidx)))
        readers = self.reader()
        values = None
        # Bands sharing a file (a stack, VV + VH) are read in one call: each block is decoded once.
        for path, items in by_file.items():
            rd = readers.get(path, tuple(b for _, b in items), g.grid, "bilinear", nodata)
            data = rd.read_window(r0, r0 + self.patch, c0, c0 + self.patch)
            if values is None:
                values = np.empty((len(names), self.patch, self.patch), data.dtype)
            for (pos, _), d in zip(items, data, strict=True):
                values[pos] = d
        return values

    def _read_mask(self, g: Group, row: Any, loc: int) -> np.ndarray | None:
        """A record's mask at a location as MaskClass codes; None when it has no mask."""
        if not (isinstance(row["mask_file"], str) and row["mask_file"]):
            return None
        r0, c0 = int(g.r0[loc]), int(g.c0[loc])
        mb = int(row["mask_band"])
        mr = self.reader().get(self.resolve(row["mask_file"]), (mb,), g.grid, "nearest", None)
        raw = mr.read_window(r0, r0 + self.patch, c0, c0 + self.patch)[0]
        return masks.decode(raw, str(row["mask_source"]), mr.nodatavals[mb - 1]).astype(np.uint8)

    def read_s2(self, g: Group, j: int, loc: int) -> _S2Patch:
        row = g.rows[j]
        nodata = number(row, "nodata")
        nodata = 0.0 if nodata is None else nodata
        values = self._read_bands(g, row, self.bands, loc, nodata)
        assert values is not None  # s2_groups kept only scenes with every band
        valid = valid_pixels(values, nodata, "S2").all(axis=0)
        scale, offset = number(row, "scale"), number(row, "offset")
        refl = values.astype(np.float32) * np.float32(1.0 if scale is None else scale) + np.float32(offset or 0.0)
        cls = self._read_mask(g, row, loc)
        if cls is None:
            cls = np.where(valid, masks.MaskClass.CLEAR, masks.MaskClass.NODATA).astype(np.uint8)
            return _S2Patch(refl, valid, cls, None)
        cls[~valid] = masks.MaskClass.NODATA
        known = cls != masks.MaskClass.NODATA
        nk = int(known.sum())
        cloud = 100.0 * float((known & np.isin(cls, masks.OBSCURED)).sum()) / nk if nk else None
        return _S2Patch(refl, valid, cls, cloud)

    def read_s1(self, g: Group, k: int, loc: int) -> np.ndarray | None:
        """S1 patch in dB (bands, P, P), NaN where nodata; None when the scene lacks a band."""
        row = self.catalog.scenes.iloc[int(g.s1_pos[k])]
        nodata = number(row, "nodata")
        raw = self._read_bands(g, row, self.opts.s1_bands, loc, nodata)
        if raw is None:
            return None
        out = raw.astype(np.float32)
        bad = ~np.isfinite(out)
        if nodata is not None and not np.isnan(nodata):
            bad |= out == nodata
        scale, offset = number(row, "scale"), number(row, "offset")
        out = out * np.float32(1.0 if scale is None else scale) + np.float32(offset or 0.0)
        if str(row["units"]).lower() == "linear":
            with np.errstate(divide="ignore", invalid="ignore"):
                out = 10.0 * np.log10(np.maximum(out, 1e-6))
        out[bad] = np.nan
        return out

    def read_dem(self, g: Group, loc: int) -> np.ndarray:
        assert self.opts.dem is not None
        r0, c0 = int(g.r0[loc]), int(g.c0[loc])
        rd = self.reader().get(self.opts.dem, (1,), g.grid, "bilinear", None)
        data = rd.read_window(r0, r0 + self.patch, c0, c0 + self.patch)[0].astype(np.float32)
        nd = rd.nodatavals[0]
        if nd is not None:
            data[data == nd] = np.nan
        return data

    # -- one sample ---------------------------------------------------------------------------

    def _ordered(
        self, g: Group, c: Candidates, slot: LayoutSlot, ref: int, loc: int, rng: np.random.Generator
    ) -> list[int]:
        if slot.name == self.layout.reference:
            return [ref]
        if slot.nth is not None:
            j = int(c.nth[slot.name][ref, loc])
            return [j] if j >= 0 else []
        m = c.members[slot.name][ref]
        m = m[c.ok[slot.name][m, loc]] if len(m) else m
        if not len(m):
            return []
        dt = np.abs(g.times[m] - g.times[ref])
        cl = np.nan_to_num((g.cloud_lo[m, loc] + g.cloud_hi[m, loc]) / 2.0, nan=101.0)
        if slot.pick == "random":
            return [int(x) for x in m[rng.permutation(len(m))]]
        keys = (m, cl, dt) if slot.pick == "nearest" else (m, dt, cl)
        return [int(x) for x in m[np.lexsort(keys)]]

    def _s1_for(self, g: Group, t: float, lo: float, hi: float, loc: int) -> list[int]:
        """S1 scenes covering the patch between ``lo`` and ``hi`` hours from ``t``, nearest first."""
        if len(g.s1_pos) == 0:
            return []
        dt = (g.s1_times - t) / 3600.0
        ks = np.flatnonzero((dt >= lo - 1e-6) & (dt <= hi + 1e-6) & g.s1_cover[:, loc])
        return [int(k) for k in ks[np.lexsort((ks, np.abs(dt[ks])))]]

    def _first_s1(self, g: Group, ks: list[int], loc: int) -> tuple[int, np.ndarray] | None:
        for k in ks[:TRIES]:
            data = self.read_s1(g, k, loc)
            if data is not None and np.isfinite(data).all(axis=0).mean() >= MIN_VALID:
                return k, data
        return None

    def build(self, task: tuple[int, int, int, int, int]) -> tuple[list[np.ndarray], list[float], dict[str, Any]] | str:
        """Read one sample; the arrays (in spec order), hours per slot and its metadata, or why not."""
        seq, gi, ref, loc, split = task
        c = self.cands[gi]
        g = c.group
        rng = np.random.default_rng([self.opts.seed, 3, seq])
        t_ref = float(g.times[ref])
        used: set[int] = set()
        arrays: list[np.ndarray] = []
        hours: list[float] = []
        meta: dict[str, Any] = {}
        for slot in self.layout.slots:
            if slot.sensor == "DEM":
                dem = self.read_dem(g, loc)
                if np.isfinite(dem).mean() < MIN_VALID:
                    return "DEM nodata"
                arrays.append(encode_values(dem[None], np.isfinite(dem), "DEM"))
                hours.append(0.0)
                continue
            if slot.sensor == "S1":
                assert slot.window is not None
                got = self._first_s1(g, self._s1_for(g, t_ref, slot.window[0], slot.window[1], loc), loc)
                if got is None:
                    return f"slot {slot.name}: S1 nodata"
                k, data = got
                arrays.append(encode_values(data, np.isfinite(data).all(axis=0), "S1"))
                hours.append((float(g.s1_times[k]) - t_ref) / 3600.0)
                self._meta_s1(meta, slot.name, g, k, t_ref)
                continue
            chosen = None
            why = "no candidate left"
            lim = (0.0, slot.truth_cloud) if slot.simulated else slot.cloud
            for j in [x for x in self._ordered(g, c, slot, ref, loc, rng) if x not in used][:TRIES]:
                p = self.read_s2(g, j, loc)
                if not p.valid.all():
                    why = "nodata pixels in the patch"
                    continue
                if p.cloud is None:
                    if not (lim[0] <= 0.0 and lim[1] >= 100.0):
                        why = "no mask"
                        continue
                elif not lim[0] - 1e-9 <= p.cloud <= lim[1] + 1e-9:
                    why = f"exact cloud outside [{lim[0]:g}, {lim[1]:g}] % (cell statistics are rounded or coarser)"
                    continue
                s1 = None
                if slot.s1_max_gap is not None:
                    s1 = self._first_s1(
                        g, self._s1_for(g, float(g.times[j]), -slot.s1_max_gap, slot.s1_max_gap, loc), loc
                    )
                    if s1 is None:
                        why = "S1 nodata in the patch"
                        continue
                chosen = (j, p, s1)
                break
            if chosen is None:
                return f"slot {slot.name}: {why}"
            j, p, s1 = chosen
            used.add(j)
            row = g.rows[j]
            arrays.append(encode_values(p.values, p.valid, "S2"))
            arrays.append(p.cls)
            cover = p.cloud
            extra: dict[str, Any] = {}
            if slot.simulated:
                pasted = self._paste(slot, g, j, loc, split, p, rng)
                if pasted is None:
                    return f"slot {slot.name}: no mask to paste gives cloud in [{slot.cloud[0]:g}, {slot.cloud[1]:g}] %"
                gap, cover, source = pasted
                arrays.append(gap.astype(np.uint8))
                extra[f"{slot.name}_gap_source"] = source
                extra[f"{slot.name}_gap_pct"] = round(100.0 * float(gap.mean()), 3)
            if s1 is not None:
                k, data = s1
                arrays.append(encode_values(data, np.isfinite(data).all(axis=0), "S1"))
                self._meta_s1(extra, slot.name, g, k, float(g.times[j]))
            hours.append((float(g.times[j]) - t_ref) / 3600.0)
            meta[f"{slot.name}_scene"] = str(row["scene_id"])
            meta[f"{slot.name}_datetime"] = datetime.fromtimestamp(float(g.times[j]), timezone.utc).isoformat()
            meta[f"{slot.name}_hours"] = round((float(g.times[j]) - t_ref) / 3600.0, 3)
            meta[f"{slot.name}_cloud_pct"] = None if cover is None else round(cover, 4)
            cat_cloud = cloud_of(row)
            meta[f"{slot.name}_scene_cloud_pct"] = None if cat_cloud is None else round(cat_cloud, 3)
            meta[f"{slot.name}_files"] = json.dumps([self.resolve(p) for p in json.loads(row["files"])])
            meta.update(extra)
        return arrays, hours, meta

    def _paste(
        self, slot: LayoutSlot, g: Group, j: int, loc: int, split: int, p: _S2Patch, rng: np.random.Generator
    ) -> tuple[np.ndarray, float, str] | None:
        pool = self.pools[slot.name].get(split)
        if pool is None or not len(pool):
            return None
        own = np.isin(p.cls, masks.OBSCURED)
        known = p.cls != masks.MaskClass.NODATA
        for _ in range(PASTE_TRIES):
            g2, j2, l2 = (int(v) for v in pool[int(rng.integers(len(pool)))])
            if g2 == g.index and j2 == j:
                continue  # another date or another place, never the acquisition itself
            other = self.cands[g2].group
            src = self.read_s2_mask(other, j2, l2)
            if src is None:
                continue
            pasted = np.isin(src, masks.OBSCURED)
            cover = 100.0 * float(((own | pasted) & known).sum()) / max(int(known.sum()), 1)
            if slot.cloud[0] - 1e-9 <= cover <= slot.cloud[1] + 1e-9:
                row = other.rows[j2]
                return pasted, cover, f"{row['scene_id']}@{int(other.r0[l2])},{int(other.c0[l2])}"
        return None

    def read_s2_mask(self, g: Group, j: int, loc: int) -> np.ndarray | None:
        """A mask to paste: None when the record has none or it has nodata in the patch."""
        cls = self._read_mask(g, g.rows[j], loc)
        return None if cls is None or (cls == masks.MaskClass.NODATA).any() else cls

    def _meta_s1(self, meta: dict[str, Any], name: str, g: Group, k: int, t: float) -> None:
        row = self.catalog.scenes.iloc[int(g.s1_pos[k])]
        key = name if self.layout.slot(name).sensor == "S1" else f"{name}_s1"
        meta[f"{key}_scene"] = str(row["scene_id"])
        meta[f"{key}_gap_h" if key != name else f"{key}_hours"] = round((float(g.s1_times[k]) - t) / 3600.0, 3)
        meta[f"{key}_files"] = json.dumps([self.resolve(p) for p in json.loads(row["files"])])


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
    catalog: Any,
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
    """
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
        refs = np.ones(len(g.rows), bool)
        if start is not None:
            refs &= g.times >= cand_mod.epoch_seconds(start)
        if end is not None:
            refs &= g.times <= cand_mod.epoch_seconds(end)
        cands.append(cand_mod.candidates(cat, g, lay, refs))
    n_feasible = int(sum(c.feasible.sum() for c in cands))
    n_loc = sum(c.group.n_locations for c in cands)
    if n_feasible == 0:
        raise SampleError(f"layout {lay.name} on {cat.path}: {cand_mod.explain(cands, lay, patch, cat)}")
    splits = assign_splits(cands, patch, opts.block, opts.fractions, opts.seed, opts.block_days)
    order = draw_order(cands, splits, opts.seed, opts.seasonal)
    if not order:
        raise SampleError(
            f"layout {lay.name} on {cat.path}: every candidate patch straddles two split blocks; "
            f"use a larger --block or a --stride that divides the block"
        )

    specs = array_specs(lay, bands, opts.s1_bands, patch)
    ctx = _Context(cat, lay, cands, splits, opts, bands)
    tmp = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
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
            results = list(pool.map(_safe_build(ctx), batch))
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
                f"layout {lay.name} on {cat.path}: {n_feasible} candidate patches, none passed the exact checks: {top}"
            )
        notes = []
        if len(writer) < opts.count:
            notes.append(f"{len(writer)} of the {opts.count} samples asked for satisfy the layout")
        for k, name in enumerate(SPLITS):
            if opts.fractions[k] > 0 and not by_split[name]:
                if splits.candidates and splits.candidates[k] == 0:
                    notes.append(f"split {name} is empty: no block holds a candidate for it; use a smaller --block")
                else:
                    notes.append(f"split {name} is empty: its candidates were not reached; raise --count")
        manifest = _manifest(lay, bands, opts, cat, len(writer), dict(by_split), splits)
        import geopandas as gpd

        frame = gpd.GeoDataFrame(rows, geometry=geoms, crs="EPSG:4326")
        writer.commit(manifest, frame)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        ctx.close()
        if bar is not None:
            bar.close()
    _replace(tmp, out_path)
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
    )


def _safe_build(ctx: _Context) -> Any:
    def run(task: tuple[int, int, int, int, int]) -> Any:
        try:
            res = ctx.build(task)
            if isinstance(res, str):
                return res
            arrays, hours, meta = res
            # Compressing here, in the reading threads, overlaps it with the other threads' reads
            # (zlib releases the GIL).
            return [pack(a, ctx.opts.compression) for a in arrays], hours, meta
        except InvalidRasterError:
            raise
        except Exception as exc:  # noqa: BLE001 - one unreadable window costs one sample, not the run
            gi, r = task[1], task[2]
            row = ctx.cands[gi].group.rows[r]
            raise InvalidRasterError(f"scene {row['scene_id']}: cannot read a patch ({exc})") from exc

    return run


def _inside_unit(ctx: _Context, gi: int, r: int, loc: int, sp: int) -> bool:
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
    lay: Layout, bands: list[str], opts: SampleOptions, cat: Any, n: int, by_split: dict[str, int], splits: Splits
) -> dict[str, Any]:
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
        "cloudclear": __version__,
    }


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
