"""Training and evaluation on patch stores: the card plan, the tensors fed, checkpoints, resume,
loss masking, evaluation against gapfill, and PatchScores against ``cloudclear score``.

Stores are sampled once per session from the synthetic series ``conftest.SAMPLE_SERIES`` (480 x 480
px, 10 S2 dates 15 days apart with SCL, 12 S1 dates; bands B02, B03, B04, B08): OS2 and single-date
with a simulated target and a 150 h S1 gap, and a six-date sequence with every date simulated. Networks are tiny
(width 4, depth 2) and train for 1-3 epochs on the CPU.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import write_raster
from safetensors.torch import load_file

from cloudclear import masks
from cloudclear.catalog import build_index
from cloudclear.errors import (
    ModelError,
    OutputExistsError,
    StoreError,
    StoreNotFoundError,
    TrainingDivergedError,
)
from cloudclear.gapfill import PixelStatus, gapfill
from cloudclear.metrics import Pair as ScorePair
from cloudclear.metrics import PatchScores, ScoreOptions, score, score_many
from cloudclear.nets import parameter_count
from cloudclear.nets.card import build_net, load_checkpoint, read_card, save_checkpoint
from cloudclear.sampling import PatchDataset, PatchStore, SampleOptions, sample
from cloudclear.training import (
    CardSamples,
    TrainOptions,
    evaluate,
    map_card,
    measure_normalisation,
    plan_card,
    resume_path,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
BANDS = ("B02", "B03", "B04", "B08")
SEQ_NAMES = ("t-3", "t-2", "t-1", "t", "t+1", "t+2")
TINY = dict(width=4, depth=2, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- stores, built once ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def catalog(tmp_path_factory, sample_series) -> Path:
    cat = tmp_path_factory.mktemp("train_cat") / "cat.gpkg"
    # These tests are about training and evaluation, not the clear decision: the catalog (and so
    # every store sampled from it) pins the masks as decoded. The default policy (buffer 3 px,
    # temporal test) keeps other samples (OS2 splits 33/3/4, not 29/4/7), and not because of the
    # one-other-date shadow rule: with TEMPORAL_MIN_OTHERS_SHADOW = 2 the default gives 33/3/4 too.
    build_index(sample_series, cat, detect=None, policy=masks.AS_DECODED)
    return cat


def _store(catalog: Path, root: Path, layout: str, **kw) -> PatchStore:
    out = root / layout
    sample(catalog, layout, out, SampleOptions(patch_size=64, count=40, block=1, **kw))
    return PatchStore(out)


@pytest.fixture(scope="session")
def os2(catalog, tmp_path_factory) -> PatchStore:
    return _store(catalog, tmp_path_factory.mktemp("os2"), "OS2", simulate=("t",), s1_max_gap=150)


@pytest.fixture(scope="session")
def single(catalog, tmp_path_factory) -> PatchStore:
    return _store(catalog, tmp_path_factory.mktemp("sd"), "single-date", simulate=("t",), s1_max_gap=150)


@pytest.fixture(scope="session")
def seq(catalog, tmp_path_factory) -> PatchStore:
    return _store(catalog, tmp_path_factory.mktemp("seq"), "sequence", simulate=("all",))


class _OtherBands:
    """A store seen with other band names: the sample tiles only have B08 as NIR."""

    def __init__(self, store: PatchStore, bands: tuple[str, ...]) -> None:
        self._store = store
        self.bands = list(bands)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


# -- plan_card -------------------------------------------------------------------------------------


def test_plan_card_for_os2_with_s1(os2):
    card, slot_map = plan_card([os2], TrainOptions(net="multi-temporal", **TINY))
    assert [(s.name, s.sensor, s.role, s.rank) for s in card.slots] == [
        ("t-1", "S2", "before", 1),
        ("t", "S2", "target", 1),
        ("t+1", "S2", "after", 1),
        ("s1@t-1", "S1", "before", 1),
        ("s1@t", "S1", "target", 1),
        ("s1@t+1", "S1", "after", 1),
    ]
    assert all(s.bands == BANDS for s in card.slots if s.sensor == "S2")
    assert all(s.bands == ("VV", "VH") for s in card.slots if s.sensor == "S1")
    assert card.bands == BANDS and card.output_slots == () and card.frames == 1
    assert slot_map.inputs == (("t-1", "t-1"), ("t", "t"), ("t+1", "t+1"))
    assert slot_map.outputs == (("t", "t"),)
    # the sample tiles have B08 and no B8A: a scene with B8A only may feed it in B08's place
    assert card.stand_ins == {"B08": "B8A"}
    assert card.s1_max_hours == 150.0 and card.max_days == 30.0  # OS2's +-720 h windows
    assert set(card.normalisation) == {"S2", "S1"} and card.architecture == "multi-temporal"
    assert card.options == {"width": 4, "depth": 2} and card.align == 4
    assert card.window % card.align == 0 and card.window >= 2 * card.receptive_radius + card.align

    no_s1, _ = plan_card([os2], TrainOptions(net="multi-temporal", s1=False, **TINY))
    assert [s.name for s in no_s1.slots] == ["t-1", "t", "t+1"] and set(no_s1.normalisation) == {"S2"}


def test_plan_card_for_single_date(single):
    card, slot_map = plan_card([single], TrainOptions(net="single-date", **TINY))
    assert [(s.name, s.sensor, s.role, s.rank) for s in card.slots] == [
        ("t", "S2", "target", 1),
        ("s1@t", "S1", "target", 1),
    ]
    assert slot_map.inputs == (("t", "t"),) and slot_map.outputs == (("t", "t"),)


def test_plan_card_for_a_sequence(seq):
    card, slot_map = plan_card([seq], TrainOptions(net="sequence", **TINY))
    s2 = [s for s in card.slots if s.sensor == "S2"]
    assert [s.name for s in s2] == list(SEQ_NAMES) and len(s2) == len(card.slots)  # the store has no S1
    assert [(s.role, s.rank) for s in s2] == [
        ("before", 3),
        ("before", 2),
        ("before", 1),
        ("target", 1),
        ("after", 1),
        ("after", 2),
    ]
    assert card.output_slots == SEQ_NAMES and card.frames == 6 and card.output_frame() == 3
    # store slots t0 .. t5 are consecutive acquisitions: renamed in time order, the middle one t
    assert slot_map.inputs == tuple(zip(SEQ_NAMES, [f"t{k}" for k in range(6)], strict=True))
    assert slot_map.outputs == slot_map.inputs
    assert set(card.normalisation) == {"S2"}


@pytest.mark.parametrize(
    ("bands", "stand_ins"),
    [
        (("B02", "B03", "B04", "B8A"), {"B8A": "B08"}),
        (("B02", "B03", "B04", "B08", "B8A"), {}),
        (("B02", "B03", "B04"), {}),
    ],
    ids=["B8A", "both", "none"],
)
def test_stand_ins_only_when_one_nir_band_is_there(os2, bands, stand_ins):
    card, _ = plan_card([_OtherBands(os2, bands)], TrainOptions(net="multi-temporal", **TINY))
    assert card.stand_ins == stand_ins and card.bands == bands


@pytest.mark.parametrize(
    ("store", "net", "message"),
    [
        ("os2", "single-date", "single-date needs one S2 input slot; layout OS2 has 3"),
        ("os2", "sequence", "network sequence needs a sequence layout"),
        ("single", "multi-temporal", "multi-temporal needs two or more S2 slots; layout single-date has 1"),
        ("seq", "multi-temporal", "layout sequence has 6 target slots"),
    ],
)
def test_plan_card_refuses_layouts_the_net_cannot_take(request, store, net, message):
    st = request.getfixturevalue(store)
    with pytest.raises(ModelError, match=message) as info:
        plan_card([st], TrainOptions(net=net, **TINY))
    assert str(st.path) in str(info.value)


# -- CardSamples -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def os2_card(os2):
    card, slot_map = plan_card([os2], TrainOptions(net="multi-temporal", **TINY))
    card = replace(card, normalisation=measure_normalisation([os2], card))
    return card, slot_map


def test_normalisation_is_measured_on_the_train_split(os2, os2_card):
    card, _ = os2_card
    s2 = np.concatenate(
        [it[s][:, it[f"{s}.valid"]] for it in PatchDataset(os2, "train") for s in ("t-1", "t", "t+1")], axis=1
    )
    np.testing.assert_allclose(card.normalisation["S2"]["mean"], s2.mean(1), atol=2e-5)
    np.testing.assert_allclose(card.normalisation["S2"]["std"], s2.std(1), atol=2e-5)
    assert all(-30 < m < 0 for m in card.normalisation["S1"]["mean"])  # dB


def test_samples_are_fed_as_inference_feeds_them(os2, os2_card):
    from cloudclear.inference.pipeline import NetMethod

    card, slot_map = os2_card
    ds = CardSamples(os2, "train", card, slot_map)
    method = NetMethod("unused.safetensors", device="cpu", net=build_net(card), card=card)
    store_of = dict(slot_map.inputs)
    assert len(ds) == os2.manifest["splits"]["train"]
    for k in (0, len(ds) - 1):
        got, item = ds[k], ds.data[k]
        assert got["index"] == int(ds.ids[k])
        slots, parts = [], []
        for s in card.slots:
            name = store_of[s.name if s.sensor == "S2" else s.name[3:]]
            key = name if s.sensor == "S2" else f"{name}.s1"
            acq = SimpleNamespace(sensor=s.sensor, scale=1.0, offset=0.0, units="db")
            slots.append((SimpleNamespace(name=s.name, sensor=s.sensor), acq))
            parts.append((item[key][None].astype(np.float32), item[f"{key}.valid"][None]))
        h, w = item["t"].shape[1:]
        with torch.inference_mode():
            expected = method._inputs(SimpleNamespace(slots=tuple(slots)), parts, 1, h, w)[0]
        assert tuple(got["x"].shape) == (card.in_channels, h, w) == tuple(expected.shape)
        torch.testing.assert_close(got["x"], expected, rtol=1e-6, atol=1e-6)
        assert got["x"][[4, 9, 14]].sum() > 0  # S2 validity channels are not empty
        # days from the target, in S2 slot order
        hours = [float(item[f"{n}.hours"]) for n in ("t-1", "t", "t+1")]
        np.testing.assert_allclose(got["days"].numpy(), [(x - hours[1]) / 24 for x in hours], rtol=1e-6)
        assert got["days"][0] < 0 and got["days"][1] == 0 and got["days"][2] > 0
        # the reconstructed pixels: valid in the truth, not seen in the input
        seen, tv = item["t.valid"], item["t.truth.valid"]
        np.testing.assert_array_equal(got["gaps"].numpy(), (tv & ~seen)[None])
        np.testing.assert_array_equal(got["truth_valid"].numpy(), tv[None])
        np.testing.assert_array_equal(got["truth"].numpy(), item["t.truth"])
    assert any(ds[k]["gaps"].any() for k in range(len(ds)))


def test_sequence_samples_have_one_frame_per_date(seq):
    card, slot_map = plan_card([seq], TrainOptions(net="sequence", **TINY))
    ds = CardSamples(seq, "train", card, slot_map)
    got, item = ds[0], ds.data[0]
    assert tuple(got["truth"].shape) == (6 * 4, 64, 64) and tuple(got["gaps"].shape) == (6, 64, 64)
    for f, (_, store_name) in enumerate(slot_map.outputs):
        expected = item[f"{store_name}.truth.valid"] & ~item[f"{store_name}.valid"]
        np.testing.assert_array_equal(got["gaps"][f].numpy(), expected)
        np.testing.assert_array_equal(got["truth"][4 * f : 4 * f + 4].numpy(), item[f"{store_name}.truth"])
    assert got["days"][3] == 0 and (np.diff(got["days"].numpy()) > 0).all()


def _s1_channels(card) -> list[int]:
    out, start = [], 0
    for s in card.slots:
        if s.sensor == "S1":
            out += range(start, start + s.channels)
        start += s.channels
    return out


def test_s1_dropout_withholds_s1(os2, os2_card):
    card, slot_map = os2_card
    s1 = _s1_channels(card)
    assert len(s1) == 9
    dropped = CardSamples(os2, "train", card, slot_map, augment=True, s1_dropout=1.0)
    kept = CardSamples(os2, "train", card, slot_map, augment=True, s1_dropout=0.0)
    for k in range(4):
        x = dropped[k]["x"]
        assert not x[s1].any()
        assert x[:15].any()  # S2 still there
        assert kept[k]["x"][[s1[2], s1[5], s1[8]]].sum() > 0  # S1 validity channels
    # without augmentation (validation) S1 is never dropped
    assert CardSamples(os2, "val", card, slot_map, s1_dropout=1.0)[0]["x"][s1].any()


def test_augmentation_is_deterministic_per_seed_epoch_and_sample(os2, os2_card):
    card, slot_map = os2_card
    mean = torch.tensor(card.normalisation["S2"]["mean"])[:, None, None]
    std = torch.tensor(card.normalisation["S2"]["std"])[:, None, None]

    def make(seed: int = 3) -> CardSamples:
        return CardSamples(os2, "train", card, slot_map, crop=32, augment=True, s1_dropout=0.5, seed=seed)

    a, b = make(), make()
    first = [a[k] for k in range(6)]
    differs_by_epoch = differs_by_seed = 0
    for k, got in enumerate(first):
        assert tuple(got["x"].shape) == (card.in_channels, 32, 32)
        for key in ("x", "truth", "gaps", "truth_valid", "days"):
            assert torch.equal(got[key], a[k][key]) and torch.equal(got[key], b[k][key]), key
        # one geometry for every array: the target's validity channel and its values agree with
        # the truth and the gaps
        seen = got["x"][9] > 0  # t's validity: after t-1's 5 channels and t's 4 bands
        assert torch.equal(got["gaps"][0], got["truth_valid"][0] & ~seen)
        values = got["x"][5:9]
        torch.testing.assert_close((values * std + mean)[:, seen], got["truth"][:, seen], rtol=1e-5, atol=1e-5)
    b.epoch = 1
    other = make(seed=4)
    for k, got in enumerate(first):
        differs_by_epoch += not torch.equal(got["x"], b[k]["x"])
        differs_by_seed += not torch.equal(got["x"], other[k]["x"])
    assert differs_by_epoch >= 4 and differs_by_seed >= 4
    b.epoch = 0
    assert all(torch.equal(first[k]["x"], b[k]["x"]) for k in range(6))


# -- train -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trained(os2, tmp_path_factory):
    """A multi-temporal checkpoint trained 2 epochs on 16 samples of the OS2 store."""
    out = tmp_path_factory.mktemp("trained") / "mt.safetensors"
    records = []
    result = train(
        [os2.path],
        out,
        TrainOptions(net="multi-temporal", epochs=2, batch_size=8, limit=16, **TINY),
        on_epoch=records.append,
    )
    return result, records


def _refuse(*args, **kwargs):
    raise AssertionError("a checkpoint must never be unpickled")


def test_train_writes_a_checkpoint_and_its_card(os2, trained, monkeypatch):
    result, records = trained
    out = result.path
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert not resume_path(out).exists() and not list(out.parent.glob(".*"))
    assert [r.epoch for r in records] == [1, 2] and result.history == tuple(records)
    assert result.resumed_from == 0 and result.device == "cpu" and not result.stopped_early

    monkeypatch.setattr(pickle, "load", _refuse)
    monkeypatch.setattr(pickle, "loads", _refuse)
    monkeypatch.setattr(torch, "load", _refuse)
    net, card = load_checkpoint(out)
    assert card == read_card(out) == result.card
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(card.to_dict()))

    info = card.info
    (summary,) = info["trained_on"]
    assert summary["store"] == str(os2.path) and summary["layout"] == "OS2"
    assert summary["splits"] == os2.manifest["splits"] == {"train": 29, "val": 4, "test": 7}
    assert summary["bands"] == list(BANDS) and summary["s1"] is True and summary["patch_size"] == 64
    training = info["training"]
    assert training["parameters"] == parameter_count(net) == result.parameters > 0
    assert training["epochs_run"] == 2 and training["loss_pixels"] == "gaps" and training["seed"] == 0
    assert training["best_epoch"] == result.best_epoch in (1, 2)
    assert training["samples_per_epoch"] == 16 and training["crop"] == 64
    assert [h["epoch"] for h in info["history"]] == [1, 2]
    best = records[result.best_epoch - 1].val
    assert info["val"] == best and best["psnr"] == max(r.val["psnr"] for r in records)
    assert best["samples"] == 4 and best["pixels"] > 0
    assert all(math.isfinite(best[k]) for k in ("psnr", "ssim", "sam", "mae", "rmse"))

    # the card's val figures are those of the weights in the file
    scores = PatchScores(card.bands)
    mean = np.asarray(card.normalisation["S2"]["mean"])[:, None, None]
    std = np.asarray(card.normalisation["S2"]["std"])[:, None, None]
    for b in CardSamples(os2, "val", card, map_card(card, os2)):
        with torch.inference_mode():
            y = net(b["x"][None], b["days"][None])[0].numpy() * std + mean
        scores.add(y, b["truth"].numpy(), b["gaps"][0].numpy(), b["truth_valid"][0].numpy())
    s = scores.result()
    assert s.n_pixels == best["pixels"]
    assert s.psnr == pytest.approx(best["psnr"], abs=2e-4) and s.mae == pytest.approx(best["mae"], abs=2e-5)


def test_existing_checkpoint_needs_overwrite(os2, trained):
    out = trained[0].path
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="exists"):
        train([os2.path], out, TrainOptions(epochs=1, **TINY))
    assert out.read_bytes() == before
    with pytest.raises(ModelError, match="checkpoints are .safetensors"):
        train([os2.path], out.with_suffix(".pt"), TrainOptions(epochs=1, **TINY))


def test_stores_of_other_layouts_are_not_combined(os2, single, tmp_path):
    with pytest.raises(StoreError, match="layout single-date has other slots"):
        train([os2.path, single.path], tmp_path / "x.safetensors", TrainOptions(epochs=1, **TINY))
    with pytest.raises(StoreNotFoundError, match="no patch store here"):
        train([tmp_path / "absent"], tmp_path / "x.safetensors", TrainOptions(epochs=1, **TINY))
    assert list(tmp_path.iterdir()) == []


# -- resume ----------------------------------------------------------------------------------------

RESUME = TrainOptions(net="multi-temporal", epochs=3, batch_size=4, limit=8, seed=5, **TINY)


def _last_state(out: Path, into: dict):
    """on_epoch hook: keep the weights of each epoch from the resume state just written."""

    def hook(rec):
        into[rec.epoch] = {k: v for k, v in load_file(str(resume_path(out))).items() if k.startswith("net.")}

    return hook


@pytest.fixture(scope="session")
def resumed(os2, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    straight_out, broken_out = root / "straight.safetensors", root / "broken.safetensors"
    straight_w, broken_w = {}, {}
    straight = train([os2.path], straight_out, RESUME, on_epoch=_last_state(straight_out, straight_w))

    keep = _last_state(broken_out, broken_w)

    def stop_after_two(rec):
        keep(rec)
        if rec.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train([os2.path], broken_out, RESUME, on_epoch=stop_after_two)
    state = resume_path(broken_out)
    left = {"state": state.exists(), "checkpoint": broken_out.exists()}
    spare = root / "spare.resume.safetensors"
    shutil.copy(state, spare)
    broken = train([os2.path], broken_out, replace(RESUME, resume=True), on_epoch=keep)
    return SimpleNamespace(
        straight=straight, broken=broken, straight_w=straight_w, broken_w=broken_w, left=left, spare=spare
    )


@pytest.mark.slow
def test_resumed_run_ends_where_an_unbroken_one_would(resumed):
    r = resumed
    assert r.left == {"state": True, "checkpoint": True}  # the interrupted run kept its last epoch
    assert r.straight.resumed_from == 0 and r.broken.resumed_from == 2
    assert not resume_path(r.broken.path).exists() and not resume_path(r.straight.path).exists()
    assert sorted(r.straight_w) == sorted(r.broken_w) == [1, 2, 3]
    for epoch in (1, 2, 3):
        a, b = r.straight_w[epoch], r.broken_w[epoch]
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=f"epoch {epoch}: {k}")
    ha, hb = r.straight.history, r.broken.history
    assert [h.epoch for h in ha] == [h.epoch for h in hb] == [1, 2, 3]
    for x, y in zip(ha, hb, strict=True):
        assert x.loss == pytest.approx(y.loss, abs=1e-5) and x.lr == pytest.approx(y.lr, rel=1e-12)
        for k in ("psnr", "ssim", "sam", "mae", "rmse", "pixels", "samples"):
            assert x.val[k] == pytest.approx(y.val[k], abs=1e-4), k
    assert r.straight.best_epoch == r.broken.best_epoch
    a, b = load_file(str(r.straight.path)), load_file(str(r.broken.path))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    history = read_card(r.broken.path).info["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def _left_state(resumed, folder: Path) -> Path:
    """A checkpoint path whose interrupted run (2 of 3 epochs) left only its resume state."""
    out = folder / "other.safetensors"
    shutil.copy(resumed.spare, resume_path(out))
    return out


def test_a_left_resume_state_needs_resume_or_overwrite(os2, resumed, tmp_path):
    out = _left_state(resumed, tmp_path)
    state = resume_path(out)
    with pytest.raises(OutputExistsError, match=r"killed run left \.other\.resume\.safetensors; pass --resume"):
        train([os2.path], out, RESUME)
    with pytest.raises(ModelError, match="the killed run used other settings"):
        train([os2.path], out, replace(RESUME, lr=1e-3, resume=True))
    with pytest.raises(ModelError, match="the killed run used other settings"):
        train([os2.path], out, replace(RESUME, seed=6, resume=True))
    assert state.exists() and not out.exists()
    with pytest.raises(ModelError, match=r"--resume, but no resume state \(\.none\.resume\.safetensors\)"):
        train([os2.path], tmp_path / "none.safetensors", replace(RESUME, resume=True))


def test_resume_with_another_network_size_is_a_model_error(os2, resumed, tmp_path):
    with pytest.raises(ModelError, match="other settings"):
        train([os2.path], _left_state(resumed, tmp_path), replace(RESUME, width=8, resume=True))


def test_resume_with_another_loss_is_a_model_error(os2, resumed, tmp_path):
    with pytest.raises(ModelError, match="other settings"):
        train([os2.path], _left_state(resumed, tmp_path), replace(RESUME, loss_pixels="all", resume=True))


# -- loss masking ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_gaps_loss_ignores_the_truth_outside_the_gaps(os2, tmp_path, monkeypatch):
    """With --loss-pixels gaps, truth outside the reconstructed pixels cannot move the weights;
    with --loss-pixels all the same change does (so the change reaches the loss)."""
    original = CardSamples.__getitem__

    def shifted(self, k):
        out = original(self, k)
        if self.augment:  # training samples only; validation is scored on the gaps anyway
            outside = ~out["gaps"].any(0)
            out["truth"] = torch.where(outside[None], out["truth"] + 0.3, out["truth"])
        return out

    def weights(loss_pixels: str, shift: bool) -> dict[str, torch.Tensor]:
        out = tmp_path / f"{loss_pixels}-{shift}.safetensors"
        opts = TrainOptions(epochs=1, batch_size=4, limit=8, seed=2, loss_pixels=loss_pixels, **TINY)
        with monkeypatch.context() as m:
            if shift:
                m.setattr(CardSamples, "__getitem__", shifted)
            train([os2.path], out, opts)
        return load_file(str(out))

    base, moved = weights("gaps", False), weights("gaps", True)
    assert all(torch.equal(base[k], moved[k]) for k in base)
    base, moved = weights("all", False), weights("all", True)
    assert not all(torch.allclose(base[k], moved[k], atol=1e-6) for k in base)


# -- divergence ------------------------------------------------------------------------------------

DIVERGE = TrainOptions(net="multi-temporal", epochs=3, batch_size=4, limit=8, seed=1, **TINY)


def _truth_from_epoch(epoch: int, change):
    """CardSamples.__getitem__ whose training truth is changed from ``epoch`` (0-based) on."""
    original = CardSamples.__getitem__

    def changed(self, k):
        out = original(self, k)
        if self.augment and self.epoch >= epoch:
            out["truth"] = change(out["truth"])
        return out

    return changed


def test_exploding_loss_stops_the_run_and_removes_what_it_wrote(os2, tmp_path, monkeypatch):
    out = tmp_path / "d.safetensors"
    written = []

    def hook(rec):
        written.append(sorted(p.name for p in tmp_path.iterdir()))

    monkeypatch.setattr(CardSamples, "__getitem__", _truth_from_epoch(1, lambda t: t * 1e6))
    with pytest.raises(
        TrainingDivergedError,
        match=r"d\.safetensors: training diverged at epoch 2 \(loss .+, over 1000 x the first step's .+\); "
        r"no checkpoint was written; the run's earlier checkpoint and resume state were removed: "
        r"train again with a lower --lr than 0\.002",
    ):
        train([os2.path], out, DIVERGE, on_epoch=hook)
    assert written == [[".d.resume.safetensors", "d.json", "d.safetensors"]]  # epoch 1 wrote them ...
    assert list(tmp_path.iterdir()) == []  # ... and the diverged epoch 2 removed them


def test_nan_loss_stops_the_run_and_leaves_an_older_checkpoint_alone(os2, trained, tmp_path, monkeypatch):
    out = tmp_path / "old.safetensors"
    shutil.copy(trained[0].path, out)
    shutil.copy(trained[0].path.with_suffix(".json"), out.with_suffix(".json"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(CardSamples, "__getitem__", _truth_from_epoch(0, lambda t: t * float("nan")))
    with pytest.raises(TrainingDivergedError, match=r"diverged at epoch 1 \(loss nan\); no checkpoint was written: "):
        train([os2.path], out, replace(DIVERGE, overwrite=True))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_resumed_run_remembers_the_first_step_loss(resumed):
    from safetensors import safe_open

    with safe_open(str(resumed.spare), framework="pt") as f:
        meta = json.loads(f.metadata()["cloudclear.resume"])
    assert 0 < meta["first_loss"] < 10  # normalised L1 of an untrained network


# -- evaluate --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def single_ckpt(single, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sd_ckpt") / "sd.safetensors"
    train([single.path], out, TrainOptions(net="single-date", epochs=1, batch_size=4, limit=8, **TINY))
    return out


def _gapfill_reference(store: PatchStore, split: str) -> tuple[PatchScores, int, int, int]:
    """gapfill of the target from the store's S2 slots and its scores, computed here."""
    scores = PatchScores(store.bands)
    pixels = unfilled = 0
    ds = PatchDataset(store, split)
    names = [s.name for s in store.layout.s2_slots]
    for item in ds:
        hours = np.array([float(item[f"{n}.hours"]) for n in names])
        order = np.argsort(hours)
        pred, status = gapfill(
            np.stack([item[names[i]] for i in order]),
            np.stack([item[f"{names[i]}.valid"] for i in order]),
            hours[order],
            float(item["t.hours"]),
        )
        gaps = item["t.truth.valid"] & ~item["t.valid"]
        filled = status != PixelStatus.NODATA
        sel = gaps & filled
        pixels += int(sel.sum())
        unfilled += int((gaps & ~filled).sum())
        if sel.any():
            scores.add(pred, item["t.truth"], sel, item["t.truth.valid"])
    return scores, len(ds), pixels, unfilled


