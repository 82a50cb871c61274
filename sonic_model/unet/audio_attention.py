"""Sonic's audio cross-attention: the processor installed in every `attn2` of the UNet
(`docs/official-behaviour.md` §2).

    out = to_out( SDPA(q, to_k(c), to_v(c)) + s · M ⊙ SDPA(q, to_k_ip.0(a), to_v_ip.0(a)) ),   q = to_q(x)

`c` is the CLIP context, `a` the audio tokens, `M` the face-mask grid (spatial blocks only) and `s` the audio scale.
The processor is a child module of its `Attention`, so its weights are stored as
`…attn2.processor.to_{k,v}_ip.0.weight`, the official checkpoint names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The official `ip_audio_scale`.
AUDIO_SCALE = 1.0


@dataclass(frozen=True)
class AudioContext:
    """What one `attn2` call attends to; it travels through diffusers' blocks as their `encoder_hidden_states`.

    clip: (Bc, Nc, D) image tokens; audio: (Bc, T, D) audio tokens; mask: (1, L, 1) token-grid mask or None.
    The query batch may be a multiple G of Bc: consecutive groups of G query rows share one context row (the
    temporal blocks, where every spatial position of a guidance row attends to that row's window-mean context).
    """

    clip: Tensor
    audio: Tensor
    mask: Tensor | None = None


def mask_to_token_grid(face_mask: Tensor, height: int, width: int) -> Tensor:
    """Pixel mask (1, 1, H, W) → (1, height·width, 1) row-major grid for the spatial audio branch.

    Bicubic, align_corners False, no antialias and no clamp, always from the pixel mask, as the official
    `IPAdapterMaskProcessor.downsample` does. For pixel sides that are multiples of 64 the official grid recovery
    gives exactly the token grid, so we resize straight to it. Done in float32 (the CPU has no half bicubic).
    """
    mask = face_mask.reshape(1, 1, *face_mask.shape[-2:]).float()
    grid = F.interpolate(mask, size=(height, width), mode="bicubic", align_corners=False)
    return grid.reshape(1, height * width, 1)


def sliced_sdpa(q: Tensor, k: Tensor, v: Tensor, slices: int | None = None) -> Tensor:
    """`F.scaled_dot_product_attention` over (batch, heads, L, d), in `slices` pieces when slices > 1.

    Each query's softmax only sees its own row, so cutting the queries (or, for short sequences, the batch) into
    pieces gives the same result while only one piece's attention scores exist at a time: what bounds the memory
    of the math kernel (fp32, old GPUs) at 4096+ tokens per frame. The pieces keep the inputs' strides, so the
    flash and memory-efficient kernels still accept them (last dimension contiguous).
    """
    if not slices or slices <= 1:
        return F.scaled_dot_product_attention(q, k, v)
    by_batch = q.shape[0] > q.shape[2] and k.shape[0] == q.shape[0]  # temporal self-attention: many short rows
    dim = 0 if by_batch else 2
    size = q.shape[dim]
    step = -(-size // slices)
    if step >= size:
        return F.scaled_dot_product_attention(q, k, v)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for start in range(0, size, step):
        piece = slice(start, start + step)
        if by_batch:
            out[piece] = F.scaled_dot_product_attention(q[piece], k[piece], v[piece])
        else:
            out[:, :, piece] = F.scaled_dot_product_attention(q[:, :, piece], k, v)
    return out


def project_out(attn: nn.Module, out: Tensor, hidden_states: Tensor) -> Tensor:
    """How every diffusers attention processor ends: output projection and dropout, the block's optional residual,
    its output rescale. One copy for the processors here (diffusers has it inline in each of its own)."""
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


def split_heads(x: Tensor, batch: int, heads: int) -> Tensor:
    """(batch·…, L, C) → (batch, heads, L', C/heads)."""
    return x.reshape(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)


class SonicAudioAttnProcessor(nn.Module):
    """Image + audio cross-attention sharing the query and the output projection of its `Attention`."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, scale: float = AUDIO_SCALE) -> None:
        super().__init__()
        self.hidden_size, self.cross_attention_dim, self.scale = hidden_size, cross_attention_dim, scale
        self.slices: int | None = None  # attention slicing (low VRAM); a runtime option, not a weight
        # ModuleLists of one Linear: the official keys end in `to_k_ip.0.weight` (one adapter).
        self.to_k_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.to_v_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: AudioContext | Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        if attention_mask is not None:
            raise ValueError("SonicAudioAttnProcessor takes no attention mask")
        if isinstance(encoder_hidden_states, AudioContext):
            ctx = encoder_hidden_states
        else:  # a plain context (stock call path): image attention only
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            ctx = AudioContext(context, context[:, :0])

        query_rows, length, _ = hidden_states.shape
        rows = ctx.clip.shape[0]
        if query_rows % rows:
            raise ValueError(f"query batch {query_rows} is not a multiple of the context batch {rows}")
        heads = attn.heads
        query = attn.to_q(hidden_states)
        # Groups of query rows that share a context row become one longer query sequence: the same attention as
        # repeating the context per row, without materialising the repeat.
        q = split_heads(query, rows, heads)
        if ctx.clip.shape[1] == 1:
            # One CLIP token: its softmax weight is exactly 1, so the attention output is its value for every query.
            value = attn.to_v(ctx.clip).to(query.dtype)
            out = value.expand(rows, query_rows // rows, -1).reshape(query_rows, 1, -1).expand(-1, length, -1)
        else:
            out = self._attend(q, attn.to_k(ctx.clip), attn.to_v(ctx.clip), length).to(query.dtype)
        if ctx.audio.shape[1]:
            audio = self._attend(q, self.to_k_ip[0](ctx.audio), self.to_v_ip[0](ctx.audio), length).to(query.dtype)
            if ctx.mask is not None:
                audio = audio * ctx.mask.to(query.dtype)
            out = out + self.scale * audio
        else:
            out = out.contiguous()
        return project_out(attn, out, hidden_states)

    def _attend(self, q: Tensor, key: Tensor, value: Tensor, length: int) -> Tensor:
        """Split queries (rows, heads, L, d) over projected keys/values → (query rows, length, channels)."""
        rows, heads = q.shape[:2]
        out = sliced_sdpa(q, split_heads(key, rows, heads), split_heads(value, rows, heads), self.slices)
        return out.transpose(1, 2).reshape(-1, length, heads * out.shape[-1])

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, cross_attention_dim={self.cross_attention_dim}, scale={self.scale}, "
                f"slices={self.slices}")
