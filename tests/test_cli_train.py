"""`cloudclear train`, `evaluate` and `models` on the command line, and `infer` with a trained
checkpoint: printed results, --json, one-line errors, SIGTERM and --resume.

One OS2 store (simulated target, 150 h S1 gap, 64 px patches) is sampled from the synthetic series
of ``conftest.SAMPLE_SERIES`` (tile 31UFQ) and a tiny multi-temporal network (width 4, depth 2) is
trained on it for 2 epochs.
"""

from __future__ import annotations

import json
import os
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
import torch
from conftest import assert_one_line_error, fill_disk, read_only
from safetensors import safe_open
from typer.testing import CliRunner

from cloudclear.cli import app
from cloudclear.nets import ARCHITECTURES

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BANDS = ["B02", "B03", "B04", "B08"]
# The registry's names, in its order (other architectures may join the four here).
NETS = tuple(ARCHITECTURES)
assert {"single-date", "multi-temporal", "sequence", "unet"} <= set(NETS)
TINY = ("--net", "multi-temporal", "--width", "4", "--depth", "2", "--device", "cpu")
FIGURES = ("psnr", "ssim", "sam", "mae", "rmse")


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, sample_series) -> Path:
    cat = tmp_path_factory.mktemp("cli_train_cat") / "cat.gpkg"
    # about training and evaluation, not the clear decision: the masks as decoded, as in
    # test_training.py (the default policy samples other patches: OS2 test split 4, not 7)
    res = cli("index", sample_series, "-c", cat, "--as-decoded", "--no-detect")
    assert res.exit_code == 0, res.output
    return cat


