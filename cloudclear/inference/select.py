"""Choose the acquisitions a method needs for one date from the catalog.

For a target date D and a tile, the candidates are the tile's S2 scenes within ``max_days`` of D.
The acquisition on D itself (if any) fills the ``target`` slot; the others fill ``before`` and
``after`` slots nearest first, and among scenes equally near, least cloudy first (Decloud's
processor ranks its candidates the same way). Scenes above ``max_cloud`` % are not candidates for
the neighbour slots, and scenes with no valid pixel are candidates for no slot. S1 slots take
the S1 acquisition nearest to their S2 slot's time (or to D), within ``s1_max_hours``, whose
footprint covers the tile.

The inputs of a date lie on one grid: a tile whose S2 scenes lie on several (two datasets over
one tile) is refused unless a grid is named (only its scenes are read) or a raster file gives the
output grid (every S2 scene covering it is read, warped onto it); the same acquisition delivered
twice fills one slot (:func:`cloudclear.acquisitions.dedupe`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from cloudclear.acquisitions import (
    Acquisition,
    acquisition,
    check_files,
    dedupe,
    grid_label,
    grid_of,
    grid_of_file,
    grid_outline,
    same_acquisition,
)
from cloudclear.errors import NoInputsError, QueryError
from cloudclear.gridio import Grid
from cloudclear.layouts import Slot
from cloudclear.scenes import RASTER_SUFFIXES, Scene, grid_name, normalise_tile, place_label

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog


@dataclass(frozen=True)
class InputRequest:
    """What a method asks of the catalog for one date: its slots and how far to look for them.

    Not to be confused with :class:`cloudclear.layouts.Layout`, which describes how training
    samples are drawn (time windows and cloud ranges relative to a reference scene); an
    ``InputRequest`` fills its slots for one given date, nearest acquisitions first.

    Attributes:
        slots: the acquisitions, in the method's input order.
        max_days: how far from the date S2 slots may look.
        max_cloud: neighbour scenes above this cloud % are skipped (unknown cover is allowed).
        s1_max_hours: the largest gap between an S1 slot and its S2 slot.
        required: slots that must be filled; others may stay empty (their inputs are nodata).
        stand_ins: (band, stand-in) pairs: a scene that lacks ``band`` but has the stand-in is
            read with the stand-in in its place (a network trained on B8A accepts B08).
        exclude: scene ids never used as inputs (e.g. a clear date held out for scoring); each
            must be in the catalog.
    """

    slots: tuple[Slot, ...]
    max_days: float = 60.0
    max_cloud: float = 95.0
    s1_max_hours: float = 72.0
    required: tuple[str, ...] = ()
    stand_ins: tuple[tuple[str, str], ...] = ()
    exclude: tuple[str, ...] = ()


def gapfill_layout(neighbours: int = 3, max_days: float = 60.0, max_cloud: float = 95.0) -> InputRequest:
    """The gap-filling layout: the date's own acquisition and ``neighbours`` scenes on each side."""
    slots = [Slot(f"t-{k}", "S2", "before", k) for k in range(neighbours, 0, -1)]
    slots.append(Slot("t", "S2", "target"))
    slots += [Slot(f"t+{k}", "S2", "after", k) for k in range(1, neighbours + 1)]
    return InputRequest(tuple(slots), max_days=max_days, max_cloud=max_cloud)


