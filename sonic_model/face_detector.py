"""The official face detector, `yoloface_v5m.pt` (a TorchScript YOLOv5m-face), and picking the face to animate.

The scripted model takes the RGB image in [0, 1] (sides rounded up to multiples of 32) and one (1, 1, ny, nx, 2)
cell grid per stride 8/16/32, and returns candidates (1, K, 16): centre x, centre y, width, height (input pixels),
objectness, 5 landmarks (x, y), class score. Scores are objectness × class; candidates above 0.5 go through NMS
at IoU 0.45 (no box merging), as the official wrapper does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INPUT_SHORT_SIDE = 416
STRIDES = (8, 16, 32)
CONFIDENCE = 0.5
NMS_IOU = 0.45


@dataclass
class FaceBox:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    landmarks: np.ndarray  # (5, 2) in original pixels

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)


def detector_input_size(height: int, width: int) -> tuple[int, int]:
    """The official rule: scale the short side to 416, round each side up to a multiple of 32 on its own."""
    r = INPUT_SHORT_SIDE / min(height, width)
    return int(height * r + 31) // 32 * 32, int(width * r + 31) // 32 * 32


def cell_grids(height: int, width: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    grids = []
    for stride in STRIDES:
        ny, nx = height // stride, width // stride
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grids.append(torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float().to(device))
    return grids


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    try:
        from torchvision.ops import nms

        return nms(boxes, scores, iou)
    except (ImportError, RuntimeError):  # torchvision missing or without its compiled ops: same greedy rule
        order = scores.argsort(descending=True)
        keep = []
        while order.numel():
            i = order[0]
            keep.append(int(i))
            if order.numel() == 1:
                break
            rest = order[1:]
            lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
            rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
            inter = (rb - lt).clamp(min=0).prod(1)
            area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
            overlap = inter / (area(boxes[i]) + area(boxes[rest]) - inter)
            order = rest[overlap <= iou]
        return torch.tensor(keep, dtype=torch.long)


def decode_predictions(pred: torch.Tensor, scale_x: float, scale_y: float) -> list[FaceBox]:
    """(1, K, 16) raw candidates → faces in original pixels, best score first."""
    p = pred[0].float()
    p = p[p[:, 4] > CONFIDENCE]
    if not len(p):
        return []
    score = p[:, 4] * p[:, 15]
    p, score = p[score > CONFIDENCE], score[score > CONFIDENCE]
    if not len(p):
        return []
    cx, cy, w, h = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    keep = _nms(boxes, score, NMS_IOU)
    faces = []
    for i in keep.tolist():
        x1, y1, x2, y2 = boxes[i].tolist()
        marks = p[i, 5:15].reshape(5, 2).numpy() * np.array([[scale_x, scale_y]])
        faces.append(FaceBox(x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y, float(score[i]), marks))
    return sorted(faces, key=lambda f: -f.score)


def select_face(faces: list[FaceBox], index: int = -1) -> FaceBox | None:
    """The largest face (the official selection compares against a maximum it never updates), or the face at
    `index` counting from the largest."""
    if not faces:
        return None
    by_area = sorted(faces, key=lambda f: -f.area)
    if index < 0:
        return by_area[0]
    if index >= len(by_area):
        raise ValueError(f"face_index {index} asked for, but only {len(by_area)} face(s) were found "
                         f"(0 = largest; -1 = largest).")
    return by_area[index]


class FaceDetector:
    def __init__(self, model: torch.jit.ScriptModule, device: torch.device | str = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> "FaceDetector":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"face detector {path} not found: put yoloface_v5m.pt in {path.parent}")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # a state dict, a pickle or a broken download is not a TorchScript archive
            raise ValueError(f"{path} is not the TorchScript face detector yoloface_v5m.pt ({type(e).__name__}); "
                             "download yoloface_v5m.pt from LeonJoe13/Sonic again") from None
        return cls(model.to(device), device)

    @torch.no_grad()
    def detect(self, image: np.ndarray | torch.Tensor) -> list[FaceBox]:
        """image: (H, W, 3) RGB, uint8 or float in [0, 1]. Faces in its pixels, best score first."""
        rgb = torch.as_tensor(np.asarray(image))
        rgb = rgb.float() / 255 if rgb.dtype == torch.uint8 else rgb.float()
        h0, w0 = rgb.shape[:2]
        h1, w1 = detector_input_size(h0, w0)
        x = rgb.permute(2, 0, 1)[None].to(self.device)
        # Bilinear like cv2.INTER_LINEAR (half-pixel centres, no antialias); matches it for upscaling.
        x = F.interpolate(x, size=(h1, w1), mode="bilinear", align_corners=False, antialias=False)
        pred = self.model(x, cell_grids(h1, w1, self.device)).cpu()
        return decode_predictions(pred, w0 / w1, h0 / h1)
