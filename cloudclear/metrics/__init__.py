"""Reconstruction metrics: MAE, RMSE, PSNR, SSIM and SAM between a prediction and a reference.

The anchors disagree on conventions (DESIGN.md section 8), so each is an option of
:class:`ScoreOptions`; the defaults follow U-TILISE. Rasters are streamed in strips of rows, so
a full 10980 x 10980 tile scores in bounded memory, and SSIM is computed on strips with a halo
of the window radius, so the blockwise value equals the whole-image value.

Formulas, with p and r the prediction and reference reflectance (``DN * scale + offset``, clipped
to [0, peak]) over the scored pixel set P and bands b = 1..B:

- MAE = mean |p - r|, RMSE = sqrt(mean (p - r)^2), over P x bands (per band: over P);
- PSNR = 20 log10(peak / RMSE) (10 log10(peak^2 / MSE));
- SSIM = mean over P' and bands of (2 mu_p mu_r + C1)(2 s_pr + C2) /
  ((mu_p^2 + mu_r^2 + C1)(s_p^2 + s_r^2 + C2)), local statistics in a window (Gaussian
  sigma 1.5, 11 x 11, as Wang et al. 2004; or 7 x 7 uniform with sample covariance, as
  scikit-image's default), C1 = (0.01 peak)^2, C2 = (0.03 peak)^2; P' is P without the pixels
  within the window radius of the image edge or of a nodata pixel (scikit-image crops the
  same border);
- SAM = mean over P of arccos(<p, r> / (|p| |r|)), the angle between spectra (pixels with a
  zero spectrum are left out).

Modules, in the order data flows:

- :mod:`~cloudclear.metrics.conventions`: the options and their registries (pixel sets,
  aggregations, SSIM windows);
- :mod:`~cloudclear.metrics.pairs` and :mod:`~cloudclear.metrics.reading`: pairing files,
  matching bands, the common grid, reading strips of it (through :mod:`cloudclear.gridio`);
- :mod:`~cloudclear.metrics.strips`: the strip scorer; :mod:`~cloudclear.metrics.maths`: the sums
  and the SSIM map it accumulates;
- :mod:`~cloudclear.metrics.rasters`: :func:`score` and :func:`score_many`;
- :mod:`~cloudclear.metrics.results`: what they return;
- :mod:`~cloudclear.metrics.quicklook`: decimated views for figures;
- :mod:`~cloudclear.metrics.patches`: the same figures over in-memory patches (training).
"""

from cloudclear.metrics.conventions import AGGREGATIONS, PIXEL_SETS, SAM_UNITS, SSIM_WINDOWS, ScoreOptions, SsimWindow
from cloudclear.metrics.pairs import Pair, drop_status_sidecars, is_status_sidecar, pair_up
from cloudclear.metrics.patches import PatchScores
from cloudclear.metrics.quicklook import Quicklook, input_view, quicklook
from cloudclear.metrics.rasters import score, score_many
from cloudclear.metrics.reading import match_bands
from cloudclear.metrics.results import BandScore, Comparison, Score

__all__ = [
    "AGGREGATIONS",
    "PIXEL_SETS",
    "SAM_UNITS",
    "SSIM_WINDOWS",
    "BandScore",
    "Comparison",
    "Pair",
    "PatchScores",
    "Quicklook",
    "Score",
    "ScoreOptions",
    "SsimWindow",
    "drop_status_sidecars",
    "input_view",
    "is_status_sidecar",
    "match_bands",
    "pair_up",
    "quicklook",
    "score",
    "score_many",
]
