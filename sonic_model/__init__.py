"""Sonic model library: the official Sonic models and sampling, weight-compatible, with no ComfyUI import.

Submodules are imported on demand (`from sonic_model.unet.unet import build_sonic_unet`), so importing the package
itself costs nothing and touches no GPU.
"""
