"""Peak VRAM of a Sonic run, predicted from the architecture, and the fastest sampling mode that fits a card.

Nothing here touches a GPU or imports ComfyUI; the sampler passes the free VRAM it reads from core's model manager.
Every coefficient below was measured by counting the live tensor set of the real-config networks run on the meta
device (`benchmarks/vram_model.py --derive` prints them again; tests/test_memory_model.py re-measures some). It is
a model, not a GPU measurement: the peaks measured on a GPU by `benchmarks/vram_emulate.py` (the shipped run on an
emulated 8 and 12 GiB card, `make gpu-check`) and `benchmarks/vram_calibrate.py` are what calibrate it.

The run has three phases that never overlap, so the peak is the largest of them, not their sum:

1. **Sampling** (the only phase the mode changes):
   UNet weights resident on the GPU (all, or what is left after offloading) + the per-layer cast copies when the
   storage dtype is not the compute dtype (fp8) or weights are offloaded (comfy.ops casts one layer at a time; we
   allow two of the largest layer, the current one and one prefetched) + one UNet call's activations + that call's
   inputs and outputs + the clip-long state on the GPU + whatever else the caller says stays resident
   (`other_resident_bytes`). The sampler's own buffers, the fused x0, the audio tokens and the motion buckets live
   on the intermediate device (host RAM, `host_state_bytes`); only core's device copies of the noise and the start
   latent, two fp32 latents per frame, stay on the GPU for the whole run, so the GPU's clip-long state is
   0.03 GiB per minute at 512².
2. **VAE decode** of one chunk (SVD's temporal decoder mixes the chunk's frames, default 8): VAE weights + the
   decoder's activations. The UNet is not counted: the decode asks core's model manager for room and core evicts
   the UNet when the card is short.
3. **RIFE** ×2 on one batch of frame pairs (fp32, as the reference): weights + activations, the UNet evicted alike.

One UNet call's activations (inference: only the live set matters, nothing is kept for a backward pass).
C0 = block_out_channels[0] (320), T = latent tokens (H/8 · W/8), F = frames in the call (3·f batched guidance,
f per guidance row), b = bytes of the compute dtype:

* memory-efficient attention (flash / memory-efficient SDPA kernels, the CUDA default for head dim 64 in fp16,
  bf16 and fp32): 27·C0·F·T elements. The peak sits in the level-0 up block's temporal feed-forward (GEGLU: its 8·C0
  projection, the 4·C0 gate and 4·C0 product live at once, beside the skip connections still waiting); every term
  is linear in F·T, so 2× the pixels or 2× the frames is 2× the memory.
* math attention kernel (old GPUs, forced math SDPA): the level-0 spatial self-attention holds its F·heads0·T²/s
  scores twice (the scores and their softmax, in the compute dtype: ComfyUI lets PyTorch's math kernel reduce in
  fp16/bf16 without an fp32 upcast) on top of 12·C0·F·T elements (unsliced) or (12 + 1/s)·C0·F·T (in s query
  slices); the peak is the larger of that and the feed-forward's 27·C0·F·T.

Assumptions (to calibrate on a GPU): the caching allocator's fragmentation, cuDNN workspaces and kernel scratch are
covered by `SAFETY_MARGIN` (10 % of the predicted peak); ComfyUI's own temporal VAE decoder holds no more than
diffusers' (measured here); weights are stored uniformly in the storage dtype (comfy.ops keeps norms and biases in it
too). Totals count torch allocations only; the CUDA context and core's reserve come off the free VRAM first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .shift_fusion import GUIDANCE_ROWS
from ..audio.whisper_features import FRAMES_PER_SECOND

GIB = 2**30
MIB = 2**20

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8_e4m3fn": 1, "fp8_e5m2": 1}
COMPUTE_DTYPES = ("fp32", "fp16", "bf16")

# Sonic's SVD-xt UNet (sonic_model/unet/configs/svd_xt_unet.json, audio projections included), built on the meta device.
UNET_PARAMS = 1_575_741_162
UNET_LARGEST_LAYER_PARAMS = 29_492_480  # up_blocks.0.resnets.0.spatial_res_block.conv1 (2560 → 1280, 3×3)
UNET_BASE_CHANNELS = 320
UNET_LEVEL0_HEADS = 5
LATENT_CHANNELS = 4
CONCAT_CHANNELS = 4
AUDIO_TOKENS = 32
CONTEXT_DIM = 1024

# Activation coefficients, elements of the compute dtype (see the module docstring).
EFFICIENT_ELEMENTS_PER_CHANNEL = 27          # × C0 per frame-token, anywhere in the net: the level-0 temporal FF
MATH_SITE_ELEMENTS_PER_CHANNEL = 12          # × C0 per frame-token beside the unsliced attention scores
SLICED_SITE_ELEMENTS_PER_CHANNEL = (12, 1)   # (12 + 1/s) × C0 per frame-token beside s slices of scores
MATH_ELEMENTS_PER_SCORE = 2                  # the scores and their softmax

# SVD's temporal VAE (encoder + decoder are loaded together) and its decoder's live set per output pixel per frame.
VAE_PARAMS = 97_742_847
VAE_DECODE_ELEMENTS_PER_PIXEL = 1024         # 8 × the 128 full-resolution channels, per frame of the chunk
DEFAULT_DECODE_CHUNK = 8

# RIFE IFNet (fp32, as the reference runs it): live set per pixel per frame pair, plus the stacked input frames.
RIFE_PARAMS = 3_038_015
RIFE_ELEMENTS_PER_PAIR_PIXEL = 138.25
DEFAULT_RIFE_BATCH = 8

# Clip-long fp32 latents on the GPU through sampling: core's CFGGuider.outer_sample moves the noise and the start
# latent to the model's device before a guider sees them and holds them until sampling ends.
DEVICE_LATENT_BUFFERS = 2
# Clip-long fp32 latents in host RAM at the peak of a step (measured by benchmarks/long_audio_memory.py
# --device-peak on 600 s: the caller's noise and start latent, core's scaled start, the sampler's x, denoised, its
# step temporaries, the fused x0).
HOST_LATENT_BUFFERS = 8
# Attention pieces in low-VRAM mode: at 576x1024 the math kernel's self-attention scores of one 25-frame row are
# 25·5·9216² fp16 values (21 GB); in 8 pieces 2.7 GB. The flash / memory-efficient kernels barely notice the cut.
ATTENTION_SLICES = 8
SAFETY_MARGIN = 0.10

# ComfyUI 0.3.75 comfy/model_management.py: EXTRA_RESERVED_VRAM is 400 MiB, 600 MiB on Windows; core keeps it free.
COMFY_RESERVED_VRAM = {"linux": 400 * MIB, "windows": 600 * MIB}
CUDA_CONTEXT_BYTES = 400 * MIB  # driver + CUDA context + kernels of a torch process (assumed; nvidia-smi shows it)


def card_free_vram(total_bytes: int, system: str = "windows") -> int:
    """What a card of `total_bytes` leaves to a run: minus the CUDA context and core's reserve for `system`."""
    return total_bytes - CUDA_CONTEXT_BYTES - COMFY_RESERVED_VRAM[system]


