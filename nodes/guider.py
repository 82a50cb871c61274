"""Sonic's shift fusion and three-way guidance as a core GUIDER (a CFGGuider subclass).

Core's CFGGuider.sample loads the MODEL, moves σ, noise and latents to its device and drives any core SAMPLER. This
guider replaces `predict_noise` (every evaluation covers the clip with the step's shifted windows, one model call of
the three guidance rows per window through core's BaseModel.apply_model, and the per-frame x0 average) and
`inner_sample`, which hands the sampler its latents on ComfyUI's intermediate device instead: the sampler's clip-long
buffers then live in host RAM and only one window's work is on the GPU, so minutes of audio fit the cards users
have. The per-step latent arithmetic on the host is cheap next to the UNet windows. A MODEL with UNet copies on
other GPUs (Sonic Devices, or core's multi-GPU clones) spreads each step's windows over them (guider_devices.py).
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch

import comfy.model_management as mm
import comfy.samplers

from ..sonic_model.host import explained
from ..sonic_model.sampling import memory_model
from ..sonic_model.sampling.shift_fusion import FusedPrediction, GuidanceRows, ShiftFusion, SonicConditioning, WindowEvent
from ..sonic_model.sampling.step_tracker import StepTracker
from .devices import device_copies
from .guider_devices import RunDevices
from .host import ComfyHost
from .model_tools import compile_backend, origin_of, refuse_unsupported_tools
from .native_model import is_sonic_model


_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}


def choose_sampling_mode(low_vram: bool | None, on_cpu: bool, free_vram: int, height: int, width: int,
                         window: int, frames: int, compute_dtype: torch.dtype,
                         weight_dtype: torch.dtype) -> tuple[memory_model.SamplingMode, int | None]:
    """How to sample (guidance rows batched or not, attention slices) and the sampling memory beside the weights that
    core's loader should keep free (None: core's own estimate). A forced setting wins; on the CPU the fastest mode
    (its memory is RAM); on a GPU the fastest mode the memory model fits into the free VRAM, offloading part of the
    UNet (core's partial loading) when nothing else fits. Raises memory_model.DoesNotFit naming what to lower."""
    if low_vram is not None:
        return (memory_model.PER_ROW_SLICED if low_vram else memory_model.BATCHED), None
    if on_cpu:
        return memory_model.BATCHED, None
    compute, stored = _DTYPE_NAMES[compute_dtype], _DTYPE_NAMES[weight_dtype]
    chosen = memory_model.choose_mode(free_vram, height, width, window, compute, stored, frames_total=frames,
                                      decode_chunk=None, rife_batch=None)
    return chosen.mode, chosen.working


def sampler_name_of(sampler) -> str | None:
    """A core KSAMPLER's name (e.g. 'heun'), so the step tracker knows its correctors; None for other samplers."""
    function = getattr(sampler, "sampler_function", None)
    return getattr(function, "__name__", "").removeprefix("sample_") or None


class SonicGuider(comfy.samplers.CFGGuider):
    """Guides a Sonic MODEL over the whole clip; `first_step` is the index of the first σ in the full schedule."""

    def __init__(self, model_patcher, cond: SonicConditioning, *, cfg_image: float, cfg_audio: float, shift: int,
                 window: int, first_step: int = 0, stride: int | None = None,
                 on_window: Callable[[WindowEvent], None] | None = None):
        if not is_sonic_model(model_patcher):
            raise ValueError("This MODEL is not a Sonic UNet: connect the 'model' output of 'Load SVD + Sonic "
                             "weights' (directly or through model nodes).")
        super().__init__(model_patcher)
        self.cond = cond
        self.first_step = first_step
        self.fusion = ShiftFusion(cond, window=window, shift=shift, stride=stride, cfg_image=cfg_image,
                                  cfg_audio=cfg_audio, on_window=self._window_done)
        self.sampling_mode: memory_model.SamplingMode | None = None
        self.on_window = on_window
        self._tracker: StepTracker | None = None
        self._masks: dict[torch.device, torch.Tensor] = {}  # the face mask per compute device, for the run
        self._devices: RunDevices | None = None
        self._start: tuple[torch.Tensor, torch.Tensor] | None = None  # the caller's noise and latent, host copies
        self._compute_device: torch.device | None = None
        self.compile_backend: str | None = None  # core's TorchCompileModel on this MODEL: its backend
        self.first_call_seconds: float | None = None  # under torch.compile: the first UNet call (compile + run)

    @property
    def unet_calls(self) -> int:
        return self.fusion.unet_calls

    def _window_done(self, event: WindowEvent) -> None:
        if self.on_window is not None:
            self.on_window(event)
        mm.throw_exception_if_processing_interrupted()  # Cancel between windows, on every sampling path

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, *args, **kwargs):
        n = self.cond.num_frames
        refuse_unsupported_tools(self.model_patcher)  # before any model is loaded or step taken
        self._try_post_cfg_hooks(latent_image)
        self.compile_backend = compile_backend(self.model_patcher)
        self.first_call_seconds = None
        if latent_image.shape[0] != n:
            raise ValueError(f"The latent has {latent_image.shape[0]} frames but the Sonic audio has {n}: connect "
                             "the Sonic Guider's start latent (or one of as many frames) to the sampler.")
        self._tracker = StepTracker(sigmas.float().cpu().tolist(), sampler_name_of(sampler))

        def tracked(step, denoised, x, total_steps):
            self._tracker.on_step_callback(step)
            if callback is not None:
                callback(step, denoised, x, total_steps)

        self._start = (noise, latent_image)
        h, w = (s * 8 for s in latent_image.shape[-2:])
        # torch's type only (not core's OOM_EXCEPTION, which may be Exception, Cancel too); ComfyUI also unloads
        # models for it, so the next run starts clean.
        out_of_memory = explained(ComfyHost(), lambda error: (
            f"Sonic ran out of GPU memory while sampling {n} frames at {w}×{h} with windows of {self.fusion.window}. "
            f"Set the loader's low_vram to 'on', lower the Reference Image resolution, or use a smaller window. "
            f"({error})"), (torch.OutOfMemoryError,))
        try:
            with out_of_memory, self._memory_settings(latent_image.shape):
                samples = super().sample(noise, latent_image, sampler, sigmas, denoise_mask, tracked, *args, **kwargs)
        finally:
            self._start = None
            self._masks = {}
            if self._devices is not None:
                self._devices.close()
                self._devices = None
            self.fusion.release()
        if not torch.isfinite(samples).all():
            raise FloatingPointError("Sampling produced NaN/Inf latents: the UNet overflowed in this precision. "
                                     "Reload the Sonic models with dtype bf16 or fp32 and run again.")
        return samples

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, *args, **kwargs):
        """Core's inner sampling, on the intermediate device: the UNet still runs on `device`, a window at a time.
        Core's outer loop keeps its own device copies of the noise and start latent until sampling ends (two fp32
        latents per frame, the floor a guider cannot lower); every other clip-long buffer is in host RAM."""
        host = mm.intermediate_device()
        self._compute_device = torch.device(device)
        noise, latent_image = (self._on_host(moved, given, host)
                               for moved, given in zip((noise, latent_image), self._start or (None, None)))
        if denoise_mask is not None:
            denoise_mask = denoise_mask.to(host)
        return super().inner_sample(noise, latent_image, host, sampler, sigmas.to(host), denoise_mask,
                                    *args, **kwargs)

    @staticmethod
    def _on_host(moved: torch.Tensor, given: torch.Tensor | None, host: torch.device) -> torch.Tensor:
        """`moved` (core's device copy) on the host: the caller's own tensor when it already is that, so host RAM
        holds it once."""
        if (given is not None and given.device == host and given.dtype == moved.dtype
                and given.shape == moved.shape):
            return given
        return moved.to(host)

    @contextmanager
    def _memory_settings(self, latent_shape) -> Iterator[None]:
        """This run's sampling mode on the MODEL for the run only: one loader feeds many workflows, and what one
        run chose (its memory estimate, sliced attention) must not be found by the next."""
        from ..sonic_model.unet.speed import attention_slices  # diffusers: on first use, not at ComfyUI start

        mode, working = self._choose_memory(latent_shape)
        models = [self.model_patcher.model, *(copy.model for copy in device_copies(self.model_patcher))]
        self.sampling_mode = mode
        self.fusion.batched_cfg = mode.batched_guidance
        before = [model.working_memory for model in models]
        try:
            with ExitStack() as stack:  # every GPU's copy samples as the main one does
                for model in models:
                    model.working_memory = working
                    stack.enter_context(attention_slices(model.diffusion_model.unet, mode.attention_slices))
                yield
        finally:
            for model, working_before in zip(models, before):
                model.working_memory = working_before

    def _choose_memory(self, latent_shape) -> tuple[memory_model.SamplingMode, int | None]:
        """The sampling mode for the free VRAM, before core loads the model (it reads our memory estimate)."""
        patcher, model = self.model_patcher, self.model_patcher.model
        device = torch.device(patcher.load_device)
        # What the run may use: free now, plus the UNet weights already loaded, less what core keeps back
        # (EXTRA_RESERVED_VRAM, or --reserve-vram): the memory model's budget excludes that reserve.
        free = 0 if device.type == "cpu" else max(
            0, mm.get_free_memory(device) + patcher.loaded_size() - mm.extra_reserved_memory())
        height, width = latent_shape[-2] * 8, latent_shape[-1] * 8
        try:  # the clip's latents and tokens are in RAM (inner_sample): refuse before sampling if they cannot be
            memory_model.check_host_ram(mm.get_free_memory(mm.intermediate_device()), self.cond.num_frames,
                                        height, width, *self.cond.audio_tokens.shape[1:])
        except memory_model.DoesNotFit as error:
            raise MemoryError(f"Sonic does not fit this computer's free RAM: {error}") from None
        try:
            mode, working = choose_sampling_mode(model.low_vram, device.type == "cpu", free, height, width,
                                                 self.fusion.window, self.cond.num_frames, model.compute_dtype,
                                                 model.get_dtype())
        except memory_model.DoesNotFit as error:
            raise torch.OutOfMemoryError(f"Sonic does not fit this GPU's free memory: {error}") from None
        logging.info("Sonic: sampling with %s%s", mode,
                     f" ({free / memory_model.GIB:.1f} GiB of VRAM free)" if device.type != "cpu" else "")
        return mode, working

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (core's signature)
        sigma = float(timestep.reshape(-1)[0])
        step = self.first_step + (self._tracker.step_for(sigma) if self._tracker else 0)
        transformer_options = model_options.get("transformer_options", {})
        if self._devices is None:
            self._devices = RunDevices.for_run(self.model_patcher, self.inner_model, self._compute_device,
                                               model_options)
        spread = self._devices.spread(lambda model: (lambda rows: self._apply_model(rows, dict(transformer_options),
                                                                                   model)))
        fused = self.fusion.denoise(x, sigma, step, lambda rows: self._apply_model(rows, transformer_options),
                                    device=self._compute_device, spread=spread,
                                    with_rows=bool(model_options.get("sampler_post_cfg_function")))
        return self._post_cfg(fused, x, timestep, model_options)

    def _face_mask(self, mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """Cast once per run (and device) to the model's compute dtype, so the UNet's mask-grid cache keeps
        hitting."""
        if mask is None:
            return None
        dtype = self.inner_model.compute_dtype
        cached = self._masks.get(device)
        if cached is None or cached.dtype != dtype:
            cached = self._masks[device] = mask.to(device, dtype)  # each device's thread sets its own entry
        return cached

    def _apply_model(self, rows: GuidanceRows, transformer_options: dict, model=None) -> torch.Tensor:
        """One window's rows through core's model call: the main UNet's, or `model`, a copy on another GPU (the
        first call on the main one timed under core's torch.compile)."""
        if model is None and self.compile_backend is not None and self.first_call_seconds is None:
            return self._timed_first_call(rows, transformer_options)
        return self._apply_model_now(rows, transformer_options, model)

    def _apply_model_now(self, rows: GuidanceRows, transformer_options: dict, model=None) -> torch.Tensor:
        return (model or self.inner_model).apply_model(
            rows.x, rows.sigma, c_concat=rows.concat, c_crossattn=rows.clip, transformer_options=transformer_options,
            audio_tokens=rows.audio, time_ids=rows.time_ids, frames=rows.frames,
            face_mask=self._face_mask(rows.face_mask, rows.x.device))

    def _timed_first_call(self, rows: GuidanceRows, transformer_options: dict) -> torch.Tensor:
        """The first UNet call under core's torch.compile, timed: it traces and compiles the UNet."""
        start = time.perf_counter()
        out = self._apply_model_now(rows, transformer_options)
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        self.first_call_seconds = time.perf_counter() - start
        logging.info("Sonic: the UNet runs under core's torch.compile (backend %s); the first window took %.1f s "
                     "(compile + one run)", self.compile_backend, self.first_call_seconds)
        return out

    def _post_cfg(self, fused: FusedPrediction, x, timestep, model_options: dict) -> torch.Tensor:
        """Core's post-CFG hooks (CFG++ samplers read the uncond x0 through them), with Sonic's fused predictions."""
        denoised = fused.guided
        for hook in model_options.get("sampler_post_cfg_function", []):
            denoised = hook(PostCfgArgs(origin_of(hook), {
                "denoised": denoised, "model": self.inner_model, "uncond_denoised": fused.uncond,
                "cond_denoised": fused.full, "cond_scale": self.fusion.cfg_audio, "sigma": timestep,
                "model_options": model_options, "input": x}))
        return denoised


    def _try_post_cfg_hooks(self, latent: torch.Tensor) -> None:
        """Each post-CFG hook on the MODEL once, on a one-pixel stand-in: one that asks for core's conditioning
        (PostCfgArgs) is refused now rather than after the first step. Anything else it raises is left for the
        run itself to report."""
        x = torch.zeros(1, *latent.shape[1:2], 1, 1)
        for hook in self.model_options.get("sampler_post_cfg_function", []):
            args = PostCfgArgs(origin_of(hook), {
                "denoised": x, "model": self.model_patcher.model, "uncond_denoised": x, "cond_denoised": x,
                "cond_scale": self.fusion.cfg_audio, "sigma": torch.ones(1), "model_options": self.model_options,
                "input": x})
            try:
                hook(args)
            except NeedsCoreConditioning:
                raise
            except Exception:  # noqa: BLE001 - a stand-in's fault is not the hook's: the run shows real ones
                pass


class NeedsCoreConditioning(ValueError):
    """A post-CFG hook asked for core's cond/uncond batches."""


class PostCfgArgs(dict):
    """A post-CFG hook's arguments. Sonic has no core conditioning to give: a hook that asks for it (to run the UNet
    again on core's cond batches, as PerturbedAttentionGuidance does) is told so, by name, at the first step."""

    def __init__(self, origin: str, values: dict):
        super().__init__(values)
        self.origin = origin

    def __missing__(self, key):
        if key in ("cond", "uncond"):
            raise NeedsCoreConditioning(f"{self.origin} reruns the UNet on core's conditioning ('{key}'), which Sonic's "
                             "guidance does not use: remove it from the MODEL chain.")
        raise KeyError(key)
