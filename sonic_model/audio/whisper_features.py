"""Sonic's audio conditioning: 16 kHz waveform → Whisper hidden states → per-frame windows → tokens and buckets.

The procedure of the official `sonic.test()`: log-mel and encoder run per 30 s chunk (so memory stays bounded and
the mel normalisation is per chunk, as upstream), all encoder hidden states stacked, 4 Whisper tokens per video
frame (12.5 fps), zero-padded sliding windows around each frame.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..host import Host
from .audio_adapters import AudioToBuckets, AudioToTokens, null_audio_tokens
from .audio_resample import to_16k_mono

if TYPE_CHECKING:  # transformers is imported on first use: it is slow to import at ComfyUI's start
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

SAMPLE_RATE = 16000
SAMPLES_PER_UNIT = 640   # one 40 ms unit (25 fps); two units make one generated frame (12.5 fps)
UNITS_PER_FRAME = 2
TOKENS_PER_UNIT = 2      # the encoder emits 50 tokens/s: 2 per 40 ms unit
TOKENS_PER_FRAME = TOKENS_PER_UNIT * UNITS_PER_FRAME
OFFICIAL_MAX_UNITS = 10000  # upstream's `frame_num` cap (400 s); only applied when asked for
TOKEN_WINDOW, TOKEN_PAD = 10, (4, 6)      # audio2token: tokens 4i-4 … 4i+5 around frame i
BUCKET_WINDOW, BUCKET_PAD = 50, (24, 26)  # audio2bucket: tokens 4i-24 … 4i+25, last hidden state only
FRAMES_PER_SECOND = SAMPLE_RATE / (SAMPLES_PER_UNIT * UNITS_PER_FRAME)  # 12.5
FRAME_BATCH = 256  # frames per adapter call: bounded memory for minutes of audio


def audio_length_units(num_samples: int, max_units: int | None = None) -> int:
    """Whole 40 ms units in `num_samples` 16 kHz samples, optionally capped (upstream caps at 10000)."""
    units = num_samples // SAMPLES_PER_UNIT
    return units if max_units is None else min(max_units, units)


def num_frames_for(num_units: int) -> int:
    """Generated frames (12.5 fps) for `num_units` 40 ms units."""
    return num_units // UNITS_PER_FRAME


def feature_extractor_from_dict(fields: dict) -> WhisperFeatureExtractor:
    """A WhisperFeatureExtractor from a preprocessor-config dict, keeping only constructor arguments; dither 0."""
    from transformers import WhisperFeatureExtractor

    names = set(inspect.signature(WhisperFeatureExtractor.__init__).parameters) - {"self", "kwargs"}
    kwargs = {k: v for k, v in fields.items() if k in names}
    kwargs["dither"] = 0.0  # deterministic features; the official transformers had no dither
    return WhisperFeatureExtractor(**kwargs)


def _check_wave(wave16k: Tensor) -> None:
    if not isinstance(wave16k, Tensor) or wave16k.ndim != 1:
        shape = tuple(wave16k.shape) if isinstance(wave16k, Tensor) else type(wave16k).__name__
        raise ValueError(f"expected a 1-D mono 16 kHz waveform (use audio_resample.to_16k_mono), got {shape}")


class WhisperAudioEncoder:
    """A Whisper encoder plus its feature extractor, producing the stacked hidden states Sonic windows over."""

    def __init__(self, encoder: WhisperEncoder, feature_extractor: WhisperFeatureExtractor) -> None:
        if feature_extractor.sampling_rate != SAMPLE_RATE:
            raise ValueError(f"the Whisper feature extractor must work at {SAMPLE_RATE} Hz, "
                             f"not {feature_extractor.sampling_rate}")
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor
        self.feature_extractor.dither = 0.0

    @classmethod
    def from_folder(cls, folder: str | Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> WhisperAudioEncoder:
        """Load a local Hugging Face Whisper folder (config.json, preprocessor_config.json, weights). No network."""
        from transformers import WhisperFeatureExtractor, WhisperModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a Whisper model folder (no config.json); "
                                    "download openai/whisper-tiny into it")
        extractor = WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        # Loaded in float32 and cast afterwards: the dtype keyword differs between transformers versions.
        model, info = WhisperModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="sdpa",
                                                   output_loading_info=True)
        # transformers only warns about missing weights; an encoder left half random must not pass silently.
        missing = [k for k in info.get("missing_keys", []) if "encoder." in k]
        if missing:
            raise ValueError(f"{folder} lacks Whisper encoder weights ({', '.join(sorted(missing)[:3])}, …): "
                             "re-download openai/whisper-tiny")
        encoder = model.get_encoder().to(device=device, dtype=dtype)
        del model  # the decoder is never used
        return cls(encoder, extractor)

    @classmethod
    def from_config(cls, whisper_config: dict, feature_extractor: dict | None = None,
                    attn_implementation: str = "sdpa") -> WhisperAudioEncoder:
        """An encoder with freshly initialised weights from config dicts (load a state dict into `.encoder` next)."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig(**whisper_config)
        config._attn_implementation = attn_implementation
        encoder = WhisperEncoder(config)
        return cls(encoder, feature_extractor_from_dict(feature_extractor or {}))

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    @property
    def channels(self) -> int:
        return self.encoder.config.d_model

    @property
    def num_states(self) -> int:
        """Hidden states per token: the embedding output plus one per layer."""
        return self.encoder.config.encoder_layers + 1

    @property
    def chunk_samples(self) -> int:
        return self.feature_extractor.n_samples

    @property
    def tokens_per_chunk(self) -> int:
        """Encoder tokens of one 30 s chunk (1500: two per 40 ms unit)."""
        return self.chunk_samples // SAMPLES_PER_UNIT * TOKENS_PER_UNIT

    def log_mel_chunks(self, wave16k: Tensor) -> Iterator[Tensor]:
        """(1, n_mels, 3000) log-mel per 30 s chunk; each chunk is padded and normalised on its own, as upstream."""
        _check_wave(wave16k)
        wave = wave16k.detach().to("cpu", torch.float32).numpy()
        for start in range(0, wave.shape[0], self.chunk_samples):
            chunk = wave[start:start + self.chunk_samples]
            yield self.feature_extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features

    def log_mel(self, wave16k: Tensor) -> Tensor:
        """All chunks' log-mel concatenated on time: (1, n_mels, 3000·chunks)."""
        chunks = list(self.log_mel_chunks(wave16k))
        if not chunks:
            return torch.zeros(1, self.feature_extractor.feature_size, 0)
        return torch.cat(chunks, dim=-1)

    @torch.no_grad()
    def encode_mel(self, mel: Tensor) -> Tensor:
        """One (1, n_mels, 3000) mel chunk → (1, 1500, num_states, C): every hidden state stacked on axis 2."""
        out = self.encoder(mel.to(self.device, self.dtype), output_hidden_states=True)
        states = list(out.hidden_states)
        if len(states) != self.num_states:
            raise RuntimeError(f"Whisper returned {len(states)} hidden states, expected {self.num_states}")
        # The last state must be the final LayerNorm output (= last_hidden_state), as in the official code.
        states[-1] = out.last_hidden_state
        return torch.stack(states, dim=2)

    @torch.no_grad()
    def hidden_states(self, wave16k: Tensor, max_tokens: int | None = None,
                      on_chunk: Callable[[int], None] | None = None) -> Tensor:
        """(1, tokens, num_states, C) for the whole waveform, chunk by chunk (1500 tokens per 30 s chunk).

        With `max_tokens`, stops encoding once that many tokens exist and returns exactly the first `max_tokens`.
        `on_chunk(chunks done)` is called after each chunk.
        """
        parts: list[Tensor] = []
        count = 0
        for mel in self.log_mel_chunks(wave16k):
            if max_tokens is not None and count >= max_tokens:
                break
            parts.append(self.encode_mel(mel))
            count += parts[-1].shape[1]
            if on_chunk is not None:
                on_chunk(len(parts))
        if not parts:
            return torch.zeros(1, 0, self.num_states, self.channels, device=self.device, dtype=self.dtype)
        hidden = torch.cat(parts, dim=1)
        return hidden if max_tokens is None else hidden[:, :max_tokens]


