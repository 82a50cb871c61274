"""What every `make gpu-check` stage shares: the run's plan, a stage's result, its clock and a logged subprocess."""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".gpu-check" / "work"
COMFYUI_DIR = ROOT / ".venv" / "ComfyUI"
# ComfyUI 0.33.0 (dynamic VRAM, comfy-aimdo), unpacked from the payload into the work folder.
COMFYUI_033_NAME = "ComfyUI-0.33.0"


@dataclass
class Plan:
    """What one run does: full size on CUDA, tiny on the CPU (the dry run the suite runs)."""

    cuda: bool
    runs: list[tuple[Path, float]]  # (API workflow, seconds of audio) on ComfyUI 0.3.75
    runs_033: list[tuple[Path, float]]  # the same on ComfyUI 0.33.0
    parity_files: list[Path]
    bench_args: list[str]
    emulate_args: list[str]
    overrides: dict[str, object] = field(default_factory=dict)  # input name → value, for any node that has it

    @classmethod
    def make(cls, cuda: bool, reference: Path) -> Plan:
        api = ROOT / "workflows" / "api"
        workflows = sorted(api.glob("*.json"))
        basic = api / "sonic_basic.json"
        # The random weights have no face detector: animate the whole picture, as the demo does.
        overrides = {"face_detector": "none", "no_face": "whole image"}
        if cuda:
            files = sorted((reference / "golden").glob("*.json")) + sorted((reference / "manifest").glob("*.json"))
            # 10 s of the basic workflow is the end-to-end figure, after 2 s of it have loaded the models (ComfyUI
            # keeps them); 2 s of every other one shows it runs.
            runs = [(basic, 2.0), (basic, 10.0)] + [(path, 2.0) for path in workflows if path != basic]
            runs_033 = [(basic, 10.0), (api / "sonic_custom_sampler.json", 2.0)]
            return cls(True, runs, runs_033, files, ["--frames", "50", "--steps", "4"],
                       ["--seconds", "10,60", "--steps", "1"], overrides)
        files = [reference / "golden" / "audio2token.json", reference / "manifest" / "audio2token.json"]
        overrides.update(resolution=64, steps=1)
        return cls(False, [(basic, 1.0)], [(basic, 1.0)], files, ["--tiny"], ["--tiny"], overrides)


@dataclass
class Step:
    """One stage's result; `skipped` names why it did not run (not a failure)."""

    name: str
    ok: bool = True
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def verdict(self) -> str:
        return "skipped" if self.skipped else ("ok" if self.ok else "FAILED")


class Clock:
    def __init__(self, budget: float):
        self.end = time.monotonic() + budget

    def left(self) -> float:
        return self.end - time.monotonic()


def say(message: str) -> None:
    print(f"[gpu-check] {message}", flush=True)


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """(exit code, output, seconds); 124 when it ran out of time. The whole output also goes to `log`."""
    start = time.perf_counter()
    if timeout < 5:
        return 124, "skipped: no time left in this stage", 0.0
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code = 124
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        output += f"\n(stopped after {timeout:.0f} s)"
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n{output}\n")
    return code, output, time.perf_counter() - start