@pytest.fixture(scope="module")
def store(catalog, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_train_store") / "os2"
    res = cli("sample", "-c", catalog, "-l", "OS2", "--simulate", "t", "--s1-max-gap", 150, "-p", 64, "-n", 40,
              "--block", 1, "-o", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_train_ckpt") / "mt.safetensors"
    res = cli("train", "-s", store, *TINY, "--epochs", 2, "-o", out)
    return res, out


def card_of(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


# -- train -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_prints_the_checkpoint_and_its_val_figures(trained, store):
    res, out = trained
    assert res.exit_code == 0, res.output
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert not (out.parent / ".mt.resume.safetensors").exists()
    card = card_of(out)
    assert card["bands"] == BANDS and card["stand_ins"] == {"B08": "B8A"}
    assert card["architecture"] == "multi-temporal" and card["options"] == {"width": 4, "depth": 2}
    training, val = card["info"]["training"], card["info"]["val"]
    assert card["info"]["trained_on"][0]["store"] == str(store.resolve())

    lines = res.stdout.splitlines()
    assert len(lines) == 2, res.stdout
    assert lines[0] == (
        f"{out}: multi-temporal {{'width': 4, 'depth': 2}}, {training['parameters']:,} parameters, "
        f"best epoch {training['best_epoch']} of 2"
    )
    assert lines[1] == (f"    val: PSNR {val['psnr']} dB, SSIM {val['ssim']}, SAM {val['sam']} deg, MAE {val['mae']}")
    assert val["psnr"] > 10 and 0 < val["ssim"] <= 1
    # one line per epoch on stderr
    epochs = re.findall(r"^epoch (\d+): loss [\d.]+, val PSNR ", res.stderr, re.M)
    assert epochs == ["1", "2"], res.stderr


def test_train_json(store, tmp_path):
    out = tmp_path / "j.safetensors"
    res = cli("train", "-s", store, *TINY, "--epochs", 1, "--batch-size", 8, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["path"] == str(out) and d["architecture"] == "multi-temporal" and d["device"] == "cpu"
    assert d["best_epoch"] == 1 and d["resumed_from"] == 0 and d["stopped_early"] is False
    assert [h["epoch"] for h in d["history"]] == [1]
    assert d["val"] == card_of(out)["info"]["val"] and d["parameters"] == card_of(out)["info"]["training"]["parameters"]
    assert "epoch 1:" not in res.stderr  # --json: no epoch lines either


# -- models ----------------------------------------------------------------------------------------


def test_models_lists_architectures_and_checkpoints(trained, tmp_path):
    from safetensors.torch import save_file

    _, out = trained
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(out, folder / "mt.safetensors")
    shutil.copy(out.with_suffix(".json"), folder / "mt.json")
    save_file({"w": torch.zeros(3)}, str(folder / "nocard.safetensors"))  # no card
    (folder / "garbage.safetensors").write_bytes(b"not a checkpoint")

    res = cli("models", "--dir", folder)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("architectures")
    k = len(NETS)
    assert [ln.split()[0] for ln in lines[1 : k + 1]] == list(NETS)
    assert lines[k + 1] == "checkpoints:"
    (row, lopo) = lines[k + 2 :]
    assert lopo.strip() == "leave-one-place-out: not measured (figures at places it was trained on only)"
    params = card_of(out)["info"]["training"]["parameters"]
    assert row.split()[:3] == ["mt", "multi-temporal", f"{params:,}"]
    assert "bands B02,B03,B04,B08" in row and "slots t-1,t,t+1,s1@t-1,s1@t,s1@t+1" in row
    assert "nocard" not in res.stdout and "garbage" not in res.stdout

    # a card with leave-one-place-out figures (bench/quality.py writes them): a line per place
    from dataclasses import replace

    from cloudclear.nets.card import load_checkpoint, save_checkpoint

    net, card = load_checkpoint(out)
    g, n = {"psnr": 30.0, "ssim": 0.9, "sam": 4.0}, {"psnr": 31.5, "ssim": 0.92, "sam": 3.5}
    lopo = {
        "places": {"bolzano": {"level": "L2A", "s1": False, "pixels": 10, "gapfill": g, "network": n}},
        "mean_over_places": {"gapfill": g, "base": n},
    }
    save_checkpoint(folder / "lopo.safetensors", net, replace(card, info={**card.info, "leave_one_place_out": lopo}))
    res = cli("models", "--dir", folder)
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "leave-one-place-out, mean of 1 places: PSNR 31.50 dB vs gapfill 30.00 (+1.50)" in text
    assert "bolzano         L2A    PSNR 31.50 vs gapfill 30.00 (+1.50)" in text
    (folder / "lopo.safetensors").unlink()
    (folder / "lopo.json").unlink()

    res = cli("models", "--dir", folder, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert list(d["architectures"]) == list(NETS) and set(d["sizes"]) == {"small", "medium", "large"}
    (ck,) = d["checkpoints"]
    assert ck["path"] == str(folder / "mt.safetensors") and ck["architecture"] == "multi-temporal"
    assert ck["bands"] == BANDS and ck["stand_ins"] == {"B08": "B8A"}

    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli("models", "--dir", empty)
    assert res.exit_code == 0 and "checkpoints: none found" in res.stdout
    assert_one_line_error(cli("models", "--dir", tmp_path / "nowhere"), "no such folder")


# -- evaluate --------------------------------------------------------------------------------------


def test_evaluate_prints_a_table_of_gapfill_and_the_checkpoint(trained, store, tmp_path, monkeypatch):
    _, out = trained
    res = cli("evaluate", "-s", store, "-m", "gapfill", "-m", out, "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["method"] for r in rows] == ["gapfill", str(out)]
    assert rows[0]["pixels"] == rows[1]["pixels"] > 0 and rows[0]["samples"] == rows[1]["samples"] == 7
    assert all(r["split"] == "test" and all(r["figures"][k] is not None for k in FIGURES) for r in rows)

    res = cli("evaluate", "-s", store, "-m", "gapfill", "-m", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"split test: 7 samples, {rows[0]['pixels']:,} reconstructed pixels scored")
    assert lines[1].split() == ["method", "PSNR", "SSIM", "SAM", "MAE", "RMSE"]
    assert len(lines) == 4
    for line, r in zip(lines[2:], rows, strict=True):
        f = r["figures"]
        assert line.split() == [
            Path(r["method"]).name,
            f"{f['psnr']:.2f}",
            f"{f['ssim']:.3f}",
            f"{f['sam']:.2f}",
            f"{f['mae']:.4f}",
            f"{f['rmse']:.4f}",
        ]

    # a checkpoint by name, found in ./models
    (tmp_path / "models").mkdir()
    shutil.copy(out, tmp_path / "models" / "mine.safetensors")
    monkeypatch.chdir(tmp_path)
    res = cli("evaluate", "-s", store, "-m", "mine", "--split", "val", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)
    assert Path(r["method"]).resolve() == (tmp_path / "models" / "mine.safetensors").resolve()
    assert r["split"] == "val" and r["samples"] == 4
    assert_one_line_error(cli("evaluate", "-s", store, "-m", "nothere"), "nothere: no such checkpoint")


# -- infer with the trained checkpoint -------------------------------------------------------------


@pytest.mark.slow
def test_infer_with_the_trained_checkpoint(trained, catalog, tmp_path, sample_series):
    _, out = trained
    tif = tmp_path / "net.tif"
    res = cli("infer", "-c", catalog, "-d", "2021-05-31", "--method", out, "--device", "cpu", "-o", tif, "--json")
    assert res.exit_code == 0, res.output
    (d,) = json.loads(res.stdout)["dates"]
    assert [i["slot"] for i in d["inputs"]] == ["t-1", "t", "t+1", "s1@t-1", "s1@t", "s1@t+1"]
    assert d["method"] == str(out)
    with rasterio.open(tif) as src:
        assert src.count == 4 and src.descriptions == tuple(card_of(out)["bands"])
        assert src.dtypes[0] == "uint16" and src.nodata == 0 and src.shape == (480, 480)
        assert src.tags()["CLOUDCLEAR_METHOD"] == "mt.safetensors"
        pred = src.read()
    with rasterio.open(tmp_path / "net_status.tif") as src:
        status = src.read(1)
    with rasterio.open(sample_series / "S2" / "S2_T31UFQ_20210531T103029.tif") as src:
        target = src.read()
    observed = status == 1
    assert observed.any() and (status == 2).any()
    assert np.array_equal(pred[:, observed], target[:, observed])
    assert (pred[:, status == 2] > 0).mean() > 0.99


# -- errors ----------------------------------------------------------------------------------------


def test_unknown_net_lists_the_known_ones(store, tmp_path):
    res = cli("train", "-s", store, "--net", "resnet", "-o", tmp_path / "x.safetensors")
    assert res.exit_code in (1, 2), res.output
    assert "resnet" in res.output and all(n in res.output for n in NETS), res.output
    assert "Traceback" not in res.output and list(tmp_path.iterdir()) == []


def test_missing_store(tmp_path):
    res = cli("train", "-s", tmp_path / "absent", *TINY, "-o", tmp_path / "x.safetensors")
    assert_one_line_error(res, "absent: no patch store here")
    assert list(tmp_path.iterdir()) == []


def test_existing_checkpoint_is_left_alone(trained, store):
    _, out = trained
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    res = cli("train", "-s", store, *TINY, "--epochs", 1, "-o", out)
    assert_one_line_error(res, "exists (pass --overwrite to replace it)")
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime


def test_checkpoint_must_be_safetensors(store, tmp_path):
    res = cli("train", "-s", store, *TINY, "--epochs", 1, "-o", tmp_path / "x.pt")
    assert_one_line_error(res, "x.pt: checkpoints are .safetensors files")
    assert list(tmp_path.iterdir()) == []


def test_resume_without_a_state(store, tmp_path):
    res = cli("train", "-s", store, *TINY, "--epochs", 1, "-o", tmp_path / "x.safetensors", "--resume")
    assert_one_line_error(res, "--resume, but no resume state (.x.resume.safetensors) is there")


def test_negative_seed_is_a_usage_error(store, tmp_path):
    res = cli("train", "-s", store, *TINY, "--epochs", 1, "--seed", -1, "-o", tmp_path / "x.safetensors")
    assert res.exit_code in (1, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "seed" in res.stderr and "Traceback" not in res.output


# -- SIGTERM and --resume --------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_keeps_the_resume_state_and_resume_finishes(store, tmp_path):
    out = tmp_path / "long.safetensors"
    state = tmp_path / ".long.resume.safetensors"
    args = ["train", "-s", str(store), *TINY, "--epochs", "4", "--batch-size", "4", "-o", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudclear.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    # the state appears after the first epoch; three more epochs leave ample time to signal
    while not state.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first resume state: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("no resume state after 120 s")
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail(f"four epochs ended before SIGTERM: {proc.communicate()}")
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the run went on for 60 s after SIGTERM")
    assert proc.returncode == 130, (stdout, stderr)
    assert stdout == ""
    last = stderr.strip().splitlines()[-1]
    assert last == (
        "cloudclear: error: interrupted; the last finished epoch is kept in .long.resume.safetensors: "
        "continue with --resume"
    ), stderr
    assert "Traceback" not in stderr
    assert state.exists() and out.exists()  # the best epoch so far, and where to go on from
    assert sorted(p.name for p in tmp_path.iterdir()) == [".long.resume.safetensors", "long.json", "long.safetensors"]
    with safe_open(str(state), framework="pt") as f:
        done = json.loads(f.metadata()["cloudclear.resume"])["epoch"] + 1
    assert 1 <= done < 4
    assert len(re.findall(r"^epoch \d+: ", stderr, re.M)) in (done - 1, done)

    # without --resume the state is not thrown away
    res = cli(*args)
    assert_one_line_error(res, "exists (pass --overwrite to replace it)")
    res = cli(*args, "--lr", "0.001", "--resume")
    assert_one_line_error(res, "the killed run used other settings")
    assert state.exists()

    res = cli(*args, "--resume", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["resumed_from"] == done and [h["epoch"] for h in d["history"]] == [1, 2, 3, 4]
    assert not state.exists()
    info = card_of(out)["info"]
    assert [h["epoch"] for h in info["history"]] == [1, 2, 3, 4] and info["training"]["epochs_run"] == 4


# -- guards: network size, divergence, damaged checkpoints ------------------------------------------


@pytest.mark.parametrize(
    ("option", "needles"),
    [
        (("--width", "100000"), ("width 100000", "200,000,000", "--width")),
        (("--width", "580"), ("width 580", "parameters", "200,000,000")),  # counted on the meta device
        (("--depth", "30"), ("--depth 30", "64 px", "at most --depth 6")),
        (("--depth", "7"), ("--depth 7", "at most --depth 6")),
        (("--depth", "5", "--crop", "16"), ("--depth 5", "16 px", "at most --depth 4")),
    ],
)
def test_too_wide_or_deep_networks_are_refused_before_allocating(store, tmp_path, option, needles):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = cli(
        "train", "-s", store, "--net", "multi-temporal", "--device", "cpu", *option, "-o", tmp_path / "x.safetensors"
    )
    assert_one_line_error(res, *needles)
    # nothing near the network's size was allocated (a 2e8-parameter network is 800 MB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    assert list(tmp_path.iterdir()) == []


def test_diverging_training_is_an_error_and_writes_no_checkpoint(store, tmp_path):
    out = tmp_path / "x.safetensors"
    res = cli("train", "-s", store, *TINY, "--epochs", 2, "--lr", "1e6", "-o", out)
    line = assert_one_line_error(res, f"{out}: training diverged at epoch 1", "no checkpoint was written", "lower --lr")
    assert "1000 x the first step's" in line or "loss nan" in line or "loss inf" in line
    assert list(tmp_path.iterdir()) == []


def _damaged(src: Path, dst: Path, value: float) -> Path:
    from cloudclear.nets.card import load_checkpoint, save_checkpoint

    net, card = load_checkpoint(src)
    with torch.no_grad():
        next(iter(net.parameters())).view(-1)[0] = value
    return save_checkpoint(dst, net, card)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused(trained, store, tmp_path, value):
    _, out = trained
    bad = _damaged(out, tmp_path / "bad.safetensors", value)
    res = cli("evaluate", "-s", store, "-m", "gapfill", "-m", bad, "--device", "cpu")
    assert_one_line_error(res, f"{bad}: weights", "NaN or infinite values")


def test_a_missing_checkpoint_is_not_found(store, tmp_path):
    from cloudclear.errors import CheckpointNotFoundError
    from cloudclear.nets.card import find_checkpoint

    res = cli("evaluate", "-s", store, "-m", tmp_path / "gone.safetensors")
    assert_one_line_error(res, "gone.safetensors: no such checkpoint")
    with pytest.raises(CheckpointNotFoundError):
        find_checkpoint(tmp_path / "gone.safetensors")


# -- writes: disk full, read-only folder ------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in (".filler", "lost+found")}


def test_disk_full_during_train_leaves_the_existing_checkpoint(trained, store, small_fs):
    _, done = trained
    vol = small_fs(4 << 20)
    out = vol / "mt.safetensors"
    shutil.copy(done, out)
    shutil.copy(done.with_suffix(".json"), out.with_suffix(".json"))
    before = _files(vol)
    fill_disk(vol, leave=4096)
    res = cli("train", "-s", store, *TINY, "--epochs", 1, "--overwrite", "-o", out)
    assert_one_line_error(res, str(out), "no space left on device")
    assert _files(vol) == before  # no temporary, no resume state, the old pair byte-identical


def test_disk_full_during_train_into_an_empty_folder(store, small_fs):
    vol = small_fs(4 << 20)
    fill_disk(vol, leave=4096)
    res = cli("train", "-s", store, *TINY, "--epochs", 1, "-o", vol / "new.safetensors")
    assert_one_line_error(res, "new.safetensors", "no space left on device")
    assert _files(vol) == {}


def test_read_only_output_folder(trained, store, tmp_path):
    _, done = trained
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "mt.safetensors"
    shutil.copy(done, out)
    before = out.read_bytes()
    with read_only(folder):
        res = cli("train", "-s", store, *TINY, "--epochs", 1, "--overwrite", "-o", out)
        assert_one_line_error(res, str(out), "cannot write checkpoint")
        res = cli("train", "-s", store, *TINY, "--epochs", 1, "-o", folder / "new.safetensors")
        assert_one_line_error(res, "new.safetensors", "cannot write checkpoint")
    assert [p.name for p in folder.iterdir()] == ["mt.safetensors"] and out.read_bytes() == before
