"""What the reliability tests share: one ComfyUI setup on random weights (models, input and output folders), a
stand-in face detector that finds faces only where the picture is painted red, small API prompts built from the
pack's and core's nodes, and runners that return what ComfyUI reported."""
from __future__ import annotations

import math
import shutil
import struct
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image

from comfy_harness import PromptFailed, run_prompt
from comfy_server import write_short_wav
import folder_paths

# Face boxes the stand-in detector knows, as (cx, cy, w, h) fractions of the picture.
FACE_LARGE = (0.50, 0.50, 0.30, 0.40)
FACE_SMALL = (0.15, 0.15, 0.10, 0.12)
FACE_AT_BORDER = (0.93, 0.45, 0.14, 0.30)  # its right edge is the picture's right edge
FACES = (FACE_LARGE, FACE_SMALL, FACE_AT_BORDER)
RED = (200, 40, 30)
BLUE = (30, 40, 200)


class RedRegionYolo(torch.nn.Module):
    """Same call interface and output layout as yoloface_v5m.pt: forward(x (1,3,h,w) in [0,1], grids) → (1, K, 16).

    Each known face box is reported with full confidence when its inside is redder than it is blue, and with zero
    confidence otherwise, so a test paints the faces it wants found."""

    def __init__(self, boxes: torch.Tensor):
        super().__init__()
        self.register_buffer("boxes", boxes.float())

    def forward(self, x: torch.Tensor, grids: List[torch.Tensor]) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        rows: List[torch.Tensor] = []
        for i in range(self.boxes.shape[0]):
            cx, cy, bw, bh = self.boxes[i, 0], self.boxes[i, 1], self.boxes[i, 2], self.boxes[i, 3]
            x1 = int(((cx - bw / 2) * w).item())
            x2 = int(((cx + bw / 2) * w).item())
            y1 = int(((cy - bh / 2) * h).item())
            y2 = int(((cy + bh / 2) * h).item())
            inside = x[0, :, max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)]
            seen = (inside[0].mean() > inside[2].mean()).float()
            marks = torch.stack([cx - bw / 4, cy - bh / 6, cx + bw / 4, cy - bh / 6, cx, cy,
                                 cx - bw / 5, cy + bh / 4, cx + bw / 5, cy + bh / 4])
            scale = torch.tensor([float(w), float(h)]).repeat(5)
            box = torch.stack([cx * w, cy * h, bw * w, bh * h])
            rows.append(torch.cat([box, (0.95 * seen).reshape(1), marks * scale, torch.ones(1)]))
        return torch.stack(rows)[None]


def write_detector(path: Path) -> None:
    torch.jit.save(torch.jit.script(RedRegionYolo(torch.tensor(FACES))), str(path))


def portrait(width: int, height: int, faces: tuple = (), mode: str = "RGB") -> Image.Image:
    """A blue picture with the given face boxes painted red."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[...] = BLUE
    pixels[..., 1] = (np.arange(width)[None, :] * 7 % 61).astype(np.uint8)  # some texture
    for cx, cy, bw, bh in faces:
        x1, x2 = int((cx - bw / 2) * width), int(math.ceil((cx + bw / 2) * width))
        y1, y2 = int((cy - bh / 2) * height), int(math.ceil((cy + bh / 2) * height))
        pixels[max(y1, 0):y2, max(x1, 0):x2] = RED
    image = Image.fromarray(pixels)
    return image.convert(mode) if mode != "RGB" else image


def write_wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1, freq: float = 220.0) -> Path:
    """16-bit PCM tone (each channel a little different)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    data = np.stack([0.3 * np.sin(2 * np.pi * (freq + 30 * c) * t) for c in range(channels)], axis=1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((data * 32767).astype("<i2").tobytes())
    return path


def write_float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """32-bit float WAV (format 3): the only common WAV layout that can carry NaN and Inf samples."""
    data = samples.astype("<f4").reshape(-1)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data.nbytes, b"WAVE", b"fmt ", 16, 3, channels, rate,
                         rate * 4 * channels, 4 * channels, 32, b"data", data.nbytes)
    path.write_bytes(header + data.tobytes())
    return path


@dataclass
class ComfyFolders:
    root: Path

    @property
    def sonic(self) -> Path:
        return self.root / "models" / "sonic"

    @property
    def checkpoints(self) -> Path:
        return self.root / "models" / "checkpoints"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def output(self) -> Path:
        return self.root / "output"

    def output_files(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.is_file())