@dataclass(frozen=True)
class SamplingMode:
    """One way to sample, fastest first in `MODES`; `offload_bytes` is the UNet weight kept off the GPU."""

    name: str
    batched_guidance: bool
    attention_slices: int | None
    offload: bool = False
    offload_bytes: int = 0

    def __str__(self) -> str:
        return f"{self.name} {self.offload_bytes / GIB:.2f} GiB" if self.offload else self.name


BATCHED = SamplingMode("batched guidance", True, None)
PER_ROW = SamplingMode("per-row guidance", False, None)
PER_ROW_SLICED = SamplingMode("per-row + attention slicing", False, ATTENTION_SLICES)
OFFLOAD = SamplingMode("per-row + slicing + offload", False, ATTENTION_SLICES, offload=True)
MODES = (BATCHED, PER_ROW, PER_ROW_SLICED, OFFLOAD)


@dataclass(frozen=True)
class RunShape:
    """What the memory depends on: pixel size, window, dtypes, attention kernel and the post-processing batches."""

    height: int
    width: int
    window: int = 25
    dtype: str = "fp16"
    weight_dtype: str | None = None  # None: stored in the compute dtype
    attention: str = "efficient"     # or "math"
    frames_total: int = 125          # generated frames of the clip: 10 s at 12.5 per second
    decode_chunk: int | None = DEFAULT_DECODE_CHUNK  # None: no decode in this run
    rife_batch: int | None = DEFAULT_RIFE_BATCH      # None: no RIFE
    vae_dtype: str | None = None     # None: the compute dtype
    other_resident_bytes: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {self.dtype!r}")
        for name in (self.weight_dtype, self.vae_dtype):
            if name is not None and name not in DTYPE_BYTES:
                raise ValueError(f"unknown dtype {name!r}; use one of {tuple(DTYPE_BYTES)}")
        if self.attention not in ("efficient", "math"):
            raise ValueError(f"attention must be 'efficient' or 'math', got {self.attention!r}")
        if self.height < 8 or self.width < 8 or self.window < 1:
            raise ValueError(f"need a size of at least 8×8 pixels and a window ≥ 1, got {self.width}×{self.height}, "
                             f"window {self.window}")

    @property
    def tokens(self) -> int:
        return math.ceil(self.height / 8) * math.ceil(self.width / 8)

    @property
    def compute_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def weight_bytes_per_param(self) -> int:
        return DTYPE_BYTES[self.weight_dtype or self.dtype]


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes per term; `peak` = the largest phase."""

    mode: SamplingMode
    unet_weights: int
    unet_resident: int
    cast_buffers: int
    activations: int
    window_io: int
    clip_state: int
    other_resident: int
    decode: int
    rife: int

    @property
    def working(self) -> int:
        """Sampling memory beside the resident UNet weights: what to ask core's `load_models_gpu` to keep free
        (`memory_required`), so that its partial loading keeps on the GPU only the weights that fit beside it."""
        return self.cast_buffers + self.activations + self.window_io + self.clip_state + self.other_resident

    @property
    def sampling(self) -> int:
        return self.unet_resident + self.working

    @property
    def peak(self) -> int:
        return max(self.sampling, self.decode, self.rife)


def unet_weight_bytes(weight_dtype: str, params: int = UNET_PARAMS) -> int:
    return params * DTYPE_BYTES[weight_dtype]


def unet_activation_bytes(frames: int, tokens: int, dtype: str = "fp16", attention: str = "efficient",
                          slices: int | None = None, base_channels: int = UNET_BASE_CHANNELS,
                          heads: int = UNET_LEVEL0_HEADS) -> int:
    """Live activations of one UNet call of `frames` frames (all guidance rows together) at `tokens` latent tokens."""
    per_token = EFFICIENT_ELEMENTS_PER_CHANNEL * base_channels
    if attention == "math":
        s = slices if slices and slices > 1 else 1
        if s == 1:
            site = MATH_SITE_ELEMENTS_PER_CHANNEL * base_channels
        else:
            fixed, per_slice = SLICED_SITE_ELEMENTS_PER_CHANNEL
            site = (fixed + per_slice / s) * base_channels
        scores = MATH_ELEMENTS_PER_SCORE * heads * tokens / s
        per_token = max(per_token, site + scores)
    return math.ceil(per_token * frames * tokens * DTYPE_BYTES[dtype])


def window_io_bytes(window: int, tokens: int, dtype: str) -> int:
    """One window's UNet inputs and outputs: the 3 rows' 8-channel sample, concat latent, CLIP and audio tokens,
    each row's output (all three are held before the guidance combines them) and the fp32 window slices."""
    b = DTYPE_BYTES[dtype]
    rows = GUIDANCE_ROWS
    per_row_frame = ((LATENT_CHANNELS + CONCAT_CHANNELS) + CONCAT_CHANNELS + LATENT_CHANNELS) * tokens * b
    context = (1 + AUDIO_TOKENS) * CONTEXT_DIM * b
    fp32_slices = 4 * LATENT_CHANNELS * tokens * 4  # the window of x, the guided v, its x0 and one combine temp
    return rows * window * (per_row_frame + context) + window * fp32_slices


