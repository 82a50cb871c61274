"""The nodes run core's VAE and CLIP vision; tools/parity.py and the official pipeline use diffusers' temporal VAE and
transformers' CLIP. Same weights (the random SVD single file of tools/tiny_models.py, loaded by core exactly as the
loader does), same inputs, the nodes' own code paths: the outputs must agree.

Tolerances: everything runs in float32 on the CPU here, so the two implementations differ only in the order of their
float operations (attention kernels, fused group norms): 1e-4 absolute on pixels in [0, 1] and on latents, 1e-4
relative on the CLIP embedding.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tools.comfy_runtime import import_pack

import_pack()
import comfy.clip_model  # noqa: E402
import comfy.sd  # noqa: E402
from sonic_pack.nodes.decode import decode_chunk  # noqa: E402
from sonic_pack.nodes.image import prepare_sonic_image  # noqa: E402

VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
PIXEL_ATOL = LATENT_ATOL = 1e-4
EMBED_RTOL = 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Core's (ldm) VAE keys -> diffusers' AutoencoderKLTemporalDecoder keys
# ----------------------------------------------------------------------------------------------------------------

_RESNET = {"nin_shortcut": "conv_shortcut"}
# The decoder's temporal resnet is ldm's `time_stack` Sequential: norm at 0, conv at 2 (in) and 3 (out).
_TEMPORAL = {"time_stack.in_layers.0": "temporal_res_block.norm1", "time_stack.in_layers.2": "temporal_res_block.conv1",
             "time_stack.out_layers.0": "temporal_res_block.norm2", "time_stack.out_layers.3": "temporal_res_block.conv2",
             "mix_factor": "time_mixer.mix_factor"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _resnet(rest: str, temporal: bool) -> str:
    for old, new in _TEMPORAL.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    layer, _, param = rest.partition(".")
    layer = _RESNET.get(layer, layer)
    return f"spatial_res_block.{layer}.{param}" if temporal else f"{layer}.{param}"


def diffusers_vae_key(key: str, levels: int = 4) -> str:
    """One ldm key of SVD's VAE (without `first_stage_model.`) as diffusers names it."""
    part, _, rest = key.partition(".")
    decoder = part == "decoder"
    if m := re.fullmatch(r"(down|up)\.(\d+)\.block\.(\d+)\.(.+)", rest):
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])  # ldm numbers the up path bottom-up
        return f"{part}.{m[1]}_blocks.{level}.resnets.{m[3]}.{_resnet(m[4], decoder)}"
    if m := re.fullmatch(r"down\.(\d+)\.downsample\.(.+)", rest):
        return f"{part}.down_blocks.{m[1]}.downsamplers.0.{m[2]}"
    if m := re.fullmatch(r"up\.(\d+)\.upsample\.(.+)", rest):
        return f"{part}.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
    if m := re.fullmatch(r"mid\.block_(\d)\.(.+)", rest):
        return f"{part}.mid_block.resnets.{int(m[1]) - 1}.{_resnet(m[2], decoder)}"
    if m := re.fullmatch(r"mid\.attn_1\.(\w+)\.(\w+)", rest):
        return f"{part}.mid_block.attentions.0.{_ATTENTION[m[1]]}.{m[2]}"
    if rest.startswith("norm_out."):
        return f"{part}.conv_norm_out.{rest.removeprefix('norm_out.')}"
    if rest.startswith("conv_out.time_mix_conv."):
        return f"{part}.time_conv_out.{rest.removeprefix('conv_out.time_mix_conv.')}"
    return key


QUANT_IDENTITY = {"quant_conv.weight": torch.eye(8)[:, :, None, None], "quant_conv.bias": torch.zeros(8)}


def diffusers_vae_state(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(QUANT_IDENTITY)
    for key, value in checkpoint.items():
        if key.startswith(VAE_PREFIX):
            new = diffusers_vae_key(key.removeprefix(VAE_PREFIX))
            if ".mid_block.attentions." in new and value.dim() == 4:
                value = value[:, :, 0, 0]  # ldm's 1×1 conv projections are Linear layers in diffusers
            state[new] = value.float()
    return state


def test_the_key_map_covers_every_weight_both_ways(core_parts):
    core = core_parts[0].first_stage_model.state_dict()  # the VAE module core built from the checkpoint
    with torch.device("meta"):
        theirs = {k: v.shape for k, v in _svd_vae_class().state_dict().items()}
    mapped = {diffusers_vae_key(k): v.shape for k, v in core.items()}
    # diffusers has a 1×1 quant_conv after the encoder that ldm's SVD VAE lacks: it is set to the identity.
    assert len(mapped) == len(core) == 372 and mapped.keys() | QUANT_IDENTITY.keys() == theirs.keys()
    wrong = [k for k in mapped if mapped[k] != theirs[k] and mapped[k][:2] != theirs[k]]
    assert not wrong, wrong[:5]


def _svd_vae_class():
    from diffusers import AutoencoderKLTemporalDecoder

    # SVD-xt's vae/config.json: four levels of 128-512 channels, two resnets each, 4 latent channels.
    return AutoencoderKLTemporalDecoder(block_out_channels=(128, 256, 512, 512),
                                        down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2,
                                        latent_channels=4)


# ----------------------------------------------------------------------------------------------------------------
# The same weights on both sides
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tiny_models_dir) -> Path:
    return tiny_models_dir / "checkpoints" / "svd_xt_random.safetensors"


