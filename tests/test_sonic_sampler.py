"""The Sonic MODEL + GUIDER inside ComfyUI: core samplers/schedulers, SamplerCustomAdvanced, SplitSigmas chains, CFG++,
progress, previews, Cancel, seeds."""
import math

import pytest
import torch

from sonic_fakes import RecordingUNet, make_conditioning, node_inputs
from tools.comfy_runtime import import_pack

import_pack()
import comfy.model_base  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.utils  # noqa: E402
from comfy_extras import nodes_custom_sampler as custom  # noqa: E402
from sonic_pack.nodes.native_model import SonicModelConfig, sonic_model_patcher  # noqa: E402
from sonic_pack.nodes.sampling import SonicGuiderNode, SonicSampler, run_sonic_sampler, \
    schedule_sigmas  # noqa: E402
from sonic_model.sampling.shift_fusion import ShiftFusion, edm_rows_denoiser  # noqa: E402


def _inputs(n=7, unet=None, low_vram=False):
    cond = make_conditioning(n)
    unet = unet or RecordingUNet()
    model = sonic_model_patcher(unet, low_vram=low_vram)
    return (model, *node_inputs(cond), unet)


def _sample(n=7, sampler_name="euler", steps=3, seed=1, window=3, shift=1, **kw):
    model, audio, image, motion, unet = _inputs(n, low_vram=kw.pop("low_vram", False))
    out = run_sonic_sampler(model, audio, image, motion, seed=seed, steps=steps, cfg_image=2.0, cfg_audio=7.5,
                            shift=shift, window=window, sampler_name=sampler_name,
                            scheduler=kw.pop("scheduler", "karras"), denoise=kw.pop("denoise", 1.0), **kw)
    return out, unet


def _output(node_output):
    return node_output.result if hasattr(node_output, "result") else node_output


def _core(name: str, **inputs) -> tuple:
    """Run one of core's custom-sampling nodes as the executor would (V3 `execute` or V1 FUNCTION: core moved
    these nodes to the V3 schema after 0.3.64)."""
    cls = getattr(custom, name)
    if hasattr(cls, "define_schema"):
        return _output(cls.execute(**inputs))
    return getattr(cls(), cls.FUNCTION)(**inputs)


def test_defaults_reproduce_the_official_settings():
    for node in (SonicSampler, SonicGuiderNode):
        schema = node.GET_SCHEMA()
        defaults = {i.id: getattr(i, "default", None) for i in schema.inputs}
        expected = {"cfg_image": 2.0, "cfg_audio": 7.5, "shift": 7, "window": 25}
        if node is SonicSampler:
            expected |= {"steps": 25, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}
        assert {k: defaults[k] for k in expected} == expected
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


def test_euler_makes_steps_times_windows_unet_calls_of_three_rows():
    out, unet = _sample(n=7, steps=4, window=3)
    assert out.shape == (7, 4, 4, 4) and torch.isfinite(out).all()
    assert len(unet.calls) == 4 * math.ceil(7 / 3)
    assert {c["sample_shape"] for c in unet.calls} == {(3, 3, 8, 4, 4)}


def test_the_sampler_reports_how_it_sampled_for_its_readout():
    model, audio, image, motion, _ = _inputs(4)
    report = {}
    run_sonic_sampler(model, audio, image, motion, 0, 1, 2.0, 7.5, 1, 4, "euler", "karras", 1.0, report=report)
    assert report == {"mode": "batched guidance"}  # the CPU: its memory is RAM, the fastest mode
    model.model.low_vram = True
    run_sonic_sampler(model, audio, image, motion, 0, 1, 2.0, 7.5, 1, 4, "euler", "karras", 1.0, report=report)
    assert report == {"mode": "per-row + attention slicing"}


def test_low_vram_runs_one_guidance_row_per_call_with_the_same_result():
    batched, _ = _sample(n=5, steps=2, window=3)
    rows, unet = _sample(n=5, steps=2, window=3, low_vram=True)
    assert {c["batch"] for c in unet.calls} == {1} and len(unet.calls) == 2 * 2 * 3
    torch.testing.assert_close(rows, batched, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(comfy.samplers.KSampler.SAMPLERS))
def test_every_core_sampler_runs_end_to_end(name):
    out, unet = _sample(n=4, sampler_name=name, steps=2, window=2)
    assert out.shape == (4, 4, 4, 4) and torch.isfinite(out).all(), name
    assert len(unet.calls) >= 2 * 2


def test_heun_keeps_one_window_offset_per_step():
    model, audio, image, motion, unet = _inputs(5)
    steps_seen = []
    original = ShiftFusion.denoise

    def spy(self, x, sigma, step, denoise, **options):
        steps_seen.append(step)
        return original(self, x, sigma, step, denoise, **options)

    ShiftFusion.denoise = spy
    try:
        run_sonic_sampler(model, audio, image, motion, 0, 3, 2.0, 7.5, 1, 5, "heun", "karras", 1.0)
    finally:
        ShiftFusion.denoise = original
    assert steps_seen == [0, 0, 1, 1, 2]


