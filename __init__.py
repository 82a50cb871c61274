"""Sonic for ComfyUI: audio-driven portrait animation. Importing this loads no weights and touches no GPU."""
# ComfyUI imports this folder as a package. pytest imports this file on its own when the clone's folder name is no
# Python name ("sonic-portrait"): then there is no package to import from, and nothing to register.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
