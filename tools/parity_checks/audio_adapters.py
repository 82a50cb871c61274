"""Parity of the audio adapters with the `audio2token` and `audio2bucket` goldens (`docs/official-behaviour.md` §3)."""
from __future__ import annotations

import torch

from sonic_model.audio.audio_adapters import AudioToBuckets, AudioToTokens, postprocess_buckets
from tools.parity_checks.common import Comparison, Golden, cast_model, compare_golden


def build_audio2token(golden: Golden) -> AudioToTokens:
    model = AudioToTokens(**golden.doc["config"])
    model.load_state_dict(golden.weights("weights."), strict=True)
    return cast_model(model, golden).eval()


def build_audio2bucket(golden: Golden) -> AudioToBuckets:
    model = AudioToBuckets(**golden.doc["config"])
    model.load_state_dict(golden.weights("weights."), strict=True)
    return cast_model(model, golden).eval()


@torch.no_grad()
def run_audio2token(golden: Golden, model: AudioToTokens | None = None) -> list[Comparison]:
    model = model or build_audio2token(golden)
    windows = golden.input("in.audio_windows")
    return [
        compare_golden(golden, "out.tokens", model(windows), "one batched call"),
        compare_golden(golden, "out.null_tokens", model(torch.zeros_like(windows))),
    ]


@torch.no_grad()
def run_audio2bucket(golden: Golden, model: AudioToBuckets | None = None) -> list[Comparison]:
    model = model or build_audio2bucket(golden)
    windows, clip = golden.input("in.audio_windows"), golden.input("in.clip_image_embeds")
    # One batched call over all frames: the CLIP embedding is repeated per frame (the official class crashes here).
    raw = model(windows, clip)
    buckets = postprocess_buckets(raw)[0].unsqueeze(1)  # (1, f, 2, 1) → (f, 1, 2, 1), the list sonic.test() builds
    comparisons = [compare_golden(golden, "out.raw", raw, "one batched call"),
                   compare_golden(golden, "out.buckets", buckets)]
    for name in sorted(golden.tensors):
        if name.startswith("out.buckets_scaled_"):
            scale = float(name.rsplit("_", 1)[1])
            scaled = postprocess_buckets(raw, scale)[0].unsqueeze(1)
            comparisons.append(compare_golden(golden, name, scaled, f"dynamic_scale {scale:g}"))
    return comparisons


def run(golden: Golden) -> list[Comparison]:
    """Dispatch on the golden's own `golden_type`."""
    kind = golden.doc["golden_type"]
    if kind == "audio2token":
        return run_audio2token(golden)
    if kind == "audio2bucket":
        return run_audio2bucket(golden)
    raise ValueError(f"audio_adapters check cannot handle golden_type {kind!r}")
