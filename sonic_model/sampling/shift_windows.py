"""Time-aware position-shift fusion: which frames each UNet window covers at a given denoising step.

At step s the clip of N frames is covered by windows of f frames starting at k·stride − α·s (k = 0, 1, … while
k·stride < N), taken modulo N, so window borders move α frames per step and wrap around the clip's end.
"""
from __future__ import annotations


def window_starts(num_frames: int, window: int, shift: int, step: int, stride: int | None = None) -> list[int]:
    """Unwrapped start position of every window at `step` (may be negative, as in the official loop)."""
    stride = window if stride is None else stride
    if num_frames <= 0 or window <= 0 or stride <= 0:
        raise ValueError(f"need num_frames, window and stride > 0 (got {num_frames}, {window}, {stride})")
    return [k - shift * step for k in range(0, num_frames, stride)]


def shifted_windows(num_frames: int, window: int, shift: int, step: int, stride: int | None = None) -> list[list[int]]:
    """Frame indices of every window at `step`: circular, so a window longer than the clip repeats frames."""
    return [[(start + j) % num_frames for j in range(window)]
            for start in window_starts(num_frames, window, shift, step, stride)]


def num_windows(num_frames: int, window: int, stride: int | None = None) -> int:
    stride = window if stride is None else stride
    return -(-num_frames // stride)
