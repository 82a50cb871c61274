"""The reliability cases (issue: nothing breaks, nothing is lost): a decorator that names the case each test proves
and the behaviour it asserts. tools/reliability_table.py reads these decorators (without importing the tests) to
write docs/reliability.md, so the table cannot drift from what the tests check."""
from __future__ import annotations

from typing import Callable

GROUPS = ("Images", "Audio", "Weights", "Runs", "Determinism", "Fuzz")


def case(group: str, name: str, behaviour: str) -> Callable:
    """Mark a test as the proof of one reliability case. All three arguments must be string literals."""
    if group not in GROUPS:
        raise ValueError(f"unknown reliability group {group!r}; one of {GROUPS}")

    def mark(test: Callable) -> Callable:
        test.reliability_case = (group, name, behaviour)
        return test

    return mark
