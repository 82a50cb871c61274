"""Full-size key manifests: our models built on the meta device must have exactly the official keys and shapes."""
from __future__ import annotations

import torch

from .common import Comparison


def identify(doc: object) -> str | None:
    """Which model a `{key: shape}` manifest describes, from its keys (None: not a key manifest)."""
    if not isinstance(doc, dict) or not doc:
        return None
    if not all(isinstance(v, list) and all(isinstance(d, int) for d in v) for v in doc.values()):
        return None
    keys = set(doc)
    if any(k.startswith("module.block0.") for k in keys):
        return "rife_flownet"
    if "conv_in.weight" in keys and any(".to_k_ip.0." in k for k in keys):
        return "sonic_unet"
    if {"proj1.weight", "proj3.weight", "norm.weight"} <= keys:
        return "audio2token"
    if {"proj1.weight", "proj3.weight"} <= keys:
        return "audio2bucket"
    return None


def _shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, list[int]]:
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


def our_shapes(model: str) -> dict[str, list[int]]:
    """Key → shape of our full-size model, built without allocating its weights."""
    if model == "sonic_unet":
        from sonic_model.unet.unet import sonic_unet_state_dict_shapes

        return sonic_unet_state_dict_shapes()
    with torch.device("meta"):
        if model == "audio2token":
            from sonic_model.audio.audio_adapters import AUDIO2TOKEN_CONFIG, AudioToTokens

            return _shapes(AudioToTokens(**AUDIO2TOKEN_CONFIG))
        if model == "audio2bucket":
            from sonic_model.audio.audio_adapters import AUDIO2BUCKET_CONFIG, AudioToBuckets

            return _shapes(AudioToBuckets(**AUDIO2BUCKET_CONFIG))
        if model == "rife_flownet":
            from sonic_model.video.rife import IFNet

            return _shapes(IFNet(), prefix="module.")  # flownet.pkl stores every key under `module.`
    raise ValueError(f"no builder for manifest model {model!r}")


def run(model: str, manifest: dict) -> list[Comparison]:
    ours = our_shapes(model)
    missing = sorted(set(manifest) - set(ours))
    extra = sorted(set(ours) - set(manifest))
    wrong = sorted(k for k in set(ours) & set(manifest) if ours[k] != list(manifest[k]))
    problems = len(missing) + len(extra) + len(wrong)
    note = f"{len(manifest)} keys"
    if problems:
        examples = [f"missing {k}" for k in missing[:3]] + [f"extra {k}" for k in extra[:3]]
        examples += [f"{k}: ours {ours[k]} vs {manifest[k]}" for k in wrong[:3]]
        note = f"{len(missing)} missing, {len(extra)} extra, {len(wrong)} wrong shape: " + "; ".join(examples)
    return [Comparison(f"{model} keys and shapes", float(problems), 0.0, 0.0, problems == 0, note)]
