"""RIFE ×2 frame interpolation: loading `flownet.pkl`, one midpoint, and the streaming N → 2N−1 loop.

The loop keeps only one batch of frames on the compute device and hands every result back on the CPU, unlike the
official loop, which holds the whole clip and all 2N−1 outputs on the GPU (`docs/official-behaviour.md` §8).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F

from .rife_blocks import IFBlock, IFNet, IFNetOutput, warp
from ..weights.weights import check_fits, read_state_dict

__all__ = ["IFBlock", "IFNet", "IFNetOutput", "warp", "load_rife", "midpoint", "interpolate_x2",
           "iter_interpolated", "SIDE_MULTIPLE"]

SIDE_MULTIPLE = 16  # at scale_list (4, 2, 1) IFNet needs both sides divisible by 16
_PREFIX = "module."

StateDictSource = Union[str, Path, Mapping[str, torch.Tensor]]


def _read_file(path: Path) -> Mapping[str, torch.Tensor]:
    if path.is_dir():  # the official loader takes the folder holding flownet.pkl
        path = path / "flownet.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected RIFE's flownet.pkl)")
    # The pack's one checkpoint reader: weights_only, memory-mapped, clear messages for unsafe or broken files.
    return read_state_dict(path)


def _select_keys(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official rule (keep keys containing `module.`, drop that text); a checkpoint saved without the
    DataParallel prefix is taken as it is (the official loader would drop every key)."""
    prefixed = {k.replace(_PREFIX, ""): v for k, v in raw.items() if _PREFIX in k}
    return prefixed or dict(raw)


def load_rife(
    path_or_state_dict: StateDictSource,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> IFNet:
    """Builds an IFNet in eval mode from `flownet.pkl` (a file, its folder, a .safetensors) or a state dict."""
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        raw = _read_file(Path(path_or_state_dict))
    else:
        source = "state dict"
        raw = path_or_state_dict
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{source}: expected a dict of tensors (a state dict), got {type(raw).__name__}")
    state = _select_keys(raw)
    with torch.device("meta"):
        model = IFNet()
    check_fits(state, model.state_dict(), source, "rife")
    # Allocate once on the target device (no random init), then copy: the model never aliases the caller's
    # tensors or the checkpoint's memory map.
    model = model.to_empty(device=device).to(dtype)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def _model_device_dtype(model: IFNet) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def midpoint(model: IFNet, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
    """Frame halfway between img0 and img1 (B,3,H,W in [0,1]), clamped to [0,1].

    Runs on the model's device and dtype and returns there in the inputs' dtype. Any size works: sides are padded
    by edge replication to a multiple of 16 and the result is cropped back.
    """
    if img0.shape != img1.shape or img0.dim() != 4 or img0.shape[1] != 3:
        raise ValueError(f"expected two (B,3,H,W) tensors of one shape, got {tuple(img0.shape)}, {tuple(img1.shape)}")
    device, dtype = _model_device_dtype(model)
    height, width = img0.shape[-2:]
    pad_h = -height % SIDE_MULTIPLE
    pad_w = -width % SIDE_MULTIPLE
    with torch.inference_mode():
        pair = torch.cat((img0, img1), dim=1).to(device=device, dtype=dtype)
        if pad_h or pad_w:
            pair = F.pad(pair, (0, pad_w, 0, pad_h), mode="replicate")
        middle = model(pair[:, :3], pair[:, 3:]).middle[..., :height, :width]
        return middle.clamp(0, 1).to(img0.dtype)


def _frames_of(source: Union[torch.Tensor, Iterable[torch.Tensor]]) -> Iterator[torch.Tensor]:
    """Single (H,W,3) frames from an (N,H,W,3) tensor or an iterable of frames or (n,H,W,3) chunks."""
    if isinstance(source, torch.Tensor):
        if source.dim() != 4 or source.shape[-1] != 3:
            raise ValueError(f"expected frames (N,H,W,3), got {tuple(source.shape)}")
        return iter(source)
    return _unchunk(source)


def _unchunk(source: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    for item in source:
        if item.dim() == 4 and item.shape[-1] == 3:
            yield from item
        elif item.dim() == 3 and item.shape[-1] == 3:
            yield item
        else:
            raise ValueError(f"expected a frame (H,W,3) or a chunk (n,H,W,3), got {tuple(item.shape)}")


def iter_interpolated(
    frames: Union[torch.Tensor, Iterable[torch.Tensor]],
    model: IFNet,
    batch_size: int = 8,
    device: Union[str, torch.device, None] = None,
) -> Iterator[torch.Tensor]:
    """Yields f0, m01, f1, ..., f_{N-1} (2N−1 CPU frames (H,W,3)) as they are produced.

    `frames`: an (N,H,W,3) tensor (ComfyUI IMAGE) or an iterable of (H,W,3) frames or (n,H,W,3) chunks, floats in
    [0,1]. Midpoints are computed `batch_size` pairs at a time on `device` (default: the model's; the model is moved
    there otherwise), so only one batch ever lives on the device. Input frames come back unchanged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None and torch.device(device) != _model_device_dtype(model)[0]:
        model.to(device)
    return _interleave(_frames_of(frames), model, batch_size)


def _interleave(frames: Iterator[torch.Tensor], model: IFNet, batch_size: int) -> Iterator[torch.Tensor]:
    first = next(frames, None)
    if first is None:
        return
    yield first.cpu()
    pending = [first]  # pending[0] is already out; the others wait for the midpoint before them
    for frame in frames:
        pending.append(frame)
        if len(pending) == batch_size + 1:
            yield from _flush(pending, model)
            pending = pending[-1:]
    if len(pending) > 1:
        yield from _flush(pending, model)


def _flush(pending: list[torch.Tensor], model: IFNet) -> Iterator[torch.Tensor]:
    """Midpoints of consecutive pending frames, interleaved with pending[1:]."""
    device, _ = _model_device_dtype(model)
    clip = torch.stack([f.to(device) for f in pending]).permute(0, 3, 1, 2)  # (n+1,3,H,W)
    mids = midpoint(model, clip[:-1], clip[1:]).permute(0, 2, 3, 1).cpu()
    for mid, frame in zip(mids, pending[1:]):
        yield mid
        yield frame.cpu()


def interpolate_x2(
    frames: torch.Tensor,
    model: IFNet,
    batch_size: int = 8,
    device: Union[str, torch.device, None] = None,
) -> torch.Tensor:
    """(N,H,W,3) frames in [0,1] → (2N−1,H,W,3) on the CPU: [f0, m01, f1, ..., f_{N-1}]; N = 0 gives 0 frames."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (N,H,W,3), got {tuple(frames.shape)}")
    count = max(2 * frames.shape[0] - 1, 0)
    out = torch.empty((count, *frames.shape[1:]), dtype=frames.dtype)
    for i, frame in enumerate(iter_interpolated(frames, model, batch_size, device)):
        out[i] = frame
    return out
