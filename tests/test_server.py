"""The real ComfyUI server, headless on 127.0.0.1, loading this pack through an extra_model_paths.yaml
`custom_nodes:` entry: the pack imports cleanly, /object_info documents every Sonic node, the shipped API
workflows run over HTTP (/prompt, then /history), and the web extension is served."""
import urllib.request

import pytest

from comfy_server import SHORT_AUDIO_SECONDS, api_workflows, cpu_friendly, fallback_prompt, fill_defaults, \
    load_json, pack_name
from conftest import REPO

pytest_plugins = ["comfy_server_fixture"]  # the session's one server

CORE_SONIC_NODES = {"SonicLoader", "SonicAudioEncode", "SonicMotionBuckets", "SonicSampler"}
GENERATION_FPS = 12.5
WORKFLOWS = api_workflows()
# The dialogue needs its two faces found or masked: it runs in tests/test_workflows.py (face detector) and
# tests/test_device_workflows.py (masks); over HTTP it would repeat them at 40 s on a CPU.
OVER_HTTP = [w for w in WORKFLOWS if w.stem != "sonic_dialogue"]


def test_the_pack_imports_without_failures(comfy_server):
    log = comfy_server.log()
    pack = str(comfy_server.work / "custom_nodes")
    # Core's own extras report their failures too ("IMPORT FAILED: nodes_glsl.py" where a core extra's optional
    # package is missing): those are core's and this environment's; the pack's import is judged on its own lines.
    assert f"Cannot import {pack}" not in log, log[-4000:]
    imported = [line for line in log.splitlines() if " seconds" in line and pack in line]
    assert len(imported) == 1, f"the pack is not in ComfyUI's import times:\n{log[-4000:]}"
    assert "IMPORT FAILED" not in imported[0], imported[0]
    # web/ is served once, by WEB_DIRECTORY: a pyproject `web` entry would serve it a second time under the project
    # name whenever the folder is named otherwise (tests/test_browser.py loads the pack from such a folder).
    assert "register web folder" not in log, "pyproject.toml's [tool.comfy] web serves web/ a second time"


# The node menu's folders, one per stage of the pipeline (nodes/menu.py), each holding at least one node.
STAGE_FOLDERS = {"Sonic/loaders", "Sonic/conditioning", "Sonic/sampling", "Sonic/video", "Sonic/speakers"}


def test_the_pack_registers_through_comfy_entrypoint_with_its_nodes_in_stage_folders(comfy_server):
    """V3's public entry: the pack module offers `comfy_entrypoint` and no NODE_CLASS_MAPPINGS (which ComfyUI would
    take first), and /object_info files every Sonic node under its stage."""
    from conftest import REPO

    source = (REPO / "__init__.py").read_text()
    assert "comfy_entrypoint" in source and "NODE_CLASS_MAPPINGS" not in source
    info = comfy_server.get("/object_info", timeout=60)
    folders = {node["category"] for name, node in info.items() if name.startswith("Sonic")}
    assert folders == STAGE_FOLDERS, folders


def test_object_info_documents_every_sonic_node(comfy_server):
    info = comfy_server.get("/object_info", timeout=60)
    sonic = {name: node for name, node in info.items() if name.startswith("Sonic")}
    used = {n["class_type"] for path in WORKFLOWS for n in load_json(path).values()}
    expected = CORE_SONIC_NODES | {name for name in used if name.startswith("Sonic")}
    assert expected <= set(sonic), f"missing: {sorted(expected - set(sonic))}"
    assert {node["python_module"] for node in sonic.values()} == {f"custom_nodes.{pack_name(comfy_server)}"}
    for name, node in sonic.items():
        assert node["description"] and node["category"] in STAGE_FOLDERS, name
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        tooltips = node.get("output_tooltips") or []
        assert len(tooltips) == len(node["output"]) and all(tooltips), f"{name}: an output has no tooltip"


def test_the_web_extension_is_served(comfy_server):
    base = f"/extensions/{pack_name(comfy_server)}/"
    ours = sorted(s[len(base):] for s in comfy_server.get("/extensions") if s.startswith(base))
    shipped = sorted(p.relative_to(REPO / "web").as_posix() for p in (REPO / "web").rglob("*.js"))
    assert ours == shipped and "sonic.js" in shipped
    with urllib.request.urlopen(comfy_server.url + base + "sonic.js", timeout=10) as response:
        assert "javascript" in response.headers["Content-Type"]
        assert response.read() == (REPO / "web" / "sonic.js").read_bytes()


def _check_ui_data(prompt: dict, entry: dict) -> None:
    """The run's UI data has the shape web/sonic.js reads (`executed` events carry the same dicts). Nodes the
    server answered from its cache (same inputs as an earlier test's run) send none."""
    expected_frames = round(SHORT_AUDIO_SECONDS * GENERATION_FPS)
    cached = {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}
    outputs = entry["outputs"]
    for node_id, node in prompt.items():
        if node_id in cached:
            continue
        if node["class_type"] == "SonicAudioEncode":
            (audio,) = outputs[node_id]["sonic_audio"]
            assert audio == {"frames": expected_frames, "seconds": pytest.approx(SHORT_AUDIO_SECONDS, abs=0.01)}
        elif node["class_type"] == "SonicReferenceImage":  # no face detector in the CPU runs
            (image,) = outputs[node_id]["sonic_image"]
            assert image["faces"] is None and image["face"] is None and image["batch"] == 1
            assert min(image["size"]) == 64 and all(side % 64 == 0 for side in image["size"])
        elif node["class_type"] == "SonicMotionBuckets":
            (motion,) = outputs[node_id]["sonic_motion"]
            for key in ("motion", "expression"):
                stats = motion[key]
                assert stats["min"] <= stats["mean"] <= stats["max"], motion
                # the chart's data: predicted and used values at every frame of a short clip
                assert len(motion["predicted"][key]) == len(motion["used"][key]) == expected_frames, motion
            assert len(motion["seconds"]) == expected_frames and set(motion["sources"]) == {"motion", "expression"}


@pytest.mark.parametrize("workflow", OVER_HTTP or [None], ids=lambda p: p.stem if p else "fallback")
def test_a_workflow_runs_over_http(comfy_server, tiny_models_dir, workflow):
    if workflow is None:  # nothing shipped yet: loader -> Load Audio -> Sonic Encode Audio -> Preview Audio
        prompt = fill_defaults(fallback_prompt(), comfy_server.get("/object_info", timeout=60))
    else:
        prompt = load_json(workflow)
    prompt = cpu_friendly(prompt, tiny_models_dir)
    videos_before = set(comfy_server.output_dir.rglob("*.mp4"))

    entry = comfy_server.wait(comfy_server.submit(prompt), timeout=300)

    status = entry["status"]
    errors = [m for m in status.get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
    assert status["status_str"] == "success", errors
    _check_ui_data(prompt, entry)
    if any(n["class_type"] in ("SaveVideo", "SonicSaveVideo") for n in prompt.values()):
        new_videos = set(comfy_server.output_dir.rglob("*.mp4")) - videos_before
        assert len(new_videos) == 1 and next(iter(new_videos)).stat().st_size > 1000, new_videos
