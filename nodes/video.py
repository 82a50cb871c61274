"""Frames → video: RIFE ×2, paste-back into the original picture, and the streaming "Decode + Save Video" node.

The save node never holds the clip: each decode chunk goes through RIFE, paste-back and the H.264 encoder and is
freed, so minutes of audio finish at the memory of a few chunks (spec §11.5, users' "OOM at 100 %").
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy.cli_args import args
from comfy_api.latest import io, ui

from ..sonic_model.paste_back import paste_back
from ..sonic_model.rife import iter_interpolated
from ..sonic_model.video_writer import StreamingMp4Writer
from .decode import DEFAULT_CHUNK, check_latents, iter_decode
from .sonic_types import GENERATION_FPS, SonicImage, SonicImageEmbeds, SonicModel

log = logging.getLogger(__name__)

RIFE_MISSING = "RIFE/flownet.pkl is not loaded — put it in models/sonic/RIFE/ or turn interpolation off"
INTERPOLATED_FPS = 2 * GENERATION_FPS  # 25


def rife_model(sonic_model: Any) -> torch.nn.Module:
    if sonic_model is None:
        raise ValueError("Interpolation needs the sonic_model input (with RIFE loaded): connect it from "
                         "'Load SVD + Sonic weights' or turn interpolation off.")
    model = getattr(sonic_model, "rife", None)
    if model is None:
        raise ValueError(RIFE_MISSING)
    return model


@contextmanager
def rife_on_device(model: torch.nn.Module, frame_hw: tuple[int, int], batch_size: int) -> Iterator[torch.device]:
    """RIFE on ComfyUI's compute device for the duration, then back to the offload device (it is not a
    ModelPatcher, so nothing else would move it)."""
    device = mm.get_torch_device()
    h, w = frame_hw
    if device.type != "cpu":
        mm.free_memory(batch_size * h * w * 3 * 4 * 64, device)  # ~64 frame-sized fp32 buffers per pair
    try:
        model.to(device)
        yield device
    except torch.OutOfMemoryError as error:  # torch's type: ComfyUI unloads its models when it sees it
        model.to(mm.unet_offload_device())
        mm.soft_empty_cache(True)
        raise torch.OutOfMemoryError(
            f"RIFE ran out of memory interpolating {w}×{h} frames {batch_size} pairs at a time. Lower batch_size "
            "(Sonic Interpolate) or decode_chunk_size (Sonic Save Video), lower the Reference Image resolution, "
            f"or turn interpolation off. ({error})") from None
    finally:
        model.to(mm.unet_offload_device())


def _frames(chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    for chunk in chunks:
        yield from chunk


def _groups(frames: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    group: list[torch.Tensor] = []
    for frame in frames:
        group.append(frame)
        if len(group) == size:
            yield torch.stack(group)
            group = []
    if group:
        yield torch.stack(group)


def _hold_last(frames: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    last = None
    for frame in frames:
        last = frame
        yield frame
    if last is not None:
        yield last


def stream_frames(chunks: Iterable[torch.Tensor], rife: Optional[torch.nn.Module] = None, batch_size: int = 8,
                  paste: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, hold_last: bool = False,
                  group_size: int = 16) -> Iterator[torch.Tensor]:
    """Chunks of frames (n,H,W,3) → batches ready to encode, lazily.

    With `rife`, frames become [f0, m01, f1, ..., f_{N-1}] exactly as `interpolate_x2` on the whole clip: the last
    frame of a chunk waits for the first of the next, so chunk borders are interpolated too. `hold_last` repeats
    the final frame once. `paste` maps each batch (e.g. into the original picture). At most about one decode chunk,
    one RIFE batch and one output group are alive at a time.
    """
    frames = iter_interpolated(chunks, rife, batch_size) if rife is not None else _frames(chunks)
    if hold_last:
        frames = _hold_last(frames)
    for group in _groups(frames, group_size):
        yield paste(group) if paste is not None else group


def paste_function(image: Optional[SonicImageEmbeds], feather: int) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Paste-back into the original picture, or None when the reference was not cropped."""
    if image is None or image.crop_box is None or image.original is None:
        return None
    return lambda frames: paste_back(frames, image.original, image.crop_box, feather)


