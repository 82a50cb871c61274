"""Reliability, audio: every kind of sound users connect to Sonic Encode Audio, through core's Load Audio (files in
ComfyUI's input folder) or Empty Audio, in the real ComfyUI runtime on random weights."""
from __future__ import annotations

import numpy as np
import pytest

from reliability import case
from reliability_runtime import assert_comfy_keeps_running, audio_prompt, empty_audio, frames_of, load_audio, \
    node_outputs, run_error, write_float_wav, write_wav
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
      "Resampled to Whisper's 16 kHz with torchaudio: the same 2 s give the same 25 frames at every rate. An odd "
      "rate such as 44101 Hz is first moved to the nearest 100 Hz (torchaudio alone would build a 12 GB kernel).")
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 44101])
def test_audio_sample_rates(comfy, rate):
    name = write_wav(comfy.input / f"tone_{rate}.wav", 2.0, rate=rate).name
    assert frames_of(node_outputs(audio_prompt(load_audio(name)))) == 25


@case("Audio", "Mono, stereo and 5.1",
      "Channels are averaged to mono: 1, 2 and 6 channels all give 25 frames for 2 s.")
@pytest.mark.parametrize("channels", [1, 2, 6], ids=["mono", "stereo", "5.1"])
def test_audio_channels(comfy, channels):
    name = write_wav(comfy.input / f"tone_{channels}ch.wav", 2.0, rate=44100, channels=channels).name
    assert frames_of(node_outputs(audio_prompt(load_audio(name)))) == 25


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


@case("Audio", "10 minutes",
      "Nothing is cut: 600 s give all 7500 frames. Whisper runs 30 s at a time and audio2token 256 frames at a "
      "time: the encode raises the process's peak memory by < 450 MiB (340 MiB measured, most of it the decoded "
      "file and the tokens themselves).")
def test_audio_ten_minutes(comfy):
    name = write_wav(comfy.input / "podcast_10min.wav", 600.0, rate=16000).name
    node_outputs(audio_prompt(empty_audio(1.0)))  # models loaded before the measurement
    assert reset_peak_rss()
    base = status_kib("VmRSS") / 1024
    frames = frames_of(node_outputs(audio_prompt(load_audio(name))))
    extra = status_kib("VmHWM") / 1024 - base
    print(f"10 min encode: peak RSS +{extra:.0f} MiB")
    assert frames == 7500
    # Inevitable: the decoded file (int16 → float32, 38 MiB), the 16 kHz copy, the tokens (7500 × 4 × 1024 floats,
    # 117 MiB) and bucket windows (11 MiB). The bound guards against holding more than that per clip.
    assert extra < 450, f"encoding 10 minutes of audio raised the peak RSS by {extra:.0f} MiB"
