"""Bring any waveform to what Sonic's audio path expects: mono float32 at 16 kHz."""
from __future__ import annotations

import math

import torch
import torchaudio.functional
from torch import Tensor

TARGET_SAMPLE_RATE = 16000
# torchaudio's sinc kernel has (16000/g) × (rate/g) taps for g = gcd(rate, 16000): 12 GB and 30 s for 44101 Hz.
MAX_REDUCED_RATE = 2000
NICE_RATE_STEP = 100


def _sample_rate_int(sample_rate: int | float) -> int:
    try:
        rate = int(sample_rate)
    except (TypeError, ValueError):
        raise ValueError(f"sample rate must be a positive whole number of Hz, got {sample_rate!r}") from None
    if rate <= 0 or rate != sample_rate:
        raise ValueError(f"sample rate must be a positive whole number of Hz, got {sample_rate!r}")
    return rate


def to_16k_mono(waveform: Tensor, sample_rate: int) -> Tensor:
    """(T,), (C, T) or (B, C, T) waveform at `sample_rate` → (T',) float32 mono at 16 kHz.

    (B, C, T) is ComfyUI's AUDIO layout; only batch item 0 is used. Channels are averaged to mono.
    """
    if not isinstance(waveform, Tensor):
        raise ValueError(f"audio waveform must be a torch tensor, got {type(waveform).__name__}")
    rate = _sample_rate_int(sample_rate)
    if waveform.ndim == 3:
        if waveform.shape[0] == 0:
            raise ValueError("the audio batch is empty: connect an audio input that holds a clip")
        waveform = waveform[0]
    elif waveform.ndim not in (1, 2):
        raise ValueError(f"audio waveform must be shaped (samples,), (channels, samples) or "
                         f"(batch, channels, samples), got {tuple(waveform.shape)}")
    if waveform.ndim == 2:
        channels, samples = waveform.shape
        if channels == 0:
            raise ValueError("the audio has no channels: connect an audio input that holds sound")
        # A (samples, channels) tensor would be averaged over time; refuse rather than produce noise.
        if channels > 64 and channels > samples:
            raise ValueError(f"audio shaped {tuple(waveform.shape)} looks like (samples, channels); "
                             "pass it as (channels, samples)")
        waveform = waveform.to(torch.float32).mean(dim=0)
    waveform = waveform.to(torch.float32)
    if waveform.numel() == 0:
        raise ValueError("the audio is empty (0 samples): connect an audio clip with sound in it")
    if not bool(torch.isfinite(waveform).all()):
        raise ValueError("the audio contains NaN or infinite samples: re-export or re-encode the audio file")
    if rate != TARGET_SAMPLE_RATE:
        waveform, rate = _to_nice_rate(waveform, rate)
        waveform = torchaudio.functional.resample(waveform, orig_freq=rate, new_freq=TARGET_SAMPLE_RATE)
    return waveform.contiguous()


def _to_nice_rate(waveform: Tensor, rate: int) -> tuple[Tensor, int]:
    """An unusual rate (e.g. 44101 Hz) first goes to the nearest multiple of 100 Hz by linear interpolation, a
    change of well under 1 % that keeps torchaudio's kernel small. torchaudio offers no bounded path for such
    ratios, hence this small step by hand."""
    if rate // math.gcd(rate, TARGET_SAMPLE_RATE) <= MAX_REDUCED_RATE:
        return waveform, rate
    nice = max(NICE_RATE_STEP, round(rate / NICE_RATE_STEP) * NICE_RATE_STEP)
    length = max(1, round(waveform.shape[-1] * nice / rate))
    stretched = torch.nn.functional.interpolate(waveform[None, None], size=length, mode="linear",
                                                align_corners=False)[0, 0]
    return stretched, nice
