"""The Sonic UNet: diffusers' SVD spatio-temporal UNet with an audio branch in every cross-attention.

State-dict keys equal the official `unet.pth` (stock SVD keys plus `…attn2.processor.to_{k,v}_ip.0.weight`).
Forward semantics (`docs/official-behaviour.md` §2):
* the CLIP context comes per (guidance row, frame) and is not repeated per frame;
* spatial `attn2`: that frame's CLIP token and audio tokens, the audio branch weighted by the face-mask grid;
* temporal `attn2`: the window-mean CLIP and audio tokens of the guidance row, unmasked;
* `added_time_ids` = [fps, bucket0, bucket1] taken as given (fps is not decremented).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Callable

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
    TransformerTemporalModelOutput,
)
from torch import Tensor

from .audio_attention import AudioContext, SonicAudioAttnProcessor, mask_to_token_grid

SVD_XT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "svd_xt_unet.json"


class SiteContexts:
    """Per-forward conditioning handed to every transformer site (through the stock blocks' `encoder_hidden_states`).

    Holds the per-frame contexts, their window means, and the face-mask grid per token-grid size (given by the
    model's per-run cache, else computed once per forward; the official code recomputes it in every spatial `attn2`
    call, with the same result).
    """

    def __init__(self, clip: Tensor, audio: Tensor, batch: int, frames: int, face_mask: Tensor | None,
                 grids: dict[tuple[int, int], Tensor] | None = None) -> None:
        self.clip, self.audio, self.face_mask = clip, audio, face_mask
        # Window mean over the F frames, per guidance row: (B, tokens, D).
        self.clip_mean = clip.reshape(batch, frames, *clip.shape[1:]).mean(dim=1)
        self.audio_mean = audio.reshape(batch, frames, *audio.shape[1:]).mean(dim=1)
        self._grids: dict[tuple[int, int], Tensor] = dict(grids or {})

    def spatial(self, height: int, width: int) -> AudioContext:
        mask = None
        if self.face_mask is not None:
            if (height, width) not in self._grids:
                self._grids[(height, width)] = mask_to_token_grid(self.face_mask, height, width).to(self.clip.dtype)
            mask = self._grids[(height, width)]
        return AudioContext(self.clip, self.audio, mask)

    def temporal(self) -> AudioContext:
        return AudioContext(self.clip_mean, self.audio_mean)


class SonicTransformerSpatioTemporal(TransformerSpatioTemporalModel):
    """Stock spatio-temporal transformer site whose blocks get Sonic's spatial and temporal contexts.

    Same parameters as the stock class (instances are re-classed in place); only `forward` changes.
    """

    def forward(self, hidden_states: Tensor, encoder_hidden_states: SiteContexts | Tensor | None = None,
                image_only_indicator: Tensor | None = None,
                return_dict: bool = True) -> TransformerTemporalModelOutput | tuple[Tensor]:
        cond = encoder_hidden_states
        if not isinstance(cond, SiteContexts):
            return super().forward(hidden_states, cond, image_only_indicator, return_dict)
        batch_frames, channels, height, width = hidden_states.shape
        frames = image_only_indicator.shape[-1]
        batch = batch_frames // frames

        residual = hidden_states
        x = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        x = self.proj_in(x)

        # Frame-position embedding added before the temporal block (frame index 0..F-1, per guidance row).
        frame_ids = torch.arange(frames, device=x.device).repeat(batch)
        frame_emb = self.time_pos_embed(self.time_proj(frame_ids).to(x.dtype))[:, None, :]

        spatial_ctx, temporal_ctx = cond.spatial(height, width), cond.temporal()
        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            x = block(x, encoder_hidden_states=spatial_ctx)
            x_mix = temporal_block(x + frame_emb, num_frames=frames, encoder_hidden_states=temporal_ctx)
            x = self.time_mixer(x_spatial=x, x_temporal=x_mix, image_only_indicator=image_only_indicator)

        x = self.proj_out(x)
        x = x.reshape(batch_frames, height, width, -1).permute(0, 3, 1, 2).contiguous()
        output = x + residual
        return TransformerTemporalModelOutput(sample=output) if return_dict else (output,)


class MaskGridCache:
    """Face-mask token grids kept across the UNet calls of one run (every window and step uses the same mask).

    Keyed by the mask tensor itself (held, so its id cannot be reused) and its in-place version counter; a
    different mask object, dtype or device starts afresh, so a new run or an edited mask is never served stale grids.
    """

    def __init__(self) -> None:
        self.mask: Tensor | None = None
        self.key: tuple = ()
        self.grids: dict[tuple[int, int], Tensor] = {}

    def lookup(self, face_mask: Tensor, sizes: list[tuple[int, int]],
               dtype: torch.dtype) -> dict[tuple[int, int], Tensor]:
        try:
            version = face_mask._version
        except RuntimeError:  # inference-mode tensors (ComfyUI's) keep no version counter
            version = None
        key = (version, dtype, face_mask.device, tuple(face_mask.shape))
        if face_mask is not self.mask or key != self.key:
            self.mask, self.key, self.grids = face_mask, key, {}
        for height, width in sizes:
            if (height, width) not in self.grids:
                self.grids[(height, width)] = mask_to_token_grid(face_mask, height, width).to(dtype)
        return dict(self.grids)

    def clear(self) -> None:
        self.mask, self.key, self.grids = None, (), {}


def _install_audio_attention(unet: UNetSpatioTemporalConditionModel) -> None:
    """Re-class every transformer site and give each spatial and temporal `attn2` an audio processor."""
    for module in list(unet.modules()):
        if type(module) is TransformerSpatioTemporalModel:
            module.__class__ = SonicTransformerSpatioTemporal
            for block in (*module.transformer_blocks, *module.temporal_transformer_blocks):
                attn2 = block.attn2
                # Created where the attention's own weights live (meta stays meta), in their dtype.
                ref = attn2.to_k.weight
                processor = SonicAudioAttnProcessor(attn2.to_q.out_features, attn2.to_k.in_features)
                attn2.set_processor(processor.to(device=ref.device, dtype=ref.dtype))


class SonicUNet(UNetSpatioTemporalConditionModel):
    """Sonic's UNet. Build it with `from_config(config)` (a diffusers UNet config dict) or `build_sonic_unet`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _install_audio_attention(self)
        # Runtime speed options (sonic_model.unet.speed sets them): not weights, not in the state dict.
        self.compiled_core: Callable[..., Tensor] | None = None
        self.mask_grids = MaskGridCache()

    # diffusers reads the config keys from the __init__ signature: keep the stock one.
    __init__.__signature__ = inspect.signature(UNetSpatioTemporalConditionModel.__init__)

    def forward(self, sample: Tensor, timestep: Tensor | float, added_time_ids: Tensor, clip_states: Tensor,
                audio_tokens: Tensor, face_mask: Tensor | None = None) -> Tensor:
        """(B, F, in, h, w) → (B, F, out, h, w).

        timestep: 0-d or (B,), 0.25·ln σ. added_time_ids: (B, 3) [fps, bucket0, bucket1].
        clip_states: (B·F, Nc, D), index row·F + frame. audio_tokens: (B·F, T, D).
        face_mask: (1, 1, H, W) at pixel resolution, or None for no mask.
        """
        batch, frames = sample.shape[:2]
        if clip_states.shape[0] != batch * frames or audio_tokens.shape[0] != batch * frames:
            raise ValueError(f"clip_states {tuple(clip_states.shape)} and audio_tokens {tuple(audio_tokens.shape)} "
                             f"need a leading size B·F = {batch * frames}")
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        grids = None
        # The per-run cache is host-side bookkeeping (identity and version checks) that would split a graph that
        # torch.compile traces through here (core's TorchCompileModel compiles the whole diffusion model): there
        # the grids are computed inside the graph instead, a few resizes of one mask per call.
        if face_mask is not None and not torch.compiler.is_compiling():
            grids = self.mask_grids.lookup(face_mask, self.token_grid_sizes(*sample.shape[-2:]), sample.dtype)
        core = self.compiled_core or self.denoise_core
        return core(sample, timesteps, added_time_ids, clip_states, audio_tokens, face_mask, grids)

    def token_grid_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Latent (height, width) → the token grid of every UNet level, as the down path's strided convs give."""
        sizes = [(height, width)]
        for block in self.down_blocks:
            for down in getattr(block, "downsamplers", None) or []:
                conv = getattr(down, "conv", None)
                if not isinstance(conv, torch.nn.Conv2d) or isinstance(conv.padding, str):
                    return sizes  # an unusual downsampler: the remaining grids are made when first needed
                height, width = ((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                                 zip((height, width), conv.padding, conv.dilation, conv.kernel_size, conv.stride))
                sizes.append((height, width))
        return sizes

    def denoise_core(self, sample: Tensor, timesteps: Tensor, added_time_ids: Tensor, clip_states: Tensor,
                     audio_tokens: Tensor, face_mask: Tensor | None,
                     grids: dict[tuple[int, int], Tensor] | None) -> Tensor:
        """The network itself (what `torch.compile` compiles): timesteps (B,), mask grids precomputed per size."""
        batch, frames = sample.shape[:2]
        dtype = sample.dtype

        # Stock SVD time conditioning: sinusoid → MLP, plus the 3 added ids' sinusoids → MLP.
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype))
        added = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        emb = emb + self.add_embedding(added)
        emb = emb.repeat_interleave(frames, dim=0)

        cond = SiteContexts(clip_states.to(dtype), audio_tokens.to(dtype), batch, frames, face_mask, grids)
        x = sample.flatten(0, 1)
        x = self.conv_in(x)
        image_only_indicator = torch.zeros(batch, frames, dtype=dtype, device=sample.device)

        # Odd multiples: let the up path resize to each skip's size (the stock diffusers rule).
        up_factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % up_factor for s in sample.shape[-2:])

        skips = (x,)
        for block in self.down_blocks:
            extra = {"encoder_hidden_states": cond} if getattr(block, "has_cross_attention", False) else {}
            x, res = block(hidden_states=x, temb=emb, image_only_indicator=image_only_indicator, **extra)
            skips += res
        x = self.mid_block(hidden_states=x, temb=emb, encoder_hidden_states=cond,
                           image_only_indicator=image_only_indicator)
        for i, block in enumerate(self.up_blocks):
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            extra = {"encoder_hidden_states": cond} if getattr(block, "has_cross_attention", False) else {}
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                      image_only_indicator=image_only_indicator, **extra)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x.contiguous().reshape(batch, frames, *x.shape[1:])


def load_svd_xt_config() -> dict:
    """The shipped SVD-xt UNet config (the released Sonic UNet's)."""
    return json.loads(SVD_XT_CONFIG_PATH.read_text())


def build_sonic_unet(config: dict | None = None, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> SonicUNet:
    """Sonic UNet from a diffusers UNet config (None: SVD-xt), in eval mode.

    device="meta" allocates nothing (weights to be loaded with `load_state_dict(..., assign=True)`).
    """
    config = load_svd_xt_config() if config is None else config
    device = torch.device(device)
    with device:
        model = SonicUNet.from_config(dict(config))
    # The `time_mixer.mix_factor` scalars use the legacy tensor constructor and land on the CPU even under a
    # device context: move everything to one device. (nn.Module.to: diffusers' own `to` warns on every dtype cast.)
    return torch.nn.Module.to(model, device=device, dtype=dtype).eval()


def sonic_unet_state_dict_shapes(config: dict | None = None) -> dict[str, list[int]]:
    """Key → shape of the Sonic UNet's state dict, built on the meta device (for the key manifest)."""
    return {k: list(v.shape) for k, v in build_sonic_unet(config, device="meta").state_dict().items()}
