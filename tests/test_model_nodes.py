"""Loader, audio and motion nodes on random weights in the real file formats."""
import math
import re
import shutil

import pytest
import torch

from tools.comfy_runtime import import_pack

import_pack()
import folder_paths  # noqa: E402
from sonic_pack.nodes import audio as audio_node  # noqa: E402
from sonic_pack.nodes import loaders, model_files, motion  # noqa: E402
from sonic_pack.nodes.sonic_types import SonicImageEmbeds  # noqa: E402
from sonic_pack.nodes.loader_settings import LoaderSettings  # noqa: E402
from sonic_model.weights.weights import WeightFileError  # noqa: E402
from sonic_model.audio.whisper_features import predict_buckets  # noqa: E402


@pytest.fixture()
def sonic_dir(tiny_models_dir, tmp_path, monkeypatch):
    """A private copy of the sonic folder, registered as ComfyUI's only sonic folder."""
    folder = tmp_path / "sonic"
    shutil.copytree(tiny_models_dir / "sonic", folder)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sonic", ([str(folder)], set()))
    folder_paths.filename_list_cache.clear()
    return folder


def _load_with_unet(folder, **overrides):
    paths = dict(unet=folder / "unet.pth", audio2token=folder / "audio2token.pth",
                 audio2bucket=folder / "audio2bucket.pth", whisper=folder / "whisper-tiny",
                 face_detector=None, rife=folder / "RIFE" / "flownet.pkl")
    paths.update(overrides)
    return loaders.load_sonic_models(**paths, dtype=torch.float32, low_vram=False)


def _load(folder, **overrides):
    return _load_with_unet(folder, **overrides)[0]


def _audio(seconds, rate=44100, channels=2):
    t = torch.arange(int(seconds * rate)) / rate
    wave = torch.sin(2 * math.pi * 220 * t).repeat(channels, 1)[None]
    return {"waveform": wave, "sample_rate": rate}


def test_sonic_folder_is_registered_with_weight_extensions(sonic_dir):
    model_files.register_sonic_folder()
    paths, extensions = folder_paths.folder_names_and_paths["sonic"]
    assert str(sonic_dir) in paths and ".pth" in extensions and ".pkl" in extensions
    options, default = model_files.choices("unet")
    assert default == "unet.pth" and "RIFE/flownet.pkl" in options
    assert model_files.choices("whisper") == (["whisper-tiny"], "whisper-tiny")
    assert model_files.choices("face_detector", optional=True)[0][0] == "none"


def test_missing_file_names_the_folder_to_put_it_in(sonic_dir):
    with pytest.raises(FileNotFoundError, match=f"Put unet.pth in {sonic_dir}"):
        model_files.resolve("unet", "unet_v2.pth")


def test_models_load_and_are_managed(sonic_dir):
    models, model = _load_with_unet(sonic_dir)
    assert type(model.model).__name__ == "SonicBaseModel" and models.rife is not None
    assert models.audio2token.output_dim == 1024 and models.audio2bucket.clip_channels == 1024


def test_file_in_the_wrong_slot_is_named(sonic_dir):
    with pytest.raises(WeightFileError, match="swap"):
        _load(sonic_dir, audio2bucket=sonic_dir / "audio2token.pth")