def test_evaluate_scores_every_method_on_the_same_pixels(os2, trained, single_ckpt):
    ckpt = str(trained[0].path)
    results = evaluate([os2.path], ["gapfill", ckpt, str(single_ckpt)], "test", device="cpu")
    assert [r.method for r in results] == ["gapfill", ckpt, str(single_ckpt)]
    scores, n, pixels, unfilled = _gapfill_reference(os2, "test")
    assert n == 7 and pixels > 0
    for r in results:
        assert (r.split, r.samples, r.pixels, r.unfilled) == ("test", n, pixels, unfilled)
        assert r.stores == (str(os2.path),)
        assert all(math.isfinite(v) for v in r.figures.values())
    s = scores.result()
    for k in ("psnr", "ssim", "sam", "mae", "rmse"):
        assert results[0].figures[k] == pytest.approx(getattr(s, k), abs=1e-4), k
    assert results[0].figures["psnr"] > results[1].figures["psnr"]  # 2 epochs of a tiny net
    assert json.loads(json.dumps(results[1].to_dict()))["method"] == ckpt


def test_single_date_checkpoint_reads_its_slots_of_an_os2_store(os2, single, single_ckpt):
    _, card = load_checkpoint(single_ckpt)
    assert [s.name for s in card.slots] == ["t", "s1@t"]
    slot_map = map_card(card, os2)
    assert slot_map.inputs == (("t", "t"),) and slot_map.outputs == (("t", "t"),)
    (r,) = evaluate([os2.path], [str(single_ckpt)], "val", device="cpu")
    assert r.samples == 4 and r.pixels > 0 and math.isfinite(r.figures["psnr"])
    # gapfill, the common yardstick, needs two dates: a single-date store cannot be evaluated
    with pytest.raises(ModelError, match="needs two or more S2 slots"):
        evaluate([single.path], ["gapfill", str(single_ckpt)], "test", device="cpu")


