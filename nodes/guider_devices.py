"""The devices one Sonic sampling run spreads its windows over, found on the MODEL the guider samples with.

Core's multi-GPU clones (where the running ComfyUI makes them) arrive in the run's model options with core's thread
pool; Sonic Devices' copies sit in the MODEL's additional models and get a thread per device for the run. Either
way core's sampler preparation has loaded every copy on its own device (load_models_gpu) before the first step.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..sonic_model.sampling.window_devices import DeviceThreads, RowsDenoiser, WindowSpread
from .devices import DEVICE_COPIES


class RunDevices:
    """The main device first, each device's model (None for the main one: the guider's own), their thread pool."""

    def __init__(self, devices: list[torch.device], models: dict, pool=None, own_pool: bool = False):
        self.devices = devices
        self.models = models
        self.pool = pool
        self._own_pool = own_pool
        self.ran: list[tuple[int, int, torch.device]] = []  # (step, window, device) of every window, in fused order

    @classmethod
    def for_run(cls, patcher, main_model, main: torch.device, model_options: dict) -> RunDevices:
        clones = model_options.get("multigpu_clones") or {}  # core's, where core has them
        if len(clones) > 1:
            devices = [main, *(torch.device(d) for d in clones if torch.device(d) != main)]
            pool = model_options.get("multigpu_thread_pool")
            models = {d: clones[d].model for d in devices[1:]}
            return cls(devices, models, pool or DeviceThreads(devices), own_pool=pool is None)
        copies = patcher.get_additional_models_with_key(DEVICE_COPIES)
        if not copies:
            return cls([main], {})
        devices = [main, *(torch.device(c.load_device) for c in copies)]
        if len(set(devices)) != len(devices):
            raise ValueError(f"The Sonic MODEL has two copies on one device ({', '.join(map(str, devices))}): "
                             "use one Sonic Devices node per MODEL.")
        return cls(devices, {d: c.model for d, c in zip(devices[1:], copies)}, DeviceThreads(devices),
                   own_pool=True)

    def spread(self, denoiser_for: Callable[[object | None], RowsDenoiser]) -> WindowSpread | None:
        """This evaluation's spread (None on one device: the guider's one-device path, unchanged)."""
        if len(self.devices) == 1:
            return None
        denoisers = {d: denoiser_for(self.models.get(d)) for d in self.devices}
        return WindowSpread(self.devices, denoisers, self.pool, ran=self.ran)

    def close(self) -> None:
        if self._own_pool:
            self.pool.shutdown()
