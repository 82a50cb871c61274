"""Every file the Sonic workflows need (one table: where it belongs, where to get it, its official size), and
whether the one on disk is right. Files are recognised by content, never by name: a renamed correct file is "found
as <name>", a web page or an LFS stub under the right name is "wrong". No network; weights are never read
(safetensors: header only; PyTorch zips: memory-mapped index only)."""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .file_signatures import identify_kind, safetensors_header, sniff_container

FOUND, MISSING, WRONG, ELSEWHERE = "found", "missing", "wrong", "found as"
SONIC, SONIC_LICENCE = "LeonJoe13/Sonic", "CC BY-NC-SA 4.0, non-commercial"
WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".ckpt", ".safetensors", ".sft")
SVD_PARTS = ("first_stage_model.", "conditioner.embedders.0.open_clip.model.visual.")  # VAE, CLIP vision
WHISPER_TINY = {"d_model": 384, "encoder_layers": 4}
MAX_LEGACY_PICKLE = 1 << 30  # legacy (non-zip) pickles cannot be mapped: bigger ones are judged by size only
MAX_SCAN_FILES, MAX_SCAN_DEPTH = 200, 4  # bound the look-around in a crowded folder (and symlink loops)


@dataclass(frozen=True)
class CatalogEntry:
    slot: str  # loader input name
    title: str
    folder: str  # ComfyUI folder name: "sonic" or "checkpoints"
    relpath: str  # official place under that folder (a folder for whisper)
    kind: str  # file_signatures kind, or "torchscript" / "whisper_folder" / "svd_checkpoint"
    required: bool
    repo: str
    downloads: tuple[str, ...]  # files in the HF repo; each lands at relpath (whisper: in the relpath folder)
    licence: str
    size: int | None = None  # official bytes, where known
    min_size: int | None = None  # only a lower bound is known
    gated: bool = False
    description: str = ""  # for the loader's messages: "expected <description> (<file name>)"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}"


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("unet", "Sonic UNet", "sonic", "unet.pth", "sonic_unet", True, SONIC, ("Sonic/unet.pth",),
                 SONIC_LICENCE, 6_303_636_358, description="the Sonic UNet weights"),
    CatalogEntry("audio2token", "audio2token", "sonic", "audio2token.pth", "audio2token", True, SONIC,
                 ("Sonic/audio2token.pth",), SONIC_LICENCE, 217_206_084, description="the Sonic audio2token weights"),
    CatalogEntry("audio2bucket", "audio2bucket", "sonic", "audio2bucket.pth", "audio2bucket", True, SONIC,
                 ("Sonic/audio2bucket.pth",), SONIC_LICENCE, 87_050_998,
                 description="the Sonic audio2bucket weights"),
    CatalogEntry("whisper", "Whisper-tiny", "sonic", "whisper-tiny", "whisper_folder", True, "openai/whisper-tiny",
                 ("config.json", "preprocessor_config.json", "model.safetensors"), "MIT"),
    CatalogEntry("face_detector", "face detector", "sonic", "yoloface_v5m.pt", "torchscript", False, SONIC,
                 ("yoloface_v5m.pt",), "upstream YOLOv5-face: GPL-3.0", 84_574_759),
    CatalogEntry("rife", "RIFE interpolation", "sonic", "RIFE/flownet.pkl", "rife_flownet", False, SONIC,
                 ("RIFE/flownet.pkl",), "upstream RIFE: MIT", 12_186_817,
                 description="the RIFE frame-interpolation weights"),
    CatalogEntry("svd_checkpoint", "SVD-xt checkpoint", "checkpoints", "svd_xt_1_1.safetensors", "svd_checkpoint",
                 True, "stabilityai/stable-video-diffusion-img2vid-xt-1-1", ("svd_xt_1_1.safetensors",),
                 "Stability AI Community License", min_size=4_000_000_000, gated=True),
)
ENTRIES = {e.slot: e for e in CATALOG}


@dataclass(frozen=True)
class Inspection:
    kind: str | None  # None: unusable or unrecognised
    label: str  # what it is, for people
    broken: bool = False  # a failed download (stub, web page, truncated): safe to replace
    unverified: bool = False  # too costly to open (big legacy pickle): judged by size only
    warnings: tuple[str, ...] = ()
    fetch: tuple[str, ...] | None = None  # a Whisper folder's repo files to (re)fetch; None: the entry's downloads


