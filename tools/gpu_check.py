#!/usr/bin/env python
"""`make gpu-check`: the one command for a GPU machine, writing one markdown report.

    python3 tools/gpu_check.py            # on the GPU machine, after `make gpu-check-prepare` here
    .venv/bin/python tools/gpu_check.py   # without CUDA: the same steps at tiny size on the CPU (a dry run)

On the GPU machine (no network, no diffusers/PyAV/ComfyUI) it first unpacks .gpu-check/payload
(tools/gpu_check_pack.py): the wheels into a private site folder (`pip install --no-index --target`), ComfyUI
into .venv/ComfyUI; the reference data comes with the working tree (reference/). Then, within one call's time:

  b. tools/parity.py on every golden and manifest on CUDA in fp32 (the README's tolerances), fp16 and bf16 (the
     measured ones, tools/parity_checks/precision.py);
  a. every shipped API workflow (workflows/api) in a headless ComfyUI on random full-size weights
     (tools/tiny_models.py) at 512² with the workflow's defaults, on 2 s and 10 s of audio; each mp4 is checked:
     frames, frame rate, video length = audio length, sound present;
  c. benchmarks/gpu_bench.py: s per video-second, TFLOP/s and share of the bf16 peak, vs the reference loop, peak
     VRAM, default and low-VRAM, at 512² and 576×1024.

The random set has no face detector, so the workflows animate the whole picture (no_face = whole image). The report
goes to $OUT/gpu-check-report.md ($OUT unset: ./gpu-check-report/), with each step's full log beside it. Exit status
1 when any check failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import wave
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.reference_data import REFERENCE_DIR  # noqa: E402

PAYLOAD = ROOT / ".gpu-check" / "payload"
WORK = ROOT / ".gpu-check" / "work"
COMFYUI_DIR = ROOT / ".venv" / "ComfyUI"
ASSETS = ROOT / "assets"
REPORT_NAME = "gpu-check-report.md"
DTYPES = ("fp32", "fp16", "bf16")
SONIC_FPS = 12.5  # frames Sonic generates per second of audio


@dataclass
class Plan:
    """What one run does: full size on CUDA, tiny on the CPU (the dry run the suite runs)."""

    cuda: bool
    audio_seconds: tuple[float, ...]
    workflows: list[Path]
    parity_files: list[Path]
    bench_args: list[str]
    overrides: dict[str, object] = field(default_factory=dict)  # input name → value, for any node that has it

    @classmethod
    def make(cls, cuda: bool, reference: Path) -> Plan:
        workflows = sorted((ROOT / "workflows" / "api").glob("*.json"))
        # The random weights have no face detector: animate the whole picture, as the demo does.
        overrides = {"face_detector": "none", "no_face": "whole image"}
        if cuda:
            files = sorted((reference / "golden").glob("*.json")) + sorted((reference / "manifest").glob("*.json"))
            return cls(True, (2.0, 10.0), workflows, files,
                       ["--frames", "50", "--steps", "4"], overrides)
        files = [reference / "golden" / "audio2token.json", reference / "manifest" / "audio2token.json"]
        overrides.update(resolution=64, steps=1)
        return cls(False, (1.0,), workflows[:1], files,
                   ["--quick", "--no-compile-compare", "--frames", "13", "--steps", "1"], overrides)


@dataclass
class Step:
    name: str
    ok: bool = True
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


class Clock:
    def __init__(self, budget: float):
        self.end = time.monotonic() + budget

    def left(self) -> float:
        return self.end - time.monotonic()


def say(message: str) -> None:
    print(f"[gpu-check] {message}", flush=True)


def run_logged(cmd: list[str], log: Path, timeout: float) -> tuple[int, str, float]:
    """(exit code, output, seconds); 124 when it ran out of time. The whole output also goes to `log`."""
    start = time.perf_counter()
    if timeout < 5:
        return 124, "skipped: no time left in this call", 0.0
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code = 124
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        output += f"\n(stopped after {timeout:.0f} s)"
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n{output}\n")
    return code, output, time.perf_counter() - start


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


def unpack_payload(payload: Path, work: Path, parts: set[str]) -> list[str]:
    """Install the carried wheels and unpack ComfyUI (those of `parts` the payload holds, each once per machine);
    returns what was done."""
    done = []
    site = work / "site"
    if "wheels" in parts and (payload / "wheels.tar.xz").exists() and not (site / ".complete").exists():
        unpacked, wheels = work / "wheels-unpacked", work / "wheels"
        shutil.rmtree(unpacked, ignore_errors=True)
        shutil.rmtree(wheels, ignore_errors=True)
        with tarfile.open(payload / "wheels.tar.xz") as tar:
            tar.extractall(unpacked, filter="data")
        wheels.mkdir(parents=True)
        for folder in sorted(unpacked.iterdir()):  # each wheel was stored unzipped: zip it back for pip
            with zipfile.ZipFile(wheels / folder.name, "w", zipfile.ZIP_STORED) as z:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():  # fixed stamps: zip cannot store the archive's 1970 ones
                        info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), (1980, 1, 1, 0, 0, 0))
                        info.external_attr = (path.stat().st_mode & 0xFFFF) << 16
                        z.writestr(info, path.read_bytes())
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, sorted(wheels.glob("*.whl")))],
                       check=True)
        (site / ".complete").write_text("ok\n")
        done.append(f"installed {len(list(wheels.glob('*.whl')))} wheels into {site}")
    if site.is_dir():
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
        sys.path.insert(0, str(site))
    if "comfyui" in parts and (payload / "comfyui.tar.xz").exists() and not (COMFYUI_DIR / "main.py").exists():
        venv = COMFYUI_DIR.parent
        if venv.is_symlink():  # the developer's link to a virtualenv that is not on this machine
            venv.unlink()
        venv.mkdir(exist_ok=True)
        with tarfile.open(payload / "comfyui.tar.xz") as tar:
            tar.extractall(venv, filter="data")
        done.append(f"unpacked ComfyUI into {COMFYUI_DIR}")
    return done


# ---- b. parity -----------------------------------------------------------------------------------------------

def parity_step(plan: Plan, out: Path, clock: Clock) -> Step:
    step = Step("b. parity on every golden")
    device = "cuda" if plan.cuda else "cpu"
    step.lines += [f"`tools/parity.py --dtype D --device {device}` on {len(plan.parity_files)} files; fp32 with the "
                   "reference README's tolerances, fp16/bf16 with the measured ones.", "",
                   "| dtype | outputs ok | outside tolerance | exit | s |", "|---|---|---|---|---|"]
    failures = []
    for dtype in DTYPES:
        log = out / f"parity-{dtype}.log"
        code, output, seconds = run_logged([sys.executable, "tools/parity.py", "--dtype", dtype, "--device", device,
                                            *map(str, plan.parity_files)], log, min(240, clock.left()))
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
        step.lines += ["", "Outside tolerance or broken:", *failures[:60]]
    reduced_failed = any(line.startswith(("- fp16", "- bf16")) for line in failures)
    if reduced_failed and clock.left() > 240:
        # Is this device's own half-precision noise larger than the CPU's the tolerances came from? Measure it here.
        goldens = [p for p in plan.parity_files if p.parent.name == "golden"]
        code, output, seconds = run_logged([sys.executable, "benchmarks/precision_errors.py", "--seeds", "2",
                                            "--device", device, *map(str, goldens)],
                                           out / "parity-fp16.log", min(180, clock.left() - 60))
        step.lines += ["", f"fp16/bf16 vs fp32 measured on this device (exit {code}, {seconds:.0f} s; compare with "
                       "tools/parity_checks/precision_tolerances.json):", "",
                       *[line for line in output.splitlines() if line.startswith("|")]]
    return step


# ---- a. workflows --------------------------------------------------------------------------------------------

def write_audio(source: Path, target: Path, seconds: float) -> None:
    """`seconds` of the shipped voice, repeated as needed (stdlib wave: PCM in, PCM out)."""
    with wave.open(str(source)) as src:
        params = src.getparams()
        voice = src.readframes(params.nframes)
    need = int(params.framerate * seconds) * params.sampwidth * params.nchannels
    with wave.open(str(target), "wb") as dst:
        dst.setparams(params)
        dst.writeframes((voice * (need // len(voice) + 1))[:need])


def prepared_prompt(path: Path, plan: Plan, checkpoint: str, audio: str, prefix: str) -> dict:
    from tools.dialogue_assets import with_face_masks

    prompt = with_face_masks(json.loads(path.read_text()))  # no face detector: the dialogue's faces as masks
    speakers = any(node["class_type"] == "SonicSpeakers" for node in prompt.values())
    for node in prompt.values():
        inputs = node["inputs"]
        for name, value in plan.overrides.items():
            if name in inputs and not isinstance(inputs[name], list):
                inputs[name] = value
        if "svd_checkpoint" in inputs:
            inputs["svd_checkpoint"] = checkpoint
        if node["class_type"] == "LoadImage":
            inputs["image"] = "sonic_dialogue.png" if speakers else "sonic_portrait.png"
        if node["class_type"] == "LoadAudio":
            inputs["audio"] = audio
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = prefix
    return prompt


def video_facts(path: Path) -> dict:
    """Frames, frame rate and lengths of an mp4, read with PyAV."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = float(video.average_rate)
        frames = sum(1 for _ in container.decode(video=0))
    audio_seconds = 0.0
    with av.open(str(path)) as container:
        if container.streams.audio:
            rate = container.streams.audio[0].rate
            audio_seconds = sum(frame.samples for frame in container.decode(audio=0)) / rate
    return {"frames": frames, "fps": fps, "video_s": frames / fps, "audio_s": audio_seconds}


