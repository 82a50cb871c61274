"""Sonic's two audio adapters: Whisper windows → per-frame audio tokens, and → motion buckets.

Parameter names (`proj1`, `proj2`, `proj3`, `norm`) and constructor arguments are the official ones, so the released
`audio2token.pth` / `audio2bucket.pth` state dicts load with `strict=True`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

# Full-size constructor arguments of the released checkpoints (whisper-tiny: 384 channels; CLIP ViT-H: 1024).
AUDIO2TOKEN_CONFIG: dict[str, int] = {
    "seq_len": 10, "blocks": 5, "channels": 384, "intermediate_dim": 1024, "output_dim": 1024, "context_tokens": 32,
}
AUDIO2BUCKET_CONFIG: dict[str, int] = {
    "seq_len": 50, "blocks": 1, "channels": 384, "clip_channels": 1024, "intermediate_dim": 1024, "output_dim": 1,
    "context_tokens": 2,
}

# Bucket post-processing of the official `sonic.test()`: raw network output → motion bucket id.
BUCKET_SCALE = 16.0
BUCKET_OFFSET = 16.0


def _check_windows(windows: Tensor, seq_len: int, blocks: int, channels: int, name: str) -> None:
    expected = (seq_len, blocks, channels)
    if windows.ndim != 5 or tuple(windows.shape[2:]) != expected:
        raise ValueError(f"{name} expects windows shaped (batch, frames, {seq_len}, {blocks}, {channels}), "
                         f"got {tuple(windows.shape)}")


class AudioToTokens(nn.Module):
    """The official `AudioProjModel`: each frame's (seq_len, blocks, channels) window → (context_tokens, output_dim)."""

    def __init__(self, seq_len: int = 10, blocks: int = 5, channels: int = 384, intermediate_dim: int = 1024,
                 output_dim: int = 1024, context_tokens: int = 32) -> None:
        super().__init__()
        self.seq_len, self.blocks, self.channels = seq_len, blocks, channels
        self.output_dim, self.context_tokens = output_dim, context_tokens
        self.proj1 = nn.Linear(seq_len * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, windows: Tensor) -> Tensor:
        """(B, F, seq_len, blocks, channels) → (B, F, context_tokens, output_dim). Frames are independent."""
        _check_windows(windows, self.seq_len, self.blocks, self.channels, "AudioToTokens")
        batch, frames = windows.shape[:2]
        # Row-major flatten over (token, hidden state, channel), one row per frame.
        x = windows.reshape(batch * frames, -1)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        x = self.proj3(x).reshape(batch * frames, self.context_tokens, self.output_dim)
        return self.norm(x).reshape(batch, frames, self.context_tokens, self.output_dim)


class AudioToBuckets(nn.Module):
    """The official `Audio2bucketModel`: a frame's window plus the CLIP image embedding → (context_tokens, output_dim).

    Unlike the official class, calls over several frames work: the CLIP embedding is repeated for every frame.
    """

    def __init__(self, seq_len: int = 50, blocks: int = 1, channels: int = 384, clip_channels: int = 1024,
                 intermediate_dim: int = 1024, output_dim: int = 1, context_tokens: int = 2) -> None:
        super().__init__()
        self.seq_len, self.blocks, self.channels, self.clip_channels = seq_len, blocks, channels, clip_channels
        self.output_dim, self.context_tokens = output_dim, context_tokens
        self.proj1 = nn.Linear(seq_len * blocks * channels + clip_channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)

    def forward(self, windows: Tensor, clip_image_embeds: Tensor) -> Tensor:
        """(B, F, seq_len, blocks, channels) and CLIP (B, clip_channels) or (B, F, clip_channels)
        → (B, F, context_tokens, output_dim)."""
        _check_windows(windows, self.seq_len, self.blocks, self.channels, "AudioToBuckets")
        batch, frames = windows.shape[:2]
        clip = clip_image_embeds
        if clip.shape[-1] != self.clip_channels or clip.ndim not in (2, 3):
            raise ValueError(f"AudioToBuckets expects CLIP embeddings shaped (batch, {self.clip_channels}) or "
                             f"(batch, frames, {self.clip_channels}), got {tuple(clip.shape)}")
        if clip.ndim == 2:
            clip = clip[:, None, :]
        # One embedding per frame (and per batch row when a single embedding serves the whole batch).
        clip = clip.expand(batch, frames, self.clip_channels).reshape(batch * frames, self.clip_channels)
        # The official concatenation promotes an fp16 CLIP embedding to the audio dtype.
        x = torch.cat([windows.reshape(batch * frames, -1), clip.to(windows.dtype)], dim=1)
        x = nn.functional.silu(self.proj1(x))
        x = nn.functional.silu(self.proj2(x))
        return self.proj3(x).reshape(batch, frames, self.context_tokens, self.output_dim)


@torch.no_grad()
def null_audio_tokens(model: AudioToTokens, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> Tensor:
    """The "null audio" tokens (context_tokens, output_dim): the model on an all-zero window.

    The official code uses these (not zeros) for the unconditional and image-only guidance rows. They do not depend on
    the audio, so compute them once.
    """
    param = next(model.parameters())
    zeros = torch.zeros(1, 1, model.seq_len, model.blocks, model.channels,
                        device=device if device is not None else param.device,
                        dtype=dtype if dtype is not None else param.dtype)
    return model(zeros)[0, 0]


def postprocess_buckets(raw: Tensor, dynamic_scale: float = 1.0) -> Tensor:
    """Raw bucket outputs → motion bucket ids, element-wise: (raw·16 + 16) · dynamic_scale.

    The official order: `*16+16` per frame in `sonic.test()`, then the pipeline's `motion_bucket_scale`
    (the user's dynamic_scale) on both ids.
    """
    return (raw * BUCKET_SCALE + BUCKET_OFFSET) * dynamic_scale
