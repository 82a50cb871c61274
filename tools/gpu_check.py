#!/usr/bin/env python
"""`make gpu-check`: the one command for a GPU machine, writing one markdown report, stage by stage.

    python3 tools/gpu_check.py                      # on the GPU machine, after `make gpu-check-prepare` here
    python3 tools/gpu_check.py --stages compile,parity   # only these stages (after a cut-off run)
    .venv/bin/python tools/gpu_check.py             # without CUDA: every stage at tiny size on the CPU (a dry run)

On the GPU machine (no network, no diffusers/PyAV/ComfyUI) it first unpacks .gpu-check/payload
(tools/gpu_check_pack.py): the wheels into a private site folder (`pip install --no-index --target`), ComfyUI
0.3.75 into .venv/ComfyUI, ComfyUI 0.33.0 and its own packages into the work folder; the reference data comes
with the working tree (reference/). Then the
stages, in order, each within its time budget (STAGES; the dry run prints them):

  parity               tools/parity.py on every golden and manifest in fp32, fp16 and bf16
  workflows 0.3.75     the shipped API workflows in a headless ComfyUI 0.3.75 on random full-size weights at 512²
                       with their defaults (2 s then 10 s of the basic one, 2 s of each other); each mp4
                       checked (frames, frame rate, video length = audio length, sound); end-to-end s per
                       video-second
  workflows 0.33.0     the same on ComfyUI 0.33.0 with its defaults (dynamic VRAM where it turns itself on);
                       skipped, with the reason, where that tree is not packed
  bench shipped path   benchmarks/shipped_bench.py: the Sonic MODEL + Sonic guider + core sampler, the library path
                       as a comparison row
  multi-GPU            benchmarks/multi_gpu_bench.py: the same path on one GPU, then spread over every GPU
                       (Sonic Devices): the speed-up against the expected one; "one GPU: skipped" where there is one
  emulate 8 GiB        benchmarks/vram_emulate.py: the process capped to an 8 GiB card, low_vram auto, 10 s and
  emulate 12 GiB       60 s of audio: measured vs predicted peak per phase, the mode chosen, pass/fail
  compile              tools/compile_check.py: the shipped UNet's graph breaks under torch.compile

The random set has no face detector, so the workflows animate the whole picture (no_face = whole image). Each stage
writes its part ($OUT/stage-<name>.md) and the whole report ($OUT/gpu-check-report.md; $OUT unset:
./gpu-check-report/) as soon as it ends, with its full logs beside them. The last line printed is the compile
stage's `graph breaks: N`. Exit status 1 when any stage failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.reference_data import REFERENCE_DIR  # noqa: E402
from tools.gpu_check_core import COMFYUI_033_NAME, COMFYUI_DIR, WORK, Clock, Plan, Step, say  # noqa: E402
from tools.gpu_check_stages import bench_step, compile_step, emulate_step, multi_gpu_step, parity_step  # noqa: E402
from tools.gpu_check_workflows import missing_033_packages, site_env, workflows_step  # noqa: E402

PAYLOAD = ROOT / ".gpu-check" / "payload"
REPORT_NAME = "gpu-check-report.md"


@dataclass
class Context:
    plan: Plan
    out: Path
    work: Path
    models: Path | None


@dataclass(frozen=True)
class Stage:
    """One part of the run: `budget` is its share of one ≤ 9-minute call on an H100, enforced as its time limit."""

    name: str
    budget: float
    run: Callable[[Context, Clock], Step]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", self.name.lower()).strip("-")


def workflows_033(ctx: Context, clock: Clock) -> Step:
    name = "workflows 0.33.0"
    comfy = ctx.work / COMFYUI_033_NAME
    if not (comfy / "main.py").is_file():
        return Step(name, skipped=f"ComfyUI 0.33.0 is not packed ({comfy} has no main.py): run "
                                  "`make gpu-check-prepare` (it packs the tree from the yzkee/ComfyUI snapshot)")
    site = ctx.work / f"site-{COMFYUI_033_NAME}"
    missing = missing_033_packages(site)
    if missing:
        return Step(name, skipped=f"ComfyUI 0.33.0 needs {', '.join(missing)}, installed neither here nor in {site} "
                                  "(`make gpu-check-prepare` packs their wheels)")
    return workflows_step(name, ctx.plan, ctx.plan.runs_033, comfy, ctx.out, ctx.work, clock, ctx.models,
                          site_env(site))


# In run order; the sum of the budgets (510 s) leaves 30 s of a 540 s call for the set-up (unpacking the payload).
STAGES = (
    Stage("parity", 35, lambda c, k: parity_step("parity", c.plan, c.out, k)),
    Stage("workflows 0.3.75", 150, lambda c, k: workflows_step("workflows 0.3.75", c.plan, c.plan.runs, COMFYUI_DIR,
                                                               c.out, c.work, k, c.models)),
    Stage("workflows 0.33.0", 70, workflows_033),
    Stage("bench shipped path", 90, lambda c, k: bench_step("bench shipped path", c.plan, c.out, k)),
    Stage("multi-GPU", 30, lambda c, k: multi_gpu_step("multi-GPU", c.plan, c.out, k)),
    Stage("emulate 8 GiB", 40, lambda c, k: emulate_step("emulate 8 GiB", 8, c.plan, c.out, c.work, c.models, k)),
    Stage("emulate 12 GiB", 40, lambda c, k: emulate_step("emulate 12 GiB", 12, c.plan, c.out, c.work, c.models, k)),
    Stage("compile", 55, lambda c, k: compile_step("compile", c.plan, c.out, k)),
)


def pick_stages(spec: str) -> list[Stage]:
    """`--stages a,b`: stage names or their slugs (e.g. 'parity,bench shipped path' or 'workflows-0.33.0')."""
    if spec == "all":
        return list(STAGES)
    wanted = {re.sub(r"[^a-z0-9.]+", "-", part.strip().lower()).strip("-") for part in spec.split(",") if part.strip()}
    unknown = wanted - {s.slug for s in STAGES}
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; the stages are: {', '.join(s.name for s in STAGES)}")
    return [s for s in STAGES if s.slug in wanted]


# ---- payload -----------------------------------------------------------------------------------------------------

def missing_here() -> set[str]:
    """Which parts of the payload this machine needs: none where `make setup` ran."""
    import importlib.util

    missing = set()
    if any(importlib.util.find_spec(name) is None for name in ("diffusers", "av", "torchsde")):
        missing.add("wheels")
    if not (COMFYUI_DIR / "main.py").exists():
        missing.add("comfyui")
    return missing


def install_wheels(archive: Path, work: Path, site: Path, one_by_one: bool = False) -> int:
    """pip-install offline the wheels stored unzipped in `archive` into `site`; returns how many. `one_by_one`: if
    they do not all install, install each that does instead of failing."""
    unpacked, wheels = work / f"{archive.name}-unpacked", work / f"{archive.name}-wheels"
    shutil.rmtree(unpacked, ignore_errors=True)
    shutil.rmtree(wheels, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    wheels.mkdir(parents=True)
    for folder in sorted(unpacked.iterdir()):  # each wheel was stored unzipped: zip it back for pip
        with zipfile.ZipFile(wheels / folder.name, "w", zipfile.ZIP_STORED) as z:
            for path in sorted(folder.rglob("*")):
                if path.is_file():  # fixed stamps: zip cannot store the archive's 1970 ones
                    info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), (1980, 1, 1, 0, 0, 0))
                    info.external_attr = (path.stat().st_mode & 0xFFFF) << 16
                    z.writestr(info, path.read_bytes())
    found = sorted(wheels.glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site)]
    if subprocess.run([*pip, *map(str, found)]).returncode != 0:
        if not one_by_one:
            raise subprocess.CalledProcessError(1, pip)
        # A developer's Python (not the GPU's 3.12) cannot take every wheel: install those it can, say which not.
        refused = [w.name for w in found if subprocess.run([*pip, str(w)], capture_output=True).returncode != 0]
        say(f"wheels this Python {sys.version_info.major}.{sys.version_info.minor} cannot install: {refused}")
    (site / ".complete").write_text("ok\n")
    shutil.rmtree(unpacked, ignore_errors=True)
    return len(found)


def unpack_payload(payload: Path, work: Path, parts: set[str], with_033: bool = True) -> list[str]:
    """Install the carried wheels and unpack ComfyUI (those of `parts` the payload holds, each once per machine);
    ComfyUI 0.33.0 and its own packages where the payload has them and `with_033`. Returns
    what was done."""
    done = []
    site = work / "site"
    if "wheels" in parts and (payload / "wheels.tar.xz").exists() and not (site / ".complete").exists():
        done.append(f"installed {install_wheels(payload / 'wheels.tar.xz', work, site)} wheels into {site}")
    if site.is_dir():
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
        sys.path.insert(0, str(site))
    site_033 = work / f"site-{COMFYUI_033_NAME}"
    if with_033 and (payload / "wheels-0.33.0.tar.xz").exists() and not (site_033 / ".complete").exists():
        count = install_wheels(payload / "wheels-0.33.0.tar.xz", work, site_033, one_by_one=True)
        done.append(f"installed {count} wheels for ComfyUI 0.33.0 into {site_033}")
    if "comfyui" in parts and (payload / "comfyui.tar.xz").exists() and not (COMFYUI_DIR / "main.py").exists():
        venv = COMFYUI_DIR.parent
        if venv.is_symlink():  # the developer's link to a virtualenv that is not on this machine
            venv.unlink()
        venv.mkdir(exist_ok=True)
        with tarfile.open(payload / "comfyui.tar.xz") as tar:
            tar.extractall(venv, filter="data")
        done.append(f"unpacked ComfyUI into {COMFYUI_DIR}")
    tree_033 = payload / f"{COMFYUI_033_NAME}.tar.xz"
    if with_033 and tree_033.exists() and not (work / COMFYUI_033_NAME / "main.py").exists():
        with tarfile.open(tree_033) as tar:
            tar.extractall(work, filter="data")
        done.append(f"unpacked ComfyUI 0.33.0 into {work / COMFYUI_033_NAME}")
    return done


# ---- report --------------------------------------------------------------------------------------------------

def machine_facts(cuda: bool) -> list[str]:
    import torch

    facts = [f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- host: {platform.node()}, {platform.machine()}, Python {platform.python_version()}",
             f"- torch {torch.__version__}, CUDA {torch.version.cuda}"]
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.append(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
            facts.append(f"- driver {smi}")
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        facts.append("- no CUDA: DRY RUN at tiny size on the CPU (no GPU figures in this report)")
    for name in ("diffusers", "transformers", "av"):
        try:
            facts.append(f"- {name} {__import__(name).__version__}")
        except ImportError:
            facts.append(f"- {name}: missing")
    version = COMFYUI_DIR / "comfyui_version.py"
    if version.exists():
        facts.append(f"- ComfyUI {version.read_text().split('=')[-1].strip().strip(chr(34))}")
    return facts


def stage_file(out: Path, stage: Stage) -> Path:
    return out / f"stage-{stage.slug}.md"


def write_stage(out: Path, stage: Stage, step: Step) -> None:
    """The stage's part of the report, written as soon as it ends (a run cut off later keeps it)."""
    why = f": {step.skipped}" if step.skipped else ""
    text = [f"## {stage.name}: {step.verdict} ({step.seconds:.0f} s of its {stage.budget:.0f} s budget){why}", "",
            *step.lines, ""]
    stage_file(out, stage).write_text("\n".join(text))


