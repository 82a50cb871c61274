"""The short loader: its settings in 'Sonic Loader Settings', prompts saved with the old loader widgets migrated
(settings node, core's TorchCompileModel for `compile`), and a shipped-style API workflow with core's
TorchCompileModel between the loader and the sampler that runs compiled."""
import copy
import json
import shutil

import pytest

from comfy_harness import run_prompt, use_models_dir
from conftest import REPO
from tools.comfy_runtime import import_pack

import_pack()
from sonic_pack.nodes import loader_settings  # noqa: E402
from sonic_pack.nodes.advanced import schema_has_advanced  # noqa: E402
from sonic_pack.nodes.loader_settings import LoaderSettings, SonicLoaderSettings, migrate_prompt  # noqa: E402
from sonic_pack.nodes.loaders import SonicLoader  # noqa: E402

BASIC = REPO / "workflows" / "api" / "sonic_basic.json"
CUSTOM = REPO / "workflows" / "api" / "sonic_custom_sampler.json"


def _shipped(path=BASIC) -> dict:
    return json.loads(path.read_text())


def _loader_id(prompt: dict) -> str:
    return next(k for k, n in prompt.items() if n["class_type"] == "SonicLoader")


def _as_saved_before(prompt: dict, **settings) -> dict:
    """The prompt as an older version saved it: the settings as the loader's own inputs."""
    old = copy.deepcopy(prompt)
    old[_loader_id(old)]["inputs"].update({"dtype": "auto", "low_vram": "auto", "compile": False} | settings)
    return old


def test_the_loader_shows_its_files_and_the_settings_node_keeps_the_old_defaults():
    widgets = [i.id for i in SonicLoader.define_schema().inputs if not i.optional]
    assert widgets == ["svd_checkpoint", "unet", "audio2token", "audio2bucket", "whisper", "face_detector", "rife"]
    schema = SonicLoaderSettings.define_schema()
    assert {i.id: i.default for i in schema.inputs} == {"dtype": "auto", "low_vram": "auto",
                                                        "weight_dtype": "default"}
    assert all(i.tooltip for i in schema.inputs) and schema.category == "Sonic/loaders"
    made = SonicLoaderSettings.execute(dtype="bf16", low_vram="on", weight_dtype="fp8_e4m3fn").args[0]
    assert made == LoaderSettings("bf16", "on", "fp8_e4m3fn")


def test_expert_inputs_are_advanced_where_the_schema_can_say_so():
    inputs = {i.id: i for i in [*SonicLoader.define_schema().inputs, *SonicLoaderSettings.define_schema().inputs]}
    expert = {name for name, i in inputs.items() if getattr(i, "advanced", None)}
    if schema_has_advanced():  # ComfyUI 0.33.0's io; 0.3.75's has no such flag
        assert expert == {"vae", "clip_vision", "weight_dtype"}
        assert SonicLoaderSettings.GET_SCHEMA().get_v1_info(SonicLoaderSettings).input["required"][
            "weight_dtype"][1]["advanced"] is True
    else:
        assert expert == set()


def test_a_current_prompt_is_left_as_it_is():
    for path in (BASIC, CUSTOM):
        assert migrate_prompt(_shipped(path)) == _shipped(path)


def test_old_default_settings_just_leave_the_loader():
    migrated = migrate_prompt(_as_saved_before(_shipped()))
    assert migrated == _shipped()


def test_old_settings_become_a_settings_node_and_compile_becomes_cores_node():
    shipped = _shipped(CUSTOM)
    loader = _loader_id(shipped)
    old = _as_saved_before(shipped, dtype="bf16", low_vram="on", compile=True, weight_dtype="fp8_e4m3fn")
    migrated = migrate_prompt(old)
    settings_id, compile_id = f"{loader}.settings.0", f"{loader}.compile.0"
    assert migrated[loader]["inputs"] == shipped[loader]["inputs"] | {"settings": [settings_id, 0]}
    assert migrated[settings_id] == {"class_type": "SonicLoaderSettings",
                                     "inputs": {"dtype": "bf16", "low_vram": "on", "weight_dtype": "fp8_e4m3fn"}}
    assert migrated[compile_id] == {"class_type": "TorchCompileModel",
                                    "inputs": {"model": [loader, 3], "backend": "inductor"}}
    users = {k for k, n in shipped.items() for v in n["inputs"].values() if v == [loader, 3]}
    assert users and all(migrated[k]["inputs"]["model"] == [compile_id, 0] for k in users)
    untouched = {k for k in shipped if k not in users and k != loader}
    assert all(migrated[k] == shipped[k] for k in untouched)
    assert loader_settings.on_prompt({"prompt": old, "client_id": "x"})["prompt"] == migrated


@pytest.fixture
def short_run(tiny_models_dir, tmp_path):
    """Inputs for the shipped basic workflow at a CPU size: 10 frames, 2 steps, the whole picture."""
    from comfy_server import SHORT_AUDIO_SECONDS, write_short_wav

    inputs = tmp_path / "input"
    inputs.mkdir()
    shutil.copy(REPO / "assets" / "sonic_portrait.png", inputs / "sonic_portrait.png")
    write_short_wav(REPO / "assets" / "sonic_voice.wav", inputs / "sonic_voice.wav", SHORT_AUDIO_SECONDS)
    use_models_dir(tiny_models_dir, tmp_path / "output", inputs)
    prompt = _shipped()
    for node in prompt.values():
        inputs_ = node["inputs"]
        if node["class_type"] == "SonicLoader":
            inputs_.update(svd_checkpoint="svd_xt_random.safetensors", face_detector="none")
        elif node["class_type"] == "SonicReferenceImage":
            inputs_.update(no_face="whole image", resolution=64)
        elif node["class_type"] == "SonicSampler":
            inputs_.update(steps=2)
    return prompt


def test_loader_then_cores_torch_compile_then_the_sampler_runs_compiled(short_run, tmp_path):
    """The API workflow with core's TorchCompileModel wired loader → TorchCompileModel → Sonic KSampler (the
    backend its combo offers that compiles quickly on a CPU: dynamo's graph without CUDA graphs)."""
    import torch._dynamo.utils as dynamo_utils

    prompt = short_run
    loader = _loader_id(prompt)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "SonicSampler")
    assert prompt[sampler]["inputs"]["model"] == [loader, 3]
    prompt["90"] = {"class_type": "TorchCompileModel", "inputs": {"model": [loader, 3], "backend": "cudagraphs"}}
    prompt[sampler]["inputs"]["model"] = ["90", 0]
    prompt[loader]["inputs"]["settings"] = ["91", 0]
    prompt["91"] = {"class_type": "SonicLoaderSettings",
                    "inputs": {"dtype": "fp32", "low_vram": "off", "weight_dtype": "default"}}
    dynamo_utils.counters.clear()
    outputs = run_prompt(prompt)
    report = outputs[sampler]["sonic_sampling"][0]
    assert report["compiled"] == "cudagraphs" and report["first_window_seconds"] > 0, report
    assert dynamo_utils.counters["stats"]["unique_graphs"] >= 1
    assert sum(dynamo_utils.counters["graph_break"].values()) == 0, dict(dynamo_utils.counters["graph_break"])
    assert len(list((tmp_path / "output").rglob("*.mp4"))) == 1