def test_evaluate_refuses_a_card_with_other_bands(os2, tmp_path):
    card, _ = plan_card([_OtherBands(os2, ("B02", "B03", "B04", "B8A"))], TrainOptions(**TINY))
    ckpt = save_checkpoint(tmp_path / "b8a.safetensors", build_net(card), card)
    with pytest.raises(ModelError, match="differ"):
        map_card(card, os2)
    with pytest.raises(ModelError, match=r"B8A.*differ"):
        evaluate([os2.path], ["gapfill", str(ckpt)], "test", device="cpu")
    with pytest.raises(ModelError, match="nothing to evaluate"):
        evaluate([os2.path], [], "test")


def test_sequence_checkpoint_is_evaluated_on_every_frame(seq, tmp_path):
    out = tmp_path / "seq.safetensors"
    result = train([seq.path], out, TrainOptions(net="sequence", epochs=1, batch_size=4, limit=4, **TINY))
    assert result.card.output_slots == SEQ_NAMES and result.card.info["val"]["samples"] == 2
    gf, net = evaluate([seq.path], ["gapfill", str(out)], "val", device="cpu")
    assert (gf.samples, gf.pixels, gf.unfilled) == (net.samples, net.pixels, net.unfilled)
    # every frame's gaps count
    expected = 0
    for item in PatchDataset(seq, "val"):
        for k in range(6):
            expected += int((item[f"t{k}.truth.valid"] & ~item[f"t{k}.valid"]).sum())
    assert gf.pixels + gf.unfilled == expected > 0


