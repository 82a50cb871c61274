"""Where Sonic's files live: `models/sonic`, registered with ComfyUI (extra_model_paths.yaml can add more)."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..sonic_model.model_catalog import CATALOG, ENTRIES

FOLDER = "sonic"
NONE = "none"
# Slot -> the official file name (relative to a sonic folder), and the slots that may be 'none'.
EXPECTED = {e.slot: e.relpath for e in CATALOG if e.folder == FOLDER}
OPTIONAL = tuple(e.slot for e in CATALOG if not e.required)
# The SVD-xt single files, in the order they are preferred: 1.1 (what `tools/models.py download` fetches and the
# shipped workflows name) and 1.0. Either serves: Sonic uses only their VAE and CLIP vision, which the two share.
SVD_OFFICIAL = (ENTRIES["svd_checkpoint"].relpath, "svd_xt.safetensors")


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


def svd_choices() -> tuple[list[str], str]:
    """The svd_checkpoint combo: 'none', the checkpoints present, and the official names even when missing (so a
    shared workflow validates and the loader can say how to fetch the file); default: an official file present."""
    present = folder_paths.get_filename_list("checkpoints")
    options = [NONE, *present, *(n for n in SVD_OFFICIAL if n not in present)]
    default = next((n for n in SVD_OFFICIAL if n in present),
                   next((n for n in present if Path(n).name.lower().startswith("svd_xt")), SVD_OFFICIAL[0]))
    return options, default


def svd_path(name: str) -> Path | None:
    """The chosen checkpoint's path; an official SVD-xt name missing on disk is served by the other official file
    (never by an arbitrary checkpoint). None when neither is there."""
    for candidate in (name, *SVD_OFFICIAL) if name in SVD_OFFICIAL else (name,):
        path = folder_paths.get_full_path("checkpoints", candidate)
        if path:
            return Path(path)
    return None


def resolve_svd(name: str) -> Path:
    path = svd_path(name)
    if path is None:
        where = " or ".join(folder_paths.get_folder_paths("checkpoints"))
        raise FileNotFoundError(
            f"SVD-xt checkpoint '{name}' not found. Put {SVD_OFFICIAL[0]} (or {SVD_OFFICIAL[1]}) in {where}: run "
            "`python tools/models.py download --token hf_...` in the Sonic node folder (the repository is gated: "
            f"accept the licence at {ENTRIES['svd_checkpoint'].url} first), or connect vae and clip_vision and choose '{NONE}'.")
    return path
