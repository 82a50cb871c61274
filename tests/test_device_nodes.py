"""The pack's nodes after sampling, on the stand-in accelerator (tests/stand_in_device.py) as on a GPU box: Reference
Image with the face detector and core's VAE and CLIP vision, Sonic Decode, RIFE, paste-back, and the streaming
Decode + Save Video, run by the real ComfyUI. Latents come from core's VAE Encode of the prepared reference, so no
sampler is involved."""
from __future__ import annotations

import pytest

from comfy_server import write_short_wav
from reliability_runtime import FACE_LARGE, VOICE, UseFolders, loader, make_folders, portrait, run_prompt, \
    video_frames
from stand_in_device import device_ops

pytestmark = pytest.mark.device

FRAMES = 4
PICTURE = (320, 256)  # width, height of the original picture; paste-back returns frames of this size


@pytest.fixture
def folders(tiny_models_dir, tmp_path):
    folders = make_folders(tmp_path / "comfy", tiny_models_dir)
    portrait(*PICTURE, (FACE_LARGE,)).save(folders.input / "portrait.png")
    write_short_wav(VOICE, folders.input / "voice.wav", FRAMES / 12.5)
    return folders


def _prepared_latents() -> dict:
    """Loader, picture → Sonic Reference Image (detector, crop), its VAE latent repeated as FRAMES frames."""
    return {"1": loader(),
            "2": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}},
            "3": {"class_type": "SonicReferenceImage",
                  "inputs": {"sonic_model": ["1", 0], "vae": ["1", 1], "clip_vision": ["1", 2], "image": ["2", 0],
                             "resolution": 64, "crop": True, "expand_ratio": 0.5, "no_face": "error",
                             "face_index": -1}},
            "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 1], "vae": ["1", 1]}},
            "5": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["4", 0], "amount": FRAMES}}}


def _ran_on_the_device() -> None:
    # The VAE decoder and RIFE convolve on the device; RIFE warps there (grid_sampler); the face crop was resized.
    assert device_ops["conv2d"] > 0 and device_ops["grid_sampler"] > 0, device_ops.most_common(12)


def test_reference_image_decode_rife_paste_back_nodes(stand_in_gpu, folders):
    prompt = {**_prepared_latents(),
              "6": {"class_type": "SonicDecode", "inputs": {"vae": ["1", 1], "latent": ["5", 0], "chunk_size": 3}},
              "7": {"class_type": "SonicInterpolate", "inputs": {"sonic_model": ["1", 0], "images": ["6", 0],
                                                                 "batch_size": 2}},
              "8": {"class_type": "SonicPasteBack", "inputs": {"images": ["7", 0], "image": ["3", 0], "feather": 8}},
              "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}
    with UseFolders(folders):
        outputs = run_prompt(prompt)
    report = outputs["3"]["sonic_image"][0]
    assert report["faces"] == 1 and report["crop"] is True, report
    assert len(outputs["9"]["images"]) == 2 * FRAMES - 1  # RIFE: a new frame between each pair
    _ran_on_the_device()


def test_streaming_save_decodes_interpolates_pastes_and_writes(stand_in_gpu, folders):
    prompt = {**_prepared_latents(),
              "6": {"class_type": "LoadAudio", "inputs": {"audio": "voice.wav"}},
              "7": {"class_type": "SonicSaveVideo",
                    "inputs": {"vae": ["1", 1], "latent": ["5", 0], "sonic_model": ["1", 0], "image": ["3", 0],
                               "audio": ["6", 0], "interpolate": True, "paste_back": True, "feather": 8,
                               "decode_chunk_size": 3, "filename_prefix": "sonic/device", "crf": 18}}}
    with UseFolders(folders):
        run_prompt(prompt)
        videos = [p for p in folders.output_files() if p.suffix == ".mp4"]
        assert len(videos) == 1, folders.output_files()
        frames = video_frames(videos[0])
    assert frames.shape[0] == 2 * FRAMES  # RIFE ×2 with the last frame held, as the node promises
    assert frames.shape[1:3] == (PICTURE[1], PICTURE[0])  # pasted back into the whole picture
    _ran_on_the_device()
