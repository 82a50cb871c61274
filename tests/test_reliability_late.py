"""Reliability, late in a long run: the disk fills during the mp4 write, the output folder refuses writes, Cancel
near the end of sampling or during the save, out of memory in the last decode chunk, and the server killed mid-write.

Each runs the shipped workflows in the real ComfyUI runtime (random weights, CPU-sized) on real faults: a tiny
tmpfs, a read-only remount, chattr +i, SIGKILL. Each ends with a clear message naming the fix, no file under the final
name unless it is complete, and ComfyUI running the next prompt. The single-face tests share one seed, so ComfyUI
samples once and each later prompt (a new filename_prefix) only redoes the save, as users' re-runs do; the tests
that need their own sampling come last."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

import comfy.model_management as mm
import nodes  # core's
from comfy.ldm.models.autoencoder import AutoencodingEngine
from comfy_harness import PromptFailed, run_prompt
from comfy_server import write_short_wav
from fault_disks import small_disk
from reliability import case
from reliability_runtime import VOICE, ComfyFolders, assert_comfy_keeps_running, assert_complete_video, \
    node_id_of, node_outputs, run_error, shipped_workflow, videos
from tools.headless import HeadlessComfy

pytest_plugins = ["reliability_fixtures"]

SEED = 21  # one sampling for every single-face test below
CLIP = "voice_half_second.wav"  # 6 generated frames at 12.5 fps
FRAMES = 12  # doubled by RIFE
CHUNK = 2  # frames per decode: 3 chunks, and the mp4 is open from the second on
DISK_KIB = 24  # the small disk: about a third of the video


@pytest.fixture(scope="module", autouse=True)
def half_second_clip(comfy_tree: ComfyFolders) -> None:
    write_short_wav(VOICE, comfy_tree.input / CLIP, 0.5)


def _short(prompt: dict, sampler_type: str, save_type: str, **save) -> dict:
    """A shipped workflow on the half-second clip, one sampling step (the faults come after sampling)."""
    for node in prompt.values():
        if node["class_type"] == "LoadAudio":
            node["inputs"]["audio"] = CLIP
    prompt[node_id_of(prompt, sampler_type)]["inputs"]["steps"] = 1
    prompt[node_id_of(prompt, save_type)]["inputs"].update({"decode_chunk_size": CHUNK, **save})
    return prompt


def _workflow(prefix: str, seed: int = SEED, **save) -> dict:
    """The long-audio workflow saving under `prefix`."""
    return _short(shipped_workflow("sonic_long_audio", seed=seed), "SonicSampler", "SonicSaveVideo",
                  filename_prefix=prefix, **save)


def _speakers_workflow(prefix: str) -> dict:
    return _short(shipped_workflow("sonic_dialogue", seed=SEED), "SonicSpeakersSampler", "SonicSpeakersSaveVideo",
                  filename_prefix=prefix)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def _assert_clear(error: dict, *parts: str) -> str:
    """Our message as the whole report: one paragraph, no traceback or PyAV internals in it."""
    message = error["exception_message"]
    assert error["exception_type"] == "OSError", error["exception_type"]
    assert "\n" not in message and "Traceback" not in message and "av.error" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


def _healthy_save(comfy: ComfyFolders, prefix: str) -> None:
    """The same ComfyUI writes the same workflow's complete video right after the failure."""
    outputs = node_outputs(_workflow(prefix))
    (saved,) = [p for p in videos(comfy) if p.name.startswith(Path(prefix).name)]
    assert_complete_video(saved, FRAMES)
    assert outputs


@case("Runs", "The disk fills during the mp4 write",
      "Stops with \"The disk is full: writing the video ... stopped at N KiB (M KiB free on that disk now). Free at "
      "least N MiB (the video needs about ...), or choose another output folder on a disk with room\"; the partial "
      "file is deleted, nothing appears under the final name, and the same ComfyUI then saves the complete video.")
