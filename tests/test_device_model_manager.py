"""Sonic's smaller models under core's memory manager, on the stand-in accelerator (whose byte counter shows what
sits on the device): Whisper with the audio adapters and RIFE are core patchers that core loads for their stage,
keeps while there is room, offloads when the UNet needs the room, and frees on "Unload models"."""
from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

from sonic_fakes import load_tiny_sonic
from tools.comfy_runtime import import_pack

import_pack()
import comfy.model_management as mm  # noqa: E402
from sonic_pack.nodes.audio import encode_sonic_audio  # noqa: E402
from sonic_pack.nodes.video import interpolate_images  # noqa: E402
from stand_in_device import STAND_IN, device_memory  # noqa: E402

pytestmark = pytest.mark.device


def _voice(seconds: float = 0.5) -> dict:
    t = torch.arange(int(seconds * 16000)) / 16000
    return {"waveform": torch.sin(2 * math.pi * 220 * t)[None, None], "sample_rate": 16000}


def _bytes_of(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _on_device(module: torch.nn.Module) -> bool:
    return all(p.device == STAND_IN for p in module.parameters())


def _loaded(patcher) -> bool:
    return any(m.model is patcher for m in mm.current_loaded_models)


def test_the_stages_load_their_models_through_core_and_unload_models_frees_every_sonic_weight(stand_in_gpu,
                                                                                              tiny_models_dir):
    models, unet = load_tiny_sonic(tiny_models_dir)
    gc.collect()
    start = device_memory.allocated
    embeds, _ = encode_sonic_audio(models, _voice())
    assert embeds.tokens.device.type == "cpu"  # the output is on the intermediate device
    assert _loaded(models.audio_patcher) and _on_device(models.whisper.encoder) and _on_device(models.audio2token)
    interpolate_images(models.rife_patcher, torch.rand(3, 32, 32, 3), 2)
    assert _loaded(models.rife_patcher) and _on_device(models.rife)
    # Core kept both where it loaded them: their weights are what the device holds now.
    audio_bytes = _bytes_of(models.audio_patcher.model)
    assert device_memory.allocated - start >= audio_bytes + _bytes_of(models.rife)

    refs = [weakref.ref(m) for m in (models.whisper.encoder, models.audio2token, models.rife, unet.model)]
    mm.unload_all_models()  # what ComfyUI's "Unload models" (POST /free) makes its prompt worker do
    assert not _on_device(models.whisper.encoder) and not _on_device(models.rife)
    del models, unet, embeds
    gc.collect()
    assert device_memory.allocated == start, "a Sonic weight stayed on the device after Unload models"
    assert all(ref() is None for ref in refs), "a Sonic model outlived ComfyUI's unloading"


def test_core_offloads_whisper_to_make_room_for_the_unet(stand_in_gpu, tiny_models_dir, monkeypatch):
    models, unet = load_tiny_sonic(tiny_models_dir)
    encode_sonic_audio(models, _voice())
    assert _on_device(models.whisper.encoder)
    # A card with room for the UNet and its work but not for Whisper beside it: core's free-memory reading.
    card = device_memory.allocated + unet.model_size() + 2**20
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: (
        (card - device_memory.allocated,) * 2 if torch_free_too else card - device_memory.allocated))
    mm.load_models_gpu([unet], memory_required=2**20)
    assert _loaded(unet) and not _loaded(models.audio_patcher)
    assert not _on_device(models.whisper.encoder) and not _on_device(models.audio2token)
