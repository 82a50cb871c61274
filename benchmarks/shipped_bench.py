#!/usr/bin/env python
"""Sonic sampling speed on the path users run: the Sonic MODEL sampled by the Sonic guider under core's euler
(nodes/sampling.run_sonic_sampler), with the library path (edm_rows_denoiser around a plain UNet) as comparison rows.

    python3 benchmarks/shipped_bench.py --frames 50 --steps 4 --budget 130   # what `make gpu-check` runs on CUDA
    .venv/bin/python benchmarks/shipped_bench.py --tiny                      # the same rows, tiny UNet, on the CPU

Rows: eager and torch.compile, fp16 and bf16, batched guidance and per-row guidance (the loader's low_vram on:
one row per UNet call, attention in 8 slices), 512² and 576×1024; most telling first, so rows that do not fit
`--budget` are the ones reported as skipped. Columns as benchmarks/gpu_bench.py (s per video-second, also at the
workflows' 25 steps; the UNet's share; achieved TFLOP/s and share of the measured bf16 peak; peak VRAM; compile s,
first calls, not in the timed run; the time of the reference loop of the same dtype and size over this row's).
End-to-end s per video-second of the shipped workflow comes from the workflows stages (tools/gpu_check.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import gpu_bench  # noqa: E402
from benchmarks import shipped_path as shipped  # noqa: E402

FPS = 12.5
WORKFLOW_STEPS = 25
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
HEADER = ("| path | compile | guidance | dtype | size | frames | steps | s per video-s | s per video-s at "
          f"{WORKFLOW_STEPS} steps | UNet share | TFLOP/s | of peak | peak VRAM GiB | compile s | vs reference loop | "
          "end-to-end s per video-s |")


@dataclass(frozen=True)
class Row:
    path: str        # "shipped" or "library"
    compile: bool
    batched: bool
    dtype: str
    height: int
    width: int

    def priority(self) -> tuple:
        return (self.compile, self.width != self.height, not self.batched, self.dtype != "bf16",
                self.path != "shipped")

    def label(self, backend: str) -> str:
        mode = f"compile ({backend})" if self.compile else "eager"
        guidance = "batched" if self.batched else "per-row + 8 slices"
        return (f"| {self.path} | {mode} | {guidance} | {self.dtype} | {self.width}x{self.height} |")


@dataclass
class Sizes:
    config: dict | None
    tokens: int
    window: int
    shift: int
    frames: int
    steps: int
    sizes: tuple[tuple[int, int], ...]
    backend: str


def all_rows(sizes: Sizes) -> list[Row]:
    rows = [Row("shipped", c, b, d, h, w) for c in (False, True) for b in (True, False) for d in DTYPES
            for h, w in sizes.sizes]
    rows += [Row("library", False, True, d, h, w) for d in DTYPES for h, w in sizes.sizes]
    return sorted(rows, key=Row.priority)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "-"


def shipped_row(row: Row, s: Sizes, device: torch.device) -> tuple[float, float, int, str, str]:
    """(seconds, seconds in the UNet, FLOPs, compile s, mode) of one timed run after two warm-up runs."""
    dtype = DTYPES[row.dtype]
    unet = shipped.random_unet(s.config, device, dtype)
    model = shipped.sonic_model(unet, low_vram=not row.batched, compute_dtype=dtype, compile=row.compile,
                                compile_backend=s.backend)
    diffusion = model.model.diffusion_model
    flops_by_batch: dict[int, int] = {}
    timer = gpu_bench.UNetTimer(diffusion.unet, device, flops_by_batch)
    diffusion.unet = timer  # inside core's model: apply_model, the patcher and the guider all go through it
    inputs = shipped.clip_inputs(s.frames, row.height, row.width, unet.config.cross_attention_dim, s.tokens)
    warm_up = time.perf_counter()
    for _ in range(2):  # compiles (when asked) and counts FLOPs: not timed
        shipped.sample(model, inputs, 1, s.window, s.shift)
    gpu_bench.sync(device)
    warm_up = time.perf_counter() - warm_up
    timer.seconds, timer.flops = 0.0, 0
    _peak_reset(device)
    start = time.perf_counter()
    _, mode = shipped.sample(model, inputs, s.steps, s.window, s.shift)
    gpu_bench.sync(device)
    total = time.perf_counter() - start
    # Compile time: the two 1-step warm-up runs beyond two steady steps (dynamo may compile in either of them:
    # the first runs under FlopCounterMode).
    compiled = f"{max(warm_up - 2 * total / s.steps, 0):.1f}" if row.compile else "-"
    report = gpu_bench.compile_report(unet)
    if report is not None and report.failure:
        compiled = f"failed: {report.failure}"
    pack_mm = shipped.pack_module("nodes.native_model").mm
    pack_mm.unload_all_models()  # the next row's model gets the whole card
    return total, timer.seconds, timer.flops, compiled, mode


def library_row(row: Row, s: Sizes, device: torch.device) -> tuple[float, float, int, str]:
    setting = gpu_bench.Setting("library", DTYPES[row.dtype], s.frames, s.steps, row.height, row.width, s.window,
                                s.shift)
    unet = gpu_bench.prepared_unet(s.config, device, setting)
    cond = gpu_bench.conditioning(s.frames, row.height // 8, row.width // 8, unet.config.cross_attention_dim,
                                  device, s.tokens)
    flops_by_batch: dict[int, int] = {}
    warm = gpu_bench.Setting(**{**setting.__dict__, "steps": 1})
    for _ in range(2):
        gpu_bench.fused_run(unet, cond, warm, device, flops_by_batch)
    _peak_reset(device)
    total, in_unet, _, flops = gpu_bench.fused_run(unet, cond, setting, device, flops_by_batch)
    return total, in_unet, flops, "-"


def reference_seconds(row: Row, s: Sizes, device: torch.device, cache: dict) -> float:
    """The official loop's time on a plain UNet of the row's dtype and size (once per dtype and size)."""
    key = (row.dtype, row.height, row.width)
    if key not in cache:
        setting = gpu_bench.Setting("reference", DTYPES[row.dtype], s.frames, s.steps, row.height, row.width,
                                    s.window, s.shift)
        unet = gpu_bench.prepared_unet(s.config, device, setting)
        cond = gpu_bench.conditioning(s.frames, row.height // 8, row.width // 8, unet.config.cross_attention_dim,
                                      device, s.tokens)
        gpu_bench.reference_run(unet, cond, gpu_bench.Setting(**{**setting.__dict__, "steps": 1}), device)
        cache[key] = gpu_bench.reference_run(unet, cond, setting, device)
        del unet
    return cache[key]


def table_row(row: Row, s: Sizes, device: torch.device, peak: float | None, references: dict) -> str:
    if row.path == "shipped":
        total, in_unet, flops, compiled, mode = shipped_row(row, s, device)
        if row.batched != mode.startswith("batched"):
            return row.label(s.backend) + f" FAILED: the guider sampled with {mode} |"
    else:
        total, in_unet, flops, compiled = library_row(row, s, device)
    vram = _peak_gib(device)
    reference = reference_seconds(row, s, device, references) if row.batched and not row.compile else None
    video_seconds = s.frames / FPS
    per_video_s = total / video_seconds
    tflops = f"{flops / in_unet / 1e12:.3g}" if in_unet else "-"
    of_peak = f"{flops / in_unet / peak:.0%}" if peak and in_unet else "-"
    versus = f"{reference / total:.2f}x" if reference else "-"
    return (row.label(s.backend) + f" {s.frames} | {s.steps} | {per_video_s:.2f} | "
            f"{per_video_s * WORKFLOW_STEPS / s.steps:.2f} | {in_unet / total:.0%} | {tflops} | {of_peak} | {vram} | "
            f"{compiled} | {versus} | - |")


def plan(args: argparse.Namespace, cuda: bool) -> Sizes:
    if cuda and not args.tiny:
        return Sizes(None, 32, 25, 7, args.frames or 50, args.steps or 4, ((512, 512), (576, 1024)), "inductor")
    from tools.tiny_models import AUDIO_TOKENS, TINY_UNET_CONFIG

    # aot_eager on the CPU: dynamo's capture and AOT graph without inductor's C++ build (minutes here).
    return Sizes(TINY_UNET_CONFIG, AUDIO_TOKENS, 5, 2, args.frames or 7, args.steps or 1, ((64, 64), (64, 128)),
                 "aot_eager")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny UNet and sizes (the default without CUDA)")
    parser.add_argument("--frames", type=int, default=None, help="frames per run (default 50; tiny 7)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per timed run (default 4; tiny 1)")
    parser.add_argument("--budget", type=float, default=600, help="seconds for all rows; later rows are skipped")
    parser.add_argument("--compile-rows", type=int, default=None,
                        help="at most this many compiled rows (default: 1 on the CPU, as many as the budget allows)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    shipped.pack_module("nodes.native_model")  # ComfyUI first (CPU mode without CUDA), as the server does
    s = plan(args, cuda)
    compile_rows = args.compile_rows if args.compile_rows is not None else (None if cuda and not args.tiny else 1)
    where = torch.cuda.get_device_name(device) if cuda else "CPU (tiny Sonic UNet, random weights)"
    print(f"Sonic sampling benchmark, shipped path, on {where}; torch {torch.__version__}")
    peak = gpu_bench.measured_bf16_peak(device)
    if peak:
        print(f"bf16 matmul peak measured here (8192³): {peak / 1e12:.0f} TFLOP/s; 'of peak' is against it")
    print(f"Rows: window {s.window}, shift {s.shift}; shipped = Sonic MODEL + Sonic guider + core euler/karras; "
          "library = edm_rows_denoiser around the plain UNet")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    references: dict = {}
    last, compiled_done = 0.0, 0
    for row in all_rows(s):
        left = args.budget - (time.monotonic() - start)
        if row.compile and compile_rows is not None and compiled_done >= compile_rows:
            print(row.label(s.backend) + " skipped: compiled rows limited (--compile-rows) |", flush=True)
            continue
        needed = last * (4 if row.compile else 1.2)  # a compile costs several eager rows; a guess, not a promise
        if left < needed or left < 5:
            print(row.label(s.backend) + f" skipped: {left:.0f} s of the budget left |", flush=True)
            continue
        began = time.monotonic()
        try:
            print(table_row(row, s, device, peak, references), flush=True)
        except torch.OutOfMemoryError as error:
            print(row.label(s.backend) + f" FAILED: out of memory ({str(error).splitlines()[0][:120]}) |", flush=True)
        compiled_done += row.compile
        if not row.compile:
            last = max(last, time.monotonic() - began)
        if cuda:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
