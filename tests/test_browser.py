"""The pack in a real browser: Debian's headless Chromium, driven over the DevTools protocol, on the page the
headless ComfyUI server serves. Every shipped UI workflow renders with all its nodes and widgets, the web
extension's controls answer real mouse clicks, a run queued from the page fills its readouts, and the page logs
no errors (tests/browser/comfy_page.py lists the closed network's noise that is tolerated, and why).

Two frontends: the one the CI ComfyUI ships (comfyui-frontend-package 1.32.9) and today's 1.58.1 (installed by
tools/setup_env.sh into its own folder, served with --front-end-root), in its classic and its Nodes 2.0 views. The
1.58.1 server loads the pack from a folder named otherwise than the project, as users clone it."""
import asyncio
import importlib.metadata
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from browser.cdp import CHROMIUM, Chromium
from browser.comfy_page import click_widget, focus_node, frame_nodes, frontend_version, graph_summary, \
    load_workflow, node_state, nodes2_widget_canvas, open_comfy, pick_combo, unexpected_errors, wait_for_nodes2
from comfy_server import ARTIFACTS, ASSETS, SHORT_AUDIO, SHORT_AUDIO_SECONDS, load_json, running_comfy, \
    ui_workflows, write_short_wav
from conftest import REPO
from sonic_model.motion.motion_curve import parse_keyframes
from tools.comfy_runtime import VENV_DIR

pytest_plugins = ["comfy_server_fixture"]  # the session's one server

CI, NEW = "ci", "1.58.1"  # the CI runtime's own frontend; today's (tools/setup_env.sh installs it)
NEW_FRONTEND_ROOT = VENV_DIR / f"frontend-{NEW}" / "comfyui_frontend_package" / "static"
RENAMED_PACK = "ComfyUI-Sonic"  # a clone's folder name other than the project's (sonic-portrait)
CLASSIC, NODES2 = "classic", "nodes2"
# A second clip for the Nodes 2.0 run on the same server: a node whose inputs did not change is answered from the
# cache and sends no results, so that run differs in the clip (audio, motion) and in expand_ratio (image).
SECOND_AUDIO, SECOND_AUDIO_SECONDS = "sonic_voice_shorter.wav", 0.56
DOCS_SCREENSHOTS = {(CI, CLASSIC): REPO / "docs" / "workflow.png",
                    (NEW, CLASSIC): REPO / "docs" / f"frontend-{NEW}-classic.png",
                    (NEW, NODES2): REPO / "docs" / f"frontend-{NEW}-nodes2.png"}
MOTION_CURVES_SCREENSHOT = REPO / "docs" / "motion-curves.png"
MAX_DOCS_WIDTH = 1600
SCREENSHOT_WORKFLOW = "sonic_basic"  # the one the README describes
MANUAL = 32  # where a bucket slider lands when its auto toggle is switched off (web/sonic.js)
FRONTEND_ONLY = {"upload"}  # widgets the frontend adds to core nodes with a file upload
OUTPUT_STAGE = {"SonicDecode", "SonicInterpolate", "SonicSaveVideo", "CreateVideo", "SaveVideo"}
CLIENT_ONLY = {"SonicMotionBuckets": ["head_motion auto", "expression auto", "sonic_motion_readout",
                                      "sonic_motion_chart"],
               "SonicSampler": ["sonic_cfg_audio_hint"], "SonicAudioEncode": ["sonic_audio_readout"],
               "SonicSpeakers": ["sonic_speakers_readout"]}

