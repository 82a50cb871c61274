"""README.md stays true: every shell command in it is one the tests or CI run, and the cheap ones run here."""
import re
import subprocess
import sys

from conftest import REFERENCE_DIR, REPO

README = (REPO / "README.md").read_text()
COMMANDS = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S)
            for line in block.splitlines() if line.split("#")[0].strip()]

# Each README command -> the test (or CI step) that runs it.
RUN_BY = {
    "make demo": "tests/test_demo.py runs tools/demo.py, the command `make demo` calls after set-up",
    "make test": ".ci/run (CI runs exactly this)",
    "python tools/models.py check --models-dir ../../models": "test_models_commands_run below",
    "python tools/models.py download --models-dir ../../models": "test_models_commands_run below (dry run, offline)",
    ".venv/bin/python tools/parity.py reference/golden/*.json reference/manifest/*.json":
        "tests/test_parity_tool.py runs it on every reference file",
    "make gpu-check-prepare": "tests/test_gpu_check.py runs its packing steps offline (the wheel download needs PyPI)",
    "make gpu-check": "tests/test_gpu_check.py runs its dry run (tools/gpu_check.py without CUDA)",
    'make gpu-check GPU_CHECK_ARGS="--stages compile,emulate-8-gib"':
        "tests/test_gpu_check.py reruns named stages with --stages",
}


def test_every_readme_command_is_run_somewhere():
    assert COMMANDS, "README has no shell commands"
    unknown = [c for c in COMMANDS if c not in RUN_BY]
    assert not unknown, f"README commands no test runs: {unknown}"


def test_make_test_is_what_ci_runs():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert re.search(r"^test: setup\n\t\$\(PY\) -m pytest", (REPO / "Makefile").read_text(), re.M)


def test_models_commands_run(tmp_path):
    models = tmp_path / "models"
    (models / "sonic").mkdir(parents=True)
    (models / "checkpoints").mkdir()
    check = subprocess.run([sys.executable, "tools/models.py", "check", "--models-dir", str(models)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 1 and "unet.pth" in check.stdout and "missing" in check.stdout, check.stdout
    dry = subprocess.run([sys.executable, "tools/models.py", "download", "--models-dir", str(models), "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert "unet.pth" in dry.stdout + dry.stderr


def test_parity_command_in_readme_points_at_the_reference_data():
    assert (REPO / "tools" / "parity.py").exists() and any(REFERENCE_DIR.glob("golden/*.json"))


def test_the_developers_map_names_every_stage_and_only_files_that_exist():
    table = README[README.index("| stage | library"):README.index("`sonic_model/host.py`")]
    stages = {p.parent.name for p in (REPO / "sonic_model").glob("*/__init__.py")}
    listed = set(re.findall(r"`(\w+)/`", table)) - {"sonic_model", "nodes"}
    assert stages == listed, f"stage folders {sorted(stages)} vs the README map {sorted(listed)}"
    node_files = set(re.findall(r"`(\w+\.py)`", table))
    assert node_files and all((REPO / "nodes" / f).is_file() for f in node_files), node_files
    unmapped = {p.name for p in (REPO / "nodes").glob("*.py")} - node_files - {
        "__init__.py", "menu.py", "sonic_types.py", "comfy_version.py", "preview.py", "host.py", "advanced.py"}
    assert not unmapped, f"node files missing from the README map: {sorted(unmapped)}"
