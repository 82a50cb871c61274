"""What a weights file is, from its first bytes and its key/shape signature (never its name): turns "strict load
failed" into "this looks like audio2bucket.pth" and "truncated" into "a Git LFS pointer"."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

Shapes = Mapping[str, tuple[int, ...]]

FAILED_DOWNLOADS = {"lfs_pointer": "a Git LFS pointer (a small text stub, not the weights)", "empty": "an empty file",
                    "html": "a web page (HTML), not weights"}  # sniff_container's verdicts no loader can use
NO_MATCH = "a checkpoint that matches none of Sonic's files"


def sniff_container(path: str | Path) -> str:
    """zip, pickle, safetensors, gguf, unknown or a FAILED_DOWNLOADS key, from the first 64 KiB (unpickles nothing)."""
    with Path(path).open("rb") as f:
        head = f.read(65536)
    starts = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"version https://git-lfs": "lfs_pointer", b"GGUF": "gguf"}
    found = next((kind for magic, kind in starts.items() if head.startswith(magic)), None)
    if not head or found:
        return found or "empty"
    if head[:512].lstrip().lower().startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "html"
    if len(head) >= 10 and 2 <= struct.unpack("<Q", head[:8])[0] <= Path(path).stat().st_size - 8 and head[8] == 123:
        return "safetensors"  # 8-byte header length, then the JSON header's "{"
    return "pickle" if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5 else "unknown"  # PROTO 2+


def safetensors_header(path: Path, size: int) -> dict[str, dict]:
    """Key -> {dtype, shape, begin (byte offset in the file)} from the header alone, checked against the file's size
    (as quick for 50 GB as for 5 MB). ValueError says what is wrong."""
    try:
        with Path(path).open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 200 << 20):
                raise ValueError(f"its header claims {n} bytes")
            header = {k: v for k, v in json.loads(f.read(n)).items() if k != "__metadata__"}
        end = 8 + n + max((v["data_offsets"][1] for v in header.values()), default=0)
    except (KeyError, TypeError, AttributeError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable header: {e!r}"[:160]) from None
    if end > size:
        raise ValueError(f"{size} bytes where its header needs {end}: truncated")
    return {k: {**v, "begin": 8 + n + v["data_offsets"][0]} for k, v in header.items()}


def _any(s: Shapes, *parts: str, start: bool = False) -> bool:
    return any(k.startswith(parts) if start else any(p in k for p in parts) for k in s)


def _video_unet(s: Shapes) -> bool:  # diffusers keys with SVD's temporal layers
    return "conv_in.weight" in s and _any(s, "down_blocks.", start=True) and _any(s, "temporal_transformer_blocks")


def _svd_single(s: Shapes) -> bool:
    return _any(s, "model.diffusion_model.", start=True) and _any(s, "time_stack", "time_mixer")


def _mlp(s: Shapes, extra: tuple[str, ...] = ()) -> bool:
    """Only proj1 -> proj2 -> proj3 Linear layers (plus `extra` modules) whose sizes chain."""
    names = ("proj1", "proj2", "proj3")
    if not all(k.rsplit(".", 1)[0] in names + extra and k.rsplit(".", 1)[-1] in ("weight", "bias") for k in s):
        return False
    w = [s.get(f"{m}.weight") for m in names]
    return all(x is not None and len(x) == 2 for x in w) and all(a[0] == b[1] for a, b in zip(w, w[1:]))


# (kind, label, test): the first match wins, so the more specific rows come first. Only Sonic's files, and the
# stock SVD UNet (the common mistake in unet.pth's place).
SIGNATURES = (
    ("svd_checkpoint", "an SVD single-file checkpoint (UNet, VAE and CLIP vision)", lambda s: _svd_single(s)
     and _any(s, "first_stage_model.", start=True) and _any(s, "conditioner.embedders.0.open_clip.", start=True)),
    ("svd_single_file", "an SVD single-file checkpoint without its VAE / CLIP vision, not Sonic's unet.pth",
     _svd_single),
    ("sonic_unet", "the Sonic UNet weights (unet.pth)",
     lambda s: _video_unet(s) and any(k.endswith("processor.to_k_ip.0.weight") for k in s)),
    ("svd_unet", "a stock Stable Video Diffusion UNet (no Sonic audio layers to_k_ip/to_v_ip)", _video_unet),
    ("rife_flownet", "the RIFE frame-interpolation weights (flownet.pkl)",  # may carry DataParallel's "module."
     lambda s: _any(s, "block0.", "module.block0.", start=True) and _any(s, ".convblock")),
    ("audio2token", "the Sonic audio2token weights (audio2token.pth)",  # proj3 emits tokens x dim; norm is on dim
     lambda s: _mlp(s, ("norm",)) and len(s.get("norm.weight", ())) == 1
     and s["proj3.weight"][0] % s["norm.weight"][0] == 0),
    ("audio2bucket", "the Sonic audio2bucket weights (audio2bucket.pth)", _mlp),
    ("whisper", "a Whisper model", lambda s: "encoder.conv1.weight" in s or "model.encoder.conv1.weight" in s),
)


def identify_kind(shapes: Shapes) -> tuple[str, str] | None:
    """(kind, label) of the first matching signature."""
    s = {k: tuple(v) for k, v in shapes.items()}
    return next(((kind, label) for kind, label, test in SIGNATURES if s and test(s)), None)
