"""Where and when a layout can be sampled: patch locations and, per reference scene, the slots' candidates.

The catalog's S2 scenes are grouped by grid (scenes of one tile share it). Patch locations lie on a
lattice over each grid. A patch's cloud cover and validity come from the catalog's per-cell
grids (64 px cells), never from the pixels: for a patch that covers whole cells the cover is
exact, otherwise it is an interval (the cloud in the partly covered cells may lie in or out of the
patch), and the exact value is checked when the patch is read. Time windows are answered by the
catalog's rtree; S1 coverage by the scenes' footprints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudclear.acquisitions import dedupe, grid_of
from cloudclear.catalog import NO_CELL
from cloudclear.errors import SampleError
from cloudclear.gridio import Grid
from cloudclear.layouts import NIR_STAND_INS, Layout, LayoutSlot, ordinal
from cloudclear.scenes import Scene, normalise_tile

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog

log = logging.getLogger(__name__)
#: Bands read in place of each other when a scene lacks the one asked for (greenearthnet minicubes
#: have B8A and no B08): the two near-infrared bands, as ``infer`` accepts for a network's card.
STAND_INS = NIR_STAND_INS
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_seconds(when: datetime) -> float:
    return (when - _EPOCH).total_seconds()


@dataclass
class Group:
    """The S2 scenes on one grid, in time order, with their per-cell statistics.

    Attributes:
        index: position among the catalog's groups.
        tile: MGRS tile (may be empty).
        grid: the shared grid.
        scenes: the scenes (one per acquisition).
        positions: each scene's :attr:`Scene.index` in the catalog (the rtree ids).
        times: acquisition times, seconds since 1970.
        has_bands: whether each scene has every band asked for (or its stand-in).
        r0, c0: patch origins (pixels) of the locations on this grid.
        cloud_lo, cloud_hi: (scenes, locations) bounds of each patch's cloud % (NaN: no mask).
        valid: (scenes, locations) the patch has data everywhere (per the cells).
        lonlat: (locations,) patch footprints in lon/lat (shapely polygons).
        bbox: lon/lat bounds of all the locations (the rtree query box).
        reads: per scene, the bands read for the bands asked for (a stand-in in place of a band
            the scene lacks, :data:`STAND_INS`), or None when it lacks one and its stand-in.
    """

    index: int
    tile: str
    grid: Grid
    scenes: list[Scene]
    positions: np.ndarray
    times: np.ndarray
    has_bands: np.ndarray
    r0: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    c0: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cloud_lo: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    cloud_hi: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    valid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    lonlat: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    s1_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    s1_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    s1_cover: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    reads: list[tuple[str, ...] | None] = field(default_factory=list)

    @property
    def n_locations(self) -> int:
        return len(self.r0)

    @property
    def scene_ids(self) -> list[str]:
        return [s.scene_id for s in self.scenes]


def read_bands(scene: Scene, bands: list[str]) -> tuple[str, ...] | None:
    """The bands to read from ``scene`` for ``bands``: each band, or its stand-in (:data:`STAND_INS`)
    where the scene lacks it and it is not asked for itself; None when the scene lacks both."""
    out = []
    for b in bands:
        if b in scene.sources:
            out.append(b)
        elif STAND_INS.get(b) in scene.sources and STAND_INS[b] not in bands:
            out.append(STAND_INS[b])
        else:
            return None
    return tuple(out)


def stand_ins_of(groups: list[Group], bands: list[str]) -> dict[str, tuple[str, int]]:
    """Band asked for -> (the band read in its place, the scenes read so)."""
    out: dict[str, tuple[str, int]] = {}
    for g in groups:
        for names in g.reads:
            for b, r in zip(bands, names or (), strict=False):
                if b != r:
                    out[b] = (r, out.get(b, (r, 0))[1] + 1)
    return out


def _group_key(scene: Scene) -> tuple[Any, ...]:
    res_x, res_y = scene.res
    return (
        scene.crs_name,
        round(scene.bounds.left, 3),
        round(scene.bounds.top, 3),
        round(res_x, 6),
        round(res_y, 6),
        scene.width,
        scene.height,
    )


def s2_groups(
    catalog: Catalog,
    bands: list[str] | None,
    tile: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[list[Group], list[str]]:
    """The catalog's S2 scenes grouped by grid (one scene per acquisition) and the bands to read.

    Args:
        catalog: an open catalog.
        bands: S2 bands; None for those every scene has (in the catalog's band order).
        tile: keep only this tile (or grid name, for scenes without a tile id).
        start, end: keep only scenes acquired in this range (sampling draws references from it;
            the slots' windows may reach outside).

    Raises:
        SampleError: no S2 scene (of that tile), or no band every scene has.
    """
    if tile:
        tile = normalise_tile(tile)
    s2 = [s for s in catalog.query(sensor="S2", tile=tile) if not s.nodata_pct >= 100.0]
    if not s2:
        where = f" of tile {tile}" if tile else ""
        raise SampleError(f"{catalog.path}: no S2 scene{where} with data; nothing to sample")
    scenes = dedupe(s2)
    if bands is None:
        common: list[str] | None = None
        for sc in scenes:
            have = list(sc.bands)
            common = have if common is None else [b for b in common if b in have]
        bands = common or []
        if not bands:
            raise SampleError(f"{catalog.path}: the S2 scenes share no band; choose bands with --bands")
    by_key: dict[tuple[Any, ...], list[Scene]] = {}
    for sc in scenes:
        by_key.setdefault(_group_key(sc), []).append(sc)
    groups: list[Group] = []
    # str(None) == "None": untiled groups sort as they always have, so stores stay the same.
    for _key, members in sorted(by_key.items(), key=lambda kv: (str(kv[1][0].tile), kv[0])):
        members.sort(key=lambda sc: sc.datetime)
        times = np.array([epoch_seconds(sc.datetime) for sc in members])
        reads = [read_bands(sc, bands) for sc in members]
        has = np.array([r is not None for r in reads], bool)
        groups.append(
            Group(
                index=len(groups),
                tile=members[0].tile or "",
                grid=grid_of(members[0], SampleError, catalog.path),
                scenes=members,
                positions=np.array([sc.index for sc in members], np.int64),
                times=times,
                has_bands=has,
                reads=reads,
            )
        )
    if start is not None or end is not None:
        lo = epoch_seconds(start) if start else -np.inf
        hi = epoch_seconds(end) if end else np.inf
        if not any(((g.times >= lo) & (g.times <= hi)).any() for g in groups):
            raise SampleError(f"{catalog.path}: no S2 scene between {start} and {end}")
    return groups, bands


def _overlaps(origins: np.ndarray, patch: int, cell: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per origin, the first overlapped cell and the pixel overlap with the next k cells."""
    k = -(-patch // cell) + 1
    first = origins // cell
    cells = first[:, None] + np.arange(k)[None, :]
    lo = np.maximum(cells * cell, origins[:, None])
    hi = np.minimum(np.minimum((cells + 1) * cell, size), origins[:, None] + patch)
    return first, np.maximum(hi - lo, 0)


def locate(group: Group, patch: int, stride: int) -> None:
    """Fill a group's patch lattice and the per-patch cloud bounds and validity from the cells."""
    g = group.grid
    if g.height < patch or g.width < patch:
        group.r0 = group.c0 = np.zeros(0, np.int64)
        group.cloud_lo = group.cloud_hi = np.zeros((len(group.scenes), 0), np.float32)
        group.valid = np.zeros((len(group.scenes), 0), bool)
        return
    rs = np.arange(0, g.height - patch + 1, stride, dtype=np.int64)
    cs = np.arange(0, g.width - patch + 1, stride, dtype=np.int64)
    cells = group.scenes[0].cells
    cell, ncy, ncx = cells.size, cells.rows, cells.cols
    cloud = np.stack([sc.cells.cloud for sc in group.scenes])
    vcell = np.stack([sc.cells.valid for sc in group.scenes])
    fy, oy = _overlaps(rs, patch, cell, g.height)
    fx, ox = _overlaps(cs, patch, cell, g.width)
    hy = np.minimum(cell, g.height - cell * np.arange(ncy))
    hx = np.minimum(cell, g.width - cell * np.arange(ncx))
    n = len(group.scenes)
    lo = np.zeros((n, len(rs), len(cs)), np.float64)
    hi = np.zeros_like(lo)
    unknown = np.zeros(lo.shape, bool)
    invalid = np.zeros(lo.shape, bool)
    for u in range(oy.shape[1]):
        cy = np.minimum(fy + u, ncy - 1)
        for v in range(ox.shape[1]):
            cx = np.minimum(fx + v, ncx - 1)
            a = (oy[:, u][:, None] * ox[:, v][None, :]).astype(np.float64)  # (R, C) overlap pixels
            if not a.any():
                continue
            area = (hy[cy][:, None] * hx[cx][None, :]).astype(np.float64)
            c = cloud[:, cy][:, :, cx].astype(np.float64)  # (n, R, C)
            used = a[None] > 0
            unknown |= used & (c == NO_CELL)
            invalid |= used & (vcell[:, cy][:, :, cx] < 100)
            ncloud = np.where(c == NO_CELL, 0.0, c) / 100.0 * area[None]
            lo += np.maximum(ncloud - (area - a)[None], 0.0)
            hi += np.minimum(ncloud, a[None])
    px = float(patch * patch)
    lo = 100.0 * lo / px
    hi = 100.0 * hi / px
    lo[unknown] = np.nan
    hi[unknown] = np.nan
    rr, cc = np.meshgrid(rs, cs, indexing="ij")
    group.r0, group.c0 = rr.ravel(), cc.ravel()
    group.cloud_lo = lo.reshape(n, -1).astype(np.float32)
    group.cloud_hi = hi.reshape(n, -1).astype(np.float32)
    group.valid = ~invalid.reshape(n, -1) & group.has_bands[:, None]
    group.lonlat = rect_footprints(group, group.r0, group.c0, patch, patch)
    import shapely

    group.bbox = tuple(float(v) for v in shapely.total_bounds(group.lonlat))  # type: ignore[assignment]


def rect_footprints(group: Group, r0: np.ndarray, c0: np.ndarray, h: Any, w: Any) -> np.ndarray:
    """Lon/lat polygons of pixel rectangles of a group's grid (corners and edge points, 16 per ring,
    so edges that curve in lon/lat are followed)."""
    import shapely
    from pyproj import CRS, Transformer

    a, _, c, _, e, f = group.grid.transform
    h = np.broadcast_to(np.asarray(h, np.float64), r0.shape)
    w = np.broadcast_to(np.asarray(w, np.float64), c0.shape)
    t = np.linspace(0.0, 1.0, 5)
    u = np.concatenate([t, np.ones(4), t[::-1][1:], np.zeros(3)])
    v = np.concatenate([np.zeros(5), t[1:], np.ones(4), t[::-1][1:4]])
    xs = c + a * (c0[:, None] + w[:, None] * u[None, :])
    ys = f + e * (r0[:, None] + h[:, None] * v[None, :])
    crs = CRS.from_wkt(group.grid.crs)
    if not crs.is_geographic:
        tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        lon, lat = tr.transform(xs.ravel(), ys.ravel())
        xs, ys = np.asarray(lon).reshape(xs.shape), np.asarray(lat).reshape(ys.shape)
    return np.asarray(shapely.polygons(np.stack([xs, ys], axis=-1)), dtype=object)


def attach_s1(group: Group, catalog: Catalog, max_gap_hours: float) -> None:
    """Find the S1 scenes near the group in time whose footprint covers each patch (>= 99 % of it)."""
    import shapely

    if group.n_locations == 0:
        return
    if not catalog.has_sensor("S1"):
        group.s1_pos = np.zeros(0, np.int64)
        group.s1_times = np.zeros(0)
        group.s1_cover = np.zeros((0, group.n_locations), bool)
        return
    x0, y0, x1, y1 = group.bbox
    pad = max_gap_hours * 3600.0
    ids = catalog.ids_in((x0, y0, x1, y1), group.times.min() - pad, group.times.max() + pad)
    s1 = [catalog[int(i)] for i in ids]
    s1 = [sc for sc in s1 if sc.sensor == "S1"]
    pos = np.array([sc.index for sc in s1], np.int64)
    cover = np.zeros((len(pos), group.n_locations), bool)
    areas = shapely.area(group.lonlat)
    for k, sc in enumerate(s1):
        geom = sc.footprint
        hit = shapely.intersects(geom, group.lonlat)
        if hit.any():
            inter = shapely.area(shapely.intersection(geom, group.lonlat[hit]))
            cover[k, np.flatnonzero(hit)] = inter >= 0.99 * areas[hit]
    group.s1_pos = pos
    group.s1_times = np.array([epoch_seconds(sc.datetime) for sc in s1]) if len(pos) else np.zeros(0)
    group.s1_cover = cover


def s1_near(group: Group, hours: float) -> np.ndarray:
    """(scenes, locations): an S1 scene covering the patch lies within ``hours`` of the S2 scene."""
    if len(group.s1_pos) == 0:
        return np.zeros((len(group.scenes), group.n_locations), bool)
    near = np.abs(group.s1_times[None, :] - group.times[:, None]) <= hours * 3600.0 + 1e-6
    return (near.astype(np.float32) @ group.s1_cover.astype(np.float32)) > 0


def in_range(lo: np.ndarray, hi: np.ndarray, rng: tuple[float, float]) -> np.ndarray:
    """Patches whose cloud bounds [lo, hi] meet the range; unknown cover meets only [0, 100]."""
    a, b = rng
    ok = (hi >= a - 1e-6) & (lo <= b + 1e-6)
    unknown = np.isnan(lo)
    return np.where(unknown, a <= 0.0 and b >= 100.0, ok)


def slot_ok(group: Group, slot: LayoutSlot) -> np.ndarray:
    """(scenes, locations): the scene can fill the slot at the location, window aside."""
    ok = group.valid.copy()
    if slot.simulated:
        ok &= in_range(group.cloud_lo, group.cloud_hi, (0.0, slot.truth_cloud))
    else:
        ok &= in_range(group.cloud_lo, group.cloud_hi, slot.cloud)
    if slot.s1_max_gap is not None:
        ok &= s1_near(group, slot.s1_max_gap)
    return ok


def window_members(
    catalog: Catalog, group: Group, ref: int, slot: LayoutSlot, pos_to_scene: dict[int, int]
) -> np.ndarray:
    """Group scene indices (not ``ref``) in the slot's window around scene ``ref``, through the rtree."""
    assert slot.window is not None
    t = group.times[ref]
    hits = catalog.ids_in(group.bbox, t + slot.window[0] * 3600.0, t + slot.window[1] * 3600.0)
    out = sorted(pos_to_scene[int(h)] for h in hits if int(h) in pos_to_scene)
    return np.array([j for j in out if j != ref], np.int64)


def nth_members(group: Group, slot: LayoutSlot) -> np.ndarray:
    """(scenes, locations): the index of the nth scene with data after/before each scene (-1: none)."""
    assert slot.nth is not None
    n_sc, n_loc = group.valid.shape
    out = np.full((n_sc, n_loc), -1, np.int64)
    for loc in range(n_loc):
        idx = np.flatnonzero(group.valid[:, loc])
        if len(idx) == 0:
            continue
        k = np.arange(len(idx)) + slot.nth
        ok = (k >= 0) & (k < len(idx))
        out[idx[ok], loc] = idx[k[ok]]
    return out


@dataclass
class Candidates:
    """Everything sampling needs about one group, for one layout.

    Attributes:
        group: the group.
        feasible: (scenes, locations) the scene can be the reference at the location with every
            slot filled.
        members: per S2 / S1 slot name, per reference scene, the candidate scene indices in its
            window (S2: group indices; S1: indices into ``group.s1_pos``).
        ok: per S2 slot, (scenes, locations) the scene can fill the slot (window aside).
        nth: per nth slot, (scenes, locations) its scene for each reference (-1: none).
        per_slot: per slot, (scenes, locations) the reference can fill this slot (diagnostics).
    """

    group: Group
    feasible: np.ndarray
    members: dict[str, list[np.ndarray]]
    ok: dict[str, np.ndarray]
    nth: dict[str, np.ndarray]
    per_slot: dict[str, np.ndarray]


def candidates(catalog: Catalog, group: Group, layout: Layout, refs: np.ndarray) -> Candidates:
    """For every reference scene in ``refs`` (bool per scene) and location, whether the layout fits."""
    n_sc, n_loc = group.valid.shape
    pos_to_scene = {int(p): i for i, p in enumerate(group.positions)}
    ref_slot = layout.slot(layout.reference)
    ok = {s.name: slot_ok(group, s) for s in layout.s2_slots}
    feasible = ok[ref_slot.name] & refs[:, None]
    per_slot = {ref_slot.name: feasible.copy()}
    members: dict[str, list[np.ndarray]] = {}
    nth: dict[str, np.ndarray] = {}
    for s in layout.slots:
        if s.name == ref_slot.name or s.sensor == "DEM":
            continue
        here = np.zeros((n_sc, n_loc), bool)
        if s.sensor == "S2" and s.nth is not None:
            idx = nth_members(group, s)
            nth[s.name] = idx
            has = idx >= 0
            dt = np.where(has, group.times[np.maximum(idx, 0)] - group.times[:, None], np.nan) / 3600.0
            assert s.window is not None
            inwin = has & (dt >= s.window[0] - 1e-6) & (dt <= s.window[1] + 1e-6)
            here = inwin & np.take_along_axis(ok[s.name], np.maximum(idx, 0), axis=0)
        else:
            lists = []
            for r in range(n_sc):
                if not per_slot[ref_slot.name][r].any():
                    lists.append(np.zeros(0, np.int64))
                    continue
                if s.sensor == "S2":
                    m = window_members(catalog, group, r, s, pos_to_scene)
                    lists.append(m)
                    if len(m):
                        here[r] = ok[s.name][m].any(axis=0)
                else:  # S1 slot: S1 scenes in the window covering the patch
                    assert s.window is not None
                    t = group.times[r]
                    dt = (group.s1_times - t) / 3600.0
                    m = np.flatnonzero((dt >= s.window[0] - 1e-6) & (dt <= s.window[1] + 1e-6))
                    lists.append(m)
                    if len(m):
                        here[r] = group.s1_cover[m].any(axis=0)
            members[s.name] = lists
        per_slot[s.name] = here & per_slot[ref_slot.name]
        feasible &= here
    return Candidates(group, feasible, members, ok, nth, per_slot)


# ---------------------------------------------------------------------------------------------
# Diagnostics: which slot found no candidates, and why


def _cloud_text(rng: tuple[float, float]) -> str:
    a, b = (int(v) if float(v).is_integer() else v for v in rng)
    if a <= 0 and b >= 100:
        return "data at the patch"
    if a <= 0:
        return f"cloud <= {b} %"
    if b >= 100:
        return f"cloud >= {a} %"
    return f"cloud in [{a}, {b}] %"


def _hours_text(w: tuple[float, float] | None) -> str:
    if w is None:
        return ""
    a, b = (int(v) if float(v).is_integer() else v for v in w)
    return f" in [{a} h, {b} h]"


def explain(
    cands: list[Candidates],
    layout: Layout,
    patch: int,
    catalog: Catalog | None = None,
    bands: list[str] | None = None,
) -> str:
    """Why no (reference, location) pair satisfies the layout: the first slot that found nothing."""
    wants_s1 = any(s.sensor == "S1" or s.s1_max_gap is not None for s in layout.slots)
    if wants_s1 and catalog is not None and not catalog.has_sensor("S1"):
        return "the layout pairs slots with S1 but the catalog holds no S1 scene; sample with --no-s1 (optical only)"
    ref = layout.slot(layout.reference)
    n_loc = sum(c.group.n_locations for c in cands)
    n_sc = sum(len(c.group.scenes) for c in cands)
    if cands and not any(c.group.has_bands.any() for c in cands):
        have = sorted({b for c in cands for sc in c.group.scenes for b in sc.bands})
        asked = f" ({','.join(bands)})" if bands else ""
        return (
            f"none of the {n_sc} S2 scenes has the bands asked for{asked} (nor a stand-in: "
            f"{', '.join(f'{a} for {b}' for b, a in STAND_INS.items())}); they have {','.join(have)}: "
            f"choose bands with --bands"
        )
    if n_loc == 0:
        sizes = ", ".join(f"{c.group.grid.width} x {c.group.grid.height}" for c in cands)
        return f"no {patch} px patch fits in any S2 grid (grids: {sizes}); choose a smaller --patch-size"
    n_ref = sum(int(c.per_slot[ref.name].any(axis=1).sum()) for c in cands)
    if n_ref == 0:
        need = _cloud_text((0.0, ref.truth_cloud) if ref.simulated else ref.cloud)
        what = "a clear truth under simulated gaps" if ref.simulated else need
        with_data = sum(int(c.group.valid.any(axis=1).sum()) for c in cands)
        lo = [c.group.cloud_lo[c.group.valid] for c in cands]
        allc = np.concatenate(lo) if lo else np.zeros(0)
        allc = allc[~np.isnan(allc)]
        spread = f", patch cloud spans {allc.min():.0f}-{allc.max():.0f} %" if len(allc) else ", none has a mask"
        s1 = f" and S1 within {ref.s1_max_gap:g} h" if ref.s1_max_gap is not None else ""
        return (
            f"slot {ref.name} (reference): 0 scenes with {what}{s1} over a {patch} px patch "
            f"({n_sc} S2 scenes, {with_data} with data at one of {n_loc} locations{spread})"
        )
    for s in layout.slots:
        if s.name == ref.name or s.sensor == "DEM":
            continue
        count = sum(int(c.per_slot[s.name].sum()) for c in cands)
        if count:
            continue
        if s.sensor == "S1":
            where = _hours_text(s.window)
            return f"slot {s.name}: 0 S1 scenes covering the patch{where} of any of {n_ref} reference scenes"
        need = _cloud_text((0.0, s.truth_cloud) if s.simulated else s.cloud)
        extra = f" and S1 within {s.s1_max_gap:g} h" if s.s1_max_gap is not None else ""
        if s.nth is not None:
            side = "after" if s.nth > 0 else "before"
            where = f" as the {ordinal(s.nth)} acquisition {side} the reference" + _hours_text(s.window)
        else:
            where = _hours_text(s.window)
        if s.nth is not None:
            most = _nth_reach(cands, s, ref.name)
            side = "follow" if s.nth > 0 else "precede"
            return (
                f"slot {s.name}: 0 scenes with {need}{extra}{where} of any of {n_ref} reference scenes "
                f"(at most {most} acquisitions with data at the patch {side} a reference within the window; "
                f"the {ordinal(s.nth)} is needed)"
            )
        in_window, clearest, s1_gap = _window_stats(cands, s, ref.name)
        why = f" ({in_window} acquisitions with data at the patch lie in those windows"
        if clearest is not None:
            why += f", the clearest {clearest:.0f} % cloud"
        if s.s1_max_gap is not None and in_window:
            why += (
                f"; the nearest S1 covering the patch is {s1_gap:.0f} h from one of them"
                if s1_gap is not None
                else "; no S1 scene covers the patch"
            )
        why += ")"
        return f"slot {s.name}: 0 scenes with {need}{extra}{where} of any of {n_ref} reference scenes{why}"
    per = ", ".join(f"{k} {sum(int(c.per_slot[k].sum()) for c in cands)}" for k in cands[0].per_slot)
    return f"no location has every slot filled at once (reference x location pairs per slot: {per})"


def _nth_reach(cands: list[Candidates], slot: LayoutSlot, ref: str) -> int:
    """The most acquisitions with data at a patch in an nth slot's window of one reference."""
    assert slot.window is not None
    most = 0
    for c in cands:
        g = c.group
        for r in np.flatnonzero(c.per_slot[ref].any(axis=1)):
            dt = (g.times - g.times[r]) / 3600.0
            inwin = (dt >= slot.window[0] - 1e-6) & (dt <= slot.window[1] + 1e-6)
            inwin[r] = False
            if inwin.any():
                most = max(most, int(g.valid[inwin][:, c.per_slot[ref][r]].sum(axis=0).max()))
    return most


def _window_stats(cands: list[Candidates], slot: LayoutSlot, ref: str) -> tuple[int, float | None, float | None]:
    seen: set[tuple[int, int]] = set()
    best: float | None = None
    gap: float | None = None
    for c in cands:
        g = c.group
        refs = np.flatnonzero(c.per_slot[ref].any(axis=1))
        for r in refs:
            if slot.nth is not None:
                js = np.unique(c.nth[slot.name][r][c.nth[slot.name][r] >= 0])
            else:
                js = c.members[slot.name][r]
            for j in js:
                if (g.index, int(j)) in seen or not g.valid[j].any():
                    continue
                seen.add((g.index, int(j)))
                lo = g.cloud_lo[j][g.valid[j]]
                lo = lo[~np.isnan(lo)]
                if len(lo):
                    best = float(lo.min()) if best is None else min(best, float(lo.min()))
                covering = g.s1_cover[:, g.valid[j]].any(axis=1) if len(g.s1_pos) else np.zeros(0, bool)
                if covering.any():
                    dt = float(np.abs(g.s1_times[covering] - g.times[j]).min()) / 3600.0
                    gap = dt if gap is None else min(gap, dt)
    return len(seen), best, gap
