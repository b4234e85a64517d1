"""One decision of what is clear in ``index``, ``sample`` and ``evaluate``: the clear policy.

The default policy (issue 16: the scene's own mask, a 3 px buffer; the built-in detector's mask
only where a scene has none, or combined with it under ``--mask-source combined``) raises a
scene's cloud % by the buffer ring; ``--strict`` (buffer 5 px, SCL "unclassified" as cloud) more;
``--as-decoded`` keeps the mask as it is (catalogs and stores as before the policy). Every catalog
records its policy in the meta table, every store in store.json, and re-indexing with another
policy recomputes every scene.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from conftest import write_raster
from scipy import ndimage
from typer.testing import CliRunner

from cloudclear import masks
from cloudclear.catalog import POLICY_KEY, Catalog, build_index, policy_of, policy_text
from cloudclear.cli import app
from cloudclear.sampling import PatchStore
from cloudclear.training.evaluation import store_policy

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BANDS = ["B02", "B03", "B04", "B08"]
SIZE = 128
CLOUD_ROWS = 32


def _scene(folder: Path, day: int = 0, cloud_rows: int = CLOUD_ROWS, unclassified_rows: int = 0) -> None:
    """A 4-band S2 scene with SCL: the top rows cloud (9), then rows of 'unclassified' (7), then vegetation."""
    stamp = (datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc) + timedelta(days=day)).strftime("%Y%m%dT%H%M%S")
    data = np.full((4, SIZE, SIZE), 1200, np.uint16)
    scl = np.full((1, SIZE, SIZE), 4, np.uint8)
    scl[:, :cloud_rows] = 9
    scl[:, SIZE - unclassified_rows :] = 7
    write_raster(folder / f"S2_T31UFQ_{stamp}.tif", data, descriptions=BANDS, nodata=0)
    write_raster(folder / f"S2_T31UFQ_{stamp}_SCL.tif", scl, descriptions=["SCL"], nodata=0)


def _index(folder: Path, *extra: str) -> dict:
    res = runner.invoke(app, ["index", str(folder), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _cloud(folder: Path) -> float:
    return float(Catalog.open(folder).scenes.iloc[0]["cloud_pct"])


def test_policy_text_round_trips():
    for policy in (masks.DEFAULT_POLICY, masks.STRICT, masks.AS_DECODED):
        assert policy_of(policy_text(policy)) == policy
    # Catalogs and stores made before the policy kept the masks as decoded.
    assert policy_of(None) == masks.AS_DECODED and policy_of("") == masks.AS_DECODED


def test_default_index_records_the_default_policy_and_the_removed_column(tmp_path):
    _scene(tmp_path)
    out = _index(tmp_path)
    ring = masks.DEFAULT_POLICY.buffer_px  # a straight cloud edge grows by buffer_px full rows
    (scene_id,) = out["policy_removed_px"]["scenes"]
    # The default reads the scene's own SCL: no detector runs on it and no "detector" rule is
    # counted; the buffer removes the ring, nothing else.
    assert masks.DEFAULT_POLICY.source == "mask" and out["masks_detected"] == 0
    assert out["policy_removed_px"] == {
        "total": ring * SIZE,
        "by_rule": {"buffer": ring * SIZE},
        "scenes": {scene_id: ring * SIZE},
    }
    cat = Catalog.open(tmp_path)
    assert cat.meta[POLICY_KEY] == policy_text(masks.DEFAULT_POLICY) and cat.policy == masks.DEFAULT_POLICY
    assert int(cat.scenes.iloc[0]["policy_removed_px"]) == ring * SIZE
    assert cat.scenes.iloc[0]["detected_file"] is None
    assert _cloud(tmp_path) == pytest.approx(100.0 * (CLOUD_ROWS + ring) / SIZE, abs=1e-3)
    # --mask-source combined runs the detector on the masked scene too and counts its rule: it sees
    # no cloud on the flat scene, so the cloud % is the same.
    out = _index(tmp_path, "--mask-source", "combined")
    assert out["masks_detected"] == 1
    assert out["policy_removed_px"] == {
        "total": ring * SIZE,
        "by_rule": {"detector": 0, "buffer": ring * SIZE},
        "scenes": {scene_id: ring * SIZE},
    }
    cat = Catalog.open(tmp_path)
    assert cat.policy.source == "combined" and cat.scenes.iloc[0]["detected_file"] is not None
    assert _cloud(tmp_path) == pytest.approx(100.0 * (CLOUD_ROWS + ring) / SIZE, abs=1e-3)


def test_as_decoded_index_records_its_policy_and_no_removed_column(tmp_path):
    _scene(tmp_path)
    out = _index(tmp_path, "--as-decoded")
    assert out["policy_removed_px"] == {"total": 0, "by_rule": {}, "scenes": {}}
    cat = Catalog.open(tmp_path)
    assert cat.meta[POLICY_KEY] == policy_text(masks.AS_DECODED) and cat.policy == masks.AS_DECODED
    assert "policy_removed_px" not in cat.scenes.columns
    assert _cloud(tmp_path) == pytest.approx(100.0 * CLOUD_ROWS / SIZE)


def test_strict_raises_cloud_by_the_buffer_ring(tmp_path):
    _scene(tmp_path)
    out = _index(tmp_path, "--strict")
    ring = masks.STRICT.buffer_px  # a straight cloud edge grows by buffer_px full rows
    assert _cloud(tmp_path) == pytest.approx(100.0 * (CLOUD_ROWS + ring) / SIZE, abs=1e-3)
    (scene_id,) = out["policy_removed_px"]["scenes"]
    assert out["policy_removed_px"] == {
        "total": ring * SIZE,
        "by_rule": {"unclassified": 0, "buffer": ring * SIZE},  # source "mask": no detector rule
        "scenes": {scene_id: ring * SIZE},
    }
    cat = Catalog.open(tmp_path)
    assert cat.policy == masks.STRICT
    assert int(cat.scenes.iloc[0]["policy_removed_px"]) == ring * SIZE
    text = runner.invoke(app, ["index", str(tmp_path)])  # back to the default: recomputed, and said
    assert text.exit_code == 0, text.output
    assert (
        f"  clear policy: {masks.DEFAULT_POLICY.describe()} (its temporal test: sample and infer), every scene "
        "recomputed (the catalog had another policy)" in text.stdout.splitlines()
    )
    assert _cloud(tmp_path) == pytest.approx(100.0 * (CLOUD_ROWS + masks.DEFAULT_POLICY.buffer_px) / SIZE, abs=1e-3)


def test_strict_counts_unclassified_as_cloud(tmp_path):
    _scene(tmp_path, cloud_rows=0, unclassified_rows=16)
    _index(tmp_path, "--unclassified", "cloud", "--buffer", "0")
    assert _cloud(tmp_path) == pytest.approx(100.0 * 16 / SIZE, abs=1e-3)
    _index(tmp_path)  # the default: unclassified is clear
    assert _cloud(tmp_path) == 0.0
    _index(tmp_path, "--strict")  # unclassified rows at the bottom edge: the buffer adds rows above
    assert _cloud(tmp_path) == pytest.approx(100.0 * (16 + masks.STRICT.buffer_px) / SIZE, abs=1e-3)


def test_text_output_has_a_total_line(tmp_path):
    _scene(tmp_path)
    res = runner.invoke(app, ["index", str(tmp_path), "--buffer", "2"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert (
        "  clear policy: scene mask, buffer 2 px, unclassified clear, snow clear, temporal test (20 d) "
        "(its temporal test: sample and infer)" in lines
    )
    assert (
        f"    {2 * SIZE} px the scenes' masks call clear counted as obscured, in 1 scene(s); by rule: "
        f"buffer {2 * SIZE}" in lines  # source "mask": the detector ran on no scene, no detector rule
    )
    res = runner.invoke(app, ["index", str(tmp_path), "--buffer", "2", "--mask-source", "combined"])
    assert res.exit_code == 0, res.output
    assert (
        f"    {2 * SIZE} px the scenes' masks call clear counted as obscured, in 1 scene(s); by rule: detector 0, "
        f"buffer {2 * SIZE}" in res.stdout.splitlines()
    )
    # As decoded: the policy is said, and nothing was removed.
    res = runner.invoke(app, ["index", str(tmp_path), "--as-decoded"])
    assert res.exit_code == 0, res.output
    assert (
        f"  clear policy: {masks.AS_DECODED.describe()}, every scene recomputed (the catalog had another policy)"
        in (res.stdout.splitlines())
    )
    assert "counted as obscured" not in res.stdout


def test_reindexing_with_another_policy_recomputes_every_scene(tmp_path):
    for day in range(3):
        _scene(tmp_path, day)
    first = build_index(tmp_path)
    assert first.scenes_computed == 3
    again = build_index(tmp_path)
    assert again.scenes_computed == 0 and again.scenes_reused == 3
    strict = build_index(tmp_path, policy=masks.STRICT)
    assert strict.scenes_computed == 3 and strict.scenes_reused == 0 and strict.recomputed_policy
    clouds = Catalog.open(tmp_path).scenes["cloud_pct"].tolist()
    ring = masks.STRICT.buffer_px
    assert clouds == pytest.approx([100.0 * (CLOUD_ROWS + ring) / SIZE] * 3, abs=1e-3)
    same = build_index(tmp_path, policy=masks.STRICT)  # the same policy: reused, removed counts kept
    assert same.scenes_reused == 3 and same.removed_total == 3 * ring * SIZE
    assert same.removed_by == {"unclassified": 0, "buffer": 3 * ring * SIZE}  # source "mask": no detector rule
    back = build_index(tmp_path)
    assert back.scenes_computed == 3 and back.recomputed_policy
    ring = masks.DEFAULT_POLICY.buffer_px
    assert Catalog.open(tmp_path).scenes["cloud_pct"].tolist() == pytest.approx(
        [100.0 * (CLOUD_ROWS + ring) / SIZE] * 3, abs=1e-3
    )
    assert Catalog.open(tmp_path).meta[POLICY_KEY] == policy_text(masks.DEFAULT_POLICY)
    decoded = build_index(tmp_path, policy=masks.AS_DECODED)
    assert decoded.scenes_computed == 3 and decoded.recomputed_policy
    assert Catalog.open(tmp_path).scenes["cloud_pct"].tolist() == pytest.approx([25.0] * 3)
    assert Catalog.open(tmp_path).meta[POLICY_KEY] == policy_text(masks.AS_DECODED)


def test_the_temporal_test_does_not_change_one_scene_s_cloud_pct(tmp_path):
    import dataclasses

    # index decides each scene alone: a policy with the temporal test is taken (and recorded), and
    # counts the same as one without it.
    _scene(tmp_path, unclassified_rows=8)
    assert masks.DEFAULT_POLICY.temporal
    with_test = build_index(tmp_path)
    cloud = _cloud(tmp_path)
    assert cloud > 100.0 * CLOUD_ROWS / SIZE
    assert Catalog.open(tmp_path).policy == masks.DEFAULT_POLICY
    without = build_index(tmp_path, policy=dataclasses.replace(masks.DEFAULT_POLICY, temporal=False))
    assert without.recomputed_policy and without.scenes_computed == 1
    assert _cloud(tmp_path) == cloud and without.removed == with_test.removed


def test_bad_policy_value_exits_2(tmp_path):
    _scene(tmp_path)
    res = runner.invoke(app, ["index", str(tmp_path), "--buffer", "-1"])
    assert res.exit_code == 2


# -- sample and evaluate -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiles(tmp_path_factory, sample_series) -> Path:
    root = tmp_path_factory.mktemp("t31ufq")
    for sub in ("S2", "S1"):
        shutil.copytree(sample_series / sub, root / sub)
    return root


def _sample(catalog: Path, out: Path, *extra: str):
    res = runner.invoke(
        app,
        ["sample", "-c", str(catalog), "-l", "OS2", "--simulate", "t", "-p", "64", "-n", "20"]
        + ["--s1-max-gap", "150", "-o", str(out), *extra],
    )
    assert res.exit_code == 0, res.output
    return res


def _raw_scl(catalog: Catalog, scene_id: str) -> np.ndarray:
    mask = catalog.get(scene_id).mask
    assert mask is not None
    with rasterio.open(mask.path) as src:
        return src.read(mask.band)


@pytest.mark.slow
def test_strict_store_records_the_policy_and_its_targets_are_clear_with_the_buffer(tiles, tmp_path):
    _index(tiles, "-c", str(tiles / "strict.gpkg"), "--strict")
    res = _sample(tiles / "strict.gpkg", tmp_path / "os2")
    assert f"note: clear policy ({masks.STRICT.describe()}): " in res.stdout
    manifest = json.loads((tmp_path / "os2" / "store.json").read_text())
    assert policy_of(manifest["clear_policy"]) == masks.STRICT
    ps = PatchStore(tmp_path / "os2")
    assert store_policy(ps) == masks.STRICT
    cat = Catalog.open(tiles / "strict.gpkg")
    meta = ps.metadata()
    px = masks.STRICT.buffer_px
    disk = np.hypot(*np.mgrid[-px : px + 1, -px : px + 1]) <= px
    for i in range(len(ps)):
        row = meta.iloc[i]
        arrays = ps.read(i)
        assert not masks.is_obscured(arrays["t.mask"]).any()  # the truth is clear under the policy
        # ... and, from the raw SCL: no cloud, shadow, cirrus or unclassified pixel within the buffer
        scl = _raw_scl(cat, row["t_scene"])
        bad = np.isin(scl, (3, 7, 8, 9, 10))
        near = ndimage.binary_dilation(bad, structure=disk)
        r, c = int(row["row"]), int(row["col"])
        assert not near[r : r + 64, c : c + 64].any(), row["t_scene"]
        assert row["t_policy_removed_px"] >= 0
    from cloudclear.training import evaluate

    (result,) = evaluate([tmp_path / "os2"], ["gapfill"], split=None)
    assert result.clear_policy == masks.STRICT.describe() and result.pixels > 0


@pytest.mark.slow
def test_sample_default_follows_the_catalog_and_options_override_it(tiles, tmp_path):
    # A catalog of the masks as decoded: sample follows it, removes nothing and says nothing.
    _index(tiles, "-c", str(tiles / "plain.gpkg"), "--as-decoded")
    plain = _sample(tiles / "plain.gpkg", tmp_path / "plain")
    assert "clear policy" not in plain.stdout
    manifest = json.loads((tmp_path / "plain" / "store.json").read_text())
    assert policy_of(manifest["clear_policy"]) == masks.AS_DECODED
    assert not [c for c in pyogrio.read_dataframe(tmp_path / "plain" / "samples.gpkg").columns if "policy" in c]
    # The default catalog: sample follows it and says what the policy removed.
    _index(tiles, "-c", str(tiles / "default.gpkg"))
    default = _sample(tiles / "default.gpkg", tmp_path / "default")
    assert f"note: clear policy ({masks.DEFAULT_POLICY.describe()}): " in default.stdout
    assert "another clear policy" not in default.stdout
    manifest = json.loads((tmp_path / "default" / "store.json").read_text())
    assert policy_of(manifest["clear_policy"]) == masks.DEFAULT_POLICY
    assert [c for c in pyogrio.read_dataframe(tmp_path / "default" / "samples.gpkg").columns if "policy" in c]
    strict = _sample(tiles / "plain.gpkg", tmp_path / "strict", "--strict")
    assert "the catalog's cloud cells count another clear policy" in strict.stdout
    assert policy_of(json.loads((tmp_path / "strict" / "store.json").read_text())["clear_policy"]) == masks.STRICT
    for i in range(len(PatchStore(tmp_path / "strict"))):
        assert not masks.is_obscured(PatchStore(tmp_path / "strict").read(i)["t.mask"]).any()
