#!/usr/bin/env python
"""`make gpu-check-prepare`: pack here what `make gpu-check` needs on the GPU machine, which has no network.

    .venv/bin/python tools/gpu_check_pack.py [--out .gpu-check/payload]

The GPU machine has Python 3.12, torch, torchvision, torchaudio and transformers, but no diffusers, PyAV or ComfyUI,
and a call may carry at most 64 MiB (working tree included). Written to OUT:

  wheels.tar.xz     Python 3.12 manylinux x86_64 wheels of what is missing there (diffusers, av, ComfyUI's
                    runtime needs) and of their own missing needs, each stored unzipped so xz can shrink it (the
                    PyAV wheel's ffmpeg libraries go from 35 to 25 MB); gpu_check.py zips them back for pip
  comfyui.tar.xz    the ComfyUI runtime folder (.venv/ComfyUI): code and small configs, no tests, API nodes,
                    tokenizer data, images or docs (Sonic uses none of them)

and checks the total against the budget, with the working tree counted in (it carries the reference data, 22 MiB
of reference/). Carry OUT's parent to the GPU machine
(`carry: [".gpu-check/payload"]`). Wheels come from PyPI through pip (`pip download --only-binary=:all:`).
"""
from __future__ import annotations

import argparse
import email.parser
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePath

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `tools.` imports resolve from the checkout
    sys.path.insert(0, str(ROOT))
COMFYUI_DIR = ROOT / ".venv" / "ComfyUI"
PAYLOAD = ROOT / ".gpu-check" / "payload"
BUDGET_BYTES = 64 * 2**20          # one device call: working tree + carried paths
TREE_MARGIN_BYTES = 2 * 2**20      # room for the working tree to grow between prepare and run

# What the pack and ComfyUI import at run time on the GPU machine, beyond its image. kornia, spandrel, alembic and
# SQLAlchemy only serve optional core nodes and the database, which ComfyUI skips with a warning when absent.
WANTED = ["diffusers", "av", "torchsde", "pydantic", "pydantic-settings"]
# The GPU image's Python packages (device README KINDS.md, read 2026-11-17): never packed again.
GPU_IMAGE_PACKAGES = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())
PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
              "--abi", "abi3", "--abi", "none"] + [
    arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "any")
    for arg in ("--platform", tag)]

COMFY_SKIP_DIRS = {"tests", "tests-unit", "comfy_api_nodes", "script_examples", "__pycache__", ".git", "user", "temp",
                   ".github", "blueprints"}  # blueprints: the UI's subgraph library (0.33.0), read only if present
COMFY_SKIP_SUFFIXES = {".png", ".jpg", ".md", ".pyc", ".example"}
COMFY_MAX_FILE_BYTES = 200_000  # tokenizer vocabularies (up to 9 MB) serve text encoders Sonic never loads


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def keep_comfy_file(rel: PurePath, size: int) -> bool:
    """Whether the GPU run needs this file of a ComfyUI tree (path relative to the tree): code and small configs."""
    if COMFY_SKIP_DIRS & set(rel.parts[:-1]) or rel.suffix in COMFY_SKIP_SUFFIXES:
        return False
    return rel.suffix == ".py" or size <= COMFY_MAX_FILE_BYTES


def select_comfy_files(comfy_dir: Path) -> list[Path]:
    """The ComfyUI files the GPU run needs, relative to comfy_dir."""
    return [path.relative_to(comfy_dir) for path in sorted(comfy_dir.rglob("*"))
            if path.is_file() and keep_comfy_file(path.relative_to(comfy_dir), path.stat().st_size)]


def wheel_requirements(wheel: Path) -> dict[str, str]:
    """What a wheel needs on Python 3.12 / Linux (its Requires-Dist without extras): normalised name → the
    requirement to hand pip (name and version specifier, e.g. pydantic's exact pydantic-core)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    needed = {}
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            needed[normalise(req.name)] = f"{normalise(req.name)}{req.specifier}"
    return needed


def missing_closure(wheels: dict[str, Path], present: set[str]) -> dict[str, str]:
    """Needs of the given wheels (name → file) that neither the GPU image nor the wheels provide: name → requirement."""
    have = {normalise(n) for n in present} | set(wheels)
    return {name: spec for wheel in wheels.values() for name, spec in wheel_requirements(wheel).items()
            if name not in have}


def pinned(names: list[str]) -> list[str]:
    """Each name at the version installed here (the one the suite tested), unpinned where it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in names:
        try:
            out.append(f"{normalise(name)}=={version(name)}")
        except PackageNotFoundError:
            out.append(normalise(name))
    return out


def download(names: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                    *PIP_TARGET, "-d", str(dest), *names], check=True)


def wheel_name(path: Path) -> str:
    return normalise(path.name.split("-", 1)[0])


