"""Float pictures → 8-bit levels, the one rounding rule for every frame, mask and preview the pack writes."""
from __future__ import annotations

import torch


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Any shape, float in [0, 1] → uint8 with rounding (the official code truncates, darkening by half a level);
    out-of-range values clip, NaN becomes 0. uint8 input is returned as is."""
    if pixels.dtype == torch.uint8:
        return pixels
    return (pixels.float().nan_to_num(0.0) * 255).round_().clamp_(0, 255).to(torch.uint8)
