"""Motion buckets drawn over time: keyframes (text or a list of floats) → one value per video frame.

Frame i is at i / 12.5 s. Keyframe times are kept in frames, so "30f" and "2.4" land on frame 30 and a value given
per frame is that frame's value exactly. Before the first and after the last keyframe the value is held.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..audio.whisper_features import FRAMES_PER_SECOND

INTERPOLATIONS = ("linear", "smooth", "step")
MAX_BUCKET = 255.0  # the UNet's time ids embed 0–255; the prediction is typically 0–128
EXAMPLE = "0: 30\n2: 80\n4: 40"
_FORMAT_HINT = 'write "time: value", e.g. "2.5: 60" (seconds), "2.5s: 60" or "30f: 60" (frame 30)'
_TIME = re.compile(r"^([0-9]*\.?[0-9]+)\s*([sf]?)$", re.IGNORECASE)


@dataclass(frozen=True)
class MotionCurve:
    """Keyframe values and where they sit; `frames` None means spread evenly from the first to the last frame."""

    values: tuple[float, ...]
    frames: tuple[float, ...] | None = None
    interpolation: str = "linear"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Unknown interpolation '{self.interpolation}': pick one of {', '.join(INTERPOLATIONS)}.")
        if not self.values:
            raise ValueError("A motion curve needs at least one value.")
        if self.frames is not None and len(self.frames) != len(self.values):
            raise ValueError("A motion curve needs one time per value.")

    def sample(self, num_frames: int) -> torch.Tensor:
        """The curve at frames 0 … num_frames−1, float32 (num_frames,)."""
        if num_frames < 1:
            raise ValueError("A motion curve needs at least one frame to be drawn on.")
        values = np.asarray(self.values, dtype=np.float64)
        if len(values) == 1 or (self.frames is None and num_frames == 1):
            return torch.full((num_frames,), float(values[0]), dtype=torch.float32)
        at = np.asarray(self.frames, dtype=np.float64) if self.frames is not None \
            else np.linspace(0.0, num_frames - 1, len(values))
        frames = np.arange(num_frames, dtype=np.float64)
        return torch.from_numpy(_interpolate(at, values, frames, self.interpolation)).float()


def _interpolate(at: np.ndarray, values: np.ndarray, frames: np.ndarray, mode: str) -> np.ndarray:
    if mode == "step":  # hold each keyframe until the next
        return values[np.clip(np.searchsorted(at, frames, side="right") - 1, 0, len(at) - 1)]
    if mode == "smooth":  # monotone cubic: passes through the keyframes and never overshoots between them
        from scipy.interpolate import PchipInterpolator
        return PchipInterpolator(at, values)(np.clip(frames, at[0], at[-1]))
    return np.interp(frames, at, values)  # holds the end values outside


def parse_keyframes(text: str, interpolation: str = "linear") -> MotionCurve:
    """'time: value' pairs, one a line or separated by ',' or ';'; '#' starts a comment. Times in seconds ('2.5',
    '2.5s') or frames ('30f'). Raises ValueError naming the line and the fix."""
    keys: list[tuple[float, float, str]] = []
    for line_no, line in enumerate(str(text).splitlines(), start=1):
        for entry in re.split(r"[,;]", line.split("#", 1)[0]):
            if entry.strip():
                keys.append((*_parse_entry(entry.strip(), line_no), f'line {line_no} ("{entry.strip()}")'))
    if not keys:
        raise ValueError(f"The keyframes are empty: {_FORMAT_HINT}, one per line.")
    keys.sort(key=lambda k: k[0])
    for (a, _, where_a), (b, _, where_b) in zip(keys, keys[1:]):
        if a == b:
            raise ValueError(f"Two keyframes at the same time, {where_a} and {where_b}: keep one of them.")
    return MotionCurve(values=tuple(k[1] for k in keys), frames=tuple(k[0] for k in keys),
                       interpolation=interpolation)


def _parse_entry(entry: str, line_no: int) -> tuple[float, float]:
    where = f'Keyframes, line {line_no} ("{entry}")'
    time_text, sep, value_text = entry.partition(":")
    if not sep:
        raise ValueError(f"{where}: no ':' between time and value; {_FORMAT_HINT}.")
    match = _TIME.match(time_text.strip())
    if not match:
        raise ValueError(f"{where}: '{time_text.strip()}' is not a time; {_FORMAT_HINT}.")
    number, unit = float(match.group(1)), match.group(2).lower()
    frame = number if unit == "f" else number * FRAMES_PER_SECOND
    try:
        value = float(value_text.strip())
    except ValueError:
        raise ValueError(f"{where}: '{value_text.strip()}' is not a number; {_FORMAT_HINT}.") from None
    _check_value(value, where)
    return frame, value


def _check_value(value: float, where: str) -> None:
    if not math.isfinite(value) or not 0.0 <= value <= MAX_BUCKET:
        raise ValueError(f"{where}: the value {value:g} is outside 0–{MAX_BUCKET:g}; motion buckets are typically "
                         "0–128.")


def curve_from_values(values: Any, interpolation: str = "linear") -> MotionCurve:
    """A float, a list/tuple of floats, or a 1-D numpy array or tensor (what schedule and audio-reactive nodes emit):
    K values spread evenly from the first to the last frame (K equal to the frame count: one per frame)."""
    flat = _flat_floats(values)
    for i, value in enumerate(flat):
        _check_value(value, f"Motion curve values, item {i}")
    return MotionCurve(values=tuple(flat), frames=None, interpolation=interpolation)


def _flat_floats(values: Any) -> list[float]:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        if array.ndim > 1 and sum(d > 1 for d in array.shape) > 1:
            raise ValueError(f"Motion curve values must be one list of numbers, got an array of shape "
                             f"{tuple(array.shape)}: pick one row (one value per frame or per keyframe).")
        return [float(v) for v in array.reshape(-1)]
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return [float(values)]
    if isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        if not values:
            raise ValueError("Motion curve values: the list is empty; connect a node that outputs numbers.")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return _flat_floats(np.asarray(values, dtype=np.float64)) if _is_numeric(values) else _refuse(values)
        return [float(v) for v in values]
    return _refuse(values)


def _is_numeric(values: Sequence) -> bool:
    try:
        np.asarray(values, dtype=np.float64)
        return True
    except (TypeError, ValueError):
        return False


def _refuse(values: Any) -> list[float]:
    raise ValueError(f"Motion curve values must be numbers (a float, a list of floats or a 1-D tensor), got "
                     f"{type(values).__name__}: connect a FLOAT output, or write keyframes in the text box instead.")


def chart_points(num_frames: int, max_points: int = 256) -> list[int]:
    """At most `max_points` frame indices from the first to the last frame, for drawing a curve."""
    if num_frames <= max_points:
        return list(range(num_frames))
    return sorted({round(i * (num_frames - 1) / (max_points - 1)) for i in range(max_points)})
