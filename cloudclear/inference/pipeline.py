"""Whole-tile reconstruction: read -> predict -> write, streamed in strips (DESIGN.md section 7).

The stages, each in its own module:

- **Read** (:mod:`.reading`): every acquisition is read in full-width strips aligned to the
  file's blocks, each source block once, by a prefetch thread that keeps a small ring of strips
  ahead. Files on another grid (S1, 20 m masks or bands) are read through a WarpedVRT.
- **Predict** (:mod:`.methods`, :mod:`.tiling`): a method turns the rows of one window row into
  reflectance. A network sees windows sized by a memory budget (its card's window a minimum)
  with a margin of at least its receptive-field radius, batched, through the one window loop of
  :mod:`.tiling`; only window
  cores are kept (exact for fully convolutional networks) or, for networks with per-window
  context, the overlap is Hann-blended in an fp32 accumulator covering the current rows. Gap
  filling works per pixel. Windows whose inputs are all nodata are skipped.
- **Write** (:mod:`.writer`): a writer thread converts to uint16 reflectance x 10000 and writes
  block-aligned rows to temporaries beside the output; the output and its status sidecar appear
  together, checked block by block, only when complete (:func:`cloudclear.outputs.atomic_outputs`).

This module drives them: :func:`run` for one date's chosen inputs, :func:`infer` for dates of a
tile in a catalog. Peak memory follows the strip height, the window batch and the tile width, not
the tile height.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudclear.errors import NoInputsError, OutputError, OutputExistsError
from cloudclear.gapfill import PixelStatus
from cloudclear.gdal import gdal_env
from cloudclear.inference.methods import GapfillMethod, Method, NetMethod, SpanResult, load_method
from cloudclear.inference.reading import HideMask, Prefetcher, RowBuffer, Source, Strip, reflectance, strip_bounds
from cloudclear.inference.select import InputSet, choose_inputs, choose_witnesses, output_name
from cloudclear.inference.tiling import BlendAccumulator
from cloudclear.inference.writer import (
    OUTPUT_PROFILE,
    QUANTIFICATION,
    OutputTemps,
    Writer,
    output_files,
    output_profile,
    seal,
    status_path_for,
    status_profile,
)
from cloudclear.masks import ClearPolicy
from cloudclear.outputs import WriteFailures

if TYPE_CHECKING:
    from cloudclear.catalog import Catalog

# Names other modules, the benches and the tests import from here.
_Source = Source
_strip_bounds = strip_bounds

__all__ = [
    "OUTPUT_PROFILE",
    "QUANTIFICATION",
    "GapfillMethod",
    "InferManyResult",
    "InferOptions",
    "InferResult",
    "Method",
    "NetMethod",
    "SpanResult",
    "Strip",
    "choose",
    "infer",
    "load_method",
    "output_profile",
    "run",
    "status_path_for",
    "status_profile",
]


# -- options and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class InferOptions:
    """How to run inference.

    Attributes:
        keep_observed: copy the target date's clear pixels to the output as they are.
        strip_rows: rows read per strip (rounded to the files' block height).
        overwrite: replace an existing output.
        cog: make the output a Cloud-Optimized GeoTIFF (a copy of the streamed file, with overviews).
        status: write the status sidecar.
        bbox: (minx, miny, maxx, maxy) in the tile's CRS: reconstruct only this part.
        progress: show a progress bar on stderr.
        ring: strips the reader keeps ready ahead of the computation.
        clear: what the inputs' masks' classes become before *clear* is decided (a buffer around
            obscured pixels, unclassified and snow as cloud, the temporal test across the inputs:
            :func:`~cloudclear.inference.reading.apply_temporal`); the default keeps the masks as
            decoded.
        exclude: scene ids never used as inputs (a clear date held out for scoring).
        hide: a mask raster (:class:`~cloudclear.inference.reading.HideMask`): every pixel it calls
            cloud or shadow is also cloud on the date reconstructed, for every method, so that a
            clear date can be reconstructed under another date's real clouds and scored against
            itself on those pixels.
    """

    keep_observed: bool = True
    strip_rows: int = 512
    overwrite: bool = False
    cog: bool = False
    status: bool = True
    bbox: tuple[float, float, float, float] | None = None
    progress: bool = False
    ring: int = 2
    clear: ClearPolicy = ClearPolicy()
    exclude: tuple[str, ...] = ()
    hide: str | None = None


@dataclass(frozen=True)
class InferResult:
    """What one date's run wrote and from what.

    Attributes:
        path: the reconstruction (uint16 reflectance x 10000, nodata 0).
        status_path: the status sidecar, or None.
        date: the target time.
        tile: S2 tile.
        method: ``gapfill`` or the checkpoint path.
        inputs: the acquisitions used (slot, scene id, datetime, offset in days, cloud %).
        notes: slots left empty and similar remarks.
        observed: pixels copied from the target date.
        reconstructed: pixels predicted.
        nodata: pixels left nodata (no input saw them).
        width: output columns.
        height: output rows.
        seconds: wall time of this date.
        device: where the network ran (``cpu`` for gapfill).
        policy: the clear policy used (:meth:`~cloudclear.masks.ClearPolicy.describe`).
        policy_removed: valid pixels of the inputs the masks call clear and the policy does not
            (its temporal test included), per slot (slots whose count is 0 left out).
        policy_restored: pixels where the policy left no S2 input clear while the masks alone had
            one, so the masks' decision was kept there
            (:func:`~cloudclear.inference.reading.restore_mask_clear`).
        policy_removed_by: the pixels removed over every input, per rule ("detector",
            "unclassified", "snow", "buffer", "temporal"), and "given back" (negative): what
            :func:`~cloudclear.inference.reading.restore_mask_clear` returned, input by input; the
            values sum to the total of ``policy_removed``.
        hide: the ``--hide`` mask (absolute path), or None.
        hidden: pixels of the output grid the ``--hide`` mask calls cloud or shadow.
        hidden_clear: of them, pixels the date's own acquisition had clear (after the clear
            policy) and which were reconstructed instead.
    """

    path: Path
    status_path: Path | None
    date: datetime
    tile: str
    method: str
    inputs: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]
    observed: int
    reconstructed: int
    nodata: int
    width: int
    height: int
    seconds: float
    device: str = "cpu"
    policy: str = ""
    policy_removed: dict[str, int] = field(default_factory=dict)
    policy_restored: int = 0
    policy_removed_by: dict[str, int] = field(default_factory=dict)
    hide: str | None = None
    hidden: int = 0
    hidden_clear: int = 0

    def to_dict(self) -> dict[str, Any]:
        hide = None
        if self.hide is not None:
            hide = {"path": self.hide, "pixels": self.hidden, "clear_hidden": self.hidden_clear}
        return {
            "path": str(self.path),
            "status_path": str(self.status_path) if self.status_path else None,
            "date": self.date.isoformat(),
            "tile": self.tile,
            "method": self.method,
            "inputs": list(self.inputs),
            "notes": list(self.notes),
            "pixels": {"observed": self.observed, "reconstructed": self.reconstructed, "nodata": self.nodata},
            "width": self.width,
            "height": self.height,
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "clear_policy": {
                "policy": self.policy,
                "removed": dict(self.policy_removed),
                "removed_by_rule": dict(self.policy_removed_by),
                "restored": self.policy_restored,
            },
            "hide": hide,
        }


# -- one date ------------------------------------------------------------------------------------


def _check_output(path: Path, status: Path | None, overwrite: bool) -> None:
    """Refuse existing outputs (unless ``overwrite``) and make the output folder, before any reading."""
    for p in (path, status):
        if p is not None and (p.exists() or p.is_symlink()) and not overwrite:
            raise OutputExistsError(f"{p}: exists; pass --overwrite to replace it")
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write output (folder {path.parent} is not writable)")


def run(
    inputs: InputSet,
    method: Method,
    dst_path: str | os.PathLike[str],
    options: InferOptions = InferOptions(),
    progress_desc: str = "",
) -> InferResult:
    """Reconstruct one date from chosen inputs and write it to ``dst_path``.

    The output and its status sidecar are written to hidden temporaries beside ``dst_path``,
    checked block by block, and renamed into place together only when complete; any error or
    interruption removes them and leaves an existing output as it was.

    Raises:
        OutputExistsError: the output exists and ``options.overwrite`` is False.
        OutputError: the output cannot be written (read-only folder, disk full, ...), naming the
            file and the cause.
        GridError: ``options.bbox`` does not overlap the tile.
        SceneNotFoundError, InvalidRasterError: inputs that are gone or cannot be read.
        NonFiniteOutputError: the network produced NaN or infinite values.
    """
    t0 = time.perf_counter()
    path = Path(dst_path).expanduser().resolve()
    spath = status_path_for(path) if options.status else None
    if options.bbox:
        inputs = dataclasses.replace(inputs, grid=inputs.grid.crop(options.bbox))
    _check_output(path, spath, options.overwrite)
    hide: HideMask | None = None
    hide_note: tuple[str, ...] = ()
    with gdal_env("infer"):
        if options.hide is not None:
            hide = HideMask(options.hide, inputs.grid)
    try:
        with (
            gdal_env("infer"),
            output_files(path, spath, overwrite=options.overwrite, cog=options.cog) as temps,
            WriteFailures() as failures,
        ):
            hidden = hide.count(options.strip_rows) if hide is not None else 0
            counts, removed, by_rule, restored, hidden_clear = _reconstruct(
                inputs, method, temps, (path, spath), failures, options, progress_desc, hide, hidden
            )
    finally:
        if hide is not None:
            hide.close()
    grid = inputs.grid
    if hide is not None:
        hide_note = (_hide_note(hide.path, hidden, hidden_clear, grid.width * grid.height, inputs),)
    return InferResult(
        path=path,
        status_path=spath,
        date=inputs.target,
        tile=inputs.tile,
        method=method.name,
        inputs=tuple(a.to_dict() for a in inputs.acquisitions),
        notes=inputs.notes + (_policy_note(options.clear, removed, inputs, restored, by_rule),) + hide_note,
        observed=int(counts[PixelStatus.OBSERVED]),
        reconstructed=int(counts[PixelStatus.RECONSTRUCTED]),
        nodata=int(counts[PixelStatus.NODATA]),
        width=grid.width,
        height=grid.height,
        seconds=time.perf_counter() - t0,
        device=method.device,
        policy=options.clear.describe(),
        policy_removed={k: v for k, v in removed.items() if v},
        policy_restored=restored,
        policy_removed_by={k: v for k, v in by_rule.items() if v},
        hide=hide.path if hide is not None else None,
        hidden=hidden,
        hidden_clear=hidden_clear,
    )


def _target_index(inputs: InputSet) -> int | None:
    """The slot of the date's own S2 acquisition, if it has one."""
    return next(
        (i for i, (s, a) in enumerate(inputs.slots) if s.role == "target" and s.sensor == "S2" and a is not None),
        None,
    )


