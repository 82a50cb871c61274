"""One audio clip as the library takes it: the checks of an AUDIO-style (waveform, sample rate) pair, done once here,
and the downmix of surround sound to the stereo that video files and core's audio nodes carry."""
from __future__ import annotations

import math

import torch
from torch import Tensor

# ITU-R BS.775 stereo downmix: centre and surrounds at −3 dB (1/√2) into their side; the LFE channel is left out.
MINUS_3DB = 1 / math.sqrt(2)
# Channel order of 5.1 and 7.1 in WAV, FLAC and FFmpeg (so in what core's Load Audio returns).
LAYOUT_5_1 = ("FL", "FR", "FC", "LFE", "BL", "BR")
LAYOUT_7_1 = ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR")
_LEFT_GAINS = {"FL": 1.0, "FC": MINUS_3DB, "BL": MINUS_3DB, "SL": MINUS_3DB}
_RIGHT_GAINS = {"FR": 1.0, "FC": MINUS_3DB, "BR": MINUS_3DB, "SR": MINUS_3DB}


def sample_rate_of(sample_rate: int | float) -> int:
    """The rate as a positive whole number of Hz, or a message."""
    try:
        rate = int(sample_rate)
    except (TypeError, ValueError):
        raise ValueError(f"sample rate must be a positive whole number of Hz, got {sample_rate!r}") from None
    if rate <= 0 or rate != sample_rate:
        raise ValueError(f"sample rate must be a positive whole number of Hz, got {sample_rate!r}")
    return rate


def clip_channels(waveform: Tensor, sample_rate: int | float) -> tuple[Tensor, int]:
    """(T,), (C, T) or ComfyUI's (1, C, T) waveform and its rate → float32 (C, T) and the rate as an int.

    A batch of several clips is refused: Sonic animates one clip, and silently using the first would hide the rest.
    """
    if not isinstance(waveform, Tensor):
        raise ValueError(f"audio waveform must be a torch tensor, got {type(waveform).__name__}")
    rate = sample_rate_of(sample_rate)
    if waveform.ndim == 3:
        if waveform.shape[0] == 0:
            raise ValueError("the audio batch is empty: connect an audio input that holds a clip")
        if waveform.shape[0] > 1:
            raise ValueError(f"The AUDIO input holds a batch of {waveform.shape[0]} clips; Sonic animates one clip. "
                             "Pick one clip (e.g. split the batch) before this node.")
        waveform = waveform[0]
    elif waveform.ndim == 1:
        waveform = waveform[None]
    elif waveform.ndim != 2:
        raise ValueError(f"audio waveform must be shaped (samples,), (channels, samples) or "
                         f"(batch, channels, samples), got {tuple(waveform.shape)}")
    channels, samples = waveform.shape
    if channels == 0:
        raise ValueError("the audio has no channels: connect an audio input that holds sound")
    # A (samples, channels) tensor would be mixed over time; refuse rather than produce noise.
    if channels > 64 and channels > samples:
        raise ValueError(f"audio shaped {tuple(waveform.shape)} looks like (samples, channels); "
                         "pass it as (channels, samples)")
    return waveform.to(torch.float32), rate


def stereo_downmix_matrix(channels: int) -> Tensor:
    """(2, channels) gains from `channels` inputs to left and right, each row summing to 1 so nothing can clip
    (FFmpeg's default rematrix normalises the same way).

    5.1 and 7.1 (WAV/FFmpeg order) use the ITU-R BS.775 gains. Any other count above 2 has no standard layout: the
    first two channels are taken as left and right and every further channel goes to both sides at −3 dB, as a
    centre would.
    """
    if channels < 3:
        raise ValueError(f"a stereo downmix needs more than 2 channels, got {channels}")
    layout = {6: LAYOUT_5_1, 8: LAYOUT_7_1}.get(channels)
    if layout is not None:
        rows = [[gains.get(name, 0.0) for name in layout] for gains in (_LEFT_GAINS, _RIGHT_GAINS)]
    else:
        rest = [MINUS_3DB] * (channels - 2)
        rows = [[1.0, 0.0, *rest], [0.0, 1.0, *rest]]
    matrix = torch.tensor(rows, dtype=torch.float32)
    return matrix / matrix.sum(dim=1, keepdim=True)


def downmix_to_stereo(waveform: Tensor) -> Tensor:
    """(C, T) → (C, T) for mono and stereo, (2, T) for more channels (see stereo_downmix_matrix)."""
    if waveform.shape[0] <= 2:
        return waveform
    matrix = stereo_downmix_matrix(waveform.shape[0]).to(waveform.device, waveform.dtype)
    return matrix @ waveform


def stereo_clip(waveform: Tensor, sample_rate: int | float) -> tuple[Tensor, int]:
    """A checked clip as float32 (C, T) with C = 1 or 2, at its own rate: what a video file or core's audio nodes
    take."""
    waveform, rate = clip_channels(waveform, sample_rate)
    return downmix_to_stereo(waveform), rate


def clip_for_frames(waveform: Tensor, sample_rate: int | float, num_frames: int,
                    fps: float) -> tuple[Tensor, int]:
    """The clip cut to exactly `num_frames` / `fps` seconds at its own rate, so a video of those frames stays in
    sync, as a stereo clip (see stereo_clip)."""
    waveform, rate = stereo_clip(waveform, sample_rate)
    return waveform[:, :round(num_frames * rate / fps)].contiguous(), rate
