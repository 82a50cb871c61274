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


def _temporal(s: Shapes) -> bool:
    return _any(s, "temporal_transformer_blocks", "time_stack", "time_mixer", "temporal_res_block")


def _diffusers_unet(s: Shapes) -> bool:
    return "conv_in.weight" in s and _any(s, "down_blocks.", start=True)


def _ldm_unet(s: Shapes) -> bool:
    return _any(s, "input_blocks.", start=True) and _any(s, "output_blocks.", "middle_block.", start=True)


def _is_sd15_unet(s: Shapes) -> bool:
    """4 (or 9, inpainting) latent channels in and CLIP-L context (768); absent keys don't veto partial dumps."""
    if _temporal(s) or _any(s, "label_emb.", "add_embedding.", start=True):
        return False
    if not (_ldm_unet(s) or (_diffusers_unet(s) and _any(s, "transformer_blocks"))):
        return False
    conv = s.get("input_blocks.0.0.weight", s.get("conv_in.weight"))
    context = next((v[1] for k, v in s.items() if k.endswith("attn2.to_k.weight") and len(v) == 2), None)
    return (conv is None or (len(conv) == 4 and conv[1] in (4, 9))) and context in (None, 768)


def _mlp(s: Shapes, extra: tuple[str, ...] = ()) -> bool:
    """Only proj1 -> proj2 -> proj3 Linear layers (plus `extra` modules) whose sizes chain."""
    names = ("proj1", "proj2", "proj3")
    if not all(k.rsplit(".", 1)[0] in names + extra and k.rsplit(".", 1)[-1] in ("weight", "bias") for k in s):
        return False
    w = [s.get(f"{m}.weight") for m in names]
    return all(x is not None and len(x) == 2 for x in w) and all(a[0] == b[1] for a, b in zip(w, w[1:]))


# (kind, label, test): the first match wins, so the more specific rows come first.
SIGNATURES = (
    ("svd_single_file", "an SVD single-file checkpoint (model.diffusion_model.*), not Sonic's unet.pth",
     lambda s: _any(s, "model.diffusion_model.", start=True) and _temporal(s)),
    ("sd_single_file", "a single-file Stable Diffusion checkpoint (model.diffusion_model.*)",
     lambda s: _any(s, "model.diffusion_model.", start=True)),
    ("ip_adapter_unet", "an IP-Adapter-style UNet with to_k_ip.1 (several extra token groups) — not a Sonic UNet",
     lambda s: _any(s, "to_k_ip.1.", "to_v_ip.1.")),
    ("sonic_unet", "the Sonic UNet weights (unet.pth)",
     lambda s: _diffusers_unet(s) and _temporal(s) and any(k.endswith("processor.to_k_ip.0.weight") for k in s)),
    ("svd_unet", "a stock Stable Video Diffusion UNet (diffusers keys, no Sonic audio layers to_k_ip/to_v_ip)",
     lambda s: _diffusers_unet(s) and _temporal(s)),
    ("ldm_svd_unet", "a ComfyUI/ldm-format SVD UNet (input_blocks.* keys, not diffusers keys)",
     lambda s: _ldm_unet(s) and _temporal(s)),
    ("sd15_unet", "a Stable Diffusion 1.5 UNet", _is_sd15_unet),
    ("ldm_unet", "a ComfyUI/ldm-format UNet (input_blocks.* keys)", _ldm_unet),
    ("sd_unet", "an image (non-video) Stable Diffusion UNet in diffusers format", _diffusers_unet),
    ("ip_adapter", "an IP-Adapter weights file (image_proj / ip_adapter)",
     lambda s: _any(s, "image_proj.", "ip_adapter.", start=True)),
    ("rife_flownet", "a RIFE flownet.pkl (frame interpolation)",  # keys may carry DataParallel's "module."
     lambda s: _any(s, "block0.", "module.block0.", start=True) and _any(s, ".convblock")),
    ("audio2token", "the Sonic audio2token weights (audio2token.pth)",  # proj3 emits tokens x dim; norm is on dim
     lambda s: _mlp(s, ("norm",)) and len(s.get("norm.weight", ())) == 1
     and s["proj3.weight"][0] % s["norm.weight"][0] == 0),
    ("audio2bucket", "the Sonic audio2bucket weights (audio2bucket.pth)", _mlp),
    ("whisper", "a Whisper model", lambda s: "encoder.conv1.weight" in s or "model.encoder.conv1.weight" in s
     or ("conv1.weight" in s and _any(s, "embed_positions", "positional_embedding"))),  # a bare encoder
    ("clip_vision", "a CLIP vision encoder (image_encoder)", lambda s: _any(s, "vision_model.", start=True)),
    ("vae", "a VAE (autoencoder)", lambda s: "encoder.conv_in.weight" in s and "decoder.conv_in.weight" in s),
)


def identify_kind(shapes: Shapes) -> tuple[str, str] | None:
    """(kind, label) of the first matching signature, also trying once with a shared first key part stripped
    (a wrapped or re-saved state dict: every key 'unet.…')."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    firsts = {k.split(".", 1)[0] for k in shapes}
    for prefix in ("", *(f"{p}." for p in firsts if len(firsts) == 1 and all("." in k for k in shapes))):
        s = {k[len(prefix):]: v for k, v in shapes.items()}
        found = next(((kind, label) for kind, label, test in SIGNATURES if s and test(s)), None)
        if found:
            return (found[0], f"{found[1]}, with every key prefixed '{prefix}'") if prefix else found
    return None


def identify(shapes: Shapes) -> str | None:
    """Human label of what a state dict with these key -> shape entries looks like, or None if unknown."""
    return (identify_kind(shapes) or (None, None))[1]
