"""The hidden partial file a video is written to before it takes its final name, and the clean-up of partial files
that a killed or crashed run left behind.

A live writer holds an exclusive lock (flock) on its partial file. The kernel drops the lock when the process ends,
however it ends (SIGKILL, power cut, crash), so a partial file that nobody holds is a leftover, safe to delete. On
Windows, where there is no flock, a file still open by its writer cannot be deleted, which says the same.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

PARTIAL = ".partial"


def partial_path(path: Union[str, Path]) -> Path:
    """The hidden temporary file beside the target; its leading dot keeps it out of ComfyUI's file numbering."""
    path = Path(path)
    return path.with_name(f".{path.stem}{PARTIAL}{path.suffix or '.mp4'}")


def is_partial(name: str, suffix: str = ".mp4") -> bool:
    return name.startswith(".") and name.endswith(PARTIAL + suffix)


def _try_lock(fd: int) -> Optional[bool]:
    """Take the exclusive lock without waiting: True when taken, False when another open file holds it, None on a
    file system without locks (some network shares), where nobody can tell a leftover from a live file."""
    if fcntl is None:
        return True  # Windows: deleting a file its writer holds open fails, which guards it instead
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


class PartialFile:
    """The partial file of `path`: created empty and locked by `open()`; `publish()` syncs it to disk and renames it
    to the final name in one atomic step, `discard()` deletes it. Until then the final name is never touched."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.final = Path(path)
        self.path = partial_path(path)
        self._fd: Optional[int] = None

    def open(self) -> Path:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _try_lock(self._fd)  # without locks the file is still hidden and named partial
        return self.path

    def size(self) -> int:
        """Bytes written so far (0 once gone)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def publish(self) -> None:
        os.fsync(self._fd)  # the data is on disk before the name says the file is complete (and late errors show)
        os.replace(self.path, self.final)
        self._close()

    def discard(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as err:
            if self.path.exists():  # (a read-only folder refuses even to delete a file it never held)
                log.warning("could not delete the partial video %s: %s", self.path, err)
        finally:
            self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the lock


def remove_stale_partials(folder: Union[str, Path], suffix: str = ".mp4") -> list[Path]:
    """Delete the partial files in `folder` that no live writer holds: what a run killed while saving left."""
    folder = Path(folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    removed = []
    for name in filter(lambda n: is_partial(n, suffix), names):
        path = folder / name
        if _remove_if_unheld(path):
            log.warning("Sonic: deleted %s, a partial video left by a run that was stopped while saving (its process "
                        "was killed or crashed).", path)
            removed.append(path)
    return removed


def _remove_if_unheld(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if _try_lock(fd) is not True:
            return False  # a live writer, or no way to tell: keep it
        path.unlink()
        return True
    except OSError:  # still open by its writer (Windows), already gone, or a read-only folder
        return False
    finally:
        os.close(fd)