@pytest.fixture(scope="module")
def core_parts(checkpoint):
    """Core's VAE and CLIP vision, through the call the loader makes (nodes/loaders.py `_svd_parts`)."""
    _, _, vae, clip_vision = comfy.sd.load_checkpoint_guess_config(
        str(checkpoint), output_vae=True, output_clip=False, output_clipvision=True, output_model=False)
    return vae, clip_vision


@pytest.fixture(scope="module")
def references(checkpoint):
    """diffusers' temporal VAE and transformers' CLIP vision with the checkpoint's weights, in float32."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    weights = load_file(str(checkpoint))
    vae = _svd_vae_class()
    vae.load_state_dict(diffusers_vae_state(weights), strict=True)
    # Core's own ViT-H config file is in transformers' format; the tiny file stores the CLIP in transformers' key
    # layout under SVD's prefix (core accepts that too), so the key map is the identity after the prefix.
    config = json.loads((Path(comfy.clip_model.__file__).parent / "clip_vision_config_h.json").read_text())
    config = CLIPVisionConfig(**{k: v for k, v in config.items() if k in CLIPVisionConfig().to_dict()})
    clip = CLIPVisionModelWithProjection(config)
    clip_state = {k.removeprefix(CLIP_PREFIX): v.float() for k, v in weights.items() if k.startswith(CLIP_PREFIX)}
    missing, unexpected = clip.load_state_dict(clip_state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return vae.eval(), clip.eval()


def _portrait(height: int = 80, width: int = 64) -> torch.Tensor:
    """A smooth picture with texture, IMAGE layout (1, H, W, 3) in [0, 1]."""
    g = torch.Generator().manual_seed(7)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([x, y, (x + y) / 2], dim=-1)
    return (0.8 * base + 0.2 * torch.rand(height, width, 3, generator=g))[None].clamp(0, 1)


@pytest.fixture(scope="module")
def node_image(core_parts):
    """What Sonic Reference Image computes (no face detector: the whole picture)."""
    vae, clip_vision = core_parts
    models = SimpleNamespace(face_detector=None)
    return prepare_sonic_image(models, vae, clip_vision, _portrait(), resolution=64, no_face="whole image")


# ----------------------------------------------------------------------------------------------------------------
# Equivalence
# ----------------------------------------------------------------------------------------------------------------


def test_decode_equals_diffusers_temporal_decoder(core_parts, references):
    vae, _ = core_parts
    reference, _ = references
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 6, 6, generator=g) * 4  # unscaled latents of 2 frames (one decode chunk)
    ours = decode_chunk(vae, latents)
    with torch.no_grad():
        theirs = reference.decode(latents, num_frames=2).sample
    theirs = ((theirs + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert ours.shape == theirs.shape == (2, 48, 48, 3)
    inside = ((theirs > 0.01) & (theirs < 0.99)).float().mean()
    assert inside > 0.25, "most pixels clamped: the comparison would prove little"
    torch.testing.assert_close(ours, theirs, atol=PIXEL_ATOL, rtol=0)


def test_reference_latent_equals_diffusers_encoder_mode(node_image, references):
    reference, _ = references
    pixels = node_image.image.permute(0, 3, 1, 2)
    with torch.no_grad():
        theirs = reference.encode(pixels * 2 - 1).latent_dist.mode()
    assert node_image.concat_latent.shape == theirs.shape == (1, 4, 8, 8)
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(node_image.concat_latent, theirs, atol=LATENT_ATOL, rtol=0)


def test_clip_embedding_equals_transformers_processor_and_model(node_image, references):
    from transformers import CLIPImageProcessor

    _, clip = references
    processor = CLIPImageProcessor()  # SVD's feature_extractor: bicubic shortest side 224, centre crop, OpenAI norm
    rgb = (node_image.image[0] * 255).round().byte().numpy()
    official = Image.fromarray(rgb).resize((224, 224), Image.LANCZOS)  # the official squash to 224²
    inputs = processor(images=official, return_tensors="pt")
    with torch.no_grad():
        theirs = clip(pixel_values=inputs.pixel_values).image_embeds
    ours = node_image.image_embeds
    assert ours.shape == theirs.shape == (1, 1024)
    torch.testing.assert_close(ours, theirs, rtol=EMBED_RTOL, atol=EMBED_RTOL * float(theirs.abs().max()))
    assert np.isfinite(ours.numpy()).all()
