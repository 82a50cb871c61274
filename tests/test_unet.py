"""The Sonic UNet: official key manifest, golden parity, and the checks that prove the parity test can fail."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from sonic_model.unet.audio_attention import AudioContext, SonicAudioAttnProcessor
from sonic_model.unet.unet import SonicUNet, build_sonic_unet, sonic_unet_state_dict_shapes
from tools.parity_checks.common import compare_golden, read_golden
from tools.parity_checks.unet import build_model, case_names, forward_case, run

TEMPORAL_AUDIO_KEY = "mid_block.attentions.0.temporal_transformer_blocks.0.attn2.processor.to_v_ip.0.weight"


@pytest.fixture(scope="module")
def golden(reference_dir: Path):
    return read_golden(reference_dir / "golden" / "unet_single_window.json")


@pytest.fixture(scope="module")
def model(golden) -> SonicUNet:
    return build_model(golden)


def test_full_size_keys_match_official_manifest(reference_dir: Path) -> None:
    manifest = json.loads((reference_dir / "manifest" / "sonic_unet.json").read_text())
    assert sonic_unet_state_dict_shapes() == manifest
    assert len(manifest) == 1492
    meta = build_sonic_unet(device="meta")
    # Nothing allocated, the CPU-created mix_factor scalars included.
    assert all(t.is_meta for t in meta.state_dict().values())
    audio_keys = [k for k in meta.state_dict() if ".attn2.processor.to_" in k]
    assert len(audio_keys) == 64


def test_golden_parity_all_cases(golden, model) -> None:
    comparisons = run(golden, model)
    failed = [c.line() for c in comparisons if not c.passed]
    assert not failed, "\n".join(failed)
    names = {c.name for c in comparisons}
    for case in case_names(golden):
        assert f"{case}.out.sample" in names
        assert sum(n.startswith(f"{case}.aux.mask_downsample_") for n in names) == 2


def test_strict_load_rejects_a_second_adapter(golden) -> None:
    model = build_sonic_unet(golden.doc["config"], device="meta")
    weights = golden.weights("weights.")
    weights[TEMPORAL_AUDIO_KEY.replace("to_v_ip.0", "to_v_ip.1")] = weights[TEMPORAL_AUDIO_KEY]
    with pytest.raises(RuntimeError, match="to_v_ip.1"):
        model.load_state_dict(weights, strict=True, assign=True)


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_fails_with_mask_at_latent_resolution(golden, model, mode: str) -> None:
    case = "landscape"
    pixel_mask = golden.tensors[f"{case}.in.face_mask"]
    latent_hw = golden.tensors[f"{case}.in.latent_model_input"].shape[-2:]
    latent_mask = F.interpolate(pixel_mask, size=tuple(latent_hw), mode=mode)
    assert not compare_golden(golden, f"{case}.out.sample", forward_case(model, golden, case, latent_mask)).passed
    assert not compare_golden(golden, f"{case}.out.sample",
                              forward_case(model, golden, case, torch.ones_like(pixel_mask))).passed


def test_fails_with_perturbed_temporal_audio_weight(golden) -> None:
    perturbed = build_model(golden)
    with torch.no_grad():
        perturbed.get_parameter(TEMPORAL_AUDIO_KEY).add_(1e-2)
    case = "square"
    assert not compare_golden(golden, f"{case}.out.sample", forward_case(perturbed, golden, case)).passed


def test_grouped_temporal_context_equals_repeated_context() -> None:
    torch.manual_seed(0)
    rows, groups, frames, dim, ctx_dim, tokens = 3, 6, 5, 32, 16, 4
    attn = Attention(dim, cross_attention_dim=ctx_dim, heads=2, dim_head=16)
    attn.set_processor(SonicAudioAttnProcessor(dim, ctx_dim))
    x = torch.randn(rows * groups, frames, dim)
    clip, audio = torch.randn(rows, 1, ctx_dim), torch.randn(rows, tokens, ctx_dim)
    with torch.no_grad():
        grouped = attn(x, encoder_hidden_states=AudioContext(clip, audio))
        repeated = attn(x, encoder_hidden_states=AudioContext(clip.repeat_interleave(groups, 0),
                                                              audio.repeat_interleave(groups, 0)))
        image_only = attn(x, encoder_hidden_states=AudioContext(clip, audio[:, :0]))
    torch.testing.assert_close(grouped, repeated, atol=1e-6, rtol=1e-6)
    assert (grouped - image_only).abs().max() > 1e-2  # the audio branch contributes


def test_timestep_forms_agree(golden, model) -> None:
    t = {k.split(".in.", 1)[1]: v for k, v in golden.tensors.items() if k.startswith("square.in.")}
    args = (t["added_time_ids"], t["clip_states"], t["audio_tokens"], t["face_mask"])
    batch = t["latent_model_input"].shape[0]
    with torch.no_grad():
        scalar = model(t["latent_model_input"], t["timestep"], *args)
        per_row = model(t["latent_model_input"], t["timestep"].expand(batch), *args)
    torch.testing.assert_close(scalar, per_row, atol=0, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 0.03), (torch.bfloat16, 0.2)])
def test_half_precision_forward(golden, model, dtype: torch.dtype, tol: float) -> None:
    case = "portrait"
    reference = forward_case(model, golden, case)
    half = build_model(golden).to(dtype)
    t = {k.split(".in.", 1)[1]: v for k, v in golden.tensors.items() if k.startswith(f"{case}.in.")}
    with torch.no_grad():
        out = half(t["latent_model_input"].to(dtype), t["timestep"], t["added_time_ids"].to(dtype),
                   t["clip_states"].to(dtype), t["audio_tokens"].to(dtype), t["face_mask"].to(dtype))
    assert out.dtype == dtype and out.shape == reference.shape
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < tol  # output std ≈ 0.5


def test_sonic_model_imports_no_comfy(repo_dir: Path) -> None:
    code = ("import sys, sonic_model.unet.unet, sonic_model.unet.audio_attention; "
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m.startswith('comfy_')]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_dir, capture_output=True, text=True,
                            env={"PYTHONPATH": str(repo_dir), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
