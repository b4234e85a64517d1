"""What the commands share: options, parsers of option values, registry choices, output helpers.

Nothing here imports a heavy module at import time: registries are imported when a value is
checked or a command's help is shown, so ``cloudclear --help`` stays instant.
"""

from __future__ import annotations

import _thread
import importlib
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand

# --- shared options -----------------------------------------------------------------------------


def json_option(help: str = "Print the result as JSON.") -> Any:
    """The ``--json`` switch: machine-readable output on stdout."""
    return typer.Option("--json", help=help)


def overwrite_option(what: str = "existing outputs") -> Any:
    """The ``--overwrite`` switch: replace ``what`` instead of refusing it."""
    return typer.Option("--overwrite", help=f"Replace {what}.")


AsJson = Annotated[bool, json_option()]
Overwrite = Annotated[bool, overwrite_option()]

# The clear policy (cloudclear.masks.ClearPolicy): which masks, and what their classes become
# before a pixel is called clear. None means "not given": the preset's (or the default's) value.
Buffer = Annotated[
    int | None,
    typer.Option(
        "--buffer",
        help="Grow cloud, thin cloud and shadow by this many pixels (a disk) before deciding what is "
        "clear, so halos and edges are not kept. [default: 3; 5 with --strict, 0 with --as-decoded]",
        show_default=False,
    ),
]
Unclassified = Annotated[
    str | None,
    typer.Option(
        "--unclassified",
        help="What Sen2Cor's 'unclassified' (SCL 7) counts as: clear or cloud. [default: clear; cloud with --strict]",
        show_default=False,
    ),
]
Snow = Annotated[
    str | None,
    typer.Option("--snow", help="What the masks' snow counts as: clear or cloud. [default: clear]"),
]
MaskSource = Annotated[
    str | None,
    typer.Option(
        "--mask-source",
        help="Which masks decide: 'mask' (each scene's own; the built-in detector's, which index computes, "
        "for a scene without one), 'combined' (the scene's own and the detector's, either one's cloud or "
        "shadow is obscured; index then runs the detector on every scene) or 'detector' (the detector's "
        "where index made one). [default: mask]",
        show_default=False,
    ),
]
Temporal = Annotated[
    bool | None,
    typer.Option(
        "--temporal/--no-temporal",
        help="The temporal test: a pixel the mask calls clear that is much brighter in blue than the "
        "other dates clear there is cloud or haze, much darker in NIR is shadow, snow with no snowy "
        "other date is cloud (needs 2 other clear dates at the pixel). [default: on; off with --as-decoded]",
        show_default=False,
    ),
]
TemporalDays = Annotated[
    int | None,
    typer.Option(
        "--temporal-days",
        help="The temporal test compares each date with the dates within this many days of it (0: all "
        "dates read). [default: 20]",
        show_default=False,
    ),
]
Strict = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="The strict clear policy: the default with a 5 px buffer and 'unclassified' as cloud; options "
        "given override it.",
    ),
]
AsDecoded = Annotated[
    bool,
    typer.Option(
        "--as-decoded",
        help="Each scene's own mask as decoded, nothing else (no detector, buffer, unclassified rule or "
        "temporal test: cloudclear before 0.5); options given override it.",
    ),
]


