"""Sonic Shift-Fusion KSampler: the official long-video sampling inside ComfyUI's samplers and schedulers."""
from __future__ import annotations

import torch
from PIL import Image

import comfy.latent_formats
import comfy.model_management as mm
import comfy.samplers
import comfy.utils
from comfy_api.latest import io

from ..sonic_model.fused_denoiser import ShiftFusionDenoiser, SonicConditioning, WindowEvent
from .comfy_sampling import LATENT_SCALE, check_sampler_name, sample_shift_fusion, schedule_sigmas, seeded_noise, supported_samplers
from .sonic_types import SonicAudio, SonicAudioEmbeds, SonicImage, SonicImageEmbeds, SonicModel, SonicModels, \
    SonicMotion, SonicMotionBuckets

# torch's own out-of-memory type (core's mm.OOM_EXCEPTION falls back to Exception on old torch, which would also
# catch Cancel); ComfyUI's executor unloads models when it sees this type.
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_SD15_RGB = torch.tensor(comfy.latent_formats.SD15().latent_rgb_factors)  # SVD latents are SD1.5 latents


def latent_preview(x0: torch.Tensor, max_side: int = 256) -> Image.Image:
    """A cheap RGB look at one frame's latent (4, h, w), for the progress bar."""
    rgb = torch.einsum("chw,cr->hwr", x0.float().cpu(), _SD15_RGB)
    rgb = ((rgb + 1) * 127.5).clamp(0, 255).byte().numpy()
    image = Image.fromarray(rgb)
    scale = max_side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def _sampler_from(sampler_name: str, sampler: object | None):
    """A SAMPLER input overrides the combo; its name is found for the step tracker when it is a core sampler."""
    if sampler is None:
        check_sampler_name(sampler_name)
        return comfy.samplers.sampler_object(sampler_name), sampler_name
    function = getattr(sampler, "sampler_function", None)
    name = getattr(function, "__name__", "").removeprefix("sample_")
    return sampler, name or None


