"""Face detector wrapper: the official pre/post-processing around a stand-in TorchScript model with the same call
interface and output layout as yoloface_v5m.pt, box decoding into original pixels, filtering, NMS, face choice."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from sonic_model.image import face_detect
from sonic_model.image.face_detect import FaceBox, FaceDetector, decode_predictions, detector_input_size, make_grids, \
    nms, preprocess, select_face

# Columns that scale with the input width / height: cx, w, and the 5 landmark x; cy, h, and the 5 landmark y.
_X_COLS = [0, 2, 5, 7, 9, 11, 13]
_Y_COLS = [1, 3, 6, 8, 10, 12, 14]


class StandInYolo(torch.nn.Module):
    """Same interface as the official scripted model: forward(x (1,3,h,w) RGB in [0,1], grids) -> (1, K, 16).

    Returns fixed candidates given as fractions of the input size. It checks the grids (shape and (x, y) order) and
    the input range, and only 'sees' faces in a picture redder than it is blue, so a BGR input would find none."""

    def __init__(self, candidates: torch.Tensor):
        super().__init__()
        scale_x = torch.zeros(16)
        scale_x[_X_COLS] = 1.0
        scale_y = torch.zeros(16)
        scale_y[_Y_COLS] = 1.0
        self.register_buffer("candidates", candidates.float())
        self.register_buffer("scale_x", scale_x)
        self.register_buffer("scale_y", scale_y)

    def forward(self, x: torch.Tensor, grids: List[torch.Tensor]) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        strides = [8, 16, 32]
        assert len(grids) == 3, "three grids expected"
        for i in range(3):
            s = strides[i]
            assert list(grids[i].shape) == [1, 1, h // s, w // s, 2], "grid shape"
            assert float(grids[i][0, 0, 0, 1, 0]) == 1.0 and float(grids[i][0, 0, 1, 0, 1]) == 1.0, "grid (x, y)"
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0, "input in [0, 1]"
        factor = self.scale_x * w + self.scale_y * h + (1.0 - self.scale_x - self.scale_y)
        pred = self.candidates * factor
        seen = (x[:, 0].mean() > x[:, 2].mean()).float()
        pred[:, 4] = pred[:, 4] * seen
        return pred[None]


def candidate(cx: float, cy: float, w: float, h: float, obj: float = 0.9, cls: float = 0.95) -> list[float]:
    """One row in input-size fractions; landmarks at the box centre, spread a little."""
    marks = [cx - w / 4, cy - h / 6, cx + w / 4, cy - h / 6, cx, cy, cx - w / 5, cy + h / 4, cx + w / 5, cy + h / 4]
    return [cx, cy, w, h, obj, *marks, cls]


def scripted_detector(tmp_path: Path, rows: list[list[float]], name: str = "yoloface_v5m.pt") -> FaceDetector:
    """Save a stand-in as TorchScript and load it through FaceDetector.from_file, as the loader does."""
    path = tmp_path / name
    torch.jit.save(torch.jit.script(StandInYolo(torch.tensor(rows))), str(path))
    return FaceDetector.from_file(path, device="cpu")


def red_image(h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200
    img[..., 1] = np.arange(w, dtype=np.uint8)[None, :] % 97
    return img


def official_max_face(faces: list[FaceBox]) -> FaceBox:
    """The official selection, bug included: the running maximum keeps the first (best-score) face's area."""
    best = 0
    max_area = faces[0].area
    for i in range(1, len(faces)):
        if faces[i].area > max_area:
            best = i
    return faces[best]


def test_input_size_rule():
    assert detector_input_size(300, 500) == (416, 704)
    assert detector_input_size(720, 1280) == (416, 768)
    assert detector_input_size(1000, 1000) == (416, 416)
    assert detector_input_size(417, 300) == (608, 416)  # each side rounded up on its own


def test_grids_layout():
    grids = make_grids(64, 96)
    assert [tuple(g.shape) for g in grids] == [(1, 1, 8, 12, 2), (1, 1, 4, 6, 2), (1, 1, 2, 3, 2)]
    assert grids[0][0, 0, 3, 5].tolist() == [5.0, 3.0]  # (x, y) at row 3, column 5


