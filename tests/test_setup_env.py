"""`make setup` builds a second venv on another torch when asked (SONIC_TORCH_PINS, SONIC_VENV), and the tools
follow it there; the default stays the one CI builds."""
import importlib.metadata
import os
import subprocess
import sys

import pytest

from conftest import REPO

SETUP = ["bash", "tools/setup_env.sh"]
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")


def _setup(env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(SETUP, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def _installed_pins() -> str:
    """The torch family in the interpreter running the suite, as SONIC_TORCH_PINS would name it."""
    pins = []
    for name in TORCH_FAMILY:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:  # a venv set up without torchaudio
            continue
    return " ".join(pins)


@pytest.mark.parametrize("pins, says", [
    ("torch>=2.9 torchvision==0.24.1", "'torch>=2.9' is not torch, torchvision or torchaudio pinned with =="),
    ("torch==2.9.1 numpy==2.0.0", "'numpy==2.0.0' is not torch, torchvision or torchaudio"),
    ("torchvision==0.24.1", "names no torch: add torch==<version>"),
])
def test_pins_that_setup_cannot_honour_are_refused_before_anything_is_installed(pins, says, tmp_path):
    venv = tmp_path / "venv-never-made"
    result = _setup({"SONIC_TORCH_PINS": pins, "SONIC_VENV": str(venv)}, timeout=60)
    assert result.returncode == 1 and says in result.stdout, result.stdout + result.stderr
    assert not venv.exists()


def test_setup_again_with_the_running_venvs_own_pins_installs_nothing():
    """The venv running this suite, named the way its set-up named it, is already complete: setup only checks."""
    venv = os.environ.get("SONIC_VENV") or ".venv"
    pins = _installed_pins()
    result = _setup({"SONIC_VENV": venv, "SONIC_TORCH_PINS": pins}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installing" not in result.stdout and "unpacking" not in result.stdout, result.stdout
    import torch

    assert f"environment ready: {venv} (torch {torch.__version__})" in result.stdout, result.stdout


def test_the_tools_take_comfyui_from_the_venv_that_sonic_venv_names():
    probe = "from tools.comfy_runtime import COMFYUI_DIR, VENV_DIR; print(VENV_DIR); print(COMFYUI_DIR)"
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "SONIC_VENV")}
    default = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True).stdout.split()
    other = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env={**env, "SONIC_VENV": ".venv-torch9"},
                           capture_output=True, text=True, check=True).stdout.split()
    assert default == [str(REPO / ".venv"), str((REPO / ".venv" / "ComfyUI").resolve())]
    assert other == [str(REPO / ".venv-torch9"), str(REPO / ".venv-torch9" / "ComfyUI")]
