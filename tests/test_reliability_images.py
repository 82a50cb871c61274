"""Reliability, images: every kind of picture users connect to Sonic Reference Image, run in the real ComfyUI
runtime (core's LoadImage / Join Image with Alpha / Image Batch feeding the node) on random weights, with a stand-in
face detector that finds the faces painted red."""
from __future__ import annotations

import logging
import sys

import numpy as np
import torch
from PIL import Image

from reliability import case
from reliability_runtime import FACE_AT_BORDER, FACE_LARGE, FACE_SMALL, assert_comfy_keeps_running, image_prompt, \
    load_image, node_outputs, portrait, preview, run_error
from tools.comfy_runtime import import_pack

import_pack()
import nodes  # noqa: E402  (core's)
from sonic_pack.nodes.image import first_rgb_uint8  # noqa: E402

pytest_plugins = ["reliability_fixtures"]


def _save(comfy, name: str, image: Image.Image) -> str:
    image.save(comfy.input / name)
    return name


def _run(comfy, name: str, **settings) -> dict:
    return node_outputs(image_prompt({"2": load_image(name)}, ["2", 0], **settings))


def _refused(comfy, name: str, **settings) -> str:
    """The node's message for a picture it must refuse, after checking ComfyUI reports it as the node's error."""
    error = run_error(image_prompt({"2": load_image(name)}, ["2", 0], **settings))
    assert error["node_type"] == "SonicReferenceImage" and error["exception_type"] == "ValueError"
    return error["exception_message"]


def spy_on_images(monkeypatch) -> list[tuple]:
    """Record the IMAGE shapes reaching the node as ComfyUI loaded it (the pack module under ComfyUI's name)."""
    module = sys.modules[nodes.NODE_CLASS_MAPPINGS["SonicReferenceImage"].__module__]
    seen, original = [], module.first_rgb_uint8

    def recording(image):
        seen.append(tuple(image.shape))
        return original(image)

    monkeypatch.setattr(module, "first_rgb_uint8", recording)
    return seen


def _mask_centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask > 127)
    return xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]


@case("Images", "No face found",
      "no_face = error (default): the node stops with \"No face found ... set no_face to 'whole image'\"; ComfyUI "
      "keeps running. no_face = whole image: the whole picture is animated (mask covers the frame).")
