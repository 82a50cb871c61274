"""The windows of one shift-fusion step spread over several devices, one host thread per device.

Every window of a step reads the same noisy latents, so each device can evaluate its share without seeing the
others'; only the x0 sums meet, on the host. Which device runs which window is fixed by the window's index (contiguous
shares, as equal as counts allow), and the host fuses the results in window order, so the fused x0 is the one-device
run's whatever the devices' timing.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

# x0 of every row of a GuidanceRows on one device (shift_fusion.RowsDenoiser).
RowsDenoiser = Callable[[Any], torch.Tensor]


def assign_windows(windows: int, devices: list[torch.device]) -> list[torch.device]:
    """The device of each window: contiguous shares whose sizes differ by at most one, the first devices taking the
    larger ones (so the main device, first, never waits for a longer share elsewhere)."""
    if not devices:
        raise ValueError("at least one device is needed to run the windows")
    base, extra = divmod(windows, len(devices))
    owners: list[torch.device] = []
    for i, device in enumerate(devices):
        owners += [device] * (base + (1 if i < extra else 0))
    return owners


class WorkPool(Protocol):
    """One worker per device running what is submitted to it in order; `get_result` gives (result, error) in the
    order of submission. Core's multi-GPU pool (where the running ComfyUI has one) has this shape, and so has
    `DeviceThreads`."""

    def submit(self, device: torch.device, fn: Callable, *args: Any, **kwargs: Any) -> None: ...

    def get_result(self, device: torch.device) -> tuple[Any, BaseException | None]: ...


class DeviceThreads:
    """A host thread per device, each with its device current (a CUDA thread's own setting)."""

    def __init__(self, devices: list[torch.device]):
        self._work: dict[torch.device, queue.Queue] = {d: queue.Queue() for d in devices}
        self._results: dict[torch.device, queue.Queue] = {d: queue.Queue() for d in devices}
        self._threads = [threading.Thread(target=self._serve, args=(d,), daemon=True, name=f"sonic-{d}")
                         for d in devices]
        for thread in self._threads:
            thread.start()

    def _serve(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        while (item := self._work[device].get()) is not None:
            fn, args, kwargs = item
            try:
                self._results[device].put((fn(*args, **kwargs), None))
            except BaseException as error:  # noqa: BLE001 (handed to the caller, which raises it)
                self._results[device].put((None, error))

    def submit(self, device: torch.device, fn: Callable, *args: Any, **kwargs: Any) -> None:
        self._work[device].put((fn, args, kwargs))

    def get_result(self, device: torch.device) -> tuple[Any, BaseException | None]:
        return self._results[device].get()

    def shutdown(self) -> None:
        for work in self._work.values():
            work.put(None)
        for thread in self._threads:
            thread.join(timeout=30)


@dataclass
class WindowSpread:
    """Where one evaluation's windows run: `devices` (the main one first), each with the rows denoiser of its own
    model copy, and the pool whose threads drive them. `ran` records (step, window, device) of every window run, in
    the order the host fused them."""

    devices: list[torch.device]
    denoisers: dict[torch.device, RowsDenoiser]
    pool: WorkPool
    ran: list[tuple[int, int, torch.device]] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [d for d in self.devices if d not in self.denoisers]
        if missing:
            raise ValueError(f"no model copy for {', '.join(map(str, missing))}")


def out_of_memory_on(device: torch.device, window: int, windows: int, step: int,
                     error: torch.OutOfMemoryError) -> torch.OutOfMemoryError:
    """Out of memory on one of several devices, naming it (the others may have room)."""
    return torch.OutOfMemoryError(f"{device} ran out of memory in window {window + 1} of {windows} (step {step + 1}): "
                                  f"lower the Reference Image resolution or the window, or leave {device} out of "
                                  f"the Sonic Devices list. ({error})")
