#!/usr/bin/env python
"""Does the shipped path's UNet compile to one graph? `torch._dynamo.explain` on what `torch.compile` sees there.

    .venv/bin/python tools/compile_check.py            # the tiny test UNet, on CUDA where there is one, else the CPU
    .venv/bin/python tools/compile_check.py --full     # the SVD-xt UNet (on CUDA: tracing it takes minutes)

The UNet is built as the loader builds it (sonic_model_patcher: comfy.ops layers, core's manual cast for fp8-stored
weights) and explained through `SonicUNet.denoise_core`, the function `sonic_model.unet.speed.CompiledCore` compiles.
Each graph break would split the compiled UNet and run Python between the pieces on every window. Breaks come from
code paths (comfy.ops casting, attention dispatch), which depend on the device and the storage, not on the sizes:
`make gpu-check` explains the tiny config on CUDA to keep within its budget. Prints one row per
storage and, as its last line, `graph breaks: N` (the sum over all storages).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (name, weight storage, compute dtype): what the loader offers for the UNet.
STORAGES = (("fp16", torch.float16, torch.float16), ("fp8_e4m3fn", torch.float8_e4m3fn, torch.float16))


@dataclass
class Explained:
    storage: str
    graphs: int
    breaks: int
    ops: int
    reasons: list[str] = field(default_factory=list)


def shipped_unet(config: dict | None, weight_dtype: torch.dtype, compute_dtype: torch.dtype, device: torch.device):
    """A random-weight Sonic UNet inside the Sonic MODEL, as `load_sonic_models` makes it (its `.unet`)."""
    import importlib

    from tools.comfy_runtime import import_pack

    pack = import_pack().__name__  # the pack as ComfyUI imports it: its own sonic_model, comfy.ops layers
    native = importlib.import_module(f"{pack}.nodes.native_model")
    unet = importlib.import_module(f"{pack}.sonic_model.unet.unet").build_sonic_unet(config, device="meta")
    unet = torch.nn.Module.to_empty(unet, device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in (*unet.parameters(), *unet.buffers()):
            if tensor.is_floating_point():
                tensor.normal_(0, 0.02)  # on the device: the full-size UNet's 1.6 G values would take long on a CPU
    unet = torch.nn.Module.to(unet, dtype=compute_dtype).eval()
    if weight_dtype != compute_dtype:
        native.store_weights_in(unet, weight_dtype)
    patcher = native.sonic_model_patcher(unet, low_vram=False, compute_dtype=compute_dtype)
    return patcher.model.diffusion_model.unet


def window_inputs(unet, rows: int, frames: int, height: int, width: int, tokens: int, dtype: torch.dtype,
                  device: torch.device) -> tuple:
    """denoise_core's arguments for one window of `rows` guidance rows in the dtypes core's apply_model hands the
    UNet, mask grids made as forward makes them."""
    g = torch.Generator().manual_seed(1)
    d = unet.config.cross_attention_dim
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    sample = make(rows, frames, unet.config.in_channels, height // 8, width // 8)
    face_mask = torch.ones(1, 1, height, width, device=device, dtype=dtype)
    grids = unet.mask_grids.lookup(face_mask, unet.token_grid_sizes(height // 8, width // 8), dtype)
    timesteps = torch.full((rows,), 0.25, device=device)  # core's BaseModel: t in fp32, the other conds cast
    time_ids = torch.tensor([[12.5, 20.0, 24.0]] * rows, device=device, dtype=dtype)  # to the compute dtype
    return (sample, timesteps, time_ids, make(rows * frames, 1, d), make(rows * frames, tokens, d), face_mask, grids)


def explain(unet, args: tuple, storage: str) -> Explained:
    torch._dynamo.reset()
    with torch.inference_mode():  # as ComfyUI runs every node
        result = torch._dynamo.explain(unet.denoise_core)(*args)
    reasons = [f"{r.reason} ({r.user_stack[-1].filename}:{r.user_stack[-1].lineno})" if r.user_stack else r.reason
               for r in result.break_reasons]
    return Explained(storage, result.graph_count, result.graph_break_count, result.op_count, reasons)


def run(tiny: bool, device: torch.device) -> list[Explained]:
    from tools.tiny_models import AUDIO_TOKENS, TINY_UNET_CONFIG

    config, size, frames, tokens = (TINY_UNET_CONFIG, 64, 5, AUDIO_TOKENS) if tiny else (None, 512, 25, 32)
    found = []
    for storage, weight_dtype, compute_dtype in STORAGES:
        unet = shipped_unet(config, weight_dtype, compute_dtype, device)
        found.append(explain(unet, window_inputs(unet, 3, frames, size, size, tokens, compute_dtype, device),
                             storage))
        del unet
    return found


def report_lines(found: list[Explained]) -> list[str]:
    lines = ["| weights stored in | graphs | graph breaks | ops in graphs |", "|---|---|---|---|"]
    lines += [f"| {e.storage} | {e.graphs} | {e.breaks} | {e.ops} |" for e in found]
    for e in found:
        lines += [f"- {e.storage} break: {reason}" for reason in e.reasons[:10]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the SVD-xt UNet instead of the tiny test config")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tiny = not args.full
    found = run(tiny, device)
    print(f"Shipped UNet ({'tiny test config' if tiny else 'SVD-xt'}, comfy.ops layers) on {device}: "
          "torch._dynamo.explain of SonicUNet.denoise_core, one batched-guidance window")
    print("\n".join(report_lines(found)))
    total = sum(e.breaks for e in found)
    print(f"graph breaks: {total}", flush=True)
    return 0 if total == 0 and all(e.graphs == 1 for e in found) else 1


if __name__ == "__main__":
    sys.exit(main())
