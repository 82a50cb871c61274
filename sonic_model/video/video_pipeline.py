"""Latents → mp4 without holding the clip: chunked decode → RIFE ×2 → paste-back → H.264 + AAC, one chunk at a time.

Each chunk goes through every stage and is freed, so minutes of audio finish at the memory of a few chunks
(`docs/official-behaviour.md` §8, users' "OOM at 100 %"). The host brings the VAE decode and the progress/Cancel
hook as callables; nothing here knows ComfyUI. Every stage explains its own failure: an out-of-memory error says
which stage ran out and what to lower there, and an error writing the file says what to fix (write_errors: full
disk, read-only folder ...), whatever stage pulled the frames through.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Union

import torch

from .chunked_decode import chunk_bounds, iter_decoded_chunks
from .paste_back import face_owners, paste_back, paste_faces
from .rife import iter_interpolated
from .video_writer import StreamingMp4Writer
from .write_errors import write_failed

Frames = torch.Tensor  # (n, H, W, 3) float in [0, 1]
OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)
_STAGE = "sonic_stage"  # set on an error once a stage has explained it, so no later stage re-labels it


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


@contextmanager
def explained(message: Callable[[BaseException], str],
              kinds: tuple[type[BaseException], ...] = OUT_OF_MEMORY) -> Iterator[None]:
    """Re-raise an error of `kinds` (out-of-memory errors, OSError) raised inside with this stage's message, unless
    an earlier stage already explained it. Out of memory is raised as torch's type, which ComfyUI answers by freeing
    models; anything else as a plain OSError (PyAV's own error types take other constructor arguments)."""
    try:
        yield
    except kinds as error:
        if getattr(error, _STAGE, False):
            raise
        kind = torch.OutOfMemoryError if isinstance(error, OUT_OF_MEMORY) else OSError
        explained_error = kind(message(error))
        setattr(explained_error, _STAGE, True)
        raise explained_error from error


def decoded_chunks(latents: torch.Tensor, chunk_size: int, decode: Callable[[torch.Tensor], Frames],
                   on_chunk: Optional[Callable[[int, int, Frames], None]] = None) -> Iterator[Frames]:
    """Frames of latents (N, 4, h, w), `chunk_size` latents per `decode` call (the temporal decoder mixes exactly
    one call's frames). `on_chunk(done, total, frames)` runs after each chunk: progress, preview, Cancel."""
    total = len(chunk_bounds(latents.shape[0], chunk_size))
    height, width = latents.shape[-2] * 8, latents.shape[-1] * 8

    def decode_explained(chunk: torch.Tensor) -> Frames:
        with explained(lambda _: decode_out_of_memory(chunk.shape[0], width, height)):
            return decode(chunk)

    for index, (_, frames) in enumerate(iter_decoded_chunks(latents, chunk_size, decode_explained), start=1):
        if on_chunk is not None:
            on_chunk(index, total, frames)
        yield frames


def interpolated(frames: Union[torch.Tensor, Iterable[Frames]], rife: torch.nn.Module,
                 batch_size: int) -> Iterator[Frames]:
    """RIFE ×2 over an (N,H,W,3) tensor or chunks of frames (iter_interpolated), its out-of-memory errors explained
    with the frame size it was working on."""
    size: list[tuple[int, int]] = []

    def watched() -> Iterator[Frames]:
        for chunk in [frames] if isinstance(frames, torch.Tensor) else frames:
            if not size:
                size.append((chunk.shape[-2], chunk.shape[-3]))
            yield chunk

    with explained(lambda _: rife_out_of_memory(*(size[0] if size else (0, 0)), batch_size)):
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

    def __call__(self, frames: Frames) -> Frames:
        height, width = self.original.shape[1:3]
        with explained(lambda _: paste_out_of_memory(frames.shape[0], width, height)):
            return paste_back(frames, self.original, self.crop_box, self.feather)


@dataclass
class PasteFaces:
    """Several faces' frames pasted into one copy of the original picture (paste_back.paste_faces): each crop box
    in the original's pixels, each face's centre deciding who owns the pixels where boxes overlap."""

    original: torch.Tensor             # (1, H0, W0, 3)
    crop_boxes: Sequence[tuple[int, int, int, int]]
    centres: Sequence[tuple[float, float]]
    feather: int = 16

    def __post_init__(self) -> None:
        self.owners = face_owners(self.crop_boxes, self.centres, tuple(self.original.shape[1:3]))

    def __call__(self, frames: Sequence[Frames]) -> Frames:
        height, width = self.original.shape[1:3]
        with explained(lambda _: paste_out_of_memory(frames[0].shape[0] * len(frames), width, height)):
            return paste_faces(frames, self.original, self.crop_boxes, self.owners, self.feather)


def stream_frames(chunks: Iterable[Frames], rife: Optional[torch.nn.Module] = None, batch_size: int = 8,
                  paste: Optional[PasteInto] = None, hold_last: bool = False,
                  group_size: int = 16) -> Iterator[Frames]:
    """Chunks of frames (n,H,W,3) → batches ready to encode, lazily.

    With `rife`, frames become [f0, m01, f1, ..., f_{N-1}] exactly as `interpolate_x2` on the whole clip: the last
    frame of a chunk waits for the first of the next, so chunk borders are interpolated too. `hold_last` repeats
    the final frame once. `paste` maps each batch (e.g. into the original picture). At most about one decode chunk,
    one RIFE batch and one output group are alive at a time.
    """
    frames = interpolated(chunks, rife, batch_size) if rife is not None else _single_frames(chunks)
    if hold_last:
        frames = _hold_last(frames)
    for group in _groups(frames, group_size):
        yield paste(group) if paste is not None else group


@dataclass
class WrittenVideo:
    path: str
    frames: int
    fps: Fraction


def _progress_over(on_chunk: Optional[Callable[[int, int, Frames], None]],
                   streams: int) -> Optional[Callable[[int, int, Frames], None]]:
    """One progress count over every face's decoded chunks."""
    if on_chunk is None:
        return None
    done = [0]

    def counted(_: int, total: int, frames: Frames) -> None:
        done[0] += 1
        on_chunk(done[0], total * streams, frames)

    return counted


def _composed(faces: list[Iterator[Frames]], paste: Callable[[list[Frames]], Frames]) -> Iterator[Frames]:
    try:
        for groups in zip(*faces):  # every face has the same frames, so the groups line up
            yield paste(list(groups))
    finally:
        for face in faces:
            face.close()


def frame_batches(latents: Union[torch.Tensor, Sequence[torch.Tensor]], decode: Callable[[torch.Tensor], Frames],
                  chunk_size: int, rife: Optional[torch.nn.Module], paste: Optional[Callable],
                  on_chunk: Optional[Callable[[int, int, Frames], None]] = None) -> Iterator[Frames]:
    """Batches of finished frames, lazily: one face's latents through decode → RIFE → paste, or a list of faces'
    latents (same frame count) each decoded and interpolated in step, one group of each composed by `paste`
    (a PasteFaces) into one picture."""
    hold = rife is not None
    if isinstance(latents, torch.Tensor):
        chunks = decoded_chunks(latents, chunk_size, decode, on_chunk)
        return stream_frames(chunks, rife, chunk_size, paste, hold_last=hold, group_size=2 * chunk_size)
    if paste is None or len({int(face.shape[0]) for face in latents}) != 1:
        raise ValueError("Several faces need a paste into one picture and the same number of frames each.")
    progress = _progress_over(on_chunk, len(latents))
    faces = [stream_frames(decoded_chunks(face, chunk_size, decode, progress), rife, chunk_size, None,
                           hold_last=hold, group_size=2 * chunk_size) for face in latents]
    return _composed(faces, paste)


def write_video(latents: Union[torch.Tensor, Sequence[torch.Tensor]], decode: Callable[[torch.Tensor], Frames],
                path_for: Callable[[int, int], str], *, fps: Union[Fraction, float], chunk_size: int = 8,
                rife: Optional[torch.nn.Module] = None, paste: Optional[Union[PasteInto, PasteFaces]] = None,
                audio: Optional[tuple[torch.Tensor, int]] = None, crf: int = 18, metadata: Optional[dict] = None,
                on_chunk: Optional[Callable[[int, int, Frames], None]] = None) -> WrittenVideo:
    """Decode → (RIFE ×2) → (paste-back) → mp4, chunk by chunk. `path_for(width, height)` names the file once the
    first frames' size is known. Nothing is left on disk if anything fails or the run is cancelled. With RIFE the
    last frame is held one extra frame, so each of the N generated frames lasts two output frames and the video is
    exactly as long as N frames at half `fps`, like the trimmed audio. A list of latents (several faces, with a
    PasteFaces) streams every face in step into one video of the whole picture."""
    batches = frame_batches(latents, decode, chunk_size, rife, paste, on_chunk)
    try:
        first = next(batches, None)
        if first is None:
            raise ValueError("The latent decoded to no frames.")
        height, width = first.shape[1:3]
        with explained(_folder_failed, (OSError,)):
            path = path_for(width, height)  # the host may create the folder here
        writer = StreamingMp4Writer(path, width, height, fps, audio, crf=crf, metadata=metadata)
        frames = _frame_count(latents) * (2 if rife is not None else 1)
        with explained(lambda error: write_failed(path, error, writer.bytes_written, _full_size(writer, frames)),
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
