"""One weights file → a dict of tensors, read safely by content; a bad file raises `WeightFileError` naming it and
saying what to do.

Every `torch.load` is `weights_only=True`. Files are memory-mapped by the libraries (`torch.load(mmap=True)`,
`safetensors.safe_open`); tensors already in the target dtype stay views of the mapping, others are cast one at a
time. The fp32 `unet.pth` read as fp16 thus holds 2.94 GiB of anonymous memory, the model's own size
(benchmarks/RESULTS.md, 2026-12-07); the file's pages read meanwhile are page cache."""
from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError, safe_open

from .file_signatures import FAILED_DOWNLOADS, sniff_container

LOADABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class WeightFileError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and says what to do. `broken`: a failed
    download (stub, web page, truncated), safe to replace."""

    def __init__(self, message: str, broken: bool = False):
        super().__init__(message)
        self.broken = broken


def read_state_dict(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A PyTorch or safetensors state dict, memory-mapped where the format allows, read by content (a renamed file
    still loads). With `dtype`, floating tensors are cast one at a time."""
    path = Path(path)
    check_dtype(dtype)
    if not path.is_file():
        raise WeightFileError(f"{path} is a folder; expected a weights file." if path.is_dir() else
                              f"Weights file not found: {path}. Put {path.name} in {path.absolute().parent}.")
    size, container = path.stat().st_size, sniff_container(path)
    if container in (*FAILED_DOWNLOADS, "gguf"):
        what = FAILED_DOWNLOADS.get(container, "a GGUF file")
        raise WeightFileError(f"{path} is {what} ({size} bytes), not a usable checkpoint — the "
                              "download did not complete or fetched the wrong thing; download the real file again",
                              broken=container != "gguf")
    if container == "safetensors" or path.suffix.lower() in (".safetensors", ".sft") and container == "unknown":
        sd = _read_safetensors(path, size)
    else:
        sd = _as_tensor_dict(path, _torch_load(path, size, mmap=container == "zip"))  # legacy pickles: read once
    if not sd:
        raise WeightFileError(f"{path} contains no tensors")
    if dtype is not None:
        cast_each(sd, lambda key, t: dtype if t.is_floating_point() else None)
    return sd


def check_dtype(dtype: torch.dtype | None) -> None:
    if dtype not in (None, *LOADABLE_DTYPES):
        raise ValueError(f"weights can be loaded as float32, float16 or bfloat16, not {dtype}")


def _torch_load(path: Path, size: int, mmap: bool) -> object:
    try:
        with warnings.catch_warnings():  # plain pickle.dump files warn before being refused; the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL\s+(\S+)", str(e))
        if refused or re.search(r"unsupported|not an allowed|reduce", str(e), re.IGNORECASE):
            what = f" (it asks for {refused.group(1)})" if refused else ""
            raise WeightFileError(
                f"{path} contains Python code/objects{what}, refused for safety; only plain tensor checkpoints are "
                "loaded — use the original weights file, or re-save it as a plain state dict / safetensors") from None
        # Other unpickler errors are damage; the explanation follows torch's boilerplate paragraph.
        detail = [p for p in str(e).split("\n\n") if p.strip() and "weights_only" not in p and "torch.load" not in p]
        raise _corrupt(path, size, detail[0] if detail else "unreadable pickle") from None
    except RuntimeError as e:
        if "TorchScript" in str(e):
            raise WeightFileError(f"{path} is a TorchScript model, not a state dict of weights — use the plain "
                                  "weights file") from None
        raise _corrupt(path, size, e) from None
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, struct.error, KeyError, IndexError) as e:
        raise _corrupt(path, size, e) from None


def _corrupt(path: Path, size: int, cause: object) -> WeightFileError:
    reason = str(cause).strip().splitlines()[0][:160] if str(cause).strip() else type(cause).__name__
    return WeightFileError(f"{path} is truncated or corrupt ({size} bytes; expected a PyTorch checkpoint; {reason}) "
                           "— download it again", broken=True)


def _as_tensor_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "module", "model"):
        obj = next(iter(obj.values()))  # a training wrapper around the state dict
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path} holds a {type(obj).__name__}, not a dict of tensors (a state dict)")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise WeightFileError(f"{path} is not a dict of tensors: {len(bad)} of its {len(obj)} entries are not "
                              f"tensors, e.g. {examples(bad)}")
    return dict(obj)


def _read_safetensors(path: Path, size: int) -> dict[str, torch.Tensor]:
    """Zero-copy views of the file, which the library maps."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightFileError(f"{path} is not a valid safetensors file ({e}; {size} bytes) — it may be truncated "
                              "or not weights; download it again", broken=True) from None


def cast_each(sd: dict[str, torch.Tensor], target: Callable[[str, torch.Tensor], torch.dtype | None]) -> None:
    """Cast entries in place, one at a time: each source view goes as soon as its cast replaces it, so only the
    results are new memory and no second copy of the file ever exists."""
    for key in list(sd):
        dtype = target(key, sd[key])
        if dtype is not None and sd[key].dtype != dtype:
            sd[key] = sd[key].to(dtype)


def examples(keys: list[str]) -> str:
    """The first three keys for a message, and how many more there are."""
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
