"""Latents → mp4 without holding the clip: chunked decode → RIFE ×2 → paste-back → H.264 + AAC, one chunk at a time.

Each chunk goes through every stage and is freed, so minutes of audio finish at the memory of a few chunks
(`docs/official-behaviour.md` §8, users' "OOM at 100 %"). The host brings the VAE decode and the progress/Cancel
as a callable and the rest of what it needs from its host (progress, Cancel, devices) as a `Host`; nothing here
knows ComfyUI. Every stage explains its own failure: an out-of-memory error says
which stage ran out and what to lower there, and an error writing the file says what to fix (write_errors: full
disk, read-only folder ...), whatever stage pulled the frames through.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Union

import torch

from ..host import OUT_OF_MEMORY, Host, Progress, explained, retried_once
from .chunked_decode import chunk_bounds, iter_decoded_chunks
from .paste_back import face_owners, paste_back, paste_faces
from .rife import iter_interpolated
from .video_writer import StreamingMp4Writer
from .write_errors import write_failed

log = logging.getLogger(__name__)

Frames = torch.Tensor  # (n, H, W, 3) float in [0, 1]


def decode_out_of_memory(frames: int, width: int, height: int) -> str:
    return (f"Sonic decode ran out of memory on a chunk of {frames} frames at {width}×{height}. The temporal decoder "
            "must see the whole chunk, so it is not tiled: lower decode_chunk_size (fewer frames mixed together; "
            "pixels change slightly) or the resolution, or close other models. Sampling is cached, so a re-run only "
            "redoes the decode.")


def rife_out_of_memory(width: int, height: int, pairs: int) -> str:
    return (f"RIFE ran out of memory interpolating {width}×{height} frames {pairs} pairs at a time. Lower batch_size "
            "(Sonic Interpolate) or decode_chunk_size (Sonic Save Video), lower the Reference Image resolution, or "
            "turn interpolation off.")


def paste_out_of_memory(frames: int, original_width: int, original_height: int) -> str:
    return (f"Paste-back ran out of memory putting {frames} frames into the {original_width}×{original_height} "
            "original picture. Lower decode_chunk_size, or turn paste_back off (the video is then the cropped "
            "face).")


def decoded_chunks(latents: torch.Tensor, chunk_size: int, decode: Callable[[torch.Tensor], Frames],
                   host: Host = Host(), progress: Optional[Progress] = None) -> Iterator[Frames]:
    """Frames of latents (N, 4, h, w), `chunk_size` latents per `decode` call (the temporal decoder mixes exactly
    one call's frames). After each chunk `progress` (one of the host's; by default a count of these chunks) counts
    it, with its last frame as the preview, and checks Cancel. A chunk that runs out of memory is decoded once more after the host empties its
    cache, then explained."""
    height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
    if progress is None:
        progress = host.progress(len(chunk_bounds(latents.shape[0], chunk_size)))

    def decode_explained(chunk: torch.Tensor) -> Frames:
        with explained(host, lambda _: decode_out_of_memory(chunk.shape[0], width, height)):
            return retried_once(host, lambda: decode(chunk), lambda: log.warning(
                "Sonic decode: out of memory on a %d-frame chunk; emptying the cache and retrying once.",
                chunk.shape[0]))

    for _, frames in iter_decoded_chunks(latents, chunk_size, decode_explained):
        progress(progress.done + 1, None, frames[-1])
        yield frames


def interpolated(frames: Union[torch.Tensor, Iterable[Frames]], rife: torch.nn.Module,
                 batch_size: int, host: Host = Host()) -> Iterator[Frames]:
    """RIFE ×2 over an (N,H,W,3) tensor or chunks of frames (iter_interpolated), its out-of-memory errors explained
    with the frame size it was working on."""
    size: list[tuple[int, int]] = []

    def watched() -> Iterator[Frames]:
        for chunk in [frames] if isinstance(frames, torch.Tensor) else frames:
            if not size:
                size.append((chunk.shape[-2], chunk.shape[-3]))
            yield chunk

    with explained(host, lambda _: rife_out_of_memory(*(size[0] if size else (0, 0)), batch_size)):
        yield from iter_interpolated(watched(), rife, batch_size)


def _groups(frames: Iterator[Frames], size: int) -> Iterator[Frames]:
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


def _single_frames(chunks: Iterable[Frames]) -> Iterator[torch.Tensor]:
    for chunk in chunks:
        yield from chunk


@dataclass
class PasteInto:
    """Paste-back of generated frames into the original picture (paste_back.paste_back), out of memory explained."""

    original: torch.Tensor             # (1, H0, W0, 3)
    crop_box: tuple[int, int, int, int]
    feather: int = 16
    host: Host = field(default_factory=Host)

    def __call__(self, frames: Frames) -> Frames:
        height, width = self.original.shape[1:3]
        with explained(self.host, lambda _: paste_out_of_memory(frames.shape[0], width, height)):
            return paste_back(frames, self.original, self.crop_box, self.feather)


@dataclass
class PasteFaces:
    """Several faces' frames pasted into one copy of the original picture (paste_back.paste_faces): each crop box
    in the original's pixels, each face's centre deciding who owns the pixels where boxes overlap."""

    original: torch.Tensor             # (1, H0, W0, 3)
    crop_boxes: Sequence[tuple[int, int, int, int]]
    centres: Sequence[tuple[float, float]]
    feather: int = 16
    host: Host = field(default_factory=Host)

    def __post_init__(self) -> None:
        self.owners = face_owners(self.crop_boxes, self.centres, tuple(self.original.shape[1:3]))

    def __call__(self, frames: Sequence[Frames]) -> Frames:
        height, width = self.original.shape[1:3]
        with explained(self.host, lambda _: paste_out_of_memory(frames[0].shape[0] * len(frames), width, height)):
            return paste_faces(frames, self.original, self.crop_boxes, self.owners, self.feather)


def stream_frames(chunks: Iterable[Frames], rife: Optional[torch.nn.Module] = None, batch_size: int = 8,
                  paste: Optional[PasteInto] = None, hold_last: bool = False,
                  group_size: int = 16, host: Host = Host()) -> Iterator[Frames]:
    """Chunks of frames (n,H,W,3) → batches ready to encode, lazily.

    With `rife`, frames become [f0, m01, f1, ..., f_{N-1}] exactly as `interpolate_x2` on the whole clip: the last
    frame of a chunk waits for the first of the next, so chunk borders are interpolated too. `hold_last` repeats
    the final frame once. `paste` maps each batch (e.g. into the original picture). At most about one decode chunk,
    one RIFE batch and one output group are alive at a time.
    """
    frames = interpolated(chunks, rife, batch_size, host) if rife is not None else _single_frames(chunks)
    if hold_last:
        frames = _hold_last(frames)
    for group in _groups(frames, group_size):
        yield paste(group) if paste is not None else group


@dataclass
class WrittenVideo:
    path: str
    frames: int
    fps: Fraction


def _composed(faces: list[Iterator[Frames]], paste: Callable[[list[Frames]], Frames]) -> Iterator[Frames]:
    try:
        for groups in zip(*faces):  # every face has the same frames, so the groups line up
            yield paste(list(groups))
    finally:
        for face in faces:
            face.close()


def frame_batches(latents: Union[torch.Tensor, Sequence[torch.Tensor]], decode: Callable[[torch.Tensor], Frames],
                  chunk_size: int, rife: Optional[torch.nn.Module], paste: Optional[Callable],
                  host: Host = Host()) -> Iterator[Frames]:
    """Batches of finished frames, lazily: one face's latents through decode → RIFE → paste, or a list of faces'
    latents (same frame count) each decoded and interpolated in step, one group of each composed by `paste`
    (a PasteFaces) into one picture. One progress count covers every face's decoded chunks."""
    hold = rife is not None
    faces = [latents] if isinstance(latents, torch.Tensor) else list(latents)
    if not isinstance(latents, torch.Tensor) and (paste is None or len({int(f.shape[0]) for f in faces}) != 1):
        raise ValueError("Several faces need a paste into one picture and the same number of frames each.")
    progress = host.progress(len(chunk_bounds(faces[0].shape[0], chunk_size)) * len(faces))
    streams = [stream_frames(decoded_chunks(face, chunk_size, decode, host, progress), rife, chunk_size,
                             paste if isinstance(latents, torch.Tensor) else None, hold_last=hold,
                             group_size=2 * chunk_size, host=host) for face in faces]
    return streams[0] if isinstance(latents, torch.Tensor) else _composed(streams, paste)


