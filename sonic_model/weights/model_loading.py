"""Build each Sonic model with the right configuration for a checkpoint file, then load it strictly and lean.

The released files are plain state dicts without a config. The UNet is the SVD-xt one (shipped config) unless a
`<file stem>.config.json` beside it says otherwise (how the small test and demo weights describe themselves). The
audio adapters' sizes follow from their weight shapes and the Whisper model they read.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..audio.audio_adapters import AudioToBuckets, AudioToTokens
from ..unet.unet import SonicUNet, build_sonic_unet
from .weights import WeightFileError, identity_hint, load_weights_into, read_state_dict, slot_names
from ..audio.whisper_features import BUCKET_WINDOW  # the bucket predictor's window: official, not stored in the file


def unet_config_for(path: str | Path) -> dict | None:
    """The diffusers UNet config for a Sonic UNet file: its `.config.json` sidecar, else None (SVD-xt)."""
    sidecar = Path(path).with_suffix(".config.json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    return None


def load_sonic_unet(path: str | Path, dtype: torch.dtype = torch.float16, device: str | torch.device = "cpu") -> SonicUNet:
    model = build_sonic_unet(unet_config_for(path), device="meta")
    return load_weights_into(model, path, "unet", dtype=dtype, device=device).eval()


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def _need(shapes: dict, keys: list[str], path: Path, slot: str) -> None:
    """The keys a file must hold to be sized; if absent, say what the file is instead and what belongs here."""
    missing = [k for k in keys if k not in shapes]
    if missing:
        description, filename, _ = slot_names(slot)
        raise WeightFileError(f"{path} does not fit: expected {description} ({filename}), which "
                              f"has {', '.join(missing)}. {identity_hint(shapes, slot)}")


def load_audio2token(path: str | Path, whisper_channels: int, whisper_states: int) -> AudioToTokens:
    """audio2token sized from its weights: proj1 reads a 10-token window of every Whisper hidden state."""
    path = Path(path)
    shapes = _shapes(path)
    _need(shapes, ["proj1.weight", "proj3.weight", "norm.weight"], path, "audio2token")
    intermediate, flat = shapes["proj1.weight"]
    output_dim = shapes["norm.weight"][0]
    seq_len = flat // (whisper_states * whisper_channels)
    if seq_len * whisper_states * whisper_channels != flat:
        raise WeightFileError(f"{path}: audio2token reads {flat} values per frame, which does not fit a Whisper model "
                              f"with {whisper_states} hidden states of {whisper_channels} channels; "
                              "use whisper-tiny with the official audio2token.pth")
    config = dict(seq_len=seq_len, blocks=whisper_states, channels=whisper_channels, intermediate_dim=intermediate,
                  output_dim=output_dim, context_tokens=shapes["proj3.weight"][0] // output_dim)
    with torch.device("meta"):
        model = AudioToTokens(**config)
    return load_weights_into(model, path, "audio2token", dtype=torch.float32).eval()


def load_audio2bucket(path: str | Path, whisper_channels: int) -> AudioToBuckets:
    """audio2bucket sized from its weights: proj1 reads 50 last-layer tokens plus the CLIP embedding."""
    path = Path(path)
    shapes = _shapes(path)
    _need(shapes, ["proj1.weight", "proj3.weight"], path, "audio2bucket")
    if "norm.weight" in shapes:
        raise WeightFileError(f"{path} looks like audio2token.pth, not audio2bucket.pth: swap the two files.")
    intermediate, flat = shapes["proj1.weight"]
    clip_channels = flat - BUCKET_WINDOW * whisper_channels
    if clip_channels <= 0:
        raise WeightFileError(f"{path}: audio2bucket reads {flat} values, too few for {BUCKET_WINDOW} Whisper tokens "
                              f"of {whisper_channels} channels plus a CLIP embedding; use whisper-tiny")
    config = dict(seq_len=BUCKET_WINDOW, blocks=1, channels=whisper_channels, clip_channels=clip_channels,
                  intermediate_dim=intermediate, output_dim=1, context_tokens=shapes["proj3.weight"][0])
    with torch.device("meta"):
        model = AudioToBuckets(**config)
    return load_weights_into(model, path, "audio2bucket", dtype=torch.float32).eval()
