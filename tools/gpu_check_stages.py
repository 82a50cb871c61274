"""The `make gpu-check` stages that run one script each: parity, the shipped-path benchmark, the card emulations and
the compile check. Each returns a Step whose lines are its part of the report (the script's tables and a verdict)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tools.gpu_check_core import Clock, Plan, Step, run_logged
from tools.gpu_check_workflows import TIMINGS_NAME, models_folder

DTYPES = ("fp32", "fp16", "bf16")


def _tables(output: str, starts: tuple[str, ...] = ("|",)) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(starts)]


def _tail(output: str, lines: int = 15) -> list[str]:
    return ["", "```", *output.strip().splitlines()[-lines:], "```"]


def parity_step(name: str, plan: Plan, out: Path, clock: Clock) -> Step:
    step = Step(name)
    device = "cuda" if plan.cuda else "cpu"
    step.lines += [f"`tools/parity.py --dtype D --device {device}` on {len(plan.parity_files)} files; fp32 with the "
                   "reference README's tolerances, fp16/bf16 with the measured ones.", "",
                   "| dtype | outputs ok | outside tolerance | exit | s |", "|---|---|---|---|---|"]
    failures = []
    for i, dtype in enumerate(DTYPES):
        share = clock.left() / (len(DTYPES) - i)  # what is left, shared with the dtypes still to run
        code, output, seconds = run_logged([sys.executable, "tools/parity.py", "--dtype", dtype, "--device", device,
                                            *map(str, plan.parity_files)], out / f"parity-{dtype}.log", share)
        lines = output.splitlines()
        ok = sum(line.startswith("  ok") for line in lines)
        failed = [line.strip() for line in lines if line.startswith("  FAIL")]
        step.lines.append(f"| {dtype} | {ok} | {len(failed)} | {code} | {seconds:.0f} |")
        failures += [f"- {dtype}: {line}" for line in failed]
        if code != 0:
            step.ok = False
            if not failed:
                failures.append(f"- {dtype}: exit {code}: " + " / ".join(lines[-3:]))
    if failures:
        step.lines += ["", "Outside tolerance or broken (rerun `--stages parity` to measure this device's own "
                       "half-precision noise with benchmarks/precision_errors.py):", *failures[:60]]
    return step


def end_to_end_rows(out: Path) -> list[str]:
    """Rows of the shipped workflow's own end-to-end figure, from the workflows stages of this run (if they ran)."""
    rows = []
    for timings in sorted(out.glob(f"*-{TIMINGS_NAME}")):
        version = timings.name.split("-")[1]
        for run, t in json.loads(timings.read_text()).items():
            rows.append(f"| workflow {run}, ComfyUI {version}, its defaults |" + " - |" * 14
                        + f" {t['seconds'] / t['audio_s']:.2f} |")
    return rows


def bench_step(name: str, plan: Plan, out: Path, clock: Clock) -> Step:
    step = Step(name)
    args = [*plan.bench_args, "--budget", f"{max(clock.left() - 15, 10):.0f}"]
    code, output, seconds = run_logged([sys.executable, "benchmarks/shipped_bench.py", *args],
                                       out / "bench-shipped-path.log", clock.left())
    table = _tables(output, ("|", "Sonic sampling", "bf16 matmul", "Rows:"))
    rows = [line for line in table if line.startswith("| shipped")]
    # Stopped at the budget (a compile slower than the benchmark guessed): the rows it printed stand.
    step.ok = code in (0, 124) and bool(rows) and not any("FAILED" in line for line in rows)
    step.lines += [f"`benchmarks/shipped_bench.py {' '.join(args)}` (exit {code}, {seconds:.0f} s)", "", *table,
                   *end_to_end_rows(out)]
    if code == 124:
        step.lines += ["", "Stopped at the stage budget: the rows after the last one above did not run."]
    if not step.ok:
        step.lines += _tail(output)
    return step


def emulate_step(name: str, card_gib: int, plan: Plan, out: Path, work: Path, models: Path | None,
                 clock: Clock) -> Step:
    step = Step(name)
    models, problem = models_folder(plan, work, models, out / f"emulate-{card_gib}-GiB.log", clock)
    if problem:
        return Step(name, False, lines=[problem])
    args = ["--card-gib", str(card_gib), "--models", str(models), *plan.emulate_args]
    code, output, seconds = run_logged([sys.executable, "benchmarks/vram_emulate.py", *args],
                                       out / f"emulate-{card_gib}-GiB.log", clock.left())
    table = _tables(output, ("|", "Card", "Predicted", "Measured"))
    step.ok = code == 0 and any(line.startswith("| ") and "|---" not in line for line in table[2:])
    step.lines += [f"`benchmarks/vram_emulate.py {' '.join(args)}` (exit {code}, {seconds:.0f} s)", "", *table]
    if not step.ok:
        step.lines += _tail(output)
    return step


def compile_step(name: str, plan: Plan, out: Path, clock: Clock) -> Step:
    step = Step(name)
    code, output, seconds = run_logged([sys.executable, "tools/compile_check.py"], out / "compile.log", clock.left())
    lines = output.strip().splitlines()
    last = next((line for line in reversed(lines) if line.startswith("graph breaks: ")), "graph breaks: unknown")
    step.ok = code == 0 and last == "graph breaks: 0"
    step.lines += [f"`tools/compile_check.py` (exit {code}, {seconds:.0f} s)", "",
                   *[line for line in lines if line.startswith(("|", "- ", "Shipped UNet"))], "", last]
    if not step.ok:
        step.lines += _tail(output)
    return step


def multi_gpu_step(name: str, plan: Plan, out: Path, clock: Clock) -> Step:
    """benchmarks/multi_gpu_bench.py on every GPU there is; a one-GPU machine reports that and skips the run."""
    import torch

    gpus = torch.cuda.device_count() if plan.cuda else 0
    if gpus < 2:
        return Step(name, skipped=f"{'one GPU' if gpus == 1 else 'no GPU'}: skipped (Sonic Devices spreads a step's "
                                  f"windows over two or more GPUs; this machine has {gpus})")
    code, output, seconds = run_logged([sys.executable, "benchmarks/multi_gpu_bench.py"], out / "multi-gpu.log",
                                       clock.left())
    step = Step(name, ok=code == 0)
    step.lines += [f"`benchmarks/multi_gpu_bench.py` on {gpus} GPUs (exit {code}, {seconds:.0f} s)", "",
                   *_tables(output, ("|", "Sonic Devices"))]
    if not step.ok:
        step.lines += _tail(output)
    return step
