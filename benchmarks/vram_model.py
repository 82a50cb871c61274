#!/usr/bin/env python
"""Predicted peak VRAM of a Sonic run per resolution, mode and weight dtype (sonic_model/sampling/memory_model.py).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vram_model.py            # the table; last line: 512x512 auto
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vram_model.py --derive   # re-measure the model's coefficients

A model, not a GPU measurement. `--derive` builds the real-config networks on the meta device (no memory, no
compute) and counts the bytes of the tensors alive at each moment of one forward: the live set that bounds an
inference forward's memory. The memory-efficient attention kernels (flash / mem-efficient SDPA) are stood in for by
their output and log-sum-exp allocations; the math kernel runs as PyTorch decomposes it.

The "auto" line is `choose_mode` for an 8 GB card: 8 GiB minus the CUDA context (~0.4 GiB, assumed) minus core's
EXTRA_RESERVED_VRAM (600 MiB on Windows, 400 MiB elsewhere; the larger taken), ≈ 7.0 GiB free to the run.
"""
from __future__ import annotations

import argparse
import sys
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sonic_model.sampling import memory_model as mm  # noqa: E402

SIZES = ((512, 512), (576, 1024), (768, 768))  # (height, width)
WEIGHT_DTYPES = ("fp16", "fp8_e4m3fn")
CARD_8GB = mm.card_free_vram(8 * mm.GIB, "windows")


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode that are still referenced; `peak` is their maximum.

    `external` tensors (weights, inputs) and their views are not counted. Works on the meta device, where the
    storages have sizes but no memory.
    """

    def __init__(self, external: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.external = {_storage_key(t) for t in external}
        self.sizes: dict[int, int] = {}
        self.holders: dict[int, int] = {}
        self.current = self.peak = 0

    def _track(self, t: torch.Tensor) -> None:
        key = _storage_key(t)
        if key in self.external:
            return
        if key in self.sizes:
            self.holders[key] += 1
        else:
            self.sizes[key] = t.untyped_storage().nbytes()
            self.holders[key] = 1
            self.current += self.sizes[key]
            self.peak = max(self.peak, self.current)
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            self.current -= self.sizes.pop(key)
            del self.holders[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return out


class EfficientAttention(TorchFunctionMode):
    """SDPA as the flash / memory-efficient kernels allocate: the output and a transient fp32 log-sum-exp."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, _, v = args[:3]
            out = q.new_empty(*q.shape[:-1], v.shape[-1])
            q.new_empty(q.shape[:-1], dtype=torch.float32)  # freed at once, as the kernel's lse is in inference
            return out
        return func(*args, **(kwargs or {}))


def peak_live_bytes(module: torch.nn.Module, call: Callable[..., object], inputs: tuple, efficient: bool) -> int:
    """Peak bytes of the tensors `call(*inputs)` creates and holds, weights and inputs excluded."""
    meter = LiveTensorBytes([*module.parameters(), *module.buffers(), *inputs])
    # The math kernel forced (which kernel PyTorch picks on its own depends on process-wide settings), computing in
    # fp16/bf16 without upcasting, as ComfyUI sets it at start (model_management: allow_fp16_bf16_reduction_math_sdp).
    attention = EfficientAttention() if efficient else sdpa_kernel(SDPBackend.MATH)
    upcast_allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        with torch.no_grad(), meter, attention:
            call(*inputs)
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(upcast_allowed)
    return meter.peak