def _bilinear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """cv2.INTER_LINEAR's sampling: half-pixel centres, borders clamped, no antialias (float, per channel)."""
    h, w = img.shape[:2]

    def axis(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    a = img.astype(np.float64)
    top = a[y0][:, x0] * (1 - fx)[None, :, None] + a[y0][:, x1] * fx[None, :, None]
    bot = a[y1][:, x0] * (1 - fx)[None, :, None] + a[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


@pytest.mark.parametrize("shape", [(13, 21), (700, 500)])  # upscale and downscale
def test_preprocess_is_cv2_style_bilinear_rounded_to_uint8(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    x = preprocess(img)
    h1, w1 = detector_input_size(*shape)
    assert x.shape == (1, 3, h1, w1)
    expected = np.round(_bilinear_reference(img, h1, w1)) / 255
    got = x[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() <= 1 / 255 + 1e-6  # at most one 8-bit level (float rounding at .5)
    assert np.mean(np.abs(got - expected) > 1e-6) < 1e-2  # ties at .5 round either way in float32
    assert np.allclose(got * 255, np.round(got * 255), atol=1e-4)  # 8-bit levels, as cv2 on uint8 gives


def test_boxes_come_back_in_original_pixels_for_non_square_images(tmp_path):
    rows = [candidate(0.30, 0.40, 0.20, 0.30, obj=0.95), candidate(0.75, 0.55, 0.10, 0.20, obj=0.8)]
    det = scripted_detector(tmp_path, rows)
    for h, w in [(300, 500), (640, 360), (417, 300)]:
        faces = det.detect(red_image(h, w))
        assert len(faces) == 2
        assert faces[0].score > faces[1].score  # best score first
        for face, row in zip(faces, rows):
            cx, cy, bw, bh = row[:4]
            expected = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            assert np.allclose(face.box, expected, atol=1e-3)
            marks = np.array(row[5:15]).reshape(5, 2) * [w, h]
            assert face.landmarks.shape == (5, 2) and np.allclose(face.landmarks, marks, atol=1e-3)
            assert face.score == pytest.approx(row[4] * row[15], abs=1e-6)


def test_float_and_tensor_images_are_accepted(tmp_path):
    det = scripted_detector(tmp_path, [candidate(0.5, 0.5, 0.3, 0.3)])
    img = red_image(120, 90)
    as_float = torch.from_numpy(img.astype(np.float32) / 255)
    assert det.detect(as_float)[0].box == pytest.approx(det.detect(img)[0].box)


def test_confidence_filtering():
    rows = torch.tensor([
        candidate(0.2, 0.2, 0.1, 0.1, obj=0.45, cls=1.0),   # objectness below 0.5
        candidate(0.5, 0.2, 0.1, 0.1, obj=0.9, cls=0.5),    # 0.9·0.5 = 0.45
        candidate(0.8, 0.2, 0.1, 0.1, obj=0.5, cls=1.0),    # exactly 0.5 is not > 0.5
        candidate(0.2, 0.8, 0.1, 0.1, obj=0.7, cls=0.8),    # 0.56: kept
    ]) * torch.tensor([100.0] * 4 + [1.0] + [100.0] * 10 + [1.0])
    faces = decode_predictions(rows[None], (100, 100), (100, 100))
    assert len(faces) == 1
    assert faces[0].score == pytest.approx(0.56)
    assert faces[0].box == pytest.approx((15.0, 75.0, 25.0, 85.0))


def _rows_px(*rows):
    return torch.tensor([list(r) for r in rows], dtype=torch.float32)[None]


def test_nms_keeps_the_better_of_overlapping_boxes_only():
    # boxes of 100×100: a shift of 20 px gives IoU 0.667 (suppressed), 40 px gives IoU 0.43 (kept)
    a = candidate(100, 100, 100, 100, obj=0.9, cls=1.0)
    b = candidate(120, 100, 100, 100, obj=0.95, cls=1.0)
    c = candidate(160, 100, 100, 100, obj=0.8, cls=1.0)
    faces = decode_predictions(_rows_px(a, b, c), (400, 400), (400, 400))
    assert [round(f.score, 3) for f in faces] == [0.95, 0.8]
    assert faces[0].box == pytest.approx((70.0, 50.0, 170.0, 150.0))
    # IoU just below 0.45 keeps both
    d = candidate(100 + 38, 100, 100, 100, obj=0.7, cls=1.0)  # IoU 62/138 = 0.449
    assert len(decode_predictions(_rows_px(a, d), (400, 400), (400, 400))) == 2


def test_nms_fallback_matches_torchvision(monkeypatch):
    import torchvision.ops

    g = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=g) * 200
    wh = 10 + torch.rand(60, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(60, generator=g)
    expected = torchvision.ops.nms(boxes, scores, 0.45)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ ops")

    monkeypatch.setattr(torchvision.ops, "nms", broken)
    assert torch.equal(nms(boxes, scores, 0.45), expected)
    assert len(expected) < 60  # the case has overlaps to suppress


def test_largest_face_wins_where_the_official_selection_does_not(tmp_path):
    # By score: A (small), B (largest), C (middle). The official loop never raises its maximum above A's area,
    # so it returns C, the last face larger than A.
    rows = [candidate(0.15, 0.2, 0.10, 0.10, obj=0.99),
            candidate(0.50, 0.5, 0.30, 0.30, obj=0.90),
            candidate(0.85, 0.8, 0.20, 0.20, obj=0.80)]
    faces = scripted_detector(tmp_path, rows).detect(red_image(400, 600))
    assert [round(f.score, 3) for f in faces] == [round(0.99 * 0.95, 3), round(0.9 * 0.95, 3), round(0.8 * 0.95, 3)]
    largest = select_face(faces)
    assert largest is faces[1]
    assert official_max_face(faces) is faces[2]  # what upstream would have animated
    assert select_face(faces, -1) is faces[1]  # only −1 means the largest
    assert [select_face(faces, i) for i in range(3)] == faces  # 0, 1, 2: the detector's order
    with pytest.raises(ValueError, match=r"face_index is 3 but only 3 face\(s\) were found \(-1 = the largest, 0 = "):
        select_face(faces, 3)


def test_no_face_gives_an_empty_list(tmp_path):
    det = scripted_detector(tmp_path, [candidate(0.5, 0.5, 0.3, 0.3)])
    blue = np.zeros((200, 300, 3), np.uint8)
    blue[..., 2] = 200
    assert det.detect(blue) == []
    assert select_face([]) is None
    # the stand-in sees faces only in the RGB order: a red picture fed as BGR would be blue to it
    assert det.detect(red_image(200, 300)) and det.detect(red_image(200, 300)[..., ::-1].copy()) == []


def test_grids_are_cached_per_input_size(tmp_path):
    det = scripted_detector(tmp_path, [candidate(0.5, 0.5, 0.3, 0.3)])
    det.detect(red_image(100, 100))
    first = det.grids(416, 416)
    assert det.grids(416, 416) is first
    det.detect(red_image(100, 200))
    assert det.grids(416, 832) is not first


def test_refuses_files_that_are_not_torchscript(tmp_path):
    state_dict = tmp_path / "state_dict.pt"
    torch.save({"model.0.conv.weight": torch.zeros(2, 3)}, state_dict)
    with pytest.raises(ValueError, match=r"state_dict\.pt is not a TorchScript model.*yoloface_v5m\.pt"):
        FaceDetector.from_file(state_dict)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match=r"legacy\.pt is not a TorchScript model"):
        FaceDetector.from_file(legacy)
    with pytest.raises(FileNotFoundError, match="missing.pt not found.*yoloface_v5m.pt"):
        FaceDetector.from_file(tmp_path / "missing.pt")


def test_damaged_torchscript_archive_gives_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(StandInYolo(torch.tensor([candidate(0.5, 0.5, 0.3, 0.3)]))), str(good))
    import zipfile

    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("data.pkl"):
                dst.writestr(item, src.read(item))
    with pytest.raises(ValueError, match=r"broken\.pt could not be loaded as the TorchScript face detector"):
        FaceDetector.from_file(broken)


def test_no_comfy_or_cv2_import():
    imports = [line for line in Path(face_detect.__file__).read_text().splitlines()
               if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "comfy" in line or "cv2" in line]
