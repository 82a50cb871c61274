"""The Sonic UNet as a native ComfyUI MODEL: a core BaseModel in a core ModelPatcher, built from comfy.ops layers.

Core's memory manager then estimates, loads (fully or partially), offloads and casts the UNet per layer as it does its
own models, and core's samplers, schedulers, sigma tools and model patches see a real MODEL. What core cannot know
about Sonic stays in the Sonic guider (nodes/guider.py): shift fusion, three-way guidance, per-window time ids.
"""
from __future__ import annotations

from typing import Callable

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.supported_models_base

from ..sonic_model.sampling.shift_fusion import GUIDANCE_ROWS
from .model_patchers import core_patcher

SIGMA_MIN, SIGMA_MAX = 0.002, 700.0
# Core's memory estimate sees the whole clip as one batch; Sonic runs one window (official 25 frames) per UNet call,
# with its 3 guidance rows batched, or one row per call in low-VRAM mode.
WINDOW_FRAMES = 25
# torch layers that have a comfy.ops twin of the same name; swapped by exact type, so a subclass with its own
# forward keeps it (a test checks that no plain weight layer is left in the Sonic UNet).
_COMFY_OPS_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm", "ConvTranspose2d", "Embedding")


class SonicModelConfig(comfy.supported_models_base.BASE):
    """SVD's sampling settings (EDM v-prediction over σ ∈ [0.002, 700], SD1.5 latents); the UNet is Sonic's own."""

    unet_extra_config = {}
    latent_format = comfy.latent_formats.SD15
    sampling_settings = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "sigma_data": 1.0}

    def __init__(self, weight_dtype: torch.dtype, manual_cast_dtype: torch.dtype | None,
                 model_channels: int | None = None):
        # model_channels: the first level's width, which core's UNet-patch nodes (FreeU) read before patching; they
        # then reach the start of sampling and are refused there by name (nodes/model_tools.py).
        extra = {} if model_channels is None else {"model_channels": model_channels}
        super().__init__({"disable_unet_model_creation": True, **extra})
        self.set_inference_dtype(weight_dtype, manual_cast_dtype)


