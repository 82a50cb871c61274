"""Sonic for ComfyUI: audio-driven portrait animation. Importing this loads no weights and touches no GPU."""
from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