def test_image_no_face(comfy):
    name = _save(comfy, "no_face.png", portrait(320, 256))
    message = _refused(comfy, name)
    assert message.startswith("No face found") and "set no_face to 'whole image'" in message
    assert_comfy_keeps_running(comfy)
    outputs = _run(comfy, name, no_face="whole image")
    assert outputs["20"]["sonic_image"][0]["faces"] == 0
    assert preview(outputs, "21").shape == (64, 64 * 5 // 4 // 64 * 64, 3)
    assert preview(outputs, "22").min() == 255  # the audio drives the whole frame


@case("Images", "Several faces",
      "The largest face drives the face mask (and the crop), and the node's readout says \"2 faces found: animating "
      "the largest\"; face_index 0, 1 … picks a face in the detector's order and the readout says which by size.")
def test_image_several_faces_largest_wins(comfy):
    name = _save(comfy, "group.png", portrait(600, 400, (FACE_SMALL, FACE_LARGE)))
    outputs = _run(comfy, name, resolution=128)
    assert outputs["20"]["sonic_image"] == [{"batch": 1, "faces": 2, "face": 0, "size": [192, 128], "crop": False}]
    mask = preview(outputs, "22")
    assert mask.shape == (128, 192)
    cx, cy = _mask_centre(mask)
    assert abs(cx - FACE_LARGE[0]) < 0.03 and abs(cy - FACE_LARGE[1]) < 0.03
    small = mask[:int(0.2 * 128), :int(0.2 * 192)]
    assert small.max() == 0, "the small face must not be in the mask"
    ranks = []
    for index in (0, 1):  # the detector's order (its scores tie here): between them, both faces
        prompt = image_prompt({"2": load_image(name)}, ["2", 0], resolution=128)
        prompt["20"]["inputs"]["face_index"] = index
        outputs = node_outputs(prompt)
        ranks.append(outputs["20"]["sonic_image"][0]["face"])  # by size: 0 = the largest
        cx, cy = _mask_centre(preview(outputs, "22"))
        expected = (FACE_LARGE, FACE_SMALL)[ranks[-1]]
        assert abs(cx - expected[0]) < 0.03 and abs(cy - expected[1]) < 0.03
    assert sorted(ranks) == [0, 1]


@case("Images", "Face at the border",
      "A face touching the picture's edge is found and its mask reaches the edge; crop = on gives a square crop "
      "inside the picture, with the face at its edge and the mask on the face.")
def test_image_face_at_border(comfy):
    name = _save(comfy, "border.png", portrait(640, 384, (FACE_AT_BORDER,)))
    outputs = _run(comfy, name, resolution=128)
    mask = preview(outputs, "22")
    assert mask.shape == (128, 213 // 64 * 64) and mask[:, -1].max() == 255  # reaches the right edge
    cropped = _run(comfy, name, resolution=128, crop=True)
    image, mask = preview(cropped, "21"), preview(cropped, "22")
    assert image.shape == (128, 128, 3)
    red = (image[..., 0] > 150) & (image[..., 2] < 90)
    assert red[:, -1].any() and red.sum() > 0.1 * red.size  # the face sits at the crop's right edge, whole
    assert red[mask > 127].mean() > 0.9  # the mask sits on the face


@case("Images", "Tiny image (< 64 px)",
      "Refused before any model runs: \"The reference image is 48×40 pixels; Sonic needs at least 64 pixels on each "
      "side. Use a larger picture.\"")
def test_image_tiny(comfy):
    name = _save(comfy, "tiny.png", portrait(48, 40))
    assert _refused(comfy, name) == ("The reference image is 48×40 pixels; Sonic needs at least 64 pixels on each "
                                     "side. Use a larger picture.")
    assert_comfy_keeps_running(comfy)


@case("Images", "Huge image (> 4K)",
      "A 4608×3072 photo is read, its face found, and it is resized down to 192×128 at resolution 128 (short side "
      "= resolution, sides multiples of 64); the face mask lands on the face.")
def test_image_huge(comfy):
    name = _save(comfy, "huge.png", portrait(4608, 3072, (FACE_LARGE,)))
    mask = preview(_run(comfy, name, resolution=128), "22")
    assert mask.shape == (128, 192)
    cx, cy = _mask_centre(mask)
    assert abs(cx - 0.5) < 0.03 and abs(cy - 0.5) < 0.03


@case("Images", "Odd sizes (not multiples of 64)",
      "517×333 becomes 192×128 at resolution 128: each side rounded to a multiple of 64, aspect kept; the latent and "
      "mask match that size.")
def test_image_odd_size(comfy):
    name = _save(comfy, "odd.png", portrait(517, 333, (FACE_LARGE,)))
    outputs = _run(comfy, name, resolution=128)
    assert preview(outputs, "21").shape == (128, 192, 3)
    assert preview(outputs, "22").shape == (128, 192)


@case("Images", "RGBA image",
      "The alpha channel is dropped (a 4-channel IMAGE from Join Image with Alpha gives the same result as the "
      "RGB picture).")
def test_image_rgba(comfy, monkeypatch):
    rgb = _save(comfy, "rgba_base.png", portrait(320, 256, (FACE_LARGE,)))
    prompt = image_prompt({"2": load_image(rgb),
                           "3": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 320, "height": 256}},
                           "4": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["2", 0], "alpha": ["3", 0]}}},
                          ["4", 0])
    seen = spy_on_images(monkeypatch)
    with_alpha = node_outputs(prompt)
    assert seen == [(1, 256, 320, 4)]
    plain = _run(comfy, rgb)
    assert np.array_equal(preview(with_alpha, "21"), preview(plain, "21"))
    assert np.array_equal(preview(with_alpha, "22"), preview(plain, "22"))


@case("Images", "Greyscale image",
      "A greyscale file (LoadImage) or a 1-channel IMAGE is expanded to grey RGB and animated.")
def test_image_greyscale(comfy):
    name = _save(comfy, "grey.png", portrait(320, 256, (FACE_LARGE,), mode="L"))
    outputs = _run(comfy, name, no_face="whole image")  # grey has no red, so the stand-in detector finds no face
    image = preview(outputs, "21").astype(int)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    one_channel = torch.rand(1, 70, 90, 1)
    rgb = first_rgb_uint8(one_channel)
    assert rgb.shape == (70, 90, 3) and (rgb[..., 0] == rgb[..., 2]).all()


@case("Images", "Batched IMAGE (batch > 1)",
      "The first image is used, and the node's readout and the log say so; the result equals connecting the first "
      "image alone.")
def test_image_batched(comfy, caplog, monkeypatch):
    first = _save(comfy, "batch_first.png", portrait(320, 256, (FACE_LARGE,)))
    second = _save(comfy, "batch_second.png", portrait(320, 256, (FACE_SMALL,)))
    prompt = image_prompt({"2": load_image(first), "3": load_image(second),
                           "4": {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["3", 0]}}},
                          ["4", 0])
    seen = spy_on_images(monkeypatch)
    with caplog.at_level(logging.WARNING):
        batched = node_outputs(prompt)
    assert seen == [(2, 256, 320, 3)]
    assert "batch of 2; using the first image only" in caplog.text
    assert batched["20"]["sonic_image"][0]["batch"] == 2  # the node's readout says so too
    alone = _run(comfy, first)
    assert np.array_equal(preview(batched, "21"), preview(alone, "21"))
    assert np.array_equal(preview(batched, "22"), preview(alone, "22"))