def test_run_disk_fills_during_the_write(comfy):
    disk = comfy.output / "small_disk"
    with small_disk(disk, size_kib=DISK_KIB):
        error = run_error(_workflow("small_disk/Sonic"))
        assert _files(disk) == []  # neither the video nor its partial file
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    assert error["node_type"] == "SonicSaveVideo"
    message = _assert_clear(error, f"The disk is full: writing the video {disk / 'Sonic_00001_.mp4'} stopped at ",
                            "free on that disk now). Free at least 1 MiB (the video needs about ",
                            "or choose another output folder on a disk with room (start ComfyUI with "
                            "--output-directory). No partial file was left.")
    assert f"({-(-free // 1024)} KiB free" in message  # what the disk really has
    assert int(re.search(r"stopped at (\d+) KiB", message).group(1)) > 0, "full during the write, not at the open"

    _healthy_save(comfy, "sonic/After_full")
    (video,) = videos(comfy)
    size_kib = video.stat().st_size / 1024
    assert size_kib > 1.5 * DISK_KIB, "the disk must fill well before the end of the video"
    needs = int(re.search(r"the video needs about (\d+) KiB", message).group(1))
    assert abs(needs - size_kib) < 0.2 * size_kib, (needs, size_kib)  # the estimate is the real size, ±20 %


@case("Runs", "The output folder is read-only",
      "A read-only mount stops with \"The output folder ... is read-only (its file system is mounted read-only): "
      "choose another output folder (start ComfyUI with --output-directory), or remount it writable\", also when "
      "the subfolder must first be created; an immutable folder (chattr +i, which refuses root too) with \"ComfyUI "
      "may not write into the output folder ... (Operation not permitted): make it writable for the user running "
      "ComfyUI\". Nothing is written; the same ComfyUI then saves the complete video.")
@pytest.mark.parametrize("mode,subfolder,says", [
    ("read-only", "", "is read-only (its file system is mounted read-only): choose another output folder (start "
                      "ComfyUI with --output-directory), or remount it writable. Nothing was saved."),
    ("read-only", "new/", "is read-only (its file system is mounted read-only)"),
    ("immutable", "", "(Operation not permitted): make it writable for the user running ComfyUI, or choose another "
                      "output folder (start ComfyUI with --output-directory). Nothing was saved."),
], ids=["read-only-mount", "read-only-new-subfolder", "immutable-folder"])
def test_run_output_folder_read_only(comfy, mode, subfolder, says):
    disk = comfy.output / "locked"
    with small_disk(disk, size_kib=1024, mode=mode):
        error = run_error(_workflow(f"locked/{subfolder}Sonic", decode_chunk_size=1))
        assert _files(disk) == []
    assert error["node_type"] == "SonicSaveVideo"
    _assert_clear(error, f"{disk / subfolder}".rstrip("/") + " ", says)
    _healthy_save(comfy, f"sonic/After_{mode}_{len(subfolder)}")


@case("Runs", "Out of memory in the last decode chunk",
      "With the mp4 already open, the last chunk's decode (and its one retry) runs out of memory: \"Sonic decode "
      "ran out of memory on a chunk of 2 frames at 64×64 ... lower decode_chunk_size\"; the partial file is deleted, "
      "ComfyUI unloads its models, and the next run saves the complete video.")
