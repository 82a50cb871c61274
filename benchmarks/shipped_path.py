"""What a user's run goes through, built on random weights for the benchmarks: the Sonic MODEL (core BaseModel in a
ModelPatcher, comfy.ops layers) sampled by the Sonic guider under a core sampler (nodes/sampling.run_sonic_sampler),
then the pack's decode (core VAE) and RIFE. Shared by benchmarks/shipped_bench.py and benchmarks/vram_emulate.py.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pack_module(name: str) -> ModuleType:
    """A module of the pack as ComfyUI imports it (e.g. 'nodes.sampling'), ComfyUI imported first."""
    from tools.comfy_runtime import import_pack

    return importlib.import_module(f"{import_pack().__name__}.{name}")


def random_unet(config: dict | None, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The pack's Sonic UNet (None: SVD-xt) with small random weights, built straight on `device`."""
    unet = pack_module("sonic_model.unet.unet").build_sonic_unet(config, device="meta")
    unet = torch.nn.Module.to_empty(unet, device=device)
    with torch.no_grad():
        for tensor in (*unet.parameters(), *unet.buffers()):
            if tensor.is_floating_point():
                tensor.normal_(0, 0.02)
    return torch.nn.Module.to(unet, dtype=dtype).eval()


def sonic_model(unet: torch.nn.Module, low_vram: bool | None, compute_dtype: torch.dtype,
                weight_dtype: torch.dtype | None = None, compile: bool = False, compile_backend: str = "inductor"):
    """The core MODEL the loader makes of `unet` (load_sonic_models: fp8 storage, speed options, the patcher)."""
    native = pack_module("nodes.native_model")
    speed = pack_module("sonic_model.unet.speed")
    if weight_dtype is not None:
        native.store_weights_in(unet, weight_dtype)
    options = speed.speed_options_for(low_vram=bool(low_vram), compile=compile)
    speed.apply_speed_options(unet, compile=options.compile, attention_slices=options.attention_slices,
                              compile_backend=compile_backend)
    return native.sonic_model_patcher(unet, low_vram=low_vram, compute_dtype=compute_dtype)


@dataclass
class ClipInputs:
    """The three Sonic inputs of one clip as the nodes hand them to the sampler (on the intermediate device)."""

    audio: object
    image: object
    motion: object

    @property
    def frames(self) -> int:
        return self.audio.num_frames


def clip_inputs(frames: int, height: int, width: int, context_dim: int, tokens: int) -> ClipInputs:
    types = pack_module("nodes.sonic_types")
    g = torch.Generator().manual_seed(0)
    audio = types.SonicAudioEmbeds(tokens=torch.randn(frames, tokens, context_dim, generator=g),
                                   null_tokens=torch.randn(tokens, context_dim, generator=g),
                                   bucket_windows=torch.zeros(frames, 1, 1, 1), num_frames=frames)
    image = types.SonicImageEmbeds(concat_latent=torch.randn(1, 4, height // 8, width // 8, generator=g),
                                   image_embeds=torch.randn(1, context_dim, generator=g),
                                   face_mask=torch.ones(1, 1, height, width), image=torch.rand(1, height, width, 3))
    buckets = 16 + 16 * torch.rand(frames, 2, generator=g)
    return ClipInputs(audio, image, types.SonicMotionBuckets(buckets, buckets))


def sample(model, inputs: ClipInputs, steps: int, window: int = 25, shift: int = 7, seed: int = 0) -> tuple:
    """(latents, chosen sampling mode): the Sonic Shift-Fusion KSampler's own call (euler, karras, denoise 1)."""
    sampling = pack_module("nodes.sampling")
    report: dict = {}
    latents = sampling.run_sonic_sampler(model, inputs.audio, inputs.image, inputs.motion, seed, steps, 2.0, 7.5,
                                         shift, window, "euler", "karras", 1.0, report=report)
    return latents, report.get("mode", "?")


def load_vae(models: Path):
    """Core's VAE of the models folder's SVD checkpoint, read by core's loader as the Sonic loader reads it (without
    the CLIP vision model, which no measured phase uses)."""
    import comfy.sd

    path = sorted((models / "checkpoints").glob("svd_xt*.safetensors"))[0]
    return comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=False,
                                                 output_clipvision=False, output_model=False)[2]


def load_rife(models: Path):
    """RIFE in its core patcher, as the Sonic loader hands it to the nodes."""
    rife = pack_module("sonic_model.video.rife").load_rife(models / "sonic" / "RIFE" / "flownet.pkl")
    return pack_module("nodes.model_patchers").core_patcher(rife)


def decode(vae, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """The Sonic Decode node's work on `latents` (chunks of `chunk` frames through core's VAE)."""
    return pack_module("nodes.decode").decode_latents(vae, latents, chunk)


def interpolate(rife, frames: torch.Tensor, batch: int) -> torch.Tensor:
    """The Sonic Interpolate node's work (RIFE ×2 on the compute device, batch by batch; `rife`: its patcher)."""
    return pack_module("nodes.video").interpolate_images(rife, frames, batch)