def meta_unet(config: dict | None = None, dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    from sonic_model.unet.unet import build_sonic_unet
    return build_sonic_unet(config, device="meta", dtype=dtype)


def unet_inputs(frames: int, height: int, width: int, dtype: torch.dtype = torch.float16,
                device: str | torch.device = "meta", context_dim: int = mm.CONTEXT_DIM,
                audio_tokens: int = mm.AUDIO_TOKENS) -> tuple:
    """One guidance row's UNet call of `frames` frames at latent height × width (random values off the meta device)."""
    gen = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        if torch.device(device).type == "meta":
            return torch.empty(shape, device=device, dtype=dtype)
        return torch.rand(shape, generator=gen).to(device=device, dtype=dtype)

    return (tensor(1, frames, 8, height, width), torch.tensor(0.5, device=device), tensor(1, 3),
            tensor(frames, 1, context_dim), tensor(frames, audio_tokens, context_dim),
            tensor(1, 1, height * 8, width * 8))


def unet_activation_peak(unet: torch.nn.Module, frames: int, height: int, width: int, efficient: bool = True,
                         slices: int | None = None) -> int:
    from sonic_model.unet.speed import set_attention_slices
    set_attention_slices(unet, slices)
    param = next(unet.parameters())
    return peak_live_bytes(unet, unet, unet_inputs(frames, height, width, param.dtype, param.device), efficient)


def meta_vae(dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """SVD's temporal VAE (stable-video-diffusion-img2vid-xt vae/config.json) on the meta device."""
    from diffusers import AutoencoderKLTemporalDecoder
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder(block_out_channels=(128, 256, 512, 512),
                                           down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2,
                                           latent_channels=4)
    return torch.nn.Module.to(vae, device="meta", dtype=dtype)  # its mix factors are built on the CPU


def vae_decode_peak(vae: torch.nn.Module, chunk: int, height: int, width: int) -> int:
    z = torch.empty(chunk, 4, height // 8, width // 8, device="meta", dtype=next(vae.parameters()).dtype)
    return peak_live_bytes(vae, lambda z: vae.decode(z, num_frames=chunk).sample, (z,), efficient=True)


def rife_peak(batch: int, height: int, width: int) -> tuple[int, int]:
    """(parameter count, live bytes of one midpoint batch) of RIFE's IFNet in fp32 on the meta device."""
    from sonic_model.video.rife import midpoint
    from sonic_model.video.rife_blocks import IFNet
    with torch.device("meta"):
        net = IFNet()
    frames = torch.empty(batch + 1, 3, height, width, device="meta")
    peak = peak_live_bytes(net, lambda f: midpoint(net, f[:-1], f[1:]), (frames,), efficient=True)
    return sum(p.numel() for p in net.parameters()), peak


def derive() -> None:
    """Measure the coefficients memory_model.py states, from the real-config networks on the meta device."""
    unet = meta_unet()
    params = sum(p.numel() for p in unet.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in unet.modules())
    c0, f = mm.UNET_BASE_CHANNELS, 25
    print(f"UNet parameters {params:,} (model {mm.UNET_PARAMS:,}); largest layer {largest:,} "
          f"(model {mm.UNET_LARGEST_LAYER_PARAMS:,})")
    for label, kw in (("efficient", dict(efficient=True)), ("math", dict(efficient=False)),
                      ("math, 8 slices", dict(efficient=False, slices=8))):
        for h, w in ((64, 64), (72, 128), (96, 96)):
            peak = unet_activation_peak(unet, f, h, w, **kw)
            model = mm.unet_activation_bytes(f, h * w, "fp16", "efficient" if kw["efficient"] else "math",
                                             kw.get("slices"))
            print(f"UNet activations {label:15s} f={f} latent {h}x{w}: {peak / 2 / (f * h * w * c0):8.3f} C0 "
                  f"per frame-token; measured {peak / mm.GIB:7.3f} GiB, model {model / mm.GIB:7.3f} GiB")
    vae = meta_vae()
    vae_params = sum(p.numel() for p in vae.parameters())
    peak = vae_decode_peak(vae, 8, 512, 512)
    print(f"VAE parameters {vae_params:,}; decode 8 frames 512x512: {peak / 2 / (8 * 512 * 512):.2f} elements "
          "per pixel-frame")
    rife_params, peak = rife_peak(8, 512, 512)
    print(f"RIFE parameters {rife_params:,}; batch 8 at 512x512: {peak / 4 / (8 * 512 * 512):.2f} fp32 elements "
          "per pixel-pair")


def _gib(n: int) -> str:
    return f"{n / mm.GIB:.2f}"


def _sampling_offload_mode(height: int, width: int, weights: str, attention: str) -> mm.SamplingMode:
    """The offload mode with the smallest offload that lets the sampling phase fit the 8 GB card (0 if none is
    needed, everything if even that does not fit)."""
    try:
        mode = mm.choose_mode(CARD_8GB, height, width, weight_dtype=weights, attention=attention,
                              decode_chunk=None, rife_batch=None).mode
    except mm.DoesNotFit:
        return replace(mm.OFFLOAD, offload_bytes=mm.unet_weight_bytes(weights))
    return mode if mode.offload else mm.OFFLOAD


def mode_table(sizes: tuple, attention: str) -> None:
    print("| size | weights | mode | UNet resident | activations | sampling | decode | RIFE | peak "
          "| sampling fits 8 GB | all fit 8 GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for height, width in sizes:
        for weights in WEIGHT_DTYPES:
            shape = mm.RunShape(height, width, weight_dtype=weights, attention=attention)
            for mode in mm.MODES:
                if mode.offload:
                    mode = _sampling_offload_mode(height, width, weights, attention)
                est = mm.estimate(shape, mode)
                fit = lambda n: "yes" if n * (1 + mm.SAFETY_MARGIN) <= CARD_8GB else "no"  # noqa: E731
                print(f"| {width}x{height} | {weights} | {mode} | {_gib(est.unet_resident)} | {_gib(est.activations)} "
                      f"| {_gib(est.sampling)} | {_gib(est.decode)} | {_gib(est.rife)} | {_gib(est.peak)} "
                      f"| {fit(est.sampling)} | {fit(est.peak)} |")


def auto_line(height: int, width: int, weights: str, **shape: object) -> str:
    try:
        chosen = mm.choose_mode(CARD_8GB, height, width, weight_dtype=weights, **shape)
    except mm.DoesNotFit as error:
        return f"does not fit ({str(error).rstrip('.')})"
    return f"{chosen.mode}, {_gib(chosen.peak)} GiB"


def table() -> None:
    run = mm.RunShape(512, 512)
    print(f"Predicted peak VRAM (GiB): a model, not measured on a GPU. Compute dtype {run.dtype}, window {run.window}, "
          f"{run.frames_total} generated frames, "
          f"VAE decode chunk {mm.DEFAULT_DECODE_CHUNK} in a 2-byte dtype, RIFE batch {mm.DEFAULT_RIFE_BATCH}. "
          f"8 GB card: {_gib(CARD_8GB)} GiB free, {mm.SAFETY_MARGIN:.0%} safety margin on the peak.")
    print("\nMemory-efficient attention (flash / mem-efficient SDPA, what CUDA GPUs run):\n")
    mode_table(SIZES, "efficient")
    print("\nMath attention kernel (no fused kernel: old GPUs, forced math SDPA), 512x512 only:\n")
    mode_table(SIZES[:1], "math")
    print("\nAutomatic choice for the 8 GB card (whole run / sampling phase only / with the largest decode chunk that "
          "fits):\n")
    cases = [(size, weights, "bf16") for size in SIZES for weights in WEIGHT_DTYPES]
    cases.append((SIZES[0], "fp16", "fp32"))  # core decodes in fp32 on GPUs without bf16 (its VAE dtypes: bf16, fp32)
    for (height, width), weights, vae in cases:
        chunk = mm.largest_decode_chunk(CARD_8GB, height, width, vae)
        print(f"- {width}x{height} {weights}, VAE {vae}: whole run: "
              f"{auto_line(height, width, weights, vae_dtype=vae)}; sampling only: "
              f"{auto_line(height, width, weights, decode_chunk=None, rife_batch=None)}; decode chunk {chunk}: "
              f"{auto_line(height, width, weights, decode_chunk=chunk, vae_dtype=vae)}")
    print("\nBy audio length (12.5 generated frames per second), sampling phase, fp16 weights, auto mode (decode and "
          "RIFE stream chunk by chunk: their peaks above do not grow with the audio). On the GPU the only clip-long "
          "state is core's two start copies; the sampler's latents and the audio tokens are in host RAM:\n")
    length_table(SIZES[:2])
    chosen = mm.choose_mode(CARD_8GB, 512, 512, vae_dtype="bf16")
    print(f"\n512x512 auto: {_gib(chosen.peak)} GiB peak ({chosen.mode})")
    long = mm.choose_mode(CARD_8GB, 512, 512, vae_dtype="bf16", frames_total=round(600 * mm.FRAMES_PER_SECOND))
    print(f"512x512 auto 600 s: {_gib(long.peak)} GiB peak ({long.mode})")


AUDIO_LENGTHS = ((10, "10 s"), (60, "1 min"), (300, "5 min"), (600, "10 min"), (3600, "1 h"))


def _sampling_on(card: int, height: int, width: int, frames: int) -> str:
    try:
        chosen = mm.choose_mode(card, height, width, frames_total=frames, decode_chunk=None, rife_batch=None)
    except mm.DoesNotFit:
        return "does not fit"
    return f"{_gib(chosen.sampling)} ({chosen.mode})"


def length_table(sizes: tuple) -> None:
    cards = {"8 GB": CARD_8GB, "12 GB": mm.card_free_vram(12 * mm.GIB, "windows")}
    print("| size | audio | frames | GPU clip state | " + " | ".join(f"sampling on {c} (mode)" for c in cards)
          + " | host RAM for sampling |")
    print("|---|---|---|---|" + "---|" * len(cards) + "---|")
    for height, width in sizes:
        for seconds, label in AUDIO_LENGTHS:
            frames = round(seconds * mm.FRAMES_PER_SECOND)
            tokens = mm.RunShape(height, width).tokens
            fits = " | ".join(_sampling_on(card, height, width, frames) for card in cards.values())
            print(f"| {width}x{height} | {label} | {frames} | {_gib(mm.clip_state_bytes(frames, tokens))} | {fits} "
                  f"| {_gib(mm.host_state_bytes(frames, tokens))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--derive", action="store_true", help="re-measure the coefficients on the meta device")
    args = parser.parse_args()
    derive() if args.derive else table()


if __name__ == "__main__":
    main()