def test_run_out_of_memory_in_the_last_decode_chunk(comfy, monkeypatch):
    real_decode, seen = AutoencodingEngine.decode, []
    total = FRAMES // 2  # generated frames

    def last_chunk_fails(self, z, **kwargs):
        seen.append(z.shape[0])
        if sum(seen[:-1]) + z.shape[0] >= total:  # the last chunk (seen twice: the retry)
            assert list((comfy.output / "sonic").glob(".*.partial.mp4")), "the video file should be open by now"
            seen.pop()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real_decode(self, z, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(AutoencodingEngine, "decode", last_chunk_fails)
        error = run_error(_workflow("sonic/Oom"))
    assert seen == [CHUNK, CHUNK], "two chunks decoded, then the last one failed"
    assert error["node_type"] == "SonicSaveVideo" and error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith(
        "Sonic decode ran out of memory on a chunk of 2 frames at 64×64. The temporal decoder must see the whole "
        "chunk, so it is not tiled: lower decode_chunk_size"), error["exception_message"]
    assert mm.current_loaded_models == [], "ComfyUI must have unloaded the models"
    assert comfy.output_files() == []
    _healthy_save(comfy, "sonic/After_oom")


def _kill_when_writing(server: HeadlessComfy, folder: Path, final: str, timeout: float = 300) -> Path:
    """SIGKILL the server as soon as its partial video appears; the final name must never appear first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        partials = sorted(folder.glob(".*.partial.mp4")) if folder.is_dir() else []
        assert not list(folder.glob(final)), "a file under the final name appeared before the write finished"
        if partials:
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)
            return partials[0]
        assert server.process.poll() is None, server.log()[-3000:]
        time.sleep(0.005)
    raise TimeoutError(f"no partial video appeared within {timeout:.0f} s:\n{server.log()[-3000:]}")


@case("Runs", "The server is killed during the save",
      "SIGKILL of a running ComfyUI server while its mp4 is open leaves only the hidden `.<name>.partial.mp4` (never "
      "a file under the final name); the next save into that folder deletes the leftover and writes a complete "
      "video under ComfyUI's next free number.")
def test_run_server_killed_during_the_save(comfy):
    server = HeadlessComfy(comfy.root / "models", comfy.input, comfy.output, cpu=True)
    try:
        server.start(timeout=180)
        prompt = _workflow("sonic/Killed", decode_chunk_size=1)  # 6 chunks: the file is open for the last 4
        server.submit(prompt)
        leftover = _kill_when_writing(server, comfy.output / "sonic", "Killed_*.mp4")
    finally:
        server.stop()
    assert server.process.returncode == -signal.SIGKILL
    assert leftover.name == ".Killed_00001_.partial.mp4" and leftover.exists()
    assert _files(comfy.output) == [leftover.name]  # clearly named partial, hidden, nothing else

    _healthy_save(comfy, "sonic/Sonic")  # the next run, into the same folder (another name: no overwrite)
    assert _files(comfy.output) == ["Sonic_00001_.mp4"], "the leftover partial must have been deleted"


def _cancel_at(progress_hook, node: str, value: int, partial_in: Path | None = None) -> list:
    """Press Cancel when `node`'s progress reaches `value`; with `partial_in`, a partial video must be open then."""
    def cancel(node_id, done, total):
        if node_id == node and done == value:
            if partial_in is not None:
                assert list(partial_in.glob(".*.partial.mp4")), "the video file should be open by now"
            nodes.interrupt_processing()  # what the Cancel button (POST /interrupt) does

    return progress_hook(cancel)


def _assert_interrupted_at(prompt: dict, node_type: str) -> None:
    with pytest.raises(PromptFailed) as stopped:
        run_prompt(prompt)
    report = stopped.value.args[0]
    assert report["node_type"] == node_type and "exception_message" not in report, report  # interrupted, no error


@case("Runs", "Cancel during the save",
      "Cancel while Sonic Decode + Save Video or Sonic Speakers Save Video has its mp4 open stops at the next "
      "chunk, ComfyUI reports the prompt interrupted at the save node, the partial file is deleted, and the same "
      "ComfyUI then saves the complete video (sampling cached).")
@pytest.mark.parametrize("workflow", ["sonic_long_audio", "sonic_dialogue"])
def test_run_cancel_during_the_save(comfy, progress_hook, workflow):
    save_type = "SonicSaveVideo" if workflow == "sonic_long_audio" else "SonicSpeakersSaveVideo"
    prompt = _workflow("sonic/Cancelled") if workflow == "sonic_long_audio" else _speakers_workflow("sonic/Cancelled")
    save = node_id_of(prompt, save_type)
    chunks = 3 * (2 if save_type == "SonicSpeakersSaveVideo" else 1)  # per face
    progress = _cancel_at(progress_hook, save, chunks, partial_in=comfy.output / "sonic")  # at the last chunk
    _assert_interrupted_at(prompt, save_type)
    assert [v for n, v, _ in progress if n == save] == list(range(1, chunks + 1))
    assert comfy.output_files() == []

    progress_hook()  # no more Cancel
    prompt[save]["inputs"]["filename_prefix"] = "sonic/Saved"
    node_outputs(prompt)
    (video,) = videos(comfy)
    assert video.name == "Saved_00001_.mp4"
    assert_complete_video(video, FRAMES)


@case("Runs", "Cancel at 90 % of sampling",
      "Sampling stops right after the window where Cancel was pressed (9 of 10), ComfyUI reports the prompt "
      "interrupted at the sampler, no file is written, and the same ComfyUI runs the next prompt.")
def test_run_cancel_late_in_sampling(comfy, progress_hook):
    prompt = _workflow("sonic/Late_cancel", seed=SEED + 1)
    sampler = node_id_of(prompt, "SonicSampler")
    prompt[sampler]["inputs"]["steps"] = 10  # one window per step at 6 frames: 10 ticks
    progress = _cancel_at(progress_hook, sampler, 9)
    _assert_interrupted_at(prompt, "SonicSampler")
    assert [v for n, v, _ in progress if n == sampler] == list(range(1, 10))
    assert {t for n, _, t in progress if n == sampler} == {10}
    assert comfy.output_files() == []
    assert_comfy_keeps_running(comfy)
