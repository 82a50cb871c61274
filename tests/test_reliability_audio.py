"""Reliability, audio: every kind of sound users connect to Sonic Encode Audio, through core's Load Audio (files in
ComfyUI's input folder) or Empty Audio, in the real ComfyUI runtime on random weights."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from reliability import case
from reliability_runtime import assert_comfy_keeps_running, audio_prompt, empty_audio, frames_of, load_audio, \
    node_outputs, run_error, write_float_wav, write_wav
from sonic_model.audio.audio_adapters import AudioToTokens
from tools.process_memory import reset_peak_rss, status_kib

pytest_plugins = ["reliability_fixtures"]


@case("Audio", "Silence",
      "Runs like any audio: 2 s of silence gives 25 frames.")
def test_audio_silence(comfy):
    assert frames_of(node_outputs(audio_prompt(empty_audio(2.0)))) == 25


@case("Audio", "0 samples",
      "Stops with \"the audio is empty (0 samples): connect an audio clip with sound in it\"; ComfyUI keeps running.")
def test_audio_zero_samples(comfy):
    error = run_error(audio_prompt(empty_audio(0.0)))
    assert error["node_type"] == "SonicAudioEncode" and error["exception_type"] == "ValueError"
    assert error["exception_message"] == "the audio is empty (0 samples): connect an audio clip with sound in it"
    assert_comfy_keeps_running(comfy)


@case("Audio", "Shorter than one video frame",
      "Stops with \"The audio is 50 ms long, shorter than one video frame (80 ms): connect at least 0.08 s of "
      "audio.\"; ComfyUI keeps running.")
def test_audio_shorter_than_one_frame(comfy):
    error = run_error(audio_prompt(empty_audio(0.05)))
    assert error["exception_message"] == ("The audio is 50 ms long, shorter than one video frame (80 ms): connect at "
                                          "least 0.08 s of audio.")
    assert_comfy_keeps_running(comfy)


@case("Audio", "Sample rates 8 kHz, 22.05 kHz, 44.1 kHz, 48 kHz",
      "Resampled to Whisper's 16 kHz with torchaudio, or scipy where torchaudio is missing: the same 2 s give the "
      "same 25 frames at every rate. An odd rate such as 44101 Hz is first moved to the nearest 100 Hz (torchaudio "
      "alone would build a 12 GB kernel).")
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 44101])
def test_audio_sample_rates(comfy, rate):
    name = write_wav(comfy.input / f"tone_{rate}.wav", 2.0, rate=rate).name
    assert frames_of(node_outputs(audio_prompt(load_audio(name)))) == 25


@case("Audio", "Mono, stereo and 5.1",
      "1, 2 and 6 channels all give 25 frames for 2 s (5.1 is downmixed to stereo with the ITU-R BS.775 gains, then "
      "averaged to mono for Whisper); the trimmed audio output is mono, stereo and stereo, at the file's rate.")
@pytest.mark.parametrize("channels", [1, 2, 6], ids=["mono", "stereo", "5.1"])
def test_audio_channels(comfy, channels):
    name = write_wav(comfy.input / f"tone_{channels}ch.wav", 2.0, rate=44100, channels=channels).name
    prompt = audio_prompt(load_audio(name))
    prompt["5"] = {"class_type": "SaveAudio", "inputs": {"audio": ["3", 1], "filename_prefix": "trimmed"}}
    outputs = node_outputs(prompt)
    assert frames_of(outputs) == 25
    (saved,) = comfy.output_files()
    with av.open(str(saved)) as container:
        stream = container.streams.audio[0]
        assert (stream.channels, stream.rate) == (min(channels, 2), 44100)


@case("Audio", "NaN / Inf samples",
      "Stops with \"the audio contains NaN or infinite samples: re-export or re-encode the audio file\"; ComfyUI "
      "keeps running.")
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_audio_nan_inf(comfy, bad):
    samples = (0.2 * np.sin(np.arange(32000) / 10)).astype(np.float32)
    samples[1000:1010] = bad
    name = write_float_wav(comfy.input / f"broken_{bad}.wav", samples, 16000).name
    error = run_error(audio_prompt(load_audio(name)))
    assert error["exception_message"] == ("the audio contains NaN or infinite samples: re-export or re-encode the "
                                          "audio file")
    assert_comfy_keeps_running(comfy)


def full_size_token_adapter(folder: Path, reference_dir: Path) -> tuple[str, int]:
    """An audio2token with the released model's output size (tokens per frame × width, from the key manifest) on the
    random Whisper's input: the tokens a real 10-minute run holds. Returns its file name and bytes per frame."""
    shapes = json.loads((reference_dir / "manifest" / "audio2token.json").read_text())
    width = shapes["norm.weight"][0]
    tokens = shapes["proj3.weight"][0] // width
    whisper = json.loads((folder / "whisper-tiny" / "config.json").read_text())
    model = AudioToTokens(seq_len=10, blocks=whisper["encoder_layers"] + 1, channels=whisper["d_model"],
                          intermediate_dim=shapes["proj1.weight"][0], output_dim=width, context_tokens=tokens)
    torch.save(model.state_dict(), folder / "audio2token_full_size.pth")
    return "audio2token_full_size.pth", tokens * width * 4


@case("Audio", "10 minutes",
      "Nothing is cut: 600 s give all 7500 frames. Whisper runs 30 s at a time and audio2token 256 frames at a "
      "time into one preallocated tensor: with the released model's 32 tokens of 1024 per frame (read from the key "
      "manifest), the encode raises the process's peak memory by the tokens themselves (938 MiB) plus < 300 MiB "
      "(105 MiB measured).")
def test_audio_ten_minutes(comfy, reference_dir):
    name = write_wav(comfy.input / "podcast_10min.wav", 600.0, rate=16000).name
    adapter, frame_bytes = full_size_token_adapter(comfy.sonic, reference_dir)
    node_outputs(audio_prompt(empty_audio(1.0), audio2token=adapter))  # models loaded before the measurement
    assert reset_peak_rss()
    base = status_kib("VmRSS") / 1024
    frames = frames_of(node_outputs(audio_prompt(load_audio(name), audio2token=adapter)))
    extra = status_kib("VmHWM") / 1024 - base
    tokens = 7500 * frame_bytes / 2**20
    print(f"10 min encode: peak RSS +{extra:.0f} MiB, of which the tokens {tokens:.0f} MiB")
    assert frames == 7500 and frame_bytes == 32 * 1024 * 4
    # Besides the tokens: the decoded file (int16 → float32, 38 MiB), the 16 kHz copy, Whisper's states and one
    # batch. Joining per-batch results at the end would hold the tokens twice (+938 MiB).
    assert extra - tokens < 300, f"encoding 10 minutes of audio raised the peak RSS by {extra:.0f} MiB"
