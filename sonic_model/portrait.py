"""Prepare the reference portrait as the official code does: optional square crop around the face, resize with the
short side at 512 (sides multiples of 64), and the face-box mask (box enlarged ×1.1) for the audio attention."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

MIN_SIDE = 64
MASK_AREA = 1.1
CLIP_SIZE = 224


def resolution_for(width: int, height: int, short_side: int = 512) -> tuple[int, int]:
    """(W', H'): short side scaled to `short_side`, each side rounded (Python round) to a multiple of 64."""
    if short_side < 64 or short_side % 64:
        raise ValueError(f"resolution must be a multiple of 64 and at least 64 (got {short_side})")
    scale = short_side / min(width, height)
    return max(64, round(width * scale / 64) * 64), max(64, round(height * scale / 64) * 64)


def expand_crop_box(box: tuple[float, float, float, float], width: int, height: int,
                    expand_ratio: float = 0.5) -> tuple[int, int, int, int]:
    """The official square crop: expand the face box, clamp, square it on the short side, moved toward the face."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    ex1, ey1 = max(0.0, x1 - expand_ratio * w), max(0.0, y1 - expand_ratio * h)
    ex2, ey2 = min(float(width), x2 + expand_ratio * w), min(float(height), y2 + expand_ratio * h)
    ew, eh = ex2 - ex1, ey2 - ey1
    side = min(ew, eh)
    cx, cy = (ex1 + ex2) / 2, (ey1 + ey2) / 2
    fx, fy = (x1 + x2) / 2, (y1 + y2) / 2
    slack = (max(ew, eh) - side) / 2
    if ew > eh:  # shift the square toward the face along the long axis, within the expanded box
        cx += max(-slack, min(slack, fx - cx))
    else:
        cy += max(-slack, min(slack, fy - cy))
    return (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))


def face_mask_box(box: tuple[float, float, float, float], width: int, height: int,
                  area: float = MASK_AREA) -> tuple[int, int, int, int]:
    """The official mask rectangle: centre by floor division, half sides (1.1·w)//2, clamped, int() bounds."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    hw, hh = (area * (x2 - x1)) // 2, (area * (y2 - y1)) // 2
    return (int(max(0, cx - hw)), int(max(0, cy - hh)), int(min(width, cx + hw)), int(min(height, cy + hh)))


def box_mask(width: int, height: int, rect: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = rect
    mask[y1:y2, x1:x2] = 255
    return mask


def resize_lanczos(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """PIL Lanczos on uint8, only when the size changes (as upstream)."""
    if array.shape[1] == width and array.shape[0] == height:
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.LANCZOS))


def clip_pixels(image: np.ndarray) -> torch.Tensor:
    """(1, 224, 224, 3) in [0, 1]: the resized reference squashed to 224² with Lanczos (the official CLIP input;
    ComfyUI's CLIP vision skips its own resize for exactly 224², so this is what it encodes)."""
    squashed = np.asarray(Image.fromarray(image).resize((CLIP_SIZE, CLIP_SIZE), Image.LANCZOS))
    return torch.from_numpy(squashed.copy()).float().div(255)[None]


@dataclass
class PreparedPortrait:
    image: np.ndarray                 # (H', W', 3) uint8, resized
    mask: np.ndarray                  # (H', W') float32 in [0, 1]
    crop_box: tuple[int, int, int, int] | None


def prepare_portrait(image: np.ndarray, face: tuple[float, float, float, float] | None, *, crop: bool,
                     expand_ratio: float, short_side: int, user_mask: np.ndarray | None = None) -> PreparedPortrait:
    """image (H, W, 3) uint8; face box in its pixels or None (whole-image mode: the user's mask or the full frame)."""
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"The reference image is {width}×{height}; Sonic needs at least {MIN_SIDE} px on each side. "
                         "Use a larger picture.")
    crop_box = None
    if crop and face is not None:
        crop_box = expand_crop_box(face, width, height, expand_ratio)
        x1, y1, x2, y2 = crop_box
        image = image[y1:y2, x1:x2]
        face = (face[0] - x1, face[1] - y1, face[2] - x1, face[3] - y1)
        if user_mask is not None:
            user_mask = user_mask[y1:y2, x1:x2]
        height, width = image.shape[:2]
    if user_mask is not None:
        mask = (np.clip(user_mask, 0, 1) * 255).round().astype(np.uint8)
    elif face is not None:
        mask = box_mask(width, height, face_mask_box(face, width, height))
    else:
        mask = np.full((height, width), 255, np.uint8)
    new_w, new_h = resolution_for(width, height, short_side)
    resized = resize_lanczos(np.ascontiguousarray(image), new_w, new_h)
    mask = resize_lanczos(mask, new_w, new_h).astype(np.float32) / 255
    return PreparedPortrait(resized, mask, crop_box)
