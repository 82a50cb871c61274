"""Device memory of sampling, on the stand-in accelerator's byte counter: what grows with the audio stays on
ComfyUI's intermediate device; the GPU holds one window's work, the weights and core's own start buffers.

Core's CFGGuider.outer_sample moves the noise and the start latent to the model's device before the guider sees
them and keeps them there until sampling ends: two fp32 latents per frame are the floor a guider cannot lower.
Everything else that is N frames long (the sampler's x and step buffers, the fused x0, audio tokens, motion
buckets) must not be on the device: the old placement held about eight such buffers there.
"""
from __future__ import annotations

import gc

import pytest
import torch

from reliability import case
from sonic_fakes import RecordingUNet, make_conditioning, node_inputs
from tools.comfy_runtime import import_pack

import_pack()
import comfy.model_management as mm  # noqa: E402
from comfy_extras import nodes_custom_sampler as custom  # noqa: E402
from sonic_pack.nodes.native_model import sonic_model_patcher  # noqa: E402
from sonic_pack.nodes.sampling import SonicGuiderNode, run_sonic_sampler  # noqa: E402
from stand_in_device import device_memory  # noqa: E402

pytestmark = pytest.mark.device

LATENT = 16  # latent side: 4·16·16 fp32 = 4 KiB per frame per latent buffer
TOKENS, WIDTH = 8, 64  # audio tokens per frame: 2 KiB per frame
FRAME_LATENT_BYTES = 4 * LATENT * LATENT * 4
CORE_BUFFERS = 2  # core's device copies of the noise and the start latent


def _inputs(n: int):
    return node_inputs(make_conditioning(n, h=LATENT, w=LATENT, d=WIDTH, t=TOKENS))


def _sampled_peak(n: int, sampler_name: str = "euler", custom_advanced: bool = False) -> tuple[int, torch.Tensor]:
    """Device bytes above what was there before (the weights are a scalar) at the peak of one sampling run."""
    model = sonic_model_patcher(RecordingUNet(dim=WIDTH))
    audio, image, motion = _inputs(n)
    mm.unload_all_models()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    if custom_advanced:
        guider, latent = SonicGuiderNode.execute(model, audio, image, motion, 2.0, 7.5, 1, 5, 0).result
        sigmas = torch.tensor([700.0, 10.0, 0.5, 0.0])
        noise = custom.Noise_RandomNoise(3)
        sampler = custom.comfy.samplers.sampler_object(sampler_name)
        samples = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas, seed=3)
    else:
        samples = run_sonic_sampler(model, audio, image, motion, seed=3, steps=3, cfg_image=2.0, cfg_audio=7.5,
                                    shift=1, window=5, sampler_name=sampler_name, scheduler="karras", denoise=1.0)
    peak = torch.cuda.max_memory_allocated() - start
    assert samples.device.type == "cpu"
    mm.unload_all_models()
    return peak, samples


@case("Runs", "Minutes of audio at flat GPU memory",
      "On the stand-in accelerator's byte counter, the device peak of sampling grows only by ComfyUI's own two "
      "device copies of the noise and start latent (2 fp32 latents per frame: 0.09 GiB per minute at 512²) with "
      "euler, dpmpp_2m and a CFG++ sampler; the sampler's buffers, fused x0, audio tokens and motion buckets stay "
      "in RAM and one window at a time goes to the GPU (13 latents per frame grew there before).")
@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m", "res_multistep_cfg_pp"])
def test_device_peak_grows_only_by_cores_two_start_buffers(stand_in_gpu, sampler_name):
    short, _ = _sampled_peak(20, sampler_name)
    long, samples = _sampled_peak(100, sampler_name)
    assert torch.isfinite(samples).all()
    per_frame = (long - short) / 80
    assert per_frame <= CORE_BUFFERS * FRAME_LATENT_BYTES * 1.02, (
        f"{sampler_name}: the device peak grows by {per_frame / FRAME_LATENT_BYTES:.2f} latent buffers per frame "
        f"({short} → {long} bytes for 20 → 100 frames); only core's {CORE_BUFFERS} may")


