"""`make gpu-check` stages `workflows 0.3.75` and `workflows 0.33.0`: the shipped API workflows in a headless
ComfyUI on random weights (tools/tiny_models.py), each mp4 checked (frames, frame rate, video length = audio length,
sound present), and the end-to-end seconds per video-second of each run (audio encode, sampling, decode, RIFE, mux)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import wave
from pathlib import Path

from tools.gpu_check_core import ROOT, Clock, Plan, Step, run_logged

ASSETS = ROOT / "assets"
SONIC_FPS = 12.5  # frames Sonic generates per second of audio
TIMINGS_NAME = "workflow-timings.json"  # end-to-end seconds per run, read by the `bench shipped path` stage


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
    """The random-weights models folder, once per machine; '' or what went wrong."""
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


def models_folder(plan: Plan, work: Path, given: Path | None, log: Path, clock: Clock) -> tuple[Path, str]:
    if given is not None:
        return given, ""
    models = work / ("models-full" if plan.cuda else "models-tiny")
    return models, write_models(models, plan.cuda, log, clock)


def missing_033_packages(site: Path | None) -> list[str]:
    """The packages ComfyUI 0.33.0 imports at start that neither this Python nor `site` has."""
    import importlib.util

    names = ("comfy_aimdo", "comfy_kitchen")
    return [n for n in names if importlib.util.find_spec(n) is None and not (site and (site / n).is_dir())]


def workflows_step(name: str, plan: Plan, runs: list[tuple[Path, float]], comfy_dir: Path, out: Path, work: Path,
                   clock: Clock, models: Path | None = None, extra_env: dict[str, str] | None = None) -> Step:
    """Run each (workflow, audio seconds) in a headless ComfyUI from `comfy_dir`; one table row per run."""
    from tools.headless import HeadlessComfy

    step = Step(name)
    size = "full-size (SVD-xt UNet, whisper-tiny, full adapters and RIFE)" if plan.cuda else "tiny"
    step.lines += [f"ComfyUI in `{comfy_dir.name}`, its default settings; {size} random weights; inputs changed: "
                   f"{plan.overrides}.", ""]
    log = out / f"{step.name.replace(' ', '-')}.log"
    models, problem = models_folder(plan, work, models, log, clock)
    if problem:
        return Step(step.name, False, 0.0, step.lines + [problem])
    inputs, results = work / "input", work / "output"
    shutil.rmtree(results, ignore_errors=True)
    inputs.mkdir(parents=True, exist_ok=True)
    for picture in ("sonic_portrait.png", "sonic_dialogue.png"):
        shutil.copy(ASSETS / picture, inputs / picture)
    for seconds in {s for _, s in runs}:
        write_audio(ASSETS / "sonic_voice.wav", inputs / f"voice_{seconds:g}s.wav", seconds)
    checkpoint = sorted(p.name for p in (models / "checkpoints").glob("svd_xt*.safetensors"))[0]
    frontend = work / "no-frontend"  # headless: ComfyUI serves no UI, so its frontend package need not travel
    frontend.mkdir(exist_ok=True)
    step.lines += ["| workflow | audio s | status | s | end-to-end s per video-s | frames | fps | video s | sound s "
                   "| check |", "|---|---|---|---|---|---|---|---|---|---|"]
    timings = {}
    with HeadlessComfy(models, inputs, results, cpu=not plan.cuda, log_path=log, comfy_dir=comfy_dir,
                       extra_env=extra_env,
                       extra_args=("--front-end-root", str(frontend), "--disable-api-nodes")) as server:
        for path, seconds in runs:
            run = f"{path.stem}_{seconds:g}s"
            row = f"| {path.name} | {seconds:g} |"
            if clock.left() < 20:
                step.ok = False
                step.lines.append(row + " skipped: stage budget spent | | | | | | | |")
                continue
            start = time.perf_counter()
            prompt = prepared_prompt(path, plan, checkpoint, f"voice_{seconds:g}s.wav", f"gpu_check/{run}")
            try:
                entry = server.wait(server.submit(prompt), timeout=max(clock.left() - 10, 10))
            except (RuntimeError, TimeoutError) as e:
                step.ok = False
                step.lines.append(row + f" {str(e).splitlines()[0][:200]} | | | | | | | |")
                continue
            took = time.perf_counter() - start
            status = entry["status"].get("status_str")
            videos = sorted((results / "gpu_check").glob(f"{run}*.mp4"))
            if status != "success" or not videos:
                message = next((m[1].get("exception_message", "") for m in entry["status"].get("messages", [])
                                if m[0] == "execution_error"), "no mp4 written")
                step.ok = False
                step.lines.append(row + f" {status} | {took:.0f} | | | | | | {message.strip()[:200]} |")
                continue
            facts = video_facts(videos[-1])
            problem = length_verdict(facts, seconds)
            step.ok &= not problem
            timings[run] = {"seconds": took, "audio_s": seconds}
            step.lines.append(row + f" {status} | {took:.1f} | {took / seconds:.2f} | {facts['frames']} | "
                              f"{facts['fps']:g} | {facts['video_s']:.3f} | {facts['audio_s']:.3f} | "
                              f"{problem or 'ok'} |")
    step.lines += ["", "End-to-end includes ComfyUI loading the models on each workflow's first run."]
    (out / f"{step.name.replace(' ', '-')}-{TIMINGS_NAME}").write_text(json.dumps(timings, indent=1))
    return step


def site_env(site: Path | None) -> dict[str, str]:
    """PYTHONPATH for a server that needs the packages in `site` as well."""
    if site is None or not site.is_dir():
        return {}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
