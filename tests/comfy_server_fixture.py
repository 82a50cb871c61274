"""One real, headless ComfyUI server per test session, shared by the server and browser tests.

Test modules load this as a plugin (`pytest_plugins = ["comfy_server_fixture"]`), so the session fixture below is
one fixture, started once however many modules use it. The server is tools/headless.py's HeadlessComfy (the class
`make demo` drives): the pack is loaded through an extra_model_paths.yaml `custom_nodes:` entry, with the tiny
random-weight models from conftest's `tiny_models_dir`, and stopped by its PID at the end of the session.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_server import running_comfy
from tools.headless import HeadlessComfy


@pytest.fixture(scope="session")
def comfy_server(tiny_models_dir: Path, tmp_path_factory) -> Iterator[HeadlessComfy]:
    """The running server (the pack in custom_nodes/sonic-portrait, the installed frontend)."""
    with running_comfy(tiny_models_dir, tmp_path_factory.mktemp("comfy_server")) as server:
        yield server
