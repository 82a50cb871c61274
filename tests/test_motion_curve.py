"""Motion drawn over time: keyframes → per-frame buckets, the nodes' precedence and UI data, and what the UNet gets."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sonic_fakes import RecordingUNet, make_conditioning
from sonic_model.motion.motion_curve import chart_points, curve_from_values, parse_keyframes
from sonic_model.sampling.shift_windows import shifted_windows
from tools.comfy_runtime import import_pack

import_pack()
from sonic_pack.nodes import motion  # noqa: E402
from sonic_pack.nodes.motion_curve import SonicMotionCurveNode  # noqa: E402
from sonic_pack.nodes.native_model import sonic_model_patcher  # noqa: E402
from sonic_pack.nodes.sampling import run_sonic_sampler  # noqa: E402
from sonic_pack.nodes.sonic_types import SonicAudioEmbeds, SonicImageEmbeds  # noqa: E402

FPS = 12.5


# ---- keyframes → frames -------------------------------------------------------------------------------------------

def test_linear_passes_through_keyframes_interpolates_between_and_holds_outside():
    curve = parse_keyframes("1: 30\n3: 80", "linear")  # frames 12.5 and 37.5
    assert curve.frames == (12.5, 37.5)
    values = curve.sample(60)
    assert values.dtype == torch.float32 and values.shape == (60,)
    assert (values[:13] == 30).all() and (values[38:] == 80).all()  # held before the first, after the last
    frame = 25  # 2 s, half-way
    assert values[frame] == pytest.approx(55.0)
    assert values[20] == pytest.approx(30 + 50 * (20 - 12.5) / 25)


def test_step_holds_each_keyframe_until_the_next():
    values = parse_keyframes("0: 10\n10f: 50\n20f: 20", "step").sample(30)
    assert values[:10].eq(10).all() and values[10:20].eq(50).all() and values[20:].eq(20).all()


def test_smooth_passes_through_keyframes_and_never_overshoots_between_them():
    keys = "0: 30\n2: 80\n4: 40\n5: 40"
    smooth = parse_keyframes(keys, "smooth").sample(80)
    assert [float(smooth[f]) for f in (0, 25, 50, 62)] == pytest.approx([30, 80, 40, 40])
    assert float(smooth[:25].min()) >= 30 and float(smooth[:51].max()) <= 80  # monotone between keyframes
    assert float(smooth[25:51].min()) >= 40 and smooth[50:].eq(40).all()  # flat stays flat, then held
    linear = parse_keyframes(keys, "linear").sample(80)
    assert not torch.allclose(smooth[1:25], linear[1:25])  # a curve, not straight lines


def test_seconds_with_or_without_s_and_frames_name_the_same_times():
    seconds = parse_keyframes("0: 20\n2: 60")
    assert parse_keyframes("0s: 20, 2s: 60") == seconds == parse_keyframes("0f: 20; 25f: 60")
    assert parse_keyframes("# head\n2: 60  # peak\n0: 20") == seconds  # comments; sorted by time


def test_a_float_list_is_spread_from_the_first_to_the_last_frame():
    per_frame = [float(v) for v in range(10, 30, 2)]  # K == N: one per frame, exactly
    assert torch.equal(curve_from_values(per_frame).sample(10), torch.tensor(per_frame))
    spread = curve_from_values(torch.tensor([0.0, 90.0])).sample(10)  # K < N: evenly, first to last frame
    assert spread[0] == 0 and spread[-1] == 90 and spread[3] == pytest.approx(30)
    three = curve_from_values(np.array([10.0, 40.0, 10.0]), "step").sample(5)
    assert three.tolist() == [10, 10, 40, 40, 10]
    assert curve_from_values(42.0).sample(4).tolist() == [42.0] * 4  # K == 1: constant
    assert curve_from_values([7]).sample(1).tolist() == [7.0]


@pytest.mark.parametrize("text, message", [
    ("0: 30\n2 80", r'line 2 \("2 80"\): no \':\''),
    ("0: 30\nsoon: 80", r"line 2 .*'soon' is not a time"),
    ("0: 30, 1: lots", r"line 1 .*'lots' is not a number"),
    ("0: 30\n\n3: 300", r"line 3 .*outside 0–255"),
    ("0: 30\n1: -2", r"line 2 .*outside 0–255"),
    ("1: 30\n12.5f: 40", r"same time, line 1 .* and line 2 .*keep one"),
    (" \n# nothing\n", r"empty"),
])
def test_bad_keyframes_name_the_line_and_the_fix(text, message):
    with pytest.raises(ValueError, match=message):
        parse_keyframes(text)


@pytest.mark.parametrize("values, message", [
    ([[1.0, 2.0], [3.0, 4.0]], "one list of numbers"), (torch.zeros(2, 3), r"shape \(2, 3\)"), ([], "empty"),
    ("30", "must be numbers"), ([1.0, 400.0], "item 1: .*outside"), (None, "must be numbers"),
])
def test_bad_float_lists_are_explained(values, message):
    with pytest.raises(ValueError, match=message):
        curve_from_values(values)


def test_chart_points_keep_both_ends_and_at_most_256():
    assert chart_points(5) == [0, 1, 2, 3, 4]
    many = chart_points(1000)
    assert len(many) <= 256 and many[0] == 0 and many[-1] == 999 and many == sorted(set(many))


# ---- the nodes -----------------------------------------------------------------------------------------------------

def test_curve_node_reads_the_text_and_a_connected_list_replaces_it():
    schema = SonicMotionCurveNode.GET_SCHEMA()
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    text = SonicMotionCurveNode.execute("0: 30\n2: 80\n4: 40", "smooth").result[0]
    assert (text.values, text.frames, text.interpolation) == ((30.0, 80.0, 40.0), (0.0, 25.0, 50.0), "smooth")
    listed = SonicMotionCurveNode.execute("not read", "step", values=[1.0, 2.0]).result[0]
    assert (listed.values, listed.frames, listed.interpolation) == ((1.0, 2.0), None, "step")


def _raw(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 2


def test_buckets_node_precedence_curve_then_slider_then_prediction_and_its_chart_data(monkeypatch):
    n, beta = 40, 1.3
    raw = _raw(n)
    monkeypatch.setattr(motion, "predict_buckets", lambda *_: raw)
    monkeypatch.setattr(motion, "load_for_stage", lambda patcher: SimpleNamespace(audio2bucket=None))
    curve = parse_keyframes("0: 20\n3: 60")
    models, image = SimpleNamespace(audio_patcher=None), SimpleNamespace(image_embeds=None)  # the prediction: `raw`
    out = motion.SonicMotionBucketsNode.execute(models, None, image, "custom", beta, head_motion=50, expression=70,
                                                head_motion_curve=curve)
    result, (report,) = out.result[0], out.ui["sonic_motion"]
    predicted = (raw * 16 + 16) * beta
    torch.testing.assert_close(result.predicted, predicted)
    assert torch.equal(result.buckets[:, 0], curve.sample(n) * beta)  # the curve beats the slider (50)
    assert result.buckets[:, 1].eq(70).all()  # the slider beats the prediction
    assert report["sources"] == {"motion": "curve", "expression": "fixed"}
    assert report["motion"]["mean"] == pytest.approx(float(predicted[:, 0].mean()), abs=0.006)  # the readout's
    assert report["seconds"] == pytest.approx([i / FPS for i in range(n)])
    assert report["used"]["motion"] == pytest.approx((curve.sample(n) * beta).tolist(), abs=0.006)
    assert report["used"]["expression"] == [70.0] * n
    assert report["predicted"]["expression"] == pytest.approx(predicted[:, 1].tolist(), abs=0.006)
    auto = motion.SonicMotionBucketsNode.execute(models, None, image, "custom", beta, head_motion=-1, expression=-1)
    assert torch.equal(auto.result[0].buckets, auto.result[0].predicted)
    assert auto.ui["sonic_motion"][0]["sources"] == {"motion": "prediction", "expression": "prediction"}


def test_a_long_clip_sends_at_most_256_chart_points():
    long = motion.motion_buckets(_raw(2000), 1.0, -1, -1, (None, curve_from_values([10.0, 90.0])))
    report = long.report()
    assert len(report["seconds"]) <= 256 and report["seconds"][-1] == pytest.approx(1999 / FPS)
    assert all(len(report[kind][col]) == len(report["seconds"])
               for kind in ("predicted", "used") for col in ("motion", "expression"))


# ---- what the UNet receives ----------------------------------------------------------------------------------------

def _run_with(motion_buckets, n: int, window: int, shift: int, steps: int) -> RecordingUNet:
    cond = make_conditioning(n)
    unet = RecordingUNet()
    audio = SonicAudioEmbeds(tokens=cond.audio_tokens, null_tokens=cond.null_audio_tokens,
                             bucket_windows=torch.zeros(n, 50, 1, 8), num_frames=n)
    image = SonicImageEmbeds(concat_latent=cond.concat_latent, image_embeds=cond.image_embeds,
                             face_mask=cond.face_mask, image=torch.zeros(1, 32, 32, 3))
    run_sonic_sampler(sonic_model_patcher(unet), audio, image, motion_buckets, seed=3, steps=steps, cfg_image=2.0,
                      cfg_audio=7.5, shift=shift, window=window, sampler_name="euler", scheduler="karras",
                      denoise=1.0)
    return unet


def test_each_window_gets_exactly_the_window_mean_of_the_curve_times_beta():
    n, window, shift, steps, beta = 60, 25, 7, 3, 1.3  # 4.8 s: three windows a step, the last one wrapping around
    head, expression = parse_keyframes("0: 30\n2: 80\n4: 40", "smooth"), parse_keyframes("0: 10, 3: 50", "linear")
    buckets = motion.motion_buckets(_raw(n), beta, -1, 64, (head, expression))
    unet = _run_with(buckets, n, window, shift, steps)
    windows = [frames for step in range(steps) for frames in shifted_windows(n, window, shift, step)]
    assert len(unet.calls) == len(windows) == steps * 3
    assert any(frames[-1] < frames[0] for frames in windows)  # circular windows are among them
    # The curves ×β per frame, as the (N, 2) columns the window mean is taken over (a mean over one column alone
    # may sum in another order, a last-bit difference); checked against float64 arithmetic as well.
    drawn = torch.stack([head.sample(n) * beta, expression.sample(n) * beta], dim=1)
    exact = torch.stack([head.sample(n).double(), expression.sample(n).double()], dim=1) * beta
    for call, frames in zip(unet.calls, windows):
        ids = call["time_ids"]
        assert ids.dtype == torch.float32 and ids.shape == (3, 3) and ids[:, 0].eq(FPS).all()
        expected = drawn[torch.tensor(frames)].mean(dim=0)
        assert torch.equal(ids[:, 1:], expected.expand(3, 2)), frames
        torch.testing.assert_close(ids[0, 1:].double(), exact[torch.tensor(frames)].mean(0), rtol=1e-6, atol=0)


def test_a_curve_on_one_column_leaves_the_others_prediction_unchanged():
    n, window, shift, steps, beta = 40, 25, 7, 2, 1.0
    raw = _raw(n, seed=5)
    only_head = motion.motion_buckets(raw, beta, -1, -1, (parse_keyframes("0: 90"), None))
    plain = motion.motion_buckets(raw, beta, -1, -1)
    assert torch.equal(only_head.buckets[:, 1], plain.buckets[:, 1]) and only_head.buckets[:, 0].eq(90).all()
    with_curve, without = _run_with(only_head, n, window, shift, steps), _run_with(plain, n, window, shift, steps)
    for a, b in zip(with_curve.calls, without.calls):
        assert torch.equal(a["time_ids"][:, 2], b["time_ids"][:, 2])
        assert not torch.equal(a["time_ids"][:, 1], b["time_ids"][:, 1])
