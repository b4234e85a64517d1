"""Acquisition layouts: presets against DESIGN.md section 5, TOML round trips, durations, validation
errors that name the file, the slot and the field, simulate / without_s1 / with_s1_gap, and the
`cloudclear layouts` / `cloudclear layouts show` commands."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import conftest
import pytest
import tomllib
from typer.testing import CliRunner

from cloudclear.cli import app
from cloudclear.errors import LayoutError
from cloudclear.layouts import PRESETS, Layout, load_layout, parse_layout

runner = CliRunner()
PRESET_NAMES = ["OS1", "OS2", "OS2-GFa", "OS2-GFb", "single-date", "gapfill-3", "sequence"]

# DESIGN.md section 5 (Decloud's layouts, S1-S2 gap 72 h): reference, target and, per slot in file
# order, (window in hours, cloud % range, largest S1 gap in hours or None).
DECLOUD: dict[str, tuple[str, str, dict[str, tuple[tuple[float, float], tuple[float, float], float | None]]]] = {
    "OS1": (
        "t",
        "t",
        {"t-1": ((-552, -72), (0, 0), 72), "t": ((0, 0), (0, 0), 72), "t+1": ((72, 552), (0, 0), 72)},
    ),
    "OS2": (
        "t",
        "target",
        {
            "t-1": ((-720, -240), (0, 100), 72),
            "t": ((0, 0), (1, 100), 72),
            "target": ((-240, 240), (0, 0), None),
            "t+1": ((240, 720), (0, 100), 72),
        },
    ),
    "OS2-GFa": (
        "t",
        "target",
        {
            "t-1": ((-432, -240), (0, 0), 72),
            "t": ((0, 0), (100, 100), 72),
            "target": ((-120, 120), (0, 0), None),
            "t+1": ((240, 432), (0, 0), 72),
        },
    ),
    "OS2-GFb": (
        "t",
        "target",
        {
            "t-1": ((-480, -336), (0, 0), 72),
            "t": ((0, 0), (100, 100), 72),
            "target": ((-72, 72), (0, 0), None),
            "t+1": ((336, 480), (0, 0), 72),
        },
    ),
    "single-date": (
        "t",
        "target",
        {"t": ((0, 0), (1, 100), 72), "target": ((-240, 240), (0, 0), None)},
    ),
}


def toml_text(top: dict[str, Any], slots: list[dict[str, Any]]) -> str:
    """A layout file written by hand (JSON scalars and arrays are valid TOML inline values)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for s in slots:
        lines += ["", "[[slots]]"] + [f"{k} = {json.dumps(v)}" for k, v in s.items()]
    return "\n".join(lines) + "\n"


