"""The reference portrait as the official code prepares it: optional square crop around the face, resize (short side
512, sides multiples of 64, PIL Lanczos), the face-box mask (box ×1.1) and the 224² CLIP input. Pure numpy/PIL/torch.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .face_detect import FaceBox, select_face
from ..pixels import to_uint8

MIN_SIDE = 64
MASK_AREA = 1.1
CLIP_SIZE = 224
NO_FACE_ERROR = "error"
NO_FACE_WHOLE = "whole_image"

WHOLE_IMAGE_REMEDY = "set no_face to 'whole image' to animate the whole picture (optionally connect a mask)"
NO_FACE_MESSAGE = f"No face found in the reference image. Use a clearer frontal portrait, or {WHOLE_IMAGE_REMEDY}."


def no_detector_message(where: str = "", remedy: str = WHOLE_IMAGE_REMEDY) -> str:
    """Why no face can be found without the detector, and what to do; a host adds where its file goes."""
    return f"The face detector file yoloface_v5m.pt is missing{where}, so no face can be found. Add it, or {remedy}."


NO_DETECTOR_MESSAGE = no_detector_message()

Box = tuple[float, float, float, float]
IntBox = tuple[int, int, int, int]


def resolution_for(width: int, height: int, short_side: int = 512) -> tuple[int, int]:
    """(W', H'): scale so the short side is `short_side`, then each side to the nearest multiple of 64 (Python
    round: halves to even)."""
    if isinstance(short_side, bool) or int(short_side) != short_side or short_side < 64 or short_side % 64:
        raise ValueError(f"The resolution (short side) must be a multiple of 64 and at least 64; got {short_side}.")
    if width < 1 or height < 1:
        raise ValueError(f"Empty image ({width}×{height}).")
    scale = short_side / min(width, height)
    return round(width * scale / 64) * 64, round(height * scale / 64) * 64


def check_image_size(width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"The reference image is {width}×{height} pixels; Sonic needs at least {MIN_SIDE} pixels "
                         "on each side. Use a larger picture.")


def expand_crop_box(box: Box, img_w: int, img_h: int, expand_ratio: float = 0.5) -> IntBox:
    """The official square crop: grow the box by ratio·w / ratio·h each side (clamped), take a square of the short
    side centred on the grown box, shifted toward the face along the long axis, rounded with Python round."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    ex1, ey1 = max(x1 - expand_ratio * bw, 0), max(y1 - expand_ratio * bh, 0)
    ex2, ey2 = min(x2 + expand_ratio * bw, img_w), min(y2 + expand_ratio * bh, img_h)
    ew, eh = ex2 - ex1, ey2 - ey1
    cx, cy = (ex1 + ex2) / 2, (ey1 + ey2) / 2
    face_cx, face_cy = (x1 + x2) / 2, (y1 + y2) / 2
    slack = abs(eh - ew) / 2
    if ew < eh:  # tall: slide vertically toward the face, at most to the grown box's edge
        cy += min(slack, abs(face_cy - cy)) * (1 if face_cy > cy else -1)
    else:
        cx += min(slack, abs(face_cx - cx)) * (1 if face_cx > cx else -1)
    half = min(ew, eh) / 2
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


def face_mask_box(box: Box, width: int, height: int, area: float = MASK_AREA) -> IntBox:
    """The official mask rectangle: floor-division centre, half sides (area·w)//2 and (area·h)//2, clamped to the
    image, bounds truncated with int()."""
    x1, y1, x2, y2 = box
    cx, cy = (x2 + x1) // 2, (y2 + y1) // 2
    hw, hh = ((x2 - x1) * area) // 2, ((y2 - y1) * area) // 2
    return (int(max(cx - hw, 0)), int(max(cy - hh, 0)), int(min(cx + hw, width)), int(min(cy + hh, height)))


def face_mask_uint8(box: Box, width: int, height: int, area: float = MASK_AREA) -> np.ndarray:
    """(H, W) uint8: 255 inside the mask rectangle, 0 elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    mx1, my1, mx2, my2 = face_mask_box(box, width, height, area)
    mask[my1:my2, mx1:mx2] = 255
    return mask


def resize_lanczos(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """PIL Lanczos on uint8 (ringing clipped), only when the size changes, as upstream."""
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.LANCZOS))


def face_mask(box: Box, width: int, height: int, out_size: tuple[int, int] | None = None,
              area: float = MASK_AREA) -> torch.Tensor:
    """(1, 1, H', W') float mask of the face box at (width, height), Lanczos-resized to out_size = (W', H')."""
    mask = face_mask_uint8(box, width, height, area)
    if out_size is not None:
        mask = resize_lanczos(mask, *out_size)
    return torch.from_numpy(mask.astype(np.float32) / 255)[None, None]


def clip_pixels_224(image: np.ndarray, size: int = CLIP_SIZE) -> torch.Tensor:
    """(1, size, size, 3) in [0, 1]: the resized reference squashed (aspect not kept) with PIL Lanczos, as the
    official CLIP input. ComfyUI's encode_image skips its own resize and crop for exactly size², so this is parity."""
    squashed = np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))
    return torch.from_numpy(squashed.astype(np.float32) / 255)[None]


