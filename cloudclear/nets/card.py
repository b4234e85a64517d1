"""Checkpoints: safetensors weights with a JSON model card in their metadata.

The card says everything :mod:`cloudclear.inference` needs to run a network on a tile without
guessing: the architecture and its options (built through :data:`cloudclear.nets.ARCHITECTURES`),
the input slots (which acquisitions, in which order, with which bands), the normalisation, the
receptive field and pooling alignment (for margin-crop windows), and whether the network is fully
convolutional (otherwise windows are Hann-blended). Nothing is unpickled: weights are safetensors,
the card is JSON. ``save_checkpoint`` also writes the card beside the weights as ``NAME.json`` for
people to read; loading uses the copy embedded in the weights file, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloudclear.errors import CheckpointError, CheckpointNotFoundError
from cloudclear.layouts import ROLES
from cloudclear.layouts import Slot as InputSlot

FORMAT = "cloudclear-model/1"
META_KEY = "cloudclear.card"


@dataclass(frozen=True)
class Slot(InputSlot):
    """One input acquisition of a network: an inference slot (:class:`cloudclear.layouts.Slot`:
    name, sensor, role, rank) with the bands it reads, validated on construction.

    Attributes:
        bands: band names read for this slot, in the network's channel order.
    """

    bands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensor", self.sensor.upper())
        object.__setattr__(self, "bands", tuple(self.bands))
        if self.sensor not in ("S1", "S2"):
            raise CheckpointError(f"slot {self.name!r}: sensor must be S1 or S2, not {self.sensor!r}")
        if self.role not in ROLES:
            raise CheckpointError(f"slot {self.name!r}: role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if self.rank < 1 or not self.bands:
            raise CheckpointError(f"slot {self.name!r}: needs a rank >= 1 and at least one band")

    @property
    def channels(self) -> int:
        """Input channels: the bands plus one validity channel (1 where the slot saw the surface)."""
        return len(self.bands) + 1


def s2_partner(slots: Sequence[Slot], slot: Slot) -> Slot | None:
    """The S2 slot an S1 slot sits near: the one of the same role and rank (None if there is none).

    Networks take an S1 slot's channels with its partner's date; stores keep an S1 slot's pixels
    beside its partner's.
    """
    return next((s for s in slots if s.sensor == "S2" and (s.role, s.rank) == (slot.role, slot.rank)), None)


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is and how to feed it.

    Attributes:
        architecture: a key of :data:`cloudclear.nets.ARCHITECTURES`.
        options: keyword options of that architecture (width, depth, ...).
        bands: output S2 bands, in order.
        slots: input slots in channel order.
        normalisation: sensor -> {"mean": [...], "std": [...]} per band of that sensor's slots,
            in reflectance (S2, 0..1) or dB (S1). The output is de-normalised with S2's.
        receptive_radius: pixels on each side an output pixel depends on.
        align: the pooling factor; window sides and origins are multiples of it.
        fully_convolutional: True if a window's output does not depend on where the window is
            (margin crop is exact); False for per-window context (blend the overlap).
        window: preferred window side in pixels.
        max_days: how far from the date the S2 slots may look.
        max_cloud: S2 scenes above this cloud % are never candidates.
        s1_max_hours: the largest gap between an S1 slot and its S2 slot's time.
        output_slots: for a network that reconstructs several dates (a sequence), the S2 slot
            of each output frame, in order; empty for one frame (the date itself). Inference
            writes the frame of the ``target`` slot.
        stand_ins: S2 band -> the band read in its place when a scene lacks it (``{"B8A": "B08"}``:
            the network was trained on B8A and accepts B08, the other near-infrared band).
        info: free-form provenance (training store, scores, ...).
        version: cloudclear version that wrote it.
    """

    architecture: str
    bands: tuple[str, ...]
    slots: tuple[Slot, ...]
    normalisation: dict[str, dict[str, list[float]]]
    receptive_radius: int
    align: int
    options: dict[str, Any] = field(default_factory=dict)
    fully_convolutional: bool = True
    window: int = 512
    max_days: float = 60.0
    max_cloud: float = 95.0
    s1_max_hours: float = 72.0
    output_slots: tuple[str, ...] = ()
    stand_ins: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    version: str = ""

    def __post_init__(self) -> None:
        from cloudclear import __version__
        from cloudclear.nets import ARCHITECTURES

        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "output_slots", tuple(self.output_slots))
        object.__setattr__(self, "slots", tuple(s if isinstance(s, Slot) else Slot(**s) for s in self.slots))
        if not self.version:
            object.__setattr__(self, "version", __version__)
        if self.architecture not in ARCHITECTURES:
            known = ", ".join(ARCHITECTURES)
            raise CheckpointError(f"card names unknown architecture {self.architecture!r}; known: {known}")
        if not self.bands or not self.slots:
            raise CheckpointError("card needs output bands and at least one input slot")
        if not any(s.sensor == "S2" for s in self.slots):
            raise CheckpointError("card needs at least one S2 slot")
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise CheckpointError(f"card repeats slot names: {names}")
        for sensor in {s.sensor for s in self.slots}:
            norm = self.normalisation.get(sensor)
            if norm is None:
                raise CheckpointError(f"card has {sensor} slots but no {sensor} normalisation")
            bands = {s.bands for s in self.slots if s.sensor == sensor}
            if len(bands) != 1:
                raise CheckpointError(f"card's {sensor} slots read different bands: {sorted(bands)}")
            n = len(next(iter(bands)))
            if len(norm.get("mean", [])) != n or len(norm.get("std", [])) != n:
                raise CheckpointError(f"card's {sensor} normalisation needs {n} means and stds")
            if any(s <= 0 for s in norm["std"]):
                raise CheckpointError(f"card's {sensor} normalisation has a std <= 0")
        s2_bands = next(s.bands for s in self.slots if s.sensor == "S2")
        if set(self.bands) - set(s2_bands):
            raise CheckpointError(f"output bands {self.bands} are not all among the S2 input bands {s2_bands}")
        s2_names = [s.name for s in self.slots if s.sensor == "S2"]
        if set(self.output_slots) - set(s2_names) or len(set(self.output_slots)) != len(self.output_slots):
            raise CheckpointError(f"output slots {list(self.output_slots)} must be distinct S2 slots of {s2_names}")
        if self.output_slots and "target" not in {s.role for s in self.slots if s.name in self.output_slots}:
            raise CheckpointError("a multi-frame card needs the target slot among its output slots")
        if self.align < 1 or self.receptive_radius < 0 or self.window < 2 * self.receptive_radius + self.align:
            raise CheckpointError(
                f"window {self.window} px is too small for receptive radius {self.receptive_radius} px"
            )

    @property
    def in_channels(self) -> int:
        return sum(s.channels for s in self.slots)

    @property
    def frames(self) -> int:
        """Output frames: one per output slot, or 1."""
        return max(1, len(self.output_slots))

    @property
    def out_channels(self) -> int:
        return len(self.bands) * self.frames

    def output_frame(self) -> int:
        """Which output frame is the date itself (the target slot's)."""
        if not self.output_slots:
            return 0
        roles = {s.name: s.role for s in self.slots}
        return next(i for i, name in enumerate(self.output_slots) if roles[name] == "target")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = FORMAT
        d["in_channels"] = self.in_channels
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        d = dict(d)
        fmt = d.pop("format", None)
        if fmt != FORMAT:
            raise CheckpointError(f"card format {fmt!r} is not {FORMAT!r}")
        d.pop("in_channels", None)
        try:
            return cls(**d)
        except TypeError as exc:
            raise CheckpointError(f"card has unknown or missing fields: {exc}") from None