def padded_sequences(hidden: Tensor, num_units: int) -> tuple[Tensor, Tensor]:
    """Keep the first 2·num_units tokens of (1, tokens, states, C) and zero-pad them for the windows.

    Returns the token sequence (1, 2L+10, states, C) and the bucket sequence of the last state (1, 2L+50, 1, C).
    """
    keep = num_units * TOKENS_PER_UNIT
    if hidden.ndim != 4 or hidden.shape[0] != 1:
        raise ValueError(f"expected hidden states shaped (1, tokens, states, channels), got {tuple(hidden.shape)}")
    if hidden.shape[1] < keep:
        raise ValueError(f"{num_units} audio units need {keep} Whisper tokens, only {hidden.shape[1]} given")
    kept = hidden[:, :keep]
    # Real zeros, not encoded silence (pad spec: last dims first).
    token_seq = F.pad(kept, (0, 0, 0, 0, *TOKEN_PAD))
    bucket_seq = F.pad(kept[:, :, -1:], (0, 0, 0, 0, *BUCKET_PAD))
    return token_seq, bucket_seq


def _windows(seq: Tensor, size: int, count: int) -> Tensor:
    """(1, P, S, C) → (count, size, S, C): window i starts at token 4i. A strided view, no copy."""
    return seq[0].unfold(0, size, TOKENS_PER_FRAME).permute(0, 3, 1, 2)[:count]


def frame_windows(hidden: Tensor, num_units: int) -> tuple[Tensor, Tensor]:
    """Per-frame windows for N = num_units // 2 frames: token windows (N, 10, states, C) and bucket windows
    (N, 50, 1, C). `num_units` (not N) sets how many tokens are kept, which matters for the last frames."""
    token_seq, bucket_seq = padded_sequences(hidden, num_units)
    frames = num_frames_for(num_units)
    return _windows(token_seq, TOKEN_WINDOW, frames), _windows(bucket_seq, BUCKET_WINDOW, frames)