# Random weights on a CPU: the checkpoint that exists, no face detector, a small picture, 2 steps, a short clip.
CPU_FRIENDLY = """(() => {{
  const set = (type, values) => {{
    for (const node of app.graph._nodes.filter(n => n.type === type))
      for (const [name, v] of Object.entries(values)) {{
        const w = node.widgets.find(w => w.name === name);
        w.value = typeof v === 'function' ? v(w) : v;
      }}
  }};
  set('SonicLoader', {{svd_checkpoint: w => w.options.values.find(v => v.startsWith('svd_xt')),
                       face_detector: 'none'}});
  set('SonicReferenceImage', {{no_face: 'whole image', resolution: 64, expand_ratio: {expand_ratio}}});
  set('SonicSampler', {{steps: 2}});
  set('LoadAudio', {{audio: {audio}}});
  return true;
}})()"""
# A head-motion curve for the Motion Buckets node in the 1.58.1 runs (the CI frontend's run, the README's picture of
# the basic workflow, keeps the prediction): placed under Encode Audio, keyframes inside the short clips.
CURVE_KEYFRAMES = "0: 20\n0.3: 70\n0.5: 30"
ADD_CURVE = """((motionId, keyframes) => {
  const motion = app.graph.getNodeById(motionId);
  const curve = LiteGraph.createNode('SonicMotionCurve');
  curve.pos = [motion.pos[0] - 420, motion.pos[1] + 450];
  app.graph.add(curve);
  curve.widgets.find(w => w.name === 'keyframes').value = keyframes;
  curve.widgets.find(w => w.name === 'interpolation').value = 'smooth';
  curve.connect(0, motion, motion.findInputSlot('head_motion_curve'));
  return String(curve.id);
})"""
CHART_STATE = """((motionId) => {
  const w = app.graph.getNodeById(motionId).widgets.find(w => w.name === 'sonic_motion_chart');
  return w && w.data ? {data: w.data, height: w.computeSize(300)[1]} : null;
})"""
RUN_INPUTS = {CLASSIC: dict(audio=SHORT_AUDIO, seconds=SHORT_AUDIO_SECONDS, expand_ratio=0.5),
              NODES2: dict(audio=SECOND_AUDIO, seconds=SECOND_AUDIO_SECONDS, expand_ratio=0.55)}

# Resolve with the prompt id once the queued run ends (null if it failed).
RUN_AND_WAIT = """new Promise((resolve) => {
  const api = window.comfyAPI.api.api;
  api.addEventListener('execution_success', (e) => resolve({ok: true, prompt_id: e.detail.prompt_id}));
  api.addEventListener('execution_error', (e) => resolve({ok: false, error: e.detail}));
  app.queuePrompt(0, 1);
})"""


def _workflows() -> list[tuple[str, dict]]:
    found = [(p.stem, load_json(p)) for p in ui_workflows()]
    assert found, "no UI workflow in workflows/: the browser test needs at least one"
    return found


@pytest.fixture(scope="module")
def new_frontend_server(tiny_models_dir, tmp_path_factory):
    """A second server: frontend 1.58.1, the pack in custom_nodes/ComfyUI-Sonic."""
    assert (NEW_FRONTEND_ROOT / "index.html").is_file(), \
        f"frontend {NEW} is not installed in {NEW_FRONTEND_ROOT.parents[1]}: run tools/setup_env.sh"
    with running_comfy(tiny_models_dir, tmp_path_factory.mktemp("comfy_new_frontend"),
                       log_name=f"comfyui-server-frontend-{NEW}.log", pack_folder=RENAMED_PACK,
                       front_end_root=NEW_FRONTEND_ROOT) as server:
        write_short_wav(ASSETS / "sonic_voice.wav", server.input_dir / SECOND_AUDIO, SECOND_AUDIO_SECONDS)
        yield server


def _server(request, frontend: str):
    """The server that serves `frontend` (started on first use)."""
    return request.getfixturevalue("comfy_server" if frontend == CI else "new_frontend_server")


async def _open(browser, server, frontend: str, view: str = CLASSIC):
    """A tab with the frontend asked for (checked by its version) in the view asked for."""
    page = await open_comfy(browser, server.url, nodes2=None if frontend == CI else view == NODES2)
    expected = importlib.metadata.version("comfyui-frontend-package") if frontend == CI else NEW
    assert await frontend_version(page) == expected
    return page


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def browser(loop, tmp_path_factory):
    """One headless Chromium for the module; each test opens its own tab (so its own error log)."""
    chromium = Chromium(tmp_path_factory.mktemp("chromium") / "profile")
    loop.run_until_complete(chromium.__aenter__())
    try:
        yield chromium
    finally:
        loop.run_until_complete(chromium.__aexit__(None, None, None))


