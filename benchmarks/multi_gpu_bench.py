#!/usr/bin/env python
"""The speed-up of Sonic Devices: the shipped sampling path (Sonic MODEL + guider + core euler) on one GPU, then on
every local GPU, on the same random full-size UNet, the same seed and audio.

    python benchmarks/multi_gpu_bench.py            # every GPU it finds (needs two or more)
    python benchmarks/multi_gpu_bench.py --seconds 10 --steps 2

A step evaluates ceil(audio frames ÷ window) windows; on G GPUs it takes about ceil(windows ÷ G) window times, so
the expected speed-up is windows ÷ ceil(windows ÷ G) (10 s, window 25: 5 windows, 1.67× on 2 GPUs). On a machine
with fewer than two GPUs it says so and exits 0: one GPU has nothing to spread over.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import shipped_path as shipped  # noqa: E402

FPS, WINDOW, SHIFT, SIDE = 12.5, 25, 7, 512


def _timed(model, inputs, steps: int) -> tuple[torch.Tensor, float]:
    for device in range(torch.cuda.device_count()):
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    latents, _ = shipped.sample(model, inputs, steps, window=WINDOW, shift=SHIFT, seed=1)
    return latents, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of audio (default 10: 5 windows)")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps per timed run")
    args = parser.parse_args(argv)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        print(f"{'one GPU' if gpus == 1 else 'no GPU'}: skipped (Sonic Devices needs two or more local GPUs; "
              f"this machine has {gpus})")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    shipped.pack_module("nodes.native_model")  # ComfyUI first, as the server does
    devices = shipped.pack_module("nodes.devices")
    main_device = torch.device("cuda", 0)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    unet = shipped.random_unet(None, main_device, dtype)
    spare = torch.nn.Module.to(copy.deepcopy(unet), "cpu")  # the copies' recipe: the same weights
    model = shipped.sonic_model(unet, low_vram=None, compute_dtype=dtype)
    native = shipped.pack_module("nodes.native_model")
    model.model.rebuild = lambda device: native.sonic_model_patcher(copy.deepcopy(spare), compute_dtype=dtype,
                                                                    load_device=device)
    frames = round(args.seconds * FPS)
    inputs = shipped.clip_inputs(frames, SIDE, SIDE, 1024, 32)
    windows = math.ceil(frames / WINDOW)
    shipped.sample(model, inputs, 1, window=WINDOW, shift=SHIFT)  # loads the UNet, warms the kernels
    one, one_s = _timed(model, inputs, args.steps)
    spread = devices.spread_model(model, "auto")
    shipped.sample(spread, inputs, 1, window=WINDOW, shift=SHIFT)  # loads the copies
    many, many_s = _timed(spread, inputs, args.steps)
    expected = windows / math.ceil(windows / gpus)
    same = torch.equal(one, many)
    diff = (one.float() - many.float()).abs().max().item()
    names = ", ".join(sorted({torch.cuda.get_device_name(d) for d in range(gpus)}))
    print(f"Sonic Devices on {gpus} GPUs ({names}); {args.seconds:g} s of audio = {frames} frames, window {WINDOW}: "
          f"{windows} windows per step, {SIDE}², {str(dtype).removeprefix('torch.')}, {args.steps} euler steps")
    print("| GPUs | s | speed-up | expected | bit-identical to one GPU | max abs diff |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 | {one_s:.2f} | 1.00x | 1.00x | - | - |")
    print(f"| {gpus} | {many_s:.2f} | {one_s / many_s:.2f}x | {expected:.2f}x | {'yes' if same else 'no'} | "
          f"{diff:.3g} |")
    return 0 if torch.isfinite(many).all() and diff <= 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