def fetch_wheels(dest: Path) -> list[Path]:
    """WANTED at the versions installed here, and everything they need that the GPU image lacks (pip's newest
    that meets each requirement's specifier), one wheel each."""
    todo = pinned(WANTED)
    while todo:
        download(todo, dest)
        wheels = {wheel_name(p): p for p in dest.glob("*.whl")}
        todo = sorted(missing_closure(wheels, GPU_IMAGE_PACKAGES).values())
    return sorted(dest.glob("*.whl"))


def add_tree(tar: tarfile.TarFile, files: list[tuple[str, bytes | Path]]) -> None:
    for arcname, source in files:
        data = source.read_bytes() if isinstance(source, Path) else source
        info = tarfile.TarInfo(arcname)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))


def write_tar_xz(path: Path, files: list[tuple[str, bytes | Path]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with tarfile.open(partial, "w:xz", preset=9) as tar:
        add_tree(tar, files)
    partial.replace(path)  # never a half-written archive under the final name
    return path.stat().st_size


def unzipped_wheel_files(wheels: list[Path]) -> list[tuple[str, bytes]]:
    files = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            files += [(f"{wheel.name}/{n}", z.read(n)) for n in z.namelist() if not n.endswith("/")]
    return files


def tree_bytes() -> int:
    """The working tree that travels: tracked files plus untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.split(b"\0")
    return sum((ROOT / p.decode()).stat().st_size for p in listed if p and (ROOT / p.decode()).is_file())


def check_budget(sizes: dict[str, int], tree: int, budget: int = BUDGET_BYTES) -> list[str]:
    """Lines describing the payload; raises SystemExit naming the biggest part when it does not fit."""
    total = sum(sizes.values()) + tree
    lines = [f"  {name:<18} {size / 2**20:6.1f} MiB" for name, size in sorted(sizes.items())]
    lines += [f"  {'working tree':<18} {tree / 2**20:6.1f} MiB",
              f"  {'total':<18} {total / 2**20:6.1f} MiB of {budget / 2**20:.0f} MiB"]
    if total + TREE_MARGIN_BYTES > budget:
        biggest = max(sizes, key=sizes.get)
        raise SystemExit("\n".join(lines) + f"\nthe payload does not fit one device call (keeping "
                         f"{TREE_MARGIN_BYTES / 2**20:.0f} MiB spare): shrink {biggest} first")
    return lines


def pack_033(snapshot: Path | None, out: Path, downloads: Path, present: set[str]) -> dict[str, int]:
    """ComfyUI 0.33.0's tree and wheels into `out` (sizes by file name); none, said why, without the snapshot."""
    from tools import gpu_check_pack_033 as v033

    snapshot = snapshot or v033.SNAPSHOT_GIT
    for stale in (out / f"{v033.TREE_NAME}.tar.xz", out / "wheels-0.33.0.tar.xz"):
        stale.unlink(missing_ok=True)
    if not (snapshot / "HEAD").is_file():
        print(f"ComfyUI 0.33.0 not packed: no git snapshot of github:yzkee/ComfyUI at {snapshot} (fetch it, or "
              "pass --snapshot); the `workflows 0.33.0` stage will say it was skipped")
        return {}
    version = v033.tree_version(snapshot)
    if version != "0.33.0":
        print(f"ComfyUI 0.33.0 not packed: the snapshot at {snapshot} is ComfyUI {version}")
        return {}
    files = v033.tree_files(snapshot)
    wheels = v033.fetch_wheels_033(snapshot, downloads, present)
    print(f"ComfyUI 0.33.0: {len(files)} files; wheels: " + ", ".join(w.name for w in wheels), flush=True)
    return {f"{v033.TREE_NAME}.tar.xz": write_tar_xz(out / f"{v033.TREE_NAME}.tar.xz", files),
            "wheels-0.33.0.tar.xz": write_tar_xz(out / "wheels-0.33.0.tar.xz", unzipped_wheel_files(wheels))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PAYLOAD)
    parser.add_argument("--snapshot", type=Path, default=None,
                        help="bare git directory of github:yzkee/ComfyUI (default: the search tool's fetch of it)")
    args = parser.parse_args(argv)
    if not (COMFYUI_DIR / "main.py").is_file():
        raise SystemExit(f"need {COMFYUI_DIR} (make setup)")
    downloads = args.out.parent / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    wheels = fetch_wheels(downloads)
    print("wheels: " + ", ".join(w.name for w in wheels), flush=True)
    sizes = {"wheels.tar.xz": write_tar_xz(args.out / "wheels.tar.xz", unzipped_wheel_files(wheels))}
    comfy = [(f"ComfyUI/{rel}", COMFYUI_DIR / rel) for rel in select_comfy_files(COMFYUI_DIR)]
    sizes["comfyui.tar.xz"] = write_tar_xz(args.out / "comfyui.tar.xz", comfy)
    sizes.update(pack_033(args.snapshot, args.out, downloads / "0.33.0", {wheel_name(w) for w in wheels}))
    print("\n".join(check_budget(sizes, tree_bytes())))
    print(f"payload ready in {args.out}: carry {args.out.relative_to(ROOT)} and run `make gpu-check` there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
