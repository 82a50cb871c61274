#!/usr/bin/env python
"""Write the shipped workflows from one description each: the UI format a user drags into ComfyUI
(workflows/NAME.json, also listed in ComfyUI's template browser) and its API-format twin for headless runs
(workflows/api/NAME.json).

    .venv/bin/python tools/workflows.py          # rewrite both formats
    .venv/bin/python tools/workflows.py --check  # exit 1 if a committed file differs (run by the tests)
    .venv/bin/python tools/workflows.py --check-loads  # ... or, on another ComfyUI, if one would not load as meant

Widget order in the UI format comes from the running ComfyUI's node definitions, so the two stay twins.
"""
from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKFLOWS = ROOT / "workflows"
SEED_WIDGETS = {"seed", "noise_seed"}
PACK_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
COMFY_VERSION = "0.3.75"  # the frontend stores a control_after_generate value after these


@dataclass
class Node:
    id: int
    class_type: str
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)  # input name -> (source node id, output index)
    pos: tuple[int, int] = (0, 0)
    title: str | None = None


def _sonic_models(image: str, audio: str) -> list[Node]:
    return [
        Node(1, "SonicLoader", {"svd_checkpoint": "svd_xt_1_1.safetensors", "unet": "unet.pth",
                                "audio2token": "audio2token.pth", "audio2bucket": "audio2bucket.pth",
                                "whisper": "whisper-tiny", "face_detector": "yoloface_v5m.pt",
                                "rife": "RIFE/flownet.pkl"}, pos=(40, 80)),
        Node(2, "LoadImage", {"image": image}, pos=(40, 520)),
        Node(3, "LoadAudio", {"audio": audio}, pos=(40, 900)),
        Node(4, "SonicAudioEncode", {}, {"sonic_model": (1, 0), "audio": (3, 0)}, pos=(460, 900)),
        Node(5, "SonicReferenceImage", {"resolution": 512, "crop": False, "expand_ratio": 0.5, "no_face": "error",
                                        "face_index": -1},
             {"sonic_model": (1, 0), "vae": (1, 1), "clip_vision": (1, 2), "image": (2, 0)}, pos=(460, 420)),
    ]


