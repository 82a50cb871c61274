"""Recognise what a checkpoint file actually is, from its bytes and from its key/shape signature (never its name).

Used to turn "strict load failed" into "this looks like audio2bucket.pth" and "truncated" into "this is a Git LFS
pointer". `identify` is table driven: the first matching `Signature` wins, so more specific entries come first.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

Shapes = Mapping[str, tuple[int, ...]]

# ----------------------------------------------------------------------------------------------------------------
# Container sniffing (first bytes of the file)
# ----------------------------------------------------------------------------------------------------------------

CONTAINER_LABELS = {
    "zip": "a zip archive (PyTorch checkpoint)",
    "pickle": "a legacy pickle",
    "safetensors": "a safetensors file",
    "lfs_pointer": "a Git LFS pointer (a small text stub, not the weights)",
    "html": "a web page (HTML), not weights",
    "gguf": "a GGUF file",
    "empty": "an empty file",
    "unknown": "an unrecognised file",
}


def sniff_container(path: str | Path) -> str:
    """Return one of CONTAINER_LABELS' keys from the file's first bytes (reads at most 64 KiB, unpickles nothing)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(65536)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"version https://git-lfs"):
        return "lfs_pointer"
    if head.startswith(b"GGUF"):
        return "gguf"
    lowered = head[:512].lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "html"
    if _looks_like_safetensors(head, size):
        return "safetensors"
    # Pickle protocol 2+ opens with PROTO (0x80) and the protocol number.
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


# ----------------------------------------------------------------------------------------------------------------
# Key/shape signatures
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    kind: str
    label: str
    test: Callable[[Shapes], bool]


def _any_prefix(shapes: Shapes, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in shapes)


def _any_contains(shapes: Shapes, *parts: str) -> bool:
    return any(p in k for k in shapes for p in parts)


def _temporal(shapes: Shapes) -> bool:
    return _any_contains(shapes, "temporal_transformer_blocks", "time_stack", "time_mixer", "temporal_res_block")


def _diffusers_unet(shapes: Shapes) -> bool:
    return "conv_in.weight" in shapes and _any_prefix(shapes, "down_blocks.")


def _ldm_unet(shapes: Shapes) -> bool:
    return _any_prefix(shapes, "input_blocks.") and _any_prefix(shapes, "output_blocks.", "middle_block.")


def _cross_attention_dim(shapes: Shapes) -> int | None:
    for k, s in shapes.items():
        if k.endswith("attn2.to_k.weight") and len(s) == 2:
            return s[1]
    return None


def _is_sd15_unet(shapes: Shapes) -> bool:
    if _temporal(shapes) or _any_prefix(shapes, "label_emb.", "add_embedding."):
        return False
    if _ldm_unet(shapes):
        conv = shapes.get("input_blocks.0.0.weight")
    elif _diffusers_unet(shapes) and _any_contains(shapes, "transformer_blocks"):
        conv = shapes.get("conv_in.weight")
    else:
        return False
    # SD1.5: 4 latent channels in, CLIP-L text context (768); absent keys don't veto (partial dumps).
    return (conv is None or (len(conv) == 4 and conv[1] in (4, 9))) and _cross_attention_dim(shapes) in (None, 768)


def _mlp_chain(shapes: Shapes, layers: tuple[str, ...]) -> bool:
    """proj1 -> proj2 -> ... Linear weights whose in/out sizes chain (structure, not full size)."""
    weights = [shapes.get(f"{name}.weight") for name in layers]
    if any(w is None or len(w) != 2 for w in weights):
        return False
    return all(a[0] == b[1] for a, b in zip(weights, weights[1:]))


def _only(shapes: Shapes, modules: tuple[str, ...]) -> bool:
    return all(k.rsplit(".", 1)[0] in modules and k.rsplit(".", 1)[-1] in ("weight", "bias") for k in shapes)


def _is_audio2token(shapes: Shapes) -> bool:
    layers = ("proj1", "proj2", "proj3")
    norm = shapes.get("norm.weight")
    if not (_only(shapes, layers + ("norm",)) and _mlp_chain(shapes, layers) and norm is not None and len(norm) == 1):
        return False
    # proj3 emits context_tokens x output_dim (32 x 1024 in Sonic); the LayerNorm works on output_dim.
    return shapes["proj3.weight"][0] % norm[0] == 0


def _is_audio2bucket(shapes: Shapes) -> bool:
    layers = ("proj1", "proj2", "proj3")
    return _only(shapes, layers) and _mlp_chain(shapes, layers)


