"""Real file-system faults for the reliability tests: a tiny tmpfs that fills up, the same remounted read-only, and
a folder made immutable with chattr. All three refuse root, which ignores permission bits. Mounting needs root (the
tests run as root here and in CI): when it is refused the test fails, it never skips."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed ({result.stderr.strip() or result.returncode}): the disk-fault "
                    "tests need root and a kernel that allows tmpfs mounts (no skip: a fault left untested is a "
                    "fault shipped)", pytrace=False)


@contextmanager
def small_disk(folder: Path, size_kib: int, mode: str = "full") -> Iterator[Path]:
    """`folder` becomes a fresh tmpfs of `size_kib` KiB for the duration: writable ("full", fills after size_kib),
    remounted read-only ("read-only"), or writable but its directory immutable ("immutable", chattr +i: EPERM)."""
    folder.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0777", "sonic-test-disk", str(folder))
    try:
        if mode == "read-only":
            _run("mount", "-o", "remount,ro", str(folder))
        elif mode == "immutable":
            _run("chattr", "+i", str(folder))
        yield folder
    finally:
        if mode == "immutable":
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True, timeout=60)
        if subprocess.run(["umount", str(folder)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=60)  # busy: detach it anyway
        folder.rmdir()
