#!/usr/bin/env python
"""Peak memory of writing a Sonic video for 10 s, 60 s and 600 s of audio: the streaming "Decode + Save Video" path.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_audio_memory.py            # N = 125, 750, 7500 (~4 min CPU)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_audio_memory.py --quick    # CI-sized (~30 s)
    ... --baseline 60   # also time the hold-everything path (SonicDecode → SonicInterpolate → PasteBack →
                        # core's CreateVideo/SaveVideo writer) for lengths up to 60 s, for contrast

Each length runs in a fresh subprocess through the pack's real save function (`save_sonic_video`, the node's adapter
around sonic_model.video.video_pipeline.write_video: chunked decode, RIFE ×2 across chunk borders, paste-back, H.264 +
AAC). The decoder is a stand-in (a fixed ×8 transposed conv: the
SVD VAE is too slow on a CPU for 7500 frames); RIFE is the real full-size IFNet with random weights. Measured: the
child's RSS once models and inputs exist (base), the peak RSS during the write (VmHWM, reset right before it), and
peak VRAM when CUDA is used. Target: peak grows < 10 % from 60 s to 600 s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_audio_memory.py --device-peak   # 10 s and 600 s (~6 min)

`--device-peak` measures the sampling instead: the shipped sampler path (core's euler sampler through the Sonic
guider on a Sonic MODEL, `run_sonic_sampler` as the KSampler node runs it) on the stand-in accelerator
(tests/stand_in_device.py, which counts the bytes of live device tensors as torch.cuda.max_memory_allocated does),
at 64×64 latents (512² pixels), window 25, shift 7, 2 steps, the released audio tokens' size (32 × 1024 per frame).
The UNet is a cheap stand-in inside the real Sonic MODEL (one multiply per window: the UNet's own activations are
one window's, the same for any audio length). It prints the device peak and the host RSS above the inputs per
length and ends with `device peak growth 10 s -> 600 s at 512x512: <MiB> MiB (<ratio>x)`. Target: ≤ 256 MiB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.process_memory import reset_peak_rss, status_kib  # noqa: E402


class StandInDecoder:
    """`decode(latents) → frames`, like core's VAE: a fixed random ×8 transposed conv and a sigmoid."""

    def __init__(self, device):
        import torch

        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.ConvTranspose2d(4, 3, 8, stride=8).requires_grad_(False)
        self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
        self.conv.to(device)
        self.device = device

    def decode(self, latents):
        import torch

        with torch.inference_mode():
            return torch.sigmoid(self.conv(latents.to(self.device))).permute(0, 2, 3, 1).cpu()


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from tools.comfy_runtime import import_pack

    import_pack()
    import comfy.model_management as mm
    from sonic_pack.nodes.model_patchers import core_patcher
    from sonic_pack.nodes.sonic_types import SonicImageEmbeds
    from sonic_model.video.rife import IFNet, load_rife

    device = mm.get_torch_device()
    torch.manual_seed(0)
    rife = core_patcher(load_rife(IFNet().state_dict()))  # full size, random, loaded by core as the nodes do
    vae = StandInDecoder(device)
    n, side = args.frames, args.size
    latents = torch.randn(n, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(1)) * 0.18215
    rate = 16000
    audio = {"waveform": 0.1 * torch.randn(1, 1, round(n / 12.5 * rate)), "sample_rate": rate}
    pad = side // 4  # the crop sits inside a larger "original", resized by 1.25 and pasted back with a feather
    box = (pad, pad // 2, pad + side * 5 // 4, pad // 2 + side * 5 // 4)
    original = torch.rand(1, box[3] + pad // 2, box[2] + pad, 3)
    image = SonicImageEmbeds(concat_latent=torch.zeros(1, 4, 1, 1), image_embeds=torch.zeros(1, 1),
                             face_mask=torch.ones(1, 1, 1, 1), image=torch.zeros(1, side, side, 3),
                             original=original, crop_box=box)
    cuda = device.type == "cuda"
    base = status_kib("VmRSS")
    exact = reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out, torch.inference_mode():
        if args.mode == "streaming":
            from sonic_pack.nodes.video import save_sonic_video

            saved = save_sonic_video(vae, latents, rife=rife, image=image, audio=audio, feather=8, chunk_size=8,
                                     filename_prefix="bench/Sonic", output_dir=out)
            frames, size = saved.frames, os.path.getsize(saved.path)
        else:
            frames, size = _hold_everything(vae, latents, rife, image, audio, out)
    seconds = time.perf_counter() - t0
    peak = status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames_in": n, "frames_out": frames, "base_kib": base, "peak_kib": peak, "exact": exact,
                      "vram_peak": torch.cuda.max_memory_allocated() if cuda else None, "seconds": seconds,
                      "file_bytes": size, "device": str(device)}))


