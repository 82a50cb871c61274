"""Start the real ComfyUI server headless with this pack, run API workflows through /prompt, stop it by PID.

Used by `make demo` (tools/demo.py); the server tests drive the same class.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from tools.comfy_runtime import COMFYUI_DIR  # noqa: E402  (.venv/ComfyUI, or $COMFYUI_DIR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeadlessComfy:
    """A ComfyUI server on 127.0.0.1 loading only this pack, with the given models, input and output folders."""

    def __init__(self, models_dir: Path, input_dir: Path, output_dir: Path, cpu: bool | None = None,
                 log_path: Path | None = None, pack_folder: str = "sonic-portrait",
                 front_end_root: Path | None = None, extra_args: tuple[str, ...] = (),
                 comfy_dir: Path | None = None, extra_env: dict[str, str] | None = None):
        """`pack_folder`: the folder name the pack has in custom_nodes (users clone it under any name);
        `front_end_root`: serve that frontend build instead of the installed comfyui-frontend-package;
        `extra_args`: more main.py flags; `comfy_dir`: another ComfyUI tree (default COMFYUI_DIR);
        `extra_env`: more environment for the server (e.g. PYTHONPATH to that tree's own packages)."""
        self.models_dir, self.input_dir, self.output_dir = Path(models_dir), Path(input_dir), Path(output_dir)
        self.pack_folder, self.front_end_root = pack_folder, front_end_root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cpu = cpu
        self.extra_args = list(extra_args)  # more ComfyUI command-line options (e.g. --front-end-root)
        self.comfy_dir = Path(comfy_dir or COMFYUI_DIR)
        self.extra_env = dict(extra_env or {})
        self.work = Path(tempfile.mkdtemp(prefix="sonic-comfy-"))
        self.log_path = log_path or self.work / "comfyui.log"
        self.process: subprocess.Popen | None = None

    def _config(self) -> Path:
        custom_nodes = self.work / "custom_nodes"
        custom_nodes.mkdir(exist_ok=True)
        link = custom_nodes / self.pack_folder
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        yaml = self.work / "extra_model_paths.yaml"
        yaml.write_text("sonic_demo:\n"
                        f"  base_path: {self.models_dir}\n"
                        "  checkpoints: checkpoints\n"
                        "  sonic: sonic\n"
                        f"  custom_nodes: {custom_nodes}\n")
        return yaml

    def start(self, timeout: float = 180) -> "HeadlessComfy":
        if self.cpu is None:
            import torch

            self.cpu = not torch.cuda.is_available()
        args = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch", "--extra-model-paths-config", str(self._config()),
                "--input-directory", str(self.input_dir), "--output-directory", str(self.output_dir),
                "--user-directory", str(self.work / "user"), "--temp-directory", str(self.work)]
        if self.cpu:
            args.append("--cpu")
        if self.front_end_root is not None:
            args += ["--front-end-root", str(self.front_end_root)]
        args += self.extra_args
        (self.work / "user").mkdir(exist_ok=True)
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        self.process = subprocess.Popen(args, cwd=self.comfy_dir, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up (code {self.process.returncode}); "
                                   f"see {self.log_path}:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        log = self.log()
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{log[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 10) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict, timeout: float = 30) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def submit(self, prompt: dict) -> str:
        try:
            answer = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"ComfyUI refused the workflow: {e.read().decode(errors='replace')}") from None
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 1800, on_poll=None) -> dict:
        """The /history entry once the prompt finished (success or error)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI stopped while running the workflow:\n{self.log()[-3000:]}")
            if on_poll is not None:
                on_poll()
            time.sleep(0.5)
        raise TimeoutError(f"the workflow did not finish within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        shutil.rmtree(self.work, ignore_errors=True)  # (a log_path given by the caller lives elsewhere and stays)

    def __enter__(self) -> "HeadlessComfy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
