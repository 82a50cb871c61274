"""Strict, memory-lean loading of a checkpoint into a model, with messages that name what belongs in the slot.

The file is read by `checkpoint_file.read_state_dict` (memory-mapped, by content) and its tensors, each cast on its
own, are assigned into a module built on the meta device: no second host copy of the weights."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .checkpoint_file import LOADABLE_DTYPES, WeightFileError, cast_each, check_dtype, examples, read_state_dict
from .file_signatures import NO_MATCH, SIGNATURES, identify_kind
from .model_catalog import ENTRIES

__all__ = ["LOADABLE_DTYPES", "WeightFileError", "check_fits", "identity_hint", "load_weights_into",
           "read_state_dict", "slot_names"]


def slot_names(slot: str) -> tuple[str, str, str | None]:
    """(description, file name, signature kind) of a loader slot; any other text is its own description."""
    e = ENTRIES.get(slot)
    label = next((label for kind, label, _ in SIGNATURES if e and kind == e.kind), None)
    return (label.split(" (")[0], Path(e.relpath).name, e.kind) if label else (slot, "the right weights file", None)


def load_weights_into(module: nn.Module, path: str | os.PathLike, slot: str, dtype: torch.dtype | None = None,
                      device: str | torch.device = "cpu") -> nn.Module:
    """Strictly load `path` into `module` (ideally built on the meta device) without a second host copy; `slot`
    (a catalog slot, or a free description) names what belongs there in messages, `dtype` casts floating tensors
    (None keeps the module's own). Returns the module, on `device`."""
    (description, filename, _), path = slot_names(slot), Path(path)
    check_dtype(dtype)
    try:
        sd = read_state_dict(path)
    except WeightFileError as e:
        text = str(e).replace(f"Put {path.name} in", f"Put {filename} ({description}) in")
        raise WeightFileError(f"Cannot load {description}: {text}", e.broken) from None
    expected = module.state_dict()  # meta tensors: shapes and dtypes only
    check_fits(sd, expected, path, slot)
    for prefix, sub in module.named_modules():  # free materialised tensors before the file's arrive
        for store in (sub._parameters, sub._buffers):
            for name, t in list(store.items()):
                if t is not None and not t.is_meta and f"{prefix}.{name}".lstrip(".") in expected:
                    meta = torch.empty_like(t, device="meta")
                    store[name] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    cast_each(sd, lambda key, t: dtype if dtype is not None and expected[key].dtype.is_floating_point
               else expected[key].dtype)
    module.load_state_dict(sd, strict=True, assign=True)
    del sd
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{len(left)} tensors are still on the meta device after loading {path}, e.g. "
                           f"{examples(left)}: they are not in the checkpoint, so the model must create them on a "
                           "real device")
    return module.to(device) if torch.device(device).type != "cpu" else module


def check_fits(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: str | os.PathLike,
               slot: str) -> None:
    """strict=True's checks before any copy, naming the file, the offending keys, what the file looks like instead,
    and what belongs in the slot; then no integer tensors where the model has floats (a quantised copy)."""
    (description, filename, _), path = slot_names(slot), Path(path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(shapes) & set(expected) if shapes[k] != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise WeightFileError(" ".join([
            f"{path} does not fit: expected {description} ({filename}). {len(missing)} missing, {len(unexpected)} "
            f"unexpected and {len(wrong)} wrong-shape keys (the file has {len(shapes)} tensors, the model expects "
            f"{len(expected)}).", *(f"{what} e.g. {examples(keys)}." for what, keys in (
                ("Missing", missing), ("Unexpected", unexpected)) if keys),
            *(f"Wrong shape e.g. {k}: file {list(shapes[k])} vs model {list(expected[k].shape)}." for k in wrong[:1]),
            identity_hint(shapes, slot)]))
    mistyped = sorted(k for k in sd if expected[k].dtype.is_floating_point and not sd[k].dtype.is_floating_point)
    if mistyped:
        found = "/".join(sorted({str(sd[k].dtype).removeprefix("torch.") for k in mistyped}))
        raise WeightFileError(f"{path} holds {found} tensors where {description} needs floating-point weights "
                              f"({len(mistyped)} of {len(sd)}, e.g. {examples(mistyped)}): it is a quantised or "
                              f"converted copy. Use the original {filename} (fp32, fp16 or bf16).")


def identity_hint(shapes: Mapping[str, tuple[int, ...]], slot: str) -> str:
    """What a file that does not fit `slot` looks like, and what belongs there instead."""
    (_, filename, kind), found = slot_names(slot), identify_kind(shapes)
    return (f"It is {NO_MATCH}; `python tools/models.py check` lists them." if found is None else
            f"It looks like {found[1]}, but for a different model size or version." if found[0] == kind else
            f"This looks like {found[1]}; use {filename} here.")
