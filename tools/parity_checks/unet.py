"""Parity of the Sonic UNet with the `unet_single_window` golden (`docs/official-behaviour.md` §2).

Every case listed in the json is run through one model built from the json's `config` and strictly loaded from
`weights.*`; `<case>.out.sample` is compared with the golden's tolerance and each `<case>.aux.mask_downsample_<h>x<w>`
grid exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sonic_model.unet.audio_attention import mask_to_token_grid
from sonic_model.unet.unet import SonicUNet, build_sonic_unet
from tools.parity_checks.common import Comparison, Golden, cast_model, compare, compare_golden

MASK_GRID_PREFIX = "aux.mask_downsample_"


def build_model(golden: Golden) -> SonicUNet:
    model = build_sonic_unet(golden.doc["config"])
    model.load_state_dict(golden.weights("weights."), strict=True)
    return cast_model(model, golden)


def case_names(golden: Golden) -> list[str]:
    return list(golden.doc["cases"])


@torch.no_grad()
def forward_case(model: SonicUNet, golden: Golden, case: str, face_mask: Tensor | None = None) -> Tensor:
    """The golden's call for one case; `face_mask` replaces the stored pixel mask when given.

    In fp16/bf16 runs the latents, CLIP states, audio tokens and mask come in the run's precision; the timestep and
    the added time ids stay fp32, as upstream hands them to the UNet's fp32 sinusoid embeddings.
    """
    t = {k[len(case) + 4:]: golden.input(k, keep_fp32=k.endswith(("timestep", "added_time_ids")))
         for k in golden.tensors if k.startswith(f"{case}.in.")}
    mask = t["face_mask"] if face_mask is None else face_mask
    return model(t["latent_model_input"], t["timestep"], t["added_time_ids"], t["clip_states"], t["audio_tokens"],
                 mask)


def mask_grid_comparisons(golden: Golden, case: str) -> list[Comparison]:
    """Our mask grid at each stored token grid, exactly against the official downsampling."""
    face_mask = golden.tensors[f"{case}.in.face_mask"]
    out = []
    for name in sorted(golden.tensors):
        if name.startswith(f"{case}.{MASK_GRID_PREFIX}"):
            height, width = (int(s) for s in name.rsplit("_", 1)[1].split("x"))
            grid = mask_to_token_grid(face_mask, height, width).reshape(height, width)
            out.append(compare(name, grid, golden.tensors[name], 0.0, 0.0))
    return out


def run(golden: Golden, model: SonicUNet | None = None) -> list[Comparison]:
    model = model or build_model(golden)
    comparisons = []
    for case in case_names(golden):
        sample = forward_case(model, golden, case)
        comparisons.append(compare_golden(golden, f"{case}.out.sample", sample, "batch-3 call, pixel mask"))
        comparisons += mask_grid_comparisons(golden, case)
    return comparisons