def base() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A valid layout with an S2 reference, a separate target, an S1-paired slot and an S1 slot."""
    top = {"name": "mine", "reference": "t", "target": "target"}
    slots = [
        {"name": "t-1", "sensor": "S2", "window": [-720, -240], "cloud": [0, 100], "s1_max_gap": 72},
        {"name": "t", "sensor": "S2", "cloud": [1, 100], "s1_max_gap": 72},
        {"name": "target", "sensor": "S2", "window": [-240, 240], "cloud": [0, 0]},
        {"name": "s1", "sensor": "S1", "window": [-72, 72]},
    ]
    return top, slots


def write(tmp_path: Path, text: str, name: str = "layout.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def base_file(tmp_path: Path, change: Callable[[dict, list], None] | None = None) -> Path:
    top, slots = base()
    if change is not None:
        change(top, slots)
    return write(tmp_path, toml_text(top, slots))


def load_error(path: Path) -> str:
    with pytest.raises(LayoutError) as info:
        load_layout(path)
    return str(info.value)


def assert_names(msg: str, path: Path, slot: str | None, field: str) -> None:
    """The message starts with the file, then the slot (for slot fields), then the field."""
    if field in ("reference", "target", "referense") or slot is None:
        assert msg.startswith(f"{path}: field '{field}': "), msg
        if slot is not None:
            assert f"'{slot}'" in msg, msg
    else:
        assert msg.startswith(f"{path}: slot '{slot}': field '{field}': "), msg


def assert_one_line_error(res, *parts: str) -> str:
    return conftest.assert_one_line_error(res, *parts, stdout_empty=True)


# -- presets ---------------------------------------------------------------------------------------


def test_presets_are_the_seven_named_layouts():
    assert list(PRESETS) == PRESET_NAMES
    for name, lay in PRESETS.items():
        assert lay.name == name and lay.source == "preset" and lay.description
        assert load_layout(name) is lay
        assert load_layout(name.lower()) is lay  # names are case-insensitive
        assert load_layout(name.upper()) is lay


def test_gapfill_3_is_the_date_and_the_three_acquisitions_gapfill_reads_on_each_side():
    lay = PRESETS["gapfill-3"]
    assert lay.reference == lay.target == "t"
    assert [s.name for s in lay.s2_slots] == ["t-3", "t-2", "t-1", "t", "t+1", "t+2", "t+3"]
    t = lay.slot("t")
    assert t.simulated and t.truth_cloud == 10 and t.cloud == (1, 100)
    for k in (1, 2, 3):
        before, after = lay.slot(f"t-{k}"), lay.slot(f"t+{k}")
        assert (before.nth, after.nth) == (-k, k)
        assert before.window == (-200 * 24, -1) and after.window == (1, 200 * 24)
        assert before.cloud == after.cloud == (0, 100) and not before.simulated
    assert lay.simulate(["t"]) == lay  # --simulate t, as the bench passes it, changes nothing


@pytest.mark.parametrize("name", list(DECLOUD))
def test_decloud_presets_match_design_section_5(name):
    reference, target, want = DECLOUD[name]
    lay = PRESETS[name]
    assert (lay.reference, lay.target) == (reference, target)
    assert lay.targets == (target,)
    assert [s.name for s in lay.slots] == list(want)
    for s in lay.slots:
        window, cloud, gap = want[s.name]
        assert s.sensor == "S2", s.name
        assert s.window == window, s.name
        assert s.cloud == cloud, s.name
        assert s.s1_max_gap == gap, s.name
        assert (s.gaps, s.pick, s.nth) == ("real", "nearest", None), s.name
    # The S1 gap is on every optical input slot; a separate target slot has none.
    if target != reference:
        assert lay.slot(target).s1_max_gap is None
    assert all(s.s1_max_gap == 72 for s in lay.slots if s.name != target or target == reference)


def test_sequence_preset_is_six_consecutive_s2_slots_all_targets():
    lay = PRESETS["sequence"]
    names = ["t0", "t1", "t2", "t3", "t4", "t5"]
    assert [s.name for s in lay.slots] == names
    assert lay.reference == "t0" and lay.target is None
    assert lay.targets == tuple(names)
    assert [s.nth for s in lay.slots] == [None, 1, 2, 3, 4, 5]
    assert lay.slot("t0").window == (0, 0)
    for s in lay.slots:
        assert s.sensor == "S2" and s.cloud == (0, 100) and s.s1_max_gap is None and s.gaps == "real"
        if s.name != "t0":
            assert s.window == (0, 90 * 24)


def test_describe_lines_mark_reference_and_target():
    assert PRESETS["OS2"].describe() == [
        "t-1: S2, [-720 h, -240 h], cloud 0-100 %, + S1 within 72 h",
        "t (reference): S2, cloud 1-100 %, + S1 within 72 h",
        "target (target): S2, [-240 h, 240 h], cloud 0 %",
        "t+1: S2, [240 h, 720 h], cloud 0-100 %, + S1 within 72 h",
    ]
    assert PRESETS["OS1"].describe()[1] == "t (reference, target): S2, cloud 0 %, + S1 within 72 h"
    assert PRESETS["sequence"].describe()[2] == "t2: S2, 2nd acquisition after, [0 h, 2160 h], cloud 0-100 %"


# -- TOML round trips ------------------------------------------------------------------------------


def roundtrip(lay: Layout, tmp_path: Path, name: str) -> tuple[Layout, Path]:
    path = write(tmp_path, lay.to_toml(), name)
    return load_layout(path), path


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_toml_round_trips_also_after_transforms(name, tmp_path):
    preset = PRESETS[name]
    variants = {
        "as is": preset,
        "simulate all": preset.simulate(["all"]),
        "simulate reference": preset.simulate([preset.reference]),
        "simulate last": preset.simulate([preset.s2_slots[-1].name]),
        "without_s1": preset.without_s1(),
        "with_s1_gap 150": preset.with_s1_gap(150),
        "with_s1_gap 1.5": preset.with_s1_gap(1.5),
        "simulate all, without_s1": preset.simulate(["all"]).without_s1(),
    }
    for i, (what, lay) in enumerate(variants.items()):
        text = lay.to_toml()
        assert tomllib.loads(text) == lay.to_dict(), what
        back, path = roundtrip(lay, tmp_path, f"v{i}.toml")
        assert back.source == str(path), what
        assert replace(back, source=lay.source) == lay, what
        assert back.to_toml() == text, what


def test_file_layout_round_trips_with_s1_dem_pick_and_durations(tmp_path):
    top, slots = base()
    top["description"] = 'quotes " and \\ backslash'
    slots[0]["window"] = ["-30d", "-240h"]
    slots[0]["pick"] = "Clearest"
    slots[2]["gaps"] = "simulated"
    slots[2]["truth_cloud"] = 0
    slots[3]["pick"] = "random"
    slots.append({"name": "dem", "sensor": "DEM"})
    lay = load_layout(write(tmp_path, toml_text(top, slots)))
    assert lay.slot("t-1").window == (-720, -240) and lay.slot("t-1").pick == "clearest"
    assert lay.slot("dem").window is None and lay.slot("s1").pick == "random"
    assert lay.description == 'quotes " and \\ backslash'
    back, _ = roundtrip(lay, tmp_path, "again.toml")
    assert replace(back, source=lay.source) == lay


def test_description_with_newline_round_trips(tmp_path):
    top, slots = base()
    top["description"] = "first line\nsecond line"  # json.dumps writes the TOML escape \n
    lay = load_layout(write(tmp_path, toml_text(top, slots)))
    assert lay.description == "first line\nsecond line"
    back, _ = roundtrip(lay, tmp_path, "again.toml")
    assert back.description == lay.description


def test_shown_preset_can_be_edited_and_loaded_as_a_file(tmp_path):
    res = runner.invoke(app, ["layouts", "show", "OS2"])
    assert res.exit_code == 0, res.output
    assert "window = [-720, -240]" in res.stdout
    edited = res.stdout.replace("window = [-720, -240]", 'window = ["-20d", "-120h"]')
    edited = edited.replace('name = "OS2"', 'name = "OS2-near"')
    path = write(tmp_path, edited, "near.toml")
    lay = load_layout(path)
    assert lay.name == "OS2-near" and lay.source == str(path)
    assert lay.slot("t-1").window == (-480, -120)
    assert lay.slot("t-1").s1_max_gap == 72 and lay.slot("t-1").cloud == (0, 100)
    assert replace(lay, name="OS2", source="preset", slots=PRESETS["OS2"].slots) == PRESETS["OS2"]
    assert [s for s in lay.slots if s.name != "t-1"] == [s for s in PRESETS["OS2"].slots if s.name != "t-1"]
    # Showing the edited file prints it normalised to hours.
    res = runner.invoke(app, ["layouts", "show", str(path)])
    assert res.exit_code == 0, res.output
    assert "window = [-480, -120]" in res.stdout and 'name = "OS2-near"' in res.stdout


def test_file_without_name_takes_the_file_stem(tmp_path):
    top, slots = base()
    del top["name"]
    lay = load_layout(write(tmp_path, toml_text(top, slots), "my-layout.toml"))
    assert lay.name == "my-layout"


# -- durations -------------------------------------------------------------------------------------


def window_of(tmp_path: Path, window: list[Any]) -> tuple[float, float]:
    def change(top, slots):
        slots[0]["window"] = window

    return load_layout(base_file(tmp_path, change)).slot("t-1").window


def test_durations_are_hours_or_h_d_strings(tmp_path):
    cases = [
        ([-720, -240], (-720.0, -240.0)),
        ([-36.5, 12], (-36.5, 12.0)),
        (["-10d", "240h"], (-240.0, 240.0)),
        (["-1.5d", "+5h"], (-36.0, 5.0)),
        ([" -3 d ", "0h"], (-72.0, 0.0)),
        (["-2d", 24], (-48.0, 24.0)),
    ]
    for window, hours in cases:
        assert window_of(tmp_path, window) == hours, window


def test_s1_max_gap_takes_durations_too(tmp_path):
    def change(top, slots):
        slots[0]["s1_max_gap"] = "1.5d"
        slots[1]["s1_max_gap"] = "36h"

    lay = load_layout(base_file(tmp_path, change))
    assert lay.slot("t-1").s1_max_gap == 36.0 and lay.slot("t").s1_max_gap == 36.0


@pytest.mark.parametrize("bad", ["10 days", "ten", "1e2h", "", "5m"])
def test_bad_duration_strings_are_errors(tmp_path, bad):
    def change(top, slots):
        slots[0]["window"] = [bad, -240]

    path = base_file(tmp_path, change)
    msg = load_error(path)
    assert_names(msg, path, "t-1", "window")
    assert "is not a duration" in msg and repr(bad) in msg


# -- validation errors: file, slot and field -------------------------------------------------------


def _set(i: int, key: str, value: Any) -> Callable[[dict, list], None]:
    def change(top, slots):
        slots[i][key] = value

    return change


def _top(key: str, value: Any) -> Callable[[dict, list], None]:
    def change(top, slots):
        if value is None:
            del top[key]
        else:
            top[key] = value

    return change


def _append(*new: dict[str, Any]) -> Callable[[dict, list], None]:
    def change(top, slots):
        slots.extend(new)

    return change


def _drop_target_window(top, slots):
    del slots[2]["window"]


BAD = {
    "typo clod": (_set(0, "clod", [0, 10]), "t-1", "clod", "unknown field"),
    "bad sensor": (_set(0, "sensor", "S3"), "t-1", "sensor", "'S3' is not one of S2, S1, DEM"),
    "window reversed": (_set(0, "window", [-240, -720]), "t-1", "window", "first value -240 is after the last -720"),
    "window missing": (_drop_target_window, "target", "window", "missing"),
    "window on reference": (_set(1, "window", [-5, 5]), "t", "window", "reference slot is at time 0"),
    "cloud above 100": (_set(0, "cloud", [0, 101]), "t-1", "cloud", "[0, 100]"),
    "cloud below 0": (_set(0, "cloud", [-1, 50]), "t-1", "cloud", "[0, 100]"),
    "cloud on S1": (_set(3, "cloud", [0, 10]), "s1", "cloud", "only S2 slots"),
    "nth zero": (_set(0, "nth", 0), "t-1", "nth", "non-zero whole number"),
    "nth after, window before": (_set(0, "nth", 1), "t-1", "nth", "looks after the reference"),
    "nth before, window after": (
        _append({"name": "t+1", "sensor": "S2", "window": [240, 720], "nth": -1}),
        "t+1",
        "nth",
        "looks before the reference",
    ),
    "nth on reference": (_set(1, "nth", 1), "t", "nth", "reference slot cannot be an nth"),
    "duplicate names": (_set(3, "name", "t-1"), "t-1", "name", "two slots have this name"),
    "bad pick": (_set(0, "pick", "best"), "t-1", "pick", "not one of nearest, clearest, random"),
    "reference missing slot": (_top("reference", "t0"), "t0", "reference", "does not name a slot"),
    "reference on S1": (_top("reference", "s1"), "s1", "reference", "must be an S2 slot"),
    "target on S1": (_top("target", "s1"), "s1", "target", "must be an S2 slot"),
    "DEM with window": (_append({"name": "dem", "sensor": "DEM", "window": [0, 0]}), "dem", "window", "DEM"),
    "two DEMs": (
        _append({"name": "dem", "sensor": "DEM"}, {"name": "dem2", "sensor": "DEM"}),
        "dem2",
        "sensor",
        "at most one DEM",
    ),
    "s1_max_gap zero": (_set(0, "s1_max_gap", 0), "t-1", "s1_max_gap", "must be > 0 hours"),
    "s1_max_gap negative": (_set(0, "s1_max_gap", "-3d"), "t-1", "s1_max_gap", "must be > 0 hours, got -72"),
    "truth_cloud out of range": (_set(0, "truth_cloud", 120), "t-1", "truth_cloud", "must lie in [0, 100]"),
    "simulated cloud below truth_cloud": (
        lambda t, s: s[2].update(gaps="simulated", truth_cloud=50),
        "target",
        "cloud",
        "must reach its truth_cloud 50",
    ),
    "slot without name": (lambda t, s: s[2].pop("name"), "#3", "name", "is not a slot name"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_validation_error_names_file_slot_and_field(tmp_path, case):
    change, slot, field, phrase = BAD[case]
    path = base_file(tmp_path, change)
    msg = load_error(path)
    assert_names(msg, path, slot, field)
    assert phrase in msg, msg


def test_missing_reference_and_unknown_top_field_name_the_file_and_field(tmp_path):
    path = base_file(tmp_path, _top("reference", None))
    msg = load_error(path)
    assert_names(msg, path, None, "reference")
    assert "missing" in msg
    path = base_file(tmp_path, _top("referense", "t"))
    msg = load_error(path)
    assert_names(msg, path, None, "referense")
    assert "unknown top-level field" in msg


def test_one_s2_slot_without_target_is_an_error(tmp_path):
    path = write(tmp_path, toml_text({"reference": "t"}, [{"name": "t", "sensor": "S2"}]))
    msg = load_error(path)
    assert_names(msg, path, None, "target")


def test_bad_toml_syntax_names_the_file_and_line(tmp_path):
    path = write(tmp_path, 'name = "x"\nreference = "t"\n\n[[slots]\nname = "t"\n')
    msg = load_error(path)
    assert msg.startswith(f"{path}: not valid TOML"), msg
    assert "line 4" in msg, msg


def test_missing_file_and_unknown_preset_list_the_presets(tmp_path):
    missing = tmp_path / "nope.toml"
    msg = load_error(missing)
    assert str(missing) in msg and "no such layout file" in msg
    msg = load_error(Path("OS3"))
    assert msg.startswith("OS3: ") and "presets: " + ", ".join(PRESET_NAMES) in msg
    with pytest.raises(LayoutError, match="no such layout file"):
        load_layout(tmp_path)  # a folder is not a layout file


def test_nothing_in_a_layout_is_evaluated(tmp_path, monkeypatch):
    marker = tmp_path / "X"
    payload = f"__import__('os').system('touch {marker}')"
    monkeypatch.chdir(tmp_path)
    # (field, where it goes, the slot the error names)
    for key, slot in (
        ("window", "t-1"),
        ("cloud", "t-1"),
        ("sensor", "t-1"),
        ("s1_max_gap", "t-1"),
        ("pick", "t-1"),
        ("nth", "t-1"),
        ("name", "#1"),
        ("reference", None),
    ):

        def change(top, slots, key=key):
            if key == "reference":
                top[key] = payload
            else:
                slots[0][key] = [payload, payload] if key in ("window", "cloud") else payload

        path = base_file(tmp_path, change)
        msg = load_error(path)
        assert_names(msg, path, slot, key)
        assert not marker.exists(), key
    # Free text is kept verbatim, never run.
    lay = load_layout(base_file(tmp_path, _top("description", payload)))
    assert lay.description == payload and not marker.exists()


def test_parse_layout_rejects_non_finite_and_boolean_numbers():
    top, slots = base()
    for value, key in ((float("nan"), "cloud"), (True, "cloud"), (float("inf"), "window")):
        bad = [dict(s) for s in slots]
        bad[0][key] = [0, value] if key == "cloud" else [value, 0]
        with pytest.raises(LayoutError, match=rf"^x\.toml: slot 't-1': field '{key}': expected a number"):
            parse_layout({**top, "slots": bad}, "x.toml")


# -- simulate / without_s1 / with_s1_gap -----------------------------------------------------------


def test_simulate_all_makes_every_s2_slot_simulated_and_reference_the_target():
    lay = PRESETS["OS2"].simulate(["all"])
    assert [s.name for s in lay.slots] == ["t-1", "t", "t+1"]  # the separate target slot is dropped
    assert lay.target == "t" and lay.targets == ("t",)
    assert all(s.simulated for s in lay.slots)
    assert [s.cloud for s in lay.slots] == [(0, 100), (1, 100), (0, 100)]
    # The preset itself is untouched.
    assert [s.name for s in PRESETS["OS2"].slots] == ["t-1", "t", "target", "t+1"]
    assert not any(s.simulated for s in PRESETS["OS2"].slots) and PRESETS["OS2"].target == "target"


def test_simulate_a_named_slot_keeps_the_target():
    lay = PRESETS["OS2-GFa"].simulate([" t+1 ", ""])
    assert [s.name for s in lay.slots if s.simulated] == ["t+1"]
    assert lay.target == "target" and len(lay.slots) == 4
    assert lay.slot("t+1").window == (240, 432)


def test_simulate_the_reference_drops_the_target_slot():
    lay = PRESETS["single-date"].simulate(["t"])
    assert [s.name for s in lay.slots] == ["t"] and lay.target == "t" and lay.slot("t").simulated
    os1 = PRESETS["OS1"].simulate(["t"])  # target is the reference: nothing to drop
    assert [s.name for s in os1.slots] == ["t-1", "t", "t+1"] and os1.target == "t"
    seq = PRESETS["sequence"].simulate(["all"])
    assert seq.target is None and len(seq.targets) == 6 and all(s.simulated for s in seq.slots)
    assert all(s.truth_cloud == 100 for s in seq.slots)


def test_simulate_rejects_s1_and_unknown_slots(tmp_path):
    lay = load_layout(base_file(tmp_path))
    with pytest.raises(LayoutError) as info:
        lay.simulate(["s1"])
    assert str(info.value) == f"{lay.source}: slot 's1': only S2 slots can have simulated gaps"
    with pytest.raises(LayoutError, match=r"no slot 't\+7' \(slots: t-1, t, target, s1\)"):
        lay.simulate(["t+7"])


def test_without_s1_drops_s1_slots_and_gaps(tmp_path):
    lay = load_layout(base_file(tmp_path)).without_s1()
    assert [s.name for s in lay.slots] == ["t-1", "t", "target"]
    assert all(s.s1_max_gap is None for s in lay.slots)
    assert (lay.reference, lay.target) == ("t", "target")
    assert lay.slot("t-1").window == (-720, -240)
    os2 = PRESETS["OS2"].without_s1()
    assert [s.name for s in os2.slots] == [s.name for s in PRESETS["OS2"].slots]
    assert "s1_max_gap =" not in os2.to_toml()


def test_with_s1_gap_changes_only_s1_paired_slots():
    lay = PRESETS["OS2"].with_s1_gap(150)
    assert {s.name: s.s1_max_gap for s in lay.slots} == {"t-1": 150, "t": 150, "target": None, "t+1": 150}
    assert PRESETS["sequence"].with_s1_gap(150) == PRESETS["sequence"]  # nothing paired with S1
    for bad in (0, -1):
        with pytest.raises(LayoutError, match="the S1 gap must be > 0 hours"):
            PRESETS["OS2"].with_s1_gap(bad)


def test_with_s1_gap_rejects_non_finite_hours():
    with pytest.raises(LayoutError, match="the S1 gap must be"):
        PRESETS["OS2"].with_s1_gap(math.nan)
    with pytest.raises(LayoutError, match="the S1 gap must be"):
        PRESETS["OS2"].with_s1_gap(math.inf)


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_layouts_lists_every_preset_with_its_slot_lines():
    res = runner.invoke(app, ["layouts"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    heads = [ln.split(":")[0] for ln in lines if not ln.startswith(" ")]
    assert heads == PRESET_NAMES
    for name, lay in PRESETS.items():
        i = lines.index(f"{name}: {lay.description}")
        assert lines[i + 1 : i + 1 + len(lay.slots)] == [f"    {ln}" for ln in lay.describe()]
    assert "    t-1: S2, [-552 h, -72 h], cloud 0 %, + S1 within 72 h" in lines
    assert "    target (target): S2, [-72 h, 72 h], cloud 0 %" in lines
    assert len(lines) == len(PRESETS) + sum(len(p.slots) for p in PRESETS.values())


def test_cli_layouts_json_parses_back_to_the_presets():
    res = runner.invoke(app, ["layouts", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert list(data) == PRESET_NAMES
    for name, d in data.items():
        assert parse_layout(d, "preset") == PRESETS[name]
    assert data["OS2"]["slots"][2] == {"name": "target", "sensor": "S2", "window": [-240, 240], "cloud": [0, 0]}


def test_cli_layouts_show_prints_loadable_toml_for_every_preset(tmp_path):
    for name in PRESET_NAMES:
        res = runner.invoke(app, ["layouts", "show", name.lower()])
        assert res.exit_code == 0, res.output
        assert res.stdout == PRESETS[name].to_toml()
        path = write(tmp_path, res.stdout, f"{name}.toml")
        assert replace(load_layout(path), source="preset") == PRESETS[name]


def test_cli_layouts_show_unknown_name_is_one_error_line():
    res = runner.invoke(app, ["layouts", "show", "nope"])
    assert_one_line_error(res, "nope: no such layout file", ", ".join(PRESET_NAMES))


def test_cli_layouts_show_bad_file_names_file_slot_and_field(tmp_path):
    path = base_file(tmp_path, _set(0, "clod", [0, 10]))
    res = runner.invoke(app, ["layouts", "show", str(path)])
    assert_one_line_error(res, str(path), "slot 't-1'", "field 'clod'", "unknown field")