def run_sonic_sampler(models: SonicModels, audio: SonicAudioEmbeds, image: SonicImageEmbeds,
                      motion: SonicMotionBuckets, seed: int, steps: int, cfg_image: float, cfg_audio: float,
                      shift: int, window: int, sampler_name: str, scheduler: str, denoise: float,
                      sampler: object | None = None, sigmas: torch.Tensor | None = None,
                      node_id: str | None = None) -> torch.Tensor:
    """Samples every frame of the clip; returns VAE latents (N, 4, h, w), frames on the batch axis, unscaled as
    core's LATENT (what VAEDecode and the Sonic decode nodes take)."""
    n = audio.num_frames
    if n < 1:
        raise ValueError("The audio is shorter than one video frame (80 ms): give Sonic at least 0.08 s of audio.")
    if motion.buckets.shape[0] != n:
        raise ValueError(f"Motion buckets cover {motion.buckets.shape[0]} frames but the audio has {n}: "
                         "connect the motion node to the same Sonic audio as the sampler.")
    k_sampler, name = _sampler_from(sampler_name, sampler)
    if sigmas is None:
        sigmas = schedule_sigmas(scheduler, steps, denoise, name or sampler_name)
    sigmas = sigmas.float().cpu()
    if len(sigmas) < 2:
        raise ValueError("The σ schedule has no steps (denoise 0, or an empty SIGMAS input): raise steps/denoise.")

    mm.load_models_gpu([models.unet], force_full_load=True)
    unet = models.unet.model
    cond = SonicConditioning(concat_latent=image.concat_latent, image_embeds=image.image_embeds,
                             audio_tokens=audio.tokens, null_audio_tokens=audio.null_tokens,
                             motion_buckets=motion.buckets, face_mask=image.face_mask, fps=audio.fps)
    windows_per_step = -(-n // window)
    total = (len(sigmas) - 1) * windows_per_step
    bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def on_window(event: WindowEvent) -> None:
        done = event.step * event.windows_per_step + event.window + 1
        bar.update_absolute(done, total, preview=("JPEG", latent_preview(event.denoised[0]), 256))
        mm.throw_exception_if_processing_interrupted()  # Cancel between windows

    denoiser = ShiftFusionDenoiser(unet, cond, window=window, shift=shift, cfg_image=cfg_image,
                                   cfg_audio=cfg_audio, batched_cfg=not models.low_vram, on_window=on_window)
    latent_hw = image.concat_latent.shape[-2:]
    noise = seeded_noise((n, 4, *latent_hw), seed)
    try:
        samples = sample_shift_fusion(denoiser, image.concat_latent, sigmas, k_sampler, noise, seed=seed,
                                      sampler_name=name)
    except OUT_OF_MEMORY as error:
        del denoiser
        mm.soft_empty_cache(True)  # ComfyUI also unloads models for this exception type: the next run starts clean
        raise OUT_OF_MEMORY(
            f"Sonic ran out of GPU memory while sampling {n} frames at {image.image.shape[2]}×{image.image.shape[1]} "
            f"with windows of {window}. Set the loader's low_vram to 'on', lower the Reference Image resolution, "
            f"or use a smaller window. ({error})") from None
    if not torch.isfinite(samples).all():
        raise FloatingPointError("Sampling produced NaN/Inf latents: the UNet overflowed in this precision. "
                                 "Reload the Sonic models with dtype bf16 or fp32 and run again.")
    # ComfyUI's LATENT holds unscaled VAE latents (core divides by the SD1.5 factor after sampling too).
    return (samples / LATENT_SCALE).to(mm.intermediate_device())


class SonicSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicSampler",
            display_name="Sonic Shift-Fusion KSampler",
            category="Sonic",
            description="Samples the whole clip with Sonic's time-aware shift fusion: every step covers all frames "
                        "with windows that move by `shift` frames per step, so long audio has no seams.",
            inputs=[
                SonicModel.Input("sonic_model", tooltip="From 'Load SVD + Sonic weights'."),
                SonicAudio.Input("audio", tooltip="From 'Sonic Encode Audio': per-frame audio tokens."),
                SonicImage.Input("image", tooltip="From 'Sonic Reference Image': latent, CLIP embedding, face mask."),
                SonicMotion.Input("motion", tooltip="From 'Sonic Motion Buckets': per-frame head/expression motion."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed. The same seed and inputs give the same video (0 is a valid seed)."),
                io.Int.Input("steps", default=25, min=1, max=200,
                             tooltip="Denoising steps (official: 25). Each step runs the UNet once per window."),
                io.Float.Input("cfg_image", default=2.0, min=0.0, max=20.0, step=0.1, round=0.01,
                               tooltip="Appearance guidance r_i: how strongly frames follow the reference image "
                                       "(official 2.0)."),
                io.Float.Input("cfg_audio", default=7.5, min=0.0, max=20.0, step=0.1, round=0.01,
                               tooltip="Audio guidance r_a: how strongly lips and face follow the audio (official "
                                       "7.5). Lower to ~5.5 if lips look exaggerated."),
                io.Int.Input("shift", default=7, min=0, max=100,
                             tooltip="Shift α: frames the windows move per step, smoothing window borders "
                                     "(official 7; 0 = fixed windows)."),
                io.Int.Input("window", default=25, min=1, max=100,
                             tooltip="Frames per UNet window f (official 25 = 2 s). More frames need more VRAM."),
                io.Combo.Input("sampler_name", options=supported_samplers(), default="euler",
                               tooltip="ComfyUI sampler (official: euler). Ignored when a SAMPLER is connected."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="karras",
                               tooltip="σ schedule over 700 → 0.002 (official: karras). Ignored when SIGMAS is "
                                       "connected."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1.0 starts from pure noise; lower values start part-way down the schedule."),
                io.Sampler.Input("sampler", optional=True,
                                 tooltip="Optional core SAMPLER (e.g. KSamplerSelect); overrides sampler_name."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional core SIGMAS (e.g. BasicScheduler, SplitSigmas); overrides steps, "
                                        "scheduler and denoise."),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="Sampled latents, one per frame at 12.5 fps (SVD layout).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, sonic_model, audio, image, motion, seed, steps, cfg_image, cfg_audio, shift, window,
                sampler_name, scheduler, denoise, sampler=None, sigmas=None) -> io.NodeOutput:
        samples = run_sonic_sampler(sonic_model, audio, image, motion, seed, steps, cfg_image, cfg_audio, shift,
                                    window, sampler_name, scheduler, denoise, sampler, sigmas,
                                    node_id=cls.hidden.unique_id)
        return io.NodeOutput({"samples": samples})
