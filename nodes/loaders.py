"""Load SVD + Sonic weights: core's VAE and CLIP vision from the user's SVD-xt checkpoint, Sonic's own files."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

import comfy.model_management as mm
import comfy.sd
from comfy_api.latest import io

from . import menu
from . import model_files
from .advanced import advanced
from .loader_settings import DEFAULTS, LoaderSettings, SonicSettings
from .native_model import sonic_model_patcher, store_weights_in
from .sonic_types import SonicModel, SonicModels

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def choose_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    return mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])


WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def low_vram_wanted(setting: str) -> bool | None:
    """True/False when the user (or ComfyUI's --lowvram) decides; None: the sampler picks from the free VRAM."""
    if setting != "auto":
        return setting == "on"
    return True if mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM) else None


def loader_speed_options(low_vram: bool):
    """The UNet runtime options the loader's settings ask for (low VRAM also slices the attention). Compiling is
    core's TorchCompileModel on the loader's MODEL, not a loader setting."""
    from ..sonic_model.unet.speed import speed_options_for  # diffusers: imported on first use, not at ComfyUI start

    return speed_options_for(low_vram=low_vram, compile=False)


def _stamp(path: Path | None) -> tuple:
    """Identifies a file's (or a folder's files') current contents cheaply: replacing a file changes its stamp."""
    if path is None:
        return (None,)
    if path.is_dir():
        return (str(path), *sorted(_stamp(f)[1:] + (f.name,) for f in path.iterdir() if f.is_file()))
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size)


def _checkpoint_stamp(checkpoint: str) -> tuple:
    path = model_files.svd_path(checkpoint) if checkpoint != model_files.NONE else None
    return _stamp(path) if path else (checkpoint,)


def _slot_stamps(names: dict[str, str]) -> tuple:
    """Stamps of the chosen Sonic files; a missing one is stamped by name (the loader then says where it goes)."""
    stamps = []
    for slot, name in names.items():
        try:
            stamps.append(_stamp(model_files.resolve(slot, name)))
        except FileNotFoundError:
            stamps.append(("missing", name))
    return tuple(stamps)


def _svd_parts(path: Path):
    """VAE and CLIP vision of an SVD single-file checkpoint through core's loader, without building its UNet."""
    checkpoint = path.name
    _, _, vae, clip_vision = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=False, output_clipvision=True, output_model=False)
    if vae is None or clip_vision is None:
        raise ValueError(f"{checkpoint} has no VAE or CLIP vision model: choose the SVD-xt checkpoint "
                         "(svd_xt.safetensors or svd_xt_1_1.safetensors), or connect vae and clip_vision.")
    return vae, clip_vision


def load_unet_patcher(unet: Path, dtype: torch.dtype, low_vram: bool | None,
                      weight_dtype: torch.dtype | None = None, load_device: torch.device | None = None):
    """The Sonic UNet from its file as a core MODEL loading on `load_device` (None: ComfyUI's device), able to build
    copies of itself for other GPUs (Sonic Devices; core's multi-GPU clones where core has them)."""
    from ..sonic_model.weights.model_loading import load_sonic_unet
    from ..sonic_model.unet.speed import apply_speed_options

    model = load_sonic_unet(unet, dtype=dtype, device=mm.unet_offload_device())
    if weight_dtype is not None:
        store_weights_in(model, weight_dtype)
    options = loader_speed_options(bool(low_vram))
    apply_speed_options(model, attention_slices=options.attention_slices)
    patcher = sonic_model_patcher(model, low_vram=low_vram, compute_dtype=dtype, load_device=load_device)
    recipe = (unet, dtype, low_vram, weight_dtype)
    patcher.model.rebuild = functools.partial(_rebuilt_on, recipe)
    if hasattr(patcher, "cached_patcher_init"):  # core's multi-GPU clones rebuild a model from its loader's recipe
        patcher.cached_patcher_init = (load_unet_patcher, recipe)
    return patcher


def _rebuilt_on(recipe: tuple, device: torch.device):
    return load_unet_patcher(*recipe, load_device=device)


def load_sonic_models(unet: Path, audio2token: Path, audio2bucket: Path, whisper: Path, face_detector: Path | None,
                      rife: Path | None, dtype: torch.dtype, low_vram: bool | None,
                      weight_dtype: torch.dtype | None = None) -> tuple[SonicModels, object]:
    """The Sonic bundle (audio models, face detector, RIFE) and the UNet as a core MODEL computing in `dtype`, its
    Linear/Conv weights stored in `weight_dtype` (fp8) when given."""
    # diffusers and transformers are imported here, on the first load, so ComfyUI starts without them.
    from ..sonic_model.weights.model_loading import load_audio2bucket, load_audio2token
    from ..sonic_model.video.rife import load_rife
    from ..sonic_model.audio.whisper_features import WhisperAudioEncoder

    patcher = load_unet_patcher(unet, dtype, low_vram, weight_dtype)
    encoder = WhisperAudioEncoder.from_folder(whisper)
    channels = encoder.encoder.config.d_model
    states = encoder.encoder.config.encoder_layers + 1
    detector = None
    if face_detector is not None:
        from ..sonic_model.image.face_detect import FaceDetector

        detector = FaceDetector.from_file(face_detector, device="cpu")
    models = SonicModels(audio2token=load_audio2token(audio2token, channels, states),
                         audio2bucket=load_audio2bucket(audio2bucket, channels), whisper=encoder,
                         face_detector=detector, rife=load_rife(rife) if rife is not None else None)
    return models, patcher


class SonicLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        checkpoints, svd_default = model_files.svd_choices()
        combo = {slot: model_files.choices(slot, optional=slot in model_files.OPTIONAL)
                 for slot in model_files.EXPECTED}

        def slot_input(slot: str, tooltip: str) -> io.Combo.Input:
            options, default = combo[slot]
            return io.Combo.Input(slot, options=options, default=default, tooltip=tooltip)

        return io.Schema(
            node_id="SonicLoader",
            display_name="Load SVD + Sonic weights",
            category=menu.LOADERS,
            description="Loads the Sonic UNet and audio models from models/sonic, and the VAE and CLIP vision from "
                        "your SVD-xt checkpoint through ComfyUI's own loader. Loaded models are reused while the "
                        "settings stay the same.",
            inputs=[
                io.Combo.Input("svd_checkpoint", options=checkpoints, default=svd_default,
                               tooltip="Your SVD-xt single-file checkpoint in models/checkpoints "
                                       "(svd_xt_1_1.safetensors or svd_xt.safetensors: either official name finds "
                                       "the other file). Only its VAE and CLIP vision are used. 'none' if you "
                                       "connect vae and clip_vision instead."),
                slot_input("unet", "The Sonic UNet, unet.pth in models/sonic (6.3 GB)."),
                slot_input("audio2token", "audio2token.pth in models/sonic: Whisper features → audio tokens."),
                slot_input("audio2bucket", "audio2bucket.pth in models/sonic: audio → head/expression motion."),
                slot_input("whisper", "The Whisper-tiny folder in models/sonic (openai/whisper-tiny)."),
                slot_input("face_detector", "yoloface_v5m.pt in models/sonic: finds the face for the mask and "
                                            "crop. 'none' animates the whole image."),
                slot_input("rife", "RIFE/flownet.pkl in models/sonic: doubles 12.5 fps to 25 fps. 'none' to skip."),
                SonicSettings.Input("settings", optional=True,
                                    tooltip="From 'Sonic Loader Settings': precision, weight storage and memory "
                                            "mode. Not connected: dtype auto, low_vram auto, weights stored in "
                                            "dtype. To compile, put core's TorchCompileModel after 'model'."),
                io.Vae.Input("vae", optional=True, **advanced(), tooltip="Optional VAE (SVD's); overrides the checkpoint's."),
                io.ClipVision.Input("clip_vision", optional=True, **advanced(),
                                    tooltip="Optional CLIP vision (ViT-H); overrides the checkpoint's."),
            ],
            outputs=[
                SonicModel.Output(display_name="sonic_model", tooltip="The Sonic models, for the other Sonic nodes."),
                io.Vae.Output(display_name="vae", tooltip="SVD's VAE (temporal decoder)."),
                io.ClipVision.Output(display_name="clip_vision", tooltip="SVD's CLIP vision encoder (ViT-H/14)."),
                io.Model.Output(display_name="model",
                                tooltip="The Sonic UNet as a core MODEL, for the Sonic KSampler or Sonic Guider."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, svd_checkpoint, unet, audio2token, audio2bucket, whisper, face_detector, rife,
                           **_) -> tuple:
        """A file replaced on disk under the same name makes ComfyUI run the loader again instead of reusing its
        cached output (its cache only compares the names)."""
        return (_checkpoint_stamp(svd_checkpoint),
                _slot_stamps(dict(unet=unet, audio2token=audio2token, audio2bucket=audio2bucket, whisper=whisper,
                                  face_detector=face_detector, rife=rife)))

    @classmethod
    def execute(cls, svd_checkpoint, unet, audio2token, audio2bucket, whisper, face_detector, rife,
                settings: LoaderSettings | None = None, vae=None, clip_vision=None) -> io.NodeOutput:
        paths = {slot: model_files.resolve(slot, name) for slot, name in
                 dict(unet=unet, audio2token=audio2token, audio2bucket=audio2bucket, whisper=whisper,
                      face_detector=face_detector, rife=rife).items()}
        for slot in ("unet", "audio2token", "audio2bucket", "whisper"):
            if paths[slot] is None:
                raise ValueError(f"Sonic needs {model_files.EXPECTED[slot]}: pick it in the '{slot}' input.")
        settings = settings or DEFAULTS
        torch_dtype = choose_dtype(settings.dtype, mm.get_torch_device())
        lean = low_vram_wanted(settings.low_vram)
        stored = WEIGHT_DTYPES[settings.weight_dtype]
        # No cache of our own: ComfyUI's output cache reuses this node's models while its inputs (and the files'
        # stamps, fingerprint_inputs) are unchanged, and "free model and node cache" gives their memory back.
        core_vae = core_clip = None
        needs_checkpoint = vae is None or clip_vision is None
        if needs_checkpoint and svd_checkpoint == model_files.NONE:
            raise ValueError("Choose your SVD-xt checkpoint in 'svd_checkpoint', or connect both vae and "
                             "clip_vision.")
        svd_path = model_files.resolve_svd(svd_checkpoint) if needs_checkpoint else None  # missing: say so now
        # Sonic's own files first: a wrong one is reported before the big SVD checkpoint is read.
        models, unet_model = load_sonic_models(paths["unet"], paths["audio2token"], paths["audio2bucket"],
                                               paths["whisper"], paths["face_detector"], paths["rife"], torch_dtype,
                                               lean, weight_dtype=stored)
        if needs_checkpoint:
            core_vae, core_clip = _svd_parts(svd_path)
        logging.info("Sonic: loaded models (%s, weights %s, low_vram=%s)", torch_dtype, stored or torch_dtype, lean)
        return io.NodeOutput(models, vae if vae is not None else core_vae,
                             clip_vision if clip_vision is not None else core_clip, unet_model)
