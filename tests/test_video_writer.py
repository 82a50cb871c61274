"""Streaming mp4 writer: exact durations read back with PyAV, rounding, even sides, and no file left on failure."""
from __future__ import annotations

import errno
import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from sonic_model.video.partial_files import partial_path
from sonic_model.pixels import to_uint8
from sonic_model.video.video_writer import StreamingMp4Writer, as_fraction

W, H = 34, 30


def _tone(seconds: float, rate: int, channels: int) -> torch.Tensor:
    t = torch.arange(round(seconds * rate)) / rate
    return (0.5 * torch.sin(2 * math.pi * 440 * t)).repeat(channels, 1)


def _write(path: Path, n: int, fps, audio=None, batch: int = 4, **kwargs) -> None:
    with StreamingMp4Writer(path, W, H, fps, audio, **kwargs) as writer:
        for start in range(0, n, batch):
            writer.write_frames(torch.rand(min(batch, n - start), H, W, 3))


def _read(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {"frames": video.frames, "video_s": float(video.duration * video.time_base),
                "size": (video.width, video.height), "rate": video.average_rate, "metadata": dict(container.metadata)}
        if container.streams.audio:
            audio = container.streams.audio[0]
            info.update(audio_s=float(audio.duration * audio.time_base), channels=audio.channels,
                        sample_rate=audio.rate)
        decoded = sum(1 for _ in container.decode(video=0))
    info["decoded_frames"] = decoded
    return info


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.37])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fps", [25.0, 12.5])
def test_video_and_audio_last_exactly_as_long(tmp_path, seconds, channels, fps):
    rate = 16000 if channels == 1 else 44100
    audio = (_tone(seconds, rate, channels), rate)
    for n in (math.floor(seconds * fps), math.ceil(seconds * fps)):  # audio trimmed, then padded
        path = tmp_path / f"out_{n}.mp4"
        _write(path, n, fps, audio)
        info = _read(path)
        assert info["frames"] == info["decoded_frames"] == n
        assert info["video_s"] == pytest.approx(n / fps, abs=1e-6)
        assert abs(info["audio_s"] - n / fps) < 1 / fps  # within one frame (in fact within one sample)
        assert info["audio_s"] == pytest.approx(n / fps, abs=1.5 / rate)
        assert info["channels"] == channels and info["sample_rate"] == rate
        assert info["rate"] == Fraction(fps).limit_denominator(1000)


def test_audio_is_interleaved_in_place(tmp_path):
    """Silence then a tone: the decoded energy must stay in the second half (catches shifted or reordered audio)."""
    rate, fps, n = 16000, 25, 25
    wave = _tone(1.0, rate, 1)
    wave[:, : rate // 2] = 0
    path = tmp_path / "tone.mp4"
    _write(path, n, fps, (wave, rate))
    with av.open(str(path)) as container:
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    first, second = decoded[: rate // 2 - 2048], decoded[rate // 2 + 2048: rate]
    assert np.sqrt(np.mean(first ** 2)) < 0.01
    assert np.sqrt(np.mean(second ** 2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.1)


def test_colours_survive_the_encode(tmp_path):
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.8, 0.5, 0.2]])
    path = tmp_path / "colours.mp4"
    with StreamingMp4Writer(path, W, H, 25, crf=0) as writer:
        writer.write_frames(colours[:, None, None, :].expand(4, H, W, 3))
    with av.open(str(path)) as container:
        got = [torch.from_numpy(f.to_ndarray(format="rgb24")).float().mean((0, 1)) / 255
               for f in container.decode(video=0)]
    torch.testing.assert_close(torch.stack(got), colours, atol=0.03, rtol=0)


def test_float_to_uint8_rounds():
    levels = torch.arange(256, dtype=torch.float32)
    assert torch.equal(to_uint8((levels + 0.49) / 255), levels.to(torch.uint8).clamp(max=255))
    assert torch.equal(to_uint8((levels[:-1] + 0.51) / 255), (levels[:-1] + 1).to(torch.uint8))
    assert torch.equal(to_uint8(torch.tensor([-0.2, 1.3, float("nan")])), torch.tensor([0, 255, 0], dtype=torch.uint8))


def test_odd_sides_are_cropped_to_even(tmp_path):
    path = tmp_path / "odd.mp4"
    with StreamingMp4Writer(path, 35, 31, 12.5) as writer:
        writer.write_frames(torch.rand(3, 31, 35, 3))
    assert _read(path)["size"] == (34, 30)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_inside_leaves_no_file(tmp_path, error):
    path = tmp_path / "fail.mp4"
    with pytest.raises(type(error)):
        with StreamingMp4Writer(path, W, H, 25, (_tone(1.0, 16000, 1), 16000)) as writer:
            writer.write_frames(torch.rand(5, H, W, 3))
            assert partial_path(path).is_file() and not path.exists()  # only the partial exists while writing
            raise error
    assert list(tmp_path.iterdir()) == []


