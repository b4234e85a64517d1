"""Splits by geographic blocks (and optionally dates) and the order samples are drawn in.

Each grid is cut into square blocks of ``block`` x ``block`` patches; a patch that straddles two
blocks is not used. Blocks of different grids that overlap on the ground (neighbouring tiles, or
one place in two CRSs) are merged, so no pixel can fall in two splits. With ``block_days`` a split
unit is a block and a period of that many days, and a sample whose acquisitions reach into a unit
of another split is not used. Units are shuffled with the seed and dealt to the split furthest
below its share of the candidate samples, so the counts follow the proportions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cloudclear.sampling.candidates import Candidates, rect_footprints

SEASONS = ("DJF", "MAM", "JJA", "SON")


def season_of(epoch_s: np.ndarray) -> np.ndarray:
    """Meteorological season index (0 DJF, 1 MAM, 2 JJA, 3 SON) of times in seconds since 1970."""
    months = (np.asarray(epoch_s, "datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12) + 1
    return (months % 12) // 3


@dataclass
class Splits:
    """Which split each (group, location, time) falls in.

    Attributes:
        block: per group, (locations,) global block id (-1: straddles blocks, unused).
        root: per block id, the id of the merged block it belongs to.
        unit_split: (merged block, time bin) -> split index.
        block_days: the time-bin length, None for space-only splits.
        straddling: locations left out because they straddle two blocks.
        candidates: per split, the candidate samples its units hold.
    """

    block: list[np.ndarray]
    root: np.ndarray
    unit_split: dict[tuple[int, int], int]
    block_days: float | None
    straddling: int
    candidates: tuple[int, ...] = ()

    def bin_of(self, t: float) -> int:
        return 0 if self.block_days is None else int(np.floor(t / (self.block_days * 86400.0)))

    def split_of(self, g: int, loc: int, t: float) -> int:
        """Split index of a location at a time (-1: unused location)."""
        b = int(self.block[g][loc])
        if b < 0:
            return -1
        return self.unit_split.get((int(self.root[b]), self.bin_of(t)), -1)


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def assign_splits(
    cands: Sequence[Candidates],
    patch: int,
    block: int,
    fractions: Sequence[float],
    seed: int,
    block_days: float | None = None,
) -> Splits:
    """Cut grids into blocks, merge blocks that overlap on the ground, and deal units to splits."""
    import shapely

    bpx = block * patch
    blocks: list[np.ndarray] = []
    rects: list[tuple[int, int, int, int, int]] = []  # group, r_lo, c_lo, r_hi, c_hi
    straddling = 0
    for c in cands:
        g = c.group
        by, bx = g.r0 // bpx, g.c0 // bpx
        ok = ((g.r0 + patch - 1) // bpx == by) & ((g.c0 + patch - 1) // bpx == bx)
        straddling += int((~ok).sum())
        ids = np.full(g.n_locations, -1, np.int64)
        keys: dict[tuple[int, int], int] = {}
        for loc in np.flatnonzero(ok):
            k = (int(by[loc]), int(bx[loc]))
            if k not in keys:
                keys[k] = len(rects)
                rects.append((g.index, 1 << 62, 1 << 62, -1, -1))
            bid = keys[k]
            gi, r_lo, c_lo, r_hi, c_hi = rects[bid]
            r, cc = int(g.r0[loc]), int(g.c0[loc])
            rects[bid] = (gi, min(r_lo, r), min(c_lo, cc), max(r_hi, r + patch), max(c_hi, cc + patch))
            ids[loc] = bid
        blocks.append(ids)
    n = len(rects)
    parent = np.arange(n)
    if n > 1 and len({r[0] for r in rects}) > 1:
        polys = np.empty(n, object)
        for c in cands:
            mine = [i for i, r in enumerate(rects) if r[0] == c.group.index]
            if not mine:
                continue
            arr = np.array([rects[i] for i in mine], np.int64)
            polys[mine] = rect_footprints(c.group, arr[:, 1], arr[:, 2], arr[:, 3] - arr[:, 1], arr[:, 4] - arr[:, 2])
        tree = shapely.STRtree(polys)
        left, right = tree.query(polys, predicate="intersects")
        for i, j in zip(left, right, strict=True):
            if i >= j or rects[i][0] == rects[j][0]:
                continue
            inter = shapely.area(shapely.intersection(polys[i], polys[j]))
            if inter > 1e-4 * min(shapely.area(polys[i]), shapely.area(polys[j])):
                a, b = _find(parent, int(i)), _find(parent, int(j))
                parent[max(a, b)] = min(a, b)
    root = np.array([_find(parent, i) for i in range(n)], np.int64)

    def tbin(t: float) -> int:
        return 0 if block_days is None else int(np.floor(t / (block_days * 86400.0)))

    weight: Counter[tuple[int, int]] = Counter()
    units: set[tuple[int, int]] = set()
    for c, ids in zip(cands, blocks, strict=True):
        g = c.group
        bins = {tbin(t) for t in g.times}
        for b in np.unique(ids[ids >= 0]):
            for tb in bins:
                units.add((int(root[b]), tb))
        ref_idx, loc_idx = np.nonzero(c.feasible)
        for r, loc in zip(ref_idx.tolist(), loc_idx.tolist(), strict=True):
            if ids[loc] >= 0:
                weight[(int(root[ids[loc]]), tbin(g.times[r]))] += 1
    order = sorted(units)
    rng = np.random.default_rng([seed, 1])
    order = [order[i] for i in rng.permutation(len(order))]
    frac = np.asarray(fractions, np.float64)
    frac = frac / frac.sum()
    total = sum(weight.values())
    assigned = np.zeros(len(frac))
    members: list[list[tuple[int, int]]] = [[] for _ in frac]
    unit_split: dict[tuple[int, int], int] = {}
    for unit in order:
        deficit = np.where(frac > 0, frac * total - assigned, -np.inf)
        best = int(np.argmax(deficit))
        unit_split[unit] = best
        assigned[best] += weight[unit]
        members[best].append(unit)
    # With a few units the greedy deal can leave a split empty: move it the lightest unit with
    # candidates from the split that holds the most such units.
    for empty in (int(x) for x in np.flatnonzero(frac > 0)):
        if any(weight[x] for x in members[empty]):
            continue
        donors = [d for d in range(len(frac)) if d != empty and sum(1 for x in members[d] if weight[x]) > 1]
        if not donors:
            continue
        donor = max(donors, key=lambda d: sum(1 for x in members[d] if weight[x]))
        move = min((x for x in members[donor] if weight[x]), key=lambda x: (weight[x], x))
        members[donor].remove(move)
        members[empty].append(move)
        unit_split[move] = empty
    per_split = tuple(int(sum(weight[u] for u in members[k])) for k in range(len(frac)))
    return Splits(blocks, root, unit_split, block_days, straddling, per_split)


def draw_order(
    cands: Sequence[Candidates], splits: Splits, seed: int, seasonal: bool
) -> list[tuple[int, int, int, int]]:
    """Every feasible (group, reference scene, location, split) in the order samples are tried.

    Random order from the seed; with ``seasonal`` the seasons of the reference date take turns
    (equal draws per season while each has candidates left).
    """
    pairs: list[tuple[int, int, int, int]] = []
    for c in cands:
        g = c.group
        refs, locs = np.nonzero(c.feasible)
        for r, loc in zip(refs.tolist(), locs.tolist(), strict=True):
            sp = splits.split_of(g.index, loc, float(g.times[r]))
            if sp >= 0:
                pairs.append((g.index, r, loc, sp))
    rng = np.random.default_rng([seed, 2])
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    if not seasonal or not pairs:
        return pairs
    times = {c.group.index: c.group.times for c in cands}
    seasons = season_of(np.array([times[g][r] for g, r, _, _ in pairs]))
    queues = [[p for p, s in zip(pairs, seasons, strict=True) if s == k] for k in range(4)]
    out: list[tuple[int, int, int, int]] = []
    depth = max(len(q) for q in queues)
    for i in range(depth):
        for q in queues:
            if i < len(q):
                out.append(q[i])
    return out
