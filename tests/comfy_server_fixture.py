"""One real, headless ComfyUI server per test session, shared by the server and browser tests.

Test modules load this as a plugin (`pytest_plugins = ["comfy_server_fixture"]`), so the session fixture below is
one fixture, started once however many modules use it. The server is tools/headless.py's HeadlessComfy (the class
`make demo` drives): the pack is loaded through an extra_model_paths.yaml `custom_nodes:` entry, with the tiny
random-weight models from conftest's `tiny_models_dir`, and stopped by its PID at the end of the session.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_server import ARTIFACTS, ASSETS, SHORT_AUDIO, SHORT_AUDIO_SECONDS, prepare_user_dir, write_short_wav
from tools.headless import HeadlessComfy


@pytest.fixture(scope="session")
def comfy_server(tiny_models_dir: Path, tmp_path_factory) -> Iterator[HeadlessComfy]:
    """The running server; its input folder holds the shipped assets plus a short clip of the voice."""
    root = tmp_path_factory.mktemp("comfy_server")
    inputs, outputs = root / "input", root / "output"
    inputs.mkdir()
    for asset in ASSETS.iterdir():
        shutil.copy(asset, inputs / asset.name)
    write_short_wav(ASSETS / "sonic_voice.wav", inputs / SHORT_AUDIO, SHORT_AUDIO_SECONDS)
    server = HeadlessComfy(tiny_models_dir, inputs, outputs, cpu=True, log_path=root / "comfyui.log")
    prepare_user_dir(server.work / "user")  # settings, and the files a fresh frontend asks for
    try:
        server.start(timeout=180)
        yield server
    finally:
        server.stop()  # SIGTERM to its PID, SIGKILL after 20 s
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(server.log_path, ARTIFACTS / "comfyui-server.log")
        shutil.rmtree(server.work, ignore_errors=True)


