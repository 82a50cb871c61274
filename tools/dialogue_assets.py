#!/usr/bin/env python
"""Make the dialogue workflow's inputs from the shipped portrait and voice (nothing downloaded):

- assets/sonic_dialogue.png: the portrait beside its mirror image with other hair and shirt colours, 640×400;
- assets/sonic_dialogue_1.wav: speaker 1 says the first half of the voice;
- assets/sonic_dialogue_2.wav: speaker 2 is silent meanwhile, then says the second half a fourth higher.

    .venv/bin/python tools/dialogue_assets.py

with_face_masks gives the dialogue workflow the faces as masks, for runs without a face detector.
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SIZE = (640, 400)
# The portrait's face and the dialogue picture's two faces as (cx, cy, w, h) fractions of the picture (the face
# detector stand-in of the tests reports these).
PORTRAIT_FACE = (140, 200, 375, 440)
DIALOGUE_FACES = ((0.2515, 0.5, 0.2295, 0.375), (0.7485, 0.5, 0.2295, 0.375))


def recoloured(pixels: np.ndarray) -> np.ndarray:
    """Second speaker: blond hair, a red shirt."""
    out = pixels.copy()
    rgb = pixels.astype(int)
    hair = (abs(rgb[..., 0] - 75) < 30) & (abs(rgb[..., 1] - 48) < 25) & (abs(rgb[..., 2] - 30) < 25)
    shirt = (abs(rgb[..., 0] - 62) < 25) & (abs(rgb[..., 1] - 70) < 25) & (abs(rgb[..., 2] - 110) < 30)
    out[hair] = (196, 158, 72)
    out[shirt] = (128, 44, 48)
    return out


def dialogue_picture():
    from PIL import Image

    portrait = np.asarray(Image.open(ASSETS / "sonic_portrait.png").convert("RGB"))
    both = np.concatenate([portrait, recoloured(portrait[:, ::-1])], axis=1)
    return Image.fromarray(both).resize(SIZE, Image.LANCZOS)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as src:
        return np.frombuffer(src.readframes(src.getnframes()), "<i2").astype(np.float32), src.getframerate()


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes())


def dialogue_tracks() -> tuple[np.ndarray, np.ndarray, int]:
    from scipy.signal import resample_poly

    voice, rate = read_wav(ASSETS / "sonic_voice.wav")
    half = voice.size // 2
    first = voice[:half]
    second = resample_poly(voice[half:], 3, 4)  # played at the same rate: a fourth higher, a little faster
    return first, np.concatenate([np.zeros(half, np.float32), second]), rate


def main() -> None:
    dialogue_picture().save(ASSETS / "sonic_dialogue.png", optimize=True)
    first, second, rate = dialogue_tracks()
    write_wav(ASSETS / "sonic_dialogue_1.wav", first, rate)
    write_wav(ASSETS / "sonic_dialogue_2.wav", second, rate)


if __name__ == "__main__":
    main()


def with_face_masks(prompt: dict, faces: tuple = DIALOGUE_FACES, size: tuple[int, int] = SIZE) -> dict:
    """An API prompt whose Sonic Speakers nodes get one mask per face (core SolidMask + MaskComposite nodes), for
    runs without a face detector (the random weight sets): the masks stand where the dialogue picture's faces are."""
    width, height = size
    for node_id, node in list(prompt.items()):
        if node["class_type"] != "SonicSpeakers":
            continue
        blank = f"{node_id}_blank"
        prompt[blank] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": width, "height": height}}
        for track, (cx, cy, w, h) in enumerate(faces, start=1):
            face, mask = f"{node_id}_face_{track}", f"{node_id}_mask_{track}"
            prompt[face] = {"class_type": "SolidMask",
                            "inputs": {"value": 1.0, "width": round(w * width), "height": round(h * height)}}
            prompt[mask] = {"class_type": "MaskComposite",
                            "inputs": {"destination": [blank, 0], "source": [face, 0], "operation": "add",
                                       "x": round((cx - w / 2) * width), "y": round((cy - h / 2) * height)}}
            node["inputs"][f"mask_{track}"] = [mask, 0]
    return prompt