@pytest.fixture(autouse=True)
def close_tabs_after_each_test(browser, loop):
    """Each test's tabs close after it: an open ComfyUI page keeps polling its server and drawing."""
    yield
    loop.run_until_complete(browser.close_pages())


def _assert_no_errors(page, url: str) -> None:
    errors = unexpected_errors(page.entries, url)
    assert not errors, "the page logged errors:\n" + "\n".join(errors)
    ours = [str(e) for e in page.entries if "[sonic]" in e.text]
    assert not ours, "web/sonic.js logged:\n" + "\n".join(ours)


def _assert_values_match(widgets: list[dict], saved: list, where, new_in_core: dict) -> None:
    """The workflow's widgets_values fill the saved widgets in order (positionally: one missing in the middle would
    shift the rest). After them, a file written by a tool may leave out the frontend's own upload buttons (Load
    Image, Load Audio), widgets whose input is linked (their value is unused), and widgets a core node gained after
    the file was written (`new_in_core`: name -> default), which keep their defaults."""
    values = [w for w in widgets if w["serialize"]]
    assert [w["value"] for w in values[:len(saved)]] == saved, where
    tail = values[len(saved):]
    assert all(w["name"] in FRONTEND_ONLY or w["linked"] or new_in_core.get(w["name"], object()) == w["value"]
               for w in tail), (where, tail)


def _optional_core_defaults(server, node_type: str) -> dict:
    """A core node's optional widget inputs with their defaults, from the running server (empty for the pack's
    nodes, which the shipped files must match exactly)."""
    if node_type.startswith("Sonic"):
        return {}
    with urllib.request.urlopen(f"{server.url}/object_info/{node_type}", timeout=60) as response:
        optional = json.load(response)[node_type]["input"].get("optional", {})
    return {name: spec[1]["default"] for name, spec in optional.items()
            if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]}


def test_the_browser_is_debians_chromium(browser):
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30).stdout
    number = re.search(r"Chromium (\d+\.\d+\.\d+\.\d+)", version).group(1)
    assert browser.version["Browser"] == f"Chrome/{number}"
    assert Path(f"/proc/{browser.process.pid}/exe").resolve() == Path("/usr/lib/chromium/chromium")
    assert "HeadlessChrome" in browser.version["User-Agent"]


@pytest.mark.parametrize("frontend", [CI, NEW])
def test_every_shipped_workflow_renders_with_its_widgets(browser, loop, request, frontend):
    server = _server(request, frontend)

    async def scenario():
        page = await _open(browser, server, frontend)
        for name, workflow in _workflows():
            await load_workflow(page, workflow)
            await page.screenshot(ARTIFACTS / f"browser-loaded-{name}-{frontend}.png")
            # Node ids: numbers in a saved workflow and in frontend 1.32.9's graph, strings in 1.58.1's.
            nodes = {str(n["id"]): n for n in await graph_summary(page)}
            assert sorted(nodes) == sorted(str(n["id"]) for n in workflow["nodes"]), name
            for saved in workflow["nodes"]:
                node = nodes[str(saved["id"])]
                assert node["type"] == saved["type"], (name, saved["id"])
                _assert_values_match(node["widgets"], saved.get("widgets_values", []), (name, saved["type"]),
                                     _optional_core_defaults(server, saved["type"]))
                assert all(w["drawn"] for w in node["widgets"]), (name, saved["type"], node["widgets"])
                extra = [w["name"] for w in node["widgets"] if not w["serialize"] and w["name"]
                         in CLIENT_ONLY.get(node["type"], [])]
                assert extra == CLIENT_ONLY.get(node["type"], []), (name, saved["type"])
            # The extension's widgets stay client-only: saving round-trips and the prompt is the API twin.
            saved_again = dict(map(tuple, await page.evaluate(
                "app.graph.serialize().nodes.map(n => [String(n.id), n.widgets_values ?? []])")))
            for saved in workflow["nodes"]:
                again = saved_again[str(saved["id"])]
                assert again[:len(saved.get("widgets_values", []))] == saved.get("widgets_values", []), saved["type"]
                if saved["type"] in CLIENT_ONLY:  # no holes, no extra entries from the extension's widgets
                    assert again == [w["value"] for w in nodes[str(saved["id"])]["widgets"] if w["serialize"]], again
            prompt = await page.evaluate("app.graphToPrompt().then(p => p.output)")
            twin = REPO / "workflows" / "api" / f"{name}.json"
            if twin.exists():
                expected = load_json(twin)
                assert {k: v["class_type"] for k, v in prompt.items()} == \
                    {k: v["class_type"] for k, v in expected.items()}, name
                for node_id, node in expected.items():  # core's Load Audio also sends its player ('audioUI')
                    sent = prompt[node_id]["inputs"]
                    exact = node["class_type"] in CLIENT_ONLY
                    assert (sent if exact else {k: sent.get(k) for k in node["inputs"]}) == node["inputs"], node
        _assert_no_errors(page, server.url)

    loop.run_until_complete(scenario())


