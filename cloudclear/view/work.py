"""The work ``cloudclear view`` does on request: scores of an output, and runs of ``infer``.

Scores reuse :func:`cloudclear.metrics.score`: an output made with ``--hide`` is scored against
its date's own S2 scene on the hidden mask's cloudy pixels (leaving out what the scene's own mask
does not call clear); an output with a ``*_truth.tif`` of the same place and date is scored
against it (on the input date's cloudy pixels where the scene has a mask). Results are cached by
output id and file time.

A run is :func:`cloudclear.inference.pipeline.infer` in a background thread, one at a time.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudclear.errors import CloudClearError

if TYPE_CHECKING:
    from cloudclear.scenes import Scene
    from cloudclear.view.state import Output, ViewState


class BusyError(CloudClearError):
    """A run is already going on."""


def _single_file(scene: Scene) -> str | None:
    """The one file holding every band of a scene, or None when its bands are in several."""
    paths = {str(src.path) for src in scene.sources.values()}
    return paths.pop() if len(paths) == 1 else None


def reference_of(state: ViewState, out: Output) -> tuple[str, str | None, str, str | None] | None:
    """(reference path, mask path or None, pixels, the reference's own mask or None) for an
    output, or None when it has none."""
    if out.hide is not None:
        for _, s in state.scenes():
            if s.place == out.place and s.datetime.date().isoformat() == out.date:
                ref = _single_file(s)
                if ref is not None:
                    return ref, out.hide, "cloudy", s.mask.path if s.mask is not None else None
    if out.truth is not None:
        mask = None
        for _, s in state.scenes():
            if s.place == out.place and s.datetime.date().isoformat() == out.date and s.mask is not None:
                mask = s.mask.path
        return str(out.truth), mask, "cloudy" if mask else "all", None
    return None


class Scores:
    """Scores of outputs, computed once per output file (cached by id and modification time)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, float], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, state: ViewState, out: Output) -> dict[str, Any] | None:
        from cloudclear.metrics import ScoreOptions, score

        ref = reference_of(state, out)
        if ref is None:
            return None
        key = (out.id, out.path.stat().st_mtime)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            path, mask, pixels, ref_mask = ref
            s = score(out.path, path, mask=mask, ref_mask=ref_mask, options=ScoreOptions(pixels=pixels))
            d = s.to_dict()
            got = {k: d[k] for k in ("psnr", "ssim", "sam", "rmse", "mae")}
            got.update(pixels=s.pixels, reference=Path(path).name, n_pixels=s.n_pixels, sam_units=s.sam_units)
            self._cache[key] = got
            return got


@dataclass
class Run:
    id: str
    date: str
    method: str
    place: str
    state: str = "running"
    progress: float = 0.0
    message: str = ""
    output: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"state": self.state, "progress": self.progress, "message": self.message}
        if self.output is not None:
            d["output"] = self.output
        return d


class Runs:
    """Runs of ``infer`` from the page, one at a time."""

    def __init__(self, state: ViewState):
        self.state = state
        self.runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def busy(self) -> bool:
        return any(r.state == "running" for r in self.runs.values())

    def start(self, date: str, method: str, place: str) -> Run:
        """Start a run (the arguments already checked).

        Raises:
            BusyError: a run is going on.
        """
        with self._lock:
            if self.busy():
                raise BusyError("a run is already going on; wait for it to finish")
            run = Run(secrets.token_hex(6), date, method, place, message=f"starting {method} on {place} {date}")
            self.runs[run.id] = run
        run.thread = threading.Thread(target=self._work, args=(run,), name=f"cloudclear-view-run-{run.id}", daemon=True)
        run.thread.start()
        return run

    def _work(self, run: Run) -> None:
        from cloudclear.inference.methods import load_method
        from cloudclear.inference.pipeline import InferOptions, infer
        from cloudclear.view.state import output_id

        try:
            folder = self.state.run_folder()
            dst = folder / f"S2_T{run.place}_{run.date.replace('-', '')}_{Path(run.method).name}.tif"
            catalog = next(c for c, s in self.state.scenes() if s.place == run.place)
            run.message = f"loading {run.method}"
            method = load_method(run.method)
            run.message = f"reconstructing {run.place} {run.date} with {run.method}"
            run.progress = 0.1
            # the catalog's clear policy: the one the page's mask shows
            options = InferOptions(overwrite=True, clear=catalog.policy)
            infer(catalog, [run.date], method, dst, tile=run.place, options=options)
            run.output = output_id(dst)
            self.state.outputs()
            run.message, run.progress, run.state = f"wrote {dst.name}", 1.0, "done"
        except CloudClearError as exc:
            run.message, run.state = str(exc).splitlines()[0] if str(exc) else type(exc).__name__, "failed"
        except Exception as exc:  # noqa: BLE001 - a failed run is reported on the page, the server goes on
            run.message, run.state = f"{type(exc).__name__}: {exc}".splitlines()[0], "failed"