def _shapes_kind(shapes: dict[str, tuple[int, ...]]) -> Inspection:
    kind, label = identify_kind(shapes) or (None, f"a checkpoint with {len(shapes)} tensors that matches no known "
                                                  "layout")
    missing = [p.rstrip(".") for p in SVD_PARTS if not any(k.startswith(p) for k in shapes)]
    if kind == "svd_single_file" and not missing:
        return Inspection("svd_checkpoint", "an SVD single-file checkpoint (UNet, VAE and CLIP vision)")
    return Inspection(kind, f"an SVD checkpoint without {' and '.join(missing)} (VAE / CLIP vision)"
                      if kind == "svd_single_file" else label)


def inspect_file(path: Path) -> Inspection:
    """Recognise a weights file (or a Whisper folder) from its content; cheap for any size."""
    if path.is_dir():
        return _whisper_folder(path)
    size, container = path.stat().st_size, sniff_container(path)
    if container == "safetensors":
        try:
            return _shapes_kind({k: tuple(v["shape"]) for k, v in safetensors_header(path, size).items()})
        except ValueError as e:
            return Inspection(None, f"a damaged safetensors file ({e})", broken=True)
    if container == "zip":  # TorchScript: its top folder is named after the file, so only code paths are read
        try:
            with zipfile.ZipFile(path) as z:
                code = [n.split("/", 1)[-1] for n in z.namelist() if "/code/" in n or n.endswith("/constants.pkl")]
        except (zipfile.BadZipFile, OSError):
            code = []
        if code:
            yolo = any("yolo" in n.lower() for n in code)
            return Inspection("torchscript", "a TorchScript YOLO model" if yolo else "a TorchScript model")
    if container == "pickle" and size > MAX_LEGACY_PICKLE:
        return Inspection(None, "a legacy-format PyTorch pickle (not opened: too big to read just for a check)",
                          unverified=True)
    from .weights import WeightFileError, read_state_dict  # torch only when a PyTorch file is met

    try:
        state = read_state_dict(path)  # memory-mapped: the tensors' data is never read
    except WeightFileError as e:
        return Inspection(None, str(e).replace(str(path), "this file"), broken=e.broken)
    return _shapes_kind({k: tuple(v.shape) for k, v in state.items()})


def _whisper_folder(folder: Path) -> Inspection:
    fetch, problems, config = [], [], {}
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        fetch, problems = ["config.json"], ["no config.json" if isinstance(e, OSError) else
                                            "config.json is not JSON (a failed download?)"]
    if config and config.get("model_type") != "whisper":
        return Inspection(None, f"a {config.get('model_type', 'non-Whisper')} model folder, not Whisper")
    if not (folder / "preprocessor_config.json").is_file():
        fetch, problems = [*fetch, "preprocessor_config.json"], [*problems, "no preprocessor_config.json"]
    verdicts = [(w, inspect_file(folder / w)) for w in ("model.safetensors", "pytorch_model.bin")
                if (folder / w).is_file()]
    if not any(v.kind == "whisper" for _, v in verdicts):
        fetch.append("model.safetensors")
        problems += [v.label.replace("this file", w, 1) if v.label.startswith("this file") else f"{w} is {v.label}"
                     for w, v in verdicts] or ["no model.safetensors"]
    if problems:
        return Inspection(None, "an incomplete Whisper folder: " + "; ".join(problems), True, fetch=tuple(fetch))
    dims = {k: config.get(k) for k in WHISPER_TINY}
    return Inspection("whisper_folder", "a Whisper model folder", warnings=() if dims == WHISPER_TINY else (
        f"not whisper-tiny's size (d_model {dims['d_model']}, {dims['encoder_layers']} encoder layers; whisper-tiny "
        "has 384, 4): random test weights or another Whisper; the official audio2token.pth needs whisper-tiny",))


@dataclass
class FileReport:
    entry: CatalogEntry
    status: str  # FOUND, MISSING, WRONG, ELSEWHERE
    target: Path  # where the file belongs
    path: Path | None = None  # the file looked at: found, wrong, or found under another name
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    fetch: tuple[str, ...] = ()  # repo files `download` should fetch
    replace: bool = False  # the fetched file may replace what is at `target` (a failed download)

    @property
    def ok(self) -> bool:
        return self.status == FOUND