def _hide_note(path: str, hidden: int, hidden_clear: int, npx: int, inputs: InputSet) -> str:
    """The run summary's line on ``--hide``."""
    text = f"hide: {path}: {hidden} px ({100 * hidden / max(npx, 1):.1f} %) cloud or shadow there"
    if _target_index(inputs) is None:
        return text + "; the date has no acquisition of its own, nothing to hide"
    return text + f", {hidden_clear} px of them clear on the date, reconstructed instead"


def _policy_note(
    policy: ClearPolicy,
    removed: dict[str, int],
    inputs: InputSet,
    restored: int = 0,
    by_rule: dict[str, int] | None = None,
) -> str:
    """The run summary's line on the clear policy and what it removed beyond the masks."""
    text = f"clear policy: {policy.describe()}"
    if policy.changes_nothing:
        return text
    total = sum(removed.values())
    target = next((removed.get(s.name, 0) for s, a in inputs.slots if s.role == "target" and a is not None), None)
    npx = max(inputs.grid.width * inputs.grid.height, 1)
    text += f"; removed {total} px beyond the masks over {len(removed)} input(s)"
    if target is not None:
        text += f", {target} px ({100 * target / npx:.1f} %) of the date's own"
    rules = {k: v for k, v in (by_rule or {}).items() if v}
    if rules:
        text += " (by rule: " + ", ".join(f"{k} {v}" for k, v in rules.items()) + ")"
    if restored:
        text += f"; kept the masks' decision at {restored} px the policy left with no clear input"
    if inputs.witnesses:
        n = len(inputs.witnesses)
        text += f"; the temporal test also compared {n} more scene(s) within {policy.temporal_days} d"
    return text


