"""Where the official reference data lives: `reference/` in this repository (what it is: reference/README.md).

The goldens' tensors are kept in one xz archive, `golden/tensors.tar.xz` (22.7 MB instead of 33.3 MB loose: the GPU
check's single device call carries the working tree, 64 MiB in all). `tensor_file` unpacks it once into `.cache/`
(ignored by git) and gives the path of one tensor file; a loose file beside a golden's json wins, so a copied or
edited golden in another folder works as before.
"""
from __future__ import annotations

import functools
import hashlib
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "reference"
GOLDEN_DIR = REFERENCE_DIR / "golden"
MANIFEST_DIR = REFERENCE_DIR / "manifest"
TENSOR_ARCHIVE = "tensors.tar.xz"
CACHE_DIR = REPO / ".cache" / "reference-tensors"


def tensor_file(folder: Path, name: str) -> Path:
    """`name` (a .safetensors file a golden's json names) in `folder`, or unpacked from the folder's archive."""
    loose = Path(folder) / name
    archive = Path(folder) / TENSOR_ARCHIVE
    if loose.exists() or not archive.exists():
        return loose  # a missing file is the caller's "no such file"
    return _unpacked(archive) / name


def _unpacked(archive: Path) -> Path:
    """The archive's files in a cache folder named by its contents, unpacked once (atomically, by rename)."""
    stat = archive.stat()
    digest = _digest(str(archive), stat.st_size, stat.st_mtime_ns)
    target = CACHE_DIR / digest
    if not target.is_dir():
        partial = CACHE_DIR / f".{digest}.partial"
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
        try:
            partial.rename(target)
        except OSError:  # another process unpacked it first
            pass
    return target


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """The archive's content hash, once per version of the file (every golden read asks)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
