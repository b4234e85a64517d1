"""`cloudclear sample` on the command line: stores, printed counts, options, one-line errors, SIGTERM.

Every run samples a copy of the synthetic series ``conftest.SAMPLE_SERIES`` (480 x 480 px, 10 S2
dates 15 days apart with SCL, 12 S1 dates 12 days apart: S1 lies up to 6 days from S2, so the
presets' 72 h S1 gap needs ``--s1-max-gap 150`` or ``--no-s1`` here).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import assert_one_line_error, fill_disk
from typer.testing import CliRunner

from cloudclear import masks
from cloudclear.catalog import Catalog
from cloudclear.cli import app
from cloudclear.sampling import PatchDataset, PatchStore

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
COUNTS = re.compile(r"^\s+train (\d+), val (\d+), test (\d+)$", re.M)
SPLITS = ("train", "val", "test")
#: Patch locations of a 128 px lattice on the 480 px grid.
LOCATIONS = 9


def run(*args: object):
    return runner.invoke(app, ["sample", *(str(a) for a in args)])


def printed_counts(stdout: str) -> dict[str, int]:
    found = COUNTS.findall(stdout)
    assert len(found) == 1, stdout
    return dict(zip(SPLITS, map(int, found[0]), strict=True))


def split_counts(store: Path) -> dict[str, int]:
    split = np.load(store / "split.npy")
    return {name: int((split == k).sum()) for k, name in enumerate(SPLITS)}


def cloud_pct(mask: np.ndarray, gap: np.ndarray | None = None) -> float:
    known = mask != masks.MaskClass.NODATA
    obscured = np.isin(mask, masks.OBSCURED)
    if gap is not None:
        obscured |= gap.astype(bool)
    return 100.0 * float((obscured & known).sum()) / float(known.sum())


def check_store(store: Path, catalog: Path, printed: dict[str, int] | None = None) -> PatchStore:
    """What every store must satisfy: counts, windows, cloud ranges, gaps, S1 gaps, disjoint splits."""
    ps = PatchStore(store)
    manifest = json.loads((store / "store.json").read_text())
    assert manifest["complete"] is True and manifest["count"] == len(ps) > 0
    counts = split_counts(store)
    assert manifest["splits"] == counts
    if printed is not None:
        assert printed == counts
    meta = ps.metadata()
    assert len(meta) == len(ps)
    assert meta["split"].tolist() == [SPLITS[k] for k in ps.split]
    lay = ps.layout
    hours = np.load(store / "hours.npy")
    assert hours.shape == (len(ps), len(lay.slots))
    scene_ids = set(Catalog.open(catalog).scenes["scene_id"])
    for i in range(len(ps)):
        arrays = ps.read(i)
        row = meta.iloc[i]
        for n, s in enumerate(lay.slots):
            lo, hi = s.window
            assert lo - 1e-3 <= hours[i, n] <= hi + 1e-3, (s.name, hours[i, n])
            assert row[f"{s.name}_scene"] in scene_ids
            mask = arrays[f"{s.name}.mask"]
            own = cloud_pct(mask)
            if s.simulated:
                gap = arrays[f"{s.name}.gap"]
                assert own <= s.truth_cloud + 1e-6, (s.name, own)
                cover = cloud_pct(mask, gap)
                source, at = row[f"{s.name}_gap_source"].split("@")
                assert source in scene_ids
                assert (source, at) != (row[f"{s.name}_scene"], f"{row['row']},{row['col']}")
                assert row[f"{s.name}_gap_pct"] == pytest.approx(100 * gap.mean(), abs=1e-3)
            else:
                cover = own
            assert s.cloud[0] - 1e-6 <= cover <= s.cloud[1] + 1e-6, (s.name, cover)
            assert row[f"{s.name}_cloud_pct"] == pytest.approx(cover, abs=1e-3)
            if s.s1_max_gap is not None:
                assert arrays[f"{s.name}.s1"].shape[0] == 2
                assert abs(row[f"{s.name}_s1_gap_h"]) <= s.s1_max_gap + 1e-6
                assert (arrays[f"{s.name}.s1"] > 0).all(axis=0).mean() >= 0.99
    # no pixel in two splits
    geoms = meta.geometry.to_numpy()
    for a in range(len(meta)):
        for b in range(a + 1, len(meta)):
            if meta["split"].iat[a] != meta["split"].iat[b]:
                assert geoms[a].intersection(geoms[b]).area < 1e-12, (a, b)
    item = PatchDataset(store, split=None)[0]
    first = lay.s2_slots[0].name
    assert item[first].shape == (len(ps.bands), ps.manifest["patch_size"], ps.manifest["patch_size"])
    return ps


@pytest.fixture(scope="module")
def series(tmp_path_factory, sample_series) -> Path:
    """A copy of the synthetic series' S2 and S1 folders, indexed; returns the catalog."""
    root = tmp_path_factory.mktemp("t31ufq")
    for sub in ("S2", "S1"):
        shutil.copytree(sample_series / sub, root / sub)
    res = runner.invoke(app, ["index", str(root), "-c", str(root / "cat.gpkg")])
    assert res.exit_code == 0, res.output
    return root / "cat.gpkg"


