"""Networks and checkpoints: the receptive-field bound, shapes, the architectures' properties,
safetensors cards and their errors, checkpoints found by name."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cloudclear.errors import CheckpointNotFoundError, ModelError
from cloudclear.nets import ARCHITECTURES, SIZES, NetSpec, build, parameter_count
from cloudclear.nets.card import (
    FORMAT,
    META_KEY,
    ModelCard,
    Slot,
    build_net,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    model_folders,
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
    net, radius, align = build("unet", NetSpec.of(_slots(), 4), {"width": 32, "depth": 3})
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
        build("resnet", NetSpec.of(_slots(), 4), {})
    with pytest.raises(ModelError, match=r"does not take options"):
        build("unet", NetSpec.of(_slots(), 4), {"widht": 4})


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
    with pytest.raises(CheckpointNotFoundError, match=r"no such checkpoint"):
        read_card(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointNotFoundError):
        load_checkpoint(tmp_path / "nope.safetensors")


# -- the architectures -------------------------------------------------------------------------------

S2_NAMES = ("t-1", "t", "t+1")


def _dated_slots(n_dates: int = 3, s1: bool = True, s2_bands=S2, s1_bands=S1) -> list[Slot]:
    """S2 slots in time order (the middle one the target), then one S1 slot per S2 slot, as
    training plans them."""
    names = S2_NAMES if n_dates == 3 else tuple(f"d{k}" for k in range(n_dates))
    ref = n_dates // 2
    slots = []
    for k, name in enumerate(names):
        role = "target" if k == ref else ("before" if k < ref else "after")
        slots.append(Slot(name, "S2", role, 1 if k == ref else abs(k - ref), s2_bands))
    if s1:
        slots += [Slot(f"s1@{s.name}", "S1", s.role, s.rank, s1_bands) for s in list(slots)]
    return slots


def _spec(arch: str, n_dates: int = 3, s1: bool = True) -> NetSpec:
    """The spec each architecture is trained with: one date for single-date, a frame per date for
    a sequence."""
    if arch == "single-date":
        slots = [Slot("t", "S2", "target", 1, S2), *([Slot("s1@t", "S1", "target", 1, S1)] if s1 else [])]
        return NetSpec.of(slots, len(S2))
    return NetSpec.of(_dated_slots(n_dates, s1), len(S2), n_dates if arch == "sequence" else 1)


def _net(arch: str, depth: int = 2, width: int = 4, seed: int = 0, n_dates: int = 3, s1: bool = True, **options):
    """An eval-mode net with perturbed BatchNorm (eval is then no identity), its spec and radius."""
    spec = _spec(arch, n_dates, s1)
    torch.manual_seed(seed)
    net, radius, align = build(arch, spec, {"width": width, "depth": depth, **options})
    assert align == 2**depth
    return _perturb_batchnorm(net, seed).eval(), spec, radius


def _days(spec: NetSpec, n: int = 1, seed: int = 0) -> torch.Tensor:
    """Distinct day offsets per S2 slot, the target's 0, the others before / after it."""
    g = torch.Generator().manual_seed(seed)
    t = spec.target_index()
    k = torch.arange(len(spec.s2_slots), dtype=torch.float32) - t
    return (k * 10 + torch.rand(n, len(k), generator=g) * 6 - 3) * (k != 0)


def _group_perm(spec: NetSpec, order: list[int]) -> list[int]:
    """A channel permutation that puts date ``order[i]``'s channels where date i's were."""
    groups = spec.date_groups()
    perm = list(range(spec.in_channels))
    for i, j in enumerate(order):
        for a, b in zip(groups[i], groups[j], strict=True):
            perm[a] = b
    return perm


