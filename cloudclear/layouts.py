"""Acquisition layouts: which acquisitions a training sample holds, and the presets.

A layout names slots. Each slot has a sensor (S2, S1 or DEM), a time window relative to the
reference date, a cloud-cover range over the patch (S2), how its acquisition is picked among the
candidates, and whether its S2 acquisition must come with an S1 acquisition within a largest gap.
One S2 slot is the *reference* (its date is the sample's date, time 0) and one is the *target*
(whose image is the truth a network learns to produce); a layout without a target is a sequence
layout, where every S2 slot is reconstructed.

A layout is about *training samples* (windows and cloud ranges around a reference scene, drawn at
many places and dates). Inference asks a different question, for one given date: which
acquisitions fill a network's inputs, nearest first; that is an
:class:`cloudclear.inference.select.InputRequest`, built from a checkpoint's card.

Layouts are TOML files, read with :mod:`tomllib` and validated field by field; nothing in them is
evaluated. An error names the file, the slot and the field::

    name = "OS2"
    reference = "t"
    target = "target"

    [[slots]]
    name = "t-1"
    sensor = "S2"
    window = [-720, -240]      # hours from the reference; "-30d" and "-240h" work too
    cloud = [0, 100]           # % of the patch
    s1_max_gap = 72            # hours; an S1 acquisition this near is required and stored

The presets follow Decloud's acquisition layouts (DESIGN.md section 5) plus a sequence layout.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cloudclear.errors import LayoutError

SENSORS = ("S2", "S1", "DEM")
PICKS = ("nearest", "clearest", "random")
GAPS = ("real", "simulated")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,32}$")
_DURATION = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?)\s*([hd])\s*$")
_TOP_FIELDS = ("name", "description", "reference", "target", "slots")
_SLOT_FIELDS = ("name", "sensor", "window", "cloud", "gaps", "truth_cloud", "s1_max_gap", "pick", "nth")


#: NIR bands that stand in for each other (865 and 842 nm): ``sample`` reads one where a scene
#: lacks the other, and ``infer`` does so for a network trained on it.
NIR_STAND_INS = {"B08": "B8A", "B8A": "B08"}

#: Where a slot's acquisition lies relative to the date being reconstructed.
ROLES = ("target", "before", "after")


@dataclass(frozen=True)
class Slot:
    """One acquisition a method or a network reads to reconstruct a date.

    The one slot type of inference: :class:`cloudclear.inference.select.InputRequest` holds these,
    and a network card's :class:`cloudclear.nets.card.Slot` is one with the bands it reads.
    (:class:`LayoutSlot` is a different thing: how a training sample's acquisition is drawn.)

    Attributes:
        name: label, e.g. ``"t-1"`` or ``"s1@t"``.
        sensor: ``"S2"`` or ``"S1"``.
        role: for S2, ``"target"`` (the acquisition on the date itself, if any), ``"before"`` or
            ``"after"``; for S1, the role of the S2 slot it sits near.
        rank: 1 for the best candidate on that side, 2 for the next, ...
    """

    name: str
    sensor: str
    role: str
    rank: int = 1


@dataclass(frozen=True)
class LayoutSlot:
    """One acquisition of a sample.

    Attributes:
        name: slot label, e.g. ``"t-1"``.
        sensor: ``"S2"``, ``"S1"`` or ``"DEM"``.
        window: (first, last) hours from the reference date, inclusive; (0, 0) for the reference,
            None for a DEM.
        cloud: (lowest, highest) cloud % over the patch of the input this slot holds (S2). For a
            simulated slot this is the cover after pasting.
        gaps: ``"real"`` (the acquisition as it is) or ``"simulated"`` (a clear acquisition with a
            real cloud mask from another date or place pasted on it; its truth is kept).
        truth_cloud: simulated slots only: the highest cloud % of the acquisition under the paste.
        s1_max_gap: S2 only: hours within which an S1 acquisition covering the patch must exist; it
            is stored with the slot. None: no S1.
        pick: how one acquisition is chosen among the candidates: ``"nearest"`` to the reference
            (ties: clearest), ``"clearest"`` (ties: nearest) or ``"random"``.
        nth: S2 only: the nth S2 acquisition after (> 0) or before (< 0) the reference at the patch,
            counting every acquisition with data there whatever its cloud cover (sequences).
    """

    name: str
    sensor: str
    window: tuple[float, float] | None = None
    cloud: tuple[float, float] = (0.0, 100.0)
    gaps: str = "real"
    truth_cloud: float = 0.0
    s1_max_gap: float | None = None
    pick: str = "nearest"
    nth: int | None = None

    @property
    def simulated(self) -> bool:
        return self.gaps == "simulated"

    def to_dict(self) -> dict[str, Any]:
        """The slot as a TOML-ready mapping, without fields left at their defaults."""
        out: dict[str, Any] = {"name": self.name, "sensor": self.sensor}
        if self.window is not None:
            out["window"] = [_num(v) for v in self.window]
        if self.sensor == "S2":
            out["cloud"] = [_num(v) for v in self.cloud]
            if self.gaps != "real":
                out["gaps"] = self.gaps
            if self.truth_cloud or self.gaps != "real":
                out["truth_cloud"] = _num(self.truth_cloud)
            if self.s1_max_gap is not None:
                out["s1_max_gap"] = _num(self.s1_max_gap)
            if self.nth is not None:
                out["nth"] = self.nth
        if self.sensor != "DEM" and self.pick != "nearest":
            out["pick"] = self.pick
        return out

    def describe(self) -> str:
        """One line: sensor, window, cloud range, S1 gap."""
        parts = [self.sensor]
        if self.nth is not None:
            parts.append(f"{ordinal(self.nth)} acquisition {'after' if self.nth > 0 else 'before'}")
        if self.window is not None and self.window != (0.0, 0.0):
            parts.append(f"[{_num(self.window[0])} h, {_num(self.window[1])} h]")
        if self.sensor == "S2":
            lo, hi = self.cloud
            parts.append(f"cloud {_num(lo)} %" if lo == hi else f"cloud {_num(lo)}-{_num(hi)} %")
            if self.simulated:
                parts.append(f"simulated on <= {_num(self.truth_cloud)} %")
            if self.s1_max_gap is not None:
                parts.append(f"+ S1 within {_num(self.s1_max_gap)} h")
        return ", ".join(parts)


@dataclass(frozen=True)
class Layout:
    """A named set of slots with a reference and (except sequences) a target.

    Attributes:
        name: layout name.
        slots: the slots in their file order (the order a network receives them).
        reference: name of the S2 slot whose date is the sample's date.
        target: name of the S2 slot whose image is the truth; None for a sequence layout (every S2
            slot is its own target).
        description: free text.
        source: where it came from: ``"preset"`` or the file path.
    """

    name: str
    slots: tuple[LayoutSlot, ...]
    reference: str
    target: str | None = None
    description: str = ""
    source: str = "preset"
    _by_name: dict[str, LayoutSlot] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.slots})

    def slot(self, name: str) -> LayoutSlot:
        """The slot called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise LayoutError(f"{self.source}: no slot {name!r} (slots: {', '.join(self._by_name)})") from None

    @property
    def s2_slots(self) -> tuple[LayoutSlot, ...]:
        return tuple(s for s in self.slots if s.sensor == "S2")

    @property
    def targets(self) -> tuple[str, ...]:
        """The slots whose truth a network reconstructs: the target, or every S2 slot of a sequence."""
        return (self.target,) if self.target else tuple(s.name for s in self.s2_slots)

    def simulate(self, names: Iterable[str]) -> Layout:
        """This layout with the named S2 slots' gaps simulated (``"all"``: every S2 slot).

        When the reference becomes simulated its truth is known exactly, so a separate target slot
        (the nearest clear date, an approximation of the truth) is dropped and the reference becomes
        the target.
        """
        if isinstance(names, str):
            names = names.split(",")
        wanted = [n.strip() for n in names if n.strip()]
        if wanted == ["all"]:
            wanted = [s.name for s in self.s2_slots]
        for n in wanted:
            if self.slot(n).sensor != "S2":
                raise LayoutError(f"{self.source}: slot {n!r}: only S2 slots can have simulated gaps")
        slots = [replace(s, gaps="simulated") if s.name in wanted else s for s in self.slots]
        target = self.target
        if self.reference in wanted and target not in (None, self.reference):
            slots = [s for s in slots if s.name != target]
            target = self.reference
        return replace(self, slots=tuple(slots), target=target)

    def with_s1_gap(self, hours: float) -> Layout:
        """This layout with every S1-paired S2 slot's largest S1 gap set to ``hours``."""
        if not math.isfinite(hours) or hours <= 0:
            raise LayoutError(f"{self.source}: the S1 gap must be > 0 hours, not {hours:g}")
        slots = tuple(replace(s, s1_max_gap=hours) if s.s1_max_gap is not None else s for s in self.slots)
        return replace(self, slots=slots)

    def without_s1(self) -> Layout:
        """This layout with no S1: S1 slots dropped and no S2 slot paired with S1 (optical only)."""
        slots = tuple(replace(s, s1_max_gap=None) for s in self.slots if s.sensor != "S1")
        return replace(self, slots=slots)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["reference"] = self.reference
        if self.target is not None:
            out["target"] = self.target
        out["slots"] = [s.to_dict() for s in self.slots]
        return out

    def to_toml(self) -> str:
        """The layout as a TOML file that :func:`load_layout` reads back to the same layout."""
        lines = [f"# cloudclear acquisition layout {self.name!r}; edit and pass with --layout FILE.toml"]
        lines.append('# window: hours from the reference date ("-10d" and "240h" also work);')
        lines.append("# cloud: % of the patch; s1_max_gap: hours to the S1 acquisition stored with the slot.")
        d = self.to_dict()
        for key in ("name", "description", "reference", "target"):
            if key in d:
                lines.append(f"{key} = {_toml_value(d[key])}")
        for s in d["slots"]:
            lines += ["", "[[slots]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in s.items()]
        return "\n".join(lines) + "\n"

    def describe(self) -> list[str]:
        """One line per slot, marking the reference and the target."""
        out = []
        for s in self.slots:
            tags = [t for t, on in (("reference", s.name == self.reference), ("target", s.name == self.target)) if on]
            out.append(f"{s.name}{' (' + ', '.join(tags) + ')' if tags else ''}: {s.describe()}")
        return out


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


def ordinal(n: int) -> str:
    n = abs(n)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes are valid TOML basic-string escapes (control characters become \u00XX).
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


class _Where:
    """Formats error messages that name the file, the slot and the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, what: str, slot: str | None = None, key: str | None = None) -> LayoutError:
        where = [self.source]
        if slot is not None:
            where.append(f"slot {slot!r}")
        if key is not None:
            where.append(f"field {key!r}")
        return LayoutError(": ".join(where) + ": " + what)


def _number(v: Any, where: _Where, slot: str | None, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise where.fail(f"expected a number, got {v!r}", slot, key)
    return float(v)


def _hours(v: Any, where: _Where, slot: str | None, key: str) -> float:
    if isinstance(v, str):
        m = _DURATION.match(v)
        if not m:
            raise where.fail(
                f"{v!r} is not a duration (a number of hours, or a string like '240h' or '-10d')", slot, key
            )
        return float(m.group(1)) * (24.0 if m.group(2) == "d" else 1.0)
    return _number(v, where, slot, key)


def _pair(v: Any, where: _Where, slot: str, key: str, convert: Any) -> tuple[float, float]:
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise where.fail(f"expected two values [first, last], got {v!r}", slot, key)
    a, b = (convert(x, where, slot, key) for x in v)
    if b < a:
        raise where.fail(f"first value {_num(a)} is after the last {_num(b)}", slot, key)
    return a, b


def _choice(v: Any, options: tuple[str, ...], where: _Where, slot: str | None, key: str) -> str:
    if not isinstance(v, str) or v.strip().lower() not in {o.lower() for o in options}:
        raise where.fail(f"{v!r} is not one of {', '.join(options)}", slot, key)
    return next(o for o in options if o.lower() == v.strip().lower())


def _parse_slot(raw: Any, index: int, where: _Where) -> LayoutSlot:
    label = f"#{index + 1}"
    if not isinstance(raw, Mapping):
        raise where.fail(f"slot {label} is not a table ([[slots]] with key = value lines)")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise where.fail(f"{name!r} is not a slot name (1-32 letters, digits, _ . + -)", label, "name")
    unknown = sorted(set(raw) - set(_SLOT_FIELDS))
    if unknown:
        raise where.fail(f"unknown field (fields: {', '.join(_SLOT_FIELDS)})", name, unknown[0])
    if "sensor" not in raw:
        raise where.fail("missing (S2, S1 or DEM)", name, "sensor")
    sensor = _choice(raw["sensor"], SENSORS, where, name, "sensor")
    kw: dict[str, Any] = {"name": name, "sensor": sensor}
    only_s2 = ("cloud", "gaps", "truth_cloud", "s1_max_gap", "nth")
    if sensor != "S2":
        for key in only_s2:
            if key in raw:
                raise where.fail(f"only S2 slots have this field ({sensor} slot)", name, key)
    if sensor == "DEM":
        for key in ("window", "pick"):
            if key in raw:
                raise where.fail("a DEM slot has no date; it takes no window or pick", name, key)
        return LayoutSlot(**kw)
    if "window" in raw:
        kw["window"] = _pair(raw["window"], where, name, "window", _hours)
    if "cloud" in raw:
        lo, hi = _pair(raw["cloud"], where, name, "cloud", _number)
        if lo < 0 or hi > 100:
            raise where.fail(f"cloud % must lie in [0, 100], got [{_num(lo)}, {_num(hi)}]", name, "cloud")
        kw["cloud"] = (lo, hi)
    if "gaps" in raw:
        kw["gaps"] = _choice(raw["gaps"], GAPS, where, name, "gaps")
    if "truth_cloud" in raw:
        tc = _number(raw["truth_cloud"], where, name, "truth_cloud")
        if not 0 <= tc <= 100:
            raise where.fail(f"must lie in [0, 100], got {_num(tc)}", name, "truth_cloud")
        kw["truth_cloud"] = tc
    if "s1_max_gap" in raw:
        gap = _hours(raw["s1_max_gap"], where, name, "s1_max_gap")
        if gap <= 0:
            raise where.fail(f"must be > 0 hours, got {_num(gap)}", name, "s1_max_gap")
        kw["s1_max_gap"] = gap
    if "pick" in raw:
        kw["pick"] = _choice(raw["pick"], PICKS, where, name, "pick")
    if "nth" in raw:
        nth = raw["nth"]
        if isinstance(nth, bool) or not isinstance(nth, int) or nth == 0:
            raise where.fail(
                f"expected a non-zero whole number (1 = next acquisition, -1 = previous), got {nth!r}", name, "nth"
            )
        kw["nth"] = nth
    return LayoutSlot(**kw)


def parse_layout(data: Mapping[str, Any], source: str = "<layout>") -> Layout:
    """Validate a parsed layout mapping (from TOML) and build the :class:`Layout`.

    Raises:
        LayoutError: naming ``source``, the slot and the field that is wrong.
    """
    where = _Where(source)
    unknown = sorted(set(data) - set(_TOP_FIELDS))
    if unknown:
        raise where.fail(
            f"unknown top-level field (fields: {', '.join(_TOP_FIELDS)}; slots go in [[slots]] tables)",
            None,
            unknown[0],
        )
    name = data.get("name", Path(source).stem if source != "preset" else "")
    if not isinstance(name, str) or not name.strip():
        raise where.fail(f"expected a non-empty string, got {name!r}", None, "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise where.fail(f"expected a string, got {description!r}", None, "description")
    raw_slots = data.get("slots")
    if not isinstance(raw_slots, list) or not raw_slots:
        raise where.fail("a layout needs at least one [[slots]] table", None, "slots")
    slots = [_parse_slot(raw, i, where) for i, raw in enumerate(raw_slots)]
    names = [s.name for s in slots]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise where.fail("two slots have this name", dupes[0], "name")
    by_name = {s.name: s for s in slots}

    def named_s2(key: str) -> str:
        v = data.get(key)
        if not isinstance(v, str) or v not in by_name:
            raise where.fail(f"{v!r} does not name a slot (slots: {', '.join(names)})", None, key)
        if by_name[v].sensor != "S2":
            raise where.fail(f"slot {v!r} is {by_name[v].sensor}; the {key} must be an S2 slot", None, key)
        return v

    if "reference" not in data:
        raise where.fail("missing: name the S2 slot whose date is the sample's date", None, "reference")
    reference = named_s2("reference")
    target = named_s2("target") if "target" in data else None
    if target is None and len([s for s in slots if s.sensor == "S2"]) < 2:
        raise where.fail("missing: a layout with one S2 slot must name its target slot", None, "target")
    out = []
    for s in slots:
        if s.name == reference:
            if s.window not in (None, (0.0, 0.0)):
                raise where.fail("the reference slot is at time 0 by definition; leave window out", s.name, "window")
            if s.nth is not None:
                raise where.fail("the reference slot cannot be an nth acquisition", s.name, "nth")
            s = replace(s, window=(0.0, 0.0))
        elif s.sensor != "DEM" and s.window is None:
            raise where.fail("missing: [first, last] hours from the reference date", s.name, "window")
        if s.nth is not None and s.window is not None:
            if (s.nth > 0 and s.window[1] <= 0) or (s.nth < 0 and s.window[0] >= 0):
                side = "after" if s.nth > 0 else "before"
                raise where.fail(
                    f"nth = {s.nth} looks {side} the reference but the window is {list(map(_num, s.window))}",
                    s.name,
                    "nth",
                )
        if s.simulated and s.cloud[1] < s.truth_cloud:
            raise where.fail(
                f"a simulated slot's cloud range [{_num(s.cloud[0])}, {_num(s.cloud[1])}] must reach "
                f"its truth_cloud {_num(s.truth_cloud)}",
                s.name,
                "cloud",
            )
        out.append(s)
    if sum(s.sensor == "DEM" for s in out) > 1:
        raise where.fail("at most one DEM slot", [s.name for s in out if s.sensor == "DEM"][1], "sensor")
    return Layout(name.strip(), tuple(out), reference, target, description, source)


def load_layout(name_or_path: str | Path) -> Layout:
    """A preset by name (case-insensitive) or a layout TOML file.

    Raises:
        LayoutError: neither a preset nor a readable, valid layout file.
    """
    import tomllib

    key = str(name_or_path)
    preset = next((k for k in PRESETS if k.lower() == key.lower()), None)
    if preset is not None and not Path(key).is_file():
        return PRESETS[preset]
    path = Path(key).expanduser()
    if not path.is_file():
        raise LayoutError(f"{key}: no such layout file and no preset of that name (presets: {', '.join(PRESETS)})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise LayoutError(f"{path}: not valid TOML ({exc})") from None
    return parse_layout(data, str(path))


# ---------------------------------------------------------------------------------------------
# Presets: Decloud's acquisition layouts (S1-S2 gap 72 h) and a sequence layout.


def _preset(name: str, description: str, reference: str, target: str | None, slots: list[dict[str, Any]]) -> Layout:
    data: dict[str, Any] = {"name": name, "description": description, "reference": reference, "slots": slots}
    if target is not None:
        data["target"] = target
    return parse_layout(data, "preset")


def _s2(name: str, window: list[float] | None, cloud: list[float], s1: bool = True, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "sensor": "S2", "cloud": cloud, **kw}
    if window is not None:
        out["window"] = window
    if s1:
        out["s1_max_gap"] = 72
    return out


SEQUENCE_LENGTH = 6
SEQUENCE_SPAN_DAYS = 90
#: ``gapfill-3``: acquisitions on each side (as gapfill reads), how far they may lie (200 days reach
#: a bi-monthly series' third), the most cloud % of a target under its paste (not truth, not scored).
REFINE_NEIGHBOURS, REFINE_SPAN_DAYS, REFINE_TRUTH_CLOUD = 3, 200, 10

#: Preset layouts by name (the same dict feeds ``cloudclear layouts`` and validation).
PRESETS: dict[str, Layout] = {
    "OS1": _preset(
        "OS1",
        "Decloud OS1: clear S2 at t-1 and t+1 with S1 at t-1, t, t+1; the target is t itself (clear).",
        "t",
        "t",
        [_s2("t-1", [-552, -72], [0, 0]), _s2("t", None, [0, 0]), _s2("t+1", [72, 552], [0, 0])],
    ),
    "OS2": _preset(
        "OS2",
        "Decloud OS2: cloudy S2 at t with S2 10-30 days before and after (any cover), S1 at each; "
        "the target is the clear S2 nearest t within 10 days.",
        "t",
        "target",
        [
            _s2("t-1", [-720, -240], [0, 100]),
            _s2("t", None, [1, 100]),
            _s2("target", [-240, 240], [0, 0], s1=False),
            _s2("t+1", [240, 720], [0, 100]),
        ],
    ),
    "OS2-GFa": _preset(
        "OS2-GFa",
        "Decloud OS2-GFa (gap filling): t fully cloudy, clear S2 10-18 days before and after; "
        "the target is the clear S2 nearest t within 5 days.",
        "t",
        "target",
        [
            _s2("t-1", [-432, -240], [0, 0]),
            _s2("t", None, [100, 100]),
            _s2("target", [-120, 120], [0, 0], s1=False),
            _s2("t+1", [240, 432], [0, 0]),
        ],
    ),
    "OS2-GFb": _preset(
        "OS2-GFb",
        "Decloud OS2-GFb (gap filling, wider gap): t fully cloudy, clear S2 14-20 days before and "
        "after; the target is the clear S2 nearest t within 3 days.",
        "t",
        "target",
        [
            _s2("t-1", [-480, -336], [0, 0]),
            _s2("t", None, [100, 100]),
            _s2("target", [-72, 72], [0, 0], s1=False),
            _s2("t+1", [336, 480], [0, 0]),
        ],
    ),
    "single-date": _preset(
        "single-date",
        "Single-date SAR + optical: cloudy S2 at t with S1 within 72 h; the target is the clear S2 "
        "nearest t within 10 days.",
        "t",
        "target",
        [_s2("t", None, [1, 100]), _s2("target", [-240, 240], [0, 0], s1=False)],
    ),
    "gapfill-3": _preset(
        "gapfill-3",
        f"The date t (at most {REFINE_TRUTH_CLOUD} % cloud, with a real mask of another date pasted on it; "
        f"its pixels are the truth) and the {REFINE_NEIGHBOURS} acquisitions "
        f"before and after it with data at the patch (any cloud cover) within {REFINE_SPAN_DAYS} days, "
        "S1 within 72 h of each: the dates gapfill reads, for the refine network.",
        "t",
        "t",
        [_s2(f"t{k:+d}", [-REFINE_SPAN_DAYS * 24, -1], [0, 100], nth=k) for k in range(-REFINE_NEIGHBOURS, 0)]
        + [_s2("t", None, [1, 100], gaps="simulated", truth_cloud=REFINE_TRUTH_CLOUD)]
        + [_s2(f"t{k:+d}", [1, REFINE_SPAN_DAYS * 24], [0, 100], nth=k) for k in range(1, REFINE_NEIGHBOURS + 1)],
    ),
    "sequence": _preset(
        "sequence",
        f"{SEQUENCE_LENGTH} consecutive S2 acquisitions with data at the patch (any cloud cover) "
        f"within {SEQUENCE_SPAN_DAYS} days; every date is a target. With simulated gaps "
        "(--simulate all) real masks are pasted on every date, whose own clouds stay unknown truth.",
        "t0",
        None,
        [_s2("t0", None, [0, 100], s1=False, truth_cloud=100)]
        + [
            _s2(f"t{k}", [0, SEQUENCE_SPAN_DAYS * 24], [0, 100], s1=False, nth=k, truth_cloud=100)
            for k in range(1, SEQUENCE_LENGTH)
        ],
    ),
}
