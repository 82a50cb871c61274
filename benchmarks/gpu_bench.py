#!/usr/bin/env python
"""Sonic sampling speed and memory: our fused sampler against a loop written the way the official code runs.

    .venv/bin/python benchmarks/gpu_bench.py            # full size on the GPU: 512x512, N=125, 25 steps, bf16+fp16
    .venv/bin/python benchmarks/gpu_bench.py --quick    # a few minutes; on a machine without CUDA: tiny model, CPU
    .venv/bin/python benchmarks/gpu_bench.py --compile --attention-slices 4   # speed options
    python3 benchmarks/gpu_bench.py --frames 50 --steps 4     # fits one device call

This times the library path (edm_rows_denoiser around a plain UNet); `make gpu-check` times the shipped path with
benchmarks/shipped_bench.py, which reuses this file's pieces for its library rows.

Random weights (speed does not depend on their values). Reported per configuration: seconds per second of video
(12.5 generated frames per second; also scaled to the workflows' 25 steps, each step costing the same), the UNet's
share of the time, achieved TFLOP/s (FLOPs counted by torch's FlopCounterMode on the first call of each batch size)
against the bf16 matmul peak measured in the same run (an 8192³ product; H200 ≈ 790 TFLOP/s),
peak VRAM, the compile time (first calls, compile + one run each; not in the timed run) and the speed-up over the
reference loop measured in the same run. Low-VRAM rows run the guidance rows one after another and slice the
attention, as the loader's low_vram mode does. On the CPU, --quick also times the tiny model eager vs compiled.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sonic_model.sampling.shift_fusion import ShiftFusion, SonicConditioning, edm_rows_denoiser  # noqa: E402
from sonic_model.sampling.shift_windows import shifted_windows  # noqa: E402
from sonic_model.sampling.memory_model import ATTENTION_SLICES  # noqa: E402
from sonic_model.unet.speed import apply_speed_options, compile_report  # noqa: E402
from sonic_model.unet.unet import build_sonic_unet  # noqa: E402

FPS = 12.5
WORKFLOW_STEPS = 25  # the shipped workflows' default


@dataclass
class Setting:
    name: str
    dtype: torch.dtype
    frames: int
    steps: int
    height: int
    width: int
    window: int = 25
    shift: int = 7
    low_vram: bool = False
    compile: bool = False
    compile_mode: str | None = None
    attention_slices: int | None = None

    def options(self) -> str:
        named = ["compile"] if self.compile else []
        named += [f"{self.attention_slices} slices"] if self.attention_slices and self.attention_slices > 1 else []
        return ", ".join(named) or "-"


def random_unet(config: dict | None, device: torch.device, dtype: torch.dtype):
    model = build_sonic_unet(config, device="meta")
    model = torch.nn.Module.to_empty(model, device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return torch.nn.Module.to(model, dtype=dtype).eval()  # (diffusers' own .to warns on every cast)


def conditioning(n: int, h: int, w: int, d: int, device, tokens: int) -> SonicConditioning:
    g = torch.Generator().manual_seed(0)
    return SonicConditioning(concat_latent=torch.randn(1, 4, h, w, generator=g).to(device),
                             image_embeds=torch.randn(1, d, generator=g).to(device),
                             audio_tokens=torch.randn(n, tokens, d, generator=g).to(device),
                             null_audio_tokens=torch.randn(tokens, d, generator=g).to(device),
                             motion_buckets=(16 + 16 * torch.rand(n, 2, generator=g)).to(device),
                             face_mask=torch.ones(1, 1, h * 8, w * 8, device=device))


def karras(steps: int, device) -> list[float]:
    lo, hi, rho = 0.002 ** (1 / 7), 700 ** (1 / 7), 7
    return [(hi + i / max(steps - 1, 1) * (lo - hi)) ** rho for i in range(steps)] + [0.0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class UNetTimer(torch.nn.Module):
    """Wraps the UNet to add up the time spent inside it (synchronised on CUDA) and its FLOPs: the first call of
    each batch size is counted by FlopCounterMode (into `flops_by_batch`, shared between runs), later ones looked up."""

    def __init__(self, unet, device, flops_by_batch: dict[int, int]):
        super().__init__()
        self.unet, self.device, self.seconds, self.flops = unet, device, 0.0, 0
        self.flops_by_batch = flops_by_batch

    def forward(self, sample, *args, **kwargs):
        batch = sample.shape[0] * sample.shape[1]
        if batch not in self.flops_by_batch:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                out = self.unet(sample, *args, **kwargs)
            self.flops_by_batch[batch] = counter.get_total_flops()
            self.flops += self.flops_by_batch[batch]
            return out
        sync(self.device)
        start = time.perf_counter()
        out = self.unet(sample, *args, **kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        self.flops += self.flops_by_batch[batch]
        return out


@torch.no_grad()
def fused_run(unet, cond, s: Setting, device, flops_by_batch: dict[int, int]) -> tuple[float, float, int, int]:
    timer = UNetTimer(unet, device, flops_by_batch)
    fusion = ShiftFusion(cond, window=s.window, shift=s.shift, batched_cfg=not s.low_vram)
    rows = edm_rows_denoiser(timer)
    sigmas = karras(s.steps, device)
    x = cond.concat_latent * 0.18215 + sigmas[0] * torch.randn(s.frames, 4, s.height // 8, s.width // 8,
                                                                device=device)
    sync(device)
    start = time.perf_counter()
    for i in range(s.steps):  # euler on the fused x0
        x0 = fusion.denoise(x, float(sigmas[i]), i, rows).guided
        x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    sync(device)
    return time.perf_counter() - start, timer.seconds, fusion.unet_calls, timer.flops


@torch.no_grad()
def reference_run(unet, cond, s: Setting, device) -> float:
    """The official loop's shape: per window rebuild every input, one batch-3 call, per-window Euler step,
    fp16 averaging of the stepped windows."""
    sigmas = karras(s.steps, device)
    dtype = next(unet.parameters()).dtype  # the official loop's fp16 latents; here the UNet's own dtype
    n, h, w = s.frames, s.height // 8, s.width // 8
    latents = (cond.concat_latent * 0.18215 + sigmas[0] * torch.randn(n, 4, h, w, device=device)).to(dtype)
    sync(device)
    start = time.perf_counter()
    for i in range(s.steps):
        acc = torch.zeros_like(latents)
        count = torch.zeros(n, device=device, dtype=dtype)
        for frames in shifted_windows(n, s.window, s.shift, i):
            idx = torch.tensor(frames, device=device)
            f = len(frames)
            x = latents[idx]
            z = cond.concat_latent.to(dtype).expand(f, -1, -1, -1)
            concat = torch.stack([torch.zeros_like(z), z, z])
            c_in = 1 / math.sqrt(sigmas[i] ** 2 + 1)
            sample = torch.cat([(x * c_in).unsqueeze(0).expand(3, -1, -1, -1, -1), concat], 2).to(dtype)
            e = cond.image_embeds.to(dtype).reshape(1, 1, -1).expand(f, 1, -1)
            clip = torch.cat([torch.zeros_like(e), e, e])
            null = cond.null_audio_tokens.to(dtype).unsqueeze(0).expand(f, -1, -1)
            audio = torch.cat([null, null, cond.audio_tokens[idx].to(dtype)])
            ids = torch.tensor([[FPS, *cond.motion_buckets[idx].mean(0).tolist()]] * 3, device=device, dtype=dtype)
            v = unet(sample, torch.tensor(0.25 * math.log(sigmas[i]), device=device), added_time_ids=ids,
                     clip_states=clip, audio_tokens=audio, face_mask=cond.face_mask.to(dtype))
            u, im, c = v.unbind(0)
            v = u + 2.0 * (im - u) + 7.5 * (c - im)
            x0 = x / (sigmas[i] ** 2 + 1) - v * sigmas[i] * c_in
            stepped = x.float() + (x.float() - x0.float()) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            acc.index_add_(0, idx, stepped.to(dtype))
            count.index_add_(0, idx, torch.ones(f, device=device, dtype=dtype))
        latents = acc / count.view(-1, 1, 1, 1)
    sync(device)
    return time.perf_counter() - start


def measured_bf16_peak(device: torch.device) -> float | None:
    """FLOP/s of an 8192³ bf16 matrix product (mean of 10 after 3 warm-ups): the ceiling this GPU really reaches."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * 8192**3 / (time.perf_counter() - start)