def test_sampler_and_sigmas_inputs_override_the_combos():
    sigmas = torch.tensor([50.0, 5.0, 0.0])
    sampler = comfy.samplers.sampler_object("dpmpp_2m")
    out, unet = _sample(steps=25, sampler=sampler, sigmas=sigmas)
    assert len(unet.calls) == 2 * math.ceil(7 / 3) and torch.isfinite(out).all()


def test_denoise_below_one_starts_part_way_down():
    model = _inputs(3)[0]
    full = schedule_sigmas(model, "karras", 10, 1.0)
    half = schedule_sigmas(model, "karras", 10, 0.5)
    assert len(half) == 11 and float(half[0]) < float(full[0]) / 10
    assert math.isclose(float(full[0]), 700.0, rel_tol=1e-5)
    _, unet = _sample(steps=4, denoise=0.5)
    assert len(unet.calls) == 4 * 3


def test_same_seed_same_latents_and_seed_zero_is_a_seed():
    a, _ = _sample(seed=0)
    b, _ = _sample(seed=0)
    c, _ = _sample(seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_initial_latent_is_reference_plus_sigma_max_noise():
    model, audio, image, motion, unet = _inputs(3)
    first_x = []
    original = ShiftFusion.denoise

    def spy(self, x, sigma, step, denoise, **options):
        first_x.append((x.clone(), sigma))
        return original(self, x, sigma, step, denoise, **options)

    ShiftFusion.denoise = spy
    try:
        run_sonic_sampler(model, audio, image, motion, 5, 2, 2.0, 7.5, 1, 3, "euler", "karras", 1.0)
    finally:
        ShiftFusion.denoise = original
    x0, sigma = first_x[0]
    noise = comfy.sample.prepare_noise(torch.zeros(3, 4, 4, 4), 5)
    expected = image.concat_latent * 0.18215 + sigma * noise
    torch.testing.assert_close(x0, expected, atol=1e-4, rtol=1e-6)


def _euler_by_hand(unet, n, seed, steps, post=None):
    """The library alone: ShiftFusion + the EDM rows denoiser, Euler written out (the official loop's arithmetic)."""
    cond = make_conditioning(n)
    model = _inputs(n)[0]
    sigmas = schedule_sigmas(model, "karras", steps)
    fusion = ShiftFusion(cond, window=n, shift=1)
    x = cond.concat_latent * 0.18215 + float(sigmas[0]) * comfy.sample.prepare_noise(torch.zeros(n, 4, 4, 4), seed)
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        fused = fusion.denoise(x, s, i, edm_rows_denoiser(unet))
        x = post(fused, x, s, s_next) if post else x + (x - fused.guided) / s * (s_next - s)
    return x


def test_output_latents_use_cores_unscaled_convention_and_cores_model_call_equals_the_librarys():
    model, audio, image, motion, unet = _inputs(5)
    out = run_sonic_sampler(model, audio, image, motion, 3, 2, 2.0, 7.5, 1, 5, "euler", "karras", 1.0)
    torch.testing.assert_close(out * 0.18215, _euler_by_hand(unet, 5, 3, 2), atol=1e-5, rtol=1e-5)


def test_cfg_pp_sampler_steps_from_the_fused_uncond_prediction():
    model, audio, image, motion, unet = _inputs(5)
    out = run_sonic_sampler(model, audio, image, motion, 3, 6, 2.0, 7.5, 1, 5, "euler_cfg_pp", "karras", 1.0)

    def cfg_pp(fused, x, s, s_next):  # CFG++: x0_guided + σ_next · ε(uncond)
        return fused.guided + (x - fused.uncond) / s * s_next

    expected = _euler_by_hand(unet, 5, 3, 6, post=cfg_pp)
    torch.testing.assert_close(out * 0.18215, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, _euler_by_hand(unet, 5, 3, 6), atol=1e-2)  # plain Euler lands elsewhere


def _custom_advanced(model, audio, image, motion, seed, sigmas, sampler_name="euler", first_step=0, latent=None,
                     add_noise=True):
    guider, start = _output(SonicGuiderNode.execute(model, audio, image, motion, 2.0, 7.5, 1, 3, first_step))
    noise = _core("RandomNoise", noise_seed=seed)[0] if add_noise else _core("DisableNoise")[0]
    sampler = _core("KSamplerSelect", sampler_name=sampler_name)[0]
    out, _ = _core("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                   latent_image=latent or start)
    return out


def test_sampler_custom_advanced_with_the_sonic_guider_equals_the_sonic_ksampler_bit_for_bit():
    model, audio, image, motion, _ = _inputs(7)
    sigmas = _core("BasicScheduler", model=model, scheduler="karras", steps=4, denoise=1.0)[0]
    ours = run_sonic_sampler(model, audio, image, motion, 11, 4, 2.0, 7.5, 1, 3, "euler", "karras", 1.0)
    core = _custom_advanced(model, audio, image, motion, 11, sigmas)["samples"]
    assert torch.equal(ours, core)


def test_two_chained_samplers_equal_one_when_the_second_guider_starts_at_the_split_step():
    model, audio, image, motion, _ = _inputs(7)
    sigmas = _core("BasicScheduler", model=model, scheduler="karras", steps=6, denoise=1.0)[0]
    high, low = _core("SplitSigmas", sigmas=sigmas, step=2)
    whole = _custom_advanced(model, audio, image, motion, 4, sigmas)["samples"]
    first = _custom_advanced(model, audio, image, motion, 4, high)
    chained = _custom_advanced(model, audio, image, motion, 4, low, first_step=2, latent=first,
                               add_noise=False)["samples"]
    torch.testing.assert_close(chained, whole, atol=1e-5, rtol=1e-5)
    restarted = _custom_advanced(model, audio, image, motion, 4, low, first_step=0, latent=first,
                                 add_noise=False)["samples"]
    assert not torch.allclose(restarted, whole, atol=1e-3)  # the step index matters: α moves the windows


def test_two_way_cfg_model_patches_and_foreign_models_are_refused_clearly():
    model, audio, image, motion, _ = _inputs(4)
    patched = model.clone()
    patched.set_model_sampler_cfg_function(lambda args: args["cond"])
    with pytest.raises(ValueError, match="^test_two_way_cfg_model_patches_and_foreign_models_are_refused_clearly rewrites core.s two-way CFG .*remove it from the MODEL chain"):
        run_sonic_sampler(patched, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)
    core_model = comfy.model_base.BaseModel(SonicModelConfig(torch.float32, None))  # a core model, not Sonic's
    with pytest.raises(ValueError, match="not a Sonic UNet.*Load SVD \\+ Sonic weights"):
        run_sonic_sampler(comfy.model_patcher.ModelPatcher(core_model, "cpu", "cpu"), audio, image,
                          motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)


def test_a_latent_of_another_length_is_explained():
    model, audio, image, motion, _ = _inputs(5)
    sigmas = schedule_sigmas(model, "karras", 2)
    with pytest.raises(ValueError, match="latent has 3 frames but the Sonic audio has 5"):
        _custom_advanced(model, audio, image, motion, 0, sigmas, latent={"samples": torch.zeros(3, 4, 4, 4)})


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2"])
def test_progress_once_per_window_with_previews_never_backwards_then_cancel_and_rerun(name):
    events = []

    def hook(value, total, preview, node_id=None):
        events.append((value, total, preview))
        if len(events) == 4 and cancel["on"]:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    cancel = {"on": False}
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        _sample(n=7, steps=3, window=3, sampler_name=name)
        values = [e[0] for e in events]
        assert values == sorted(values) and values[-1] == 9 and {e[1] for e in events} == {9}
        if name == "euler":
            assert values == list(range(1, 10))
        assert events[0][2][0] == "JPEG" and events[0][2][1].size[0] > 0
        events.clear()
        cancel["on"] = True
        with pytest.raises(mm.InterruptProcessingException):
            _sample(n=7, steps=3, window=3, sampler_name=name)
        assert len(events) == 4
        cancel["on"] = False
        events.clear()
        out, _ = _sample(n=7, steps=3, window=3, sampler_name=name)
        assert torch.isfinite(out).all() and events[-1][0] == 9
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


def test_nan_latents_are_reported_with_precision_advice():
    class Exploding(RecordingUNet):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs) * float("nan")

    model, audio, image, motion, _ = _inputs(4, unet=Exploding())
    with pytest.raises(FloatingPointError, match="bf16 or fp32"):
        run_sonic_sampler(model, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)


def test_too_short_audio_and_mismatched_motion_are_explained():
    model, audio, image, motion, _ = _inputs(4)
    audio.num_frames = 0
    with pytest.raises(ValueError, match="at least 0.08 s"):
        run_sonic_sampler(model, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)
    model, audio, image, motion, _ = _inputs(4)
    motion.buckets = motion.buckets[:3]
    with pytest.raises(ValueError, match="same Sonic audio"):
        run_sonic_sampler(model, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)


def test_out_of_memory_is_reported_with_low_vram_advice_and_the_next_run_works():
    class OutOfMemory(RecordingUNet):
        def forward(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model, audio, image, motion, _ = _inputs(4, unet=OutOfMemory())
    with pytest.raises(torch.OutOfMemoryError, match="low_vram to 'on'.*resolution"):
        run_sonic_sampler(model, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)
    out, _ = _sample(n=4, steps=2, window=4)
    assert torch.isfinite(out).all()
