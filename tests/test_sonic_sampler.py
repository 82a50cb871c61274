"""The Sonic KSampler inside ComfyUI: core samplers/schedulers, progress, previews, Cancel, seeds."""
import math

import pytest
import torch

from sonic_fakes import RecordingUNet, make_conditioning
from tools.comfy_runtime import import_pack

import_pack()
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.utils  # noqa: E402
from sonic_pack.nodes import comfy_sampling  # noqa: E402
from sonic_pack.nodes.sampling import SonicSampler, run_sonic_sampler  # noqa: E402
from sonic_pack.nodes.sonic_types import SonicAudioEmbeds, SonicImageEmbeds, SonicModels, \
    SonicMotionBuckets  # noqa: E402
from sonic_pack.sonic_model.fused_denoiser import ShiftFusionDenoiser  # noqa: E402


def _inputs(n=7, unet=None):
    cond = make_conditioning(n)
    unet = unet or RecordingUNet()
    patcher = comfy.model_patcher.ModelPatcher(unet, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    models = SonicModels(unet=patcher, audio2token=None, audio2bucket=None)
    audio = SonicAudioEmbeds(tokens=cond.audio_tokens, null_tokens=cond.null_audio_tokens,
                             bucket_windows=torch.zeros(n, 50, 1, 8), num_frames=n)
    image = SonicImageEmbeds(concat_latent=cond.concat_latent, image_embeds=cond.image_embeds,
                             face_mask=cond.face_mask, image=torch.zeros(1, 32, 32, 3))
    motion = SonicMotionBuckets(buckets=cond.motion_buckets, predicted=cond.motion_buckets)
    return models, audio, image, motion, unet


def _sample(n=7, sampler_name="euler", steps=3, seed=1, window=3, shift=1, **kw):
    models, audio, image, motion, unet = _inputs(n)
    out = run_sonic_sampler(models, audio, image, motion, seed=seed, steps=steps, cfg_image=2.0, cfg_audio=7.5,
                            shift=shift, window=window, sampler_name=sampler_name, scheduler=kw.pop("scheduler", "karras"),
                            denoise=kw.pop("denoise", 1.0), **kw)
    return out, unet


def test_defaults_reproduce_the_official_settings():
    schema = SonicSampler.GET_SCHEMA()
    defaults = {i.id: getattr(i, "default", None) for i in schema.inputs}
    expected = {"steps": 25, "cfg_image": 2.0, "cfg_audio": 7.5, "shift": 7, "window": 25,
                "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}
    assert {k: defaults[k] for k in expected} == expected
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


def test_euler_makes_steps_times_windows_unet_calls_of_three_rows():
    out, unet = _sample(n=7, steps=4, window=3)
    assert out.shape == (7, 4, 4, 4) and torch.isfinite(out).all()
    assert len(unet.calls) == 4 * math.ceil(7 / 3)
    assert {c["sample_shape"] for c in unet.calls} == {(3, 3, 8, 4, 4)}


@pytest.mark.parametrize("name", ["dpmpp_2m", "euler_ancestral", "heun", "dpm_2", "lms", "uni_pc", "ddim",
                                  "dpmpp_sde", "dpmpp_2m_sde", "lcm", "ipndm", "deis", "res_multistep"])
def test_core_samplers_run_end_to_end(name):
    out, unet = _sample(sampler_name=name, steps=3)
    assert out.shape == (7, 4, 4, 4) and torch.isfinite(out).all()
    assert len(unet.calls) >= 3 * 3


def test_every_offered_sampler_runs_and_cfg_pp_ones_are_refused():
    offered = comfy_sampling.supported_samplers()
    assert "euler" in offered and not any(s.endswith("_cfg_pp") for s in offered)
    for name in offered:
        out, _ = _sample(n=4, sampler_name=name, steps=2, window=2)
        assert torch.isfinite(out).all(), name
    with pytest.raises(ValueError, match="cannot drive Sonic.*euler"):
        _sample(sampler_name="euler_cfg_pp")


def test_heun_keeps_one_window_offset_per_step():
    models, audio, image, motion, unet = _inputs(5)
    steps_seen = []
    original = ShiftFusionDenoiser.denoise

    def spy(self, x, sigma, step):
        steps_seen.append(step)
        return original(self, x, sigma, step)

    ShiftFusionDenoiser.denoise = spy
    try:
        run_sonic_sampler(models, audio, image, motion, 0, 3, 2.0, 7.5, 1, 5, "heun", "karras", 1.0)
    finally:
        ShiftFusionDenoiser.denoise = original
    assert steps_seen == [0, 0, 1, 1, 2]


def test_sampler_and_sigmas_inputs_override_the_combos():
    sigmas = torch.tensor([50.0, 5.0, 0.0])
    sampler = comfy.samplers.sampler_object("dpmpp_2m")
    out, unet = _sample(steps=25, sampler=sampler, sigmas=sigmas)
    assert len(unet.calls) == 2 * math.ceil(7 / 3) and torch.isfinite(out).all()


def test_denoise_below_one_starts_part_way_down():
    full = comfy_sampling.schedule_sigmas("karras", 10, 1.0)
    half = comfy_sampling.schedule_sigmas("karras", 10, 0.5)
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
    models, audio, image, motion, unet = _inputs(3)
    first_x = []
    original = ShiftFusionDenoiser.denoise

    def spy(self, x, sigma, step):
        first_x.append((x.clone(), sigma))
        return original(self, x, sigma, step)

    ShiftFusionDenoiser.denoise = spy
    try:
        run_sonic_sampler(models, audio, image, motion, 5, 2, 2.0, 7.5, 1, 3, "euler", "karras", 1.0)
    finally:
        ShiftFusionDenoiser.denoise = original
    x0, sigma = first_x[0]
    noise = comfy_sampling.seeded_noise((3, 4, 4, 4), 5)
    expected = image.concat_latent * 0.18215 + sigma * noise
    torch.testing.assert_close(x0, expected, atol=1e-4, rtol=1e-6)


def test_progress_once_per_window_with_previews_then_cancel_and_rerun():
    events = []

    def hook(value, total, preview, node_id=None):
        events.append((value, total, preview))
        if len(events) == 4 and cancel["on"]:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    cancel = {"on": False}
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        _sample(n=7, steps=3, window=3)
        assert [e[0] for e in events] == list(range(1, 10)) and {e[1] for e in events} == {9}
        assert events[0][2][0] == "JPEG" and events[0][2][1].size[0] > 0
        events.clear()
        cancel["on"] = True
        with pytest.raises(mm.InterruptProcessingException):
            _sample(n=7, steps=3, window=3)
        assert len(events) == 4
        cancel["on"] = False
        events.clear()
        out, _ = _sample(n=7, steps=3, window=3)
        assert torch.isfinite(out).all() and len(events) == 9
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)


def test_nan_latents_are_reported_with_precision_advice():
    class Exploding(RecordingUNet):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs) * float("nan")

    models, audio, image, motion, _ = _inputs(4, unet=Exploding())
    with pytest.raises(FloatingPointError, match="bf16 or fp32"):
        run_sonic_sampler(models, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)