ARCHS = ("single-date", "multi-temporal", "sequence", "unet")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("depth", [1, 2])
def test_every_architecture_gives_frames_times_bands_at_the_input_size(arch, depth):
    net, spec, radius = _net(arch, depth=depth)
    assert radius == receptive_radius(depth)
    a = 2**depth
    frames = 3 if arch == "sequence" else 1
    for h, w in [(a, a), (3 * a, 5 * a), (7 * a, 2 * a)]:
        x = torch.randn(2, spec.in_channels, h, w)
        with torch.no_grad():
            y = net(x, _days(spec, 2))
        assert tuple(y.shape) == (2, frames * len(S2), h, w), (arch, h, w)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_each_sample_of_a_batch_is_computed_on_its_own(arch):
    """Reshapes across dates and batch must not mix samples: a batch of 3 gives each sample's
    output alone (eval mode)."""
    net, spec, _ = _net(arch, seed=4)
    x = torch.randn(3, spec.in_channels, 16, 24)
    days = _days(spec, 3, seed=4)
    with torch.no_grad():
        whole = net(x, days)
        for i in range(3):
            torch.testing.assert_close(net(x[i : i + 1], days[i : i + 1]), whole[i : i + 1], rtol=1e-5, atol=1e-5)


def _gradient_reach(net: nn.Module, spec: NetSpec, radius: int, align: int) -> int:
    """Checks that an output pixel's gradient stays within ``radius`` at every pooling phase, for
    every output band and frame; returns the farthest input pixel that mattered."""
    n = int(np.ceil((2 * radius + 2 * align + 16) / align) * align)
    reach = 0
    days = _days(spec)
    for phase in range(align):
        x = torch.randn(1, spec.in_channels, n, n, requires_grad=True)
        c = n // 2 - align + phase
        net(x, days)[0, :, c, c].sum().backward()
        support = (x.grad[0].abs().sum(0) > 0).numpy()
        assert support[c, c], f"phase {phase}: the pixel itself does not matter"
        inside = np.zeros_like(support)
        inside[c - radius : c + radius + 1, c - radius : c + radius + 1] = True
        assert not (support & ~inside).any(), f"phase {phase}: gradient outside the radius {radius}"
        rows, cols = np.nonzero(support)
        reach = max(reach, int(max(np.abs(rows - c).max(), np.abs(cols - c).max())))
    return reach