def prepared_unet(config: dict | None, device: torch.device, s: Setting):
    unet = random_unet(config, device, s.dtype)
    return apply_speed_options(unet, compile=s.compile,
                               attention_slices=s.attention_slices, compile_mode=s.compile_mode)


def compile_seconds(unet) -> str:
    report = compile_report(unet)
    if report is None:
        return "-"
    return f"failed: {report.failure}" if report.failure else f"{report.compile_seconds:.1f}"


def run(settings: list[Setting], config: dict | None, device: torch.device, tokens: int,
        peak: float | None = None) -> list[str]:
    rows = []
    for s in settings:
        unet = prepared_unet(config, device, s)
        d = unet.config.cross_attention_dim
        cond = conditioning(s.frames, s.height // 8, s.width // 8, d, device, tokens)
        warm = Setting(**{**s.__dict__, "steps": 1})
        flops_by_batch: dict[int, int] = {}
        fused_run(unet, cond, warm, device, flops_by_batch)  # compiles here when --compile: reported, not timed
        fused_run(unet, cond, warm, device, flops_by_batch)  # the first run counted FLOPs: warm up for real too
        compiled = compile_seconds(unet)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        total, in_unet, calls, flop = fused_run(unet, cond, s, device, flops_by_batch)
        vram = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        reference = float("nan")
        if not s.low_vram:
            reference_run(unet, cond, warm, device)  # its own input dtypes may compile once more
            reference = reference_run(unet, cond, s, device)
        video_seconds = s.frames / FPS
        tflops = f"{flop / in_unet / 1e12:.3g}" if in_unet else "-"
        of_peak = f"{flop / in_unet / peak:.0%}" if peak and in_unet else "-"
        vram_text = f"{vram:.1f}" if device.type == "cuda" else "-"
        speedup = f"{reference / total:.2f}x" if reference == reference else "-"
        per_video_s = total / video_seconds
        rows.append(f"| {s.name} | {s.options()} | {str(s.dtype).removeprefix('torch.')} | {s.width}x{s.height} | "
                    f"{s.frames} | {s.steps} | {per_video_s:.2f} | {per_video_s * WORKFLOW_STEPS / s.steps:.2f} | "
                    f"{in_unet / total:.0%} | {tflops} | "
                    f"{of_peak} | {vram_text} | {compiled} | {speedup} |")
        del unet
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def eager_vs_compiled(config: dict | None, device: torch.device, tokens: int, s: Setting) -> list[str]:
    """Time per sampling step of one setting, eager and compiled (inductor), and the compile time."""
    rows = []
    for compiled in (False, True):
        setting = Setting(**{**s.__dict__, "compile": compiled})
        unet = prepared_unet(config, device, setting)
        cond = conditioning(s.frames, s.height // 8, s.width // 8, unet.config.cross_attention_dim, device, tokens)
        flops_by_batch: dict[int, int] = {}
        fused_run(unet, cond, Setting(**{**setting.__dict__, "steps": 1}), device, flops_by_batch)
        report = compile_report(unet)
        if report is not None and report.failure:
            return rows + [f"compile unavailable: {report.failure}"]
        total, in_unet, calls, _ = fused_run(unet, cond, setting, device, flops_by_batch)
        mode = "compiled" if compiled else "eager"
        rows.append(f"| {mode} | {total / s.steps:.3f} | {in_unet / calls * 1e3:.1f} | {compile_seconds(unet)} |")
    eager, fast = (float(r.split("|")[2]) for r in rows)
    return rows + [f"compiled / eager time per step: {fast / eager:.2f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few minutes; tiny model on CPU when no CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (compile time reported apart)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune (with --compile)")
    parser.add_argument("--attention-slices", type=int, default=None, metavar="N",
                        help=f"attention in N pieces in every mode (default: none, {ATTENTION_SLICES} in "
                             "low-VRAM rows; 0 or 1: none anywhere)")
    parser.add_argument("--no-compile-compare", action="store_true",
                        help="CPU --quick: skip the eager vs compiled timing (its first compile takes minutes)")
    parser.add_argument("--frames", type=int, default=None, help="frames per run instead of the mode's default")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per run instead of the default")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        config, tokens = None, 32
        n, steps = (25, 3) if args.quick else (125, 25)
        settings = [Setting("default", torch.bfloat16, n, steps, 512, 512),
                    Setting("default", torch.float16, n, steps, 512, 512),
                    Setting("low-vram", torch.bfloat16, n, steps, 512, 512, low_vram=True),
                    Setting("default", torch.bfloat16, n, steps, 1024, 576),
                    Setting("low-vram", torch.bfloat16, n, steps, 1024, 576, low_vram=True)]
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        from tools.tiny_models import TINY_UNET_CONFIG

        config, tokens = TINY_UNET_CONFIG, 4
        settings = [Setting("default", torch.float32, 13, 3, 64, 64, window=5, shift=2),
                    Setting("low-vram", torch.float32, 13, 3, 64, 64, window=5, shift=2, low_vram=True)]
        if not args.quick:
            settings.append(Setting("default", torch.float32, 50, 10, 128, 128))
    for s in settings:
        s.frames, s.steps = args.frames or s.frames, args.steps or s.steps
        s.compile, s.compile_mode = args.compile, args.compile_mode
        s.attention_slices = ATTENTION_SLICES if s.low_vram else None
        if args.attention_slices is not None:
            s.attention_slices = args.attention_slices if args.attention_slices > 1 else None
    where = torch.cuda.get_device_name(device) if cuda else "CPU (tiny Sonic UNet, random weights)"
    print(f"Sonic sampling benchmark on {where}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = measured_bf16_peak(device)
    if peak:
        print(f"bf16 matmul peak measured here (8192³): {peak / 1e12:.0f} TFLOP/s; 'of peak' is against it")
    print(f"| mode | options | dtype | size | frames | steps | s per video-s | "
          f"s per video-s at {WORKFLOW_STEPS} steps | UNet share | TFLOP/s | of peak | peak VRAM GiB | compile s | "
          "vs reference loop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in run(settings, config, device, tokens, peak):
        print(row, flush=True)
    if not cuda and args.quick and not args.no_compile_compare:
        s = Setting(**{**settings[0].__dict__, "steps": 5})
        plain = Setting(**{**s.__dict__, "compile": False})
        print(f"\nEager vs compiled (inductor), tiny model, {s.frames} frames, window {s.window}, "
              f"{s.width}x{s.height}, {s.steps} steps, options: {plain.options()}")
        print("| mode | s per step | ms per UNet call | compile s |")
        print("|---|---|---|---|")
        for row in eager_vs_compiled(config, device, tokens, s):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
