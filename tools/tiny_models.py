#!/usr/bin/env python
"""Write a complete models folder of random weights in the real file formats, for tests and the offline demo.

    .venv/bin/python tools/tiny_models.py OUT_DIR

OUT_DIR/checkpoints/svd_xt_random.safetensors   SVD-xt single file: full-size random VAE and CLIP vision (what the
                                                loader reads); the UNet tensors, which Sonic never reads, keep their
                                                key names but only the few shapes core's model detection looks at
OUT_DIR/sonic/unet.pth (+ unet.config.json)     a small Sonic UNet (its config beside it)
OUT_DIR/sonic/audio2token.pth, audio2bucket.pth small adapters sized for the small Whisper below
OUT_DIR/sonic/whisper-tiny/                     a small Whisper in the Hugging Face folder layout
OUT_DIR/sonic/RIFE/flownet.pkl                  full-size random RIFE (module.-prefixed keys)

The weights are untrained: everything runs through the real code paths, and the video is noise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEED = 20250101
CLIP_DIM = 1024  # ViT-H/14 projection: the UNet and bucket model must read it
TINY_UNET_CONFIG = {
    "sample_size": 8, "in_channels": 8, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [32, 64], "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 24,
    "layers_per_block": 1, "cross_attention_dim": CLIP_DIM, "transformer_layers_per_block": 1,
    "num_attention_heads": [2, 4], "num_frames": 5,
}
TINY_WHISPER = dict(d_model=8, encoder_layers=4, encoder_attention_heads=2, encoder_ffn_dim=16, decoder_layers=1,
                    decoder_attention_heads=2, decoder_ffn_dim=16, num_mel_bins=80, max_source_positions=1500,
                    max_target_positions=16)
AUDIO_TOKENS = 4
# openai/whisper-tiny's sizes, for full-size random sets (tools/gpu_check.py)
FULL_WHISPER = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, decoder_layers=4,
                    decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80, max_source_positions=1500,
                    max_target_positions=448)


def _fill(name: str, shape: torch.Size, g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Seeded random weights that keep activations in range: N(0, 1/fan_in) matrices, unit norms, small biases."""
    if len(shape) == 0 or name.endswith("mix_factor"):
        return torch.full(shape, 0.5, dtype=dtype)
    if name.endswith("bias"):
        return (0.02 * torch.randn(shape, generator=g)).to(dtype)
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    fan_in = math.prod(shape[1:])
    return (torch.randn(shape, generator=g) / math.sqrt(fan_in)).to(dtype)


def _random_state(shapes: dict[str, torch.Size], seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: _fill(k, s, g, dtype) for k, s in sorted(shapes.items())}


