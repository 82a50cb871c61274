"""Progress-bar previews: one frame as a small picture for ComfyUI's JPEG preview."""
from __future__ import annotations

import torch
from PIL import Image

from ..sonic_model.pixels import to_uint8

PREVIEW_SIDE = 256  # the longer side of a preview, in pixels


def preview_image(frame: torch.Tensor, max_side: int = PREVIEW_SIDE) -> Image.Image:
    """(H, W, 3) float in [0, 1] → an RGB picture whose longer side is `max_side`."""
    image = Image.fromarray(to_uint8(frame).cpu().numpy())
    scale = max_side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
