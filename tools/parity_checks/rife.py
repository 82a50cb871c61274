"""Parity check for golden_type `rife`: the official RIFE IFNet (full-size random weights) and its ×2 loop.

Weights are the `flownet.pkl` dict under `weights.` (keys `module.<IFNet key>`); they go through `load_rife`, i.e. the
official prefix rule and a strict load. Every `<case>.out.*` / `<case>.aux.*` tensor the json lists is compared, and
`sequence.out.video` through `interpolate_x2`.
"""
from __future__ import annotations

import torch

from sonic_model.video.rife import IFNet, interpolate_x2, load_rife, midpoint
from tools.parity_checks.common import Comparison, Golden, cast_model, compare_golden


def _case_outputs(model: IFNet, golden: Golden, case: str) -> dict[str, tuple[torch.Tensor, str]]:
    """What this implementation produces for one frame pair, keyed like the golden (`out.middle`, ...)."""
    img0 = golden.input(f"{case}.in.img0")
    img1 = golden.input(f"{case}.in.img1")
    scale = float(golden.doc.get("scale", 1.0))
    scale_list = [float(s) for s in golden.doc.get("scale_list", [4 / scale, 2 / scale, 1 / scale])]
    with torch.inference_mode():
        result = model(img0, img1, scale_list=scale_list)
    return {
        "out.middle": (result.middle, "IFNet forward, unclamped"),
        "aux.flow": (result.flow, ""),
        "aux.mask": (result.mask, ""),
    }


def _missing(name: str) -> Comparison:
    return Comparison(name, float("inf"), 0.0, 0.0, False, "listed in the golden but not produced by this check")


def run(golden: Golden) -> list[Comparison]:
    model = cast_model(load_rife(golden.weights("weights.")), golden)
    listed = list(golden.doc["tensors"])
    comparisons: list[Comparison] = []
    for case in golden.doc.get("cases", {}):
        produced = _case_outputs(model, golden, case)
        for name in listed:
            if not name.startswith(f"{case}.") or ".in." in name:
                continue
            key = name[len(case) + 1:]
            if key not in produced:
                comparisons.append(_missing(name))
                continue
            actual, note = produced[key]
            comparisons.append(compare_golden(golden, name, actual, note))
            if key == "out.middle" and golden.doc.get("scale", 1.0) == 1.0:
                # The public path (padding logic, clamp) must agree too.
                both = midpoint(model, golden.input(f"{case}.in.img0"), golden.input(f"{case}.in.img1"))
                comparisons.append(compare_golden(golden, name, both, "midpoint(), clamped"))
    if "sequence" in golden.doc:
        video = golden.input("sequence.in.video")  # (B=1, C, F, H, W), as sonic.test() returns it
        frames = video[0].permute(1, 2, 3, 0)  # (F, H, W, C): ComfyUI IMAGE layout
        out = interpolate_x2(frames, model)
        comparisons.append(compare_golden(golden, "sequence.out.video", out.permute(3, 0, 1, 2).unsqueeze(0),
                                          "interpolate_x2"))
        for name in listed:
            if name.startswith("sequence.") and ".in." not in name and name != "sequence.out.video":
                comparisons.append(_missing(name))
    return comparisons
