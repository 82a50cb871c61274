"""Frames → video: RIFE ×2, paste-back into the original picture, and the streaming "Decode + Save Video" node.

The pipeline itself (stages, their messages, the streaming write) is sonic_model.video.video_pipeline; this file brings
ComfyUI's devices, VAE, progress bar, Cancel and output folder to it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional, Union

import torch

import folder_paths
from comfy.cli_args import args
from comfy_api.latest import io, ui

from ..sonic_model.video.video_pipeline import PasteFaces, PasteInto, WrittenVideo, interpolate_all, paste_all, \
    write_video
from . import menu
from .decode import DEFAULT_CHUNK, check_latents, decode_chunk
from .host import ComfyHost
from .model_patchers import load_for_stage
from .sonic_types import GENERATION_FPS, SonicImage, SonicImageEmbeds, SonicModel

log = logging.getLogger(__name__)

RIFE_MISSING = "RIFE/flownet.pkl is not loaded — put it in models/sonic/RIFE/ or turn interpolation off"
INTERPOLATED_FPS = 2 * GENERATION_FPS  # 25


def rife_patcher(sonic_model: Any) -> Any:
    """RIFE's core patcher from the Sonic bundle, or the message that says how to get one."""
    if sonic_model is None:
        raise ValueError("Interpolation needs the sonic_model input (with RIFE loaded): connect it from "
                         "'Load SVD + Sonic weights' or turn interpolation off.")
    patcher = getattr(sonic_model, "rife_patcher", None)
    if patcher is None:
        raise ValueError(RIFE_MISSING)
    return patcher


def loaded_rife(patcher: Any, frame_hw: tuple[int, int], batch_size: int) -> Optional[torch.nn.Module]:
    """RIFE on ComfyUI's compute device for the stage, loaded by core (which keeps it there or offloads it later),
    with room for one batch of frame pairs beside it; None without a patcher."""
    if patcher is None:
        return None
    h, w = frame_hw
    return load_for_stage(patcher, batch_size * h * w * 3 * 4 * 64)  # ~64 frame-sized fp32 buffers per pair


def paste_function(image: Optional[SonicImageEmbeds], feather: int, host: ComfyHost) -> Optional[PasteInto]:
    """Paste-back into the original picture, or None when the reference was not cropped."""
    if image is None or image.crop_box is None or image.original is None:
        return None
    return PasteInto(image.original, image.crop_box, feather, host)


def save_sonic_video(vae: Any, samples: Union[torch.Tensor, list[torch.Tensor]], *,
                     rife: Any = None, image: Optional[SonicImageEmbeds] = None,
                     audio: Optional[dict] = None, feather: int = 16, chunk_size: int = DEFAULT_CHUNK,
                     filename_prefix: str = "sonic/Sonic", crf: int = 18, metadata: Optional[dict] = None,
                     node_id: Optional[str] = None, output_dir: Optional[str] = None,
                     faces: Optional[PasteFaces] = None) -> WrittenVideo:
    """video_pipeline.write_video with core's VAE, progress bar, Cancel and file numbering; `rife`: RIFE's core
    patcher (None: no interpolation). Several faces: a list of latents and `faces`, which pastes them all into one
    picture."""
    output_dir = output_dir or folder_paths.get_output_directory()

    def path_for(width: int, height: int) -> str:
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, output_dir, width, height)
        return os.path.join(folder, f"{name}_{counter:05}_.mp4")

    first = samples if isinstance(samples, torch.Tensor) else samples[0]
    frame_hw = (first.shape[-2] * 8, first.shape[-1] * 8)
    host = ComfyHost(node_id)
    if faces is not None:
        faces = dataclasses.replace(faces, host=host)  # the caller's paste stays as it was
    rife_net = loaded_rife(rife, frame_hw, chunk_size)
    written = write_video(samples, lambda latents: decode_chunk(vae, latents), path_for,
                          fps=INTERPOLATED_FPS if rife is not None else GENERATION_FPS, chunk_size=chunk_size,
                          rife=rife_net, paste=faces if faces is not None else paste_function(image, feather, host),
                          audio=None if audio is None else (audio["waveform"], audio["sample_rate"]), crf=crf,
                          metadata=metadata, host=host)
    return written


