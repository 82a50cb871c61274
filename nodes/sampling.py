"""Sonic Guider (a core GUIDER for SamplerCustomAdvanced) and Sonic Shift-Fusion KSampler (the one-node way)."""
from __future__ import annotations

import torch
from PIL import Image

import comfy.latent_formats
import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.latest import io

from ..sonic_model.host import Host
from ..sonic_model.sampling.shift_fusion import SonicConditioning, WindowEvent
from . import menu
from .guider import SonicGuider
from .host import ComfyHost
from .preview import PREVIEW_SIDE, preview_image
from .sonic_types import SonicAudio, SonicAudioEmbeds, SonicImage, SonicImageEmbeds, SonicMotion, SonicMotionBuckets

_SD15_RGB = torch.tensor(comfy.latent_formats.SD15().latent_rgb_factors)  # SVD latents are SD1.5 latents


def latent_rgb(x0: torch.Tensor) -> torch.Tensor:
    """A cheap RGB look (h, w, 3) in [0, 1] at one frame's latent (4, h, w), for the progress bar's preview."""
    rgb = torch.einsum("chw,cr->hwr", x0.float().cpu(), _SD15_RGB)  # about [-1, 1]
    return (rgb + 1) / 2


def latent_preview(x0: torch.Tensor, max_side: int = PREVIEW_SIDE) -> Image.Image:
    """The preview picture ComfyUI shows for one frame's latent."""
    return preview_image(latent_rgb(x0), max_side)


def sonic_conditioning(audio: SonicAudioEmbeds, image: SonicImageEmbeds,
                       motion: SonicMotionBuckets) -> SonicConditioning:
    """The three Sonic inputs as the UNet's conditioning for the whole clip, checked against each other."""
    n = audio.num_frames
    if n < 1:
        raise ValueError("The audio is shorter than one video frame (80 ms): give Sonic at least 0.08 s of audio.")
    if motion.buckets.shape[0] != n:
        raise ValueError(f"Motion buckets cover {motion.buckets.shape[0]} frames but the audio has {n}: "
                         "connect the motion node to the same Sonic audio as the sampler.")
    return SonicConditioning(concat_latent=image.concat_latent, image_embeds=image.image_embeds,
                             audio_tokens=audio.tokens, null_audio_tokens=audio.null_tokens,
                             motion_buckets=motion.buckets, face_mask=image.face_mask, fps=audio.fps)


def start_latent(image: SonicImageEmbeds, num_frames: int, view: bool = False) -> dict:
    """Core LATENT of the reference latent for every frame: the official start is this plus σ·noise. `view`: one
    frame's memory seen N times (for the sampler's own use: no node can write into it), not N copies."""
    samples = image.concat_latent.float().to(mm.intermediate_device()).expand(num_frames, -1, -1, -1)
    return {"samples": samples if view else samples.contiguous()}


def schedule_sigmas(model, scheduler: str, steps: int, denoise: float = 1.0, sampler_name: str = "euler") -> torch.Tensor:
    """σ schedule exactly as core's KSampler builds it for this MODEL (denoise < 1 starts part-way down)."""
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"Unknown scheduler '{scheduler}'. Pick one of: {', '.join(comfy.samplers.KSampler.SCHEDULERS)}")
    planner = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler_name, scheduler=scheduler,
                                      denoise=denoise, model_options=model.model_options)
    return planner.sigmas.float().cpu()


class WindowProgress:
    """Window events → the host's progress: one count per UNet window, a preview on each step's first window (a JPEG
    per window would cost the host more than the count); `part` = (index, count) puts one of several clips sampled
    in a row on one bar (Sonic Speakers KSampler)."""

    def __init__(self, steps: int, windows_per_step: int, host: Host, part: tuple[int, int] = (0, 1)):
        self.progress = host.progress(steps * windows_per_step).share(*part)

    def __call__(self, event: WindowEvent) -> None:
        preview = latent_rgb(event.denoised[0]) if event.window == 0 else None
        self.progress(event.step * event.windows_per_step + event.window + 1, preview=preview)


