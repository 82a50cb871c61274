"""Where the Sonic nodes sit in ComfyUI's node menu: one folder per stage of the pipeline, in graph order."""
from __future__ import annotations

LOADERS = "Sonic/loaders"            # weights in, and the check of them
CONDITIONING = "Sonic/conditioning"  # audio, reference picture and motion, prepared for the sampler
SAMPLING = "Sonic/sampling"          # shift fusion: the one-node sampler and the GUIDER for core's samplers
VIDEO = "Sonic/video"                # decode, RIFE, paste-back and the streaming mp4 writer
SPEAKERS = "Sonic/speakers"          # several faces in one picture, one voice each