@pytest.fixture(scope="module")
def seq_store(series, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("seq") / "seq"
    res = run("-c", series, "-l", "sequence", "-p", 128, "-n", 20, "--block", 1, "-o", out)
    assert res.exit_code == 0, res.output
    return out, res


# -- stores ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sequence_store_and_printed_counts(series, seq_store):
    out, res = seq_store
    assert "20 samples of layout sequence" in res.stdout
    ps = check_store(out, series, printed_counts(res.stdout))
    assert len(ps) == 20 and [s.name for s in ps.layout.slots] == [f"t{k}" for k in range(6)]
    hours = np.load(out / "hours.npy")
    assert (np.diff(hours, axis=1) > 0).all()  # consecutive acquisitions
    assert not list(out.parent.glob(".*partial*"))


def test_json_output_matches_the_store(series, tmp_path):
    out = tmp_path / "j"
    res = run("-c", series, "-l", "sequence", "-p", 128, "-n", 10, "--block", 1, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert Path(d["path"]) == out.resolve() and d["layout"] == "sequence"
    assert d["count"] == 10 and d["requested"] == 10
    assert d["by_split"] == split_counts(out) and sum(d["by_split"].values()) == 10
    assert sum(d["by_season"].values()) == 10
    assert d["bytes"] == sum(p.stat().st_size for p in out.iterdir())
    check_store(out, series)


@pytest.mark.parametrize(
    ("layout", "slots"), [("OS2", ["t-1", "t", "t+1"]), ("single-date", ["t"])], ids=["OS2", "single-date"]
)
def test_simulated_reference_with_wider_s1_gap(series, tmp_path, layout, slots):
    out = tmp_path / "s"
    res = run("-c", series, "-l", layout, "--simulate", "t", "--s1-max-gap", 150, "-p", 128, "-n", 12, "--block", 1,
              "-o", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    ps = check_store(out, series, printed_counts(res.stdout))
    lay = ps.layout
    assert [s.name for s in lay.slots] == slots  # the separate target slot is dropped
    assert lay.target == "t" and lay.slot("t").simulated
    assert all(s.s1_max_gap == 150 for s in lay.slots)
    names = [s.name for s in ps.specs]
    assert "t.gap" in names and all(f"{s}.s1" in names for s in slots)
    gaps = ps.metadata()["t_s1_gap_h"].abs()
    assert gaps.max() <= 150 and gaps.max() > 72  # the preset's 72 h would not have been met
    item = PatchDataset(out, split=None)[0]
    gap = item["t.gap"]
    assert gap.any() and not item["t.valid"][gap].any() and (item["t"][:, gap] == 0).all()
    assert item["t.truth.valid"][gap].all() and (item["t.truth"][:, gap] > 0).all()


def test_real_gaps_need_a_clear_target_within_ten_days(series, tmp_path):
    out = tmp_path / "os2"
    res = run("-c", series, "-l", "OS2", "--s1-max-gap", 150, "-p", 128, "-n", 5, "-o", out)
    assert_one_line_error(res, "slot target", "cloud <= 0 %")
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_layout_file_from_layouts_show_edited_to_four_slots(series, tmp_path):
    shown = runner.invoke(app, ["layouts", "show", "sequence"])
    assert shown.exit_code == 0, shown.output
    head, *slots = shown.stdout.split("\n[[slots]]\n")
    assert len(slots) == 6
    text = head.replace('name = "sequence"', 'name = "seq4"') + "".join("\n[[slots]]\n" + s for s in slots[:4])
    toml = tmp_path / "my.toml"
    toml.write_text(text)
    out = tmp_path / "seq4"
    res = run("-c", series, "-l", toml, "-p", 128, "-n", 10, "--block", 1, "-o", out)
    assert res.exit_code == 0, res.output
    assert "10 samples of layout seq4" in res.stdout
    ps = check_store(out, series, printed_counts(res.stdout))
    assert [s.name for s in ps.layout.slots] == ["t0", "t1", "t2", "t3"]
    assert [s.name for s in ps.specs] == [n for k in range(4) for n in (f"t{k}", f"t{k}.mask")]
    assert np.load(out / "hours.npy").shape == (10, 4)


def test_no_s1_drops_the_s1_arrays(series, tmp_path):
    args = ("-c", series, "-l", "OS2", "--simulate", "t", "-p", 128, "-n", 6, "--block", 1)
    with_s1 = run(*args, "--s1-max-gap", 150, "-o", tmp_path / "a")
    without = run(*args, "--no-s1", "-o", tmp_path / "b")
    assert with_s1.exit_code == 0 and without.exit_code == 0, (with_s1.output, without.output)
    a, b = PatchStore(tmp_path / "a"), PatchStore(tmp_path / "b")
    assert sum(s.name.endswith(".s1") for s in a.specs) == 3
    assert not [s.name for s in b.specs if ".s1" in s.name]
    assert not [c for c in b.metadata().columns if "_s1_" in c]
    assert all(s.s1_max_gap is None for s in b.layout.slots)
    assert not [k for k in PatchDataset(b, split=None)[0] if ".s1" in str(k)]
    check_store(tmp_path / "b", series, printed_counts(without.stdout))


def test_bands_option_gives_two_band_arrays(series, tmp_path):
    out = tmp_path / "b"
    res = run("-c", series, "-l", "sequence", "--bands", "B02,B04", "-p", 128, "-n", 3, "--block", 1, "-o", out)
    assert res.exit_code == 0, res.output
    ps = check_store(out, series, printed_counts(res.stdout))
    assert ps.bands == ["B02", "B04"]
    assert all(s.shape == (2, 128, 128) for s in ps.specs if s.kind == "S2")
    row = ps.metadata().iloc[0]
    with rasterio.open(json.loads(row["t0_files"])[0]) as src:  # B02, B03, B04, B08 in one file
        assert src.descriptions == ("B02", "B03", "B04", "B08")
        raw = src.read(window=((row["row"], row["row"] + 128), (row["col"], row["col"] + 128)))
    np.testing.assert_array_equal(ps.read(0)["t0"], raw[[0, 2]])


def test_start_end_restrict_reference_dates(series, tmp_path):
    out = tmp_path / "d"
    res = run("-c", series, "-l", "sequence", "--start", "2021-05-01", "--end", "2021-05-16", "-p", 128, "-n", 40,
              "--block", 1, "-o", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    ps = check_store(out, series, printed_counts(res.stdout))
    days = sorted(set(ps.metadata()["datetime"].str[:10]))
    assert days == ["2021-05-01", "2021-05-16"]  # --end takes the whole day
    assert len(ps) == 2 * LOCATIONS


def test_seasonal_draws_take_turns(series, tmp_path):
    out = tmp_path / "s"
    res = run("-c", series, "-l", "single-date", "--simulate", "t", "--no-s1", "--seasonal", "-p", 128, "-n", 8,
              "--block", 1, "-o", out, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["by_season"] == {"MAM": 4, "JJA": 4}
    meta = check_store(out, series, d["by_split"]).metadata()
    months = meta["datetime"].str[5:7].astype(int)
    expected = np.where(months.isin([3, 4, 5]), "MAM", np.where(months.isin([6, 7, 8]), "JJA", "other"))
    assert meta["season"].tolist() == expected.tolist()
    assert meta["season"].value_counts().to_dict() == {"MAM": 4, "JJA": 4}


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.slow
def test_per_location_cap(series, tmp_path, k):
    out = tmp_path / "k"
    res = run("-c", series, "-l", "sequence", "--per-location", k, "-p", 128, "-n", 40, "--block", 1, "-o", out)
    assert res.exit_code == 0, res.output
    ps = check_store(out, series, printed_counts(res.stdout))
    per_loc = ps.metadata().groupby(["row", "col"]).size()
    assert len(per_loc) == LOCATIONS and (per_loc == k).all()  # 5 reference dates per location
    assert len(ps) == k * LOCATIONS
    assert f"{k * LOCATIONS} of the 40 samples asked for satisfy the layout" in res.stdout


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--split", "0.5,x"], "--split"),
        (["--split", "0,0.5,0.5"], "--split"),
        (["--patch-size", "4"], "--patch-size"),
        (["--count", "0"], "--count"),
    ],
    ids=["split-not-a-number", "split-no-train", "patch-4", "count-0"],
)
def test_bad_options_exit_2(series, tmp_path, args, needle):
    res = run("-c", series, "-l", "sequence", "-o", tmp_path / "x", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not (tmp_path / "x").exists()


def test_unknown_layout_names_the_presets(series, tmp_path):
    res = run("-c", series, "-l", "nopreset", "-o", tmp_path / "x")
    # every preset of the registry, the Decloud ones and the sequence among them
    from cloudclear.layouts import PRESETS

    assert {"OS1", "OS2", "OS2-GFa", "OS2-GFb", "single-date", "sequence"} <= set(PRESETS)
    assert_one_line_error(res, "nopreset", f"presets: {', '.join(PRESETS)}")


def test_missing_catalog(tmp_path):
    res = run("-c", tmp_path / "none.gpkg", "-l", "sequence", "-o", tmp_path / "x")
    assert_one_line_error(res, "none.gpkg", "cloudclear index")
    assert not (tmp_path / "x").exists()


def test_unknown_simulated_slot_is_named(series, tmp_path):
    res = run("-c", series, "-l", "sequence", "--simulate", "nope", "-o", tmp_path / "x")
    assert_one_line_error(res, "'nope'", "slots: t0, t1, t2, t3, t4, t5")
    assert not (tmp_path / "x").exists()


def test_existing_store_needs_overwrite(series, tmp_path):
    out = tmp_path / "st"
    base = ("-c", series, "-l", "sequence", "-p", 128, "--block", 1, "-o", out)
    assert run(*base, "-n", 3).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(before["store.json"])["count"] == 3
    res = run(*base, "-n", 5)
    assert_one_line_error(res, "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    res = run(*base, "-n", 5, "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "store.json").read_text())["count"] == 5
    check_store(out, series, printed_counts(res.stdout))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]  # no .st.old-* or .st.partial-* left


def test_overwrite_refuses_a_folder_that_is_not_a_store(series, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run("-c", series, "-l", "sequence", "-p", 128, "-n", 2, "-o", out, "--overwrite")
    assert_one_line_error(res, "not a patch store")
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_onto_a_file_is_a_one_line_error(series, tmp_path):
    out = tmp_path / "afile"
    out.write_text("not a store")
    res = run("-c", series, "-l", "sequence", "-p", 128, "-n", 2, "-o", out, "--overwrite")
    assert out.read_text() == "not a store"
    assert_one_line_error(res, "afile")


def test_sequence_without_enough_later_dates_names_slot_t5(series, tmp_path):
    # from June on no reference has 5 later acquisitions within 90 days (06-15 has 4: 06-30 .. 08-14)
    res = run("-c", series, "-l", "sequence", "--start", "2021-06-01", "-p", 128, "-n", 5, "-o", tmp_path / "x")
    assert_one_line_error(res, "slot t5:", "5th acquisition after the reference", "of any of 5 reference scenes")
    assert not (tmp_path / "x").exists()


def test_nth_slot_explanation_counts_acquisitions_in_the_window(series, tmp_path):
    res = run("-c", series, "-l", "sequence", "--start", "2021-06-01", "-p", 128, "-n", 5, "-o", tmp_path / "x")
    msg = assert_one_line_error(res, "slot t5:")
    assert "(0 acquisitions with data at the patch lie in those windows" not in msg


@pytest.mark.slow
def test_small_count_does_not_blame_the_blocks(series, tmp_path):
    full = run("-c", series, "-l", "sequence", "-p", 128, "--block", 1, "-n", 100, "-o", tmp_path / "all")
    assert full.exit_code == 0, full.output
    assert all(v > 0 for v in printed_counts(full.stdout).values())  # every split has candidates
    res = run("-c", series, "-l", "sequence", "-p", 128, "--block", 1, "-n", 2, "-o", tmp_path / "two")
    assert res.exit_code == 0, res.output
    assert 0 in printed_counts(res.stdout).values()  # 2 samples, 3 splits
    assert "use a smaller --block" not in res.stdout


# -- interruption ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_leaves_no_store(series, tmp_path):
    out = tmp_path / "big"
    # 16 px patches: 900 locations x 5 reference dates, tens of seconds of work when left alone
    cmd = [sys.executable, "-m", "cloudclear.cli", "sample", "-c", str(series), "-l", "sequence", "-p", "16",
           "-n", "100000", "--block", "1", "--workers", "1", "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    deadline = started + 60
    # the partial folder exists once the command runs (and its SIGTERM handler is set)
    while not list(tmp_path.glob(".big.partial-*")):
        if proc.poll() is not None:
            pytest.skip(f"the run ended before it was signalled: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no partial store after 60 s")
        time.sleep(0.005)
    time.sleep(max(0.2, 1.0 - (time.monotonic() - started)))
    if proc.poll() is not None:
        pytest.skip(f"the run ended before it was signalled: {proc.communicate()}")
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the run went on for 30 s after SIGTERM")
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr.startswith("cloudclear: error: ") and "interrupted" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no .big.partial-PID either


# -- honest failures ------------------------------------------------------------------------------


def test_sample_on_a_full_disk_leaves_the_existing_store(series, tmp_path, small_fs):
    vol = small_fs(4 << 20)
    out = vol / "st"
    base = ("-c", series, "-l", "sequence", "-p", 128, "--block", 1, "-o", out)
    assert run(*base, "-n", 2).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill_disk(vol)
    res = run(*base, "-n", 20, "--overwrite")
    assert_one_line_error(res, str(out), "no space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in vol.iterdir() if p.name != ".filler") == ["st"]  # no temporaries


def test_missing_store_is_store_not_found(tmp_path):
    from cloudclear.errors import StoreNotFoundError

    with pytest.raises(StoreNotFoundError, match="no patch store here"):
        PatchStore(tmp_path / "none")
    with pytest.raises(FileNotFoundError):
        PatchDataset(tmp_path / "none")


def test_a_scene_file_deleted_after_indexing_is_named(tmp_path, sample_series):
    root = tmp_path / "t"
    shutil.copytree(sample_series / "S2", root / "S2")
    assert runner.invoke(app, ["index", str(root), "-c", str(root / "cat.gpkg")]).exit_code == 0
    gone = sorted((root / "S2").glob("*.tif"))[0]
    gone.unlink()
    res = run("-c", root / "cat.gpkg", "-l", "sequence", "-p", 128, "--block", 1, "-n", 3, "-o", tmp_path / "st")
    assert_one_line_error(res, str(gone), "no such file", "cat.gpkg", "cloudclear index")
    assert not (tmp_path / "st").exists() and not list(tmp_path.glob(".st*"))