def clear_policy(
    buffer: int | None = None,
    unclassified: str | None = None,
    snow: str | None = None,
    strict: bool = False,
    temporal: bool | None = None,
    *,
    as_decoded: bool = False,
    source: str | None = None,
    temporal_days: int | None = None,
    none_if_unset: bool = False,
) -> Any:
    """The :class:`~cloudclear.masks.ClearPolicy` the clear-policy options ask for; with
    ``none_if_unset``, None when no option and no preset was given (the caller's own default).

    Raises:
        typer.BadParameter: a value is out of range or not a choice, or both presets (exit 2).
    """
    import dataclasses

    from cloudclear.errors import MaskError
    from cloudclear.masks import AS_DECODED, DEFAULT_POLICY, STRICT

    if strict and as_decoded:
        raise typer.BadParameter("--strict and --as-decoded are two different presets; give one")
    given: dict[str, Any] = {
        "buffer_px": buffer,
        "unclassified": unclassified,
        "snow": snow,
        "temporal": temporal,
        "temporal_days": temporal_days,
        "source": source,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if none_if_unset and not (strict or as_decoded or given):
        return None
    base = STRICT if strict else AS_DECODED if as_decoded else DEFAULT_POLICY
    try:
        return dataclasses.replace(base, **given)
    except MaskError as exc:
        raise typer.BadParameter(str(exc).removeprefix("clear policy: ")) from None


# --- verbosity ----------------------------------------------------------------------------------

# Set by the app callback on every invocation; read by the commands (progress bars, notes).
_level = logging.WARNING


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to ``sys.stderr`` as it is when the record comes (a second run in one
    process, as in tests, has another stderr; logging.basicConfig would keep the first one's)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_handler: _StderrHandler | None = None


def set_verbosity(verbose: int, quiet: bool) -> None:
    """Map ``-v``/``-q`` to logging levels, and keep GDAL's own log quiet unless ``-v``.

    GDAL reports some failures (a full disk: ``_tiffWriteProc: No space left on device``) as log
    records through the ``rasterio`` loggers as well as through the error the library raises; the
    user should see only the one line the CLI prints for that error.
    """
    global _level, _handler
    _level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    # One handler of ours on the root logger, writing to the stderr of the run.
    if _handler is None:
        _handler = _StderrHandler()
        _handler.setFormatter(logging.Formatter("cloudclear: %(levelname)s: %(message)s"))
        logging.getLogger().addHandler(_handler)
    logging.getLogger().setLevel(_level)
    logging.getLogger("rasterio").setLevel(logging.NOTSET if verbose else logging.CRITICAL)


def quiet() -> bool:
    """True under ``-q``: only errors go to stderr."""
    return _level > logging.WARNING


def progress() -> bool:
    """Whether to draw progress bars: not under ``-q``, and only on a terminal."""
    return _level <= logging.WARNING and sys.stderr.isatty()


# --- registries ---------------------------------------------------------------------------------

#: Registry key -> (module, attribute): the library's dicts of names that options choose from.
REGISTRIES: dict[str, tuple[str, str]] = {
    "detectors": ("cloudclear.detect.pixels", "DETECTORS"),
    "architectures": ("cloudclear.nets", "ARCHITECTURES"),
    "sizes": ("cloudclear.nets", "SIZES"),
    "loss_pixels": ("cloudclear.training", "LOSS_PIXELS"),
    "splits": ("cloudclear.sampling.store", "SPLITS"),
    "layouts": ("cloudclear.layouts", "PRESETS"),
    "pixel_sets": ("cloudclear.metrics", "PIXEL_SETS"),
    "aggregations": ("cloudclear.metrics", "AGGREGATIONS"),
    "ssim_windows": ("cloudclear.metrics", "SSIM_WINDOWS"),
    "sam_units": ("cloudclear.metrics", "SAM_UNITS"),
    "mask_conventions": ("cloudclear.masks", "CONVENTIONS"),
}


def names(registry: str) -> list[str]:
    """The names a registry holds, in its order (imports the library module that owns it)."""
    module, attr = REGISTRIES[registry]
    return list(getattr(importlib.import_module(module), attr))


def check_choice(registry: str, value: str, option: str | None = None, extra: tuple[str, ...] = ()) -> str:
    """``value`` if the registry (or ``extra``, names the CLI adds) holds it; else a usage error
    (exit 2) listing the valid names."""
    valid = names(registry) + list(extra)
    if value not in valid:
        raise typer.BadParameter(f"{value!r}: choose one of {', '.join(valid)}", param_hint=option)
    return value


def choice(registry: str, extra: tuple[str, ...] = ()) -> Callable[[str | None], str | None]:
    """An option callback checking the value against a registry, plus ``extra`` names (when the
    command runs, not at import, so the registry's module is not loaded for ``--help``)."""

    def callback(value: str | None) -> str | None:
        return None if value is None else check_choice(registry, value, extra=extra)

    return callback


class RegistryCommand(TyperCommand):
    """A command whose option help may name a registry as ``{key}`` (a key of :data:`REGISTRIES`):
    the names are filled in when the help is shown, so the same dict feeds the help, the check of
    the value and the library's validation."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            text = getattr(param, "help", None)
            if text and "{" in text:
                for key in REGISTRIES:
                    if "{" + key + "}" in text:
                        text = text.replace("{" + key + "}", ", ".join(names(key)))
                param.help = text  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


# --- parsers of option values -------------------------------------------------------------------


def parse_bands(text: str | None) -> tuple[str, ...] | None:
    """A comma list of band names (or 1-based indices) -> tuple, blanks dropped; None when not given."""
    if not text:
        return None
    return tuple(b.strip() for b in text.split(",") if b.strip())


def parse_list(text: str | None) -> tuple[str, ...]:
    """A comma list of names -> tuple, blanks dropped; empty when not given."""
    return parse_bands(text) or ()


def parse_floats(text: str | None, n: int, name: str) -> tuple[float, ...] | None:
    """``n`` comma-separated numbers for option ``name``; None when not given."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise typer.BadParameter(f"{name} takes {n} comma-separated numbers, not {text!r}")
    return values


def parse_memory(text: str) -> int:
    """A memory size such as ``1.5GiB``, ``800MiB``, ``800M`` or ``2G`` (powers of 1024; a bare
    number is MiB) in bytes.

    Raises:
        ValueError: not a positive size.
    """
    units = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(num) * units[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a memory size (e.g. 1.5GiB, 800MiB)") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{text!r}: a memory size must be positive")
    return int(value)


def parse_bbox(text: str | None) -> list[float] | None:
    """``minx,miny,maxx,maxy`` -> 4 numbers; None when not given."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected minx,miny,maxx,maxy") from None
    if len(vals) != 4:
        raise typer.BadParameter(f"{text!r}: expected 4 numbers minx,miny,maxx,maxy")
    return vals


def parse_range(text: str | None) -> tuple[float | None, float | None]:
    """``MIN:MAX``, ``:MAX``, ``MIN:`` or ``MAX`` -> (low, high), None for an open end."""
    if text is None:
        return None, None
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            return None, float(lo)
        return (float(lo) if lo else None), (float(hi) if hi else None)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected MIN:MAX, :MAX, MIN: or MAX (percent)") from None


def expand_dates(values: list[str], every: int) -> list[str]:
    """Dates as given, with each ``START..END`` range stepped by ``every`` days."""
    from cloudclear.inference.select import date_range

    out: list[str] = []
    for v in values:
        if ".." in v:
            a, _, b = v.partition("..")
            out += [d.strftime("%Y-%m-%d") for d in date_range(a, b, every)]
        else:
            out.append(v)
    return out


def expand_globs(patterns: list[str] | None, what: str) -> list[str]:
    """Expand quoted globs (the shell leaves them when nothing matches or when quoted)."""
    import glob

    out: list[str] = []
    for pat in patterns or []:
        if any(c in pat for c in "*?["):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise typer.BadParameter(f"{pat}: no {what} matches this pattern")
            out.extend(hits)
        else:
            out.append(pat)
    return out


# --- output -------------------------------------------------------------------------------------


def print_skipped(skipped: Iterable[Any], limit: int) -> None:
    """List skipped files on stderr, grouped by reason, at most ``limit`` per reason (0 = all);
    nothing under ``-q``."""
    skipped = list(skipped)
    if not skipped or quiet():
        return
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        reason = s.reason.split(": ", 1)[1] if s.reason.startswith(s.path) else s.reason
        by_reason.setdefault(reason, []).append(s.path)
    typer.echo(f"skipped {len(skipped)} file(s):", err=True)
    for reason, paths in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = paths if limit <= 0 else paths[:limit]
        for p in shown:
            typer.echo(f"  {p}: {reason}", err=True)
        if len(paths) > len(shown):
            typer.echo(f"  ... and {len(paths) - len(shown)} more: {reason}", err=True)


# --- interruption -------------------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run can remove its temporary files."""


R = TypeVar("R")


def interruptible(call: Callable[[], R], what: str, message: str | None = None) -> R:
    """Run ``call`` with SIGTERM raised as an exception, so its temporaries are removed; Ctrl-C or
    SIGTERM then exit 130 with one line saying no partial ``what`` was left (or ``message``).

    A signal's exception raised while Python runs a weakref callback or a ``__del__`` (the garbage
    collector's work, at any moment) is printed as "Exception ignored" and dropped, and the run
    would go on as if no signal came. Such an exception is caught on its way to being dropped
    (``sys.unraisablehook``) and the signal delivered again 50 ms later, from another thread (raised
    at once, it would be raised inside the hook, and dropped again).
    """

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated()

    def on_unraisable(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, (_Terminated, KeyboardInterrupt)):
            signum = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
            again = threading.Timer(0.05, _thread.interrupt_main, (signum,))
            again.daemon = True
            again.start()
            return
        previous_hook(unraisable)

    previous = signal.signal(signal.SIGTERM, on_term)
    previous_hook, sys.unraisablehook = sys.unraisablehook, on_unraisable
    try:
        return call()
    except (KeyboardInterrupt, _Terminated):
        typer.echo(f"cloudclear: error: interrupted; {message or f'no partial {what} was left'}", err=True)
        raise typer.Exit(130) from None
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)
