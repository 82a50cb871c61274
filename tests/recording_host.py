"""A library host (sonic_model.host.Host) that records what a stage reports, and can cancel after a given update."""
from __future__ import annotations

from sonic_model.host import Host


class Cancelled(Exception):
    pass


class RecordingHost(Host):
    def __init__(self, updates: list | None = None, cancel_after: int | None = None):
        self.updates = [] if updates is None else updates  # (done, total) per progress update
        self.previews: list = []
        self.cancel_after = cancel_after
        self.freed = 0

    def show_progress(self, done, total, preview=None):
        self.updates.append((done, total))
        self.previews.append(preview)

    def check_cancel(self):
        if self.cancel_after is not None and len(self.updates) >= self.cancel_after:
            raise Cancelled(f"cancelled after update {len(self.updates)}")

    def free_memory(self):
        self.freed += 1