@case("Runs", "Long audio through SamplerCustomAdvanced",
      "The Sonic Guider in core's SamplerCustomAdvanced keeps the clip off the GPU the same way: the device peak "
      "grows by at most core's two start copies per frame.")
def test_sampler_custom_advanced_keeps_the_clip_off_the_device_too(stand_in_gpu):
    short, _ = _sampled_peak(20, custom_advanced=True)
    long, _ = _sampled_peak(100, custom_advanced=True)
    assert (long - short) / 80 <= CORE_BUFFERS * FRAME_LATENT_BYTES * 1.02, (short, long)


@case("Runs", "Nothing of a run stays on the GPU",
      "After a sampling run and core's unloading, the device holds exactly what it held before: no latent, token, "
      "mask or per-run copy is left behind (the guider drops its copies when its run ends, even while ComfyUI "
      "caches the guider).")
def test_nothing_of_a_run_stays_on_the_device(stand_in_gpu):
    gc.collect()
    before = device_memory.allocated
    _sampled_peak(40)
    gc.collect()  # a few hundred bytes of sampler scalars sit in reference cycles until Python's collector runs
    assert device_memory.allocated == before  # models unloaded, no latent, token or mask left behind


@case("Runs", "Audio too long for the free RAM",
      "Refused before the first UNet window with \"Sonic does not fit this computer's free RAM: Sampling N frames "
      "(M minutes of audio) at W×H needs about X GiB of RAM ... Split the audio into parts of at most ... minutes "
      "(or lower the resolution), or free RAM.\"")
def test_a_clip_too_long_for_the_ram_or_the_gpu_is_refused_before_sampling(stand_in_gpu, monkeypatch):
    model = sonic_model_patcher(RecordingUNet(dim=WIDTH))
    audio, image, motion = _inputs(30)
    original = mm.get_free_memory

    def free(dev=None, torch_free_too=False, ram=2**19, vram=24 * 2**30):  # 30 frames need 1 MiB of RAM
        answer = ram if dev is not None and torch.device(dev).type == "cpu" else vram
        return (answer, answer) if torch_free_too else answer

    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: free(dev, torch_free_too))
    run = dict(seed=3, steps=2, cfg_image=2.0, cfg_audio=7.5, shift=1, window=5, sampler_name="euler",
               scheduler="karras", denoise=1.0)
    with pytest.raises(MemoryError, match=r"free RAM: .* needs about .* GiB of RAM .* Split the audio into parts"):
        run_sonic_sampler(model, audio, image, motion, **run)
    assert model.model.diffusion_model.unet.calls == []  # refused before the first window
    monkeypatch.setattr(mm, "get_free_memory", original)


@case("Runs", "One hour of audio",
      "Ten minutes at 512² fit an 8 GB card (5.52 GiB predicted). One hour (45,000 frames) does not: core's two "
      "start copies alone are 5.49 GiB on the GPU and sampling needs 27.5 GiB of RAM, so it is refused before "
      "sampling with the memory it needs and the longest audio that fits (\"Split the audio into parts of at most "
      "50.3 minutes\" on an 8 GB card).")
def test_an_hour_at_512_is_refused_with_the_memory_it_needs_and_ten_minutes_fit_8_gb():
    from sonic_model.sampling import memory_model

    card = memory_model.card_free_vram(8 * memory_model.GIB)
    ten_minutes = memory_model.choose_mode(card, 512, 512, frames_total=7500, decode_chunk=None, rife_batch=None)
    assert ten_minutes.peak * 1.1 <= card
    with pytest.raises(memory_model.DoesNotFit, match=r"45000 frames \(60.0 minutes of audio\).* noise and start "
                                                      r"latent on the GPU \(5.49 GiB\)\. Split the audio"):
        memory_model.choose_mode(card, 512, 512, frames_total=45000, decode_chunk=None, rife_batch=None)
    with pytest.raises(memory_model.DoesNotFit, match=r"needs about 27.5 GiB of RAM"):
        memory_model.check_host_ram(16 * memory_model.GIB, 45000, 512, 512)
    assert memory_model.check_host_ram(16 * memory_model.GIB, 7500, 512, 512) < 5 * memory_model.GIB
