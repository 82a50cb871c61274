"""This process's memory on Linux, from /proc: current and peak RSS, the peak of its anonymous memory, and restarting
the peak before a measurement."""
from __future__ import annotations

import threading
from pathlib import Path


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB, e.g. "VmRSS" (resident now) or "VmHWM" (peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Make VmHWM restart from the current RSS, so a peak excludes imports and set-up. False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class AnonPeak:
    """The highest RssAnon (memory the process itself holds, not a mapping's page cache) seen while active: a thread
    reads it every millisecond (torch's copies release the GIL), and callers may `sample()` at points of their own."""

    def __init__(self) -> None:
        self.base_kib = self.peak_kib = status_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    @property
    def grown_kib(self) -> int:
        return self.peak_kib - self.base_kib

    def sample(self) -> None:
        self.peak_kib = max(self.peak_kib, status_kib("RssAnon"))

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.sample()

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
