"""tools/parity.py on every file of the shared reference data, as a user or CI would run it."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REFERENCE_DIR, REPO
from tools.reference_data import tensor_file

REFERENCE_FILES = sorted(REFERENCE_DIR.glob("golden/*.json")) + sorted(REFERENCE_DIR.glob("manifest/*.json"))


def _parity(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "parity.py"), *map(str, files)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reference_file_passes(path):
    result = _parity(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    doc = json.loads(path.read_text())
    compared = [line for line in result.stdout.splitlines() if line.startswith("  ok")]
    if doc.get("golden_type") not in (None, "weights") or path.name in {
            "sonic_unet.json", "audio2token.json", "audio2bucket.json", "rife_flownet.json"}:
        assert compared, f"{path.name}: nothing was compared\n{result.stdout}"


def test_every_golden_type_in_the_index_is_handled():
    index = json.loads((REFERENCE_DIR / "golden" / "index.json").read_text())
    kinds = {entry["golden_type"] for entry in index["files"].values()}
    sys.path.insert(0, str(REPO))
    from tools.parity import GOLDEN_CHECKS

    assert kinds - {"weights"} <= set(GOLDEN_CHECKS)


def test_a_changed_pipeline_run_is_caught(tmp_path):
    """Same format, another setting (shift + 1): the tool must report it outside tolerance, exit 1."""
    golden = REFERENCE_DIR / "golden"
    for name in ("shift_fusion_pipeline_main.safetensors", "shift_fusion_pipeline_main_unet.safetensors"):
        shutil.copy(tensor_file(golden, name), tmp_path / name)
    shutil.copy(golden / "shift_fusion_pipeline_main_unet.json", tmp_path)
    doc = json.loads((golden / "shift_fusion_pipeline_main.json").read_text())
    doc["call_kwargs"]["shift_offset"] += 1
    (tmp_path / "shift_fusion_pipeline_main.json").write_text(json.dumps(doc))
    result = _parity(tmp_path / "shift_fusion_pipeline_main.safetensors")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL out.final_latents" in result.stdout


def test_a_perturbed_weight_is_caught(tmp_path):
    from safetensors.torch import load_file, save_file

    golden = REFERENCE_DIR / "golden"
    tensors = load_file(tensor_file(golden, "audio2token.safetensors"))
    tensors["weights.proj2.weight"][0, 0] += 1e-2
    save_file(tensors, tmp_path / "audio2token.safetensors")
    shutil.copy(golden / "audio2token.json", tmp_path / "audio2token.json")
    result = _parity(tmp_path / "audio2token.json")
    assert result.returncode == 1 and "FAIL out.tokens" in result.stdout, result.stdout + result.stderr


def test_unreadable_input_is_explained(tmp_path):
    result = _parity(tmp_path / "missing.json")
    assert result.returncode == 2 and "no such file" in result.stdout


def test_the_tensor_archive_holds_every_indexed_file_byte_for_byte():
    """reference/golden/tensors.tar.xz is the official data unchanged: each file the index lists, at its size and
    sha256, unpacked by tools/reference_data.tensor_file."""
    import hashlib

    index = json.loads((REFERENCE_DIR / "golden" / "index.json").read_text())
    for name, entry in index["files"].items():
        path = tensor_file(REFERENCE_DIR / "golden", name)
        data = path.read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], name
