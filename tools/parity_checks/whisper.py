"""Parity of the audio path (waveform → mel → Whisper states → windows → tokens, buckets) with the
`whisper_windows` goldens (`docs/official-behaviour.md` §3). The long golden stores the windows of selected frames
only."""
from __future__ import annotations

import torch

from sonic_model.audio.audio_adapters import AudioToBuckets, AudioToTokens, postprocess_buckets
from sonic_model.audio.whisper_features import (
    OFFICIAL_MAX_UNITS,
    SAMPLE_RATE,
    WhisperAudioEncoder,
    audio_length_units,
    encode_audio,
    frame_windows,
    num_frames_for,
    padded_sequences,
    predict_buckets,
)
from tools.parity_checks.common import Comparison, Golden, cast_model, compare, compare_golden


def build_models(golden: Golden) -> tuple[WhisperAudioEncoder, AudioToTokens, AudioToBuckets]:
    """The tiny Whisper encoder and both adapters of the golden, strictly loaded."""
    doc = golden.doc
    encoder = WhisperAudioEncoder.from_config(doc["whisper_config"], doc["feature_extractor"],
                                              doc.get("whisper_attn_implementation", "sdpa"))
    whisper = golden.weights("weights.whisper.")
    stray = sorted(k for k in whisper if not k.startswith("encoder."))
    if stray:
        raise ValueError(f"unexpected non-encoder Whisper weights: {stray[:5]}")
    encoder.encoder.load_state_dict({k[len("encoder."):]: v for k, v in whisper.items()}, strict=True)
    cast_model(encoder.encoder, golden)
    audio2token = AudioToTokens(**doc["audio2token_config"])
    audio2token.load_state_dict(golden.weights("weights.audio2token."), strict=True)
    audio2bucket = AudioToBuckets(**doc["audio2bucket_config"])
    audio2bucket.load_state_dict(golden.weights("weights.audio2bucket."), strict=True)
    return encoder, cast_model(audio2token, golden).eval(), cast_model(audio2bucket, golden).eval()


def _size_check(name: str, actual: int, expected: int) -> Comparison:
    return compare(name, torch.tensor(float(actual)), torch.tensor(float(expected)), 0.0, 0.0)


@torch.no_grad()
def run(golden: Golden,
        models: tuple[WhisperAudioEncoder, AudioToTokens, AudioToBuckets] | None = None) -> list[Comparison]:
    """Every stored output of a whisper_windows golden; `models` (from build_models) lets a test perturb them."""
    t = golden.tensors
    encoder, audio2token, audio2bucket = models or build_models(golden)
    wave, clip = t["in.waveform"], t["in.clip_image_embeds"]
    units = audio_length_units(wave.shape[0], max_units=OFFICIAL_MAX_UNITS)  # the official cap, explicitly
    frames = num_frames_for(units)
    results = [_size_check("frames N", frames, t["out.audio_tokens_cond"].shape[0])]

    # Intermediates, step by step.
    results.append(compare_golden(golden, "out.mel", encoder.log_mel(wave)))
    hidden = encoder.hidden_states(wave)
    if "out.encoder_hidden_states_stacked" in t:
        results.append(compare_golden(golden, "out.encoder_hidden_states_stacked", hidden))
    token_seq, bucket_seq = padded_sequences(hidden, units)
    results += [compare_golden(golden, "out.token_seq_padded", token_seq),
                compare_golden(golden, "out.bucket_seq_padded", bucket_seq)]
    token_windows, bucket_windows = frame_windows(hidden, units)
    if "out.token_windows" in t:
        results += [compare_golden(golden, "out.token_windows", token_windows),
                    compare_golden(golden, "out.bucket_windows", bucket_windows)]
    if "out.sel_frame_indices" in t:
        sel = t["out.sel_frame_indices"]
        results += [compare_golden(golden, "out.sel_token_windows", token_windows[sel]),
                    compare_golden(golden, "out.sel_bucket_windows", bucket_windows[sel])]

    # End to end through the functions the Encode Audio and Motion Buckets nodes call.
    features = encode_audio(encoder, wave, SAMPLE_RATE, audio2token, max_units=OFFICIAL_MAX_UNITS)
    n = features.num_frames
    raw = predict_buckets(audio2bucket, features, clip).reshape(1, n, -1, 1)
    results += [
        compare_golden(golden, "out.audio_tokens_cond", features.tokens),
        compare_golden(golden, "out.audio_tokens_uncond", features.null_tokens.expand(n, -1, -1)),
        compare_golden(golden, "out.bucket_raw", raw),
        compare_golden(golden, "out.motion_buckets", postprocess_buckets(raw)[0].unsqueeze(1)),
    ]
    return results
