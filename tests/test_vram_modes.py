"""Fitting the cards users have: fp8 weight storage, core's partial loading, the automatic sampling mode, and RAM
given back when ComfyUI frees its models and node cache."""
import gc
import weakref

import pytest
import torch

from tools.comfy_runtime import import_pack
from tools.parity_checks.common import read_golden
from tools.parity_checks.unet import build_model, case_names, forward_case
from tools.tiny_models import TINY_UNET_CONFIG

import_pack()
import comfy.model_management as mm  # noqa: E402
from sonic_pack.nodes.guider import choose_sampling_mode  # noqa: E402
from sonic_pack.nodes.native_model import sonic_model_patcher, store_weights_in  # noqa: E402
from sonic_model.sampling import memory_model  # noqa: E402
from sonic_model.unet.unet import build_sonic_unet  # noqa: E402

GIB = 2 ** 30
# fp8 (e4m3fn) storage against bf16 storage, both computing in bf16, on the UNet golden's three cases (random
# weights; measured 2026-12-02 on this CPU): max-abs 0.54 / 0.53 / 0.60 of the output's std (≈ 0.52), RMS 0.123 /
# 0.119 / 0.128 of it; bf16 against fp32 is 0.08-0.11 max-abs. The bounds are twice the worst case: fp8 is an
# approximation of the official weights, and a wrong cast (fp8 bytes read raw, a missed layer) lands far above.
FP8_MAX_ABS_OVER_STD = 1.2
FP8_RMS_OVER_STD = 0.26


@pytest.fixture(scope="module")
def unet_golden(reference_dir):
    """The UNet golden read for a bf16 run (models and inputs cast by the parity check's own helpers)."""
    return read_golden(reference_dir / "golden" / "unet_single_window.json", dtype=torch.bfloat16)


def test_fp8_weights_are_stored_in_fp8_computed_in_bf16_and_stay_close_to_bf16(unet_golden):
    bf16 = build_model(unet_golden)
    fp8 = store_weights_in(build_model(unet_golden), torch.float8_e4m3fn)
    for unet in (bf16, fp8):
        sonic_model_patcher(unet, compute_dtype=torch.bfloat16)
    linears = [m for m in fp8.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    weight_bytes = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    assert weight_bytes(fp8) < 0.6 * weight_bytes(bf16)
    # The same weights rounded to fp8 and back, computing in bf16 without core's per-layer casts: equal bit for bit.
    rounded = build_model(unet_golden)
    for layer in rounded.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn).to(torch.bfloat16)
    for case in case_names(unet_golden):
        reference = forward_case(bf16, unet_golden, case).float()
        approx = forward_case(fp8, unet_golden, case).float()
        assert torch.equal(approx, forward_case(rounded, unet_golden, case).float())
        std = reference.std()
        assert 0 < float((approx - reference).abs().max() / std) < FP8_MAX_ABS_OVER_STD, case
        assert float((approx - reference).pow(2).mean().sqrt() / std) < FP8_RMS_OVER_STD, case


