"""Audio path: waveform → Whisper states → windows → tokens/buckets at golden parity, plus resampling and lengths."""
from __future__ import annotations

import ast
import math
import sys

import pytest
import torch
from transformers import WhisperConfig, WhisperModel

from sonic_model.audio.audio_resample import RESAMPLE_TOLERANCE, to_16k_mono
from sonic_model.audio.whisper_features import (
    OFFICIAL_MAX_UNITS,
    WhisperAudioEncoder,
    audio_length_units,
    encode_audio,
    frame_windows,
    num_frames_for,
    predict_buckets,
)
from recording_host import RecordingHost
from tools.parity_checks import whisper as check
from tools.parity_checks.common import read_golden


@pytest.fixture(scope="module")
def short_golden(reference_dir):
    return read_golden(reference_dir / "golden" / "whisper_windows.json")


@pytest.fixture(scope="module")
def models(short_golden):
    return check.build_models(short_golden)


@pytest.fixture(scope="module")
def whisper_folder(short_golden, models, tmp_path_factory):
    """A tiny local Hugging Face Whisper folder holding the golden's encoder weights."""
    folder = tmp_path_factory.mktemp("whisper-tiny-test")
    config = WhisperConfig(**short_golden.doc["whisper_config"])
    model = WhisperModel(config)
    model.encoder.load_state_dict(models[0].encoder.state_dict(), strict=True)
    model.save_pretrained(folder)
    models[0].feature_extractor.save_pretrained(folder)
    return folder


def _failures(comparisons):
    return [c.line() for c in comparisons if not c.passed]


@pytest.mark.parametrize("name", ["whisper_windows", "whisper_windows_long"])
def test_golden_parity(reference_dir, name):
    golden = read_golden(reference_dir / "golden" / f"{name}.json")
    comparisons = check.run(golden)
    names = {c.name for c in comparisons}
    assert {"out.mel", "out.token_seq_padded", "out.audio_tokens_cond", "out.motion_buckets"} <= names
    if name.endswith("long"):
        assert {"out.sel_token_windows", "out.sel_bucket_windows"} <= names
    else:
        assert {"out.encoder_hidden_states_stacked", "out.token_windows"} <= names
    assert not _failures(comparisons), _failures(comparisons)


def test_parity_check_fails_on_perturbed_encoder(short_golden):
    encoder, audio2token, audio2bucket = check.build_models(short_golden)
    with torch.no_grad():
        encoder.encoder.layers[1].fc1.weight[0, 0] += 1e-1
    failed = _failures(check.run(short_golden, (encoder, audio2token, audio2bucket)))
    assert any("out.audio_tokens_cond" in line for line in failed), failed
    assert not any("out.mel" in line for line in failed)


def test_from_folder_loads_local_whisper(whisper_folder, short_golden):
    encoder = WhisperAudioEncoder.from_folder(whisper_folder)
    hidden = encoder.hidden_states(short_golden.tensors["in.waveform"])
    torch.testing.assert_close(hidden, short_golden.tensors["out.encoder_hidden_states_stacked"],
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match="whisper-tiny"):
        WhisperAudioEncoder.from_folder(whisper_folder / "missing")


