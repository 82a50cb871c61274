"""`make gpu-check-prepare`, ComfyUI 0.33.0 part: the files of that tree the GPU run needs, read from a git snapshot
of github:yzkee/ComfyUI (a bare git directory), and wheels of the packages 0.33.0 imports that 0.3.75 does not.

Nothing of that tree is committed here: it travels in the payload only (ComfyUI-0.33.0.tar.xz, wheels-0.33.0.tar.xz).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

from tools.gpu_check_pack import GPU_IMAGE_PACKAGES, download, keep_comfy_file, missing_closure, normalise
from tools.gpu_check_pack import pinned as installed_pin
from tools.gpu_check_pack import wheel_name

ROOT = Path(__file__).resolve().parents[1]
# Where the search tool's `fetch` of github:yzkee/ComfyUI leaves the snapshot (beside the checkout's folder).
SNAPSHOT_GIT = ROOT.parent / ".mirror" / "yzkee+ComfyUI" / "repo"
TREE_NAME = "ComfyUI-0.33.0"
# 0.33.0 imports these at start (comfy-aimdo: dynamic VRAM; comfy-kitchen: kernels behind its attention and fp8);
# simpleeval and blake3 serve a core math node and asset hashing.
# SQLAlchemy: 0.33.0's asset database queries import it at start (0.3.75 only used it behind a try).
WANTED_033 = ("comfy-aimdo", "comfy-kitchen", "simpleeval", "blake3", "sqlalchemy")
# comfy-kitchen's manylinux wheel carries 230 MB of CUDA/HIP kernels; its pure wheel runs the same API on torch.
PURE_ONLY = {"comfy-kitchen"}


def git(git_dir: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], input=data, capture_output=True,
                          check=True).stdout


def tree_version(git_dir: Path, rev: str = "HEAD") -> str:
    text = git(git_dir, "show", f"{rev}:comfyui_version.py").decode()
    return re.search(r"__version__\s*=\s*\"([^\"]+)\"", text).group(1)


def needed_blobs(git_dir: Path, rev: str = "HEAD") -> list[tuple[str, str]]:
    """(path, blob id) of the files the run needs; blobs the snapshot lists without content are left out."""
    chosen = []
    for line in git(git_dir, "ls-tree", "-r", "-l", rev).decode().splitlines():
        meta, path = line.split("\t", 1)
        _, kind, blob, size = meta.split()
        if kind == "blob" and size.isdigit() and keep_comfy_file(PurePosixPath(path), int(size)):
            chosen.append((path, blob))
    return chosen


def tree_files(git_dir: Path, rev: str = "HEAD") -> list[tuple[str, bytes]]:
    """(archive name under ComfyUI-0.33.0/, content) of every needed file, read in one `git cat-file --batch`."""
    blobs = needed_blobs(git_dir, rev)
    out = git(git_dir, "cat-file", "--batch", data="".join(f"{b}\n" for _, b in blobs).encode())
    files, at = [], 0
    for path, _ in blobs:
        header_end = out.index(b"\n", at)
        size = int(out[at:header_end].split()[2])
        files.append((f"{TREE_NAME}/{path}", out[header_end + 1:header_end + 1 + size]))
        at = header_end + 1 + size + 1
    return files


def pins(git_dir: Path, rev: str = "HEAD") -> list[str]:
    """WANTED_033 at the tree's own exact pins (requirements.txt `==`), else at the versions installed here."""
    lines = git(git_dir, "show", f"{rev}:requirements.txt").decode().splitlines()
    pinned = {normalise(re.split(r"[=<>~!; ]", line, maxsplit=1)[0]): line.strip() for line in lines
              if line.strip() and not line.startswith("#")}
    exact = {name: spec for name, spec in pinned.items() if "==" in spec}
    return [exact.get(normalise(name)) or installed_pin([name])[0] for name in WANTED_033]


def fetch_wheels_033(git_dir: Path, dest: Path, present: set[str]) -> list[Path]:
    """Wheels of WANTED_033 and their needs that neither the GPU image nor `present` (the base wheels) provide."""
    todo = pins(git_dir)
    while todo:
        pure = [t for t in todo if normalise(re.split(r"[=<>~!; ]", t, maxsplit=1)[0]) in PURE_ONLY]
        if pure:
            subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                            "--only-binary=:all:", "--python-version", "3.12", "--platform", "any", "-d", str(dest),
                            *pure], check=True)
        rest = [t for t in todo if t not in pure]
        if rest:
            download(rest, dest)
        wheels = {wheel_name(p): p for p in dest.glob("*.whl")}
        todo = sorted(missing_closure(wheels, GPU_IMAGE_PACKAGES | present).values())
    return sorted(dest.glob("*.whl"))
