"""`make gpu-check` cannot rot: its dry run (every step at tiny size on the CPU) passes here, and the packer's
choices (ComfyUI files, wheel needs, the 64 MiB budget) and the GPU side's unpacking work offline."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import COMFYUI_DIR, REPO
from tools.gpu_check import unpack_payload
from tools.gpu_check_pack import (check_budget, missing_closure, pinned, select_comfy_files,
                                  unzipped_wheel_files, wheel_requirements)
from tools.gpu_check_workflows import length_verdict

MiB = 2**20


STAGE_NAMES = ["parity", "workflows 0.3.75", "workflows 0.33.0", "bench shipped path", "multi-GPU",
               "emulate 8 GiB", "emulate 12 GiB", "compile"]


def _dry_run(tmp_path: Path, models: Path, *extra: str) -> tuple[subprocess.CompletedProcess, str, Path]:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--work", str(tmp_path / "work"),
                             "--models", str(models), *extra], cwd=REPO, capture_output=True, text=True,
                            timeout=900, env=dict(os.environ, OUT=str(out)))
    return result, (out / "gpu-check-report.md").read_text(), out


def test_dry_run_passes_every_stage_and_writes_one_report(tmp_path, tiny_models_dir):
    result, report, out = _dry_run(tmp_path, tiny_models_dir)
    assert result.returncode == 0, report + result.stdout[-3000:] + result.stderr[-3000:]
    assert report.startswith("# Sonic gpu-check: PASSED") and "DRY RUN" in report and "FAILED" not in report
    budgets = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in report.splitlines()
               if line.startswith("| ") and line.split(" | ")[0][2:] in STAGE_NAMES}
    assert list(budgets) == STAGE_NAMES  # the budget table names every stage, in run order
    assert sum(int(b[0]) for b in budgets.values()) <= 540  # one call of ≤ 9 minutes
    for name in STAGE_NAMES:
        assert f"## {name}: " in report
        assert (out / f"stage-{name.lower().replace(' ', '-')}.md").read_text().startswith(f"## {name}: ")
    # no GPU on the dry run: the stage says so (on a one-GPU machine: "one GPU: skipped")
    assert re.search(r"## multi-GPU: skipped \(\d+ s of its 30 s budget\): no GPU: skipped \(Sonic Devices", report)
    assert re.search(r"## workflows 0\.33\.0: (ok|skipped \(\d+ s of its \d+ s budget\): \S.+)", report)
    for dtype in ("fp32", "fp16", "bf16"):
        assert f"| {dtype} | " in report
    video_rows = [line for line in report.splitlines() if line.startswith("| sonic_") and line.endswith("| ok |")]
    assert video_rows, report
    shipped = [line for line in report.splitlines() if line.startswith("| shipped |")]
    for compiled, guidance, dtype, size in [("eager", "batched", "bf16", "64x64"), ("eager", "per-row", "fp16",
                                                                                     "128x64")]:
        assert any(f"| {compiled} | {guidance}" in r and f"| {dtype} | {size} |" in r for r in shipped), shipped
    assert any("| compile (aot_eager) |" in r and "skipped" not in r for r in shipped), shipped
    assert any(line.startswith("| library | eager | batched |") for line in report.splitlines())
    assert any(line.startswith("| workflow sonic_basic_1s, ComfyUI 0.3.75") for line in report.splitlines())
    for card in (8, 12):
        section = report.split(f"## emulate {card} GiB: ok")[1].split("\n## ")[0]
        assert f"on {card} GiB" in section and "| 10 | " in section and "| 60 | " in section
        assert all(phase in section for phase in ("sampling", "decode", "RIFE"))
    assert "| fp16 | 1 | 0 |" in report and "| fp8_e4m3fn | 1 | 0 |" in report  # one graph, no breaks
    assert result.stdout.rstrip().splitlines()[-1] == "graph breaks: 0"


def test_stages_rerun_only_those_named_and_keep_the_other_parts(tmp_path, tiny_models_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stage-compile.md").write_text("## compile: ok (3 s of its 50 s budget)\n\nearlier part\n")
    (out / "stage-parity.md").write_text("## parity: FAILED (1 s of its 45 s budget)\n\nstale part\n")
    result, report, _ = _dry_run(tmp_path, tiny_models_dir, "--stages", "parity")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "earlier part" in report and "stale part" not in report and "## parity: ok" in report
    assert "| compile | 55 | 3 | ok |" in report and "| bench shipped path | 90 | - | not run |" in report
    assert report.startswith("# Sonic gpu-check: PASSED")
    bad = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--stages", "parity,nope"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown stage(s) ['nope']" in bad.stderr


def test_the_compile_check_counts_a_graph_break():
    """The check can fail: a host read inside the compiled function splits the graph and is reported."""
    from tools.compile_check import Explained, explain, report_lines

    class Breaking(torch.nn.Module):
        def denoise_core(self, x):
            y = x * 2
            if float(y.sum()) > 0:  # data-dependent Python branch: dynamo breaks the graph here
                y = y + 1
            return y

    found = explain(Breaking(), (torch.ones(3),), "fp16")
    assert found.breaks >= 1 and found.graphs >= 2 and found.reasons
    assert report_lines([Explained("fp16", 1, 0, 10)])[2] == "| fp16 | 1 | 0 | 10 |"


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


def test_comfyui_033_is_packed_from_a_git_snapshot_without_what_the_run_never_reads(tmp_path):
    from tools.gpu_check_pack import pack_033
    from tools.gpu_check_pack_033 import needed_blobs, pins, tree_files, tree_version

    tree = tmp_path / "tree"
    for name, size in [("main.py", 10), ("comfy/sd.py", 20), ("tests/test_x.py", 10), ("blueprints/a.json", 10),
                       ("comfy/text_encoders/vocab.json", 300_000), ("README.md", 10), ("input/example.png", 10),
                       ("comfy_api_nodes/a.py", 10)]:
        _touch(tree / name, size)
    (tree / "comfyui_version.py").write_text('__version__ = "0.33.0"\n')
    (tree / "requirements.txt").write_text("torch\ncomfy-kitchen==0.2.31\ncomfy-aimdo==0.4.13\n#note\nblake3\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", str(tree)], check=True)
    subprocess.run([*git, "-C", str(tree), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(tree), "commit", "-q", "-m", "snapshot"], check=True)
    bare = tmp_path / "snapshot.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(tree), str(bare)], check=True)
    assert tree_version(bare) == "0.33.0"
    assert sorted(p for p, _ in needed_blobs(bare)) == ["comfy/sd.py", "comfyui_version.py", "main.py",
                                                        "requirements.txt"]
    files = dict(tree_files(bare))
    assert files["ComfyUI-0.33.0/comfy/sd.py"] == b"x" * 20 and len(files) == 4
    # The tree's exact pins, else the version installed here (unpinned where none is).
    assert pins(bare) == ["comfy-aimdo==0.4.13", "comfy-kitchen==0.2.31", *pinned(["simpleeval", "blake3"]),
                          f"sqlalchemy=={__import__('sqlalchemy').__version__}"]
    assert pack_033(tmp_path / "absent", tmp_path / "payload", tmp_path / "dl", set()) == {}  # said why, no pack


def test_the_emulation_reads_the_guiders_mode_and_predicts_for_the_card():
    from benchmarks.vram_emulate import mode_of, predicted_lines
    from sonic_model.sampling import memory_model as mm

    assert mode_of("per-row guidance") == mm.PER_ROW and mode_of("batched guidance") == mm.BATCHED
    offload = mode_of(str(mm.SamplingMode(mm.OFFLOAD.name, False, 8, True, int(1.25 * mm.GIB))))
    assert offload.offload and offload.offload_bytes == int(1.25 * mm.GIB)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        mode_of("sliced somehow")
    rows = predicted_lines(8 * mm.GIB, [10, 60])
    assert rows[-2].startswith("| 10 | per-row guidance |") and rows[-1].startswith("| 60 | ")
    assert "does not fit" in predicted_lines(2 * mm.GIB, [10])[-1]  # a card too small says so


def test_the_benchmark_covers_the_grid_most_telling_rows_first():
    from benchmarks.shipped_bench import Sizes, all_rows

    rows = all_rows(Sizes(None, 32, 25, 7, 50, 4, ((512, 512), (576, 1024)), "inductor"))
    shipped = [r for r in rows if r.path == "shipped"]
    assert len(shipped) == 16 and len({(r.compile, r.batched, r.dtype, r.height) for r in shipped}) == 16
    assert len(rows) == 20 and rows[0] == rows[0].__class__("shipped", False, True, "bf16", 512, 512)
    assert rows[1].path == "library" and not any(r.compile for r in rows[:12])  # eager rows before compiled ones
