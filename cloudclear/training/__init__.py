"""Fit a reconstruction network on patch stores and write a checkpoint; evaluate methods on a split.

:func:`train` reads one or more stores written by ``cloudclear sample`` (the same layout and
bands), builds a network of :data:`cloudclear.nets.ARCHITECTURES` whose input slots follow the
layout, and fits it:

- inputs are fed by :class:`cloudclear.nets.feed.Feed`, the feed inference uses: per slot the
  bands, normalised with global constants measured on the training split, 0 where the slot did not
  see the surface, then a validity channel; S1 slots pair with their S2 slot; the S2 slots' day
  offsets go along;
- L1 loss in normalised units on the reconstructed pixels (truth valid, input not seen), or on
  every valid truth pixel; AdamW; cosine learning rate; random crops and the eight flips/rotations;
- validation after every epoch with the figures of ``cloudclear score`` (:class:`PatchScores`)
  on the reconstructed pixels; the best epoch by PSNR is the checkpoint; early stopping;
- after every epoch a resume state (weights, optimiser, history; safetensors + JSON, nothing
  pickled) is written beside the checkpoint, so ``--resume`` continues a killed run; data order and
  augmentation depend only on the seed and the epoch, so a resumed run ends where an unbroken one
  would;
- a non-finite or exploding loss stops the run with :class:`~cloudclear.errors.TrainingDivergedError`
  and no checkpoint; a width or depth too big is refused before anything is allocated.

:func:`evaluate` scores a checkpoint or the ``gapfill`` baseline on a split of stores, on the same
reconstructed pixels.

:func:`finetune` starts from a checkpoint (``TrainOptions(init=...)``, its card and normalisation
kept) within a time budget (``budget_s``); :func:`adapt` samples the user's own catalog with the
layout the checkpoint was trained on (real masks pasted on clear dates) and fine-tunes on it.

Modules: :mod:`.options` (what is asked, guards), :mod:`.samples` (stores as network tensors),
:mod:`.loop` (the training loop), :mod:`.resume` (the resume state), :mod:`.evaluation`,
:mod:`.adapt` (fine-tuning and adaptation to a catalog).
"""

from cloudclear.nets.feed import output_stats as _denorm  # noqa: F401 - used by bench/train.py
from cloudclear.training.adapt import FINETUNE, AdaptOptions, AdaptResult, adapt, finetune, training_layout
from cloudclear.training.evaluation import Evaluation, evaluate
from cloudclear.training.loop import (
    DIVERGENCE_FACTOR,
    FIGURES,
    EpochRecord,
    TrainResult,
    _loader,  # noqa: F401 - used by bench/train.py
    _predict,  # noqa: F401 - used by bench/train.py
    train,
)
from cloudclear.training.options import LOSS_PIXELS, NIR_STAND_INS, TrainOptions
from cloudclear.training.resume import RESUME_KEY, resume_path
from cloudclear.training.samples import (
    CardSamples,
    StoreSlots,
    _open_stores,  # noqa: F401 - used by bench/train.py
    map_card,
    measure_normalisation,
    open_stores,
    plan_card,
    store_summary,
)

__all__ = [
    "DIVERGENCE_FACTOR",
    "FINETUNE",
    "FIGURES",
    "LOSS_PIXELS",
    "NIR_STAND_INS",
    "RESUME_KEY",
    "AdaptOptions",
    "AdaptResult",
    "CardSamples",
    "EpochRecord",
    "Evaluation",
    "StoreSlots",
    "TrainOptions",
    "TrainResult",
    "adapt",
    "evaluate",
    "finetune",
    "map_card",
    "measure_normalisation",
    "open_stores",
    "plan_card",
    "resume_path",
    "store_summary",
    "train",
    "training_layout",
]
