"""Expert inputs folded away by the frontend where the running core's V3 schema can say so (`advanced`, newer
than 0.3.75); on an older core they stay ordinary inputs."""
from __future__ import annotations

import inspect

from comfy_api.latest import io


def schema_has_advanced() -> bool:
    return "advanced" in inspect.signature(io.Input.__init__).parameters


def advanced() -> dict:
    """Keyword arguments that mark an input advanced, or none where the schema has no such flag."""
    return {"advanced": True} if schema_has_advanced() else {}