def latent_bytes(frames_total: int, tokens: int) -> int:
    """One fp32 latent of the whole clip."""
    return frames_total * LATENT_CHANNELS * tokens * 4


def clip_state_bytes(frames_total: int, tokens: int) -> int:
    """What of the clip sits on the GPU through sampling (core's two start copies; everything else is on the host)."""
    return DEVICE_LATENT_BUFFERS * latent_bytes(frames_total, tokens)


def host_state_bytes(frames_total: int, tokens: int, audio_tokens: int = AUDIO_TOKENS,
                     context_dim: int = CONTEXT_DIM) -> int:
    """Host RAM of sampling the clip: the sampler's latents at a step's peak plus the fp32 audio tokens."""
    return (HOST_LATENT_BUFFERS * latent_bytes(frames_total, tokens)
            + frames_total * audio_tokens * context_dim * 4)


def cast_buffer_bytes(dtype: str) -> int:
    return 2 * UNET_LARGEST_LAYER_PARAMS * DTYPE_BYTES[dtype]


def vae_decode_bytes(height: int, width: int, chunk: int, vae_dtype: str) -> int:
    b = DTYPE_BYTES[vae_dtype]
    return VAE_PARAMS * b + VAE_DECODE_ELEMENTS_PER_PIXEL * chunk * height * width * b


