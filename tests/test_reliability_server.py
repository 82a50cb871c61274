"""Reliability, runs: a node failing inside a real, separately running ComfyUI server (the process users have open)
is reported in the prompt's history with our message, and the server goes on serving and running prompts."""
from __future__ import annotations

from comfy_server import cpu_friendly, fill_defaults
from reliability import case

pytest_plugins = ["comfy_server_fixture"]  # the session's one server


def _encode_prompt(seconds: float, object_info: dict, models_dir) -> dict:
    prompt = {"1": {"class_type": "SonicLoader", "inputs": {}},
              "2": {"class_type": "EmptyAudio", "inputs": {"duration": seconds, "sample_rate": 22050, "channels": 1}},
              "3": {"class_type": "SonicAudioEncode", "inputs": {"sonic_model": ["1", 0], "audio": ["2", 0]}},
              "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}}
    return cpu_friendly(fill_defaults(prompt, object_info), models_dir)


@case("Runs", "A node fails inside a running ComfyUI server",
      "The prompt's history carries the node's error with our message; the server keeps answering (/system_stats) "
      "and runs the next prompt.")
def test_run_node_failure_leaves_the_server_running(comfy_server, tiny_models_dir):
    info = comfy_server.get("/object_info", timeout=60)
    failed = comfy_server.wait(comfy_server.submit(_encode_prompt(0.0, info, tiny_models_dir)), timeout=300)
    assert failed["status"]["status_str"] == "error"
    errors = [data for kind, data in failed["status"]["messages"] if kind == "execution_error"]
    assert errors and errors[0]["node_type"] == "SonicAudioEncode"
    assert "the audio is empty (0 samples): connect an audio clip with sound in it" in errors[0]["exception_message"]

    assert comfy_server.process.poll() is None and "system" in comfy_server.get("/system_stats")
    ok = comfy_server.wait(comfy_server.submit(_encode_prompt(1.0, info, tiny_models_dir)), timeout=300)
    assert ok["status"]["status_str"] == "success"
    assert ok["outputs"]["4"]["text"] == ["12"]