def test_too_short_audio_and_mismatched_motion_are_explained():
    models, audio, image, motion, _ = _inputs(4)
    audio.num_frames = 0
    with pytest.raises(ValueError, match="at least 0.08 s"):
        run_sonic_sampler(models, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)
    models, audio, image, motion, _ = _inputs(4)
    motion.buckets = motion.buckets[:3]
    with pytest.raises(ValueError, match="same Sonic audio"):
        run_sonic_sampler(models, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)


def test_output_latents_use_cores_unscaled_convention():
    models, audio, image, motion, unet = _inputs(5)
    out = run_sonic_sampler(models, audio, image, motion, 3, 2, 2.0, 7.5, 1, 5, "euler", "karras", 1.0)
    denoiser = ShiftFusionDenoiser(unet, make_conditioning(5), window=5, shift=1)
    direct = comfy_sampling.sample_shift_fusion(denoiser, image.concat_latent,
                                                comfy_sampling.schedule_sigmas("karras", 2), "euler",
                                                comfy_sampling.seeded_noise((5, 4, 4, 4), 3))
    torch.testing.assert_close(out * 0.18215, direct)


def test_out_of_memory_is_reported_with_low_vram_advice_and_the_next_run_works():
    class OutOfMemory(RecordingUNet):
        def forward(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    models, audio, image, motion, _ = _inputs(4, unet=OutOfMemory())
    with pytest.raises(torch.OutOfMemoryError, match="low_vram to 'on'.*resolution"):
        run_sonic_sampler(models, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0)
    out, _ = _sample(n=4, steps=2, window=4)
    assert torch.isfinite(out).all()
