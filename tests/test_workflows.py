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

from comfy_harness import load_runtime, run_prompt, use_models_dir
from comfy_server import write_short_wav
from conftest import REPO

WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
ASSETS = REPO / "assets"


def test_pack_loads_through_comfyuis_loader_with_every_node_documented():
    import nodes

    state = load_runtime()
    assert state["pack_loaded"] is True
    sonic = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Sonic")}
    assert len(sonic) >= 10
    for name, cls in sonic.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["category"] == "Sonic" and info["description"], name
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(info["output_tooltips"]), f"{name} has an output without a tooltip"


def test_shipped_workflows_are_current_and_twinned():
    ui = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
    assert ui == [p.name for p in WORKFLOWS] and len(ui) >= 3
    result = subprocess.run([sys.executable, "tools/workflows.py", "--check"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
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


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_executes_and_writes_a_synced_video(workflow, tiny_models_dir, tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    shutil.copy(ASSETS / "sonic_portrait.png", inputs / "sonic_portrait.png")
    write_short_wav(ASSETS / "sonic_voice.wav", tmp_path / "voice.wav", 1.37)  # 17 frames keep CPU runs short
    rate = write_surround_wav(tmp_path / "voice.wav", inputs / "sonic_voice.wav")  # 5.1: users' film audio
    use_models_dir(tiny_models_dir, tmp_path / "output", inputs)
    prompt = json.loads(workflow.read_text())
    for node in prompt.values():
        if node["class_type"] == "SonicLoader":
            # the random set has no face detector: the whole picture is animated, at a CPU-friendly size
            node["inputs"].update(svd_checkpoint="svd_xt_random.safetensors", face_detector="none")
        if node["class_type"] == "SonicReferenceImage":
            node["inputs"].update(no_face="whole image", resolution=64)
        if node["class_type"] == "SonicSampler":
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
