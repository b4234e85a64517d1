"""Reading one sample's patches: the acquisitions of each slot at a location, checked and encoded.

A :class:`SampleReader` is shared (read-only) by the sampling threads; each thread keeps its own
open files. For every slot it tries the candidate acquisitions in the slot's order, checks the
exact cloud cover and validity of the patch (the catalog's cells only bound them), pastes a real
mask on simulated slots, and returns the arrays in store order with their metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudclear import masks
from cloudclear.detect import temporal
from cloudclear.errors import CloudClearError, InvalidRasterError
from cloudclear.gridio import Grid, GridReader, missing_file
from cloudclear.layouts import Layout, LayoutSlot
from cloudclear.sampling.candidates import Candidates, Group
from cloudclear.sampling.draw import Splits
from cloudclear.sampling.store import encode_values, pack
from cloudclear.scenes import Scene
from cloudclear.scenes.reader import ReadSpec, SceneReader

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog
    from cloudclear.sampling.build import SampleOptions

#: Candidate acquisitions tried per slot before a sample is given up.
TRIES = 6
#: Masks drawn per simulated slot before a sample is given up.
PASTE_TRIES = 20
#: Other S2 scenes of the grid the temporal test compares a slot's patch with, at most: the
#: nearest in time within the policy's ``temporal_days`` (each is one more patch read).
TEMPORAL_NEIGHBOURS = 8


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


class _Readers(threading.local):
    """Per-thread open files (GDAL handles are not shared between threads), most recent kept."""

    def __init__(self, catalog_path: Path | None = None) -> None:
        self.cache: dict[tuple[Any, ...], GridReader] = {}
        self.catalog_path = catalog_path

    def get(
        self,
        path: str,
        indexes: tuple[int, ...],
        grid: Grid,
        resampling: str,
        nodata: float | None,
        *,
        coverage: bool = False,
    ) -> GridReader:
        """An open reader of ``path``'s bands on ``grid`` (a :class:`~cloudclear.scenes.reader.Opener`)."""
        key = (path, indexes, grid, resampling, nodata, coverage)
        r = self.cache.pop(key, None)
        if r is None:
            if not os.path.exists(path):
                raise missing_file(path, self.catalog_path)
            r = GridReader(path, list(indexes), grid, resampling, nodata, coverage=coverage)
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
    removed: int | None  # pixels the mask calls clear that the policy obscures; None: mask as decoded
    temporal_removed: int | None = None  # of the rest, pixels the temporal test obscures; None: not run