def test_from_folder_refuses_missing_encoder_weights(whisper_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(whisper_folder, folder)
    weights = load_file(str(folder / "model.safetensors"))
    del weights["encoder.layers.0.fc1.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="encoder.layers.0.fc1.weight"):
        WhisperAudioEncoder.from_folder(folder)


def test_length_rules():
    assert audio_length_units(52800) == 82 and num_frames_for(82) == 41
    assert audio_length_units(496000) == 775 and num_frames_for(775) == 387
    long = 410 * 16000
    assert audio_length_units(long) == 10250  # no silent cap by default
    assert audio_length_units(long, max_units=OFFICIAL_MAX_UNITS) == 10000


def test_windows_follow_the_frame_rule():
    hidden = torch.randn(1, 200, 5, 8)
    units = 83  # odd: tokens 164 and 165 are real, not padding
    token_windows, bucket_windows = frame_windows(hidden, units)
    assert token_windows.shape == (41, 10, 5, 8) and bucket_windows.shape == (41, 50, 1, 8)
    kept = hidden[0, :166]
    for i in (0, 1, 20, 40):
        for j in range(10):
            t = 4 * i - 4 + j
            expected = kept[t] if 0 <= t < 166 else torch.zeros(5, 8)
            assert torch.equal(token_windows[i, j], expected)
        for j in range(50):
            t = 4 * i - 24 + j
            expected = kept[t, -1:] if 0 <= t < 166 else torch.zeros(1, 8)
            assert torch.equal(bucket_windows[i, j], expected)


def test_long_audio_is_not_capped_and_encoded_chunk_by_chunk(models, short_golden):
    encoder, audio2token, audio2bucket = models
    seconds = 401
    wave = 0.1 * torch.randn(seconds * 16000, generator=torch.Generator().manual_seed(9))
    calls, progress = [], []
    hook = encoder.encoder.register_forward_pre_hook(lambda mod, args: calls.append(tuple(args[0].shape)))
    try:
        clip = short_golden.tensors["in.clip_image_embeds"]
        features = encode_audio(encoder, wave, 16000, audio2token, frame_batch=1000, host=RecordingHost(progress))
        raw = predict_buckets(audio2bucket, features, clip)
        chunks = math.ceil(seconds / 30)
        assert calls == [(1, 80, 3000)] * chunks  # one bounded encoder call per 30 s chunk
        assert features.num_frames == seconds * 25 // 2 == 5012
        # A step per Whisper chunk, then per batch of 1000 frames.
        assert progress == [(done, chunks + 6) for done in range(1, chunks + 7)]
        assert features.tokens.shape == (5012, 4, 12) and raw.shape == (5012, 2)
        assert torch.isfinite(features.tokens).all() and torch.isfinite(raw).all()
        calls.clear()
        capped = encode_audio(encoder, wave, 16000, audio2token, max_units=OFFICIAL_MAX_UNITS)
        capped_raw = predict_buckets(audio2bucket, capped, clip)
        assert capped.num_frames == 5000 and len(calls) == math.ceil(400 / 30)  # stops once enough tokens exist
        # Only the last frames differ: their windows reach past the cap into the zero padding.
        torch.testing.assert_close(capped.tokens[:4999], features.tokens[:4999], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(capped_raw[:4994], raw[:4994], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(capped.tokens[4999], features.tokens[4999], atol=1e-3)
    finally:
        hook.remove()


def test_bucket_windows_are_a_view_of_the_short_padded_sequence(models):
    encoder, audio2token, _ = models
    features = encode_audio(encoder, torch.randn(16000 * 4), 16000, audio2token)
    windows = features.bucket_windows
    assert windows.shape == (50, 50, 1, 8)
    # 50 windows of 50 tokens share the 2·100 + 50 padded tokens: no per-frame copy (576 MB for 10 min at full size).
    assert windows.untyped_storage().nbytes() == (2 * 100 + 50) * 8 * 4


@pytest.mark.parametrize("samples", [0, 1, 1279])
def test_shorter_than_one_frame_is_refused(models, samples):
    encoder, audio2token, _ = models
    message = "empty" if samples == 0 else "shorter than one video frame"
    with pytest.raises(ValueError, match=message):
        encode_audio(encoder, torch.zeros(samples), 16000, audio2token)


def test_one_frame_of_audio(models, short_golden):
    encoder, audio2token, audio2bucket = models
    features = encode_audio(encoder, torch.randn(1280), 16000, audio2token)
    assert features.num_frames == 1 and features.tokens.shape == (1, 4, 12) and features.null_tokens.shape == (4, 12)
    assert predict_buckets(audio2bucket, features, short_golden.tensors["in.clip_image_embeds"]).shape == (1, 2)


def _tone(sample_rate: int, seconds: float = 3.3) -> torch.Tensor:
    t = torch.arange(round(seconds * sample_rate), dtype=torch.float64) / sample_rate
    wave = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.2 * torch.sin(2 * math.pi * 1250 * t + 0.4)
    return wave.to(torch.float32)


def test_sample_rates_and_channels_give_the_same_frames(models, short_golden):
    encoder, audio2token, audio2bucket = models
    clip = short_golden.tensors["in.clip_image_embeds"]
    reference = encode_audio(encoder, _tone(16000), 16000, audio2token)
    reference_raw = predict_buckets(audio2bucket, reference, clip)
    assert reference.num_frames == 41
    for rate in (8000, 44100, 48000):
        features = encode_audio(encoder, _tone(rate), rate, audio2token)
        assert features.num_frames == reference.num_frames, rate
        # Resampling edge effects only (measured: 0.039 at 8 kHz, 0.007 at 44.1/48 kHz; |tokens| ≤ 2.8).
        torch.testing.assert_close(features.tokens, reference.tokens, atol=0.1, rtol=0)
    mono = _tone(16000)
    for stereo in (torch.stack([mono, mono]), torch.stack([mono, mono])[None]):
        features = encode_audio(encoder, stereo, 16000, audio2token)
        assert features.num_frames == reference.num_frames
        torch.testing.assert_close(features.tokens, reference.tokens, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(predict_buckets(audio2bucket, features, clip), reference_raw, atol=1e-6, rtol=1e-6)


def test_to_16k_mono_layouts():
    left, right = torch.randn(1000), torch.randn(1000)
    torch.testing.assert_close(to_16k_mono(torch.stack([left, right]), 16000), (left + right) / 2)
    torch.testing.assert_close(to_16k_mono(torch.stack([left, right])[None], 16000), (left + right) / 2)  # ComfyUI
    assert to_16k_mono(left.double(), 16000).dtype == torch.float32
    assert to_16k_mono(torch.randn(22050), 44100).shape == (8000,)
    # 5.1: the stereo downmix (ITU-R BS.775, LFE left out) averaged; a loud LFE changes nothing.
    surround = torch.randn(6, 1000)
    quiet_lfe = surround.clone()
    quiet_lfe[3] = 0
    torch.testing.assert_close(to_16k_mono(surround, 16000), to_16k_mono(quiet_lfe, 16000))


@pytest.mark.parametrize("rate", [44101, 47999, 7919])
def test_unusual_rates_keep_length_and_pitch_without_a_huge_kernel(rate):
    t = torch.arange(rate) / rate
    out = to_16k_mono(torch.sin(2 * torch.pi * 440 * t), rate)  # torchaudio alone: ~12 GB, 30 s for 44101 Hz
    assert abs(out.shape[0] - 16000) <= 2
    peak = int(torch.fft.rfft(out).abs().argmax()) * 16000 / out.shape[0]
    assert abs(peak - 440) <= 2, peak


def _relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


@pytest.mark.parametrize("rate", [8000, 22050, 32000, 44100, 48000, 44101])
def test_without_torchaudio_scipy_resamples_within_the_stated_tolerance(rate, monkeypatch):
    g = torch.Generator().manual_seed(rate)
    noise = 0.1 * torch.randn(rate, generator=g)  # white noise: all its energy reaches the filter's cut-off
    tone = _tone(rate, 1.0)
    with_torchaudio = [to_16k_mono(x, rate) for x in (noise, tone)]
    monkeypatch.setitem(sys.modules, "torchaudio", None)  # as on a torch newer than any torchaudio release
    monkeypatch.setitem(sys.modules, "torchaudio.functional", None)
    with pytest.raises(ImportError):
        import torchaudio.functional  # noqa: F401
    without = [to_16k_mono(x, rate) for x in (noise, tone)]
    for a, b in zip(without, with_torchaudio):
        assert a.shape == b.shape and a.dtype == torch.float32 and not torch.equal(a, b)  # scipy's path ran
        assert _relative_rms(a, b) < RESAMPLE_TOLERANCE, (rate, _relative_rms(a, b))
    # A different filter (scipy's default Kaiser) would be further off on noise than the tolerance allows.
    assert _relative_rms(without[0], with_torchaudio[0]) < _relative_rms(
        resample_poly_default(noise, rate), with_torchaudio[0]) or rate == 44101


def resample_poly_default(wave: torch.Tensor, rate: int) -> torch.Tensor:
    from scipy.signal import resample_poly

    g = math.gcd(rate, 16000)
    return torch.from_numpy(resample_poly(wave.double().numpy(), 16000 // g, rate // g)).float()


def test_no_module_level_torchaudio_import_in_the_pack(repo_dir):
    offenders = []
    for path in sorted(repo_dir.glob("**/*.py")):
        parts = path.relative_to(repo_dir).parts  # hidden folders are venvs (.venv, $SONIC_VENV) and caches
        if "tests" in parts or any(part.startswith(".") for part in parts):
            continue
        for node in ast.parse(path.read_text()).body:  # module level only: imports inside functions are on use
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(repo_dir)}: {n}" for n in names if n.split(".")[0] == "torchaudio"]
    assert not offenders


@pytest.mark.parametrize("wave, rate, message", [
    (torch.zeros(0), 16000, "empty"),
    (torch.zeros(2, 0), 16000, "empty"),
    (torch.zeros(0, 2, 100), 16000, "batch is empty"),
    (torch.zeros(2, 2, 100), 16000, "Pick one clip"),
    (torch.tensor([0.0, float("nan"), 0.0]), 16000, "NaN"),
    (torch.tensor([0.0, float("inf"), 0.0]), 16000, "infinite"),
    (torch.zeros(1, 1, 1, 10), 16000, "shaped"),
    (torch.zeros(100), 0, "sample rate"),
    (torch.zeros(100), 22050.5, "sample rate"),
    (torch.zeros(1000, 2).T.contiguous().T, 16000, "channels, samples"),
])
def test_to_16k_mono_rejects_unusable_input(wave, rate, message):
    with pytest.raises(ValueError, match=message):
        to_16k_mono(wave, rate)


def test_encode_audio_rejects_bad_waveforms(models):
    encoder, audio2token, _ = models
    with pytest.raises(ValueError, match="NaN"):
        encode_audio(encoder, torch.full((3000,), float("nan")), 16000, audio2token)
    with pytest.raises(ValueError, match="Pick one clip"):
        encode_audio(encoder, torch.zeros(2, 1, 3000), 16000, audio2token)


def test_encode_audio_rejects_a_mismatched_whisper(models, short_golden):
    from sonic_model.audio.audio_adapters import AudioToBuckets, AudioToTokens

    encoder, _, _ = models
    with pytest.raises(ValueError, match="whisper-tiny"):
        encode_audio(encoder, torch.zeros(3000), 16000, AudioToTokens(blocks=7, channels=8, intermediate_dim=4,
                                                                      output_dim=4, context_tokens=1))
    features = encode_audio(encoder, torch.zeros(3000), 16000, models[1])
    with pytest.raises(ValueError, match="whisper-tiny"):
        predict_buckets(AudioToBuckets(channels=16, clip_channels=4, intermediate_dim=4), features,
                        torch.zeros(1, 4))
