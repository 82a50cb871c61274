"""Decode latents with SVD's temporal VAE decoder in fixed chunks of frames.

The temporal decoder mixes frames inside one call, so the chunking is part of the result: the official code decodes
chunks of 8 frames (the last chunk shorter), each with num_frames = its own length.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch


def chunk_bounds(num_frames: int, chunk_size: int) -> list[tuple[int, int]]:
    if chunk_size < 1:
        raise ValueError(f"decode chunk size must be at least 1 frame (got {chunk_size})")
    return [(s, min(s + chunk_size, num_frames)) for s in range(0, num_frames, chunk_size)]


def iter_decoded_chunks(latents: torch.Tensor, chunk_size: int,
                        decode_chunk: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    """Yields (first frame index, decoded chunk) for VAE latents (N, 4, h, w), unscaled (ComfyUI's LATENT convention).

    `decode_chunk` receives one chunk (n, 4, h, w) and returns its n frames.
    """
    for start, stop in chunk_bounds(latents.shape[0], chunk_size):
        yield start, decode_chunk(latents[start:stop])