def input_level(inputs: InputSet) -> str:
    """The processing level of a date's S2 inputs, which its output keeps: "L1C" (top of
    atmosphere), "L2A" (surface), "mixed" when the inputs differ, "unknown" when none says."""
    levels = {str(getattr(acq, "level", "") or "") for acq in inputs.acquisitions if acq.sensor == "S2"} - {""}
    return levels.pop() if len(levels) == 1 else "mixed" if levels else "unknown"


def _tags(inputs: InputSet, method: Method, options: InferOptions, hidden: int = 0) -> dict[str, str]:
    level = input_level(inputs)
    tags = {
        "DATETIME": inputs.target.strftime("%Y-%m-%dT%H:%M:%S"),
        "TILE_ID": inputs.tile,
        "CLOUDCLEAR_METHOD": Path(method.name).name,
        "CLOUDCLEAR_INPUTS": ",".join(acq.scene_id for acq in inputs.acquisitions),
        "CLOUDCLEAR_KEEP_OBSERVED": str(options.keep_observed).lower(),
        "QUANTIFICATION_VALUE": str(int(QUANTIFICATION)),
        # the output is reflectance of the inputs' level: top of atmosphere from L1C, surface from L2A
        "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET": "0",
        "PROCESSING_LEVEL": level,
        "CLOUDCLEAR_INPUT_LEVEL": level,
    }
    tags["CLOUDCLEAR_CLEAR_POLICY"] = options.clear.describe()
    if inputs.witnesses:
        tags["CLOUDCLEAR_TEMPORAL_WITNESSES"] = ",".join(acq.scene_id for acq in inputs.witnesses)
    if options.hide is not None:
        tags["CLOUDCLEAR_HIDE"] = os.path.abspath(options.hide)
        tags["CLOUDCLEAR_HIDE_PIXELS"] = str(hidden)
    return tags


