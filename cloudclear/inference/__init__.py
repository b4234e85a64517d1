"""Whole-tile inference, one module per stage: :mod:`.select` (which acquisitions feed a date),
:mod:`.reading` (strips of every input on the output grid), :mod:`.windows` and :mod:`.tiling`
(window plans and the one window loop), :mod:`.methods` (gap filling and networks),
:mod:`.writer` (the output, its status sidecar, the commit) and :mod:`.pipeline`, which drives
them (``run`` for one date, ``infer`` for dates of a tile)."""

#: What ``cloudclear infer`` runs without ``--method``: the method that beats the others at places
#: it never saw, by the leave-one-place-out bench (``bench/quality.py``; figures on the card and
#: in docs/train.md). A model name resolved in ``./models`` then the shipped ``models/``.
DEFAULT_METHOD = "refine-small"
