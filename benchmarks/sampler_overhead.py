#!/usr/bin/env python
"""What the shift-fusion sampler costs on top of the UNet itself, on a small Sonic UNet (CPU is fine).

    .venv/bin/python benchmarks/sampler_overhead.py [--frames 50 --window 25 --steps 10 --repeats 3]

Times a full ComfyUI euler run (the Sonic MODEL + GUIDER, as the Sonic KSampler runs it) and, separately, the same number of bare UNet calls on
identically shaped inputs; prints both, the UNet call count and their ratio (target ≤ 1.05).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tools.comfy_runtime import import_pack  # noqa: E402
from tools.tiny_models import TINY_UNET_CONFIG  # noqa: E402

import_pack()
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
from sonic_pack.nodes.guider import SonicGuider  # noqa: E402
from sonic_pack.nodes.native_model import sonic_model_patcher  # noqa: E402
from sonic_pack.nodes.sampling import schedule_sigmas  # noqa: E402
from sonic_model.sampling.shift_fusion import SonicConditioning  # noqa: E402
from sonic_model.unet.unet import build_sonic_unet  # noqa: E402


def conditioning(n: int, h: int, w: int, d: int, tokens: int = 4) -> SonicConditioning:
    g = torch.Generator().manual_seed(0)
    return SonicConditioning(concat_latent=torch.randn(1, 4, h, w, generator=g),
                             image_embeds=torch.randn(1, d, generator=g),
                             audio_tokens=torch.randn(n, tokens, d, generator=g),
                             null_audio_tokens=torch.randn(tokens, d, generator=g),
                             motion_buckets=16 + 16 * torch.rand(n, 2, generator=g),
                             face_mask=torch.ones(1, 1, h * 8, w * 8))


@torch.no_grad()
def bare_calls(unet, cond: SonicConditioning, calls: int, f: int, h: int, w: int) -> float:
    d = cond.image_embeds.shape[-1]
    sample = torch.randn(3, f, 8, h, w)
    clip = torch.randn(3 * f, 1, d)
    audio = torch.randn(3 * f, cond.audio_tokens.shape[1], d)
    ids = torch.tensor([[12.5, 20.0, 20.0]] * 3)
    start = time.perf_counter()
    for _ in range(calls):
        unet(sample, torch.tensor(1.0), added_time_ids=ids, clip_states=clip, audio_tokens=audio,
             face_mask=cond.face_mask)
    return time.perf_counter() - start


def fused_run(model, cond: SonicConditioning, f: int, shift: int, steps: int) -> tuple[float, int]:
    guider = SonicGuider(model, cond, cfg_image=2.0, cfg_audio=7.5, shift=shift, window=f)
    sigmas = schedule_sigmas(model, "karras", steps)
    latent = cond.concat_latent.expand(cond.num_frames, -1, -1, -1).contiguous()
    noise = comfy.sample.prepare_noise(latent, 0)
    start = time.perf_counter()
    guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=0)
    return time.perf_counter() - start, guider.unet_calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument("--shift", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=8, help="latent side (pixels / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    unet = build_sonic_unet(TINY_UNET_CONFIG)
    model = sonic_model_patcher(unet)
    cond = conditioning(args.frames, args.size, args.size, TINY_UNET_CONFIG["cross_attention_dim"])
    fused_run(model, cond, args.window, args.shift, 1)  # warm-up
    fused, bare, calls = [], [], 0
    for _ in range(args.repeats):
        seconds, calls = fused_run(model, cond, args.window, args.shift, args.steps)
        fused.append(seconds)
        bare.append(bare_calls(unet, cond, calls, args.window, args.size, args.size))
    expected = args.steps * math.ceil(args.frames / args.window)
    ratio = min(fused) / min(bare)
    print(f"frames {args.frames}, window {args.window}, shift {args.shift}, steps {args.steps}, "
          f"latent {args.size}x{args.size}, threads {torch.get_num_threads()}")
    print(f"UNet calls           {calls} (expected steps x windows = {expected})")
    print(f"fused sampler        {min(fused):.3f} s (best of {args.repeats})")
    print(f"bare UNet calls      {min(bare):.3f} s")
    print(f"overhead ratio       {ratio:.3f} (target <= 1.05)")
    return 0 if calls == expected else 1


if __name__ == "__main__":
    sys.exit(main())