class SampleReader:
    """What the reading threads share (read-only): catalog, layout, groups, candidates, splits."""

    def __init__(
        self,
        catalog: Catalog,
        layout: Layout,
        cands: list[Candidates],
        splits: Splits,
        opts: SampleOptions,
        bands: list[str],
        policy: masks.ClearPolicy = masks.DEFAULT_POLICY,
    ):
        self.catalog = catalog
        self.policy = policy
        self.layout = layout
        self.cands = {c.group.index: c for c in cands}
        self.splits = splits
        self.opts = opts
        self.bands = bands
        self.patch = opts.patch_size
        self.readers: list[_Readers] = []
        self.local = threading.local()
        self.pools = {s.name: self._pool(s) for s in layout.s2_slots if s.simulated}
        #: whether any scene is read with a stand-in band (then each S2 slot has a
        #: ``SLOT_stand_ins`` column: "B8A>B08" where the slot's scene was read so)
        self.stand_ins = any(r is not None and list(r) != list(bands) for c in cands for r in c.group.reads)

    def place(self, gi: int, loc: int) -> tuple[Any, ...]:
        """A patch's ground location: CRS and origin (grids of one place share it), for --per-location."""
        g = self.cands[gi].group
        a, _, c, _, e, f = g.grid.transform
        x, y = c + a * float(g.c0[loc]), f + e * float(g.r0[loc])
        return (g.grid.crs, round(x, 1), round(y, 1), round(a * self.patch, 1))

    def reader(self) -> _Readers:
        r = getattr(self.local, "r", None)
        if r is None:
            r = self.local.r = _Readers(self.catalog.path)
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

    def _scene(self, g: Group, scene: Scene, names: Sequence[str], mask: bool) -> SceneReader:
        """The one scene reader for ``names`` of a scene on the group's grid, on this thread's
        open files (bands sharing a file are read in one call: each block is decoded once), its
        mask under the sample's clear policy."""
        return SceneReader(ReadSpec.of(scene, names, mask=mask), g.grid, opener=self.reader().get, policy=self.policy)

    def _window(self, g: Group, loc: int) -> tuple[int, int, int, int]:
        r0, c0 = int(g.r0[loc]), int(g.c0[loc])
        return r0, r0 + self.patch, c0, c0 + self.patch

    def read_s2(self, g: Group, j: int, loc: int) -> _S2Patch:
        names = g.reads[j]
        assert names is not None  # only scenes with every band (or its stand-in) are valid
        px = self._scene(g, g.scenes[j], names, mask=True).read_window(*self._window(g, loc))
        removed = None if px.removed is None else int(px.removed.sum())
        return _S2Patch(px.physical(), px.valid, px.classes, px.cloud_pct, removed)

    def _patch(self, g: Group, j: int, loc: int, read: dict[int, _S2Patch]) -> _S2Patch:
        """:meth:`read_s2`, once per scene and sample: a slot's patch is also a neighbour the
        temporal test compares the other slots with (``read`` holds the sample's patches)."""
        got = read.get(j)
        if got is None:
            got = read[j] = self.read_s2(g, j, loc)
        return got

    def _neighbours(self, g: Group, j: int, loc: int) -> list[int]:
        """The other scenes of the grid the temporal test compares scene ``j`` with at ``loc``: within
        the policy's ``temporal_days`` (0: any), not fully cloudy there per the cells, those with
        data over the whole patch first, then the nearest in time, :data:`TEMPORAL_NEIGHBOURS` at most."""
        dt = np.abs(g.times - g.times[j]) / 86400.0
        ok = np.asarray(g.has_bands, bool).copy()
        ok[j] = False
        if self.policy.temporal_days > 0:
            ok &= dt <= self.policy.temporal_days + 0.5  # as temporal.temporal_test counts days
        ok &= ~(np.nan_to_num(g.cloud_lo[:, loc], nan=0.0) >= 100.0 - 1e-6)
        m = np.flatnonzero(ok)
        order = np.lexsort((m, dt[m], ~g.valid[m, loc]))
        return [int(x) for x in m[order][:TEMPORAL_NEIGHBOURS]]

    def _temporal(self, g: Group, j: int, loc: int, p: _S2Patch, read: dict[int, _S2Patch]) -> _S2Patch:
        """Slot patch ``p`` (scene ``j``) with the policy's temporal test applied against the grid's
        other scenes near it in time (:meth:`_neighbours`, read through the one scene reader;
        :func:`cloudclear.detect.temporal.temporal_test`): the
        pixels it flags, grown by the policy's buffer within the patch, count as cloud or shadow
        (a new patch; ``p`` and the other patches read are left as they are, so every date is
        compared with the masks' own decision). Needs a blue band among the sample's bands (NIR
        for the shadow test); without one, or with fewer than two other dates, nothing changes."""
        blue_k = next((self.bands.index(b) for b in temporal.TEMPORAL_BLUE_BANDS if b in self.bands), None)
        if blue_k is None:
            return p
        nir_k = next((self.bands.index(b) for b in temporal.TEMPORAL_NIR_BANDS if b in self.bands), None)
        dates = [p]
        for k in self._neighbours(g, j, loc):
            dates.append(self._patch(g, k, loc, read))
        if len(dates) <= temporal.TEMPORAL_MIN_OTHERS:
            return dataclasses.replace(p, temporal_removed=0)
        clear = np.stack([masks.is_clear(d.cls) for d in dates])
        blue = np.stack([d.values[blue_k] for d in dates])
        nir = None if nir_k is None else np.stack([d.values[nir_k] for d in dates])
        snow = np.stack([d.cls == masks.MaskClass.SNOW for d in dates]) & clear
        flags = temporal.temporal_test(blue, clear, nir, snow)  # every date lies in p's window
        cls, gone = temporal.temporal_classes(p.cls, flags.cloud[0], flags.shadow[0], self.policy.buffer_px)
        cloud = p.cloud
        if cloud is not None:
            known = int((cls != masks.MaskClass.NODATA).sum())
            cloud = 100.0 * float(masks.is_obscured(cls).sum()) / known if known else None
        return dataclasses.replace(p, cls=cls, cloud=cloud, temporal_removed=int(gone.sum()))

    def read_s1(self, g: Group, k: int, loc: int) -> np.ndarray | None:
        """S1 patch in dB (bands, P, P), NaN where nodata; None when the scene lacks a band."""
        scene = self.catalog[int(g.s1_pos[k])]
        if not scene.has_bands(self.opts.s1_bands):
            return None
        px = self._scene(g, scene, self.opts.s1_bands, mask=False).read_window(*self._window(g, loc))
        return px.physical(nan_invalid=True)

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
        read: dict[int, _S2Patch] = {}  # S2 patches read for this sample, by scene
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
                p = self._patch(g, j, loc, read)
                if not p.valid.all():
                    why = "nodata pixels in the patch"
                    continue
                if self.policy.temporal:
                    p = self._temporal(g, j, loc, p, read)
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
            scene = g.scenes[j]
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
            meta[f"{slot.name}_scene"] = scene.scene_id
            meta[f"{slot.name}_datetime"] = datetime.fromtimestamp(float(g.times[j]), timezone.utc).isoformat()
            meta[f"{slot.name}_hours"] = round((float(g.times[j]) - t_ref) / 3600.0, 3)
            meta[f"{slot.name}_cloud_pct"] = None if cover is None else round(cover, 4)
            cat_cloud = scene.cloud_pct
            meta[f"{slot.name}_scene_cloud_pct"] = None if cat_cloud is None else round(cat_cloud, 3)
            meta[f"{slot.name}_files"] = json.dumps(list(scene.files))
            if self.stand_ins:
                names = g.reads[j] or ()
                meta[f"{slot.name}_stand_ins"] = ",".join(
                    f"{r}>{b}" for b, r in zip(self.bands, names, strict=True) if b != r
                )
            if p.removed is not None:
                meta[f"{slot.name}_policy_removed_px"] = p.removed
            if self.policy.temporal:
                meta[f"{slot.name}_temporal_removed_px"] = p.temporal_removed
            meta.update(extra)
        return arrays, hours, meta

    def _paste(
        self, slot: LayoutSlot, g: Group, j: int, loc: int, split: int, p: _S2Patch, rng: np.random.Generator
    ) -> tuple[np.ndarray, float, str] | None:
        pool = self.pools[slot.name].get(split)
        if pool is None or not len(pool):
            return None
        own = masks.is_obscured(p.cls)
        known = p.cls != masks.MaskClass.NODATA
        for _ in range(PASTE_TRIES):
            g2, j2, l2 = (int(v) for v in pool[int(rng.integers(len(pool)))])
            if g2 == g.index and j2 == j:
                continue  # another date or another place, never the acquisition itself
            other = self.cands[g2].group
            src = self.read_s2_mask(other, j2, l2)
            if src is None:
                continue
            pasted = masks.is_obscured(src)
            cover = 100.0 * float(((own | pasted) & known).sum()) / max(int(known.sum()), 1)
            if slot.cloud[0] - 1e-9 <= cover <= slot.cloud[1] + 1e-9:
                return pasted, cover, f"{other.scenes[j2].scene_id}@{int(other.r0[l2])},{int(other.c0[l2])}"
        return None

    def read_s2_mask(self, g: Group, j: int, loc: int) -> np.ndarray | None:
        """A mask to paste: None when the scene has none or it has nodata in the patch."""
        cls = self._scene(g, g.scenes[j], (), mask=True).read_mask(*self._window(g, loc))
        return None if cls is None or (cls == masks.MaskClass.NODATA).any() else cls

    def _meta_s1(self, meta: dict[str, Any], name: str, g: Group, k: int, t: float) -> None:
        scene = self.catalog[int(g.s1_pos[k])]
        key = name if self.layout.slot(name).sensor == "S1" else f"{name}_s1"
        meta[f"{key}_scene"] = scene.scene_id
        meta[f"{key}_gap_h" if key != name else f"{key}_hours"] = round((float(g.s1_times[k]) - t) / 3600.0, 3)
        meta[f"{key}_files"] = json.dumps(list(scene.files))


def safe_build(ctx: SampleReader) -> Any:
    def run(task: tuple[int, int, int, int, int]) -> Any:
        try:
            res = ctx.build(task)
            if isinstance(res, str):
                return res
            arrays, hours, meta = res
            # Compressing here, in the reading threads, overlaps it with the other threads' reads
            # (zlib releases the GIL).
            return [pack(a, ctx.opts.compression) for a in arrays], hours, meta
        except CloudClearError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the scene whose patch could not be read
            gi, r = task[1], task[2]
            scene = ctx.cands[gi].group.scenes[r]
            raise InvalidRasterError(f"scene {scene.scene_id}: cannot read a patch ({exc})") from exc

    return run
