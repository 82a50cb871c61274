"""The shipped workflows and the Sonic sampler on the stand-in accelerator (tests/stand_in_device.py), as ComfyUI runs
them on a GPU box: every shipped API workflow writes its video, and the sampler runs with every sampler it offers,
with a core SAMPLER and with a core SIGMAS input. CPU-sized: 64-px short side, 2 steps, half a second of voice."""
from __future__ import annotations

import pytest

import nodes
from comfy_harness import PromptFailed
from reliability_runtime import WORKFLOWS_API, UseFolders, make_folders, node_id_of, run_prompt, shipped_workflow, \
    video_frames, write_run_inputs
from stand_in_device import device_ops

pytestmark = pytest.mark.device

SECONDS = 0.5  # 6 frames at 12.5 fps


@pytest.fixture
def folders(tiny_models_dir, tmp_path):
    folders = make_folders(tmp_path / "comfy", tiny_models_dir)
    write_run_inputs(folders, SECONDS)
    return folders


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS_API.glob("*.json")))
def test_shipped_workflow_writes_its_video(stand_in_gpu, folders, name):
    with UseFolders(folders):
        run_prompt(shipped_workflow(name))
        videos = [p for p in folders.output_files() if p.suffix == ".mp4"]
        assert len(videos) == 1, folders.output_files()
        frames = video_frames(videos[0])
    assert frames.shape[0] >= 2 * round(SECONDS * 12.5) - 1  # every workflow interpolates with RIFE
    if name == "sonic_dialogue":  # both faces (given as masks) pasted into one video of the whole picture
        assert frames.shape[1:3] == (400, 640), frames.shape
    assert device_ops["conv3d"] > 0 or device_ops["convolution"] > 0, device_ops.most_common(12)


def _sampler_prompt(**sampler_inputs) -> tuple[dict, str]:
    """The basic workflow up to the Sonic sampler, whose latents core's Preview Any shows (no decode)."""
    prompt = shipped_workflow("sonic_basic")
    sampler = node_id_of(prompt, "SonicSampler")
    keep = {node_id_of(prompt, t) for t in ("SonicLoader", "LoadImage", "LoadAudio", "SonicAudioEncode",
                                            "SonicReferenceImage", "SonicMotionBuckets")} | {sampler}
    prompt = {k: v for k, v in prompt.items() if k in keep}
    prompt[sampler]["inputs"].update(sampler_inputs)
    prompt["90"] = {"class_type": "PreviewAny", "inputs": {"source": [sampler, 0]}}
    return prompt, sampler


def _offered_samplers() -> list[str]:
    spec = nodes.NODE_CLASS_MAPPINGS["SonicSampler"].INPUT_TYPES()["required"]["sampler_name"]
    return list(spec[1]["options"] if spec[0] == "COMBO" else spec[0])  # V3 schema or classic combo


def test_sampler_runs_with_every_offered_sampler(stand_in_gpu, folders):
    """One ComfyUI session: the nodes before the sampler run once (ComfyUI's cache), then one prompt per sampler."""
    from comfy_harness import load_runtime

    load_runtime()
    failures = {}
    with UseFolders(folders):
        for name in _offered_samplers():
            prompt, _ = _sampler_prompt(sampler_name=name)
            try:
                run_prompt(prompt)
            except PromptFailed as failure:
                report = failure.args[0]
                failures[name] = report.get("exception_message", report) if isinstance(report, dict) else report
    assert not failures, f"{len(failures)} of {len(_offered_samplers())} samplers failed: {failures}"


def test_sampler_takes_a_core_sampler_and_core_sigmas(stand_in_gpu, folders):
    prompt, sampler = _sampler_prompt()
    prompt["91"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}}
    prompt["92"] = {"class_type": "KarrasScheduler",
                    "inputs": {"steps": 3, "sigma_max": 700.0, "sigma_min": 0.002, "rho": 7.0}}
    prompt["93"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["92", 0], "step": 1}}
    prompt[sampler]["inputs"].update(sampler=["91", 0], sigmas=["93", 1])  # the last two of three steps
    with UseFolders(folders):
        outputs = run_prompt(prompt)
    assert outputs["90"]["text"][0], outputs
