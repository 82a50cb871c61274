"""Reliability, fuzz: hypothesis drives the Encode Audio and Reference Image nodes with audio of any length, sample
rate, channel count and batch, and pictures of any size, channel count and batch. Every input either works, with
outputs of the promised shape, or stops with one of our own messages, and only where that message is true.

The audio node runs on the random-weight models in the real file formats; the image node runs with the real face
detector wrapper around the stand-in detector, and stand-ins for core's VAE and CLIP vision (the full-size random
CLIP takes seconds per picture on a CPU; test_reliability_images runs it through ComfyUI)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

from reliability import case
from reliability_runtime import FACE_LARGE, portrait, write_detector
from sonic_fakes import prepared_node
from test_image_node import FakeClipVision, FakeVAE
from tools.comfy_runtime import import_pack

import_pack()
from sonic_pack.nodes import loaders  # noqa: E402
from sonic_pack.nodes.audio import SonicAudioEncode  # noqa: E402
from sonic_pack.nodes.image import SonicReferenceImage  # noqa: E402
from sonic_pack.nodes.sonic_types import SonicModels  # noqa: E402
from sonic_model.image.face_detect import FaceDetector  # noqa: E402

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STANDARD_RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000]


@pytest.fixture(scope="module")
def sonic_models(tiny_models_dir):
    sonic = tiny_models_dir / "sonic"
    return loaders.load_sonic_models(sonic / "unet.pth", sonic / "audio2token.pth", sonic / "audio2bucket.pth",
                                     sonic / "whisper-tiny", None, None, dtype=torch.float32, low_vram=False)[0]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = tmp_path_factory.mktemp("detector") / "yoloface_v5m.pt"
    write_detector(path)
    return FaceDetector.from_file(path, device="cpu")


audio_inputs = st.fixed_dictionaries({
    "rate": st.one_of(st.sampled_from(STANDARD_RATES), st.integers(4000, 200_000), st.integers(1, 4000)),
    "seconds": st.integers(0, 9).flatmap(lambda k: st.just(0.0) if k == 9 else
                                         st.floats(0.001, 0.2) if k >= 7 else st.floats(0.2, 3.0)),
    "channels": st.integers(1, 8),
    "batch": st.sampled_from([1] * 7 + [2]),
    "signal": st.sampled_from(["tone", "silence", "loud noise"]),
})


@case("Fuzz", "Audio length, sample rate, channels, batch",
      "Hypothesis (80 examples: 0–3 s, 1 Hz–200 kHz, 1–8 channels, batches): every clip gives ≈ 12.5 frames per "
      "second, or our message for an empty clip, a clip under one frame, or a batch.")
@FUZZ
@given(audio=audio_inputs)
def test_fuzz_audio_encode(sonic_models, audio):
    rate, channels, batch = audio["rate"], audio["channels"], audio["batch"]
    samples = int(audio["seconds"] * rate)
    g = torch.Generator().manual_seed(samples + rate)
    t = torch.arange(samples) / rate
    wave = {"tone": 0.3 * torch.sin(2 * torch.pi * 220 * t).expand(batch, channels, -1),
            "silence": torch.zeros(batch, channels, samples),
            "loud noise": 1e4 * torch.randn(batch, channels, samples, generator=g)}[audio["signal"]]
    seconds = samples / rate
    try:
        node = prepared_node(SonicAudioEncode, "3")  # as ComfyUI runs it: with its node id
        output = node.execute(sonic_model=sonic_models, audio={"waveform": wave, "sample_rate": rate})
    except ValueError as error:
        message = str(error)
        if batch > 1:
            event("refused: a batch")
            assert "Pick one clip" in message
        elif samples == 0:
            event("refused: empty")
            assert message == "the audio is empty (0 samples): connect an audio clip with sound in it"
        else:
            event("refused: under one frame")
            assert "shorter than one video frame (80 ms)" in message and seconds < 0.09, (message, seconds)
        return
    event("encoded")
    assert batch == 1 and seconds >= 0.079, f"{seconds:.3f} s in a batch of {batch} should have been refused"
    embeds, trimmed, frames, fps = output.args
    assert frames == embeds.num_frames >= 1 and fps == 12.5
    assert abs(frames - seconds * 12.5) <= 1.01, (frames, seconds)
    assert embeds.tokens.shape[0] == frames and torch.isfinite(embeds.tokens).all()
    assert trimmed["sample_rate"] == rate and trimmed["waveform"].shape[:2] == (1, min(channels, 2))  # 5.1 → stereo
    assert trimmed["waveform"].shape[-1] == min(samples, round(frames * rate / 12.5))


side = st.integers(0, 5).flatmap(lambda k: st.integers(1, 80) if k == 5 else st.integers(64, 700))  # 1 in 6 small
image_inputs = st.fixed_dictionaries({
    "width": side,
    "height": side,
    "channels": st.sampled_from([1, 2, 3, 4]),
    "batch": st.sampled_from([1] * 4 + [2]),
    "face": st.booleans(),
    "no_face": st.sampled_from(["error", "whole image"]),
    "crop": st.booleans(),
    "resolution": st.sampled_from([64, 128, 192]),
})


def _picture(width: int, height: int, channels: int, batch: int, face: bool) -> torch.Tensor:
    pixels = np.asarray(portrait(width, height, (FACE_LARGE,) if face else ()), np.float32) / 255
    image = torch.from_numpy(pixels)
    if channels in (1, 2):
        image = image.mean(-1, keepdim=True)  # grey: no red, so no face
    if channels in (2, 4):
        image = torch.cat([image, torch.ones_like(image[..., :1])], dim=-1)
    return image[None].repeat(batch, 1, 1, 1)


@case("Fuzz", "Image size, channels, batch, face, settings",
      "Hypothesis (80 examples: 1–700 px sides, 1–4 channels, batches, with and without a face, crop on/off): every "
      "picture gives a prepared image and mask with sides multiples of 64, or our message for a picture under 64 px "
      "or one without a face.")
@FUZZ
@given(picture=image_inputs)
def test_fuzz_reference_image(detector, picture):
    width, height, channels = picture["width"], picture["height"], picture["channels"]
    image = _picture(width, height, channels, picture["batch"], picture["face"])
    face_visible = picture["face"] and channels >= 3
    models = SonicModels(audio2token=None, audio2bucket=None, face_detector=detector)
    try:
        output = SonicReferenceImage.execute(sonic_model=models, vae=FakeVAE(), clip_vision=FakeClipVision(),
                                             image=image, resolution=picture["resolution"], crop=picture["crop"],
                                             expand_ratio=0.5, no_face=picture["no_face"], face_index=-1)
    except ValueError as error:
        message = str(error)
        if min(width, height) < 64:
            event("refused: under 64 px")
            assert message.endswith("Sonic needs at least 64 pixels on each side. Use a larger picture.")
        else:
            event("refused: no face")
            assert message.startswith("No face found in the reference image.")
            assert picture["no_face"] == "error" and not face_visible, (message, picture)
        return
    event("prepared, face found" if face_visible else "prepared, whole image")
    assert min(width, height) >= 64
    embeds, prepared, mask = output.args
    _, h, w, c = prepared.shape
    assert c == 3 and h % 64 == 0 and w % 64 == 0 and min(h, w) >= picture["resolution"] - 32
    assert mask.shape == (1, h, w) and 0 <= float(mask.min()) and float(mask.max()) <= 1
    if face_visible:
        red = (prepared[0, ..., 0] > 0.6) & (prepared[0, ..., 2] < 0.4)
        assert bool(red[mask[0] > 0.5].float().mean() > 0.5), "the mask must sit on the face"
    assert embeds.concat_latent.shape[-2:] == (h // 8, w // 8)
