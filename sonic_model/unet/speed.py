"""Runtime speed and memory options of the Sonic UNet: `torch.compile` and attention slicing.

None of them changes the weights or the state dict, and each gives the plain model's output within float
tolerance (tests/test_speed_options.py). Whether one pays is for benchmarks/gpu_bench.py to show on the GPU.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn

from .audio_attention import SonicAudioAttnProcessor, project_out, sliced_sdpa, split_heads
from ..sampling.memory_model import ATTENTION_SLICES
from .unet import SonicUNet

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SpeedOptions:
    compile: bool = False
    attention_slices: int | None = None


class SlicedAttnProcessor:
    """diffusers' SDPA self/cross-attention (what `AttnProcessor2_0` computes) with the attention in pieces.

    Used for the stock `attn1` sites in low-VRAM mode; anything beyond the plain path the SVD blocks take
    (masks, spatial norm, 4-D inputs) goes to `AttnProcessor2_0` unsliced.
    """

    def __init__(self, slices: int) -> None:
        self.slices = slices
        self._stock = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        if (attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None
                or hidden_states.dim() != 3):
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch, length, _ = hidden_states.shape
        query, key, value = (split_heads(x, batch, attn.heads)
                             for x in (attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = sliced_sdpa(query, key, value, self.slices)
        return project_out(attn, out.transpose(1, 2).reshape(batch, length, -1).to(query.dtype), hidden_states)


def set_attention_slices(unet: nn.Module, slices: int | None) -> None:
    """Every attention of the UNet in `slices` pieces (None or 1: whole, the stock SDPA processors)."""
    slices = slices if slices and slices > 1 else None
    for module in unet.modules():
        if not isinstance(module, Attention):
            continue
        processor = module.processor
        if isinstance(processor, SonicAudioAttnProcessor):
            processor.slices = slices
        elif slices is not None:
            if isinstance(processor, (AttnProcessor2_0, SlicedAttnProcessor)):
                module.set_processor(SlicedAttnProcessor(slices))
            else:
                log.warning("Sonic: attention slicing skips %s (unknown processor)", type(processor).__name__)
        elif isinstance(processor, SlicedAttnProcessor):
            module.set_processor(AttnProcessor2_0())


@contextmanager
def attention_slices(unet: nn.Module, slices: int | None) -> Iterator[None]:
    """`set_attention_slices` for the length of the block, then every attention as it was: a run's memory choice
    must not stay on a UNet that other workflows share."""
    saved = [(module, module.processor, getattr(module.processor, "slices", None))
             for module in unet.modules() if isinstance(module, Attention)]
    set_attention_slices(unet, slices)
    try:
        yield
    finally:
        for module, processor, before in saved:
            if isinstance(processor, SonicAudioAttnProcessor):
                processor.slices = before
            elif module.processor is not processor:
                module.set_processor(processor)


def _signature(args: tuple) -> tuple:
    """What a compiled graph is specialised on: shapes, dtypes and devices of the tensor arguments."""
    def one(a: Any) -> Any:
        if isinstance(a, Tensor):
            return tuple(a.shape), a.dtype, a.device.type
        if isinstance(a, dict):
            return tuple(sorted((k, one(v)) for k, v in a.items()))
        return a is None
    return tuple(one(a) for a in args)


class CompiledCore:
    """`SonicUNet.denoise_core` through `torch.compile`, with the compile time measured and an eager fallback.

    Compilation happens on the first call per input shape; that call's wall time (compile + one run) is added to
    `compile_seconds` and logged. If compiling fails (no C compiler, an unsupported op, …) the reason is logged,
    kept in `failure`, and every call from then on runs eagerly.
    """

    def __init__(self, eager: Callable[..., Tensor], backend: str | Callable = "inductor",
                 mode: str | None = None) -> None:
        self.eager = eager
        self.backend, self.mode = backend, mode
        self.compiled = torch.compile(eager, backend=backend, mode=mode, dynamic=False)
        self.compile_seconds = 0.0
        self.compiled_shapes: list[tuple] = []
        self.failure: str | None = None

    def __call__(self, *args: Any) -> Tensor:
        if self.failure is not None:
            return self.eager(*args)
        signature = _signature(args)
        first = signature not in self.compiled_shapes
        device = next((a.device for a in args if isinstance(a, Tensor)), torch.device("cpu"))
        if first:
            _sync(device)
            start = time.perf_counter()
        try:
            out = self.compiled(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - a compile failure must not stop sampling
            out = self.eager(*args)  # an error of the inputs themselves is raised here, compile left on
            self.failure = _reason(error)
            log.warning("Sonic: torch.compile unavailable, running the UNet eagerly: %s", self.failure)
            return out
        if first:
            _sync(device)
            seconds = time.perf_counter() - start
            self.compile_seconds += seconds
            self.compiled_shapes.append(signature)
            log.info("Sonic: compiled the UNet (%s) for input %s in %.1f s (first call: compile + one run)",
                     getattr(self.backend, "__name__", self.backend), tuple(args[0].shape), seconds)
        return out


def _reason(error: BaseException) -> str:
    """One line saying why compiling failed: the innermost cause (dynamo wraps the backend's own error)."""
    cause = error
    while getattr(cause, "inner_exception", None) or cause.__cause__:
        cause = getattr(cause, "inner_exception", None) or cause.__cause__
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    where = f"{type(error).__name__} <- " if cause is not error else ""
    return f"{where}{type(cause).__name__}: {lines[0] if lines else ''}"[:300]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_compile(unet: SonicUNet, enabled: bool, backend: str | Callable = "inductor", mode: str | None = None) -> None:
    """Route the UNet's forward through `torch.compile` (the mask-grid cache and input checks stay eager)."""
    unet.compiled_core = CompiledCore(unet.denoise_core, backend, mode) if enabled else None


def compile_report(unet: nn.Module) -> CompiledCore | None:
    """The compile state of a UNet (also one wrapped as `.unet`), or None when it is not compiled."""
    unet = getattr(unet, "unet", unet)
    return getattr(unet, "compiled_core", None)


def apply_speed_options(unet: SonicUNet, *, compile: bool = False,
                        attention_slices: int | None = None, compile_backend: str | Callable = "inductor",
                        compile_mode: str | None = None) -> SonicUNet:
    """Set the runtime options on `unet` in place and return it (same module, same call signature, same keys)."""
    if not isinstance(unet, SonicUNet):
        raise TypeError(f"speed options apply to a SonicUNet, not {type(unet).__name__}")
    set_attention_slices(unet, attention_slices)
    set_compile(unet, compile, compile_backend, compile_mode)
    return unet


def speed_options_for(*, low_vram: bool, compile: bool) -> SpeedOptions:
    """The options a loader setting means: low-VRAM mode also slices the attention."""
    return SpeedOptions(compile=compile,
                        attention_slices=ATTENTION_SLICES if low_vram else None)