def write_video(latents: Union[torch.Tensor, Sequence[torch.Tensor]], decode: Callable[[torch.Tensor], Frames],
                path_for: Callable[[int, int], str], *, fps: Union[Fraction, float], chunk_size: int = 8,
                rife: Optional[torch.nn.Module] = None, paste: Optional[Union[PasteInto, PasteFaces]] = None,
                audio: Optional[tuple[torch.Tensor, int]] = None, crf: int = 18, metadata: Optional[dict] = None,
                host: Host = Host()) -> WrittenVideo:
    """Decode → (RIFE ×2) → (paste-back) → mp4, chunk by chunk. `path_for(width, height)` names the file once the
    first frames' size is known. Nothing is left on disk if anything fails or the run is cancelled. With RIFE the
    last frame is held one extra frame, so each of the N generated frames lasts two output frames and the video is
    exactly as long as N frames at half `fps`, like the trimmed audio. A list of latents (several faces, with a
    PasteFaces) streams every face in step into one video of the whole picture."""
    batches = frame_batches(latents, decode, chunk_size, rife, paste, host)
    try:
        first = next(batches, None)
        if first is None:
            raise ValueError("The latent decoded to no frames.")
        height, width = first.shape[1:3]
        with explained(host, _folder_failed, (OSError,)):
            path = path_for(width, height)  # the host may create the folder here
        writer = StreamingMp4Writer(path, width, height, fps, audio, crf=crf, metadata=metadata)
        frames = _frame_count(latents) * (2 if rife is not None else 1)
        with explained(host, lambda error: write_failed(path, error, writer.bytes_written, _full_size(writer, frames)),
                       OUT_OF_MEMORY + (OSError,)):
            with writer:
                writer.write_frames(first)
                del first
                for batch in batches:
                    writer.write_frames(batch)
    finally:
        batches.close()  # stop the decode generators now, not at garbage collection
    return WrittenVideo(path, writer.frames_written, writer.fps)