def _candidates(roots: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    """Weights files below the roots (Hugging Face model folders, holding config.json, count as one)."""
    found = []
    for root in roots:
        for dirpath, dirs, names in os.walk(root, followlinks=True):
            deep = len(Path(dirpath).relative_to(root).parts) >= MAX_SCAN_DEPTH
            found += [Path(dirpath) / d for d in dirs if (Path(dirpath) / d / "config.json").is_file()]
            dirs[:] = [] if deep else sorted(d for d in dirs if not d.startswith(".")
                                             and not (Path(dirpath) / d / "config.json").is_file())
            found += [Path(dirpath) / n for n in sorted(names) if n.lower().endswith(suffixes)]
    return found[:MAX_SCAN_FILES]


def _warnings(entry: CatalogEntry, seen: Inspection, path: Path) -> list[str]:
    size, found = path.stat().st_size, list(seen.warnings)
    if entry.size is not None and size != entry.size:
        found.append(f"not the official size ({size:,} bytes; official {entry.size:,}): random test weights, a "
                     "re-saved copy or another version")
    if entry.min_size is not None and size < entry.min_size:
        found.append(f"{human_size(size)}: smaller than any official SVD-xt checkpoint (over "
                     f"{human_size(entry.min_size)}): random test weights or a stripped copy")
    if entry.kind == "torchscript" and "YOLO" not in seen.label:
        found.append("a TorchScript model, but not recognisably a YOLO one")
    if entry.slot == "unet" and path.with_suffix(".config.json").is_file() and not found:
        found.append(f"{path.with_suffix('.config.json').name} beside it describes a small test UNet: delete it, "
                     "the official unet.pth needs none")
    return found


def _check(entry: CatalogEntry, roots: list[Path], files: list[Path], inspect, present: Path | None) -> FileReport:
    """`present`: what is at an official name (None: nothing). A correct file under another name is pointed at
    instead of downloading again."""
    target = roots[0] / entry.relpath
    report = FileReport(entry, MISSING, target, fetch=entry.downloads)
    if present is not None:
        seen = inspect(present)
        if seen.kind == entry.kind:
            return FileReport(entry, FOUND, present, present, seen.label, _warnings(entry, seen, present))
        if seen.unverified:  # cannot open it cheaply: the size is all there is to go on
            note = "the size matches the official file" if present.stat().st_size == entry.size else \
                "not verified, and not the official size"
            return FileReport(entry, FOUND, present, present, seen.label, [f"{seen.label}: {note}"])
        at_place = present.as_posix().endswith(entry.relpath)
        detail = seen.label if seen.label.startswith("this file") else (  # a loader message, already a sentence
            f"this is {seen.label}" + ("" if seen.kind is None else f", not {entry.title}"))
        report = FileReport(entry, WRONG, present if at_place else target, present, detail,
                            fetch=entry.downloads if seen.fetch is None else seen.fetch,
                            replace=seen.broken and at_place)
        if at_place and not seen.broken:
            report.fetch = ()  # a real model under the wrong name is never overwritten
            report.detail += f"; move it out of the way, then download {Path(entry.relpath).name}"
        elif not (at_place or seen.broken):
            report.detail += "; rename or delete it: the loader picks svd_xt* files by name"
    other = next((f for f in files if f != present and inspect(f).kind == entry.kind), None)
    if other is not None:
        name = next((other.relative_to(r).as_posix() for r in roots if other.is_relative_to(r)), str(other))
        advice = (f"select {name} as svd_checkpoint in the loader, or rename it to {entry.relpath}"
                  if entry.folder == "checkpoints" else f"rename it to {target}, or select {name} in the loader")
        report.fetch = ()  # a correct copy is already on disk: nothing to download
        if report.status == MISSING:
            report.status, report.path, report.detail = ELSEWHERE, other, advice
            report.warnings += _warnings(entry, inspect(other), other)
        else:
            report.detail += f". The right file is {name}: {advice}"
    return report


def check_models(sonic_dirs: Iterable[str | os.PathLike],
                 checkpoint_dirs: Iterable[str | os.PathLike]) -> list[FileReport]:
    """One report per catalog entry; the first folder of each list is where missing files belong."""
    sonic, checkpoints = [Path(d) for d in sonic_dirs], [Path(d) for d in checkpoint_dirs]
    if not sonic or not checkpoints:
        raise ValueError("need at least one sonic folder and one checkpoints folder")
    seen: dict[Path, Inspection] = {}

    def inspect(path: Path) -> Inspection:  # each file recognised once per check
        if path not in seen:
            try:
                seen[path] = inspect_file(path)
            except OSError as e:  # unreadable: say so instead of failing the whole check
                seen[path] = Inspection(None, f"an unreadable file ({e.strerror or e})")
        return seen[path]

    sonic_files = _candidates(sonic, WEIGHT_SUFFIXES)
    svd_files = _candidates(checkpoints, (".safetensors", ".sft"))  # crowded folders: cheap headers only
    reports = []
    for entry in CATALOG:
        if entry.kind == "svd_checkpoint":  # any svd_xt*.safetensors is in place; a correct one first
            named = sorted((f for f in svd_files if f.name.lower().startswith("svd_xt")),
                           key=lambda f: inspect(f).kind != entry.kind)
            reports.append(_check(entry, checkpoints, svd_files, inspect, named[0] if named else None))
        else:
            present = next((r / entry.relpath for r in sonic if (r / entry.relpath).exists()), None)
            reports.append(_check(entry, sonic, sonic_files, inspect, present))
    return reports


def check_models_dir(models_dir: str | os.PathLike) -> list[FileReport]:
    """The check for a ComfyUI `models` folder (models/sonic and models/checkpoints)."""
    return check_models([Path(models_dir) / "sonic"], [Path(models_dir) / "checkpoints"])


def all_required_found(reports: Iterable[FileReport]) -> bool:
    return all(r.ok for r in reports if r.entry.required)


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _notes(r: FileReport) -> list[str]:
    files, whisper = ", ".join(r.entry.downloads), r.entry.kind == "whisper_folder"
    notes = [f"put the {r.entry.repo} files ({files}) in {r.target}{os.sep}" if whisper else
             f"put {r.target.name} in {r.target.parent}{os.sep}"] if r.status == MISSING else \
        [r.detail] if r.detail and r.status != FOUND else []
    if r.status == WRONG and r.fetch and whisper:
        notes.append(f"missing or bad in the folder: {', '.join(r.fetch)}")
    notes += [f"warning: {w}" for w in r.warnings]
    if r.status in (MISSING, WRONG):
        size = f", {human_size(r.entry.size)}" if r.entry.size else ""
        gated = "; gated: accept the licence there first" if r.entry.gated else ""
        notes.append(f"source: {r.entry.url} ({files}{size}; {r.entry.licence}{gated})")
    return notes


def format_report(reports: list[FileReport], base: Path | None = None, download_command: str | None = None) -> str:
    """The table people read: one row per file, indented notes under it, then what to do."""
    rows = [("STATUS", "WHAT", "FILE", "SIZE", None)]
    for r in reports:
        shown = r.path if r.path is not None else r.target
        name = (shown.relative_to(base).as_posix() if base is not None and shown.is_relative_to(base)
                else str(shown)) + ("/" if r.entry.kind == "whisper_folder" else "")
        what = r.entry.title + ("" if r.entry.required else " (optional)")
        rows.append((r.status, what, name, human_size(shown.stat().st_size) if shown.is_file() else "", r))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["Sonic model check" + (f": {base}" if base is not None else ""), ""]
    for *cells, r in rows:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(cells, widths)).rstrip())
        lines += ["  " + " " * widths[0] + "  " + n for n in (_notes(r) if r else [])]
    bad = [r.entry.slot for r in reports if r.entry.required and not r.ok]
    optional = sum(not r.entry.required and not r.ok for r in reports)
    lines += ["", f"{len(bad)} required file(s) not in place: {', '.join(bad)}." if bad else
              "All required files are in place." + (f" {optional} optional file(s) not in place." if optional else "")]
    if any(r.fetch for r in reports) and download_command:
        lines.append(f"Download the missing files: {download_command}")
        if any(r.fetch and r.entry.gated for r in reports):
            lines.append(f"The SVD checkpoint is gated: log in at {ENTRIES['svd_checkpoint'].url}, accept the "
                         "licence, then pass --token hf_... (or set HF_TOKEN). Any svd_xt.safetensors / "
                         "svd_xt_1_1.safetensors you already have works too: put it in the checkpoints folder.")
    return "\n".join(lines)
