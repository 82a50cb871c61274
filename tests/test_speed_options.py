"""UNet speed options (attention slicing, torch.compile), the per-run mask-grid cache, SDPA
everywhere, and the loader passing the options through. Each option must give the plain model's output."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import sonic_model.unet.unet as unet_module
from sonic_model.unet.audio_attention import AudioContext, SonicAudioAttnProcessor, sliced_sdpa
from sonic_model.sampling.memory_model import ATTENTION_SLICES
from sonic_model.unet.speed import (SlicedAttnProcessor, SpeedOptions, apply_speed_options,
                               compile_report, speed_options_for)
from tools.parity_checks.common import read_golden
from tools.parity_checks.unet import build_model

CASES = ("square", "landscape")


@pytest.fixture(scope="module")
def golden(reference_dir: Path):
    return read_golden(reference_dir / "golden" / "unet_single_window.json")


def _inputs(golden, case: str) -> tuple:
    t = {k[len(case) + 4:]: v for k, v in golden.tensors.items() if k.startswith(f"{case}.in.")}
    return (t["latent_model_input"], t["timestep"], t["added_time_ids"], t["clip_states"], t["audio_tokens"],
            t["face_mask"])


@pytest.fixture(scope="module")
def plain_outputs(golden) -> dict[str, torch.Tensor]:
    model = build_model(golden)
    with torch.no_grad():
        return {case: model(*_inputs(golden, case)) for case in CASES}


def _max_diff(model, golden, plain_outputs) -> float:
    with torch.no_grad():
        return max((model(*_inputs(golden, case)) - plain_outputs[case]).abs().max().item() for case in CASES)


def _count_sdpa(monkeypatch) -> list[torch.Tensor]:
    """Every query that goes through `F.scaled_dot_product_attention` from now on (diffusers' and ours)."""
    calls = []
    real = F.scaled_dot_product_attention

    def counting(q, k, v, **kwargs):
        calls.append(q)
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def test_attention_slicing_matches_plain_model(golden, plain_outputs, monkeypatch) -> None:
    model = apply_speed_options(build_model(golden), attention_slices=3)
    processors = [m.processor for m in model.modules() if isinstance(m, Attention)]
    assert sum(isinstance(p, SlicedAttnProcessor) for p in processors) == len(processors) // 2
    assert all(p.slices == 3 for p in processors if isinstance(p, SonicAudioAttnProcessor))
    calls = _count_sdpa(monkeypatch)
    assert _max_diff(model, golden, plain_outputs) < 1e-5
    sliced = list(calls)
    calls.clear()
    apply_speed_options(model)  # back to whole attention
    assert all(isinstance(m.processor, (AttnProcessor2_0, SonicAudioAttnProcessor))
               for m in model.modules() if isinstance(m, Attention))
    assert _max_diff(model, golden, plain_outputs) == 0.0
    assert len(sliced) > len(calls)  # really in pieces, each no bigger than the whole
    assert max(q.numel() for q in sliced) < max(q.numel() for q in calls)


@pytest.mark.parametrize("shape,kv_len", [((2, 3, 37, 16), 37), ((40, 2, 5, 8), 5), ((3, 2, 50, 8), 4)])
@pytest.mark.parametrize("slices", [2, 3, 7, 100])
def test_sliced_sdpa_equals_whole(shape, kv_len: int, slices: int) -> None:
    g = torch.Generator().manual_seed(slices)
    q = torch.randn(*shape, generator=g)
    k = torch.randn(*shape[:2], kv_len, shape[3], generator=g)
    v = torch.randn(*shape[:2], kv_len, 24, generator=g)
    whole = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(sliced_sdpa(q, k, v, slices), whole, atol=1e-6, rtol=1e-6)
    assert sliced_sdpa(q, k, v, slices).shape == whole.shape


def test_every_attention_is_sdpa_never_a_manual_softmax(golden, monkeypatch) -> None:
    model = build_model(golden)
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    calls = _count_sdpa(monkeypatch)

    def forbidden(*args, **kwargs):
        raise AssertionError("manual softmax in the UNet")

    monkeypatch.setattr(F, "softmax", forbidden)
    monkeypatch.setattr(torch, "softmax", forbidden)
    monkeypatch.setattr(torch.Tensor, "softmax", forbidden)
    with torch.no_grad():
        model(*_inputs(golden, "square"))
    # attn1: one SDPA each; attn2: the audio branch (the single CLIP token's attention is its value, exactly).
    assert len(calls) == len(attentions)
    assert all(q.stride(-1) == 1 for q in calls)  # the layout the flash / memory-efficient kernels take


def test_single_clip_token_shortcut_equals_attention() -> None:
    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=16, heads=2, dim_head=16)
    processor = SonicAudioAttnProcessor(32, 16)
    attn.set_processor(processor)
    x, clip, audio = torch.randn(6, 9, 32), torch.randn(3, 1, 16), torch.randn(3, 4, 16)
    with torch.no_grad():
        out = attn(x, encoder_hidden_states=AudioContext(clip, audio))
        q = attn.to_q(x).reshape(3, -1, 2, 16).transpose(1, 2)
        image = F.scaled_dot_product_attention(q, attn.to_k(clip).reshape(3, 1, 2, 16).transpose(1, 2),
                                               attn.to_v(clip).reshape(3, 1, 2, 16).transpose(1, 2))
        sound = F.scaled_dot_product_attention(q, processor.to_k_ip[0](audio).reshape(3, 4, 2, 16).transpose(1, 2),
                                               processor.to_v_ip[0](audio).reshape(3, 4, 2, 16).transpose(1, 2))
        both = (image + sound).transpose(1, 2).reshape(6, 9, 32)
        expected = attn.to_out[0](both)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_mask_grids_cached_across_calls_and_refreshed_for_a_new_mask(golden, plain_outputs, monkeypatch) -> None:
    model = build_model(golden)
    made = []
    real = unet_module.mask_to_token_grid
    monkeypatch.setattr(unet_module, "mask_to_token_grid", lambda m, h, w: made.append((h, w)) or real(m, h, w))
    args = _inputs(golden, "landscape")
    levels = len(model.token_grid_sizes(*args[0].shape[-2:]))
    with torch.no_grad():
        first = model(*args)
        again = model(*args)
        assert len(made) == levels  # once per token grid for both calls
        other_mask = args[-1].clone()
        model(*args[:-1], other_mask)
        assert len(made) == 2 * levels  # a different mask object: computed afresh
        other_mask.zero_()  # edited in place: its version changes, so no stale grids
        edited = model(*args[:-1], other_mask)
        assert len(made) == 3 * levels
    torch.testing.assert_close(first, plain_outputs["landscape"], atol=0, rtol=0)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    assert (edited - first).abs().max() > 1e-3  # the zeroed mask reached the audio branch
    with torch.inference_mode():  # ComfyUI's mode: inference tensors have no version counter
        mask = args[-1].clone()
        torch.testing.assert_close(model(*args[:-1], mask), first, atol=0, rtol=0)


