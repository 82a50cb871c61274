"""Every shipped workflow: the pack loads through ComfyUI's own loader, the API twins execute in the real runtime on
random weights in the real file formats, and each writes an mp4 whose video and audio durations match, with 5.1
audio in and stereo out."""
import json
import shutil
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from comfy_harness import PromptFailed, load_runtime, run_prompt, use_models_dir
from comfy_server import write_short_wav
from conftest import REPO

WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
DIALOGUE = REPO / "workflows" / "api" / "sonic_dialogue.json"
ONE_FACE = [w for w in WORKFLOWS if w != DIALOGUE]  # the dialogue needs two faces found: its own test below
ASSETS = REPO / "assets"


def test_pack_loads_through_comfyuis_loader_with_every_node_documented():
    import nodes

    state = load_runtime()
    assert state["pack_loaded"] is True
    sonic = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Sonic")}
    assert len(sonic) >= 10
    for name, cls in sonic.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["category"].startswith("Sonic/") and info["description"], name  # a stage's menu folder
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(info["output_tooltips"]), f"{name} has an output without a tooltip"


def test_shipped_workflows_are_current_and_twinned():
    ui = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
    assert ui == [p.name for p in WORKFLOWS] and len(ui) >= 3
    result = subprocess.run([sys.executable, "tools/workflows.py", "--check-loads"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    # (the pack's nodes byte for byte; a core node may have gained widgets since, which a saved file loads without)
    assert result.returncode == 0, result.stdout + result.stderr


def _duration(stream) -> float:
    return float(stream.duration * stream.time_base) if stream.duration else float(stream.frames / stream.average_rate)


def write_surround_wav(mono: Path, target: Path) -> int:
    """A 5.1 film mix (FL FR FC LFE BL BR) of a mono wav: the voice in the centre, a 40 Hz hum in the LFE, quiet
    room tone around. Returns its sample rate. Stdlib and numpy only: the test must not depend on the code under
    test."""
    with wave.open(str(mono)) as src:
        rate, voice = src.getframerate(), np.frombuffer(src.readframes(src.getnframes()), "<i2")
    hum = (8000 * np.sin(2 * np.pi * 40 * np.arange(voice.size) / rate)).astype("<i2")
    room = (voice // 16).astype("<i2")
    channels = np.stack([room, room, voice, hum, room, room], axis=1)
    with wave.open(str(target), "wb") as dst:
        dst.setnchannels(6)
        dst.setsampwidth(2)
        dst.setframerate(rate)
        dst.writeframes(channels.tobytes())
    return rate


def _inputs(tmp_path) -> tuple[Path, int]:
    """The portrait and a 17-frame voice (short for CPU runs) as a 5.1 film mix, users' kind of audio; its rate."""
    inputs = tmp_path / "input"
    inputs.mkdir()
    shutil.copy(ASSETS / "sonic_portrait.png", inputs / "sonic_portrait.png")
    write_short_wav(ASSETS / "sonic_voice.wav", tmp_path / "voice.wav", 1.37)
    rate = write_surround_wav(tmp_path / "voice.wav", inputs / "sonic_voice.wav")
    return inputs, rate


def _models_as_downloaded(tiny_models_dir, tmp_path, svd_name):
    """The random set laid out as `tools/models.py download` leaves it: the SVD file under one official name."""
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "sonic").symlink_to(tiny_models_dir / "sonic")
    if svd_name:
        (models / "checkpoints" / svd_name).symlink_to(tiny_models_dir / "checkpoints" / "svd_xt_random.safetensors")
    return models


def _only_these_folders(monkeypatch, models):
    """ComfyUI sees just this models folder (earlier tests registered others in the same process)."""
    import folder_paths

    for kind in ("checkpoints", "sonic"):
        paths, extensions = folder_paths.folder_names_and_paths[kind]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(models / kind)], extensions))
    folder_paths.filename_list_cache.clear()


def test_shipped_workflows_name_the_svd_file_the_download_fetches():
    from tools.models import CATALOG

    fetched = {entry.relpath for entry in CATALOG if entry.slot == "svd_checkpoint"}
    for workflow in WORKFLOWS:
        named = {n["inputs"]["svd_checkpoint"] for n in json.loads(workflow.read_text()).values()
                 if n["class_type"] == "SonicLoader"}
        assert named == fetched == {"svd_xt_1_1.safetensors"}, workflow.name


