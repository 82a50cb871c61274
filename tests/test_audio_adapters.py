"""Audio adapters: golden parity, full-size key compatibility, batching, dtypes, bucket post-processing."""
from __future__ import annotations

import json

import pytest
import torch

from sonic_model.audio.audio_adapters import (
    AUDIO2BUCKET_CONFIG,
    AUDIO2TOKEN_CONFIG,
    AudioToBuckets,
    AudioToTokens,
    null_audio_tokens,
    postprocess_buckets,
)
from tools.parity_checks import audio_adapters as check
from tools.parity_checks.common import read_golden

TINY_TOKEN = {"seq_len": 10, "blocks": 5, "channels": 8, "intermediate_dim": 16, "output_dim": 12,
              "context_tokens": 4}
TINY_BUCKET = {"seq_len": 50, "blocks": 1, "channels": 8, "clip_channels": 12, "intermediate_dim": 16,
               "output_dim": 1, "context_tokens": 2}


def _golden(reference_dir, name):
    return read_golden(reference_dir / "golden" / f"{name}.json")


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["audio2token", "audio2bucket"])
def test_golden_parity(reference_dir, name):
    comparisons = check.run(_golden(reference_dir, name))
    assert len(comparisons) >= 2
    failed = [c.line() for c in comparisons if not c.passed]
    assert not failed, failed


def test_parity_check_fails_on_perturbed_weights(reference_dir):
    golden = _golden(reference_dir, "audio2token")
    model = check.build_audio2token(golden)
    with torch.no_grad():
        model.proj2.weight[0, 0] += 1e-2
    assert not all(c.passed for c in check.run_audio2token(golden, model))

    golden = _golden(reference_dir, "audio2bucket")
    model = check.build_audio2bucket(golden)
    with torch.no_grad():
        model.proj1.weight[0, -1] += 1e-2  # a CLIP column: catches a wrongly placed embedding too
    assert not all(c.passed for c in check.run_audio2bucket(golden, model))


def test_check_refuses_other_golden_types(reference_dir):
    golden = _golden(reference_dir, "audio2token")
    golden.doc = dict(golden.doc, golden_type="rife")
    with pytest.raises(ValueError):
        check.run(golden)


@pytest.mark.parametrize("cls, config, manifest", [
    (AudioToTokens, AUDIO2TOKEN_CONFIG, "audio2token.json"),
    (AudioToBuckets, AUDIO2BUCKET_CONFIG, "audio2bucket.json"),
])
def test_full_size_keys_match_manifest(reference_dir, cls, config, manifest):
    expected = json.loads((reference_dir / "manifest" / manifest).read_text())
    with torch.device("meta"):
        model = cls(**config)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


def test_full_size_configs_match_golden_records(reference_dir):
    assert _golden(reference_dir, "audio2token").doc["full_size_config"] == AUDIO2TOKEN_CONFIG
    assert _golden(reference_dir, "audio2bucket").doc["full_size_config"] == AUDIO2BUCKET_CONFIG


def test_tokens_batched_equals_per_frame():
    model = _randomise(AudioToTokens(**TINY_TOKEN), 1)
    windows = torch.randn(2, 6, 10, 5, 8, generator=torch.Generator().manual_seed(2))
    batched = model(windows)
    assert batched.shape == (2, 6, 4, 12)
    per_frame = torch.stack([torch.cat([model(windows[b:b + 1, f:f + 1]) for f in range(6)], dim=1)[0]
                             for b in range(2)])
    torch.testing.assert_close(batched, per_frame, atol=1e-5, rtol=1e-5)


def test_buckets_batched_equals_per_frame():
    model = _randomise(AudioToBuckets(**TINY_BUCKET), 3)
    gen = torch.Generator().manual_seed(4)
    windows = torch.randn(2, 6, 50, 1, 8, generator=gen)
    clip = torch.randn(2, 12, generator=gen)
    batched = model(windows, clip)
    assert batched.shape == (2, 6, 2, 1)
    per_frame = torch.stack([torch.cat([model(windows[b:b + 1, f:f + 1], clip[b:b + 1]) for f in range(6)],
                                       dim=1)[0] for b in range(2)])
    torch.testing.assert_close(batched, per_frame, atol=1e-5, rtol=1e-5)
    # Per-frame embeddings and one embedding shared by the whole batch are accepted too.
    torch.testing.assert_close(model(windows, clip[:, None].expand(2, 6, 12)), batched)
    torch.testing.assert_close(model(windows, clip[:1])[1], model(windows[1:], clip[:1])[0])


def test_bucket_clip_embedding_is_appended_after_audio():
    model = _randomise(AudioToBuckets(**TINY_BUCKET), 5)
    windows = torch.randn(1, 1, 50, 1, 8)
    clip = torch.randn(1, 12)
    flat = torch.cat([windows.reshape(1, -1), clip], dim=1)
    x = torch.nn.functional.silu(model.proj1(flat))
    x = torch.nn.functional.silu(model.proj2(x))
    torch.testing.assert_close(model(windows, clip), model.proj3(x).reshape(1, 1, 2, 1))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="windows"):
        AudioToTokens(**TINY_TOKEN)(torch.zeros(1, 10, 5, 8))
    with pytest.raises(ValueError, match="CLIP"):
        AudioToBuckets(**TINY_BUCKET)(torch.zeros(1, 2, 50, 1, 8), torch.zeros(1, 11))


def test_null_audio_tokens_is_model_on_zeros():
    model = _randomise(AudioToTokens(**TINY_TOKEN), 6)
    null = null_audio_tokens(model)
    assert null.shape == (4, 12)
    torch.testing.assert_close(null, model(torch.zeros(1, 1, 10, 5, 8))[0, 0])
    assert null.abs().sum() > 0  # a learned constant, not zeros


def test_postprocess_buckets_order():
    raw = torch.tensor([[0.25, -0.5], [0.0, 1.0]])
    torch.testing.assert_close(postprocess_buckets(raw), torch.tensor([[20.0, 8.0], [16.0, 32.0]]))
    # dynamic_scale multiplies both ids after the *16+16.
    torch.testing.assert_close(postprocess_buckets(raw, 2.0), torch.tensor([[40.0, 16.0], [32.0, 64.0]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cast_runs(dtype):
    tokens = _randomise(AudioToTokens(**TINY_TOKEN), 7).to(dtype)
    buckets = _randomise(AudioToBuckets(**TINY_BUCKET), 8).to(dtype)
    out_t = tokens(torch.randn(1, 3, 10, 5, 8).to(dtype))
    out_b = buckets(torch.randn(1, 3, 50, 1, 8).to(dtype), torch.randn(1, 12))  # fp32 CLIP is cast along
    null = null_audio_tokens(tokens)
    for out in (out_t, out_b, null):
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
