"""The one check of an AUDIO clip and the stereo downmix every output takes (5.1 and other surround sound)."""
from __future__ import annotations

import math

import pytest
import torch

from sonic_model.audio.audio_clip import LAYOUT_5_1, clip_channels, downmix_to_stereo, stereo_clip, stereo_downmix_matrix


def test_5_1_uses_itu_bs775_gains_normalised_and_drops_the_lfe():
    matrix = stereo_downmix_matrix(6)
    c = 1 / math.sqrt(2)
    total = 1 + 2 * c
    left = dict(zip(LAYOUT_5_1, matrix[0].tolist()))
    right = dict(zip(LAYOUT_5_1, matrix[1].tolist()))
    assert left == pytest.approx({"FL": 1 / total, "FR": 0, "FC": c / total, "LFE": 0, "BL": c / total, "BR": 0})
    assert right == pytest.approx({"FL": 0, "FR": 1 / total, "FC": c / total, "LFE": 0, "BL": 0, "BR": c / total})


def test_7_1_and_other_counts():
    c = 1 / math.sqrt(2)
    seven = stereo_downmix_matrix(8)  # FL FR FC LFE BL BR SL SR
    assert seven[0].tolist() == pytest.approx([x / (1 + 3 * c) for x in (1, 0, c, 0, c, 0, c, 0)])
    assert seven[1].tolist() == pytest.approx([x / (1 + 3 * c) for x in (0, 1, c, 0, 0, c, 0, c)])
    three = stereo_downmix_matrix(3)  # no standard layout: first two are left/right, the rest to both at −3 dB
    assert three[0].tolist() == pytest.approx([1 / (1 + c), 0, c / (1 + c)])
    assert three[1].tolist() == pytest.approx([0, 1 / (1 + c), c / (1 + c)])
    for channels in range(3, 12):
        matrix = stereo_downmix_matrix(channels)
        assert matrix.shape == (2, channels) and torch.allclose(matrix.sum(dim=1), torch.ones(2))


def test_downmix_never_clips_and_keeps_mono_and_stereo():
    loud = torch.ones(6, 100)
    assert downmix_to_stereo(loud).abs().max() <= 1 + 1e-6
    stereo = torch.randn(2, 50)
    assert downmix_to_stereo(stereo) is stereo and downmix_to_stereo(stereo[:1]).shape == (1, 50)
    # A 5.1 file holding a stereo mix in its front pair becomes that mix, only quieter.
    surround = torch.zeros(6, 50)
    surround[:2] = stereo
    torch.testing.assert_close(downmix_to_stereo(surround), stereo / (1 + math.sqrt(2)))


def test_stereo_clip_takes_comfyui_layout_and_keeps_the_rate():
    waveform, rate = stereo_clip(torch.randn(1, 6, 441, dtype=torch.float64), 44100)
    assert waveform.shape == (2, 441) and waveform.dtype == torch.float32 and rate == 44100
    assert clip_channels(torch.zeros(10), 8000)[0].shape == (1, 10)