def _audio_pair(audio: Optional[dict]) -> Optional[tuple[torch.Tensor, int]]:
    if audio is None:
        return None
    waveform = audio["waveform"]
    if waveform.dim() == 3:
        if waveform.shape[0] != 1:
            raise ValueError(f"The AUDIO input holds a batch of {waveform.shape[0]} clips; connect one clip.")
        waveform = waveform[0]
    return waveform, int(audio["sample_rate"])


@dataclass
class SavedVideo:
    path: str
    filename: str
    subfolder: str
    frames: int
    fps: float


def save_sonic_video(vae: Any, samples: torch.Tensor, *, rife: Optional[torch.nn.Module] = None,
                     image: Optional[SonicImageEmbeds] = None, audio: Optional[dict] = None, feather: int = 16,
                     chunk_size: int = DEFAULT_CHUNK, filename_prefix: str = "sonic/Sonic", crf: int = 18,
                     metadata: Optional[dict] = None, node_id: Optional[str] = None,
                     output_dir: Optional[str] = None) -> SavedVideo:
    """Decode → (RIFE ×2) → (paste-back) → mp4, chunk by chunk. Nothing is left on disk if anything fails or
    the run is cancelled. With RIFE the last frame is held one extra 25 fps frame, so each of the N generated
    frames lasts 80 ms and the video is exactly N/12.5 s long, like the trimmed audio."""
    output_dir = output_dir or folder_paths.get_output_directory()
    fps = INTERPOLATED_FPS if rife is not None else GENERATION_FPS
    with _maybe_rife(rife, samples, chunk_size):
        chunks = iter_decode(vae, samples, chunk_size, node_id=node_id)
        batches = stream_frames(chunks, rife, chunk_size, paste_function(image, feather), hold_last=rife is not None,
                                group_size=2 * chunk_size)
        try:
            first = next(batches, None)
            if first is None:
                raise ValueError("The latent decoded to no frames.")
            height, width = first.shape[1:3]
            folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir,
                                                                                   width, height)
            file = f"{name}_{counter:05}_.mp4"
            path = os.path.join(folder, file)
            with StreamingMp4Writer(path, width, height, fps, _audio_pair(audio), crf=crf,
                                    metadata=metadata) as writer:
                writer.write_frames(first)
                del first
                for batch in batches:
                    writer.write_frames(batch)
        finally:
            batches.close()  # stop the decode generator now, not at garbage collection
    return SavedVideo(path, file, subfolder, writer.frames_written, fps)


@contextmanager
def _maybe_rife(rife: Optional[torch.nn.Module], samples: torch.Tensor, chunk_size: int) -> Iterator[None]:
    if rife is None:
        yield
        return
    with rife_on_device(rife, (samples.shape[-2] * 8, samples.shape[-1] * 8), chunk_size):
        yield