@pytest.mark.parametrize("arch", ["single-date", "multi-temporal", "sequence"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.slow
def test_receptive_radius_bounds_the_gradient_support_of_every_architecture(arch, depth):
    """The sequence's attention runs per bottleneck pixel, so its radius is the U-Net's too."""
    # width 8: at width 4 some seeds switch off every ReLU of the last block, and nothing matters
    net, spec, radius = _net(arch, depth=depth, width=8, seed=depth)
    assert radius == receptive_radius(depth)
    reach = _gradient_reach(net, spec, radius, 2**depth)
    assert reach >= radius / 2, (reach, radius)


@pytest.mark.parametrize("arch", ["multi-temporal", "sequence"])
def test_a_window_with_the_radius_as_margin_gives_the_whole_image_centre(arch):
    depth = 2
    net, spec, radius = _net(arch, depth=depth, seed=5)
    torch.manual_seed(5)
    x = torch.randn(1, spec.in_channels, 96, 112)
    days = _days(spec, seed=5)
    r0, c0, h, w = 8, 12, 64, 72  # origin on the pooling grid (multiples of 4)
    assert r0 % 2**depth == c0 % 2**depth == h % 2**depth == w % 2**depth == 0
    with torch.no_grad():
        whole = net(x, days)
        window = net(x[..., r0 : r0 + h, c0 : c0 + w], days)
    centre = (slice(None), slice(None), slice(radius, h - radius), slice(radius, w - radius))
    got = window[centre]
    want = whole[..., r0 : r0 + h, c0 : c0 + w][centre]
    assert got.numel() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # ... while the rim of the window, within the radius of its edge, does differ
    assert not torch.allclose(window[..., :2, :], whole[..., r0 : r0 + 2, c0 : c0 + w], atol=1e-4)


# -- multi-temporal --------------------------------------------------------------------------------


def _encoder_outputs(net: nn.Module, x: torch.Tensor, days: torch.Tensor) -> list[torch.Tensor]:
    seen: list[list[torch.Tensor]] = []
    hook = net.encoder.register_forward_hook(lambda m, i, o: seen.append([f.detach() for f in o]))
    try:
        with torch.no_grad():
            net(x, days)
    finally:
        hook.remove()
    assert len(seen) == 1  # one pass over every date at once
    return seen[0]


@pytest.mark.parametrize("arch", ["multi-temporal", "sequence"])
def test_dates_go_through_one_shared_encoder(arch):
    """Swapping the before and after dates (their channels and their days) swaps the encoder's
    features of those dates and leaves the target's unchanged: each date is read the same way."""
    net, spec, _ = _net(arch, seed=6)
    torch.manual_seed(6)
    x = torch.randn(2, spec.in_channels, 16, 16)
    days = _days(spec, 2, seed=6)
    order = [2, 1, 0]
    xs, ds = x[:, _group_perm(spec, order)], days[:, order]
    a, b = _encoder_outputs(net, x, days), _encoder_outputs(net, xs, ds)
    t = len(order)
    for fa, fb in zip(a, b, strict=True):
        fa, fb = fa.view(2, t, *fa.shape[1:]), fb.view(2, t, *fb.shape[1:])
        for i, j in enumerate(order):
            torch.testing.assert_close(fb[:, i], fa[:, j], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fa[:, 0], fa[:, 2])  # the dates' features do differ


def test_multi_temporal_encoder_does_not_grow_with_the_dates():
    sizes = {}
    for n in (2, 3, 4):
        net, _, _ = _net("multi-temporal", depth=2, width=4, n_dates=n)
        sizes[n] = (parameter_count(net.encoder), parameter_count(net.decoder))
    assert sizes[2][0] == sizes[3][0] == sizes[4][0]
    assert sizes[2][1] < sizes[3][1] < sizes[4][1]  # the decoder reads the stacked features


def test_multi_temporal_output_depends_on_the_days():
    net, spec, _ = _net("multi-temporal", seed=7)
    x = torch.randn(1, spec.in_channels, 16, 16)
    days = _days(spec, seed=7)
    with torch.no_grad():
        y = net(x, days)
        y2 = net(x, days * 2)
        y0 = net(x, None)
        y00 = net(x, torch.zeros_like(days))
    assert (y - y2).abs().max() > 1e-4
    torch.testing.assert_close(y0, y00)  # no days: as if every date were the target's


def test_multi_temporal_with_the_s1_slots_empty():
    """S1 withheld arrives as zeros with validity 0: the output is finite and the S1 did matter."""
    net, spec, _ = _net("multi-temporal", seed=8)
    x = torch.randn(1, spec.in_channels, 24, 24)
    s1_channels = [c for g in spec.date_groups() for c in g[len(S2) + 1 :]]
    assert len(s1_channels) == 3 * (len(S1) + 1)
    x0 = x.clone()
    x0[:, s1_channels] = 0
    days = _days(spec, seed=8)
    with torch.no_grad():
        y, y0 = net(x, days), net(x0, days)
    assert y0.shape == (1, len(S2), 24, 24) and torch.isfinite(y0).all()
    assert (y - y0).abs().max() > 1e-4


def test_multi_temporal_and_sequence_without_s1():
    for arch, frames in (("multi-temporal", 1), ("sequence", 3)):
        net, spec, _ = _net(arch, s1=False)
        assert spec.in_channels == 3 * (len(S2) + 1)
        with torch.no_grad():
            y = net(torch.randn(1, spec.in_channels, 8, 8), _days(spec))
        assert y.shape == (1, frames * len(S2), 8, 8)


# -- sequence --------------------------------------------------------------------------------------


def test_sequence_output_is_the_same_for_the_sequence_shifted_in_time():
    net, spec, _ = _net("sequence", seed=9)
    x = torch.randn(2, spec.in_channels, 16, 16)
    days = _days(spec, 2, seed=9)
    with torch.no_grad():
        y = net(x, days)
        shifted = net(x, days + 37.0)
        back = net(x, days - 400.0)
        other = net(x, days * torch.tensor([1.0, 1.0, 3.0]))
    torch.testing.assert_close(shifted, y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(back, y, rtol=1e-4, atol=1e-4)
    assert (other - y).abs().max() > 1e-4  # the days between the dates do matter


def test_sequence_permuting_dates_and_days_permutes_the_frames():
    """Nothing but the days tells the dates apart: the network is equivariant to their order."""
    net, spec, _ = _net("sequence", seed=10)
    x = torch.randn(1, spec.in_channels, 16, 16)
    days = _days(spec, seed=10)
    order = [1, 2, 0]
    with torch.no_grad():
        y = net(x, days).view(1, 3, len(S2), 16, 16)
        yp = net(x[:, _group_perm(spec, order)], days[:, order]).view(1, 3, len(S2), 16, 16)
    torch.testing.assert_close(yp, y[:, order], rtol=1e-4, atol=1e-4)


def test_sequence_attention_mixes_the_dates():
    """Every output frame draws on every input date, both its S2 bands and its S1."""
    net, spec, _ = _net("sequence", seed=11)
    x = torch.randn(1, spec.in_channels, 16, 16, requires_grad=True)
    y = net(x, _days(spec, seed=11))
    groups = spec.date_groups()
    for k in range(3):
        (g,) = torch.autograd.grad(y[0, k * len(S2) : (k + 1) * len(S2), 8, 8].sum(), x, retain_graph=True)
        per_channel = g[0].abs().sum((1, 2))
        for j, chans in enumerate(groups):
            s2, s1 = chans[: len(S2)], chans[len(S2) + 1 : len(S2) + 1 + len(S1)]
            assert per_channel[s2].min() > 0, f"frame {k} does not depend on date {j}'s S2"
            assert per_channel[s1].min() > 0, f"frame {k} does not depend on date {j}'s S1"


@pytest.mark.parametrize("heads", [3, 0, 5])
def test_sequence_heads_must_divide_the_bottleneck_channels(heads):
    # width 4, depth 2: 16 channels at the bottleneck
    with pytest.raises(ModelError, match=rf"heads {heads} must divide the bottleneck channels 16"):
        build("sequence", _spec("sequence"), {"width": 4, "depth": 2, "heads": heads})
    net, _, _ = build("sequence", _spec("sequence"), {"width": 4, "depth": 2, "heads": 8})
    assert net.heads == 8


def test_architectures_refuse_slots_they_cannot_use():
    with pytest.raises(ModelError, match=r"sequence takes two or more S2 slots and gives one frame each"):
        build("sequence", NetSpec.of(_dated_slots(), len(S2), 1), {"width": 4, "depth": 2})
    with pytest.raises(ModelError, match=r"multi-temporal takes two or more S2 slots and gives one frame"):
        build("multi-temporal", NetSpec.of(_dated_slots(), len(S2), 3), {"width": 4, "depth": 2})
    with pytest.raises(ModelError, match=r"multi-temporal takes two or more S2 slots"):
        build("multi-temporal", _spec("single-date"), {"width": 4, "depth": 2})
    with pytest.raises(ModelError, match=r"single-date takes one S2 slot"):
        build("single-date", _spec("multi-temporal"), {"width": 4, "depth": 2})
    two_targets = [Slot("a", "S2", "target", 1, S2), Slot("b", "S2", "target", 2, S2)]
    with pytest.raises(ModelError, match=r"exactly one S2 slot with role 'target', not 2"):
        build("multi-temporal", NetSpec.of(two_targets, len(S2)), {"width": 4, "depth": 2})


# -- NetSpec ---------------------------------------------------------------------------------------


def test_date_groups_pair_each_s2_slot_with_its_s1_slot():
    spec = NetSpec.of(_dated_slots(), len(S2))
    # S2 slots take channels 0-14 (3 x (4 + 1)), the S1 slots 15-23 (3 x (2 + 1))
    assert spec.date_groups() == [
        [0, 1, 2, 3, 4, 15, 16, 17],
        [5, 6, 7, 8, 9, 18, 19, 20],
        [10, 11, 12, 13, 14, 21, 22, 23],
    ]
    assert spec.target_index() == 1
    # the S1 slots listed in another order still join their own date
    slots = _dated_slots()
    shuffled = NetSpec.of([*slots[:3], slots[5], slots[3], slots[4]], len(S2))
    assert shuffled.date_groups() == [
        [0, 1, 2, 3, 4, 18, 19, 20],
        [5, 6, 7, 8, 9, 21, 22, 23],
        [10, 11, 12, 13, 14, 15, 16, 17],
    ]
    assert NetSpec.of(_dated_slots(s1=False), len(S2)).date_groups() == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
        [10, 11, 12, 13, 14],
    ]


def test_date_groups_refuse_an_s1_slot_without_its_s2_slot():
    slots = [*_dated_slots(s1=False)[:2], Slot("s1@x", "S1", "after", 1, S1)]
    with pytest.raises(ModelError, match=r"S1 slots \['s1@x'\] have no S2 slot of the same role and rank"):
        NetSpec.of(slots, len(S2)).date_groups()
    # the same rank on the other side is no partner either
    slots = [*_dated_slots(s1=False), Slot("s1@t-2", "S1", "before", 2, S1)]
    with pytest.raises(ModelError, match=r"have no S2 slot"):
        build("multi-temporal", NetSpec.of(slots, len(S2)), {"width": 4, "depth": 2})


def test_date_groups_refuse_dates_with_and_without_s1():
    spec = NetSpec.of(_slots(), len(S2))  # S1 only at the target
    with pytest.raises(ModelError, match=r"every S2 slot needs the same inputs"):
        spec.date_groups()
    for arch, frames in (("multi-temporal", 1), ("sequence", 3)):
        with pytest.raises(ModelError, match=r"every S2 slot needs the same inputs"):
            build(arch, NetSpec.of(_slots(), len(S2), frames), {"width": 4, "depth": 2})
    # the plain U-Net stacks any slots as channels
    net, _, _ = build("unet", spec, {"width": 4, "depth": 2})
    assert net(torch.randn(1, spec.in_channels, 8, 8)).shape == (1, len(S2), 8, 8)


# -- sizes ---------------------------------------------------------------------------------------------


def test_size_presets_give_sensible_parameter_counts():
    spec = NetSpec.of(_dated_slots(), len(S2))  # 3 dates x (4 S2 bands + 2 S1)
    small, _, _ = build("multi-temporal", spec, SIZES["small"])
    assert 300_000 <= parameter_count(small) <= 1_000_000, parameter_count(small)
    large, radius, align = build("multi-temporal", spec, SIZES["large"])  # built, never run
    n_large = parameter_count(large)
    # 31.1 M with 3 dates (width 52); the stacked features make the decoder's first blocks wide
    assert 15_000_000 <= n_large <= 45_000_000, n_large
    assert (radius, align) == (receptive_radius(SIZES["large"]["depth"]), 2 ** SIZES["large"]["depth"])
    sizes = [parameter_count(build("sequence", _spec("sequence"), SIZES[s])[0]) for s in ("small", "medium")]
    assert sizes[0] < sizes[1]
    assert parameter_count(small) == sum(p.numel() for p in small.parameters())


# -- cards with several frames and stand-ins -----------------------------------------------------------


def _seq_fields(**kw) -> dict:
    return _fields(
        architecture="sequence",
        slots=_dated_slots(),
        output_slots=S2_NAMES,
        **kw,
    )


@pytest.mark.parametrize(
    "output_slots, message",
    [
        (("t-1", "t", "s1@t"), r"must be distinct S2 slots"),
        (("t-1", "t", "t+2"), r"must be distinct S2 slots"),
        (("t-1", "t", "t"), r"must be distinct S2 slots"),
        (("t-1", "t+1"), r"needs the target slot among its output slots"),
    ],
)
def test_bad_output_slots_are_refused(output_slots, message):
    with pytest.raises(ModelError, match=message):
        ModelCard(**_seq_fields() | {"output_slots": output_slots})


def test_frames_out_channels_and_output_frame():
    card = ModelCard(**_seq_fields())
    assert (card.frames, card.out_channels, card.output_frame()) == (3, 12, 1)
    two = ModelCard(**_seq_fields() | {"output_slots": ("t+1", "t")})
    assert (two.frames, two.out_channels, two.output_frame()) == (2, 8, 1)
    one = _card()
    assert (one.frames, one.out_channels, one.output_frame()) == (1, 4, 0)
    net = build_net(card).eval()
    with torch.no_grad():
        y = net(torch.randn(1, card.in_channels, 8, 8), torch.tensor([[-10.0, 0.0, 10.0]]))
    assert y.shape == (1, card.out_channels, 8, 8)
    # a sequence card without output slots is one frame, which the sequence network cannot give
    with pytest.raises(ModelError, match=r"sequence takes two or more S2 slots and gives one frame each"):
        build_net(ModelCard(**_seq_fields() | {"output_slots": ()}))


def test_sequence_card_with_stand_ins_round_trips(tmp_path):
    card = ModelCard(**_seq_fields(stand_ins={"B08": "B8A"}, options={"width": 4, "depth": 2, "heads": 2}))
    torch.manual_seed(12)
    net = _perturb_batchnorm(build_net(card), 12).eval()
    path = save_checkpoint(tmp_path / "seq.safetensors", net, card)
    back = read_card(path)
    assert back == card
    assert back.stand_ins == {"B08": "B8A"} and back.output_slots == S2_NAMES and back.frames == 3
    assert json.loads(path.with_suffix(".json").read_text())["stand_ins"] == {"B08": "B8A"}
    net2, card2 = load_checkpoint(path)
    assert card2 == card and net2.heads == 2
    x, days = torch.randn(1, card.in_channels, 16, 16), torch.tensor([[-12.0, 0.0, 9.0]])
    with torch.no_grad():
        assert torch.equal(net(x, days), net2(x, days))


# -- checkpoints by name ------------------------------------------------------------------------------


def _save_named(folder, name: str, **kw):
    card = _card(**kw)
    torch.manual_seed(0)
    return save_checkpoint(folder / f"{name}.safetensors", build_net(card), card), card


@pytest.fixture
def models(tmp_path, monkeypatch):
    """Two model folders (as ./models and the project's), and a working directory without one."""
    first, second = tmp_path / "here" / "models", tmp_path / "shipped" / "models"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    monkeypatch.setattr("cloudclear.nets.card.model_folders", lambda: [first, second])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return first, second


def test_find_checkpoint_by_path(tmp_path):
    p, _ = _save_named(tmp_path, "m")
    assert find_checkpoint(p) == p
    assert find_checkpoint(str(p)) == p
    with pytest.raises(CheckpointNotFoundError, match=r"nope\.safetensors: no such checkpoint"):
        find_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointNotFoundError, match=r"no such checkpoint"):
        find_checkpoint(str(tmp_path / "sub" / "nope"))  # a path, not a name: never looked up in folders


def test_find_checkpoint_by_name_in_the_model_folders(models):
    first, second = models
    a, _ = _save_named(first, "multi-temporal-small")
    b, _ = _save_named(second, "multi-temporal-small", window=96)
    c, _ = _save_named(second, "sequence-small")
    assert find_checkpoint("multi-temporal-small") == a  # ./models first
    assert find_checkpoint("sequence-small") == c
    with pytest.raises(
        CheckpointNotFoundError,
        match=r"mt-large: no such checkpoint or model name \(known: multi-temporal-small, sequence-small\)",
    ):
        find_checkpoint("mt-large")
    assert b.exists()


def test_find_checkpoint_with_no_model_folders(monkeypatch, tmp_path):
    monkeypatch.setattr("cloudclear.nets.card.model_folders", lambda: [])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match=r"known: none"):
        find_checkpoint("multi-temporal-small")