def run_sonic_sampler(model, audio: SonicAudioEmbeds, image: SonicImageEmbeds, motion: SonicMotionBuckets,
                      seed: int, steps: int, cfg_image: float, cfg_audio: float, shift: int, window: int,
                      sampler_name: str, scheduler: str, denoise: float, sampler: object | None = None,
                      sigmas: torch.Tensor | None = None, node_id: str | None = None,
                      report: dict | None = None, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Samples every frame of the clip as SamplerCustomAdvanced would with a Sonic Guider; returns core's unscaled
    LATENT samples (N, 4, h, w), frames on the batch axis, on the intermediate device. `report` receives the
    sampling mode the guider chose (for the node's readout); `part` places this clip on a shared progress bar."""
    cond = sonic_conditioning(audio, image, motion)
    if sampler is None:
        sampler = comfy.samplers.sampler_object(sampler_name)
    if sigmas is None:
        sigmas = schedule_sigmas(model, scheduler, steps, denoise, sampler_name)
    if len(sigmas) < 2:
        raise ValueError("The σ schedule has no steps (denoise 0, or an empty SIGMAS input): raise steps/denoise.")
    guider = SonicGuider(model, cond, cfg_image=cfg_image, cfg_audio=cfg_audio, shift=shift, window=window)
    guider.on_window = WindowProgress(len(sigmas) - 1, guider.fusion.windows_per_step, ComfyHost(node_id), part)
    latent = start_latent(image, cond.num_frames, view=True)["samples"]  # a clip-long buffer less in RAM
    noise = comfy.sample.prepare_noise(latent, seed)  # core's seeded noise: a seed means what it means in KSampler
    samples = guider.sample(noise, latent, sampler, sigmas, callback=None, disable_pbar=True, seed=seed)
    if report is not None:
        report["mode"] = str(guider.sampling_mode)
        if guider.compile_backend is not None:
            report["compiled"] = guider.compile_backend
            report["first_window_seconds"] = round(guider.first_call_seconds or 0.0, 2)
    return samples.to(mm.intermediate_device())


def _guidance_inputs() -> list:
    """The Sonic inputs and settings shared by the Guider and the KSampler (official defaults)."""
    return [
        io.Model.Input("model", tooltip="The Sonic UNet: the 'model' output of 'Load SVD + Sonic weights' "
                                        "(through core model nodes if you like)."),
        SonicAudio.Input("audio", tooltip="From 'Sonic Encode Audio': per-frame audio tokens."),
        SonicImage.Input("image", tooltip="From 'Sonic Reference Image': latent, CLIP embedding, face mask."),
        SonicMotion.Input("motion", tooltip="From 'Sonic Motion Buckets': per-frame head/expression motion."),
        io.Float.Input("cfg_image", default=2.0, min=0.0, max=20.0, step=0.1, round=0.01,
                       tooltip="Appearance guidance r_i: how strongly frames follow the reference image "
                               "(official 2.0)."),
        io.Float.Input("cfg_audio", default=7.5, min=0.0, max=20.0, step=0.1, round=0.01,
                       tooltip="Audio guidance r_a: how strongly lips and face follow the audio (official 7.5). "
                               "Lower to ~5.5 if lips look exaggerated."),
        io.Int.Input("shift", default=7, min=0, max=100,
                     tooltip="Shift α: frames the windows move per step, smoothing window borders "
                             "(official 7; 0 = fixed windows)."),
        io.Int.Input("window", default=25, min=1, max=100,
                     tooltip="Frames per UNet window f (official 25 = 2 s). More frames need more VRAM."),
    ]


class SonicGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicGuider",
            display_name="Sonic Guider",
            category=menu.SAMPLING,
            description="Sonic's time-aware shift fusion and three-way guidance as a core GUIDER: connect it and "
                        "its start latent to SamplerCustomAdvanced with any core NOISE, SAMPLER and SIGMAS.",
            inputs=[*_guidance_inputs(),
                    io.Int.Input("first_step", default=0, min=0, max=10000,
                                 tooltip="Step index of this schedule's first σ in the whole schedule, which sets "
                                         "where the windows start (they move α frames per step). 0 for a full "
                                         "schedule; for the second part of a SplitSigmas chain, the split step.")],
            outputs=[io.Guider.Output(display_name="guider", tooltip="For SamplerCustomAdvanced's guider input."),
                     io.Latent.Output(display_name="start_latent",
                                      tooltip="The reference latent for every frame (the official start: the "
                                              "sampler adds σ·noise). For SamplerCustomAdvanced's latent_image.")],
        )

    @classmethod
    def execute(cls, model, audio, image, motion, cfg_image, cfg_audio, shift, window, first_step) -> io.NodeOutput:
        cond = sonic_conditioning(audio, image, motion)
        guider = SonicGuider(model, cond, cfg_image=cfg_image, cfg_audio=cfg_audio, shift=shift, window=window,
                             first_step=first_step)
        return io.NodeOutput(guider, start_latent(image, cond.num_frames))


class SonicSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicSampler",
            display_name="Sonic Shift-Fusion KSampler",
            category=menu.SAMPLING,
            description="Samples the whole clip with Sonic's time-aware shift fusion: every step covers all frames "
                        "with windows that move by `shift` frames per step, so long audio has no seams. The same "
                        "as SamplerCustomAdvanced with a Sonic Guider, in one node.",
            inputs=[
                *_guidance_inputs()[:4],
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed. The same seed and inputs give the same video (0 is a valid seed)."),
                io.Int.Input("steps", default=25, min=1, max=200,
                             tooltip="Denoising steps (official: 25). Each step runs the UNet once per window."),
                *_guidance_inputs()[4:],
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="ComfyUI sampler (official: euler). Ignored when a SAMPLER is connected."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="karras",
                               tooltip="σ schedule over 700 → 0.002 (official: karras). Ignored when SIGMAS is "
                                       "connected."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1.0 starts from pure noise (official). Lower values start part-way down the "
                                       "schedule from the still reference image plus less noise, so the video stays "
                                       "closer to the photo and moves less."),
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
    def execute(cls, model, audio, image, motion, seed, steps, cfg_image, cfg_audio, shift, window,
                sampler_name, scheduler, denoise, sampler=None, sigmas=None) -> io.NodeOutput:
        report: dict = {}
        samples = run_sonic_sampler(model, audio, image, motion, seed, steps, cfg_image, cfg_audio, shift,
                                    window, sampler_name, scheduler, denoise, sampler, sigmas,
                                    node_id=cls.hidden.unique_id, report=report)
        return io.NodeOutput({"samples": samples}, ui={"sonic_sampling": [report]})
