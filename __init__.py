"""Sonic for ComfyUI: audio-driven portrait animation. Importing this loads no weights and touches no GPU."""
# ComfyUI imports this folder as a package. pytest imports this file on its own when the clone's folder name is no
# Python name ("sonic-portrait"): then there is no package to import from, and nothing to register.
if __package__:
    from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"] if __package__ else ["WEB_DIRECTORY"]