def length_verdict(facts: dict, seconds: float) -> str:
    """'' when the mp4 is what `seconds` of audio must give, else what is wrong.

    Sonic makes n = ⌊12.5·seconds⌋ frames, and RIFE turns them into 2n − 1 at 25 fps: the video may fall short of the
    audio by less than one Sonic frame (0.08 s) plus one output frame, never more, and the sound must cover it.
    """
    n = int(seconds * SONIC_FPS + 1e-6)
    expected = 2 * n - 1 if round(facts["fps"]) == 2 * SONIC_FPS else n
    problems = []
    if facts["frames"] != expected:
        problems.append(f"{facts['frames']} frames, expected {expected} at {facts['fps']:g} fps")
    if not 0 <= seconds - facts["video_s"] < 1 / SONIC_FPS + 1 / facts["fps"]:
        problems.append(f"video {facts['video_s']:.3f} s for {seconds:g} s of audio")
    if abs(facts["audio_s"] - seconds) > 1 / SONIC_FPS or facts["audio_s"] < facts["video_s"] - 1 / facts["fps"]:
        problems.append(f"sound {facts['audio_s']:.3f} s for {seconds:g} s of audio")
    return "; ".join(problems)


def write_models(models: Path, full_size: bool, log: Path, clock: Clock) -> str:
    marker = models / f".complete-{'full' if full_size else 'tiny'}"
    if marker.exists():
        return ""
    shutil.rmtree(models, ignore_errors=True)
    code, output, seconds = run_logged(
        [sys.executable, "-c", f"from tools.tiny_models import write_all; write_all(__import__('pathlib').Path("
                               f"{str(models)!r}), full_size={full_size})"], log, min(300, clock.left()))
    if code != 0:
        return f"writing the random weights failed (exit {code}): {output.strip().splitlines()[-1:]}"
    marker.write_text(f"{seconds:.0f} s\n")
    return ""


