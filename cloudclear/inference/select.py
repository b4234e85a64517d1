"""Choose the acquisitions a method needs for one date from the catalog.

For a target date D and a tile, the candidates are the tile's S2 scenes within ``max_days`` of D.
The acquisition on D itself (if any) fills the ``target`` slot; the others fill ``before`` and
``after`` slots nearest first, and among scenes equally near, least cloudy first (Decloud's
processor ranks its candidates the same way). Scenes above ``max_cloud`` % are not candidates for
the neighbour slots, and scenes with no valid pixel are candidates for no slot. S1 slots take
the S1 acquisition nearest to their S2 slot's time (or to D), within ``s1_max_hours``, whose
footprint covers the tile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cloudclear.acquisitions import Acquisition, acquisition, cloud_of, dedupe, grid_of, number, row_time
from cloudclear.errors import InferError
from cloudclear.gridio import Grid


@dataclass(frozen=True)
class SlotRequest:
    """One acquisition a method asks for: sensor, role (target / before / after) and rank."""

    name: str
    sensor: str
    role: str
    rank: int = 1


@dataclass(frozen=True)
class Layout:
    """What a method needs from the catalog for one date.

    Attributes:
        slots: the acquisitions, in the method's input order.
        max_days: how far from the date S2 slots may look.
        max_cloud: neighbour scenes above this cloud % are skipped (unknown cover is allowed).
        s1_max_hours: the largest gap between an S1 slot and its S2 slot.
        required: slots that must be filled; others may stay empty (their inputs are nodata).
        stand_ins: (band, stand-in) pairs: a scene that lacks ``band`` but has the stand-in is
            read with the stand-in in its place (a network trained on B8A accepts B08).
    """

    slots: tuple[SlotRequest, ...]
    max_days: float = 60.0
    max_cloud: float = 95.0
    s1_max_hours: float = 72.0
    required: tuple[str, ...] = ()
    stand_ins: tuple[tuple[str, str], ...] = ()


def gapfill_layout(neighbours: int = 3, max_days: float = 60.0, max_cloud: float = 95.0) -> Layout:
    """The gap-filling layout: the date's own acquisition and ``neighbours`` scenes on each side."""
    slots = [SlotRequest(f"t-{k}", "S2", "before", k) for k in range(neighbours, 0, -1)]
    slots.append(SlotRequest("t", "S2", "target"))
    slots += [SlotRequest(f"t+{k}", "S2", "after", k) for k in range(1, neighbours + 1)]
    return Layout(tuple(slots), max_days=max_days, max_cloud=max_cloud)


@dataclass(frozen=True)
class InputSet:
    """Everything chosen for one date: the grid and the acquisitions per slot (None when empty)."""

    tile: str
    target: datetime
    grid: Grid
    bands: tuple[str, ...]
    slots: tuple[tuple[SlotRequest, Acquisition | None], ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def acquisitions(self) -> list[Acquisition]:
        return [a for _, a in self.slots if a is not None]

    def get(self, name: str) -> Acquisition | None:
        return next(a for s, a in self.slots if s.name == name)


def parse_when(value: str | datetime) -> tuple[datetime, bool]:
    """A date or datetime as an aware UTC datetime, and whether only a date was given."""
    if isinstance(value, datetime):
        return (value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)), False
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc), True
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InferError(f"date {value!r} is not YYYY-MM-DD or an ISO datetime") from None
    return (dt.astimezone(timezone.utc) if dt.tzinfo else dt.replace(tzinfo=timezone.utc)), False


def date_range(start: str, stop: str, every_days: int) -> list[datetime]:
    """Dates from ``start`` to ``stop`` inclusive, every ``every_days`` days (a regular grid)."""
    a, _ = parse_when(start)
    b, _ = parse_when(stop)
    if every_days < 1:
        raise InferError(f"date step must be >= 1 day, not {every_days}")
    if b < a:
        raise InferError(f"date range is inverted: {start} is after {stop}")
    out = []
    while a <= b:
        out.append(a)
        a += timedelta(days=every_days)
    return out


