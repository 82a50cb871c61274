"""`tools/models.py check|download` and the Sonic Model Check node, on random-weight files in the real formats.

Network only to 127.0.0.1: the downloader runs against tests/fake_hub.py, or against a closed/silent local port.
"""
import io
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fake_hub import FakeHub, range_start
from sonic_model.weights import model_catalog as mc
from tools import models as tool

REPO = Path(__file__).resolve().parents[1]
SVD_REPO = "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
TOKEN = "hf_test_token"
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 217206084\n"
HTML = b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body></body></html>"


# ----------------------------------------------------------------------------------------------------------------
# Folders and files
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def models(tiny_models_dir, tmp_path) -> Path:
    """A private models folder: a copy of the small sonic files, the 1.7 GB SVD file only linked."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "sonic", root / "sonic")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "svd_xt_random.safetensors").symlink_to(
        tiny_models_dir / "checkpoints" / "svd_xt_random.safetensors")
    return root


def _by_slot(reports):
    return {r.entry.slot: r for r in reports}


def _check(root: Path) -> dict:
    return _by_slot(mc.check_models_dir(root))


def _sd15_checkpoint(path: Path) -> None:
    """Key layout of an SD1.5 single file (the shapes detection reads, tiny elsewhere)."""
    t = torch.zeros
    save_file({"model.diffusion_model.input_blocks.0.0.weight": t(320, 4, 3, 3),
               "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": t(2, 768),
               "model.diffusion_model.output_blocks.0.0.in_layers.0.weight": t(2),
               "first_stage_model.encoder.conv_in.weight": t(2),
               "cond_stage_model.transformer.text_model.embeddings.position_ids": t(2)}, str(path))


def _small_svd_checkpoint() -> bytes:
    """A few SVD single-file keys (UNet with temporal layers, VAE, CLIP vision): what the check looks for."""
    from safetensors.torch import save

    keys = ("model.diffusion_model.input_blocks.1.0.time_stack.in_layers.0.weight",
            "model.diffusion_model.output_blocks.0.0.in_layers.0.weight", "first_stage_model.encoder.conv_in.weight",
            "conditioner.embedders.0.open_clip.model.visual.proj")
    return save({k: torch.zeros(2) for k in keys})


def _torchscript(path: Path) -> None:
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))


def _run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SONIC_"))}
    full_env.update(OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, str(REPO / "tools" / "models.py"), *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=REPO)


def _rows(table: str) -> dict[str, str]:
    """WHAT -> STATUS from the printed table (status is the first column)."""
    rows = {}
    for line in table.splitlines():
        for status in (mc.ELSEWHERE, mc.FOUND, mc.MISSING, mc.WRONG):
            if line.startswith(f"  {status} "):
                what = line[2 + len(status):].strip().split("  ")[0]
                rows[what.replace(" (optional)", "")] = status
                break
    return rows


# ----------------------------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------------------------


def test_the_random_weight_set_is_found_with_size_warnings(models):
    reports = _check(models)
    for slot in ("unet", "audio2token", "audio2bucket", "whisper", "rife", "svd_checkpoint"):
        assert reports[slot].status == mc.FOUND, (slot, reports[slot].detail)
        assert reports[slot].warnings or slot == "whisper", slot  # random weights never pass for the official files
    assert "not the official size (10" in reports["unet"].warnings[0]
    assert "official over 4,000,000,000)" in reports["svd_checkpoint"].warnings[0]
    assert reports["face_detector"].status == mc.MISSING and not reports["face_detector"].entry.required
    assert mc.all_required_found(reports.values())

    done = _run("check", "--models-dir", str(models))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(done.stdout)
    assert rows == {"Sonic UNet": "found", "audio2token": "found", "audio2bucket": "found", "Whisper-tiny": "found",
                    "face detector": "missing", "RIFE interpolation": "found", "SVD-xt checkpoint": "found"}
    assert "All required files are in place" in done.stdout
    assert f"put yoloface_v5m.pt in {models / 'sonic'}{os.sep}" in done.stdout
    assert "https://huggingface.co/LeonJoe13/Sonic (yoloface_v5m.pt" in done.stdout


def test_a_folder_with_every_kind_of_problem(models):
    sonic = models / "sonic"
    (sonic / "unet.pth").write_bytes(HTML)  # a web page saved under the name
    shutil.copy(sonic / "audio2bucket.pth", sonic / "audio2token.pth")  # the wrong model under the name
    data = (sonic / "audio2bucket.pth").read_bytes()
    (sonic / "audio2bucket.pth").write_bytes(data[: len(data) // 2])  # truncated
    (sonic / "RIFE" / "flownet.pkl").write_bytes(LFS_POINTER)
    shutil.rmtree(sonic / "whisper-tiny")
    (models / "checkpoints" / "svd_xt_random.safetensors").unlink()
    _sd15_checkpoint(models / "checkpoints" / "svd_xt.safetensors")

    r = _check(models)
    assert r["unet"].status == mc.WRONG and "web page" in r["unet"].detail and r["unet"].replace
    assert r["audio2token"].status == mc.WRONG and "audio2bucket weights (audio2bucket.pth)" in r["audio2token"].detail
    assert r["audio2token"].fetch == ()  # a real model under the wrong name is never overwritten
    assert "move it out of the way" in r["audio2token"].detail
    assert r["audio2bucket"].status == mc.WRONG and "truncated or corrupt" in r["audio2bucket"].detail
    # ... and its intact copy sits in audio2token.pth: renaming beats downloading again.
    assert "The right file is audio2token.pth" in r["audio2bucket"].detail and r["audio2bucket"].fetch == ()
    assert r["rife"].status == mc.WRONG and "Git LFS pointer" in r["rife"].detail
    assert r["whisper"].status == mc.MISSING
    assert r["whisper"].fetch == ("config.json", "preprocessor_config.json", "model.safetensors")
    assert r["svd_checkpoint"].status == mc.WRONG and "matches none of Sonic's files" in r["svd_checkpoint"].detail
    assert r["svd_checkpoint"].target == models / "checkpoints" / "svd_xt_1_1.safetensors"
    assert [d.repo_file for d in tool.plan_downloads(r.values())] == [
        "Sonic/unet.pth", "config.json", "preprocessor_config.json",
        "model.safetensors", "yoloface_v5m.pt", "RIFE/flownet.pkl", "svd_xt_1_1.safetensors"]

    done = _run("check", "--models-dir", str(models))
    assert done.returncode == 1
    assert _rows(done.stdout) == {"Sonic UNet": "wrong", "audio2token": "wrong", "audio2bucket": "wrong",
                                  "Whisper-tiny": "missing", "face detector": "missing",
                                  "RIFE interpolation": "wrong", "SVD-xt checkpoint": "wrong"}
    out = done.stdout
    assert f"put the openai/whisper-tiny files (config.json, preprocessor_config.json, model.safetensors) in " \
           f"{models / 'sonic' / 'whisper-tiny'}{os.sep}" in out
    assert "this is the Sonic audio2bucket weights (audio2bucket.pth), not audio2token" in out
    assert "5 required file(s) not in place: unet, audio2token, audio2bucket, whisper, svd_checkpoint" in out
    assert f"Download the missing files: python tools/models.py download --models-dir {models}" in out
    assert f"https://huggingface.co/{SVD_REPO} (svd_xt_1_1.safetensors; Stability AI Community License; gated: log " \
           "in there, accept the licence, then download with --token hf_...)" in out


def test_only_a_missing_unet_fails_the_check(models):
    (models / "sonic" / "unet.pth").unlink()
    r = _check(models)
    assert r["unet"].status == mc.MISSING and r["unet"].fetch == ("Sonic/unet.pth",)
    assert [slot for slot, rep in r.items() if not rep.ok] == ["unet", "face_detector"]
    assert not mc.all_required_found(r.values())
    lines = []
    assert tool.run_check(models, out=lines.append) == 1
    assert f"put unet.pth in {models / 'sonic'}{os.sep}" in lines[0]


def test_correct_files_under_other_names_are_found_as(models):
    sonic, checkpoints = models / "sonic", models / "checkpoints"
    (sonic / "Sonic").mkdir()
    (sonic / "unet.pth").rename(sonic / "Sonic" / "unet.pth")  # `huggingface-cli download --local-dir` layout
    (sonic / "whisper-tiny").rename(sonic / "whisper")
    (checkpoints / "svd_xt_random.safetensors").rename(checkpoints / "video_model.safetensors")
    r = _check(models)
    assert r["unet"].status == mc.ELSEWHERE and r["unet"].path == sonic / "Sonic" / "unet.pth"
    assert r["unet"].detail == f"rename it to {sonic / 'unet.pth'}, or select Sonic/unet.pth in the loader"
    assert r["unet"].fetch == () and r["unet"].warnings  # nothing to download, still not the official size
    assert r["whisper"].status == mc.ELSEWHERE and "select whisper in the loader" in r["whisper"].detail
    assert r["svd_checkpoint"].status == mc.ELSEWHERE
    assert "select video_model.safetensors as svd_checkpoint" in r["svd_checkpoint"].detail
    assert not mc.all_required_found(r.values())  # in place means the official name
    assert tool.plan_downloads(r.values(), required_only=True) == []


def test_swapped_adapters_point_at_each_other(models):
    sonic = models / "sonic"
    (sonic / "audio2token.pth").rename(sonic / "tmp.pth")
    (sonic / "audio2bucket.pth").rename(sonic / "audio2token.pth")
    (sonic / "tmp.pth").rename(sonic / "audio2bucket.pth")
    r = _check(models)
    assert r["audio2token"].status == r["audio2bucket"].status == mc.WRONG
    assert "The right file is audio2bucket.pth" in r["audio2token"].detail
    assert "The right file is audio2token.pth" in r["audio2bucket"].detail


def test_face_detector_must_be_torchscript_and_whisper_parts_are_checked(models):
    sonic = models / "sonic"
    _torchscript(sonic / "yoloface_v5m.pt")
    r = _check(models)
    assert r["face_detector"].status == mc.FOUND

    torch.save({"weight": torch.zeros(2)}, sonic / "yoloface_v5m.pt")  # a plain state dict is not the detector
    data = (sonic / "whisper-tiny" / "model.safetensors").read_bytes()
    (sonic / "whisper-tiny" / "model.safetensors").write_bytes(data[:-1000])
    (sonic / "whisper-tiny" / "preprocessor_config.json").unlink()
    r = _check(models)
    assert r["face_detector"].status == mc.WRONG and "matches none of Sonic's files" in r["face_detector"].detail
    assert r["whisper"].status == mc.WRONG and "truncated" in r["whisper"].detail
    assert "missing or bad preprocessor_config.json, model.safetensors" in r["whisper"].detail
    assert r["whisper"].fetch == ("preprocessor_config.json", "model.safetensors") and r["whisper"].replace


def test_svd_is_recognised_from_the_header_alone(models, tmp_path):
    """A 50 GB sparse checkpoint: reading its data would take far longer than the check is allowed."""
    checkpoints = models / "checkpoints"
    (checkpoints / "svd_xt_random.safetensors").unlink()
    import json
    import struct
    header = {"model.diffusion_model.input_blocks.1.0.time_stack.x.weight":
              {"dtype": "F16", "shape": [25_000_000_000], "data_offsets": [0, 50_000_000_000]},
              "first_stage_model.encoder.conv_in.weight": {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]},
              "conditioner.embedders.0.open_clip.model.visual.proj": {"dtype": "F16", "shape": [0],
                                                                     "data_offsets": [0, 0]}}
    raw = json.dumps(header).encode()
    with open(checkpoints / "svd_xt.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + 50_000_000_000)
    start = time.perf_counter()
    r = _check(models)["svd_checkpoint"]
    assert r.status == mc.FOUND and r.warnings == []
    assert time.perf_counter() - start < 5


def test_check_never_touches_the_network_and_never_imports_the_hub_client(models):
    script = textwrap.dedent(f"""
        import runpy, sys
        def hook(event, args):
            if event.startswith(("socket.connect", "socket.getaddrinfo", "urllib.Request")):
                raise RuntimeError("network used: " + event)
        sys.addaudithook(hook)
        sys.argv = ["models.py", "check", "--models-dir", {str(models)!r}]
        try:
            runpy.run_path({str(REPO / 'tools' / 'models.py')!r}, run_name="__main__")
        except SystemExit as e:
            print("EXIT", e.code, "huggingface_hub" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.strip().endswith("EXIT 0 False"), done.stdout + done.stderr


def test_models_folder_resolution(tmp_path, monkeypatch):
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "sonic"
    pack.mkdir(parents=True)
    with pytest.raises(tool.UsageError, match="--models-dir"):
        tool.default_models_dir(env={}, pack=pack)
    (tmp_path / "ComfyUI" / "models").mkdir()
    assert tool.default_models_dir(env={}, pack=pack) == tmp_path / "ComfyUI" / "models"
    assert tool.default_models_dir(env={"SONIC_MODELS_DIR": "/x/models"}, pack=pack) == Path("/x/models")
    done = _run("check")  # this checkout is not inside ComfyUI/custom_nodes
    assert done.returncode == 2 and "Pass --models-dir" in done.stderr
    done = _run("check", env={"SONIC_MODELS_DIR": str(tmp_path / "nowhere")})
    assert done.returncode == 2 and "is not a folder" in done.stderr


# ----------------------------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------------------------


def _hub(tiny: Path) -> FakeHub:
    sonic = tiny / "sonic"
    files = {("LeonJoe13/Sonic", f"Sonic/{n}"): (sonic / n).read_bytes()
             for n in ("unet.pth", "audio2token.pth", "audio2bucket.pth")}
    files[("LeonJoe13/Sonic", "RIFE/flownet.pkl")] = (sonic / "RIFE" / "flownet.pkl").read_bytes()
    files.update({("openai/whisper-tiny", n): (sonic / "whisper-tiny" / n).read_bytes()
                  for n in ("config.json", "preprocessor_config.json", "model.safetensors")})
    files[(SVD_REPO, "svd_xt_1_1.safetensors")] = _small_svd_checkpoint()
    return FakeHub(files=files, gated={SVD_REPO: TOKEN})


def _hub_env(hub_url: str, tmp_path: Path) -> dict:
    return {"HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture()
def sparse_models(models):
    """Missing: unet, whisper, SVD (and the optional face detector); audio2token is an LFS stub."""
    (models / "sonic" / "unet.pth").unlink()
    shutil.rmtree(models / "sonic" / "whisper-tiny")
    (models / "checkpoints" / "svd_xt_random.safetensors").unlink()
    (models / "sonic" / "audio2token.pth").write_bytes(LFS_POINTER)
    return models


def test_download_fetches_exactly_the_missing_files(sparse_models, tiny_models_dir, tmp_path):
    models, tiny = sparse_models, tiny_models_dir / "sonic"
    hub = _hub(tiny_models_dir)
    # A UNet big enough for huggingface_hub's 10 MiB download chunks, cut by the network at 14 MB: it must resume
    # with a Range request instead of starting over.
    state = torch.load(tiny / "unet.pth", weights_only=True)
    buffer = io.BytesIO()
    torch.save({**state, "zz_padding": torch.zeros(4_000_000)}, buffer)
    unet = hub.files[("LeonJoe13/Sonic", "Sonic/unet.pth")] = buffer.getvalue()
    hub.cut_first_get["Sonic/unet.pth"] = 14_000_000
    with hub:
        done = _run("download", "--models-dir", str(models), "--token", TOKEN, "--required-only",
                    env=_hub_env(hub.url, tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    got = sorted(p.split("/resolve/main/")[1] for p in hub.paths_requested("GET") if "/resolve/" in p)
    assert got == sorted(["Sonic/unet.pth", "Sonic/unet.pth", "Sonic/audio2token.pth", "config.json",
                          "preprocessor_config.json", "model.safetensors", "svd_xt_1_1.safetensors"])
    ranges = [rng for m, p, rng in hub.requests if m == "GET" and p.endswith("Sonic/unet.pth")]
    assert ranges[0] is None and 0 < range_start(ranges[1]) <= 14_000_000, ranges
    assert (models / "sonic" / "unet.pth").read_bytes() == unet
    assert (models / "sonic" / "audio2token.pth").read_bytes() == (tiny / "audio2token.pth").read_bytes()
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        assert (models / "sonic" / "whisper-tiny" / name).read_bytes() == (tiny / "whisper-tiny" / name).read_bytes()
    assert (models / "checkpoints" / "svd_xt_1_1.safetensors").is_file()
    assert not (models / "sonic" / "Sonic").exists() and not (models / tool.STAGING).exists()
    assert _rows(done.stdout)["Sonic UNet"] == "found" and "All required files are in place" in done.stdout


def test_gated_repo_without_token_says_what_to_do_and_other_files_arrive(sparse_models, tiny_models_dir, tmp_path):
    with _hub(tiny_models_dir) as hub:
        done = _run("download", "--models-dir", str(sparse_models), "--only", "unet", "svd_checkpoint",
                    env=_hub_env(hub.url, tmp_path))
    assert done.returncode == 1
    assert (f"svd_xt_1_1.safetensors from {SVD_REPO} failed: the repository is gated. Log in at "
            f"https://huggingface.co/{SVD_REPO}, accept the licence") in done.stdout
    assert "pass --token hf_..." in done.stdout
    assert (sparse_models / "sonic" / "unet.pth").is_file()
    assert not (sparse_models / "sonic" / "whisper-tiny").exists()  # --only: nothing else


def test_a_failed_file_is_reported_and_the_rerun_fetches_only_it(sparse_models, tiny_models_dir, tmp_path):
    hub = _hub(tiny_models_dir)
    hub.refuse_get.add("model.safetensors")
    with hub:
        env = _hub_env(hub.url, tmp_path)
        first = _run("download", "--models-dir", str(sparse_models), "--only", "whisper", "audio2token", env=env)
        hub.refuse_get.clear()
        hub.requests.clear()
        second = _run("download", "--models-dir", str(sparse_models), "--only", "whisper", "audio2token", env=env)
    assert first.returncode == 1 and "model.safetensors from openai/whisper-tiny failed" in first.stdout
    assert "HTTP 403" in first.stdout
    assert second.returncode == 0, second.stdout + second.stderr
    assert [p.rsplit("/", 1)[1] for p in hub.paths_requested("GET") if "/resolve/" in p] == ["model.safetensors"]
    assert _check(sparse_models)["whisper"].status == mc.FOUND


def test_a_download_that_is_not_the_model_is_caught(sparse_models, tiny_models_dir, tmp_path):
    hub = _hub(tiny_models_dir)
    hub.files[("LeonJoe13/Sonic", "Sonic/audio2token.pth")] = HTML  # e.g. a captive portal or a bad mirror
    with hub:
        done = _run("download", "--models-dir", str(sparse_models), "--only", "audio2token",
                    env=_hub_env(hub.url, tmp_path))
    assert done.returncode == 1
    assert "audio2token: downloaded, but the file does not check out" in done.stdout
    assert _rows(done.stdout)["audio2token"] == "wrong"


def test_dry_run_lists_and_fetches_nothing(sparse_models, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    lines = []
    code = tool.download_missing(sparse_models, endpoint="http://127.0.0.1:9", dry_run=True, out=lines.append)
    assert code == 0 and _check(sparse_models)["svd_checkpoint"].status == mc.MISSING
    text = "\n".join(lines)
    assert "Would fetch 7 file(s) from http://127.0.0.1:9:" in text
    assert f"LeonJoe13/Sonic: Sonic/unet.pth -> {sparse_models / 'sonic' / 'unet.pth'} (6.30 GB)" in text
    assert f"{SVD_REPO}: svd_xt_1_1.safetensors -> {sparse_models / 'checkpoints' / 'svd_xt_1_1.safetensors'}" in text
    assert "audio2token.pth (217.2 MB), replacing the broken file there" in text
    assert f"{SVD_REPO} is gated: accept its licence" in text
    assert not (sparse_models / tool.STAGING).exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_fast_with_a_clear_message(sparse_models, tmp_path):
    port = _closed_port()
    start = time.perf_counter()
    done = _run("download", "--models-dir", str(sparse_models), env=_hub_env(f"http://127.0.0.1:{port}", tmp_path))
    assert done.returncode == 1
    assert f"Cannot reach the Hugging Face hub at http://127.0.0.1:{port}" in done.stdout
    assert "HF_ENDPOINT" in done.stdout and "run the command again" in done.stdout
    assert time.perf_counter() - start < 30


def test_silent_hub_times_out(sparse_models, tmp_path):
    """A server that accepts connections and never answers must not hang the downloader."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        start = time.perf_counter()
        done = _run("download", "--models-dir", str(sparse_models),
                    env={**_hub_env(f"http://127.0.0.1:{port}", tmp_path), "HF_HUB_ETAG_TIMEOUT": "1"})
        elapsed = time.perf_counter() - start
    assert done.returncode == 1 and "Cannot reach the Hugging Face hub" in done.stdout
    assert "timed out" in done.stdout
    assert elapsed < 30


def test_offline_mode_is_respected(sparse_models, tmp_path):
    done = _run("download", "--models-dir", str(sparse_models),
                env={**_hub_env("http://127.0.0.1:9", tmp_path), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1 and "HF_HUB_OFFLINE is set" in done.stdout


def test_error_messages_cover_the_hub_failures():
    entry = mc.ENTRIES["svd_checkpoint"]
    item = tool.Download(mc.FileReport(entry, mc.MISSING, Path("/m/checkpoints/x")), "svd_xt_1_1.safetensors",
                         Path("/m/checkpoints/svd_xt_1_1.safetensors"))

    class Response:
        status_code = 403

    class HfHubHTTPError(OSError):
        response = Response()

    assert "gated" in tool.explain_error(HfHubHTTPError("403"), item, "https://huggingface.co")
    unet = tool.Download(mc.FileReport(mc.ENTRIES["unet"], mc.MISSING, Path("/m/sonic/unet.pth")),
                         "Sonic/unet.pth", Path("/m/sonic/unet.pth"))
    assert "HTTP 403" in tool.explain_error(HfHubHTTPError("403"), unet, "https://huggingface.co")

    class LocalEntryNotFoundError(FileNotFoundError):
        pass

    assert "lost the connection" in tool.explain_error(LocalEntryNotFoundError("x"), unet, "https://h")

    class Missing:
        status_code = 404

    class RemoteEntryNotFoundError(OSError):
        response = Missing()

    assert "HTTP 404" in tool.explain_error(RemoteEntryNotFoundError("x"), unet, "https://h")


# ----------------------------------------------------------------------------------------------------------------
# the node
# ----------------------------------------------------------------------------------------------------------------


def test_model_check_node_reports_comfyui_folders(models, monkeypatch):
    from tools.comfy_runtime import import_pack

    import_pack()
    import folder_paths
    from sonic_pack.nodes.model_check import SonicModelCheck

    (models / "sonic" / "audio2bucket.pth").write_bytes(HTML)
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sonic", ([str(models / "sonic")], set()))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints",
                        ([str(models / "checkpoints")], {".safetensors"}))
    schema = SonicModelCheck.GET_SCHEMA()
    assert schema.node_id == "SonicModelCheck" and schema.is_output_node and schema.category == "Sonic/loaders"
    assert all(o.tooltip for o in schema.outputs)

    out = SonicModelCheck.execute()
    report, ok = out.args
    assert ok is False and out.ui.as_dict() == {"text": (report,)}
    rows = _rows(report)
    assert rows["audio2bucket"] == "wrong" and rows["Sonic UNet"] == "found" and rows["SVD-xt checkpoint"] == "found"
    assert "web page" in report
    assert f"tools{os.sep}models.py download --models-dir {models}" in report
    assert SonicModelCheck.fingerprint_inputs() != SonicModelCheck.fingerprint_inputs()  # never cached