def workflows_step(plan: Plan, out: Path, work: Path, clock: Clock, models: Path | None = None) -> Step:
    from tools.headless import HeadlessComfy

    step = Step("a. shipped workflows on random weights")
    size = "full-size (SVD-xt UNet, whisper-tiny, full adapters and RIFE)" if plan.cuda else "tiny"
    step.lines += [f"{size} random weights; inputs changed: {plan.overrides}.", ""]
    log = out / "workflows.log"
    if models is None:
        models = work / ("models-full" if plan.cuda else "models-tiny")
        problem = write_models(models, plan.cuda, log, clock)
        if problem:
            return Step(step.name, False, 0.0, step.lines + [problem])
    inputs, results = work / "input", work / "output"
    shutil.rmtree(results, ignore_errors=True)
    inputs.mkdir(parents=True, exist_ok=True)
    for picture in ("sonic_portrait.png", "sonic_dialogue.png"):
        shutil.copy(ASSETS / picture, inputs / picture)
    for seconds in plan.audio_seconds:
        write_audio(ASSETS / "sonic_voice.wav", inputs / f"voice_{seconds:g}s.wav", seconds)
    checkpoint = sorted(p.name for p in (models / "checkpoints").glob("svd_xt*.safetensors"))[0]
    frontend = work / "no-frontend"  # headless: ComfyUI serves no UI, so its frontend package need not travel
    frontend.mkdir(exist_ok=True)
    step.lines += ["| workflow | audio s | status | s | frames | fps | video s | sound s | check |",
                   "|---|---|---|---|---|---|---|---|---|"]
    with HeadlessComfy(models, inputs, results, cpu=not plan.cuda, log_path=log,
                       extra_args=("--front-end-root", str(frontend), "--disable-api-nodes")) as server:
        for path in plan.workflows:
            for seconds in plan.audio_seconds:
                name = f"{path.stem}_{seconds:g}s"
                row = f"| {path.name} | {seconds:g} |"
                if clock.left() < 30:
                    step.ok = False
                    step.lines.append(row + " skipped: no time left | | | | | | |")
                    continue
                start = time.perf_counter()
                prompt = prepared_prompt(path, plan, checkpoint, f"voice_{seconds:g}s.wav", f"gpu_check/{name}")
                try:
                    entry = server.wait(server.submit(prompt), timeout=max(clock.left() - 20, 10))
                except (RuntimeError, TimeoutError) as e:
                    step.ok = False
                    step.lines.append(row + f" {str(e).splitlines()[0][:200]} | | | | | | |")
                    continue
                took = time.perf_counter() - start
                status = entry["status"].get("status_str")
                videos = sorted((results / "gpu_check").glob(f"{name}*.mp4"))
                if status != "success" or not videos:
                    message = next((m[1].get("exception_message", "") for m in entry["status"].get("messages", [])
                                    if m[0] == "execution_error"), "no mp4 written")
                    step.ok = False
                    step.lines.append(row + f" {status} | {took:.0f} | | | | | {message.strip()[:200]} |")
                    continue
                facts = video_facts(videos[-1])
                problem = length_verdict(facts, seconds)
                step.ok &= not problem
                step.lines.append(row + f" {status} | {took:.0f} | {facts['frames']} | {facts['fps']:g} | "
                                  f"{facts['video_s']:.3f} | {facts['audio_s']:.3f} | {problem or 'ok'} |")
    return step


