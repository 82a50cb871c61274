"""`make gpu-check` cannot rot: its dry run (every step at tiny size on the CPU) passes here, and the packer's
choices (ComfyUI files, wheel needs, the 64 MiB budget) and the GPU side's unpacking work offline."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import COMFYUI_DIR, REPO
from tools.gpu_check import length_verdict, unpack_payload
from tools.gpu_check_pack import (check_budget, missing_closure, pinned, select_comfy_files,
                                  unzipped_wheel_files, wheel_requirements)

MiB = 2**20


def test_dry_run_passes_every_step_and_writes_one_report(tmp_path, tiny_models_dir):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--work", str(tmp_path / "work"),
                             "--models", str(tiny_models_dir)], cwd=REPO, capture_output=True, text=True,
                            timeout=900, env=dict(os.environ, OUT=str(out)))
    report = (out / "gpu-check-report.md").read_text()
    assert result.returncode == 0, report + result.stdout[-3000:] + result.stderr[-3000:]
    assert report.startswith("# Sonic gpu-check: PASSED") and "DRY RUN" in report
    for step in ("a. shipped workflows", "b. parity", "c. sampling benchmark"):
        assert f"## {step}" in report and "FAILED" not in report
    for dtype in ("fp32", "fp16", "bf16"):
        assert f"| {dtype} | " in report
    video_rows = [line for line in report.splitlines() if line.startswith("| sonic_") and line.endswith("| ok |")]
    assert video_rows, report
    assert any(line.startswith("| default") for line in report.splitlines())
    assert sorted(p.name for p in out.iterdir()) == ["bench.log", "gpu-check-report.md", "parity-bf16.log",
                                                     "parity-fp16.log", "parity-fp32.log", "workflows.log"]


def test_video_length_must_match_the_audio():
    assert length_verdict({"frames": 49, "fps": 25.0, "video_s": 1.96, "audio_s": 2.0}, 2.0) == ""
    assert length_verdict({"frames": 23, "fps": 25.0, "video_s": 0.92, "audio_s": 0.96}, 1.0) == ""  # ⌊12.5⌋ = 12
    assert length_verdict({"frames": 25, "fps": 12.5, "video_s": 2.0, "audio_s": 2.0}, 2.0) == ""  # no RIFE
    assert "frames" in length_verdict({"frames": 25, "fps": 25.0, "video_s": 1.0, "audio_s": 2.0}, 2.0)
    assert "video" in length_verdict({"frames": 49, "fps": 24.0, "video_s": 2.04, "audio_s": 2.0}, 2.0)
    assert "sound" in length_verdict({"frames": 49, "fps": 25.0, "video_s": 1.96, "audio_s": 0.0}, 2.0)


def _touch(path: Path, size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_comfyui_packing_keeps_code_and_small_configs(tmp_path):
    for name, size in [("main.py", 10), ("comfy/sd.py", 10), ("comfy/clip_vision_config_h.json", 500),
                       ("comfy/text_encoders/llama_tokenizer/tokenizer.json", 300_000), ("tests/test_x.py", 10),
                       ("comfy_api_nodes/apis/a.py", 10), ("README.md", 10), ("comfy/__pycache__/sd.pyc", 10),
                       ("requirements.txt", 10), ("custom_nodes/websocket_image_save.py", 10),
                       ("input/example.png", 10), ("output/_output_images_will_be_put_here", 0)]:
        _touch(tmp_path / name, size)
    chosen = {p.as_posix() for p in select_comfy_files(tmp_path)}
    assert chosen == {"main.py", "comfy/sd.py", "comfy/clip_vision_config_h.json", "requirements.txt",
                      "custom_nodes/websocket_image_save.py", "output/_output_images_will_be_put_here"}


def test_the_real_comfyui_selection_is_small_and_complete():
    chosen = select_comfy_files(COMFYUI_DIR)
    names = {p.as_posix() for p in chosen}
    assert {"main.py", "server.py", "nodes.py", "comfy/clip_vision_config_h.json", "comfy/sd.py",
            "custom_nodes/websocket_image_save.py"} <= names
    assert not any(n.startswith(("tests/", "comfy_api_nodes/")) for n in names)
    assert sum((COMFYUI_DIR / p).stat().st_size for p in chosen) < 12 * MiB


def _wheel(folder: Path, name: str, requires: list[str]) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n".format(name)
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 1\n")
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
        z.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


def test_wheel_needs_follow_markers_and_skip_what_the_gpu_image_has(tmp_path):
    wheel = _wheel(tmp_path, "h5pkg", ["numpy>=1", "Typing_Extensions", "tomli; python_version < '3.11'",
                                       "pytest; extra == 'test'", "importlib-metadata",
                                       "pywin32; sys_platform=='win32'"])
    assert wheel_requirements(wheel) == {"numpy": "numpy>=1", "typing-extensions": "typing-extensions",
                                         "importlib-metadata": "importlib-metadata"}
    assert missing_closure({"h5pkg": wheel}, {"numpy", "typing_extensions"}) == {
        "importlib-metadata": "importlib-metadata"}


def test_wanted_packages_travel_at_the_versions_tested_here():
    import diffusers

    assert pinned(["diffusers", "surely-not-installed-h5"]) == [f"diffusers=={diffusers.__version__}",
                                                               "surely-not-installed-h5"]


def test_the_budget_names_the_biggest_part_when_over():
    lines = check_budget({"wheels.tar.xz": 20 * MiB, "comfyui.tar.xz": 5 * MiB}, tree=34 * MiB)
    assert lines[-1].split()[1] == "59.0"
    with pytest.raises(SystemExit, match="shrink wheels.tar.xz"):
        check_budget({"wheels.tar.xz": 27 * MiB, "comfyui.tar.xz": 5 * MiB}, tree=34 * MiB)


def test_the_gpu_side_installs_carried_wheels_offline(tmp_path, monkeypatch):
    """The packer stores wheels unzipped in a tar.xz; the GPU side zips them back and pip installs them offline."""
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setattr(sys, "path", list(sys.path))
    payload = tmp_path / "payload"
    payload.mkdir()
    files = unzipped_wheel_files([_wheel(tmp_path, "h5probe", [])])
    with tarfile.open(payload / "wheels.tar.xz", "w:xz") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    done = unpack_payload(payload, tmp_path / "work", {"wheels"})
    assert done == [f"installed 1 wheels into {tmp_path / 'work' / 'site'}"]
    assert (tmp_path / "work" / "site" / "h5probe" / "__init__.py").read_text() == "VALUE = 1\n"
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "work" / "site")
