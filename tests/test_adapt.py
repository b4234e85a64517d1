"""Fine-tuning from a checkpoint (``--init``), the time budget (``--budget``) and ``cloudclear adapt``.

A tiny multi-temporal network (width 4, depth 2) is trained for one epoch on a synthetic series
(160 x 160 px, 8 dates, no S1, bands B02 B03 B04 B8A) and adapted to another series of other
seeds. Runs are bounded by epochs, never by time; a zero budget is the only budget asserted on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import assert_one_line_error
from rasterio.windows import Window
from safetensors.torch import load_file
from typer.testing import CliRunner

from cloudclear.catalog import build_index
from cloudclear.cli import app
from cloudclear.errors import CheckpointError, SampleError
from cloudclear.nets.card import load_checkpoint, read_card, save_checkpoint
from cloudclear.sampling import PatchDataset, PatchStore, SampleOptions, sample
from cloudclear.synth import generate_series
from cloudclear.training import AdaptOptions, TrainOptions, adapt, finetune, train, training_layout

BANDS = ("B02", "B03", "B04", "B8A")
TINY = dict(width=4, depth=2, device="cpu")
#: SCL codes of cloud shadow, cloud (medium, high) and cirrus: never a target, never seen.
SCL_OBSCURED = (3, 8, 9, 10)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _series(root: Path, seed: int) -> Path:
    generate_series(root, height=160, width=160, n_dates=8, interval_days=10, s1=False, seed=seed, bands=BANDS)
    cat = root.parent / f"{root.name}.gpkg"
    build_index(root, cat)
    return cat


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A checkpoint trained one epoch on series A (OS2, t simulated, 32 px)."""
    root = tmp_path_factory.mktemp("base")
    cat = _series(root / "A", seed=0)
    store = root / "os2"
    sample(cat, "OS2", store, SampleOptions(patch_size=32, count=60, block=1, simulate=("t",), s1=False, bands=BANDS))
    out = root / "base.safetensors"
    train([store], out, TrainOptions(epochs=1, **TINY))
    return out


@pytest.fixture(scope="module")
def catalog_b(tmp_path_factory) -> Path:
    return _series(tmp_path_factory.mktemp("b") / "B", seed=1)


@pytest.fixture(scope="module")
def adapted(base, catalog_b, tmp_path_factory):
    """Adapted for 3 epochs (the budget is far away); the temporary store is checked while it exists."""
    out = tmp_path_factory.mktemp("adapted") / "mine.safetensors"
    seen: dict[str, object] = {}

    def on_epoch(rec) -> None:
        if "temp" not in seen:
            temp = next(out.parent.glob(f".{out.name}.adapt-*"))
            seen["temp"] = temp
            seen["check"] = _check_store(PatchStore(temp / "store"))

    opts = AdaptOptions(minutes=60, epochs=3, count=60, block=1, lr=2e-3, device="cpu")
    result = adapt(catalog_b, base, out, opts, on_epoch=on_epoch)
    return result, seen


def _check_store(store: PatchStore) -> dict[str, int]:
    """Per sample: the truth is the reference date's own clear pixels, and no input pixel its
    mask hides is given as seen. Returns pixel counts."""
    meta = store.metadata()
    side = store.manifest["patch_size"]
    counts = {"truth": 0, "gaps": 0, "samples": 0}
    for split in ("train", "val"):
        ds = PatchDataset(store, split=split)
        for k in range(len(ds)):
            item = ds[k]
            row = meta.iloc[int(item["index"])]
            window = Window(int(row["col"]), int(row["row"]), side, side)
            for slot in ("t-1", "t", "t+1"):
                image = json.loads(row[f"{slot}_files"])[0]
                with rasterio.open(image.replace(".tif", "_SCL.tif")) as f:
                    scl = f.read(1, window=window)
                hidden = np.isin(scl, SCL_OBSCURED)
                assert not (item[f"{slot}.valid"] & hidden).any(), (k, slot)
                if slot == "t":
                    truth = item["t.truth.valid"]
                    assert not (truth & hidden).any(), k
                    gaps = truth & ~item["t.valid"]
                    counts["truth"] += int(truth.sum())
                    counts["gaps"] += int(gaps.sum())
            counts["samples"] += 1
    return counts


# -- cloudclear adapt --------------------------------------------------------------------------


