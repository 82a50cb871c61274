"""The official face detector `yoloface_v5m.pt` (a TorchScript YOLOv5m-face) and the choice of face to animate.

Call interface of the scripted model: `model(x, grids)` with x the RGB image (1, 3, h1, w1) in [0, 1] and grids one
(1, 1, h1/s, w1/s, 2) tensor of cell (x, y) indices per stride s = 8, 16, 32. It returns the decoded candidates
(1, K, 16) in input pixels: centre x, centre y, width, height, objectness, 5 landmarks as (x, y) pairs, class score.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..pixels import to_uint8

INPUT_SHORT_SIDE = 416
STRIDES = (8, 16, 32)
CONF_THRESHOLD = 0.5
NMS_IOU = 0.45


@dataclass
class FaceBox:
    """One detected face in the pixels of the image given to `detect`."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    landmarks: np.ndarray  # (5, 2): eyes, nose, mouth corners as (x, y)

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def detector_input_size(height: int, width: int) -> tuple[int, int]:
    """(h1, w1): short side scaled to 416, then each side rounded up to a multiple of 32 on its own (official)."""
    r = INPUT_SHORT_SIDE / min(height, width)
    return int(height * r + 31) // 32 * 32, int(width * r + 31) // 32 * 32


def make_grids(height: int, width: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The per-stride cell grids the scripted model adds to its offsets: (1, 1, ny, nx, 2), last axis (x, y)."""
    grids = []
    for stride in STRIDES:
        ny, nx = height // stride, width // stride
        ys, xs = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grids.append(torch.stack((xs, ys), 2).view(1, 1, ny, nx, 2).float().to(device))
    return grids


def to_uint8_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 RGB from uint8 or [0, 1] float input (the official reads an 8-bit file)."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"face detection needs an (H, W, 3) RGB image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = to_uint8(torch.from_numpy(array.astype(np.float32))).numpy()
    return array


def preprocess(rgb_uint8: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 3, h1, w1) in [0, 1]. Bilinear with half-pixel centres and no antialias is what cv2.INTER_LINEAR does
    (exactly so for upscales); cv2 works on uint8 and rounds, so round to 8-bit levels likewise."""
    h0, w0 = rgb_uint8.shape[:2]
    h1, w1 = detector_input_size(h0, w0)
    x = torch.from_numpy(np.ascontiguousarray(rgb_uint8)).to(device).permute(2, 0, 1)[None].float()
    if (h1, w1) != (h0, w0):
        x = F.interpolate(x, size=(h1, w1), mode="bilinear", align_corners=False, antialias=False)
        x = x.round().clamp(0, 255)
    return x / 255


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices kept by greedy NMS, best score first (torchvision's when it is usable)."""
    try:
        from torchvision.ops import nms as tv_nms

        return tv_nms(boxes, scores, iou)
    except (ImportError, RuntimeError):  # no torchvision, or one built without its C++ ops
        pass
    order = scores.argsort(descending=True)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.numel():
        i, rest = order[0], order[1:]
        keep.append(int(i))
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return torch.tensor(keep, dtype=torch.long)


def decode_predictions(pred: torch.Tensor, input_hw: tuple[int, int], original_hw: tuple[int, int],
                       conf: float = CONF_THRESHOLD, iou: float = NMS_IOU) -> list[FaceBox]:
    """Raw (1, K, 16) candidates → faces in original pixels, best score first (official filtering: objectness >
    conf, then objectness·class > conf, NMS at `iou` in input pixels, no box merging)."""
    p = pred[0].detach().float().cpu()
    p = p[p[:, 4] > conf]
    score = p[:, 4] * p[:, 15]
    p, score = p[score > conf], score[score > conf]
    if not len(p):
        return []
    half = p[:, 2:4] / 2
    boxes = torch.cat([p[:, :2] - half, p[:, :2] + half], 1)
    keep = nms(boxes, score, iou)
    sx, sy = original_hw[1] / input_hw[1], original_hw[0] / input_hw[0]
    faces = []
    for i in keep.tolist():
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        marks = p[i, 5:15].double().numpy().reshape(5, 2) * np.array([[sx, sy]])
        faces.append(FaceBox(x1 * sx, y1 * sy, x2 * sx, y2 * sy, float(score[i]), marks))
    return faces


def faces_by_size(faces: list[FaceBox]) -> list[FaceBox]:
    """Largest box area first; stable, so equal areas keep the detector's order (the better score first)."""
    return sorted(faces, key=lambda f: -f.area)


def select_face(faces: list[FaceBox], index: int | None = None) -> FaceBox | None:
    """With `index` None or −1 the largest face by box area (the official code meant this but never updates its
    running maximum); with `index` ≥ 0 the face at that place in the detector's order (most confident first).
    None when there is no face."""
    if not faces:
        return None
    if index is None or index < 0:
        return faces_by_size(faces)[0]
    if index >= len(faces):
        raise ValueError(f"face_index is {index} but only {len(faces)} face(s) were found "
                         f"(-1 = the largest, 0 = the detector's first, 1 = its second, …).")
    return faces[index]


def is_torchscript_archive(path: str | Path) -> bool:
    """TorchScript archives are zips with code/ and constants.pkl; a torch.save state dict has neither."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") or n.startswith("code/") or "/code/" in n for n in names)


class FaceDetector:
    """The scripted YOLOv5m-face with the official pre- and post-processing."""

    def __init__(self, model: torch.jit.ScriptModule, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._grids: tuple[tuple[int, int], list[torch.Tensor]] | None = None

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> "FaceDetector":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Face detector file {path} not found: it should be yoloface_v5m.pt, the "
                                    "TorchScript YOLOv5m-face from LeonJoe13/Sonic.")
        # Refuse anything else before loading: torch.jit.load runs no pickled code, but its errors are cryptic.
        if not is_torchscript_archive(path):
            raise ValueError(f"{path} is not a TorchScript model: the face detector must be yoloface_v5m.pt, the "
                             "TorchScript YOLOv5m-face from LeonJoe13/Sonic (a state dict or pickle cannot be "
                             "used). Download it again.")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # damaged archive
            raise ValueError(f"{path} could not be loaded as the TorchScript face detector yoloface_v5m.pt "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                             "Download it again.") from e
        return cls(model, device)

    def grids(self, height: int, width: int) -> list[torch.Tensor]:
        if self._grids is None or self._grids[0] != (height, width):
            self._grids = ((height, width), make_grids(height, width, self.device))
        return self._grids[1]

    @torch.no_grad()
    def detect(self, image: np.ndarray | torch.Tensor) -> list[FaceBox]:
        """Faces in an (H, W, 3) RGB image (uint8, or float in [0, 1]), in its pixels, best score first."""
        rgb = to_uint8_rgb(image)
        x = preprocess(rgb, self.device)
        pred = self.model(x, self.grids(x.shape[2], x.shape[3]))
        return decode_predictions(pred, (x.shape[2], x.shape[3]), rgb.shape[:2])
