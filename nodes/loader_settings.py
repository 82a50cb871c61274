"""The loader's expert settings (precision, weight storage, memory) as their own node, so the loader shows only its
files; and the rule that moves the settings of prompts saved before that into one.

Compiling is core's TorchCompileModel on the loader's MODEL (nodes/model_tools.py reads it), so a saved
`compile: true` becomes that node.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from comfy_api.latest import io

from . import menu
from .advanced import advanced

SonicSettings = io.Custom("SONIC_LOADER_SETTINGS")


@dataclass(frozen=True)
class LoaderSettings:
    dtype: str = "auto"
    low_vram: str = "auto"
    weight_dtype: str = "default"


DEFAULTS = LoaderSettings()
# The loader's own widgets before the settings moved out, in their saved order (UI workflows keep values by
# position: web/loader_migration.js moves these, this module moves them in API prompts).
OLD_SETTING_KEYS = ("dtype", "low_vram", "compile", "weight_dtype")


WEIGHT_DTYPE_TIP = ("How the UNet's weights are stored. fp8 halves its VRAM (≈1.6 GB instead of 3.2) and computes "
                    "in `dtype`, cast per layer; an approximation of the official weights, not parity. default: "
                    "stored in `dtype`.")
OUTPUT_TIP = "For the settings input of 'Load SVD + Sonic weights'."


class SonicLoaderSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicLoaderSettings",
            display_name="Sonic Loader Settings",
            category=menu.LOADERS,
            description="Precision, weight storage and memory mode of 'Load SVD + Sonic weights' (connect to its "
                        "settings input; without it the defaults below apply). To compile the UNet, put core's "
                        "TorchCompileModel after the loader's model output.",
            inputs=[
                io.Combo.Input("dtype", options=["auto", "fp16", "bf16", "fp32"], default=DEFAULTS.dtype,
                               tooltip="UNet precision. auto: ComfyUI's choice for your GPU (fp32 on CPU). Try bf16 "
                                       "or fp32 if the video comes out black."),
                io.Combo.Input("low_vram", options=["auto", "on", "off"], default=DEFAULTS.low_vram,
                               tooltip="auto: the sampler picks the fastest way that fits the free VRAM (guidance "
                                       "rows batched or one at a time, part of the UNet offloaded when needed) and "
                                       "logs it; --lowvram means on. on: the three guidance passes one after another "
                                       "and the attention in slices. off: always batched (fastest, most VRAM)."),
                io.Combo.Input("weight_dtype", options=["default", "fp8_e4m3fn", "fp8_e5m2"],
                               default=DEFAULTS.weight_dtype, tooltip=WEIGHT_DTYPE_TIP, **advanced()),
            ],
            outputs=[SonicSettings.Output(display_name="settings", tooltip=OUTPUT_TIP)],
        )

    @classmethod
    def execute(cls, **settings: str) -> io.NodeOutput:  # its inputs are the fields of LoaderSettings
        return io.NodeOutput(LoaderSettings(**settings))


def _free_id(prompt: dict, base: str) -> str:
    n = 0
    while f"{base}.{n}" in prompt:
        n += 1
    return f"{base}.{n}"


def migrate_prompt(prompt: dict) -> dict:
    """An API prompt with the loader's settings in the new shape: old settings keys on a SonicLoader become a
    SonicLoaderSettings node wired to it (when any differs from the default), and `compile: true` a core
    TorchCompileModel between the loader's MODEL and every node that used it. A current prompt comes back equal."""
    prompt = copy.deepcopy(prompt)
    for node_id, node in list(prompt.items()):
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        if node.get("class_type") != "SonicLoader" or not any(k in inputs for k in OLD_SETTING_KEYS):
            continue
        old = {key: inputs.pop(key) for key in OLD_SETTING_KEYS if key in inputs}
        values = {key: old.get(key, getattr(DEFAULTS, key)) for key in ("dtype", "low_vram", "weight_dtype")}
        if LoaderSettings(**values) != DEFAULTS and "settings" not in inputs:
            settings_id = _free_id(prompt, f"{node_id}.settings")
            prompt[settings_id] = {"class_type": "SonicLoaderSettings", "inputs": values}
            inputs["settings"] = [settings_id, 0]
        if old.get("compile") is True:
            _insert_compile(prompt, node_id)
        logging.info("Sonic: moved the loader settings of node %s (%s) to their new nodes", node_id,
                     ", ".join(f"{k}={v}" for k, v in old.items()))
    return prompt


MODEL_OUTPUT = 3  # the loader's MODEL output index


def _insert_compile(prompt: dict, loader_id: str) -> None:
    compile_id = _free_id(prompt, f"{loader_id}.compile")
    for node in prompt.values():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == loader_id \
                    and value[1] == MODEL_OUTPUT:
                node["inputs"][name] = [compile_id, 0]
    prompt[compile_id] = {"class_type": "TorchCompileModel",
                          "inputs": {"model": [loader_id, MODEL_OUTPUT], "backend": "inductor"}}


def on_prompt(json_data: dict) -> dict:
    """ComfyUI's on-prompt hook (PromptServer.add_on_prompt_handler): POST /prompt bodies migrated before core
    validates them."""
    if isinstance(json_data.get("prompt"), dict):
        json_data["prompt"] = migrate_prompt(json_data["prompt"])
    return json_data


def register_prompt_migration() -> bool:
    """Hook the migration into the running server; False where there is none (the pack imported by a script)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None or on_prompt in server.on_prompt_handlers:
        return False
    server.add_on_prompt_handler(on_prompt)
    return True
