"""Sonic Decode (chunked): SVD's temporal VAE decoder over fixed chunks of frames, with core's VAE.

Core's `VAE.decode` sizes its sub-batches from free memory, and the temporal decoder mixes exactly the frames of one
sub-batch; it also retries a failed decode with per-frame tiles, which drops the temporal mixing. Either changes the
pixels, so a chunk here goes through the model in one call. See docs/decode-chunking.md.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..sonic_model.video.video_pipeline import decoded_chunks
from . import menu
from .host import ComfyHost

DEFAULT_CHUNK = 8  # the official decode_chunk_size


def decode_chunk(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (n,4,h,w) → frames (n,H,W,3) float32 in [0,1] on mm.intermediate_device(), in ONE decoder
    call: SVD's temporal decoder takes the batch as the frames (`timesteps` defaults to the batch size), so the
    chunk is one temporal group."""
    vae.throw_exception_if_invalid()
    n = latents.shape[0]
    # Core's estimate is per frame (its formula ignores the batch axis): ask room for the whole chunk.
    memory = vae.memory_used_decode(latents.shape, vae.vae_dtype) * n
    output_device = getattr(vae, "output_device", mm.intermediate_device())
    mm.load_models_gpu([vae.patcher], memory_required=memory, force_full_load=getattr(vae, "disable_offload", False))
    with torch.inference_mode():
        x = latents.to(device=vae.device, dtype=vae.vae_dtype)
        pixels = vae.first_stage_model.decode(x)
        return vae.process_output(pixels.to(output_device).float()).movedim(1, -1)


def check_latents(latent: dict) -> torch.Tensor:
    samples = latent["samples"] if isinstance(latent, dict) else latent
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"Sonic decode expects SVD latents (frames, 4, h, w), frames on the batch axis; got {shape}. "
                         "Connect the Sonic sampler's latent.")
    if samples.shape[0] == 0:
        raise ValueError("The latent holds no frames.")
    return samples


def iter_decode(vae: Any, samples: torch.Tensor, chunk_size: int = DEFAULT_CHUNK,
                node_id: Optional[str] = None) -> Iterator[torch.Tensor]:
    """Yields decoded chunks (n,H,W,3) of Sonic latents (N,4,h,w) with core's VAE, ComfyUI as the host: progress
    with a preview and Cancel per chunk, a chunk out of memory retried once after the cache is emptied."""
    return decoded_chunks(samples, chunk_size, lambda latents: decode_chunk(vae, latents), ComfyHost(node_id))


def decode_latents(vae: Any, samples: torch.Tensor, chunk_size: int = DEFAULT_CHUNK,
                   node_id: Optional[str] = None) -> torch.Tensor:
    """All frames (N,H,W,3) on mm.intermediate_device(), filled chunk by chunk into one preallocated tensor."""
    out: Optional[torch.Tensor] = None
    start = 0
    for frames in iter_decode(vae, samples, chunk_size, node_id):
        if out is None:
            out = torch.empty((samples.shape[0], *frames.shape[1:]), dtype=torch.float32,
                              device=mm.intermediate_device())
        out[start:start + frames.shape[0]] = frames
        start += frames.shape[0]
    return out


class SonicDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicDecode",
            display_name="Sonic Decode (chunked)",
            category=menu.VIDEO,
            description="Decodes Sonic latents with SVD's temporal VAE decoder in fixed chunks of frames, as the "
                        "official code does (8). Each chunk is decoded in one pass: frames inside a chunk are "
                        "smoothed together, so the chunk size is part of the look. For long videos, 'Sonic Decode + "
                        "Save Video' streams straight to the file instead of holding every frame.",
            inputs=[
                io.Vae.Input("vae", tooltip="SVD's VAE (from 'Load SVD + Sonic weights' or a checkpoint loader)."),
                io.Latent.Input("latent", tooltip="Latents from the Sonic sampler: one per frame at 12.5 fps."),
                io.Int.Input("chunk_size", default=DEFAULT_CHUNK, min=1, max=64,
                             tooltip="Frames decoded together (official: 8). The temporal decoder mixes frames "
                                     "within a chunk only; larger chunks need more VRAM."),
            ],
            outputs=[io.Image.Output(display_name="images",
                                     tooltip="Decoded frames (N,H,W,3) in [0,1] at 12.5 fps, on the CPU.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, vae, latent, chunk_size=DEFAULT_CHUNK) -> io.NodeOutput:
        samples = check_latents(latent)
        return io.NodeOutput(decode_latents(vae, samples, chunk_size, node_id=cls.hidden.unique_id))