def _reconstruct(
    inputs: InputSet,
    method: Method,
    temps: OutputTemps,
    names: tuple[Path, Path | None],
    failures: WriteFailures,
    options: InferOptions,
    progress_desc: str,
    hide: HideMask | None = None,
    hidden: int = 0,
) -> tuple[np.ndarray, dict[str, int], dict[str, int], int, int]:
    """Read, predict and write every row into ``temps``; returns the pixel counts per status,
    per used slot the pixels the clear policy removed beyond the masks, the same per rule over
    every slot, the pixels where the masks' decision was restored
    (:func:`~cloudclear.inference.reading.restore_mask_clear`), and the target's clear pixels
    ``hide`` took out (``hidden``: the pixels it hides on the grid, for the tags)."""
    grid = inputs.grid
    slots = inputs.slots
    used = [(i, a) for i, (_, a) in enumerate(slots) if a is not None]
    sources: list[Source] = []
    reader: Prefetcher | None = None
    writer: Writer | None = None
    bar: Any = None
    by_rule: dict[str, int] = {}
    target_i = _target_index(inputs)
    try:
        for i, acq in used:
            sources.append(Source(acq, grid, options.clear, hide=hide if i == target_i else None))
        # Scenes read for the temporal test only: after the inputs, never handed to the method.
        for acq in inputs.witnesses:
            sources.append(Source(acq, grid, options.clear, witness=True))
        bounds = strip_bounds(sources, grid.height, options.strip_rows)
        spans, plan = method.row_spans(grid.height, grid.width, bounds)
        out_bands = method.output_bands(inputs)
        keep_idx = [inputs.bands.index(b) for b in out_bands]
        tags = _tags(inputs, method, options, hidden)
        writer = Writer(temps.stream, temps.status, grid, out_bands, tags, names, failures)
        writer.start()
        reader = Prefetcher(sources, bounds, options.ring)
        reader.start()
        buf = RowBuffer(iter(reader), len(sources))
        if options.progress:
            from tqdm import tqdm

            desc = progress_desc or inputs.target.date().isoformat()
            bar = tqdm(total=grid.height, unit="row", desc=desc, leave=False)
        acc = BlendAccumulator(len(out_bands), grid.width, status=True) if method.blend else None
        for k, span in enumerate(spans):
            a, b = span.start, min(span.stop, grid.height)
            got = buf.get(a, b)
            strips: list[Strip | None] = [None] * len(slots)
            for (i, _), s in zip(used, got[: len(used)], strict=True):
                strips[i] = s
            res = method.run(inputs, strips, span, plan, options)
            if acc is not None:
                assert res.weight is not None
                acc.add(a, res.values, res.weight, res.status)
                nxt = spans[k + 1].start if k + 1 < len(spans) else grid.height
                popped = acc.pop(min(nxt, grid.height))
                if popped is None:
                    continue
                r0, vals, st_or_none = popped
                assert st_or_none is not None
                st = st_or_none
            else:
                r0 = span.core_start
                r1 = min(span.core_stop, grid.height)
                vals, st = res.values[:, : r1 - r0], res.status[: r1 - r0]
            t_i = target_i if options.keep_observed and not method.keeps_observed else None
            if t_i is not None and (tstrip := strips[t_i]) is not None:
                tacq = slots[t_i][1]
                assert tacq is not None
                h = st.shape[0]
                obs = tstrip.clear[r0 - a : r0 - a + h]
                if obs.any():
                    refl = reflectance(tstrip.rows(r0 - a, r0 - a + h), tacq, slice(None))[keep_idx]
                    vals = np.where(obs[None], refl, vals)
                    st = np.where(obs, PixelStatus.OBSERVED, st).astype(np.uint8)
            writer.put(r0, vals, st)
            if bar is not None:
                bar.update(st.shape[0])
        writer.finish()
        counts = writer.counts.copy()
        removed = {slots[i][0].name: src.removed for (i, _), src in zip(used, sources[: len(used)], strict=True)}
        for src in sources[: len(used)]:
            for rule, n in src.removed_by.items():
                by_rule[rule] = by_rule.get(rule, 0) + n
            if src.given_back:
                by_rule["given back"] = by_rule.get("given back", 0) - src.given_back
        restored = reader.restored
        hidden_clear = sum(src.hidden for src in sources)
        writer = None
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if reader is not None:
            reader.close()
        for src in sources:
            src.close()
    seal(temps, *names, failures)
    return counts, removed, by_rule, restored, hidden_clear