def _apply(model, x, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = TINY_UNET_CONFIG["cross_attention_dim"]
    frames = x.shape[0] // 3
    return model.model.apply_model(
        x, torch.full((x.shape[0],), 3.0), c_concat=torch.randn(x.shape, generator=g),
        c_crossattn=torch.randn(x.shape[0], 1, d, generator=g), audio_tokens=torch.randn(x.shape[0], 4, d, generator=g),
        time_ids=torch.tensor([[12.5, 20.0, 24.0]] * 3), frames=frames, face_mask=None)


def test_every_weight_layer_of_the_sonic_unet_becomes_a_comfy_ops_layer():
    unet = build_sonic_unet(TINY_UNET_CONFIG)
    sonic_model_patcher(unet, compute_dtype=torch.float32)
    plain = {type(m).__name__ for m in unet.modules() if type(m).__module__.startswith("torch.nn")
             and any(True for _ in m.parameters(recurse=False))}
    assert not plain, f"layers core cannot cast or stream: {plain}"
    assert sum(hasattr(m, "comfy_cast_weights") for m in unet.modules()) > 50


def test_a_partially_loaded_unet_gives_the_fully_loaded_output():
    torch.manual_seed(0)
    unet = build_sonic_unet(TINY_UNET_CONFIG)
    for p in unet.parameters():
        p.data.normal_(0, 0.05)
    model = sonic_model_patcher(unet, compute_dtype=torch.float32)
    x = torch.randn(3 * 2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    model.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    full = _apply(model, x)
    model.detach()
    budget = model.model_size() // 3  # a third of the weights fit: the rest is cast in per layer
    model.load(torch.device("cpu"), lowvram_model_memory=budget)
    streamed = [m for m in unet.modules() if getattr(m, "comfy_cast_weights", False)]
    assert model.model.model_lowvram and streamed
    torch.testing.assert_close(_apply(model, x), full, rtol=0, atol=0)
    model.detach()


@pytest.mark.parametrize("free_gib, expected", [(40, "batched guidance"), (7.02, "per-row guidance"),
                                                (3.0, "per-row + slicing + offload")])
def test_the_fastest_mode_that_fits_the_free_vram_is_chosen(free_gib, expected):
    mode, working = choose_sampling_mode(None, False, int(free_gib * GIB), 512, 512, 25, 125, torch.float16,
                                         torch.float16)
    assert mode.name == expected and working > 0
    if mode.offload:
        assert 0 < mode.offload_bytes < memory_model.unet_weight_bytes("fp16")


def test_forced_settings_and_the_cpu_skip_the_memory_model():
    assert choose_sampling_mode(True, False, 100 * GIB, 512, 512, 25, 125, torch.float16,
                                torch.float16)[0] == memory_model.PER_ROW_SLICED
    assert choose_sampling_mode(False, False, 1, 512, 512, 25, 125, torch.float16,
                                torch.float16) == (memory_model.BATCHED, None)
    assert choose_sampling_mode(None, True, 0, 512, 512, 25, 125, torch.float32,
                                torch.float32) == (memory_model.BATCHED, None)


def test_fp8_weights_make_512_fit_where_fp16_offloads():
    def mode(free_gib, weights):
        return choose_sampling_mode(None, False, int(free_gib * GIB), 512, 512, 25, 125, torch.float16, weights)[0]

    assert mode(4.0, torch.float16).offload and mode(4.0, torch.float8_e4m3fn) == memory_model.PER_ROW
    assert 0 < mode(2.6, torch.float8_e4m3fn).offload_bytes < mode(2.6, torch.float16).offload_bytes


def test_nothing_fits_names_what_to_lower():
    with pytest.raises(memory_model.DoesNotFit, match="resolution|window"):
        choose_sampling_mode(None, False, 256 * 2 ** 20, 1024, 1024, 25, 125, torch.float16, torch.float16)


def test_freeing_comfyuis_models_and_node_cache_gives_the_sonic_models_back(tiny_models_dir, tmp_path):
    from comfy_harness import load_runtime, run_prompt, use_models_dir
    from reliability_runtime import loader, pack_module

    load_runtime()
    use_models_dir(tiny_models_dir, tmp_path / "output")
    loaders = pack_module("nodes.loaders")
    loaded = []
    original = loaders.load_sonic_models

    def spy(*args, **kwargs):
        models, model = original(*args, **kwargs)
        loaded.append((weakref.ref(models), weakref.ref(model.model)))
        return models, model

    loaders.load_sonic_models = spy
    try:
        run_prompt({"1": loader(face_detector="none"), "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 3]}}})
    finally:
        loaders.load_sonic_models = original
    assert loaded and all(ref() is not None for ref in loaded[-1])
    # What POST /free {"unload_models": true, "free_memory": true} makes ComfyUI's prompt worker do.
    load_runtime()["executor"].reset()
    mm.unload_all_models()
    gc.collect()
    assert all(ref() is None for ref in loaded[-1]), "a Sonic model outlived ComfyUI's unloading"


def test_a_runs_memory_choice_stays_in_that_run_not_on_the_shared_model(monkeypatch):
    """Two workflows share one loader's MODEL: what the auto mode chose for one run (the memory estimate core's
    loader reads, sliced attention) is gone when the run ends, so the next run starts from the loader's settings."""
    from diffusers.models.attention_processor import Attention

    from sonic_fakes import make_conditioning
    from sonic_pack.nodes.guider import SonicGuider
    from sonic_model.unet.speed import SlicedAttnProcessor

    unet = build_sonic_unet(TINY_UNET_CONFIG)
    model = sonic_model_patcher(unet, low_vram=None, compute_dtype=torch.float32)
    processors = {name: m.processor for name, m in unet.named_modules() if isinstance(m, Attention)}
    estimate = model.model.memory_required([6, 4, 8, 8])
    seen = []

    def tight(guider, latent_shape):  # as the auto mode picks on a small card
        return memory_model.PER_ROW_SLICED, 123 * 2**20

    def spy(event):
        seen.append((model.model.working_memory, sum(isinstance(m.processor, SlicedAttnProcessor)
                                                    for m in unet.modules() if isinstance(m, Attention))))

    monkeypatch.setattr(SonicGuider, "_choose_memory", tight)
    cond = make_conditioning(6, h=8, w=8, d=TINY_UNET_CONFIG["cross_attention_dim"], t=4)
    cond.audio_tokens = torch.randn(6, 4, TINY_UNET_CONFIG["cross_attention_dim"])
    guider = SonicGuider(model, cond, cfg_image=2.0, cfg_audio=7.5, shift=1, window=3, on_window=spy)
    latent = cond.concat_latent.expand(6, -1, -1, -1).contiguous()
    import comfy.samplers

    guider.sample(torch.randn(6, 4, 8, 8), latent, comfy.samplers.sampler_object("euler"),
                  torch.tensor([10.0, 1.0, 0.0]), seed=0)
    assert seen and seen[0][0] == 123 * 2**20 and seen[0][1] > 0  # in the run: its estimate and sliced attention
    assert model.model.working_memory is None
    assert model.model.memory_required([6, 4, 8, 8]) == estimate
    assert {name: m.processor for name, m in unet.named_modules() if isinstance(m, Attention)} == processors


def test_every_sonic_model_is_in_the_patcher_class_core_builds_its_own_models_with(tiny_models_dir, monkeypatch):
    """Core picks its patcher class at start-up (0.33: CoreModelPatcher becomes ModelPatcherDynamic when dynamic
    VRAM is on, which needs an NVIDIA GPU); the UNet, Whisper with the adapters and RIFE follow that choice."""
    import comfy.model_patcher

    from sonic_fakes import load_tiny_sonic

    class CoresChoice(comfy.model_patcher.ModelPatcher):
        pass

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", CoresChoice, raising=False)
    models, unet = load_tiny_sonic(tiny_models_dir)
    assert [type(p) for p in (unet, models.audio_patcher, models.rife_patcher)] == [CoresChoice] * 3


@pytest.mark.device
def test_the_guider_budgets_core_s_free_memory_less_its_reserve(stand_in_gpu, monkeypatch):
    """Core keeps EXTRA_RESERVED_VRAM (or --reserve-vram) back from every load, so the auto mode must not count it:
    8 GiB free with 2 GiB reserved is judged as 6 GiB."""
    from sonic_fakes import make_conditioning
    from sonic_pack.nodes import guider as guider_module

    seen = []

    def spy(low_vram, on_cpu, free, *rest):
        seen.append(free)
        return memory_model.BATCHED, None

    monkeypatch.setattr(guider_module, "choose_sampling_mode", spy)
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: 8 * GIB)
    monkeypatch.setattr(mm, "extra_reserved_memory", lambda: 2 * GIB)
    unet = build_sonic_unet(TINY_UNET_CONFIG)
    model = sonic_model_patcher(unet, low_vram=None, compute_dtype=torch.float32)
    cond = make_conditioning(3, h=8, w=8, d=TINY_UNET_CONFIG["cross_attention_dim"], t=4)
    guider = guider_module.SonicGuider(model, cond, cfg_image=2.0, cfg_audio=7.5, shift=1, window=3)
    with guider._memory_settings((3, 4, 8, 8)):
        pass
    assert seen == [8 * GIB + model.loaded_size() - 2 * GIB]