def interpolate_images(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 8,
                       node_id: Optional[str] = None) -> torch.Tensor:
    """(N,H,W,3) → (2N−1,H,W,3) on mm.intermediate_device(), computed batch by batch on the compute device."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected IMAGE frames (N,H,W,3), got {tuple(images.shape)}")
    count = max(2 * images.shape[0] - 1, 0)
    out = torch.empty((count, *images.shape[1:]), dtype=torch.float32, device=mm.intermediate_device())
    bar = comfy.utils.ProgressBar(max(count, 1), node_id=node_id)
    with rife_on_device(model, tuple(images.shape[1:3]), batch_size):
        for i, frame in enumerate(iter_interpolated(images, model, batch_size)):
            out[i] = frame
            if i % (2 * batch_size) == 0 or i == count - 1:
                bar.update_absolute(i + 1, count)
                mm.throw_exception_if_processing_interrupted()
    return out


def paste_images(images: torch.Tensor, image: Optional[SonicImageEmbeds], feather: int,
                 batch: int = 16) -> torch.Tensor:
    paste = paste_function(image, feather)
    if paste is None:
        return images
    first = paste(images[:1])
    out = torch.empty((images.shape[0], *first.shape[1:]), dtype=torch.float32, device=mm.intermediate_device())
    out[:1] = first
    for start in range(1, images.shape[0], batch):
        out[start:start + batch] = paste(images[start:start + batch])
        mm.throw_exception_if_processing_interrupted()
    return out


_FEATHER_TOOLTIP = "Width in pixels of the soft edge blending the animated crop into the original picture (0 = hard)."


class SonicInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicInterpolate",
            display_name="Sonic Frame Interpolation (RIFE ×2)",
            category="Sonic",
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
        out = interpolate_images(rife_model(sonic_model), images, batch_size, node_id=cls.hidden.unique_id)
        return io.NodeOutput(out, INTERPOLATED_FPS)


class SonicPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicPasteBack",
            display_name="Sonic Paste Back",
            category="Sonic",
            description="Puts the animated face crop back into the full original picture, with a feathered edge; "
                        "everything outside the crop box stays exactly the original. When the reference image was "
                        "not cropped, the frames pass through unchanged.",
            inputs=[
                io.Image.Input("images", tooltip="Frames generated from the cropped reference (any frame rate)."),
                SonicImage.Input("image", tooltip="From 'Sonic Reference Image': holds the original and the crop box."),
                io.Int.Input("feather", default=16, min=0, max=256, tooltip=_FEATHER_TOOLTIP),
            ],
            outputs=[io.Image.Output(display_name="images",
                                     tooltip="Frames at the original picture's resolution (unchanged if not "
                                             "cropped).")],
        )

    @classmethod
    def execute(cls, images, image, feather=16) -> io.NodeOutput:
        return io.NodeOutput(paste_images(images, image, feather))


class SonicSaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicSaveVideo",
            display_name="Sonic Decode + Save Video",
            category="Sonic",
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
                               tooltip="The audio to mux in: the trimmed audio from 'Sonic Encode Audio'."),
                io.Boolean.Input("interpolate", default=True,
                                 tooltip="RIFE ×2: 12.5 → 25 fps (official). Needs sonic_model with RIFE loaded."),
                io.Boolean.Input("paste_back", default=True,
                                 tooltip="Paste the animated crop back into the original picture (only when the "
                                         "reference image was cropped)."),
                io.Int.Input("feather", default=16, min=0, max=256, tooltip=_FEATHER_TOOLTIP),
                io.Int.Input("decode_chunk_size", default=DEFAULT_CHUNK, min=1, max=64,
                             tooltip="Frames decoded together (official: 8). The temporal decoder mixes frames "
                                     "within a chunk only; larger chunks need more VRAM."),
                io.String.Input("filename_prefix", default="sonic/Sonic",
                                tooltip="File name prefix inside the output folder; a subfolder is allowed. A "
                                        "counter is appended as core's Save Video does."),
                io.Int.Input("crf", default=18, min=0, max=51,
                             tooltip="H.264 quality: lower is better and bigger (official 18; 0 = lossless)."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Full path of the saved mp4.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, vae, latent, interpolate=True, paste_back=True, feather=16, decode_chunk_size=DEFAULT_CHUNK,
                filename_prefix="sonic/Sonic", crf=18, sonic_model=None, image=None, audio=None) -> io.NodeOutput:
        samples = check_latents(latent)
        rife = rife_model(sonic_model) if interpolate else None  # fail before any decoding
        saved = save_sonic_video(vae, samples, rife=rife, image=image if paste_back else None, audio=audio,
                                 feather=feather, chunk_size=decode_chunk_size, filename_prefix=filename_prefix,
                                 crf=crf, metadata=_metadata(cls.hidden), node_id=cls.hidden.unique_id)
        log.info("Sonic: saved %s (%d frames at %g fps)", saved.path, saved.frames, saved.fps)
        return io.NodeOutput(saved.path,
                             ui=ui.PreviewVideo([ui.SavedResult(saved.filename, saved.subfolder,
                                                                io.FolderType.output)]))


def _metadata(hidden: Any) -> Optional[dict]:
    """The prompt and workflow, stored in the mp4 as core's Save Video does (so the file reloads the graph)."""
    if hidden is None or args.disable_metadata:
        return None
    metadata = dict(hidden.extra_pnginfo or {})
    if hidden.prompt is not None:
        metadata["prompt"] = hidden.prompt
    return metadata or None