# -- several dates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferManyResult:
    """The results of every date of one command."""

    results: tuple[InferResult, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"dates": [r.to_dict() for r in self.results]}


def infer(
    catalog: Catalog | str | os.PathLike[str],
    dates: Sequence[str | datetime],
    method: Method,
    dst: str | os.PathLike[str],
    *,
    tile: str | None = None,
    options: InferOptions = InferOptions(),
    on_result: Callable[[InferResult], None] | None = None,
    grid: str | os.PathLike[str] | None = None,
) -> InferManyResult:
    """Reconstruct one or more dates of a tile from a catalog.

    Args:
        catalog: an open :class:`cloudclear.catalog.Catalog` (or the path of one).
        dates: dates to reconstruct (``YYYY-MM-DD`` or ISO datetimes).
        method: from :func:`load_method`.
        dst: for one date, the output file; for several, a folder (files named
            ``S2_T{tile}_{YYYYMMDD}_{method}.tif``) or a path containing ``{date}``.
        tile: the S2 tile when the catalog holds several.
        options: see :class:`InferOptions`.
        grid: the output grid when the tile's S2 scenes lie on several: a grid name, or a raster
            whose grid the output takes (see :func:`~cloudclear.inference.select.choose_inputs`).
        on_result: called after each date (e.g. to print a line).

    Raises:
        CloudClearError: see :func:`choose_inputs` and :func:`run`. With several dates, a date
            whose inputs cannot be chosen stops the run before anything is written.
    """
    from cloudclear.catalog import Catalog

    if not isinstance(catalog, Catalog):
        catalog = Catalog.open(catalog)
    if not dates:
        raise NoInputsError("no dates to reconstruct")
    with gdal_env("infer"):
        return _infer(catalog, dates, method, dst, tile, options, on_result, grid_choice=grid)


