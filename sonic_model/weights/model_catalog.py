"""Every file the Sonic workflows need (one table: where it belongs, where to get it, its official size), and
whether the one on disk is right. Files are recognised by content, never by name: a renamed correct file is "found
as <name>", a web page or an LFS stub under the right name is "wrong". No network; weights are never read
(safetensors: header only; PyTorch zips: memory-mapped index only)."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .file_signatures import NO_MATCH, identify_kind, safetensors_header, sniff_container

FOUND, MISSING, WRONG, ELSEWHERE = "found", "missing", "wrong", "found as"
SONIC, SONIC_LICENCE = "LeonJoe13/Sonic", "CC BY-NC-SA 4.0, non-commercial"
WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".ckpt", ".safetensors", ".sft")
WHISPER_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
MAX_LEGACY_PICKLE = 1 << 30  # legacy (non-zip) pickles cannot be mapped: bigger ones are judged by size only
MAX_SCAN_FILES, MAX_SCAN_DEPTH = 200, 4  # bound the look-around in a crowded folder (and symlink loops)


@dataclass(frozen=True)
class CatalogEntry:
    slot: str  # loader input name
    title: str
    folder: str  # ComfyUI folder name: "sonic" or "checkpoints"
    relpath: str  # official place under that folder (a folder for whisper)
    kind: str  # file_signatures kind, or "torchscript" / "whisper_folder"
    required: bool
    repo: str
    downloads: tuple[str, ...]  # files in the HF repo; each lands at relpath (whisper: in the relpath folder)
    licence: str
    size: int | None = None  # official bytes; for the gated SVD checkpoint, a lower bound
    gated: bool = False

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}"


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("unet", "Sonic UNet", "sonic", "unet.pth", "sonic_unet", True, SONIC, ("Sonic/unet.pth",),
                 SONIC_LICENCE, 6_303_636_358),
    CatalogEntry("audio2token", "audio2token", "sonic", "audio2token.pth", "audio2token", True, SONIC,
                 ("Sonic/audio2token.pth",), SONIC_LICENCE, 217_206_084),
    CatalogEntry("audio2bucket", "audio2bucket", "sonic", "audio2bucket.pth", "audio2bucket", True, SONIC,
                 ("Sonic/audio2bucket.pth",), SONIC_LICENCE, 87_050_998),
    CatalogEntry("whisper", "Whisper-tiny", "sonic", "whisper-tiny", "whisper_folder", True, "openai/whisper-tiny",
                 WHISPER_FILES, "MIT"),
    CatalogEntry("face_detector", "face detector", "sonic", "yoloface_v5m.pt", "torchscript", False, SONIC,
                 ("yoloface_v5m.pt",), "upstream YOLOv5-face: GPL-3.0", 84_574_759),
    CatalogEntry("rife", "RIFE interpolation", "sonic", "RIFE/flownet.pkl", "rife_flownet", False, SONIC,
                 ("RIFE/flownet.pkl",), "upstream RIFE: MIT", 12_186_817),
    CatalogEntry("svd_checkpoint", "SVD-xt checkpoint", "checkpoints", "svd_xt_1_1.safetensors", "svd_checkpoint",
                 True, "stabilityai/stable-video-diffusion-img2vid-xt-1-1", ("svd_xt_1_1.safetensors",),
                 "Stability AI Community License", 4_000_000_000, gated=True),
)
ENTRIES = {e.slot: e for e in CATALOG}


@dataclass(frozen=True)
class Inspection:
    kind: str | None  # None: unusable or unrecognised
    label: str  # what it is, for people
    broken: bool = False  # a failed download (stub, web page, truncated): safe to replace
    unverified: bool = False  # too costly to open (big legacy pickle): judged by size only
    fetch: tuple[str, ...] | None = None  # a Whisper folder's repo files to (re)fetch; None: the entry's downloads


def _shapes_kind(shapes: dict) -> Inspection:
    return Inspection(*(identify_kind(shapes) or (None, f"{NO_MATCH} ({len(shapes)} tensors)")))


def inspect_file(path: Path) -> Inspection:
    """Recognise a weights file (or a Whisper folder) from its content; cheap for any size."""
    if path.is_dir():
        return _whisper_folder(path)
    size, container = path.stat().st_size, sniff_container(path)
    if container == "safetensors":
        try:
            return _shapes_kind({k: v["shape"] for k, v in safetensors_header(path, size).items()})
        except ValueError as e:
            return Inspection(None, f"a damaged safetensors file ({e})", broken=True)
    if container == "zip":  # a TorchScript archive holds its code: the zip index says so
        with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as z:
            if any("/code/" in n for n in z.namelist()):
                return Inspection("torchscript", "a TorchScript model")
    if container == "pickle" and size > MAX_LEGACY_PICKLE:
        return Inspection(None, "a legacy-format PyTorch pickle (too big to open just for a check)", unverified=True)
    from .checkpoint_file import WeightFileError, read_state_dict  # torch only when a PyTorch file is met

    try:
        return _shapes_kind({k: v.shape for k, v in read_state_dict(path).items()})  # mapped: no data read
    except WeightFileError as e:
        return Inspection(None, str(e).replace(str(path), "this file"), broken=e.broken)


def _whisper_folder(folder: Path) -> Inspection:
    """Not Whisper, or incomplete (which files)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        config = None
    if config is not None and config.get("model_type") != "whisper":
        return Inspection(None, f"a {config.get('model_type', 'non-Whisper')} model folder, not Whisper")
    file = next((folder / n for n in (WHISPER_FILES[2], "pytorch_model.bin") if (folder / n).is_file()), None)
    weights = inspect_file(file) if file else None
    bad = [n for n, ok in zip(WHISPER_FILES, (config is not None, (folder / WHISPER_FILES[1]).is_file(),
                                              weights is not None and weights.kind == "whisper")) if not ok]
    if bad:
        why = f" ({file.name} is {weights.label})" if weights and weights.kind != "whisper" else ""
        return Inspection(None, f"an incomplete Whisper folder: missing or bad {', '.join(bad)}{why}", True,
                          fetch=tuple(bad))
    return Inspection("whisper_folder", "a Whisper model folder")


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
        for here, dirs, names in os.walk(root, followlinks=True):
            models = {d for d in dirs if (Path(here) / d / "config.json").is_file()}
            deep = len(Path(here).relative_to(root).parts) >= MAX_SCAN_DEPTH
            dirs[:] = [] if deep else sorted(d for d in set(dirs) - models if not d.startswith("."))
            found += [Path(here) / n for n in [*sorted(models), *sorted(names)]
                      if n in models or n.lower().endswith(suffixes)]
    return found[:MAX_SCAN_FILES]