def _module_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def write_sonic_files(sonic: Path, full_size: bool = False) -> None:
    """The Sonic files; full_size: the released models' shapes (SVD-xt UNet in fp16, whisper-tiny, full adapters)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from sonic_model.audio.audio_adapters import AUDIO2BUCKET_CONFIG, AUDIO2TOKEN_CONFIG, AudioToBuckets, AudioToTokens
    from sonic_model.video.rife import IFNet
    from sonic_model.unet.unet import build_sonic_unet

    sonic.mkdir(parents=True, exist_ok=True)
    unet_config = None if full_size else TINY_UNET_CONFIG  # None: SVD-xt, the loader's default without a sidecar
    unet_shapes = _module_shapes(build_sonic_unet(unet_config, device="meta"))
    torch.save(_random_state(unet_shapes, SEED + 1, torch.float16 if full_size else torch.float32), sonic / "unet.pth")
    if unet_config is not None:
        (sonic / "unet.config.json").write_text(json.dumps(unet_config, indent=1))

    whisper = sonic / "whisper-tiny"
    whisper_config = FULL_WHISPER if full_size else TINY_WHISPER
    torch.manual_seed(SEED + 2)
    WhisperModel(WhisperConfig(**whisper_config)).save_pretrained(whisper)
    WhisperFeatureExtractor().save_pretrained(whisper)

    channels, states = whisper_config["d_model"], whisper_config["encoder_layers"] + 1
    with torch.device("meta"):
        if full_size:
            a2t, a2b = AudioToTokens(**AUDIO2TOKEN_CONFIG), AudioToBuckets(**AUDIO2BUCKET_CONFIG)
        else:
            a2t = AudioToTokens(seq_len=10, blocks=states, channels=channels, intermediate_dim=16,
                                output_dim=CLIP_DIM, context_tokens=AUDIO_TOKENS)
            a2b = AudioToBuckets(seq_len=50, blocks=1, channels=channels, clip_channels=CLIP_DIM,
                                 intermediate_dim=16, output_dim=1, context_tokens=2)
        rife = IFNet()
    torch.save(_random_state(_module_shapes(a2t), SEED + 3), sonic / "audio2token.pth")
    torch.save(_random_state(_module_shapes(a2b), SEED + 4), sonic / "audio2bucket.pth")
    (sonic / "RIFE").mkdir(exist_ok=True)
    rife_state = _random_state(_module_shapes(rife), SEED + 5)
    torch.save({"module." + k: v for k, v in rife_state.items()}, sonic / "RIFE" / "flownet.pkl")


def _svd_unet_skeleton(g: torch.Generator) -> dict[str, torch.Tensor]:
    """SVD-xt UNet key names; real shapes only where core's model detection reads them, 1 value elsewhere."""
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
                  num_classes="sequential", adm_in_channels=768, in_channels=8, out_channels=4, model_channels=320,
                  num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                  transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], channel_mult=[1, 2, 4, 4],
                  transformer_depth_middle=1, use_linear_in_transformer=True, context_dim=1024,
                  extra_ff_mix_layer=True, use_spatial_context=True, merge_strategy="learned_with_images",
                  merge_factor=0.0, video_kernel_size=[3, 1, 1], use_temporal_resblock=True,
                  use_temporal_attention=True, disable_temporal_crossattention=False)
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    with torch.device("meta"):
        unet = UNetModel(**model_config.unet_config, device="meta", operations=comfy.ops.disable_weight_init)
    shapes = {"model.diffusion_model." + k: v.shape for k, v in unet.state_dict().items()}

    class Recorder(dict):
        read: set = set()

        def __getitem__(self, key):
            self.read.add(key)
            return super().__getitem__(key)

    recorder = Recorder({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    comfy.model_detection.detect_unet_config(recorder, "model.diffusion_model.")
    return {k: _fill(k, s if k in recorder.read else torch.Size([1]), g, torch.float16) for k, s in shapes.items()}


def write_svd_checkpoint(path: Path) -> None:
    from safetensors.torch import save_file

    from tools.comfy_runtime import import_comfy

    import_comfy()
    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    g = torch.Generator().manual_seed(SEED + 6)
    encoder = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
               "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    decoder = dict(encoder, video_kernel_size=[3, 1, 1], alpha=0.0)
    with torch.device("meta"):  # core's own SVD VAE, exactly as comfy.sd.VAE builds it for this checkpoint
        vae = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": encoder},
            decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder", "params": decoder})
    clip_config = json.loads((Path(comfy.clip_model.__file__).parent / "clip_vision_config_h.json").read_text())
    clip = comfy.clip_model.CLIPVisionModelProjection(clip_config, torch.float16, "meta", comfy.ops.disable_weight_init)
    state = _svd_unet_skeleton(g)
    state.update({"first_stage_model." + k: _fill(k, v.shape, g, torch.float16)
                  for k, v in vae.state_dict().items()})
    # CLIP vision under SVD's prefix, in the Hugging Face key layout that core accepts there as well.
    prefix = "conditioner.embedders.0.open_clip.model.visual."
    state.update({prefix + k: _fill(k, v.shape, g, torch.float16) for k, v in clip.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def write_all(out: Path, with_svd: bool = True, full_size: bool = False) -> Path:
    write_sonic_files(out / "sonic", full_size)
    if with_svd:
        write_svd_checkpoint(out / "checkpoints" / "svd_xt_random.safetensors")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="models folder to write (ComfyUI layout: checkpoints/, sonic/)")
    parser.add_argument("--no-svd", action="store_true", help="skip the 1.5 GB SVD checkpoint")
    args = parser.parse_args(argv)
    start = time.time()
    write_all(args.out, with_svd=not args.no_svd)
    print(f"wrote random-weight models to {args.out} in {time.time() - start:.1f} s (untrained: output is noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