class SonicModelSampling(comfy.model_sampling.ModelSamplingContinuousEDM, comfy.model_sampling.V_PREDICTION):
    """Core's EDM v-prediction with the official start: σ·ε + reference latent at every first σ (core scales the
    noise by √(1+σ²) when σ is the schedule's maximum)."""

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = sigma.reshape(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise * sigma + latent_image


class SonicDiffusionModel(torch.nn.Module):
    """Core's diffusion-model call (x, t, context, **conds) in front of the Sonic UNet's (rows, frames, …) call."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        """The weights' storage dtype (core reads it through BaseModel.get_dtype)."""
        layer = getattr(self.unet, "conv_in", None)
        return layer.weight.dtype if layer is not None else next(self.unet.parameters()).dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                control=None, transformer_options=None, *, audio_tokens: torch.Tensor, time_ids: torch.Tensor,
                frames: int, face_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
        rows = x.shape[0] // frames
        v = self.unet(x.reshape(rows, frames, *x.shape[1:]), timesteps.reshape(rows, frames)[:, 0],
                      added_time_ids=time_ids, clip_states=context, audio_tokens=audio_tokens, face_mask=face_mask)
        return v.flatten(0, 1)


class SonicBaseModel(comfy.model_base.BaseModel):
    """The Sonic UNet where core expects a diffusion model.

    `low_vram`: True runs the guidance rows one at a time with sliced attention, False batches them, None lets the
    guider choose from the free VRAM (sonic_model.sampling.memory_model). `working_memory` is the guider's estimate of one
    run's sampling memory beside the weights, which core's loader keeps free (loading the rest of the UNet partially).
    """

    def __init__(self, unet: torch.nn.Module, config: SonicModelConfig, low_vram: bool | None = None):
        super().__init__(config, model_type=comfy.model_base.ModelType.V_PREDICTION_EDM)
        self.diffusion_model = SonicDiffusionModel(unet)
        self.model_sampling = SonicModelSampling(config)
        self.low_vram = low_vram
        self.working_memory: int | None = None
        # Builds a fresh copy of this UNet's patcher loading on a given device, from the files it came from (the
        # loader sets it): what Sonic Devices copies the UNet to other GPUs with. None: not copyable.
        self.rebuild: Callable[[torch.device], comfy.model_patcher.ModelPatcher] | None = None

    def memory_required(self, input_shape, cond_shapes={}):  # noqa: B006 (core's signature)
        if self.working_memory is not None:
            return self.working_memory
        batch = WINDOW_FRAMES * (1 if self.low_vram else GUIDANCE_ROWS)
        return super().memory_required([min(int(input_shape[0]), batch), *input_shape[1:]], cond_shapes)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the UNet computes in (core's manual cast when the weights are stored in another)."""
        return self.manual_cast_dtype or self.get_dtype()


def use_comfy_ops(module: torch.nn.Module, operations) -> torch.nn.Module:
    """Turn every plain torch weight layer into its comfy.ops twin (same parameters, core's per-layer casting)."""
    for layer in module.modules():
        for name in _COMFY_OPS_LAYERS:
            if type(layer) is getattr(torch.nn, name):
                # Why a swap and not construction: diffusers' SVD blocks (pinned <= 0.42.1) build their layers as
                # nn.Linear/Conv/Norm themselves, about 120 sites in resnet, attention and attention_processor,
                # with no way to pass an operations family. A comfy.ops layer is the torch class plus core's cast
                # forward, same parameters, so the swap keeps the state dict and the goldens exact.
                layer.__class__ = getattr(operations, name)
                break
    return module


def sonic_operations(weight_dtype: torch.dtype, compute_dtype: torch.dtype | None, device: torch.device):
    """The comfy.ops family core would pick for these dtypes on this device."""
    return comfy.ops.pick_operations(weight_dtype, compute_dtype, load_device=device)


def store_weights_in(unet: torch.nn.Module, weight_dtype: torch.dtype) -> torch.nn.Module:
    """Keep the Linear/Conv weights in `weight_dtype` (fp8 storage); norms, biases and the rest stay as they are.
    Layer by layer, so at most one layer exists twice. comfy.ops casts each weight back per call."""
    for layer in unet.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)) and layer.weight.dtype != weight_dtype:
            layer.weight = torch.nn.Parameter(layer.weight.detach().to(weight_dtype), requires_grad=False)
    return unet


def sonic_model_patcher(unet: torch.nn.Module, low_vram: bool | None = None, compute_dtype: torch.dtype | None = None,
                        load_device: torch.device | None = None) -> comfy.model_patcher.ModelPatcher:
    """A core MODEL around a loaded Sonic UNet (built from comfy.ops layers; weights stay where they are), in the
    patcher class core builds its own models with.

    compute_dtype: the dtype the UNet computes in; None = its conv_in bias's (store_weights_in leaves biases in the
    compute dtype). Weights stored in another dtype (fp8) are cast per layer by comfy.ops (core's manual cast).
    load_device: where core loads it (None: ComfyUI's device)."""
    device = load_device or mm.get_torch_device()
    conv_in = getattr(unet, "conv_in", None)
    weight_dtype = conv_in.weight.dtype if conv_in is not None else next(unet.parameters()).dtype
    if compute_dtype is None:
        compute_dtype = conv_in.bias.dtype if conv_in is not None and conv_in.bias is not None else weight_dtype
    manual_cast = None if compute_dtype == weight_dtype else compute_dtype
    use_comfy_ops(unet, sonic_operations(weight_dtype, manual_cast, device))
    channels = getattr(getattr(unet, "config", None), "block_out_channels", None)
    config = SonicModelConfig(weight_dtype, manual_cast, model_channels=channels[0] if channels else None)
    model = SonicBaseModel(unet, config, low_vram=low_vram)
    return core_patcher(model, load_device)


def is_sonic_model(model) -> bool:
    return isinstance(getattr(model, "model", None), SonicBaseModel)
