"""Nothing in a sampling step waits for the GPU once per window: on the stand-in accelerator, the device→host reads
(`.item()`, `.tolist()`, `float(t)`, `.cpu()`, copies into CPU tensors) of a whole shipped-path run are counted, and
a clip with more windows per step must not make more of them. Each such read stalls a real GPU until the work queued
before it is done, so per window it would idle the card between every two UNet calls."""
from __future__ import annotations

import pytest
import torch

from benchmarks import shipped_path as shipped
from stand_in_device import blocking_uploads, host_syncs
from tools.tiny_models import AUDIO_TOKENS, TINY_UNET_CONFIG

STEPS = 2


def _syncs_of_a_run(frames: int, low_vram: bool) -> tuple[int, dict, int, int]:
    """(device→host reads, by kind, UNet calls, blocking host→device copies) of one run of the Sonic KSampler's
    code on `frames` frames."""
    unet = shipped.random_unet(TINY_UNET_CONFIG, torch.device("cpu"), torch.float32)
    model = shipped.sonic_model(unet, low_vram=low_vram, compute_dtype=torch.float32)
    calls = []
    hook = unet.register_forward_pre_hook(lambda *_: calls.append(1))
    inputs = shipped.clip_inputs(frames, 64, 64, TINY_UNET_CONFIG["cross_attention_dim"], AUDIO_TOKENS)
    host_syncs.clear()
    blocking_uploads.clear()
    latents, _ = shipped.sample(model, inputs, STEPS, window=3, shift=1)
    counted, uploads = dict(host_syncs), sum(blocking_uploads.values())
    hook.remove()
    assert latents.shape[0] == frames and torch.isfinite(latents).all()
    return sum(counted.values()), counted, len(calls), uploads


@pytest.mark.device
@pytest.mark.parametrize("low_vram", [False, True], ids=["batched", "per-row"])
def test_host_syncs_do_not_grow_with_the_windows(stand_in_gpu, low_vram):
    short, short_kinds, short_calls, short_uploads = _syncs_of_a_run(3, low_vram)   # one window per step
    long, long_kinds, long_calls, long_uploads = _syncs_of_a_run(9, low_vram)  # three (and a wrapped fourth)
    assert long_calls >= 3 * short_calls  # the longer clip really has more windows
    assert long == short, f"device→host reads grow with the windows: {short_kinds} → {long_kinds}"
    # The windows' slices go to the device as queued copies (sonic_model/sampling/transfers.py), never waiting ones.
    assert long_uploads == short_uploads, (short_uploads, long_uploads)
    assert short <= 3 * STEPS + 4, short_kinds  # a few per step (σ reads), a few per run: never per window


@pytest.mark.device
def test_the_counter_sees_a_read_per_window(stand_in_gpu):
    """The count can fail: a denoiser that reads one value per window is caught."""
    from stand_in_device import to_stand_in

    host_syncs.clear()
    x = to_stand_in(torch.ones(3))
    for _ in range(5):
        float(x.sum())
    x.cpu()
    assert host_syncs == {"__float__": 5, "cpu": 1}
