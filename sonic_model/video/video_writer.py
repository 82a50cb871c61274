"""Stream frames into an H.264 + AAC mp4 as they are produced, so a long video never sits in memory.

Fixes of the official writer (`docs/official-behaviour.md` §7): one lossy encode, float → uint8 by rounding (not
truncation), and the audio cut or padded to exactly the video's length instead of `-shortest` dropping the tail. The
file appears under its final name only when everything was written: a failure or a Cancel leaves nothing behind, and
the partial file of a run killed mid-write is deleted by the next write into that folder (partial_files).
"""
from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Optional, Union

import torch

from ..audio.audio_clip import stereo_clip
from .partial_files import PartialFile, remove_stale_partials
from ..pixels import to_uint8

log = logging.getLogger(__name__)

Audio = tuple[torch.Tensor, int]  # waveform (C, T) float in [-1, 1], sample rate


def as_fraction(fps: Union[Fraction, float, int]) -> Fraction:
    """Frame rate as a Fraction; floats are read to 1/1000 fps as ComfyUI's own video writer does (12.5 → 25/2)."""
    if isinstance(fps, Fraction):
        rate = fps
    else:
        rate = Fraction(round(float(fps) * 1000), 1000)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate




class StreamingMp4Writer:
    """Context manager: `write_frames` encodes at once; the audio is interleaved and sized to the frames at exit.

    width/height must be even for yuv420p: an odd side is cropped by one pixel at the right/bottom (as the official
    `keep_resolution` rounds down to even). The audio waveform (C, T) is downmixed to stereo when it has more
    channels, and cut or zero-padded so that it lasts exactly frames/fps seconds. `metadata` (e.g. ComfyUI's prompt and workflow) is stored as JSON tags.
    """

    def __init__(self, path: Union[str, Path], width: int, height: int, fps: Union[Fraction, float],
                 audio: Optional[Audio] = None, crf: int = 18, metadata: Optional[dict] = None,
                 preset: str = "medium") -> None:
        self.path = Path(path)
        self.fps = as_fraction(fps)
        self.width, self.height = int(width), int(height)
        if self.width < 2 or self.height < 2:
            raise ValueError(f"video frames must be at least 2×2 pixels, got {self.width}×{self.height}")
        self.out_width, self.out_height = self.width - self.width % 2, self.height - self.height % 2
        if (self.out_width, self.out_height) != (self.width, self.height):
            log.warning("Sonic video writer: %d×%d is not even (H.264 yuv420p needs even sides); writing %d×%d, "
                        "one pixel cropped at the right/bottom.", self.width, self.height, self.out_width,
                        self.out_height)
        self.crf = int(crf)
        self.preset = preset
        self.metadata = metadata
        self.audio = _check_audio(audio)
        self.frames_written = 0
        # What the encoders have handed back (x264 holds a few dozen frames back): sizes a full disk's message
        self.frames_encoded = 0
        self.bytes_encoded = 0
        self._audio_written = 0  # samples per channel already sent to the encoder
        self._container = None
        self._video = None
        self._audio_stream = None
        self._partial = PartialFile(self.path)
        self.bytes_written = 0  # the partial file's size when it was discarded (for a disk-full message)

    # --- context management ---------------------------------------------------------------------------------------

    def __enter__(self) -> "StreamingMp4Writer":
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path.parent, self.path.suffix)
        try:
            self._container = av.open(str(self._partial.open()), mode="w", format="mp4",
                                      options={"movflags": "use_metadata_tags"})
            for key, value in (self.metadata or {}).items():
                self._container.metadata[key] = value if isinstance(value, str) else json.dumps(value)
            video = self._add_video_stream()
            video.width, video.height = self.out_width, self.out_height
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = 1 / self.fps
            video.options = {"crf": str(self.crf), "preset": self.preset}
            self._video = video
            if self.audio is not None:
                waveform, rate = self.audio
                layout = "mono" if waveform.shape[0] == 1 else "stereo"
                self._audio_stream = self._container.add_stream("aac", rate=rate, layout=layout)
        except BaseException:
            self._discard()
            raise
        return self

    def _add_video_stream(self):
        try:
            return self._container.add_stream("libx264", rate=self.fps)
        except ValueError:  # an FFmpeg build without x264: its default H.264 encoder (crf may be ignored)
            log.warning("Sonic video writer: libx264 is not available in this PyAV build; using its default H.264 "
                        "encoder, which may ignore crf.")
            return self._container.add_stream("h264", rate=self.fps)

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> bool:
        if exc_type is not None:  # any error, KeyboardInterrupt or ComfyUI's Cancel: nothing may remain
            self._discard()
            return False
        try:
            if self.frames_written == 0:
                raise ValueError("no video frames were written; nothing saved")
            self._finish()
            self._partial.publish()  # atomic: the final name only ever holds a complete file
        except BaseException:
            self._discard()
            raise
        return False

    # --- writing ---------------------------------------------------------------------------------------------------

    def write_frames(self, frames: torch.Tensor) -> None:
        """Encode frames (n,H,W,3) or one frame (H,W,3), uint8 or float in [0,1], on any device."""
        if self._container is None:
            raise RuntimeError("StreamingMp4Writer.write_frames() called outside its `with` block")
        import av

        if frames.dim() == 3:
            frames = frames.unsqueeze(0)
        if frames.dim() != 4 or frames.shape[-1] != 3 or tuple(frames.shape[1:3]) != (self.height, self.width):
            raise ValueError(f"expected frames (n,{self.height},{self.width},3), got {tuple(frames.shape)}")
        pixels = to_uint8(frames[:, :self.out_height, :self.out_width].cpu()).contiguous().numpy()
        for image in pixels:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = self._video.codec_context.time_base
            self._mux_video(frame)
            self.frames_written += 1
        self._write_audio_until(self._samples_for(self.frames_written))

    def _mux_video(self, frame) -> None:
        packets = self._video.encode(frame)
        self.frames_encoded += len(packets)
        self._mux(packets)

    def _mux(self, packets: list) -> None:
        self.bytes_encoded += sum(packet.size for packet in packets)
        self._container.mux(packets)

    def _samples_for(self, frames: int) -> int:
        """Audio samples (per channel) spanning exactly `frames` video frames."""
        return round(Fraction(frames) * self.audio[1] / self.fps) if self.audio is not None else 0

    def _write_audio_until(self, end: int) -> None:
        """Send audio up to sample `end`, zero-padded past the end of the waveform (interleaved with the video)."""
        if self._audio_stream is None or end <= self._audio_written:
            return
        import av

        waveform, rate = self.audio
        piece = waveform[:, self._audio_written:end]
        if piece.shape[1] < end - self._audio_written:
            piece = torch.nn.functional.pad(piece, (0, end - self._audio_written - piece.shape[1]))
        frame = av.AudioFrame.from_ndarray(piece.contiguous().numpy(), format="fltp",
                                           layout="mono" if piece.shape[0] == 1 else "stereo")
        frame.sample_rate = rate
        frame.pts = self._audio_written
        frame.time_base = Fraction(1, rate)
        self._mux(self._audio_stream.encode(frame))
        self._audio_written = end

    def _finish(self) -> None:
        self._write_audio_until(self._samples_for(self.frames_written))
        self._mux_video(None)
        if self._audio_stream is not None:
            self._mux(self._audio_stream.encode(None))
        container, self._container = self._container, None
        container.close()

    def _discard(self) -> None:
        """Close whatever is open and delete the partial file (errors while closing are secondary)."""
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception as err:  # the original exception matters more
                log.debug("closing the partial video failed: %s", err)
        self.bytes_written = self._partial.size()
        self._partial.discard()


def _check_audio(audio: Optional[Audio]) -> Optional[Audio]:
    """(waveform, rate) in any layout audio_clip takes → float32 CPU (C,T) with C in {1, 2}, surround downmixed to
    stereo (ITU-R BS.775); None stays None."""
    if audio is None:
        return None
    waveform, rate = stereo_clip(*audio)
    return waveform.detach().cpu().contiguous(), rate