OLD_LOADER_SETTINGS = ["fp16", "on", True, "fp8_e4m3fn"]  # dtype, low_vram, compile, weight_dtype, as saved before
MIGRATED = """(() => {
    const graph = app.graph;
    const link = (id) => typeof graph.links.get === "function" ? graph.links.get(id) : graph.links[id];
    const loader = graph._nodes.find((n) => n.type === "SonicLoader");
    const settings = graph._nodes.filter((n) => n.type === "SonicLoaderSettings");
    const compilers = graph._nodes.filter((n) => n.type === "TorchCompileModel");
    const into = loader.inputs[loader.findInputSlot("settings")].link;
    const modelUsers = (loader.outputs[loader.findOutputSlot("model")].links ?? []).map((id) => link(id).target_id);
    const compiled = compilers.length ? (compilers[0].outputs[0].links ?? []).map((id) => graph.getNodeById(link(id).target_id).type) : [];
    return {loaderValues: loader.widgets_values ?? loader.widgets.map((w) => w.value),
            settings: settings.map((n) => n.widgets.map((w) => [w.name, w.value])),
            settingsLinked: into != null && settings.length === 1 && link(into).origin_id === settings[0].id,
            compilers: compilers.map((n) => n.widgets.map((w) => [w.name, w.value])),
            modelUsers: modelUsers.map((id) => graph.getNodeById(id).type), compiled};
})()"""


@pytest.mark.parametrize("frontend", [CI, NEW])
def test_a_workflow_saved_with_the_old_loader_settings_keeps_them(browser, loop, request, frontend):
    """Saved before the settings left the loader: four values after its files. They become a Sonic Loader Settings
    node wired to the loader and core's TorchCompileModel on its MODEL, and the prompt carries them."""
    server = _server(request, frontend)
    workflow = load_json(REPO / "workflows" / f"{SCREENSHOT_WORKFLOW}.json")
    loader = next(n for n in workflow["nodes"] if n["type"] == "SonicLoader")
    users = {n["type"] for n in workflow["nodes"] for i in n.get("inputs", [])
             if i.get("link") in set(loader["outputs"][3].get("links") or [])}
    loader["widgets_values"] = loader["widgets_values"] + OLD_LOADER_SETTINGS

    async def scenario():
        page = await _open(browser, server, frontend)
        await load_workflow(page, workflow)
        state = await page.evaluate(MIGRATED)
        assert state["settings"] == [[["dtype", "fp16"], ["low_vram", "on"], ["weight_dtype", "fp8_e4m3fn"]]], state
        assert state["settingsLinked"], state
        assert [dict(c)["backend"] for c in state["compilers"]] == ["inductor"], state
        assert state["modelUsers"] == ["TorchCompileModel"] and set(state["compiled"]) == users, (state, users)
        prompt = await page.evaluate("app.graphToPrompt().then(p => p.output)")
        kinds = [node["class_type"] for node in prompt.values()]
        assert kinds.count("SonicLoaderSettings") == kinds.count("TorchCompileModel") == 1, kinds
        loader_inputs = next(n["inputs"] for n in prompt.values() if n["class_type"] == "SonicLoader")
        assert not set(loader_inputs) & {"dtype", "low_vram", "compile", "weight_dtype"}, loader_inputs
        _assert_no_errors(page, server.url)

    loop.run_until_complete(scenario())


