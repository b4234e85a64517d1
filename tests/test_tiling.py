"""Tiled inference equals one whole-image pass for a fully convolutional network (no seams)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cloudclear.inference.tiling import predict_array
from cloudclear.inference.windows import WindowPlan


class TinyUNet(nn.Module):
    """Two poolings (align 4), 3x3 convolutions: receptive-field radius 1+1+2+2+4+4+2+2+1 = 19."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc1 = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.mid = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.dec2 = nn.Sequential(nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.dec1 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        m = self.mid(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([nn.functional.interpolate(m, scale_factor=2), e2], 1))
        d1 = self.dec1(torch.cat([nn.functional.interpolate(d2, scale_factor=2), e1], 1))
        return torch.sigmoid(d1 + x)


def _predict(net: nn.Module):
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch)).numpy()

    return run


@pytest.mark.slow
@pytest.mark.parametrize("window", [128])
def test_tiled_fcn_equals_whole_image_pass_within_1_dn_on_700_x_900(window):
    rng = np.random.default_rng(0)
    x = rng.random((4, 700, 900), dtype=np.float32)
    net = TinyUNet().eval()
    whole = _predict(net)(x[None])[0]
    # The receptive field of a pooled net reaches further than its 3x3 sum; 44 px covers it.
    plan = WindowPlan.build(700, 900, window=window, radius=44, align=4)
    assert len(plan.windows()) > 4
    tiled = predict_array(x, _predict(net), plan, batch=4)
    dn = np.abs(np.round(tiled * 10000) - np.round(whole * 10000))
    assert dn.max() <= 1, dn.max()


@pytest.mark.slow
def test_blended_tiles_cover_every_pixel_and_match_inside():
    rng = np.random.default_rng(1)
    x = rng.random((4, 130, 150), dtype=np.float32)
    net = TinyUNet().eval()
    whole = _predict(net)(np.pad(x, ((0, 0), (0, 2), (0, 2)), mode="reflect")[None])[0][:, :130, :150]
    plan = WindowPlan.build(130, 150, window=96, radius=44, align=4)
    blended = predict_array(x, _predict(net), plan, blend=True, batch=3)
    assert np.isfinite(blended).all()
    # Blending averages windows that each saw only part of the field near their edges, so it is
    # close to, not equal to, the whole pass: within a few hundredths of reflectance.
    assert np.abs(blended - whole).mean() < 0.02