def test_compile_matches_plain_model_and_reports_its_time(golden, plain_outputs, caplog) -> None:
    # aot_eager: the same dynamo capture and AOT graph as inductor without a C++ build (minutes on this CPU;
    # benchmarks/gpu_bench.py --quick times the inductor build and run).
    model = apply_speed_options(build_model(golden), compile=True, compile_backend="aot_eager", attention_slices=2)
    torch._dynamo.reset()
    with caplog.at_level(logging.INFO, logger="sonic_model.unet.speed"):
        assert _max_diff(model, golden, plain_outputs) < 1e-4
    report = compile_report(model)
    assert report.failure is None and len(report.compiled_shapes) == len(CASES) and report.compile_seconds > 0
    assert sum("compiled the UNet" in r.message for r in caplog.records) == len(CASES)
    seconds = report.compile_seconds
    _max_diff(model, golden, plain_outputs)
    assert report.compile_seconds == seconds  # same shapes: no second compile
    assert compile_report(SimpleNamespace(unet=model)) is report  # reachable through the MODEL's diffusion model


def test_compile_failure_falls_back_with_the_reason_logged(golden, plain_outputs, caplog) -> None:
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C compiler on this machine")

    model = apply_speed_options(build_model(golden), compile=True, compile_backend=broken_backend)
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="sonic_model.unet.speed"):
        assert _max_diff(model, golden, plain_outputs) < 1e-6
    report = compile_report(model)
    assert report.failure is not None and "no C compiler" in report.failure
    assert any("torch.compile unavailable" in r.message and "no C compiler" in r.message for r in caplog.records)