def make_folders(root: Path, tiny_models_dir: Path) -> ComfyFolders:
    """A ComfyUI tree on the random weights, with the stand-in face detector as yoloface_v5m.pt."""
    folders = ComfyFolders(root)
    shutil.copytree(tiny_models_dir / "sonic", folders.sonic)
    folders.checkpoints.mkdir(parents=True)
    for ckpt in (tiny_models_dir / "checkpoints").iterdir():
        (folders.checkpoints / ckpt.name).symlink_to(ckpt)
    write_detector(folders.sonic / "yoloface_v5m.pt")
    folders.input.mkdir()
    folders.output.mkdir()
    return folders


class UseFolders:
    """Point ComfyUI's sonic, checkpoints, input and output folders at one tree only; restore them afterwards."""

    def __init__(self, folders: ComfyFolders):
        self.folders = folders

    def __enter__(self) -> ComfyFolders:
        f = self.folders
        self.saved = {k: folder_paths.folder_names_and_paths[k] for k in ("sonic", "checkpoints")}
        self.saved_dirs = (folder_paths.get_input_directory(), folder_paths.get_output_directory())
        extensions = set(folder_paths.supported_pt_extensions)
        folder_paths.folder_names_and_paths["sonic"] = ([str(f.sonic)], extensions)
        folder_paths.folder_names_and_paths["checkpoints"] = ([str(f.checkpoints)], extensions)
        folder_paths.set_input_directory(str(f.input))
        folder_paths.set_output_directory(str(f.output))
        folder_paths.filename_list_cache.clear()
        return f

    def __exit__(self, *exc) -> None:
        folder_paths.folder_names_and_paths.update(self.saved)
        folder_paths.set_input_directory(self.saved_dirs[0])
        folder_paths.set_output_directory(self.saved_dirs[1])
        folder_paths.filename_list_cache.clear()


# ---- prompts (API format) -------------------------------------------------------------------------------------

def loader(**overrides) -> dict:
    inputs = dict(svd_checkpoint="svd_xt_random.safetensors", unet="unet.pth", audio2token="audio2token.pth",
                  audio2bucket="audio2bucket.pth", whisper="whisper-tiny", face_detector="yoloface_v5m.pt",
                  rife="RIFE/flownet.pkl", dtype="fp32", low_vram="off", compile=False)
    inputs.update(overrides)
    return {"class_type": "SonicLoader", "inputs": inputs}