def test_motion_controls_answer_real_clicks(browser, loop, comfy_server):
    async def widgets(page, node_id):
        return {w["name"]: w for w in (await node_state(page, node_id))["widgets"]}

    async def scenario():
        page = await open_comfy(browser, comfy_server.url)
        name, workflow = next(((n, w) for n, w in _workflows()
                               if any(x["type"] == "SonicMotionBuckets" for x in w["nodes"])))
        await load_workflow(page, workflow)
        motion = next(n["id"] for n in workflow["nodes"] if n["type"] == "SonicMotionBuckets")
        await focus_node(page, motion, scale=1.0)

        # Start from auto: the toggle says so and the slider holds -1.
        w = await widgets(page, motion)
        if not w["head_motion auto"]["value"]:
            await click_widget(page, motion, "head_motion auto")
            w = await widgets(page, motion)
        assert w["head_motion auto"]["value"] is True and w["head_motion"]["value"] == -1
        assert "auto" in w["head_motion"]["label"]

        await click_widget(page, motion, "head_motion auto")  # auto off: a sensible fixed value
        w = await widgets(page, motion)
        assert w["head_motion auto"]["value"] is False and w["head_motion"]["value"] == MANUAL
        assert "auto" not in w["head_motion"]["label"]

        await click_widget(page, motion, "head_motion auto")  # back on: -1
        w = await widgets(page, motion)
        assert w["head_motion auto"]["value"] is True and w["head_motion"]["value"] == -1

        await click_widget(page, motion, "head_motion", fraction=0.75)  # moving the slider turns auto off
        w = await widgets(page, motion)
        low, high = w["head_motion"]["min"], w["head_motion"]["max"]
        assert w["head_motion"]["value"] == round(low + 0.75 * (high - low))
        assert w["head_motion auto"]["value"] is False
        assert w["expression auto"]["value"] == (w["expression"]["value"] == -1)  # the other one untouched

        await pick_combo(page, motion, "motion_preset", "intense (2.0)")  # a preset shows its β, locked
        w = await widgets(page, motion)
        assert w["beta"]["value"] == 2.0 and w["beta"]["disabled"]
        await click_widget(page, motion, "beta", fraction=0.1)
        assert (await widgets(page, motion))["beta"]["value"] == 2.0

        await pick_combo(page, motion, "motion_preset", "custom")  # custom: the slider is live
        await click_widget(page, motion, "beta", fraction=0.25)
        w = await widgets(page, motion)
        assert not w["beta"]["disabled"] and w["beta"]["value"] == pytest.approx(0.25 * w["beta"]["max"], abs=0.01)

        prompt = await page.evaluate("app.graphToPrompt().then(p => p.output)")
        inputs = prompt[str(motion)]["inputs"]
        assert inputs["head_motion"] == w["head_motion"]["value"] and inputs["motion_preset"] == "custom"
        assert not set(inputs) & set(CLIENT_ONLY["SonicMotionBuckets"])
        _assert_no_errors(page, comfy_server.url)

    loop.run_until_complete(scenario())


