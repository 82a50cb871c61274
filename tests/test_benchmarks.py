"""The benchmarks keep working in CI-sized form (their figures are reported, not asserted against targets)."""
import subprocess
import sys

from conftest import REPO


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_gpu_bench_quick_runs_on_cpu_with_the_ratio_line():
    out = _run("benchmarks/gpu_bench.py", "--quick", "--no-compile-compare")
    rows = [line for line in out.splitlines() if line.startswith("| default") or line.startswith("| low-vram")]
    assert len(rows) == 2, out
    assert rows[0].rstrip("|").split("|")[-1].strip().endswith("x"), "the reference-loop ratio is missing"
    assert "vs reference loop" in out


def test_sampler_overhead_counts_unet_calls():
    out = _run("benchmarks/sampler_overhead.py", "--frames", "13", "--window", "5", "--steps", "2", "--repeats", "1",
               "--size", "4")
    assert "UNet calls           6 (expected steps x windows = 6)" in out and "overhead ratio" in out


def test_load_memory_measures_sonic_loading_against_the_libraries_own_readers(tmp_path):
    out = _run("benchmarks/load_memory.py", "--scale", "0.02", "--generic", "--file-dtype", "fp32", "--targets", "bf16",
               "--cases", "lean,safe_open,torch_mmap,naive", "--tmpdir", str(tmp_path))
    rows = {cells[0]: cells for cells in map(str.split, out.splitlines()) if cells[3:4] == ["bf16"]}
    assert set(rows) == {"lean", "safe_open", "torch_mmap", "naive"}, out
    assert len({row[-1] for row in rows.values()}) == 1, "the four loads must give the same weights (checksum)"
    assert "safe_open vs lean -> bf16:" in out and "torch_mmap vs lean -> bf16:" in out
    assert not list(tmp_path.iterdir()), "the temporary checkpoints are left behind"


def test_long_audio_device_peak_runs_the_shipped_sampler_on_the_stand_in_and_ends_with_the_growth_line():
    import re

    out = _run("benchmarks/long_audio_memory.py", "--device-peak", "--quick")
    last = out.strip().splitlines()[-1]
    found = re.fullmatch(r"device peak growth 2 s -> 8 s at 64x64: (\d+) MiB \((\d+\.\d)x\)", last)
    assert found, out
    assert "host RSS for 8 s:" in out
    assert int(found.group(1)) <= 1, out  # 75 frames of 8×8 latents: core's two copies are 0.15 MiB
