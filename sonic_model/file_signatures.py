"""What a checkpoint file is, from its first bytes and its key/shape signature (never its name).

Turns "strict load failed" into "this looks like audio2bucket.pth" and "truncated" into "a Git LFS pointer". The
first matching row of SIGNATURES wins, so the more specific rows come first.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, Mapping

Shapes = Mapping[str, tuple[int, ...]]

CONTAINER_LABELS = {
    "zip": "a zip archive (PyTorch checkpoint)", "pickle": "a legacy pickle", "safetensors": "a safetensors file",
    "lfs_pointer": "a Git LFS pointer (a small text stub, not the weights)", "html": "a web page (HTML), not weights",
    "gguf": "a GGUF file", "empty": "an empty file", "unknown": "an unrecognised file",
}


def sniff_container(path: str | Path) -> str:
    """One of CONTAINER_LABELS' keys from the file's first 64 KiB (unpickles nothing)."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(65536)
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"version https://git-lfs"):
        return "lfs_pointer"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head[:512].lstrip().lower().startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "html"
    if len(head) >= 10 and 2 <= struct.unpack("<Q", head[:8])[0] <= path.stat().st_size - 8 and head[8:9] == b"{":
        return "safetensors"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle protocol 2+: PROTO and its number
        return "pickle"
    return "unknown"


def _prefix(s: Shapes, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in s)


def _contains(s: Shapes, *parts: str) -> bool:
    return any(p in k for k in s for p in parts)


def _temporal(s: Shapes) -> bool:
    return _contains(s, "temporal_transformer_blocks", "time_stack", "time_mixer", "temporal_res_block")


def _diffusers_unet(s: Shapes) -> bool:
    return "conv_in.weight" in s and _prefix(s, "down_blocks.")


def _ldm_unet(s: Shapes) -> bool:
    return _prefix(s, "input_blocks.") and _prefix(s, "output_blocks.", "middle_block.")


def _is_sd15_unet(s: Shapes) -> bool:
    """4 (or 9, inpainting) latent channels in and CLIP-L context (768); absent keys don't veto partial dumps."""
    if _temporal(s) or _prefix(s, "label_emb.", "add_embedding."):
        return False
    if _ldm_unet(s):
        conv = s.get("input_blocks.0.0.weight")
    elif _diffusers_unet(s) and _contains(s, "transformer_blocks"):
        conv = s.get("conv_in.weight")
    else:
        return False
    context = next((v[1] for k, v in s.items() if k.endswith("attn2.to_k.weight") and len(v) == 2), None)
    return (conv is None or (len(conv) == 4 and conv[1] in (4, 9))) and context in (None, 768)


def _mlp(s: Shapes, extra: tuple[str, ...] = ()) -> bool:
    """Only proj1 -> proj2 -> proj3 Linear layers (plus `extra` modules) whose sizes chain."""
    modules = ("proj1", "proj2", "proj3")
    if not all(k.rsplit(".", 1)[0] in modules + extra and k.rsplit(".", 1)[-1] in ("weight", "bias") for k in s):
        return False
    weights = [s.get(f"{m}.weight") for m in modules]
    return all(w is not None and len(w) == 2 for w in weights) and all(
        a[0] == b[1] for a, b in zip(weights, weights[1:]))


def _is_audio2token(s: Shapes) -> bool:
    # proj3 emits context_tokens x output_dim (32 x 1024 in Sonic); the LayerNorm works on output_dim.
    norm = s.get("norm.weight")
    return _mlp(s, ("norm",)) and norm is not None and len(norm) == 1 and s["proj3.weight"][0] % norm[0] == 0


def _is_rife(s: Shapes) -> bool:
    keys = [k.removeprefix("module.") for k in s]
    return any(k.startswith("block0.") for k in keys) and any(".convblock" in k for k in keys)


def _is_whisper(s: Shapes) -> bool:
    return ("encoder.conv1.weight" in s or "model.encoder.conv1.weight" in s
            or ("conv1.weight" in s and _contains(s, "embed_positions", "positional_embedding")))  # bare encoder


SIGNATURES: tuple[tuple[str, str, Callable[[Shapes], bool]], ...] = (
    ("svd_single_file", "an SVD single-file checkpoint (model.diffusion_model.*), not Sonic's unet.pth",
     lambda s: _prefix(s, "model.diffusion_model.") and _temporal(s)),
    ("sd_single_file", "a single-file Stable Diffusion checkpoint (model.diffusion_model.*)",
     lambda s: _prefix(s, "model.diffusion_model.")),
    ("ip_adapter_unet", "an IP-Adapter-style UNet with to_k_ip.1 (several extra token groups) — not a Sonic UNet",
     lambda s: _contains(s, "to_k_ip.1.", "to_v_ip.1.")),
    ("sonic_unet", "the Sonic UNet weights (unet.pth)",
     lambda s: _diffusers_unet(s) and _temporal(s) and any(k.endswith("processor.to_k_ip.0.weight") for k in s)),
    ("svd_unet", "a stock Stable Video Diffusion UNet (diffusers keys, no Sonic audio layers to_k_ip/to_v_ip)",
     lambda s: _diffusers_unet(s) and _temporal(s)),
    ("ldm_svd_unet", "a ComfyUI/ldm-format SVD UNet (input_blocks.* keys, not diffusers keys)",
     lambda s: _ldm_unet(s) and _temporal(s)),
    ("sd15_unet", "a Stable Diffusion 1.5 UNet", _is_sd15_unet),
    ("ldm_unet", "a ComfyUI/ldm-format UNet (input_blocks.* keys)", _ldm_unet),
    ("sd_unet", "an image (non-video) Stable Diffusion UNet in diffusers format",
     lambda s: _diffusers_unet(s) and not _temporal(s)),
    ("ip_adapter", "an IP-Adapter weights file (image_proj / ip_adapter)",
     lambda s: _prefix(s, "image_proj.", "ip_adapter.")),
    ("rife_flownet", "a RIFE flownet.pkl (frame interpolation)", _is_rife),
    ("audio2token", "the Sonic audio2token weights (audio2token.pth)", _is_audio2token),
    ("audio2bucket", "the Sonic audio2bucket weights (audio2bucket.pth)", _mlp),
    ("whisper", "a Whisper model", _is_whisper),
    ("clip_vision", "a CLIP vision encoder (image_encoder)", lambda s: _prefix(s, "vision_model.")),
    ("vae", "a VAE (autoencoder)", lambda s: "encoder.conv_in.weight" in s and "decoder.conv_in.weight" in s),
)


def _match(shapes: Shapes) -> tuple[str, str] | None:
    return next(((kind, label) for kind, label, test in SIGNATURES if test(shapes)), None)


def identify_kind(shapes: Shapes) -> tuple[str, str] | None:
    """(kind, label) of the first matching signature, also trying once with a shared first key part stripped
    (a wrapped or re-saved state dict: every key 'unet.…')."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    if not shapes:
        return None
    found = _match(shapes)
    firsts = {k.split(".", 1)[0] for k in shapes}
    if found is None and len(firsts) == 1 and all("." in k for k in shapes):
        prefix = firsts.pop() + "."
        found = _match({k[len(prefix):]: v for k, v in shapes.items()})
        if found is not None:
            return found[0], f"{found[1]}, with every key prefixed '{prefix}'"
    return found


def identify(shapes: Shapes) -> str | None:
    """Human label of what a state dict with these key -> shape entries looks like, or None if unknown."""
    found = identify_kind(shapes)
    return None if found is None else found[1]