@dataclass(frozen=True)
class InputSet:
    """Everything chosen for one date: the grid and the acquisitions per slot (None when empty)."""

    tile: str
    target: datetime
    grid: Grid
    bands: tuple[str, ...]
    slots: tuple[tuple[Slot, Acquisition | None], ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: S2 scenes read only for the clear policy's temporal test (:func:`choose_witnesses`).
    witnesses: tuple[Acquisition, ...] = ()
    #: The name of the grid the S2 scenes were taken from (None: every grid of the tile).
    on_grid: str | None = None
    #: ``grid`` is a file's (``--grid FILE``): every S2 scene covering it is read, warped onto it.
    grid_from_file: bool = False

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
        raise NoInputsError(f"date {value!r} is not YYYY-MM-DD or an ISO datetime") from None
    return (dt.astimezone(timezone.utc) if dt.tzinfo else dt.replace(tzinfo=timezone.utc)), False


def date_range(start: str, stop: str, every_days: int) -> list[datetime]:
    """Dates from ``start`` to ``stop`` inclusive, every ``every_days`` days (a regular grid)."""
    a, _ = parse_when(start)
    b, _ = parse_when(stop)
    if every_days < 1:
        raise NoInputsError(f"date step must be >= 1 day, not {every_days}")
    if b < a:
        raise NoInputsError(f"date range is inverted: {start} is after {stop}")
    out = []
    while a <= b:
        out.append(a)
        a += timedelta(days=every_days)
    return out


def choose_inputs(
    catalog: Catalog,
    when: str | datetime,
    layout: InputRequest,
    *,
    tile: str | None = None,
    bands: Sequence[str] | None = None,
    s1_bands: Sequence[str] = ("VV", "VH"),
    grid: str | os.PathLike[str] | None = None,
) -> InputSet:
    """Pick the acquisitions of ``layout`` for date ``when`` on ``tile``.

    The output lies on one grid. When the tile's S2 scenes lie on several (two datasets over one
    tile), ``grid`` must say which: a grid name (:func:`cloudclear.scenes.grid_name`; only the
    scenes on it are read), or a raster file whose grid the output takes (every S2 scene covering
    it, on any grid, is read warped onto it).

    Args:
        catalog: an open :class:`cloudclear.catalog.Catalog`.
        when: the date to reconstruct (``YYYY-MM-DD`` or an ISO datetime).
        layout: the slots the method asks for.
        tile: MGRS tile, or the grid name the catalog reports for scenes without a tile id; may
            be left out when the catalog's S2 scenes lie on one tile or grid.
        bands: S2 bands to read; default: those of the nearest scene.
        s1_bands: S1 bands to read for S1 slots.
        grid: a grid name, or the path of a raster whose grid the output takes; needed when the
            tile's S2 scenes lie on several grids.

    Raises:
        NoInputsError: an excluded scene id is not in the catalog, the tile is not in the
            catalog (or several are and none was named), the tile's scenes lie on several grids
            and ``grid`` names none of them, no S2
            scene lies within ``max_days``, a chosen scene lacks a band, a required slot is empty.
        SceneNotFoundError: a chosen scene's file was deleted after indexing.
    """
    target, date_only = parse_when(when)
    _check_excluded(catalog, layout.exclude)
    scope = place_scope(catalog, tile, grid)
    tile = scope.tile
    span = timedelta(days=layout.max_days)
    found = scope.query(catalog, target - span, target + span)
    # A scene with no valid pixel (100 % nodata in the catalog) can fill no slot.
    excluded = set(layout.exclude)
    scenes = dedupe((s for s in found if s.nodata_pct < 100.0 and s.scene_id not in excluded), scope.outline)

    # The target acquisition: on the same UTC day for a date, within an hour for a datetime.
    def on_target(scene: Scene) -> bool:
        t = scene.datetime
        return t.date() == target.date() if date_only else abs((t - target).total_seconds()) <= 3600

    target_scene = next((s for s in scenes if on_target(s)), None)
    if target_scene is not None:
        target = target_scene.datetime
    usable = [s for s in scenes if s is not target_scene and (s.cloud_pct is None or s.cloud_pct <= layout.max_cloud)]

    def rank(side: str) -> list[Scene]:
        cands = [s for s in usable if (s.datetime < target if side == "before" else s.datetime > target)]

        # Unknown cover (no mask) ranks after every known cover on the same day.
        def key(s: Scene) -> tuple[float, float]:
            return (abs((s.datetime - target).total_seconds()) // 86400, 101.0 if s.cloud_pct is None else s.cloud_pct)

        return sorted(cands, key=key)

    ranked = {"before": rank("before"), "after": rank("after")}
    s2_scenes: dict[str, Scene | None] = {}
    for slot in layout.slots:
        if slot.sensor != "S2":
            continue
        if slot.role == "target":
            s2_scenes[slot.name] = target_scene
        else:
            cands = ranked[slot.role]
            s2_scenes[slot.name] = cands[slot.rank - 1] if len(cands) >= slot.rank else None
    chosen = [s for s in s2_scenes.values() if s is not None]
    if not chosen:
        raise NoInputsError(_no_neighbours(catalog, tile, target, layout, scope.query(catalog)))
    nearest = min(chosen, key=lambda s: abs((s.datetime - target).total_seconds()))
    if bands is None:
        bands = list(nearest.bands)
    out_grid = scope.grid or grid_of(target_scene if target_scene is not None else nearest, NoInputsError, catalog.path)

    empty: list[str] = []
    slots: list[tuple[Slot, Acquisition | None]] = []
    swaps = dict(layout.stand_ins)
    substituted: set[str] = set()

    def scene_bands(scene: Scene) -> list[str]:
        out = []
        for b in bands:
            if b not in scene.sources and swaps.get(b) in scene.sources:
                substituted.add(f"{swaps[b]} read in place of {b}")
                b = swaps[b]
            out.append(b)
        return out

    for slot in layout.slots:
        scene: Scene | None
        if slot.sensor == "S2":
            scene = s2_scenes[slot.name]
            wanted = None if scene is None else scene_bands(scene)
        else:
            anchor = s2_scenes.get(_s2_twin(layout, slot))
            when_s1 = anchor.datetime if anchor is not None else target
            scene = _nearest_s1(catalog, out_grid, when_s1, layout.s1_max_hours)
            wanted = list(s1_bands)
        acq: Acquisition | None = None
        if scene is not None and wanted is not None:
            check_files(scene, catalog.path)
            acq = acquisition(scene, slot.name, slot.role, target, wanted, NoInputsError)
        if acq is None:
            if slot.name in layout.required:
                raise NoInputsError(_empty_slot(tile, target, slot, layout))
            empty.append(slot.name)
        slots.append((slot, acq))
    notes: tuple[str, ...] = (f"no scene for slot(s) {', '.join(empty)}: their inputs are nodata",) if empty else ()
    notes += tuple(f"{s} (the network accepts it)" for s in sorted(substituted))
    return InputSet(
        tile,
        target,
        out_grid,
        tuple(scene_bands(nearest)),
        tuple(slots),
        notes,
        on_grid=scope.on_grid,
        grid_from_file=scope.grid is not None,
    )


@dataclass(frozen=True)
class _Scope:
    """Where a date's S2 inputs come from: a place, and one grid of it or a file's grid."""

    tile: str
    on_grid: str | None
    grid: Grid | None = None
    outline: object = None
    #: With a file's grid, only the scenes of this place (a tile named beside the file).
    place: str | None = None

    def query(self, catalog: Catalog, start: datetime | None = None, end: datetime | None = None) -> list[Scene]:
        if self.grid is not None:
            hits = catalog.query(self.grid.bounds(), bbox_crs=self.grid.crs, sensor="S2", start=start, end=end)
            return [s for s in hits if self.place is None or s.place == self.place]
        hits = catalog.query(sensor="S2", tile=self.tile, start=start, end=end)
        return [s for s in hits if self.on_grid is None or grid_label(s) == self.on_grid]


def _is_file(value: str | os.PathLike[str]) -> bool:
    text = str(value)
    return os.path.exists(text) or text.lower().endswith(RASTER_SUFFIXES) or os.sep in text


def _grids_text(counts: Counter[str]) -> str:
    return ", ".join(f"{g} ({n} scene{'s' if n != 1 else ''})" for g, n in sorted(counts.items()))


def place_scope(catalog: Catalog, tile: str | None, grid: str | os.PathLike[str] | None) -> _Scope:
    """The place and the grid a date's S2 inputs come from (see :func:`choose_inputs`)."""
    places = catalog.places("S2")
    if not places:
        raise NoInputsError(f"{catalog.path}: no S2 scenes; nothing to reconstruct")
    if grid is not None and _is_file(grid):
        out = grid_of_file(grid, NoInputsError)
        hits = [s for s in catalog.query(out.bounds(), bbox_crs=out.crs, sensor="S2") if s.nodata_pct < 100.0]
        if tile is not None:
            tile = match_place(catalog, places, tile)
            hits = [s for s in hits if s.place == tile]
        if not hits:
            where = f" of tile {tile}" if tile else ""
            raise NoInputsError(f"{grid}: no S2 scene{where} in {catalog.path} covers this grid")
        covering = sorted({s.place for s in hits})
        label = tile or (covering[0] if len(covering) == 1 else _file_grid_name(out))
        return _Scope(label, None, out, grid_outline(out), place=tile)
    name = None if grid is None else str(grid).strip()
    if tile is None:
        if name and len(places) > 1:
            having = {p for s in catalog.query(sensor="S2") if grid_label(s).upper() == name.upper() for p in [s.place]}
            places = [p for p in places if p in having] or places
        if len(places) > 1:
            raise NoInputsError(f"{catalog.path}: holds S2 tiles {', '.join(places)}; choose one with --tile")
        tile = places[0]
    tile = match_place(catalog, catalog.places("S2"), tile)
    counts = Counter(grid_label(s) for s in catalog.query(sensor="S2", tile=tile) if s.nodata_pct < 100.0)
    if name:
        match = next((g for g in counts if g.upper() == name.upper()), None)
        if match is None:
            raise NoInputsError(
                f"{catalog.path}: no S2 scene of tile {tile} lies on grid {name} (grids: {_grids_text(counts)}); "
                f"give one of them to --grid, or a raster file whose grid the output takes"
            )
        return _Scope(tile, match)
    if len(counts) > 1:
        raise NoInputsError(
            f"{catalog.path}: the S2 scenes of tile {tile} lie on {len(counts)} grids: {_grids_text(counts)}; "
            f"pick one with --grid NAME, or give --grid FILE (a raster whose grid the output takes: every "
            f"scene covering it is warped onto it)"
        )
    return _Scope(tile, next(iter(counts), None))


def _file_grid_name(grid: Grid) -> str:
    from pyproj import CRS

    return grid_name(grid.crs, grid.transform, grid.width, grid.height, CRS.from_wkt(grid.crs).to_epsg())


def match_place(catalog: Catalog, places: Sequence[str], tile: str) -> str:
    """The catalog's place ``tile`` names (``T31UFQ``, ``31ufq``: ``31UFQ``), among ``places``.

    Raises:
        NoInputsError: no such place in the catalog.
    """
    norm = normalise_tile(tile) or ""
    match = next((p for p in places if p.upper() == norm.upper()), None)
    if match is None:
        raise NoInputsError(f"{catalog.path}: no S2 scenes of tile {norm} (tiles: {', '.join(places) or 'none'})")
    return match


#: The most scenes read for the temporal test besides a method's inputs.
MAX_WITNESSES = 8
#: Blue and NIR band names a witness is read with, in order of preference.
_WITNESS_BANDS = (("B02", "B2"), ("B08", "B8A", "B8"))


def choose_witnesses(
    catalog: Catalog,
    inputs: InputSet,
    window_days: float,
    exclude: Sequence[str] = (),
    max_cloud: float = 95.0,
    limit: int | None = None,
) -> tuple[Acquisition, ...]:
    """S2 scenes of the inputs' tile that the temporal test compares the inputs with, besides the
    inputs themselves: a method reads a few dates, often too few clear at a pixel for the test
    (a hazy date beside one clear one cannot be told from it). Scenes within ``window_days`` of
    an S2 input, not inputs, not excluded, with data and at most ``max_cloud`` % cloud, nearest to
    an input first, at most ``limit`` (default :data:`MAX_WITNESSES`); read with blue and NIR
    only, they never feed the method.
    """
    limit = MAX_WITNESSES if limit is None else limit
    s2 = [a for a in inputs.acquisitions if a.sensor == "S2"]
    if not s2 or window_days <= 0 or limit <= 0:
        return ()
    span = timedelta(days=window_days)
    first, last = min(a.datetime for a in s2), max(a.datetime for a in s2)
    taken = {a.scene_id for a in inputs.acquisitions} | set(exclude)
    if inputs.grid_from_file:
        # The output takes a file's grid: every S2 scene covering it may witness.
        outline = grid_outline(inputs.grid)
        found = catalog.query(
            inputs.grid.bounds(), bbox_crs=inputs.grid.crs, sensor="S2", start=first - span, end=last + span
        )
    else:
        outline = None
        found = [
            sc
            for sc in catalog.query(sensor="S2", tile=inputs.tile, start=first - span, end=last + span)
            if inputs.on_grid is None or grid_label(sc) == inputs.on_grid
        ]
    # Another delivery of an input (on another grid) is the input itself, no witness of it.
    chosen = [catalog.get(a.scene_id) for a in s2]

    def gap(scene: Scene) -> float:
        return min(abs((scene.datetime - a.datetime).total_seconds()) for a in s2) / 86400.0

    cands = [
        sc
        for sc in dedupe(found, outline)
        if sc.scene_id not in taken
        and not any(same_acquisition(sc, c, outline) for c in chosen)
        and sc.nodata_pct < 100.0
        and (sc.cloud_pct is None or sc.cloud_pct <= max_cloud)
        and gap(sc) <= window_days + 0.5
    ]
    cands.sort(key=lambda sc: (gap(sc), 101.0 if sc.cloud_pct is None else sc.cloud_pct))
    out: list[Acquisition] = []
    for sc in cands:
        bands = [next((b for b in names if b in sc.sources), None) for names in _WITNESS_BANDS]
        if bands[0] is None or bands[1] is None:
            continue
        check_files(sc, catalog.path)
        out.append(acquisition(sc, f"w{len(out) + 1}", "witness", inputs.target, [b for b in bands if b]))
        if len(out) == limit:
            break
    return tuple(out)


def _check_excluded(catalog: Catalog, exclude: Sequence[str]) -> None:
    for scene_id in exclude:
        try:
            catalog.get(scene_id)
        except QueryError:
            raise NoInputsError(
                f"{catalog.path}: cannot exclude {scene_id!r}: no scene has that id (ids look like {_an_id(catalog)})"
            ) from None


def _an_id(catalog: Catalog) -> str:
    first = next(iter(catalog), None)
    return "?" if first is None else first.scene_id


def _s2_twin(layout: InputRequest, slot: Slot) -> str:
    """The S2 slot an S1 slot sits near: same role and rank."""
    for s in layout.slots:
        if s.sensor == "S2" and s.role == slot.role and (s.role == "target" or s.rank == slot.rank):
            return s.name
    return ""


def _nearest_s1(catalog: Catalog, grid: Grid, when: datetime, max_hours: float) -> Scene | None:
    span = timedelta(hours=max_hours)
    hits = catalog.query(bbox=grid.bounds(), bbox_crs=grid.crs, sensor="S1", start=when - span, end=when + span)
    if not hits:
        return None
    best = min(hits, key=lambda s: abs(s.datetime - when))
    return best if abs((best.datetime - when).total_seconds()) <= max_hours * 3600 else None


def _no_neighbours(catalog: Catalog, tile: str, target: datetime, layout: InputRequest, s2: list[Scene]) -> str:
    day = target.date().isoformat()
    if not s2:
        return f"{catalog.path}: tile {tile} has no S2 scenes"
    near = min(s2, key=lambda s: abs(s.datetime - target))
    d = abs((near.datetime - target).total_seconds()) / 86400
    cloud = near.cloud_pct
    why = f"{d:.0f} days away" + (f", {cloud:.0f} % cloud" if cloud is not None else "")
    if near.nodata_pct >= 100.0:
        why += ", all nodata"
    return (
        f"{catalog.path}: no usable S2 scene of tile {tile} within {layout.max_days:g} days of {day} "
        f"with cloud <= {layout.max_cloud:g} % (nearest: {near.scene_id}, {why}); "
        f"widen --max-days or --max-cloud"
    )


def _empty_slot(tile: str, target: datetime, slot: Slot, layout: InputRequest) -> str:
    return (
        f"slot {slot.name}: no {slot.sensor} scene of tile {tile} for {target.date().isoformat()} "
        f"({slot.role}, rank {slot.rank}, within {layout.max_days:g} days, cloud <= {layout.max_cloud:g} %)"
    )


def output_name(tile: str, target: datetime, method: str) -> str:
    """File name for one date's output: ``S2_T{tile}_{YYYYMMDD}_{method}.tif`` (a grid's name in
    place of ``T{tile}`` for scenes without a tile id)."""
    return f"S2_{place_label(tile)}_{target:%Y%m%d}_{Path(method).stem}.tif"
