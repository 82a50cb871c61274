#!/usr/bin/env python
"""Measured against predicted peak VRAM: the numbers that calibrate sonic_model/sampling/memory_model.py on a GPU.

    .venv/bin/python benchmarks/vram_calibrate.py                   # CUDA: 512x512 and 1024x576, window 25
    .venv/bin/python benchmarks/vram_calibrate.py --sizes 512x512 --window 12
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vram_calibrate.py --tiny   # CPU smoke run of the same code

For each sampling mode it runs one denoising step over one window through the real sampling path
(`ShiftFusion` with the EDM rows denoiser, random fp16 weights) and reads torch's peak allocation (`torch.cuda.max_memory_allocated`,
weights and inputs included); then one VAE decode chunk (diffusers' temporal decoder, the one the model's
coefficient was measured on) and one RIFE batch. Each row prints the model's prediction for the same work beside
it. Without CUDA, the peak is read with the live-set meter of benchmarks/vram_model.py plus the weights and
inputs, and `--tiny` uses the tiny test UNet, whose predictions (made for the SVD-xt topology) do not apply: that
run only checks the code.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.vram_model import meta_unet, meta_vae, peak_live_bytes  # noqa: E402
from sonic_model.sampling import memory_model as mm  # noqa: E402

SAMPLING_MODES = (mm.BATCHED, mm.PER_ROW, mm.PER_ROW_SLICED)


@dataclass
class Row:
    what: str
    size: str
    predicted: int | None
    measured: int


def _randomised(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A meta-built module given memory on `device` and small random weights (the values do not matter here)."""
    module = module.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen, device=device) * 0.02)
    return module


def _tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def peak_bytes(device: torch.device, module: torch.nn.Module, call: Callable[..., object], inputs: tuple) -> int:
    """Peak bytes held while `call(*inputs)` runs: weights, inputs and everything it allocates."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            call(*inputs)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    held = _tensor_bytes(*module.parameters(), *module.buffers(), *inputs)
    return held + peak_live_bytes(module, call, inputs, efficient=False)


def _conditioning(frames: int, height: int, width: int, device: torch.device, audio_tokens: int):
    from sonic_model.sampling.shift_fusion import SonicConditioning
    gen = torch.Generator().manual_seed(1)
    h, w = height // 8, width // 8
    return SonicConditioning(
        concat_latent=torch.randn(1, 4, h, w, generator=gen).to(device),
        image_embeds=torch.randn(1, mm.CONTEXT_DIM, generator=gen).to(device),
        audio_tokens=torch.randn(frames, audio_tokens, mm.CONTEXT_DIM, generator=gen).to(device),
        null_audio_tokens=torch.randn(audio_tokens, mm.CONTEXT_DIM, generator=gen).to(device),
        motion_buckets=torch.rand(frames, 2, generator=gen).to(device),
        face_mask=torch.ones(1, 1, height, width).to(device))


def sampling_rows(device: torch.device, sizes: list[tuple[int, int]], window: int, config: dict | None) -> list[Row]:
    from sonic_model.sampling.shift_fusion import ShiftFusion, edm_rows_denoiser
    from sonic_model.unet.speed import set_attention_slices
    unet = _randomised(meta_unet(config, torch.float16 if device.type == "cuda" else torch.float32), device)
    audio_tokens = mm.AUDIO_TOKENS if config is None else 4
    rows = []
    for height, width in sizes:
        cond = _conditioning(window, height, width, device, audio_tokens)
        x = torch.randn(window, 4, height // 8, width // 8, device=device)
        shape = mm.RunShape(height, width, window, frames_total=window, decode_chunk=None, rife_batch=None)
        for mode in SAMPLING_MODES:
            set_attention_slices(unet, mode.attention_slices)
            fusion = ShiftFusion(cond, window=window, shift=0, batched_cfg=mode.batched_guidance)
            rows_denoiser = edm_rows_denoiser(unet)
            cond_tensors = tuple(t for t in vars(cond).values() if isinstance(t, torch.Tensor))
            measured = peak_bytes(device, unet, lambda x, *_: fusion.denoise(x, 1.0, 0, rows_denoiser),
                                  (x, *cond_tensors))
            predicted = mm.estimate(shape, mode).sampling if config is None else None
            rows.append(Row(f"sampling, {mode}", f"{width}x{height}", predicted, measured))
    set_attention_slices(unet, None)
    return rows


def decode_rows(device: torch.device, sizes: list[tuple[int, int]], chunk: int) -> list[Row]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    vae = _randomised(meta_vae(dtype), device)
    rows = []
    for height, width in sizes:
        z = torch.randn(chunk, 4, height // 8, width // 8, device=device, dtype=dtype)
        measured = peak_bytes(device, vae, lambda z: vae.decode(z, num_frames=chunk).sample, (z,))
        predicted = mm.vae_decode_bytes(height, width, chunk, "fp16" if dtype == torch.float16 else "fp32")
        rows.append(Row(f"VAE decode, {chunk} frames", f"{width}x{height}", predicted + _tensor_bytes(z), measured))
    return rows


def rife_rows(device: torch.device, sizes: list[tuple[int, int]], batch: int) -> list[Row]:
    from sonic_model.video.rife import midpoint
    from sonic_model.video.rife_blocks import IFNet
    with torch.device("meta"):
        net = _randomised(IFNet(), device)
    rows = []
    for height, width in sizes:
        frames = torch.rand(batch + 1, 3, height, width, device=device)
        measured = peak_bytes(device, net, lambda f: midpoint(net, f[:-1], f[1:]), (frames,))
        rows.append(Row(f"RIFE, {batch} pairs", f"{width}x{height}", mm.rife_bytes(height, width, batch), measured))
    return rows


def _size(text: str) -> tuple[int, int]:
    width, height = (int(n) for n in text.lower().split("x"))
    return height, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x512,1024x576", help="WIDTHxHEIGHT list (multiples of 64)")
    parser.add_argument("--window", type=int, default=25, help="frames per window")
    parser.add_argument("--tiny", action="store_true", help="the tiny test UNet at 64x64 (a CPU check of the code)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config, sizes, window, chunk, batch = None, [_size(s) for s in args.sizes.split(",")], args.window, 8, 8
    if args.tiny:
        from tools.tiny_models import TINY_UNET_CONFIG
        config, sizes, window, chunk, batch = TINY_UNET_CONFIG, [(64, 64)], 3, 2, 2
    elif device.type != "cuda":
        sys.exit("No CUDA device: the full-size calibration needs a GPU (use --tiny for a CPU check of the code).")
    rows = sampling_rows(device, sizes, window, config) + decode_rows(device, sizes, chunk)
    rows += rife_rows(device, sizes, batch)
    print(f"Device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; window {window}; "
          "peak torch allocation (weights, inputs and work), GiB")
    print("| what | size | predicted | measured | measured / predicted |")
    print("|---|---|---|---|---|")
    for row in rows:
        predicted = f"{row.predicted / mm.GIB:.3f}" if row.predicted else "-"
        ratio = f"{row.measured / row.predicted:.2f}" if row.predicted else "-"
        print(f"| {row.what} | {row.size} | {predicted} | {row.measured / mm.GIB:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
