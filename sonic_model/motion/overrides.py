"""Which motion buckets a run uses, column by column: a drawn curve over the frames (×β, like the prediction) wins
over a fixed value, which wins over the prediction."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..audio.audio_adapters import postprocess_buckets
from .motion_curve import MotionCurve

AUTO = -1  # a fixed value meaning "keep the prediction"
COLUMNS = ("head motion", "expression")


def chosen_buckets(raw: torch.Tensor, scale: float, fixed: Sequence[int],
                   curves: Sequence[Optional[MotionCurve]] = (None, None)) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Raw audio2bucket outputs (N, 2) → (buckets used, buckets predicted, the source of each column: "curve",
    "fixed" or "prediction"), both (N, 2) and scaled by β = `scale`."""
    predicted = postprocess_buckets(raw, scale)
    buckets, sources = predicted.clone(), []
    for column, (value, curve) in enumerate(zip(fixed, curves)):
        if curve is not None:
            buckets[:, column] = curve.sample(buckets.shape[0]) * float(scale)
            sources.append("curve")
        elif value != AUTO:
            buckets[:, column] = float(value)
            sources.append("fixed")
        else:
            sources.append("prediction")
    return buckets, predicted, tuple(sources)