def mask_bounding_box(mask: np.ndarray, threshold: float = 0.5) -> Box | None:
    """(x1, y1, x2, y2) around mask > threshold, exclusive ends; None when empty."""
    ys, xs = np.nonzero(mask > threshold)
    if not len(xs):
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class PreparedReference:
    image: torch.Tensor            # (1, H', W', 3) float in [0, 1], uint8 levels
    mask: torch.Tensor             # (1, 1, H', W') float in [0, 1]
    crop_box: IntBox | None        # (x1, y1, x2, y2) in the original's pixels, exclusive ends
    face: Box | None               # the face box used for the mask, in the (cropped) image's pixels
    pixels: np.ndarray             # (H', W', 3) uint8, the same image (for the CLIP squash)


def prepare_reference(image_uint8: np.ndarray, faces: list[FaceBox] | None, crop: bool = False,
                      expand_ratio: float = 0.5, short_side: int = 512, no_face: str = NO_FACE_ERROR,
                      user_mask: np.ndarray | None = None, face_index: int | None = None,
                      redetect: Callable[[np.ndarray], list[FaceBox]] | None = None) -> PreparedReference:
    """image_uint8 (H, W, 3); faces from the detector (None: no detector). no_face "error" or "whole_image" decides
    what happens without a face. user_mask (H, W) in [0, 1] replaces the face-box mask (and marks the face to crop
    around when none was detected). redetect, if given, re-runs the detector on the crop for the mask, as upstream."""
    mode = no_face.replace(" ", "_")
    if mode not in (NO_FACE_ERROR, NO_FACE_WHOLE):
        raise ValueError(f"no_face must be 'error' or 'whole image', got {no_face!r}")
    height, width = image_uint8.shape[:2]
    check_image_size(width, height)
    resolution_for(width, height, short_side)  # validate before any work
    if user_mask is not None:
        user_mask = np.asarray(user_mask, dtype=np.float32)
        if user_mask.shape != (height, width):
            raise ValueError(f"The mask is {user_mask.shape[-1]}×{user_mask.shape[0]} but the image is "
                             f"{width}×{height}: connect a mask of the same size as the image.")
    chosen = select_face(faces or [], face_index)
    face = chosen.box if chosen is not None else None
    if face is None and mode == NO_FACE_ERROR:
        raise ValueError(NO_DETECTOR_MESSAGE if faces is None else NO_FACE_MESSAGE)

    crop_box = None
    crop_around = face if face is not None else (mask_bounding_box(user_mask) if user_mask is not None else None)
    if crop and crop_around is not None:
        cx1, cy1, cx2, cy2 = expand_crop_box(crop_around, width, height, expand_ratio)
        if cx2 - cx1 < 2 or cy2 - cy1 < 2:
            logging.warning("Sonic: the face is too small to crop around (%s); using the whole picture.", crop_around)
        else:
            crop_box = (cx1, cy1, cx2, cy2)
            image_uint8 = image_uint8[cy1:cy2, cx1:cx2]
            height, width = image_uint8.shape[:2]
            if user_mask is not None:
                user_mask = user_mask[cy1:cy2, cx1:cx2]
            if face is not None:
                face = (face[0] - cx1, face[1] - cy1, face[2] - cx1, face[3] - cy1)
                if redetect is not None:  # upstream detects again on the cropped picture for the mask
                    again = redetect(np.ascontiguousarray(image_uint8))
                    best = max(again, key=lambda f: _iou(f.box, face), default=None)
                    if best is not None and _iou(best.box, face) > 0:
                        face = best.box

    new_w, new_h = resolution_for(width, height, short_side)
    pixels = resize_lanczos(np.ascontiguousarray(image_uint8), new_w, new_h)
    if user_mask is not None:
        mask_u8 = to_uint8(torch.tensor(user_mask)).numpy()
    elif face is not None:
        mask_u8 = face_mask_uint8(face, width, height)
    else:  # whole-image mode without a mask: the audio may drive the whole frame
        mask_u8 = np.full((height, width), 255, np.uint8)
    mask_u8 = resize_lanczos(mask_u8, new_w, new_h)
    image = torch.from_numpy(pixels.astype(np.float32) / 255)[None]
    mask = torch.from_numpy(mask_u8.astype(np.float32) / 255)[None, None]
    return PreparedReference(image=image, mask=mask, crop_box=crop_box, face=face, pixels=pixels)
