"""Networks and checkpoints: the receptive-field bound, shapes, safetensors cards and their errors."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cloudclear.errors import ModelError, SceneNotFoundError
from cloudclear.nets import ARCHITECTURES, build
from cloudclear.nets.card import (
    FORMAT,
    META_KEY,
    ModelCard,
    Slot,
    build_net,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from cloudclear.nets.unet import UNet, receptive_radius

S2 = ("B02", "B03", "B04", "B08")
S1 = ("VV", "VH")
NORM = {
    "S2": {"mean": [0.05, 0.07, 0.06, 0.25], "std": [0.03, 0.03, 0.04, 0.08]},
    "S1": {"mean": [-11.0, -18.0], "std": [3.0, 3.0]},
}


def _slots(s1_bands=S1):
    return [
        Slot("t-1", "S2", "before", 1, S2),
        Slot("t", "S2", "target", 1, S2),
        Slot("t+1", "S2", "after", 1, S2),
        Slot("s1@t", "S1", "target", 1, s1_bands),
    ]


def _fields(depth: int = 2, width: int = 4, **kw) -> dict:
    fields = dict(
        architecture="unet",
        options={"width": width, "depth": depth},
        bands=S2,
        slots=_slots(),
        normalisation=NORM,
        receptive_radius=receptive_radius(depth),
        align=2**depth,
        window=64,
    )
    fields.update(kw)
    return fields


def _card(depth: int = 2, width: int = 4, **kw) -> ModelCard:
    return ModelCard(**_fields(depth, width, **kw))


def _perturb_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so eval mode is not an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return net


# -- the U-Net -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_radius_bounds_the_gradient_support(depth):
    torch.manual_seed(depth)
    net = _perturb_batchnorm(UNet(3, 2, width=4, depth=depth), seed=depth).eval()
    radius, align = receptive_radius(depth), 2**depth
    n = int(np.ceil((2 * radius + 2 * align + 16) / align) * align)  # the bound fits well inside
    reach = 0
    # Every position relative to the pooling grid: the support of a pooled net depends on it.
    for phase in range(align):
        x = torch.randn(1, 3, n, n, requires_grad=True)
        c = n // 2 - align + phase
        net(x)[0, :, c, c].sum().backward()
        support = (x.grad[0].abs().sum(0) > 0).numpy()
        assert support[c, c]
        inside = np.zeros_like(support)
        inside[c - radius : c + radius + 1, c - radius : c + radius + 1] = True
        assert not (support & ~inside).any(), f"depth {depth}, phase {phase}: gradient outside the radius"
        rows, cols = np.nonzero(support)
        reach = max(reach, int(max(np.abs(rows - c).max(), np.abs(cols - c).max())))
    # The bound is not wildly loose: something near it does matter.
    assert reach >= radius / 2, (reach, radius)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_output_has_the_input_shape(depth):
    a = 2**depth
    net = UNet(5, 3, width=4, depth=depth).eval()
    for h, w in [(a, a), (3 * a, 5 * a), (7 * a, 2 * a)]:
        with torch.no_grad():
            y = net(torch.randn(2, 5, h, w))
        assert tuple(y.shape) == (2, 3, h, w)
    assert net.align == a


def test_build_returns_radius_alignment_and_a_sensible_parameter_count():
    net, radius, align = build("unet", 18, 4, {"width": 32, "depth": 3})
    n = sum(p.numel() for p in net.parameters())
    assert 1_500_000 <= n <= 2_500_000, n
    assert (radius, align) == (receptive_radius(3), 8)
    assert "unet" in ARCHITECTURES


def test_unet_rejects_zero_depth_or_width():
    with pytest.raises(ValueError, match="width and depth must be >= 1"):
        UNet(3, 3, width=4, depth=0)
    with pytest.raises(ValueError, match="width and depth must be >= 1"):
        UNet(3, 3, width=0, depth=2)


# -- checkpoints ---------------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise AssertionError("a checkpoint must never be unpickled")


def test_checkpoint_round_trip(tmp_path, monkeypatch):
    card = _card(depth=2, width=4, info={"trained_on": "synthetic"}, fully_convolutional=False)
    torch.manual_seed(3)
    net = _perturb_batchnorm(build_net(card), seed=3).eval()
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "ckpt" / "m.safetensors", net, card)
    finally:
        os.umask(old)
    assert path == tmp_path / "ckpt" / "m.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json", "m.safetensors"]  # no temporaries left

    monkeypatch.setattr(torch, "load", _refuse)
    monkeypatch.setattr(pickle, "load", _refuse)
    monkeypatch.setattr(pickle, "loads", _refuse)
    net2, card2 = load_checkpoint(path)
    assert card2 == card
    assert not net2.training
    x = torch.randn(2, card.in_channels, 32, 48)
    with torch.no_grad():
        assert torch.equal(net(x), net2(x))

    side = json.loads(path.with_suffix(".json").read_text())
    with safe_open(str(path), framework="pt") as f:
        embedded = json.loads(f.metadata()[META_KEY])
    assert side == embedded == json.loads(json.dumps(card.to_dict()))
    assert side["format"] == FORMAT and side["in_channels"] == 3 * 5 + 3
    assert read_card(path) == card
    for p in (path, path.with_suffix(".json")):
        mode = p.stat().st_mode & 0o777
        assert mode & 0o044 != 0, oct(mode)  # a checkpoint is not private, unlike mkstemp's files
        assert mode == 0o644, oct(mode)


def test_save_checkpoint_replaces_an_older_one(tmp_path):
    card = _card()
    p = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    save_checkpoint(p, build_net(card), card)
    card2 = _card(window=96)
    torch.manual_seed(1)
    net2 = build_net(card2).eval()
    save_checkpoint(p, net2, card2)
    net3, card3 = load_checkpoint(p)
    assert card3.window == 96 and json.loads(p.with_suffix(".json").read_text())["window"] == 96
    x = torch.randn(1, card.in_channels, 16, 16)
    with torch.no_grad():
        assert torch.equal(net2(x), net3(x))


def test_save_checkpoint_wants_a_safetensors_name(tmp_path):
    card = _card()
    with pytest.raises(ModelError, match=r"checkpoints are \.safetensors files"):
        save_checkpoint(tmp_path / "m.pt", build_net(card), card)
    assert list(tmp_path.iterdir()) == []


# -- card errors ---------------------------------------------------------------------------------


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ModelError, match=r"unknown architecture 'resnet'; known: .*\bunet\b"):
        _card(architecture="resnet")
    with pytest.raises(ModelError, match=r"unknown architecture 'resnet'; known: .*\bunet\b"):
        build("resnet", 3, 3, {})
    with pytest.raises(ModelError, match=r"does not take options"):
        build("unet", 3, 3, {"widht": 4})


def test_weights_that_do_not_match_the_card(tmp_path):
    small = _card(width=4)
    torch.manual_seed(0)
    p = save_checkpoint(tmp_path / "m.safetensors", build_net(small), _card(width=8))
    with pytest.raises(ModelError, match=r"weights do not match the card's network"):
        load_checkpoint(p)


def test_safetensors_without_a_card(tmp_path):
    p = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    with pytest.raises(ModelError, match=r"has no cloudclear card"):
        read_card(p)
    with pytest.raises(ModelError, match=r"has no cloudclear card"):
        load_checkpoint(p)


def test_card_that_is_not_json(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(3)}, str(p), metadata={META_KEY: "{not json"})
    with pytest.raises(ModelError, match=r"card is not valid JSON"):
        read_card(p)


def test_not_a_safetensors_file_is_refused_without_unpickling(tmp_path, monkeypatch):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ModelError, match=r"junk\.safetensors: not a safetensors checkpoint"):
        read_card(junk)
    # A pickle under a .safetensors name is refused too, and nothing in it runs.
    pt = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(3)}, pt)
    monkeypatch.setattr(torch, "load", _refuse)
    monkeypatch.setattr(pickle, "load", _refuse)
    monkeypatch.setattr(pickle, "loads", _refuse)
    with pytest.raises(ModelError, match=r"not a safetensors checkpoint"):
        load_checkpoint(pt)


def _checkpoint_with_card_dict(path, d: dict):
    save_file({"w": torch.zeros(1)}, str(path), metadata={META_KEY: json.dumps(d)})
    return path


def test_wrong_card_format(tmp_path):
    d = _card().to_dict()
    d["format"] = "cloudclear-model/0"
    p = _checkpoint_with_card_dict(tmp_path / "m.safetensors", d)
    with pytest.raises(
        ModelError, match=r"m\.safetensors: card format 'cloudclear-model/0' is not 'cloudclear-model/1'"
    ):
        read_card(p)
    del d["format"]
    _checkpoint_with_card_dict(p, d)
    with pytest.raises(ModelError, match=r"card format None is not"):
        read_card(p)


def test_card_with_missing_or_unknown_fields(tmp_path):
    d = _card().to_dict()
    del d["align"]
    p = _checkpoint_with_card_dict(tmp_path / "m.safetensors", d)
    with pytest.raises(ModelError, match=r"unknown or missing fields"):
        read_card(p)
    d = _card().to_dict()
    d["colour"] = "blue"
    _checkpoint_with_card_dict(p, d)
    with pytest.raises(ModelError, match=r"unknown or missing fields"):
        read_card(p)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            {"normalisation": {"S2": {"mean": [0.1, 0.1, 0.1], "std": [0.1, 0.1, 0.1]}, "S1": NORM["S1"]}},
            r"card's S2 normalisation needs 4 means and stds",
        ),
        (
            {"normalisation": {"S2": NORM["S2"], "S1": {"mean": [-11.0, -18.0], "std": [3.0]}}},
            r"card's S1 normalisation needs 2 means and stds",
        ),
        ({"normalisation": {"S2": NORM["S2"]}}, r"card has S1 slots but no S1 normalisation"),
        (
            {"normalisation": {"S2": {**NORM["S2"], "std": [0.1, 0.0, 0.1, 0.1]}, "S1": NORM["S1"]}},
            r"std <= 0",
        ),
        (
            {"slots": [*_slots(), Slot("s1@t-1", "S1", "before", 1, ("VV",))]},
            r"card's S1 slots read different bands",
        ),
        ({"slots": [Slot("s1@t", "S1", "target", 1, S1)]}, r"card needs at least one S2 slot"),
        ({"slots": [*_slots(), Slot("t", "S2", "after", 2, S2)]}, r"card repeats slot names"),
        ({"bands": ("B02", "B11")}, r"output bands .* are not all among the S2 input bands"),
        ({"window": 40}, r"window 40 px is too small for receptive radius 26 px"),
        ({"window": 55}, r"window 55 px is too small for receptive radius 26 px"),
    ],
)
def test_bad_cards_are_refused_with_a_clear_message(edit, message):
    with pytest.raises(ModelError, match=message):
        _card(**edit)


def test_smallest_window_the_radius_allows_is_accepted():
    assert _card(window=2 * receptive_radius(2) + 4).window == 56


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sensor": "S3"}, r"sensor must be S1 or S2"),
        ({"role": "during"}, r"role must be one of target, before, after"),
        ({"rank": 0}, r"needs a rank >= 1"),
        ({"bands": ()}, r"at least one band"),
    ],
)
def test_bad_slots_are_refused(kwargs, message):
    args = {"name": "x", "sensor": "S2", "role": "before", "rank": 1, "bands": S2, **kwargs}
    with pytest.raises(ModelError, match=message):
        Slot(**args)


def test_card_declaring_a_smaller_radius_than_its_network_is_refused(tmp_path):
    card = _card(depth=2, receptive_radius=10, align=4)
    with pytest.raises(ModelError, match=r"declares receptive radius 10 and alignment 4, but unet .* has 26 and 4"):
        build_net(card)
    bad_align = _card(depth=2, align=8)
    with pytest.raises(ModelError, match=r"alignment 8"):
        build_net(bad_align)


def test_read_card_of_a_missing_file(tmp_path):
    with pytest.raises(SceneNotFoundError, match=r"no such checkpoint"):
        read_card(tmp_path / "nope.safetensors")
    with pytest.raises(SceneNotFoundError):
        load_checkpoint(tmp_path / "nope.safetensors")
