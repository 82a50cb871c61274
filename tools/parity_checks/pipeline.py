"""Parity of the whole sampler against the official `SonicPipeline` run (golden_type `shift_fusion_pipeline`).

Runs the same code path as the Sonic KSampler node: the UNet as a core MODEL, core's scheduler and sampler driven by
the Sonic guider (CFGGuider.sample, so core moves σ, noise and latents and calls the model through apply_model).
Every setting comes from the golden's json (sizes, window, shift, steps, guidance), none is hard-coded.
"""
from __future__ import annotations

import math

import torch

from .common import Comparison, Golden, cast_model, compare, compare_golden

LATENT_SCALE = 0.18215  # SD1.5 latent format: core's LATENT is unscaled


def _build_models(golden: Golden):
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sonic_model.unet.unet import SonicUNet

    doc = golden.doc
    unet = SonicUNet.from_config(doc["unet_config"])
    unet.load_state_dict(golden.weights("weights.unet."), strict=True)
    vae = AutoencoderKLTemporalDecoder(**doc["vae_config"])
    vae.load_state_dict(golden.weights("weights.vae."), strict=True)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**doc["clip_config"]))
    clip.load_state_dict(golden.weights("weights.image_encoder."), strict=True)
    return tuple(cast_model(m, golden).eval() for m in (unet, vae, clip))


def _guidance(doc: dict, key: str) -> float:
    kw = doc["call_kwargs"]
    low, high = kw[f"min_guidance_scale{key}"], kw[f"max_guidance_scale{key}"]
    if low != high:
        raise ValueError(f"guidance schedule min {low} != max {high}: Sonic's sampler uses one scale per run")
    return float(low)


