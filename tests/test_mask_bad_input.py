"""Bad mask input (issue 16): unknown classes are refused naming the values; masks on other grids.

A table convention (SCL, FMASK, DLMASK) holds only its classes, its own nodata and the band's
declared nodata; anything else means the file is not what its name or description says, and every
command that reads it stops with one line naming the file and the values, writing nothing. The
probability and binary conventions keep their meaning for values beyond their range (nodata), and
every byte is a valid MAJA flag set.

A mask on another grid is warped (nearest) when it covers the scene, and refused with one line
naming it when it does not.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import assert_one_line_error, write_raster
from typer.testing import CliRunner

from cloudclear import masks
from cloudclear.catalog import Catalog
from cloudclear.cli import app
from cloudclear.errors import MaskError
from cloudclear.masks import MaskClass

runner = CliRunner()
N, C, CL, SH, SN = MaskClass.NODATA, MaskClass.CLEAR, MaskClass.CLOUD, MaskClass.SHADOW, MaskClass.SNOW
BANDS = ["B02", "B03", "B04", "B08"]
SIZE = 128
DAYS = range(0, 30, 5)  # six dates: enough for the sequence layout and gapfill's neighbours
BAD_DAY = 10
BAD_DATE = "2021-05-11"


def decoded(values, convention: str, nodata: float | None = None, dtype=np.uint8) -> list[int]:
    return masks.decode(np.asarray(values, dtype=dtype), convention, nodata).tolist()


# -- decode: unknown classes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("convention", "values", "message"),
    [
        ("SCL", [0, 4, 12, 200, 12], "unknown SCL class value(s) 12, 200 (SCL codes are 0-11)"),
        ("SCL", [255, 9], "unknown SCL class value(s) 255 (SCL codes are 0-11)"),
        ("FMASK", [0, 4, 5, 255, 254], "unknown FMASK class value(s) 5, 254 (FMASK codes are 0-4, 255 nodata)"),
        ("DLMASK", [0, 1, 4, 7, 255], "unknown DLMASK class value(s) 7 (DLMASK codes are 0-4, 255 nodata)"),
    ],
)
def test_table_convention_refuses_values_outside_its_table(convention, values, message):
    with pytest.raises(MaskError) as info:
        decoded(values, convention)
    assert str(info.value) == message


def test_many_unknown_values_are_listed_sorted_then_elided():
    data = np.arange(255, -1, -1, dtype=np.uint8)  # every byte, in reverse
    with pytest.raises(MaskError) as info:
        masks.decode(data, "SCL")
    assert str(info.value) == "unknown SCL class value(s) 12, 13, 14, 15, 16, 17, 18, 19, ... (SCL codes are 0-11)"


def test_one_unknown_pixel_in_a_full_strip_is_found():
    strip = np.full((512, 10980), 4, np.uint8)
    strip[511, 10979] = 99
    with pytest.raises(MaskError, match=r"value\(s\) 99 \("):
        masks.decode(strip, "SCL")


def test_declared_nodata_outside_the_table_is_not_unknown():
    assert decoded([255, 9, 4], "SCL", nodata=255) == [N, CL, C]
    assert decoded([254, 4], "FMASK", nodata=254) == [N, CL]
    assert decoded([-9999, 3], "DLMASK", nodata=-9999, dtype=np.int16) == [N, SN]
    assert decoded([-1, 8], "SCL", nodata=-1, dtype=np.int16) == [N, CL]
    with pytest.raises(MaskError, match=r"value\(s\) 300 \("):  # -1 is nodata, 300 is still unknown
        decoded([-1, 300, 8], "SCL", nodata=-1, dtype=np.int16)


def test_conventions_own_nodata_needs_no_declaration():
    assert decoded([255, 2], "FMASK") == [N, SH]
    assert decoded([255, 4, 0], "DLMASK") == [N, N, C]


@pytest.mark.parametrize(
    ("values", "dtype", "shown"),
    [
        ([-1, 4, 300], np.int16, "-1, 300"),
        ([4.0, 4.5, 70000.0], np.float32, "4.5, 70000"),
    ],
)
def test_values_that_are_no_byte_are_unknown(values, dtype, shown):
    with pytest.raises(MaskError, match=rf"unknown SCL class value\(s\) {shown} \("):
        decoded(values, "SCL", dtype=dtype)


def test_float_masks_with_whole_values_and_nan_nodata_decode():
    assert decoded([np.nan, 4.0, 9.0], "SCL", nodata=float("nan"), dtype=np.float32) == [N, C, CL]
    assert decoded([np.nan, 3.0], "FMASK", dtype=np.float32) == [N, SN]  # NaN is nodata even undeclared


def test_maja_every_byte_is_valid_and_other_values_are_not():
    out = masks.decode(np.arange(256, dtype=np.uint8), "MAJA")
    assert out.shape == (256,) and not (out == N).any()
    assert decoded([-10000, 2], "MAJA", nodata=-10000, dtype=np.int16) == [N, CL]
    with pytest.raises(MaskError, match=r"unknown MAJA value\(s\) -5, 300 \(MAJA masks are 8-bit flags, 0-255\)"):
        decoded([-5, 2, 300], "MAJA", dtype=np.int16)


def test_probability_and_binary_conventions_keep_out_of_range_as_nodata():
    # Their documented meaning (docs/masks.md): CLM > 1, CLP > 255, CLDPRB > 100 are nodata, not errors.
    assert decoded([0, 1, 2, 255], "CLM") == [C, CL, N, N]
    assert decoded([0, 102, 300, 65535], "CLP", dtype=np.uint16) == [C, CL, N, N]
    assert decoded([0, 40, 101, 255], "CLDPRB") == [C, CL, N, N]


def test_decode_is_unchanged_on_every_known_code():
    for convention, table, extra in (
        ("SCL", masks.SCL_TABLE, {}),
        ("FMASK", masks.FMASK_TABLE, {255: N}),
        ("DLMASK", masks.DLMASK_TABLE, {255: N}),
    ):
        expected = {**table, **extra}
        codes = sorted(expected)
        for dtype in (np.uint8, np.uint16, np.int16, np.float32):
            assert decoded(codes, convention, dtype=dtype) == [expected[c] for c in codes], (convention, dtype)


@pytest.mark.slow
def test_every_real_mask_decodes(shared_data):
    """No mask shipped in ../shared/data is refused: their values are all classes of their convention."""
    from cloudclear.scenes.files import classify, read_file_info

    seen: dict[str, int] = {}
    for path in sorted(shared_data.rglob("*.tif")):
        try:
            role = classify(read_file_info(path))
        except Exception:  # noqa: BLE001 - files that are not rasters cloudclear reads are not masks
            continue
        mb = role.mask
        if mb is None:
            continue
        with rasterio.open(path) as src:
            masks.decode(src.read(mb.band), mb.convention, src.nodatavals[mb.band - 1])
        seen[mb.convention] = seen.get(mb.convention, 0) + 1
    assert {"SCL", "CLM", "CLP", "DLMASK"} <= set(seen), seen


# -- the commands on a mask with an unknown class ------------------------------------------------


def _stamp(day: int) -> str:
    return (datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc) + timedelta(days=day)).strftime("%Y%m%dT%H%M%S")


def _scl_path(folder: Path, day: int) -> Path:
    return folder / f"S2_T31UFQ_{_stamp(day)}_SCL.tif"


def _write_scl(folder: Path, day: int, scl: np.ndarray, **kwargs) -> Path:
    return write_raster(_scl_path(folder, day), scl, descriptions=["SCL"], nodata=0, **kwargs)


def _good_scl() -> np.ndarray:
    scl = np.full((SIZE, SIZE), 4, np.uint8)
    scl[100:] = 9
    return scl


def _bad_scl() -> np.ndarray:
    """Class 12 spread over the whole mask (every patch sees one) and one 200."""
    scl = _good_scl()
    scl[::16, ::16] = 12
    scl[120, 7] = 200
    return scl


def _series(folder: Path, bad: bool = False) -> Path:
    """Six 4-band S2 dates with SCL sidecars; with ``bad`` the mask of BAD_DATE holds class 12 and 200."""
    for day in DAYS:
        data = np.random.default_rng(day).integers(800, 1600, (4, SIZE, SIZE)).astype(np.uint16)
        write_raster(folder / f"S2_T31UFQ_{_stamp(day)}.tif", data, descriptions=BANDS, nodata=0)
        _write_scl(folder, day, _bad_scl() if bad and day == BAD_DAY else _good_scl())
    return folder


def _index(folder: Path, *extra: str):
    return runner.invoke(app, ["index", str(folder), "--no-detect", "--as-decoded", *extra])


def _listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_index_refuses_a_mask_with_unknown_classes(tmp_path):
    _series(tmp_path, bad=True)
    res = _index(tmp_path)
    bad = str(_scl_path(tmp_path, BAD_DAY))
    # Refused: one line naming it and the values, exit 1; the catalog of the other scenes is written.
    assert res.exit_code == 1, res.output
    assert len([ln for ln in res.stderr.splitlines() if bad in ln and "12, 200" in ln]) == 1, res.stderr
    cat = Catalog.open(tmp_path)
    assert any(bad in s.reason and "12, 200" in s.reason for s in cat.skipped()), cat.skipped()
    files = cat.scenes["mask_file"].tolist()
    assert _scl_path(tmp_path, BAD_DAY).name not in {Path(f).name for f in files if isinstance(f, str)}


def test_reindexing_with_a_corrupted_mask_leaves_the_catalog_whole(tmp_path):
    _series(tmp_path)
    assert _index(tmp_path).exit_code == 0
    before = Catalog.open(tmp_path).scenes[["scene_id", "cloud_pct"]].to_dict("records")
    _write_scl(tmp_path, BAD_DAY, _bad_scl())
    res = _index(tmp_path)
    assert "12, 200" in res.stderr, res.output
    assert res.exit_code == 1
    # The scene whose mask broke is refused; every other record is as it was.
    bad_id = f"S2_31UFQ_{_stamp(BAD_DAY)}"
    after = Catalog.open(tmp_path).scenes[["scene_id", "cloud_pct"]].to_dict("records")
    assert after == [r for r in before if r["scene_id"] != bad_id]
    assert not [p for p in _listing(tmp_path) if "partial" in p]


@pytest.fixture
def indexed_then_corrupted(tmp_path) -> Path:
    """An indexed series whose BAD_DATE mask then gets unknown classes (a file replaced after indexing)."""
    _series(tmp_path)
    res = _index(tmp_path)
    assert res.exit_code == 0, res.output
    _write_scl(tmp_path, BAD_DAY, _bad_scl())
    return tmp_path


def test_infer_refuses_a_mask_with_unknown_classes_and_writes_nothing(indexed_then_corrupted):
    folder = indexed_then_corrupted
    before = _listing(folder)
    out = folder / "out" / "filled.tif"
    out.parent.mkdir()
    res = runner.invoke(app, ["infer", "-c", str(folder), "--date", BAD_DATE, "-m", "gapfill", "-o", str(out)])
    assert_one_line_error(res, str(_scl_path(folder, BAD_DAY)), "unknown SCL class value(s) 12, 200")
    assert list(out.parent.iterdir()) == []
    assert _listing(folder) == before | {"out"}


def test_infer_stops_on_a_mask_with_unknown_classes_whatever_the_message(indexed_then_corrupted):
    """What holds today already: exit 1, one line with the values, no output (the path comes with the reader)."""
    folder = indexed_then_corrupted
    out = folder / "out" / "filled.tif"
    out.parent.mkdir()
    res = runner.invoke(app, ["infer", "-c", str(folder), "--date", BAD_DATE, "-m", "gapfill", "-o", str(out)])
    assert_one_line_error(res, "unknown SCL class value(s) 12, 200 (SCL codes are 0-11)")
    assert list(out.parent.iterdir()) == []


def test_sample_refuses_a_mask_with_unknown_classes_and_writes_no_store(indexed_then_corrupted):
    folder = indexed_then_corrupted
    before = _listing(folder)
    store = folder / "store"
    res = runner.invoke(
        app, ["sample", "-c", str(folder), "-l", "sequence", "--no-s1", "-p", "32", "-n", "5", "-o", str(store)]
    )
    assert_one_line_error(res, str(_scl_path(folder, BAD_DAY)), "unknown SCL class value(s) 12")
    assert not store.exists()
    assert _listing(folder) == before


def test_sample_stops_on_a_mask_with_unknown_classes_whatever_the_message(indexed_then_corrupted):
    folder = indexed_then_corrupted
    store = folder / "store"
    res = runner.invoke(
        app, ["sample", "-c", str(folder), "-l", "sequence", "--no-s1", "-p", "32", "-n", "5", "-o", str(store)]
    )
    assert_one_line_error(res, "unknown SCL class value(s) 12")
    assert not store.exists()
    assert not [p for p in _listing(folder) if "partial" in p or p.startswith(".")]


def test_score_refuses_a_mask_with_unknown_classes_naming_it(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("pred", "ref"):
        data = rng.integers(800, 1600, (4, 64, 64)).astype(np.uint16)
        write_raster(tmp_path / f"{name}.tif", data, descriptions=BANDS, nodata=0)
    scl = np.full((32, 32), 9, np.uint8)  # a 20 m SCL: read nearest onto the 10 m grid
    scl[3, 3] = 12
    bad = write_raster(tmp_path / "S2_SCL.tif", scl, descriptions=["SCL"], nodata=0, res=20.0)
    res = runner.invoke(
        app, ["score", str(tmp_path / "pred.tif"), "--ref", str(tmp_path / "ref.tif"), "--mask", str(bad)]
    )
    assert_one_line_error(res, str(bad), "unknown SCL class value(s) 12 (SCL codes are 0-11)")


# -- masks on another grid -----------------------------------------------------------------------


def _status(path: Path) -> np.ndarray:
    with rasterio.open(path.with_name(path.stem + "_status.tif")) as src:
        return src.read(1)


def _infer_as_decoded(folder: Path, out: Path):
    return runner.invoke(
        app, ["infer", "-c", str(folder), "--date", BAD_DATE, "-m", "gapfill", "--as-decoded", "-o", str(out)]
    )


def test_a_20m_mask_of_a_10m_scene_is_warped_nearest_and_infer_uses_it(tmp_path):
    _series(tmp_path)
    scl20 = np.full((SIZE // 2, SIZE // 2), 4, np.uint8)
    scl20[:11] = 9  # cloud over 20 m rows 0..10 = 10 m rows 0..21 (an odd count: no half-pixel drift)
    scl20[40:45, 20:23] = 3  # a shadow block
    _write_scl(tmp_path, BAD_DAY, scl20, res=20.0)
    res = _index(tmp_path, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["skipped"] == []
    up = np.repeat(np.repeat(scl20, 2, axis=0), 2, axis=1)
    row = Catalog.open(tmp_path).scenes.set_index("scene_id").loc[f"S2_31UFQ_{_stamp(BAD_DAY)}"]
    assert Path(row["mask_file"]).name == _scl_path(tmp_path, BAD_DAY).name
    assert row["cloud_pct"] == pytest.approx(100.0 * np.isin(up, (3, 9)).mean(), abs=1e-3)

    out = tmp_path / "filled.tif"
    res = _infer_as_decoded(tmp_path, out)
    assert res.exit_code == 0, res.output
    expected = np.where(np.isin(up, (3, 9)), 2, 1)  # 2 reconstructed where the 20 m mask says so, 1 observed
    np.testing.assert_array_equal(_status(out), expected)


@pytest.mark.parametrize(
    "where",
    [
        {"origin": (700000.0, 5600000.0)},  # same CRS, 100 km away
        {"crs": "EPSG:32633"},  # same numbers, another UTM zone: another place
        {"origin": (600640.0, 5700000.0)},  # overlaps half of the scene only
    ],
    ids=["elsewhere", "other-crs", "half"],
)
def test_a_mask_that_does_not_cover_its_scene_is_refused_naming_it(tmp_path, where):
    _series(tmp_path)
    scl = np.full((SIZE, SIZE), 9, np.uint8)  # all cloud: used by mistake, infer would reconstruct everything
    bad = _write_scl(tmp_path, BAD_DAY, scl, **where)
    res = _index(tmp_path)
    assert res.exit_code == 1, res.output  # refused: the catalog of the rest is written
    lines = [ln for ln in res.stderr.splitlines() if str(bad) in ln]
    assert len(lines) == 1 and "does not cover" in lines[0], res.stderr
    cat = Catalog.open(tmp_path)
    assert [s.path for s in cat.skipped()] == [str(bad)]
    row = cat.scenes.set_index("scene_id").loc[f"S2_31UFQ_{_stamp(BAD_DAY)}"]
    assert not isinstance(row["mask_file"], str) or Path(row["mask_file"]).name != bad.name

    out = tmp_path / "filled.tif"
    res = _infer_as_decoded(tmp_path, out)
    assert res.exit_code == 0, res.output
    assert not (_status(out) == 2).all()  # the refused all-cloud mask was not used


def test_a_mask_larger_than_its_scene_is_warped_onto_it(tmp_path):
    _series(tmp_path)
    big = np.full((2 * SIZE, 2 * SIZE), 4, np.uint8)
    big[SIZE // 2 : SIZE // 2 + 22] = 9  # the scene's rows 0..21, the big mask starting 64 px above it
    _write_scl(tmp_path, BAD_DAY, big, origin=(600000.0 - 640, 5700000.0 + 640))
    res = _index(tmp_path)
    assert res.exit_code == 0 and "does not cover" not in res.stderr, res.output
    out = tmp_path / "filled.tif"
    assert _infer_as_decoded(tmp_path, out).exit_code == 0
    expected = np.ones((SIZE, SIZE), np.uint8)
    expected[:22] = 2
    np.testing.assert_array_equal(_status(out), expected)


def test_a_mask_moved_off_its_scene_after_indexing_is_refused_by_infer(tmp_path):
    _series(tmp_path)
    assert _index(tmp_path).exit_code == 0
    bad = _write_scl(tmp_path, BAD_DAY, _good_scl(), origin=(700000.0, 5600000.0))
    out = tmp_path / "out" / "filled.tif"
    out.parent.mkdir()
    res = _infer_as_decoded(tmp_path, out)
    assert_one_line_error(res, str(bad), "does not cover")
    assert list(out.parent.iterdir()) == []