def budget_lines(out: Path) -> list[str]:
    """Every stage's budget (the limit it runs under) and, where its part of the report exists, what it took."""
    lines = [f"Time budget per stage (an H100 call of at most 9 minutes; total {sum(s.budget for s in STAGES):.0f} s):",
             "", "| stage | budget s | took s | verdict |", "|---|---|---|---|"]
    for stage in STAGES:
        took, verdict = "-", "not run"
        if stage_file(out, stage).exists():
            head = stage_file(out, stage).read_text().splitlines()[0]
            match = re.match(r"## .*?: (ok|FAILED|skipped) \((\d+) s", head)
            if match:
                verdict, took = match.group(1), match.group(2)
        lines.append(f"| {stage.name} | {stage.budget:.0f} | {took} | {verdict} |")
    return lines


def write_report(out: Path, facts: list[str], setup: list[str]) -> Path:
    """The whole report from the stage parts in `out` (this run's and any earlier `--stages` run's)."""
    parts = [stage_file(out, s).read_text() for s in STAGES if stage_file(out, s).exists()]
    failed = any(part.split("\n", 1)[0].split(": ", 1)[1].startswith("FAILED") for part in parts)
    lines = [f"# Sonic gpu-check: {'FAILED' if failed or not parts else 'PASSED'}", "", *facts, ""]
    if setup:
        lines += ["Set-up: " + "; ".join(setup), ""]
    lines += [*budget_lines(out), "", *parts]
    report = out / REPORT_NAME
    report.write_text("\n".join(lines))
    return report


