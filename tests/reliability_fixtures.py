"""Fixtures of the reliability tests (a pytest plugin: `pytest_plugins = ["reliability_fixtures"]`)."""
from __future__ import annotations

import shutil

import pytest

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