def window_unet():
    """Sonic UNet call signature, one multiply: a stand-in whose activations are a window's, as the real UNet's are
    (built here, not at import: the parent process never imports torch)."""
    import torch

    class WindowUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_in = torch.nn.Conv2d(8, 4, 1)  # the Sonic MODEL reads the weights' dtype from conv_in

        def forward(self, sample, timestep, added_time_ids, clip_states, audio_tokens, face_mask=None):
            return sample[:, :, :4] * self.conv_in.weight.mean()

    return WindowUNet().requires_grad_(False)


def sampling_child(args: argparse.Namespace) -> None:
    """One sampling run of `args.frames` frames on the stand-in device; prints its peaks as JSON."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "tests"))
    from tools.comfy_runtime import import_pack

    import_pack(cpu=True)
    from stand_in_comfy import comfy_on_stand_in

    from sonic_pack.nodes.native_model import sonic_model_patcher
    from sonic_pack.nodes.sampling import run_sonic_sampler
    from sonic_pack.nodes.sonic_types import SonicAudioEmbeds, SonicImageEmbeds, SonicMotionBuckets
    from sonic_model.sampling import memory_model

    n, side = args.frames, args.size // 8
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(n, memory_model.AUDIO_TOKENS, memory_model.CONTEXT_DIM, generator=g)
    audio = SonicAudioEmbeds(tokens=tokens, null_tokens=torch.zeros_like(tokens[0]),
                             bucket_windows=torch.zeros(1), num_frames=n)
    image = SonicImageEmbeds(concat_latent=torch.randn(1, 4, side, side, generator=g),
                             image_embeds=torch.randn(1, memory_model.CONTEXT_DIM, generator=g),
                             face_mask=torch.ones(1, 1, args.size, args.size), image=torch.zeros(1, 8, 8, 3))
    motion = SonicMotionBuckets(buckets=torch.full((n, 2), 32.0), predicted=torch.full((n, 2), 32.0))
    with comfy_on_stand_in():
        model = sonic_model_patcher(window_unet())
        base = status_kib("VmRSS")
        exact = reset_peak_rss()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        samples = run_sonic_sampler(model, audio, image, motion, seed=1, steps=args.steps, cfg_image=2.0,
                                    cfg_audio=7.5, shift=7, window=25, sampler_name="euler", scheduler="karras",
                                    denoise=1.0)
        seconds = time.perf_counter() - t0
        device_peak = torch.cuda.max_memory_allocated() - start
    peak = status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames": n, "device_peak": device_peak, "base_kib": base, "peak_kib": peak, "exact": exact,
                      "seconds": seconds, "finite": bool(torch.isfinite(samples).all()),
                      "latent_bytes": memory_model.latent_bytes(n, side * side)}))


def device_peak_report(lengths: list[float], size: int, steps: int) -> None:
    rows = []
    for seconds in lengths:
        frames = round(seconds * 12.5)
        cmd = [sys.executable, __file__, "--sampling-child", "--frames", str(frames), "--size", str(size),
               "--steps", str(steps)]
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"sampling child failed ({seconds} s):\n{result.stdout}\n{result.stderr}")
        rows.append({**json.loads(result.stdout.strip().splitlines()[-1]), "audio_s": seconds})
        r = rows[-1]
        r["host"] = (r["peak_kib"] - r["base_kib"]) * 1024 - r["device_peak"]  # the stand-in's bytes are RAM too
        print(f"  {seconds:>5.0f} s of audio ({frames} frames): device peak {r['device_peak'] / MIB:.1f} MiB, "
              f"host RSS +{r['host'] / MIB:.0f} MiB above the models and inputs, less the stand-in's device bytes "
              f"({r['host'] / r['latent_bytes']:.1f} clip latents), {r['seconds']:.0f} s", flush=True)
        if not r["finite"]:
            raise SystemExit("sampling produced NaN/Inf latents")
    a, b = rows[0], rows[-1]
    growth = b["device_peak"] - a["device_peak"]
    print(f"host RSS for {b['audio_s']:.0f} s: {b['host'] / 2**30:.2f} GiB above the models and inputs "
          f"(target <= 4 GB = 3.73 GiB)")
    print(f"device peak growth {a['audio_s']:.0f} s -> {b['audio_s']:.0f} s at {size}x{size}: {growth / MIB:.0f} MiB "
          f"({b['device_peak'] / a['device_peak']:.1f}x)")


def _hold_everything(vae, latents, rife, image, audio, out: str) -> tuple[int, int]:
    """The non-streaming graph: every stage returns the whole clip (what 'OOM at 100 %' comes from)."""
    from fractions import Fraction

    from comfy_api.input_impl import VideoFromComponents
    from comfy_api.util import VideoComponents
    from sonic_pack.nodes.decode import decode_latents
    from sonic_pack.nodes.video import interpolate_images, paste_images

    frames = decode_latents(vae, latents, 8)
    frames = interpolate_images(rife, frames, 8)
    frames = paste_images(frames, image, 8)
    path = os.path.join(out, "hold_all.mp4")
    VideoFromComponents(VideoComponents(images=frames, audio=audio, frame_rate=Fraction(25))).save_to(path)
    return frames.shape[0], os.path.getsize(path)


def run(seconds: float, size: int, mode: str) -> dict:
    frames = round(seconds * 12.5)
    cmd = [sys.executable, __file__, "--child", "--frames", str(frames), "--size", str(size), "--mode", mode]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if result.returncode != 0:
        raise SystemExit(f"child failed ({mode}, {seconds} s):\n{result.stdout}\n{result.stderr}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row.update(audio_s=seconds, mode=mode)
    return row


def report(rows: list[dict], size: int) -> None:
    print(f"\nframes {size}x{size} px (pasted into a larger original), RIFE x2, H.264 + AAC, "
          f"device {rows[0]['device']}")
    head = (f"{'mode':<10} {'audio':>7} {'frames in':>9} {'out':>6} {'base RSS':>9} {'peak RSS':>9} "
            f"{'peak-base':>9} {'peak VRAM':>9} {'time':>7} {'ms/frame':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        vram = f"{r['vram_peak'] / MIB:7.0f} M" if r["vram_peak"] is not None else f"{'-':>9}"
        print(f"{r['mode']:<10} {r['audio_s']:>6.0f}s {r['frames_in']:>9} {r['frames_out']:>6} "
              f"{r['base_kib'] / 1024:>7.0f} M {r['peak_kib'] / 1024:>7.0f} M "
              f"{(r['peak_kib'] - r['base_kib']) / 1024:>7.0f} M {vram} {r['seconds']:>6.1f}s "
              f"{1000 * r['seconds'] / max(r['frames_out'], 1):>8.2f}")
    stream = [r for r in rows if r["mode"] == "streaming"]
    if len(stream) >= 2:
        a, b = stream[-2], stream[-1]
        growth = (b["peak_kib"] - a["peak_kib"]) / a["peak_kib"] * 100
        work = (b["peak_kib"] - b["base_kib"]) - (a["peak_kib"] - a["base_kib"])
        verdict = "OK" if growth < 10 else "ABOVE TARGET"
        print(f"\nstreaming peak RSS growth {a['audio_s']:.0f} s -> {b['audio_s']:.0f} s: {growth:+.1f} % "
              f"(target < 10 %: {verdict}); working set (peak - base) {work / 1024:+.0f} MiB")
        print("base RSS holds the inputs (latents, audio) and grows with them; everything above it is the write")
    if not all(r["exact"] for r in rows):
        print("note: /proc/self/clear_refs unavailable, peak RSS is ru_maxrss (includes imports)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized: 2, 8 and 16 s at 32x32")
    ap.add_argument("--size", type=int, default=None, help="generated frame side in px (multiple of 16)")
    ap.add_argument("--seconds", default=None, help="comma-separated audio lengths (default 10,60,600)")
    ap.add_argument("--baseline", type=float, default=0.0,
                    help="also run the hold-everything path for lengths up to this many seconds")
    ap.add_argument("--device-peak", action="store_true",
                    help="measure sampling's device peak on the stand-in accelerator (10 s and 600 s by default)")
    ap.add_argument("--steps", type=int, default=2, help="sampling steps for --device-peak")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sampling-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="streaming", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.sampling_child:
        sampling_child(args)
        return
    if args.device_peak:
        seconds = args.seconds or ("2,8" if args.quick else "10,600")
        device_peak_report([float(s) for s in seconds.split(",")], args.size or (64 if args.quick else 512),
                           args.steps)
        return
    size = args.size or (32 if args.quick else 64)
    if size % 16:
        raise SystemExit("--size must be a multiple of 16 (RIFE)")
    lengths = [float(s) for s in (args.seconds or ("2,8,16" if args.quick else "10,60,600")).split(",")]
    rows = []
    for seconds in lengths:
        for mode in ("streaming", "hold-all"):
            if mode == "hold-all" and seconds > args.baseline:
                continue
            t0 = time.perf_counter()
            rows.append(run(seconds, size, mode))
            print(f"  {mode:<10} {seconds:>5.0f} s of audio: peak {rows[-1]['peak_kib'] / 1024:.0f} MiB "
                  f"({time.perf_counter() - t0:.0f} s with startup)", flush=True)
    report(rows, size)


if __name__ == "__main__":
    main()