def interpolate_images(patcher: Any, images: torch.Tensor, batch_size: int = 8,
                       node_id: Optional[str] = None) -> torch.Tensor:
    """(N,H,W,3) → (2N−1,H,W,3) by RIFE (its core patcher, loaded for the stage), ComfyUI as the host."""
    model = loaded_rife(patcher, tuple(images.shape[1:3]), batch_size)
    return interpolate_all(images, model, batch_size, ComfyHost(node_id))


def paste_images(images: torch.Tensor, image: Optional[SonicImageEmbeds], feather: int) -> torch.Tensor:
    host = ComfyHost()
    paste = paste_function(image, feather, host)
    return images if paste is None else paste_all(images, paste, host=host)


FEATHER_TOOLTIP = "Width in pixels of the soft edge blending the animated crop into the original picture (0 = hard)."


class SonicInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicInterpolate",
            display_name="Sonic Frame Interpolation (RIFE ×2)",
            category=menu.VIDEO,
            description="Doubles the frame rate with RIFE as the official Sonic does: N frames at 12.5 fps become "
                        "2N−1 frames at 25 fps (a midpoint between each pair). Runs a batch at a time on the GPU; "
                        "results are kept on the CPU.",
            inputs=[
                SonicModel.Input("sonic_model", tooltip="From 'Load SVD + Sonic weights', with RIFE loaded."),
                io.Image.Input("images", tooltip="Decoded Sonic frames at 12.5 fps."),
                io.Int.Input("batch_size", default=8, min=1, max=64,
                             tooltip="Frame pairs interpolated per GPU call; lower it if VRAM is short."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="2N−1 frames: originals with midpoints between."),
                io.Float.Output(display_name="fps", tooltip="The new frame rate: 25.0."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, sonic_model, images, batch_size=8) -> io.NodeOutput:
        out = interpolate_images(rife_patcher(sonic_model), images, batch_size, node_id=cls.hidden.unique_id)
        return io.NodeOutput(out, INTERPOLATED_FPS)


class SonicPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicPasteBack",
            display_name="Sonic Paste Back",
            category=menu.VIDEO,
            description="Puts the animated face crop back into the full original picture, with a feathered edge; "
                        "everything outside the crop box stays exactly the original. When the reference image was "
                        "not cropped, the frames pass through unchanged.",
            inputs=[
                io.Image.Input("images", tooltip="Frames generated from the cropped reference (any frame rate)."),
                SonicImage.Input("image", tooltip="From 'Sonic Reference Image': holds the original and the crop box."),
                io.Int.Input("feather", default=16, min=0, max=256, tooltip=FEATHER_TOOLTIP),
            ],
            outputs=[io.Image.Output(display_name="images",
                                     tooltip="Frames at the original picture's resolution (unchanged if not "
                                             "cropped).")],
        )

    @classmethod
    def execute(cls, images, image, feather=16) -> io.NodeOutput:
        return io.NodeOutput(paste_images(images, image, feather))


def writer_inputs(prefix: str) -> list:
    """The inputs every Sonic node that writes an mp4 has, in this order: feather, chunk size, file name, quality."""
    return [
        io.Int.Input("feather", default=16, min=0, max=256, tooltip=FEATHER_TOOLTIP),
        io.Int.Input("decode_chunk_size", default=DEFAULT_CHUNK, min=1, max=64,
                     tooltip="Frames decoded together (official: 8). The temporal decoder mixes frames "
                             "within a chunk only; larger chunks need more VRAM."),
        io.String.Input("filename_prefix", default=prefix,
                        tooltip="File name prefix inside the output folder; a subfolder is allowed. A "
                                "counter is appended as core's Save Video does."),
        io.Int.Input("crf", default=18, min=0, max=51,
                     tooltip="H.264 quality: lower is better and bigger (official 18; 0 = lossless)."),
    ]