def largest_decode_chunk(free_vram_bytes: int, height: int, width: int, vae_dtype: str = "bf16",
                         limit: int = DEFAULT_DECODE_CHUNK, margin: float = SAFETY_MARGIN) -> int:
    """The most frames (up to `limit`) one temporal-decoder call can take in `free_vram_bytes`; 0 if not even one.

    Core decodes this VAE in bf16, or fp32 on GPUs without bf16 (its `vae_dtype` with the VAE's working dtypes).
    """
    budget = free_vram_bytes / (1 + margin)
    per_frame = VAE_DECODE_ELEMENTS_PER_PIXEL * height * width * DTYPE_BYTES[vae_dtype]
    return max(0, min(limit, math.floor((budget - VAE_PARAMS * DTYPE_BYTES[vae_dtype]) / per_frame)))


def rife_bytes(height: int, width: int, batch: int) -> int:
    pixels = height * width
    frames_in = 3 * (batch + 1) * pixels  # the stacked input frames of one batch of pairs
    return RIFE_PARAMS * 4 + math.ceil((RIFE_ELEMENTS_PER_PAIR_PIXEL * batch * pixels + frames_in) * 4)


def estimate(shape: RunShape, mode: SamplingMode) -> MemoryEstimate:
    """Every term for `shape` sampled in `mode` (its `offload_bytes` taken as given)."""
    weights = unet_weight_bytes(shape.weight_dtype or shape.dtype)
    offloaded = min(mode.offload_bytes, weights) if mode.offload else 0
    casting = mode.offload or shape.weight_bytes_per_param != shape.compute_bytes
    frames = shape.window * (GUIDANCE_ROWS if mode.batched_guidance else 1)
    tokens = shape.tokens
    return MemoryEstimate(
        mode=mode,
        unet_weights=weights,
        unet_resident=weights - offloaded,
        cast_buffers=cast_buffer_bytes(shape.dtype) if casting else 0,
        activations=unet_activation_bytes(frames, tokens, shape.dtype, shape.attention, mode.attention_slices),
        window_io=window_io_bytes(shape.window, tokens, shape.dtype),
        clip_state=clip_state_bytes(shape.frames_total, tokens),
        other_resident=shape.other_resident_bytes,
        decode=(vae_decode_bytes(shape.height, shape.width, shape.decode_chunk, shape.vae_dtype or shape.dtype)
                if shape.decode_chunk else 0),
        rife=rife_bytes(shape.height, shape.width, shape.rife_batch) if shape.rife_batch else 0,
    )


class DoesNotFit(ValueError):
    """No mode fits the free VRAM; the message names what to lower."""


