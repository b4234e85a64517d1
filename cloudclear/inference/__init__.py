"""Whole-tile inference: window plans (:mod:`.windows`), blending, and the read -> predict -> write
pipeline."""
