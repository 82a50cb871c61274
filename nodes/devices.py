"""Sonic Devices: one Sonic MODEL on several local GPUs, each evaluating its share of every step's windows.

The node gives the MODEL one copy of the UNet per extra device, each a core patcher with its own load device, so
core's loader (load_models_gpu, through the sampler's own model preparation) loads, offloads and frees every copy as
it does the main one. Where the running ComfyUI has its own multi-GPU clones (comfy.multigpu) and they would pick the
same devices, core makes the copies and its thread pool drives them; otherwise the copies sit in the MODEL's
additional models under DEVICE_COPIES and the Sonic guider drives them with a thread per device.
"""
from __future__ import annotations

import importlib.util
import logging

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from . import menu
from .native_model import is_sonic_model

DEVICE_COPIES = "sonic_devices"  # the MODEL's additional models that are the UNet's copies on the other GPUs
CORE_COPIES = "multigpu"         # where core's own multi-GPU clones sit (ComfyUI releases that have them)


def local_gpus(main: torch.device) -> list[torch.device]:
    """Every local GPU of the main device's kind, the main one first (just the main device when it is not CUDA)."""
    if main.type != "cuda":
        return [main]
    others = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    main = torch.device("cuda", main.index if main.index is not None else torch.cuda.current_device())
    return [main, *(d for d in others if d != main)]


def parse_devices(setting: str, main: torch.device) -> list[torch.device]:
    """The devices a `devices` setting names, the main device first: 'auto' = every local GPU, or a comma list such
    as 'cuda:0, cuda:1' (or '0, 1') that includes the main device."""
    local = local_gpus(main)
    text = setting.strip().lower()
    if text in ("", "auto"):
        return local
    chosen: list[torch.device] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            device = torch.device("cuda", int(part)) if part.isdigit() else torch.device(part)
        except (RuntimeError, ValueError):
            raise ValueError(f"'{part}' is not a device: write 'auto' or GPUs such as 'cuda:0, cuda:1'.") from None
        if device.type == "cuda" and device.index is None:
            device = local[0]
        if device not in local:
            raise ValueError(f"{device} is not a device of this machine, which has {', '.join(map(str, local))}: "
                             "write 'auto' or some of those.")
        if device in chosen:
            raise ValueError(f"{device} is named twice in '{setting}': name each GPU once.")
        chosen.append(device)
    if local[0] not in chosen:
        raise ValueError(f"The devices must include {local[0]}, ComfyUI's device, where the MODEL loads and the "
                         f"results meet: add it to '{setting}' (or write 'auto').")
    return [local[0], *(d for d in chosen if d != local[0])]


def _core_would_pick(extra: list[torch.device], main: torch.device) -> bool:
    """Whether core's multi-GPU clones exist here and would take exactly these extra devices."""
    if importlib.util.find_spec("comfy.multigpu") is None or not hasattr(mm, "get_all_torch_devices"):
        return False
    import comfy.multigpu

    if not hasattr(comfy.multigpu, "create_multigpu_deepclones"):
        return False
    others = [d for d in mm.get_all_torch_devices(exclude_current=False) if d != main]
    return others[:len(extra)] == extra


def spread_model(model, devices: str):
    """A clone of the Sonic MODEL whose UNet also has a copy on every other device `devices` names."""
    if not is_sonic_model(model):
        raise ValueError("Sonic Devices takes a Sonic MODEL: connect the 'model' output of 'Load SVD + Sonic "
                         "weights'.")
    main = torch.device(model.load_device)
    chosen = parse_devices(devices, main)
    spread = model.clone()
    spread.remove_additional_models(DEVICE_COPIES)
    if len(chosen) == 1:
        return spread  # one device: today's MODEL
    if model.patches:
        raise ValueError("Sonic Devices copies the UNet as its files hold it, without the weight patches (LoRA) "
                         "applied to this MODEL: connect Sonic Devices straight after 'Load SVD + Sonic weights' "
                         "and patch after it.")
    if getattr(model, "cached_patcher_init", None) is not None and _core_would_pick(chosen[1:], main):
        import comfy.multigpu

        logging.info("Sonic Devices: core's multi-GPU clones on %s", ", ".join(map(str, chosen[1:])))
        return comfy.multigpu.create_multigpu_deepclones(spread, max_gpus=len(chosen))
    rebuild = model.model.rebuild
    if rebuild is None:
        raise ValueError("This Sonic MODEL cannot be copied to other GPUs (it was not built by 'Load SVD + Sonic "
                         "weights'): connect the loader's 'model' output to Sonic Devices.")
    logging.info("Sonic Devices: copies of the UNet for %s", ", ".join(map(str, chosen[1:])))
    spread.set_additional_models(DEVICE_COPIES, [rebuild(device) for device in chosen[1:]])
    return spread


def device_copies(patcher) -> list:
    """The patchers of a MODEL's UNet copies on other devices: Sonic Devices' own or core's multi-GPU clones."""
    return [*patcher.get_additional_models_with_key(DEVICE_COPIES), *patcher.get_additional_models_with_key(CORE_COPIES)]


class SonicDevices(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicDevices",
            display_name="Sonic Devices (several GPUs)",
            category=menu.LOADERS,
            description="Spreads the windows of every sampling step over several local GPUs: each GPU gets a copy "
                        "of the Sonic UNet and evaluates its share of the windows; the results are fused on the "
                        "main GPU in window order, so the video is the one-GPU video. A step takes about "
                        "ceil(windows ÷ GPUs) window times.",
            inputs=[io.Model.Input("model", tooltip="The Sonic UNet: the 'model' output of 'Load SVD + Sonic "
                                                    "weights' (before any weight patch such as a LoRA)."),
                    io.String.Input("devices", default="auto",
                                    tooltip="'auto' = every local GPU; or a list such as 'cuda:0, cuda:1' that "
                                            "includes ComfyUI's own GPU. One GPU = the MODEL as it was.")],
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="The Sonic MODEL with a UNet copy per extra GPU, for the Sonic "
                                             "Guider or the Sonic KSampler.")],
        )

    @classmethod
    def execute(cls, model, devices) -> io.NodeOutput:
        return io.NodeOutput(spread_model(model, devices))
