"""Several speakers in one picture: which face each audio track drives, the tracks padded to one length for
Whisper, the tracks mixed into the video's sound, and a preview of the chosen faces. Pure numpy/PIL/torch."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..audio.audio_clip import stereo_clip
from ..audio.audio_resample import resample
from ..audio.whisper_features import AudioFeatures
from ..image.face_detect import FaceBox, faces_by_size
from ..image.reference_image import mask_bounding_box

LEFT_TO_RIGHT = "left to right"
LARGEST_FIRST = "largest first"
FACE_ORDERS = [LEFT_TO_RIGHT, LARGEST_FIRST]
Box = tuple[float, float, float, float]
BOX_COLOURS = [(255, 214, 0), (0, 200, 255), (255, 80, 200), (120, 255, 90)]


def ordered_faces(faces: Sequence[FaceBox], order: str) -> list[FaceBox]:
    """The detector's faces numbered as the user sees them: by the left edge, or by size."""
    if order == LEFT_TO_RIGHT:
        return sorted(faces, key=lambda f: (f.x1, f.y1))
    if order == LARGEST_FIRST:
        return faces_by_size(list(faces))
    raise ValueError(f"Unknown face_order '{order}': pick one of {', '.join(FACE_ORDERS)}.")


def parse_face_indices(text: str, count: int) -> list[int]:
    """"0, 2" → [0, 2]; empty → the first `count` faces. One index per track that has no mask."""
    text = (text or "").strip()
    if not text:
        return list(range(count))
    try:
        indices = [int(part) for part in text.replace(";", ",").replace(" ", ",").split(",") if part]
    except ValueError:
        raise ValueError(f"faces must be face numbers separated by commas (e.g. \"0, 1\"), got {text!r}.") from None
    if len(indices) != count:
        raise ValueError(f"faces lists {len(indices)} face number(s) but {count} track(s) have no mask: give one "
                         "number per such track, in track order (or leave it empty for the first faces).")
    if len(set(indices)) != len(indices):
        raise ValueError(f"faces lists the same face twice ({text!r}): each face can speak one track only.")
    return indices


def choose_faces(faces: Sequence[FaceBox], order: str, text: str, count: int) -> list[FaceBox]:
    """The face each unmasked track drives, with messages that name the fix."""
    ordered = ordered_faces(faces, order)
    indices = parse_face_indices(text, count)
    if not (text or "").strip() and len(ordered) < count:
        raise ValueError(f"{count} audio track(s) need a face each, but the face detector found {len(ordered)} in "
                         "the picture. Connect a mask for each speaker it misses (mask_1 … mask_4), or pick the "
                         "found faces for some tracks with `faces`.")
    for index in indices:
        if not 0 <= index < len(ordered):
            found = f"faces 0–{len(ordered) - 1}" if ordered else "no face"
            raise ValueError(f"faces asks for face {index}, but the detector found {found} ({order}). Use one of "
                             "those numbers, or connect a mask for that speaker.")
    return [ordered[index] for index in indices]


def box_centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def seconds_of(audio: dict) -> float:
    return audio["waveform"].shape[-1] / float(audio["sample_rate"])


def padded_track(audio: dict, seconds: float) -> dict:
    """An AUDIO with zeros appended up to `seconds` at its own rate: silence drives the face as Sonic drives it."""
    waveform = audio["waveform"]
    missing = round(seconds * float(audio["sample_rate"])) - waveform.shape[-1]
    if missing <= 0:
        return audio
    padding = torch.zeros(*waveform.shape[:-1], missing, dtype=waveform.dtype, device=waveform.device)
    return {**audio, "waveform": torch.cat([waveform, padding], dim=-1)}


def features_cut(features: AudioFeatures, frames: int) -> AudioFeatures:
    """The first `frames` frames of the conditioning (tracks at other rates may pad to one frame more)."""
    if features.num_frames == frames:
        return features
    if features.num_frames < frames:
        raise ValueError(f"A padded track gave {features.num_frames} frames, fewer than {frames}.")
    return dataclasses.replace(features, tokens=features.tokens[:frames],
                               bucket_windows=features.bucket_windows[:frames], num_frames=frames)


def mix_tracks(tracks: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, int]:
    """Every track downmixed (stereo_clip), resampled to the highest rate among them, padded and summed → (C, T)
    float32 and the rate; scaled down only when the sum would clip."""
    clips = [stereo_clip(waveform, rate) for waveform, rate in tracks]
    rate = max(r for _, r in clips)
    channels = max(c.shape[0] for c, _ in clips)
    same_rate = [c if r == rate else torch.stack([resample(ch, r, rate) for ch in c]) for c, r in clips]
    length = max(c.shape[-1] for c in same_rate)
    mix = torch.zeros(channels, length)
    for clip in same_rate:
        mix[:, :clip.shape[-1]] += clip.cpu().expand(channels, -1)
    peak = float(mix.abs().max()) if mix.numel() else 0.0
    return (mix / peak if peak > 1.0 else mix), rate


def speakers_preview(rgb: np.ndarray, boxes: Sequence[Box]) -> torch.Tensor:
    """(1, H, W, 3) IMAGE of the picture with each chosen face outlined and numbered by its track."""
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    width = max(1, round(min(image.size) / 150))
    for track, box in enumerate(boxes, start=1):
        colour = BOX_COLOURS[(track - 1) % len(BOX_COLOURS)]
        x1, y1, x2, y2 = (round(v) for v in box)
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=width)
        draw.text((x1 + width + 2, y1 + width + 1), str(track), fill=colour)
    return torch.from_numpy(np.asarray(image).astype(np.float32) / 255)[None]


def pair_tracks_with_faces(masks: Sequence[Optional[np.ndarray]], detect: Optional[Callable[[], Sequence[FaceBox]]],
                           face_order: str, faces: str, no_detector: str) -> tuple[list, list, Optional[int]]:
    """The face box each track drives: its mask's bounding box, or the next face chosen among the detected ones (in
    `face_order`, picked by `faces`). Also what the readout calls it (its number in face_order, or "mask") and how
    many faces were found (None when every track has a mask, and the detector is not run). `detect` is None when no
    detector is loaded; `no_detector` is then the message."""
    unmasked = sum(mask is None for mask in masks)
    found, ordered, chosen = None, [], iter([])
    if unmasked:
        if detect is None:
            raise ValueError(no_detector)
        detected = list(detect())
        found, ordered = len(detected), ordered_faces(detected, face_order)
        chosen = iter(choose_faces(detected, face_order, faces, unmasked))
    boxes = [mask_bounding_box(mask) if mask is not None else next(chosen) for mask in masks]
    labels = ["mask" if mask is not None else next(i for i, f in enumerate(ordered) if f is box)
              for mask, box in zip(masks, boxes)]
    return boxes, labels, found