# ---- c. benchmark --------------------------------------------------------------------------------------------

def bench_step(plan: Plan, out: Path, clock: Clock) -> Step:
    step = Step("c. sampling benchmark")
    code, output, seconds = run_logged([sys.executable, "benchmarks/gpu_bench.py", *plan.bench_args],
                                       out / "bench.log", min(400, clock.left()))
    table = [line for line in output.splitlines() if line.startswith(("|", "Sonic sampling", "bf16 matmul"))]
    step.ok = code == 0 and any(line.startswith("| default") for line in table)
    step.lines += [f"`benchmarks/gpu_bench.py {' '.join(plan.bench_args)}` (exit {code}, {seconds:.0f} s)", "",
                   *table]
    if not step.ok:
        step.lines += ["", "```", *output.strip().splitlines()[-15:], "```"]
    return step


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


def write_report(out: Path, facts: list[str], setup: list[str], steps: list[Step]) -> Path:
    verdict = "PASSED" if all(s.ok for s in steps) else "FAILED"
    lines = [f"# Sonic gpu-check: {verdict}", "", *facts, ""]
    if setup:
        lines += ["Set-up: " + "; ".join(setup), ""]
    for s in sorted(steps, key=lambda s: s.name):
        lines += [f"## {s.name}: {'ok' if s.ok else 'FAILED'} ({s.seconds:.0f} s)", "", *s.lines, ""]
    report = out / REPORT_NAME
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU even where CUDA is present")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole check (a call has 600)")
    parser.add_argument("--steps", default="abc", help="which steps to run, e.g. 'b' for parity alone")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (weights, unpacked payload)")
    parser.add_argument("--models", type=Path, default=None,
                        help="an existing random-weights models folder (tools/tiny_models.py) instead of a new one")
    args = parser.parse_args(argv)
    clock = Clock(args.budget)
    out = Path(os.environ.get("OUT") or ROOT / "gpu-check-report")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.log"):
        old.unlink()
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        setup = unpack_payload(PAYLOAD, args.work, missing_here())
    except (OSError, tarfile.TarError, subprocess.CalledProcessError) as e:
        report = write_report(out, [], [], [Step("set-up from .gpu-check/payload", False, lines=[
            f"{type(e).__name__}: {e}", "Run `make gpu-check-prepare` here and carry .gpu-check/payload."])])
        print(report.read_text())
        return 1

    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    plan = Plan.make(cuda, REFERENCE_DIR)
    facts = machine_facts(cuda)
    say("\n".join(facts))
    runners = {"b": lambda: parity_step(plan, out, clock),
               "a": lambda: workflows_step(plan, out, args.work, clock, args.models),
               "c": lambda: bench_step(plan, out, clock)}
    steps = []
    for key in "bac":  # parity first: the cheapest and the one every later figure relies on
        if key not in args.steps:
            continue
        start = time.perf_counter()
        try:
            step = runners[key]()
        except Exception as e:  # one broken step must not cost the others their report
            step = Step({"a": "a. shipped workflows", "b": "b. parity", "c": "c. sampling benchmark"}[key], False,
                        lines=[f"crashed: {type(e).__name__}: {e}"])
        step.seconds = time.perf_counter() - start
        say(f"{step.name}: {'ok' if step.ok else 'FAILED'} ({step.seconds:.0f} s)")
        steps.append(step)
    report = write_report(out, facts, setup, steps)
    print(report.read_text())
    say(f"report: {report}")
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
