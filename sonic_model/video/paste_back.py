"""Put generated face-crop frames back into the full original picture.

The official `--crop` mode writes only the square crop (upstream #39, "uncropped output"). Here each frame is resized
to the crop box and blended in with a linear feather just inside the box edge; every pixel outside the box is the
original's, bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

Box = Sequence[int]  # (x1, y1, x2, y2) in the original's pixels, x2/y2 exclusive (slice bounds)


def feather_mask(box: Box, image_hw: tuple[int, int], feather: int) -> torch.Tensor:
    """Blend weight (bh, bw) of the generated pixels over the whole box: 1 inside, a linear ramp over `feather`
    pixels along each box edge that lies inside the image (edges on or beyond the image border are not feathered:
    there is nothing outside to blend with). The outermost ramp pixel weighs 1/(feather+1)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    height, width = image_hw
    bh, bw = y2 - y1, x2 - x1
    if feather <= 0:
        return torch.ones(bh, bw)
    inf = float("inf")
    cols = torch.arange(bw, dtype=torch.float32)
    rows = torch.arange(bh, dtype=torch.float32)
    # Distance (in pixels, 0 at the box's outermost row/column) to the nearest feathered edge.
    left = cols if x1 > 0 else torch.full_like(cols, inf)
    right = (bw - 1 - cols) if x2 < width else torch.full_like(cols, inf)
    top = rows if y1 > 0 else torch.full_like(rows, inf)
    bottom = (bh - 1 - rows) if y2 < height else torch.full_like(rows, inf)
    dist = torch.minimum(torch.minimum(left, right)[None, :], torch.minimum(top, bottom)[:, None])
    return ((dist + 1) / (feather + 1)).clamp(max=1.0)


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n,H,W,3) → (n,height,width,3), bicubic with antialiasing when shrinking, clamped to [0,1]."""
    if tuple(frames.shape[1:3]) == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp_(0, 1).permute(0, 2, 3, 1)


def paste_back(frames: torch.Tensor, original: torch.Tensor, box: Box, feather: int = 16) -> torch.Tensor:
    """Composite frames (n,H,W,3) into the original (H0,W0,3) or (1,H0,W0,3) at `box` → (n,H0,W0,3) float32.

    The box may reach past the image (only its visible part is written). Pixels outside the box are copied from
    the original unchanged.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (n,H,W,3), got {tuple(frames.shape)}")
    if original.dim() == 4:
        if original.shape[0] != 1:
            raise ValueError(f"expected one original image, got a batch of {original.shape[0]}")
        original = original[0]
    if original.dim() != 3 or original.shape[-1] < 3:
        raise ValueError(f"expected the original image (H0,W0,3), got {tuple(original.shape)}")
    original = original[..., :3].float().cpu()
    x1, y1, x2, y2 = (int(v) for v in box)
    height, width = original.shape[:2]
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty crop box {tuple(box)}")
    out = original.unsqueeze(0).repeat(frames.shape[0], 1, 1, 1)
    # Visible part of the box, and where it sits inside the box.
    vx1, vy1, vx2, vy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if vx2 <= vx1 or vy2 <= vy1:
        return out  # box entirely outside the picture
    generated = resize_frames(frames.float().cpu(), y2 - y1, x2 - x1)
    generated = generated[:, vy1 - y1:vy2 - y1, vx1 - x1:vx2 - x1]
    weight = feather_mask((x1, y1, x2, y2), (height, width), feather)[vy1 - y1:vy2 - y1, vx1 - x1:vx2 - x1, None]
    below = out[:, vy1:vy2, vx1:vx2]
    # Weight 1 gives the generated value exactly (1·g + 0·o), so the box interior is not resampled twice.
    out[:, vy1:vy2, vx1:vx2] = weight * generated + (1 - weight) * below
    return out


def face_owners(boxes: Sequence[Box], centres: Sequence[tuple[float, float]],
                image_hw: tuple[int, int]) -> torch.Tensor:
    """(H0, W0) long: which face each pixel belongs to, −1 outside every box. Where boxes overlap, the face whose
    centre is nearer owns the pixel, so one face's still copy inside another's crop never covers the animated face."""
    height, width = image_hw
    ys = torch.arange(height, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float64)[None, :] + 0.5
    owners = torch.full((height, width), -1, dtype=torch.long)
    nearest = torch.full((height, width), float("inf"), dtype=torch.float64)
    for index, (box, (cx, cy)) in enumerate(zip(boxes, centres)):
        x1, y1, x2, y2 = (int(v) for v in box)
        inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
        distance = (xs - cx) ** 2 + (ys - cy) ** 2
        take = inside & (distance < nearest)
        owners[take] = index
        nearest[take] = distance[take]
    return owners


def paste_faces(frames: Sequence[torch.Tensor], original: torch.Tensor, boxes: Sequence[Box],
                owners: torch.Tensor, feather: int = 16) -> torch.Tensor:
    """Several faces' frames (each (n,H,W,3)) pasted into one copy of the original → (n,H0,W0,3) float32. Each face
    is pasted with paste_back and keeps only the pixels `owners` (face_owners) gives it; every other pixel is the
    original's, bit for bit."""
    if not frames:
        raise ValueError("no faces to paste")
    still = original[0] if original.dim() == 4 else original
    out = still[..., :3].float().cpu().unsqueeze(0).repeat(frames[0].shape[0], 1, 1, 1)
    for index, (face_frames, box) in enumerate(zip(frames, boxes)):
        mine = owners == index
        out[:, mine] = paste_back(face_frames, original, box, feather)[:, mine]
    return out
