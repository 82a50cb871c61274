"""The shift-fusion denoiser: full-length noisy latents and σ in, full-length denoised latents (x0) out.

Per window it runs the Sonic UNet once on the three classifier-free-guidance rows [uncond, image-only, full],
combines them as u + r_i·(i − u) + r_a·(c − i), converts the v-prediction to x0 with SVD's EDM scaling and averages
x0 over the windows covering each frame. Because an Euler step is affine in x0 and every window starts from the same
x, averaging x0 and stepping once equals the official "step every window, then average" (sonic-reference §6.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .shift_windows import num_windows, shifted_windows

SVD_FPS_ID = 12.5  # the official time id: the generation frame rate as is, not fps − 1


@dataclass
class SonicConditioning:
    """Everything the UNet is conditioned on, for the whole clip (frames on the first axis)."""

    concat_latent: torch.Tensor      # (1, 4, h, w) unscaled VAE latent of the reference image
    image_embeds: torch.Tensor       # (1, D) CLIP image embedding
    audio_tokens: torch.Tensor       # (N, T, D) per-frame audio tokens
    null_audio_tokens: torch.Tensor  # (T, D) or (N, T, D): audio2token of a zero window
    motion_buckets: torch.Tensor     # (N, 2) per-frame [head motion, expression], already ×16+16 and scaled
    face_mask: torch.Tensor | None = None  # (1, 1, H, W) pixel-resolution mask for the spatial audio branch
    fps: float = SVD_FPS_ID

    @property
    def num_frames(self) -> int:
        return int(self.audio_tokens.shape[0])


@dataclass
class WindowEvent:
    """Reported after every UNet window, for progress bars, previews and cancellation."""

    step: int
    window: int
    windows_per_step: int
    frame_indices: list[int]
    sigma: float
    guided_v: torch.Tensor  # (f, 4, h, w) this window's guided v-prediction
    denoised: torch.Tensor  # (f, 4, h, w) the x0 it implies


class ShiftFusionDenoiser:
    def __init__(self, unet: torch.nn.Module, cond: SonicConditioning, *, window: int = 25, shift: int = 7,
                 cfg_image: float = 2.0, cfg_audio: float = 7.5, stride: int | None = None,
                 batched_cfg: bool = True, on_window: Callable[[WindowEvent], None] | None = None):
        if window < 1:
            raise ValueError(f"window must be at least 1 frame (got {window})")
        self.unet = unet
        self.cond = cond
        self.window = window
        self.shift = shift
        self.stride = stride or window
        self.cfg_image = cfg_image
        self.cfg_audio = cfg_audio
        self.batched_cfg = batched_cfg
        self.on_window = on_window
        self.unet_calls = 0
        self._mask: torch.Tensor | None = None  # converted once per run, so the UNet's mask-grid cache holds

    @property
    def windows_per_step(self) -> int:
        return num_windows(self.cond.num_frames, self.window, self.stride)

    def _param(self) -> torch.Tensor:
        return next(self.unet.parameters())

    def _window_inputs(self, idx: torch.Tensor, device, dtype):
        """Conditioning rows [uncond, image-only, full] for one window, flattened row-major over (row, frame)."""
        c, f = self.cond, len(idx)
        z = c.concat_latent.to(device, dtype).expand(f, -1, -1, -1)
        concat = torch.stack([torch.zeros_like(z), z, z])                              # (3, f, 4, h, w)
        e = c.image_embeds.to(device, dtype).reshape(1, 1, -1).expand(f, 1, -1)
        clip = torch.cat([torch.zeros_like(e), e, e])                                 # (3f, 1, D)
        null = c.null_audio_tokens.to(device, dtype)
        null = null[idx.to(null.device)] if null.dim() == 3 else null.unsqueeze(0).expand(f, -1, -1)
        audio = torch.cat([null, null, c.audio_tokens[idx].to(device, dtype)])         # (3f, T, D)
        buckets = c.motion_buckets[idx].float().mean(dim=0)                            # window mean, fp32
        ids = torch.cat([torch.tensor([c.fps], dtype=torch.float32), buckets.cpu()])
        time_ids = ids.to(device, dtype).unsqueeze(0).expand(3, -1)
        return concat, clip, audio, time_ids

    def _run_unet(self, sample, timestep, time_ids, clip, audio, mask) -> torch.Tensor:
        self.unet_calls += 1
        return self.unet(sample, timestep, added_time_ids=time_ids, clip_states=clip,
                         audio_tokens=audio, face_mask=mask)

    def _guided_v(self, sample, timestep, time_ids, clip, audio, mask, f: int) -> torch.Tensor:
        if self.batched_cfg:
            out = self._run_unet(sample, timestep, time_ids, clip, audio, mask)
        else:  # low-VRAM: one guidance row at a time
            out = torch.cat([self._run_unet(sample[r:r + 1], timestep, time_ids[r:r + 1],
                                            clip[r * f:(r + 1) * f], audio[r * f:(r + 1) * f], mask)
                             for r in range(3)])
        u, i, c = out.float().unbind(0)
        return u + self.cfg_image * (i - u) + self.cfg_audio * (c - i)

    def _face_mask(self, device, dtype) -> torch.Tensor | None:
        if self.cond.face_mask is None:
            return None
        if self._mask is None or self._mask.device != torch.device(device) or self._mask.dtype != dtype:
            self._mask = self.cond.face_mask.to(device, dtype)
        return self._mask

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        """x: (N, 4, h, w) noisy latents at `sigma`; returns the fused x0 (N, 4, h, w) in float32."""
        n = x.shape[0]
        if n != self.cond.num_frames:
            raise ValueError(f"latents have {n} frames but the audio conditioning has {self.cond.num_frames}")
        param = self._param()
        device, dtype = param.device, param.dtype
        sigma = float(sigma)
        c_in = 1.0 / math.sqrt(sigma * sigma + 1.0)
        timestep = torch.tensor(0.25 * math.log(sigma), device=device, dtype=dtype)
        mask = self._face_mask(device, dtype)
        x32 = x.to(device, torch.float32)
        acc = torch.zeros_like(x32)
        count = torch.zeros(n, device=device, dtype=torch.float32)
        windows = shifted_windows(n, self.window, self.shift, step, self.stride)
        for w, frames in enumerate(windows):
            idx = torch.tensor(frames, device=device)
            xw = x32[idx]
            concat, clip, audio, time_ids = self._window_inputs(idx, device, dtype)
            scaled = (xw * c_in).to(dtype).unsqueeze(0).expand(3, -1, -1, -1, -1)
            sample = torch.cat([scaled, concat], dim=2)                               # (3, f, 8, h, w)
            v = self._guided_v(sample, timestep, time_ids, clip, audio, mask, len(frames))
            x0 = xw / (sigma * sigma + 1.0) - v * (sigma * c_in)
            acc.index_add_(0, idx, x0)
            count.index_add_(0, idx, torch.ones(len(frames), device=device))
            if self.on_window is not None:
                self.on_window(WindowEvent(step, w, len(windows), frames, sigma, v, x0))
        return acc / count.view(-1, 1, 1, 1)