def test_audio_encode_counts_frames_and_trims_audio(sonic_dir):
    models = _load(sonic_dir)
    embeds, trimmed = audio_node.encode_sonic_audio(models, _audio(2.37))
    assert embeds.num_frames == (int(2.37 * 16000) // 640) // 2 == 29
    assert embeds.tokens.shape == (29, 4, 1024) and embeds.null_tokens.shape == (4, 1024)
    assert trimmed["waveform"].shape[-1] == round(29 * 44100 / 12.5)
    assert embeds.bucket_windows.shape == (29, 50, 1, 8)


@pytest.mark.parametrize("rate,channels", [(8000, 1), (22050, 2), (48000, 1), (44100, 6)])
def test_any_rate_and_channel_count_gives_the_same_frames(sonic_dir, rate, channels):
    embeds, trimmed = audio_node.encode_sonic_audio(_load(sonic_dir), _audio(3.3, rate, channels))
    assert embeds.num_frames == 41 and trimmed["sample_rate"] == rate
    assert trimmed["waveform"].shape[:2] == (1, min(channels, 2))  # 5.1 leaves as stereo for the video file


def test_audio_shorter_than_a_frame_is_explained(sonic_dir):
    with pytest.raises(ValueError, match="shorter than one video frame"):
        audio_node.encode_sonic_audio(_load(sonic_dir), _audio(0.05))


def test_batched_audio_is_refused_with_the_fix(sonic_dir):
    batch = {"waveform": torch.zeros(2, 1, 16000), "sample_rate": 16000}
    with pytest.raises(ValueError, match="Pick one clip"):
        audio_node.encode_sonic_audio(_load(sonic_dir), batch)


def test_the_frontend_takes_each_presets_beta_from_its_label(repo_dir):
    """web/sonic.js restates no preset table: its presetBeta() reads β from the label, with the regex used here."""
    js = (repo_dir / "web" / "sonic.js").read_text()
    pattern = re.search(r"function presetBeta\(label\) \{\n  const match = /(.+?)/\.exec", js).group(1)
    assert {label: float(re.search(pattern, label).group(1)) for label in motion.PRESETS} == motion.PRESETS
    assert re.search(pattern, motion.CUSTOM) is None
    assert not any(label in js for label in motion.PRESETS)
    assert motion.DEFAULT_PRESET in motion.PRESETS


def test_motion_presets_scale_and_sliders_override(sonic_dir):
    models = _load(sonic_dir)
    embeds, _ = audio_node.encode_sonic_audio(models, _audio(2.0))
    image = SonicImageEmbeds(concat_latent=torch.zeros(1, 4, 8, 8), image_embeds=torch.randn(1, 1024),
                             face_mask=torch.ones(1, 1, 64, 64), image=torch.zeros(1, 64, 64, 3))
    raw = predict_buckets(models.audio2bucket, embeds, image.image_embeds)
    assert raw.shape == (embeds.num_frames, 2)
    moderate = motion.motion_buckets(raw, motion.dynamic_scale("moderate (1.0)", 9.0), -1, -1)
    torch.testing.assert_close(moderate.buckets, raw * 16 + 16)
    intense = motion.motion_buckets(raw, motion.dynamic_scale("intense (2.0)", 9.0), -1, -1)
    torch.testing.assert_close(intense.buckets, (raw * 16 + 16) * 2)
    custom = motion.motion_buckets(raw, motion.dynamic_scale("custom", 1.3), 40, -1)
    assert bool((custom.buckets[:, 0] == 40).all())
    torch.testing.assert_close(custom.buckets[:, 1], (raw[:, 1] * 16 + 16) * 1.3)
    summary = custom.summary()
    assert summary["motion"] == {"mean": 40.0, "min": 40.0, "max": 40.0}


def test_loader_keeps_no_models_of_its_own(sonic_dir, tiny_models_dir, monkeypatch):
    """Reuse is ComfyUI's output cache (test_reliability_runs: back to back); the node itself holds nothing, so
    ComfyUI's 'free model and node cache' gives the memory back (test_vram_modes)."""
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints",
                        ([str(tiny_models_dir / "checkpoints")], set(folder_paths.supported_pt_extensions)))
    folder_paths.filename_list_cache.clear()
    args = dict(svd_checkpoint="svd_xt_random.safetensors", unet="unet.pth", audio2token="audio2token.pth",
                audio2bucket="audio2bucket.pth", whisper="whisper-tiny", face_detector="none",
                rife="RIFE/flownet.pkl", settings=LoaderSettings(dtype="fp32"))
    first = loaders.SonicLoader.execute(**args)
    again = loaders.SonicLoader.execute(**args)
    assert first.args[0] is not again.args[0] and first.args[3] is not again.args[3]
    assert all(first.args) and type(first.args[3].model).__name__ == "SonicBaseModel"
    held = [k for k, v in vars(loaders).items() if isinstance(v, dict) and any(
        isinstance(x, (tuple, torch.nn.Module)) or hasattr(x, "model") for x in v.values())]
    assert not held, f"module state holding models: {held}"
    other = loaders.SonicLoader.execute(**{**args, "rife": "none"})
    assert other.args[0].rife is None


