"""Where Sonic's files live: `models/sonic`, registered with ComfyUI (extra_model_paths.yaml can add more)."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..sonic_model.weights.model_catalog import CATALOG, ENTRIES

FOLDER, NONE = "sonic", "none"
EXPECTED = {e.slot: e.relpath for e in CATALOG if e.folder == FOLDER}  # slot -> official name in a sonic folder
OPTIONAL = tuple(e.slot for e in CATALOG if not e.required)  # slots that may be 'none'
# The SVD-xt single files, preferred first: 1.1 (what the download fetches and the shipped workflows name) and 1.0.
# Either serves: Sonic uses only their VAE and CLIP vision, which the two share.
SVD_OFFICIAL = (ENTRIES["svd_checkpoint"].relpath, "svd_xt.safetensors")
FETCH = "`python tools/models.py download"


def register_sonic_folder() -> None:
    """Add models/sonic with the weight extensions (combos list only checkpoints), keeping paths the yaml added."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    folder_paths.folder_names_and_paths[FOLDER] = ([*paths, *([] if default in paths else [default])],
                                                   set(extensions) | set(folder_paths.supported_pt_extensions))


def whisper_folders() -> list[str]:
    """Hugging Face Whisper folders (config.json + weights) up to two levels below any sonic folder."""
    register_sonic_folder()
    return sorted({c.parent.relative_to(root).as_posix() for root in map(Path, folder_paths.get_folder_paths(FOLDER))
                   for c in [*root.glob("*/config.json"), *root.glob("*/*/config.json")]
                   if any((c.parent / w).is_file() for w in ("model.safetensors", "pytorch_model.bin"))})


def choices(slot: str, optional: bool = False) -> tuple[list[str], str]:
    """Combo options for a slot and its default (the official file when present). The official name is listed even
    when missing, so a shared workflow naming it validates and the loader can say how to fetch it."""
    register_sonic_folder()
    options = whisper_folders() if slot == "whisper" else folder_paths.get_filename_list(FOLDER)
    options, expected = [NONE, *options] if optional else options, EXPECTED[slot]
    present = expected in options
    return options + ([] if present else [expected]), expected if present or not optional else NONE


def resolve(slot: str, name: str) -> Path | None:
    """Full path of a chosen file or folder; None for 'none'. Missing files raise a message naming the folder."""
    if name == NONE:
        return None
    register_sonic_folder()
    roots = folder_paths.get_folder_paths(FOLDER)
    found = next((Path(r) / name for r in roots if (Path(r) / name).exists()), None)
    if found is None:
        skip = f", or choose '{NONE}' in '{slot}'" if slot in OPTIONAL else ""
        raise FileNotFoundError(f"Sonic {slot} file '{name}' not found. Put {EXPECTED[slot]} in {' or '.join(roots)}"
                                f"{skip}: run {FETCH}` in the Sonic node folder to fetch the missing files.")
    return found


def svd_choices() -> tuple[list[str], str]:
    """'none', the checkpoints present, and the official names even when missing; default: an official file
    present, else any svd_xt* file."""
    present = folder_paths.get_filename_list("checkpoints")
    default = next((n for n in SVD_OFFICIAL if n in present),
                   next((n for n in present if Path(n).name.lower().startswith("svd_xt")), SVD_OFFICIAL[0]))
    return [NONE, *present, *(n for n in SVD_OFFICIAL if n not in present)], default


def svd_path(name: str) -> Path | None:
    """The chosen checkpoint's path; an official name missing on disk is served by the other official file (never
    by an arbitrary checkpoint). None when neither is there."""
    paths = (folder_paths.get_full_path("checkpoints", n) for n in ((name, *SVD_OFFICIAL) if name in SVD_OFFICIAL
                                                                   else (name,)))
    return next((Path(p) for p in paths if p), None)


def resolve_svd(name: str) -> Path:
    if (path := svd_path(name)) is None:
        raise FileNotFoundError(
            f"SVD-xt checkpoint '{name}' not found. Put {SVD_OFFICIAL[0]} (or {SVD_OFFICIAL[1]}) in "
            f"{' or '.join(folder_paths.get_folder_paths('checkpoints'))}: run {FETCH} --token hf_...` in the Sonic "
            f"node folder (the repository is gated: accept the licence at {ENTRIES['svd_checkpoint'].url} first), or "
            f"connect vae and clip_vision and choose '{NONE}'.")
    return path
