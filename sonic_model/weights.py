"""Safe, memory-lean checkpoint loading with error messages that say what is wrong with the file and what to do.

- Never executes pickled code: every `torch.load` is `weights_only=True`.
- Never holds two full copies in host memory: files are memory-mapped, tensors already in the target dtype stay
  views of the mapping, others are cast one at a time and their source pages handed back to the kernel at once,
  then assigned into a module whose parameters live on the meta device (`load_state_dict(assign=True)`).
- Bad files (missing, truncated, an LFS stub, a web page, code-carrying pickles, the wrong model) raise
  `WeightFileError` naming the file and, via `file_signatures`, what the file really looks like.
"""
from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .file_signatures import CONTAINER_LABELS, identify_kind, sniff_container

LOADABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
WRAPPER_KEYS = ("state_dict", "module", "model")
_EXAMPLES = 3


class WeightFileError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and says what to do."""


@dataclass(frozen=True)
class Slot:
    description: str  # "the Sonic audio2token weights"
    filename: str  # the file users are expected to put there
    kind: str | None  # file_signatures kind of a correct file


SLOTS: dict[str, Slot] = {
    "unet": Slot("the Sonic UNet weights", "unet.pth", "sonic_unet"),
    "audio2token": Slot("the Sonic audio2token weights", "audio2token.pth", "audio2token"),
    "audio2bucket": Slot("the Sonic audio2bucket weights", "audio2bucket.pth", "audio2bucket"),
    "rife": Slot("the RIFE frame-interpolation weights", "flownet.pkl", "rife_flownet"),
}


def _slot(slot: str) -> Slot:
    return SLOTS.get(slot) or Slot(slot, "the right weights file", None)


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read a `.pth/.pt/.pkl/.bin/.ckpt` or `.safetensors/.sft` state dict, memory-mapped where the format allows.

    With `dtype`, floating tensors are cast one at a time (others keep theirs); tensors already in `dtype` stay
    zero-copy views of the mapped file.
    """
    path = Path(path)
    _check_file(path, f"Put {path.name} in {path.absolute().parent}")
    sd = _read_mapped(path)
    if dtype is not None:
        _check_dtype(dtype)
        _cast_each(sd, path, lambda key, t: dtype if t.is_floating_point() else None)
    return sd


def _check_file(path: Path, where: str) -> None:
    if path.is_dir():
        raise WeightFileError(f"{path} is a folder; expected a weights file. {where}.")
    if not path.is_file():
        raise WeightFileError(f"Weights file not found: {path}. {where}.")


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in LOADABLE_DTYPES:
        raise ValueError(f"weights can be loaded as float32, float16 or bfloat16, not {dtype}")


def _read_mapped(path: Path) -> dict[str, torch.Tensor]:
    """Dispatch on the file's content (a renamed file still loads), with the suffix as a tie-breaker."""
    size = path.stat().st_size
    container = sniff_container(path)
    if container in ("empty", "lfs_pointer", "html", "gguf"):
        raise WeightFileError(
            f"{path} is {CONTAINER_LABELS[container]} ({size} bytes), not a usable checkpoint — "
            "the download did not complete or fetched the wrong thing; download the real file again"
        )
    if container == "safetensors":
        return _read_safetensors(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES and container not in ("zip", "pickle"):
        raise WeightFileError(
            f"{path} is not a valid safetensors file (its header is unreadable; {size} bytes) — download it again"
        )
    return _read_torch(path, size)


def _read_torch(path: Path, size: int) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # Plain pickle.dump files trip a protocol warning before being refused; the error says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap can only be used" not in str(e):
                    raise
                # Legacy (pre-zip) pickle: cannot be mapped; it is read into memory once.
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(path, size, str(e)) from None
    except RuntimeError as e:
        if "TorchScript" in str(e):
            raise WeightFileError(
                f"{path} is a TorchScript model, not a state dict of weights — use the plain weights file"
            ) from None
        raise _corrupt(path, size, e) from None
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, struct.error, KeyError, IndexError) as e:
        raise _corrupt(path, size, e) from None
    return _as_tensor_dict(path, obj)


def _corrupt(path: Path, size: int, cause: BaseException) -> WeightFileError:
    reason = str(cause).strip().splitlines()[0][:160] if str(cause).strip() else type(cause).__name__
    return WeightFileError(
        f"{path} is truncated or corrupt ({size} bytes; expected a PyTorch checkpoint; {reason}) — download it again"
    )


