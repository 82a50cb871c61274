"""Run the shift-fusion denoiser through ComfyUI's own samplers and schedulers.

ComfyUI's samplers only need a callable `model(x, σ) -> denoised` plus a few attributes they reach for
(`inner_model.model_sampling`, `model_patcher.get_model_object`). Sonic's fusion lives inside that callable,
so every core sampler and scheduler, and the SAMPLER / SIGMAS nodes, drive it unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch

import comfy.model_sampling
import comfy.sample
import comfy.samplers

from ..sonic_model.fused_denoiser import ShiftFusionDenoiser
from ..sonic_model.step_tracker import StepTracker

SIGMA_MIN, SIGMA_MAX = 0.002, 700.0
LATENT_SCALE = 0.18215

# Samplers that post-process classifier-free guidance (cfg_pp) need ComfyUI's own guider; Sonic's three-way
# guidance happens inside the denoiser, so they would silently compute something else.
UNSUPPORTED_SAMPLERS = {name: "it rewrites classifier-free guidance, which Sonic does inside its own denoiser"
                        for name in comfy.samplers.SAMPLER_NAMES if name.endswith("_cfg_pp")}


def supported_samplers() -> list[str]:
    return [s for s in comfy.samplers.KSampler.SAMPLERS if s not in UNSUPPORTED_SAMPLERS]


def check_sampler_name(name: str) -> None:
    if name in UNSUPPORTED_SAMPLERS:
        raise ValueError(f"Sampler '{name}' cannot drive Sonic: {UNSUPPORTED_SAMPLERS[name]}. "
                         f"Pick one of: {', '.join(supported_samplers())} (the official run uses euler).")


class SonicModelSampling(comfy.model_sampling.ModelSamplingContinuousEDM, comfy.model_sampling.V_PREDICTION):
    """SVD's EDM v-prediction over σ ∈ [0.002, 700], with the official initial noise."""

    def __init__(self):
        super().__init__()
        self.set_parameters(SIGMA_MIN, SIGMA_MAX, 1.0)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        # The official pipeline adds σ·ε at every start σ (scheduler add_noise); core uses √(1+σ²)·ε at σ_max.
        sigma = comfy.model_sampling.reshape_sigma(sigma, noise.ndim)
        return noise * sigma + latent_image


class _ModelObjects:
    """The bits of a ModelPatcher / BaseModel that samplers look up."""

    def __init__(self, model_sampling: SonicModelSampling):
        self.model_sampling = model_sampling

    def get_model_object(self, name: str):
        if name == "model_sampling":
            return self.model_sampling
        raise AttributeError(f"Sonic's sampler wrapper has no model object {name!r}")

    def scale_latent_inpaint(self, x, sigma, noise, latent_image):  # no inpainting in Sonic
        return latent_image


class FusedModel:
    """What ComfyUI's samplers call: x (N, 4, h, w) at σ → denoised x0, one step's shifted windows per call."""

    def __init__(self, denoiser: ShiftFusionDenoiser, tracker: StepTracker):
        self.denoiser = denoiser
        self.tracker = tracker
        objects = _ModelObjects(SonicModelSampling())
        self.inner_model = objects
        self.model_patcher = objects
        self.model_sampling = objects.model_sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options=None, seed=None, **_):
        s = float(sigma.reshape(-1)[0])
        step = self.tracker.step_for(s)
        return self.denoiser.denoise(x, s, step).to(device=x.device, dtype=x.dtype)


def schedule_sigmas(scheduler: str, steps: int, denoise: float = 1.0, sampler_name: str = "euler") -> torch.Tensor:
    """σ schedule exactly as core's KSampler builds it (denoise < 1 starts part-way down a longer schedule)."""
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"Unknown scheduler '{scheduler}'. Pick one of: {', '.join(comfy.samplers.KSampler.SCHEDULERS)}")
    planner = comfy.samplers.KSampler(_ModelObjects(SonicModelSampling()), steps=steps, device="cpu",
                                      sampler=sampler_name, scheduler=scheduler, denoise=denoise)
    return planner.sigmas.float().cpu()


def seeded_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Core's seeded noise (comfy.sample.prepare_noise), so a seed means the same thing as in KSampler."""
    return comfy.sample.prepare_noise(torch.zeros(shape), seed)


def sample_shift_fusion(denoiser: ShiftFusionDenoiser, ref_latent: torch.Tensor, sigmas: torch.Tensor,
                        sampler: comfy.samplers.KSAMPLER | str, noise: torch.Tensor, seed: int = 0,
                        sampler_name: str | None = None,
                        on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Sample N frames; ref_latent is the unscaled VAE latent (1, 4, h, w), noise is (N, 4, h, w).

    The start latent is ref_latent·0.18215 + σ_0·noise for every frame (the official initialisation).
    Returns the final latents (N, 4, h, w) in the scaled latent space, on the CPU.
    """
    if isinstance(sampler, str):
        check_sampler_name(sampler)
        sampler_name = sampler
        sampler = comfy.samplers.sampler_object(sampler)
    sigmas = sigmas.float().cpu()
    if len(sigmas) < 2:
        raise ValueError("The σ schedule needs at least 2 values (one step); check steps/denoise or the SIGMAS input.")
    tracker = StepTracker(sigmas.tolist(), sampler_name)
    model = FusedModel(denoiser, tracker)
    device = next(denoiser.unet.parameters()).device  # keep the sampler's arithmetic beside the UNet
    noise = noise.float().to(device)
    latent_image = (ref_latent.float().to(device) * LATENT_SCALE).expand_as(noise).contiguous()

    def callback(step, denoised, x, total_steps):
        tracker.on_step_callback(step)
        if on_step is not None:
            on_step(step, total_steps)

    samples = sampler.sample(model, sigmas, {"seed": seed, "model_options": {}}, callback, noise,
                             latent_image=latent_image, disable_pbar=True)
    return samples.float().cpu()
