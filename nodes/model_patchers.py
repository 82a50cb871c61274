"""Sonic's smaller models under core's memory manager, as core keeps its own (CLIP vision, audio encoders).

Whisper's encoder with the two audio adapters, and RIFE, are each a core ModelPatcher: the stage that uses one loads
it with `load_models_gpu`, and core does the rest: it leaves it loaded while there is room, offloads it when the
UNet or the VAE needs that room, applies --lowvram/--novram to it, and ComfyUI's "Unload models" (POST /free)
frees it. No node moves a model by hand.
"""
from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.model_patcher


class SonicAudioModels(torch.nn.Module):
    """Whisper's encoder and the audio2token/audio2bucket adapters: used by the same stages, loaded together."""

    def __init__(self, encoder: torch.nn.Module, audio2token: torch.nn.Module | None,
                 audio2bucket: torch.nn.Module | None):
        super().__init__()
        self.encoder = encoder
        self.audio2token = audio2token
        self.audio2bucket = audio2bucket


def core_patcher(module: torch.nn.Module, load_device: torch.device | None = None) -> comfy.model_patcher.ModelPatcher:
    """`module` in the patcher class core builds its own models with in the running release: CoreModelPatcher
    (dynamic VRAM's patcher where core turned that on at start-up), or ModelPatcher before that name existed.
    `load_device`: where core loads it (None: ComfyUI's device; another GPU for a Sonic Devices copy)."""
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return patcher_class(module, load_device=load_device or mm.get_torch_device(),
                         offload_device=mm.unet_offload_device())


def load_for_stage(patcher: comfy.model_patcher.ModelPatcher, working_bytes: int = 0) -> torch.nn.Module:
    """The patcher's model on its device for the stage about to run; core first frees `working_bytes` beside it
    (evicting other models if it must)."""
    mm.load_models_gpu([patcher], memory_required=working_bytes)
    return patcher.model