def _unpickling_error(path: Path, size: int, message: str) -> WeightFileError:
    refused = re.search(r"GLOBAL\s+(\S+)", message)
    if refused or re.search(r"unsupported|not an allowed|reduce", message, re.IGNORECASE):
        what = f" (it asks for {refused.group(1)})" if refused else ""
        return WeightFileError(
            f"{path} contains Python code/objects{what}, refused for safety; only plain tensor checkpoints are "
            "loaded — use the original weights file, or re-save it as a plain state dict / safetensors"
        )
    # Anything else the safe unpickler trips on is damage; its explanation sits after the boilerplate paragraph.
    detail = [p for p in message.split("\n\n") if p.strip() and "weights_only" not in p and "torch.load" not in p]
    return _corrupt(path, size, pickle.UnpicklingError(detail[0] if detail else "unreadable pickle"))


def _as_tensor_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and len(obj) == 1:
        (key, inner), = obj.items()
        if key in WRAPPER_KEYS and isinstance(inner, Mapping):
            obj = inner
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path} holds a {type(obj).__name__}, not a dict of tensors (a state dict)")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        examples = ", ".join(f"{k!r} ({type(obj[k]).__name__})" for k in bad[:_EXAMPLES])
        raise WeightFileError(
            f"{path} is not a dict of tensors: {len(bad)} of its {len(obj)} entries are not tensors, e.g. {examples}"
        )
    if not obj:
        raise WeightFileError(f"{path} contains no tensors")
    return dict(obj)


# safetensors dtype names -> torch; unknown names fall back to the library's own (copying) reader.
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors validates the header; the tensors themselves are zero-copy views of one private mapping."""
    from safetensors import safe_open

    size = path.stat().st_size
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError derives from Exception only
        raise WeightFileError(
            f"{path} is not a valid safetensors file ({str(e).strip()[:160]}; {size} bytes) — "
            "it may be truncated; download it again"
        ) from None
    with handle as f:
        keys = list(f.keys())
        with path.open("rb") as raw:
            (header_len,) = struct.unpack("<Q", raw.read(8))
            header = json.loads(raw.read(header_len))
        base = 8 + header_len
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
        sd = {}
        for key in keys:
            info = header[key]
            dt = _ST_DTYPES.get(info["dtype"])
            begin = base + info["data_offsets"][0]
            shape = tuple(info["shape"])
            if dt is None or sys.byteorder != "little" or begin % dt.itemsize:
                sd[key] = f.get_tensor(key)  # rare layout: let the library copy it
                continue
            sd[key] = torch.empty(0, dtype=dt).set_(storage, begin // dt.itemsize, shape)  # contiguous strides
    if not sd:
        raise WeightFileError(f"{path} contains no tensors")
    return sd


# ----------------------------------------------------------------------------------------------------------------
# Per-tensor casting that gives the source pages back
# ----------------------------------------------------------------------------------------------------------------


def _cast_each(
    sd: dict[str, torch.Tensor], path: Path, target: Callable[[str, torch.Tensor], torch.dtype | None]
) -> None:
    """Cast entries in place, one at a time; the mapped pages of each source are released right after."""
    mapped = _file_mappings(path)
    for key in list(sd):
        src = sd[key]
        dtype = target(key, src)
        if dtype is None or src.dtype == dtype:
            continue
        sd[key] = src.to(dtype)
        _release_pages(src, mapped)
        del src


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps `path` (Linux /proc/self/maps; empty elsewhere)."""
    try:
        st = os.stat(path)
        ranges = []
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) < 5 or int(parts[4]) != st.st_ino:
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                if (major, minor) == (os.major(st.st_dev), os.minor(st.st_dev)):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((start, end))
        return ranges
    except (OSError, ValueError):
        return []


_MADV_DONTNEED = 4  # Linux value


def _release_pages(t: torch.Tensor, mapped: list[tuple[int, int]]) -> None:
    """Drop a no-longer-needed tensor's pages from our private file mapping.

    Only called for tensors inside a mapping of the checkpoint file, which nobody has written to: the kernel refills
    such pages from the file if they are touched again, so neighbours sharing a boundary page stay correct.
    Without this, every mapped page read while casting would count as resident until the whole mapping is freed.
    """
    if not mapped or t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
        return
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    for lo, hi in mapped:
        if lo <= start and end <= hi:
            page = mmap.PAGESIZE
            a, b = start // page * page, min(-(-end // page) * page, hi)
            _madvise(a, b - a)
            return


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return lib
    except (OSError, AttributeError):
        return None


def _madvise(address: int, length: int) -> None:
    if _libc() is not None:
        _libc().madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), ctypes.c_int(_MADV_DONTNEED))


# ----------------------------------------------------------------------------------------------------------------
# Loading into a module
# ----------------------------------------------------------------------------------------------------------------