def test_list_checkpoints_skips_files_that_are_not_checkpoints(models):
    first, second = models
    a, card_a = _save_named(first, "a")
    b, card_b = _save_named(second, "b", window=96)
    _save_named(second, "a", window=128)  # hidden by ./models' a
    save_file({"w": torch.zeros(3)}, str(first / "bare.safetensors"))  # no card
    (first / "junk.safetensors").write_bytes(b"not a checkpoint")
    (first / ".hidden.safetensors").write_bytes((a).read_bytes())
    (first / "notes.txt").write_text("hello")
    listed = list_checkpoints()
    assert [(p, c) for p, c in listed] == [(a, card_a), (b, card_b)]
    assert [p for p, _ in list_checkpoints(first)] == [a]
    assert [(p.name, c.window) for p, c in list_checkpoints(second)] == [("a.safetensors", 128), ("b.safetensors", 96)]
    with pytest.raises(CheckpointNotFoundError, match=r"no such folder"):
        list_checkpoints(first / "nope")


def test_model_folders_are_the_working_directory_then_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = model_folders()
    assert Path("models") not in before
    (tmp_path / "models").mkdir()
    after = model_folders()
    assert after[0] == Path("models")
    assert after[1:] == before


def test_a_folder_named_like_a_model_does_not_hide_it(models):
    first, _ = models
    a, _ = _save_named(first, "multi-temporal-small")
    Path("multi-temporal-small").mkdir()  # e.g. an output folder of that name
    assert find_checkpoint("multi-temporal-small") == a