def choose(
    catalog: Catalog,
    date: str | datetime,
    method: Method,
    *,
    tile: str | None = None,
    options: InferOptions = InferOptions(),
    grid: str | os.PathLike[str] | None = None,
) -> InputSet:
    """One date's inputs as :func:`infer` chooses them (witnesses included when the policy tests)."""
    request = method.layout()
    if options.exclude:
        request = dataclasses.replace(request, exclude=tuple(request.exclude) + tuple(options.exclude))
    chosen = choose_inputs(
        catalog, date, request, tile=tile, bands=method.bands(), s1_bands=method.s1_bands(), grid=grid
    )
    if not options.clear.temporal:
        return chosen
    days, exclude = options.clear.temporal_days, request.exclude
    return dataclasses.replace(
        chosen, witnesses=choose_witnesses(catalog, chosen, days, exclude, max_cloud=request.max_cloud)
    )


def _infer(
    catalog: Catalog,
    dates: Sequence[str | datetime],
    method: Method,
    dst: str | os.PathLike[str],
    tile: str | None,
    options: InferOptions,
    on_result: Callable[[InferResult], None] | None,
    grid_choice: str | os.PathLike[str] | None = None,
) -> InferManyResult:
    # Choose every date's inputs first: a bad date fails before hours of work on the others.
    chosen = [choose(catalog, d, method, tile=tile, options=options, grid=grid_choice) for d in dates]
    if options.hide is not None:
        # A bad --hide mask fails before any date is read or written.
        with gdal_env("infer"):
            for grid in {c.grid for c in chosen}:
                HideMask(options.hide, grid).close()
    dst_text = str(dst)
    if (
        len(chosen) > 1
        and "{date}" not in dst_text
        and Path(dst_text).suffix.lower() in (".tif", ".tiff")
        and not Path(dst_text).is_dir()
    ):
        raise OutputError(f"{dst_text}: {len(chosen)} dates need a folder or a path containing {{date}}")
    paths: list[Path] = []
    for inp in chosen:
        if "{date}" in dst_text:
            paths.append(Path(dst_text.replace("{date}", inp.target.strftime("%Y%m%d"))))
        elif len(chosen) > 1 or Path(dst_text).is_dir():
            paths.append(Path(dst_text) / output_name(inp.tile, inp.target, method.name))
        else:
            paths.append(Path(dst_text))
    if len(set(paths)) != len(paths):
        raise OutputError(f"{dst_text}: several dates map to the same output file; use a folder or {{date}}")
    for p in paths:
        _check_output(p.expanduser().resolve(), status_path_for(p) if options.status else None, options.overwrite)
    results = []
    for i, (inp, p) in enumerate(zip(chosen, paths, strict=True)):
        desc = f"{inp.target.date().isoformat()} ({i + 1}/{len(chosen)})"
        r = run(inp, method, p, options, progress_desc=desc)
        results.append(r)
        if on_result is not None:
            on_result(r)
    return InferManyResult(tuple(results))
