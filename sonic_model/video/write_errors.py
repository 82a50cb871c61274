"""Why a video could not be written, in words that name the fix: a full disk, a read-only folder, a folder the
user may not write into, a file system that cannot hold a file this large.

The operating system's error number decides (PyAV raises its own OSError subclasses with the errno set), so the
message is the same whichever step failed: creating the folder, opening the file, muxing a frame or closing it.
"""
from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path
from typing import Optional

MIB = 1 << 20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)
FORBIDDEN = (errno.EACCES, errno.EPERM)
TOO_LARGE = (errno.EFBIG,)
ELSEWHERE = "choose another output folder (start ComfyUI with --output-directory)"
CACHED = "Sampling is cached, so a re-run only redoes the decode and the save."


def free_bytes(folder: str) -> Optional[int]:
    """Bytes an ordinary user may still write on the disk holding `folder` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _mib(size: float) -> int:
    return max(1, math.ceil(size / MIB))


def _size(size: int) -> str:
    return f"{math.ceil(size / 1024)} KiB" if size < MIB else f"{size / MIB:.1f} MiB"


def disk_full(path: str, written: int, expected: Optional[int]) -> str:
    """`written`: bytes the video had when the disk filled; `expected`: its estimated full size, if known."""
    free = free_bytes(os.path.dirname(path))
    now = f" ({_size(free)} free on that disk now)" if free is not None else ""
    if expected is not None and free is not None:  # 10 % spare: the estimate is extrapolated from the start
        fix = f"Free at least {_mib(1.1 * expected - free)} MiB (the video needs about {_size(expected)})"
    else:
        fix = "Free some space"
    return (f"The disk is full: writing the video {path} stopped at {_size(written)}{now}. {fix}, or choose another "
            f"output folder on a disk with room (start ComfyUI with --output-directory). No partial file was left. "
            f"{CACHED}")


def write_failed(path: str, error: BaseException, written: int = 0, expected: Optional[int] = None,
                 folder: Optional[str] = None) -> str:
    """The message for an OSError while writing the video `path` into `folder` (by default the one holding it)."""
    code = getattr(error, "errno", None)
    folder = folder or os.path.dirname(path)
    if code in DISK_FULL:
        return disk_full(path, written, expected)
    if code in READ_ONLY:
        return (f"The output folder {folder} is read-only (its file system is mounted read-only): {ELSEWHERE}, or "
                f"remount it writable. Nothing was saved. {CACHED}")
    if code in FORBIDDEN:
        return (f"ComfyUI may not write into the output folder {folder} ({os.strerror(code)}): make it writable for "
                f"the user running ComfyUI, or {ELSEWHERE}. Nothing was saved. {CACHED}")
    if code in TOO_LARGE:
        return (f"The video {path} is larger than the file system of {folder} allows for one file (FAT32 stops at "
                f"4 GiB): choose an output folder on a disk formatted NTFS, exFAT or ext4 (start ComfyUI with "
                f"--output-directory), or save a shorter clip. No partial file was left. {CACHED}")
    return (f"Writing the video {path} failed ({error}). Check that the output folder is writable and the disk has "
            "room; no partial file was left.")