def _is_rife(shapes: Shapes) -> bool:
    keys = [k.removeprefix("module.") for k in shapes]
    return any(k.startswith("block0.") for k in keys) and any(".convblock" in k for k in keys)


def _is_whisper(shapes: Shapes) -> bool:
    if "encoder.conv1.weight" in shapes or "model.encoder.conv1.weight" in shapes:
        return True
    # A bare encoder state dict: conv stem plus learned positions.
    return "conv1.weight" in shapes and _any_contains(shapes, "embed_positions", "positional_embedding")


SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "svd_single_file",
        "an SVD single-file checkpoint (model.diffusion_model.*), not Sonic's unet.pth",
        lambda s: _any_prefix(s, "model.diffusion_model.") and _temporal(s),
    ),
    Signature(
        "sd_single_file",
        "a single-file Stable Diffusion checkpoint (model.diffusion_model.*)",
        lambda s: _any_prefix(s, "model.diffusion_model."),
    ),
    Signature(
        "ip_adapter_unet",
        "an IP-Adapter-style UNet with to_k_ip.1 (several extra token groups) — not a Sonic UNet",
        lambda s: _any_contains(s, "to_k_ip.1.", "to_v_ip.1."),
    ),
    Signature(
        "sonic_unet",
        "the Sonic UNet weights (unet.pth)",
        lambda s: _diffusers_unet(s) and _temporal(s) and any(k.endswith("processor.to_k_ip.0.weight") for k in s),
    ),
    Signature(
        "svd_unet",
        "a stock Stable Video Diffusion UNet (diffusers keys, no Sonic audio layers to_k_ip/to_v_ip)",
        lambda s: _diffusers_unet(s) and _temporal(s),
    ),
    Signature(
        "ldm_svd_unet",
        "a ComfyUI/ldm-format SVD UNet (input_blocks.* keys, not diffusers keys)",
        lambda s: _ldm_unet(s) and _temporal(s),
    ),
    Signature("sd15_unet", "a Stable Diffusion 1.5 UNet", _is_sd15_unet),
    Signature("ldm_unet", "a ComfyUI/ldm-format UNet (input_blocks.* keys)", _ldm_unet),
    Signature(
        "sd_unet",
        "an image (non-video) Stable Diffusion UNet in diffusers format",
        lambda s: _diffusers_unet(s) and not _temporal(s),
    ),
    Signature(
        "ip_adapter",
        "an IP-Adapter weights file (image_proj / ip_adapter)",
        lambda s: _any_prefix(s, "image_proj.", "ip_adapter."),
    ),
    Signature("rife_flownet", "a RIFE flownet.pkl (frame interpolation)", _is_rife),
    Signature("audio2token", "the Sonic audio2token weights (audio2token.pth)", _is_audio2token),
    Signature("audio2bucket", "the Sonic audio2bucket weights (audio2bucket.pth)", _is_audio2bucket),
    Signature("whisper", "a Whisper model", _is_whisper),
    Signature("clip_vision", "a CLIP vision encoder (image_encoder)", lambda s: _any_prefix(s, "vision_model.")),
    Signature(
        "vae",
        "a VAE (autoencoder)",
        lambda s: "encoder.conv_in.weight" in s and "decoder.conv_in.weight" in s,
    ),
)


def _match(shapes: Shapes) -> Signature | None:
    for sig in SIGNATURES:
        if sig.test(shapes):
            return sig
    return None


def _common_prefix(shapes: Shapes) -> str | None:
    """'unet.' when every key starts with that same first component (a wrapped/re-saved state dict)."""
    firsts = {k.split(".", 1)[0] for k in shapes}
    if len(firsts) != 1 or not all("." in k for k in shapes):
        return None
    return firsts.pop() + "."


def identify_kind(shapes: Shapes) -> tuple[str, str] | None:
    """(kind, label) of the first matching signature, also trying once with a shared key prefix stripped."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    if not shapes:
        return None
    sig = _match(shapes)
    if sig is not None:
        return sig.kind, sig.label
    prefix = _common_prefix(shapes)
    if prefix is not None:
        sig = _match({k[len(prefix):]: v for k, v in shapes.items()})
        if sig is not None:
            return sig.kind, f"{sig.label}, with every key prefixed '{prefix}'"
    return None


def identify(shapes: Shapes) -> str | None:
    """Human label of what a state dict with these key -> shape entries looks like, or None if unknown."""
    found = identify_kind(shapes)
    return None if found is None else found[1]
