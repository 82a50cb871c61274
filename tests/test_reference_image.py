"""Reference image preparation: resolution rule, official square crop, face-box mask, Lanczos resizes, CLIP squash,
and the no-face / whole-image / user-mask behaviour."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sonic_model.image import reference_image
from sonic_model.image.face_detect import FaceBox
from sonic_model.image.reference_image import NO_FACE_MESSAGE, clip_pixels_224, expand_crop_box, face_mask, \
    face_mask_box, prepare_reference, resolution_for


def face(x1, y1, x2, y2, score=0.9) -> FaceBox:
    return FaceBox(float(x1), float(y1), float(x2), float(y2), score, np.zeros((5, 2)))


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def lanczos(array: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((w, h), Image.LANCZOS))


def test_resolution_rule():
    assert resolution_for(1024, 1536) == (512, 768)          # full body: no other crop
    assert resolution_for(640, 480) == (704, 512)            # 682.7 → 704
    assert resolution_for(544, 512) == (512, 512)            # 8.5 → 8: Python round, halves to even
    assert resolution_for(608, 512) == (640, 512)            # 9.5 → 10
    assert resolution_for(333, 777, 256) == (256, 576)       # 597.3 → 576
    assert resolution_for(100, 100, 64) == (64, 64)
    for bad in (0, 32, 63, 500, 513):
        with pytest.raises(ValueError, match="multiple of 64 and at least 64"):
            resolution_for(512, 512, bad)


def test_square_crop_official_rule():
    # centred face, room on every side
    assert expand_crop_box((400, 200, 500, 300), 1000, 600, 0.5) == (350, 150, 550, 350)
    # clamped at the top: expanded (50, 0, 350, 220), wide → square of 220 around the centre (no shift: centred)
    assert expand_crop_box((150, 20, 250, 120), 400, 800, 1.0) == (90, 0, 310, 220)
    # tall expanded box (50, 0, 250, 550): the square slides from the box centre 275 toward the face centre 250
    assert expand_crop_box((100, 100, 200, 400), 300, 1000, 0.5) == (50, 150, 250, 350)
    # slide limited to the expanded box: face at the very bottom of a tall box
    assert expand_crop_box((0, 900, 100, 1000), 100, 1000, 0.5) == (0, 900, 100, 1000)
    # Python round, halves to even: 100.5 → 100, 201.5 → 202
    assert expand_crop_box((100.5, 100.5, 201.5, 201.5), 1000, 1000, 0.0) == (100, 100, 202, 202)


def test_square_crop_stays_inside_and_holds_the_face():
    rng = np.random.default_rng(1)
    for _ in range(200):
        w, h = rng.integers(64, 2000, 2)
        fw, fh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
        x1, y1 = rng.uniform(0, w - fw), rng.uniform(0, h - fh)
        box = expand_crop_box((x1, y1, x1 + fw, y1 + fh), int(w), int(h), float(rng.uniform(0, 2)))
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
        assert abs((box[2] - box[0]) - (box[3] - box[1])) <= 1  # square up to rounding
        assert box[0] <= x1 + fw / 2 + 1 and box[2] >= x1 + fw / 2 - 1  # the face centre is inside


def test_face_mask_box_official_rule():
    # centre (60.0, 95.0) by floor division; half sides (100.6·1.1)//2 = 55, (149.5·1.1)//2 = 82; int() bounds
    assert face_mask_box((10.3, 20.7, 110.9, 170.2), 200, 200) == (5, 13, 115, 177)
    assert face_mask_box((0, 0, 50, 50), 60, 60) == (0, 0, 52, 52)           # clamped at 0
    assert face_mask_box((20, 30, 60, 60), 60, 60) == (18, 29, 60, 60)       # clamped at the size


def test_face_mask_is_lanczos_of_the_uint8_box():
    m = face_mask((10.3, 20.7, 110.9, 170.2), 200, 200)
    assert m.shape == (1, 1, 200, 200) and m.dtype == torch.float32
    assert m[0, 0, 13:177, 5:115].eq(1).all() and m.sum() == 110 * 164
    resized = face_mask((10.3, 20.7, 110.9, 170.2), 200, 300, out_size=(128, 192))
    u8 = np.zeros((300, 200), np.uint8)
    u8[13:177, 5:115] = 255
    assert resized.shape == (1, 1, 192, 128)
    assert torch.equal(resized[0, 0], torch.from_numpy(lanczos(u8, 128, 192).astype(np.float32) / 255))


def test_clip_input_is_a_224_lanczos_squash():
    img = picture(512, 768)
    pixels = clip_pixels_224(img)
    assert pixels.shape == (1, 224, 224, 3)
    assert torch.equal(pixels[0], torch.from_numpy(lanczos(img, 224, 224).astype(np.float32) / 255))
    assert clip_pixels_224(img, 32).shape == (1, 32, 32, 3)


def test_no_face_errors_or_falls_back_to_the_whole_image():
    img = picture(300, 200)
    with pytest.raises(ValueError) as e:
        prepare_reference(img, [], no_face="error")
    assert str(e.value) == NO_FACE_MESSAGE
    assert str(e.value) == ("No face found in the reference image. Use a clearer frontal portrait, or set no_face "
                            "to 'whole image' to animate the whole picture (optionally connect a mask).")
    with pytest.raises(ValueError, match="face detector file yoloface_v5m.pt is missing, so no face can be found"):
        prepare_reference(img, None, no_face="error")
    for faces in ([], None):
        for mode in ("whole image", "whole_image"):
            out = prepare_reference(img, faces, no_face=mode)
            assert out.image.shape == (1, 768, 512, 3) and out.mask.shape == (1, 1, 768, 512)
            assert out.mask.eq(1).all() and out.crop_box is None and out.face is None
    with pytest.raises(ValueError, match="no_face must be"):
        prepare_reference(img, [], no_face="skip")


def test_user_mask_replaces_the_face_box():
    img = picture(300, 200)
    user = np.zeros((300, 200), np.float32)
    user[50:120, 60:140] = 1.0
    for faces in ([], [face(0, 0, 40, 40)]):
        out = prepare_reference(img, faces, no_face="whole image", user_mask=user)
        expected = lanczos((user * 255).astype(np.uint8), 512, 768).astype(np.float32) / 255
        assert torch.equal(out.mask[0, 0], torch.from_numpy(expected))
    with pytest.raises(ValueError, match="mask is 100×300 but the image is 200×300"):
        prepare_reference(img, [], no_face="whole image", user_mask=user[:, :100])


def test_largest_face_is_used_for_the_mask():
    img = picture(512, 512)
    faces = [face(10, 10, 60, 60, 0.99), face(200, 200, 400, 400, 0.9), face(420, 10, 500, 90, 0.8)]
    out = prepare_reference(img, faces)
    assert out.face == (200.0, 200.0, 400.0, 400.0)
    u8 = np.zeros((512, 512), np.uint8)
    x1, y1, x2, y2 = face_mask_box(faces[1].box, 512, 512)
    u8[y1:y2, x1:x2] = 255
    assert torch.equal(out.mask[0, 0], torch.from_numpy(u8.astype(np.float32) / 255))  # 512²: no resize
    assert prepare_reference(img, faces, face_index=-1).face == faces[1].box
    assert prepare_reference(img, faces, face_index=0).face == faces[0].box  # the detector's first


def test_crop_box_and_mask_inside_the_crop():
    img = picture(600, 1000)
    f = face(400, 200, 500, 300)
    out = prepare_reference(img, [f], crop=True, expand_ratio=0.5)
    assert out.crop_box == (350, 150, 550, 350)
    assert out.face == (50.0, 50.0, 150.0, 150.0)  # in the crop's pixels
    assert out.image.shape == (1, 512, 512, 3)
    crop = img[150:350, 350:550]
    assert torch.equal(out.image[0], torch.from_numpy(lanczos(crop, 512, 512).astype(np.float32) / 255))
    u8 = np.zeros((200, 200), np.uint8)
    x1, y1, x2, y2 = face_mask_box((50, 50, 150, 150), 200, 200)
    u8[y1:y2, x1:x2] = 255
    assert torch.equal(out.mask[0, 0], torch.from_numpy(lanczos(u8, 512, 512).astype(np.float32) / 255))
    assert out.mask[0, 0, :100].max() < 0.05 and out.mask[0, 0, 256, 256] == 1  # face sits in the middle


def test_crop_redetects_on_the_cropped_picture_like_upstream():
    img = picture(600, 1000)
    seen = []

    def redetect(crop):
        seen.append(crop.shape)
        return [face(0, 0, 20, 20), face(52, 48, 149, 151)]  # a stray small box, and the same face, refined

    out = prepare_reference(img, [face(400, 200, 500, 300)], crop=True, redetect=redetect)
    assert seen == [(200, 200, 3)]
    assert out.face == (52.0, 48.0, 149.0, 151.0)
    # nothing overlapping found again: keep the translated box
    out = prepare_reference(img, [face(400, 200, 500, 300)], crop=True, redetect=lambda c: [face(0, 0, 20, 20)])
    assert out.face == (50.0, 50.0, 150.0, 150.0)


def test_whole_image_crop_follows_the_user_mask():
    img = picture(600, 1000)
    user = np.zeros((600, 1000), np.float32)
    user[200:300, 400:500] = 1
    out = prepare_reference(img, [], crop=True, no_face="whole image", user_mask=user)
    assert out.crop_box == (350, 150, 550, 350)
    assert out.mask.shape == (1, 1, 512, 512)
    # no face and no mask: nothing to crop around, the whole picture is used
    assert prepare_reference(img, [], crop=True, no_face="whole image").crop_box is None


def test_resize_only_when_the_size_changes():
    img = picture(768, 512)
    out = prepare_reference(img, [face(100, 100, 300, 300)])
    assert torch.equal(out.image[0], torch.from_numpy(img.astype(np.float32) / 255))
    assert out.pixels is img or np.array_equal(out.pixels, img)


def test_odd_sizes_become_multiples_of_64():
    for h, w in [(333, 517), (101, 999), (65, 64), (1001, 777)]:
        out = prepare_reference(picture(h, w), [], no_face="whole image", short_side=320)
        _, oh, ow, _ = out.image.shape
        assert oh % 64 == 0 and ow % 64 == 0 and min(oh, ow) in (320, 256, 384)
        assert out.mask.shape[-2:] == (oh, ow)


def test_tiny_image_is_refused():
    with pytest.raises(ValueError, match="63×100 pixels; Sonic needs at least 64 pixels"):
        prepare_reference(picture(100, 63), [], no_face="whole image")


def test_library_does_not_import_comfy():
    lines = Path(reference_image.__file__).read_text().splitlines()
    assert not [line for line in lines if line.startswith(("import ", "from ")) and "comfy" in line]
