"""The clear policy (cloudclear.masks.ClearPolicy): validation, the presets (the default: mask and
detector, a 3 px buffer, the temporal test; AS_DECODED: the mask as decoded, nothing changed;
STRICT), what each rule changes, the scene reader applying it strip-safe, and inference passing it
on (AS_DECODED removes nothing)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
from conftest import FakeSource, write_raster

from cloudclear import masks
from cloudclear.catalog import Catalog, build_index
from cloudclear.errors import MaskError
from cloudclear.gridio import Grid
from cloudclear.inference.pipeline import InferOptions, infer, load_method
from cloudclear.masks import AS_DECODED, STRICT, ClearPolicy, MaskClass
from cloudclear.scenes.reader import BandRead, ReadSpec, SceneReader

UTM = "EPSG:32631"
ORIGIN = (600000.0, 5700000.0)
H, W = 60, 50


# -- the policy value ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_px": -1}, r"buffer must be 0\.\.64 px, not -1"),
        ({"buffer_px": 65}, r"buffer must be 0\.\.64 px, not 65"),
        ({"buffer_px": 1.5}, r"buffer must be a whole number of px, not 1\.5"),
        ({"buffer_px": True}, r"buffer must be a whole number of px, not True"),
        ({"unclassified": "haze"}, r"unclassified must be clear or cloud, not 'haze'"),
        ({"snow": "ice"}, r"snow must be clear or cloud, not 'ice'"),
        ({"temporal_days": -1}, r"temporal window must be 0\.\.366 days, not -1"),
        ({"temporal_days": 2.5}, r"temporal window must be a whole number of days, not 2\.5"),
        ({"temporal": 1}, r"temporal must be true or false, not 1"),
        ({"source": "s2cloudless"}, r"source must be one of combined, mask, detector, not 's2cloudless'"),
    ],
)
def test_policy_validation(kwargs, message):
    with pytest.raises(MaskError, match=message):
        ClearPolicy(**kwargs)


def test_default_as_decoded_and_strict():
    # Issue 16: the default makes outputs cloud-free (scene mask, 3 px buffer, temporal test).
    assert ClearPolicy().is_default and masks.DEFAULT_POLICY == ClearPolicy()
    d = masks.DEFAULT_POLICY
    want = dict(source="mask", buffer_px=3, unclassified="clear", snow="clear", temporal=True, temporal_days=20)
    assert dataclasses.asdict(d) == want
    assert not d.changes_nothing and d.changes_classes and d.halo == 3
    assert d.describe() == "scene mask, buffer 3 px, unclassified clear, snow clear, temporal test (20 d)"
    # AS_DECODED: the scene's own mask, nothing changed (cloudclear before the policy).
    a = AS_DECODED
    assert (a.source, a.buffer_px, a.unclassified, a.snow, a.temporal) == ("mask", 0, "clear", "clear", False)
    assert a.changes_nothing and not a.is_default and not a.changes_classes and a.halo == 0
    assert "mask as decoded" in a.describe() and "mask as decoded" not in d.describe()
    # Anything else than AS_DECODED changes something, even with no class rule.
    assert not dataclasses.replace(AS_DECODED, temporal=True).changes_nothing
    assert not dataclasses.replace(AS_DECODED, source="combined").changes_nothing
    # STRICT: the default with a 5 px buffer and unclassified counted as cloud.
    assert not STRICT.is_default and not STRICT.changes_nothing
    assert STRICT == dataclasses.replace(d, buffer_px=5, unclassified="cloud")
    assert STRICT.describe() == "scene mask, buffer 5 px, unclassified cloud, snow clear, temporal test (20 d)"
    assert ClearPolicy(temporal_days=0).describe().endswith("temporal test (all dates)")
    assert (
        ClearPolicy(source="mask", temporal=False).describe()
        == "scene mask, buffer 3 px, unclassified clear, snow clear"
    )
    assert dataclasses.replace(STRICT, buffer_px=0).halo == 0
    # The default decoding is unchanged: Sen2Cor's unclassified (7) decodes to CLEAR.
    assert masks.SCL_TABLE[7] == MaskClass.CLEAR and masks.UNCLASSIFIED_CODES["SCL"] == (7,)


ALL_SCL = np.arange(12, dtype=np.uint8).reshape(3, 4)


def test_as_decoded_changes_nothing_and_the_default_buffers():
    cls = masks.decode(ALL_SCL, "SCL")
    np.testing.assert_array_equal(masks.apply_policy(cls, AS_DECODED, ALL_SCL, "SCL"), cls)
    # The default's only class rule is its 3 px buffer (unclassified and snow stay clear).
    got = masks.apply_policy(cls, ClearPolicy(), ALL_SCL, "SCL")
    np.testing.assert_array_equal(got, masks.buffer_obscured(cls, 3))
    assert (got != cls).any()


def _rule_only(**kw) -> ClearPolicy:
    """AS_DECODED with one rule changed: that rule alone is tested."""
    return dataclasses.replace(AS_DECODED, **kw)


def test_unclassified_as_cloud_changes_class_7_only():
    cls = masks.decode(ALL_SCL, "SCL")
    got = masks.apply_policy(cls, _rule_only(unclassified="cloud"), ALL_SCL, "SCL")
    changed = got != cls
    assert changed.sum() == 1 and ALL_SCL[changed].tolist() == [7]
    assert got[ALL_SCL == 7].tolist() == [MaskClass.CLOUD]
    # Conventions without an unclassified code are left as they are.
    fm = np.array([[0, 1, 2, 3, 4]], np.uint8)
    fcls = masks.decode(fm, "FMASK")
    np.testing.assert_array_equal(masks.apply_policy(fcls, _rule_only(unclassified="cloud"), fm, "FMASK"), fcls)


def test_snow_as_cloud_changes_snow_only():
    cls = masks.decode(ALL_SCL, "SCL")
    got = masks.apply_policy(cls, _rule_only(snow="cloud"), ALL_SCL, "SCL")
    changed = got != cls
    assert ALL_SCL[changed].tolist() == [11] and got[ALL_SCL == 11].tolist() == [MaskClass.CLOUD]


def _within(seed: np.ndarray, n: int) -> np.ndarray:
    """Brute force: pixels within Euclidean distance ``n`` of a seed pixel."""
    ys, xs = np.nonzero(seed)
    yy, xx = np.mgrid[: seed.shape[0], : seed.shape[1]]
    out = np.zeros(seed.shape, bool)
    for y, x in zip(ys, xs, strict=True):
        out |= (yy - y) ** 2 + (xx - x) ** 2 <= n * n
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_buffer_is_a_disk_of_n_pixels(n):
    cls = np.full((21, 21), MaskClass.CLEAR, np.uint8)
    cls[10, 10] = MaskClass.CLOUD
    got = masks.buffer_obscured(cls, n)
    obscured = masks.is_obscured(got)
    np.testing.assert_array_equal(obscured, _within(cls == MaskClass.CLOUD, n))
    # Exactly n px along the axes, less along the diagonals (a disk, not a square).
    assert obscured[10, 10 + n] and not obscured[10, 11 + n] and obscured[10 - n, 10]
    assert n == 1 or not obscured[10 - n, 10 - n]


@pytest.mark.parametrize("radius", [1, 2, 3, 4, 7])
def test_dilate_disk_equals_a_2d_dilation(radius):
    from scipy.ndimage import binary_dilation

    seed = np.random.default_rng(radius).random((53, 71)) < 0.02
    seed[0, 0] = seed[-1, 5] = True  # at the edges
    expected = binary_dilation(seed, structure=masks.disk(radius))
    np.testing.assert_array_equal(masks.dilate_disk(seed, radius), expected)
    np.testing.assert_array_equal(masks.dilate_disk(seed, radius), _within(seed, radius))


@pytest.mark.parametrize("shape", [(1, 1), (6, 2), (40, 97)])
def test_row_maximum_equals_scipy(shape):
    """The doubling maximum equals scipy's 1-D maximum filter (zeros outside), windows wider than
    the row included, on uint8 priorities (the buffer's ranks 0..3)."""
    from scipy.ndimage import maximum_filter1d

    from cloudclear.morphology import _row_maximum

    rng = np.random.default_rng(shape[1])
    src = (rng.random(shape) < 0.05).astype(np.uint8) * rng.integers(1, 4, shape).astype(np.uint8)
    for w in range(0, 13):
        want = maximum_filter1d(src, 2 * w + 1, axis=1, mode="constant", cval=0)
        np.testing.assert_array_equal(_row_maximum(src, w), want, err_msg=f"w={w}")


def test_buffer_classes_and_nodata():
    cls = np.full((9, 12), MaskClass.CLEAR, np.uint8)
    cls[:, 0] = MaskClass.SHADOW
    cls[:, 4] = MaskClass.CLOUD
    cls[0, :] = MaskClass.NODATA
    cls[8, 8] = MaskClass.SNOW
    cls[8, 7] = MaskClass.THIN_CLOUD
    got = masks.buffer_obscured(cls, 2)
    assert (got[0] == MaskClass.NODATA).all()  # nodata stays nodata
    assert (got[1:, 1] == MaskClass.SHADOW).all()  # only shadow within 2 px
    assert (got[1:, 2] == MaskClass.CLOUD).all()  # within 2 of both: cloud wins
    assert (got[1:, 6] == MaskClass.CLOUD).all() and (got[1:6, 7] == MaskClass.CLEAR).all()
    assert got[8, 8] == MaskClass.THIN_CLOUD  # snow next to thin cloud is buffered too
    assert got[8, 10] == MaskClass.CLEAR and got[7, 8] == MaskClass.THIN_CLOUD and got[7, 9] == MaskClass.CLEAR


# -- the reader ------------------------------------------------------------------------------------


def _scene(folder, *, scl_res: float = 10.0):
    """A 4-band uint16 scene and its SCL: a cloud block, a shadow line, unclassified, snow, nodata."""
    folder.mkdir(parents=True, exist_ok=True)
    data = np.full((4, H, W), 1200, np.uint16)
    data[:, :3, :3] = 0
    bands = write_raster(folder / "S2_T31UFQ_20210501T103000.tif", data, origin=ORIGIN, nodata=0)
    n_r, n_c = int(H * 10 / scl_res), int(W * 10 / scl_res)
    scl = np.full((n_r, n_c), 4, np.uint8)
    scl[n_r // 6 : n_r // 3, n_c // 5 : n_c // 2] = 9
    scl[n_r // 2, :] = 3
    scl[-n_r // 5 :, : n_c // 4] = 7
    scl[-3:, -5:] = 11
    scl[-1, -1] = 0
    mask = write_raster(folder / "S2_T31UFQ_20210501T103000_SCL.tif", scl, origin=ORIGIN, res=scl_res)
    spec = ReadSpec(
        "S2",
        ("B02", "B03", "B04", "B08"),
        tuple(BandRead(str(bands), i + 1, 1e-4, 0.0, 0.0) for i in range(4)),
        mask=masks.MaskBand(str(mask), 1, "SCL"),
    )
    return spec, Grid(UTM, (10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1]), W, H)


def _whole(spec, grid, policy=masks.DEFAULT_POLICY):
    reader = SceneReader(spec, grid, policy=policy)
    try:
        return reader.read(0, grid.height)
    finally:
        reader.close()


def test_default_reader_equals_explicit_default(tmp_path):
    spec, grid = _scene(tmp_path)
    reader = SceneReader(spec, grid)
    try:
        a = reader.read(0, grid.height)
    finally:
        reader.close()
    assert reader.policy == masks.DEFAULT_POLICY
    b = _whole(spec, grid, ClearPolicy())
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.removed, b.removed)
    assert a.removed_by == b.removed_by
    # No detector mask here: the default is the scene's mask with its 3 px buffer.
    decoded = _whole(spec, grid, AS_DECODED)
    assert decoded.removed is None and decoded.removed_by is None
    np.testing.assert_array_equal(a.classes, masks.buffer_obscured(decoded.classes, 3))
    assert a.removed is not None and a.removed_by is not None
    assert set(a.removed_by) == {"buffer"} and a.removed_by["buffer"] == int(a.removed.sum()) > 0
    np.testing.assert_array_equal(a.removed, decoded.clear & ~a.clear)


@pytest.mark.parametrize("scl_res", [10.0, 20.0])
@pytest.mark.parametrize("policy", [ClearPolicy(buffer_px=3), STRICT, ClearPolicy(buffer_px=2, snow="cloud")])
def test_reader_applies_the_policy_strip_safe(tmp_path, policy, scl_res):
    spec, grid = _scene(tmp_path, scl_res=scl_res)
    base = _whole(spec, grid, AS_DECODED)
    px = _whole(spec, grid, policy)
    # The whole read is the policy applied to the mask as decoded.
    reader = SceneReader(spec, grid, policy=AS_DECODED)
    try:
        decoded = reader.read_mask(0, H, 0, W)
    finally:
        reader.close()
    with rasterio.open(spec.mask.path) as src:
        raw = src.read(1)
    k = int(scl_res // 10)
    raw = np.repeat(np.repeat(raw, k, axis=0), k, axis=1)
    expected = masks.apply_policy(decoded, policy, raw, "SCL")
    expected[~base.valid] = MaskClass.NODATA
    np.testing.assert_array_equal(px.classes, expected)
    # Cloud and shadow grow by exactly buffer_px (a disk) over what the rules before the buffer obscure.
    seeds = masks.is_obscured(masks.apply_policy(decoded, dataclasses.replace(policy, buffer_px=0), raw, "SCL"))
    grown = _within(seeds, policy.buffer_px) & (decoded != MaskClass.NODATA)
    np.testing.assert_array_equal(masks.is_obscured(px.classes) | ~px.valid, grown | ~px.valid)
    assert px.removed is not None
    np.testing.assert_array_equal(px.removed, base.clear & ~px.clear)
    assert px.removed.sum() > 0
    # Strips and windows of any size equal the whole read.
    reader = SceneReader(spec, grid, policy=policy)
    try:
        for rows in (1, 4, 7, 16):
            parts = [reader.read(r, min(r + rows, H)) for r in range(0, H, rows)]
            np.testing.assert_array_equal(np.concatenate([p.classes for p in parts]), px.classes)
            np.testing.assert_array_equal(np.concatenate([p.removed for p in parts]), px.removed)
        win = reader.read_window(7, 41, 5, 33)
        np.testing.assert_array_equal(win.classes, px.classes[7:41, 5:33])
        np.testing.assert_array_equal(reader.read_mask(7, 41, 5, 33), px.classes[7:41, 5:33])
    finally:
        reader.close()


def test_unclassified_cloud_in_the_reader_changes_class_7_only(tmp_path):
    spec, grid = _scene(tmp_path)
    base, px = _whole(spec, grid, AS_DECODED), _whole(spec, grid, _rule_only(unclassified="cloud"))
    with rasterio.open(spec.mask.path) as src:
        raw = src.read(1)
    changed = base.clear != px.clear
    assert changed.any() and (raw[changed] == 7).all()
    np.testing.assert_array_equal(changed, base.valid & (raw == 7))


# -- inference ----------------------------------------------------------------------------------------


def _series(folder):
    """Five dates: cloudy on the middle one (a cloud block with unclassified above it, and a small
    cloud ending 2 rows above the files' 20-row block boundary, whose buffer crosses it)."""
    rng = np.random.default_rng(0)
    land = rng.integers(800, 3000, (4, H, W)).astype(np.uint16)
    for d, day in enumerate((1, 6, 11, 16, 21)):
        stamp = f"202105{day:02d}T103000"
        data = (land + 20 * d).astype(np.uint16)
        scl = np.full((H, W), 4, np.uint8)
        if day == 11:
            data[:, 10:30, 10:30] = 9000
            scl[10:30, 10:30] = 9
            scl[8:10, 10:30] = 7
            data[:, 16:18, 36:46] = 9000
            scl[16:18, 36:46] = 9
        desc = ["B02", "B03", "B04", "B08"]
        write_raster(folder / f"S2_T31UFQ_{stamp}.tif", data, origin=ORIGIN, nodata=0, descriptions=desc)
        write_raster(folder / f"S2_T31UFQ_{stamp}_SCL.tif", scl, origin=ORIGIN, descriptions=["SCL"])
    # No detector: on this land of uncorrelated random bands the built-in detector calls about 45 %
    # of every date cloud (a noise pattern is no surface), so these tests decide with the SCL
    # alone and check the policy's rules on it. The catalog's cloud % (which only ranks inputs
    # here) keeps the masks as decoded.
    return Catalog.open(build_index(folder, folder.parent / "c.gpkg", detect=None, policy=AS_DECODED).catalog_path)


def test_inference_default_equals_explicit_default_and_rules_remove(tmp_path):
    cat = _series(tmp_path / "data")
    method = load_method("gapfill")
    # "mask3": the scene's mask with a 3 px buffer and unclassified as cloud, no temporal test.
    mask3 = ClearPolicy(buffer_px=3, unclassified="cloud", temporal=False, source="mask")
    policies = {"implicit": None, "explicit": ClearPolicy(), "decoded": AS_DECODED, "mask3": mask3, "strict": STRICT}
    out = {}
    for name, policy in policies.items():
        opts = InferOptions() if policy is None else InferOptions(clear=policy)
        res = infer(cat, ["2021-05-11"], method, tmp_path / f"{name}.tif", options=opts).results[0]
        with rasterio.open(res.path) as src:
            out[name] = (src.read(), src.tags(), res)
    np.testing.assert_array_equal(out["implicit"][0], out["explicit"][0])
    assert out["implicit"][1] == out["explicit"][1]
    # The tags always name the policy; AS_DECODED removes nothing.
    for name, policy in policies.items():
        want = (policy or masks.DEFAULT_POLICY).describe()
        assert out[name][2].policy == want and out[name][1]["CLOUDCLEAR_CLEAR_POLICY"] == want, name
    decoded = out["decoded"][2]
    assert decoded.policy_removed == {} and decoded.policy_removed_by == {}
    assert any(n == f"clear policy: {AS_DECODED.describe()}" for n in decoded.notes)
    seed = np.zeros((H, W), bool)
    seed[8:30, 10:30] = True  # the cloud and the unclassified rows above it
    seed[16:18, 36:46] = True
    # Only the date itself has obscured pixels: the buffer and the unclassified rows, not the clouds.
    for name, buffer in (("mask3", 3), ("strict", 5)):
        r = out[name][2]
        assert r.policy_removed == {"t": int(_within(seed, buffer).sum()) - 400 - 20}, name
        assert r.observed == decoded.observed - r.policy_removed["t"], name
        assert any(n.startswith(f"clear policy: {r.policy}; removed ") for n in r.notes), name
    # The default keeps unclassified clear: its buffer grows the clouds alone (the other dates
    # differ by a constant offset, so the temporal test flags nothing more).
    seed[8:10] = False
    r = out["implicit"][2]
    assert r.policy_removed == {"t": int(_within(seed, 3).sum()) - 400 - 20}
    assert r.policy_removed_by == {"buffer": r.policy_removed["t"]}
    assert r.observed == decoded.observed - r.policy_removed["t"]


def test_strict_inference_is_the_same_for_any_strip_height(tmp_path):
    cat = _series(tmp_path / "data")
    method = load_method("gapfill")
    outs = []
    for rows in (1, 7, 512):
        opts = InferOptions(clear=STRICT, strip_rows=rows)
        res = infer(cat, ["2021-05-11"], method, tmp_path / f"s{rows}.tif", options=opts).results[0]
        with rasterio.open(res.path) as src:
            outs.append((src.read(), res.policy_removed))
    for got in outs[1:]:
        np.testing.assert_array_equal(got[0], outs[0][0])
        assert got[1] == outs[0][1]


def test_choose_inputs_excludes_scenes(tmp_path):
    from cloudclear.errors import NoInputsError
    from cloudclear.inference.select import choose_inputs, gapfill_layout

    cat = _series(tmp_path / "data")
    ids = [s.scene_id for s in cat]
    request = dataclasses.replace(gapfill_layout(2), exclude=(ids[3], ids[2]))
    got = choose_inputs(cat, "2021-05-11", request)
    assert [a.scene_id for a in got.acquisitions] == [ids[0], ids[1], ids[4]]
    assert got.get("t") is None  # the date itself held out: every pixel is reconstructed
    with pytest.raises(NoInputsError, match=r"cannot exclude 'S2_nope': no scene has that id"):
        choose_inputs(cat, "2021-05-11", dataclasses.replace(request, exclude=("S2_nope",)))


def test_restore_mask_clear_where_the_policy_left_no_clear_input():
    """Pixels with no S2 input clear after the policy, but one clear per the masks alone, take the
    masks' decision on every S2 input; S1 inputs with no value there neither count nor change
    (where one has a value nothing is restored: tests/test_temporal_witnesses.py); counts move back."""
    from types import SimpleNamespace

    from cloudclear.inference.reading import Strip, restore_mask_clear

    def source(sensor: str, removed: int) -> SimpleNamespace:
        return FakeSource(acq=SimpleNamespace(sensor=sensor), removed=removed, given_back=0, witness=False)

    def strip(clear: list[bool], mask_clear: list[bool] | None) -> Strip:
        c = np.array([clear])
        return Strip(
            np.zeros((1, 1, 4), np.uint16),
            np.ones_like(c),
            c,
            None,
            None if mask_clear is None else np.array([mask_clear]),
        )

    # pixel 0: clear after the policy on input a; 1: lost on both, clear per a's mask; 2: lost on
    # both, per both masks; 3: never clear (a cloud in both masks).
    a = strip([True, False, False, False], [True, True, True, False])
    b = strip([False, False, False, False], [False, False, True, False])
    s1 = strip([True, True, True, True], [True, True, True, True])
    s1.valid = np.zeros_like(s1.valid)  # no S1 value at these pixels
    sources = [source("S2", 2), source("S2", 1), source("S1", 0)]
    assert restore_mask_clear(sources, [a, b, s1]) == 2
    assert a.clear.tolist() == [[True, True, True, False]] and b.clear.tolist() == [[False, False, True, False]]
    assert [s.removed for s in sources] == [0, 0, 0]
    assert [s.given_back for s in sources] == [2, 1, 0]
    assert restore_mask_clear(sources, [a, b, s1]) == 0  # nothing more to restore
    # The default policy (no mask_clear) changes nothing.
    c = strip([False, False, False, False], None)
    assert restore_mask_clear(sources[:1], [c]) == 0 and not c.clear.any()