def choose_mode(free_vram_bytes: int, height: int, width: int, window: int = 25, dtype: str = "fp16",
                weight_dtype: str | None = None, margin: float = SAFETY_MARGIN,
                **shape: object) -> MemoryEstimate:
    """The estimate of the fastest mode whose predicted peak, plus `margin` of it, fits `free_vram_bytes`.

    `free_vram_bytes`: what the run may use, UNet not yet loaded (core's free memory plus what it can evict, minus
    its reserve). When only offloading fits, the mode carries the smallest offload that does (MiB-rounded). Raises
    `DoesNotFit`, naming what to lower, when not even a fully offloaded UNet fits. `shape`: other `RunShape` fields;
    a sampler that does not decode passes `decode_chunk=None, rife_batch=None` so only its own phase is judged.
    """
    run = RunShape(height, width, window, dtype, weight_dtype, **shape)
    budget = math.floor(free_vram_bytes / (1 + margin))
    for mode in MODES[:-1]:
        fastest = estimate(run, mode)
        if fastest.peak <= budget:
            return fastest
    full = estimate(run, OFFLOAD)  # nothing offloaded yet: the weights' share of the sampling phase is known
    needed = max(0, full.sampling - budget)
    offload = min(full.unet_weights, math.ceil(needed / MIB) * MIB)
    best = estimate(run, replace(OFFLOAD, offload_bytes=offload))
    if best.peak <= budget:
        return best
    raise DoesNotFit(_what_to_lower(run, best, budget))


def _minutes(frames: int) -> str:
    return f"{frames / FRAMES_PER_SECOND / 60:.1f} minutes"


def check_host_ram(free_ram_bytes: int, frames_total: int, height: int, width: int,
                   audio_tokens: int = AUDIO_TOKENS, context_dim: int = CONTEXT_DIM) -> int:
    """The host RAM sampling the clip needs (`host_state_bytes`); raises DoesNotFit, naming the longest audio that
    fits, when it is more than `free_ram_bytes`."""
    tokens = RunShape(height, width).tokens
    needed = host_state_bytes(frames_total, tokens, audio_tokens, context_dim)
    if needed <= free_ram_bytes:
        return needed
    longest = int(free_ram_bytes // (needed / frames_total))
    raise DoesNotFit(f"Sampling {frames_total} frames ({_minutes(frames_total)} of audio) at {width}×{height} needs "
                     f"about {needed / GIB:.1f} GiB of RAM for the clip's latents and audio tokens, and "
                     f"{free_ram_bytes / GIB:.1f} GiB is free. Split the audio into parts of at most "
                     f"{_minutes(longest)} (or lower the resolution), or free RAM.")


def _what_to_lower(run: RunShape, est: MemoryEstimate, budget: int) -> str:
    size = f"{run.width}×{run.height}"
    gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
    usable = f"the {gib(budget)} usable (free VRAM less the safety margin)"
    rest = est.sampling - est.clip_state
    if est.sampling > budget and rest <= budget:  # the clip's length is what does not fit
        per_frame = est.clip_state / run.frames_total
        return (f"Sonic cannot sample {run.frames_total} frames ({_minutes(run.frames_total)} of audio) at {size} in "
                f"{usable}: ComfyUI keeps the clip's noise and start latent on the GPU ({gib(est.clip_state)}). "
                f"Split the audio into parts of at most {_minutes(int((budget - rest) // per_frame))}, or lower the "
                "resolution.")
    if est.sampling > budget:
        return (f"Sonic cannot sample {size} with a {run.window}-frame window in {usable}, even with the whole "
                f"UNet offloaded: one guidance row needs {gib(est.sampling)}. Lower the resolution or the window "
                "(frames per UNet call), or free VRAM (close other programs, unload other models).")
    if est.decode > budget:
        return (f"The VAE decode of {run.decode_chunk}-frame chunks at {size} needs {gib(est.decode)}, more than "
                f"{usable}: lower decode_chunk_size or the resolution.")
    return (f"RIFE on batches of {run.rife_batch} frame pairs at {size} needs {gib(est.rife)}, more than "
            f"{usable}: lower the RIFE batch size or the resolution.")