def _warnings(entry: CatalogEntry, path: Path) -> list[str]:
    size, found = path.stat().st_size, []
    if entry.size and (size < entry.size if entry.gated else size != entry.size):
        found.append(f"not the official size ({size:,} bytes; official {'over ' * entry.gated}{entry.size:,}): "
                     "random test weights, a re-saved or stripped copy, or another version")
    if entry.slot == "unet" and path.with_suffix(".config.json").is_file() and not found:
        found.append(f"{path.with_suffix('.config.json').name} beside it describes a small test UNet: delete it")
    return found


def _check(entry: CatalogEntry, roots: list[Path], files: list[Path], inspect, present: Path | None) -> FileReport:
    """`present`: what is at an official name (None: nothing). A correct file under another name is pointed at
    instead of downloading again."""
    report = FileReport(entry, MISSING, roots[0] / entry.relpath, fetch=entry.downloads)
    if present is not None:
        seen, at_place = inspect(present), present.as_posix().endswith(entry.relpath)
        if seen.kind == entry.kind or seen.unverified:  # too big to open: the size is all there is to go on
            return FileReport(entry, FOUND, present, present, seen.label,
                              [seen.label] * seen.unverified + _warnings(entry, present))
        detail = seen.label if seen.label.startswith("this file") else (  # a loader message, already a sentence
            f"this is {seen.label}" + ("" if seen.kind is None else f", not {entry.title}"))
        if not seen.broken:
            detail += (f"; move it out of the way, then download {Path(entry.relpath).name}" if at_place else
                       "; rename or delete it: the loader picks svd_xt* files by name")
        report = FileReport(entry, WRONG, present if at_place else report.target, present, detail,
                            fetch=() if at_place and not seen.broken else seen.fetch or entry.downloads,
                            replace=seen.broken and at_place)  # a real model under the wrong name stays
    other = next((f for f in files if f != present and inspect(f).kind == entry.kind), None)
    if other is not None:  # a correct copy is already on disk: nothing to download
        name = next((other.relative_to(r).as_posix() for r in roots if other.is_relative_to(r)), str(other))
        advice = (f"select {name} as svd_checkpoint in the loader, or rename it to {entry.relpath}" if entry.gated
                  else f"rename it to {report.target}, or select {name} in the loader")
        report.fetch = ()
        if report.status == MISSING:
            report.status, report.path, report.detail = ELSEWHERE, other, advice
            report.warnings += _warnings(entry, other)
        else:
            report.detail += f". The right file is {name}: {advice}"
    return report


