"""What a training run is asked for: :class:`TrainOptions`, checked on construction, and the
resource guards that refuse a network too big to build before anything is allocated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloudclear.errors import CheckpointError, ResourceLimitError
from cloudclear.layouts import NIR_STAND_INS as NIR_STAND_INS

#: Which pixels the loss covers: name -> help.
LOSS_PIXELS = {
    "gaps": "reconstructed pixels only: valid in the truth, not seen in the input (masked L1)",
    "all": "every pixel valid in the truth",
}


@dataclass(frozen=True)
class TrainOptions:
    """Options of :func:`~cloudclear.training.train`.

    Attributes:
        net: a key of :data:`cloudclear.nets.ARCHITECTURES`.
        size: a key of :data:`cloudclear.nets.SIZES` (width and depth), overridden by ``width``
            and ``depth`` when given.
        width, depth: U-Net width (channels at full resolution) and poolings.
        heads: attention heads (sequence only).
        epochs: the most epochs.
        batch_size: samples per step.
        lr: peak learning rate (AdamW; cosine decay to 0 over ``epochs``).
        weight_decay: AdamW weight decay.
        patience: stop after this many epochs without a better validation PSNR.
        loss_pixels: a key of :data:`LOSS_PIXELS`.
        crop: training crop side (default: the smallest patch, down to the pooling alignment).
        augment: random flips and 90 degree rotations.
        s1: feed S1 slots (None: when any store has S1).
        s1_dropout: probability that a training sample's S1 is withheld, so the network also
            works without S1.
        workers: DataLoader worker processes (0: load in the main process).
        seed: seeds the weights, the data order and the augmentation.
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: continue the run recorded in the resume state beside ``out``.
        overwrite: replace an existing checkpoint.
        window: the window side inference should use (written on the card).
        limit: use at most this many training samples per epoch (quick runs and benches).
        init: a checkpoint (path or model name) to start from: its weights and card (architecture,
            options, slots, normalisation) are kept, ``net``, ``size``, ``width``, ``depth`` and
            ``heads`` are ignored, and the stores must fit the card
            (:func:`~cloudclear.training.map_card`). Its validation figures are measured first
            (epoch 0) and its weights are the checkpoint until an epoch beats them. Without a val
            split, the last epoch is kept.
        budget_s: stop when this many seconds have passed since the run started (checked before
            every step; the epoch in progress is then validated and kept if it is the best, so
            the run ends one validation after the budget). None: no limit.
        train_splits: the store splits trained on (a bench may adapt on ``("train",)`` and score on
            ``test``). Validation is on ``val`` unless it is one of them.
    """

    net: str = "multi-temporal"
    size: str = "small"
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    epochs: int = 40
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 10
    loss_pixels: str = "gaps"
    crop: int | None = None
    augment: bool = True
    s1: bool | None = None
    s1_dropout: float = 0.2
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    window: int = 256
    limit: int | None = None
    init: str | None = None
    budget_s: float | None = None
    train_splits: tuple[str, ...] = ("train",)

    def __post_init__(self) -> None:
        from cloudclear.nets import ARCHITECTURES, SIZES

        if self.net not in ARCHITECTURES:
            raise CheckpointError(f"unknown network {self.net!r}; known: {', '.join(ARCHITECTURES)}")
        if self.size not in SIZES:
            raise CheckpointError(f"unknown size {self.size!r}; known: {', '.join(SIZES)}")
        if self.loss_pixels not in LOSS_PIXELS:
            raise CheckpointError(f"unknown loss pixels {self.loss_pixels!r}; choose {', '.join(LOSS_PIXELS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.seed < 0:
            raise CheckpointError("epochs, batch size and patience must be >= 1, the seed >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.s1_dropout <= 1:
            raise CheckpointError("lr must be > 0, weight decay >= 0 and S1 dropout in [0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CheckpointError(f"device {self.device!r}: choose auto, cpu or cuda")
        if self.budget_s is not None and not self.budget_s >= 0:
            raise CheckpointError(f"the time budget must be >= 0 seconds, not {self.budget_s}")
        object.__setattr__(self, "train_splits", tuple(self.train_splits))
        known = ("train", "val", "test")
        if not self.train_splits or set(self.train_splits) - set(known):
            raise CheckpointError(f"train splits {list(self.train_splits)}: choose among {', '.join(known)}")

    def net_options(self) -> dict[str, Any]:
        """The architecture's keyword options: the size preset with overrides."""
        from cloudclear.nets import SIZES

        opts: dict[str, Any] = dict(SIZES[self.size])
        if self.width is not None:
            opts["width"] = self.width
        if self.depth is not None:
            opts["depth"] = self.depth
        if self.heads is not None:
            opts["heads"] = self.heads
        return opts


def check_depth(opts: TrainOptions, patch: int) -> None:
    """Refuse a depth whose pooling the training patches (or ``--crop``) cannot take.

    A U-Net of depth ``d`` pools by ``2**d``; a crop smaller than that has no pixel left at the
    bottleneck (and ``--depth 30`` would ask for 2**30-fold channel growth).

    Raises:
        ResourceLimitError: ``2**depth`` exceeds the crop side; names ``--depth`` and the limit.
    """
    depth = int(opts.net_options().get("depth", 1))
    side = min(patch, opts.crop) if opts.crop else patch
    if depth < 1:
        return  # the architecture refuses it with its own message
    if depth > 30 or 2**depth > side:
        most = max(side.bit_length() - 1, 0)
        raise ResourceLimitError(
            f"--depth {depth}: pooling by 2**{depth} does not fit {side} px training crops "
            f"(at most --depth {most} for {side} px)"
        )
