"""The oldest ComfyUI the pack runs on, checked when ComfyUI imports the pack (its V3 nodes, GUIDER and comfy.ops use)."""
from __future__ import annotations

import re

MINIMUM_COMFYUI = (0, 3, 64)  # the oldest release the suite has passed on (README: Compatibility)


def parse_version(text: str) -> tuple[int, ...]:
    """'0.3.75' → (0, 3, 75); '0.33.0rc1' → (0, 33, 0)."""
    return tuple(int(number) for number in re.findall(r"\d+", text)[:3])


def require_comfyui(found: str | None, minimum: tuple[int, ...] = MINIMUM_COMFYUI) -> None:
    """Refuse to load on an older ComfyUI with the fix named (ComfyUI shows the message under IMPORT FAILED)."""
    if found is not None and parse_version(found) < minimum:
        wanted = ".".join(map(str, minimum))
        raise ImportError(f"Sonic needs ComfyUI {wanted} or newer; this is ComfyUI {found}. Update ComfyUI (git pull, "
                          "or the Manager's 'Update ComfyUI') and restart.")


def installed_comfyui() -> str | None:
    """The running ComfyUI's version (None where it does not say: a source checkout without comfyui_version.py)."""
    try:
        from comfyui_version import __version__
    except ImportError:
        return None
    return __version__
