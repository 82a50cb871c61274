"""Test-wide setup: one CPU thread, the reference data (reference/), and import paths.

ComfyUI's folder goes first on sys.path so `import nodes` is always core's module; the repo root goes last so
`sonic_model` and `tools` resolve without our `nodes/` package shadowing core's.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
from tools.comfy_runtime import COMFYUI_DIR  # noqa: E402  (.venv/ComfyUI, or $COMFYUI_DIR)
from tools.reference_data import REFERENCE_DIR  # noqa: E402  (reference/ in the repo)

if str(COMFYUI_DIR) not in sys.path:
    sys.path.insert(0, str(COMFYUI_DIR))

# pytest imports the repo's own __init__.py (the pack) while collecting, and the pack imports ComfyUI:
# select CPU mode first where there is no CUDA, as ComfyUI's --cpu would.
from tools.comfy_runtime import import_comfy  # noqa: E402

import_comfy()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    assert REFERENCE_DIR.is_dir(), f"reference data missing: expected {REFERENCE_DIR} (tracked in the repository)"
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A ComfyUI models folder of random weights in the real formats (tools/tiny_models.py), once per session."""
    from tools.tiny_models import write_all

    return write_all(tmp_path_factory.mktemp("models"))


@pytest.fixture
def stand_in_gpu():
    """ComfyUI with a stand-in accelerator as its torch device (tests/stand_in_comfy.py); for tests marked `device`."""
    from stand_in_comfy import comfy_on_stand_in
    from stand_in_device import device_ops

    device_ops.clear()
    with comfy_on_stand_in() as device:
        yield device