# -- the network feed ----------------------------------------------------------------------------------


def _pixels(rng: np.random.Generator, n: int = 2, bands: int = 4, size: int = 8):
    values = rng.uniform(0.0, 0.5, (n, bands, size, size)).astype(np.float32)
    valid = rng.random((n, size, size)) > 0.3
    return values, valid


def test_feed_normalises_each_slot_and_zeroes_what_was_not_seen(rng):
    from cloudclear.nets.feed import Feed, SlotPixels

    card = _card()
    feed = Feed(card)
    s2 = [_pixels(rng) for _ in range(3)]
    s1 = (rng.uniform(-25, 0, (2, 2, 8, 8)).astype(np.float32), rng.random((2, 8, 8)) > 0.5)
    slots = [SlotPixels(torch.from_numpy(v), torch.from_numpy(ok)) for v, ok in (*s2, s1)]
    x = feed.input(slots, 2, 8, 8)
    assert x.shape == (2, card.in_channels, 8, 8) and x.dtype == torch.float32
    start = 0
    for slot, (values, valid) in zip(card.slots, (*s2, s1), strict=True):
        norm = NORM[slot.sensor]
        mean = np.asarray(norm["mean"], np.float32)[:, None, None]
        std = np.asarray(norm["std"], np.float32)[:, None, None]
        expected = np.where(valid[:, None], (values - mean) / std, np.float32(0))
        nb = len(slot.bands)
        np.testing.assert_array_equal(x[:, start : start + nb].numpy(), expected)
        np.testing.assert_array_equal(x[:, start + nb].numpy(), valid.astype(np.float32))
        start += nb + 1
    # a slot without an acquisition is all zeros, validity included
    empty = feed.input([*slots[:3], None], 2, 8, 8)
    assert not empty[:, 15:].any() and torch.equal(empty[:, :15], x[:, :15])


