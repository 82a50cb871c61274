"""Shift-fusion windows and the fused denoiser, without ComfyUI."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sonic_fakes import RecordingUNet, make_conditioning
from sonic_model.sampling.shift_fusion import ShiftFusion, edm_rows_denoiser
from sonic_model.sampling.shift_windows import num_windows, shifted_windows, window_starts
from sonic_model.sampling.step_tracker import StepTracker


def test_official_golden_window_schedule():
    # The official pipeline golden's run (`docs/official-behaviour.md` §4): N = 13, f = 5, α = 2.
    expected = {0: [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 0, 1]],
                1: [[11, 12, 0, 1, 2], [3, 4, 5, 6, 7], [8, 9, 10, 11, 12]],
                3: [[7, 8, 9, 10, 11], [12, 0, 1, 2, 3], [4, 5, 6, 7, 8]]}
    for step, windows in expected.items():
        assert shifted_windows(13, 5, 2, step) == windows
    assert window_starts(13, 5, 2, 3) == [-6, -1, 4]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 400), f=st.integers(1, 60), alpha=st.integers(0, 40), step=st.integers(0, 60))
def test_every_frame_covered_and_exactly_once_when_f_divides_n(n, f, alpha, step):
    windows = shifted_windows(n, f, alpha, step)
    assert len(windows) == num_windows(n, f) == math.ceil(n / f)
    assert all(len(w) == f for w in windows)
    counts = torch.bincount(torch.tensor([i for w in windows for i in w]), minlength=n)
    assert int(counts.min()) >= 1
    if n % f == 0:
        assert bool((counts == 1).all())
    else:
        assert int(counts.sum()) == f * math.ceil(n / f)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), f=st.integers(1, 50), step=st.integers(0, 40))
def test_alpha_zero_is_plain_fixed_windows(n, f, step):
    assert shifted_windows(n, f, 0, step) == shifted_windows(n, f, 0, 0)
    assert shifted_windows(n, f, 0, 0) == [[(s + j) % n for j in range(f)] for s in range(0, n, f)]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 30), extra=st.integers(0, 30), alpha=st.integers(0, 20), step=st.integers(0, 30))
def test_clip_no_longer_than_window_is_one_window_of_all_frames(n, extra, alpha, step):
    f = n + extra
    (window,) = shifted_windows(n, f, alpha, step)
    assert set(window) == set(range(n))


def _plain_cfg_x0(unet, cond, x, sigma, r_i, r_a):
    """One UNet call over the whole clip, guidance and EDM x0 written out by hand."""
    n = x.shape[0]
    z = cond.concat_latent.expand(n, -1, -1, -1)
    concat = torch.stack([torch.zeros_like(z), z, z])
    e = cond.image_embeds.reshape(1, 1, -1).expand(n, 1, -1)
    clip = torch.cat([torch.zeros_like(e), e, e])
    null = cond.null_audio_tokens.unsqueeze(0).expand(n, -1, -1)
    audio = torch.cat([null, null, cond.audio_tokens])
    ids = torch.cat([torch.tensor([12.5]), cond.motion_buckets.mean(0)]).unsqueeze(0).expand(3, -1)
    c_in = 1 / math.sqrt(sigma ** 2 + 1)
    sample = torch.cat([(x * c_in).unsqueeze(0).expand(3, -1, -1, -1, -1), concat], 2)
    u, i, c = unet(sample, torch.tensor(0.25 * math.log(sigma)), ids, clip, audio).unbind(0)
    v = u + r_i * (i - u) + r_a * (c - i)
    return x / (sigma ** 2 + 1) - v * sigma * c_in


def test_window_equal_to_clip_matches_a_plain_guided_call():
    n, sigma = 6, 3.7
    cond = make_conditioning(n)
    unet = RecordingUNet()
    x = torch.randn(n, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    plain = _plain_cfg_x0(unet, cond, x, sigma, 2.0, 7.5)
    fused = ShiftFusion(cond, window=n, shift=0).denoise(x, sigma, 5, edm_rows_denoiser(unet)).guided
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_frames_covered_twice_get_the_mean_of_their_windows():
    n, f, sigma = 3, 7, 2.0  # one window [0, 1, 2, 0, 1, 2, 0]: frame 0 three times, 1 and 2 twice
    cond = make_conditioning(n)
    events = []
    out = ShiftFusion(cond, window=f, shift=1, on_window=events.append).denoise(
        torch.randn(n, 4, 4, 4), sigma, 2, edm_rows_denoiser(RecordingUNet())).guided
    (event,) = events
    assert len(event.frame_indices) == f
    for frame in range(n):
        slots = [j for j, i in enumerate(event.frame_indices) if i == frame]
        torch.testing.assert_close(out[frame], event.denoised[slots].mean(0))


def test_unet_calls_and_batch_sizes_per_step():
    n, f = 13, 5
    cond = make_conditioning(n)
    unet = RecordingUNet()
    fusion = ShiftFusion(cond, window=f, shift=2)
    x = torch.randn(n, 4, 4, 4)
    for step in range(4):
        fusion.denoise(x, 10.0 / (step + 1), step, edm_rows_denoiser(unet))
    assert fusion.unet_calls == len(unet.calls) == 4 * math.ceil(n / f)
    assert {c["sample_shape"] for c in unet.calls} == {(3, f, 8, 4, 4)}


def test_low_vram_rows_one_at_a_time_match_batched():
    n = 9
    cond = make_conditioning(n)
    x = torch.randn(n, 4, 4, 4)
    batched = ShiftFusion(cond, window=4, shift=1).denoise(x, 5.0, 2, edm_rows_denoiser(RecordingUNet())).guided
    unet = RecordingUNet()
    rows = ShiftFusion(cond, window=4, shift=1, batched_cfg=False).denoise(x, 5.0, 2, edm_rows_denoiser(unet)).guided
    torch.testing.assert_close(rows, batched, atol=1e-6, rtol=1e-6)
    assert {c["batch"] for c in unet.calls} == {1}


def test_window_time_ids_are_fps_and_window_bucket_means():
    n, f = 10, 4
    cond = make_conditioning(n)
    unet = RecordingUNet()
    ShiftFusion(cond, window=f, shift=3).denoise(torch.randn(n, 4, 4, 4), 4.0, 1, edm_rows_denoiser(unet))
    for call, frames in zip(unet.calls, shifted_windows(n, f, 3, 1)):
        expected = torch.cat([torch.tensor([12.5]), cond.motion_buckets[frames].mean(0)])
        torch.testing.assert_close(call["time_ids"][0], expected)


def test_step_tracker_interval_rule_and_heun_correctors():
    sigmas = [10.0, 5.0, 2.0, 0.5, 0.0]
    plain = StepTracker(sigmas, "euler")
    assert [plain.step_for(s) for s in (10.0, 7.0, 5.0, 3.0, 2.0, 0.5, 0.1)] == [0, 0, 1, 1, 2, 3, 3]
    heun = StepTracker(sigmas, "heun")
    seen = []
    for i in range(4):  # heun: eval σ_i, callback i, corrector at σ_{i+1} while it is > 0
        seen.append(heun.step_for(sigmas[i]))
        heun.on_step_callback(i)
        if sigmas[i + 1] > 0:
            seen.append(heun.step_for(sigmas[i + 1]))
    assert seen == [0, 0, 1, 1, 2, 2, 3]