def test_a_missing_svd_checkpoint_validates_and_the_loader_names_the_fix(tiny_models_dir, tmp_path, monkeypatch):
    inputs, _ = _inputs(tmp_path)
    models = _models_as_downloaded(tiny_models_dir, tmp_path, None)
    use_models_dir(models, tmp_path / "output", inputs)
    _only_these_folders(monkeypatch, models)
    prompt = json.loads((REPO / "workflows" / "api" / "sonic_basic.json").read_text())
    prompt["1"]["inputs"]["face_detector"] = "none"  # the random set has none; the SVD file is what is missing
    with pytest.raises(PromptFailed) as failed:
        run_prompt(prompt)
    error = failed.value.args[0]
    assert isinstance(error, dict), error  # not "invalid prompt": validation passed, the loader itself refused
    assert error["node_type"] == "SonicLoader"
    assert error["exception_message"].strip() == (
        f"SVD-xt checkpoint 'svd_xt_1_1.safetensors' not found. Put svd_xt_1_1.safetensors (or svd_xt.safetensors) "
        f"in {models / 'checkpoints'}: run `python tools/models.py download --token hf_...` in the Sonic node folder "
        "(the repository is gated: accept the licence at "
        "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt-1-1 first), or connect vae and "
        "clip_vision and choose 'none'.")


@pytest.mark.parametrize("workflow", ONE_FACE, ids=lambda p: p.stem)
def test_shipped_workflow_executes_and_writes_a_synced_video(workflow, tiny_models_dir, tmp_path, monkeypatch):
    inputs, rate = _inputs(tmp_path)
    # Only the file the download fetches, under the name it gives it: the workflows must run unchanged on it, and
    # the 1.0 name (svd_xt.safetensors) serves them too.
    svd_name = "svd_xt_1_1.safetensors" if workflow != WORKFLOWS[0] else "svd_xt.safetensors"
    models = _models_as_downloaded(tiny_models_dir, tmp_path, svd_name)
    use_models_dir(models, tmp_path / "output", inputs)
    _only_these_folders(monkeypatch, models)
    prompt = json.loads(workflow.read_text())
    for node in prompt.values():
        if node["class_type"] == "SonicLoader":
            # the random set has no face detector: the whole picture is animated, at a CPU-friendly size
            node["inputs"].update(face_detector="none")
        if node["class_type"] == "SonicReferenceImage":
            node["inputs"].update(no_face="whole image", resolution=64)
        if node["class_type"] in ("SonicSampler", "BasicScheduler"):
            node["inputs"].update(steps=2)
    outputs = run_prompt(prompt)
    videos = sorted((tmp_path / "output").rglob("*.mp4"))
    assert len(videos) == 1, outputs
    with av.open(str(videos[0])) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video=0))
        fps = Fraction(video.average_rate)
        video_seconds = frames / fps
        audio_seconds = _duration(audio)
    with av.open(str(videos[0])) as container:
        sound = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    assert frames >= 2 * 17 - 1 and video.width % 2 == 0
    # 5.1 in, stereo out at the file's own rate: the centre's voice on both sides.
    assert (audio.channels, audio.rate) == (2, rate)
    left, right = np.abs(sound).max(axis=1)
    assert left > 0.05 and abs(left - right) < 0.02 * left, (left, right)
    assert abs(video_seconds - audio_seconds) <= 1 / fps + 0.03, (video_seconds, audio_seconds)


def write_tone_wav(path: Path, rate: int, channels: int, seconds: float, freq: float, start: float = 0.0) -> None:
    """A 16-bit sine from `start` seconds on, silent before (stdlib and numpy only)."""
    t = np.arange(round(seconds * rate)) / rate
    wave_ = (0.4 * np.sin(2 * np.pi * freq * t) * (t >= start) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(wave_[:, None], channels, axis=1).tobytes())


def _tone_level(sound: np.ndarray, rate: int, start: float, end: float, freq: float) -> float:
    part = sound.mean(axis=0)[int(start * rate):int(end * rate)]
    spectrum = np.abs(np.fft.rfft(part * np.hanning(part.size)))
    bins = np.fft.rfftfreq(part.size, 1 / rate)
    return float(spectrum[np.abs(bins - freq) < 30].max() / part.size)