def _frame_count(latents: Union[torch.Tensor, Sequence[torch.Tensor]]) -> int:
    return int((latents if isinstance(latents, torch.Tensor) else latents[0]).shape[0])


def _full_size(writer: StreamingMp4Writer, frames: int) -> Optional[int]:
    """The whole video's size in bytes, extrapolated from what the encoders had produced when the write failed."""
    if not writer.frames_encoded:
        return None
    return round(writer.bytes_encoded * max(frames, writer.frames_encoded) / writer.frames_encoded)


def _folder_failed(error: BaseException) -> str:
    folder = str(getattr(error, "filename", None) or "(the output folder)")
    return write_failed(folder, error, folder=folder)


def interpolate_all(images: Frames, rife: torch.nn.Module, batch_size: int = 8, host: Host = Host()) -> Frames:
    """(N,H,W,3) → (2N−1,H,W,3) on the host's offload device, computed `batch_size` pairs at a time where RIFE is;
    progress and Cancel every two batches."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected IMAGE frames (N,H,W,3), got {tuple(images.shape)}")
    count = max(2 * images.shape[0] - 1, 0)
    out = torch.empty((count, *images.shape[1:]), dtype=torch.float32, device=host.offload_device)
    progress = host.progress(count)
    for i, frame in enumerate(interpolated(images, rife, batch_size, host)):
        out[i] = frame
        if i % (2 * batch_size) == 0 or i == count - 1:
            progress(i + 1)
    return out


def paste_all(images: Frames, paste: PasteInto, batch: int = 16, host: Host = Host()) -> Frames:
    """Every frame pasted into the original picture, `batch` frames at a time, into one tensor on the host's offload
    device; Cancel between batches."""
    first = paste(images[:1])
    out = torch.empty((images.shape[0], *first.shape[1:]), dtype=torch.float32, device=host.offload_device)
    out[:1] = first
    for start in range(1, images.shape[0], batch):
        out[start:start + batch] = paste(images[start:start + batch])
        host.check_cancel()
    return out