def test_feed_converts_digital_numbers_and_linear_s1_as_the_reader_would(rng):
    from cloudclear.nets.feed import Feed, SlotPixels

    card = _card()
    feed = Feed(card)
    dn = rng.integers(1, 40000, (2, 4, 8, 8)).astype(np.uint16)
    dn[0, 0, 0, 0] = 65535  # above int16: moved as 16 bits, widened on the device
    valid = np.ones((2, 8, 8), bool)
    db = rng.uniform(-25, 0, (2, 2, 8, 8)).astype(np.float32)
    linear = (10 ** (db / 10)).astype(np.float32)
    raw = feed.input(
        [SlotPixels(feed.tensor(dn), feed.tensor(valid), scale=1e-4, offset=-0.1)] * 3
        + [SlotPixels(feed.tensor(linear), feed.tensor(valid), linear=True)],
        2,
        8,
        8,
    )
    physical = dn.astype(np.float32) * np.float32(1e-4) - np.float32(0.1)
    decoded = feed.input(
        [SlotPixels(torch.from_numpy(physical), torch.from_numpy(valid))] * 3
        + [SlotPixels(torch.from_numpy(db), torch.from_numpy(valid))],
        2,
        8,
        8,
    )
    torch.testing.assert_close(raw, decoded, rtol=1e-5, atol=1e-4)
    assert feed.tensor(dn)[0, 0, 0, 0] == 65535