def test_default_compile_is_inductor_and_off_by_default(golden) -> None:
    model = build_model(golden)
    assert compile_report(model) is None and model.compiled_core is None
    apply_speed_options(model, compile=True)
    assert compile_report(model).backend == "inductor" and compile_report(model).compiled_shapes == []
    apply_speed_options(model)
    assert compile_report(model) is None
    with pytest.raises(TypeError):
        apply_speed_options(torch.nn.Linear(2, 2), compile=True)


def test_low_vram_means_attention_slices() -> None:
    assert speed_options_for(low_vram=True, compile=False) == SpeedOptions(attention_slices=ATTENTION_SLICES)
    assert speed_options_for(low_vram=False, compile=True) == SpeedOptions(compile=True)


def test_loader_passes_the_options_to_the_unet(golden, monkeypatch) -> None:
    from tools.comfy_runtime import import_pack

    import_pack()
    from sonic_pack.nodes import loaders

    # (the pack's own copy of sonic_model: compare fields, not classes)
    assert asdict(loaders.loader_speed_options(True)) == asdict(SpeedOptions(attention_slices=ATTENTION_SLICES))
    assert asdict(loaders.loader_speed_options(False)) == asdict(SpeedOptions())
    inputs = {i.id: i for i in loaders.SonicLoader.define_schema().inputs}
    # one way to compile: core's TorchCompileModel after the loader (tests/test_core_model_tools.py)
    assert "compile" not in inputs and "TorchCompileModel" in inputs["settings"].tooltip
    # load_sonic_models with every file reader stubbed: only the wiring of the options is under test.
    from sonic_model.unet.unet import build_sonic_unet

    unet = build_sonic_unet(golden.doc["config"])
    whisper = SimpleNamespace(encoder=SimpleNamespace(config=SimpleNamespace(d_model=8, encoder_layers=4)))
    from sonic_model.weights import model_loading  # what the loader imports on first use
    from sonic_model.audio import whisper_features

    monkeypatch.setattr(model_loading, "load_sonic_unet", lambda path, dtype, device: unet)
    monkeypatch.setattr(whisper_features, "WhisperAudioEncoder", SimpleNamespace(from_folder=lambda path: whisper))
    monkeypatch.setattr(model_loading, "load_audio2token", lambda *a: torch.nn.Identity())
    monkeypatch.setattr(model_loading, "load_audio2bucket", lambda *a: torch.nn.Identity())
    models, model = loaders.load_sonic_models(Path("u"), Path("t"), Path("b"), Path("w"), None, None,
                                              torch.float32, low_vram=True)
    assert model.model.diffusion_model.unet is unet and compile_report(model.model.diffusion_model) is None
    assert all(m.processor.slices == ATTENTION_SLICES for m in unet.modules()
               if isinstance(m, Attention) and not isinstance(m.processor, AttnProcessor2_0))
    plain, plain_model = loaders.load_sonic_models(Path("u"), Path("t"), Path("b"), Path("w"), None, None,
                                                   torch.float32, low_vram=False)
    assert compile_report(plain_model.model.diffusion_model) is None
    assert not any(getattr(m.processor, "slices", None) for m in plain_model.model.diffusion_model.unet.modules()
                   if isinstance(m, Attention))
