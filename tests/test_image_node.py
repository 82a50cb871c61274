"""The "Sonic Reference Image" node in the real ComfyUI runtime, with stand-ins for core's VAE and CLIP vision and
for the face detector (plus one run through the scripted stand-in detector)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tools.comfy_runtime import import_pack

import_pack()
from comfy_api.latest import io  # noqa: E402
from sonic_pack.nodes.image import DETECTOR_MISSING, SonicReferenceImage  # noqa: E402
from sonic_pack.nodes.sonic_types import SonicImageEmbeds, SonicModels  # noqa: E402
from sonic_model.image.face_detect import FaceBox  # noqa: E402
from sonic_model.image.reference_image import expand_crop_box, face_mask_box  # noqa: E402
from test_face_detect import candidate, red_image, scripted_detector  # noqa: E402

NO_FACE = ("No face found in the reference image. Use a clearer frontal portrait, or set no_face to 'whole image' "
           "to animate the whole picture (optionally connect a mask).")


class FakeDetector:
    def __init__(self, faces: list[FaceBox]):
        self.faces = faces
        self.seen: list[np.ndarray] = []

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        self.seen.append(rgb)
        return list(self.faces) if len(self.seen) == 1 else []  # the crop's re-detection finds nothing


class FakeVAE:
    """core VAE.encode's contract: IMAGE (B, H, W, 3) in [0, 1] → unscaled latent (B, 4, H/8, W/8)."""

    def __init__(self):
        self.inputs: list[torch.Tensor] = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.inputs.append(image)
        assert image.ndim == 4 and image.shape[-1] == 3 and 0 <= image.min() and image.max() <= 1
        b, h, w, _ = image.shape
        return image.movedim(-1, 1)[:, :1].repeat(1, 4, 1, 1)[:, :, ::8, ::8] * 2 - 1


class FakeClipVision:
    """core ClipVisionModel.encode_image's contract: returns a dict-like with image_embeds (B, D)."""

    def __init__(self, image_size: int | None = None):
        if image_size is not None:
            self.image_size = image_size
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> dict:
        self.calls.append((image, crop))
        return {"image_embeds": image.mean(dim=(1, 2)).repeat(1, 4), "last_hidden_state": torch.zeros(1, 2, 3)}


def box(x1, y1, x2, y2, score=0.9) -> FaceBox:
    return FaceBox(float(x1), float(y1), float(x2), float(y2), score, np.zeros((5, 2)))


def models(detector) -> SonicModels:
    return SonicModels(audio2token=None, audio2bucket=None, face_detector=detector)


def image_tensor(h: int, w: int, channels: int = 3, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (batch, h, w, channels), generator=g).float() / 255)


def run(image, detector=None, vae=None, clip=None, resolution=512, crop=False, expand_ratio=0.5, no_face="error",
        face_index=-1, mask=None):
    vae = vae or FakeVAE()
    clip = clip or FakeClipVision()
    args = dict(sonic_model=models(detector), vae=vae, clip_vision=clip, image=image, resolution=resolution,
                crop=crop, expand_ratio=expand_ratio, no_face=no_face, face_index=face_index)
    if mask is not None:
        args["mask"] = mask
    out = SonicReferenceImage.execute(**args)
    assert isinstance(out, io.NodeOutput)
    return out.args


