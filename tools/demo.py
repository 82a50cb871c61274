#!/usr/bin/env python
"""`make demo`: run the shipped basic workflow in a real, headless ComfyUI and write an mp4 with sound.

    .venv/bin/python tools/demo.py [--models-dir DIR] [--image PNG] [--audio WAV] [--out DIR]

Real weights are used when a complete models folder is found (--models-dir, $SONIC_MODELS_DIR, or the ComfyUI
models folder this pack sits in); on a GPU when there is one. Otherwise a set of small random weights in the real
file formats is generated (once, into .venv/demo-models): the same code path runs, and the video is noise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.headless import HeadlessComfy  # noqa: E402

ASSETS = ROOT / "assets"
DEMO_MODELS = ROOT / ".venv" / "demo-models"
UNTRAINED_RESOLUTION, UNTRAINED_STEPS = 64, 10  # noise either way: a small, short run (the full-size
# random VAE decode dominates a CPU run: 117 s of 163 s at 128 px)
UNTRAINED = ("NOTE: no real Sonic weights found, so this demo uses small RANDOM weights in the real file formats. "
             "Every stage runs for real, but the weights are untrained: the video is noise, not a talking face.")


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def find_real_models(option: Path | None) -> Path | None:
    """A models folder holding everything the basic workflow needs, or None."""
    from sonic_model.weights.model_catalog import all_required_found, check_models_dir, format_report

    candidates = [option, os.environ.get("SONIC_MODELS_DIR"), ROOT.parent.parent / "models"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            reports = check_models_dir(Path(candidate))
            if all_required_found(reports):
                return Path(candidate)
            if candidate == option:
                say(f"{candidate} is incomplete:\n{format_report(reports, Path(candidate))}")
    return None


def tiny_models() -> Path:
    marker = DEMO_MODELS / ".complete"
    if not marker.exists():
        say(f"writing random-weight models to {DEMO_MODELS} (first run only, ~20 s)")
        from tools.tiny_models import write_all

        shutil.rmtree(DEMO_MODELS, ignore_errors=True)
        write_all(DEMO_MODELS)
        marker.write_text("ok\n")
    return DEMO_MODELS


def demo_prompt(models: Path, image: str, audio: str, untrained: bool) -> dict:
    prompt = json.loads((ROOT / "workflows" / "api" / "sonic_basic.json").read_text())
    by_class = {node["class_type"]: node for node in prompt.values()}
    by_class["LoadImage"]["inputs"]["image"] = image
    by_class["LoadAudio"]["inputs"]["audio"] = audio
    checkpoints = sorted(p.name for p in (models / "checkpoints").glob("svd_xt*.safetensors"))
    by_class["SonicLoader"]["inputs"]["svd_checkpoint"] = checkpoints[0]
    by_class["SaveVideo"]["inputs"]["filename_prefix"] = "sonic_demo/Sonic"
    if untrained:
        # The random set has no face detector: animate the whole picture; and keep a CPU run to a few minutes.
        by_class["SonicLoader"]["inputs"]["face_detector"] = "none"
        by_class["SonicReferenceImage"]["inputs"].update(no_face="whole image", resolution=UNTRAINED_RESOLUTION)
        for sampler in ("SonicSampler", "BasicScheduler"):
            if sampler in by_class:
                by_class[sampler]["inputs"]["steps"] = UNTRAINED_STEPS
    return prompt


async def run_with_progress(server: HeadlessComfy, prompt: dict) -> tuple[str, list[tuple[str, float]]]:
    """Submit over /prompt, follow the websocket, print each node as it starts and finishes."""
    import aiohttp

    client_id = str(uuid.uuid4())
    titles = {k: v["class_type"] for k, v in prompt.items()}
    stages: list[tuple[str, float]] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={client_id}", heartbeat=30) as ws:
            async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                answer = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"ComfyUI refused the workflow: {json.dumps(answer)[:2000]}")
            prompt_id = answer["prompt_id"]
            current, started = None, time.time()
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if event["type"] == "executing":
                    now = time.time()
                    if current is not None:
                        stages.append((titles.get(current, current), now - started))
                        say(f"  done  {titles.get(current, current):<22} {now - started:7.1f} s")
                    current, started = data.get("node"), now
                    if current is None:
                        break
                    say(f"  start {titles.get(current, current)}")
                elif event["type"] == "progress" and data.get("value") in (1, data.get("max")):
                    say(f"        {titles.get(data.get('node'), '')}: {data['value']}/{data['max']}")
                elif event["type"] == "execution_error":
                    raise RuntimeError(f"{data.get('node_type')}: {data.get('exception_message')}")
                elif event["type"] == "execution_interrupted":
                    raise RuntimeError("the run was interrupted")
    return prompt_id, stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, help="ComfyUI-style models folder with checkpoints/ and sonic/")
    parser.add_argument("--image", type=Path, default=ASSETS / "sonic_portrait.png")
    parser.add_argument("--audio", type=Path, default=ASSETS / "sonic_voice.wav")
    parser.add_argument("--out", type=Path, default=ROOT / "output", help="where the mp4 is written")
    args = parser.parse_args(argv)
    t0 = time.time()

    models = find_real_models(args.models_dir)
    untrained = models is None
    if untrained:
        say(UNTRAINED)
        say(f"random weights: short side {UNTRAINED_RESOLUTION} px and {UNTRAINED_STEPS} steps instead of the "
            "workflow's 512 px / 25 steps, to keep a CPU run short")
        models = tiny_models()
    else:
        say(f"using the real weights in {models}")
    out = args.out.resolve()
    inputs = ROOT / ".venv" / "demo-input"
    inputs.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.image, inputs / args.image.name)
    shutil.copy(args.audio, inputs / args.audio.name)

    say("starting ComfyUI headless with the Sonic pack")
    started = time.time()
    with HeadlessComfy(models, inputs, out) as server:
        say(f"ComfyUI is up at {server.url} ({time.time() - started:.1f} s); running workflows/sonic_basic.json")
        prompt = demo_prompt(models, args.image.name, args.audio.name, untrained)
        prompt_id, stages = asyncio.run(run_with_progress(server, prompt))
        entry = server.get(f"/history/{prompt_id}")[prompt_id]
    videos = [item for node in entry["outputs"].values() for item in node.get("images", []) + node.get("video", [])
              if str(item.get("filename", "")).endswith(".mp4")]
    if entry["status"]["status_str"] != "success" or not videos:
        say(f"the workflow did not produce a video: {json.dumps(entry['status'])[:2000]}")
        return 1
    video = out / videos[-1].get("subfolder", "") / videos[-1]["filename"]
    say("stage timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages))
    say(f"video with sound written to {video} (total {time.time() - t0:.0f} s)")
    if untrained:
        say(UNTRAINED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
