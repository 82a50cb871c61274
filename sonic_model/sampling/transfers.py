"""Copies between host memory and a CUDA device that do not make the host wait for the GPU's queue.

Each shift-fusion window sends its slices host→device and its x0 back. A plain copy from or to pageable host
memory returns only after the GPU has finished everything queued before it, so once per window the host would stop
feeding the GPU until the card ran dry. Staged through pinned memory, both directions queue behind the work instead;
the host then waits only for a copy queued a window earlier (`Pending.result`), which the GPU finished long ago.
Other devices (the CPU, or a host without CUDA) copy as usual.
"""
from __future__ import annotations

import torch


def _queued(device: torch.device) -> bool:
    return device.type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`, queued without waiting when it goes host → CUDA."""
    if tensor.device == device or not _queued(device) or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)  # torch keeps the pinned block until the copy ran


class Pending:
    """A device tensor on its way to the host: queued now, `result()` waits for this copy alone."""

    def __init__(self, tensor: torch.Tensor, host: torch.device):
        if _queued(tensor.device) and host.type == "cpu":
            self._out = tensor.to(host, non_blocking=True)  # into pinned memory, filled when the GPU gets there
            self._done = torch.cuda.Event()
            self._done.record()
        else:
            self._out, self._done = tensor.to(host), None

    def result(self) -> torch.Tensor:
        if self._done is not None:
            self._done.synchronize()
            self._done = None
        return self._out
