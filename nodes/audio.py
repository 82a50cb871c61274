"""Sonic Encode Audio: any AUDIO → per-frame Whisper tokens, the frame count, and the audio trimmed to the video."""
from __future__ import annotations

from comfy_api.latest import io

from ..sonic_model.audio.audio_clip import clip_for_frames
from ..sonic_model.audio.whisper_features import encode_audio
from . import menu
from .host import ComfyHost
from .model_patchers import load_for_stage
from .sonic_types import GENERATION_FPS, SonicAudio, SonicAudioEmbeds, SonicModel, SonicModels


def trimmed_audio(audio: dict, num_frames: int, fps: float = GENERATION_FPS) -> dict:
    """An AUDIO cut to exactly the video's frames (audio_clip.clip_for_frames), as an AUDIO."""
    waveform, rate = clip_for_frames(audio["waveform"], audio["sample_rate"], num_frames, fps)
    return {"waveform": waveform[None], "sample_rate": rate}


def encode_sonic_audio(models: SonicModels, audio: dict, node_id: str | None = None) -> tuple[SonicAudioEmbeds, dict]:
    """The library's encode_audio with ComfyUI as its host (progress bar, Cancel, results on the intermediate
    device), on the audio models core loaded for the stage."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("Sonic Encode Audio needs an AUDIO input (e.g. from Load Audio).")
    audio_models = load_for_stage(models.audio_patcher)  # core keeps it there, or offloads it, from now on
    embeds = encode_audio(models.whisper, audio["waveform"], audio["sample_rate"], audio_models.audio2token,
                          host=ComfyHost(node_id))
    return embeds, trimmed_audio(audio, embeds.num_frames)


class SonicAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicAudioEncode",
            display_name="Sonic Encode Audio (Whisper)",
            category=menu.CONDITIONING,
            description="Turns a voice or song of any length, rate and channel count into Sonic's per-frame audio "
                        "tokens (12.5 frames per second). Also returns the audio trimmed to the video's length.",
            inputs=[
                SonicModel.Input("sonic_model", tooltip="From 'Load SVD + Sonic weights' (Whisper-tiny + audio2token)."),
                io.Audio.Input("audio", tooltip="The voice or song (e.g. from Load Audio). Any length: long audio "
                                                "is the point of Sonic, nothing is cut."),
            ],
            hidden=[io.Hidden.unique_id],
            outputs=[
                SonicAudio.Output(display_name="sonic_audio", tooltip="Per-frame audio tokens for the sampler."),
                io.Audio.Output(display_name="audio", tooltip="The audio trimmed to exactly the frames generated "
                                                              "(frames / 12.5 s), at its own sample rate; 5.1 and "
                                                              "other surround sound downmixed to stereo (ITU-R "
                                                              "BS.775). Mux this one into the video."),
                io.Int.Output(display_name="num_frames", tooltip="Frames Sonic will generate (12.5 per second)."),
                io.Float.Output(display_name="fps", tooltip="Generation frame rate: 12.5 (25 after RIFE ×2)."),
            ],
        )

    @classmethod
    def execute(cls, sonic_model, audio) -> io.NodeOutput:
        embeds, trimmed = encode_sonic_audio(sonic_model, audio, node_id=cls.hidden.unique_id)
        seconds = embeds.num_frames / embeds.fps
        return io.NodeOutput(embeds, trimmed, embeds.num_frames, embeds.fps,
                             ui={"sonic_audio": [{"frames": embeds.num_frames, "seconds": round(seconds, 2)}]})