def build_net(card: ModelCard) -> Any:
    """An untrained network of the card's architecture (eval mode off)."""
    from cloudclear.nets import NetSpec, build

    spec = NetSpec.of(card.slots, len(card.bands), card.frames)
    net, radius, align = build(card.architecture, spec, card.options)
    if radius > card.receptive_radius or align != card.align:
        raise CheckpointError(
            f"card declares receptive radius {card.receptive_radius} and alignment {card.align}, "
            f"but {card.architecture} with {card.options} has {radius} and {align}"
        )
    return net


def save_checkpoint(path: str | os.PathLike[str], net: Any, card: ModelCard) -> Path:
    """Write ``net``'s weights as safetensors with ``card`` embedded, and ``NAME.json`` beside it.

    Both go through :func:`cloudclear.outputs.atomic_outputs`: they appear together or not at all,
    and a failed or killed save leaves the old pair untouched.

    Raises:
        CheckpointError: ``path`` is not a ``.safetensors`` name.
        OutputError: the folder cannot take the files (read-only, disk full, ...); names the file.
    """
    from safetensors.torch import save

    from cloudclear.outputs import atomic_outputs

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoints are .safetensors files")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(card.to_dict(), indent=2)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    # serialised in memory and written with Python's file API, so a full disk is an OSError naming
    # its cause (safetensors' own writer reports it as an opaque error of its own)
    data = save(state, metadata={META_KEY: text})
    with atomic_outputs([path, path.with_suffix(".json")], overwrite=True, what="checkpoint") as (tmp, tmp_card):
        tmp.write_bytes(data)
        tmp_card.write_text(text + "\n")
    return path


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card embedded in a checkpoint, without loading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own and OS errors
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if META_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file has no cloudclear card (metadata key {META_KEY!r})")
    try:
        d = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: card is not valid JSON ({exc})") from None
    try:
        return ModelCard.from_dict(d)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[Any, ModelCard]:
    """Build the card's network and load the weights into it (eval mode).

    Raises:
        CheckpointNotFoundError: no file.
        CheckpointError: not a checkpoint, a bad card, weights that do not fit the card's network,
            or weights holding NaN or infinite values (a damaged file or a diverged training).
    """
    import torch
    from safetensors.torch import load_file

    card = read_card(path)
    net = build_net(card)
    state = load_file(str(path))
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path}: weights {name} hold NaN or infinite values (a damaged checkpoint or a diverged "
                "training); retrain it or use another"
            )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:2]
        raise CheckpointError(f"{path}: weights do not match the card's network ({' '.join(first)})") from None
    return net.eval(), card