def saved_video_schema() -> dict:
    """The output, hidden inputs and output-node flag of every Sonic node that writes an mp4."""
    return dict(outputs=[io.String.Output(display_name="path", tooltip="Full path of the saved mp4.")],
                hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo], is_output_node=True)


INTERPOLATE_TOOLTIP = "RIFE ×2: 12.5 → 25 fps (official). Needs sonic_model with RIFE loaded."


class SonicSaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicSaveVideo",
            display_name="Sonic Decode + Save Video",
            category=menu.VIDEO,
            description="Decodes, interpolates (RIFE ×2), pastes back and encodes the video chunk by chunk straight "
                        "into an mp4 (H.264 + AAC) in the output folder, so long audio never runs out of memory at "
                        "the end. The audio is cut or padded to exactly the video's length. Cancel leaves no file.",
            inputs=[
                io.Vae.Input("vae", tooltip="SVD's VAE (from 'Load SVD + Sonic weights' or a checkpoint loader)."),
                io.Latent.Input("latent", tooltip="Latents from the Sonic sampler: one per frame at 12.5 fps."),
                SonicModel.Input("sonic_model", optional=True,
                                 tooltip="Needed for interpolation: the loaded RIFE model."),
                SonicImage.Input("image", optional=True,
                                 tooltip="From 'Sonic Reference Image': needed to paste a cropped face back into the "
                                         "original picture."),
                io.Audio.Input("audio", optional=True,
                               tooltip="The audio to mux in: the trimmed audio from 'Sonic Encode Audio'. More than "
                                       "two channels (5.1, 7.1) are downmixed to stereo (ITU-R BS.775)."),
                io.Boolean.Input("interpolate", default=True, tooltip=INTERPOLATE_TOOLTIP),
                io.Boolean.Input("paste_back", default=True,
                                 tooltip="Paste the animated crop back into the original picture (only when the "
                                         "reference image was cropped)."),
                *writer_inputs("sonic/Sonic"),
            ],
            **saved_video_schema(),
        )

    @classmethod
    def execute(cls, vae, latent, interpolate=True, paste_back=True, feather=16, decode_chunk_size=DEFAULT_CHUNK,
                filename_prefix="sonic/Sonic", crf=18, sonic_model=None, image=None, audio=None) -> io.NodeOutput:
        samples = check_latents(latent)
        rife = rife_patcher(sonic_model) if interpolate else None  # fail before any decoding
        saved = save_sonic_video(vae, samples, rife=rife, image=image if paste_back else None, audio=audio,
                                 feather=feather, chunk_size=decode_chunk_size, filename_prefix=filename_prefix,
                                 crf=crf, metadata=video_metadata(cls.hidden), node_id=cls.hidden.unique_id)
        return saved_video_output(saved)


def saved_video_output(saved: WrittenVideo) -> io.NodeOutput:
    """The path, and the video shown on the node as core's Save Video shows it."""
    log.info("Sonic: saved %s (%d frames at %g fps)", saved.path, saved.frames, saved.fps)
    folder, filename = os.path.split(saved.path)
    subfolder = os.path.relpath(folder, folder_paths.get_output_directory())
    return io.NodeOutput(saved.path, ui=ui.PreviewVideo([ui.SavedResult(
        filename, "" if subfolder == "." else subfolder, io.FolderType.output)]))


def video_metadata(hidden: Any) -> Optional[dict]:
    """The prompt and workflow, stored in the mp4 as core's Save Video does (so the file reloads the graph)."""
    if hidden is None or args.disable_metadata:
        return None
    metadata = dict(hidden.extra_pnginfo or {})
    if hidden.prompt is not None:
        metadata["prompt"] = hidden.prompt
    return metadata or None