def test_svd_combo_lists_the_official_names_and_never_picks_another_checkpoint(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "sd15.safetensors").write_bytes(b"x")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints", ([str(checkpoints)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    assert model_files.svd_choices() == (
        ["none", "sd15.safetensors", "svd_xt_1_1.safetensors", "svd_xt.safetensors"], "svd_xt_1_1.safetensors")
    assert model_files.svd_path("svd_xt_1_1.safetensors") is None  # not sd15: no arbitrary stand-in
    with pytest.raises(FileNotFoundError, match=f"Put svd_xt_1_1.safetensors .* in {checkpoints}: run "):
        model_files.resolve_svd("svd_xt.safetensors")

    (checkpoints / "svd_xt.safetensors").write_bytes(b"x")  # the 1.0 file serves a workflow naming 1.1, and back
    folder_paths.filename_list_cache.clear()
    assert model_files.svd_choices()[1] == "svd_xt.safetensors"
    assert model_files.resolve_svd("svd_xt_1_1.safetensors") == checkpoints / "svd_xt.safetensors"
    assert model_files.svd_path("sd15.safetensors") == checkpoints / "sd15.safetensors"
    assert model_files.svd_path("other.safetensors") is None


def test_encode_audio_shows_progress_and_honours_cancel_on_ten_minutes(sonic_dir):
    import comfy.model_management as mm
    import comfy.utils

    models = _load(sonic_dir)
    ten_minutes = {"waveform": 0.1 * torch.randn(1, 1, 600 * 16000, generator=torch.Generator().manual_seed(3)),
                   "sample_rate": 16000}
    events, encoder_calls = [], []
    hook = models.whisper.encoder.register_forward_pre_hook(lambda *a: encoder_calls.append(1))
    previous = comfy.utils.PROGRESS_BAR_HOOK

    def record(value, total, preview, node_id=None):
        events.append((value, total, node_id))
        if cancel_at is not None and value >= cancel_at:
            mm.interrupt_current_processing()  # what the Cancel button does

    comfy.utils.set_progress_bar_global_hook(record)
    try:
        cancel_at = None
        embeds, _ = audio_node.encode_sonic_audio(models, ten_minutes, node_id="12")
        # 20 Whisper chunks of 30 s, then 30 batches of 256 of the 7500 frames: the bar moves 50 times, forward
        # (ComfyUI 0.33 passes on only some of them to the hook: it throttles progress updates by time).
        assert embeds.num_frames == 7500
        done = [value for value, total, node in events]
        assert done == sorted(set(done)) and done[-1] == 50 and {(t, n) for _, t, n in events} == {(50, "12")}
        assert len(done) == 50 or hasattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL"), done
        events.clear()
        encoder_calls.clear()
        cancel_at = 5
        with pytest.raises(mm.InterruptProcessingException):
            audio_node.encode_sonic_audio(models, ten_minutes, node_id="12")
        stopped = events[-1][0]  # the chunk whose progress the Cancel came in (5 unless core skipped its update)
        assert 5 <= stopped < 20 and len(encoder_calls) == stopped, (events, len(encoder_calls))
        assert not mm.processing_interrupted()
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
        hook.remove()
        mm.interrupt_current_processing(False)
