"""ComfyUI as on a GPU box, with the stand-in accelerator (tests/stand_in_device.py) as its torch device.

Inside `comfy_on_stand_in()` core's public device functions answer as they do on an NVIDIA card with room to spare:
`get_torch_device()` / `vae_device()` / `text_encoder_device()` are the stand-in, `intermediate_device()` and the
offload devices stay the CPU, memory queries report a 24 GiB card, and the normal-VRAM policy applies (models load
fully, get offloaded to the CPU). fp16/bf16 are reported unsupported, so the CPU computes in fp32 as the CPU suite
does; precision is checked elsewhere. Models and cached node outputs from before are dropped on entry and exit, so
nothing built for the CPU runs on the stand-in and nothing of the stand-in outlives the block.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from typing import Iterator
from unittest import mock

import torch

import comfy.model_management as mm
from stand_in_device import STAND_IN, is_stand_in, stand_in_device

CARD_BYTES = 24 * 1024 ** 3


def _forget_models() -> None:
    """Unload core's loaded models and empty ComfyUI's node-output cache, which holds models built before."""
    mm.unload_all_models()
    harness = sys.modules.get("comfy_harness")
    executor = getattr(harness, "_state", {}).get("executor") if harness else None
    if executor is not None:
        executor.reset()  # ComfyUI's output cache would hand back the CPU loader's models


@contextmanager
def comfy_on_stand_in() -> Iterator[torch.device]:
    original_free, original_total = mm.get_free_memory, mm.get_total_memory

    def free_memory(dev=None, torch_free_too=False):
        if dev is None or is_stand_in(dev):
            return (CARD_BYTES, 0) if torch_free_too else CARD_BYTES
        return original_free(dev, torch_free_too)

    def total_memory(dev=None, torch_total_too=False):
        if dev is None or is_stand_in(dev):
            return (CARD_BYTES, CARD_BYTES) if torch_total_too else CARD_BYTES
        return original_total(dev, torch_total_too)

    with ExitStack() as stack:
        device = stack.enter_context(stand_in_device())
        for name, value in {"get_torch_device": lambda: STAND_IN, "text_encoder_device": lambda: STAND_IN,
                            "get_free_memory": free_memory, "get_total_memory": total_memory,
                            "should_use_fp16": lambda *a, **k: False, "should_use_bf16": lambda *a, **k: False,
                            "vram_state": mm.VRAMState.NORMAL_VRAM}.items():
            stack.enter_context(mock.patch.object(mm, name, value))
        assert mm.intermediate_device() == torch.device("cpu") and mm.vae_device() == STAND_IN
        _forget_models()
        stack.callback(_forget_models)  # runs first on exit, while the stand-in still answers
        yield device