def set_up_failed(out: Path, error: BaseException) -> int:
    report = out / REPORT_NAME
    report.write_text(f"# Sonic gpu-check: FAILED\n\n## set-up from .gpu-check/payload: FAILED\n\n"
                      f"{type(error).__name__}: {error}\n"
                      "Run `make gpu-check-prepare` here and carry .gpu-check/payload.\n")
    print(report.read_text())
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU even where CUDA is present")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole check (a call has 600)")
    parser.add_argument("--stages", default="all",
                        help="comma-separated stages to run (the others' earlier parts in $OUT are kept): "
                             + ", ".join(s.name for s in STAGES))
    parser.add_argument("--stage-budget", type=float, default=None,
                        help="seconds for each stage run instead of its own budget (a second call that reruns one "
                             "stage, e.g. the benchmark, may give it the whole call)")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (weights, unpacked payload)")
    parser.add_argument("--models", type=Path, default=None,
                        help="an existing random-weights models folder (tools/tiny_models.py) instead of a new one")
    args = parser.parse_args(argv)
    stages = pick_stages(args.stages)
    clock = Clock(args.budget)
    out = Path(os.environ.get("OUT") or ROOT / "gpu-check-report")
    out.mkdir(parents=True, exist_ok=True)
    for stage in stages:  # a rerun stage starts afresh; the others' parts stay
        stage_file(out, stage).unlink(missing_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        setup = unpack_payload(PAYLOAD, args.work, missing_here(), any(s.slug == "workflows-0.33.0" for s in stages))
    except (OSError, tarfile.TarError, subprocess.CalledProcessError) as e:
        return set_up_failed(out, e)

    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    ctx = Context(Plan.make(cuda, REFERENCE_DIR), out, args.work, args.models)
    facts = machine_facts(cuda)
    say("\n".join(facts))
    steps = []
    for stage in stages:
        start = time.perf_counter()
        try:
            step = stage.run(ctx, Clock(min(args.stage_budget or stage.budget, clock.left())))
        except Exception as e:  # one broken stage must not cost the others their report
            step = Step(stage.name, False, lines=[f"crashed: {type(e).__name__}: {e}"])
        step.seconds = time.perf_counter() - start
        write_stage(out, stage, step)
        write_report(out, facts, setup)
        say(f"{stage.name}: {step.verdict} ({step.seconds:.0f} s of {stage.budget:.0f} s)")
        steps.append(step)
    report = write_report(out, facts, setup)
    print(report.read_text())
    say(f"report: {report}")
    breaks = [line for step in steps if step.name == "compile" for line in step.lines
              if line.startswith("graph breaks")]
    if breaks:
        print(breaks[-1], flush=True)  # the run's last line: the shipped UNet's graph breaks
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