def test_the_extension_tolerates_nodes_without_widgets_and_odd_messages(browser, loop, comfy_server):
    async def scenario():
        page = await open_comfy(browser, comfy_server.url)
        # Bare nodes of each Sonic class (no widgets, as a future version or a broken load could give): the
        # extension adds only what it can, and never throws.
        added = await page.evaluate("""(() => {
          const ext = app.extensions.find(e => e.name === 'sonic.portrait');
          const out = {};
          for (const type of ['SonicMotionBuckets', 'SonicSampler', 'SonicAudioEncode', 'SonicReferenceImage']) {
            const node = new LiteGraph.LGraphNode(type);
            node.comfyClass = type;
            ext.nodeCreated(node);
            ext.loadedGraphNode(node);
            node.configure({id: 1, type, widgets_values: []});
            out[type] = (node.widgets || []).map(w => w.name);
          }
          return out; })()""")
        assert added == {"SonicMotionBuckets": ["sonic_motion_readout", "sonic_motion_chart"], "SonicSampler": [],
                         "SonicAudioEncode": ["sonic_audio_readout"], "SonicReferenceImage": ["sonic_image_readout"]}
        # `executed` messages for unknown nodes, other node types, or with missing fields change nothing.
        _, workflow = _workflows()[0]
        await load_workflow(page, workflow)
        ids = {n["type"]: n["id"] for n in workflow["nodes"]}
        audio = ids.get("SonicAudioEncode", 1)
        motion = ids.get("SonicMotionBuckets", 1)
        reference = ids.get("SonicReferenceImage", 1)
        await page.evaluate(f"""(() => {{
          const api = window.comfyAPI.api.api;
          const send = (node, output) => api.dispatchCustomEvent('executed', {{node: String(node), output}});
          send(99999, {{sonic_audio: [{{frames: 3, seconds: 0.24}}]}});
          send('77:12', {{sonic_motion: [{{}}]}});
          send({audio}, {{}});
          send({audio}, {{sonic_audio: [{{frames: 'x'}}]}});
          send({motion}, {{sonic_motion: []}});
          send({motion}, null);
          send({reference}, {{sonic_image: [{{faces: 2}}]}});
          return true; }})()""")
        await asyncio.sleep(0.3)
        for node_id in (audio, motion, reference):
            state = await node_state(page, node_id)
            readouts = [w for w in state["widgets"] if w["type"] == "sonic_readout"]
            assert all("after a run" in w["lines"][0] for w in readouts), readouts
        # A full report from the Reference Image node: several faces, a batch cut to its first image, a crop.
        await page.evaluate(f"""(() => {{
          window.comfyAPI.api.api.dispatchCustomEvent('executed', {{node: String({reference}), output: {{sonic_image:
            [{{batch: 2, faces: 2, face: 0, size: [192, 128], crop: true}}]}}}});
          return true; }})()""")
        await asyncio.sleep(0.3)
        lines = {w["name"]: w for w in (await node_state(page, reference))["widgets"]}["sonic_image_readout"]["lines"]
        assert lines == ["2 faces found: animating the largest", "a batch of 2 images: the first is used",
                         "prepared 192×128, cropped around the face"]
        _assert_no_errors(page, comfy_server.url)
        warnings = [str(e) for e in page.entries if e.level == "warning" and "/sonic" in e.url]
        assert not warnings, warnings

    loop.run_until_complete(scenario())


def test_the_pack_loads_once_from_a_folder_of_another_name(browser, loop, new_frontend_server):
    """Cloned as ComfyUI-Sonic: web/ is served once, under that name, so the extension registers once (a second
    copy of sonic.js throws "Extension named 'sonic.portrait' already registered", which 1.58.1 logs as a
    vite:preloadError)."""
    scripts = [s for s in new_frontend_server.get("/extensions") if s.endswith("/sonic.js")]
    assert scripts == [f"/extensions/{RENAMED_PACK}/sonic.js"]

    async def scenario():
        page = await _open(browser, new_frontend_server, NEW)
        loaded = await page.evaluate("performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)"
                                     ".filter(p => p.endsWith('/sonic.js'))")
        assert loaded == scripts
        assert await page.evaluate("app.extensions.filter(e => e.name === 'sonic.portrait').length") == 1
        _assert_no_errors(page, new_frontend_server.url)

    loop.run_until_complete(scenario())


READOUTS = {"SonicAudioEncode": "sonic_audio_readout", "SonicMotionBuckets": "sonic_motion_readout",
            "SonicReferenceImage": "sonic_image_readout"}