def _sampler(motion: dict, sampler: dict | None = None) -> list[Node]:
    settings = {"seed": 0, "steps": 25, "cfg_image": 2.0, "cfg_audio": 7.5, "shift": 7, "window": 25,
                "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0} | (sampler or {})
    return [
        Node(6, "SonicMotionBuckets", motion, {"sonic_model": (1, 0), "audio": (4, 0), "image": (5, 0)},
             pos=(880, 700)),
        Node(7, "SonicSampler", settings, {"model": (1, 3), "audio": (4, 0), "image": (5, 0), "motion": (6, 0)},
             pos=(1300, 300)),
    ]


def _video_out(latent: tuple[int, int], first_id: int, prefix: str, x: int) -> list[Node]:
    """Decode → RIFE ×2 → core CreateVideo (with the trimmed audio) → core SaveVideo."""
    i = first_id
    return [
        Node(i, "SonicDecode", {"chunk_size": 8}, {"vae": (1, 1), "latent": latent}, pos=(x, 300)),
        Node(i + 1, "SonicInterpolate", {"batch_size": 8}, {"sonic_model": (1, 0), "images": (i, 0)},
             pos=(x + 380, 300)),
        Node(i + 2, "CreateVideo", {}, {"images": (i + 1, 0), "fps": (i + 1, 1), "audio": (4, 1)}, pos=(x + 760, 300)),
        Node(i + 3, "SaveVideo", {"filename_prefix": prefix, "format": "mp4", "codec": "h264"},
             {"video": (i + 2, 0)}, pos=(x + 1140, 300)),
    ]


def basic(image: str = "sonic_portrait.png", audio: str = "sonic_voice.wav") -> list[Node]:
    """Portrait + voice → mp4 with the official settings, written with core's CreateVideo + SaveVideo."""
    auto = {"motion_preset": "moderate (1.0)", "beta": 1.0, "head_motion": -1, "expression": -1}
    return _sonic_models(image, audio) + _sampler(auto) + _video_out((7, 0), 8, "sonic/Sonic", 1720)


def custom_sampler(image: str = "sonic_portrait.png", audio: str = "sonic_voice.wav") -> list[Node]:
    """The Sonic Guider in core's SamplerCustomAdvanced: any NOISE, SAMPLER and SIGMAS node drives Sonic."""
    auto = {"motion_preset": "moderate (1.0)", "beta": 1.0, "head_motion": -1, "expression": -1}
    guidance = {"cfg_image": 2.0, "cfg_audio": 7.5, "shift": 7, "window": 25, "first_step": 0}
    sampling = [
        Node(6, "SonicMotionBuckets", auto, {"sonic_model": (1, 0), "audio": (4, 0), "image": (5, 0)},
             pos=(880, 700)),
        Node(7, "SonicGuider", guidance, {"model": (1, 3), "audio": (4, 0), "image": (5, 0), "motion": (6, 0)},
             pos=(1300, 500)),
        Node(8, "RandomNoise", {"noise_seed": 0}, pos=(1300, 80)),
        Node(9, "KSamplerSelect", {"sampler_name": "euler"}, pos=(1300, 260)),
        Node(10, "BasicScheduler", {"scheduler": "karras", "steps": 25, "denoise": 1.0}, {"model": (1, 3)},
             pos=(1300, 900)),
        Node(11, "SamplerCustomAdvanced", {},
             {"noise": (8, 0), "guider": (7, 0), "sampler": (9, 0), "sigmas": (10, 0), "latent_image": (7, 1)},
             pos=(1720, 300)),
    ]
    return _sonic_models(image, audio) + sampling + _video_out((11, 0), 12, "sonic/Sonic_custom", 2140)


def manual_motion(image: str = "sonic_portrait.png", audio: str = "sonic_voice.wav") -> list[Node]:
    """Head motion drawn over time (a Sonic Motion Curve, which replaces its slider), a fixed expression from its
    slider, a livelier β and gentler lips (r_a 5.5)."""
    manual = {"motion_preset": "custom", "beta": 1.3, "head_motion": 40, "expression": 24}
    nodes = _sonic_models(image, audio) + _sampler(manual, {"cfg_audio": 5.5}) + [
        Node(8, "SonicSaveVideo", {"interpolate": True, "paste_back": True, "feather": 16, "decode_chunk_size": 8,
                                   "filename_prefix": "sonic/Sonic_manual", "crf": 18},
             {"vae": (1, 1), "latent": (7, 0), "sonic_model": (1, 0), "image": (5, 0), "audio": (4, 1)},
             pos=(1720, 300)),
        Node(9, "SonicMotionCurve", {"keyframes": "0: 24\n1.5: 56\n3: 32", "interpolation": "smooth"},
             pos=(460, 1200)),
    ]
    nodes[5].links["head_motion_curve"] = (9, 0)  # nodes[5] is the Motion Buckets node (id 6)
    return nodes


def long_audio(image: str = "sonic_portrait.png", audio: str = "sonic_voice.wav") -> list[Node]:
    """Minutes of audio at bounded memory: decode, RIFE, paste-back and encode stream chunk by chunk to the mp4."""
    auto = {"motion_preset": "moderate (1.0)", "beta": 1.0, "head_motion": -1, "expression": -1}
    nodes = _sonic_models(image, audio) + _sampler(auto) + [
        Node(8, "SonicSaveVideo", {"interpolate": True, "paste_back": True, "feather": 16, "decode_chunk_size": 8,
                                   "filename_prefix": "sonic/Sonic_long", "crf": 18},
             {"vae": (1, 1), "latent": (7, 0), "sonic_model": (1, 0), "image": (5, 0), "audio": (4, 1)},
             pos=(1720, 300)),
    ]
    nodes[4].widgets["crop"] = True  # a wide shot is cropped around the face and pasted back
    return nodes


def dialogue(image: str = "sonic_dialogue.png", audio_1: str = "sonic_dialogue_1.wav",
             audio_2: str = "sonic_dialogue_2.wav") -> list[Node]:
    """Two faces in one picture, one voice each (a dialogue): each face animated by its own track and pasted back
    into one video of the whole picture, with both tracks mixed into its sound."""
    loader = _sonic_models(image, audio_1)[:3]
    return loader + [
        Node(4, "LoadAudio", {"audio": audio_2}, pos=(40, 1100)),
        Node(5, "SonicSpeakers", {"face_order": "left to right", "faces": "", "resolution": 512, "expand_ratio": 0.5,
                                  "motion_preset": "moderate (1.0)", "beta": 1.0},
             {"sonic_model": (1, 0), "vae": (1, 1), "clip_vision": (1, 2), "image": (2, 0), "audio_1": (3, 0),
              "audio_2": (4, 0)}, pos=(460, 420)),
        Node(6, "PreviewImage", {}, {"images": (5, 3)}, pos=(880, 700)),
        Node(7, "SonicSpeakersSampler", {"seed": 0, "steps": 25, "cfg_image": 2.0, "cfg_audio": 7.5, "shift": 7,
                                         "window": 25, "sampler_name": "euler", "scheduler": "karras",
                                         "denoise": 1.0},
             {"model": (1, 3), "speakers": (5, 0)}, pos=(880, 300)),
        Node(8, "SonicSpeakersSaveVideo", {"interpolate": True, "feather": 16, "decode_chunk_size": 8,
                                           "filename_prefix": "sonic/Sonic_dialogue", "crf": 18},
             {"vae": (1, 1), "speakers": (7, 0), "sonic_model": (1, 0), "audio": (5, 1)}, pos=(1300, 300)),
    ]


GRAPHS = {"sonic_basic": basic, "sonic_manual_motion": manual_motion, "sonic_long_audio": long_audio,
          "sonic_custom_sampler": custom_sampler, "sonic_dialogue": dialogue}


def to_api(nodes: list[Node]) -> dict:
    return {str(n.id): {"class_type": n.class_type,
                        "inputs": {**n.widgets, **{k: [str(s), i] for k, (s, i) in n.links.items()}},
                        **({"_meta": {"title": n.title}} if n.title else {})} for n in nodes}


def _input_order(info: dict) -> list[tuple[str, object]]:
    spec = info["input"]
    return [(name, value) for section in ("required", "optional") for name, value in spec.get(section, {}).items()]


def _is_widget(spec: object) -> bool:
    kind = spec[0]
    if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("forceInput"):
        return False  # a socket only (e.g. Motion Curve's FLOAT values): the frontend gives it no widget
    return isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _default(spec) -> object:
    default = spec[1].get("default") if len(spec) > 1 and isinstance(spec[1], dict) else None
    if isinstance(spec[0], list) and default is None:
        default = spec[0][0] if spec[0] else None
    return default


def with_defaults(nodes: list[Node], object_info: dict) -> list[Node]:
    """Every required widget a graph leaves unset takes the node's default, so both formats validate."""
    for n in nodes:
        for name, spec in object_info[n.class_type]["input"].get("required", {}).items():
            if _is_widget(spec) and name not in n.links and name not in n.widgets:
                n.widgets[name] = _default(spec)
    return nodes


def _origin(class_type: str) -> dict:
    """Where a node comes from, as the frontend records it (so it does not look the node up in the registry)."""
    if class_type.startswith("Sonic"):
        return {"cnr_id": "sonic-portrait", "ver": PACK_VERSION}
    return {"cnr_id": "comfy-core", "ver": COMFY_VERSION}


def to_ui(nodes: list[Node], object_info: dict) -> dict:
    links, ui_nodes = [], []
    outgoing: dict[tuple[int, int], list[int]] = {}
    for n in nodes:
        for name, (src, idx) in n.links.items():
            link_id = len(links) + 1
            links.append([link_id, src, idx, n.id, name])
            outgoing.setdefault((src, idx), []).append(link_id)
    by_target = {(l[3], l[4]): l for l in links}
    for order, n in enumerate(nodes):
        info = object_info[n.class_type]
        inputs, widgets = [], []
        for name, spec in _input_order(info):
            link = by_target.get((n.id, name))
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            if _is_widget(spec):
                # the frontend keeps a widget's value in place even while a link drives it
                widgets.append(n.widgets.get(name, _default(spec)))
                if name in SEED_WIDGETS or (len(spec) > 1 and isinstance(spec[1], dict)
                                            and spec[1].get("control_after_generate")):
                    widgets.append("fixed")
                if link is not None:
                    inputs.append({"name": name, "type": kind, "link": link[0], "widget": {"name": name}})
            elif link is not None:
                inputs.append({"name": name, "type": kind, "link": link[0]})
        outputs = [{"name": out_name, "type": out_type, "links": outgoing.get((n.id, i), []), "slot_index": i}
                   for i, (out_name, out_type) in enumerate(zip(info["output_name"], info["output"]))]
        ui_nodes.append({"id": n.id, "type": n.class_type, "pos": list(n.pos), "size": [360, 200], "flags": {},
                         "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                         "properties": {"Node name for S&R": n.class_type, **_origin(n.class_type)},
                         "widgets_values": widgets,
                         **({"title": n.title} if n.title else {})})
    for link in links:  # [id, origin, origin slot, target, target slot index, type]
        target = next(u for u in ui_nodes if u["id"] == link[3])
        slot = next(i for i, inp in enumerate(target["inputs"]) if inp["link"] == link[0])
        source = next(u for u in ui_nodes if u["id"] == link[1])
        link[4] = slot
        link.append(source["outputs"][link[2]]["type"])
    return {"last_node_id": max(n.id for n in nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def node_info(cls) -> dict:
    """A node's definition as /object_info serves it (V3 nodes describe themselves; V1 from class attributes)."""
    from comfy_api.internal import _ComfyNodeInternal

    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    return {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))}


def object_info() -> dict:
    """Definitions of the nodes the workflows use, from the real runtime with this pack loaded."""
    import asyncio

    from tools.comfy_runtime import import_comfy

    import_comfy()
    import nodes

    async def load():
        await nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
        await nodes.load_custom_node(str(ROOT))

    asyncio.run(load())
    used = {n.class_type for build in GRAPHS.values() for n in build()}
    missing = used - set(nodes.NODE_CLASS_MAPPINGS)
    if missing:
        raise SystemExit(f"nodes not registered: {', '.join(sorted(missing))}")
    return {name: node_info(nodes.NODE_CLASS_MAPPINGS[name]) for name in used}


def render_all(info: dict) -> dict[Path, str]:
    files = {}
    for name, build in GRAPHS.items():
        graph = with_defaults(build(), info)
        files[WORKFLOWS / f"{name}.json"] = json.dumps(to_ui(graph, info), indent=1) + "\n"
        files[WORKFLOWS / "api" / f"{name}.json"] = json.dumps(to_api(graph), indent=1) + "\n"
    return files


def _only_core_additions(saved: dict, current: dict) -> bool:
    """True when a saved UI workflow differs from the current rendering only by widgets and unlinked outputs that
    core's own nodes gained after their saved ones: the frontend fills the saved values in order, leaves the new
    widgets at their defaults and adds the new sockets, so the file loads as it was meant. The pack's own nodes
    must match exactly."""
    if saved.keys() != current.keys() or len(saved["nodes"]) != len(current["nodes"]):
        return False
    for old, new in zip(saved["nodes"], current["nodes"]):
        if old == new:
            continue
        same_rest = {**old, "widgets_values": None, "outputs": None} == {**new, "widgets_values": None, "outputs": None}
        values_extended = new["widgets_values"][:len(old["widgets_values"])] == old["widgets_values"]
        outputs_extended = (new["outputs"][:len(old["outputs"])] == old["outputs"]
                            and not any(out["links"] for out in new["outputs"][len(old["outputs"]):]))
        if old["type"].startswith("Sonic") or not (same_rest and values_extended and outputs_extended):
            return False
    return {k: v for k, v in saved.items() if k != "nodes"} == {k: v for k, v in current.items() if k != "nodes"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--check-loads", action="store_true",
                        help="compare, accepting UI files that lack only widgets and outputs core's nodes added "
                             "since (another ComfyUI release than the one the files were written from)")
    args = parser.parse_args(argv)
    files = render_all(object_info())
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.check_loads:
        loads = [p for p in stale if p.parent == WORKFLOWS and p.exists()
                 and _only_core_additions(json.loads(p.read_text()), json.loads(files[p]))]
        for p in loads:
            print(f"loads: {p.relative_to(ROOT)} (core's nodes have widgets or outputs it predates)")
        stale = [p for p in stale if p not in loads]
    if args.check or args.check_loads:
        for p in stale:
            print(f"out of date: {p.relative_to(ROOT)} (run tools/workflows.py)")
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} workflow files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