@torch.no_grad()
def run(golden: Golden) -> list[Comparison]:
    from tools.comfy_runtime import import_pack

    pack = import_pack()
    import comfy.samplers

    from sonic_pack.nodes.guider import SonicGuider
    from sonic_pack.nodes.native_model import sonic_model_patcher
    from sonic_pack.nodes.sampling import schedule_sigmas
    from sonic_model.video.chunked_decode import iter_decoded_chunks
    from sonic_model.sampling.shift_fusion import SonicConditioning, combine_guidance
    from sonic_model.sampling.shift_windows import window_starts

    assert pack is not None
    doc, t = golden.doc, golden.tensors
    kw = doc["call_kwargs"]
    n, f, shift = kw["num_frames"], kw["frames_per_batch"], kw["shift_offset"]
    stride = f - kw["overlap"]
    steps = kw["num_inference_steps"]
    unet, vae, clip = _build_models(golden)
    results: list[Comparison] = []

    image_embeds = clip(pixel_values=golden.input("in.clip_image")).image_embeds
    results.append(compare_golden(golden, "aux.image_embeds", image_embeds))
    z = vae.encode(golden.input("in.ref_image")).latent_dist.mean
    results.append(compare_golden(golden, "aux.vae_latent_mean", z))

    # The node's path: the UNet as a core MODEL, core's karras schedule and euler sampler, the Sonic guider.
    model = sonic_model_patcher(unet)
    sigmas = schedule_sigmas(model, "karras", steps)
    results.append(compare("schedule.sigmas (ComfyUI karras vs official)", sigmas,
                           torch.tensor(doc["schedule"]["sigmas"]), 1e-4, 1e-5))

    cond = SonicConditioning(
        concat_latent=z, image_embeds=image_embeds,
        audio_tokens=t["in.audio_tokens_cond"], null_audio_tokens=t["in.audio_tokens_uncond"],
        motion_buckets=t["in.motion_buckets"].reshape(n, 2) * kw["motion_bucket_scale"],
        face_mask=t["in.face_mask"][:, :1], fps=kw["fps"])
    windows, step_starts = [], []
    guider = SonicGuider(model, cond, cfg_image=_guidance(doc, "1"), cfg_audio=_guidance(doc, "2"), shift=shift,
                         window=f, stride=stride, on_window=windows.append)
    original_denoise = guider.fusion.denoise

    def recording_denoise(x, sigma, step, denoise, **options):
        step_starts.append(x.detach().float().clone())
        return original_denoise(x, sigma, step, denoise, **options)

    guider.fusion.denoise = recording_denoise
    # The guided v of each window, from the UNet's own outputs in this path (x0 at small σ keeps too few of v's bits).
    unet_outputs = []
    model.model.diffusion_model.register_forward_hook(lambda module, args, out: unet_outputs.append(out.float()))
    noise = t["noise.latents"][0]
    latent = z.float().expand(n, -1, -1, -1).contiguous()  # the Sonic Guider's start latent
    samples = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=0)
    final = samples * LATENT_SCALE

    results.append(compare_golden(golden, "aux.initial_latents", step_starts[0].unsqueeze(0)))
    results.append(compare_golden(golden, "aux.step_start_latents", torch.stack(step_starts).unsqueeze(1)))
    results.append(_compare_windows(golden, windows, sigmas, step_starts, n, f, shift, stride, window_starts))
    guided_v = [combine_guidance(*v.reshape(3, f, *v.shape[1:]).unbind(0), guider.fusion.cfg_image,
                                 guider.fusion.cfg_audio) for v in unet_outputs]
    results.append(compare_golden(golden, "win.noise_pred", torch.stack(guided_v).unsqueeze(1)))
    results.append(compare_golden(golden, "win.latents", _window_latents(windows, step_starts, sigmas)))
    results.append(compare_golden(golden, "out.final_latents", final.unsqueeze(0)))

    chunks = [vae.decode(lat, num_frames=lat.shape[0]).sample
              for _, lat in iter_decoded_chunks(samples.to(golden.device, golden.dtype), kw["decode_chunk_size"],
                                                lambda lat: lat)]
    frames = torch.cat(chunks).permute(1, 0, 2, 3).unsqueeze(0)          # (1, 3, N, H, W)
    results.append(compare_golden(golden, "out.frames", frames))
    expected_calls = steps * len(window_starts(n, f, shift, 0, stride))
    results.append(Comparison("unet calls", float(abs(guider.unet_calls - expected_calls)), 0, 0,
                              guider.unet_calls == expected_calls == doc["sizes"]["unet_forward_calls"],
                              f"{guider.unet_calls} calls of batch 3×{f}"))
    return results


def _compare_windows(golden, windows, sigmas, step_starts, n, f, shift, stride, window_starts) -> Comparison:
    """Window schedule (step, start, frame positions) of every UNet call, exactly."""
    steps = [w.step for w in windows]
    starts = [s for step in range(len(step_starts)) for s in window_starts(n, f, shift, step, stride)]
    idx = torch.tensor([[s + j for j in range(f)] for s in starts])
    ours_frames = torch.tensor([w.frame_indices for w in windows])
    ok = (torch.tensor(steps) == golden.tensors["win.step"]).all() \
        and (torch.tensor(starts) == golden.tensors["win.index_start"]).all() \
        and (idx == golden.tensors["win.idx"]).all() and (ours_frames == idx % n).all()
    return Comparison("win.step, win.index_start, win.idx", 0.0 if ok else 1.0, 0, 0, bool(ok),
                      f"{len(windows)} windows")


def _window_latents(windows, step_starts, sigmas) -> torch.Tensor:
    """Each window's latents after its own Euler step σ_s → σ_{s+1} (what the official loop averages)."""
    out = []
    for w in windows:
        x = step_starts[w.step][torch.tensor(w.frame_indices)]
        s, s_next = float(sigmas[w.step]), float(sigmas[w.step + 1])
        out.append(x + (x - w.denoised) / s * (s_next - s))
    assert all(math.isfinite(float(sigmas[w.step])) for w in windows)
    return torch.stack(out).unsqueeze(1)