#: The package the shipped checkpoints are installed as (``models/`` in the repository, see
#: ``pyproject.toml``).
SHIPPED_PACKAGE = "cloudclear._models"


def shipped_folder() -> Path | None:
    """The shipped checkpoints' folder: the installed package data :data:`SHIPPED_PACKAGE` (a
    wheel, or an editable install), else the checkout's ``models/`` beside ``cloudclear/`` (the
    source tree run without installing); None when neither exists."""
    from importlib import resources

    try:
        found = resources.files(SHIPPED_PACKAGE)
    except (ImportError, TypeError):  # not installed: run from a source tree
        found = None
    # pip unpacks wheels, so the package data is a folder; anything else (a zip import) is skipped
    if isinstance(found, Path) and found.is_dir():
        return found
    checkout = Path(__file__).resolve().parents[2] / "models"
    return checkout if checkout.is_dir() else None


def model_folders() -> list[Path]:
    """Where checkpoints are looked up by name: ``./models`` (the user's own), then the shipped
    checkpoints (:func:`shipped_folder`)."""
    out: list[Path] = []
    for folder in (Path("models"), shipped_folder()):
        if folder is not None and folder.is_dir() and all(folder.resolve() != p.resolve() for p in out):
            out.append(folder)
    return out


def find_checkpoint(name: str | os.PathLike[str]) -> Path:
    """A checkpoint path, or the name of one in :func:`model_folders` (``multi-temporal-small``).

    Raises:
        CheckpointNotFoundError: neither a file nor a known name.
    """
    p = Path(name).expanduser()
    if p.suffix == ".safetensors" or p.is_file() or os.sep in str(name):
        if not p.exists():
            raise CheckpointNotFoundError(f"{p}: no such checkpoint")
        return p
    for folder in model_folders():
        cand = folder / f"{name}.safetensors"
        if cand.is_file():
            return cand
    known = sorted({q.stem for f in model_folders() for q in f.glob("*.safetensors")})
    raise CheckpointNotFoundError(f"{name}: no such checkpoint or model name (known: {', '.join(known) or 'none'})")


def list_checkpoints(folder: str | os.PathLike[str] | None = None) -> list[tuple[Path, ModelCard]]:
    """The checkpoints (path, card) in ``folder`` or in :func:`model_folders`; files that are not
    cloudclear checkpoints are skipped."""
    folders = [Path(folder)] if folder is not None else model_folders()
    if folder is not None and not Path(folder).is_dir():
        raise CheckpointNotFoundError(f"{folder}: no such folder")
    out, seen = [], set()
    for f in folders:
        for p in sorted(f.glob("*.safetensors")):
            if p.name.startswith(".") or p.name in seen:
                continue
            try:
                out.append((p, read_card(p)))
                seen.add(p.name)
            except CheckpointError:
                continue
    return out
