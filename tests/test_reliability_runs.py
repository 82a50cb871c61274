"""Reliability, runs: Cancel, workflows queued back to back, NaN latents and out-of-memory, each through the shipped
workflows in the real ComfyUI runtime (random weights, CPU-sized). After each failure ComfyUI runs the next prompt,
and the output folder holds either nothing or complete videos."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import comfy.ldm.modules.temporal_ae as temporal_ae
import comfy.model_management as mm
import nodes  # core's
from comfy_harness import PromptFailed, run_prompt
from reliability import case
from reliability_runtime import assert_comfy_keeps_running, assert_complete_video, node_id_of, node_outputs, \
    pack_module, run_error, shipped_workflow, videos

pytest_plugins = ["reliability_fixtures"]


@case("Runs", "Cancel in the middle of sampling, then run again",
      "Sampling stops at the next window (ComfyUI reports the prompt interrupted at the sampler), no file is "
      "written, and the next run completes a full video.")
def test_run_cancel_mid_sampling_then_rerun(comfy, progress_hook):
    prompt = shipped_workflow("sonic_long_audio", seed=1)  # seeds differ per test: ComfyUI reruns nothing cached
    sampler = node_id_of(prompt, "SonicSampler")

    cancel = [True]

    def cancel_at_second_window(node_id, value, total):
        if cancel[0] and node_id == sampler and value == 2:
            nodes.interrupt_processing()  # what the Cancel button (POST /interrupt) does

    progress = progress_hook(cancel_at_second_window)
    with pytest.raises(PromptFailed) as stopped:
        run_prompt(prompt)
    report = stopped.value.args[0]
    assert report["node_type"] == "SonicSampler" and "exception_message" not in report  # interrupted, not an error
    sampler_steps = [v for n, v, _ in progress if n == sampler]
    assert sampler_steps == [1, 2], "sampling must stop right after the window where Cancel was pressed"
    assert comfy.output_files() == []

    cancel[0] = False
    progress.clear()
    outputs = node_outputs(prompt)
    sampler_total = [t for n, _, t in progress if n == sampler][-1]
    assert [v for n, v, _ in progress if n == sampler][-1] == sampler_total
    (video,) = videos(comfy)
    assert_complete_video(video, 2 * 12)  # 12 frames at 12.5 fps, doubled by RIFE
    assert outputs


@case("Runs", "Two different workflows back to back",
      "Both run; models are loaded once while the loader settings match, reloaded when a setting changes or a model "
      "file is replaced on disk under the same name (no stale cache), and each video reflects its own workflow.")
def test_run_two_workflows_back_to_back(comfy, monkeypatch):
    loaders = pack_module("nodes.loaders")
    loads = []
    original = loaders.load_sonic_models
    signature = inspect.signature(original)
    monkeypatch.setattr(loaders, "load_sonic_models",
                        lambda *a, **k: loads.append(signature.bind(*a, **k).arguments) or original(*a, **k))

    node_outputs(shipped_workflow("sonic_long_audio", seed=2))
    assert len(loads) <= 1  # none when an earlier prompt loaded the same models
    node_outputs(shipped_workflow("sonic_manual_motion", seed=2))
    reused = len(loads)
    assert reused <= 1, "the same loader settings must reuse the loaded models"
    first, second = sorted(videos(comfy), key=lambda p: p.name)
    frames_long, frames_manual = assert_complete_video(first, 24), assert_complete_video(second, 24)
    assert not np.array_equal(frames_long, frames_manual), "the second workflow's settings must change its video"

    unet = comfy.sonic / "unet.pth"
    state = torch.load(unet, weights_only=True)
    torch.save({k: v * 1.5 if v.is_floating_point() else v for k, v in state.items()}, unet)  # same name, new file
    node_outputs(shipped_workflow("sonic_manual_motion", seed=2))
    assert len(loads) == reused + 1, "a replaced model file must be loaded again, not served from ComfyUI's cache"
    third = sorted(videos(comfy), key=lambda p: p.name)[-1]
    assert third != second
    assert np.abs(assert_complete_video(third, 24).astype(int) - frames_manual.astype(int)).mean() > 0.5
    torch.save(state, unet)

    low_vram = shipped_workflow("sonic_manual_motion", seed=2)
    low_vram[node_id_of(low_vram, "SonicLoader")]["inputs"]["low_vram"] = "on"
    node_outputs(low_vram)
    assert len(loads) == reused + 2 and loads[-1]["low_vram"] is True


@case("Runs", "NaN appearing in the latents",
      "Detected after sampling: \"Sampling produced NaN/Inf latents ... Reload the Sonic models with dtype bf16 or "
      "fp32 and run again.\"; nothing is decoded or written (no black video).")
def test_run_nan_latents(comfy):
    unet = comfy.sonic / "unet.pth"
    state = torch.load(unet, weights_only=True)
    overflowing = dict(state)
    overflowing["conv_in.weight"] = torch.full_like(state["conv_in.weight"], 3e38)  # fp16-style overflow
    torch.save(overflowing, unet)
    try:
        error = run_error(shipped_workflow("sonic_long_audio", seed=3))
    finally:
        torch.save(state, unet)
    assert error["node_type"] == "SonicSampler" and error["exception_type"] == "FloatingPointError"
    assert "NaN/Inf latents" in error["exception_message"]
    assert "Reload the Sonic models with dtype bf16 or fp32" in error["exception_message"]
    assert comfy.output_files() == []
    assert_comfy_keeps_running(comfy)


def _raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@case("Runs", "Out of memory",
      "Caught at sampling, decode or interpolation; the message says what to lower (low_vram 'on', resolution, "
      "window / decode_chunk_size / batch_size); ComfyUI unloads its models, nothing is written, and the next run "
      "completes.")
@pytest.mark.parametrize("stage,advice,seed", [
    ("sampling", "Set the loader's low_vram to 'on', lower the Reference Image resolution", 4),
    # The stage's own message (a decode error once read as RIFE's, which also says "decode_chunk_size").
    ("decode", "Sonic decode ran out of memory on a chunk of 8 frames at 64×64. The temporal decoder must see the "
               "whole chunk, so it is not tiled: lower decode_chunk_size", 5),
    ("interpolation", "RIFE ran out of memory interpolating 64×64 frames 8 pairs at a time. Lower batch_size "
                      "(Sonic Interpolate) or decode_chunk_size", 6),
], ids=["sampling", "decode", "interpolation"])
def test_run_out_of_memory(comfy, monkeypatch, stage, advice, seed):
    targets = {"sampling": (pack_module("sonic_model.unet.unet").SonicUNet, "forward"),
               "decode": (temporal_ae.VideoDecoder, "forward"),
               "interpolation": (pack_module("sonic_model.video.rife_blocks").IFNet, "forward")}
    owner, method = targets[stage]
    with monkeypatch.context() as patch:
        patch.setattr(owner, method, _raise_oom)
        error = run_error(shipped_workflow("sonic_long_audio", seed=seed))
    assert error["exception_type"] == "torch.OutOfMemoryError", error["exception_type"]
    assert advice in error["exception_message"]
    assert mm.current_loaded_models == [], "ComfyUI must have unloaded the models"
    assert comfy.output_files() == []
    node_outputs(shipped_workflow("sonic_long_audio", seed=seed))
    (video,) = videos(comfy)
    assert_complete_video(video, 24)
