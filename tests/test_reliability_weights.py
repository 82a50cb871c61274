"""Reliability, weights: missing, damaged, unsafe and wrong files in models/sonic, loaded by the Sonic loader in
the real ComfyUI runtime. Each must stop the loader with a message that names the file and the fix, run no code
from the file, and leave ComfyUI able to run the next prompt."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from reliability import case
from reliability_runtime import ComfyFolders, UseFolders, assert_comfy_keeps_running, audio_prompt, empty_audio, \
    make_folders, run_error


pytest_plugins = ["reliability_fixtures"]


@pytest.fixture()
def healthy(comfy_tree) -> ComfyFolders:
    return comfy_tree


@pytest.fixture()
def broken(tiny_models_dir, tmp_path):
    """A private tree for the test to damage; ComfyUI points at it during the test."""
    folders = make_folders(tmp_path / "comfy", tiny_models_dir)
    with UseFolders(folders):
        yield folders


def _load_error(**loader_files) -> str:
    """Run the loader (with an audio encode after it) on the current folders; returns ComfyUI's error message."""
    error = run_error(audio_prompt(empty_audio(1.0), **loader_files))
    assert error["node_type"] == "SonicLoader", error
    return error["exception_message"]


@case("Weights", "Missing file",
      "A workflow naming unet.pth still validates; the loader stops with \"Sonic unet file 'unet.pth' not found. Put "
      "unet.pth in <models/sonic>: run `python tools/models.py download` ...\".")
def test_weights_missing_file(broken, healthy):
    (broken.sonic / "unet.pth").unlink()
    message = _load_error()
    assert message.startswith("Sonic unet file 'unet.pth' not found. Put unet.pth in " + str(broken.sonic))
    assert "python tools/models.py download" in message
    (broken.sonic / "RIFE" / "flownet.pkl").unlink()  # an optional file: the message also offers 'none'
    (broken.sonic / "unet.pth").symlink_to(healthy.sonic / "unet.pth")
    assert "or choose 'none' in 'rife'" in _load_error()
    assert_comfy_keeps_running(healthy)


@case("Weights", "Truncated .pth",
      "\"... unet.pth is truncated or corrupt (N bytes; expected a PyTorch checkpoint): download it again\".")
def test_weights_truncated_pth(broken, healthy):
    unet = broken.sonic / "unet.pth"
    data = unet.read_bytes()
    unet.write_bytes(data[: len(data) // 2])
    message = _load_error()
    assert "unet.pth is truncated or corrupt" in message and "download it again" in message
    assert_comfy_keeps_running(healthy)


@case("Weights", "Valid file in the wrong slot",
      "audio2bucket.pth chosen as audio2token: \"... This looks like the Sonic audio2bucket weights "
      "(audio2bucket.pth); use audio2token.pth here.\"")
def test_weights_wrong_slot(broken, healthy):
    message = _load_error(audio2token="audio2bucket.pth")
    assert "does not fit: expected the Sonic audio2token weights (audio2token.pth)" in message
    assert message.endswith("This looks like the Sonic audio2bucket weights (audio2bucket.pth); use audio2token.pth "
                            "here.")
    assert_comfy_keeps_running(healthy)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@case("Weights", "Pickle that runs code when unpickled",
      "Refused by weights_only loading, before any code runs: \"... contains Python code/objects ... refused for "
      "safety\"; the payload never executes.")
def test_weights_malicious_pickle(broken, healthy):
    marker = broken.root / "code_ran"
    torch.save({"proj1.weight": _RunsCodeWhenUnpickled(marker)}, broken.sonic / "audio2token.pth")
    message = _load_error()
    assert "audio2token.pth contains Python code/objects" in message and "refused for safety" in message
    assert not marker.exists()
    assert_comfy_keeps_running(healthy)


@case("Weights", "Safetensors file with a bad header",
      "\"... unet.safetensors is not a valid safetensors file ...\" naming the file.")
def test_weights_bad_safetensors_header(broken, healthy):
    (broken.sonic / "unet.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{not json" + b"\0" * 64)
    message = _load_error(unet="unet.safetensors")
    assert "unet.safetensors is not a valid safetensors file" in message
    assert_comfy_keeps_running(healthy)


@case("Weights", "Wrong dtype (quantised copy)",
      "Integer tensors where the UNet has float weights are refused (never cast silently): \"... holds int8 tensors "
      "where the Sonic UNet weights needs floating-point weights ... Use the original unet.pth\".")
def test_weights_wrong_dtype(broken, healthy):
    unet = broken.sonic / "unet.pth"
    state = torch.load(unet, weights_only=True, map_location="cpu")
    torch.save({k: (v * 100).to(torch.int8) for k, v in state.items()}, unet)
    message = _load_error()
    assert "unet.pth holds int8 tensors where the Sonic UNet weights needs floating-point weights" in message
    assert "Use the original unet.pth" in message
    assert_comfy_keeps_running(healthy)


def _sd15_unet_part() -> dict[str, torch.Tensor]:
    """The first blocks of a Stable Diffusion 1.5 UNet in diffusers layout, real names and shapes (random values):
    what a user gets by putting an SD1.5 UNet file in the Sonic UNet slot (a whole one would be 3.4 GB)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd15 = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # SD1.5's configuration
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g).half() for k, v in sd15.state_dict().items()
            if k.startswith(("conv_in.", "time_embedding.", "down_blocks.0."))}


@case("Weights", "Wrong shapes (an SD1.5 UNet)",
      "\"... does not fit: expected the Sonic UNet weights (unet.pth) ... It is a checkpoint that matches none of "
      "Sonic's files; `python tools/models.py check` lists them.\"")
def test_weights_wrong_shapes_sd15_unet(broken, healthy):
    save_file(_sd15_unet_part(), str(broken.sonic / "sd15_unet.safetensors"))
    message = _load_error(unet="sd15_unet.safetensors")
    assert "does not fit: expected the Sonic UNet weights (unet.pth)" in message
    assert message.endswith("It is a checkpoint that matches none of Sonic's files; `python tools/models.py check` "
                            "lists them.")
    assert_comfy_keeps_running(healthy)