def audio_prompt(source: dict, **loader_overrides) -> dict:
    """Loader + an AUDIO source node + Sonic Encode Audio, showing its frame count (core's Preview as Text)."""
    return {"1": loader(**loader_overrides), "2": source,
            "3": {"class_type": "SonicAudioEncode", "inputs": {"sonic_model": ["1", 0], "audio": ["2", 0]}},
            "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}}


def frames_of(outputs: dict) -> int:
    """The frame count an audio_prompt run showed."""
    return int(outputs["4"]["text"][0])


def load_audio(name: str) -> dict:
    return {"class_type": "LoadAudio", "inputs": {"audio": name}}


def empty_audio(seconds: float, rate: int = 44100, channels: int = 2) -> dict:
    return {"class_type": "EmptyAudio", "inputs": {"duration": seconds, "sample_rate": rate, "channels": channels}}


def image_prompt(image_nodes: dict, image_ref: list, resolution: int = 64, crop: bool = False,
                 no_face: str = "error", **loader_overrides) -> dict:
    """Loader + the given image nodes + Sonic Reference Image, previewing the prepared image and its face mask."""
    prompt = {"1": loader(**loader_overrides), **image_nodes,
              "20": {"class_type": "SonicReferenceImage",
                     "inputs": {"sonic_model": ["1", 0], "vae": ["1", 1], "clip_vision": ["1", 2], "image": image_ref,
                                "resolution": resolution, "crop": crop, "expand_ratio": 0.5, "no_face": no_face,
                                "face_index": -1}},
              "21": {"class_type": "PreviewImage", "inputs": {"images": ["20", 1]}},
              "22": {"class_type": "MaskPreview", "inputs": {"mask": ["20", 2]}}}
    return prompt


def load_image(name: str) -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": name}}


# ---- running ---------------------------------------------------------------------------------------------------

def run_error(prompt: dict) -> dict:
    """Run a prompt that must fail in a node; returns ComfyUI's execution_error report (node_type,
    exception_type, exception_message, traceback)."""
    try:
        outputs = run_prompt(prompt)
    except PromptFailed as failure:
        report = failure.args[0]
        assert isinstance(report, dict) and "exception_message" in report, report
        return {**report, "exception_message": report["exception_message"].strip()}
    raise AssertionError(f"the prompt was expected to fail but ran: {outputs}")


def node_outputs(prompt: dict) -> dict:
    """Run a prompt that must succeed; returns ComfyUI's history outputs."""
    return run_prompt(prompt)


def preview(outputs: dict, node_id: str) -> np.ndarray:
    """The picture a PreviewImage / MaskPreview node showed, as an array (masks come back as (H, W))."""
    entry = outputs[node_id]["images"][0]
    folder = Path(folder_paths.get_directory_by_type(entry["type"])) / entry["subfolder"]
    pixels = np.asarray(Image.open(folder / entry["filename"]).convert("RGB"))
    return pixels[..., 0] if node_id == "22" else pixels


def assert_comfy_keeps_running(folders: ComfyFolders) -> None:
    """After a failure, the same ComfyUI process runs a healthy prompt."""
    with UseFolders(folders):
        name = "healthy_tone.wav"
        if not (folders.input / name).exists():
            write_wav(folders.input / name, 0.5)
        outputs = run_prompt(audio_prompt(load_audio(name)))
    assert frames_of(outputs) == 6, outputs


# ---- shipped workflows, sized for a CPU ------------------------------------------------------------------------

WORKFLOWS_API = Path(__file__).resolve().parents[1] / "workflows" / "api"
VOICE = Path(__file__).resolve().parents[1] / "assets" / "sonic_voice.wav"
DIALOGUE_PICTURE = VOICE.with_name("sonic_dialogue.png")


def write_run_inputs(folders: ComfyFolders, seconds: float = 1.0) -> None:
    """The picture (one face, painted for the stand-in detector), the dialogue's two-face picture, and the first
    `seconds` of the shipped voice."""
    portrait(320, 256, (FACE_LARGE,)).save(folders.input / "portrait.png")
    shutil.copy(DIALOGUE_PICTURE, folders.input / DIALOGUE_PICTURE.name)
    write_short_wav(VOICE, folders.input / "voice.wav", seconds)


def shipped_workflow(name: str, **sampler) -> dict:
    """A shipped API workflow on the random weights: CPU-sized (64-px short side, 2 steps), fp32, test inputs. The
    dialogue gets its faces as masks (the path of runs without a face detector)."""
    import json

    from tools.dialogue_assets import with_face_masks

    prompt = with_face_masks(json.loads((WORKFLOWS_API / f"{name}.json").read_text()))
    speakers = any(node["class_type"] == "SonicSpeakers" for node in prompt.values())
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "SonicLoader":
            inputs.update(svd_checkpoint="svd_xt_random.safetensors", dtype="fp32", low_vram="off")
        elif node["class_type"] == "LoadImage":
            inputs.update(image=DIALOGUE_PICTURE.name if speakers else "portrait.png")
        elif node["class_type"] == "LoadAudio":
            inputs.update(audio="voice.wav")
        elif node["class_type"] in ("SonicReferenceImage", "SonicSpeakers"):
            inputs.update(resolution=64)
        elif node["class_type"] in ("SonicSampler", "SonicSpeakersSampler"):
            inputs.update(steps=2, **sampler)
        elif node["class_type"] == "BasicScheduler":
            inputs.update(steps=2)
    return prompt


def node_id_of(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def video_frames(path: Path) -> np.ndarray:
    """Every frame of a video file, decoded (fails on an incomplete file)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def videos(folders: ComfyFolders) -> list[Path]:
    return [p for p in folders.output_files() if p.suffix == ".mp4"]


def assert_complete_video(path: Path, frames: int) -> np.ndarray:
    decoded = video_frames(path)
    assert decoded.shape[0] == frames, (path, decoded.shape)
    return decoded


def pack_module(name: str):
    """A module of this pack as ComfyUI loaded it (ComfyUI names the package after the folder), e.g. 'nodes.video';
    the library's modules ('sonic_model.unet.unet') have one identity, the top-level one the pack also uses."""
    import importlib

    import nodes

    if name.split(".")[0] == "sonic_model":
        return importlib.import_module(name)
    package = nodes.NODE_CLASS_MAPPINGS["SonicLoader"].__module__.rsplit(".nodes.", 1)[0]
    return importlib.import_module(f"{package}.{name}")
