"""Several speakers in one picture: two faces with two tracks move independently, each is pasted into its own box,
the rest of the picture is the original's bit for bit, overlaps go to the nearer face, the tracks are mixed, and the
errors name the fix. Tiny random models from fixed seeds, 64-px crops, 2 steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reliability_runtime import RedRegionYolo, UseFolders, make_folders, portrait
from tools.comfy_runtime import import_pack

import_pack()
from sonic_pack.nodes.loader_settings import LoaderSettings  # noqa: E402
from sonic_pack.nodes.loaders import SonicLoader  # noqa: E402
from sonic_pack.nodes.speakers import prepare_speakers, sample_speakers, speakers_paste  # noqa: E402
from sonic_model.video.paste_back import face_owners, paste_back, paste_faces  # noqa: E402
from sonic_model.speakers.speakers import mix_tracks  # noqa: E402
from sonic_model.video.video_pipeline import frame_batches  # noqa: E402

# Two faces side by side, (cx, cy, w, h) fractions of a 320×160 picture: 64-px faces, 128-px crops that do not meet.
TWO_FACES = ((0.25, 0.5, 0.2, 0.4), (0.75, 0.5, 0.2, 0.4))
PICTURE = (320, 160)
SECONDS = 0.48  # 6 frames


def tone(freq: float, seconds: float = SECONDS, rate: int = 16000, channels: int = 1, start: float = 0.0) -> dict:
    """An AUDIO of a sine from `start` seconds on, silent before."""
    t = torch.arange(round(seconds * rate)) / rate
    wave = 0.3 * torch.sin(2 * math.pi * freq * t) * (t >= start)
    return {"waveform": wave.repeat(channels, 1)[None], "sample_rate": rate}


class RememberedClip:
    """Core's CLIP vision, each distinct picture encoded once: the random ViT-H takes seconds on a CPU, and these
    tests prepare the same two crops again with other tracks."""

    def __init__(self, clip):
        self.clip, self.image_size, self.seen = clip, clip.image_size, {}

    def encode_image(self, pixels: torch.Tensor, crop: bool = True) -> dict:
        key = (pixels.numpy().tobytes(), crop)
        if key not in self.seen:
            self.seen[key] = self.clip.encode_image(pixels, crop=crop)
        return self.seen[key]


@pytest.fixture(scope="module")
def loaded(tiny_models_dir, tmp_path_factory):
    """The tiny models through the loader, with a stand-in detector that knows the two faces; the picture."""
    folders = make_folders(tmp_path_factory.mktemp("comfy"), tiny_models_dir)
    torch.jit.save(torch.jit.script(RedRegionYolo(torch.tensor(TWO_FACES))), str(folders.sonic / "yoloface_v5m.pt"))
    picture = np.asarray(portrait(*PICTURE, TWO_FACES)).astype(np.float32) / 255
    with UseFolders(folders):
        models, vae, clip, model = SonicLoader.execute(
            "svd_xt_random.safetensors", "unet.pth", "audio2token.pth", "audio2bucket.pth", "whisper-tiny",
            "yoloface_v5m.pt", "RIFE/flownet.pkl", LoaderSettings(dtype="fp32", low_vram="off")).result
    return models, vae, RememberedClip(clip), model, torch.from_numpy(picture)[None]


def _speakers(loaded, tracks, masks=None, **settings):
    models, vae, clip, _, picture = loaded
    return prepare_speakers(models, vae, clip, picture, tracks, masks or [None] * len(tracks), resolution=64,
                            **settings)


def _sampled(loaded, tracks):
    bundle = _speakers(loaded, tracks)[0]
    return sample_speakers(loaded[3], bundle, seed=3, steps=2, cfg_image=2.0, cfg_audio=7.5, shift=1, window=4,
                           sampler_name="euler", scheduler="karras", denoise=1.0)


@pytest.fixture(scope="module")
def dialogue(loaded):
    """Two faces sampled, one with a 220 Hz track, the other with 660 Hz."""
    return _sampled(loaded, [tone(220), tone(660)])


def test_each_face_moves_with_its_own_track_only(loaded, dialogue):
    first = dialogue.speakers
    other_two = _sampled(loaded, [tone(220), tone(990, start=0.2)]).speakers
    other_one = _sampled(loaded, [tone(300, start=0.1), tone(660)]).speakers
    assert torch.equal(first[0].latents, other_two[0].latents)
    assert not torch.equal(first[1].latents, other_two[1].latents)
    assert torch.equal(first[1].latents, other_one[1].latents)
    assert not torch.equal(first[0].latents, other_one[0].latents)
    # The two faces' frames change differently over time.
    motion = [s.latents[1:] - s.latents[:-1] for s in first]
    assert not torch.allclose(motion[0], motion[1])


def test_faces_are_sampled_in_turn_on_one_progress_bar_and_cancel_stops_them(loaded):
    import comfy.model_management as mm
    import comfy.utils

    bundle, events = _speakers(loaded, [tone(220), tone(660)])[0], []

    def hook(value, total, preview, node_id=None):
        events.append((value, total))
        mm.throw_exception_if_processing_interrupted()

    def sample():
        return sample_speakers(loaded[3], bundle, seed=3, steps=2, cfg_image=2.0, cfg_audio=7.5, shift=1, window=4,
                               sampler_name="euler", scheduler="karras", denoise=1.0)

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        sample()
        values, totals = [v for v, _ in events], {t for _, t in events}
        assert values == sorted(values) and totals == {values[-1]} and values[-1] % 2 == 0
        assert values[-1] // 2 in values  # the first face ends half-way
        events.clear()
        mm.interrupt_current_processing(True)
        with pytest.raises(mm.InterruptProcessingException):
            sample()
        assert len(events) <= 1  # stopped at its first window: the second face never starts
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


def test_each_face_is_pasted_into_its_own_box_and_the_rest_is_the_original(loaded, dialogue):
    vae, picture, bundle = loaded[1], loaded[4], dialogue
    left, right = (s.crop_box for s in bundle.speakers)
    assert left[2] <= right[0], (left, right)  # side by side, as the faces are
    paste = speakers_paste(bundle, feather=4)

    decoded = {}

    def decode(latents):  # each chunk decoded once: the full-size random VAE is slow on a CPU
        key = latents.numpy().tobytes()
        if key not in decoded:
            with torch.no_grad():
                decoded[key] = vae.decode(latents).float()
        return decoded[key]

    def decoded_in_chunks(latents):  # the temporal decoder mixes the frames of one chunk
        return torch.cat([decode(latents[i:i + 4]) for i in range(0, latents.shape[0], 4)])

    frames = torch.cat(list(frame_batches([s.latents for s in bundle.speakers], decode, 4, None, paste)))
    assert frames.shape == (6, PICTURE[1], PICTURE[0], 3)
    outside = torch.ones(PICTURE[1], PICTURE[0], dtype=torch.bool)
    for speaker, box in zip(bundle.speakers, (left, right)):
        x1, y1, x2, y2 = box
        outside[y1:y2, x1:x2] = False
        alone = paste_back(decoded_in_chunks(speaker.latents), picture, box, 4)
        assert torch.equal(frames[:, y1:y2, x1:x2], alone[:, y1:y2, x1:x2])
        assert not torch.equal(frames[:, y1:y2, x1:x2], picture.expand(6, -1, -1, -1)[:, y1:y2, x1:x2])
    assert torch.equal(frames[:, outside], picture.expand(6, -1, -1, -1)[:, outside])


def test_overlapping_boxes_go_to_the_nearer_face_centre():
    original = torch.rand(1, 40, 60, 3)
    boxes = [(0, 0, 36, 40), (24, 0, 60, 40)]  # overlap on columns 24–35
    centres = [(14.0, 20.0), (40.0, 20.0)]  # the overlap's left half is nearer face 0
    owners = face_owners(boxes, centres, (40, 60))
    faces = [torch.zeros(2, 16, 16, 3), torch.rand(2, 16, 16, 3)]
    out = paste_faces(faces, original, boxes, owners, feather=0)
    assert torch.equal(out[:, :, :27], torch.zeros(2, 40, 27, 3))  # pixel centres x + 0.5 ≤ 27: nearer (14, 20)
    assert torch.equal(out[:, :, 27:], paste_back(faces[1], original, boxes[1], 0)[:, :, 27:])
    # A pixel in no box is the original's.
    owners = face_owners([(0, 0, 10, 10), (5, 5, 20, 20)], [(5.0, 5.0), (12.5, 12.5)], (40, 60))
    out = paste_faces(faces, original, [(0, 0, 10, 10), (5, 5, 20, 20)], owners, feather=2)
    assert torch.equal(out[:, 20:], original[:, 20:].expand(2, -1, -1, -1))
    assert torch.equal(out[:, :, 20:], original[:, :, 20:].expand(2, -1, -1, -1))


def test_tracks_mix_at_the_highest_rate_and_never_clip():
    mono = tone(220, 0.5, 16000)["waveform"]
    stereo = tone(440, 0.25, 22050, channels=2)["waveform"] * 3
    mix, rate = mix_tracks([(mono, 16000), (stereo, 22050)])
    assert rate == 22050 and mix.shape == (2, round(0.5 * 22050))
    assert float(mix.abs().max()) == pytest.approx(1.0)
    quiet, _ = mix_tracks([(mono, 16000), (mono * 0.5, 16000)])
    assert torch.allclose(quiet[0], mono[0, 0] * 1.5)  # no clipping: summed as they are


def test_the_speakers_node_pairs_tracks_with_faces_and_mixes_to_the_frames(loaded):
    bundle, mixed, preview, readout = _speakers(loaded, [tone(220, 0.24), tone(660, SECONDS)], faces="1, 0")
    assert readout == {"faces": 2, "frames": 6, "tracks": [{"track": 1, "face": 1}, {"track": 2, "face": 0}]}
    assert bundle.speakers[0].face[0] > bundle.speakers[1].face[0]  # track 1 drives the right-hand face
    assert all(s.audio.num_frames == 6 and s.motion.buckets.shape == (6, 2) for s in bundle.speakers)
    assert mixed["waveform"].shape[-1] == 6 * 16000 / 12.5
    assert preview.shape == (1, PICTURE[1], PICTURE[0], 3)


def test_a_mask_replaces_detection_for_its_speaker(loaded):
    mask = torch.zeros(1, PICTURE[1], PICTURE[0])
    mask[:, 48:112, 208:272] = 1.0  # painted over the right-hand face (so the crop, and its CLIP embedding, repeat)
    bundle, _, _, readout = _speakers(loaded, [tone(220), tone(660)], masks=[None, mask])
    assert readout["tracks"] == [{"track": 1, "face": 0}, {"track": 2, "face": "mask"}]
    assert bundle.speakers[1].face == (208.0, 48.0, 272.0, 112.0)


def test_errors_name_the_fix(loaded):
    with pytest.raises(ValueError, match="3 audio track\\(s\\) need a face each, but the face detector found 2 in "
                                         "the picture. Connect a mask"):
        _speakers(loaded, [tone(220), tone(330), tone(440)])
    with pytest.raises(ValueError, match="faces asks for face 2, but the detector found faces 0–1"):
        _speakers(loaded, [tone(220), tone(330)], faces="0, 2")
    with pytest.raises(ValueError, match="mask_2 is 32×32 but the image is 320×160"):
        _speakers(loaded, [tone(220), tone(330)], masks=[None, torch.ones(1, 32, 32)])


def test_without_a_detector_every_speaker_needs_a_mask():
    from types import SimpleNamespace

    from sonic_pack.nodes.image import DETECTOR_MISSING
    from sonic_pack.nodes.speakers import speaker_faces

    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError) as e:
        speaker_faces(SimpleNamespace(face_detector=None), rgb, [None, None], "left to right", "auto")
    message = str(e.value)
    assert message.startswith(DETECTOR_MISSING.split(". Add it")[0]) and "models/sonic" in message
    assert message.endswith("Add it, or connect a mask for every speaker.")