# -- PatchScores and cloudclear score ----------------------------------------------------------------


def _pair(rng: np.random.Generator, shape=(4, 40, 52)) -> tuple[np.ndarray, np.ndarray]:
    ref = rng.integers(100, 5000, size=shape).astype(np.uint16)
    noise = rng.normal(0, 300, size=shape)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 30, size=shape), axis=1), axis=2)  # structure for SSIM
    pred = np.clip(ref + noise + smooth, 1, 12000).astype(np.uint16)  # some above 1.0: clipped
    return pred, ref


def _write_pair(tmp_path: Path, pred: np.ndarray, ref: np.ndarray, name: str) -> tuple[Path, Path]:
    p = write_raster(tmp_path / f"{name}_pred.tif", pred, descriptions=BANDS, nodata=0)
    r = write_raster(tmp_path / f"{name}_ref.tif", ref, descriptions=BANDS, nodata=0)
    return p, r


def _assert_same(a, b) -> None:
    assert (a.n_pixels, a.n_ssim, a.n_sam) == (b.n_pixels, b.n_ssim, b.n_sam)
    for k in ("mae", "rmse", "psnr", "ssim", "sam"):
        assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-6), k
    for x, y in zip(a.bands, b.bands, strict=True):
        assert x.band == y.band
        for k in ("mae", "rmse", "psnr", "ssim"):
            assert getattr(x, k) == pytest.approx(getattr(y, k), rel=1e-6), (x.band, k)