def choose_inputs(
    catalog: Any,
    when: str | datetime,
    layout: Layout,
    *,
    tile: str | None = None,
    bands: Sequence[str] | None = None,
    s1_bands: Sequence[str] = ("VV", "VH"),
) -> InputSet:
    """Pick the acquisitions of ``layout`` for date ``when`` on ``tile``.

    Args:
        catalog: an open :class:`cloudclear.catalog.Catalog`.
        when: the date to reconstruct (``YYYY-MM-DD`` or an ISO datetime).
        layout: the slots the method asks for.
        tile: MGRS tile; may be left out when the catalog holds one S2 tile.
        bands: S2 bands to read; default: those of the nearest scene.
        s1_bands: S1 bands to read for S1 slots.

    Raises:
        InferError: the tile is not in the catalog (or several are and none was named), no S2
            scene lies within ``max_days``, a chosen scene lacks a band, a required slot is empty.
    """
    target, date_only = parse_when(when)
    s2_all = catalog.scenes[catalog.scenes["sensor"] == "S2"]
    tiles = sorted({str(t) for t in s2_all["tile"].dropna()})
    if tile is None:
        if len(tiles) > 1:
            raise InferError(f"{catalog.path}: holds S2 tiles {', '.join(tiles)}; choose one with --tile")
        if not tiles:
            raise InferError(f"{catalog.path}: no S2 scenes with a tile id; nothing to reconstruct")
        tile = tiles[0]
    tile = tile.upper().lstrip("T")
    if tile not in tiles:
        raise InferError(f"{catalog.path}: no S2 scenes of tile {tile} (tiles: {', '.join(tiles) or 'none'})")
    span = timedelta(days=layout.max_days)
    rows = [r for _, r in catalog.query(sensor="S2", tile=tile, start=target - span, end=target + span).iterrows()]
    # A scene with no valid pixel (100 % nodata in the catalog) can fill no slot.
    rows = dedupe([r for r in rows if (number(r, "nodata_pct") or 0.0) < 100.0])

    # The target acquisition: on the same UTC day for a date, within an hour for a datetime.
    def on_target(row: Any) -> bool:
        t = row_time(row)
        return t.date() == target.date() if date_only else abs((t - target).total_seconds()) <= 3600

    target_row = next((r for r in rows if on_target(r)), None)
    if target_row is not None:
        target = row_time(target_row)
    usable = [r for r in rows if r is not target_row and (cloud_of(r) is None or cloud_of(r) <= layout.max_cloud)]  # type: ignore[operator]

    def rank(side: str) -> list[Any]:
        cands = [r for r in usable if (row_time(r) < target if side == "before" else row_time(r) > target)]

        # Unknown cover (no mask) ranks after every known cover on the same day.
        def key(r: Any) -> tuple[float, float]:
            cloud = cloud_of(r)
            return (abs((row_time(r) - target).total_seconds()) // 86400, 101.0 if cloud is None else cloud)

        return sorted(cands, key=key)

    ranked = {"before": rank("before"), "after": rank("after")}
    s2_rows: dict[str, Any] = {}
    for slot in layout.slots:
        if slot.sensor != "S2":
            continue
        if slot.role == "target":
            s2_rows[slot.name] = target_row
        else:
            cands = ranked[slot.role]
            s2_rows[slot.name] = cands[slot.rank - 1] if len(cands) >= slot.rank else None
    chosen = [r for r in s2_rows.values() if r is not None]
    if not chosen:
        raise InferError(_no_neighbours(catalog, tile, target, layout))
    nearest = min(chosen, key=lambda r: abs((row_time(r) - target).total_seconds()))
    if bands is None:
        bands = str(nearest["bands"]).split(",")
    grid = grid_of(catalog, target_row if target_row is not None else nearest, InferError)

    empty: list[str] = []
    slots: list[tuple[SlotRequest, Acquisition | None]] = []
    swaps = dict(layout.stand_ins)
    substituted: set[str] = set()

    def row_bands(row: Any) -> list[str]:
        have = json.loads(row["band_files"])
        out = []
        for b in bands:
            if b not in have and swaps.get(b) in have:
                substituted.add(f"{swaps[b]} read in place of {b}")
                b = swaps[b]
            out.append(b)
        return out

    for slot in layout.slots:
        acq: Acquisition | None = None
        if slot.sensor == "S2":
            row = s2_rows[slot.name]
            acq = (
                None
                if row is None
                else acquisition(catalog, row, slot.name, slot.role, target, row_bands(row), InferError)
            )
        else:
            anchor = s2_rows.get(_s2_twin(layout, slot))
            when_s1 = row_time(anchor) if anchor is not None else target
            row = _nearest_s1(catalog, grid, when_s1, layout.s1_max_hours)
            acq = None if row is None else acquisition(catalog, row, slot.name, slot.role, target, s1_bands, InferError)
        if acq is None:
            if slot.name in layout.required:
                raise InferError(_empty_slot(tile, target, slot, layout))
            empty.append(slot.name)
        slots.append((slot, acq))
    notes: tuple[str, ...] = (f"no scene for slot(s) {', '.join(empty)}: their inputs are nodata",) if empty else ()
    notes += tuple(f"{s} (the network accepts it)" for s in sorted(substituted))
    return InputSet(tile, target, grid, tuple(row_bands(nearest)), tuple(slots), notes)


def _s2_twin(layout: Layout, slot: SlotRequest) -> str:
    """The S2 slot an S1 slot sits near: same role and rank."""
    for s in layout.slots:
        if s.sensor == "S2" and s.role == slot.role and (s.role == "target" or s.rank == slot.rank):
            return s.name
    return ""


def _nearest_s1(catalog: Any, grid: Grid, when: datetime, max_hours: float) -> Any:
    span = timedelta(hours=max_hours)
    hits = catalog.query(bbox=grid.bounds(), bbox_crs=grid.crs, sensor="S1", start=when - span, end=when + span)
    if hits.empty:
        return None
    gaps = (hits["datetime"] - when).abs()
    best = hits.loc[gaps.idxmin()]
    return best if abs((row_time(best) - when).total_seconds()) <= max_hours * 3600 else None


def _no_neighbours(catalog: Any, tile: str, target: datetime, layout: Layout) -> str:
    s2 = catalog.query(sensor="S2", tile=tile)
    day = target.date().isoformat()
    if s2.empty:
        return f"{catalog.path}: tile {tile} has no S2 scenes"
    gaps = (s2["datetime"] - target).abs()
    near = s2.loc[gaps.idxmin()]
    d = abs((row_time(near) - target).total_seconds()) / 86400
    cloud = cloud_of(near)
    why = f"{d:.0f} days away" + (f", {cloud:.0f} % cloud" if cloud is not None else "")
    if (number(near, "nodata_pct") or 0.0) >= 100.0:
        why += ", all nodata"
    return (
        f"{catalog.path}: no usable S2 scene of tile {tile} within {layout.max_days:g} days of {day} "
        f"with cloud <= {layout.max_cloud:g} % (nearest: {near['scene_id']}, {why}); "
        f"widen --max-days or --max-cloud"
    )


def _empty_slot(tile: str, target: datetime, slot: SlotRequest, layout: Layout) -> str:
    return (
        f"slot {slot.name}: no {slot.sensor} scene of tile {tile} for {target.date().isoformat()} "
        f"({slot.role}, rank {slot.rank}, within {layout.max_days:g} days, cloud <= {layout.max_cloud:g} %)"
    )


def output_name(tile: str, target: datetime, method: str) -> str:
    """File name for one date's output: ``S2_T{tile}_{YYYYMMDD}_{method}.tif``."""
    return f"S2_T{tile}_{target:%Y%m%d}_{Path(method).stem}.tif"
