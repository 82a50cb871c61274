"""Fixtures of the reliability tests (a pytest plugin: `pytest_plugins = ["reliability_fixtures"]`)."""
from __future__ import annotations

import shutil

import pytest

import comfy.utils as comfy_utils  # (the name `comfy` is the fixture below)
import nodes  # core's
from reliability_runtime import ComfyFolders, UseFolders, make_folders, write_run_inputs


@pytest.fixture(scope="module")
def comfy_tree(tiny_models_dir, tmp_path_factory) -> ComfyFolders:
    """One ComfyUI folder tree per test module: the random weights, the stand-in face detector, run inputs."""
    folders = make_folders(tmp_path_factory.mktemp("comfy"), tiny_models_dir)
    write_run_inputs(folders)
    return folders


@pytest.fixture()
def comfy(comfy_tree):
    """ComfyUI pointed at the module's tree for one test, its output folder emptied first."""
    for old in comfy_tree.output.iterdir():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    with UseFolders(comfy_tree) as active:
        yield active


@pytest.fixture()
def progress_hook():
    """Install a progress hook like ComfyUI's server does; the test gives it a callback. Cancel is reset after."""
    calls = []

    def install(callback=None):
        def hook(value, total, preview, prompt_id=None, node_id=None):
            calls.append((node_id, value, total))
            if callback is not None:
                callback(node_id, value, total)
        comfy_utils.set_progress_bar_global_hook(hook)
        return calls

    yield install
    comfy_utils.set_progress_bar_global_hook(None)
    nodes.interrupt_processing(False)