def test_feed_days_and_output_round_trip(rng):
    from cloudclear.nets.feed import Feed, day_offsets, output_stats

    card = ModelCard(**_seq_fields())
    feed = Feed(card)
    days = feed.days([-10.0, None, 12.5], n=3)
    assert days.shape == (3, 3) and days[2].tolist() == [-10.0, 0.0, 12.5]
    assert day_offsets([0.0, 36.0, -12.0], 12.0) == [-0.5, 1.0, -1.0]
    truth = torch.from_numpy(rng.uniform(0, 0.5, (2, card.out_channels, 8, 8)).astype(np.float32))
    y = feed.normalise(truth)
    torch.testing.assert_close(feed.reflectance(y), truth)
    torch.testing.assert_close(feed.reflectance(y, frame=1), truth[:, 4:8])
    mean, std = output_stats(card)
    assert mean.shape == std.shape == (card.out_channels,)
    with pytest.raises(ModelError, match="3 S2 slots, not 2 day offsets"):
        feed.days([0.0, 1.0])
    with pytest.raises(ModelError, match="input slots, not 1"):
        feed.input([None], 1, 8, 8)


# -- resource guards, damaged checkpoints --------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 100000, "depth": 3}, r"width 100000, depth 3 would have more than .* parameters"),
        ({"width": 580, "depth": 3}, r"width 580, depth 3 would have [\d,]+ parameters, more than the 200,000,000"),
        ({"width": 4, "depth": 31}, r"at most depth 30"),
    ],
)
def test_networks_too_big_are_refused_before_allocating(options, message):
    from cloudclear.errors import ResourceLimitError
    from cloudclear.nets import MAX_PARAMETERS

    spec = NetSpec.of(_dated_slots(), 4)
    with pytest.raises(ResourceLimitError, match=message):
        build("multi-temporal", spec, options)
    assert MAX_PARAMETERS == 200_000_000


def test_build_on_the_meta_device_allocates_nothing():
    net, radius, align = build("multi-temporal", NetSpec.of(_dated_slots(), 4), {"width": 16, "depth": 3}, "meta")
    assert all(p.is_meta for p in net.parameters()) and (radius, align) == (receptive_radius(3), 8)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, value):
    card = _card()
    net = build_net(card)
    with torch.no_grad():
        net.decoder.head.bias[1] = value
    path = save_checkpoint(tmp_path / "bad.safetensors", net, card)
    with pytest.raises(ModelError, match=r"bad\.safetensors: weights decoder\.head\.bias hold NaN or infinite"):
        load_checkpoint(path)


def test_save_checkpoint_is_atomic_and_names_the_file(tmp_path, monkeypatch):
    from cloudclear.errors import OutputError

    card = _card()
    path = save_checkpoint(tmp_path / "m.safetensors", build_net(card), card)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)  # the card, written after the weights
    with pytest.raises(OutputError, match=r"m\.safetensors: cannot write checkpoint \(no space left on device\)"):
        save_checkpoint(path, build_net(card), card)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
