"""What the server and browser tests share: the shipped workflows, made CPU-friendly for random weights, and the
server's input and user folders. The session's server itself is the fixture in comfy_server_fixture.py."""
from __future__ import annotations

import copy
import json
import shutil
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import REPO
from tools.headless import HeadlessComfy

ASSETS = REPO / "assets"
ARTIFACTS = REPO / "test-artifacts"
SHORT_AUDIO = "sonic_voice_short.wav"
SHORT_AUDIO_SECONDS = 0.8  # 10 frames at 12.5 fps: every stage runs, RIFE and the mp4 included, in seconds


def api_workflows() -> list[Path]:
    return sorted((REPO / "workflows" / "api").glob("*.json"))


def ui_workflows() -> list[Path]:
    return sorted((REPO / "workflows").glob("*.json"))


def write_short_wav(source: Path, target: Path, seconds: float) -> None:
    """The first `seconds` of a PCM wav (stdlib only: the test must not depend on the code under test)."""
    with wave.open(str(source)) as src:
        params = src.getparams()
        frames = src.readframes(int(params.framerate * seconds))
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames)


def cpu_friendly(prompt: dict, models_dir: Path) -> dict:
    """A shipped API workflow adapted to random weights on a CPU: the checkpoint present, no face detector (the
    random set has none, so the whole picture is animated), a small picture, two steps and a short clip."""
    prompt = copy.deepcopy(prompt)
    checkpoint = sorted(p.name for p in (models_dir / "checkpoints").glob("svd_xt*.safetensors"))[0]
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "SonicLoader":
            inputs.update(svd_checkpoint=checkpoint, face_detector="none")
        elif kind == "SonicReferenceImage":
            inputs.update(no_face="whole image", resolution=64)
        elif kind in ("SonicSampler", "BasicScheduler"):
            inputs.update(steps=2)
        elif kind == "LoadAudio":
            inputs.update(audio=SHORT_AUDIO)
    return prompt


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def pack_name(server: HeadlessComfy) -> str:
    """The pack's folder name in the server's custom_nodes (its /extensions/<name>/ and python_module)."""
    (link,) = (server.work / "custom_nodes").iterdir()
    return link.name


def fallback_prompt() -> dict:
    """Used only when no workflow is shipped: loader → Load Audio → Sonic Encode Audio → Preview Audio."""
    return {
        "1": {"class_type": "SonicLoader", "inputs": {}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": SHORT_AUDIO}},
        "3": {"class_type": "SonicAudioEncode", "inputs": {"sonic_model": ["1", 0], "audio": ["2", 0]}},
        "4": {"class_type": "PreviewAudio", "inputs": {"audio": ["3", 1]}},
    }


def fill_defaults(prompt: dict, object_info: dict) -> dict:
    """Every required widget the prompt leaves out takes the default the server advertises (for the fallback)."""
    for node in prompt.values():
        required = object_info[node["class_type"]]["input"].get("required", {})
        for name, spec in required.items():
            if name in node["inputs"]:
                continue
            if isinstance(spec[0], list):
                node["inputs"][name] = spec[1].get("default", spec[0][0]) if len(spec) > 1 else spec[0][0]
            elif len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                node["inputs"][name] = spec[1]["default"]
    return prompt


# A returning user's settings: no first-run template browser, no release check (the network is closed), and a
# clean canvas for screenshots (no minimap, no render statistics).
BROWSER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False,
                    "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}


def prepare_user_dir(user: Path) -> None:
    """The files a fresh frontend asks for, so a first visit logs no 404 for them."""
    default = user / "default"
    for folder in ("workflows", "subgraphs"):
        (default / folder).mkdir(parents=True, exist_ok=True)
    (default / "comfy.settings.json").write_text(json.dumps(BROWSER_SETTINGS, indent=1))
    (default / "comfy.templates.json").write_text("[]")
    (default / "user.css").write_text("")


@contextmanager
def running_comfy(models: Path, root: Path, log_name: str = "comfyui-server.log",
                  **options) -> Iterator[HeadlessComfy]:
    """A started server whose input folder holds the shipped assets plus a short clip of the voice; `options` go to
    HeadlessComfy (pack_folder, front_end_root). Its log is kept in test-artifacts/<log_name>."""
    inputs, outputs = root / "input", root / "output"
    inputs.mkdir()
    for asset in ASSETS.iterdir():
        shutil.copy(asset, inputs / asset.name)
    write_short_wav(ASSETS / "sonic_voice.wav", inputs / SHORT_AUDIO, SHORT_AUDIO_SECONDS)
    server = HeadlessComfy(models, inputs, outputs, cpu=True, log_path=root / "comfyui.log", **options)
    prepare_user_dir(server.work / "user")  # settings, and the files a fresh frontend asks for
    try:
        server.start(timeout=180)
        yield server
    finally:
        server.stop()  # SIGTERM to its PID, SIGKILL after 20 s
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(server.log_path, ARTIFACTS / log_name)
        shutil.rmtree(server.work, ignore_errors=True)