def load_weights_into(
    module: nn.Module,
    path: str | os.PathLike,
    slot: str,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    strip_prefix: str | None = None,
) -> nn.Module:
    """Strictly load `path` into `module` (ideally built on the meta device) without a second host copy.

    `slot` is a SLOTS key ("unet", "audio2token", "audio2bucket", "rife") or a free description, used in messages.
    `dtype` (fp32/fp16/bf16) casts floating tensors; None keeps the module's own dtypes. `strip_prefix` is removed
    from keys that carry it (RIFE's "module."). Returns the module, on `device`.
    """
    info = _slot(slot)
    path = Path(path)
    if dtype is not None:
        _check_dtype(dtype)
    _check_file(path, f"Put {info.filename} ({info.description}) in {path.absolute().parent}")
    try:
        sd = _read_mapped(path)
    except WeightFileError as e:
        raise WeightFileError(f"Cannot load {info.description}: {e}") from None
    if strip_prefix:
        sd = {k.removeprefix(strip_prefix): v for k, v in sd.items()}

    expected = module.state_dict()  # meta tensors: shapes and dtypes only
    check_fits(sd, expected, path, slot)
    _persistent_to_meta(module, set(expected))  # a materialised module must not coexist with the file's tensors

    def target(key: str, t: torch.Tensor) -> torch.dtype | None:
        want = expected[key].dtype
        return dtype if dtype is not None and want.is_floating_point else want

    _cast_each(sd, path, target)
    module.load_state_dict(sd, strict=True, assign=True)
    del sd
    _check_nothing_on_meta(module, path)
    if torch.device(device).type != "cpu":
        module.to(device)
    return module


def check_fits(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: str | os.PathLike,
               slot: str) -> None:
    """strict=True's checks before any copy, with a message naming the file, the offending keys, what the file looks
    like instead, and what belongs in the slot. `expected` is the model's (meta) state dict."""
    path, info = Path(path), _slot(slot)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(shapes) & set(expected) if shapes[k] != tuple(expected[k].shape))
    if not (missing or unexpected or wrong):
        _validate_dtypes(sd, expected, path, info)
        return
    parts = [
        f"{path} does not fit: expected {info.description} ({info.filename}). "
        f"{len(missing)} missing, {len(unexpected)} unexpected and {len(wrong)} wrong-shape keys "
        f"(the file has {len(shapes)} tensors, the model expects {len(expected)})."
    ]
    if missing:
        parts.append(f"Missing e.g. {_examples(missing)}.")
    if unexpected:
        parts.append(f"Unexpected e.g. {_examples(unexpected)}.")
    if wrong:
        k = wrong[0]
        parts.append(f"Wrong shape e.g. {k}: file {list(shapes[k])} vs model {list(expected[k].shape)}.")
    parts.append(identity_hint(shapes, slot))
    raise WeightFileError(" ".join(parts))


def identity_hint(shapes: Mapping[str, tuple[int, ...]], slot: str) -> str:
    """What a file that does not fit `slot` looks like, and what belongs there instead."""
    info = _slot(slot)
    found = identify_kind(shapes)
    if found is None:
        return "The file matches no known checkpoint layout; `python tools/models.py check` lists the files."
    if found[0] == info.kind:
        return f"It looks like {found[1]}, but for a different model size or version."
    return f"This looks like {found[1]}; use {info.filename} here."


def _validate_dtypes(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path,
                     info: Slot) -> None:
    """Integer or boolean tensors where the model has float weights: casting them would load garbage silently."""
    mistyped = sorted(k for k in sd if expected[k].dtype.is_floating_point and not sd[k].dtype.is_floating_point)
    if mistyped:
        found = sorted({str(sd[k].dtype).removeprefix("torch.") for k in mistyped})
        raise WeightFileError(
            f"{path} holds {'/'.join(found)} tensors where {info.description} needs floating-point weights "
            f"({len(mistyped)} of {len(sd)}, e.g. {_examples(mistyped)}): it is a quantised or converted copy. "
            f"Use the original {info.filename} (fp32, fp16 or bf16).")


def _examples(keys: list[str]) -> str:
    more = f" (+{len(keys) - _EXAMPLES} more)" if len(keys) > _EXAMPLES else ""
    return ", ".join(keys[:_EXAMPLES]) + more


def _persistent_to_meta(module: nn.Module, names: set[str]) -> None:
    """Swap already-materialised state-dict entries for meta placeholders so their memory is freed first."""
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, p in list(sub._parameters.items()):
            if p is not None and not p.is_meta and dot + name in names:
                sub._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None and not b.is_meta and dot + name in names:
                sub._buffers[name] = torch.empty_like(b, device="meta")


def _check_nothing_on_meta(module: nn.Module, path: Path) -> None:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(
            f"{len(left)} tensors are still on the meta device after loading {path}, e.g. {_examples(left)}: "
            "they are not in the checkpoint, so the model must create them on a real device"
        )