def check_models(sonic_dirs: Iterable[str | os.PathLike],
                 checkpoint_dirs: Iterable[str | os.PathLike]) -> list[FileReport]:
    """One report per catalog entry; the first folder of each list is where missing files belong."""
    sonic, checkpoints = [Path(d) for d in sonic_dirs], [Path(d) for d in checkpoint_dirs]

    @functools.cache  # each file recognised once per check
    def inspect(path: Path) -> Inspection:
        try:
            return inspect_file(path)
        except OSError as e:  # unreadable: say so instead of failing the whole check
            return Inspection(None, f"an unreadable file ({e.strerror or e})")

    sonic_files = _candidates(sonic, WEIGHT_SUFFIXES)
    svd_files = _candidates(checkpoints, (".safetensors", ".sft"))  # crowded folders: cheap headers only
    named = sorted((f for f in svd_files if f.name.lower().startswith("svd_xt")),  # in place; a correct one first
                   key=lambda f: inspect(f).kind != "svd_checkpoint")
    return [_check(e, checkpoints, svd_files, inspect, named[0] if named else None) if e.gated else
            _check(e, sonic, sonic_files, inspect, next((r / e.relpath for r in sonic if (r / e.relpath).exists()),
                                                        None)) for e in CATALOG]


def check_models_dir(models_dir: str | os.PathLike) -> list[FileReport]:
    """The check for a ComfyUI `models` folder (models/sonic and models/checkpoints)."""
    return check_models([Path(models_dir) / "sonic"], [Path(models_dir) / "checkpoints"])


def all_required_found(reports: Iterable[FileReport]) -> bool:
    return all(r.ok for r in reports if r.entry.required)


def human_size(n: int) -> str:
    unit, scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if n >= s), ("bytes", 1))
    return f"{n} bytes" if scale == 1 else f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"


def _notes(r: FileReport) -> list[str]:
    e, files = r.entry, ", ".join(r.entry.downloads)
    notes = [r.detail] if r.detail and r.status != FOUND else []
    if r.status == MISSING:
        notes = [f"put the {e.repo} files ({files}) in {r.target}{os.sep}" if e.kind == "whisper_folder" else
                 f"put {r.target.name} in {r.target.parent}{os.sep}"]
    notes += [f"warning: {w}" for w in r.warnings]
    if r.status in (MISSING, WRONG):
        size = f", {human_size(e.size)}" if e.size and not e.gated else ""
        gated = "; gated: log in there, accept the licence, then download with --token hf_..." * e.gated
        notes.append(f"source: {e.url} ({files}{size}; {e.licence}{gated})")
    return notes


def format_report(reports: list[FileReport], base: Path | None = None, download_command: str | None = None) -> str:
    """The table people read: one row per file, indented notes under it, then what to do."""
    lines = ["Sonic model check" + (f": {base}" if base else ""), "", f"  {'STATUS':8}  {'WHAT':29}  FILE"]
    for r in reports:
        shown = r.path or r.target
        name = shown.relative_to(base).as_posix() if base and shown.is_relative_to(base) else str(shown)
        what = r.entry.title + ("" if r.entry.required else " (optional)")
        size = f" ({human_size(shown.stat().st_size)})" if shown.is_file() else "/" * shown.is_dir()
        lines += [f"  {r.status:8}  {what:29}  {name}{size}", *(" " * 12 + n for n in _notes(r))]
    bad = [r.entry.slot for r in reports if r.entry.required and not r.ok]
    optional = sum(not r.entry.required and not r.ok for r in reports)
    lines += ["", f"{len(bad)} required file(s) not in place: {', '.join(bad)}." if bad else
              "All required files are in place." + (f" {optional} optional file(s) not in place." if optional else "")]
    if any(r.fetch for r in reports) and download_command:
        lines.append(f"Download the missing files: {download_command}")
    return "\n".join(lines)