def _expected_readouts(history: dict, by_type: dict, seconds: float) -> dict:
    """What each readout must say after the run, from the clip's length and the run's own UI data."""
    expected = {}
    if "SonicAudioEncode" in by_type:
        frames = round(seconds * 12.5)
        expected["SonicAudioEncode"] = [
            f"{seconds:.2f} s → {frames} frames at 12.5 fps, {2 * frames - 1} at 25 fps after RIFE"]
    if "SonicReferenceImage" in by_type:  # the CPU run has no face detector
        (report,) = history["outputs"][str(by_type["SonicReferenceImage"])]["sonic_image"]
        width, height = report["size"]
        expected["SonicReferenceImage"] = ["no face detector: the whole picture is animated",
                                           f"prepared {width}×{height}"]
    return expected


def _check_motion_lines(lines: list[str], summary: dict) -> None:
    assert len(lines) == 2, lines
    for line, key in zip(lines, ("motion", "expression")):
        shown = re.fullmatch(rf"{key} mean (\S+) \(min (\S+), max (\S+)\)", line)
        assert shown, line
        for text, stat in zip(shown.groups(), ("mean", "min", "max")):
            assert float(text) == pytest.approx(summary[key][stat], abs=0.051), (line, summary)


async def _check_motion_chart(page, node_id, summary: dict, seconds: float, view: str, curve: bool) -> None:
    """The chart under Motion Buckets holds the run's data: with the curve, the used head motion is the curve (×β
    1.0), else the prediction; the expression is the prediction. In the Nodes 2.0 view its own canvas shows it,
    none of it cut off."""
    frames = round(seconds * 12.5)
    assert summary["sources"] == {"motion": "curve" if curve else "prediction", "expression": "prediction"}
    assert summary["seconds"] == pytest.approx([i / 12.5 for i in range(frames)])
    expected = parse_keyframes(CURVE_KEYFRAMES, "smooth").sample(frames).tolist() if curve \
        else summary["predicted"]["motion"]
    assert summary["used"]["motion"] == pytest.approx(expected, abs=0.006)
    assert summary["used"]["expression"] == summary["predicted"]["expression"]
    chart = await page.evaluate(f"({CHART_STATE})({json.dumps(str(node_id))})")
    assert chart and chart["height"] >= 100, chart
    assert {k: chart["data"][k] for k in ("seconds", "predicted", "used")} == \
        {k: summary[k] for k in ("seconds", "predicted", "used")}
    if view == NODES2:
        canvas = await nodes2_widget_canvas(page, node_id, "sonic_motion_chart")
        assert canvas and canvas["height"] >= canvas["wanted"], canvas
        mean = sum(summary["used"]["motion"]) / frames
        legend = f"head motion: {summary['sources']['motion']}, mean {mean:.1f}"
        assert {"0 s", f"{(frames - 1) / 12.5:.1f} s", legend} <= set(canvas["texts"]), canvas["texts"]