def test_patch_scores_equal_score_on_geotiffs(tmp_path, rng):
    pred, ref = _pair(rng)
    scores = PatchScores(BANDS)
    scores.add(pred / 10000.0, ref / 10000.0, np.ones(ref.shape[1:], bool))
    got = scores.result()
    expected = score(*_write_pair(tmp_path, pred, ref, "a"), options=ScoreOptions(pixels="all"))
    _assert_same(got, expected)
    # SSIM leaves out the pixels whose 11 x 11 window leaves the patch, as score does at the edge
    assert got.n_pixels == 40 * 52 and got.n_ssim == (40 - 10) * (52 - 10)


def test_patch_scores_around_nodata_equal_score(tmp_path, rng):
    pred, ref = _pair(rng)
    ref[:, 12:18, 20:31] = 0  # a nodata hole in the reference
    valid = (ref > 0).any(0)
    scores = PatchScores(BANDS)
    scores.add(pred / 10000.0, ref / 10000.0, np.ones(valid.shape, bool), valid)
    got = scores.result()
    expected = score(*_write_pair(tmp_path, pred, ref, "hole"), options=ScoreOptions(pixels="all"))
    assert got.n_pixels == int(valid.sum()) and got.n_ssim < (40 - 10) * (52 - 10)
    _assert_same(got, expected)


def test_patch_scores_pool_like_score_many(tmp_path, rng):
    pairs, scores = [], PatchScores(BANDS)
    for name in ("a", "b"):
        pred, ref = _pair(rng)
        scores.add(pred / 10000.0, ref / 10000.0, np.ones(ref.shape[1:], bool))
        pairs.append(ScorePair(*map(str, _write_pair(tmp_path, pred, ref, name))))
    combined = score_many(pairs, ScoreOptions(pixels="all", aggregate="pooled")).combined
    assert combined is not None
    got = scores.result()
    assert got.n_images == combined.n_images == 2
    _assert_same(got, combined)