def test_nothing_written_means_no_file(tmp_path):
    path = tmp_path / "empty.mp4"
    with pytest.raises(ValueError, match="no video frames"):
        with StreamingMp4Writer(path, W, H, 25):
            pass
    assert list(tmp_path.iterdir()) == []


def test_clean_exit_replaces_an_existing_file_and_stores_metadata(tmp_path):
    path = tmp_path / "sub" / "again.mp4"
    path.parent.mkdir()
    path.write_bytes(b"old")
    _write(path, 3, 25, metadata={"prompt": {"1": {"class_type": "X"}}, "note": "hi"})
    info = _read(path)
    assert info["frames"] == 3 and "audio_s" not in info
    assert info["metadata"]["prompt"] == '{"1": {"class_type": "X"}}' and info["metadata"]["note"] == "hi"
    assert sorted(p.name for p in path.parent.iterdir()) == ["again.mp4"]


def test_argument_checks(tmp_path):
    assert as_fraction(12.5) == Fraction(25, 2) and as_fraction(Fraction(30000, 1001)) == Fraction(30000, 1001)
    with pytest.raises(ValueError, match="Pick one clip"):
        StreamingMp4Writer(tmp_path / "x.mp4", W, H, 25, (torch.zeros(2, 1, 100), 16000))
    with pytest.raises(ValueError, match="expected frames"):
        with StreamingMp4Writer(tmp_path / "x.mp4", W, H, 25) as writer:
            writer.write_frames(torch.rand(2, H + 2, W, 3))
    assert list(tmp_path.iterdir()) == []


def test_surround_audio_is_downmixed_to_stereo_at_its_own_rate(tmp_path):
    surround = torch.zeros(6, 48000)
    surround[2] = _tone(1.0, 48000, 1)[0]  # only the centre speaks: it must reach both sides
    path = tmp_path / "surround.mp4"
    _write(path, 25, 25, audio=(surround[None], 48000))
    info = _read(path)
    assert info["channels"] == 2 and info["sample_rate"] == 48000 and info["audio_s"] == pytest.approx(1.0, abs=1e-3)
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    left, right = np.abs(samples).max(axis=1)
    assert left > 0.1 and right > 0.1 and abs(left - right) < 0.02


def test_a_killed_writers_partial_file_is_deleted_by_the_next_write_but_a_live_one_is_kept(tmp_path):
    import fcntl

    stale, live = partial_path(tmp_path / "Sonic_00001_.mp4"), partial_path(tmp_path / "Sonic_00002_.mp4")
    stale.write_bytes(b"half a video")  # its writer was killed: nobody holds it
    live.write_bytes(b"being written")
    (tmp_path / ".notes.txt").write_text("not ours")
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as a running writer (in any process) holds its partial file
    try:
        _write(tmp_path / "Sonic_00003_.mp4", 3, 25)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".Sonic_00002_.partial.mp4", ".notes.txt",
                                                             "Sonic_00003_.mp4"]
    finally:
        os.close(held)
    _write(tmp_path / "Sonic_00004_.mp4", 3, 25)
    assert not live.exists()  # released: a leftover now


@pytest.mark.parametrize("code,says", [
    (errno.EACCES, "ComfyUI may not write into the output folder {folder} (Permission denied): make it writable"),
    (errno.EFBIG, "is larger than the file system of {folder} allows for one file (FAT32 stops at 4 GiB)"),
    (errno.ENOSPC, "The disk is full: writing the video {path} stopped at 3 KiB ("),
])
def test_write_errors_name_the_fix(tmp_path, code, says):
    from sonic_model.video.write_errors import write_failed

    path = tmp_path / "Sonic_00001_.mp4"
    message = write_failed(str(path), OSError(code, os.strerror(code)), written=3000)
    assert says.format(folder=tmp_path, path=path) in message
    assert "Free some space, or choose another output folder" in message or code != errno.ENOSPC  # size unknown


def test_without_file_locks_a_partial_file_is_kept(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # as some network shares answer

    stale = partial_path(tmp_path / "Sonic_00001_.mp4")
    stale.write_bytes(b"a leftover, or another server's video being written: nobody can tell")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    _write(tmp_path / "Sonic_00002_.mp4", 3, 25)
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name, "Sonic_00002_.mp4"]
