"""The Sonic-specific socket types and the values that travel through them.

Core types (IMAGE, AUDIO, LATENT, VAE, CLIP_VISION, SAMPLER, SIGMAS) are used wherever one fits; these cover what
no core type carries: the Sonic model bundle and its three kinds of conditioning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from comfy_api.latest import io

from ..sonic_model.motion.motion_curve import chart_points
from ..sonic_model.audio.whisper_features import FRAMES_PER_SECOND, AudioFeatures

SonicModel = io.Custom("SONIC_MODEL")
SonicAudio = io.Custom("SONIC_AUDIO")
SonicImage = io.Custom("SONIC_IMAGE")
SonicMotion = io.Custom("SONIC_MOTION")
SonicMotionCurve = io.Custom("SONIC_MOTION_CURVE")  # keyframes, drawn on the frames by Motion Buckets
SonicSpeakers = io.Custom("SONIC_SPEAKERS")

GENERATION_FPS = FRAMES_PER_SECOND  # Sonic generates at 12.5 fps (80 ms per frame); RIFE doubles it to 25


@dataclass
class SonicModels:
    """Everything Sonic loads besides core's VAE and CLIP vision and the UNet (a core MODEL). Whisper with the
    audio adapters, and RIFE, each come with the core patcher that loads them (nodes/model_patchers.py). The
    face detector stays on the CPU: it runs once per picture, and a scripted network may hold CPU constants."""

    audio2token: torch.nn.Module
    audio2bucket: torch.nn.Module
    whisper: Any = None            # sonic_model.audio.whisper_features.WhisperAudioEncoder
    face_detector: Any = None
    rife: torch.nn.Module | None = None
    audio_patcher: Any = field(default=None, repr=False)
    rife_patcher: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from .model_patchers import SonicAudioModels, core_patcher

        if self.audio_patcher is None and self.whisper is not None:
            self.audio_patcher = core_patcher(SonicAudioModels(self.whisper.encoder, self.audio2token,
                                                               self.audio2bucket))
        if self.rife_patcher is None and self.rife is not None:
            self.rife_patcher = core_patcher(self.rife)


# Per-frame audio conditioning: the library's own type travels through the SONIC_AUDIO socket.
SonicAudioEmbeds = AudioFeatures


@dataclass
class SonicImageEmbeds:
    """The reference portrait, prepared as the official code does."""

    concat_latent: torch.Tensor   # (1, 4, h, w) unscaled VAE latent (also the start latent ×0.18215)
    image_embeds: torch.Tensor    # (1, D) CLIP image embedding
    face_mask: torch.Tensor       # (1, 1, H, W) pixel mask of the face box (×1.1)
    image: torch.Tensor           # (1, H, W, 3) the resized reference in [0, 1]
    original: torch.Tensor | None = None   # (1, H0, W0, 3) the input before cropping, for paste-back
    crop_box: tuple[int, int, int, int] | None = None  # (x1, y1, x2, y2) in the original's pixels
    report: dict | None = None    # what the node found, for its readout: batch, faces, face used, size, crop


@dataclass
class SonicMotionBuckets:
    """Per-frame motion buckets [head motion, expression], final values the UNet receives."""

    buckets: torch.Tensor         # (N, 2)
    predicted: torch.Tensor       # (N, 2) the predictor's values before overrides (after ×16+16 and β)
    sources: tuple[str, str] = ("prediction", "prediction")  # per column: prediction, fixed or curve

    def summary(self) -> dict:
        def stats(col: torch.Tensor) -> dict:
            return {"mean": round(float(col.mean()), 2), "min": round(float(col.min()), 2),
                    "max": round(float(col.max()), 2)}
        return {"motion": stats(self.buckets[:, 0]), "expression": stats(self.buckets[:, 1])}

    def report(self) -> dict:
        """The node's UI data: the prediction's statistics (its readout), and the predicted and used values of both
        columns at up to 256 frames (its chart)."""
        frames = chart_points(self.buckets.shape[0])
        def columns(values: torch.Tensor) -> dict:
            picked = values[frames].float().cpu()
            return {name: [round(float(v), 2) for v in picked[:, i]] for i, name in enumerate(("motion", "expression"))}
        report = SonicMotionBuckets(self.predicted, self.predicted).summary()
        report.update(seconds=[round(i / GENERATION_FPS, 3) for i in frames], predicted=columns(self.predicted),
                      used=columns(self.buckets), sources=dict(zip(("motion", "expression"), self.sources)))
        return report


@dataclass
class Speaker:
    """One face of a several-speaker picture with its own track: what the single-face nodes pass separately."""

    image: SonicImageEmbeds
    audio: SonicAudioEmbeds
    motion: SonicMotionBuckets
    face: tuple[float, float, float, float]  # the face (or mask) box in the original's pixels
    latents: torch.Tensor | None = None     # (N, 4, h, w) once sampled

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """Where the animated crop goes in the original (the whole picture when it could not be cropped)."""
        if self.image.crop_box is not None:
            return self.image.crop_box
        return (0, 0, int(self.image.original.shape[2]), int(self.image.original.shape[1]))


@dataclass
class SonicSpeakersBundle:
    """Every speaker of one picture, and the picture itself, through the SONIC_SPEAKERS socket."""

    speakers: list[Speaker]
    original: torch.Tensor                  # (1, H0, W0, 3)
