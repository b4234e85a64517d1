"""Scores pooled over in-memory patches: the figures of ``cloudclear score`` for training's
validation and ``cloudclear evaluate``, which score patch stores rather than files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from cloudclear.metrics.conventions import SSIM_WINDOWS, ScoreOptions
from cloudclear.metrics.maths import Sums, add_pixel_sums, finish, pixel_sums
from cloudclear.metrics.results import Score


class PatchScores:
    """The figures of :func:`score`, pooled over many in-memory patches.

    Training validates on patch stores, not files; this applies the same formulas, clipping,
    SSIM window (pixels whose window leaves the patch or meets an invalid pixel are left out of
    SSIM, as :func:`score` does at the image edge and around nodata) and SAM, so the figures in a
    model card mean what ``cloudclear score`` prints.

    Args:
        bands: band labels, in order.
        opts: conventions (``pixels`` and ``aggregate`` are not used: the caller selects the
            pixels, and patches are pooled).
    """

    def __init__(self, bands: Sequence[str], opts: ScoreOptions | None = None) -> None:
        self.labels = list(bands)
        self.opts = opts or ScoreOptions()
        self.sums = Sums(len(self.labels))
        self.images = 0

    def add(self, pred: np.ndarray, ref: np.ndarray, selected: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one patch: ``pred`` and ``ref`` (bands, H, W) in reflectance; ``selected`` (H, W) the
        pixels scored; ``valid`` (H, W) where the reference holds a value (default: everywhere)."""
        from scipy.ndimage import minimum_filter

        if pred.shape != ref.shape or pred.shape[0] != len(self.labels) or selected.shape != pred.shape[1:]:
            raise ValueError(f"pred {pred.shape}, ref {ref.shape} and pixels {selected.shape} do not match")
        opts, window = self.opts, SSIM_WINDOWS[self.opts.ssim_window]
        valid = np.ones(selected.shape, bool) if valid is None else valid
        sel = selected & valid
        pad = window.radius
        h, w = sel.shape
        win_ok = minimum_filter(valid.view(np.uint8), size=2 * pad + 1, mode="constant", cval=0) > 0
        win_ok[:pad], win_ok[h - pad :], win_ok[:, :pad], win_ok[:, w - pad :] = False, False, False, False
        ssim_sel = sel & win_ok
        s = self.sums
        s.n += int(sel.sum())
        s.n_ssim += int(ssim_sel.sum())
        self.images += 1
        if not sel.any():
            return

        def reflectance(a: np.ndarray) -> np.ndarray:
            out = a.astype(np.float64)
            if opts.clip:
                np.clip(out, 0.0, opts.peak, out=out)
            return out

        pairs = ((reflectance(pred[i]), reflectance(ref[i])) for i in range(len(self.labels)))
        whole = (slice(None), slice(None))
        add_pixel_sums(s, *pixel_sums(pairs, whole, sel, ssim_sel, window, opts.peak))

    def result(self, pred: str = "", ref: str = "", pixels: str = "reconstructed") -> Score:
        """The pooled :class:`Score` so far."""
        out = finish(self.sums, self.labels, self.opts, pred=pred, ref=ref, mask=None, pixels=pixels)
        return replace(out, n_images=self.images)
