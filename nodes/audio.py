"""Sonic Encode Audio: any AUDIO → per-frame Whisper tokens, the frame count, and the audio trimmed to the video."""
from __future__ import annotations

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..sonic_model.audio_resample import to_16k_mono
from ..sonic_model.whisper_features import SAMPLE_RATE, audio_length_units, frame_windows, num_frames_for, \
    TOKENS_PER_UNIT
from ..sonic_model.audio_adapters import null_audio_tokens
from .sonic_types import GENERATION_FPS, SonicAudio, SonicAudioEmbeds, SonicModel, SonicModels

FRAME_BATCH = 256  # frames per audio2token call: bounded memory for minutes of audio


def check_audio(audio: dict) -> tuple[torch.Tensor, int]:
    """The AUDIO dict's waveform and rate, or a message that says what to connect."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("Sonic Encode Audio needs an AUDIO input (e.g. from Load Audio).")
    waveform = audio["waveform"]
    if waveform.ndim == 3 and waveform.shape[0] > 1:
        raise ValueError(f"The AUDIO input holds a batch of {waveform.shape[0]} clips; Sonic animates one clip. "
                         "Pick one clip (e.g. split the batch) before this node.")
    return waveform, int(audio["sample_rate"])


def trimmed_audio(audio: dict, num_frames: int, fps: float = GENERATION_FPS) -> dict:
    """The input audio cut to exactly num_frames / fps seconds at its own rate (so the video file stays in sync)."""
    waveform, rate = audio["waveform"], int(audio["sample_rate"])
    samples = round(num_frames * rate / fps)
    waveform = waveform if waveform.ndim == 3 else waveform.reshape(1, -1, waveform.shape[-1])
    return {"waveform": waveform[..., :samples].contiguous(), "sample_rate": rate}


@torch.no_grad()
def encode_sonic_audio(models: SonicModels, audio: dict) -> tuple[SonicAudioEmbeds, dict]:
    waveform, rate = check_audio(audio)
    wave = to_16k_mono(waveform, rate)
    units = audio_length_units(wave.shape[0])
    n = num_frames_for(units)
    if n < 1:
        seconds = wave.shape[0] / SAMPLE_RATE
        raise ValueError(f"The audio is {seconds * 1000:.0f} ms long, shorter than one video frame (80 ms): "
                         "connect at least 0.08 s of audio.")
    device = mm.get_torch_device()
    whisper, a2t = models.whisper, models.audio2token
    whisper.encoder.to(device)
    a2t.to(device)
    try:
        hidden = whisper.hidden_states(wave, max_tokens=units * TOKENS_PER_UNIT)
        token_windows, bucket_windows = frame_windows(hidden, units)
        tokens = torch.cat([a2t(token_windows[None, s:s + FRAME_BATCH])[0].to(mm.intermediate_device())
                            for s in range(0, n, FRAME_BATCH)])
        null = null_audio_tokens(a2t).to(mm.intermediate_device())
        bucket_windows = bucket_windows.to(mm.intermediate_device())
    finally:
        whisper.encoder.to("cpu")
        a2t.to("cpu")
    embeds = SonicAudioEmbeds(tokens=tokens, null_tokens=null, bucket_windows=bucket_windows, num_frames=n)
    return embeds, trimmed_audio(audio, n)


class SonicAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicAudioEncode",
            display_name="Sonic Encode Audio (Whisper)",
            category="Sonic",
            description="Turns a voice or song of any length, rate and channel count into Sonic's per-frame audio "
                        "tokens (12.5 frames per second). Also returns the audio trimmed to the video's length.",
            inputs=[
                SonicModel.Input("sonic_model", tooltip="From 'Load SVD + Sonic weights' (Whisper-tiny + audio2token)."),
                io.Audio.Input("audio", tooltip="The voice or song (e.g. from Load Audio). Any length: long audio "
                                                "is the point of Sonic, nothing is cut."),
            ],
            outputs=[
                SonicAudio.Output(display_name="sonic_audio", tooltip="Per-frame audio tokens for the sampler."),
                io.Audio.Output(display_name="audio", tooltip="The audio trimmed to exactly the frames generated "
                                                              "(frames / 12.5 s): mux this one into the video."),
                io.Int.Output(display_name="num_frames", tooltip="Frames Sonic will generate (12.5 per second)."),
                io.Float.Output(display_name="fps", tooltip="Generation frame rate: 12.5 (25 after RIFE ×2)."),
            ],
        )

    @classmethod
    def execute(cls, sonic_model, audio) -> io.NodeOutput:
        embeds, trimmed = encode_sonic_audio(sonic_model, audio)
        seconds = embeds.num_frames / embeds.fps
        return io.NodeOutput(embeds, trimmed, embeds.num_frames, embeds.fps,
                             ui={"sonic_audio": [{"frames": embeds.num_frames, "seconds": round(seconds, 2)}]})