def test_dialogue_workflow_writes_one_video_of_the_picture_with_both_voices(tiny_models_dir, tmp_path):
    """Two faces found by a stand-in detector that knows the asset picture's faces; speaker 1 says a 440 Hz tone
    (0.24 s, 16 kHz mono) while 2 is silent, then 2 says 1200 Hz (22.05 kHz stereo, 0.48 s with its silence)."""
    import torch
    from reliability_runtime import RedRegionYolo, UseFolders, make_folders
    from tools.dialogue_assets import DIALOGUE_FACES

    folders = make_folders(tmp_path / "comfy", tiny_models_dir)
    torch.jit.save(torch.jit.script(RedRegionYolo(torch.tensor(DIALOGUE_FACES))),
                   str(folders.sonic / "yoloface_v5m.pt"))
    shutil.copy(ASSETS / "sonic_dialogue.png", folders.input / "sonic_dialogue.png")
    write_tone_wav(folders.input / "sonic_dialogue_1.wav", 16000, 1, 0.24, 440)
    write_tone_wav(folders.input / "sonic_dialogue_2.wav", 22050, 2, 0.48, 1200, start=0.24)
    prompt = json.loads(DIALOGUE.read_text())
    for node in prompt.values():
        if node["class_type"] == "SonicLoader":
            node["inputs"].update(svd_checkpoint="svd_xt_random.safetensors", dtype="fp32", low_vram="off")
        if node["class_type"] == "SonicSpeakers":
            node["inputs"].update(resolution=64)
        if node["class_type"] == "SonicSpeakersSampler":
            node["inputs"].update(steps=2)
    with UseFolders(folders):
        outputs = run_prompt(prompt)
    readout = next(v["sonic_speakers"][0] for v in outputs.values() if "sonic_speakers" in v)
    assert readout["faces"] == 2 and [t["face"] for t in readout["tracks"]] == [0, 1], readout
    videos = sorted(folders.output.rglob("*.mp4"))
    assert len(videos) == 1, outputs
    with av.open(str(videos[0])) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        size, fps = (video.width, video.height), Fraction(video.average_rate)
    with av.open(str(videos[0])) as container:
        audio = container.streams.audio[0]
        sound = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
        rate, channels, audio_seconds = audio.rate, audio.channels, _duration(audio)
    assert size == (640, 400)  # the whole picture
    assert frames / fps == Fraction(12, 25)  # the longest track (0.48 s): 6 frames, each lasting two after RIFE
    assert (rate, channels) == (22050, 2)  # the highest rate among the tracks; the mono one on both sides
    assert abs(audio_seconds - 0.48) < 0.03, audio_seconds  # the mix trimmed to the video (AAC frames aside)
    first = [_tone_level(sound, rate, 0.03, 0.22, f) for f in (440, 1200)]
    second = [_tone_level(sound, rate, 0.27, 0.46, f) for f in (440, 1200)]
    assert first[0] > 0.05 and first[0] > 20 * first[1], first  # speaker 1 speaks, 2 is silent
    assert second[1] > 0.05 and second[1] > 20 * second[0], second  # then the other way round


def test_dialogue_assets_are_what_their_script_makes():
    from PIL import Image

    from tools.dialogue_assets import DIALOGUE_FACES, dialogue_picture, dialogue_tracks, read_wav

    assert np.array_equal(np.asarray(dialogue_picture()), np.asarray(Image.open(ASSETS / "sonic_dialogue.png")))
    first, second, rate = dialogue_tracks()
    for made, name in ((first, "sonic_dialogue_1.wav"), (second, "sonic_dialogue_2.wav")):
        shipped, shipped_rate = read_wav(ASSETS / name)
        assert shipped_rate == rate and np.array_equal(shipped, np.clip(np.round(made), -32768, 32767))
    assert (ASSETS / "sonic_dialogue.png").stat().st_size < 300_000
    assert len(DIALOGUE_FACES) == 2


def test_a_saved_workflow_loads_where_only_core_nodes_gained_widgets_or_outputs_after_the_saved_ones():
    from tools.workflows import _only_core_additions

    def graph(video_values, sampler_values, video_type="CreateVideo", preview_outputs=()):
        return {"nodes": [{"id": 1, "type": video_type, "inputs": [], "outputs": [], "widgets_values": video_values},
                          {"id": 2, "type": "SonicSampler", "inputs": [], "outputs": [],
                           "widgets_values": sampler_values},
                          {"id": 3, "type": "PreviewImage", "inputs": [], "outputs": list(preview_outputs),
                           "widgets_values": []}],
                "links": [], "version": 0.4}

    saved = graph([25.0], [20, 2.5])
    assert _only_core_additions(saved, graph([25.0, 8], [20, 2.5]))  # core's new bit_depth, after fps
    unlinked = {"name": "images", "type": "IMAGE", "links": [], "slot_index": 0}
    assert _only_core_additions(saved, graph([25.0], [20, 2.5], preview_outputs=[unlinked]))
    assert not _only_core_additions(saved, graph([25.0], [20, 2.5], preview_outputs=[{**unlinked, "links": [4]}]))
    assert not _only_core_additions(saved, graph([8, 25.0], [20, 2.5]))  # inserted before: values would shift
    assert not _only_core_additions(saved, graph([25.0], [20, 2.5, 1]))  # the pack's own node: must be rewritten
    assert not _only_core_additions(saved, graph([25.0, 8], [20, 2.5], video_type="SaveVideo"))
    assert not _only_core_additions(saved, {**graph([25.0, 8], [20, 2.5]), "version": 0.5})
