"""ComfyUI as the library's host (sonic_model/host.py), implemented once: core's devices, its progress bar with a
JPEG preview, its Cancel, and its cache emptying after out of memory."""
from __future__ import annotations

from typing import Optional

import torch

import comfy.model_management as mm
import comfy.utils

from ..sonic_model.host import Frame, Host
from .preview import PREVIEW_SIDE, preview_image


class ComfyHost(Host):
    """The host of one node's run: `node_id` says which node's bar shows the progress."""

    def __init__(self, node_id: Optional[str] = None):
        self.node_id = node_id
        self._bar: Optional[comfy.utils.ProgressBar] = None

    @property
    def compute_device(self) -> torch.device:
        return mm.get_torch_device()

    @property
    def offload_device(self) -> torch.device:
        return mm.intermediate_device()

    def show_progress(self, done: int, total: int, preview: Optional[Frame] = None) -> None:
        if self._bar is None:
            self._bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        image = None if preview is None else ("JPEG", preview_image(preview), PREVIEW_SIDE)
        self._bar.update_absolute(done, total, preview=image)

    def check_cancel(self) -> None:
        mm.throw_exception_if_processing_interrupted()  # also without a server hook (tests, scripts)

    def free_memory(self) -> None:
        mm.soft_empty_cache(True)
