"""Sonic Motion Buckets: predicted head motion (mt) and expression (me) per frame, scaled by β, with overrides."""
from __future__ import annotations

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..sonic_model.motion.motion_curve import MotionCurve
from ..sonic_model.motion.overrides import AUTO, chosen_buckets
from ..sonic_model.audio.whisper_features import predict_buckets
from . import menu
from .model_patchers import load_for_stage
from .sonic_types import SonicAudio, SonicImage, SonicModel, SonicMotion, SonicMotionBuckets, SonicMotionCurve

# Each label ends with the β it uses, "(0.5)": web/sonic.js reads β from the label, so this is the one table.
PRESETS = {f"{name} ({beta:.1f})": beta for name, beta in (("mild", 0.5), ("moderate", 1.0), ("intense", 2.0))}
DEFAULT_PRESET = "moderate (1.0)"  # the official dynamic_scale
CUSTOM = "custom"


def dynamic_scale(preset: str, beta: float) -> float:
    if preset == CUSTOM:
        return float(beta)
    if preset not in PRESETS:
        raise ValueError(f"Unknown motion preset '{preset}': pick one of {', '.join([*PRESETS, CUSTOM])}.")
    return PRESETS[preset]


def motion_buckets(raw: torch.Tensor, scale: float, head_motion: int, expression: int,
                   curves: tuple[MotionCurve | None, MotionCurve | None] = (None, None)) -> SonicMotionBuckets:
    """The library's choice per column (curve > fixed value > prediction) as the motion socket's value."""
    buckets, predicted, sources = chosen_buckets(raw, scale, (head_motion, expression), curves)
    return SonicMotionBuckets(buckets=buckets.to(mm.intermediate_device()), predicted=predicted, sources=sources)


class SonicMotionBucketsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicMotionBuckets",
            display_name="Sonic Motion Buckets",
            category=menu.CONDITIONING,
            description="Predicts per-frame head motion (mt) and expression (me) from the audio and the portrait. "
                        "β scales both; the sliders replace a prediction with a fixed value, a connected Sonic "
                        "Motion Curve with values over time. After a run the node shows the predicted values and "
                        "draws the predicted and the used curves.",
            inputs=[
                SonicModel.Input("sonic_model", tooltip="From 'Load SVD + Sonic weights' (audio2bucket)."),
                SonicAudio.Input("audio", tooltip="From 'Sonic Encode Audio'."),
                SonicImage.Input("image", tooltip="From 'Sonic Reference Image' (its CLIP embedding)."),
                io.Combo.Input("motion_preset", options=[*PRESETS, CUSTOM], default=DEFAULT_PRESET,
                               tooltip="Dynamic scale β, how lively the whole animation is: mild 0.5, moderate 1.0 "
                                       "(official), intense 2.0, or custom (the beta slider). Raise it if the head "
                                       "returns to the reference pose in pauses."),
                io.Float.Input("beta", default=1.0, min=0.0, max=4.0, step=0.05, round=0.01,
                               display_mode=io.NumberDisplay.slider,
                               tooltip="β used when motion_preset is 'custom'. Users find 1.3–1.45 the practical "
                                       "maximum before faces distort."),
                io.Int.Input("head_motion", default=AUTO, min=AUTO, max=128, step=1,
                             display_mode=io.NumberDisplay.slider,
                             tooltip="mt, head-motion bucket for every frame: -1 = auto (the prediction), 0–128 "
                                     "fixes it. Higher moves the head more."),
                io.Int.Input("expression", default=AUTO, min=AUTO, max=128, step=1,
                             display_mode=io.NumberDisplay.slider,
                             tooltip="me, expression bucket for every frame: -1 = auto (the prediction), 0–128 "
                                     "fixes it. Higher gives stronger expressions."),
                SonicMotionCurve.Input("head_motion_curve", optional=True,
                                       tooltip="Optional head motion over time from 'Sonic Motion Curve' (×β); "
                                               "when connected it replaces the head_motion slider and the "
                                               "prediction."),
                SonicMotionCurve.Input("expression_curve", optional=True,
                                       tooltip="Optional expression over time from 'Sonic Motion Curve' (×β); "
                                               "when connected it replaces the expression slider and the "
                                               "prediction."),
            ],
            outputs=[SonicMotion.Output(display_name="motion",
                                        tooltip="Per-frame [head motion, expression] buckets for the sampler.")],
        )

    @classmethod
    def execute(cls, sonic_model, audio, image, motion_preset, beta, head_motion, expression,
                head_motion_curve=None, expression_curve=None) -> io.NodeOutput:
        audio2bucket = load_for_stage(sonic_model.audio_patcher).audio2bucket
        raw = predict_buckets(audio2bucket, audio, image.image_embeds).float().cpu()
        motion = motion_buckets(raw, dynamic_scale(motion_preset, beta), head_motion, expression,
                                (head_motion_curve, expression_curve))
        return io.NodeOutput(motion, ui={"sonic_motion": [motion.report()]})
