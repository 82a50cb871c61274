#!/usr/bin/env python
"""A smaller card on a big GPU: does the shipped 512² run fit 8 (or 12) GiB, and how far off is the memory model?

    python3 benchmarks/vram_emulate.py --card-gib 8 --models DIR --seconds 10,60 --steps 1   # on CUDA
    .venv/bin/python benchmarks/vram_emulate.py --card-gib 8 --models DIR --tiny              # CPU: the code path

On CUDA the process is capped to the card (`torch.cuda.set_per_process_memory_fraction`, the CUDA context of this
process counted in) and `torch.cuda.mem_get_info` answers as that card's driver would (total = the card, free = the
card less the context and what torch holds), so that both core's loader and the Sonic guider read the card's free
memory; ComfyUI gets the card's own --reserve-vram (core's Linux default). A reserve of (big card − small card)
alone would not do: the guider reads core's free memory, which does not subtract the reserve (`--reserve-only`
runs that way, to show what a user who reserves part of a big card gets).

Then, as a user's workflow does: the UNet as a core MODEL with low_vram auto (the guider picks the mode from the free
memory), one sampling run per audio length (`--steps`: the peak does not depend on the step count), the first two
decode chunks through the pack's decode (core VAE) and RIFE on them. Per phase the measured peak (torch's largest
allocation during the phase, whatever is resident) against the prediction of sonic_model/sampling/memory_model.py for the
mode chosen, and pass/fail against the card. Without CUDA the same calls run at tiny size on the CPU, and only the
predictions (for the full-size 512² run on the card) are figures.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sonic_model.sampling import memory_model as mm_model  # noqa: E402

FPS = 12.5
RESERVE_GIB = mm_model.COMFY_RESERVED_VRAM["linux"] / mm_model.GIB
CHUNK, RIFE_BATCH = 8, 8


@dataclass
class Phase:
    name: str
    predicted: int
    measured: int | None  # None: not measured (CPU) or the phase failed
    note: str = ""


def cap_to_card(card: int, reading: bool = True) -> tuple[int, float]:
    """Cap this process to a `card`-byte GPU; returns the context bytes counted against it (what the device has in
    use beyond torch's own reservation) and the --reserve-vram (GiB) to give ComfyUI. `reading`: make the CUDA
    free-memory reading the card's and keep core's own reserve; else leave the big card's reading and reserve the
    difference (what a user of a shared big card does, which the guider's free-memory reading does not subtract)."""
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()
    torch.cuda.set_per_process_memory_fraction((card - context) / total)
    if not reading:
        return context, RESERVE_GIB + (total - card) / mm_model.GIB
    real = torch.cuda.mem_get_info

    def card_reading(device=None):
        free_now, _ = real(device)
        return min(free_now, card - context - torch.cuda.memory_reserved()), card

    torch.cuda.mem_get_info = card_reading
    return context, RESERVE_GIB


def peak_of(run, device: torch.device):
    """(result, peak bytes torch held while `run()` ran); the peak is None on the CPU."""
    if device.type != "cuda":
        return run(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = run()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated()


def mode_of(text: str) -> mm_model.SamplingMode:
    """The memory model's mode from the guider's readout ('per-row + slicing + offload 1.25 GiB', …)."""
    for mode in reversed(mm_model.MODES):
        if text.startswith(mode.name):
            offload = re.search(r"([\d.]+) GiB", text)
            if mode.offload and offload:
                return mm_model.SamplingMode(mode.name, mode.batched_guidance, mode.attention_slices, True,
                                             int(float(offload.group(1)) * mm_model.GIB))
            return mode
    raise ValueError(f"unknown sampling mode {text!r}")


def one_length(shipped, model, vae, rife, seconds: float, run_seconds: float, args, device: torch.device,
               size: int, tiny: bool) -> tuple[str, list[Phase]]:
    """Sample `run_seconds` of audio, decode and interpolate its start; the predictions are for `seconds` at 512²."""
    frames = int(run_seconds * FPS)
    d = model.model.diffusion_model.unet.config.cross_attention_dim
    inputs = shipped.clip_inputs(frames, size, size, d, 4 if tiny else mm_model.AUDIO_TOKENS)
    window = 5 if tiny else 25
    try:
        (latents, chosen), sampled = peak_of(lambda: shipped.sample(model, inputs, args.steps, window, 7), device)
    except torch.OutOfMemoryError as error:
        return "out of memory", [Phase("sampling", 0, None, str(error).splitlines()[0][:160])]
    mode = mode_of(chosen)
    shape = mm_model.RunShape(512, 512, 25, "fp16", frames_total=int(seconds * FPS), decode_chunk=CHUNK,
                              rife_batch=RIFE_BATCH, vae_dtype=_dtype_name(vae.vae_dtype))
    predicted = mm_model.estimate(shape, mode)
    phases = [Phase("sampling", predicted.sampling, sampled)]
    chunk, batch = (2, 2) if tiny else (CHUNK, RIFE_BATCH)  # tiny: the same calls on fewer frames
    head = latents[:2 * chunk]
    try:
        pixels, decoded = peak_of(lambda: shipped.decode(vae, head, chunk), device)
        phases.append(Phase(f"decode ({CHUNK}-frame chunks)", predicted.decode, decoded))
        _, interpolated = peak_of(lambda: shipped.interpolate(rife, pixels, batch), device)
        phases.append(Phase(f"RIFE ({RIFE_BATCH} pairs)", predicted.rife, interpolated))
    except torch.OutOfMemoryError as error:
        phases.append(Phase("decode / RIFE", predicted.decode, None, str(error).splitlines()[0][:160]))
    return chosen, phases


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


def predicted_lines(card: int, seconds: list[float]) -> list[str]:
    """What the memory model predicts for the full-size 512² fp16 run on the card (the mode it would pick)."""
    free = mm_model.card_free_vram(card, "linux")
    lines = [f"Predicted (sonic_model/sampling/memory_model.py) for 512², fp16, window 25 on {card / mm_model.GIB:.0f} GiB "
             f"({free / mm_model.GIB:.2f} GiB free after the CUDA context and core's reserve):", "",
             "| audio s | mode it picks | sampling GiB | decode GiB | RIFE GiB | peak GiB | fits |",
             "|---|---|---|---|---|---|---|"]
    for s in seconds:
        try:
            est = mm_model.choose_mode(free, 512, 512, 25, "fp16", frames_total=int(s * FPS))
        except mm_model.DoesNotFit as error:
            lines.append(f"| {s:g} | does not fit: {error} | | | | | no |")
            continue
        g = lambda n: f"{n / mm_model.GIB:.2f}"  # noqa: E731
        lines.append(f"| {s:g} | {est.mode} | {g(est.sampling)} | {g(est.decode)} | {g(est.rife)} | {g(est.peak)} "
                     "| yes |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card-gib", type=float, required=True, help="the card to emulate, GiB")
    parser.add_argument("--models", type=Path, required=True,
                        help="random-weights models folder (tools/tiny_models.py)")
    parser.add_argument("--seconds", default="10,60", help="audio lengths, seconds")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per run (the peak does not depend on it)")
    parser.add_argument("--tiny", action="store_true", help="tiny UNet at 64² on the CPU (the dry run's code check)")
    parser.add_argument("--reserve-only", action="store_true",
                        help="CUDA: no card reading, only --reserve-vram (big card − card): how a shared card runs")
    args = parser.parse_args(argv)
    card = int(args.card_gib * mm_model.GIB)
    seconds = [float(s) for s in args.seconds.split(",")]
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    context, reserve = cap_to_card(card, not args.reserve_only) if cuda else (0, RESERVE_GIB)

    from tools.comfy_runtime import COMFYUI_DIR

    sys.path.insert(0, str(COMFYUI_DIR))
    import comfy.cli_args  # the card's own reserve, set before core's model management reads it

    comfy.cli_args.args.reserve_vram = reserve
    from benchmarks import shipped_path as shipped

    torch.set_num_threads(torch.get_num_threads() if cuda else 1)
    native = shipped.pack_module("nodes.native_model")
    unet_config = None
    if not cuda:
        from tools.tiny_models import TINY_UNET_CONFIG
        unet_config = TINY_UNET_CONFIG
    dtype = torch.float16 if cuda else torch.float32
    start = time.perf_counter()
    # As the loader: weights on the offload device, core loads them (fully or partly) when sampling starts.
    unet = shipped.random_unet(unet_config, native.mm.unet_offload_device(), dtype)
    model = shipped.sonic_model(unet, low_vram=None, compute_dtype=dtype)
    vae, rife = shipped.load_vae(args.models), shipped.load_rife(args.models)
    free = native.mm.get_free_memory(native.mm.get_torch_device())
    where = torch.cuda.get_device_name() if cuda else "the CPU (tiny UNet, 64²)"
    print(f"Card {args.card_gib:g} GiB emulated on {where}"
          f"; CUDA context {context / mm_model.GIB:.2f} GiB; --reserve-vram {reserve:.2f}; core reads "
          f"{free / mm_model.GIB:.2f} GiB free; models built in {time.perf_counter() - start:.0f} s")
    print("\n".join(predicted_lines(card, seconds)))
    size = 512 if cuda else 64
    runs = seconds if cuda else [s / 25 for s in seconds]  # tiny: a 25th of the audio, the same calls
    print(f"\nMeasured (peak torch allocation per phase, GiB; {args.steps} sampling step(s); decode and RIFE on the "
          f"first {2 * CHUNK} frames){'' if cuda else ': CPU, nothing to measure, the code path only'}:\n")
    print("| audio s | mode chosen | phase | predicted GiB | measured GiB | measured / predicted | fits the card |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for s, run in zip(seconds, runs):
        chosen, phases = one_length(shipped, model, vae, rife, s, run, args, device, size, not cuda)
        for p in phases:
            measured = "-" if p.measured is None else f"{p.measured / mm_model.GIB:.2f}"
            ratio = f"{p.measured / p.predicted:.2f}" if p.measured and p.predicted else "-"
            fits = "-" if not cuda else ("FAIL" if p.measured is None or p.measured + context > card else "pass")
            failed |= fits == "FAIL"
            note = f" ({p.note})" if p.note else ""
            print(f"| {s:g} | {chosen} | {p.name}{note} | {p.predicted / mm_model.GIB:.2f} | {measured} | {ratio} | "
                  f"{fits} |", flush=True)
        native.mm.unload_all_models()
        native.mm.soft_empty_cache(True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
