"""Sonic Motion Curve: keyframes (text or a FLOAT list) for head motion or expression over time."""
from __future__ import annotations

from comfy_api.latest import io

from ..sonic_model.motion.motion_curve import EXAMPLE, INTERPOLATIONS, curve_from_values, parse_keyframes
from . import menu
from .sonic_types import SonicMotionCurve


class SonicMotionCurveNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicMotionCurve",
            display_name="Sonic Motion Curve",
            category=menu.CONDITIONING,
            description="A head-motion or expression bucket over time, from keyframes: connect it to 'head_motion_"
                        "curve' or 'expression_curve' of Sonic Motion Buckets, which draws it on the video's frames "
                        "(12.5 per second) and scales it by β like the prediction.",
            inputs=[
                io.String.Input("keyframes", multiline=True, default=EXAMPLE,
                                tooltip="One 'time: value' a line (or separated by ',' or ';'). Time in seconds "
                                        "('2.5' or '2.5s') or frames ('30f', 12.5 frames a second); value a motion "
                                        "bucket, typically 0–128 (0–255 allowed). The value is held before the first "
                                        "and after the last keyframe."),
                io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="linear",
                               tooltip="Between keyframes: linear; smooth (monotone cubic, never overshoots the "
                                       "keyframes); step (hold each value until the next keyframe)."),
                io.Float.Input("values", optional=True, force_input=True,
                               tooltip="Optional numbers from another node (a float, a list of floats or a 1-D "
                                       "tensor, e.g. a schedule or an audio-reactive node). When connected they "
                                       "replace the text: K values spread evenly from the first to the last frame "
                                       "(as many as frames: one per frame; one: a constant)."),
            ],
            outputs=[SonicMotionCurve.Output(display_name="curve",
                                             tooltip="The keyframes, for a curve input of Sonic Motion Buckets.")],
        )

    @classmethod
    def execute(cls, keyframes, interpolation, values=None) -> io.NodeOutput:
        if values is not None:
            return io.NodeOutput(curve_from_values(values, interpolation))
        return io.NodeOutput(parse_keyframes(keyframes, interpolation))
