"""Bring any waveform to what Sonic's audio path expects: mono float32 at 16 kHz.

Resampling uses torchaudio when it is installed and scipy otherwise (torchaudio stopped following torch releases;
scipy is in ComfyUI's own requirements). The scipy path uses the same filter as torchaudio's default (a Hann-windowed
sinc, 6 zero crossings, cut-off at 99 % of the lower Nyquist rate) through scipy's polyphase resampler, so the two
agree within RESAMPLE_TOLERANCE, measured in tests/test_whisper_features.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .audio_clip import clip_channels, downmix_to_stereo

TARGET_SAMPLE_RATE = 16000
# torchaudio's sinc kernel has (16000/g) × (rate/g) taps for g = gcd(rate, 16000): 12 GB and 30 s for 44101 Hz.
MAX_REDUCED_RATE = 2000
NICE_RATE_STEP = 100
# torchaudio.functional.resample's defaults, which the scipy path reproduces.
LOWPASS_ZERO_CROSSINGS = 6
ROLLOFF = 0.99
# Largest difference between the two paths, as a share of the signal's RMS. Measured from 8 to 48 kHz: ≤ 1.03 % on
# white noise (the worst case: all its energy reaches the cut-off), ≤ 0.3 % on speech; at most 0.0054 per sample.
RESAMPLE_TOLERANCE = 0.02


def to_16k_mono(waveform: Tensor, sample_rate: int) -> Tensor:
    """(T,), (C, T) or (1, C, T) waveform at `sample_rate` → (T',) float32 mono at 16 kHz.

    (1, C, T) is ComfyUI's AUDIO layout. Surround sound is first downmixed to stereo (audio_clip), then the channels
    are averaged to mono.
    """
    waveform, rate = clip_channels(waveform, sample_rate)
    waveform = downmix_to_stereo(waveform).mean(dim=0)
    if waveform.numel() == 0:
        raise ValueError("the audio is empty (0 samples): connect an audio clip with sound in it")
    if not bool(torch.isfinite(waveform).all()):
        raise ValueError("the audio contains NaN or infinite samples: re-export or re-encode the audio file")
    if rate != TARGET_SAMPLE_RATE:
        waveform, rate = _to_nice_rate(waveform, rate)
        waveform = resample(waveform, rate, TARGET_SAMPLE_RATE)
    return waveform.contiguous()


def resample(waveform: Tensor, rate: int, new_rate: int) -> Tensor:
    """(T,) float32 from `rate` to `new_rate`: torchaudio when installed, scipy otherwise."""
    try:
        import torchaudio.functional
    except ImportError:  # torchaudio wheels lag behind torch; scipy ships with ComfyUI
        return resample_with_scipy(waveform, rate, new_rate)
    return torchaudio.functional.resample(waveform, orig_freq=rate, new_freq=new_rate)


def resample_with_scipy(waveform: Tensor, rate: int, new_rate: int) -> Tensor:
    """scipy's polyphase resampler with torchaudio's default low-pass filter (see the module docstring)."""
    from scipy.signal import firwin, resample_poly

    g = math.gcd(rate, new_rate)
    up, down = new_rate // g, rate // g
    if up == down:
        return waveform.clone()
    step = max(up, down)
    half = math.ceil(LOWPASS_ZERO_CROSSINGS * step / ROLLOFF)
    taps = firwin(2 * half + 1, ROLLOFF / step, window="hann")  # resample_poly applies the gain of `up` itself
    out = resample_poly(waveform.detach().cpu().double().numpy(), up, down, window=taps)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(waveform.device)


def _to_nice_rate(waveform: Tensor, rate: int) -> tuple[Tensor, int]:
    """An unusual rate (e.g. 44101 Hz) first goes to the nearest multiple of 100 Hz by linear interpolation, a
    change of well under 1 % that keeps the filter small. Neither torchaudio nor scipy offers a bounded path for such
    ratios, hence this small step by hand."""
    if rate // math.gcd(rate, TARGET_SAMPLE_RATE) <= MAX_REDUCED_RATE:
        return waveform, rate
    nice = max(NICE_RATE_STEP, round(rate / NICE_RATE_STEP) * NICE_RATE_STEP)
    length = max(1, round(waveform.shape[-1] * nice / rate))
    stretched = torch.nn.functional.interpolate(waveform[None, None], size=length, mode="linear",
                                                align_corners=False)[0, 0]
    return stretched, nice
