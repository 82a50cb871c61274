"""This process's memory on Linux, from /proc: current and peak RSS, and restarting the peak before a measurement."""
from __future__ import annotations

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
