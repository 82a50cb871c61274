"""Where Sonic's files live: the `models/sonic` folder, registered with ComfyUI (extra_model_paths.yaml can add more)."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

FOLDER = "sonic"
NONE = "none"

# Slot -> the official file name (relative to a sonic folder).
EXPECTED = {
    "unet": "unet.pth",
    "audio2token": "audio2token.pth",
    "audio2bucket": "audio2bucket.pth",
    "face_detector": "yoloface_v5m.pt",
    "rife": "RIFE/flownet.pkl",
    "whisper": "whisper-tiny",
}
OPTIONAL = ("face_detector", "rife")


def register_sonic_folder() -> None:
    """Add models/sonic with the usual weight extensions, keeping any paths extra_model_paths.yaml added."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths = [*paths, default]
    # A yaml-created entry accepts any file; keep the weight-file filter so combos list only checkpoints.
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(extensions) | set(folder_paths.supported_pt_extensions))


def sonic_files() -> list[str]:
    register_sonic_folder()
    return folder_paths.get_filename_list(FOLDER)


def whisper_folders() -> list[str]:
    """Hugging Face Whisper folders (config.json + weights) up to two levels below any sonic folder."""
    register_sonic_folder()
    found = set()
    for root in folder_paths.get_folder_paths(FOLDER):
        base = Path(root)
        for config in list(base.glob("*/config.json")) + list(base.glob("*/*/config.json")):
            folder = config.parent
            if any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
                found.add(folder.relative_to(base).as_posix())
    return sorted(found)


def choices(slot: str, optional: bool = False) -> tuple[list[str], str]:
    """Combo options for a slot and its default (the official file when present)."""
    options = whisper_folders() if slot == "whisper" else sonic_files()
    if optional:
        options = [NONE, *options]
    expected = EXPECTED[slot]
    present = expected in options
    if not present:
        # Listed even when missing, so a shared workflow naming the official file passes ComfyUI's validation
        # and the loader can say where to put it and how to fetch it.
        options = [*options, expected]
    default = expected if present or not optional else NONE
    return options, default


def resolve(slot: str, name: str) -> Path | None:
    """Full path of a chosen file or folder; None for 'none'. Missing files raise a message naming the folder."""
    if name == NONE:
        return None
    register_sonic_folder()
    roots = folder_paths.get_folder_paths(FOLDER)
    for root in roots:
        candidate = Path(root) / name
        if candidate.exists():
            return candidate
    where = " or ".join(roots)
    skip = f", or choose '{NONE}' in '{slot}'" if slot in OPTIONAL else ""
    raise FileNotFoundError(f"Sonic {slot} file '{name}' not found. Put {EXPECTED[slot]} in {where}{skip}: run "
                            "`python tools/models.py download` in the Sonic node folder to fetch the missing files "
                            "(`python tools/models.py check` lists them).")
