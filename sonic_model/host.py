"""What the library needs from the program that runs it, in one place: where to compute and where to keep results,
progress (with an optional preview frame), Cancel, and what to do when memory runs out.

`Host` itself is the library used alone: the CPU for both devices, no progress display, never cancelled. ComfyUI's
adapter (`nodes/host.py`) implements it once for ComfyUI; every stage of the library takes a host, never a
ComfyUI object or an ad hoc callback.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional, TypeVar

import torch

Frame = torch.Tensor  # (H, W, 3) float in [0, 1]: what a progress preview shows
OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)
_EXPLAINED = "sonic_explained"  # set on an error once a stage has explained it, so no later stage re-labels it
T = TypeVar("T")


class Host:
    """The library's view of its host. Subclass and override what the host offers."""

    @property
    def compute_device(self) -> torch.device:
        """Where models run."""
        return torch.device("cpu")

    @property
    def offload_device(self) -> torch.device:
        """Where clip-long results are kept between stages (host RAM when the compute device is a GPU)."""
        return torch.device("cpu")

    def show_progress(self, done: int, total: int, preview: Optional[Frame] = None) -> None:
        """Display `done` of `total`, with a picture of the work when given."""

    def check_cancel(self) -> None:
        """Raise the host's own interrupt exception if the user cancelled."""

    def free_memory(self) -> None:
        """Give cached device memory back, after an out-of-memory error and before the error is raised or retried."""

    def progress(self, total: int = 1) -> "Progress":
        return Progress(self, total)


class Progress:
    """One progress count of a stage: each update is shown, then Cancel is checked, so every stage that reports
    progress can also be cancelled there. `share(index, count)` places this count as part `index` of `count` equal
    parts of one bar (several clips or faces worked in a row)."""

    def __init__(self, host: Host, total: int = 1, part: tuple[int, int] = (0, 1)):
        self.host = host
        self.total = max(int(total), 1)
        self.part = part
        self.done = 0

    def __call__(self, done: int, total: Optional[int] = None, preview: Optional[Frame] = None) -> None:
        """`done` of `total` (the count given at creation when None); never goes backwards."""
        if total is not None:
            self.total = max(int(total), 1)
        self.done = max(self.done, min(int(done), self.total))
        index, count = self.part
        self.host.show_progress(index * self.total + self.done, count * self.total, preview)
        self.host.check_cancel()

    def share(self, index: int, count: int) -> "Progress":
        return Progress(self.host, self.total, (index, count))


@contextmanager
def explained(host: Host, message: Callable[[BaseException], str],
              kinds: tuple[type[BaseException], ...] = OUT_OF_MEMORY) -> Iterator[None]:
    """Re-raise an error of `kinds` (out-of-memory errors, OSError) raised inside with this stage's message, unless
    an earlier stage already explained it. Out of memory first lets the host free its cached memory, and is raised as
    torch's type, which ComfyUI answers by unloading models; anything else as a plain OSError (PyAV's own error types
    take other constructor arguments)."""
    try:
        yield
    except kinds as error:
        if getattr(error, _EXPLAINED, False):
            raise
        out_of_memory = isinstance(error, OUT_OF_MEMORY)
        if out_of_memory:
            host.free_memory()
        explained_error = (torch.OutOfMemoryError if out_of_memory else OSError)(message(error))
        setattr(explained_error, _EXPLAINED, True)
        raise explained_error from error


def retried_once(host: Host, work: Callable[[], T], on_retry: Callable[[], None] = lambda: None) -> T:
    """`work()`, run a second time after the host freed its cached memory if the first run ran out of GPU memory
    (a fragmented cache often has the room once emptied); a second failure propagates, for `explained` above it."""
    try:
        return work()
    except torch.OutOfMemoryError:
        host.free_memory()
        on_retry()
    return work()