@pytest.mark.parametrize("frontend, view", [(CI, CLASSIC), (NEW, CLASSIC), (NEW, NODES2)])
def test_a_run_queued_from_the_page_fills_the_readouts(browser, loop, request, frontend, view):
    server = _server(request, frontend)
    inputs = RUN_INPUTS[view]

    async def scenario():
        page = await _open(browser, server, frontend, view)
        workflows = dict(_workflows())
        name = SCREENSHOT_WORKFLOW if SCREENSHOT_WORKFLOW in workflows else next(iter(workflows))
        workflow = workflows[name]
        await load_workflow(page, workflow)
        by_type = {n["type"]: n["id"] for n in workflow["nodes"]}
        if view == NODES2:
            await wait_for_nodes2(page, list(by_type.values()))
        await page.evaluate(CPU_FRIENDLY.format(audio=json.dumps(inputs["audio"]),
                                                expand_ratio=inputs["expand_ratio"]))
        motion_id, curve_id = by_type.get("SonicMotionBuckets"), None
        if motion_id is not None and frontend == NEW:  # a curve on head motion: its slider shows it is unused
            curve_id = await page.evaluate(
                f"({ADD_CURVE})({json.dumps(str(motion_id))}, {json.dumps(CURVE_KEYFRAMES)})")
            state = {w["name"]: w for w in (await node_state(page, motion_id))["widgets"]}
            assert "from curve" in state["head_motion"]["label"] and state["head_motion"]["disabled"], state
            assert "from curve" not in state["expression"]["label"] and not state["expression"]["disabled"]
        result = await page.evaluate(RUN_AND_WAIT, timeout=300)
        assert result["ok"], result

        history = server.get(f"/history/{result['prompt_id']}")[result["prompt_id"]]
        cached = {n for kind, data in history["status"]["messages"] if kind == "execution_cached"
                  for n in data["nodes"]}
        assert not cached & {str(by_type[t]) for t in READOUTS if t in by_type}, "a readout node ran from the cache"
        expected = _expected_readouts(history, by_type, inputs["seconds"])
        await asyncio.sleep(0.3)  # the last `executed` message may arrive just after execution_success
        for node_type, readout in READOUTS.items():
            if node_type not in by_type:
                continue
            state = {w["name"]: w for w in (await node_state(page, by_type[node_type]))["widgets"]}
            shown = [state[readout]["lines"]]
            if view == NODES2:  # and what the node's own readout canvas shows, all of it (none cut off below)
                canvas = await nodes2_widget_canvas(page, by_type[node_type], readout)
                assert canvas and canvas["height"] >= canvas["wanted"], (node_type, canvas)
                shown.append(canvas["texts"])
            for lines in shown:
                if node_type == "SonicMotionBuckets":
                    (summary,) = history["outputs"][str(by_type[node_type])]["sonic_motion"]
                    _check_motion_lines(lines, summary)
                else:
                    assert lines == expected[node_type], (node_type, view)
        if "SonicMotionBuckets" in by_type:
            node_id = by_type["SonicMotionBuckets"]
            (summary,) = history["outputs"][str(node_id)]["sonic_motion"]
            markers = {w["name"]: w["marker"] for w in (await node_state(page, node_id))["widgets"]}
            assert markers["head_motion"] == pytest.approx(summary["motion"]["mean"])
            await _check_motion_chart(page, node_id, summary, inputs["seconds"], view, curve=curve_id is not None)
            if (frontend, view) == (NEW, CLASSIC):  # the chart and its curve for the README
                await frame_nodes(page, [node_id, curve_id], zoom=0.9)
                await asyncio.sleep(0.5)
                _save_docs_picture(await page.screenshot(ARTIFACTS / f"browser-motion-curves-{frontend}.png"),
                                   MOTION_CURVES_SCREENSHOT)

        # A picture of the graph up to the sampler after the run, readouts filled, for the README. The widgets go
        # back to the shipped settings (a reader should not copy the CPU test's 2 steps at 64 px), except the
        # audio clip, which the readouts describe.
        await page.evaluate(f"""(() => {{
          for (const saved of {json.dumps(workflow["nodes"])}) {{
            const node = app.graph.getNodeById(saved.id);
            if (!node || saved.type === 'LoadAudio') continue;
            const widgets = node.widgets.filter(w => w.serialize !== false);
            (saved.widgets_values || []).forEach((v, i) => {{ if (widgets[i]) widgets[i].value = v; }});
          }}
          return true; }})()""")
        framed = [n["id"] for n in workflow["nodes"] if n["type"] not in OUTPUT_STAGE] + [curve_id] * bool(curve_id)
        await frame_nodes(page, framed, zoom=0.8)
        await asyncio.sleep(0.5)
        shot = await page.screenshot(ARTIFACTS / f"browser-{name}-{frontend}-{view}.png")
        _assert_no_errors(page, server.url)
        return shot

    _save_docs_picture(loop.run_until_complete(scenario()), DOCS_SCREENSHOTS[frontend, view])


def _save_docs_picture(shot, docs) -> None:
    image = Image.open(shot)
    assert sum(1 for count in image.convert("L").histogram() if count) > 20  # not a blank page
    if image.size[0] > MAX_DOCS_WIDTH:
        height = round(image.size[1] * MAX_DOCS_WIDTH / image.size[0])
        image = image.resize((MAX_DOCS_WIDTH, height), Image.Resampling.LANCZOS)
    docs.parent.mkdir(exist_ok=True)
    image.convert("RGB").quantize(256).save(docs, optimize=True)  # a palette keeps the file small