@pytest.mark.slow
def test_adapted_weights_differ_and_the_card_records_the_adaptation(base, catalog_b, adapted):
    result, _ = adapted
    before, after = load_file(str(base)), load_file(str(result.path))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    base_card, card = read_card(base), read_card(result.path)
    # the card is the base's: the same network, slots and normalisation
    assert (card.architecture, card.options, card.slots, card.bands) == (
        base_card.architecture,
        base_card.options,
        base_card.slots,
        base_card.bands,
    )
    assert card.normalisation == base_card.normalisation
    a = card.info["adapted"]
    assert a["base"] == "base" and a["base_path"] == str(base.resolve())
    assert a["base_sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert a["catalog"] == str(catalog_b.resolve())
    assert a["layout"]["name"] == "OS2" and a["simulate"] == ["t"] and a["patch_size"] == 32 and not a["s1"]
    assert a["scenes"] and a["dates"] and set(a["target_dates"]) <= set(a["dates"])
    west, south, east, north = a["bounds_lonlat"]
    assert west < east and south < north
    assert a["samples"]["train"] > 0 and a["samples"]["val"] > 0 and a["samples"]["test"] == 0
    assert (a["epochs"], a["out_of_time"]) == (3, False) and a["steps"] > 0
    assert a["budget_s"] == 3600 and a["seconds"] >= 0 and a["sample_seconds"] >= 0
    assert a["best_epoch"] >= 1 and a["val_after"]["psnr"] > a["val_before"]["psnr"]
    assert card.info["val"] == a["val_after"]
    assert card.info["init"]["sha256"] == a["base_sha256"]
    load_checkpoint(result.path)  # a valid checkpoint
    assert json.loads(result.path.with_suffix(".json").read_text())["info"]["adapted"] == a
    assert not list(result.path.parent.glob(".*adapt-*"))  # the temporary store is removed


@pytest.mark.slow
def test_adapt_trains_only_on_clear_pixels_of_the_catalog(adapted):
    """Pixels a date's own mask hides are cloud to adaptation: never a target, never an input."""
    _, seen = adapted
    counts = seen["check"]
    assert counts["samples"] > 0 and counts["gaps"] > 0 and counts["truth"] > counts["gaps"]


@pytest.mark.slow
def test_training_layout_comes_from_the_card(base, adapted):
    lay, simulate, patch = training_layout(read_card(base))
    assert (lay.name, simulate, patch) == ("OS2", ("t",), 32)
    # an adapted card carries its layout itself
    lay, simulate, patch = training_layout(adapted[0].card)
    assert (lay.name, simulate, patch) == ("OS2", ("t",), 32)


def test_zero_budget_keeps_the_base_and_writes_a_valid_checkpoint(base, catalog_b, tmp_path):
    out = tmp_path / "zero.safetensors"
    result = adapt(catalog_b, base, out, AdaptOptions(minutes=0, count=30, block=1, device="cpu"))
    a = result.adapted
    assert (a["epochs"], a["steps"], a["best_epoch"], a["out_of_time"]) == (0, 0, 0, True)
    assert a["val_after"] == a["val_before"]
    net, card = load_checkpoint(out)
    assert card.info["adapted"]["base_sha256"] == a["base_sha256"]
    before = load_file(str(base))
    assert all(torch.equal(before[k], v) for k, v in load_file(str(out)).items())


def test_cli_adapt_prints_what_it_did(base, catalog_b, tmp_path):
    out = tmp_path / "cli.safetensors"
    args = ["adapt", "-c", str(catalog_b), "--from", str(base), "-o", str(out), "--minutes", "0"]
    res = CliRunner().invoke(app, [*args, "-n", "20", "--block", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "base adapted on" in res.stdout and "val PSNR" in res.stdout and "0 epochs" in res.stdout
    assert read_card(out).info["adapted"]["samples_requested"] == 20
    res = CliRunner().invoke(app, [*args, "-n", "20", "--block", "1", "--json"])
    assert_one_line_error(res, "exists", "--overwrite")
    res = CliRunner().invoke(app, [*args, "-n", "20", "--block", "1", "--json", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["adapted"]["epochs"] == 0


@pytest.mark.parametrize(
    "case, needles",
    [
        ("no catalog", ["nope.gpkg", "no catalog"]),
        ("no model", ["nope-model", "no such checkpoint"]),
        ("no layout info", ["does not say which layout", "adapt needs"]),
        ("no samples", ["no patches to adapt base on", "layout OS2"]),
        ("not safetensors", ["checkpoints are .safetensors"]),
    ],
)
def test_bad_inputs_are_one_line(base, catalog_b, tmp_path, case, needles):
    cat, model, out = str(catalog_b), str(base), tmp_path / "x.safetensors"
    extra: list[str] = []
    if case == "no catalog":
        cat = str(tmp_path / "nope.gpkg")
    elif case == "no model":
        model = "nope-model"
    elif case == "no layout info":
        net, card = load_checkpoint(base)
        model = str(save_checkpoint(tmp_path / "bare.safetensors", net, replace(card, info={})))
    elif case == "no samples":
        extra = ["--patch-size", "512"]  # larger than the series
    else:
        out = tmp_path / "x.pt"
    res = CliRunner().invoke(app, ["adapt", "-c", cat, "--from", model, "-o", str(out), "--minutes", "0", *extra])
    assert_one_line_error(res, *needles)
    assert not out.exists()
    assert not list(tmp_path.glob(".*adapt-*"))


def test_no_samples_error_says_why(base, catalog_b, tmp_path):
    with pytest.raises(SampleError, match=r"no patches to adapt base on \(layout OS2, bands B02,B03,B04,B8A, 512 px"):
        adapt(catalog_b, base, tmp_path / "x.safetensors", AdaptOptions(minutes=0, patch_size=512))


# -- train --init / --budget, finetune -----------------------------------------------------------


@pytest.fixture(scope="module")
def store_b(catalog_b, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store_b") / "os2"
    sample(
        catalog_b, "OS2", out, SampleOptions(patch_size=32, count=40, block=1, simulate=("t",), s1=False, bands=BANDS)
    )
    return out


def test_train_init_keeps_the_card_and_records_the_base(base, store_b, tmp_path):
    out = tmp_path / "ft.safetensors"
    # --net/--width are ignored with --init: the base's card is kept
    result = train([store_b], out, TrainOptions(init=str(base), epochs=1, lr=2e-3, net="single-date", width=9))
    card, base_card = result.card, read_card(base)
    assert (card.architecture, card.options, card.normalisation) == (
        base_card.architecture,
        base_card.options,
        base_card.normalisation,
    )
    assert card.info["init"]["model"] == "base" and card.info["init"]["val"] == result.val_before
    assert result.val_before is not None and len(result.history) == 1
    assert card.info["training"]["selection"] == "best val PSNR"
    assert not list(tmp_path.glob(".*resume*"))


def test_train_init_refuses_stores_that_do_not_fit_the_card(base, catalog_b, tmp_path):
    sd = tmp_path / "sd"
    sample(catalog_b, "single-date", sd, SampleOptions(patch_size=32, count=10, block=1, simulate=("t",), s1=False))
    with pytest.raises(CheckpointError, match="--init base.safetensors: the stores do not fit its card"):
        train([sd], tmp_path / "x.safetensors", TrainOptions(init=str(base), **TINY))
    res = CliRunner().invoke(app, ["train", "-s", str(sd), "--init", str(base), "-o", str(tmp_path / "y.safetensors")])
    assert_one_line_error(res, "--init base.safetensors", "lacks the card's slots")
    assert not list(tmp_path.glob("*.safetensors"))


def test_zero_budget_from_scratch_runs_one_step_and_writes_it(store_b, tmp_path):
    out = tmp_path / "scratch.safetensors"
    result = train([store_b], out, TrainOptions(epochs=5, budget_s=0, **TINY))
    assert (result.steps, len(result.history), result.best_epoch, result.out_of_time) == (1, 1, 1, True)
    _, card = load_checkpoint(out)
    assert card.info["training"]["out_of_time"] and card.info["training"]["steps"] == 1
    assert card.info["training"]["budget_s"] == 0
    assert not list(tmp_path.glob(".*resume*"))  # no resume state of a partial epoch is left


def test_cli_train_budget_and_init(base, store_b, tmp_path):
    out = tmp_path / "b.safetensors"
    args = ["train", "-s", str(store_b), "--init", str(base), "--budget", "0", "-o", str(out), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "before (" in res.stdout and "best epoch 0 of 0" in res.stdout
    res = CliRunner().invoke(app, [*args, "--overwrite", "--budget", "-1"])
    assert res.exit_code == 2


def test_finetune_on_train_and_val_keeps_the_last_epoch(base, store_b, tmp_path):
    out = tmp_path / "tv.safetensors"
    result = finetune([store_b], base, out, None, ("train", "val"), TrainOptions(epochs=2, lr=1e-3, device="cpu"))
    assert result.val_before is None and len(result.history) == 2 and result.best_epoch == 2
    info = read_card(out).info
    assert info["training"]["selection"] == "last epoch (no val split)"
    assert info["training"]["train_splits"] == ["train", "val"] and info["val"] is None


def test_budget_and_splits_are_checked():
    with pytest.raises(CheckpointError, match="time budget"):
        TrainOptions(budget_s=-1)
    with pytest.raises(CheckpointError, match="train splits"):
        TrainOptions(train_splits=("holdout",))
