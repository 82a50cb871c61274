"""Run API-format prompts in the real ComfyUI runtime, in this process, with the pack loaded by ComfyUI's own loader."""
from __future__ import annotations

import asyncio
import importlib
import uuid
from pathlib import Path

from conftest import REPO
from tools.comfy_runtime import import_comfy

import_comfy()
import execution  # noqa: E402  (ComfyUI's)
import folder_paths  # noqa: E402
import nodes  # noqa: E402  (ComfyUI's core `nodes`, never the pack's)

_state: dict = {}


class RecordingServer:
    """What PromptExecutor needs of a server: records every message it sends."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.sockets_metadata = {}
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


def load_runtime() -> dict:
    """Core's extra nodes plus this pack through nodes.load_custom_node (once per process)."""
    if not _state:
        async def init():
            await nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
            ok = await nodes.load_custom_node(str(REPO))
            return ok

        _state["pack_loaded"] = asyncio.run(init())
        _state["server"] = RecordingServer()
        _state["executor"] = execution.PromptExecutor(_state["server"], cache_type=False, **_no_cache_arguments())
    return _state


def _no_cache_arguments() -> dict:
    """PromptExecutor's cache settings for 'no cache' in the running ComfyUI (0.3.64 takes cache_size; later ones
    cache_args, with more keys over time)."""
    import inspect

    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return {"cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}}
    return {"cache_size": None}


def use_models_dir(models: Path, output: Path, inputs: Path | None = None) -> None:
    """Point ComfyUI's checkpoints and sonic folders at `models`, and its output (and input) folders."""
    folder_paths.add_model_folder_path("checkpoints", str(models / "checkpoints"), is_default=True)
    folder_paths.add_model_folder_path("sonic", str(models / "sonic"), is_default=True)
    folder_paths.set_output_directory(str(output))
    if inputs is not None:
        folder_paths.set_input_directory(str(inputs))
    folder_paths.filename_list_cache.clear()


class PromptFailed(Exception):
    pass


def _as_posted(prompt: dict) -> dict:
    """The prompt as POST /prompt hands it to validation: after the pack's on-prompt hook, which moves the loader
    settings of prompts saved by older versions (nodes/loader_settings.py)."""
    from tools.comfy_runtime import import_pack

    return importlib.import_module(f"{import_pack().__name__}.nodes.loader_settings").migrate_prompt(prompt)


def run_prompt(prompt: dict) -> dict:
    """Validate and execute an API-format prompt; returns the history entry's outputs. Raises PromptFailed."""
    state = load_runtime()
    prompt = _as_posted(prompt)
    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise PromptFailed(f"invalid prompt: {valid[1]} {valid[3]}")
    server = state["server"]
    server.messages.clear()
    executor = state["executor"]
    executor.execute(prompt, prompt_id, {"client_id": "tests"}, valid[2])
    if not executor.success:
        errors = [d for e, d in server.messages if e in ("execution_error", "execution_interrupted")]
        raise PromptFailed(errors[-1] if errors else "execution failed")
    return executor.history_result["outputs"]