@dataclass
class AudioFeatures:
    """Per-frame audio conditioning for N generated frames (12.5 fps): what Encode Audio outputs and the sampler and
    the bucket predictor read."""

    tokens: Tensor          # (N, T, D) audio tokens of each frame
    null_tokens: Tensor     # (T, D) "null audio" tokens for the unconditional guidance rows
    bucket_windows: Tensor  # (N, 50, 1, C) last-state windows, a strided view of the short padded sequence (no copy)
    num_frames: int
    num_units: int = 0      # 40 ms units used (after any cap)
    num_samples: int = 0    # 16 kHz samples of the input
    fps: float = FRAMES_PER_SECOND


def _param(model: torch.nn.Module) -> Tensor:
    return next(model.parameters())


def _check_fits(encoder: WhisperAudioEncoder, audio2token: AudioToTokens) -> None:
    if (encoder.num_states, encoder.channels) != (audio2token.blocks, audio2token.channels):
        raise ValueError(f"the Whisper model gives {encoder.num_states} hidden states of {encoder.channels} channels, "
                         f"but the audio adapters expect {audio2token.blocks} of {audio2token.channels}: use the "
                         "whisper-tiny model Sonic was trained with")


def too_short_message(num_samples: int) -> str:
    return (f"The audio is {num_samples / SAMPLE_RATE * 1000:.0f} ms long, shorter than one video frame (80 ms): "
            "connect at least 0.08 s of audio.")


@torch.no_grad()
def encode_audio(encoder: WhisperAudioEncoder, waveform: Tensor, sample_rate: int, audio2token: AudioToTokens, *,
                 max_units: int | None = None, frame_batch: int = FRAME_BATCH,
                 host: Host | None = None) -> AudioFeatures:
    """Any clip (an AUDIO's waveform and rate: any length, rate and channel count) → per-frame tokens, null tokens and
    bucket windows. The one path from audio to conditioning: Encode Audio and the parity check both call it.

    Whisper runs per 30 s chunk and audio2token `frame_batch` frames at a time, so minutes of audio stay bounded;
    each of those steps is one count of the host's progress (which also checks Cancel). Results go to the host's
    offload device (without a host: audio2token's device). No length cap unless `max_units` is given (upstream:
    OFFICIAL_MAX_UNITS)."""
    wave = to_16k_mono(waveform, sample_rate)
    num_samples = int(wave.shape[0])
    units = audio_length_units(num_samples, max_units)
    frames = num_frames_for(units)
    if frames < 1:
        raise ValueError(too_short_message(num_samples))
    _check_fits(encoder, audio2token)
    chunks = -(-units * TOKENS_PER_UNIT // encoder.tokens_per_chunk)
    total = chunks + -(-frames // frame_batch)
    report = (host or Host()).progress(total)

    hidden = encoder.hidden_states(wave, max_tokens=units * TOKENS_PER_UNIT,
                                   on_chunk=lambda done: report(done))
    token_seq, bucket_seq = padded_sequences(hidden, units)
    del hidden
    token_windows = _windows(token_seq, TOKEN_WINDOW, frames)
    param = _param(audio2token)
    output_device = param.device if host is None else host.offload_device
    # Filled in place: a list of batches joined at the end would hold the tokens twice (2 × 940 MiB for 10 minutes).
    tokens = torch.empty(frames, audio2token.context_tokens, audio2token.output_dim, device=output_device,
                         dtype=param.dtype)
    for batch_index, start in enumerate(range(0, frames, frame_batch), start=1):
        batch = token_windows[None, start:start + frame_batch].to(param.device, param.dtype)
        tokens[start:start + frame_batch] = audio2token(batch)[0]
        report(chunks + batch_index)
    bucket_windows = _windows(bucket_seq.to(output_device), BUCKET_WINDOW, frames)
    return AudioFeatures(tokens=tokens, null_tokens=null_audio_tokens(audio2token).to(output_device),
                         bucket_windows=bucket_windows, num_frames=frames, num_units=units, num_samples=num_samples)


@torch.no_grad()
def predict_buckets(audio2bucket: AudioToBuckets, features: AudioFeatures, clip_image_embeds: Tensor,
                    frame_batch: int = FRAME_BATCH) -> Tensor:
    """Raw audio2bucket outputs (N, 2) [head motion, expression] for every frame, `frame_batch` frames per call, on
    audio2bucket's device (postprocess_buckets turns them into bucket ids)."""
    windows = features.bucket_windows
    if windows.shape[-1] != audio2bucket.channels:
        raise ValueError(f"the Whisper model gives {windows.shape[-1]} channels, but audio2bucket expects "
                         f"{audio2bucket.channels}: use the whisper-tiny model Sonic was trained with")
    param = _param(audio2bucket)
    clip = clip_image_embeds.to(param.device, param.dtype).reshape(1, -1)
    raw = [audio2bucket(windows[None, start:start + frame_batch].to(param.device, param.dtype), clip)[0]
           for start in range(0, features.num_frames, frame_batch)]
    return torch.cat(raw).reshape(features.num_frames, -1)