def test_schema_follows_the_pack_style():
    schema = SonicReferenceImage.GET_SCHEMA()
    assert schema.node_id == "SonicReferenceImage" and schema.display_name == "Sonic Reference Image"
    assert schema.category == "Sonic/conditioning"
    names = [i.id for i in schema.inputs]
    assert names == ["sonic_model", "vae", "clip_vision", "image", "resolution", "crop", "expand_ratio", "no_face",
                     "face_index", "mask"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    res = schema.inputs[4]
    assert (res.default, res.min, res.max, res.step) == (512, 64, 2048, 64)
    assert schema.inputs[7].options == ["error", "whole image"] and schema.inputs[9].optional
    assert [o.io_type for o in schema.outputs] == ["SONIC_IMAGE", "IMAGE", "MASK"]


def test_no_face_gives_the_message():
    with pytest.raises(ValueError) as e:
        run(image_tensor(300, 200), FakeDetector([]))
    assert str(e.value) == NO_FACE


def test_missing_detector_names_the_file():
    with pytest.raises(ValueError) as e:
        run(image_tensor(300, 200), None)
    assert str(e.value) == DETECTOR_MISSING and "yoloface_v5m.pt" in str(e.value) and "models/sonic" in str(e.value)
    embeds, _, mask = run(image_tensor(300, 200), None, no_face="whole image")  # whole image needs no detector
    assert mask.eq(1).all()


def test_whole_image_uses_the_full_frame_or_the_user_mask():
    img = image_tensor(300, 200)
    embeds, image, mask = run(img, FakeDetector([]), no_face="whole image")
    assert isinstance(embeds, SonicImageEmbeds)
    assert embeds.face_mask.shape == (1, 1, 768, 512) and embeds.face_mask.eq(1).all()
    assert mask.shape == (1, 768, 512) and image.shape == (1, 768, 512, 3)
    user = torch.zeros(1, 300, 200)
    user[0, 100:200, 50:150] = 1
    embeds, _, mask = run(img, FakeDetector([]), no_face="whole image", mask=user)
    assert mask[0, 384, 256] == 1 and mask[0, 10, 10] == 0 and mask[0, 700, 500] == 0
    assert embeds.crop_box is None and torch.equal(embeds.original[0], img[0])


def test_largest_face_drives_the_mask():
    faces = [box(10, 10, 60, 60, 0.99), box(200, 200, 400, 400, 0.9), box(420, 10, 500, 90, 0.8)]
    _, _, mask = run(image_tensor(512, 512), FakeDetector(faces))
    x1, y1, x2, y2 = face_mask_box(faces[1].box, 512, 512)
    expected = torch.zeros(512, 512)
    expected[y1:y2, x1:x2] = 1
    assert torch.equal(mask[0], expected)
    for index, chosen, rank in ((0, faces[0], 2), (2, faces[2], 1)):  # 0 is the detector's first, not the largest
        embeds, _, mask = run(image_tensor(512, 512), FakeDetector(faces), face_index=index)
        x1, y1, x2, y2 = face_mask_box(chosen.box, 512, 512)
        assert mask[0, y1:y2, x1:x2].eq(1).all() and mask.sum() == (x2 - x1) * (y2 - y1)
        assert embeds.report["face"] == rank  # the readout counts by size: 0 = the largest


def test_crop_box_and_mask_inside_the_crop():
    img = image_tensor(600, 1000)
    det = FakeDetector([box(400, 200, 500, 300)])
    embeds, image, mask = run(img, det, crop=True, expand_ratio=0.5)
    assert embeds.crop_box == expand_crop_box((400, 200, 500, 300), 1000, 600, 0.5) == (350, 150, 550, 350)
    assert len(det.seen) == 2 and det.seen[1].shape == (200, 200, 3)  # detected again on the crop, as upstream
    assert image.shape == (1, 512, 512, 3) and embeds.original.shape == (1, 600, 1000, 3)
    ys, xs = torch.nonzero(mask[0] > 0, as_tuple=True)
    # the face box (50..150 in the 200-px crop, ×1.1) scaled ×2.56, plus a few pixels of Lanczos spread
    assert 100 <= xs.min() and xs.max() <= 412 and 100 <= ys.min() and ys.max() <= 412
    assert mask[0, 256, 256] == 1


def test_rgba_and_batched_inputs(caplog):
    rgb = image_tensor(256, 256, 3)
    rgba = torch.cat([rgb, torch.rand(1, 256, 256, 1)], -1)
    faces = [box(64, 64, 192, 192)]
    vae = FakeVAE()
    ref, _, _ = run(rgb, FakeDetector(faces))
    got, image, _ = run(rgba, FakeDetector(faces), vae=vae)
    assert vae.inputs[0].shape == (1, 512, 512, 3)
    assert torch.equal(got.image, ref.image) and torch.equal(got.concat_latent, ref.concat_latent)
    batch = torch.cat([rgb, image_tensor(256, 256, 3, seed=5)])
    with caplog.at_level(logging.WARNING):
        got, _, _ = run(batch, FakeDetector(faces))
    assert "batch of 2; using the first image only" in caplog.text
    assert torch.equal(got.image, ref.image)
    grey = rgb[..., :1]
    got, _, _ = run(grey, FakeDetector(faces))
    assert torch.equal(got.image[..., 0], got.image[..., 2])
    with pytest.raises(ValueError, match="5 channels"):
        run(torch.rand(1, 256, 256, 5), FakeDetector(faces))


def test_tiny_image_is_refused():
    with pytest.raises(ValueError, match="50×80 pixels; Sonic needs at least 64 pixels"):
        run(image_tensor(80, 50), FakeDetector([box(10, 10, 40, 40)]))


def test_odd_sizes_give_multiples_of_64_and_matching_latents():
    for h, w, res in [(333, 517, 512), (101, 999, 256), (1001, 777, 384)]:
        vae = FakeVAE()
        embeds, image, mask = run(image_tensor(h, w), FakeDetector([box(w * 0.4, h * 0.4, w * 0.6, h * 0.6)]),
                                  vae=vae, resolution=res)
        _, oh, ow, _ = image.shape
        assert oh % 64 == 0 and ow % 64 == 0 and min(oh, ow) == res
        assert mask.shape == (1, oh, ow) and embeds.face_mask.shape == (1, 1, oh, ow)
        assert embeds.concat_latent.shape == (1, 4, oh // 8, ow // 8)


def test_clip_gets_exactly_224_squared_without_core_crop():
    clip = FakeClipVision()
    embeds, image, _ = run(image_tensor(300, 500), FakeDetector([box(200, 100, 300, 200)]), clip=clip)
    (pixels, crop), = clip.calls
    assert pixels.shape == (1, 224, 224, 3) and crop is False
    assert torch.equal(pixels * 255, (pixels * 255).round())  # 8-bit levels: core's rounding is then a no-op
    assert embeds.image_embeds.shape == (1, 12)
    small = FakeClipVision(image_size=32)  # a CLIP with another input size gets its own size
    run(image_tensor(300, 500), FakeDetector([box(200, 100, 300, 200)]), clip=small)
    assert small.calls[0][0].shape == (1, 32, 32, 3)


def test_with_the_scripted_detector(tmp_path):
    det = scripted_detector(tmp_path, [candidate(0.50, 0.45, 0.30, 0.35, obj=0.9),
                                       candidate(0.15, 0.15, 0.10, 0.10, obj=0.99)])
    rgb = torch.from_numpy(red_image(400, 600).astype(np.float32) / 255)[None]
    embeds, image, mask = run(rgb, det, crop=True)
    # largest face: centre (300, 180), 180×140 px; the expanded box is 360×280 → a 280-px square
    assert embeds.crop_box == expand_crop_box((210.0, 110.0, 390.0, 250.0), 600, 400, 0.5)
    assert image.shape == (1, 512, 512, 3) and mask[0, 256, 256] == 1
    blue = torch.zeros(1, 400, 600, 3)
    blue[..., 2] = 0.8
    with pytest.raises(ValueError, match="No face found"):
        run(blue, det)
